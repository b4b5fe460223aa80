#!/usr/bin/env bash
# Step 3 of the small-LVM recipe, on the CPU: for each task, the frozen backbone produces the
# refiner's training pairs (cached in runs/TASK/; teacher-forced argmax by default, because
# free-running generation costs ~6 s per image on 2 cores), a refiner trains on them, and the
# backbone alone (free-running, greedy) and with the refiner are evaluated on validation prompts
# for K = 1, 2, 3. Reports go to docs/tiny-lvm/results/TASK/; scripts/tiny_lvm_results.py turns
# them into RESULTS.md's tables and figures. Build first:
#   cargo build --release --example train_refiner --example evaluate
# (with --features cuda and AR_REFINE_PAIR_BATCH=128 the same commands run on a GPU).
set -euo pipefail
m=models/tiny-lvm
steps="${STEPS:-200}"; train_count="${TRAIN_COUNT:-256}"; count="${COUNT:-32}"; k="${K:-1}"
train_mode="${TRAIN_MODE:-teacher}"; eval_k="${EVAL_K:-1,2,3}"
bin="${BIN:-target/release/examples}"
common=(--tokenizer "$m/tokenizer" --data "${DATA:-.data}" --train-images "${TRAIN_IMAGES:-2048}")
for task in ${TASKS:-colorization inpainting edges}; do
    echo "== $task"
    [ -n "${SKIP_TRAIN:-}" ] && [ -e "runs/$task/refiner" ] || \
    /usr/bin/time -f "train_refiner: %e s" "$bin/train_refiner" "${common[@]}" --backbone "$m/backbone" \
        --task "$task" --k "$k" --train-count "$train_count" --val-count 32 --mode "$train_mode" \
        --steps "$steps" --batch 16 \
        --lr 1e-3 --d-model 128 --layers 2 --heads 4 --out "runs/$task" 2>&1 | tr '\r' '\n' \
        | grep -E "^pairs [0-9]+/[0-9]+ |trained|train_refiner:" | awk '/^pairs/{p=$0; next} {if (p) print p; p=""; print}'
    AR_REFINE_PAIR_BATCH="$count" /usr/bin/time -f "evaluate: %e s" "$bin/evaluate" "${common[@]}" --backbone "$m/backbone" \
        --refiner "runs/$task/refiner" --task "$task" --k "$eval_k" --count "$count" --out "runs/$task/eval" \
        2>&1 | grep -E "^\| $task|evaluate:"
    rm -rf "docs/tiny-lvm/results/$task" && mkdir -p "docs/tiny-lvm/results/$task"
    cp "runs/$task/eval"/report.* "runs/$task/eval"/*.png "docs/tiny-lvm/results/$task/"
    mkdir -p "$m/refiner-$task" && cp "runs/$task/refiner"/* "$m/refiner-$task/"
done
