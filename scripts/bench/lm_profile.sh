#!/usr/bin/env bash
# On the GPU machine (issue [gpu-speed] item 5): where the backbone's training step goes, ours
# (benches/gpu/lm_profile.rs, carried as .bin/lm_profile_gpu.xz, and with Burn's tuner as
# .bin/lm_profile_gpu-autotune.xz when present) and PyTorch's operations at the same shapes
# (scripts/bench/torch_lm_ops.py) plus its whole step (scripts/bench/torch_lm_step.py), in one lease.
# Build here first:
#   bash scripts/bench/build_gpu.sh lm_profile_gpu
set -uo pipefail
out=${OUT:-/tmp/lm-profile}
mkdir -p "$out" .run
# ours with the crate's kernels, then (-unfused) with AR_REFINE_FUSED=0: Burn's tensor operations
for v in "" -unfused ${AUTOTUNE--autotune}; do
    bin=".bin/lm_profile_gpu${v/-unfused/}.xz"
    [ -f "$bin" ] || continue
    xz -dc "$bin" > ".run/p$v" && chmod +x ".run/p$v"
    fused=1; [ "$v" = -unfused ] && fused=0
    AR_REFINE_FUSED=$fused timeout "${LIMIT:-200}" ".run/p$v" "$@" > "$out/lm-profile$v.jsonl" 2> "$out/lm-profile$v.err"
    echo "ours$v: rc $?"
done
timeout 120 python3 scripts/bench/torch_lm_ops.py > "$out/lm-torch-ops.jsonl" 2> "$out/lm-torch-ops.err"
echo "PyTorch ops: rc $?"
timeout 120 python3 scripts/bench/torch_lm_step.py --config scripts/bench/configs/tiny-lvm-v1-backbone.json \
    --batch 16 --lengths 1536 > "$out/lm-torch-step.jsonl" 2> "$out/lm-torch-step.err"
echo "PyTorch step: rc $?"
tail -n +1 "$out"/*.jsonl
