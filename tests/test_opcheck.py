"""torch.library.opcheck on every fastconv custom op (forward and backward ops).

opcheck runs the op for real and checks its schema (no hidden mutation or aliasing), the autograd
registration, the fake implementation against the real one (shapes, dtypes, strides) and the op
under AOTAutograd with dynamic shapes. Samples come with and without requires_grad, and in the
layouts whose output memory format the fake implementation must predict (channels_last).
"""
from __future__ import annotations

import pytest
import torch

import fastconv  # noqa: F401  (registers torch.ops.fastconv.*)

ops = torch.ops.fastconv
CL = torch.channels_last


def _t(*shape, rg=False, cl=False, dtype=torch.float32):
    t = torch.randn(*shape, dtype=dtype)
    if cl:
        t = t.contiguous(memory_format=CL)
    return t.requires_grad_(rg)


def conv_samples():
    # (id, args) with already-normalized args: 4-d tensors, pairs, symmetric padding
    yield "basic", (_t(2, 3, 6, 5), _t(4, 3, 3, 3), _t(4), [1, 1], [1, 1], [1, 1], 1)
    yield "grad-all", (_t(2, 3, 6, 5, rg=True), _t(4, 3, 3, 3, rg=True), _t(4, rg=True), [1, 1], [1, 1], [1, 1], 1)
    yield "grad-nobias-groups", (_t(1, 4, 7, 6, rg=True), _t(6, 2, 2, 3, rg=True), None, [2, 1], [0, 1], [1, 2], 2)
    yield "grad-weight-only-cl", (_t(2, 3, 6, 6, cl=True), _t(3, 1, 3, 3, rg=True), _t(3), [1, 2], [1, 0], [1, 1], 3)
    yield "cl-weight", (_t(1, 2, 5, 5, rg=True), _t(2, 2, 1, 1, cl=True, rg=True), _t(2, rg=True), [1, 1], [0, 0], [1, 1], 1)
    yield "float64", (_t(1, 2, 5, 5, rg=True, dtype=torch.float64), _t(2, 2, 3, 2, rg=True, dtype=torch.float64),
                      None, [1, 1], [1, 1], [2, 1], 1)


CONV_SAMPLES = list(conv_samples())


@pytest.mark.parametrize("op_name", ["conv2d", "conv2d_relu"])
@pytest.mark.parametrize("sample", CONV_SAMPLES, ids=[s[0] for s in CONV_SAMPLES])
def test_opcheck_conv_forward(backend, op_name, sample):
    torch.library.opcheck(getattr(ops, op_name), sample[1])


def _conv_backward_args(relu: bool, cl: bool):
    x = _t(2, 4, 6, 5, cl=cl)
    w = _t(6, 2, 3, 2)
    stride, padding, dilation, groups = [1, 2], [1, 1], [1, 1], 2
    y = (ops.conv2d_relu if relu else ops.conv2d)(x, w, None, stride, padding, dilation, groups)
    dy = torch.randn_like(y)
    return dy, x, w, (y if relu else None), stride, padding, dilation, groups


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
def test_opcheck_conv2d_dgrad(backend, relu, layout):
    torch.library.opcheck(ops.conv2d_dgrad, _conv_backward_args(relu, layout == "channels_last"))


@pytest.mark.parametrize("need", [(True, True), (True, False), (False, True)], ids=["w+b", "w", "b"])
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
def test_opcheck_conv2d_wgrad(backend, relu, need):
    args = _conv_backward_args(relu, False)
    torch.library.opcheck(ops.conv2d_wgrad, args + need)


def pool_samples():
    # (id, input, kernel, stride, padding, dilation, ceil_mode)
    yield "basic", _t(2, 3, 6, 6), [2, 2], [2, 2], [0, 0], [1, 1], False
    yield "grad-ceil-pad", _t(1, 2, 7, 8, rg=True), [3, 3], [2, 2], [1, 1], [1, 1], True
    yield "grad-cl-dil", _t(2, 3, 8, 7, cl=True, rg=True), [3, 2], [1, 2], [1, 0], [2, 1], False


POOL_SAMPLES = list(pool_samples())


