"""The CPU input gradient's correlations (csrc/cpu/conv2d_isa.cpp, conv2d_dgrad_taps.h), against torch in
float64 at every ISA level:

- the taps-as-channels route of transposed convolutions whose taps tile the output - a generator's
  latent layer (one input pixel -> an R x S window: one GEMM) and U-Net's up-convolutions (kernel =
  stride: the column taps become output channels, one correlation per row phase) - through
  conv_transpose2d's forward (which is this input gradient) and conv2d's backward; the path each
  geometry takes (and the ones that must not take it); the weight-pack cache across calls and updates;
- residue classes with dx columns that no window reads;
- strided NCHW layers on channels_last copies of dy and dx (the AVX2 level).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastconv.functional as FC
from fastconv.backends import cpu as cpu_backend
from helpers import assert_rel

# Transposed convolutions: (N, C_in, H, W, C_out, (R, S), stride, padding, output_padding, memory format)
CL, NCHW = torch.channels_last, torch.contiguous_format
TAPS_CASES = [
    (3, 10, 1, 1, 24, (4, 4), 1, 0, 0, NCHW),     # latent 1x1 -> 4x4, one GEMM in NCHW order
    (3, 10, 1, 1, 24, (4, 4), 1, 0, 0, CL),       # the same in channels_last order
    (2, 7, 1, 1, 5, (3, 2), 2, 0, 0, CL),         # R != S, a stride that no tap pair reaches
    (1, 33, 1, 1, 17, (1, 3), 1, 0, 0, NCHW),     # a single row of taps
    (2, 16, 5, 6, 8, (2, 2), 2, 0, 0, CL),        # U-Net 2x2 stride 2: 2 row phases, S*C = 16 channels
    (2, 12, 4, 3, 20, (3, 3), 3, 0, 0, CL),       # 3x3 stride 3
    (1, 9, 3, 5, 7, (2, 2), (3, 2), 0, (2, 0), CL),  # row phase 2 has no tap: zeros, output_padding rows
    (2, 8, 4, 4, 6, (4, 2), 2, (1, 0), 0, CL),    # rows overlap (2 taps per row phase, padded), columns tile
    (1, 20, 2, 1, 3, (2, 5), (1, 2), 0, 0, CL),   # one input column: the S taps of any stride
    (2, 1, 3, 3, 4, (2, 2), 2, 0, 0, CL),         # one input channel
    (2, 6, 3, 3, 1, (2, 2), 2, 0, 0, CL),         # one output channel
]


def _transposed(case, dtype, weight_format=None):
    N, Ci, H, W, Co, ks, stride, padding, output_padding, fmt = case
    x = torch.randn(N, Ci, H, W, dtype=dtype).contiguous(memory_format=fmt)
    w = torch.randn(Ci, Co, *ks, dtype=dtype).contiguous(memory_format=weight_format or fmt)
    return x, w, dict(stride=stride, padding=padding, output_padding=output_padding)


def _dgrad_path(x, w, kw, relu=False):
    """The CPU path of the transposed convolution's forward: the input gradient of the convolution
    whose input has the transposed convolution's output size."""
    y = F.conv_transpose2d(x.detach(), w.detach(), **kw)  # torch's output, in torch's memory format
    conv_kw = {k: v for k, v in kw.items() if k != "output_padding"}
    return cpu_backend.conv2d_path(y, w.detach(), pass_="dgrad", relu=relu, **conv_kw)


