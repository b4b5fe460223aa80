#!/usr/bin/env bash
# On the GPU machine (issue [gpu-speed]): backbone-training speed, ours
# (`ar-refine pretrain`, carried as .bin/ar-refine.xz) and PyTorch's
# (scripts/bench/torch_lm_step.py) in the same lease, at the v1 demo backbone's shape
# (scripts/bench/configs/tiny-lvm-v1-backbone.json: hidden 256, 6 layers, 4 heads, vocabulary 1,024), batch 16,
# sentences of K = 1, 2, 3 (1,024 / 1,536 / 2,048 tokens). Build here first:
#   cargo build --release --no-default-features --features cuda --example ar-refine
#   mkdir -p .bin && strip -o /tmp/pb target/release/examples/ar-refine && xz -c /tmp/pb > .bin/ar-refine.xz
set -uo pipefail
out=${OUT:-/tmp/lm-train}
mkdir -p "$out" .run
xz -dc .bin/ar-refine.xz > .run/ar-refine && chmod +x .run/ar-refine
# generated images (no photos on the GPU machine): the speed does not depend on them
timeout 240 .run/ar-refine pretrain --tokenizer models/tiny-lvm-v2/tokenizer --train-images 256 \
    --val-images 16 --sentences 48 --k 1,2,3 --hidden 256 --intermediate 704 --layers 6 \
    --heads 4 --steps 40 --batch 16 --log-every 10 --checkpoint-every 1000 --out .run/pb \
    > "$out/lm-ours.log" 2>&1
echo "ours: rc $?"
timeout 150 python3 scripts/bench/torch_lm_step.py --config scripts/bench/configs/tiny-lvm-v1-backbone.json \
    --batch 16 > "$out/lm-torch.jsonl" 2> "$out/lm-torch.err"
echo "PyTorch: rc $?"
grep -E "^step|^\{" "$out/lm-ours.log" | tail -8
cat "$out/lm-torch.jsonl"
