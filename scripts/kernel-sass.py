#!/usr/bin/env python3
"""The MoE FFN kernels' machine code for a GPU architecture, without a GPU.

Compiles a kernel source (default: cuda-adapter/src/kernels/moe_ffn.cu) with NVRTC and the
runtime's options, assembles it with ptxas for sm_XY and disassembles it with nvdisasm, then
prints per kernel its registers, its spills, and for each loop with FMAs or dp4a (a backward
branch) its instruction count, its FMAs and the instructions per FMA (per weight multiplied
where it has dp4a, four weights each), with the commonest opcodes. The hot loop of a kernel is
the one with the most FMAs (the block formats': the short loop with dp4a); instructions per FMA
is what the wide path lowers. Tools come from PyPI (nvidia-cuda-nvrtc, nvidia-cuda-nvcc for ptxas,
nvidia-cuda-nvdisasm), installed once under target/cuda-tools.

  python3 scripts/kernel-sass.py [SOURCE] [--arch 90] [--kernel NAME] [--keep DIR]
"""
import argparse
import ctypes
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "target" / "cuda-tools"
PACKAGES = ["nvidia-cuda-nvrtc==13.0.88", "nvidia-cuda-nvcc==13.0.88", "nvidia-cuda-nvdisasm==13.2.51"]


def tools():
    """NVRTC's library folder and the bin folder of ptxas and nvdisasm, installed if missing."""
    lib, bin_ = TOOLS / "nvidia/cu13/lib", TOOLS / "nvidia/cu13/bin"
    if not (lib / "libnvrtc.so.13").exists() or not (bin_ / "ptxas").exists() or not (bin_ / "nvdisasm").exists():
        print("installing NVRTC, ptxas and nvdisasm from PyPI into target/cuda-tools", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                        "--target", str(TOOLS), *PACKAGES], check=True, env={**os.environ, "PIP_ROOT_USER_ACTION": "ignore"})
    return lib, bin_


def compile_ptx(source: Path, arch: str, lib: Path) -> bytes:
    """PTX from NVRTC with the options of expertslab_cuda::kernels::compile."""
    os.environ["LD_LIBRARY_PATH"] = f"{lib}:{os.environ.get('LD_LIBRARY_PATH', '')}"
    ctypes.CDLL(str(lib / "libnvrtc-builtins.so.13.0"), mode=ctypes.RTLD_GLOBAL)
    nvrtc = ctypes.CDLL(str(lib / "libnvrtc.so.13"))
    prog = ctypes.c_void_p()
    if nvrtc.nvrtcCreateProgram(ctypes.byref(prog), source.read_bytes(), b"moe_ffn.cu", 0, None, None):
        sys.exit("nvrtcCreateProgram failed")
    opts = [b"--ftz=false", b"--prec-div=true", b"--prec-sqrt=true", b"--fmad=true",
            f"--gpu-architecture=compute_{arch}".encode(), b"--std=c++17"]
    status = nvrtc.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(prog, log)
    if status:
        sys.exit(log.value.decode(errors="replace"))
    nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetPTX(prog, ptx)
    return ptx.value


def report(sass: str, ptxas_log: str, only: str | None) -> None:
    regs, spills, current = {}, {}, None
    for line in ptxas_log.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)'", line):
            current = m.group(1)
        elif current and (m := re.search(r"(\d+) bytes spill stores", line)):
            spills[current] = int(m.group(1))
        elif current and (m := re.search(r"Used (\d+) registers", line)):
            regs[current] = int(m.group(1))
    parts = re.split(r"\n\s*\.text\.(\w+):", sass)
    for name, body in zip(parts[1::2], parts[2::2]):
        if not name.startswith("moe_") or (only and only not in name):
            continue
        labels, lines, current = {}, [], None
        for line in body.splitlines():
            if m := re.match(r"\s*\.L_x_(\d+):", line):
                current = m.group(1)
            elif m := re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*)", line):
                lines.append((int(m.group(1), 16), m.group(2)))
                if current is not None:
                    labels[current], current = int(m.group(1), 16), None
        print(f"{name}: {regs.get(name, '?')} registers, {spills.get(name, 0)} bytes spilled, {len(lines)} instructions")
        for at, text in lines:
            m = re.search(r"BRA.*\.L_x_(\d+)", text)
            if not m or labels.get(m.group(1), at + 1) > at:
                continue
            loop = [t for a, t in lines if labels[m.group(1)] <= a <= at]
            ops = {}
            for t in loop:
                if op := re.match(r"(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", t):
                    ops[op.group(1)] = ops.get(op.group(1), 0) + 1
            fma, dp4a = ops.get("FFMA", 0), ops.get("IDP", 0)
            if not fma and not dp4a:
                continue
            common = ", ".join(f"{k} {v}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1])[:8])
            if dp4a:
                # A dp4a (IDP) multiplies four weights, an FMA one.
                weights = fma + 4 * dp4a
                print(f"  loop: {len(loop)} instructions, {dp4a} dp4a and {fma} FMA, {weights} weights "
                      f"({len(loop) / weights:.2f} per weight): {common}")
            else:
                print(f"  loop: {len(loop)} instructions, {fma} FMA ({len(loop) / fma:.2f} per FMA): {common}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", nargs="?", default=str(ROOT / "cuda-adapter/src/kernels/moe_ffn.cu"))
    parser.add_argument("--arch", default="90", help="compute capability without the dot (default 90: H100, H200)")
    parser.add_argument("--kernel", help="only kernels whose name contains this")
    parser.add_argument("--keep", help="a folder to keep the PTX, cubin and SASS in")
    args = parser.parse_args()
    lib, bin_ = tools()
    out = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="kernel-sass-"))
    out.mkdir(parents=True, exist_ok=True)
    ptx, cubin = out / "moe_ffn.ptx", out / "moe_ffn.cubin"
    ptx.write_bytes(compile_ptx(Path(args.source), args.arch, lib))
    asm = subprocess.run([str(bin_ / "ptxas"), f"-arch=sm_{args.arch}", "-v", str(ptx), "-o", str(cubin)],
                         capture_output=True, text=True)
    if asm.returncode:
        sys.exit(asm.stderr)
    sass = subprocess.run([str(bin_ / "nvdisasm"), "-c", str(cubin)], capture_output=True, text=True, check=True).stdout
    (out / "moe_ffn.sass").write_text(sass)
    report(sass, asm.stderr, args.kernel)


if __name__ == "__main__":
    main()
