#!/usr/bin/env python3
"""transformers baseline for benches/gpu/llama.rs (run on the GPU machine).

    python3 scripts/bench/llama_bench.py [--shapes 100m,7b] [--batches 1,16] [--prompt 768] [--new 256] [--reps 3]

Same settings as the Rust harness: LlamaForCausalLM with LVM's 100M / 7B config, random weights,
fp16, greedy `generate` with ids >= 8192 suppressed (LVM's specials), KV cache on, prompt of
random image ids. Times the prefill (max_new_tokens=1) and the full run with
torch.cuda.synchronize() around each, median of `reps` after a warm-up.
ms/step = (full - prefill) / (new - 1). One JSON object per line.
"""
import argparse
import json
import statistics
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {
    "100m": dict(hidden_size=640, intermediate_size=1664, num_hidden_layers=22, num_attention_heads=10),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="100m,7b")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--prompt", type=int, default=768)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    dev = "cuda"
    for shape in a.shapes.split(","):
        cfg = LlamaConfig(vocab_size=8292, max_position_embeddings=4096, rms_norm_eps=1e-6,
                          rope_theta=10000.0, tie_word_embeddings=False, **SHAPES[shape])
        torch.manual_seed(0)
        with torch.device(dev):
            model = LlamaForCausalLM(cfg).to(torch.float16).eval()
        params = sum(p.numel() for p in model.parameters())
        suppress = list(range(8192, 8292))
        for b in map(int, a.batches.split(",")):
            ids = torch.randint(0, 8192, (b, a.prompt), device=dev)

            def run(n):
                torch.cuda.synchronize()
                t = time.perf_counter()
                with torch.no_grad():
                    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                   min_new_tokens=n, do_sample=False, use_cache=True,
                                   suppress_tokens=suppress, pad_token_id=0, eos_token_id=None)
                torch.cuda.synchronize()
                return (time.perf_counter() - t) * 1e3

            run(a.new)
            run(1)
            prefill = statistics.median(run(1) for _ in range(a.reps))
            full = statistics.median(run(a.new) for _ in range(a.reps))
            per = (full - prefill) / (a.new - 1)
            print(json.dumps(dict(impl=f"transformers {transformers.__version__}", shape=shape, params=params,
                                  batch=b, prompt=a.prompt, new=a.new, prefill_ms=round(prefill, 2),
                                  total_ms=round(full, 1), ms_per_step=round(per, 3),
                                  tokens_per_s=round(b * a.new / (full / 1e3), 1))), flush=True)
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
