"""Shapes that take the CPU backend's specialized conv2d paths (csrc/cpu/conv2d_isa.cpp), forward and
every gradient vs torch in float64:

- channels_last depthwise (conv_dwcl_rows): 3x3 and 5x5 taps, column stride 1 and 2, row pairs
  (3x3 stride 1) and single rows (odd P, stride 2, non-square filters), pixel blocks of 8 / 4 / a
  partial block (Q = 32, 13, 7, 3), channel tails (C not a multiple of the vector length), bias,
  fused ReLU (its backward runs the masked dgrad through the same kernel with mirrored taps); the 3x3
  weight gradient's register-blocked rows with and without the bias gradient they carry along;
- channels_last with few input channels (conv_cl's row merge, e.g. an RGB stem): a filter row's S taps
  are one run of S*C floats; pixels whose whole window is inside the input are grouped first and run
  ukr_rows_strided (one pointer per pixel), the border pixels the per-segment pointer kernel; row
  dilation, stride, R != S, output-channel tails, windows that are never whole, and a reduction too
  long for one block (7x7 stem: the per-segment path alone);
- NCHW stride 2 (conv_pix_direct with phase planes): 3x3 pad 1, 1x1 (one plane of four read), odd
  sizes, stride (2, 1) and (1, 2), dilation, groups;
- NCHW conv_pix_direct with row-aligned vectors (one output row's run of columns per vector): the RGB
  stem, masked row tails, stride 2, 5x5, groups, dilation, a streamed (2 MiB) output;
- non-temporal output stores forced on and off (fastconv._C.set_stream_stores) in every forward kernel
  that has them: the same bits either way;
- the weight-pack cache of the implicit-GEMM kernels: hits, in-place updates, one weight in several
  pack formats (kernel family, groups, ISA level), and ConvFwdCall.pack_info.

Every tensor is also run through the AVX2 and baseline kernels (fastconv._C.set_cpu_isa) where the
machine allows, since the specializations differ per ISA level.
"""
from __future__ import annotations

import subprocess

import pytest
import torch
import torch.nn.functional as F

import fastconv.functional as FC
from fastconv import _C
from fastconv.backends import cpu as cpu_backend
from helpers import CPU_ISAS, assert_rel, pair


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


# (N, C, H, W, kernel, stride, padding, dilation). The pixel blocks named are AVX-512's; at AVX2 row
# pairs run blocks of 4 (Q = 13: 4 + 4 + 4 + a partial 1; Q = 5: 4 + 1; Q = 3: a partial 3).
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
    (4, 128, 33, 32, 3, 1, 1, 1),      # 2.1 MiB output (float32): streamed where stream_output says; row pairs, a last single row
    (2, 24, 10, 17, 3, (1, 2), 1, (1, 2)),  # column stride and dilation 2 (the generic forward loops)
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


# Without a bias the 3x3 weight gradient (wgrad_dwcl_row) runs without the bias sums it otherwise
# carries along; with one, test_depthwise_channels_last checks both gradients.
@pytest.mark.parametrize("case", [DW_CASES[1], DW_CASES[4], DW_CASES[-1]], ids=["tail", "stride2", "dil2"])
@pytest.mark.parametrize("relu", [False, True])
def test_depthwise_channels_last_without_bias(backend, isa, case, relu):
    N, C, H, W, k, stride, padding, dilation = case
    x = torch.randn(N, C, H, W).contiguous(memory_format=torch.channels_last)
    _check(backend, isa, x, torch.randn(C, 1, k, k), None, relu, torch.float32, stride=stride, padding=padding,
           dilation=dilation, groups=C)


# (N, C, H, W, K, kernel, stride, padding, dilation): channels_last layers whose output (forward) or input
# (input gradient) channels fill 2-3 vectors, which the AVX2 level runs as one 3-vector panel (4 x 3
# row kernel: 17-24 float32 channels, 9-12 float64), with and without a tail in the third vector.
THREE_VECTOR_CASES = [
    (2, 16, 9, 11, 24, 3, 1, 1, 1),    # 3x3 -> 24
    (2, 20, 8, 9, 20, 1, 1, 0, 1),     # 1x1 20 -> 20: a 4-lane tail, both passes
    (1, 3, 17, 17, 24, 3, 2, 1, 1),    # an RGB stem -> 24
    (2, 24, 7, 7, 17, 3, 1, 1, 1),     # -> 17: one lane of the third vector
    (2, 12, 8, 8, 10, 3, 1, 1, 1),     # float64's 9-12
    (2, 10, 9, 9, 12, 1, 2, 0, 1),     # stride 2 into 10 channels
]


@pytest.mark.parametrize("case", THREE_VECTOR_CASES, ids=[str(i) for i in range(len(THREE_VECTOR_CASES))])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_three_vector_panels_channels_last(backend, isa, case, relu, dtype):
    _check_case(backend, isa, case, relu, dtype, torch.channels_last)


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


# (N, C, H, W, K, kernel, stride, padding, groups): an NCHW input with a channels_last weight, so a
# channels_last output (torch's rule) and dy; the input gradient is NCHW (dgrad's kClOutput: computed
# channels_last, copied back) and a depthwise weight gradient reads a channels_last copy of x.
MIXED_LAYOUT_CASES = [
    (2, 32, 9, 11, 40, 1, 1, 0, 1),      # 1x1
    (2, 64, 7, 7, 96, 1, 2, 0, 1),       # 1x1 stride 2 (one residue class has taps)
    (2, 20, 7, 9, 24, 1, 1, 0, 1),       # 1x1, channel tail at 16 lanes (the staged pointwise wgrad)
    (2, 24, 12, 13, 24, 3, 2, 1, 24),    # depthwise 3x3 stride 2, channel tail at 16 lanes
    (1, 20, 10, 9, 20, 3, 1, 1, 20),     # depthwise stride 1
    (2, 16, 11, 11, 16, 5, 2, 2, 16),    # depthwise 5x5 stride 2, one whole vector
    (2, 16, 6, 7, 24, 3, 2, 1, 1),       # dense 3x3 stride 2
    (1, 8, 9, 9, 8, 3, 2, 1, 8),         # fewer channels than a float32 vector: not copied
]


