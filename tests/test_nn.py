"""fastconv.nn modules as drop-in torch.nn layers, and fastconv.convert().

Same constructor arguments, same initialization from the same seed, same state_dict (loadable both
ways), outputs and gradients equal torch's (float64 reference, per-dtype tolerance).
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fastconv
import fastconv.nn as fnn
from helpers import assert_rel

CONV_CONFIGS = [
    # (args, kwargs)
    ((3, 4, 3), dict()),
    ((3, 4, 3), dict(padding=1, padding_mode="reflect")),
    ((3, 6, (3, 2)), dict(padding=(1, 2), padding_mode="replicate", groups=3)),
    ((4, 4, 3), dict(padding=2, dilation=2, padding_mode="circular", bias=False)),
    ((4, 6, 2), dict(stride=2, groups=2, bias=False)),
    ((2, 4, 4), dict(padding="same", padding_mode="reflect", dilation=(1, 2))),
    ((2, 4, (2, 3)), dict(padding="same")),
    ((3, 3, 5), dict(padding="valid", stride=(1, 2), groups=3, padding_mode="circular")),
    ((3, 5, 1), dict(device="cpu", dtype=torch.float64)),
]


def _ids(configs):
    return [f"{a}-{k}" for a, k in configs]


def _check_module(ours, theirs, x, relu=False):
    """Forward and backward of ours vs theirs run in float64 from the same parameters."""
    dtype = x.dtype
    ref = copy.deepcopy(theirs).double()
    x = x.requires_grad_()
    xr = x.detach().double().requires_grad_()
    y = ours(x)
    y_ref = ref(xr)
    if relu:
        y_ref = torch.relu(y_ref)
    assert y.shape == y_ref.shape and y.dtype == dtype
    g = torch.randn_like(y_ref)
    y.backward(g.to(dtype))
    y_ref.backward(g)
    assert_rel(y, y_ref, dtype, "output")
    assert_rel(x.grad, xr.grad, dtype, "grad_input")
    for (name, p), (_, pr) in zip(ours.named_parameters(), ref.named_parameters()):
        assert_rel(p.grad, pr.grad, dtype, f"grad {name}")


@pytest.mark.parametrize("args,kwargs", CONV_CONFIGS, ids=_ids(CONV_CONFIGS))
@pytest.mark.parametrize("cls", [fnn.Conv2d, fnn.Conv2dReLU])
def test_conv_module_matches_torch(backend, cls, args, kwargs):
    torch.manual_seed(123)
    theirs = nn.Conv2d(*args, **kwargs)
    torch.manual_seed(123)
    ours = cls(*args, **kwargs)
    assert isinstance(ours, nn.Conv2d)
    # same init from the same seed, same attributes
    for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                 "padding_mode"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for k, v in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k
        assert ours.state_dict()[k].dtype == v.dtype
    assert (ours.bias is None) == (theirs.bias is None)
    dtype = kwargs.get("dtype", torch.float32)
    x = torch.randn(2, args[0], 9, 8, dtype=dtype)
    _check_module(ours, theirs, x, relu=cls is fnn.Conv2dReLU)


@pytest.mark.parametrize("cls", [fnn.Conv2d, fnn.Conv2dReLU])
def test_conv_module_unbatched_and_channels_last(backend, cls):
    torch.manual_seed(0)
    theirs = nn.Conv2d(3, 4, 3, padding=1)
    ours = cls(3, 4, 3, padding=1)
    ours.load_state_dict(theirs.state_dict())
    _check_module(ours, theirs, torch.randn(3, 7, 6), relu=cls is fnn.Conv2dReLU)
    ours.zero_grad()
    ours = ours.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 7, 6).contiguous(memory_format=torch.channels_last)
    y = ours(x)
    assert y.is_contiguous(memory_format=torch.channels_last) == theirs(x).is_contiguous(memory_format=torch.channels_last)


def test_conv_module_meta_device_and_repr():
    m = fnn.Conv2d(3, 4, 3, device="meta", dtype=torch.float64)
    assert m.weight.device.type == "meta" and m.weight.dtype == torch.float64
    assert repr(fnn.Conv2d(3, 4, 3, padding=1, bias=False)) == repr(nn.Conv2d(3, 4, 3, padding=1, bias=False))
    r = fnn.Conv2dReLU(3, 4, 3, padding=1)
    assert "relu=True" in repr(r)


@pytest.mark.parametrize("direction", ["torch->ours", "ours->torch"])
@pytest.mark.parametrize("cls", [fnn.Conv2d, fnn.Conv2dReLU])
def test_state_dict_both_directions(backend, cls, direction):
    torch.manual_seed(1)
    theirs = nn.Conv2d(4, 6, 3, padding=1, groups=2)
    torch.manual_seed(2)
    ours = cls(4, 6, 3, padding=1, groups=2)
    src, dst = (theirs, ours) if direction == "torch->ours" else (ours, theirs)
    result = dst.load_state_dict(src.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    for k in src.state_dict():
        assert torch.equal(dst.state_dict()[k], src.state_dict()[k])
    x = torch.randn(2, 4, 6, 7)
    _check_module(ours, theirs, x, relu=cls is fnn.Conv2dReLU)


POOL_CONFIGS = [
    (fnn.MaxPool2d, nn.MaxPool2d, (2,), dict()),
    (fnn.MaxPool2d, nn.MaxPool2d, (3,), dict(stride=2, padding=1, ceil_mode=True)),
    (fnn.MaxPool2d, nn.MaxPool2d, ((3, 2),), dict(stride=(1, 2), padding=(1, 0), dilation=2)),
    (fnn.AvgPool2d, nn.AvgPool2d, (2,), dict()),
    (fnn.AvgPool2d, nn.AvgPool2d, (3,), dict(stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
    (fnn.AvgPool2d, nn.AvgPool2d, ((2, 3),), dict(stride=1, padding=(1, 1), divisor_override=4)),
]


@pytest.mark.parametrize("ours_cls,torch_cls,args,kwargs", POOL_CONFIGS,
                         ids=[f"{c[0].__name__}-{c[2]}-{c[3]}" for c in POOL_CONFIGS])
def test_pool_module_matches_torch(backend, ours_cls, torch_cls, args, kwargs):
    ours, theirs = ours_cls(*args, **kwargs), torch_cls(*args, **kwargs)
    assert isinstance(ours, torch_cls)
    assert repr(ours) == repr(theirs)
    for x in (torch.randn(2, 3, 9, 8), torch.randn(3, 9, 8)):
        _check_module(ours, theirs, x)


def test_max_pool_module_return_indices(backend):
    ours, theirs = fnn.MaxPool2d(3, 2, 1, return_indices=True), nn.MaxPool2d(3, 2, 1, return_indices=True)
    x = torch.randn(2, 3, 9, 8)
    y, idx = ours(x)
    y_t, idx_t = theirs(x)
    assert torch.equal(y, y_t) and torch.equal(idx, idx_t)


# ----------------------------------------------------------------------------------------------------
# convert()


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(inplace=True),
                                  nn.AvgPool2d(2), nn.Conv2d(8, 8, 1, bias=False))
        self.skip = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        return self.body(x) + nn.functional.avg_pool2d(self.skip(x), 2)


def _model():
    torch.manual_seed(7)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        Block(),
        nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
        nn.ReLU(),  # a ReLU that follows a ReLU stays
        nn.Flatten(), nn.Linear(8 * 4 * 4, 3),
    )


def test_convert_model(backend):
    model = _model()
    ref = copy.deepcopy(model).double()
    keys_before = list(model.state_dict())
    params_before = {n: p for n, p in model.named_parameters()}

    out = fastconv.convert(model)
    assert out is model

    # classes: convs become fastconv's (ReLU fused where a Conv2d is followed by a ReLU), pools too
    assert type(model[0]) is fnn.Conv2dReLU and type(model[1]) is nn.Identity
    assert type(model[2]) is fnn.MaxPool2d
    assert type(model[3].body[0]) is fnn.Conv2dReLU and type(model[3].body[1]) is nn.Identity
    assert type(model[3].body[2]) is fnn.AvgPool2d and type(model[3].body[3]) is fnn.Conv2d
    assert type(model[3].skip) is fnn.Conv2d
    assert type(model[4]) is fnn.Conv2dReLU and type(model[5]) is nn.Identity
    assert type(model[6]) is nn.ReLU
    # parameters are the very same tensor objects, state_dict keys unchanged
    assert list(model.state_dict()) == keys_before
    for n, p in model.named_parameters():
        assert p is params_before[n], n
    assert len(list(model.parameters())) == len(params_before)

    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    xr = x.detach().double().requires_grad_()
    y, y_ref = model(x), ref(xr)
    g = torch.randn_like(y_ref)
    y.backward(g.float())
    y_ref.backward(g)
    assert_rel(y, y_ref, torch.float32, "output")
    assert_rel(x.grad, xr.grad, torch.float32, "grad_input")
    for (n, p), (_, pr) in zip(model.named_parameters(), ref.named_parameters()):
        assert_rel(p.grad, pr.grad, torch.float32, f"grad {n}")


def test_convert_optimizer_keeps_working(backend):
    """An optimizer built before convert() still updates the converted model (shared parameters)."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fastconv.convert(model)
    w_before = model[0].weight.detach().clone()
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    opt.step()
    assert not torch.equal(model[0].weight, w_before)


