#!/usr/bin/env bash
# Runs on the GPU machine ([gpu-speed]): LLaMA generation and the per-op table of one 7B decode
# step for each build of `llama_bench_gpu` in .bin/ (xz-compressed, named by variant:
# llama_bench_gpu-<variant>.xz), the transformers baseline in the same run, and the VQGAN
# training step (ours with `ar-refine-<variant>.xz train-tokenizer`, PyTorch with scripts/bench/torch_vq_step.py).
# Build on the CPU machine, e.g. for the default variant:
#   FEATURES=cuda,autotune bash scripts/bench/build_gpu.sh llama_bench_gpu default
#   FEATURES=cuda,autotune bash scripts/bench/build_gpu.sh ar-refine default
# STAGE: gen (headline variant, full settings, + transformers) | variants (every other variant,
# shorter runs) | check (decode vs prefill logits on the device, then the per-step profile) |
# ab (every build in .bin/ side by side: projections alone, then the 7B step's profile; the
# kernel tests first when .bin/kernel_tests.xz is there) | vq (training step). Logs go to $OUT.
set -uo pipefail
out="${OUT:-gpu-out}"; mkdir -p "$out" .run-bin
main="${MAIN:-autotune}"
unpack() { [ -x ".run-bin/$1" ] || xz -dc ".bin/$1.xz" > ".run-bin/$1" && chmod +x ".run-bin/$1"; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv,noheader | tee -a "$out/gpu.txt"
case "${STAGE:-gen}" in
gen)
    unpack "llama_bench_gpu-$main"
    echo "== ar-refine ($main): ops"
    ".run-bin/llama_bench_gpu-$main" --ops 2>&1 | tee "$out/ops-$main.jsonl"
    echo "== ar-refine ($main): generation"
    ".run-bin/llama_bench_gpu-$main" ${GEN_ARGS:-} 2>&1 | tee "$out/gen-$main.jsonl"
    echo "== transformers"
    PYTHONUNBUFFERED=1 python3 scripts/bench/llama_bench.py ${GEN_ARGS:-} 2>&1 | grep -v Warning | tee "$out/gen-torch.jsonl"
    ;;
sweep)
    # The skinny projection kernel's geometry (outputs per group r, groups per cube g) against
    # Burn's matmul at the 7B shapes; the best by summed step_ms at batch 16 (ties: batch 1) is
    # written to $out/skinny-best.txt for the generation run that follows.
    unpack "llama_bench_gpu-$main"
    ".run-bin/llama_bench_gpu-$main" --ops 2>&1 | tee "$out/ops-$main.jsonl"
    for rg in 1,4 2,4 4,4 1,8 2,8 4,2 8,2; do
        AR_REFINE_SKINNY=$rg ".run-bin/llama_bench_gpu-$main" --proj 2>&1 | sed "s/^{/{\"skinny\":\"$rg\",/" | tee -a "$out/proj-sweep-$main.jsonl"
    done
    python3 - "$out/proj-sweep-$main.jsonl" > "$out/skinny-best.txt" <<'PY'
import json, sys, collections
tot = collections.defaultdict(lambda: [0.0, 0.0])
for line in open(sys.argv[1]):
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    if "lm_head" in r["op"]:
        continue
    tot[r["skinny"]][0 if r["batch"] == 16 else 1] += r["step_ms"]
print(min(tot, key=lambda k: tuple(tot[k])))
PY
    cat "$out/skinny-best.txt"
    ;;
check)
    unpack "llama_bench_gpu-$main"
    echo "== ar-refine ($main): decode vs prefill"
    ".run-bin/llama_bench_gpu-$main" --check 2>&1 | tee "$out/check-$main.jsonl"
    echo "== ar-refine ($main): profile"
    ".run-bin/llama_bench_gpu-$main" --profile 2>&1 | tee "$out/profile-$main.jsonl"
    ;;
variants)
    for f in .bin/llama_bench_gpu-*.xz; do
        v="${f#.bin/llama_bench_gpu-}"; v="${v%.xz}"
        [ "$v" = "$main" ] && continue
        unpack "llama_bench_gpu-$v"
        echo "== ar-refine ($v): ops"
        ".run-bin/llama_bench_gpu-$v" --ops 2>&1 | tee "$out/ops-$v.jsonl"
        echo "== ar-refine ($v): generation"
        ".run-bin/llama_bench_gpu-$v" --new "${NEW:-64}" --reps 2 2>&1 | tee "$out/gen-$v.jsonl"
    done
    ;;
ab)
    if [ -f .bin/kernel_tests.xz ]; then
        unpack kernel_tests
        echo "== CUDA kernel tests"
        .run-bin/kernel_tests --test-threads 1 cuda 2>&1 | tee "$out/kernel_tests.log"
    fi
    for f in .bin/llama_bench_gpu-*.xz; do
        v="${f#.bin/llama_bench_gpu-}"; v="${v%.xz}"
        unpack "llama_bench_gpu-$v"
        echo "== ar-refine ($v): projections"
        ".run-bin/llama_bench_gpu-$v" --proj 2>&1 | sed "s/^{/{\"build\":\"$v\",/" | tee -a "$out/ab-proj.jsonl"
        echo "== ar-refine ($v): 7B step profile"
        ".run-bin/llama_bench_gpu-$v" --profile --shapes 7b 2>&1 | sed "s/^{/{\"build\":\"$v\",/" | tee -a "$out/ab-profile.jsonl"
    done
    ;;
vq)
    timeout 120 python3 scripts/bench/torch_vq_step.py --batch 64 --codebook 1024 --dim 32 | tee "$out/vq-torch.jsonl"
    for f in .bin/ar-refine-*.xz; do
        v="${f#.bin/ar-refine-}"; v="${v%.xz}"
        unpack "ar-refine-$v"
        echo "== ar-refine train-tokenizer ($v)"
        timeout 200 ".run-bin/ar-refine-$v" train-tokenizer --train-images 2048 --val-images 64 --codebook 1024 --dim 32 \
            --steps 100000 --batch 64 --lr 4e-4 --time-budget "${VQ_SECS:-60}" --log-every 5 --out "/tmp/tok-$v" \
            2>&1 | tail -40 | tee "$out/vq-$v.log"
    done
    ;;
esac