@pytest.mark.parametrize("case", MIXED_LAYOUT_CASES, ids=[str(i) for i in range(len(MIXED_LAYOUT_CASES))])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mixed_layout_gradients(backend, isa, case, relu, dtype):
    N, C, H, W, K, k, stride, padding, groups = case
    x = torch.randn(N, C, H, W)
    w = torch.randn(K, C // groups, k, k).to(memory_format=torch.channels_last)  # as module.to(...) makes it
    _check(backend, isa, x, w, torch.randn(K), relu, dtype, stride=stride, padding=padding, groups=groups)


# (N, C, H, W, kernel, stride, padding): NCHW depthwise layers on small maps, whose gradients run the
# channels_last kernels on staging copies (depthwise_stages_nchw) when both maps are <= 256 pixels.
DW_NCHW_SMALL_MAP_CASES = [
    (2, 32, 7, 7, 3, 1, 1),       # ShuffleNetV2's last stage
    (2, 20, 14, 14, 3, 1, 1),     # channel tail
    (1, 24, 14, 13, 3, 2, 1),     # stride 2
    (2, 16, 9, 9, 5, 1, 2),       # 5x5
    (1, 48, 16, 16, 3, 1, 1),     # 256 pixels: the bound itself
    (1, 16, 17, 17, 3, 1, 1),     # 289 pixels: stays NCHW
    (2, 8, 7, 7, 3, 1, 1),        # fewer channels than a float32 vector: stays NCHW
]


@pytest.mark.parametrize("case", DW_NCHW_SMALL_MAP_CASES, ids=[str(i) for i in range(len(DW_NCHW_SMALL_MAP_CASES))])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_depthwise_nchw_small_map_gradients(backend, isa, case, relu, dtype):
    N, C, H, W, k, stride, padding = case
    _check(backend, isa, torch.randn(N, C, H, W), torch.randn(C, 1, k, k), torch.randn(C), relu, dtype,
           stride=stride, padding=padding, groups=C)


# (N, C, H, W, K, stride): NCHW 1x1 layers on small maps, whose weight gradient runs wgrad_pointwise on
# channels_last copies of x and dy (wgrad_pointwise_stages_both) when the output map is <= 256 pixels.
PW_NCHW_SMALL_MAP_CASES = [
    (1, 32, 7, 7, 48, 1),       # ResNet-50's 7x7 stage at batch 1
    (2, 20, 14, 14, 24, 1),     # channel tail at 16 lanes
    (1, 16, 14, 13, 32, 2),     # stride 2: a 7x7 output
    (1, 16, 17, 17, 16, 1),     # 289 pixels: blocked
    (2, 8, 7, 7, 16, 1),        # fewer channels than a float32 vector: blocked
]


@pytest.mark.parametrize("case", PW_NCHW_SMALL_MAP_CASES, ids=[str(i) for i in range(len(PW_NCHW_SMALL_MAP_CASES))])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pointwise_nchw_small_map_gradients(backend, isa, case, relu, dtype):
    N, C, H, W, K, stride = case
    _check(backend, isa, torch.randn(N, C, H, W), torch.randn(K, C, 1, 1), torch.randn(K), relu, dtype,
           stride=stride)


@pytest.mark.parametrize("case", PW_NCHW_SMALL_MAP_CASES, ids=[str(i) for i in range(len(PW_NCHW_SMALL_MAP_CASES))])
def test_path_pointwise_nchw_small_map(isa, case):
    N, C, H, W, K, stride = case
    x, w = _meta(N, C, H, W, K, (1, 1))
    P = (H - 1) // stride + 1
    staged = _C.cpu_isa() == "avx512" and C >= 16 and P * P <= 256
    assert (_path(x, w, "wgrad", stride=stride) == "channels_last_copies > wgrad_pointwise") == staged
    assert _path(x, w, "wgrad", torch.float64, stride=stride) != "channels_last_copies > wgrad_pointwise"
    assert _path(x, w, "wgrad", relu=True, stride=stride) != "channels_last_copies > wgrad_pointwise"


def test_mixed_layout_channel_slice_input(backend):
    """ShuffleNetV2's kind: the input is a channel slice of an NCHW tensor (not dense), its gradient a
    dense NCHW tensor of the slice's size."""
    base = torch.randn(2, 64, 10, 10)
    for groups, k in ((1, 1), (32, 3)):
        x = base[:, 32:].detach().requires_grad_()
        w = torch.randn(32, 32 // groups, k, k).to(memory_format=torch.channels_last).requires_grad_()
        xr, wr = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
        y = FC.conv2d(x, w, None, stride=2, padding=k // 2, groups=groups)
        yr = F.conv2d(xr, wr, None, stride=2, padding=k // 2, groups=groups)
        assert y.is_contiguous(memory_format=torch.channels_last)
        g = torch.randn_like(yr)
        ours = torch.autograd.grad(y, (x, w), g.float())
        want = torch.autograd.grad(yr, (xr, wr), g)
        assert ours[0].is_contiguous()
        for name, o, r in zip(("dx", "dw"), ours, want):
            assert_rel(o, r, torch.float32, name)


# (N, C, H, W, K, kernel, stride, padding, dilation, groups). The direct path runs when the plane
# width Wp = Q + (taps' reach in plane columns) wastes at most 1/8: Q * 8 >= Wp * 7.
S2_CASES = [
    (2, 8, 16, 16, 12, 3, 2, 1, 1, 1),     # Q = 8, Wp = 9
    (1, 5, 15, 13, 7, 3, 2, 1, 1, 1),      # odd sizes, Q = 7, Wp = 8
    (2, 6, 14, 14, 9, 1, 2, 0, 1, 1),      # 1x1 stride 2: one phase plane of four read
    (1, 4, 17, 40, 6, 3, (2, 1), 1, 1, 1),  # row stride only, Q = 40, Wp = 42
    (1, 4, 11, 17, 6, 3, (1, 2), (0, 1), 1, 1),  # column stride only, Q = 9, Wp = 10
    (1, 6, 19, 40, 4, 3, 2, 2, 2, 1),      # dilation 2, Q = 20, Wp = 22
    (2, 8, 12, 24, 6, 3, 2, 1, 1, 2),      # groups (Kg = 3: not the narrow-group kernel), Q = 12, Wp = 13
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
    (1, 96, 6, 7, 80, 3, 1, 2, 1),           # padding 2: border groups leave out padding rows and taps
    # Wide channels: blocks of whole filter rows, as many as fit 3/4 of the L2 (conv_cl). float32 rows
    # of B (all output channels) and the blocks they make on a 1 MiB / 2 MiB L2:
    (1, 128, 9, 10, 128, 3, 2, 1, 1),        # stride 2, 384-long rows (196 KB): all 3 rows in one block
    (1, 160, 6, 5, 160, 3, 2, 1, 1),         # 480-long rows (307 KB): 2 + 1 rows / all 3
    (1, 192, 6, 5, 192, 3, 2, 1, 1),         # 576-long rows (442 KB): 1 row per block / all 3
    (1, 224, 5, 6, 224, 3, 2, 1, 1),         # 672-long rows (602 KB): 1 row per block / 2 + 1 rows
    (1, 256, 5, 6, 256, 3, 1, 1, 1),         # 768-long rows (786 KB): per-tap blocks / 1 row per block
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
    (3, 64, 1, 1200, 64, (1, 3), 1, (0, 1), 1),   # one output row, one filter row (conv1d): 64 channels
    (2, 96, 1, 1100, 72, (1, 5), (1, 2), (0, 2), 1),  # the same, strided, a channel tail
]


@pytest.mark.parametrize("case", STAGED_NCHW_CASES, ids=[str(i) for i in range(len(STAGED_NCHW_CASES))])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_strided_wide_nchw_staged(backend, isa, case, relu, dtype):
    _check_case(backend, isa, case, relu, dtype, torch.contiguous_format)


# Spatial filters on >= 64 channels each way that only the AVX2 level stages (stage_nchw_forward's
# spatial_avx2): stride 1, more than 256 output pixels per image and 1,024 in all (5x5: a 3x3 stride-1
# layer of that size is Winograd's).
AVX2_STAGED_NCHW_CASES = [
    (4, 64, 20, 20, 64, 5, 1, 2, 1),      # 5x5, 1,600 output pixels
    (2, 64, 30, 27, 72, 5, 1, 2, 1),      # K = 72: a channel tail at 8 and 16 lanes
]


@pytest.mark.parametrize("case", AVX2_STAGED_NCHW_CASES, ids=[str(i) for i in range(len(AVX2_STAGED_NCHW_CASES))])
@pytest.mark.parametrize("relu", [False, True])
def test_avx2_spatial_nchw_staged(backend, isa, case, relu):
    N, C, H, W, K, k, stride, padding, dilation = case
    x, w = _meta(N, C, H, W, K, pair(k))
    path = _path(x, w, "fwd", stride=stride, padding=padding, dilation=dilation, relu=relu)
    assert path.startswith("igemm_nhwc_staged_nchw/") == (isa == "avx2"), path
    x63, w63 = _meta(N, 63, H, W, K, pair(k))  # one channel short of the rule
    assert not _path(x63, w63, "fwd", stride=stride, padding=padding).startswith("igemm_nhwc_staged_nchw/")
    _check_case(backend, isa, case, relu, torch.float32, torch.contiguous_format)


def test_strided_wide_nchw_staged_views(backend):
    """A strided NCHW view as input (the staging copy reads any strides) and no bias."""
    x = torch.randn(2, 128, 12, 26)[:, :, :, ::2]
    w = torch.randn(128, 128, 3, 3)
    y = FC.conv2d(x, w, None, 2, 1)
    ref = F.conv2d(x.double(), w.double(), None, 2, 1)
    assert y.is_contiguous()
    assert_rel(y, ref, torch.float32, "output")


def test_pointwise_channels_last_views_and_batches(backend):
    """1x1 channels_last layers without bias (conv_cl_pointwise, one GEMM over the batch's pixels): the
    dense case and views whose pixel rows it addresses one by one (a channel slice: pixels 32 floats
    apart for 24 channels; a column slice: rows not W pixels apart). A pixel's result does not depend
    on where its tile starts: each image alone gives the batch's output bit for bit (63 pixels per
    image, so the batch's tiles straddle images)."""
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


@pytest.mark.parametrize("k", [8, 24, 40, 128, 240])
def test_pointwise_one_pixel(backend, isa, k):
    """A 1x1 layer on a 1x1 map at batch 1 (an SE block's) runs one-row tiles, not tiles of copies of
    its one pixel; every tile shape (K a multiple of 64, K <= 2 vectors, wider, one vector) with bias
    and the fused ReLU, float32 and float64, and the same values as that pixel inside a batch."""
    torch.manual_seed(k)
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(1, 96, 1, 1, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(k, 96, 1, 1, dtype=dtype).contiguous(memory_format=torch.channels_last)
        b = torch.randn(k, dtype=dtype)
        assert _path(x, w, "fwd") == "igemm_nhwc/pointwise"
        assert_rel(FC.conv2d(x, w, b), F.conv2d(x.double(), w.double(), b.double()), dtype, "output")
        assert_rel(FC.conv2d_relu(x, w, b), F.relu(F.conv2d(x.double(), w.double(), b.double())), dtype, "output")
        batch = torch.cat([x, torch.randn(4, 96, 1, 1, dtype=dtype)]).contiguous(memory_format=torch.channels_last)
        assert torch.equal(FC.conv2d(x, w, b), FC.conv2d(batch, w, b)[:1])


@pytest.mark.parametrize("stride", [2, 3])
def test_pointwise_strided_channels_last(backend, stride):
    """1x1 channels_last layers with stride > 1 take conv_cl_pointwise too (its rows addressed per pixel):
    forward with the whole epilogue (bias, scale, SiLU, a residual written back per pixel row), and the
    input gradient, whose one residue class with a tap writes every stride-th pixel of dx while the
    others are zero-filled; the input a channel slice of a wider tensor."""
    torch.manual_seed(0)
    wide = torch.randn(3, 40, 13, 11).contiguous(memory_format=torch.channels_last)
    x = wide[:, 4:36].requires_grad_()
    w = torch.randn(48, 32, 1, 1, requires_grad=True)
    b, scale = torch.randn(48), torch.rand(48) + 0.5
    assert _path(x.detach(), w.detach(), "fwd", stride=stride) == "igemm_nhwc/pointwise"
    assert _path(x.detach(), w.detach(), "dgrad", stride=stride) == "residue_classes > igemm_nhwc/pointwise"
    P, Q = (13 - 1) // stride + 1, (11 - 1) // stride + 1
    res = torch.randn(3, 48, P, Q).contiguous(memory_format=torch.channels_last)
    y = FC.conv2d_epilogue(x, w, b, stride, scale=scale, activation="silu", residual=res)
    xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = F.silu(F.conv2d(xd, wd, None, stride) * scale.double()[:, None, None] + b.double()[:, None, None]
                 + res.double())
    assert_rel(y, ref, torch.float32, "output")
    g = torch.randn_like(ref)
    y.backward(g.float())
    ref.backward(g)
    assert_rel(x.grad, xd.grad, torch.float32, "grad_input")
    assert_rel(w.grad, wd.grad, torch.float32, "grad_weight")


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


# NCHW conv_pix_direct with row-aligned vectors: each vector one output row's run of L columns (the last
# one masked), taken where ceil(Q/L)*L <= Wp (L = 16 fp32 / 8 fp64 on AVX-512, 8 / 4 on AVX2, 4 / 2 below),
# else the padded grid. (N, C, H, W, K, kernel, stride, padding, dilation, groups)
ROW_ALIGNED_CASES = [
    (2, 3, 32, 32, 32, 3, 1, 1, 1, 1),     # RGB stem: Q = 32, Wp = 34, aligned at every L; tasks of 12 + 12 + 8 rows
    (1, 5, 14, 14, 20, 3, 1, 1, 1, 1),     # Q = 14, Wp = 16: one masked vector per row; K tail of 4
    (1, 4, 31, 47, 12, 3, 2, 1, 1, 1),     # stride 2: Q = 24, Wp = 25: grid at L = 16, aligned at L <= 8
    (3, 6, 20, 48, 9, 5, 1, 2, 1, 1),      # 5x5: Q = 48, Wp = 52
    (2, 8, 16, 16, 6, 3, 1, 1, 1, 2),      # groups (Kg = 3: not the narrow-group kernel): Q = 16, Wp = 18
    (1, 4, 20, 36, 8, 3, 1, 2, 2, 1),      # dilation 2: Q = 36, Wp = 40: grid at L = 16, aligned at L <= 8
    (16, 3, 32, 32, 32, 3, 1, 1, 1, 1),    # a 2 MiB float32 output: streamed stores
]


@pytest.mark.parametrize("case", ROW_ALIGNED_CASES, ids=[str(i) for i in range(len(ROW_ALIGNED_CASES))])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nchw_direct_row_aligned(backend, isa, case, relu, dtype):
    N, C, H, W, K, k, stride, padding, dilation, groups = case
    x = torch.randn(N, C, H, W)
    w = torch.randn(K, C // groups, k, k)
    _check(backend, isa, x, w, torch.randn(K), relu, dtype, stride=stride, padding=padding, dilation=dilation,
           groups=groups)


# Non-temporal output stores, forced on and off (_C.set_stream_stores) whatever each layer's automatic
# choice on this machine (which depends on its L3 cache): the streamed and the plain store paths of every
# forward kernel that has both must write the same bits, and match torch.
# (N, C, H, W, K, kernel, stride, padding, groups, channels_last)
STREAM_CASES = [
    (2, 8, 19, 21, 40, 5, 1, 2, 1, True),     # conv_cl: whole vectors and a K tail of 8
    (2, 16, 13, 11, 48, 1, 1, 0, 1, True),    # conv_cl_pointwise: 1x1 over the batch's pixels
    (2, 3, 32, 32, 32, 3, 1, 1, 1, True),     # conv_cl row merge with the padded copy (the RGB stem)
    (2, 40, 9, 35, 40, 3, 1, 1, 40, True),    # depthwise row pairs, a channel tail
    (1, 40, 9, 35, 40, 5, 2, 2, 40, True),    # depthwise single rows
    (2, 3, 32, 32, 32, 3, 1, 1, 1, False),    # NCHW conv_pix_direct with row-aligned vectors
]


@pytest.fixture
def stream_stores_restored():
    previous = _C.stream_stores()
    yield
    _C.set_stream_stores(previous)


@pytest.mark.parametrize("case", STREAM_CASES, ids=[str(i) for i in range(len(STREAM_CASES))])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_streamed_and_plain_output_stores_agree(backend, isa, stream_stores_restored, case, relu, dtype):
    N, C, H, W, K, k, stride, padding, groups, channels_last = case
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(N, C, H, W, dtype=dtype).contiguous(memory_format=fmt)
    w, b = torch.randn(K, C // groups, k, k, dtype=dtype), torch.randn(K, dtype=dtype)
    f = FC.conv2d_relu if relu else FC.conv2d
    ys = {}
    for mode in ("always", "never"):
        _C.set_stream_stores(mode)
        ys[mode] = f(x, w, b, stride=stride, padding=padding, groups=groups)
    ref = F.conv2d(x.double(), w.double(), b.double(), stride=stride, padding=padding, groups=groups)
    assert_rel(ys["never"], ref.relu() if relu else ref, dtype, "output")
    assert torch.equal(ys["always"], ys["never"])


def test_stream_stores_setting(stream_stores_restored):
    assert _C.stream_stores() in ("auto", "always", "never")
    for mode in ("always", "never", "auto"):
        _C.set_stream_stores(mode)
        assert _C.stream_stores() == mode
    with pytest.raises(ValueError, match="set_stream_stores: expected 'auto', 'always' or 'never', got 'on'"):
        _C.set_stream_stores("on")
    assert _C.stream_stores() == "auto"


# ----------------------------------------------------------------------------------------------------
# The weight-pack cache for the implicit-GEMM kernels (conv_cl's K-column panels, the NCHW kernels'
# K-row panels; tests/test_cpu_winograd.py covers the Winograd transform): a repeated call reuses the
# packed weight; the pack's kind (ConvFwdCall.pack_info) separates formats, so one weight used by two
# kernel families, two groups counts or two ISA levels never reads the other's pack.


# (name, x shape, w shape, stride, padding, groups, channels_last): non-Winograd layers of each family
GEMM_LAYERS = [
    ("cl_stride2", (2, 32, 12, 12), (24, 32, 3, 3), 2, 1, 1, True),
    ("cl_pointwise", (2, 24, 7, 9), (40, 24, 1, 1), 1, 0, 1, True),
    ("cl_rgb", (2, 3, 16, 16), (32, 3, 3, 3), 1, 1, 1, True),
    ("nchw_direct", (2, 3, 16, 16), (20, 3, 3, 3), 1, 1, 1, False),
    ("nchw_pix", (2, 6, 12, 12), (10, 6, 3, 3), 3, 1, 1, False),
    ("nchw_staged", (2, 128, 9, 11), (32, 128, 3, 3), 2, 1, 1, False),
    ("cl_groups", (2, 16, 8, 8), (12, 8, 3, 3), 1, 1, 2, True),
]


def _layer(spec, dtype=torch.float32):
    _, xs, ws, stride, padding, groups, cl = spec
    x = torch.randn(*xs, dtype=dtype)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randn(*ws, dtype=dtype), torch.randn(ws[0], dtype=dtype), dict(stride=stride, padding=padding,
                                                                                   groups=groups)


@pytest.mark.parametrize("spec", GEMM_LAYERS, ids=[s[0] for s in GEMM_LAYERS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gemm_weight_weight_pack_cached_and_exact(backend, weight_pack_cache, spec, dtype, monkeypatch):
    if backend != "cpu":
        pytest.skip("the weight-pack cache belongs to the cpu backend")
    x, w, b, kw = _layer(spec, dtype)
    first = FC.conv2d(x, w, b, **kw)
    assert weight_pack_cache.info()["misses"] == 1 and weight_pack_cache.info()["entries"] == 1
    second = FC.conv2d(x, w, b, **kw)
    assert weight_pack_cache.info()["hits"] == 1
    monkeypatch.setenv("FASTCONV_WEIGHT_CACHE", "0")
    uncached = FC.conv2d(x, w, b, **kw)
    assert torch.equal(first, second) and torch.equal(second, uncached)
    assert_rel(second, F.conv2d(x.double(), w.double(), b.double(), **kw), dtype, "output")


def test_gemm_weight_pack_follows_in_place_updates(backend, weight_pack_cache):
    if backend != "cpu":
        pytest.skip("the weight-pack cache belongs to the cpu backend")
    x, w, b, kw = _layer(GEMM_LAYERS[0])
    FC.conv2d(x, w, b, **kw)
    with torch.no_grad():
        w.mul_(-3.0)
    y = FC.conv2d(x, w, b, **kw)
    assert_rel(y, F.conv2d(x.double(), w.double(), b.double(), **kw), torch.float32, "output")


def test_gemm_weight_pack_kinds_never_mix(backend, weight_pack_cache):
    """One weight tensor through conv_cl (channels_last input) and the NCHW kernel, and with groups 1
    and 2 (inputs of 8 and 16 channels): four formats, four entries, each result right."""
    if backend != "cpu":
        pytest.skip("the weight-pack cache belongs to the cpu backend")
    w = torch.randn(12, 8, 3, 3)
    for _ in range(2):
        for C, groups in ((8, 1), (16, 2)):
            for memory_format in (torch.contiguous_format, torch.channels_last):
                x = torch.randn(2, C, 10, 10).contiguous(memory_format=memory_format)
                y = FC.conv2d(x, w, None, 1, 1, 1, groups)
                assert_rel(y, F.conv2d(x.double(), w.double(), None, 1, 1, 1, groups), torch.float32, "output")
    assert weight_pack_cache.info()["entries"] == 4 and weight_pack_cache.info()["hits"] == 4


def test_gemm_weight_pack_follows_the_isa_level(backend, weight_pack_cache, monkeypatch):
    """A pack made at one ISA level is never read by another's kernels (their microkernel shapes, and so
    the pack formats, differ): after set_cpu_isa the same call repacks and matches an uncached run."""
    if backend != "cpu" or len(CPU_ISAS) < 2:
        pytest.skip("needs the cpu backend and two ISA levels")
    x, w, b, kw = _layer(GEMM_LAYERS[0])
    previous = _C.cpu_isa()
    try:
        for level in CPU_ISAS + CPU_ISAS[:1]:  # and back to the first: its pack is still cached, and right
            _C.set_cpu_isa(level)
            y = FC.conv2d(x, w, b, **kw)
            monkeypatch.setenv("FASTCONV_WEIGHT_CACHE", "0")
            uncached = FC.conv2d(x, w, b, **kw)
            monkeypatch.delenv("FASTCONV_WEIGHT_CACHE")
            assert torch.equal(y, uncached), level
    finally:
        _C.set_cpu_isa(previous)
    assert weight_pack_cache.info()["entries"] == len(CPU_ISAS) and weight_pack_cache.info()["hits"] == 1


# Input gradients whose residue classes keep their packed weight in the cache:
# (name, x shape, w shape, stride, padding, groups, channels_last)
DGRAD_PACKED = [
    ("cl-1x1", (2, 24, 9, 9), (40, 24, 1, 1), 1, 0, 1, True),          # conv_cl pointwise
    ("cl-1x1s2", (2, 24, 9, 9), (40, 24, 1, 1), 2, 0, 1, True),        # one tap class of four
    ("cl-3x3", (2, 12, 9, 9), (20, 12, 3, 3), 1, 1, 1, True),          # too few channels for Winograd
    ("cl-grouped", (2, 32, 8, 8), (32, 8, 3, 3), 1, 1, 4, True),       # the narrow-group kernel
    ("nchw-3x3", (2, 12, 9, 9), (20, 12, 3, 3), 1, 1, 1, False),       # the NCHW kernels
    ("nchw-staged", (1, 64, 7, 7), (96, 64, 1, 1), 1, 0, 1, False),    # staged through conv_cl
    ("cl-3x3s2", (2, 24, 9, 9), (40, 24, 3, 3), 2, 1, 1, True),        # four tap classes, four parts
    ("nchw-5x5s2", (2, 12, 11, 10), (20, 12, 5, 5), 2, 2, 1, False),   # the same on the NCHW kernels
    ("cl-grouped-s2", (2, 32, 9, 9), (32, 8, 3, 3), 2, 1, 4, True),    # and on the narrow-group kernel
]


@pytest.mark.parametrize("spec", DGRAD_PACKED, ids=[s[0] for s in DGRAD_PACKED])
def test_input_grad_pack_cached_and_exact(backend, weight_pack_cache, spec, monkeypatch):
    """The input gradient's rearranged weight is packed once per weight version (a pack of its own kind
    beside the forward's), gives the bits of an uncached run, and follows an in-place update."""
    if backend != "cpu":
        pytest.skip("the weight-pack cache belongs to the cpu backend")
    _, xs, ws, stride, padding, groups, cl = spec
    x = torch.randn(*xs).contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    w = torch.randn(*ws)
    kw = dict(stride=stride, padding=padding, groups=groups)

    def grads():
        xg = x.clone().requires_grad_()
        y = FC.conv2d(xg, w, None, **kw)
        y.backward(torch.ones_like(y) + torch.arange(y.numel()).reshape(y.shape).remainder(7).to(y.dtype))
        return xg.grad

    first, second = grads(), grads()
    info = weight_pack_cache.info()  # the forward's pack and the input gradient's, each hit once
    assert info["entries"] == 2 and info["misses"] == 2 and info["hits"] == 2, info
    monkeypatch.setenv("FASTCONV_WEIGHT_CACHE", "0")
    uncached = grads()
    monkeypatch.delenv("FASTCONV_WEIGHT_CACHE")
    assert torch.equal(first, second) and torch.equal(second, uncached)
    with torch.no_grad():
        w.mul_(-2.0)
    xd = x.double().requires_grad_()
    yd = F.conv2d(xd, w.double(), None, **kw)
    yd.backward(torch.ones_like(yd) + torch.arange(yd.numel()).reshape(yd.shape).remainder(7).double())
    assert_rel(grads(), xd.grad, torch.float32, "grad_input")


def test_input_grad_pack_info(backend):
    """conv2d_dgrad_pack_info: (0, 0, 0) where the depthwise loops run; a size and a kind otherwise,
    with taps 0 where one class holds the whole filter, and a number for each other tap partition."""
    def info(xs, ws, stride, padding, groups=1):
        x = torch.empty(*xs).contiguous(memory_format=torch.channels_last)
        w = torch.empty(*ws)
        P = (xs[2] + 2 * padding - ws[2]) // stride + 1
        dy = torch.empty(xs[0], ws[0], P, P).contiguous(memory_format=torch.channels_last)
        d = cpu_backend.conv_desc(x, w, (stride,) * 2, (padding,) * 2, (1, 1), groups, dy.shape[2:])
        return _C.conv2d_dgrad_pack_info(d, 0, cpu_backend._t4(dy), None, cpu_backend._t4(x))
    assert info((2, 24, 9, 9), (24, 1, 3, 3), 1, 1, groups=24) == (0, 0, 0)
    s2, s2_pad0 = info((2, 24, 9, 9), (40, 24, 3, 3), 2, 1), info((2, 24, 9, 9), (40, 24, 3, 3), 2, 0)
    assert s2[0] >= 24 * 40 * 9 and s2[2] not in (0, s2_pad0[2])
    floats, kind, taps = info((2, 24, 9, 9), (40, 24, 1, 1), 2, 0)
    assert floats >= 24 * 40 and kind > 0 and taps == 0
    # a 3x3 stride-2 layer on a one-pixel map: one class, with the centre tap only
    floats, kind3, taps = info((2, 24, 1, 1), (40, 24, 3, 3), 2, 1)
    assert floats > 0 and taps != 0 and info((2, 24, 9, 9), (40, 24, 3, 3), 1, 1)[2] == 0


def test_input_grad_pack_tap_subsets_never_mix(backend, weight_pack_cache):
    """One weight, its input gradient at stride 1 (all 9 taps) and at stride 2 on a 1x1 map (the centre
    tap only): two packs, each gradient right, in both orders."""
    if backend != "cpu":
        pytest.skip("the weight-pack cache belongs to the cpu backend")
    w = torch.randn(40, 12, 3, 3)  # 12 channels: not Winograd at stride 1
    for _ in range(2):
        for hw, stride in ((5, 1), (1, 2)):
            x = torch.randn(2, 12, hw, hw).contiguous(memory_format=torch.channels_last).requires_grad_()
            y = FC.conv2d(x, w, None, stride, 1)
            g = torch.randn_like(y)
            y.backward(g)
            xd = x.detach().double().requires_grad_()
            F.conv2d(xd, w.double(), None, stride, 1).backward(g.double())
            assert_rel(x.grad, xd.grad, torch.float32, "grad_input")


def test_forward_pack_info_by_kernel_family(backend):
    """ConvFwdCall.pack_info(): (0, 0) where the kernel packs nothing (depthwise direct loops), a size
    and a kind otherwise; the kind differs between kernel families and dtypes."""
    def info(x, w, stride=1, padding=1, groups=1):
        code = cpu_backend._dtype_code(x)
        P = (x.shape[2] + 2 * padding - w.shape[2]) // stride + 1
        Q = (x.shape[3] + 2 * padding - w.shape[3]) // stride + 1
        y = torch.empty(x.shape[0], w.shape[0], P, Q).contiguous(
            memory_format=torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and
            not x.is_contiguous() else torch.contiguous_format)
        d = cpu_backend.conv_desc(x, w, (stride, stride), (padding, padding), (1, 1), groups, (P, Q))
        call = _C.ConvFwdCall(d, code, x.shape, x.stride(), w.shape, w.stride(), y.shape, y.stride())
        return call.pack_info()

    nchw = torch.randn(1, 8, 9, 9)
    cl = nchw.contiguous(memory_format=torch.channels_last)
    w = torch.randn(16, 8, 3, 3)
    assert info(torch.randn(1, 8, 9, 9), torch.randn(8, 1, 3, 3), groups=8) == (0, 0)  # depthwise
    f_nchw, k_nchw = info(nchw, w)
    f_cl, k_cl = info(cl, w)
    f_64, k_64 = info(cl.double(), w.double())
    assert min(f_nchw, f_cl, f_64) >= 16 * 8 * 9 and len({k_nchw, k_cl, k_64}) == 3
    assert f_64 == 2 * f_cl  # the same panels of doubles, in float32 units


# Writes through .data bypass the version counter the cache keys on; the pack's weight sample catches
# them (csrc/module.cpp, with_checked_pack): every element of a weight of up to 4096, evenly spaced
# ones beyond. Winograd (3x3 stride 1, 16+ channels), conv_cl and the NCHW kernels, both passes.
DATA_WRITE_LAYERS = [
    ("winograd", (2, 16, 8, 8), (16, 16, 3, 3), 1, False),
    ("cl_stride2", (2, 32, 12, 12), (24, 32, 3, 3), 2, True),
    ("nchw_direct", (2, 3, 16, 16), (20, 3, 3, 3), 1, False),
]


@pytest.mark.parametrize("spec", DATA_WRITE_LAYERS, ids=[s[0] for s in DATA_WRITE_LAYERS])
@pytest.mark.parametrize("write", ["one_element", "every_element"])
def test_weight_writes_through_data_repack(backend, weight_pack_cache, spec, write):
    _, xs, ws, stride, cl = spec
    x = torch.randn(*xs, requires_grad=True)
    if cl:
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(*ws, requires_grad=True)
    for step in range(3):
        y = FC.conv2d(x, w, None, stride, 1)
        (gx,) = torch.autograd.grad(y, [x], torch.ones_like(y))
        xd, wd = x.detach().double().requires_grad_(), w.detach().double()
        yr = F.conv2d(xd, wd, None, stride, 1)
        (gxr,) = torch.autograd.grad(yr, [xd], torch.ones_like(yr))
        assert_rel(y, yr, torch.float32, f"output after write {step}")
        assert_rel(gx, gxr, torch.float32, f"dx after write {step}")
        if write == "one_element":  # gradcheck's perturbation
            w.data[1, 2, 0, 1] += 0.5
        else:  # an old-style update loop
            w.data -= 0.1 * torch.randn_like(w)


def test_weight_sample_of_a_large_weight_catches_whole_updates(backend, weight_pack_cache):
    """A weight of more than 4096 elements is sampled: an update of every element is always caught."""
    x = torch.randn(2, 64, 10, 10).contiguous(memory_format=torch.channels_last)
    w = torch.randn(64, 64, 3, 3)  # 36864 elements
    for _ in range(3):
        y = FC.conv2d(x, w, None, 2, 1)
        assert_rel(y, F.conv2d(x.double(), w.double(), None, 2, 1), torch.float32, "output")
        w.data.mul_(-1.5)


def test_strided_weight_view_repacks_every_call(backend, weight_pack_cache):
    """A weight that is not one dense block (a slice) cannot be sampled, so its pack is never trusted:
    writes through .data between calls still give the right result."""
    base = torch.randn(20, 3, 3, 5)
    w = base[:, :, :, 1:4]
    x = torch.randn(2, 3, 12, 12)
    for _ in range(3):
        assert_rel(FC.conv2d(x, w, None, 1, 1), F.conv2d(x.double(), w.double(), None, 1, 1), torch.float32,
                   "output")
        base.data.add_(1.0)


# ----------------------------------------------------------------------------------------------------
# The path chooser (csrc/cpu/conv2d_isa.cpp: choose_fwd, dgrad_route, wgrad_algo), asked through
# fastconv.backends.cpu.conv2d_path: every case above takes the path its comment says it takes.

def _path(case_x, case_w, pass_="fwd", dtype=torch.float32, relu=False, **kw):
    return cpu_backend.conv2d_path(case_x.to(dtype), case_w.to(dtype), pass_=pass_, relu=relu, **kw)


def _meta(N, C, H, W, K, ks, groups=1, channels_last=False):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.empty(N, C, H, W, device="meta").contiguous(memory_format=fmt)
    return x, torch.empty(K, C // groups, *ks, device="meta")


def _lanes(dtype) -> int:
    """Vector lanes of the kernels at the ISA level in use."""
    return {"avx512": 16, "avx2": 8, "baseline": 4}[_C.cpu_isa()] // (2 if dtype == torch.float64 else 1)


def _l2_bytes() -> int:
    """One core's L2 as the kernels read it (sysconf; 1 MiB when the system does not say)."""
    try:
        return int(subprocess.run(["getconf", "LEVEL2_CACHE_SIZE"], capture_output=True, text=True).stdout) or 1 << 20
    except (OSError, ValueError):
        return 1 << 20


@pytest.mark.parametrize("case", DW_CASES, ids=[str(i) for i in range(len(DW_CASES))])
def test_path_depthwise_channels_last(isa, case):
    N, C, H, W, k, stride, padding, dilation = case
    x, w = _meta(N, C, H, W, C, pair(k), groups=C, channels_last=True)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=C)
    assert _path(x, w, **kw) == "depthwise_nhwc"
    assert _path(x, w, "dgrad", relu=True, **kw) == "residue_classes > depthwise_nhwc"
    assert _path(x, w, "wgrad", **kw) == "wgrad_depthwise"
    assert _path(x.contiguous(), w, **kw) == "depthwise_nchw"


@pytest.mark.parametrize("case", DW_NCHW_SMALL_MAP_CASES, ids=[str(i) for i in range(len(DW_NCHW_SMALL_MAP_CASES))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_path_depthwise_nchw_small_map(isa, case, dtype):
    N, C, H, W, k, stride, padding = case
    x, w = _meta(N, C, H, W, C, (k, k), groups=C)
    kw = dict(stride=stride, padding=padding, groups=C)
    P = (H + 2 * padding - k) // stride + 1
    staged = _C.cpu_isa() == "avx512" and dtype == torch.float32 and C >= 16 and H * W <= 256 and P * P <= 256
    assert _path(x, w, **kw) == "depthwise_nchw"
    dgrad, wgrad = _path(x, w, "dgrad", dtype, **kw), _path(x, w, "wgrad", dtype, **kw)
    if staged:
        assert dgrad == "channels_last_copies > residue_classes > depthwise_nhwc", dgrad
        assert wgrad == "channels_last_copies > wgrad_depthwise", wgrad
        # the fused ReLU's backward: dy masked into an NCHW copy first, then the same route; the weight
        # gradient reads the mask in place, unstaged
        assert _path(x, w, "dgrad", dtype, relu=True, **kw).startswith("masked_dy_copy > channels_last_copies > ")
        assert _path(x, w, "wgrad", dtype, relu=True, **kw) == "wgrad_depthwise"
    else:
        assert not dgrad.startswith("channels_last") and wgrad == "wgrad_depthwise", (dgrad, wgrad)


@pytest.mark.parametrize("case", MIXED_LAYOUT_CASES, ids=[str(i) for i in range(len(MIXED_LAYOUT_CASES))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_path_mixed_layout(isa, case, dtype):
    """NCHW input, channels_last weight: a float32 AVX-512 input gradient of >= 16 channels is computed
    channels_last and copied (a 3x3 stride-1 dense layer is Winograd's); a depthwise or 1x1 weight
    gradient, and a depthwise forward, read a channels_last copy of x."""
    N, C, H, W, K, k, stride, padding, groups = case
    pointwise = k == 1 and groups == 1 and padding == 0
    x, w = _meta(N, C, H, W, K, (k, k), groups=groups)
    w = w.to(memory_format=torch.channels_last)
    kw = dict(stride=stride, padding=padding, groups=groups)
    staged = _C.cpu_isa() == "avx512" and dtype == torch.float32 and C >= 16
    dgrad = _path(x, w, "dgrad", dtype, **kw)
    wgrad = _path(x, w, "wgrad", dtype, **kw)
    assert dgrad.startswith("channels_last_dx > residue_classes > ") == staged, dgrad
    if staged:
        want = "depthwise_nhwc" if groups == C else "igemm_nhwc/"
        assert want in dgrad, dgrad
    assert wgrad.startswith("channels_last_x > ") == (staged and (groups == C or pointwise)), wgrad
    if staged and pointwise:
        assert wgrad == "channels_last_x > wgrad_pointwise", wgrad
    fwd = _path(x, w, "fwd", dtype, **kw)
    assert fwd.startswith("channels_last_x > ") == (staged and groups == C), fwd
    if staged and groups == C:
        assert fwd == "channels_last_x > depthwise_nhwc", fwd
    # both channels_last, or both NCHW: no copies
    xc = x.contiguous(memory_format=torch.channels_last)
    assert not _path(xc, w, "dgrad", dtype, **kw).startswith("channels_last_dx")
    assert not _path(xc, w, "wgrad", dtype, **kw).startswith("channels_last_x")


@pytest.mark.parametrize("case", FEW_CHANNEL_DGRAD_CASES, ids=[str(i) for i in range(len(FEW_CHANNEL_DGRAD_CASES))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_path_few_channels_input_grad(isa, case, dtype):
    """The channels_last input gradient of C <= L/4 channels (float32 at AVX2: C <= 4, unless its taps tile
    dx: test_cpu_dgrad_taps.py) runs the NCHW kernels between two copies."""
    N, C, H, W, K, k, stride, padding, dilation = case
    x, w = _meta(N, C, H, W, K, pair(k), channels_last=True)
    path = _path(x, w, "dgrad", dtype, stride=stride, padding=padding, dilation=dilation)
    max_c = 4 if dtype == torch.float32 and _C.cpu_isa() == "avx2" else _lanes(dtype) // 4
    if 1 < C <= max_c and H * W > 1:
        assert path.startswith("nchw_copies > residue_classes > igemm_nchw_"), path
    else:
        assert path.startswith("residue_classes > igemm_nhwc/"), path


@pytest.mark.parametrize("case", S2_CASES + ROW_ALIGNED_CASES, ids=[str(i) for i in range(len(S2_CASES + ROW_ALIGNED_CASES))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_path_nchw_direct(isa, case, dtype):
    N, C, H, W, K, k, stride, padding, dilation, groups = case
    x, w = _meta(N, C, H, W, K, pair(k), groups=groups)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    assert _path(x, w, "fwd", dtype, **kw) == "igemm_nchw_direct"
    # ReLU's backward on NCHW dy: one masking pass over dy first, then the same engine
    assert _path(x, w, "dgrad", dtype, relu=True, **kw).startswith("masked_dy_copy > residue_classes > ")


def _rows_mode(S, C, K, R, dtype):
    """conv_cl's blocks of whole filter rows: as many rows per block as keep the block's weights (a row is
    S*C*K values) within 3/4 of the L2; all R rows in one block run the whole-window kernel."""
    rows = min(R, (3 * _l2_bytes() // 4) // (S * C * K * dtype.itemsize))
    return "rows_whole_windows" if rows >= R else "row_blocks" if rows >= 1 else "taps"


# conv_cl's mode per ROWMERGE_CASES case for float32 / float64 (a tuple where they differ); callables
# depend on this machine's L2 cache.
ROWMERGE_MODES = [
    "rows_padded_copy", "rows_padded_copy", "rows_padded_copy",
    "rows_whole_windows",                           # no padding: every window whole
    "rows_whole_windows",                           # one window covering the input
    "rows_padded_copy",
    ("rows_padded_copy", "rows_whole_windows"),     # 7x7: the padded copy outgrows 16 KiB in float64
    "rows_padded_copy",
    "pointwise", "pointwise", "pointwise", "pointwise", "pointwise",
    "rows_padded_copy", "rows_padded_copy",
    # 96 channels, padding 2: the copy exceeds 16 KiB; whole windows when the 3 rows fit the L2 rule
    lambda dt: _rows_mode(3, 96, 80, 3, dt),
] + [lambda dt, c=c: _rows_mode(3, c, c, 3, dt) for c in (128, 160, 192, 224, 256)]


@pytest.mark.parametrize("i", range(len(ROWMERGE_CASES)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_path_channels_last_modes(isa, i, dtype):
    N, C, H, W, K, k, stride, padding, dilation = ROWMERGE_CASES[i]
    x, w = _meta(N, C, H, W, K, pair(k), channels_last=True)
    mode = ROWMERGE_MODES[i]
    mode = mode(dtype) if callable(mode) else mode[dtype == torch.float64] if isinstance(mode, tuple) else mode
    assert _path(x, w, "fwd", dtype, stride=stride, padding=padding, dilation=dilation) == "igemm_nhwc/" + mode


@pytest.mark.parametrize("case", STAGED_NCHW_CASES, ids=[str(i) for i in range(len(STAGED_NCHW_CASES))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_path_staged_nchw(isa, case, dtype):
    """NCHW float32 layers of >= 128 channels with stride 2, and one-row (conv1d) layers of >= 64 channels,
    run conv_cl on channels_last copies (AVX2 and AVX-512); float64 and the baseline run the NCHW kernels."""
    N, C, H, W, K, k, stride, padding, dilation = case
    x, w = _meta(N, C, H, W, K, pair(k))
    path = _path(x, w, "fwd", dtype, stride=stride, padding=padding, dilation=dilation)
    if dtype == torch.float32 and isa != "baseline":
        assert path.startswith("igemm_nhwc_staged_nchw/"), path
    else:
        assert path in ("igemm_nchw_direct", "igemm_nchw_packed"), path


def test_path_winograd_and_weight_gradients(isa, monkeypatch):
    """3x3 stride-1 float32 layers of >= 16 channels: Winograd for all three passes at AVX2 and AVX-512
    from 32 output tiles (the weight gradient from 16 at AVX2); other float32 layers' weight gradient:
    the blocked kernel (AVX-512; AVX2: channels_last, and NCHW maps of >= 2048 output pixels), else the
    GEMM kernels by layout."""
    x, w = _meta(8, 32, 16, 16, 32, (3, 3))
    xs, ws = _meta(8, 32, 16, 16, 32, (3, 3))
    avx512 = isa == "avx512"
    for p in ("fwd", "dgrad", "wgrad"):
        assert (_path(x, w, p, padding=1) == "winograd_f4x4_3x3") == (isa != "baseline")
    assert _path(xs, ws, "wgrad", stride=2, padding=1) == ("wgrad_blocked" if avx512 else "wgrad_gemm_nchw")
    assert _path(xs, ws, "wgrad", torch.float64, stride=2, padding=1) == "wgrad_gemm_nchw"
    xcl = xs.contiguous(memory_format=torch.channels_last)
    assert _path(xcl, ws, "wgrad", torch.float64, stride=2, padding=1) == "wgrad_gemm_nhwc"
    assert _path(xcl, ws, "wgrad", stride=2, padding=1) == ("wgrad_gemm_nhwc" if isa == "baseline" else "wgrad_blocked")
    xbig = torch.empty(8, 32, 64, 64, device="meta")  # 8192 output pixels at stride 2
    assert _path(xbig, ws, "wgrad", stride=2, padding=1) == ("wgrad_gemm_nchw" if isa == "baseline" else "wgrad_blocked")
    x16, w16 = _meta(1, 32, 16, 16, 32, (3, 3))  # 16 tiles: the weight gradient's bound at AVX2
    assert _path(x16, w16, "fwd", padding=1) != "winograd_f4x4_3x3"
    assert (_path(x16, w16, "wgrad", padding=1) == "winograd_f4x4_3x3") == (isa == "avx2")
    monkeypatch.setenv("FASTCONV_CPU_WINOGRAD", "0")
    monkeypatch.setenv("FASTCONV_CPU_WGRAD_BLOCKED", "0")
    assert _path(x, w, "fwd", padding=1) == "igemm_nchw_direct"
    assert _path(x, w, "wgrad", padding=1) == "wgrad_gemm_nchw"


def test_path_empty_problems_and_errors():
    x, w = _meta(0, 8, 5, 5, 8, (3, 3))
    assert [_path(x, w, p) for p in ("fwd", "dgrad", "wgrad")] == ["none"] * 3
    x, w = _meta(2, 8, 5, 5, 8, (3, 3))
    with pytest.raises(ValueError, match="pass_"):
        _path(x, w, "backward")
    with pytest.raises(ValueError, match="Kernel size can't be greater"):
        _path(x, torch.empty(8, 8, 7, 7, device="meta"))
    # real tensors work too (only sizes, strides and dtype matter)
    assert _path(torch.randn(2, 8, 5, 5), torch.randn(8, 8, 1, 1)) == _path(x, torch.empty(8, 8, 1, 1, device="meta"))


# The kernel each STREAM_CASES case exercises (its comment), float32 / float64.
STREAM_PATHS = [
    ("igemm_nhwc/rows_padded_copy", "igemm_nhwc/rows_whole_windows"),  # the float64 copy outgrows 16 KiB
    ("igemm_nhwc/pointwise",) * 2,
    ("igemm_nhwc/rows_padded_copy",) * 2,
    ("depthwise_nhwc",) * 2,
    ("depthwise_nhwc",) * 2,
    ("igemm_nchw_direct",) * 2,
]


@pytest.mark.parametrize("i", range(len(STREAM_CASES)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_path_stream_cases(isa, i, dtype):
    N, C, H, W, K, k, stride, padding, groups, channels_last = STREAM_CASES[i]
    x, w = _meta(N, C, H, W, K, (k, k), groups, channels_last)
    path = _path(x, w, "fwd", dtype, stride=stride, padding=padding, groups=groups)
    assert path == STREAM_PATHS[i][dtype == torch.float64]


# Small maps of wide layers (ResNet's 14x14 and 7x7 stages at batch 1): few pixel tasks, so the kernels
# also split the output channels (conv_cl: panels; the pointwise GEMM: panel chunks; the blocked weight
# gradient: columns of S), and NCHW float32 layers run conv_cl on channels_last copies. All above the
# backend's serial threshold (8M multiply-adds), so the threads split them.
# (N, C, H, W, K, kernel, stride, padding)
SMALL_MAP_CASES = [
    (1, 256, 7, 7, 256, 3, 1, 1),      # one 49-pixel task: 4 panels of 64 channels
    (1, 512, 7, 7, 512, 1, 1, 0),      # pointwise, 9 tiles of 6 pixels
    (1, 256, 9, 9, 192, 3, 2, 1),      # stride 2, 5x5 output
    (2, 128, 6, 6, 320, 3, 1, 1),      # 320 channels: panels of 32
    (1, 1024, 5, 5, 640, 1, 1, 0),     # a reduction over several blocks
    (1, 96, 24, 30, 80, 1, 1, 0),      # 720 pixels in all: a 28x28 layer at batch 1
    (2, 64, 7, 7, 96, 5, 1, 2),        # 5x5: the input gradient staged too, its taps flipped
]
# Stride-1 layers whose input gradient is staged as well (dgrad_route: maps of <= 64 pixels, or
# <= 1,024 in all); the last is a 14x14 map at batch 8, whose input gradient is not.
DGRAD_STAGED_CASES = [SMALL_MAP_CASES[i] for i in (1, 4, 5, 6)]
DGRAD_NOT_STAGED = (8, 64, 14, 14, 64, 1, 1, 0)
# Too many pixels to stage: 576 per image, 1,152 in all.
NOT_SMALL_MAP = (2, 64, 24, 24, 64, 1, 1, 0)


@pytest.mark.parametrize("case", SMALL_MAP_CASES, ids=[str(i) for i in range(len(SMALL_MAP_CASES))])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_small_maps_match_torch_at_any_thread_count(isa, case, channels_last, dtype):
    """Outputs and every gradient match torch's float64, and are the same bits with 1, 2, 3 and 8
    threads (more threads than cores: every split runs)."""
    N, C, H, W, K, k, stride, padding = case
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    gen = torch.Generator().manual_seed(sum(case))
    x = torch.randn(N, C, H, W, generator=gen).contiguous(memory_format=fmt)
    w, b = torch.randn(K, C, k, k, generator=gen) / (C * k * k) ** 0.5, torch.randn(K, generator=gen)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3, 8):
            torch.set_num_threads(threads)
            xs, ws, bs = (t.to(dtype).requires_grad_() for t in (x, w, b))
            y = FC.conv2d_relu(xs, ws, bs, stride=stride, padding=padding)
            g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
            results.append([y.detach(), *torch.autograd.grad(y, (xs, ws, bs), g)])
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, o in zip(results[0], other):
            assert torch.equal(a, o)
    xd, wd, bd = (t.double().requires_grad_() for t in (x, w, b))
    yd = F.conv2d(xd, wd, bd, stride=stride, padding=padding).relu()
    g = torch.randn(yd.shape, generator=torch.Generator().manual_seed(1)).double()
    for name, ours, ref in zip(("output", "dx", "dw", "db"), results[0], (yd, *torch.autograd.grad(yd, (xd, wd, bd), g))):
        assert_rel(ours, ref, dtype, name)


@pytest.mark.parametrize("case", SMALL_MAP_CASES, ids=[str(i) for i in range(len(SMALL_MAP_CASES))])
def test_path_small_maps(isa, case):
    N, C, H, W, K, k, stride, padding = case
    x, w = _meta(N, C, H, W, K, (k, k))
    path = _path(x, w, stride=stride, padding=padding)
    if isa != "baseline":
        assert path.startswith("igemm_nhwc_staged_nchw/"), path
    else:
        assert path.startswith("igemm_nchw_"), path
    assert _path(x.contiguous(memory_format=torch.channels_last), w, stride=stride, padding=padding).startswith(
        "igemm_nhwc/")


def test_path_not_small_map(isa):
    N, C, H, W, K, k, stride, padding = NOT_SMALL_MAP
    x, w = _meta(N, C, H, W, K, (k, k))
    path = _path(x, w, stride=stride, padding=padding)
    assert path.startswith("igemm_nchw"), path


@pytest.mark.parametrize("case", DGRAD_STAGED_CASES + [DGRAD_NOT_STAGED], ids=lambda c: "x".join(map(str, c)))
def test_path_dgrad_staged(isa, case):
    N, C, H, W, K, k, stride, padding = case
    x, w = _meta(N, C, H, W, K, (k, k))
    path = _path(x, w, pass_="dgrad", stride=stride, padding=padding)
    if isa != "baseline" and case != DGRAD_NOT_STAGED:
        assert path.startswith("igemm_nhwc_staged_nchw/"), path
    else:
        assert path.startswith("residue_classes > igemm_nchw"), path
    # a ReLU mask, and channels_last, keep the residue classes
    assert not _path(x, w, pass_="dgrad", relu=True, stride=stride, padding=padding).startswith("igemm_nhwc_staged")
    assert _path(x.contiguous(memory_format=torch.channels_last), w, pass_="dgrad", stride=stride,
                 padding=padding).startswith("residue_classes > igemm_nhwc/")


# ----------------------------------------------------------------------------------------------------
# channels_last grouped convolutions with narrow groups (conv2d_grouped_nhwc_isa.cpp): one vector holds
# the output channels of L / Kg groups. (N, C, H, W, K, groups, kernel, stride, padding, dilation):
# the in-chunk shuffles of every (Cg, Kg) they specialize at AVX-512 float32, the generic permutes
# (Cg = 2, Kg = 2 or 4; Cg < Kg), a last group block with fewer groups (G not a multiple of L / Kg),
# pixel blocks of 8 / 4 / 2 / 1 with border columns (Q = 32, 15, 7, 3, 1), stride 2 (the input
# gradient's residue classes), dilation, 5x5 and 1x3 filters, no padding.
GROUPED_CASES = [
    (2, 32, 9, 32, 32, 4, 3, 1, 1, 1),      # Cg = Kg = 8: two groups per vector
    (1, 104, 7, 15, 104, 13, 3, 1, 1, 1),   # 13 groups of 8: a half block last; Q = 15 = 8 + 4 + 2 + 1
    (2, 16, 8, 7, 16, 4, 3, 1, 1, 1),       # Cg = Kg = 4: four groups per vector
    (1, 32, 6, 9, 64, 8, 3, 1, 1, 1),       # Cg = 4, Kg = 8
    (1, 32, 5, 6, 32, 2, 3, 1, 1, 1),       # Cg = Kg = 16: one group per vector
    (1, 24, 6, 5, 48, 3, 3, 1, 1, 1),       # Cg = 8, Kg = 16
    (2, 12, 6, 3, 12, 6, 3, 1, 1, 1),       # Cg = Kg = 2 (generic permutes), Q = 3
    (1, 10, 5, 8, 20, 5, 3, 1, 1, 1),       # Cg = 2, Kg = 4
    (2, 48, 13, 17, 48, 6, 3, 2, 1, 1),     # stride 2
    (1, 40, 9, 14, 40, 5, 3, 1, 2, 2),      # dilation 2
    (1, 32, 9, 11, 32, 4, 5, 2, 2, 1),      # 5x5 stride 2
    (1, 16, 4, 9, 16, 2, (1, 3), 1, (0, 1), 1),  # 1x3
    (2, 24, 5, 6, 24, 3, 3, 1, 0, 1),       # no padding
    (1, 32, 3, 1, 32, 4, 3, 1, 1, 1),       # one column: the 1-pixel block, every tap an edge
]


def _grouped_input(case, dtype=torch.float32):
    N, C, H, W, K, G, k, stride, padding, dilation = case
    x = torch.randn(N, C, H, W, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(K, C // G, *pair(k), dtype=dtype)
    return x, w, dict(stride=stride, padding=padding, dilation=dilation, groups=G)


@pytest.mark.parametrize("case", GROUPED_CASES, ids=[str(i) for i in range(len(GROUPED_CASES))])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grouped_channels_last(backend, isa, case, relu, dtype):
    x, w, kw = _grouped_input(case)
    _check(backend, isa, x, w, torch.randn(w.shape[0]), relu, dtype, **kw)


@pytest.mark.parametrize("case", [GROUPED_CASES[1], GROUPED_CASES[6], GROUPED_CASES[8]], ids=["tail", "generic", "s2"])
def test_grouped_channels_last_without_bias(backend, isa, case):
    x, w, kw = _grouped_input(case)
    _check(backend, isa, x, w, None, False, torch.float32, **kw)


@pytest.mark.parametrize("activation", ["silu", "relu6"])
@pytest.mark.parametrize("after", [False, True])
def test_grouped_channels_last_epilogue(backend, isa, activation, after):
    """The fused epilogue (activation and residual) over the kernel's pixel blocks."""
    x, w, kw = _grouped_input(GROUPED_CASES[1])
    b = torch.randn(w.shape[0])
    ref = F.conv2d(x.double(), w.double(), b.double(), **kw)
    res = torch.randn_like(ref).float().contiguous(memory_format=torch.channels_last)
    act = {"silu": F.silu, "relu6": F.relu6}[activation]
    want = act(ref) + res.double() if after else act(ref + res.double())
    y = FC.conv2d_epilogue(x, w, b, activation=activation, residual=res, residual_after_activation=after, **kw)
    assert_rel(y, want, torch.float32, "output")


@pytest.mark.parametrize("case", GROUPED_CASES, ids=[str(i) for i in range(len(GROUPED_CASES))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_path_grouped_channels_last(isa, case, dtype):
    """The narrow-group kernels take every pass where a vector holds whole groups (Kg divides the lanes,
    Cg <= Kg), the GEMM engine the others; NCHW tensors never reach them."""
    N, C, H, W, K, G, k, stride, padding, dilation = case
    x, w = _meta(N, C, H, W, K, pair(k), groups=G, channels_last=True)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=G)
    Cg, Kg, L = C // G, K // G, _lanes(dtype)
    takes = L % Kg == 0 and Cg <= Kg
    assert (_path(x, w, "fwd", dtype, **kw) == "grouped_nhwc") == takes
    # The input gradient's correlation swaps the roles: Kg input and Cg output channels per group.
    dgrad = _path(x, w, "dgrad", dtype, relu=True, **kw)
    assert (dgrad == "residue_classes > grouped_nhwc") == (L % Cg == 0 and Kg <= Cg), dgrad
    assert (_path(x, w, "wgrad", dtype, **kw) == "wgrad_grouped_nhwc") == (takes and Cg in (2, 4, 8, 16))
    nchw = _path(x.contiguous(), w, "fwd", dtype, **kw)
    P, Q = (F.conv2d(torch.empty(1, C, H, W), torch.empty(K, C // G, *pair(k)), **kw)).shape[2:]
    staged = (takes and _C.cpu_isa() == "avx512" and dtype == torch.float32
              and (P * Q <= 64 or N * P * Q <= 1024))
    assert (nchw == "grouped_nhwc_staged_nchw") == staged, nchw


# NCHW narrow-group layers on small maps: the channels_last kernel on staged copies (AVX-512 float32).
GROUPED_STAGED_CASES = [
    (2, 104, 7, 7, 104, 13, 3, 1, 1, 1),     # RegNet's 7x7 stage, a half group block last
    (1, 64, 9, 9, 64, 8, 3, 2, 1, 1),        # stride 2 to 5x5
    (3, 32, 6, 5, 32, 4, 3, 1, 1, 1),        # odd sizes
]


@pytest.mark.parametrize("case", GROUPED_STAGED_CASES, ids=[str(i) for i in range(len(GROUPED_STAGED_CASES))])
@pytest.mark.parametrize("relu", [False, True])
def test_grouped_nchw_staged(backend, isa, case, relu):
    x, w, kw = _grouped_input(case)
    _check(backend, isa, x.contiguous(), w, torch.randn(w.shape[0]), relu, torch.float32, **kw)


@pytest.mark.parametrize("after", [False, True])
def test_grouped_nchw_staged_residual(backend, isa, after):
    """The residual sits at the NCHW output's offsets: the staged path applies the epilogue after the
    copy back."""
    x, w, kw = _grouped_input(GROUPED_STAGED_CASES[0])
    x = x.contiguous()
    b = torch.randn(w.shape[0])
    ref = F.conv2d(x.double(), w.double(), b.double(), **kw)
    res = torch.randn_like(ref).float()
    want = F.silu(ref) + res.double() if after else F.silu(ref + res.double())
    y = FC.conv2d_epilogue(x, w, b, activation="silu", residual=res, residual_after_activation=after, **kw)
    assert_rel(y, want, torch.float32, "output")


def test_grouped_channels_last_thread_count_free(backend):
    """Output and weight gradient are the same bits at 1 and 2 threads: every sum runs over taps and
    pixels in a fixed order, whatever the split (the weight gradient's tasks change with the thread
    count: a task per group block or per tap row)."""
    x, w, kw = _grouped_input((4, 104, 28, 28, 104, 13, 3, 1, 1, 1))  # above the serial-work bound
    g = torch.randn(4, 104, 28, 28).contiguous(memory_format=torch.channels_last)
    outs = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
            y = FC.conv2d(xr, wr, **kw)
            outs.append((y.detach(),) + torch.autograd.grad(y, (xr, wr), g))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*outs):
        assert torch.equal(a, b)


# One input channel, several output channels, groups 1 (a waveform or grey-scale stem): wgrad_depthwise's
# vector rows where x's and dy's rows are contiguous at stride 1, the GEMM kernels otherwise
# (conv2d_isa.cpp, one_channel_wgrad_gemm). (N, H, W, K, kernel, stride, padding, channels_last dy, relu)
ONE_CHANNEL_WGRAD = [
    (2, 1, 403, 32, (1, 10), (1, 5), 0, False, False),  # wav2vec-like: 10 taps, stride 5
    (2, 1, 403, 32, (1, 10), (1, 5), 0, True, True),    # the same with a channels_last dy, fused ReLU
    (3, 21, 19, 8, (3, 3), (2, 2), (1, 1), False, True),  # a grey-scale 3x3 stride-2 stem
    (3, 21, 19, 8, (3, 3), (1, 1), (1, 1), True, False),  # stride 1 but dy channels_last
    (2, 1, 300, 16, (1, 3), (1, 1), (0, 1), False, True),  # stride-1 rows: the vector rows
    (2, 12, 12, 6, (5, 5), (1, 1), (0, 0), False, False),  # LeNet's first layer: the vector rows
]


@pytest.mark.parametrize("case", ONE_CHANNEL_WGRAD, ids=[str(i) for i in range(len(ONE_CHANNEL_WGRAD))])
def test_one_channel_weight_gradient(isa, case):
    N, H, W, K, k, stride, padding, cl_dy, relu = case
    x = torch.randn(N, 1, H, W)
    w = torch.randn(K, 1, *k)
    yr = F.conv2d(x.double(), w.double(), stride=stride, padding=padding)
    dy = torch.randn(yr.shape)
    relu_y = yr.relu().float() if relu else None
    if cl_dy:
        dy = dy.contiguous(memory_format=torch.channels_last)
        relu_y = relu_y.contiguous(memory_format=torch.channels_last) if relu else None
    vector_rows = stride[1] == 1 and not cl_dy
    path = _C.conv2d_path(cpu_backend.conv_desc(x, w, pair(stride), pair(padding), (1, 1), 1, yr.shape[2:]), 0,
                          "wgrad", list(x.stride()), list(dy.stride()), relu)
    assert (path == "wgrad_depthwise") == vector_rows, path
    dw, _ = cpu_backend.CpuBackend().conv2d_wgrad(dy, x, w, relu_y, pair(stride), pair(padding), (1, 1), 1, True,
                                                  False)
    g = dy.double() * (yr > 0) if relu else dy.double()
    assert_rel(dw, torch.nn.grad.conv2d_weight(x.double(), w.shape, g, stride=stride, padding=padding),
               torch.float32, "dw")
