#!/usr/bin/env bash
# [refiner-v2] on the GPU machine: the demo LVM's outputs, the refiners of every preset, LoRA and
# the side-by-side evaluation (docs/tiny-lvm-v2/RESULTS.md for models/tiny-lvm-v2, the default;
# docs/tiny-lvm/RESULTS.md for v1), as one pipeline that outlives a 10-minute call:
#   setsid nohup bash scripts/refiner/refiner_v2.sh > runs/pipeline.log 2>&1 &
# then calls that wait and pack runs/pack/* into $OUT (the machine keeps runs/ while held).
# Binaries come from the CPU machine, built with
#   cargo build --release --no-default-features --features cuda --example ar-refine
# stripped and xz-compressed into .bin/; .data/ holds val.u8.xz and train-jpg/train-038..045.jpg
# and train-069.jpg. Photos: refiner training prompts from 38912..47104 of the training mosaics
# (the v2 backbone trained on 0..38912), validation prompts (checkpoint choice, gate
# calibration) from 70656..71680, evaluation on val.u8 (never used for a choice).
# One GPU process at a time for generation: processes sharing the GPU time-slice it, and an
# earlier run with six of them generated 3× slower in total than one alone (RESULTS.md).
#   STAGE=pipeline (default): per task the training + validation pairs (K = 2) and the
#     evaluation pairs (K = 2), then the refiners (JOBS at a time, seed 0 of every preset
#     first) while K = 1, 3 pairs and LoRA run beside them, then the evaluation.
#   STAGE=eval: the evaluation alone (runs/ from an earlier pipeline).
# Other models and photos: M (model folder with tokenizer/ and backbone/), DATA (folder with
# val.u8 and train-jpg/), TRAIN_IMAGES / SELECT_IMAGES (photo ranges), PRESETS (the presets to
# train and evaluate, seed 0 in this order), EXTRA (the presets whose seeds 1, 2 come next;
# default corrector and paper), LORA=0 (no LoRA), K13=0 (no K = 1, 3 evaluation), STEPS,
# DMODEL, LAYERS, JOBS (refiners trained at once), TRAIN_SECS (the training queue's limit).
set -uo pipefail
stage="${STAGE:-pipeline}"
# The binaries and photos the processes read, unpacked or copied once (not by the STAGE=one
# workers) out of the carried folders, each file written whole before it appears: a later
# device call replaces the carried paths (.bin, .data) with this machine's copies, which hold no
# val.u8, and a process opening a file there at that moment does not find it (the 2026-12-03 run
# lost an evaluation that way, `scripts/demo/v2/README.md`).
d=runs/data
if [ "$stage" != one ] && [ ! -e "$d/.ready" ]; then
    mkdir -p .run-bin "$d" && cp -r "${DATA:-.data}/train-jpg" "$d/" && python3 -c 'import glob, lzma, os, sys
def put(path, data, mode=0o644):
    open(path + ".tmp", "wb").write(data); os.chmod(path + ".tmp", mode); os.replace(path + ".tmp", path)
for f in glob.glob(".bin/*.xz"):
    put(".run-bin/" + os.path.basename(f)[:-3], lzma.open(f).read(), 0o755)
src, dst = sys.argv[1], sys.argv[2]
raw = open(src + "/val.u8", "rb").read() if os.path.exists(src + "/val.u8") else lzma.open(src + "/val.u8.xz").read()
put(dst + "/val.u8", raw)' "${DATA:-.data}" "$d" && touch "$d/.ready" || { echo "cannot prepare $d and .run-bin"; exit 1; }
fi
bin="${BIN:-.run-bin}"
tasks="${TASKS:-colorization inpainting edges}"
m="${M:-models/tiny-lvm-v2}"
export AR_REFINE_PAIR_BATCH="${PAIR_BATCH:-128}"
data=(--tokenizer "$m/tokenizer" --backbone "$m/backbone" --data "$d"
      --train-images "${TRAIN_IMAGES:-38912..47104}" --select-images "${SELECT_IMAGES:-70656..71680}")
