#!/usr/bin/env bash
# Runs on the GPU machine: the small-LVM recipe ([tiny-lvm]), one stage per call (a call is
# limited to 10 minutes). Binaries come from the CPU machine, built with
#   cargo build --release --no-default-features --features cuda --example ar-refine
# and stripped into .bin/; the data subset is in .data/ (val.u8 + train-jpg/train-000..005.jpg).
#   STAGE=models bash scripts/demo/tiny_lvm.sh   # 1. tokenizer, 2. backbone   → $OUT/models
#   STAGE=lvm bash scripts/demo/tiny_lvm.sh      # 2. backbone on models/tiny-lvm/tokenizer, then the
#       backbone's outputs for refiner training and evaluation (pair caches in runs/TASK/), and
#       the LoRA baseline (adapters + its outputs); refiners train and evaluation runs on the
#       CPU machine from these caches with the same flags (scripts/refiner/refiner_v2_cpu.sh).
#   Refiners and their evaluation: scripts/refiner/refiner_v2.sh.
# A call carries at most 64 MiB: .data may hold val.u8.xz instead of val.u8 (unpacked here).
set -uo pipefail
# binaries travel xz-compressed (a call carries at most 64 MiB)
python3 -c 'import glob,lzma,os
for f in glob.glob(".bin/*.xz"):
    open(f[:-3],"wb").write(lzma.open(f).read()); os.chmod(f[:-3],0o755)' 
[ -e .data/val.u8.xz ] && [ ! -e .data/val.u8 ] && python3 -c 'import lzma
open(".data/val.u8","wb").write(lzma.open(".data/val.u8.xz").read())'
out="${OUT:-gpu-out}"; mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
stage="${STAGE:-models}"
if [ "$stage" = models ]; then
    tok_secs="${TOK_SECS:-190}"; bb_secs="${BB_SECS:-250}"
    echo "== 1. tokenizer 1024 × 32, ${tok_secs}s"
    timeout $((tok_secs + 90)) ./.bin/ar-refine train-tokenizer --data .data --train-images 6144 --val-images 1000 \
        --codebook 1024 --dim 32 --steps 20000 --batch 64 --lr 4e-4 --restart-every 25 \
        --time-budget "$tok_secs" --log-every 25 --out "$out/tok" \
        2> >(tee "$out/tokenizer.log" | tail -8 >&2) | tee "$out/tokenizer.json"
    mkdir -p "$out/models" && mv "$out/tok/tokenizer" "$out/models/tokenizer" && rm -rf "$out/tok"
    echo "== 2. backbone, ${bb_secs}s"
    timeout $((bb_secs + 150)) ./.bin/ar-refine pretrain --tokenizer "$out/models/tokenizer" --data .data \
        --train-images 6144 --val-images 256 --k 1,2,3 --sentences "${SENTENCES:-1024}" \
        --hidden 256 --intermediate 704 --layers 6 --heads 4 --steps 20000 --batch 16 --lr 1e-3 \
        --time-budget "$bb_secs" --log-every 50 --out "$out/bb" \
        2> >(tee "$out/backbone.log" | tail -12 >&2) | tee "$out/backbone.json"
    mv "$out/bb/backbone" "$out/models/backbone" && rm -rf "$out/bb"
fi

if [ "$stage" = lvm ]; then
    m=models/tiny-lvm; bb_secs="${BB_SECS:-200}"; lora_steps="${LORA_STEPS:-200}"
    export AR_REFINE_PAIR_BATCH=128
    common=(--tokenizer "$m/tokenizer" --data .data --train-images 6144)
    if [ ! -e "$m/backbone/model.safetensors" ]; then
        echo "== 2. backbone, ${bb_secs}s"
        timeout $((bb_secs + 150)) ./.bin/ar-refine pretrain "${common[@]}" --val-images 256 --k 1,2,3 \
            --sentences "${SENTENCES:-512}" --hidden 256 --intermediate 704 --layers 6 --heads 4 \
            --steps 20000 --batch 16 --lr 1e-3 --time-budget "$bb_secs" --log-every 50 --out bb \
            2> >(tee "$out/backbone.log" | tail -6 >&2) | tee "$out/backbone.json"
        mv bb/backbone "$m/backbone" && rm -rf bb
    fi
    mkdir -p "$out/models" && cp -r "$m/backbone" "$out/models/"
    for task in colorization inpainting edges; do
        echo "== 3. $task: backbone outputs"
        ./.bin/ar-refine train-refiner "${common[@]}" --backbone "$m/backbone" --task "$task" --k 2 \
            --train-count 512 --val-count 64 --pairs-only --out "runs/$task" 2>&1 | tr '\r' '\n' | tail -2
        ./.bin/ar-refine evaluate "${common[@]}" --backbone "$m/backbone" --task "$task" --k 1,2,3 --count 64 \
            --pairs-only --out "runs/$task/eval" 2>&1 | tr '\r' '\n' | grep -E "pairs [0-9]+/[0-9]+ " | tail -3
        # files deeper than three levels under $OUT do not come back from the device: tar them
        tar -cf "$out/runs-$task-pairs.tar" --exclude=checkpoints "runs/$task"
    done
    for task in colorization inpainting edges; do
        echo "== 4. $task: LoRA, $lora_steps steps"
        timeout 150 ./.bin/ar-refine train-lora "${common[@]}" --backbone "$m/backbone" --task "$task" --k 2 \
            --train-count 512 --steps "$lora_steps" --batch 16 --lr 1e-3 --out "runs/$task/lora" \
            2>&1 | tr '\r' '\n' | tail -2 | tee -a "$out/lora.jsonl"
        ./.bin/ar-refine evaluate "${common[@]}" --backbone "$m/backbone" --lora "runs/$task/lora/lora" --task "$task" \
            --k 2 --count 64 --pairs-only --out "runs/$task/eval-lora" 2>&1 | tr '\r' '\n' | grep -E "pairs [0-9]+/" | tail -1
        tar -cf "$out/runs-$task-lora.tar" "runs/$task/lora/lora" "runs/$task/eval-lora"
    done
fi

# The refiner stages of ar-refine 0.1 (`refine`, `lora`) are superseded by scripts/refiner/refiner_v2.sh
# (refiners v2: presets, seeds, the side-by-side evaluation); they are in git history at 6820959.
if [ "$stage" = refine ] || [ "$stage" = lora ]; then
    echo "STAGE=$stage moved to scripts/refiner/refiner_v2.sh" >&2; exit 2
fi
