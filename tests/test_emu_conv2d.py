"""The CUDA convolution kernels (kernels/conv2d_*.cuh, launched by csrc/cuda/conv2d.cu) run on the
SIMT emulator (backend 'cuda_emu') against torch.

Through the public API (fastconv.functional.conv2d / conv2d_relu under fastconv.use_backend('cuda_emu'))
and autograd: every case runs the forward kernel and the backward kernels (dgrad, wgrad, bias
gradient; the ReLU mask for conv2d_relu) and compares y, x.grad, w.grad and b.grad with torch in
float64 from the same values (helpers.REL_TOL; float16/bfloat16 are stored rounded, accumulated in
float32). Each case runs with the emulator's threads in forward and in reversed order: a missing
__syncthreads reads shared memory another thread has not written yet (or already overwrote) in one
of the orders. Shapes are small (the emulator switches fibers at ~40 ns) but are chosen to cross
every tile edge: N*P*Q and K not multiples of the tiles, several M and N tiles, both GEMM tilings
(<= 64 and > 64 columns), the wgrad split reduction, stride phases without taps in dgrad.

Kernels and what reaches them:
  implicit GEMM (conv2d_fwd/dgrad/wgrad_kernel, wgrad_reduce) - groups < C;
  depthwise direct (conv2d_depthwise_fwd/dgrad_kernel, channel_reduce WITH_X) - groups == C, any multiplier;
  channel reduction (bias gradient) - every case with a bias.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

import fastconv
from fastconv.backends import cuda as cuda_backend
import fastconv.functional as FC
from helpers import assert_rel, case_id, check_conv_case, conv_valid, covered, sample_grid

_C_emu = pytest.importorskip("fastconv._C_emu", reason="the SIMT emulator module is not built")
pytestmark = pytest.mark.emu

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
DTYPE_CODE = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}

# (C, K, groups). Depthwise (groups == C) with multiplier 1 and 2; K > 64 and C/groups > 64 reach the
# 128x128 tiling of the forward/wgrad and of the dgrad; the others the 128x64 one (fp64: 64x64).
CHANNELS = {
    "c3k4": (3, 4, 1),
    "c8k12": (8, 12, 1),
    "c5k70": (5, 70, 1),
    "c66k3": (66, 3, 1),
    "g2": (4, 6, 2),
    "g3": (6, 9, 3),
    "dw4": (4, 4, 4),
    "dw3x2": (3, 6, 3),
    "c1k2": (1, 2, 1),
    # edge cases only (below): two column tiles in the forward (K = 136) and in the dgrad (C/groups = 70)
    "c5k136": (5, 136, 1),
    "g2c140": (140, 6, 2),
}
GRID_CHANNELS = ["c3k4", "c8k12", "c5k70", "c66k3", "g2", "g3", "dw4", "dw3x2", "c1k2"]

AXES = {
    "op": ["conv2d", "conv2d_relu"],
    "kernel": [(1, 1), (3, 3), (5, 5), (7, 7), (2, 3), (1, 3)],
    "stride": [1, 2, 3, (2, 1)],
    "padding": [0, 1, 2, (1, 2), "same"],
    "dilation": [1, 2, (1, 3)],
    "channels": GRID_CHANNELS,
    "bias": [True, False],
    "layout": ["contiguous", "channels_last", "cl_input", "cl_weight", "slice", "permuted", "unbatched"],
    "dtype": DTYPES,
    "N": [1, 2, 3],
    "HW": [(5, 5), (7, 9), (11, 6), (9, 13)],
    "grad": ["contiguous", "channels_last", "transposed"],
}


GRID = sample_grid(AXES, n=64, seed=71, valid=conv_valid)

# Explicit cases for what a small random grid would rarely hit.
_BASE = dict(op="conv2d", kernel=(3, 3), stride=1, padding=1, dilation=1, channels="c8k12", bias=True,
             layout="contiguous", dtype=torch.float32, N=2, HW=(9, 9), grad="contiguous")
EDGE_CASES = [
    # several M tiles (N*P*Q = 3*12*11 = 396 = 3 tiles of 128 + 12) and N tiles (K = 136: 2 x 128 / 3 x 64)
    dict(_BASE, channels="c5k136", N=3, HW=(12, 11)),
    dict(_BASE, channels="c5k136", N=3, HW=(12, 11), layout="channels_last", op="conv2d_relu"),
    dict(_BASE, channels="c5k136", N=3, HW=(12, 11), dtype=torch.float64, grad="transposed"),
    # dgrad with C/groups > 64 (its 128x128 tiling) and 2 column tiles, grouped
    dict(_BASE, channels="g2c140", kernel=(2, 2), padding=0, N=1, HW=(6, 7)),
    # wgrad split reduction: N*P*Q = 1024 and 576 output pixels, one output tile (2..4 splits)
    dict(_BASE, channels="c3k4", N=4, HW=(16, 16), op="conv2d_relu"),
    dict(_BASE, channels="c3k4", N=1, HW=(24, 24), layout="channels_last", dtype=torch.bfloat16),
    dict(_BASE, channels="g2", N=4, HW=(16, 16), dtype=torch.float64),
    dict(_BASE, channels="c8k12", N=4, HW=(16, 16), dtype=torch.float16, grad="transposed"),
    # dgrad stride phases that no tap reaches (stride 2, dilation 2): dx must be exactly 0 there
    dict(_BASE, stride=2, dilation=2, padding=0, HW=(11, 10)),
    dict(_BASE, stride=2, dilation=2, padding=1, HW=(11, 10), layout="channels_last", op="conv2d_relu"),
    dict(_BASE, kernel=(1, 1), stride=3, padding=0, HW=(10, 11)),
    dict(_BASE, kernel=(2, 2), stride=(3, 2), padding=(0, 1), dilation=(2, 3), HW=(13, 12)),
    # 7x7 stride 2 with C = 3 (a stem), channels_last, N = 1
    dict(_BASE, channels="c3k4", kernel=(7, 7), stride=2, padding=3, N=1, HW=(15, 14), layout="channels_last"),
    # depthwise: multipliers 1 and 2, strides, dilation, both layouts, every dtype
    dict(_BASE, channels="dw4", kernel=(3, 3), stride=2, padding=1, HW=(9, 8), op="conv2d_relu"),
    dict(_BASE, channels="dw3x2", kernel=(5, 5), stride=1, padding=2, HW=(8, 9), layout="channels_last"),
    dict(_BASE, channels="dw3x2", kernel=(3, 3), stride=(2, 1), padding=2, dilation=2, HW=(9, 9),
         dtype=torch.float16, op="conv2d_relu"),
    dict(_BASE, channels="dw4", kernel=(3, 5), stride=3, padding=(1, 2), HW=(10, 11), layout="slice",
         dtype=torch.bfloat16),
    dict(_BASE, channels="dw4", kernel=(7, 7), padding=3, dtype=torch.float64, layout="channels_last",
         grad="transposed"),
    # strided views of input and grad_output, no unit stride anywhere
    dict(_BASE, layout="slice", grad="transposed", op="conv2d_relu", dtype=torch.bfloat16),
    dict(_BASE, layout="permuted", grad="channels_last", dtype=torch.float16, channels="g3"),
]


def test_grid_covers_every_axis_value():
    assert covered(GRID, AXES) == {}


@pytest.fixture(autouse=True)
def _simt_kernels_in_true_fp32(monkeypatch):
    """This file tests the SIMT kernels: the tensor-core path (tests/test_emu_mma_*.py) and TF32 are off."""
    monkeypatch.setattr(cuda_backend, "TENSOR_CORES", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


@contextlib.contextmanager
def emulated(case):
    """fastconv's calls inside run on the emulator; afterwards, checks that its kernels ran: the forward,
    the dgrad (one launch per stride phase), the wgrad (+ its split reduction), the bias gradient."""
    _C_emu.reset_launch_stats()
    with fastconv.use_backend("cuda_emu"):
        yield
    stats = _C_emu.launch_stats()
    launches_min = 3 + bool(case["bias"])
    assert stats["launches"] >= launches_min, f"expected >= {launches_min} emulated launches, got {stats}"
    assert stats["blocks"] >= launches_min and stats["barriers"] > 0, f"the kernels did not run: {stats}"


def check_case(case):
    """helpers.check_conv_case on the emulator, in the case's dtype, with this file's channel configurations."""
    check_conv_case(case, case["dtype"], channels=CHANNELS, ours=emulated)


@pytest.mark.parametrize("case", GRID, ids=case_id)
def test_conv2d_grid(thread_order, case):
    check_case(case)


@pytest.mark.parametrize("case", EDGE_CASES, ids=case_id)
def test_conv2d_edges(thread_order, case):
    check_case(case)


def _shape_tuple(x, w, stride, padding, dilation, groups, out_hw):
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    return (N, C, H, W, K, R, S, *out_hw, *stride, *padding, *dilation, groups)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_wgrad_split_reduction_is_used_and_deterministic(dtype):
    """The split path (partial sums in the workspace, fixed-order reduce) is taken for a long N*P*Q
    with one output tile, gives torch's result, and is bitwise identical from run to run."""
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64).to(dtype).requires_grad_()
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64).to(dtype).requires_grad_()
    shape = _shape_tuple(x, w, (1, 1), (1, 1), (1, 1), 1, (16, 16))
    assert _C_emu.conv2d_wgrad_workspace_bytes(shape, DTYPE_CODE[dtype]) > 0, "expected a split reduction"
    g = torch.randn(4, 4, 16, 16, dtype=torch.float64).to(dtype)
    results = []
    with fastconv.use_backend("cuda_emu"):
        for order in ("forward", "reversed"):
            _C_emu.set_thread_order(order)
            try:
                y = FC.conv2d(x, w, None, padding=1)
                (gw,) = torch.autograd.grad(y, [w], g)
            finally:
                _C_emu.set_thread_order("forward")
            results.append(gw)
    assert torch.equal(results[0], results[1]), "wgrad must be bitwise deterministic"
    xr, wr = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    (gw_ref,) = torch.autograd.grad(F.conv2d(xr, wr, None, padding=1), [wr], g.double())
    assert_rel(results[0], gw_ref, dtype, "grad_weight")