tc="${TRAIN_COUNT:-3072}"; ec="${EVAL_COUNT:-512}"; ec13="${EVAL13_COUNT:-256}"
pairs_flags=(--k 2 --train-count "$tc" --val-count "${VAL_COUNT:-256}")
# refiner size and schedule (the same for every preset); generation-bound GPU steps cost the
# same at batch 16 and 64, so large batches and few steps
size=(--d-model "${DMODEL:-96}" --layers "${LAYERS:-4}" --heads 4)
sched=(--steps "${STEPS:-500}" --batch "${BATCH:-64}" --lr "${LR:-1e-3}")
# the presets trained (in this order for seed 0) and evaluated; PRESETS="corrector paper" for
# the demo v2 refiners
queue="${PRESETS:-corrector paper prompt-only ce-query-confidence ce-query ce-answer cosine-query}"
presets="$queue"
seeds="0 1 2"
pack=runs/pack
t0=$SECONDS
say() { echo "[$((SECONDS - t0)) s] $*"; }
timed() {  # $1 = label, $2 = log file, then the command
    local label="$1" log="$2" start=$SECONDS; shift 2; "$@" > "$log" 2>&1; local rc=$?
    say "$label: $((SECONDS - start)) s (exit $rc)"; return $rc
}

train_one() {  # $1 = task, $2 = preset, $3 = seed
    local o="runs/$1/$2-s$3"; mkdir -p "$o"
    ln -sfn ../pairs-train "$o/pairs-train"; ln -sfn ../pairs-val "$o/pairs-val"
    local start=$SECONDS
    "$bin/ar-refine" train-refiner "${data[@]}" --task "$1" "${pairs_flags[@]}" --preset "$2" --refiner-seed "$3" \
        "${size[@]}" "${sched[@]}" --out "$o" > "$o/train.log" 2>&1
    echo "$1 $2 s$3: exit $? in $((SECONDS - start)) s: $(tail -1 "$o/train.log" | python3 -c 'import json,sys
try:
    j = json.load(sys.stdin); print("backbone", round(j["val_backbone_accuracy"], 4), "best", j["best"], j["val_accuracy_by_rule"])
except Exception as e: print("no summary")')"
}

