#!/usr/bin/env bash
# Runs on the GPU machine: step 1 of the small-LVM recipe ([tiny-lvm]), tokenizer training at
# 64×64 → 16×16 tokens, one JSON line per codebook shape (validation PSNR before and after),
# preceded by the PyTorch baseline of the same training step (scripts/bench/torch_vq_step.py).
# Expects .bin/ar-refine built on the CPU machine:
#   cargo build --release --no-default-features --features cuda --example ar-refine
# and the data subset in .data/ (val.u8 + train-jpg/train-000..005.jpg). Logs go to $OUT.
set -uo pipefail
out="${OUT:-gpu-out}"; mkdir -p "$out"
budget="${BUDGET:-300}"; steps="${STEPS:-20000}"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
if [ "${TORCH:-1}" = 1 ]; then
    timeout 120 python3 scripts/bench/torch_vq_step.py --batch 64 --codebook 1024 --dim 32 | tee "$out/torch_vq_step.jsonl"
fi
for shape in ${SHAPES:-1024x32}; do
    k="${shape%x*}"; d="${shape#*x}"
    echo "== codebook $k × $d, time budget ${budget}s"
    timeout $((budget + 120)) ./.bin/ar-refine train-tokenizer --data .data --train-images 6144 --val-images 1000 \
        --codebook "$k" --dim "$d" --steps "$steps" --batch 64 --lr 4e-4 --restart-every 25 \
        --time-budget "$budget" --log-every 25 --out "$out/tok-$k-$d" \
        2> >(tee "$out/tok-$k-$d.log" | tail -25 >&2) | tee -a "$out/tokenizer.jsonl"
    rm -rf "$out/tok-$k-$d/checkpoints"
done
