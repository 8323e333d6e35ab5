"""The CUDA adaptive pooling kernels (kernels/pool2d_adaptive.cuh, launched by csrc/cuda/pool2d.cu) and the 1-d
pools (the 2-d kernels on (N, C, 1, L) views) on the SIMT emulator (backend 'cuda_emu') against torch.

Through fastconv.functional under the 'cuda_emu' backend, forward and autograd backward, over sampled grids of
tests/helpers.py (ADAPTIVE_AXES with every dtype, MAX_POOL1D_AXES, AVG_POOL1D_AXES), each with the emulator's
threads in forward and reversed order: max values and indices EQUAL torch's (also with ties and NaN), the rest
within helpers.REL_TOL of torch in float64; and the kernels really ran on the emulator (launch statistics:
the warp-per-plane global average included).
"""
from __future__ import annotations

import pytest
import torch

import fastconv
import fastconv.functional as FC
from helpers import (ADAPTIVE_AXES, AVG_POOL1D_AXES, MAX_POOL1D_AXES, case_id, check_adaptive, check_pool1d,
                     nans, pool1d_torch_accepts, sample_grid, ties)

_C_emu = pytest.importorskip("fastconv._C_emu", reason="the SIMT emulator module is not built")
pytestmark = pytest.mark.emu

# Smaller than the CPU grid's sizes: each emulated thread is a fiber.
AXES = dict(ADAPTIVE_AXES, C=[1, 3, 9], HW=[(1, 1), (5, 5), (7, 6), (4, 11), (9, 9)],
            dtype=[torch.float32, torch.float64, torch.float16, torch.bfloat16])
CASES = sample_grid(AXES, n=28, seed=61)
MAX1D = sample_grid(dict(MAX_POOL1D_AXES, N=[1, 2], C=[1, 3]), n=14, seed=62, valid=pool1d_torch_accepts("max"))
AVG1D = sample_grid(dict(AVG_POOL1D_AXES, N=[1, 2], C=[1, 3]), n=12, seed=63, valid=pool1d_torch_accepts("avg"))


@pytest.fixture(autouse=True)
def _emu_backend():
    with fastconv.use_backend("cuda_emu"):
        yield


@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_adaptive_pool2d(thread_order, case, kind):
    case = dict(case)
    dtype = case.pop("dtype")
    _C_emu.reset_launch_stats()
    check_adaptive(case, dtype, kind)
    assert _C_emu.launch_stats()["launches"] >= 1


@pytest.mark.parametrize("values", [ties, nans], ids=["ties", "nans"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_adaptive_max_special_values(thread_order, values, layout):
    case = dict(output_size=(3, 4), layout=layout, N=2, C=3, HW=(7, 9), grad="contiguous")
    check_adaptive(case, torch.float32, "max", values=values)


@pytest.mark.parametrize("case", MAX1D, ids=case_id)
def test_max_pool1d(thread_order, case):
    check_pool1d(case, torch.float32, "max")


@pytest.mark.parametrize("case", AVG1D, ids=case_id)
def test_avg_pool1d(thread_order, case):
    check_pool1d(case, torch.float32, "avg")


@pytest.mark.parametrize("C", [1, 8, 13])
def test_global_average_is_one_warp_per_plane(thread_order, C):
    """NCHW global average pooling launches the warp-per-plane kernel: 32 threads per (n, c) plane, planes
    longer than a warp (lanes stride the plane) and C not a multiple of the 8 planes of a block."""
    x = torch.randn(3, C, 9, 11, dtype=torch.float64)
    _C_emu.reset_launch_stats()
    y = FC.adaptive_avg_pool2d(x, 1)
    stats = _C_emu.launch_stats()
    assert stats["launches"] == 1 and stats["threads"] == 3 * ((C + 7) // 8) * 256, stats
    torch.testing.assert_close(y, x.mean((2, 3), keepdim=True), rtol=1e-12, atol=0)
