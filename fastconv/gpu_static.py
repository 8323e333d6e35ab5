"""Static checks of fastconv's compiled GPU code, without a GPU: `python -m fastconv.gpu_static`.

What the machine code of each kernel must look like is checked from its disassembly:

  CUDA (fastconv._C_cuda, every cubin of the fatbinary, `cuobjdump -sass` and `cuobjdump -res-usage`):
    - no local memory: no LDL/STL instruction, no stack frame (a spill or a register array indexed at
      run time would put one there);
    - the tensor-core kernels of kernels/conv2d_tc.cuh: their main loop (the innermost loop that holds
      the MMAs) issues, per k-tile, exactly the HMMA, LDSM and LDGSTS counts that the tiling predicts.
      The prediction is computed here from the tile parameters of csrc/cuda/conv2d_tc.cu and the
      TcTile / TileGeom / load_frag_* structure of kernels/conv2d_tc.cuh (`TcKernel.expected`), never
      from the disassembly; a k-tile is one BAR.SYNC of the loop (the pipeline has one __syncthreads
      per k-tile), so a loop the compiler unrolled twice is compared per k-tile all the same;
    - theoretical occupancy from registers and shared memory per architecture.
  Triton (fastconv/triton, compiled for sm_90 by Triton's own compiler, which needs no GPU):
    - no local memory in the SASS; the MMA instruction of the PTX (wgmma on Hopper, mma.sync, or
      none: FMA), HGMMA/HMMA in the SASS main loop of every GEMM kernel, TMA (cp.async.bulk.tensor) if used.

The report goes to build/fastconv-sass.txt (and .json); the exit status is 1 when a check fails.
cuobjdump comes from the PATH, the nvidia-cuda-cuobjdump wheel, or the copy Triton ships.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent


# ---- finding the tools and the module ---------------------------------------------------------------

def find_tool(name: str) -> Optional[str]:
    """cuobjdump / nvdisasm: the PATH, then the nvidia-cuda-* wheel (nvidia/cu13/bin), then Triton's copy."""
    path = shutil.which(name)
    if path:
        return path
    candidates = []
    for pkg, sub in (("nvidia", "cu13/bin"), ("nvidia", "cuda_cuobjdump/bin"), ("nvidia", "cuda_nvdisasm/bin"),
                     ("triton", "backends/nvidia/bin")):
        spec = importlib.util.find_spec(pkg)
        for loc in (spec.submodule_search_locations or []) if spec else []:
            candidates.append(Path(loc) / sub / name)
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    return None


def cuda_module_path() -> Optional[str]:
    spec = importlib.util.find_spec("fastconv._C_cuda")
    return spec.origin if spec and spec.origin else None


def _run(cmd: List[str]) -> str:
    # cuobjdump -sass runs nvdisasm, which it finds on the PATH only (not next to itself): put the one
    # find_tool locates (the nvidia-cuda-nvdisasm wheel or Triton's copy) there.
    env = dict(os.environ)
    nvdisasm = find_tool("nvdisasm")
    if nvdisasm:
        env["PATH"] = os.pathsep.join([str(Path(nvdisasm).parent), env.get("PATH", "")])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[:500]}")
    return proc.stdout


def demangle(names: List[str]) -> List[str]:
    tool = shutil.which("c++filt") or shutil.which("cu++filt")
    if not tool or not names:
        return names
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return out if len(out) == len(names) else names


# ---- SASS listings ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Instr:
    addr: int
    op: str                   # opcode with modifiers: "HMMA.16816.F32.BF16"
    target: Optional[int]     # branch target address (BRA)

    @property
    def base(self) -> str:
        return self.op.split(".", 1)[0]


