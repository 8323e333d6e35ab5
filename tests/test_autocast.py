"""fastconv's ops under torch.autocast behave as torch's: the convolutions (2-d, 1-d, transposed) cast their floating-point
inputs (float64 excepted) to the autocast dtype, mixed float32/low-precision arguments are accepted,
gradients flow back to the float32 leaves in float32; pooling runs in its input's dtype.

Compared with torch's own ops under the same autocast region: same output dtype, values within the
dtype's tolerance of torch's (both compute from the same cast inputs)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastconv.functional as FC
import fastconv.nn as fnn
from helpers import assert_rel

AMP_DTYPES = [torch.bfloat16, torch.float16]


def _leaves(*shapes, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(*s, generator=g, dtype=torch.float64).to(dtype).requires_grad_() for s in shapes]


# op -> (torch's op, input, weight, bias shapes, kwargs)
_CAST_CASES = {
    "conv2d": (F.conv2d, (2, 4, 9, 8), (6, 2, 3, 3), (6,), dict(stride=1, padding=1, groups=2)),
    "conv2d_relu": (lambda *a, **k: torch.relu(F.conv2d(*a, **k)), (2, 4, 9, 8), (6, 2, 3, 3), (6,),
                    dict(stride=1, padding=1, groups=2)),
    "conv1d": (F.conv1d, (2, 4, 17), (6, 2, 3), (6,), dict(stride=2, padding=1, groups=2)),
    "conv1d_relu": (lambda *a, **k: torch.relu(F.conv1d(*a, **k)), (2, 4, 17), (6, 4, 5), (6,), dict(padding=2)),
    "conv_transpose2d": (F.conv_transpose2d, (2, 4, 5, 6), (4, 3, 3, 3), (6,),
                         dict(stride=2, padding=1, output_padding=1, groups=2)),
    "conv_transpose1d": (F.conv_transpose1d, (2, 4, 9), (4, 3, 4), (3,), dict(stride=2, padding=1)),
}


@pytest.mark.parametrize("amp", AMP_DTYPES, ids=str)
@pytest.mark.parametrize("op", list(_CAST_CASES))
def test_conv_casts_like_torch(backend, op, amp):
    torch_fn, x_shape, w_shape, b_shape, kwargs = _CAST_CASES[op]
    x, w, b = _leaves(x_shape, w_shape, b_shape)
    with torch.autocast("cpu", dtype=amp):
        y = getattr(FC, op)(x, w, b, **kwargs)
        y_t = torch_fn(x, w, b, **kwargs)
    assert y.dtype == y_t.dtype == amp
    assert_rel(y, y_t, amp, "output")
    g = torch.randn(y.shape, dtype=torch.float64).to(amp)
    grads = torch.autograd.grad(y, [x, w, b], g)
    grads_t = torch.autograd.grad(y_t, [x, w, b], g)
    for name, got, ref in zip(("grad_input", "grad_weight", "grad_bias"), grads, grads_t):
        assert got.dtype == torch.float32, f"{name}: {got.dtype}"  # back through the cast to the leaf
        assert_rel(got, ref, amp, name)


def test_mixed_dtypes_accepted_only_under_autocast(backend):
    x = torch.randn(1, 3, 6, 6, dtype=torch.bfloat16)
    w = torch.randn(4, 3, 3, 3)
    b = torch.randn(4)
    with pytest.raises(TypeError, match="dtype"):
        FC.conv2d(x, w, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = FC.conv2d(x, w, b)
        y_t = F.conv2d(x, w, b)
    assert y.dtype == torch.bfloat16
    assert_rel(y, y_t, torch.bfloat16)


def test_float64_is_not_cast(backend):
    x, w = _leaves((1, 2, 5, 5), (3, 2, 3, 3), dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = FC.conv2d_relu(x, w)
        y_t = torch.relu(F.conv2d(x, w))
    assert y.dtype == y_t.dtype == torch.float64
    assert_rel(y, y_t, torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_pooling_keeps_input_dtype(backend, dtype):
    (x,) = _leaves((2, 3, 8, 7), dtype=dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_max = FC.max_pool2d(x, 3, 2, 1)
        y_avg = FC.avg_pool2d(x, 2, ceil_mode=True)
        assert F.max_pool2d(x, 3, 2, 1).dtype == y_max.dtype == dtype
        assert F.avg_pool2d(x, 2, ceil_mode=True).dtype == y_avg.dtype == dtype
    (gx,) = torch.autograd.grad(y_max.sum() + y_avg.sum(), [x])
    assert gx.dtype == dtype


class _Net(nn.Module):
    def __init__(self, conv, relu_conv, pool):
        super().__init__()
        self.c1 = relu_conv(3, 8, 3, padding=1)
        self.pool = pool(2)
        self.c2 = conv(8, 4, 3, padding="same", groups=2)

    def forward(self, x):
        return self.c2(self.pool(self.c1(x)))


class _TorchConvReLU(nn.Sequential):
    def __init__(self, *args, **kwargs):
        super().__init__(nn.Conv2d(*args, **kwargs), nn.ReLU())


@pytest.mark.parametrize("amp", AMP_DTYPES, ids=str)
def test_model_under_autocast_matches_torch(backend, amp):
    """A chain of layers: the second convolution gets a low-precision activation and float32 weights."""
    ours = _Net(fnn.Conv2d, fnn.Conv2dReLU, fnn.MaxPool2d)
    theirs = _Net(nn.Conv2d, _TorchConvReLU, nn.MaxPool2d)
    theirs.c1[0].load_state_dict(ours.c1.state_dict())
    theirs.c2.load_state_dict(ours.c2.state_dict())
    x = torch.randn(2, 3, 10, 10).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=amp):
        y = ours(x)
        y_t = theirs(x)
    assert y.dtype == y_t.dtype == amp
    assert_rel(y, y_t, amp, "output")
    y.float().square().sum().backward()
    y_t.float().square().sum().backward()
    for (name, p), p_t in zip(ours.named_parameters(), theirs.parameters()):
        assert p.grad.dtype == torch.float32
        assert_rel(p.grad, p_t.grad, amp, f"grad {name}", tol=5 * 2e-2 if amp == torch.bfloat16 else 1e-2)