def test_dgrad_phases_without_taps_are_zero(thread_order):
    """stride 2, dilation 2, no padding: the odd rows/columns of x are read by no tap, so dx is exactly
    zero there (their stride phases have an empty reduction and must still be written)."""
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    w = torch.randn(5, 3, 3, 3)
    with fastconv.use_backend("cuda_emu"):
        y = FC.conv2d(x, w, None, stride=2, dilation=2)
        (gx,) = torch.autograd.grad(y, [x], torch.randn_like(y))
    assert torch.count_nonzero(gx[:, :, 1::2, :]) == 0 and torch.count_nonzero(gx[:, :, :, 1::2]) == 0
    assert torch.count_nonzero(gx[:, :, ::2, ::2]) > 0


@pytest.mark.parametrize("channels", ["c8k12", "dw3x2"])
def test_relu_propagates_nan_and_masks_backward(thread_order, channels):
    """conv2d_relu: a NaN in the input gives NaN outputs (torch.relu(NaN) is NaN), and the backward
    mask is torch's threshold_backward (relu_y <= 0 ? 0 : dy): zero where the output is 0, the gradient
    passed where the output is NaN."""
    C, K, groups = CHANNELS[channels]
    x = torch.randn(1, C, 7, 7, dtype=torch.float64)
    x[0, 0, 3, 3] = float("nan")
    x.requires_grad_()
    w = torch.randn(K, C // groups, 3, 3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(1, K, 7, 7, dtype=torch.float64)
    with fastconv.use_backend("cuda_emu"):
        y = FC.conv2d_relu(x, w, None, padding=1, groups=groups)
        (gx,) = torch.autograd.grad(y, [x], g)
    xr, wr = x.detach().requires_grad_(), w.detach()
    y_ref = torch.relu(F.conv2d(xr, wr, None, padding=1, groups=groups))
    (gx_ref,) = torch.autograd.grad(y_ref, [xr], g)
    assert torch.isnan(y_ref).any() and torch.equal(torch.isnan(y), torch.isnan(y_ref))
    torch.testing.assert_close(y.detach(), y_ref, equal_nan=True)
    assert_rel(gx, gx_ref, torch.float64, "grad_input")


def test_channels_last_output_when_input_is_channels_last():
    x = torch.randn(2, 8, 6, 7).to(memory_format=torch.channels_last)
    w = torch.randn(12, 8, 3, 3)
    with fastconv.use_backend("cuda_emu"):
        y = FC.conv2d(x, w, None, padding=1)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_rel(y, F.conv2d(x.double(), w.double(), None, padding=1), torch.float32)
