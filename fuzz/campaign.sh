#!/usr/bin/env bash
# Runs every fuzz target for SECS seconds, LANES at a time, seeded from tests/fixtures,
# fuzz/seeds and fuzz/regressions (plus whatever fuzz/corpus/<target> holds from earlier runs).
# Prints one table row per target: executions, seconds, findings (crash inputs under
# fuzz/artifacts/<target>/). Build first: `cargo +nightly fuzz build -O` (RELIABILITY.md).
#
#   fuzz/campaign.sh [SECS=600] [LANES=2] [TARGET ...]
set -uo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
lanes=${2:-2}
shift 2 2>/dev/null || shift $#
bin="${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release"
all=(safetensors_open pytorch_open llama_config vqgan_config shard_index image_load refiner_load
    token_file pair_cache checkpoint_state checkpoint_weights)
targets=("${@:-${all[@]}}")
fx=../tests/fixtures
seed() { # target -> seed files
    case $1 in
        safetensors_open) find $fx -name '*.safetensors' ;;
        pytorch_open) find $fx -name '*.bin' -o -name '*.ckpt' ;;
        llama_config) find $fx/llama -name config.json ;;
        vqgan_config) find $fx/vqgan -name config.json ;;
        shard_index) find $fx -name '*.index.json' ;;
        image_load) find $fx -name '*.png' ;;
    esac
    find seeds/$1 regressions/$1 -type f 2>/dev/null
}
run() { # target
    local t=$1
    mkdir -p corpus/$t artifacts/$t logs
    : >logs/$t.log
    local i=0
    for f in $(seed $t); do cp "$f" corpus/$t/seed-$i-$(basename "$f"); i=$((i + 1)); done
    local start=$(date +%s) execs=0 left=$secs
    # a crash ends a libFuzzer run: record it and go on until the time is spent
    while [ "$left" -gt 5 ]; do
        "$bin/$t" corpus/$t -max_total_time=$left -rss_limit_mb=2048 -max_len=65536 -timeout=20 \
            -print_final_stats=1 -artifact_prefix=artifacts/$t/ >logs/$t.run.log 2>&1
        # every run's log is kept (a finding's report is in the run that ended with it)
        cat logs/$t.run.log >>logs/$t.log
        n=$(grep -o 'stat::number_of_executed_units: *[0-9]*' logs/$t.run.log | grep -o '[0-9]*$' || true)
        [ -z "$n" ] && n=$(grep -oE '^#[0-9]+' logs/$t.run.log | tail -1 | tr -d '#')
        execs=$((execs + ${n:-0}))
        left=$((secs - ($(date +%s) - start)))
    done
    echo "| \`$t\` | $execs | $(($(date +%s) - start)) s | $(ls artifacts/$t | wc -l) |"
}
echo "| target | executions | time | crash/oom/timeout inputs |"
echo "| --- | ---: | ---: | ---: |"
for t in "${targets[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$lanes" ]; do sleep 1; done
    run "$t" &
done
wait
