"""torch.autograd.gradcheck (float64, finite differences) through fastconv.functional for every op.

The analytical gradients are fastconv's own backward kernels (dgrad, wgrad, pool backward); the
numerical ones come from the forward kernels. Shapes are small: gradcheck costs one forward per
input element.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastconv.functional as FC

DT = torch.float64

CONV_CASES = [
    # (name, N, C, K, H, W, R, S, kwargs, bias, layout); small: gradcheck runs a forward per element
    ("3x3-pad1-bias", 1, 2, 3, 4, 5, 3, 3, dict(padding=1), True, "contiguous"),
    ("3x2-stride2-dil(1,2)", 1, 2, 2, 6, 7, 3, 2, dict(stride=2, padding=(1, 2), dilation=(1, 2)), True, "contiguous"),
    ("groups2-nobias", 1, 4, 4, 4, 5, 2, 3, dict(groups=2, stride=(1, 2)), False, "contiguous"),
    ("depthwise-x2-cl", 1, 2, 4, 5, 4, 3, 3, dict(groups=2, padding=1), True, "channels_last"),
    ("same-even", 1, 2, 2, 4, 5, 2, 4, dict(padding="same", dilation=(2, 1)), True, "contiguous"),
    ("unbatched-valid", None, 2, 2, 5, 4, 3, 2, dict(padding="valid", stride=(2, 1)), True, "contiguous"),
    ("noncontig", 2, 1, 2, 5, 5, 3, 3, dict(padding=(2, 1), dilation=2), True, "slice"),
]


def _conv_inputs(N, C, K, H, W, R, S, kwargs, bias, layout):
    groups = kwargs.get("groups", 1)
    shape = (C, H, W) if N is None else (N, C, H, W)
    if layout == "slice":
        x = torch.randn(N, C, H, 2 * W, dtype=DT)[..., ::2]
    else:
        x = torch.randn(*shape, dtype=DT)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(K, C // groups, R, S, dtype=DT)
    b = torch.randn(K, dtype=DT) if bias else None
    return x, w, b


def _away_from_relu_kink(x, w, b, kwargs, margin=1e-2, tries=50):
    """Redraws inputs until no pre-activation lies within `margin` of 0, where relu has no derivative
    (finite differences with eps=1e-6 would straddle the kink)."""
    for _ in range(tries):
        y = F.conv2d(x, w, b, **kwargs)
        if (y.abs() > margin).all():
            return x, w, b
        x = torch.randn_like(x) if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last) else x
        w = torch.randn_like(w)
        if b is not None:
            b = torch.randn_like(b)
    # Fall back: shift the bias away from the kink is not possible per element; fail loudly.
    raise AssertionError("could not draw relu inputs away from the kink")


@pytest.mark.parametrize("op", ["conv2d", "conv2d_relu"])
@pytest.mark.parametrize("case", CONV_CASES, ids=[c[0] for c in CONV_CASES])
def test_gradcheck_conv(backend, op, case):
    _, N, C, K, H, W, R, S, kwargs, bias, layout = case
    x, w, b = _conv_inputs(N, C, K, H, W, R, S, kwargs, bias, layout)
    if op == "conv2d_relu":
        x, w, b = _away_from_relu_kink(x, w, b, kwargs)
        assert (F.conv2d(x, w, b, **kwargs) > 0).any(), "some outputs must be active"
    inputs = [x.requires_grad_(), w.requires_grad_()] + ([b.requires_grad_()] if b is not None else [])
    fn = getattr(FC, op)

    def f(*args):
        xx, ww = args[:2]
        bb = args[2] if len(args) > 2 else None
        return fn(xx, ww, bb, **kwargs)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=False)


def _distinct(*shape):
    """Values with gaps >= 0.1 between any two: max-pool's argmax is stable under eps perturbation."""
    n = 1
    for s in shape:
        n *= s
    return (torch.randperm(n, dtype=DT) * 0.1).reshape(shape)


MAX_CASES = [
    ("k2", (2, 3, 6, 6), dict(kernel_size=2), "contiguous"),
    ("k3-s2-p1-ceil", (1, 2, 7, 8), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), "contiguous"),
    ("k(3,2)-dil2", (2, 2, 8, 7), dict(kernel_size=(3, 2), stride=1, padding=(1, 0), dilation=2), "channels_last"),
    ("overlap-unbatched", (3, 6, 5), dict(kernel_size=3, stride=1, padding=1), "contiguous"),
]


@pytest.mark.parametrize("case", MAX_CASES, ids=[c[0] for c in MAX_CASES])
def test_gradcheck_max_pool2d(backend, case):
    _, shape, kwargs, layout = case
    x = _distinct(*shape)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: FC.max_pool2d(t, **kwargs), (x,), eps=1e-6, atol=1e-7)


AVG_CASES = [
    ("k2", (2, 3, 6, 6), dict(kernel_size=2), "contiguous"),
    ("k3-s2-p1-ceil-excl", (1, 2, 7, 8), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True,
                                              count_include_pad=False), "contiguous"),
    ("k(3,2)-p(1,1)-incl-cl", (2, 2, 7, 6), dict(kernel_size=(3, 2), stride=(2, 1), padding=1), "channels_last"),
    ("divisor-unbatched", (3, 6, 5), dict(kernel_size=3, stride=1, padding=1, divisor_override=5), "contiguous"),
]


@pytest.mark.parametrize("case", AVG_CASES, ids=[c[0] for c in AVG_CASES])
def test_gradcheck_avg_pool2d(backend, case):
    _, shape, kwargs, layout = case
    x = torch.randn(*shape, dtype=DT)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: FC.avg_pool2d(t, **kwargs), (x,), eps=1e-6, atol=1e-7)
