#!/usr/bin/env python3
"""Baseline for the tokenizer-training speed of `ar-refine train-tokenizer`: one training step
(forward, VQ losses with straight-through, backward, AdamW) of the same VQGAN structure in
PyTorch (taming/open-MUSE layout: GroupNorm(32, eps 1e-6) + SiLU + 3x3 conv ResNet blocks,
stride-2 conv downsampling with (0,1,0,1) padding, nearest x2 + conv upsampling, no attention),
timed with CUDA synchronisation. Prints one JSON line per precision setting.

    python3 scripts/bench/torch_vq_step.py --hidden 64 --mult 1,2,2 --codebook 1024 --dim 32 --batch 64
"""
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def norm(c):
    return nn.GroupNorm(32, c, eps=1e-6)


class Res(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.n1, self.c1 = norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.n2, self.c2 = norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.c1(F.silu(self.n1(x)))
        h = self.c2(F.silu(self.n2(h)))
        return self.skip(x) + h


class Down(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Up(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def encoder(h, mult, blocks, z):
    layers, cin = [nn.Conv2d(3, h, 3, padding=1)], h
    for i, m in enumerate(mult):
        for _ in range(blocks):
            layers.append(Res(cin, h * m))
            cin = h * m
        if i + 1 < len(mult):
            layers.append(Down(cin))
    layers += [Res(cin, cin), Res(cin, cin), norm(cin), nn.SiLU(), nn.Conv2d(cin, z, 3, padding=1), nn.Conv2d(z, z, 1)]
    return nn.Sequential(*layers)


def decoder(h, mult, blocks, z):
    cin = h * mult[-1]
    layers = [nn.Conv2d(z, z, 1), nn.Conv2d(z, cin, 3, padding=1), Res(cin, cin), Res(cin, cin)]
    for i, m in reversed(list(enumerate(mult))):
        for _ in range(blocks + 1):
            layers.append(Res(cin, h * m))
            cin = h * m
        if i > 0:
            layers.append(Up(cin))
    layers += [norm(cin), nn.SiLU(), nn.Conv2d(cin, 3, 3, padding=1)]
    return nn.Sequential(*layers)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--mult", default="1,2,2")
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--codebook", type=int, default=1024)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--res", type=int, default=64)
    p.add_argument("--steps", type=int, default=30)
    a = p.parse_args()
    mult = [int(m) for m in a.mult.split(",")]
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    for tf32 in (False, True):
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.manual_seed(0)
        enc, dec = encoder(a.hidden, mult, a.blocks, a.dim).to(dev), decoder(a.hidden, mult, a.blocks, a.dim).to(dev)
        book = nn.Parameter(torch.randn(a.codebook, a.dim, device=dev))
        params = list(enc.parameters()) + list(dec.parameters()) + [book]
        opt = torch.optim.AdamW(params, lr=4e-4, betas=(0.5, 0.9), weight_decay=0.0)
        x = torch.rand(a.batch, 3, a.res, a.res, device=dev)
        times = []
        for step in range(a.steps + 5):
            torch.cuda.synchronize() if dev == "cuda" else None
            t0 = time.perf_counter()
            z = enc(x)
            b, d, hh, ww = z.shape
            flat = z.permute(0, 2, 3, 1).reshape(-1, d)
            ids = torch.cdist(flat.detach(), book.detach()).argmin(1)
            zq = book[ids]
            loss_cb = (zq - flat.detach()).pow(2).mean()
            loss_commit = (flat - zq.detach()).pow(2).mean()
            st = flat + (zq - flat).detach()
            out = dec(st.reshape(b, hh, ww, d).permute(0, 3, 1, 2))
            loss = (out - x).abs().mean() + loss_cb + 0.25 * loss_commit
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            loss.item()
            torch.cuda.synchronize() if dev == "cuda" else None
            if step >= 5:
                times.append(time.perf_counter() - t0)
        times.sort()
        n_params = sum(t.numel() for t in params)
        print(json.dumps({
            "impl": "pytorch", "torch": torch.__version__, "tf32": tf32, "params": n_params,
            "batch": a.batch, "res": a.res, "median_ms_per_step": round(1e3 * times[len(times) // 2], 2),
            "images_per_s": round(a.batch / times[len(times) // 2], 1),
        }), flush=True)


if __name__ == "__main__":
    main()
