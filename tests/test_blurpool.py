"""BlurPool2d (anti-aliased downsampling) and the zoo's blur_pool / GAP-head options: values against a
filter written out here, gradients, output sizes, state_dict keys, and what anti-aliasing buys: the
downsampled features change less under 1-pixel shifts of the input."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastconv.models import build_model
from fastconv.models.layers import BlurPool2d, Layers

# The binomial filters, written out: [1, 2, 1] and [1, 4, 6, 4, 1] (outer products, normalized).
ROWS = {3: [1.0, 2.0, 1.0], 5: [1.0, 4.0, 6.0, 4.0, 1.0]}


def _blur_reference(x, size, stride):
    row = torch.tensor(ROWS[size], dtype=torch.float64)
    k = (row[:, None] * row[None, :]) / row.sum() ** 2
    C = x.shape[1]
    return F.conv2d(x.double(), k.expand(C, 1, size, size), None, stride, (size - 1) // 2, 1, C).to(x.dtype)


@pytest.mark.parametrize("shape,size,stride", [((2, 3, 8, 8), 3, 2), ((1, 5, 7, 9), 3, 2), ((2, 4, 12, 12), 5, 2),
                                               ((1, 2, 9, 9), 3, 3), ((0, 3, 6, 6), 3, 2)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_values_and_gradients(backend, shape, size, stride, channels_last):
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    layer = BlurPool2d(shape[1], stride, size)
    y = layer(x)
    ref_x = x.detach().double().requires_grad_(True)
    ref = _blur_reference(ref_x, size, stride)
    torch.testing.assert_close(y.double(), ref, atol=1e-6, rtol=1e-5)
    g = torch.randn(y.shape)
    y.backward(g)
    ref.backward(g.double())
    torch.testing.assert_close(x.grad.double(), ref_x.grad, atol=1e-6, rtol=1e-5)


def test_gradcheck_float64(backend):
    x = torch.randn(1, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    layer = BlurPool2d(2, 2)
    assert torch.autograd.gradcheck(layer, (x,))


def test_filter_is_fixed_and_not_in_state_dict():
    layer = BlurPool2d(4)
    assert list(layer.parameters()) == [] and layer.state_dict() == {}
    torch.testing.assert_close(layer.filter[0, 0].sum(), torch.tensor(1.0))
    # A constant image stays constant away from the zero-padded border.
    y = layer(torch.full((1, 4, 9, 9), 3.0))
    torch.testing.assert_close(y[..., 1:-1, 1:-1], torch.full_like(y[..., 1:-1, 1:-1], 3.0))


@pytest.mark.parametrize("args,message", [((0,), "channels must be positive"), ((3, 0), "stride must be positive"),
                                          ((3, 2, 9), "filter_size must be in 1..7")])
def test_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        BlurPool2d(*args)


def test_wrong_channel_count_named():
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 4, H, W\)"):
        BlurPool2d(4)(torch.zeros(1, 3, 8, 8))


@pytest.mark.parametrize("size", [2, 5, 8, 9, 15, 16])
@pytest.mark.parametrize("kernel,stride,padding", [(2, 2, 0), (3, 2, 1)])
def test_anti_aliased_max_pool_keeps_the_output_size(size, kernel, stride, padding):
    L = Layers("fastconv")
    x = torch.randn(1, 3, size, size)
    plain = L.max_pool(3, kernel, stride, padding)(x)
    blurred = L.max_pool(3, kernel, stride, padding, blur=True)(x)
    assert blurred.shape == plain.shape


@pytest.mark.parametrize("name,size,kwargs", [
    ("lenet5", 8, {}), ("lenet5", 32, {}), ("vgg_small", 32, {"width": 0.25}),
    ("resnet18_cifar", 16, {"width": 8}), ("resnet18_imagenet", 64, {"width": 8}),
    ("mobilenet", 32, {"width": 0.25, "stem": "cifar"}),
])
def test_zoo_blur_pool_option(name, size, kwargs):
    """Same state_dict keys and output shape; fastconv and torch builds agree; the blur layers are there."""
    torch.manual_seed(0)
    plain = build_model(name, 10, 3, size, **kwargs)
    torch.manual_seed(0)
    fast = build_model(name, 10, 3, size, blur_pool=True, **kwargs)
    torch.manual_seed(0)
    ref = build_model(name, 10, 3, size, blur_pool=True, backend="torch", **kwargs)
    assert list(plain.state_dict()) == list(fast.state_dict()) == list(ref.state_dict())
    assert any(isinstance(m, BlurPool2d) for m in fast.modules())
    assert not any(isinstance(m, BlurPool2d) for m in plain.modules())
    x = torch.randn(2, 3, size, size)
    fast.eval(), ref.eval(), plain.eval()
    y = fast(x)
    assert y.shape == plain(x).shape == (2, 10)
    torch.testing.assert_close(y, ref(x), atol=1e-5, rtol=1e-4)


def test_lenet_gap_head():
    m = build_model("lenet5", 10, 1, 8, head="gap", channels=(12, 32))
    assert [type(c).__name__ for c in m.classifier] == ["GlobalAvgPool2d", "Linear"]
    assert m.classifier[1].in_features == 32 and m(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    with pytest.raises(ValueError, match="head must be 'fc' or 'gap'"):
        build_model("lenet5", head="avg")


def _shift(x, dy, dx, fill):
    """x translated by (dy, dx) pixels; uncovered pixels take `fill` (the image background)."""
    out = torch.full_like(x, fill)
    H, W = x.shape[-2:]
    out[..., max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = x[..., max(-dy, 0):H - max(dy, 0),
                                                                          max(-dx, 0):W - max(dx, 0)]
    return out


@pytest.mark.parametrize("image_size", [8, 16])
def test_shift_consistency_of_downsampled_features(backend, image_size):
    """What anti-aliasing buys, measured on identical weights: LeNet-5's features (after both poolings)
    change less under 1-pixel shifts of the digits with blur_pool than without.

    The two models share one state_dict (blur layers hold no parameters), so the only difference is the
    low-pass filter before each subsampling. Measured: relative change ||f(shift x) - f(x)|| / ||f(x)||
    averaged over the 4 one-pixel shifts, seeds 0-3: 8x8 0.33-0.41 without, 0.18-0.24 with (ratio
    0.55-0.59); 16x16 0.26-0.31 without, 0.17-0.21 with (0.61-0.66). What this does not show: prediction
    consistency of trained models, which on digits moves by only 0-2.5 points (docs/training.md)."""
    from fastconv.data import load_dataset

    splits = load_dataset("digits", image_size=image_size)
    x, _ = splits.test.__getitems__(list(range(120)))
    background = -splits.mean[0] / splits.std[0]
    for seed in range(4):
        torch.manual_seed(seed)
        plain = build_model("lenet5", 10, 1, image_size, channels=(12, 32)).eval()
        blurred = build_model("lenet5", 10, 1, image_size, channels=(12, 32), blur_pool=True).eval()
        blurred.load_state_dict(plain.state_dict())
        change = {}
        with torch.no_grad():
            for name, model in (("plain", plain), ("blur", blurred)):
                f0 = model.features(x)
                change[name] = sum(float((model.features(_shift(x, dy, dx, background)) - f0).norm() / f0.norm())
                                   for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0))) / 4
        assert change["blur"] < 0.75 * change["plain"], (seed, change)
