#!/usr/bin/env python3
"""PyTorch baselines and fp64 scoring for nearest-code decoding (BENCHMARKS.md).

Usage: python3 scripts/bench/nn_decode_bench.py DIR [REPS]

DIR holds what `nn_decode_gpu DIR` wrote: per shape `<name>.q.f32` / `<name>.c.f32` (the data)
and `<name>.<method>.i32` (ids from the Rust methods). For each shape this script
- times PyTorch `addmm(‖c‖², q, cᵀ, alpha=-2) + argmin` and `cdist + argmin`, in fp32 and TF32,
  with CUDA events (median of REPS after a warm-up);
- computes the fp64 nearest code of every query (chunked, on the GPU);
- scores every method's ids against it: a mismatch is a "near-tie" when the fp64 distances of
  the two codes differ by less than the f32 rounding bound of that query
  (4·(D+2)·2⁻²³·(‖q‖+max‖c‖)²), otherwise an "error";
and prints one JSON object per (shape, method).
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

SHAPES = {"lvm": (65536, 8192, 64), "llamagen": (65536, 16384, 8), "chameleon": (65536, 8192, 256),
          "small": (4096, 8192, 64)}


def timed(fn, reps):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2], times[0]


def fp64_nearest(q64, c64, chunk=4096):
    cn = (c64 * c64).sum(1)
    best, best_d, second = [], [], []
    for s in range(0, q64.shape[0], chunk):
        qs = q64[s:s + chunk]
        dist = (qs * qs).sum(1, keepdim=True) + cn[None, :] - 2.0 * qs @ c64.T
        best.append(dist.argmin(1))
    return torch.cat(best), cn


def score_ids(ids, ref, q64, c64, cn):
    """Counts mismatches vs the fp64 argmin, split into near-ties and errors."""
    ids = ids.to(torch.int64)
    diff = (ids != ref).nonzero().flatten()
    if diff.numel() == 0:
        return 0, 0
    qd = q64[diff]
    d_got = ((qd - c64[ids[diff]]) ** 2).sum(1)
    d_ref = ((qd - c64[ref[diff]]) ** 2).sum(1)
    d = q64.shape[1]
    bound = 4.0 * (d + 2) * 2.0 ** -23 * (qd.norm(dim=1) + cn.sqrt().max()) ** 2
    near = int(((d_got - d_ref) <= bound).sum())
    return near, int(diff.numel()) - near


def main():
    root = Path(sys.argv[1])
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    dev = torch.device("cuda")
    print(json.dumps({"torch": torch.__version__, "device": torch.cuda.get_device_name(0)}), flush=True)
    for name, (n, k, d) in SHAPES.items():
        qf = root / f"{name}.q.f32"
        if not qf.exists():
            continue
        q = torch.from_numpy(np.fromfile(qf, dtype="<f4").reshape(n, d)).to(dev)
        c = torch.from_numpy(np.fromfile(root / f"{name}.c.f32", dtype="<f4").reshape(k, d)).to(dev)
        q64, c64 = q.double(), c.double()
        ref, cn = fp64_nearest(q64, c64)
        flop = 2.0 * n * k * d
        norms = (c * c).sum(1)
        results = {}
        for tf32 in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
            tag = "tf32" if tf32 else "fp32"
            addmm = lambda: torch.addmm(norms[None, :], q, c.T, alpha=-2.0).argmin(1)
            cdist = lambda: torch.cdist(q, c).argmin(1)
            for label, fn in ((f"torch_addmm_argmin_{tag}", addmm), (f"torch_cdist_argmin_{tag}", cdist)):
                ms = timed(fn, reps)
                results[label] = (ms, fn())
        torch.backends.cuda.matmul.allow_tf32 = False
        for label, (ms, ids) in results.items():
            near, err = score_ids(ids, ref, q64, c64, cn)
            print(json.dumps({"shape": name, "n": n, "k": k, "d": d, "method": label, "median_ms": round(ms[0], 4),
                              "min_ms": round(ms[1], 4), "tflops": round(flop / ms[0] / 1e9, 2),
                              "near_ties": near, "errors": err}), flush=True)
        for method in ("kernel", "mma", "burn"):
            f = root / f"{name}.{method}.i32"
            if f.exists():
                ids = torch.from_numpy(np.fromfile(f, dtype="<i4").astype(np.int64)).to(dev)
                near, err = score_ids(ids, ref, q64, c64, cn)
                print(json.dumps({"shape": name, "method": f"{method}_ids", "near_ties": near, "errors": err}),
                      flush=True)


if __name__ == "__main__":
    main()
