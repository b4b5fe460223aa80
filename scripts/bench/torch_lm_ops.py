#!/usr/bin/env python3
"""PyTorch side of benches/gpu/lm_profile.rs (issue [gpu-speed] item 5): the operations of a
backbone training step timed alone at the same shapes, forward + backward, fp32 (TF32 off) and
bf16, median of --reps runs after two warm-up runs, each ended by torch.cuda.synchronize().
Prints one JSON line per row: {"what", "ms", "precision"}.

    python3 scripts/bench/torch_lm_ops.py [--batch 16] [--len 1536] [--hidden 256] [--intermediate 704] [--heads 4] [--vocab 1024]
"""
import argparse
import json

import torch
import torch.nn.functional as F

from torch_vq_ops import timed  # same timing as the VQGAN rows (scripts/ is on the path)


def main():
    ap = argparse.ArgumentParser()
    for k, d in [("batch", 16), ("len", 1536), ("hidden", 256), ("intermediate", 704),
                 ("heads", 4), ("vocab", 1024), ("reps", 10)]:
        ap.add_argument("--" + k, type=int, default=d)
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    n = a.len - 1
    t, d, hd = a.batch * n, a.hidden, a.hidden // a.heads

    def leaf(*shape, dtype):
        return (0.05 * torch.randn(*shape, device="cuda")).to(dtype).requires_grad_()

    for name, dt in [("fp32", torch.float32), ("bf16", torch.bfloat16)]:
        x = leaf(t, d, dtype=dt)
        w = leaf(d, d, dtype=dt)
        wg, wu, wd = leaf(d, a.intermediate, dtype=dt), leaf(d, a.intermediate, dtype=dt), leaf(a.intermediate, d, dtype=dt)
        g = leaf(d, dtype=dt)
        q, k, v = (leaf(a.batch, a.heads, n, hd, dtype=dt) for _ in range(3))
        we = leaf(d, a.vocab, dtype=dt)
        logits = leaf(t, a.vocab, dtype=torch.float32)
        targets = torch.randint(0, a.vocab, (t,), device="cuda")
        rows = [
            ("projection [tokens, hidden] · [hidden, hidden]", lambda: (x @ w).sum().backward()),
            ("MLP (gate, up, SiLU·, down)", lambda: ((F.silu(x @ wg) * (x @ wu)) @ wd).sum().backward()),
            ("RMSNorm (tensor ops)", lambda: (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * g).sum().backward()),
            ("attention, SDPA causal (one layer)", lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()),
            ("logits projection [tokens, hidden] · [hidden, vocab]", lambda: (x @ we).sum().backward()),
            ("cross-entropy over [tokens, vocab] (fp32 logits)", lambda: F.cross_entropy(logits, targets).backward()),
        ]
        for what, f in rows:
            print(json.dumps({"what": what, "precision": name, "ms": round(timed(a.reps, f), 3)}), flush=True)


if __name__ == "__main__":
    main()
