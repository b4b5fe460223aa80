#!/usr/bin/env bash
# Runs on the GPU machine (see BENCHMARKS.md): CUDA kernel tests, then the Rust and PyTorch
# nearest-code benchmarks on the same data. Expects the stripped binaries in .bin/ (built on
# the CPU machine) and writes logs to $OUT (or ./gpu-out).
set -uo pipefail
out="${OUT:-gpu-out}"; mkdir -p "$out"
data=/tmp/nn_decode; mkdir -p "$data"
# Binaries may travel xz-compressed (the device copy is limited to 64 MiB).
for f in .bin/*.xz; do
  [ -e "$f" ] || continue
  python3 -c 'import lzma,sys; open(sys.argv[2],"wb").write(lzma.open(sys.argv[1]).read())' "$f" "${f%.xz}"
  chmod +x "${f%.xz}"
done
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv | tee "$out/gpu.txt"
echo "== kernel tests (CUDA)"
./.bin/kernel-tests --test-threads=1 2>&1 | tee "$out/kernel_tests.log" | tail -15
echo "== Rust: fused kernel and Burn unfused"
./.bin/nn_decode_gpu "$data" "${REPS:-20}" 2>&1 | tee "$out/rust.jsonl"
[ -n "${SKIP_TORCH:-}" ] && exit 0
echo "== PyTorch and fp64 scoring"
PYTHONUNBUFFERED=1 python3 scripts/bench/nn_decode_bench.py "$data" "${REPS:-20}" 2>&1 | tee "$out/torch.jsonl"
