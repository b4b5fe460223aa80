#!/usr/bin/env python3
"""Builds docs/tiny-lvm/RESULTS.md's tables and figures from the evaluation reports that
scripts/tiny_lvm_cpu.sh writes (docs/tiny-lvm/results/TASK/report.json; a LoRA run's report, if
any, in docs/tiny-lvm/results/TASK/lora/report.json). The headline K is the refiner's training K.

    python3 scripts/tiny_lvm_results.py > docs/tiny-lvm/results/tables.md
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

root = Path(__file__).resolve().parent.parent / "docs" / "tiny-lvm" / "results"
cols = "| model | token acc | PSNR dB | SSIM | cos area (all 256) | cos area (positions 171-256) | refiner params |"
sep = "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"


def row(name, m, params):
    return (f"| {name} | {m['token_accuracy']:.4f} | {m['psnr']:.2f} | {m['ssim']:.4f} | "
            f"{m['cos_area']:.2f} | {m['cos_area_last_third']:.2f} | {params} |")


fig2, ax2 = plt.subplots(1, 3, figsize=(13, 3.4))
fig3, ax3 = plt.subplots(1, 3, figsize=(13, 3.4))
for i, task in enumerate(["colorization", "inpainting", "edges"]):
    base_path, lora_path = root / task / "report.json", root / task / "lora" / "report.json"
    if not base_path.exists():
        print(f"## {task}\n\nno report at {base_path}\n")
        continue
    base = {r["k"]: r for r in json.load(open(base_path))}
    lora = {r["k"]: r for r in json.load(open(lora_path))} if lora_path.exists() else {}
    K = int(__import__("os").environ.get("K", "1"))
    b2 = base[K]
    e = b2["evaluation"]
    print(f"## {task} (K = {K}, {e['samples']} validation prompts)\n")
    print(cols)
    print(sep)
    print(row("frozen backbone", e["backbone"], 0))
    if K in lora:
        print(row("backbone + LoRA", lora[K]["evaluation"]["backbone"], 0))
    else:
        print("| backbone + LoRA | not run | | | | | |")
    print(row("backbone + refiner", e["refined"], b2["refiner_params"]))
    if K in lora:
        print(row("backbone + LoRA + refiner", lora[K]["evaluation"]["refined"], b2["refiner_params"]))
    else:
        print("| backbone + LoRA + refiner | not run | | | | | |")
    print(f"\nrefinement {e['refine_ms_per_sample']:.2f} ms per image (CPU, 2 cores)\n")
    print("Metrics against K (backbone → refined):\n")
    print("| K | token acc | PSNR dB | SSIM | cos area (positions 171-256) |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for k in sorted(base):
        b, r = base[k]["evaluation"]["backbone"], base[k]["evaluation"]["refined"]
        print(f"| {k} | {b['token_accuracy']:.4f} → {r['token_accuracy']:.4f} | {b['psnr']:.2f} → {r['psnr']:.2f} | "
              f"{b['ssim']:.4f} → {r['ssim']:.4f} | {b['cos_area_last_third']:.2f} → {r['cos_area_last_third']:.2f} |")
    print()
    cb, cr = e["curve_backbone"], e["curve_refined"]
    w = 8
    smooth = lambda c: [sum(c[max(0, j - w):j + w + 1]) / len(c[max(0, j - w):j + w + 1]) for j in range(len(c))]
    ax2[i].plot(range(1, len(cb) + 1), smooth(cb), label="backbone")
    ax2[i].plot(range(1, len(cr) + 1), smooth(cr), "--", label="refined")
    eu = root / task / "euclidean-snapping" / "report.json"
    if eu.exists():
        ce = {r["k"]: r for r in json.load(open(eu))}[K]["evaluation"]["curve_refined"]
        ax2[i].plot(range(1, len(ce) + 1), smooth(ce), ":", label="refined, Euclidean snap")
    ax2[i].set_title(f"{task} (K={K})")
    ax2[i].set_xlabel("token position")
    ax2[i].set_ylabel("cosine distance to truth")
    ax2[i].legend()
    ks = sorted(base)
    ax3[i].plot(ks, [base[k]["evaluation"]["backbone"]["token_accuracy"] for k in ks], "o-", label="backbone")
    ax3[i].plot(ks, [base[k]["evaluation"]["refined"]["token_accuracy"] for k in ks], "o-", label="refined")
    ax3[i].set_title(task)
    ax3[i].set_xlabel("K (demonstration pairs)")
    ax3[i].set_ylabel("token accuracy")
    ax3[i].set_xticks(ks)
    ax3[i].legend()
fig2.tight_layout()
fig2.savefig(root / "figure2_position_error.png", dpi=90)
fig3.tight_layout()
fig3.savefig(root / "figure3_metrics_vs_k.png", dpi=90)
print("figures:", root / "figure2_position_error.png", root / "figure3_metrics_vs_k.png", file=sys.stderr)
