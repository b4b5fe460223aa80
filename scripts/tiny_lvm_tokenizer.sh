#!/usr/bin/env bash
# Runs on the GPU machine: step 1 of the small-LVM recipe ([tiny-lvm]), tokenizer training at
# 64×64 → 16×16 tokens for a few codebook shapes, one JSON line each (validation PSNR before and
# after). Expects .bin/train_tokenizer built on the CPU machine:
#   cargo build --release --no-default-features --features cuda --example train_tokenizer
# and the data subset in .data/ (val.u8 + train-jpg/train-000..005.jpg). Logs go to $OUT.
set -uo pipefail
out="${OUT:-gpu-out}"; mkdir -p "$out"
steps="${STEPS:-1500}"; secs="${SECS:-270}"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
for shape in ${SHAPES:-1024x32 4096x32}; do
    k="${shape%x*}"; d="${shape#*x}"
    echo "== codebook $k × $d, $steps steps (limit ${secs}s)"
    timeout "$secs" ./.bin/train_tokenizer --data .data --train-images 6144 --val-images 500 \
        --codebook "$k" --dim "$d" --steps "$steps" --batch 64 --lr 4e-4 --out "$out/tok-$k-$d" \
        2> >(tr '\r' '\n' | tail -3 >&2) | tee -a "$out/tokenizer.jsonl"
done
