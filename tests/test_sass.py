"""Static checks of the compiled GPU code (fastconv.gpu_static): the checker itself on hand-written SASS
listings (it must fail on a spill, on local memory and on a main loop that lost its HMMA/LDSM/LDGSTS),
the tensor-core tiling's predicted counts worked out by hand, and - where the CUDA module is built and
cuobjdump is found (CI) - every kernel of fastconv._C_cuda for sm_80 and sm_90, plus one Triton kernel
compiled for sm_90. A regression in the real binary is also simulated by editing its listing."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fastconv import gpu_static as G

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A 64x64-tile fp16 forward main loop as cuobjdump prints it: one k-tile per iteration (one BAR.SYNC),
# 2 k-steps x MI 2 x NI 4 = 16 HMMA, 2 x (MI 2 + NI/2 2) = 8 LDSM, 4 x (64 + 64) / 128 = 4 LDGSTS.
_NAME = "_ZN2fc2tc13conv2d_fwd_tcI6__halfNS0_6TcTileILi64ELi64ELi2ELi2ELi4ELi4EEELb0ELb0EEEvNS0_11TcFwdParamsIT_EE"
_PRETTY = "void fc::tc::conv2d_fwd_tc<__half, fc::tc::TcTile<64, 64, 2, 2, 4, 4>, false, false>(fc::tc::TcFwdParams<__half>)"


def listing(loop_body, before=(), name=_NAME, arch=90):
    lines = [f"\tcode for sm_{arch}", f"\t\tFunction : {name}"]
    addr = 0

    def emit(text):
        nonlocal addr
        lines.append(f"        /*{addr:04x}*/                   {text} ;   /* 0x000 */")
        addr += 0x10

    for t in before:
        emit(t)
    start = addr
    for t in loop_body:
        emit(t)
    emit(f"@P0 BRA 0x{start:x}")
    emit("EXIT")
    return "\n".join(lines) + "\n"


GOOD_LOOP = (["DEPBAR.LE SB0, 0x2", "BAR.SYNC.DEFER_BLOCKING 0x0"] + ["LDGSTS.E.BYPASS.128 [R1], desc[UR4][R2.64]"] * 4
             + ["LDGDEPBAR"] + ["LDSM.16.M88.4 R8, [R3]"] * 8 + ["HMMA.16816.F32 R20, R8, R12, R20"] * 16)
TILES = [(64, 64, 2, 2, 4, 4)]


def check(text, res=None):
    k = G.parse_sass(text)[0]
    k.pretty = _PRETTY
    return G.check_kernel(k, res, TILES)


def test_expected_counts_from_the_tiling():
    # Worked by hand from kernels/conv2d_tc.cuh (warp tile = BM/WARPS_M x BN/WARPS_N, m16n8 mma tiles).
    t = G.TcKernel("fwd", "__half", 128, 128, 2, 4, 3, 4)     # warp tile 64x32: MI 4, NI 4, 256 threads
    assert t.expected() == {"HMMA": 32, "LDSM": 12, "LDGSTS": 4}
    assert t.smem_bytes == 48 * 1024
    t = G.TcKernel("wgrad", "float", 64, 64, 2, 2, 4, 4)       # TF32, both tiles M/N-major: scalar LDS
    assert t.expected() == {"HMMA": 16, "LDSM": 0, "LDGSTS": 4}
    t = G.TcKernel("dgrad", "float", 64, 128, 2, 2, 4, 4)      # TF32 dgrad: A by ldmatrix, B by LDS
    assert t.expected() == {"HMMA": 32, "LDSM": 4, "LDGSTS": 6}


def test_source_tiles_are_the_launchers():
    tiles = G.source_tiles()
    assert (128, 128, 2, 4, 3, 4) in tiles and (64, 64, 2, 2, 4, 4) in tiles and len(set(tiles)) >= 4


def test_good_listing_passes():
    f = check(listing(GOOD_LOOP), {"REG": 96, "SHARED": 0, "STACK": 0, "LOCAL": 0})
    assert f.errors == [], f.errors
    assert f.facts["per_ktile"] == {"HMMA": 16, "LDSM": 8, "LDGSTS": 4}
    assert f.facts["threads"] == 128 and f.facts["smem"] == 4 * 128 * 64


def test_unrolled_loop_is_counted_per_ktile():
    assert check(listing(GOOD_LOOP * 2)).errors == []


@pytest.mark.parametrize("edit,message", [
    (lambda body: body + ["STL [R1+0x10], R5"], "local memory"),
    (lambda body: ["LDL R5, [R1+0x10]"] + body, "local memory"),
    (lambda body: [i for i in body if not i.startswith("HMMA")], "without HMMA"),
    (lambda body: [i for i in body if not i.startswith("HMMA")][:-1] + ["FFMA R1, R2, R3, R1"] + ["HMMA.16816.F32 R1, R2, R3, R1"] * 8,
     "8 HMMA per k-tile"),
    (lambda body: [i for i in body if not i.startswith("LDSM")] + ["LDS.128 R8, [R3]"] * 8, "0 LDSM per k-tile"),
    (lambda body: [i for i in body if not i.startswith("LDGSTS")] + ["LDG.E.128 R8, [R2.64]"] * 4, "0 LDGSTS"),
])
def test_regressions_fail(edit, message):
    f = check(listing(edit(list(GOOD_LOOP))))
    assert any(message in e for e in f.errors), f.errors


def test_spill_in_resource_usage_fails():
    f = check(listing(GOOD_LOOP), {"REG": 255, "SHARED": 0, "STACK": 16, "LOCAL": 0})
    assert any("stack frame 16" in e for e in f.errors)


def _setup_function(name):
    """One function of setup.py, without running setup() (importing setup.py would build)."""
    import ast
    import re

    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    ns = {"re": re, "subprocess": subprocess}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in (name, "demangle"):
            exec(compile(ast.Module([node], []), "setup.py", "exec"), ns)
    return ns[name]


def test_ptxas_spill_fails_the_build():
    # setup.py fails the build when this list is not empty (CI's first line of defence against spills).
    report = _setup_function("ptxas_report")
    head = "ptxas info    : Compiling entry function '_Z1kv' for 'sm_90'\nptxas info    : Function properties for _Z1kv\n"
    clean = head + "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\nptxas info    : Used 40 registers\n"
    spilled = head + "    24 bytes stack frame, 24 bytes spill stores, 24 bytes spill loads\nptxas info    : Used 255 registers\n"
    assert report([clean])[1] == []
    assert report([spilled])[1] == ["k() (sm_90)"]


def test_occupancy():
    # 128 threads, 96 regs, 32 KiB: registers allow 5 blocks, shared memory (164 KiB) 4 -> 16 of 64 warps.
    assert G.occupancy(80, 96, 32 * 1024, 128) == (4, 0.25, "smem")
    # sm_90's 228 KiB: 6 blocks by shared memory, 5 by registers.
    assert G.occupancy(90, 96, 32 * 1024, 128)[0] == 5
    assert G.occupancy(90, 96, 32 * 1024, 128)[2] == "registers"


def test_triton_wgmma_count_model():
    # Two warpgroups split BLOCK_M=128 into one m64 slice each; BLOCK_K 32 = 2 k16 steps (4 k8 for TF32).
    assert G.triton_wgmma_per_iteration({"BLOCK_M": 128, "BLOCK_K": 32}, 8, False) == 2
    assert G.triton_wgmma_per_iteration({"BLOCK_M": 128, "BLOCK_K": 32}, 8, True) == 4
    assert G.triton_wgmma_per_iteration({"BLOCK_M": 128, "BLOCK_K": 32}, 4, False) == 4


# ---- the real module (CI builds it with nvcc) ------------------------------------------------------

def _module_or_skip():
    path = G.cuda_module_path()
    if path is None:
        pytest.skip("fastconv._C_cuda is not built (CI builds it with nvcc)")
    if G.find_tool("cuobjdump") is None:
        pytest.skip("cuobjdump not found (pip install nvidia-cuda-cuobjdump, or Triton's copy)")
    return path


# sm_90 here (one disassembly, shared by both tests); .ci/run's `python -m fastconv.gpu_static` checks
# sm_80 and sm_90 and fails CI the same way.
@pytest.fixture(scope="module")
def sm90():
    path = _module_or_skip()
    return path, G.module_kernels(path, 90)


@pytest.mark.slow  # ~30 s with the fixture's disassembly (CI's 2 cores)
def test_cuda_module_has_no_local_memory_and_full_tc_main_loops(sm90):
    path, kernels = sm90
    res = G.parse_res_usage(subprocess.run([G.find_tool("cuobjdump"), "-res-usage", path], capture_output=True,
                                           text=True, check=True).stdout)
    findings = [G.check_kernel(k, res.get((k.arch, k.name)), G.source_tiles()) for k in kernels]
    assert findings and all(f.arch == 90 for f in findings)
    bad = [f"{f.kernel}: {f.errors}" for f in findings if f.errors]
    assert not bad, "\n".join(bad)
    tc = [f for f in findings if "per_ktile" in f.facts]
    # every (op, dtype, tile, epilogue flags) instantiation of the launchers: 72 today
    assert len(tc) >= 30 and all(f.facts["per_ktile"]["HMMA"] > 0 for f in tc)
    assert all("regs" in f.facts for f in findings)


@pytest.mark.slow  # the fixture's disassembly when run alone
def test_cuda_module_regression_is_caught(sm90):
    """The real sm_90 listing of one tensor-core kernel, then edited: its HMMAs dropped, or an STL added."""
    _, kernels = sm90
    k = next(k for k in kernels if "conv2d_fwd_tc<__half" in k.pretty)
    tiles = G.source_tiles()
    assert G.check_kernel(k, None, tiles).errors == []
    no_mma = G.SassKernel(k.name, 90, [x for x in k.instrs if x.base != "HMMA"], k.pretty)
    assert any("without HMMA" in e for e in G.check_kernel(no_mma, None, tiles).errors)
    lo, hi = k.main_loop()
    hmma = [x for x in k.instrs if x.base == "HMMA"]
    dropped = {id(x) for x in hmma[1::2]}
    half = G.SassKernel(k.name, 90, [x for x in k.instrs if id(x) not in dropped], k.pretty)
    assert any("HMMA per k-tile" in e for e in G.check_kernel(half, None, tiles).errors)
    spill = G.SassKernel(k.name, 90, k.instrs + [G.Instr(hi + 0x10000, "STL", None)], k.pretty)
    assert any("local memory" in e for e in G.check_kernel(spill, None, tiles).errors)


def test_triton_kernel_for_hopper_uses_wgmma():
    pytest.importorskip("triton")
    if G.find_tool("cuobjdump") is None:
        pytest.skip("cuobjdump not found")
    code = ("from fastconv import gpu_static as G; import json; "
            "f = G.check_triton(90, [('conv2d_fwd', 'conv2d_fwd', 'float16')])[0]; "
            "print(json.dumps({'errors': f.errors, 'mma': f.facts['ptx_mma'], 'hgmma': f.facts.get('HGMMA', 0)}))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["errors"] == [] and got["mma"] == "wgmma" and got["hgmma"] > 0, got