@dataclasses.dataclass
class SassKernel:
    name: str                 # as the listing names it (mangled for CUDA C++)
    arch: int                 # 80, 90, ... (sm_90a: 90)
    instrs: List[Instr]
    pretty: str = ""          # demangled

    def count(self, base: str, lo: int = 0, hi: int = 1 << 62) -> int:
        return sum(1 for i in self.instrs if i.base == base and lo <= i.addr <= hi)

    def loops(self) -> List[Tuple[int, int]]:
        """(first, last) address of each loop: a backward branch and its target."""
        return [(i.target, i.addr) for i in self.instrs if i.base == "BRA" and i.target is not None
                and i.target < i.addr]

    def main_loop(self, mma: Iterable[str] = ("HMMA", "HGMMA")) -> Optional[Tuple[int, int]]:
        """The innermost loop that holds MMA instructions (None: no loop has any)."""
        mma = tuple(mma)
        with_mma = [(lo, hi) for lo, hi in self.loops() if any(self.count(m, lo, hi) for m in mma)]
        return min(with_mma, key=lambda r: r[1] - r[0]) if with_mma else None


def _instr(line: str) -> Optional[Instr]:
    """One instruction line of a listing, `        /*0a30*/  @!P0 BRA 0x2470 ;  /* 0x... */`, or None.
    Plain string operations: a module's listing is over a million lines, and a regular expression per
    line took ~10 s of the CI budget for each architecture."""
    i = line.find("/*")
    j = line.find("*/", i + 2) if i >= 0 else -1
    if j < 0 or j - i > 12:
        return None
    k = line.find(";", j)
    if k < 0:
        return None            # the encoding-only second line of each instruction
    try:
        addr = int(line[i + 2:j], 16)
    except ValueError:
        return None
    words = line[j + 2:k].split()
    if words and words[0].startswith("@"):
        words = words[1:]
    if not words:
        return None
    op, target = words[0], None
    if op.startswith("BRA") and len(words) > 1 and words[1].startswith("0x"):
        target = int(words[1].rstrip(","), 16)
    return Instr(addr, op, target)


def parse_sass(text: str) -> List[SassKernel]:
    """The kernels of a `cuobjdump -sass` listing, one SassKernel per (function, architecture)."""
    kernels: List[SassKernel] = []
    arch, cur = 0, None
    for line in text.splitlines():
        if cur is not None and "/*" in line:
            ins = _instr(line)
            if ins is not None:
                cur.instrs.append(ins)
            continue
        m = re.search(r"code for sm_(\d+)", line)
        if m:
            arch, cur = int(m.group(1)), None
            continue
        m = re.search(r"Function : (\S+)", line)
        if m:
            cur = SassKernel(m.group(1), arch, [])
            kernels.append(cur)
    return kernels


def parse_res_usage(text: str) -> Dict[Tuple[int, str], Dict[str, int]]:
    """(arch, function) -> REG, SHARED, STACK, LOCAL of a `cuobjdump -res-usage` listing."""
    out: Dict[Tuple[int, str], Dict[str, int]] = {}
    arch, name = 0, None
    for line in text.splitlines():
        m = re.search(r"arch = sm_(\d+)", line)
        if m:
            arch = int(m.group(1))
            continue
        m = re.search(r"Function (\S+):\s*$", line)
        if m:
            name = m.group(1)
            continue
        if name is not None and "REG:" in line:
            out[(arch, name)] = {k: int(v) for k, v in re.findall(r"(REG|SHARED|STACK|LOCAL):(\d+)", line)}
            name = None
    return out


# ---- what the tensor-core tiling predicts -----------------------------------------------------------

def source_tiles(root: Path = ROOT) -> List[Tuple[int, ...]]:
    """(BM, BN, WARPS_M, WARPS_N, STAGES, CHUNKS) of every tile configuration csrc/cuda/conv2d_tc.cu
    instantiates; CHUNKS defaults to TcTile's default in kernels/conv2d_tc.cuh."""
    header = (root / "kernels" / "conv2d_tc.cuh").read_text()
    m = re.search(r"int CHUNKS_ = (\d+)", header)
    if m is None:
        raise RuntimeError("kernels/conv2d_tc.cuh: TcTile's CHUNKS_ default not found")
    default = int(m.group(1))
    tiles = []
    for args in re.findall(r"TcTile<([\d,\s]+)>", (root / "csrc" / "cuda" / "conv2d_tc.cu").read_text()):
        vals = [int(v) for v in args.split(",")]
        tiles.append(tuple(vals + [default] * (6 - len(vals))))
    return tiles


