"""conv2d and fused conv2d_relu, fastconv vs torch: forward, and forward+backward (input, weight and
bias gradients), NCHW and channels_last, float32.

The torch baseline for conv2d_relu is F.conv2d followed by an in-place ReLU (what nn.ReLU(inplace=True)
does after a conv layer) - the strongest unfused baseline, with no extra output allocation.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastconv.functional as FC

from ._harness import Case

OPS = ("conv2d", "conv2d_relu")
MODES = ("fwd", "fwdbwd")


def _inputs(s, layout: str, grad: bool):
    g = torch.Generator().manual_seed(1234)
    fan_in = (s.C // s.groups) * s.R * s.S
    x = torch.randn(s.input_shape, generator=g)
    w = torch.randn(s.weight_shape, generator=g) / fan_in ** 0.5
    b = torch.randn(s.K, generator=g) * 0.1
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        w = w.contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    dy = torch.randn(s.output_shape, generator=g).contiguous(memory_format=fmt)
    return x.requires_grad_(grad), w.requires_grad_(grad), b.requires_grad_(grad), dy


def _forward(impl: str, op: str, s):
    if impl == "fastconv":
        f = FC.conv2d_relu if op == "conv2d_relu" else FC.conv2d
        return lambda x, w, b: f(x, w, b, s.stride, s.pad, 1, s.groups)
    if op == "conv2d_relu":
        return lambda x, w, b: torch.relu_(F.conv2d(x, w, b, s.stride, s.pad, 1, s.groups))
    return lambda x, w, b: F.conv2d(x, w, b, s.stride, s.pad, 1, s.groups)


def _step(impl: str, op: str, mode: str, s, x, w, b, dy):
    fwd = _forward(impl, op, s)
    if mode == "fwd":
        return lambda: (fwd(x, w, b),)
    return lambda: torch.autograd.grad(fwd(x, w, b), (x, w, b), dy)


def _assert_same(ours, ref, names):
    for name, o, r in zip(names, ours, ref):
        scale = max(1.0, r.abs().max().item())
        torch.testing.assert_close(o, r, rtol=1e-3, atol=1e-4 * scale, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", OPS)
def test_conv2d(run_case, conv_shape, layout, impl, op, mode):
    s = conv_shape
    x, w, b, dy = _inputs(s, layout, grad=(mode == "fwdbwd"))
    work = s.flops if mode == "fwd" else s.flops_fwd_bwd
    case = Case(op, mode, s, layout, impl, work, "GFLOP/s")
    fn = _step(impl, op, mode, s, x, w, b, dy)

    def check():
        names = ("output",) if mode == "fwd" else ("grad_input", "grad_weight", "grad_bias")
        _assert_same(fn(), _step("torch", op, mode, s, x, w, b, dy)(), names)

    run_case(case, fn, check)
