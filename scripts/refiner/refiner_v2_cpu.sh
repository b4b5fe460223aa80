#!/usr/bin/env bash
# [refiner-v2] on the CPU machine: the evaluation of the refiners that scripts/refiner/refiner_v2.sh
# trained on the GPU, on the backbone outputs it cached (same flags, so the caches are found),
# written to docs/tiny-lvm/results/TASK/{k2,figure,k13,lora}; for when the GPU's own evaluation
# did not finish. For the v1 models (removed from the tree): git checkout 091d1bb -- models/tiny-lvm
#   tar -xf refiners-TASK.tar; tar -xJf caches-TASK.tar.xz   (from runs/pack/, in the repository root)
#   cargo build --release --example ar-refine
#   bash scripts/refiner/refiner_v2_cpu.sh
#   python3 scripts/refiner/refiner_v2_results.py docs/tiny-lvm/results > docs/tiny-lvm/results/tables.md
set -uo pipefail
cd "$(dirname "$0")/../.."
bin="${AR_REFINE:-${CARGO_TARGET_DIR:-target}/release/examples/ar-refine}"
m=models/tiny-lvm
data=(--tokenizer "$m/tokenizer" --backbone "$m/backbone" --data "${DATA:-../shared/data}" --train-images 6144..10240 --select-images 10240..11264)
ec="${EVAL_COUNT:-256}"
res=docs/tiny-lvm/results
seeds() {  # $1 = task, $2 = preset: "dir:dir:..." of the runs that finished
    local d=""; for s in 0 1 2; do [ -e "runs/$1/$2-s$s/refiner/config.json" ] && d="$d:runs/$1/$2-s$s/refiner"; done
    echo "${d#:}"
}
for t in ${TASKS:-colorization inpainting edges}; do
    spec=""
    for p in paper cosine-query ce-answer ce-query ce-query-confidence corrector prompt-only hidden; do
        d=$(seeds "$t" "$p"); [ -n "$d" ] && spec="$spec,$p=$d"
    done
    c=$(seeds "$t" corrector)
    spec="identity=init(corrector)@argmax${spec},corrector-argmax=$c@argmax,corrector-expected=$c@expected_snap"
    two="paper=$(seeds "$t" paper),corrector=$c"
    "$bin" evaluate "${data[@]}" --task "$t" --k 2 --count "$ec" --refiners "$spec" --gate-curve corrector \
        --out "runs/$t/eval" > "runs/$t/eval-k2.out" 2> "runs/$t/eval-k2.err"
    mkdir -p "$res/$t/k2" && cp "runs/$t/eval/"{report.json,report.md,comparison.png,position_error.svg,gate.svg} "$res/$t/k2/"
    # the Figure 2 analogue: backbone, the paper's refiner and the best one
    "$bin" evaluate "${data[@]}" --task "$t" --k 2 --count "$ec" --refiners "$two" --gate-curve corrector \
        --out "runs/$t/eval" > /dev/null 2>&1 && mkdir -p "$res/$t/figure" \
        && cp "runs/$t/eval/"{position_error.svg,gate.svg,comparison.png} "$res/$t/figure/"
    if [ -e "runs/$t/eval/pairs-k1/meta.json" ]; then
        "$bin" evaluate "${data[@]}" --task "$t" --k 1,3 --count "$ec" --refiners "$two" --out "runs/$t/eval" \
            > "runs/$t/eval-k13.out" 2>&1 && mkdir -p "$res/$t/k13" && cp "runs/$t/eval/report."{json,md} "$res/$t/k13/"
    fi
    if [ -e "runs/$t/lora/lora/adapter_config.json" ] && [ -e "runs/$t/eval-lora/pairs-k2/meta.json" ]; then
        "$bin" evaluate "${data[@]}" --lora "runs/$t/lora/lora" --task "$t" --k 2 --count "$ec" --refiners "$two" \
            --out "runs/$t/eval-lora" > "runs/$t/eval-lora.out" 2>&1 && mkdir -p "$res/$t/lora" \
            && cp "runs/$t/eval-lora/report."{json,md} "runs/$t/eval-lora/comparison.png" "$res/$t/lora/"
    fi
    echo "== $t"; grep -E "^\| (backbone|paper|corrector) " "runs/$t/eval-k2.out" | head -4
done
