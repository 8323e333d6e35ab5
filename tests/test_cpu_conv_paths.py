"""Shapes that take the CPU backend's specialized conv2d paths (csrc/cpu/conv2d_isa.cpp), forward and
every gradient vs torch in float64:

- channels_last depthwise (conv_dwcl_rows): 3x3 and 5x5 taps, column stride 1 and 2, row pairs
  (3x3 stride 1) and single rows (odd P, stride 2, non-square filters), pixel blocks of 8 / 4 / a
  partial block (Q = 32, 13, 7, 3), channel tails (C not a multiple of the vector length), bias,
  fused ReLU (its backward runs the masked dgrad through the same kernel with mirrored taps);
- channels_last with few input channels (conv_cl's row merge, e.g. an RGB stem): a filter row's S taps
  are one run of S*C floats; pixels whose whole window is inside the input are grouped first and run
  ukr_rows_strided (one pointer per pixel), the border pixels the per-segment pointer kernel; row
  dilation, stride, R != S, output-channel tails, windows that are never whole, and a reduction too
  long for one block (7x7 stem: the per-segment path alone);
- NCHW stride 2 (conv_pix_direct with phase planes): 3x3 pad 1, 1x1 (one plane of four read), odd
  sizes, stride (2, 1) and (1, 2), dilation, groups.

Every tensor is also run through the AVX2 and baseline kernels (fastconv._C.set_cpu_isa) where the
machine allows, since the specializations differ per ISA level.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastconv.functional as FC
from fastconv import _C
from conftest import assert_rel

ISAS = [i for i in ("avx512", "avx2", "baseline")
        if ["baseline", "avx2", "avx512"].index(i) <= ["baseline", "avx2", "avx512"].index(_C.detected_cpu_isa())]


@pytest.fixture(params=ISAS)
def isa(request):
    previous = _C.cpu_isa()
    _C.set_cpu_isa(request.param)
    yield request.param
    _C.set_cpu_isa(previous)


def _check(backend, isa, x, w, b, relu, dtype, **kw):
    x = x.to(dtype).requires_grad_()
    w = w.to(dtype).requires_grad_()
    b = b.to(dtype).requires_grad_() if b is not None else None
    f = FC.conv2d_relu if relu else FC.conv2d
    y = f(x, w, b, **kw)
    xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    bd = b.detach().double().requires_grad_() if b is not None else None
    yr = F.conv2d(xd, wd, bd, **kw)
    if relu:
        yr = yr.relu()
    assert y.is_contiguous(memory_format=torch.channels_last) == yr.is_contiguous(memory_format=torch.channels_last)
    assert_rel(y, yr, dtype, "output")
    g = torch.randn_like(yr)
    leaves = [t for t in (x, w, b) if t is not None]
    refs = [t for t in (xd, wd, bd) if t is not None]
    ours = torch.autograd.grad(y, leaves, g.to(dtype))
    want = torch.autograd.grad(yr, refs, g)
    for name, o, r in zip(("dx", "dw", "db"), ours, want):
        assert_rel(o, r, dtype, name)


def _check_case(backend, isa, case, relu, dtype, memory_format):
    """_check on a (N, C, H, W, K, kernel, stride, padding, dilation) case with bias, input in memory_format."""
    N, C, H, W, K, k, stride, padding, dilation = case
    ks = k if isinstance(k, tuple) else (k, k)
    x = torch.randn(N, C, H, W).contiguous(memory_format=memory_format)
    w = torch.randn(K, C, *ks)
    _check(backend, isa, x, w, torch.randn(K), relu, dtype, stride=stride, padding=padding, dilation=dilation)


# (N, C, H, W, kernel, stride, padding, dilation)
DW_CASES = [
    (2, 32, 8, 32, 3, 1, 1, 1),        # row pairs, 4 whole blocks of 8 per row
    (1, 40, 7, 13, 3, 1, 1, 1),        # odd P (a single last row), blocks 8 + 4 + partial 1, channel tail
    (2, 16, 6, 7, 3, 1, 0, 1),         # no padding, Q = 5
    (1, 24, 9, 3, 3, 1, 1, 1),         # Q = 3: one partial block, every column an edge
    (2, 17, 11, 19, 3, 2, 1, 1),       # stride 2, channel tail
    (1, 48, 10, 21, 5, 1, 2, 1),       # 5x5
    (1, 33, 9, 16, 5, 2, 2, 1),        # 5x5 stride 2
    (1, 16, 9, 20, (5, 3), 1, (2, 1), 1),  # R != S: single rows
    (1, 16, 9, 20, 3, (2, 1), 1, 1),   # row stride 2: single rows
    (1, 16, 9, 20, 3, 1, 1, (2, 1)),   # row dilation 2: single rows
    (4, 128, 33, 32, 3, 1, 1, 1),      # 2.1 MiB output (float32): streamed stores; row pairs, a last single row
]


@pytest.mark.parametrize("case", DW_CASES, ids=[str(i) for i in range(len(DW_CASES))])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_depthwise_channels_last(backend, isa, case, relu, dtype):
    N, C, H, W, k, stride, padding, dilation = case
    ks = k if isinstance(k, tuple) else (k, k)
    x = torch.randn(N, C, H, W).contiguous(memory_format=torch.channels_last)
    w = torch.randn(C, 1, *ks)
    b = torch.randn(C)
    _check(backend, isa, x, w, b, relu, dtype, stride=stride, padding=padding, dilation=dilation, groups=C)


# (N, C, H, W, K, kernel, stride, padding, dilation): channels_last inputs of 2-4 channels. Their input
# gradient (C <= L/4 output channels for the dgrad kernels) runs the NCHW kernels between two layout
# copies (dgrad_impl); with float64 (L = 8 in AVX-512) only C = 2 does, on AVX2 only float32 C = 2.
FEW_CHANNEL_DGRAD_CASES = [
    (2, 3, 12, 13, 8, 3, 1, 1, 1),     # the RGB stem's kind
    (1, 4, 9, 9, 6, 3, 2, 1, 1),       # stride 2, C = 4 = L/4 in float32
    (2, 2, 10, 7, 5, 3, 1, 2, 2),      # dilation 2, padding 2
    (1, 3, 8, 8, 4, 1, 1, 0, 1),       # 1x1
    (3, 3, 1, 1, 4, 1, 1, 0, 1),       # one-pixel input: the same in both layouts, not copied
]


@pytest.mark.parametrize("case", FEW_CHANNEL_DGRAD_CASES, ids=[str(i) for i in range(len(FEW_CHANNEL_DGRAD_CASES))])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_few_channels_input_grad_channels_last(backend, isa, case, relu, dtype):
    _check_case(backend, isa, case, relu, dtype, torch.channels_last)


def test_few_channels_input_grad_channels_last_strided_grad(backend):
    """The layout copy reads dy through its strides: y.sum() gives a grad_output of stride 0 (conv2d;
    conv2d_relu's stride-0 dy is masked into an NCHW buffer first, then copied)."""
    x = torch.randn(2, 3, 11, 9).contiguous(memory_format=torch.channels_last).requires_grad_()
    xr = x.detach().double().requires_grad_()
    w, b = torch.randn(8, 3, 3, 3), torch.randn(8)
    for f, ref in ((FC.conv2d, F.conv2d), (FC.conv2d_relu, lambda *a, **k: F.conv2d(*a, **k).relu())):
        x.grad = xr.grad = None
        f(x, w, b, padding=1).sum().backward()
        ref(xr, w.double(), b.double(), padding=1).sum().backward()
        assert x.grad.is_contiguous(memory_format=torch.channels_last)
        assert_rel(x.grad, xr.grad, torch.float32, "dx")


# (N, C, H, W, K, kernel, stride, padding, dilation, groups). The direct path runs when the plane
# width Wp = Q + (taps' reach in plane columns) wastes at most 1/8: Q * 8 >= Wp * 7.
S2_CASES = [
    (2, 8, 16, 16, 12, 3, 2, 1, 1, 1),     # Q = 8, Wp = 9
    (1, 5, 15, 13, 7, 3, 2, 1, 1, 1),      # odd sizes, Q = 7, Wp = 8
    (2, 6, 14, 14, 9, 1, 2, 0, 1, 1),      # 1x1 stride 2: one phase plane of four read
    (1, 4, 17, 40, 6, 3, (2, 1), 1, 1, 1),  # row stride only, Q = 40, Wp = 42
    (1, 4, 11, 17, 6, 3, (1, 2), (0, 1), 1, 1),  # column stride only, Q = 9, Wp = 10
    (1, 6, 19, 40, 4, 3, 2, 2, 2, 1),      # dilation 2, Q = 20, Wp = 22
    (2, 8, 12, 24, 8, 3, 2, 1, 1, 2),      # groups, Q = 12, Wp = 13
    (1, 3, 20, 40, 8, 5, 2, 2, 1, 1),      # 5x5, C = 3, Q = 20, Wp = 22
]


@pytest.mark.parametrize("case", S2_CASES, ids=[str(i) for i in range(len(S2_CASES))])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_strided_nchw(backend, isa, case, relu, dtype):
    N, C, H, W, K, k, stride, padding, dilation, groups = case
    x = torch.randn(N, C, H, W)
    w = torch.randn(K, C // groups, k, k)
    b = torch.randn(K)
    _check(backend, isa, x, w, b, relu, dtype, stride=stride, padding=padding, dilation=dilation, groups=groups)


# Padded windows with few channels (the stem and the other small-C cases with padding) take the
# per-task padded copy (conv_cl's pad_copy): every pixel a whole window of the copy.
# (N, C, H, W, K, kernel, stride, padding, dilation)
ROWMERGE_CASES = [
    (2, 3, 32, 32, 32, 3, 1, 1, 1),          # RGB stem: tasks of 192 pixels span rows, 12 x 32 tiles
    (1, 3, 13, 11, 20, 3, 1, 1, (2, 1)),     # row dilation 2: row runs 2*W*C apart, K tail of 4
    (1, 4, 9, 15, 24, (5, 3), 2, (2, 1), 1),  # stride 2, R != S
    (2, 2, 6, 40, 16, 3, 1, 0, 1),           # no padding: every window whole, Q = 38
    (1, 3, 5, 5, 8, 5, 1, 0, 1),             # one window covering the input
    (3, 3, 4, 4, 64, 3, 1, 2, 1),            # padding 2: most windows never whole, 6 x 64 tiles
    (1, 3, 20, 23, 64, 7, 2, 3, 1),          # 7x7 stride 2: 7 rows of 21 in one block
    (3, 5, 7, 30, 32, (3, 2), 1, (0, 1), 1),  # column padding only, tasks straddling images' rows
    (2, 64, 8, 9, 64, 1, 1, 0, 1),           # 1x1: S == 1 rows merged when one fits an L1 block
    # 1x1, stride 1, no padding: conv_cl_pointwise, one GEMM over the batch's pixels. Pixel counts
    # that leave a partial tile, output-channel tails and several B panels per tile:
    (1, 20, 5, 7, 40, 1, 1, 0, 1),           # M = 35, K = 40: 8 x 32 tiles, a masked half panel
    (3, 48, 3, 5, 32, 1, 1, 0, 1),           # M = 45, K = 32: 12 x 32 tiles, tail of 9 pixels
    (1, 32, 4, 5, 128, 1, 1, 0, 1),          # M = 20, K = 128: two 64-channel panels per tile
    (2, 300, 3, 3, 24, 1, 1, 0, 1),          # 300-long reduction: B larger than an L1 block
    (1, 16, 7, 6, 24, (3, 1), 1, (1, 0), 1),  # S == 1, R == 3, row padding (padded copy)
    (1, 8, 9, 9, 16, 1, 2, 1, 1),            # 1x1 stride 2 with padding: zero border pixels
    # Wide channels: blocks of whole filter rows sized to L2 (conv_cl). On a 2 MiB L2, float32:
    (1, 128, 9, 10, 128, 3, 2, 1, 1),        # stride 2, 384-long rows: all 3 rows in one block
    (1, 192, 6, 5, 192, 3, 2, 1, 1),         # 576-long rows: blocks of 2 rows + 1 row
    (1, 256, 5, 6, 256, 3, 1, 1, 1),         # 768-long rows: one row per block (float64: per-tap blocks)
]


@pytest.mark.parametrize("case", ROWMERGE_CASES, ids=[str(i) for i in range(len(ROWMERGE_CASES))])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_small_channels_channels_last(backend, isa, case, relu, dtype):
    _check_case(backend, isa, case, relu, dtype, torch.channels_last)


# NCHW float32 layers staged through the channels_last engine (conv2d_isa.cpp: stage_nchw_forward):
# (N, C, H, W, K, kernel, stride, padding, dilation). float64 runs the NCHW kernels, as a control.
STAGED_NCHW_CASES = [
    (2, 128, 9, 11, 128, 3, 2, 1, 1),     # Q = 6: partial 16-pixel transpose blocks
    (1, 128, 34, 40, 136, 3, 2, 1, 1),    # Q = 20, K = 136: channel tail of the output transpose
    (1, 160, 8, 7, 48, (3, 1), (2, 3), (1, 0), 1),  # R != S, unequal strides, 160 channels
    (2, 128, 6, 6, 64, 5, 2, 2, 1),       # 5x5, 3x3 output: every window crosses the padding
    (45, 128, 9, 11, 32, 3, 2, 1, 1),     # batches of images (50 KB each) and a shorter last batch
]


@pytest.mark.parametrize("case", STAGED_NCHW_CASES, ids=[str(i) for i in range(len(STAGED_NCHW_CASES))])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_strided_wide_nchw_staged(backend, isa, case, relu, dtype):
    _check_case(backend, isa, case, relu, dtype, torch.contiguous_format)


def test_strided_wide_nchw_staged_views(backend):
    """A strided NCHW view as input (the staging copy reads any strides) and no bias."""
    x = torch.randn(2, 128, 12, 26)[:, :, :, ::2]
    w = torch.randn(128, 128, 3, 3)
    y = FC.conv2d(x, w, None, 2, 1)
    ref = F.conv2d(x.double(), w.double(), None, 2, 1)
    assert y.is_contiguous()
    assert_rel(y, ref, torch.float32, "output")


def test_pointwise_channels_last_views_and_batches(backend):
    """1x1 channels_last layers without bias: the dense case (conv_cl_pointwise, one GEMM over the
    batch's pixels) and views it must leave to conv_cl (a channel slice: pixels 32 floats apart for 24
    channels; a column slice: rows not W pixels apart). A pixel's result does not depend on where its
    tile starts: each image alone gives the batch's output bit for bit (63 pixels per image, so the
    batch's tiles straddle images)."""
    w = torch.randn(40, 24, 1, 1)
    base = torch.randn(3, 32, 7, 9).contiguous(memory_format=torch.channels_last)
    dense = base[:, :24].contiguous(memory_format=torch.channels_last)
    for x in (dense, base[:, :24], dense[:, :, :, :5]):
        y = FC.conv2d(x, w)
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert_rel(y, F.conv2d(x.double(), w.double()), torch.float32, "output")
    y = FC.conv2d(dense, w)
    for i in range(3):
        assert torch.equal(FC.conv2d(dense[i:i + 1], w), y[i:i + 1])


@pytest.mark.parametrize("channels", [(3, 32), (128, 128)], ids=["rgb", "c128"])
def test_small_channels_channels_last_order_free(backend, channels, monkeypatch):
    """A pixel's result does not depend on which kernel (whole-window or border) computed it: the
    interior of a padded input's output equals the output of the same input without padding, bit for bit.
    (Winograd off: its 4x4 tiles sit differently in the two outputs.)"""
    monkeypatch.setenv("FASTCONV_CPU_WINOGRAD", "0")
    C, K = channels
    x = torch.randn(2, C, 20, 20).contiguous(memory_format=torch.channels_last)
    w = torch.randn(K, C, 3, 3)
    padded = FC.conv2d(x, w, padding=1)
    unpadded = FC.conv2d(x, w, padding=0)
    assert torch.equal(padded[:, :, 1:-1, 1:-1], unpadded)
