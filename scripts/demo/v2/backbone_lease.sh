#!/usr/bin/env bash
# One GPU lease of the demo backbone's training (issue [demo-model-v2] step 2), in calls that each
# carry one part of the photos (a call carries at most 64 MiB with the repository; run it from a
# checkout holding only scripts/ and models/tiny-lvm-v2/tokenizer, ~10 MB, so that ~50 MB of
# photos travel per call). Back to back: the machine is given back 30 s after a call ends, and
# the background jobs (setsid) live on between calls while it is held.
#   STAGE=first   [.data/bb/a: val.u8 + train-jpg/train-000..015.jpg, .bin/ar-refine.xz]: every photo's task codes (crate, CUDA) for the validation
#                 photos and part a; then, in the background, the decoder-only fine-tune of the
#                 tokenizer (DEC_SECONDS) and the scaling run (widths WIDTHS, SCALE_SECONDS each,
#                 all at once).
#   STAGE=upload  [.data/bb/b, then c]: that part's task codes (PART=b|c); prints the logs.
#   STAGE=main    waits for the scaling run, chooses the width (backbone.py choose: the widest
#                 that fits 16 MiB in f16 and reaches 1.25e9 tokens in MAIN_SECONDS) and starts
#                 the main run in the background, its cosine over MAIN_SECONDS of wall clock.
#   STAGE=wait    prints the logs for up to WAIT seconds while the main run trains.
#   STAGE=finish  waits for both runs, evaluates the new backbone with the crate (`ar-refine evaluate`,
#                 CUDA, K = 2, COUNT validation prompts per task, free-running greedy) and copies
#                 the exports and one archive of logs to $OUT.
# The backbone trains on mosaics 000..059 only: 060..069 (photos 61,440..71,679) are kept for the
# refiners' training outputs (the backbone's errors on photos it did not train on).
set -uo pipefail
out=${OUT:-/tmp/bb-out}
mkdir -p "$out" /tmp/bb/tok /tmp/bb/stage /tmp/dec .run-bin
unpack() {
    for f in .bin/*.xz; do
        [ -e "$f" ] || continue
        b=.run-bin/$(basename "$f" .xz)
        [ -x "$b" ] || { xz -dc "$f" > "$b" && chmod +x "$b"; }
    done
}
tokens() {  # $1 = part folder under .data/bb; train codes of its mosaics into /tmp/bb/tok/$1
    local s=$SECONDS
    rm -rf "/tmp/bb/stage/$1"
    .run-bin/ar-refine task-tokens --tokenizer models/tiny-lvm-v2/tokenizer --mosaics ".data/bb/$1" --split train \
        --batch 512 --out "/tmp/bb/stage/$1" 2> "/tmp/bb/tokens-$1.log" \
        && mv "/tmp/bb/stage/$1" "/tmp/bb/tok/$1"
    echo "tokens $1: exit $? in $((SECONDS - s)) s"; tail -3 "/tmp/bb/tokens-$1.log"
}
logs() {
    for f in /tmp/dec/main.log /tmp/bb/scaling.jsonl.*.log /tmp/bb/main.log; do
        [ -e "$f" ] && { echo "== $f"; grep -v '"tok_per_s"\|"rec_mse"' "$f" | tail -4; grep '"tok_per_s"\|"rec_mse"' "$f" | tail -1; }
    done
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
}
case "${STAGE:-first}" in
first)
    unpack
    nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > /tmp/bb/gpu.txt
    s=$SECONDS
    .run-bin/ar-refine task-tokens --tokenizer models/tiny-lvm-v2/tokenizer --raw .data/bb/a/val.u8 --split val \
        --batch 512 --out /tmp/bb/stage/val 2> /tmp/bb/tokens-val.log && mv /tmp/bb/stage/val /tmp/bb/tok/val
    echo "tokens val: exit $? in $((SECONDS - s)) s"; tail -3 /tmp/bb/tokens-val.log
    tokens a
    setsid nohup python3 scripts/demo/v2/tokenizer.py train --decoder-only --data "$PWD/.data/bb" \
        --init-f32 models/tiny-lvm-v2/tokenizer/model.safetensors --codes 1024 --code-dim 8 \
        --lr "${DEC_LR:-2e-4}" --batch "${DEC_BATCH:-64}" --val "$PWD/.data/bb/a/val.u8" --val-n 1000 \
        --seconds "${DEC_SECONDS:-1000}" --total-seconds "${DEC_SECONDS:-1000}" --eval-every 150 \
        --ckpt /tmp/dec/ckpt.pt --export /tmp/dec/export > /tmp/dec/main.log 2>&1 < /dev/null &
    setsid nohup python3 scripts/demo/v2/backbone.py scaling --tokens /tmp/bb/tok --widths "${WIDTHS:-192,256,320}" \
        --seconds "${SCALE_SECONDS:-180}" --eval-every 30 --val-sentences 128 --out /tmp/bb/scaling.jsonl \
        > /tmp/bb/scaling.log 2>&1 < /dev/null &
    sleep 25; logs
    ;;
upload)
    tokens "${PART:?PART=b or c}"
    logs
    ;;
main)
    for _ in $(seq 1 60); do pgrep -f "backbone.py scaling" > /dev/null || break; sleep 5; done
    python3 scripts/demo/v2/backbone.py choose --out /tmp/bb/scaling.jsonl \
        --main-seconds "$(python3 -c "print(${MAIN_SECONDS:-1000} * ${RATE_MARGIN:-0.8})")" || exit 1
    read -r width layers < <(python3 -c "import json; c = json.load(open('/tmp/bb/scaling.jsonl.choice.json')); print(c['chosen'], c['layers'])")
    setsid nohup python3 scripts/demo/v2/backbone.py train --tokens /tmp/bb/tok --hidden "$width" --layers "$layers" \
        --seconds "${MAIN_SECONDS:-1000}" --total-seconds "${MAIN_SECONDS:-1000}" --total-tokens 1e12 \
        --val --eval-every 90 --ckpt /tmp/bb/main.pt --ckpt-every 150 --export /tmp/bb/export \
        > /tmp/bb/main.log 2>&1 < /dev/null &
    sleep 40; logs
    ;;
wait)
    for _ in $(seq 1 $(( ${WAIT:-540} / 10 ))); do pgrep -f "backbone.py train" > /dev/null || break; sleep 10; done
    logs
    ;;
finish)
    for _ in $(seq 1 $(( ${WAIT:-540} / 10 ))); do
        pgrep -f "backbone.py train|tokenizer.py train" > /dev/null || break; sleep 10
    done
    logs
    m=/tmp/bb/model; rm -rf $m; mkdir -p $m/backbone $m/tokenizer
    cp /tmp/bb/export/config.json /tmp/bb/export/model.safetensors $m/backbone/
    tok=models/tiny-lvm-v2/tokenizer
    [ -e /tmp/dec/export/model.safetensors ] && tok=/tmp/dec/export
    cp $tok/config.json $tok/model.safetensors $m/tokenizer/
    for t in colorization inpainting edges; do
        AR_REFINE_PAIR_BATCH=128 timeout "${EVAL_TIMEOUT:-100}" .run-bin/ar-refine evaluate --tokenizer $m/tokenizer \
            --backbone $m/backbone --data .data/bb/a --task $t --k 2 --count "${COUNT:-512}" \
            --refiners 'identity=init(corrector)@argmax' --out /tmp/bb/eval/$t > /tmp/bb/eval-$t.log 2>&1
        echo "evaluate $t: exit $?"; grep -A4 "token acc" /tmp/bb/eval-$t.log | head -6
    done
    cp $m/backbone/model.safetensors "$out/backbone.safetensors"; cp $m/backbone/config.json "$out/backbone-config.json"
    [ -e /tmp/dec/export/model.safetensors ] && cp /tmp/dec/export/model.safetensors "$out/tokenizer.safetensors"
    tar -cJf "$out/logs.tar.xz" --exclude='pairs-*' --exclude='*.pt' --exclude='*.safetensors' --exclude='*.u16' \
        /tmp/bb/*.log /tmp/bb/*.json* /tmp/bb/*.txt /tmp/bb/export /tmp/bb/scaling.jsonl.* /tmp/bb/eval \
        /tmp/bb/tok/*/*.json /tmp/dec/main.log /tmp/dec/export 2>/dev/null
    ls -l "$out"
    ;;
esac
