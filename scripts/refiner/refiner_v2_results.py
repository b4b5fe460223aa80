#!/usr/bin/env python3
"""Tables of docs/tiny-lvm/RESULTS.md from the evaluation reports ([refiner-v2]).

    python3 scripts/refiner/refiner_v2_results.py docs/tiny-lvm/results > docs/tiny-lvm/results/tables.md

Reads, per task, RESULTS/TASK/k2/report.json (every method at K = 2), RESULTS/TASK/k13/report.json
(paper and best at K = 1, 3) and RESULTS/TASK/lora/report.json (the LoRA backbone alone and with
the refiners), all written by `ar-refine evaluate` on the same cached backbone outputs.
"""
import json
import os
import sys

ROOT = sys.argv[1] if len(sys.argv) > 1 else "docs/tiny-lvm/results"
TASKS = ["colorization", "inpainting", "edges"]
LABELS = {
    "paper": "paper (answer only, cosine, snap)",
    "cosine-query": "cosine + query",
    "ce-answer": "cross-entropy, answer only",
    "ce-query": "cross-entropy + query",
    "ce-query-confidence": "cross-entropy + query + confidence",
    "corrector": "**best: corrector + gate**",
    "corrector-argmax": "corrector, argmax",
    "corrector-expected": "corrector, expected-embedding snap",
    "prompt-only": "control: prompt only (no backbone answer)",
    "hidden": "corrector + hidden states",
    "identity": "control: identity (corrector at initialisation, argmax)",
}


def load(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def iv(d, digits):
    return f"{d['mean']:+.{digits}f} [{d['lo']:+.{digits}f}, {d['hi']:+.{digits}f}]"


def pm(mean, std, seeds, digits):
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if seeds > 1 else f"{mean:.{digits}f}"


def header():
    return (
        "| model | seeds | rule | token acc | Δ acc [95 % CI] | PSNR dB | Δ PSNR dB [95 % CI] | "
        "PSNR vs decoded truth | SSIM | top-5 | changed / fixed / broken | distinct codes |\n"
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    )


def backbone_row(name, c):
    b = c["backbone"]["metrics"]
    top5 = f"{b['top5_accuracy']:.4f}" if b.get("top5_accuracy") is not None else "–"
    return (
        f"| {name} | – | – | {b['token_accuracy']:.4f} | – | {b['psnr']:.2f} | – | {b['psnr_decoded']:.2f} | "
        f"{b['ssim']:.4f} | {top5} | – | {c['backbone']['distinct']} (truth {c['distinct_truth']}) |\n"
    )


def method_row(name, m, c):
    seeds = len(m["per_seed"])
    x, s = m["metrics"], m["std"]
    top5 = f"{x['top5_accuracy']:.4f}" if x.get("top5_accuracy") is not None else "–"
    ch = m["changes"]
    share = ch["distinct"] / max(1, c["backbone"]["distinct"])
    return (
        f"| {name} | {seeds} | {m['decision']} | {pm(x['token_accuracy'], s['token_accuracy'], seeds, 4)} | "
        f"{iv(m['delta']['token_accuracy'], 4)} | {pm(x['psnr'], s['psnr'], seeds, 2)} | {iv(m['delta']['psnr'], 3)} | "
        f"{x['psnr_decoded']:.2f} | {x['ssim']:.4f} | {top5} | {ch['changed']:.4f} / {ch['fixed']:.4f} / {ch['broken']:.4f} | "
        f"{ch['distinct']} ({100 * share:.0f} %) |\n"
    )


def main():
    out = []
    for task in TASKS:
        k2 = load(f"{ROOT}/{task}/k2/report.json")
        if not k2:
            continue
        c = k2[0]["comparison"]
        out.append(f"### {task} (K = 2, {c['samples']} evaluation prompts from val.u8)\n\n")
        out.append(header())
        out.append(backbone_row("frozen backbone", c))
        for m in c["methods"]:
            out.append(method_row(LABELS.get(m["name"], m["name"]), m, c))
        lora = load(f"{ROOT}/{task}/lora/report.json")
        if lora:
            lc = lora[0]["comparison"]
            out.append(backbone_row("backbone + LoRA", lc))
            for m in lc["methods"]:
                out.append(method_row("backbone + LoRA + " + LABELS.get(m["name"], m["name"]), m, lc))
        out.append(f"\nCommand: `{k2[0]['command']}`\n")
        k13 = load(f"{ROOT}/{task}/k13/report.json")
        if k13:
            out.append("\nAgainst K (backbone → method, Δ with 95 % CI):\n\n")
            out.append("| K | model | token acc | Δ acc [95 % CI] | PSNR dB | Δ PSNR dB [95 % CI] |\n| ---: | --- | ---: | ---: | ---: | ---: |\n")
            for r in sorted(k13 + k2, key=lambda r: r["k"]):
                rc = r["comparison"]
                b = rc["backbone"]["metrics"]
                for m in rc["methods"]:
                    if m["name"] not in ("paper", "corrector"):
                        continue
                    x = m["metrics"]
                    out.append(
                        f"| {r['k']} | {LABELS[m['name']]} | {b['token_accuracy']:.4f} → {x['token_accuracy']:.4f} | "
                        f"{iv(m['delta']['token_accuracy'], 4)} | {b['psnr']:.2f} → {x['psnr']:.2f} | {iv(m['delta']['psnr'], 3)} |\n"
                    )
        out.append("\n")
    sys.stdout.write("".join(out))


if __name__ == "__main__":
    main()
