#!/usr/bin/env bash
# Multi-GPU table of BENCHMARKS.md (run on the 2-GPU machine, e.g. the `device` tool's
# nvidia-h200-x2). Build on the CPU machine first:
#   bash scripts/bench/build_gpu.sh parallel_bench_gpu
#   strip and xz the binary into .bin/parallel_bench_gpu.xz; .data/ holds train-jpg/train-000..001.jpg
#   and val.u8.xz (the shared Tiny-ImageNet subset).
# Then: OUT=dir bash scripts/bench/parallel_bench.sh   (env: GPUS=2 PROMPTS=1024 BATCH=64 STEPS=200
#   TRAIN_BATCH=64,256 REFINERS=128x4,512x8)
set -euo pipefail
out="${OUT:-parallel-out}"; mkdir -p "$out"
python3 -c 'import glob,lzma,os
for f in glob.glob(".bin/*.xz"):
    open(f[:-3],"wb").write(lzma.open(f).read()); os.chmod(f[:-3],0o755)'
[ -e .data/val.u8.xz ] && [ ! -e .data/val.u8 ] && python3 -c 'import lzma
open(".data/val.u8","wb").write(lzma.open(".data/val.u8.xz").read())'
# Moving tensors between CUDA devices goes through NCCL in cubecl-cuda 0.10 (loaded at run time
# as libnccl.so): use the system's or the one PyTorch ships.
nccl=$(python3 - <<'P'
import glob, os
c = sorted(glob.glob("/usr/lib/x86_64-linux-gnu/libnccl.so*"))
try:
    import nvidia.nccl
    for p in nvidia.nccl.__path__:
        c += sorted(glob.glob(os.path.join(p, "lib", "libnccl.so*")))
except Exception:
    pass
print(c[0] if c else "")
P
)
echo "NCCL: ${nccl:-not found}" | tee "$out/nccl.txt"
if [ -n "$nccl" ]; then
    mkdir -p /tmp/nccl && ln -sf "$nccl" /tmp/nccl/libnccl.so
    export LD_LIBRARY_PATH="/tmp/nccl:${LD_LIBRARY_PATH:-}"
fi
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
nvidia-smi topo -m > "$out/topology.txt" 2>&1 || true
./.bin/parallel_bench_gpu --tokenizer models/tiny-lvm-v2/tokenizer --backbone models/tiny-lvm-v2/backbone \
    --data .data --train-images "${TRAIN_IMAGES:-2048}" --task "${TASK:-colorization}" --k "${K:-2}" \
    --prompts "${PROMPTS:-1024}" --batch "${BATCH:-64}" --val "${VAL:-128}" \
    --refiners "${REFINERS:-128x4,512x8}" --steps "${STEPS:-200}" --train-batch "${TRAIN_BATCH:-64,256}" \
    --gpus "${GPUS:-2}" --out "$out" 2> >(tee "$out/stderr.log" >&2) | tee "$out/table.md"