@pytest.mark.parametrize("case", TAPS_CASES, ids=[str(i) for i in range(len(TAPS_CASES))])
@pytest.mark.parametrize("weight_order", ["same", "other"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conv_transpose_taps_as_channels(isa, case, weight_order, dtype):
    """Forward and every gradient vs torch float64; the weight in the order the route reads, or in the
    other memory format (the route reads a reordered copy)."""
    fmt = case[-1]
    wfmt = fmt if weight_order == "same" else (NCHW if fmt == CL else CL)
    x, w, kw = _transposed(case, dtype, wfmt)
    # torch's output layout decides: a channels_last output (or a one-pixel input) takes the route
    out_cl = F.conv_transpose2d(x, w, **kw).is_contiguous(memory_format=CL)
    merged = _dgrad_path(x, w, kw).startswith("taps_as_channels > ")
    assert merged == (out_cl or case[2] == case[3] == 1), _dgrad_path(x, w, kw)
    if weight_order == "same":
        assert merged
    b = torch.randn(w.shape[1], dtype=dtype)
    x, w, b = (t.requires_grad_() for t in (x, w, b))
    y = FC.conv_transpose2d(x, w, b, **kw)
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, w, b))
    yr = F.conv_transpose2d(xd, wd, bd, **kw)
    assert y.shape == yr.shape
    assert_rel(y, yr, dtype, "output")
    g = torch.randn_like(yr)
    for name, o, r in zip(("dx", "dw", "db"), torch.autograd.grad(y, (x, w, b), g.to(dtype)),
                          torch.autograd.grad(yr, (xd, wd, bd), g)):
        assert_rel(o, r, dtype, name)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conv2d_input_grad_taps_as_channels(isa, relu, dtype):
    """conv2d's backward takes the route too (a 2x2 stride-2 channels_last layer, and a layer whose
    output is one pixel), with the fused ReLU's mask applied to dy."""
    for (N, C, H, W, K, k, s) in [(2, 16, 10, 8, 12, 2, 2), (3, 8, 3, 3, 20, 3, 1)]:
        x = torch.randn(N, C, H, W, dtype=dtype).contiguous(memory_format=CL).requires_grad_()
        w = torch.randn(K, C, k, k, dtype=dtype).contiguous(memory_format=CL).requires_grad_()
        path = cpu_backend.conv2d_path(x.detach(), w.detach(), stride=s, pass_="dgrad", relu=relu)
        assert path.startswith("taps_as_channels > "), path
        f = FC.conv2d_relu if relu else FC.conv2d
        y = f(x, w, None, stride=s)
        xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
        yr = F.conv2d(xd, wd, None, stride=s)
        yr = yr.relu() if relu else yr
        g = torch.randn_like(yr)
        (dx,) = torch.autograd.grad(y, (x,), g.to(dtype))
        (dxr,) = torch.autograd.grad(yr, (xd,), g)
        assert_rel(dx, dxr, dtype, "dx")


# Geometries the route must leave to the residue classes: padded columns (DCGAN's 4x4 stride 2 pad 1),
# overlapping columns (kernel > stride), an NCHW output whose input has more than one pixel, groups,
# column dilation, a latent layer with padding.
NOT_TAPS = [
    ((2, 8, 4, 4, 6, (4, 4), 2, 1, 0, CL), 1),
    ((2, 8, 4, 4, 6, (3, 3), 2, 0, 0, CL), 1),
    ((2, 8, 4, 4, 6, (2, 2), 2, 0, 0, NCHW), 1),
    ((2, 8, 4, 4, 6, (2, 2), 2, 0, 0, CL), 2),
    ((2, 8, 1, 1, 6, (3, 3), 1, 1, 0, NCHW), 1),
]


@pytest.mark.parametrize("i", range(len(NOT_TAPS)))
def test_geometries_left_to_residue_classes(isa, i):
    case, groups = NOT_TAPS[i]
    N, Ci, H, W, Co, ks, stride, padding, output_padding, fmt = case
    x = torch.randn(N, Ci, H, W).contiguous(memory_format=fmt)
    w = torch.randn(Ci, Co // groups, *ks).contiguous(memory_format=fmt)
    kw = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups)
    assert not _dgrad_path(x, w, kw).startswith("taps_as_channels"), _dgrad_path(x, w, kw)
    assert_rel(FC.conv_transpose2d(x, w, **kw), F.conv_transpose2d(x.double(), w.double(), **kw), torch.float32)
    # and the same shapes with column dilation 2 (kernel 2, stride 2 would otherwise tile)
    if i == 2:
        xc, wc = x.contiguous(memory_format=CL), w.contiguous(memory_format=CL)
        kw = dict(stride=2, dilation=2)
        assert not _dgrad_path(xc, wc, kw).startswith("taps_as_channels")


@pytest.mark.parametrize("case", [TAPS_CASES[1], TAPS_CASES[4], TAPS_CASES[7]], ids=["latent", "unet", "rows"])
def test_weight_pack_across_calls_and_updates(weight_pack_cache, case):
    """The route's packed weight is cached per weight version: a second call hits the cache and gives
    the same bits, an in-place update repacks, and a weight in another order (a copy first) packs
    apart from it."""
    x, w, kw = _transposed(case, torch.float32)
    y1 = FC.conv_transpose2d(x, w, **kw)
    hits = weight_pack_cache.hits
    y2 = FC.conv_transpose2d(x, w, **kw)
    assert weight_pack_cache.hits == hits + 1
    assert torch.equal(y1, y2)
    with torch.no_grad():
        w.mul_(-0.5)
    assert_rel(FC.conv_transpose2d(x, w, **kw), F.conv_transpose2d(x.double(), w.double(), **kw), torch.float32)
    w_other = w.contiguous(memory_format=NCHW if case[-1] == CL else CL)
    if w_other.stride() != w.stride():
        assert_rel(FC.conv_transpose2d(x, w_other, **kw), F.conv_transpose2d(x.double(), w.double(), **kw),
                   torch.float32)