def test_convert_without_fusion(backend):
    model = _model()
    fastconv.convert(model, fuse_relu=False)
    assert type(model[0]) is fnn.Conv2d and type(model[1]) is nn.ReLU


def test_convert_leaves_subclasses_and_rejects_non_modules():
    class MyConv(nn.Conv2d):
        pass

    model = nn.Sequential(MyConv(3, 3, 1), nn.ReLU())
    fastconv.convert(model)
    assert type(model[0]) is MyConv and type(model[1]) is nn.ReLU
    with pytest.raises(TypeError, match="model"):
        fastconv.convert("not a module")


def test_conv2d_relu_from_conv_shares_parameters(backend):
    conv = nn.Conv2d(3, 4, 3, padding=1)
    fused = fnn.Conv2dReLU.from_conv(conv)
    assert fused.weight is conv.weight and fused.bias is conv.bias
    assert type(conv) is nn.Conv2d
    x = torch.randn(1, 3, 6, 6)
    y_ref = torch.relu(nn.functional.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1))
    assert_rel(fused(x), y_ref, torch.float32)


def test_conv2d_relu_from_conv_leaves_conv_unchanged():
    """from_conv shares the parameter tensors, but the two modules are separate modules: replacing a
    parameter, registering a buffer or a hook on the fused one does not change the original conv."""
    conv = nn.Conv2d(3, 4, 3, padding=1)
    weight, bias = conv.weight, conv.bias
    fused = fnn.Conv2dReLU.from_conv(conv)
    fused.weight = nn.Parameter(torch.zeros_like(weight))
    fused.register_buffer("extra", torch.zeros(1))
    fused.register_forward_hook(lambda *a: None)
    assert conv.weight is weight and conv.bias is bias
    assert "extra" not in dict(conv.named_buffers())
    assert len(conv._forward_hooks) == 0
    assert list(conv.state_dict()) == ["weight", "bias"]
