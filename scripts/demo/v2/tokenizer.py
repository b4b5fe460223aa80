#!/usr/bin/env python3
"""PyTorch recipe for the demo LVM's tokenizer (issue [demo-model-v2] item 1): a taming-layout
VQGAN, 64x64 RGB -> 16x16 codes, trained on the Tiny-ImageNet-200 training mosaics and written
in the layout and `config.json` that `ar_refine::tokenizer::Vqgan::load` reads.

Why PyTorch: the crate's own VQGAN step (`ar-refine train-tokenizer`) is ~3.5x slower than
PyTorch fp32 on an H200 (BENCHMARKS.md, runs 7 and 11), and the GPU comes in 10-minute pieces.

    # one run (any number of pieces: it resumes from --ckpt when that file exists)
    python3 scripts/demo/v2/tokenizer.py train --data DIR_OF_MOSAICS --ckpt /tmp/tok/ckpt.pt \
        --codes 4096 --code-dim 8 --seconds 500 --total-seconds 960 --export OUT_DIR
    # several configurations at once on one GPU, for choosing one (held-out mosaic scored)
    python3 scripts/demo/v2/tokenizer.py sweep --data DIR --seconds 200 --out sweep.jsonl

The data folder holds `train-NNN.jpg` mosaics (32x32 tiles of 64x64 photos, ../shared/data's
README); new mosaics that appear while training runs are picked up (the GPU machine receives
them in pieces). Model: hidden 64, channel_mult [1,2,2], 2 ResNet blocks, no attention, z 32,
`embed_dim` = code width. Codes (``--l2``, the default): l2-normalised lookup of a factorised
low-dimensional code (Yu et al. 2022, ViT-VQGAN, section 3.2): the encoder output and the codes
are unit vectors, so the crate's squared-L2 nearest code picks the same code as training's
cosine lookup, and the saved codebook is the unit codes the decoder saw. Codes start from encoder
outputs and unused codes are restarted from random encoder outputs (dead-code restarts, as in
Dhariwal et al. 2020, Jukebox, section 3.2 / Zeghidour et al. 2021). Loss: mean squared error
in [0, 1] pixels + codebook + 0.25 commitment; AdamW beta (0.9, 0.99), lr 4e-4 after 500 warm-up
steps, cosine to 10 % over the run's total seconds; bf16 autocast; random horizontal flips.
`--decoder-only` fine-tunes `post_quant_conv` and the decoder of a trained tokenizer with the
encoder and codes frozen, so every photo keeps its codes (token files made before stay valid).
"""
import argparse
import glob
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import Every, resume, save_checkpoint

HIDDEN, MULT, BLOCKS, Z = 64, (1, 2, 2), 2, 32
# the GPU when there is one (the CPU runs the same code, slowly: for checking the recipe)
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def norm(c):
    return nn.GroupNorm(32, c, eps=1e-6)