eval_task() {  # $1 = task: every method at K = 2, paper and corrector at K = 1, 3, LoRA (+ refiners)
    local r="runs/$1" spec="" cdirs="" pdirs=""
    for p in $presets; do
        local dirs=""; for s in $seeds; do [ -e "$r/$p-s$s/refiner/config.json" ] && dirs="$dirs:$r/$p-s$s/refiner"; done
        [ -n "$dirs" ] && spec="$spec,$p=${dirs#:}"
        [ "$p" = corrector ] && cdirs="${dirs#:}"
        [ "$p" = paper ] && pdirs="${dirs#:}"
    done
    # the corrector's other decision rules, on the same models
    [ -n "$cdirs" ] && spec="$spec,corrector-argmax=$cdirs@argmax,corrector-expected=$cdirs@expected_snap"
    # the identity control: the corrector at initialisation, argmax
    timed "eval $1 K=2" "$r/eval-k2.log" "$bin/ar-refine" evaluate "${data[@]}" --task "$1" --k 2 --count "$ec" \
        --refiners "identity=init(corrector)@argmax$spec" --gate-curve corrector --out "$r/eval"
    # the Figure 2 analogue: the backbone, the paper's refiner and the best one
    mkdir -p "$r/eval-figure"; ln -sfn ../eval/pairs-k2 "$r/eval-figure/pairs-k2"
    timed "eval $1 figure" "$r/eval-figure.log" "$bin/ar-refine" evaluate "${data[@]}" --task "$1" --k 2 --count "$ec" \
        --refiners "paper=$pdirs,corrector=$cdirs" --gate-curve corrector --out "$r/eval-figure"
    tar -cf - --exclude='pairs-*' "$r/eval" "$r/eval-figure" "$r"/*.log | xz -T2 > "$pack/eval-$1.tar.xz"
    [ "${K13:-1}" = 1 ] || return 0
    while [ ! -e runs/k13.done ]; do sleep 2; done
    mkdir -p "$r/eval-k13"; ln -sfn ../eval/pairs-k1 "$r/eval-k13/pairs-k1"; ln -sfn ../eval/pairs-k3 "$r/eval-k13/pairs-k3"
    timed "eval $1 K=1,3" "$r/eval-k13.log" "$bin/ar-refine" evaluate "${data[@]}" --task "$1" --k 1,3 --count "$ec13" \
        --refiners "paper=$pdirs,corrector=$cdirs" --out "$r/eval-k13"
    # packed after every stage: a call that must return before the device budget ends takes
    # what is there (the 2026-12-01 run lost its K = 1, 3 reports to a pack made only at the end)
    tar -cf - --exclude='pairs-*' "$r/eval" "$r/eval-figure" "$r/eval-k13" "$r"/*.log | xz -T2 > "$pack/eval-$1.tar.xz"
    [ "${LORA:-1}" = 1 ] || return 0
    while [ ! -e "$r/lora.done" ]; do sleep 2; done
    timed "eval $1 LoRA" "$r/eval-lora-k2.log" "$bin/ar-refine" evaluate "${data[@]}" --lora "$r/lora/lora" --task "$1" --k 2 --count "$ec" \
        --refiners "paper=$pdirs,corrector=$cdirs" --out "$r/eval-lora"
    tar -cf - --exclude='pairs-*' "$r/eval" "$r/eval-figure" "$r/eval-k13" "$r/eval-lora" "$r"/*.log | xz -T2 > "$pack/eval-$1.tar.xz"
}

if [ "$stage" = one ]; then train_one "$@"; exit; fi
mkdir -p "$pack"
nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv,noheader
if [ "$stage" = pipeline ]; then
    # 1. pairs, one process at a time
    for t in $tasks; do
        r="runs/$t"; mkdir -p "$r"
        timed "pairs $t ($tc + validation)" "$r/pairs.log" "$bin/ar-refine" train-refiner "${data[@]}" --task "$t" "${pairs_flags[@]}" \
            --pairs-only --out "$r"
        timed "eval pairs $t K=2" "$r/eval-pairs-k2.log" "$bin/ar-refine" evaluate "${data[@]}" --task "$t" --k 2 --count "$ec" --pairs-only \
            --out "$r/eval"
        tar -cf - "$r/pairs-val" "$r/eval/pairs-k2" "$r"/*.log | xz -T4 -6 > "$pack/caches-$t.tar.xz"
        nvidia-smi --query-gpu=memory.used --format=csv,noheader
    done
    touch runs/gen.done
    # 2. beside the refiners: K = 1, 3 pairs, then LoRA and its pairs, one process
    (
        [ "${K13:-1}" = 1 ] && for t in $tasks; do
            timed "eval pairs $t K=1,3" "runs/$t/eval-pairs-k13.log" "$bin/ar-refine" evaluate "${data[@]}" --task "$t" --k 1,3 --count "$ec13" --pairs-only \
                --out "runs/$t/eval"
        done
        touch runs/k13.done
        [ "${LORA:-1}" = 1 ] || exit 0
        for t in $tasks; do
            r="runs/$t"
            timed "lora $t" "$r/lora.log" "$bin/ar-refine" train-lora "${data[@]}" --task "$t" --k 2 --train-count "$tc" \
                --steps "${LORA_STEPS:-500}" --batch 16 --lr 1e-3 --out "$r/lora"
            timed "lora pairs $t" "$r/eval-lora-pairs.log" "$bin/ar-refine" evaluate "${data[@]}" --lora "$r/lora/lora" --task "$t" --k 2 --count "$ec" \
                --pairs-only --out "$r/eval-lora"
            touch "$r/lora.done"
        done
        touch runs/side.done
    ) &
    # 3. the refiners: seed 0 of every preset first, then seeds 1, 2 of the paper's and the
    #    corrector (EXTRA: the presets that get seeds 1, 2 first), then the rest
    extra="${EXTRA:-corrector paper}"
    {
        for p in $queue; do for t in $tasks; do echo "$t $p 0"; done; done
        for s in 1 2; do for p in $queue; do
            case " $extra " in *" $p "*) for t in $tasks; do echo "$t $p $s"; done ;; esac
        done; done
        for s in 1 2; do for p in $queue; do
            case " $extra " in *" $p "*) ;; *) for t in $tasks; do echo "$t $p $s"; done ;; esac
        done; done
    } | timeout "${TRAIN_SECS:-540}" xargs -P "${JOBS:-4}" -L 1 env STAGE=one bash "$0" | tee "$pack/train-summary.txt"
    say "training stopped"
    for t in $tasks; do
        tar -cf "$pack/refiners-$t.tar" $(ls -d runs/$t/*-s*/refiner) runs/$t/*-s*/train.log 2>/dev/null
    done
    touch runs/train.done
fi
for t in $tasks; do eval_task "$t" & done
wait
say "evaluation done"
for t in $tasks; do echo "== $t"; sed -n '/^## /,+14p' "runs/$t/eval/report.md" | head -16; done
touch runs/all.done
