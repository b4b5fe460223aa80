"""Register and spill report for CubeCL CUDA kernels (run on the GPU machine).

Usage: CUBECL_DEBUG_LOG=/tmp/cubecl.log <binary that launches kernels>
       python3 scripts/bench/kernel_regs.py /tmp/cubecl.log OUTDIR [NAME_FILTER]

Reads the kernel sources CubeCL logged, compiles each (name containing NAME_FILTER) with NVRTC
for sm_90a with `--ptxas-options=-v`, and prints ptxas' register / spill / shared-memory lines.
Writes each source to OUTDIR/<n>.cu, its cubin to OUTDIR/<n>.cubin and, where `nvdisasm` is
on the machine, the SASS to OUTDIR/<n>.sass with a histogram of its opcodes (static counts).
"""
import collections, ctypes, glob, os, re, subprocess, sys


def find_nvrtc():
    pats = ["/usr/local/cuda*/lib64/libnvrtc.so*", "/usr/lib/x86_64-linux-gnu/libnvrtc.so*",
            "/usr/local/lib/python3*/dist-packages/nvidia/cu*/lib/libnvrtc.so*",
            "/usr/local/lib/python3*/dist-packages/nvidia/cuda_nvrtc/lib/libnvrtc.so*",
            "/usr/lib/python3*/site-packages/nvidia/*/lib/libnvrtc.so*"]
    for p in pats:
        for f in sorted(glob.glob(p)):
            if "builtins" not in f and "alt" not in f:
                return f
    raise SystemExit("libnvrtc not found")


def main():
    log, outdir = sys.argv[1], sys.argv[2]
    filt = sys.argv[3] if len(sys.argv) > 3 else ""
    os.makedirs(outdir, exist_ok=True)
    text = open(log, errors="replace").read()
    blocks = re.findall(r"\[START_KERNEL_COMPILATION\](.*?)\[END_KERNEL_COMPILATION\]", text, re.S)
    lib = ctypes.CDLL(find_nvrtc())
    inc = os.environ.get("CUDA_PATH", "/usr/local/cuda") + "/include"
    for i, b in enumerate(blocks):
        name = re.search(r"name: (.*)", b)
        name = name.group(1).strip() if name else f"kernel{i}"
        if filt not in name:
            continue
        src = re.search(r"source:\n```\w*\n(.*)\n```", b, re.S).group(1)
        open(os.path.join(outdir, f"{i}.cu"), "w").write(src)
        prog = ctypes.c_void_p()
        lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), None, 0, None, None)
        opts = [b"--gpu-architecture=sm_90a", b"--include-path=" + inc.encode(), b"--ptxas-options=-v"]
        arr = (ctypes.c_char_p * len(opts))(*opts)
        rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, buf)
        print(f"== {i}: {name[:120]} (nvrtc rc {rc})")
        for line in buf.value.decode(errors="replace").splitlines():
            if "ptxas" in line or "error" in line:
                print("  ", line.strip())
        size = ctypes.c_size_t()
        if lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)) == 0 and size.value:
            cubin = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetCUBIN(prog, cubin)
            path = os.path.join(outdir, f"{i}.cubin")
            open(path, "wb").write(cubin.raw)
            nvdisasm = os.environ.get("CUDA_PATH", "/usr/local/cuda") + "/bin/nvdisasm"
            if os.path.exists(nvdisasm):
                sass = subprocess.run([nvdisasm, path], capture_output=True, text=True).stdout
                open(os.path.join(outdir, f"{i}.sass"), "w").write(sass)
                ops = collections.Counter()
                for line in sass.splitlines():
                    m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
                    if m:
                        ops[m.group(1).split(".")[0]] += 1
                print("   opcodes:", ", ".join(f"{k} {v}" for k, v in ops.most_common(25)))


if __name__ == "__main__":
    main()
