"""Launch recording (csrc/emu) and the NVRTC/CuPy path built on it (fastconv/backends/cuda_nvrtc.py).

Here, without a GPU: recording runs the real launchers' logic but no kernel; what is recorded matches
what an emulated run launches; the kernel names map to NVRTC name expressions; and the replay
plumbing hands CuPy exactly the recorded launch (checked with a stand-in for CuPy). With nvcc on the
PATH, the recorded symbols are checked to be the symbols nvcc gives the same kernels — the names the
replay looks up. On a GPU with CuPy, tests/test_cuda_gpu.py's NVRTC test runs the real thing.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import types

import pytest
import torch

import fastconv
from fastconv.backends import cuda as cuda_backend
from fastconv.backends import cuda_nvrtc

emu = pytest.importorskip("fastconv._C_emu")
pytestmark = pytest.mark.emu


def record(fn, *args):
    emu.start_recording()
    try:
        fn(*args)
    finally:
        launches = emu.stop_recording()
    return launches


def test_recording_runs_no_kernel_and_matches_an_emulated_run():
    x = torch.randn(1000)
    out = torch.full((4,), -7.0)
    launches = record(emu.selftest.block_sum, x.data_ptr(), out.data_ptr(), 1000, 256, False)
    assert torch.equal(out, torch.full((4,), -7.0)), "a recorded launch must not run"
    assert len(launches) == 1
    (launch,) = launches
    assert launch["grid"] == (4, 1, 1) and launch["block"] == (256, 1, 1) and launch["dynamic_smem"] == 0
    assert launch["signature"] == "fc_emu_selftest::block_sum(float const*, float*, int, bool)"
    p = launch["params"]
    assert [len(b) for b in p] == [8, 8, 4, 1]
    assert int.from_bytes(p[0], "little") == x.data_ptr() and int.from_bytes(p[1], "little") == out.data_ptr()
    assert int.from_bytes(p[2], "little") == 1000 and p[3] == b"\x00"
    emu.reset_launch_stats()
    emu.selftest.block_sum(x.data_ptr(), out.data_ptr(), 1000, 256, False)
    stats = emu.launch_stats()
    assert stats["launches"] == 1 and stats["blocks"] == 4 and stats["threads"] == 1024


def test_recording_is_per_thread_and_stops():
    x, out = torch.randn(64), torch.zeros(1)
    record(lambda: None)
    emu.selftest.block_sum(x.data_ptr(), out.data_ptr(), 64, 64, False)   # after stop: runs
    assert out.item() == pytest.approx(x.sum().item(), rel=1e-5)


@pytest.mark.parametrize("signature,expression", [
    ("void fc::conv2d_fwd_kernel<float, true, false, 64>(fc::Tensor4, float const*)",
     "fc::conv2d_fwd_kernel<float, true, false, 64>"),
    ("fc_emu_selftest::block_sum(float const*, float*, int, bool)", "fc_emu_selftest::block_sum"),
    ("void fc::k<__half, (fc::Layout)1>(void (*)(int), float)", "fc::k<__half, (fc::Layout)1>"),
])
def test_name_expression(signature, expression):
    assert cuda_nvrtc.name_expression(signature) == expression


def test_replay_hands_cupy_the_recorded_launch(monkeypatch):
    """NvrtcModule with a stand-in for CuPy: the kernel is compiled from kernels/*.cuh under its name
    expression, and cuLaunchKernel receives the recorded grid, block, shared memory, stream and a
    pointer array whose entries hold the recorded argument bytes."""
    calls = {"modules": [], "launches": []}

    class FakeFunction:
        ptr = 0xF00D
        max_dynamic_shared_size_bytes = 0

    class FakeRawModule:
        def __init__(self, code, options, name_expressions):
            calls["modules"].append((code, options, tuple(name_expressions)))

        def get_function(self, name):
            return FakeFunction()

    def launch_kernel(f, gx, gy, gz, bx, by, bz, smem, stream, params, extra):
        n = 4
        pointers = (ctypes.c_void_p * n).from_address(params)
        sizes = [8, 8, 4, 1]
        values = [ctypes.string_at(pointers[i], sizes[i]) for i in range(n)]
        calls["launches"].append((f, (gx, gy, gz), (bx, by, bz), smem, stream, values, extra))

    fake_cupy = types.SimpleNamespace(
        RawModule=FakeRawModule,
        cuda=types.SimpleNamespace(Device=lambda i: _NullContext(), driver=types.SimpleNamespace(launchKernel=launch_kernel)),
    )
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    module = cuda_nvrtc.NvrtcModule(emu, fake_cupy, cuda_nvrtc.kernels_dir())
    module._emu = types.SimpleNamespace(start_recording=emu.start_recording, stop_recording=emu.stop_recording,
                                        block_sum=lambda *args: emu.selftest.block_sum(*args[:-1]))
    monkeypatch.setattr(cuda_nvrtc, "LAUNCHERS", cuda_nvrtc.LAUNCHERS + ("block_sum",))
    x, out = torch.randn(300), torch.zeros(3)
    module.block_sum(x.data_ptr(), out.data_ptr(), 300, 128, False, 0xABC)  # the stream is the last argument
    assert torch.equal(out, torch.zeros(3))
    (code, options, names), = calls["modules"]
    assert names == ("fc_emu_selftest::block_sum",)
    assert '#include "common.cuh"' in code and any(o.startswith("-I") and o.endswith("kernels") for o in options)
    (f, grid, block, smem, stream, values, extra), = calls["launches"]
    assert (f, grid, block, smem, extra) == (0xF00D, (3, 1, 1), (128, 1, 1), 0, 0)
    assert stream == 0xABC
    assert int.from_bytes(values[0], "little") == x.data_ptr() and int.from_bytes(values[2], "little") == 300


class _NullContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_nvrtc_path_reports_why_it_is_unavailable(monkeypatch):
    monkeypatch.setenv("FASTCONV_CUDA_JIT", "1")
    ok, why = fastconv.backends.registered()["cuda"].availability()
    assert not ok
    try:
        import cupy  # noqa: F401
        assert "no GPU present" in why or torch.cuda.is_available()
    except ImportError:
        assert "CuPy is not installed" in why


def _record_public_ops():
    """Launches recorded from the real launchers for a few ops and dtypes (CPU tensors; nothing runs)."""
    launches = []
    for dtype in (torch.float32, torch.float16):
        x = torch.randn(2, 8, 9, 9, dtype=dtype)
        w = torch.randn(8, 4, 3, 3, dtype=dtype)
        emu.start_recording()
        try:
            b = cuda_backend.EmulatedCudaBackend()
            b.conv2d_fwd(x, w, torch.randn(8, dtype=dtype), (1, 1), (1, 1), (1, 1), 2, True)
            b.max_pool2d_fwd(x, (3, 3), (2, 2), (1, 1), (1, 1), False, True)
            b.avg_pool2d_fwd(x.to(memory_format=torch.channels_last), (2, 2), (2, 2), (0, 0), False, True, None)
        finally:
            launches += emu.stop_recording()
    return launches


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_recorded_symbols_are_the_symbols_nvcc_gives_the_kernels(tmp_path):
    """The NVRTC path finds a kernel by the name expression derived from the recorded (g++) symbol and
    relies on NVRTC mangling it the same way: instantiate every expression with nvcc from kernels/ and
    check that the PTX entry points carry exactly the recorded symbols."""
    launches = _record_public_ops()
    assert launches, "the launchers recorded nothing"
    symbols = {launch["symbol"]: cuda_nvrtc.name_expression(launch["signature"]) for launch in launches}
    src = [f'#include "{os.path.basename(p)}"' for p in sorted(os.listdir(cuda_nvrtc.kernels_dir())) if p.endswith(".cuh")]
    src += ["void fc_instantiate_all() {"]
    src += [f"  (void)&{expr};" for expr in symbols.values()]
    src += ["}"]
    cu = tmp_path / "instantiate.cu"
    cu.write_text("\n".join(src) + "\n")
    ptx = tmp_path / "instantiate.ptx"
    # Without LD_PRELOAD: CI's sanitizer job preloads libasan into python, and nvcc must not inherit it.
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    proc = subprocess.run(["nvcc", "-std=c++17", "--ptx", "-arch=compute_80", f"-I{cuda_nvrtc.kernels_dir()}",
                           str(cu), "-o", str(ptx)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    entries = set()
    for line in ptx.read_text().splitlines():
        line = line.strip()
        if ".entry " in line:
            entries.add(line.split(".entry ", 1)[1].split("(", 1)[0].strip())
    missing = {s: e for s, e in symbols.items() if s not in entries}
    assert not missing, f"recorded symbols without a PTX entry of that name: {missing}"