@pytest.mark.parametrize("case", [(1, 5, 16, 9, (1, 2), (1, 2)), (2, 16, 5, 13, (2, 2), 2), (1, 8, 3, 17, (3, 2), 2)],
                         ids=["1x2", "2x2", "3x2"])
def test_input_grad_columns_past_the_last_window(isa, case):
    """Residue classes with a dx column that no window reads (odd W, a 2-wide filter at stride 2): the
    class has one more column than dy, and its correlation must write zeros there, not read past dy's
    row (the pointwise GEMM once did, at the AVX2 and baseline levels: garbage in dx's last column)."""
    N, C, K, W, ks, stride = case
    x = torch.randn(N, C, 5, W).contiguous(memory_format=CL).requires_grad_()
    w = torch.randn(K, C, *ks).contiguous(memory_format=CL)
    y = FC.conv2d(x, w, None, stride=stride)
    g = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, (x,), g)
    xd = x.detach().double().requires_grad_()
    (dxr,) = torch.autograd.grad(F.conv2d(xd, w.double(), None, stride=stride), (xd,), g.double())
    assert_rel(dx, dxr, torch.float32, "dx")


# NCHW strided layers: (N, C, H, W, K, kernel, stride, padding, small enough to stage at the AVX2 level)
STRIDED_NCHW = [
    (2, 32, 9, 9, 48, 3, 2, 1, True),       # ResNet-like 3x3 stride 2, odd map
    (3, 40, 8, 8, 32, 4, 2, 1, True),       # DCGAN's 4x4 stride 2 (a transposed conv's forward)
    (1, 64, 7, 10, 33, 1, 2, 0, True),      # 1x1 stride 2 (downsample), classes without taps
    (2, 32, 11, 6, 32, (3, 1), (2, 1), (1, 0), True),  # stride on rows only
    (12, 32, 20, 20, 32, 3, 2, 1, False),   # dy 10x10 (> 64 pixels) and 1,200 dy pixels in all
]


@pytest.mark.parametrize("case", STRIDED_NCHW, ids=[str(i) for i in range(len(STRIDED_NCHW))])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_strided_nchw_input_grad(isa, case, relu, dtype):
    """Strided NCHW layers of >= 32 channels each way: in float32 at the AVX-512 level, and on small maps
    at the AVX2 level, the input gradient runs on channels_last copies of dy and dx (the fused ReLU's mask
    applied to dy first); in float64, at the baseline level and on AVX2's larger maps on the NCHW kernels.
    dx vs torch float64, also for an expanded (zero-stride) dy."""
    N, C, H, W, K, k, stride, padding, small = case
    ks = k if isinstance(k, tuple) else (k, k)
    x = torch.randn(N, C, H, W, dtype=dtype, requires_grad=True)
    w = torch.randn(K, C, *ks, dtype=dtype)
    path = cpu_backend.conv2d_path(x.detach(), w, stride=stride, padding=padding, pass_="dgrad", relu=relu)
    staged = dtype == torch.float32 and (isa == "avx512" or (isa == "avx2" and small))
    inner = "channels_last_copies > residue_classes > igemm_nhwc/" if staged else "residue_classes > igemm_nchw_"
    assert path.startswith(("masked_dy_copy > " if relu else "") + inner), path
    f = FC.conv2d_relu if relu else FC.conv2d
    xd = x.detach().double().requires_grad_()
    yr = F.conv2d(xd, w.double(), None, stride=stride, padding=padding)
    yr = yr.relu() if relu else yr
    g = torch.randn_like(yr)
    (dx,) = torch.autograd.grad(f(x, w, None, stride=stride, padding=padding), (x,), g.to(dtype))
    (dxr,) = torch.autograd.grad(yr, (xd,), g)
    assert_rel(dx, dxr, dtype, "dx")
    if not relu:  # y.sum()'s gradient: dy is a ones tensor expanded with zero strides
        (dx,) = torch.autograd.grad(f(x, w, None, stride=stride, padding=padding).sum(), (x,))
        (dxr,) = torch.autograd.grad(F.conv2d(xd, w.double(), None, stride=stride, padding=padding).sum(), (xd,))
        assert_rel(dx, dxr, dtype, "dx of sum")
