#!/usr/bin/env bash
# Builds a GPU benchmark driver (benches/gpu/, a `[[bench]]` with `required-features = ["cuda"]`)
# or the command line for the GPU machine, strips it and packs it as .bin/NAME[-VARIANT].xz for
# the device tool's `carry` (the GPU machine has no Rust).
#   bash scripts/bench/build_gpu.sh llama_bench_gpu              # .bin/llama_bench_gpu.xz
#   FEATURES=cuda,autotune bash scripts/bench/build_gpu.sh llama_bench_gpu autotune
#   bash scripts/bench/build_gpu.sh ar-refine                    # the CLI (an example)
set -euo pipefail
cd "$(dirname "$0")/../.."
name="$1"; variant="${2:-}"
features="${FEATURES:-cuda}"
target="${CARGO_TARGET_DIR:-target}"
if [ "$name" = ar-refine ]; then
    cargo build --release --no-default-features --features "$features" --example ar-refine
    exe="$target/release/examples/ar-refine"
else
    # `cargo bench --no-run` builds with the bench profile (release) and names the executable
    exe=$(cargo bench --no-run --no-default-features --features "$features" --bench "$name" 2>&1 \
        | tee /dev/stderr | sed -n 's/.*Executable .* (\(.*\))$/\1/p' | tail -1)
fi
mkdir -p .bin
out=".bin/$name${variant:+-$variant}.xz"
strip -o "/tmp/$name.stripped" "$exe"
xz -6 -T2 -c "/tmp/$name.stripped" > "$out"
echo "$out ($(stat -c %s "$out") bytes) from $exe"
