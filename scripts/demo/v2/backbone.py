#!/usr/bin/env python3
"""PyTorch recipe for the demo LVM's backbone (issue [demo-model-v2] item 2): a LLaMA
(transformers `LlamaForCausalLM`, the HF layout `ar_refine::backbone::Llama` loads) trained by
next-token prediction over visual sentences of the three tasks, from the code files that
`ar-refine task-tokens` writes.

    # sentences from OUT/train-{task}.u16, validation from OUT/val-{task}.u16
    python3 scripts/demo/v2/backbone.py train --tokens DIR --hidden 320 --layers 6 \
        --seconds 500 --total-tokens 1.3e9 --ckpt /tmp/bb/ckpt.pt --export OUT_DIR
    # a scaling run: several widths at once on one GPU, validation loss against tokens seen
    python3 scripts/demo/v2/backbone.py scaling --tokens DIR --widths 192,256,320 --seconds 240 --out scaling.jsonl

A visual sentence, as LVM's (Bai et al. 2024) and as `ar_refine::data::build_sentences` builds
them: `K` demonstration pairs and a query with its answer, all of one task, `[x_1, y_1, ...,
x_K, y_K, x_q, y_q]`, each image its 256 codes (the vocabulary is the codebook: no separators).
`K` is drawn from {1, 2, 3} per batch, the `K + 1` photos without replacement; every
next-token prediction is scored. Validation: `K = 2` sentences whose photos all come from the
validation files; cross-entropy and teacher-forced token accuracy on the query's answer image,
per task (what `ar-refine pretrain` reports). bf16 autocast, SDPA attention, AdamW
beta (0.9, 0.95), weight decay 0.1, clip 1.0, warm-up then cosine to 10 % over `--total-tokens`.
"""
import argparse
import json
import glob
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from common import Every, resume, save_checkpoint

TASKS = ("colorization", "inpainting", "edges")


def part_files(dir_, split):
    """Every `{split}-{task}.u16` in `dir_` or in any folder below it (the GPU machine receives
    the photos in parts and tokenizes each part into a folder of its own), sorted."""
    return sorted(p for t in TASKS for p in glob.glob(os.path.join(dir_, "**", f"{split}-{t}.u16"), recursive=True))


def load_pairs(files):
    """{task: int64 tensor [pairs, 2, tokens]} of the code files `files`, parts concatenated in
    path order, and the first file's metadata (grid, codebook)."""
    out, meta = {}, None
    for t in TASKS:
        parts = []
        for p in (f for f in files if f.endswith(f"-{t}.u16")):
            meta = json.load(open(p[: -len(".u16")] + ".json"))
            a = np.fromfile(p, dtype="<u2").reshape(-1, 2, meta["tokens_per_image"])
            parts.append(torch.from_numpy(a.astype(np.int64)))
        if parts:
            out[t] = torch.cat(parts)
    if not out:
        raise SystemExit("no code files (*-TASK.u16)")
    return out, meta


def sentences(pairs, k, batch, gen, device):
    """`batch` sentences of one task (drawn uniformly) with `k` demonstrations, `k + 1` distinct
    pairs each: [batch, (2k + 2) · tokens] on the pairs' device."""
    names = list(pairs)
    p = pairs[names[int(torch.randint(0, len(names), (1,), generator=gen))]]
    n = len(p)
    if n < k + 1:
        raise SystemExit(f"{k} demonstrations and a query need {k + 1} pairs; {n} given")
    idx = torch.randint(0, n, (batch, k + 1), generator=gen)
    while True:  # redraw the rare rows that repeat a photo
        s = idx.sort(1).values
        bad = (s[:, 1:] == s[:, :-1]).any(1)
        if not bad.any():
            break
        idx[bad] = torch.randint(0, n, (int(bad.sum()), k + 1), generator=gen)
    return p[idx.to(p.device)].reshape(batch, -1)


def model_for(hidden, layers, heads, codebook, context):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=codebook, hidden_size=hidden, intermediate_size=int(round(hidden * 8 / 3 / 32)) * 32,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=context, rope_theta=10000.0, rms_norm_eps=1e-6,
                      tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg)


