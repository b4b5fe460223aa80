#!/usr/bin/env bash
# One GPU lease of the demo tokenizer's training (issue [demo-model-v2]), in calls that each carry
# one part of the training mosaics (a call carries at most 64 MiB with the repository):
#   STAGE=first   [.data/tok/a: mosaics + train-069 + val256.u8, .bin/vq_profile_gpu.xz]
#                 the VQGAN step timing of [gpu-speed] (idle GPU), then the codebook sweep, then the
#                 chosen configuration's training started in the background (it picks up the
#                 mosaics later calls bring).
#   STAGE=resume  [a part with val256.u8 (VAL=its path), INIT's files]: a further piece of a
#                 trained tokenizer in the background, no sweep: `--init-f32 $INIT` (comma-separated
#                 f32 files or the shipped f16 model.safetensors), codes and width from CONFIG
#                 (default models/tiny-lvm-v2/tokenizer/config.json), a new schedule of
#                 SECONDS_MAIN and peak LR (default 2e-4).
#   STAGE=upload  [.data/tok/b, c, ...]: prints the trainer's log; copies its latest export.
#   STAGE=finish  waits for the trainer and copies the final export (f16 model, f32 parts, curve).
# Locally: mkdir -p .data/tok/{a..f}, the mosaics spread over them (scripts/demo/v2/README.md).
set -uo pipefail
out=${OUT:-/tmp/tok-out}
mkdir -p "$out" /tmp/tok
seconds=${SECONDS_MAIN:-900}
case "${STAGE:-first}" in
first)
    nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$out/gpu.txt"
    if [ -f .bin/vq_profile_gpu.xz ]; then
        xz -dc .bin/vq_profile_gpu.xz > /tmp/vqp && chmod +x /tmp/vqp
        { echo '# ours (vq_profile_gpu --conv gemm), fused kernels, Burn AdamW and FusedAdamW rows'
          timeout 150 /tmp/vqp --reps 10 --conv gemm
          echo '# PyTorch: the whole step'
          timeout 120 python3 scripts/bench/torch_vq_step.py --hidden 64 --mult 1,2,2 --codebook 1024 --dim 32 --batch 64
        } > "$out/vq-profile.jsonl" 2> "$out/vq-profile.err"
        cat "$out/vq-profile.jsonl"
    fi
    python3 scripts/demo/v2/tokenizer.py sweep --data .data/tok --held-out .data/tok/a/train-069.jpg \
        --seconds "${SWEEP_SECONDS:-180}" --max-mosaics 6 --out /tmp/tok/sweep.jsonl
    cat /tmp/tok/sweep.jsonl.*.log > "$out/sweep-logs.txt"
    cp /tmp/tok/sweep.jsonl /tmp/tok/sweep.jsonl.choice.json "$out/"
    read -r codes dim l2 < <(python3 -c "import json; c = json.load(open('/tmp/tok/sweep.jsonl.choice.json')); print(c['codes'], c['code_dim'], int(c['l2']))")
    flag=""; [ "$l2" = 0 ] && flag="--no-l2"
    setsid nohup python3 scripts/demo/v2/tokenizer.py train --data "$PWD/.data/tok" --ckpt /tmp/tok/main.pt \
        --codes "$codes" --code-dim "$dim" $flag --val "$PWD/.data/tok/a/val256.u8" --seconds "$seconds" \
        --total-seconds "$seconds" --eval-every 90 --export /tmp/tok/export > /tmp/tok/main.log 2>&1 < /dev/null &
    sleep 20; cat /tmp/tok/main.log
    ;;
resume)
    config=${CONFIG:-models/tiny-lvm-v2/tokenizer/config.json}
    read -r codes dim < <(python3 -c "import json; c = json.load(open('$config')); print(c['num_embeddings'], c['embed_dim'])")
    data_root=$(dirname "$(dirname "${VAL:?VAL=path of val256.u8}")")
    setsid nohup python3 scripts/demo/v2/tokenizer.py train --data "$PWD/$data_root" --ckpt /tmp/tok/main.pt \
        --init-f32 "${INIT:?INIT=weights to start from}" --codes "$codes" --code-dim "$dim" --lr "${LR:-2e-4}" \
        --val "$PWD/$VAL" --seconds "$seconds" --total-seconds "$seconds" --eval-every 90 \
        --export /tmp/tok/export > /tmp/tok/main.log 2>&1 < /dev/null &
    sleep 30; cat /tmp/tok/main.log
    ;;
upload)
    ls .data/tok/*/ | grep -c jpg
    tail -4 /tmp/tok/main.log
    [ -f /tmp/tok/export/model.safetensors ] && cp /tmp/tok/export/model.safetensors /tmp/tok/export/config.json "$out/"
    cp /tmp/tok/main.log "$out/"
    ;;
finish)
    for _ in $(seq 1 ${WAIT_STEPS:-55}); do
        pgrep -f "tokenizer.py train" > /dev/null || break
        sleep 10
    done
    grep -v '"rec_mse"' /tmp/tok/main.log | tail -20
    cp /tmp/tok/main.log "$out/"
    cp /tmp/tok/export/* "$out/" 2>/dev/null
    ls -l "$out"
    ;;
esac