@pytest.mark.parametrize("sample", POOL_SAMPLES, ids=[s[0] for s in POOL_SAMPLES])
def test_opcheck_max_pool2d(backend, sample):
    _, x, k, s, p, d, cm = sample
    torch.library.opcheck(ops.max_pool2d, (x.detach(), k, s, p, d, cm))
    torch.library.opcheck(ops.max_pool2d_with_indices, (x, k, s, p, d, cm))


@pytest.mark.parametrize("sample", POOL_SAMPLES, ids=[s[0] for s in POOL_SAMPLES])
def test_opcheck_max_pool2d_backward(backend, sample):
    _, x, k, s, p, d, cm = sample
    x = x.detach()
    y, idx = ops.max_pool2d_with_indices(x, k, s, p, d, cm)
    torch.library.opcheck(ops.max_pool2d_backward, (torch.randn_like(y), x, idx, k, s, p, d, cm))


AVG_OPTIONS = [(True, None), (False, None), (True, 3)]


@pytest.mark.parametrize("options", AVG_OPTIONS, ids=["incl", "excl", "divisor"])
@pytest.mark.parametrize("sample", POOL_SAMPLES, ids=[s[0] for s in POOL_SAMPLES])
def test_opcheck_avg_pool2d(backend, sample, options):
    _, x, k, s, p, _, cm = sample
    cip, div = options
    torch.library.opcheck(ops.avg_pool2d, (x, k, s, p, cm, cip, div))


@pytest.mark.parametrize("options", AVG_OPTIONS, ids=["incl", "excl", "divisor"])
@pytest.mark.parametrize("sample", POOL_SAMPLES, ids=[s[0] for s in POOL_SAMPLES])
def test_opcheck_avg_pool2d_backward(backend, sample, options):
    _, x, k, s, p, _, cm = sample
    cip, div = options
    x = x.detach()
    y = ops.avg_pool2d(x, k, s, p, cm, cip, div)
    torch.library.opcheck(ops.avg_pool2d_backward, (torch.randn_like(y), x, k, s, p, cm, cip, div))


def _fused_args(epilogue, return_conv, rg=True, cl=False):
    fmt = torch.channels_last if cl else torch.contiguous_format
    x = torch.randn(2, 4, 6, 5).contiguous(memory_format=fmt).requires_grad_(rg)
    w = torch.randn(6, 2, 3, 3, requires_grad=rg)
    r = torch.randn(2, 6, 6, 5).contiguous(memory_format=fmt).requires_grad_(rg)
    scale = torch.rand(6, requires_grad=rg) if epilogue == "silu-scale-res" else None
    act, after = {"silu-scale-res": ("silu", False), "relu-res": ("relu", False), "gelu-res-after": ("gelu", True)}[
        epilogue]
    return (x, w, torch.randn(6, requires_grad=rg), scale, r, [1, 1], [1, 1], [1, 1], 2, act, after, return_conv)


# silu with a scale: the backward recomputes z from the returned convolution output; relu without one: the
# kernels' masked backward; gelu with the residual after the activation.
@pytest.mark.parametrize("epilogue", ["silu-scale-res", "relu-res", "gelu-res-after"])
@pytest.mark.parametrize("return_conv", [False, True])
@pytest.mark.parametrize("cl", [False, True])
def test_opcheck_conv2d_fused(backend, epilogue, return_conv, cl):
    torch.library.opcheck(ops.conv2d_fused, _fused_args(epilogue, return_conv, cl=cl))
    torch.library.opcheck(ops.conv2d_fused, _fused_args(epilogue, return_conv, rg=False, cl=cl))


def test_every_op_is_checked():
    """Every op registered under the fastconv namespace has an opcheck test (above, or in the op's own
    test module: test_conv1d.py, test_conv_transpose.py)."""
    checked = {"conv2d", "conv2d_relu", "conv2d_fused", "conv2d_dgrad", "conv2d_wgrad", "max_pool2d",
               "max_pool2d_with_indices",
               "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward"}
    checked |= {"conv1d", "conv1d_relu", "conv_transpose1d", "conv_transpose2d"}
    registered = {name for name in dir(ops) if isinstance(getattr(ops, name), torch._ops.OpOverloadPacket)}
    assert registered == checked