@torch.no_grad()
def validate(model, val, per_task, tokens, device):
    """Teacher-forced CE and token accuracy on the query's answer of fixed K = 2 sentences."""
    model.eval()
    gen = torch.Generator().manual_seed(1234)
    rows = {}
    for t, p in val.items():
        s = sentences({t: p}, 2, per_task, gen, device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(input_ids=s).logits.float()
        pred = logits[:, -tokens - 1 : -1]
        gold = s[:, -tokens:]
        rows[t] = {"ce": round(F.cross_entropy(pred.reshape(-1, pred.shape[-1]), gold.reshape(-1)).item(), 4),
                   "acc": round((pred.argmax(-1) == gold).float().mean().item(), 4)}
    model.train()
    return rows


def export(model, out_dir, f32=False):
    """HF layout: config.json + model.safetensors (f16), and with `f32` the f32 weights for a
    later piece on another machine."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    model.config.save_pretrained(out_dir)
    sd = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file({k: v.half() for k, v in sd.items()}, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    if f32:
        save_file(sd, os.path.join(out_dir, "f32.safetensors"), metadata={"format": "pt"})


def train(a):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    seen = part_files(a.tokens, "train")
    loaded, meta = load_pairs(seen)
    train_pairs = {t: p.to(device) for t, p in loaded.items()}
    val = {t: p.to(device) for t, p in load_pairs(part_files(a.tokens, "val"))[0].items()} if a.val else None
    tokens, codebook = meta["tokens_per_image"], meta["codebook"]
    model = model_for(a.hidden, a.layers, a.heads or max(1, a.hidden // 64), codebook, 8 * tokens).to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    keep = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": keep, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    state = {"step": 0, "tokens": 0, "seconds": 0.0, "curve": []}
    state, ck = resume(a.ckpt, a.init_f32, model, opt, state, device)
    if ck is not None:
        gen.set_state(ck["gen"])
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"params": params, "hidden": a.hidden, "layers": a.layers, "train_pairs": {t: len(p) for t, p in train_pairs.items()}}), flush=True)

    def lr_at(tok):
        # cosine over tokens, or over wall-clock seconds with --total-seconds (a run planned as
        # pieces of a lease whose throughput is known only once it runs)
        warm = min(1.0, tok / a.warmup_tokens)
        frac = min(1.0, state["seconds"] / a.total_seconds if a.total_seconds else tok / a.total_tokens)
        return a.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    def save():
        if a.ckpt:
            save_checkpoint(a.ckpt, model=model.state_dict(), opt=opt.state_dict(), state=state,
                            gen=gen.get_state(), args=vars(a))

    def evaluate(tag):
        row = {"step": state["step"], "tokens": state["tokens"], "seconds": round(state["seconds"], 1), "tag": tag,
               "train_loss": state.get("loss")}
        if val is not None:
            row["val"] = validate(model, val, a.val_sentences, tokens, device)
        state["curve"].append(row)
        print(json.dumps(row), flush=True)

    start, base = time.time(), state["seconds"]
    eval_timer, ckpt_timer = Every(a.eval_every), Every(a.ckpt_every)
    losses = []
    pool_timer = Every(30)
    while time.time() - start < a.seconds and state["tokens"] < a.total_tokens:
        if a.total_seconds and state["seconds"] >= a.total_seconds:
            break
        if pool_timer.due():  # parts tokenized since the last look join the pool
            files = part_files(a.tokens, "train")
            if files != seen:
                train_pairs, seen = {t: p.to(device) for t, p in load_pairs(files)[0].items()}, files
                print(json.dumps({"pool": {t: len(p) for t, p in train_pairs.items()}, "step": state["step"]}), flush=True)
        k = int(torch.randint(1, 4, (1,), generator=gen))
        # the same number of tokens per step whatever K is
        b = max(1, a.batch_tokens // ((2 * k + 2) * tokens))
        s = sentences(train_pairs, k, b, gen, device)
        for g in opt.param_groups:
            g["lr"] = lr_at(state["tokens"])
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(input_ids=s).logits
        loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, codebook), s[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        state["step"] += 1
        state["tokens"] += s.numel()
        state["seconds"] = base + time.time() - start
        losses.append(loss.detach())
        if state["step"] % 100 == 0:
            state["loss"] = round(torch.stack(losses).mean().item(), 4)
            losses = []
            print(json.dumps({"step": state["step"], "tokens_M": round(state["tokens"] / 1e6, 1),
                              "loss": state["loss"], "lr": lr_at(state["tokens"]),
                              "tok_per_s": round(state["tokens"] / max(state["seconds"], 1e-9))}), flush=True)
        if eval_timer.due():
            evaluate("periodic")
        if a.ckpt and ckpt_timer.due():
            save()
    evaluate("end")
    save()
    if a.export:
        export(model, a.export, f32=True)
        with open(os.path.join(a.export, "curve.jsonl"), "w") as f:
            for row in state["curve"]:
                f.write(json.dumps(row) + "\n")
    if a.result:
        with open(a.result, "a") as f:
            f.write(json.dumps({"hidden": a.hidden, "layers": a.layers, "params": params, **state["curve"][-1]}) + "\n")


def scaling(a):
    """`--widths` trained at once on one GPU for `--seconds` each (same data, same schedule
    length in tokens), one line per width and per evaluation in `--out`."""
    procs = []
    for w in [int(x) for x in a.widths.split(",")]:
        cmd = [sys.executable, __file__, "train", "--tokens", a.tokens, "--hidden", str(w), "--layers", str(a.layers),
               "--seconds", str(a.seconds), "--total-tokens", str(a.total_tokens), "--eval-every", str(a.eval_every),
               "--val", "--val-sentences", str(a.val_sentences), "--result", a.out, "--export", f"{a.out}.{w}"]
        procs.append(subprocess.Popen(cmd, stdout=open(f"{a.out}.{w}.log", "w"), stderr=subprocess.STDOUT))
    for p in procs:
        p.wait()


def choose(a):
    """The main run's width from a scaling run, by a rule fixed before it ran: the widest width
    whose f16 weights fit `--max-mib` and whose throughput reaches `--goal-tokens` in
    `--main-seconds`. The scaling run's widths share one GPU, so each one's throughput alone is
    estimated as its shared rate times the number of widths. Also prints every width's
    validation cross-entropy (mean over tasks) at the tokens all of them reached, the scaling
    result."""
    rows = {}
    for path in sorted(glob.glob(f"{a.out}.*/curve.jsonl")):
        w = int(os.path.basename(os.path.dirname(path)).rsplit(".", 1)[1])
        curve = [json.loads(l) for l in open(path)]
        cfg = json.load(open(os.path.join(os.path.dirname(path), "config.json")))
        params = os.path.getsize(os.path.join(os.path.dirname(path), "model.safetensors")) / 2**20
        rows[w] = {"curve": curve, "mib": round(params, 2), "rate": curve[-1]["tokens"] / curve[-1]["seconds"],
                   "layers": cfg["num_hidden_layers"]}
    if not rows:
        raise SystemExit(f"no {a.out}.*/curve.jsonl")
    common = min(r["curve"][-1]["tokens"] for r in rows.values())

    def ce_at(curve, tok):
        pts = [(c["tokens"], sum(v["ce"] for v in c["val"].values()) / len(c["val"])) for c in curve if "val" in c]
        for (t0, c0), (t1, c1) in zip(pts, pts[1:]):
            if t0 <= tok <= t1:
                return c0 + (c1 - c0) * (tok - t0) / max(t1 - t0, 1)
        return pts[-1][1]

    n = len(rows)
    report = {"tokens_compared": common, "widths": {}}
    for w, r in sorted(rows.items()):
        alone = r["rate"] * n
        report["widths"][w] = {"val_ce_at_common": round(ce_at(r["curve"], common), 4), "mib_f16": r["mib"],
                               "shared_tok_per_s": round(r["rate"]), "est_alone_tok_per_s": round(alone),
                               "fits": r["mib"] <= a.max_mib and alone * a.main_seconds >= a.goal_tokens}
    fit = [w for w, v in report["widths"].items() if v["fits"]]
    report["chosen"] = max(fit) if fit else min(rows)
    report["layers"] = rows[report["chosen"]]["layers"]
    print(json.dumps(report))
    with open(a.out + ".choice.json", "w") as f:
        json.dump(report, f)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--tokens", required=True)
    t.add_argument("--hidden", type=int, default=320)
    t.add_argument("--layers", type=int, default=6)
    t.add_argument("--heads", type=int, default=0, help="default: hidden / 64")
    t.add_argument("--batch-tokens", type=int, default=65536)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--warmup-tokens", type=float, default=2e7)
    t.add_argument("--total-tokens", type=float, default=1.3e9)
    t.add_argument("--seconds", type=float, default=500, help="this piece's wall-clock budget")
    t.add_argument("--total-seconds", type=float, default=0,
                   help="the whole run's seconds: the schedule's length in time instead of --total-tokens")
    t.add_argument("--val", action="store_true", help="validate on OUT/val-*.u16")
    t.add_argument("--val-sentences", type=int, default=256)
    t.add_argument("--eval-every", type=float, default=120)
    t.add_argument("--ckpt", default="")
    t.add_argument("--ckpt-every", type=float, default=120)
    t.add_argument("--init-f32", default="")
    t.add_argument("--export", default="")
    t.add_argument("--result", default="")
    t.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("scaling")
    s.add_argument("--tokens", required=True)
    s.add_argument("--widths", default="192,256,320")
    s.add_argument("--layers", type=int, default=6)
    s.add_argument("--seconds", type=float, default=240)
    s.add_argument("--total-tokens", type=float, default=3e8)
    s.add_argument("--eval-every", type=float, default=60)
    s.add_argument("--val-sentences", type=int, default=256)
    s.add_argument("--out", required=True)
    c = sub.add_parser("choose")
    c.add_argument("--out", required=True, help="the scaling run's --out")
    c.add_argument("--main-seconds", type=float, required=True)
    c.add_argument("--goal-tokens", type=float, default=1.25e9)
    c.add_argument("--max-mib", type=float, default=16.0)
    a = p.parse_args()
    {"train": train, "scaling": scaling, "choose": choose}[a.cmd](a)


if __name__ == "__main__":
    main()