class Block(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1, self.conv1 = norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class Resample(nn.Module):
    def __init__(self, c, down):
        super().__init__()
        self.down = down
        self.conv = nn.Conv2d(c, c, 3, stride=2) if down else nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        if self.down:
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    def __init__(self, blocks, resample):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        if resample is not None:
            setattr(self, "downsample" if resample.down else "upsample", resample)


class Mid(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.block_1, self.block_2 = Block(c, c), Block(c, c)

    def forward(self, x):
        return self.block_2(self.block_1(x))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_in = nn.Conv2d(3, HIDDEN, 3, padding=1)
        levels, cin = [], HIDDEN
        for i, m in enumerate(MULT):
            blocks = []
            for _ in range(BLOCKS):
                blocks.append(Block(cin, HIDDEN * m))
                cin = HIDDEN * m
            levels.append(Level(blocks, Resample(cin, True) if i + 1 < len(MULT) else None))
        self.down = nn.ModuleList(levels)
        self.mid = Mid(cin)
        self.norm_out = norm(cin)
        self.conv_out = nn.Conv2d(cin, Z, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            for b in level.block:
                h = b(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        cin = HIDDEN * MULT[-1]
        self.conv_in = nn.Conv2d(Z, cin, 3, padding=1)
        self.mid = Mid(cin)
        levels = [None] * len(MULT)
        for i in reversed(range(len(MULT))):
            blocks = []
            for _ in range(BLOCKS + 1):
                blocks.append(Block(cin, HIDDEN * MULT[i]))
                cin = HIDDEN * MULT[i]
            levels[i] = Level(blocks, Resample(cin, False) if i > 0 else None)
        self.up = nn.ModuleList(levels)
        self.norm_out = norm(cin)
        self.conv_out = nn.Conv2d(cin, 3, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for b in level.block:
                h = b(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Quantize(nn.Module):
    def __init__(self, n, d):
        super().__init__()
        self.embedding = nn.Embedding(n, d)


class Vqgan(nn.Module):
    def __init__(self, codes, dim, l2):
        super().__init__()
        self.l2 = l2
        self.encoder, self.decoder = Encoder(), Decoder()
        self.quant_conv = nn.Conv2d(Z, dim, 1)
        self.post_quant_conv = nn.Conv2d(dim, Z, 1)
        self.quantize = Quantize(codes, dim)

    def latents(self, x):
        """[b, 3, 64, 64] in [0, 1] -> [b·256, dim] (unit vectors with l2 lookup)."""
        z = self.quant_conv(self.encoder(x)).float()
        z = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        return F.normalize(z, dim=1) if self.l2 else z

    def codebook(self):
        w = self.quantize.embedding.weight
        return F.normalize(w, dim=1) if self.l2 else w

    def nearest(self, z):
        """Nearest code per row of `z` [m, dim], in f32 (outside autocast)."""
        with torch.autocast(DEV, enabled=False):
            z, c = z.float(), self.codebook().float()
            if self.l2:
                return (z @ c.t()).argmax(1)
            return ((z * z).sum(1, keepdim=True) - 2 * z @ c.t() + (c * c).sum(1)).argmin(1)

    def forward(self, x):
        b = x.shape[0]
        z = self.latents(x)
        ids = self.nearest(z.detach())
        q = self.codebook()[ids]
        qloss = F.mse_loss(q, z.detach()) + 0.25 * F.mse_loss(z, q.detach())
        zq = z + (q - z).detach()
        side = int(math.isqrt(zq.shape[0] // b))
        zq = zq.reshape(b, side, side, -1).permute(0, 3, 1, 2)
        return self.decoder(self.post_quant_conv(zq)), qloss, ids, z


def load_mosaics(paths):
    """JPEG mosaics -> uint8 tensor [n·1024, 3, 64, 64]."""
    from PIL import Image

    out = []
    for p in paths:
        a = np.asarray(Image.open(p).convert("RGB"))
        a = a.reshape(32, 64, 32, 64, 3).transpose(0, 2, 4, 1, 3).reshape(1024, 3, 64, 64)
        out.append(torch.from_numpy(np.ascontiguousarray(a)))
    return torch.cat(out) if out else torch.zeros(0, 3, 64, 64, dtype=torch.uint8)


def psnr_of(model, imgs, batch=256):
    """Mean PSNR (dB, [0, 1] pixels, clamped output) of reconstructions of uint8 [n, 3, 64, 64],
    and how many distinct codes they use."""
    model.eval()
    vals, used = [], set()
    with torch.no_grad(), torch.autocast(DEV, dtype=torch.bfloat16, enabled=DEV == "cuda"):
        for i in range(0, len(imgs), batch):
            x = imgs[i : i + batch].to(DEV).float() / 255
            y, _, ids, _ = model(x)
            y = y.float().clamp(0, 1)
            mse = ((y - x) ** 2).flatten(1).mean(1).clamp_min(1e-10)
            vals.append(-10 * torch.log10(mse))
            used.update(ids.unique().tolist())
    model.train()
    return torch.cat(vals).mean().item(), len(used)


def config_json(codes, dim):
    return {
        "in_channels": 3, "out_channels": 3, "hidden_channels": HIDDEN, "channel_mult": list(MULT),
        "num_res_blocks": BLOCKS, "attn_resolutions": [], "mid_attention": False,
        "z_channels": Z, "embed_dim": dim, "num_embeddings": codes, "resolution": 64,
        "num_groups": 32, "commitment_cost": 0.25, "pixel_range": "ZeroOne",
    }


def export(model, codes, dim, out_dir, f32_parts=False, raw_codes=False):
    """config.json + model.safetensors (f16, unit codes with l2 lookup); with `f32_parts` also
    the f32 weights in two files of < 16 MiB (encoder side / decoder side) for resuming. With
    `raw_codes` the codebook is written as it is (a frozen codebook loaded from unit f16 codes:
    normalising again could move a last bit, and with it a code the crate picks)."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    sd = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    if not raw_codes:
        sd["quantize.embedding.weight"] = model.codebook().detach().float().cpu().contiguous()
    save_file({k: v.half() for k, v in sd.items()}, os.path.join(out_dir, "model.safetensors"))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config_json(codes, dim), f, indent=2)
    if f32_parts:
        raw = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
        enc = {k: v for k, v in raw.items() if not k.startswith("decoder.")}
        dec = {k: v for k, v in raw.items() if k.startswith("decoder.")}
        save_file(enc, os.path.join(out_dir, "f32-encoder.safetensors"))
        save_file(dec, os.path.join(out_dir, "f32-decoder.safetensors"))


def train(a):
    torch.manual_seed(a.seed)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    model = Vqgan(a.codes, a.code_dim, a.l2).to(DEV).to(memory_format=torch.channels_last)
    if a.decoder_only:
        # the codes stay as they are (encoder, quant_conv and codebook frozen), so token files
        # made with the starting tokenizer stay valid; only post_quant_conv and the decoder learn
        for part in (model.encoder, model.quant_conv, model.quantize):
            part.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=a.lr, betas=(0.9, 0.99), weight_decay=0.0)
    state = {"step": 0, "seconds": 0.0, "images": 0, "curve": []}
    state, ck = resume(a.ckpt, a.init_f32, model, opt, state, DEV)
    if a.decoder_only and not (ck is not None or a.init_f32):
        raise SystemExit("--decoder-only needs trained weights (--init-f32 or --ckpt)")
    if ck is None and a.init_f32:
        state["init_codes_done"] = True  # trained codes: not re-drawn from encoder outputs

    held = load_mosaics([a.held_out]) if a.held_out else None
    held = held[: a.held_n] if held is not None else None
    val = None
    if a.val:
        raw = np.fromfile(a.val, dtype=np.uint8)
        val = torch.from_numpy(raw.reshape(-1, 64, 64, 3).transpose(0, 3, 1, 2).copy())[: a.val_n]
    seen, data = set(), torch.zeros(0, 3, 64, 64, dtype=torch.uint8, device=DEV)

    def refresh():
        nonlocal data
        new = sorted(p for p in glob.glob(os.path.join(a.data, "**", "train-*.jpg"), recursive=True)
                     if os.path.basename(p) not in seen and (not a.held_out or os.path.basename(p) != os.path.basename(a.held_out)))
        if a.max_mosaics:
            new = new[: max(0, a.max_mosaics - len(seen))]
        if new:
            data = torch.cat([data, load_mosaics(new).to(DEV)])
            seen.update(os.path.basename(p) for p in new)
            print(f"data: {len(seen)} mosaics, {len(data)} photos", flush=True)

    refresh()
    usage = torch.zeros(a.codes, device=DEV)
    start, last_refresh = time.time(), time.time()
    eval_timer, ckpt_timer = Every(a.eval_every), Every(a.ckpt_every)
    base = state["seconds"]
    sched_total = a.total_seconds or a.seconds

    def lr_at(step, secs):
        warm = min(1.0, (step + 1) / 500)
        frac = min(1.0, secs / sched_total)
        return a.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    def save():
        if a.ckpt:
            save_checkpoint(a.ckpt, model=model.state_dict(), opt=opt.state_dict(), state=state, args=vars(a))

    def evaluate(tag):
        row = {"step": state["step"], "seconds": round(state["seconds"], 1), "images": state["images"],
               "photos": len(data), "used_codes": int((usage > 0).sum().item())}
        if held is not None:
            p, u = psnr_of(model, held)
            row["held_out_psnr"], row["held_out_codes"] = round(p, 3), u
        if val is not None:
            p, u = psnr_of(model, val)
            row["val_psnr"], row["val_codes"] = round(p, 3), u
        row["tag"] = tag
        state["curve"].append(row)
        print(json.dumps(row), flush=True)

    while True:
        secs = base + time.time() - start
        state["seconds"] = secs
        if time.time() - start >= a.seconds or secs >= sched_total:
            break
        if time.time() - last_refresh > 20:
            refresh()
            last_refresh = time.time()
        idx = torch.randint(0, len(data), (a.batch,), device=DEV)
        x = data[idx].float().div_(255)
        flip = torch.rand(a.batch, device=DEV) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x).contiguous(memory_format=torch.channels_last)
        if not state.get("init_codes_done"):
            with torch.no_grad():
                z = model.latents(x)
                pick = torch.randperm(len(z), device=DEV)[: a.codes]
                model.quantize.embedding.weight.copy_(z[pick])
            state["init_codes_done"] = True
        for g in opt.param_groups:
            g["lr"] = lr_at(state["step"], secs)
        with torch.autocast(DEV, dtype=torch.bfloat16, enabled=DEV == "cuda"):
            y, qloss, ids, z = model(x)
            rec = F.mse_loss(y.float(), x)
            loss = rec + qloss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        usage += torch.bincount(ids, minlength=a.codes).float()
        state["step"] += 1
        state["images"] += a.batch
        if state["step"] % a.restart_every == 0 and not a.decoder_only:
            with torch.no_grad():
                dead = (usage == 0).nonzero().flatten()
                if len(dead) > 0 and secs < 0.8 * sched_total:
                    zz = z.detach()
                    pick = torch.randint(0, len(zz), (len(dead),), device=DEV)
                    model.quantize.embedding.weight[dead] = zz[pick] + 1e-3 * torch.randn_like(zz[pick])
                state["last_dead"] = int(len(dead))
            usage.zero_()
        if state["step"] % 200 == 0:
            print(json.dumps({"step": state["step"], "seconds": round(secs, 1), "rec_mse": round(rec.item(), 5),
                              "q": round(qloss.item(), 5), "lr": lr_at(state["step"], secs),
                              "dead_at_last_restart": state.get("last_dead")}), flush=True)
        if eval_timer.due():
            evaluate("periodic")
        if a.ckpt and ckpt_timer.due():
            save()
            if a.export:
                export(model, a.codes, a.code_dim, a.export, raw_codes=a.decoder_only)
    evaluate("end")
    save()
    if a.export:
        export(model, a.codes, a.code_dim, a.export, f32_parts=True, raw_codes=a.decoder_only)
        with open(os.path.join(a.export, "curve.jsonl"), "w") as f:
            for row in state["curve"]:
                f.write(json.dumps(row) + "\n")
    if a.result:
        last = state["curve"][-1]
        with open(a.result, "a") as f:
            f.write(json.dumps({"codes": a.codes, "code_dim": a.code_dim, "l2": a.l2, **last}) + "\n")


SWEEP = [(1024, 32, False), (1024, 8, True), (4096, 8, True), (8192, 8, True)]


def sweep(a):
    """The SWEEP configurations at once on one GPU, each for `--seconds`, scored on the first
    `--held-n` photos of the held-out mosaic; writes one line per configuration to `--out` and the
    chosen one (best held-out PSNR; a smaller codebook wins within 0.3 dB, since every code is a
    row of the backbone's embedding and head) to `--out`.choice.json."""
    procs = []
    for codes, dim, l2 in SWEEP:
        cmd = [sys.executable, __file__, "train", "--data", a.data, "--held-out", a.held_out,
               "--held-n", str(a.held_n), "--codes", str(codes), "--code-dim", str(dim),
               "--seconds", str(a.seconds), "--eval-every", "1e9", "--result", a.out,
               "--max-mosaics", str(a.max_mosaics)]
        if not l2:
            cmd.append("--no-l2")
        procs.append(subprocess.Popen(cmd, stdout=open(f"{a.out}.{codes}x{dim}.log", "w"), stderr=subprocess.STDOUT))
    for p in procs:
        p.wait()
    rows = [json.loads(l) for l in open(a.out)]
    best = max(r["held_out_psnr"] for r in rows)
    ok = [r for r in rows if r["held_out_psnr"] >= best - 0.3]
    choice = min(ok, key=lambda r: (r["codes"], -r["held_out_psnr"]))
    with open(a.out + ".choice.json", "w") as f:
        json.dump(choice, f)
    print(json.dumps({"choice": choice}), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--data", required=True)
    t.add_argument("--ckpt", default="")
    t.add_argument("--init-f32", default="", help="comma-separated f32 weight files to start from")
    t.add_argument("--export", default="")
    t.add_argument("--result", default="")
    t.add_argument("--held-out", default="")
    t.add_argument("--held-n", type=int, default=512)
    t.add_argument("--val", default="", help="raw uint8 [n, 64, 64, 3] file (val.u8 or a slice)")
    t.add_argument("--val-n", type=int, default=256)
    t.add_argument("--codes", type=int, default=4096)
    t.add_argument("--code-dim", type=int, default=8)
    t.add_argument("--no-l2", dest="l2", action="store_false")
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--lr", type=float, default=4e-4)
    t.add_argument("--seconds", type=float, default=300, help="this piece's wall-clock budget")
    t.add_argument("--total-seconds", type=float, default=0, help="the whole run's, for the schedule")
    t.add_argument("--restart-every", type=int, default=100)
    t.add_argument("--eval-every", type=float, default=60)
    t.add_argument("--ckpt-every", type=float, default=60)
    t.add_argument("--max-mosaics", type=int, default=0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--decoder-only", action="store_true",
                   help="fine-tune post_quant_conv + decoder only: the codes of every photo stay the same")
    s = sub.add_parser("sweep")
    s.add_argument("--data", required=True)
    s.add_argument("--held-out", required=True)
    s.add_argument("--held-n", type=int, default=512)
    s.add_argument("--seconds", type=float, default=200)
    s.add_argument("--max-mosaics", type=int, default=0)
    s.add_argument("--out", required=True)
    a = p.parse_args()
    if a.cmd == "train":
        train(a)
    else:
        sweep(a)


if __name__ == "__main__":
    main()
