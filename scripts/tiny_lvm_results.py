#!/usr/bin/env python3
"""Builds docs/tiny-lvm/RESULTS.md's tables and figures from the evaluation reports of the
small-LVM recipe (scripts/tiny_lvm.sh, stages refine and lora), copied to
docs/tiny-lvm/results/TASK/report.json (backbone and backbone + refiner, K = 1, 2, 3),
docs/tiny-lvm/results/TASK/lora/report.json (LoRA-merged backbone, alone and + refiner) and the
generation timings written beside the pair caches (generation-pairs-kK.json), and, where
present, TASK/cpu/report.json and TASK/lora/cpu/report.json: the same evaluation rerun on the CPU
from the GPU's cached outputs, which also counts the codes the refiner changed. The headline K is
the refiner's training K (env K, default 2).

    python3 scripts/tiny_lvm_results.py > docs/tiny-lvm/results/tables.md
"""
import json
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

root = Path(__file__).resolve().parent.parent / "docs" / "tiny-lvm" / "results"
K = int(os.environ.get("K", "2"))
cols = ("| model | token acc | PSNR dB | SSIM | cos area (all 256) | cos area (positions 171-256) "
        "| refiner params | refine / generate time |")
sep = "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"


def row(name, m, params, frac):
    return (f"| {name} | {m['token_accuracy']:.4f} | {m['psnr']:.2f} | {m['ssim']:.4f} | "
            f"{m['cos_area']:.2f} | {m['cos_area_last_third']:.2f} | {params} | {frac} |")


def generation_ms(path):
    """Milliseconds per generated image from a generation-*.json timing, or None."""
    if not path.exists():
        return None
    g = json.load(open(path))
    return 1000.0 * g["seconds"] / g["prompts"]


def smooth(c, w=8):
    return [sum(c[max(0, j - w):j + w + 1]) / len(c[max(0, j - w):j + w + 1]) for j in range(len(c))]


fig2, ax2 = plt.subplots(1, 3, figsize=(13, 3.4))
fig3, ax3 = plt.subplots(2, 3, figsize=(13, 6.2))
for i, task in enumerate(["colorization", "inpainting", "edges"]):
    base_path, lora_path = root / task / "report.json", root / task / "lora" / "report.json"
    if not base_path.exists():
        print(f"## {task}\n\nno report at {base_path}\n")
        continue
    base = {r["k"]: r for r in json.load(open(base_path))}
    lora = {r["k"]: r for r in json.load(open(lora_path))} if lora_path.exists() else {}
    e = base[K]["evaluation"]
    params = base[K]["refiner_params"]
    gen = generation_ms(root / task / f"generation-pairs-k{K}.json")
    frac = f"{e['refine_ms_per_sample']:.1f} / {gen:.1f} ms = {100 * e['refine_ms_per_sample'] / gen:.0f} %" if gen else "–"
    print(f"## {task} (K = {K}, {e['samples']} validation prompts)\n")
    print(cols)
    print(sep)
    print(row("frozen backbone", e["backbone"], 0, "–"))
    if K in lora:
        print(row("backbone + LoRA", lora[K]["evaluation"]["backbone"], 0, "–"))
    else:
        print("| backbone + LoRA | not run | | | | | | |")
    print(row("backbone + refiner", e["refined"], params, frac))
    if K in lora:
        le = lora[K]["evaluation"]
        lgen = generation_ms(root / task / "lora" / f"generation-pairs-k{K}.json")
        lfrac = f"{le['refine_ms_per_sample']:.1f} / {lgen:.1f} ms = {100 * le['refine_ms_per_sample'] / lgen:.0f} %" if lgen else "–"
        print(row("backbone + LoRA + refiner", le["refined"], params, lfrac))
    else:
        print("| backbone + LoRA + refiner | not run | | | | | | |")
    print("\nMetrics against K (backbone → refined):\n")
    print("| K | token acc | PSNR dB | SSIM | cos area (positions 171-256) |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for k in sorted(base):
        b, r = base[k]["evaluation"]["backbone"], base[k]["evaluation"]["refined"]
        print(f"| {k} | {b['token_accuracy']:.4f} → {r['token_accuracy']:.4f} | {b['psnr']:.2f} → {r['psnr']:.2f} | "
              f"{b['ssim']:.4f} → {r['ssim']:.4f} | {b['cos_area_last_third']:.2f} → {r['cos_area_last_third']:.2f} |")
    print()
    changes = []
    for name, path in [("backbone + refiner", root / task / "cpu" / "report.json"),
                       ("backbone + LoRA + refiner", root / task / "lora" / "cpu" / "report.json")]:
        if path.exists():
            changes += [(name, r) for r in json.load(open(path)) if "changes" in r["evaluation"]]
    if changes:
        print("What the refiner changed (CPU rerun on the same outputs; fractions of all tokens):\n")
        print("| model | K | changed | fixed (wrong → right) | broken (right → wrong) | "
              "distinct codes: backbone / refined / truth |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for name, r in changes:
            c = r["evaluation"]["changes"]
            print(f"| {name} | {r['k']} | {c['changed']:.4f} | {c['fixed']:.4f} | {c['broken']:.4f} | "
                  f"{c['distinct_backbone']} / {c['distinct_refined']} / {c['distinct_truth']} |")
        print()
    cb, cr = e["curve_backbone"], e["curve_refined"]
    x = range(1, len(cb) + 1)
    ax2[i].plot(x, smooth(cb), label=f"backbone (area {e['backbone']['cos_area']:.1f})")
    if K in lora:
        le = lora[K]["evaluation"]
        ax2[i].plot(x, smooth(le["curve_backbone"]), ":", label=f"+ LoRA (area {le['backbone']['cos_area']:.1f})")
    ax2[i].plot(x, smooth(cr), "--", label=f"+ refiner (area {e['refined']['cos_area']:.1f})")
    ax2[i].axvline(171, color="grey", lw=0.5)
    ax2[i].set_title(f"{task} (K={K})")
    ax2[i].set_xlabel("token position")
    ax2[i].set_ylabel("cosine distance to truth")
    ax2[i].legend(fontsize=8)
    ks = sorted(base)
    for j, (metric, label) in enumerate([("token_accuracy", "token accuracy"), ("psnr", "PSNR dB")]):
        ax3[j][i].plot(ks, [base[k]["evaluation"]["backbone"][metric] for k in ks], "o-", label="backbone")
        ax3[j][i].plot(ks, [base[k]["evaluation"]["refined"][metric] for k in ks], "o-", label="+ refiner")
        ax3[j][i].set_title(task)
        ax3[j][i].set_xlabel("K (demonstration pairs)")
        ax3[j][i].set_ylabel(label)
        ax3[j][i].set_xticks(ks)
        ax3[j][i].legend(fontsize=8)
fig2.tight_layout()
fig2.savefig(root / "figure2_position_error.png", dpi=90)
fig3.tight_layout()
fig3.savefig(root / "figure3_metrics_vs_k.png", dpi=90)
print("figures:", root / "figure2_position_error.png", root / "figure3_metrics_vs_k.png", file=sys.stderr)
