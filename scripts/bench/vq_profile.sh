#!/usr/bin/env bash
# On the GPU machine (issue [gpu-speed] item 5): where the VQGAN training step's time goes,
# ours (benches/gpu/vq_profile.rs, carried as .bin/vq_profile_gpu.xz) and PyTorch's in the
# same lease. Build here first:
#   bash scripts/bench/build_gpu.sh vq_profile_gpu
set -uo pipefail
out=${OUT:-/tmp/vq-profile}
mkdir -p "$out" .run
xz -dc .bin/vq_profile_gpu.xz > .run/vq_profile_gpu && chmod +x .run/vq_profile_gpu
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$out/gpu.txt"
{
    echo '# ours, row-range convolutions, fused GroupNorm + SiLU kernels, FusedAdamW row last'
    timeout 150 .run/vq_profile_gpu --reps 10 --conv gemm
    echo '# ours, the same with AR_REFINE_FUSED=0 (GroupNorm and SiLU as Burn tensor ops)'
    AR_REFINE_FUSED=0 timeout 150 .run/vq_profile_gpu --reps 10 --conv gemm
    echo '# PyTorch: the layers alone'
    timeout 120 python3 scripts/bench/torch_vq_ops.py --reps 10
    echo '# PyTorch: the whole step'
    timeout 120 python3 scripts/bench/torch_vq_step.py --hidden 64 --mult 1,2,2 --codebook 1024 --dim 32 --batch 64
} > "$out/vq-profile.jsonl" 2> "$out/vq-profile.err"
tail -5 "$out/vq-profile.err"
cat "$out/vq-profile.jsonl"
