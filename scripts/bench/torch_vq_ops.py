#!/usr/bin/env python3
"""PyTorch side of benches/gpu/vq_profile.rs: the VQGAN's layers timed alone at the first
level's shape [batch, hidden, size, size], forward and forward + backward, fp32 (TF32 off), the
median of --reps runs after two warm-up runs, each ended by torch.cuda.synchronize(). Prints one
JSON line per row, with the same "what" as the Rust example.

    python3 scripts/bench/torch_vq_ops.py [--batch 64] [--size 64] [--hidden 64] [--reps 10]
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def timed(reps, f):
    for _ in range(2):
        f()
        torch.cuda.synchronize()
    ms = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        torch.cuda.synchronize()
        ms.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ms)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--reps", type=int, default=10)
    a = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = "cuda"
    x = torch.randn(a.batch, a.hidden, a.size, a.size, device=dev, requires_grad=True)
    conv = nn.Conv2d(a.hidden, a.hidden, 3, padding=1).to(dev)
    gn = nn.GroupNorm(32, a.hidden, eps=1e-6).to(dev)
    gflop = 2.0 * a.batch * a.size * a.size * a.hidden * a.hidden * 9 / 1e9

    def row(what, ms, g=None):
        r = {"what": what, "ms": round(ms, 3), "torch": torch.__version__}
        if g is not None:
            r["tflops"] = round(g / ms, 2)
        print(json.dumps(r), flush=True)

    with torch.no_grad():
        row("conv 3x3 forward", timed(a.reps, lambda: conv(x)), gflop)
    row("conv 3x3 forward + backward (input and weight gradients)",
        timed(a.reps, lambda: conv(x).sum().backward()), 3 * gflop)
    down = nn.Conv2d(a.hidden, a.hidden, 3, stride=2).to(dev)
    row("conv 3x3 stride 2 forward + backward",
        timed(a.reps, lambda: down(F.pad(x, (0, 1, 0, 1))).sum().backward()), 3 * gflop / 4)
    with torch.no_grad():
        row("GroupNorm(32) forward", timed(a.reps, lambda: gn(x)))
    row("GroupNorm(32) forward + backward", timed(a.reps, lambda: gn(x).sum().backward()))
    with torch.no_grad():
        row("SiLU forward", timed(a.reps, lambda: F.silu(x)))
    row("SiLU forward + backward", timed(a.reps, lambda: F.silu(x).sum().backward()))
    row("sum forward + backward (the reduction every row above ends with)",
        timed(a.reps, lambda: x.sum().backward()))


if __name__ == "__main__":
    main()
