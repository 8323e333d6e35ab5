"""fastconv.functional.conv2d_epilogue (the fastconv::conv2d_fused op): a convolution with a per-channel
scale and shift, an activation and a residual input added before or after it.

Outputs and every gradient (input, weight, bias, scale, residual) vs the same computation in torch's
float64 ops, over activations x scale x residual placement x layouts x dtypes on every CPU-tensor backend;
gradcheck in float64; torch.compile fullgraph; argument errors. (tests/test_opcheck.py runs opcheck on
the op.)
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastconv.functional as FC
from fastconv.ops.conv2d_fused import ACTIVATIONS
from helpers import assert_rel

ACTS = list(ACTIVATIONS)


def _reference(x, w, b, scale, residual, stride, padding, dilation, groups, act, after):
    z = F.conv2d(x, w, None, stride, padding, dilation, groups)
    if scale is not None:
        z = z * scale.view(1, -1, 1, 1)
    if b is not None:
        z = z + b.view(1, -1, 1, 1)
    if residual is not None and not after:
        z = z + residual
    y = ACTIVATIONS[act][0](z)
    return y + residual if residual is not None and after else y


# (N, C, H, W, K, kernel, stride, padding, dilation, groups)
CASES = [
    (2, 8, 9, 9, 16, 3, 1, 1, 1, 1),
    (1, 6, 10, 7, 12, 3, 2, 1, 1, 3),      # grouped, strided, odd sizes
    (2, 16, 6, 6, 16, 3, 1, 1, 1, 16),     # depthwise
    (3, 12, 5, 5, 20, 1, 1, 0, 1, 1),      # pointwise
]


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("epilogue", ["bias", "scale", "res_before", "res_after", "scale_res_before"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_torch(backend, case, act, epilogue, channels_last, dtype):
    N, C, H, W, K, k, stride, padding, dilation, groups = case
    gen = torch.Generator().manual_seed(hash((case, act, epilogue)) % 10007)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(N, C, H, W, generator=gen).contiguous(memory_format=fmt)
    w = torch.randn(K, C // groups, k, k, generator=gen) / (C // groups * k * k) ** 0.5
    b = torch.randn(K, generator=gen)
    scale = torch.rand(K, generator=gen) + 0.5 if "scale" in epilogue else None
    P = (H + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    Q = (W + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    res = torch.randn(N, K, P, Q, generator=gen).contiguous(memory_format=fmt) if "res" in epilogue else None
    after = epilogue == "res_after"
    leaves = [t.to(dtype).requires_grad_() for t in (x, w, b) + tuple(t for t in (scale, res) if t is not None)]
    xs, ws, bs = leaves[:3]
    rest = iter(leaves[3:])
    ss = next(rest) if scale is not None else None
    rs = next(rest) if res is not None else None
    y = FC.conv2d_epilogue(xs, ws, bs, stride, padding, dilation, groups, scale=ss, activation=act, residual=rs,
                           residual_after_activation=after)
    refs = [t.detach().double().requires_grad_() for t in leaves]
    rit = iter(refs[3:])
    yr = _reference(*refs[:3], next(rit) if scale is not None else None, next(rit) if res is not None else None,
                    stride, padding, dilation, groups, act, after)
    assert y.is_contiguous(memory_format=fmt) or y.is_contiguous()
    assert_rel(y, yr, dtype, "output")
    g = torch.randn(yr.shape, generator=gen, dtype=torch.float64)
    for name, ours, want in zip(("dx", "dw", "db", "d1", "d2"), torch.autograd.grad(y, leaves, g.to(dtype)),
                                torch.autograd.grad(yr, refs, g)):
        assert_rel(ours, want, dtype, name)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("after", [False, True])
def test_gradcheck(act, after):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 3, 5, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)
    s = (torch.rand(4, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
    r = torch.randn(1, 4, 5, 5, generator=gen, dtype=torch.float64, requires_grad=True)

    def f(x, w, b, s, r):
        return FC.conv2d_epilogue(x, w, b, padding=1, scale=s, activation=act, residual=r,
                                  residual_after_activation=after)

    assert torch.autograd.gradcheck(f, (x, w, b, s, r))

    def g(x, w, b, r):  # no scale: the kernels' masked backward for none / relu before the activation
        return FC.conv2d_epilogue(x, w, b, padding=1, activation=act, residual=r, residual_after_activation=after)

    assert torch.autograd.gradcheck(g, (x, w, b, r))


def test_compile_fullgraph(backend):
    def f(x, w, b, r):
        return FC.conv2d_epilogue(x, w, b, padding=1, activation="hardswish", residual=r)

    x, w, b, r = torch.randn(2, 3, 8, 8), torch.randn(5, 3, 3, 3), torch.randn(5), torch.randn(2, 5, 8, 8)
    compiled = torch.compile(f, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x, w, b, r), f(x, w, b, r))


def test_unbatched_input():
    x, w, r = torch.randn(3, 6, 6), torch.randn(4, 3, 3, 3), torch.randn(4, 6, 6)
    y = FC.conv2d_epilogue(x, w, padding=1, activation="relu", residual=r)
    torch.testing.assert_close(y, torch.relu(F.conv2d(x, w, padding=1) + r))


def test_errors():
    x, w = torch.randn(2, 3, 6, 6), torch.randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match="activation must be one of"):
        FC.conv2d_epilogue(x, w, activation="tanh")
    with pytest.raises(ValueError, match="expected scale to be 1-dimensional with 4 elements"):
        FC.conv2d_epilogue(x, w, scale=torch.ones(3))
    with pytest.raises(ValueError, match=r"expected residual of the output's size \[2, 4, 4, 4\]"):
        FC.conv2d_epilogue(x, w, residual=torch.ones(2, 4, 6, 6))
    with pytest.raises(TypeError, match="residual dtype torch.float64"):
        FC.conv2d_epilogue(x, w, residual=torch.ones(2, 4, 4, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="residual_after_activation must be a bool"):
        FC.conv2d_epilogue(x, w, residual_after_activation=1)
    with pytest.raises(TypeError, match="scale must be a torch.Tensor"):
        FC.conv2d_epilogue(x, w, scale=[1.0] * 4)


# Inference (no autograd): the cpu backend applies the activation and the residual in its kernels' epilogues.
# One geometry per kernel family (csrc/cpu/conv2d_paths.h): (N, C, H, W, K, kernel, stride, padding, groups)
KERNEL_CASES = [
    (4, 16, 12, 12, 32, 3, 1, 1, 1),      # Winograd (36 tiles) at AVX2 / AVX-512 (float32), the implicit GEMMs elsewhere
    (2, 3, 16, 16, 24, 3, 1, 1, 1),       # RGB stem: conv_cl's padded copy, NCHW direct with row vectors
    (2, 24, 7, 9, 40, 1, 1, 0, 1),        # pointwise: conv_cl_pointwise, flattened NCHW
    (1, 64, 7, 7, 80, 3, 1, 1, 1),        # small map: NCHW staged through channels_last, residual in a pass over y
    (2, 12, 11, 10, 20, 3, 2, 1, 2),      # grouped, strided: conv_cl taps, NCHW direct phase planes
    (2, 8, 9, 9, 12, 5, 3, 2, 1),         # stride 3: conv_pix
    (2, 24, 10, 11, 24, 3, 1, 1, 24),     # depthwise 3x3: row pairs (channels_last), plane rows (NCHW)
    (1, 20, 11, 9, 20, 5, 2, 2, 20),      # depthwise 5x5 stride 2: single rows
    (1, 6, 8, 8, 12, 3, 1, 1, 6),         # depthwise multiplier 2 (Kg = 2): the generic loops
    # larger maps: several tasks per image and partial tiles, the epilogue applied per task or tile
    (2, 16, 41, 37, 48, 3, 2, 1, 1),      # stride 2: row tasks of the direct kernel, 21x19 output
    (2, 16, 33, 35, 20, 1, 1, 0, 1),      # pointwise, 1,155 pixels: packed pixel blocks, a partial last one
    (1, 32, 45, 45, 32, 3, 1, 1, 32),     # depthwise: row tasks per channel
]
RESIDUAL = ["none", "before", "after"]


def _kernel_case(case, act, residual, fmt, dtype, res_fmt=None):
    N, C, H, W, K, k, stride, padding, groups = case
    gen = torch.Generator().manual_seed(sum(case) + len(act))
    x = torch.randn(N, C, H, W, generator=gen, dtype=torch.float64)
    w = torch.randn(K, C // groups, k, k, generator=gen, dtype=torch.float64) * 2 / (C // groups * k * k) ** 0.5
    b = torch.randn(K, generator=gen, dtype=torch.float64)
    P, Q = (H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1
    r = torch.randn(N, K, P, Q, generator=gen, dtype=torch.float64) * 2 if residual != "none" else None
    after = residual == "after"
    with torch.no_grad():
        y = FC.conv2d_epilogue(x.to(dtype).contiguous(memory_format=fmt), w.to(dtype), b.to(dtype), stride, padding,
                               1, groups, activation=act,
                               residual=None if r is None else r.to(dtype).contiguous(memory_format=res_fmt or fmt),
                               residual_after_activation=after)
    ref = _reference(x, w, b, None, r, stride, padding, 1, groups, act, after)
    assert_rel(y, ref, dtype, f"output ({act}, residual {residual})")


@pytest.mark.parametrize("case", KERNEL_CASES, ids=[str(i) for i in range(len(KERNEL_CASES))])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("residual", RESIDUAL)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_inference_kernels_match_torch(case, act, residual, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    _kernel_case(case, act, residual, fmt, torch.float32)


@pytest.mark.parametrize("case", KERNEL_CASES, ids=[str(i) for i in range(len(KERNEL_CASES))])
@pytest.mark.parametrize("act", ["relu6", "silu", "gelu", "hardswish"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inference_kernels_every_isa(isa, case, act, channels_last, dtype):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    _kernel_case(case, act, "before", fmt, dtype)


def test_residual_in_another_layout_is_read_right():
    """A residual whose strides differ from the output's (channels_last output, NCHW residual) is copied to the
    output's layout before the kernels read it at the outputs' offsets."""
    _kernel_case(KERNEL_CASES[0], "relu", "before", torch.channels_last, torch.float32, torch.contiguous_format)
    _kernel_case(KERNEL_CASES[6], "silu", "after", torch.contiguous_format, torch.float32, torch.channels_last)


def test_special_values_propagate():
    """NaN, infinities, subnormal tails and the clamps' corners through the vectorized activations, as torch's
    functions give them (gelu's erfc approximation: absolute error 1.5e-7)."""
    x = torch.zeros(1, 16, 4, 4)
    w = torch.zeros(16, 16, 1, 1)
    b = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, 1e-8, -1e-8, 30.0, -30.0, 88.5, -88.5, 100.0,
                      -100.0, 3.0, -3.0, 6.0, -6.0])
    for act in ACTS:
        with torch.no_grad():
            y = FC.conv2d_epilogue(x, w, b, activation=act)
        ref = ACTIVATIONS[act][0](b.double()).float().view(1, -1, 1, 1).expand_as(y)
        # subnormal results differ in their last bits (atol: the smallest normal float)
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6 if act == "gelu" else 1.2e-38, equal_nan=True, msg=act)