# 16-byte chunk width and mma k-step of each storage type (MmaOp<T> in kernels/conv2d_tc.cuh).
_MMA_OP = {"__half": (8, 16, False), "__nv_bfloat16": (8, 16, False), "float": (4, 8, True)}
# Which operand tiles are reduction-major (load_frag_a/b's KMAJOR) per kernel: forward A and B, dgrad A.
_KMAJOR = {"fwd": (True, True), "dgrad": (True, False), "wgrad": (False, False)}


@dataclasses.dataclass(frozen=True)
class TcKernel:
    op: str          # fwd, dgrad, wgrad
    dtype: str       # __half, __nv_bfloat16, float
    BM: int
    BN: int
    WARPS_M: int
    WARPS_N: int
    STAGES: int
    CHUNKS: int

    @property
    def NT(self) -> int:
        return 32 * self.WARPS_M * self.WARPS_N

    @property
    def smem_bytes(self) -> int:   # TcTile::SMEM_BYTES, dynamic shared memory of the launch
        return self.STAGES * (self.BM + self.BN) * self.CHUNKS * 16

    def expected(self) -> Dict[str, int]:
        """Instructions per k-tile per thread of the main loop, from the tiling alone.
        HMMA: CHUNKS/2 mma k-steps x MI x NI mma tiles of the warp tile, one HMMA each (m16n8k16 for
        16-bit types, m16n8k8 TF32). LDSM: per k-step, A: MI ldmatrix.x4 and B: NI/2 (two n8 tiles per
        x4) - except TF32 operands stored M/N-major, which load with scalar LDS (no 32-bit transpose).
        LDGSTS: each thread issues CHUNKS * ROWS / NT 16-byte cp.async per operand tile."""
        vec, kstep, tf32 = _MMA_OP[self.dtype]
        mi, ni = self.BM // self.WARPS_M // 16, self.BN // self.WARPS_N // 8
        ksteps = self.CHUNKS // 2
        a_kmajor, b_kmajor = _KMAJOR[self.op]
        ldsm = (mi if (a_kmajor or not tf32) else 0) + (ni // 2 if (b_kmajor or not tf32) else 0)
        return {"HMMA": ksteps * mi * ni, "LDSM": ksteps * ldsm,
                "LDGSTS": self.CHUNKS * (self.BM + self.BN) // self.NT}


_TC_NAME = re.compile(r"conv2d_(fwd|dgrad|wgrad)_tc<([\w:]+), (?:fc::)?(?:tc::)?TcTile<(\d+), (\d+), (\d+), (\d+), "
                      r"(\d+), (\d+)>")


def parse_tc_name(pretty: str) -> Optional[TcKernel]:
    m = _TC_NAME.search(pretty)
    if not m:
        return None
    return TcKernel(m.group(1), m.group(2).split("::")[-1], *(int(v) for v in m.group(3, 4, 5, 6, 7, 8)))


# ---- occupancy --------------------------------------------------------------------------------------

# Per SM: max warps, max blocks, shared memory bytes a kernel can use (CUDA occupancy calculator data;
# 1 KiB of each block's shared memory is reserved by the system on sm_80+). 64K registers everywhere.
ARCH_LIMITS = {80: (64, 32, 167936), 86: (48, 16, 102400), 89: (48, 24, 102400), 90: (64, 32, 233472)}


def occupancy(arch: int, regs: int, smem: int, threads: int) -> Tuple[int, float, str]:
    """(blocks per SM, fraction of the SM's warps, the limiting resource)."""
    max_warps, max_blocks, smem_sm = ARCH_LIMITS.get(arch, ARCH_LIMITS[80])
    warps = math.ceil(threads / 32)
    regs_per_warp = math.ceil(max(regs, 1) * 32 / 256) * 256
    limits = {"warps": max_warps // warps, "blocks": max_blocks,
              "registers": (65536 // regs_per_warp) // warps,
              "smem": smem_sm // (math.ceil(smem / 128) * 128 + 1024)}
    which = min(limits, key=limits.get)
    blocks = limits[which]
    return blocks, blocks * warps / max_warps, which


# ---- checking the CUDA module -----------------------------------------------------------------------

@dataclasses.dataclass
class Finding:
    kernel: str
    arch: int
    facts: Dict[str, object]
    errors: List[str]


def check_kernel(k: SassKernel, res: Optional[Dict[str, int]], tiles: List[Tuple[int, ...]]) -> Finding:
    """The checks of one CUDA kernel of one architecture (see the module docstring)."""
    errors: List[str] = []
    facts: Dict[str, object] = {}
    local = k.count("LDL") + k.count("STL")
    if local:
        errors.append(f"local memory: {k.count('LDL')} LDL, {k.count('STL')} STL")
    if res and (res.get("STACK", 0) or res.get("LOCAL", 0)):
        errors.append(f"stack frame {res.get('STACK', 0)} bytes, local {res.get('LOCAL', 0)} bytes")
    tc = parse_tc_name(k.pretty or k.name)
    threads = tc.NT if tc else 256
    smem = (res or {}).get("SHARED", 0) + (tc.smem_bytes if tc else 0)
    if res:
        blocks, occ, limit = occupancy(k.arch, res["REG"], smem, threads)
        facts.update(regs=res["REG"], smem=smem, threads=threads, blocks_per_sm=blocks, occupancy=round(occ, 3),
                     limit=limit, threads_assumed=tc is None)
    if tc is not None:
        if tuple(getattr(tc, f) for f in ("BM", "BN", "WARPS_M", "WARPS_N", "STAGES", "CHUNKS")) not in tiles:
            errors.append(f"tile {tc} is not one of csrc/cuda/conv2d_tc.cu's configurations")
        errors += _check_main_loop(k, tc, facts)
    return Finding(k.pretty or k.name, k.arch, facts, errors)


def _check_main_loop(k: SassKernel, tc: TcKernel, facts: Dict[str, object]) -> List[str]:
    loop = k.main_loop(("HMMA",))
    want = tc.expected()
    facts["expected_per_ktile"] = want
    if loop is None:
        return ["tensor-core main loop without HMMA (no loop holds any)"]
    lo, hi = loop
    ktiles = k.count("BAR", lo, hi)
    if ktiles == 0:
        return [f"main loop 0x{lo:x}-0x{hi:x} has no BAR.SYNC (one per k-tile expected)"]
    got = {op: k.count(op, lo, hi) / ktiles for op in want}
    facts.update(main_loop=f"0x{lo:x}-0x{hi:x}", ktiles_per_iteration=ktiles, per_ktile=got)
    return [f"main loop: {got[op]:g} {op} per k-tile, the tiling predicts {n}" for op, n in want.items()
            if got[op] != n]


@functools.lru_cache(maxsize=8)
def module_kernels(path: str, arch: int) -> Tuple[SassKernel, ...]:
    """The sm_<arch> kernels of a CUDA module or object, demangled (one cuobjdump run per architecture:
    a module's four architectures are ~3 million lines of listing)."""
    tool = find_tool("cuobjdump")
    if tool is None:
        raise RuntimeError("cuobjdump not found (PATH, pip install nvidia-cuda-cuobjdump, or Triton's copy)")
    kernels = parse_sass(_run([tool, "-sass", "-arch", f"sm_{arch}", path]))
    for k, pretty in zip(kernels, demangle([k.name for k in kernels])):
        k.pretty = pretty
    return tuple(kernels)


def check_cuda_module(path: str, archs: Iterable[int] = (80, 90),
                      tiles: Optional[List[Tuple[int, ...]]] = None) -> List[Finding]:
    res = parse_res_usage(_run([find_tool("cuobjdump") or "cuobjdump", "-res-usage", path]))
    tiles = source_tiles() if tiles is None else tiles
    return [check_kernel(k, res.get((k.arch, k.name)), tiles) for arch in archs for k in module_kernels(path, arch)]


# ---- Triton kernels compiled for Hopper -------------------------------------------------------------

# (label, launcher, dtype): one launch of each Triton kernel family on a ResNet-like layer (2x64x16x16,
# 128 3x3 filters, channels_last), fp16/bf16 and fp32 (TF32); depthwise and pooling have no GEMM.
TRITON_CASES = [
    ("conv2d_fwd", "conv2d_fwd", "float16"), ("conv2d_fwd", "conv2d_fwd", "bfloat16"),
    ("conv2d_fwd", "conv2d_fwd", "float32"), ("conv2d_dgrad", "conv2d_dgrad", "float16"),
    ("conv2d_wgrad", "conv2d_wgrad", "bfloat16"), ("dwconv2d_fwd", "conv2d_fwd", "float16"),
    ("max_pool2d_fwd", "max_pool2d_fwd", "float16"),
]
_GEMM = ("conv2d_fwd", "conv2d_dgrad", "conv2d_wgrad")


def _capture_launch(mods, label: str, launcher: str, dtype: str):
    """Runs a launcher of fastconv.triton on CPU tensors with its kernels replaced by recorders, and
    returns (kernel, positional args, keyword args) of the launch it would make (heuristic config)."""
    import torch

    launches = []

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *a, **kw: launches.append((self.kernel, a, kw))

    dt = getattr(torch, dtype)
    cl = torch.channels_last
    depthwise = label.startswith("dw")
    C, K = (64, 64) if depthwise else (64, 128)
    x = torch.randn(2, C, 16, 16, dtype=dt).to(memory_format=cl)
    w = torch.randn(K, 1 if depthwise else C, 3, 3, dtype=dt).to(memory_format=cl)
    dy = torch.randn(2, K, 16, 16, dtype=dt).to(memory_format=cl)
    mod = mods.pool2d if "pool" in launcher else mods.conv2d
    saved = {n: v for n, v in vars(mod).items() if n.startswith("_") and n.endswith(("_kernel", "_fwd", "_dgrad",
                                                                                          "_wgrad"))
             and hasattr(v, "__getitem__") and not isinstance(v, (str, tuple, list, dict))}
    old = os.environ.get("FASTCONV_AUTOTUNE")
    os.environ["FASTCONV_AUTOTUNE"] = "0"
    try:
        for n, v in saved.items():
            setattr(mod, n, Recorder(v))
        fn = getattr(mod, launcher)
        groups = C if depthwise else 1
        if launcher == "conv2d_fwd":
            fn(x, w, None, (1, 1), (1, 1), (1, 1), groups, False)
        elif launcher == "conv2d_dgrad":
            fn(dy, x, w, None, (1, 1), (1, 1), (1, 1), groups)
        elif launcher == "conv2d_wgrad":
            fn(dy, x, w, None, (1, 1), (1, 1), (1, 1), groups, True, False)
        else:
            fn(x, (3, 3), (2, 2), (1, 1), (1, 1), False, False)
    finally:
        for n, v in saved.items():
            setattr(mod, n, v)
        if old is None:
            os.environ.pop("FASTCONV_AUTOTUNE", None)
        else:
            os.environ["FASTCONV_AUTOTUNE"] = old
    if not launches:
        raise RuntimeError(f"fastconv.triton.{launcher} ({label}, {dtype}) launched no kernel")
    return launches[0]


def compile_triton(kernel, args, kwargs, capability: int = 90):
    """Compiles one captured launch for an NVIDIA GPU of this compute capability with Triton's own
    compiler (no GPU needed): the same specialization the JIT would make for these arguments. Uses
    Triton 3.x internals (create_function_from_signature, JITFunction._pack_args)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    kwargs = dict(kwargs)
    fn = kernel
    if hasattr(kernel, "values") and hasattr(kernel, "fn"):   # triton.heuristics wrapper
        fn = kernel.fn
        named = {**dict(zip(fn.arg_names, args)), **kwargs}
        for name, rule in kernel.values.items():
            kwargs[name] = rule(named)
    target = GPUTarget("cuda", capability, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)
    config = {k: kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages") if k in kwargs}
    return compiled, config


def check_triton(capability: int = 90, cases=None) -> List[Finding]:
    """Compiles TRITON_CASES for sm_<capability> and checks their PTX and SASS."""
    import tempfile

    import triton

    if triton.knobs.runtime.interpret:
        raise RuntimeError("TRITON_INTERPRET=1 is set: unset it to compile the Triton kernels")
    from . import triton as fctriton

    mods = fctriton.kernels()
    tool = find_tool("cuobjdump")
    findings = []
    for label, launcher, dtype in cases or TRITON_CASES:
        kernel, args, kwargs = _capture_launch(mods, label, launcher, dtype)
        compiled, config = compile_triton(kernel, args, kwargs, capability)
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(compiled.asm["cubin"])
            f.flush()
            sass = parse_sass(_run([tool, "-sass", f.name]))
            res = parse_res_usage(_run([tool, "-res-usage", f.name]))
        k = sass[0]
        k.pretty = f"{label} {dtype} (triton {k.name})"
        # a lone cubin's -res-usage has no "arch =" line: its entries are under arch 0
        usage = res.get((k.arch, k.name)) or res.get((0, k.name))
        findings.append(_triton_finding(k, usage, compiled, config, label, dtype))
    return findings


def triton_wgmma_per_iteration(config: Dict[str, int], num_warps: int, tf32: bool) -> int:
    """HGMMA per BLOCK_K step of a Triton tl.dot on Hopper: the warpgroups (4 warps each) split
    BLOCK_M in m64 slices, each issues one m64nNk16 (k8 for TF32) per k-step over the whole BLOCK_N."""
    m_slices = config["BLOCK_M"] // 64 // max(1, num_warps // 4)
    return max(1, m_slices) * (config["BLOCK_K"] // (8 if tf32 else 16))


def _triton_finding(k: SassKernel, res, compiled, config, label: str, dtype: str = "") -> Finding:
    ptx = compiled.asm["ptx"]
    mma = "wgmma" if "wgmma.mma_async" in ptx else "mma" if re.search(r"\bmma\.sync", ptx) else "none"
    threads = 32 * compiled.metadata.num_warps
    smem = compiled.metadata.shared
    facts: Dict[str, object] = dict(config=config, ptx_mma=mma, tma="cp.async.bulk.tensor" in ptx,
                                    cp_async="cp.async" in ptx, threads=threads, smem=smem)
    errors = []
    if k.count("LDL") + k.count("STL"):
        errors.append(f"local memory: {k.count('LDL')} LDL, {k.count('STL')} STL")
    if res:
        blocks, occ, limit = occupancy(k.arch, res["REG"], smem, threads)
        facts.update(regs=res["REG"], blocks_per_sm=blocks, occupancy=round(occ, 3), limit=limit)
        if res.get("STACK", 0) or res.get("LOCAL", 0):
            errors.append(f"stack frame {res.get('STACK', 0)} bytes, local {res.get('LOCAL', 0)} bytes")
    if label in _GEMM:
        loop = k.main_loop()
        if loop is None:
            errors.append("GEMM kernel whose loops hold no HGMMA/HMMA")
        else:
            lo, hi = loop
            facts.update(main_loop=f"0x{lo:x}-0x{hi:x}", HGMMA=k.count("HGMMA", lo, hi), HMMA=k.count("HMMA", lo, hi),
                         LDSM=k.count("LDSM", lo, hi), LDGSTS=k.count("LDGSTS", lo, hi))
            want = triton_wgmma_per_iteration(config, compiled.metadata.num_warps, dtype == "float32")
            if mma == "wgmma":
                facts["HGMMA_expected"] = want
                if facts["HGMMA"] != want:
                    errors.append(f"main loop: {facts['HGMMA']} HGMMA per iteration, the tile predicts {want}")
        if k.arch >= 90 and mma != "wgmma":
            errors.append(f"sm_{k.arch} GEMM kernel without wgmma (PTX MMA: {mma})")
    return Finding(k.pretty, k.arch, facts, errors)


# ---- report -----------------------------------------------------------------------------------------

def _row(f: Finding) -> str:
    x = f.facts
    occ = (f"{x['regs']:>3} regs {x['smem']:>6} B smem {x['threads']:>3}{'*' if x.get('threads_assumed') else ' '}thr "
           f"{x['blocks_per_sm']:>2} blk/SM {100 * x['occupancy']:5.1f}% ({x['limit']})") if "regs" in x else "no res-usage"
    loop = ""
    if "per_ktile" in x:
        got, want = x["per_ktile"], x["expected_per_ktile"]
        loop = " | per k-tile " + " ".join(f"{op} {got[op]:g}/{want[op]}" for op in want)
    elif "ptx_mma" in x:
        loop = f" | PTX MMA {x['ptx_mma']}, TMA {'yes' if x['tma'] else 'no'}, cp.async {'yes' if x['cp_async'] else 'no'}"
        if "main_loop" in x:
            loop += (f", loop: HGMMA {x['HGMMA']}" + (f"/{x['HGMMA_expected']}" if "HGMMA_expected" in x else "")
                     + f" HMMA {x['HMMA']} LDSM {x['LDSM']} LDGSTS {x['LDGSTS']}")
        loop += f", config {x['config']}"
    status = "FAIL: " + "; ".join(f.errors) if f.errors else "ok"
    return f"sm_{f.arch} | {f.kernel} | {occ}{loop} | {status}"


def format_report(cuda: List[Finding], triton: List[Finding], notes: List[str]) -> str:
    lines = ["fastconv static GPU code report (fastconv.gpu_static; docs/gpu.md)", *notes, ""]
    tc = [f for f in cuda if "per_ktile" in f.facts or "expected_per_ktile" in f.facts]
    lines.append(f"CUDA: {len(cuda)} kernel binaries, {len(tc)} tensor-core; "
                 f"{sum(1 for f in cuda if f.errors)} failing. Columns: registers, shared memory (static + the "
                 "tile's dynamic), threads per block (* = 256 assumed: set by the launcher), theoretical blocks "
                 "per SM and occupancy (limit), and for the tensor-core kernels instructions per k-tile "
                 "found/predicted by the tiling.")
    lines += [_row(f) for f in cuda]
    lines += ["", f"Triton (compiled for Hopper by Triton itself): {len(triton)} kernels, "
                  f"{sum(1 for f in triton if f.errors)} failing."]
    lines += [_row(f) for f in triton]
    failing = [f for f in cuda + triton if f.errors]
    lines += ["", f"RESULT: {'FAIL' if failing else 'ok'} ({len(failing)} failing kernel binaries)"]
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastconv.gpu_static", description=__doc__.split("\n\n")[0])
    p.add_argument("--module", default=None, help="the CUDA module to disassemble (default: fastconv._C_cuda)")
    p.add_argument("--archs", default="80,90", help="architectures of the CUDA module to check (default 80,90)")
    p.add_argument("--triton", default="90", help="compute capability to compile the Triton kernels for, "
                                                  "or 'none' (default 90)")
    p.add_argument("--out", default=str(ROOT / "build" / "fastconv-sass.txt"), help="report path (+ .json)")
    p.add_argument("--allow-missing", action="store_true",
                   help="no CUDA module or no cuobjdump is a note in the report, not a failure")
    args = p.parse_args(argv)
    notes, cuda, triton = [], [], []
    module = args.module or cuda_module_path()
    missing = None
    if module is None:
        missing = "fastconv._C_cuda is not built (nvcc missing?): no CUDA kernels checked"
    elif find_tool("cuobjdump") is None:
        missing = "cuobjdump not found (pip install nvidia-cuda-cuobjdump): nothing checked"
    if missing:
        notes.append("NOTE: " + missing)
        if not args.allow_missing:
            print(missing, file=sys.stderr)
            return 2
    else:
        archs = [int(a) for a in args.archs.split(",") if a.strip()]
        notes.append(f"CUDA module: {module}, architectures {archs}")
        cuda = check_cuda_module(module, archs)
        found = {f.arch for f in cuda}
        for a in archs:
            if a not in found:
                cuda.append(Finding(f"(no sm_{a} code in the module)", a, {}, [f"sm_{a} not built"]))
    if args.triton != "none" and find_tool("cuobjdump") is not None:
        triton = check_triton(int(args.triton))
    text = format_report(cuda, triton, notes)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(
        {"cuda": [dataclasses.asdict(f) for f in cuda], "triton": [dataclasses.asdict(f) for f in triton],
         "notes": notes}, indent=1, default=str))
    print(text, end="")
    return 1 if any(f.errors for f in cuda + triton) else 0


if __name__ == "__main__":
    sys.exit(main())
