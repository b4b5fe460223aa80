#!/usr/bin/env bash
# Runs on the GPU machine (see BENCHMARKS.md): LLaMA generation, ar-refine (CUDA, f16) and
# transformers, same shapes and settings. Expects .bin/llama_bench_gpu built on the CPU machine
# (bash scripts/bench/build_gpu.sh llama_bench_gpu);
# writes logs to $OUT (or ./gpu-out). Extra arguments go to both harnesses.
set -uo pipefail
out="${OUT:-gpu-out}"; mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv | tee "$out/gpu.txt"
echo "== ar-refine"
./.bin/llama_bench_gpu "$@" 2>&1 | tee "$out/llama_rust.jsonl"
[ -n "${SKIP_TORCH:-}" ] && exit 0
echo "== transformers"
PYTHONUNBUFFERED=1 python3 scripts/bench/llama_bench.py "$@" 2>&1 | grep -v Warning | tee "$out/llama_torch.jsonl"
