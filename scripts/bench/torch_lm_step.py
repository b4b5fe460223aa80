#!/usr/bin/env python3
"""Baseline for the backbone-training speed of `ar-refine pretrain` (issue [gpu-speed]:
LLaMA training tokens/s against PyTorch): next-token training steps of a transformers
`LlamaForCausalLM` of the given shape (AdamW, cross-entropy over every token, batches of one
sequence length each, lengths cycling through --lengths as K = 1, 2, 3 visual sentences of
256-token images give), timed with CUDA synchronisation. Eager PyTorch (no torch.compile),
attention through SDPA. Prints one JSON line per precision: fp32, and bf16 autocast.

    python3 scripts/bench/torch_lm_step.py --config scripts/bench/configs/tiny-lvm-v1-backbone.json --batch 16
"""
import argparse
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="HF config.json of the backbone")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lengths", default="1024,1536,2048")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args()
    with open(args.config) as f:
        raw = json.load(f)
    keys = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "rms_norm_eps", "rope_theta", "max_position_embeddings",
            "tie_word_embeddings"]
    cfg = LlamaConfig(**{k: raw[k] for k in keys if raw.get(k) is not None})
    cfg.num_key_value_heads = raw.get("num_key_value_heads") or cfg.num_attention_heads
    lengths = [int(x) for x in args.lengths.split(",")]
    torch.manual_seed(0)
    for precision in ["fp32", "bf16-autocast"]:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        model = LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa").cuda().train()
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
        times, tokens = [], []
        for step in range(args.steps + 3):
            n = lengths[step % len(lengths)]
            ids = torch.randint(0, cfg.vocab_size, (args.batch, n), device="cuda")
            torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision != "fp32"):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            if step >= 3:  # warm-up: one step of each length
                times.append(time.perf_counter() - t)
                tokens.append(args.batch * n)
        print(json.dumps({
            "impl": "pytorch", "torch": torch.__version__, "precision": precision,
            "params": sum(p.numel() for p in model.parameters()), "batch": args.batch,
            "lengths": lengths, "steps": len(times),
            "tokens_per_s": round(sum(tokens) / sum(times)),
            "ms_per_step": round(1e3 * sum(times) / len(times), 2),
        }), flush=True)
        del model, opt


if __name__ == "__main__":
    main()
