"""fastconv.models: every model built from fastconv.nn layers and from torch.nn layers has the same
parameter names and initial weights, and with the same weights and data both builds give the same
losses step after step of SGD (float64: 1e-9 relative; float32: 1e-4), on the backend under test."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastconv
from fastconv.models import TorchConv2dReLU, build_model, imagenet, list_models

# name, constructor kwargs (narrow: the math is the same at any width), input size
CASES = [
    ("lenet5", {}, 8),
    ("lenet5", {}, 32),
    ("vgg_small", {"width": 0.25}, 16),
    ("vgg_small", {"width": 0.25, "batch_norm": True}, 16),
    ("resnet18_cifar", {"width": 8}, 16),
    ("resnet18_imagenet", {"width": 8}, 64),  # at 32px layer4 is 1x1: BN over 4 values is ill-conditioned
    ("mobilenet", {"width": 0.25}, 16),
    ("mobilenet", {"width": 0.25, "batch_norm": False, "stem": "imagenet"}, 32),
]
# The loss comparison avoids maps that batch norm sees as a handful of values (e.g. 1x1 at batch 4): there
# float32 rounding alone (torch against torch in float64) changes the loss by percents within 3 steps.
# For the same reason MobileNet with batch norm (depthwise channels normalized over few values) is
# compared in float64 only; its float32 path is covered without batch norm.
F64, F32 = (torch.float64, 1e-9), (torch.float32, 1e-4)
LOSS_CASES = [
    ("lenet5", {}, 8, (F64, F32)),
    ("vgg_small", {"width": 0.25}, 16, (F64, F32)),
    ("vgg_small", {"width": 0.25, "batch_norm": True}, 16, (F64, F32)),
    ("resnet18_cifar", {"width": 8}, 16, (F64, F32)),
    ("resnet18_imagenet", {"width": 8}, 64, (F64, F32)),
    ("mobilenet", {"width": 0.25, "batch_norm": False}, 16, (F64, F32)),
    ("mobilenet", {"width": 0.25, "stem": "imagenet"}, 32, (F64,)),
]
LOSS_PARAMS = [pytest.param(n, kw, size, dt, tol, id=f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}-{size}px-"
                            f"{str(dt).replace('torch.', '')}")
               for n, kw, size, dts in LOSS_CASES for dt, tol in dts]


def _ids(cases):
    return [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}-{s}px" for n, kw, s in cases]


IDS = _ids(CASES)
FASTCONV_TYPES = (fastconv.nn.Conv2d, fastconv.nn.MaxPool2d, fastconv.nn.AvgPool2d)


def _pair(name, kw, size, in_channels=3, num_classes=5, dtype=torch.float32):
    torch.manual_seed(1)
    fast = build_model(name, num_classes, in_channels, size, backend="fastconv", **kw).to(dtype)
    torch.manual_seed(1)
    ref = build_model(name, num_classes, in_channels, size, backend="torch", **kw).to(dtype)
    return fast, ref


@pytest.mark.parametrize("name,kw,size", CASES, ids=IDS)
def test_same_parameters_and_initial_weights(name, kw, size):
    fast, ref = _pair(name, kw, size)
    fs, rs = fast.state_dict(), ref.state_dict()
    assert list(fs) == list(rs)
    for k in fs:
        assert torch.equal(fs[k], rs[k]), k
    # Each build is made of its own layers only.
    assert any(isinstance(m, FASTCONV_TYPES) for m in fast.modules())
    assert not any(isinstance(m, FASTCONV_TYPES) for m in ref.modules())
    # A state_dict loads both ways.
    ref.load_state_dict(fast.state_dict())
    fast.load_state_dict(ref.state_dict())


def test_conv_relu_fusion_where_conv_is_followed_by_relu():
    fast = build_model("lenet5", 10, 1, 8)
    convs = [m for m in fast.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(isinstance(m, fastconv.nn.Conv2dReLU) for m in convs)
    ref = build_model("lenet5", 10, 1, 8, backend="torch")
    assert all(type(m) is TorchConv2dReLU for m in ref.modules() if isinstance(m, nn.Conv2d))
    vgg = build_model("vgg_small", 10, 3, 32, width=0.25)
    assert all(isinstance(m, fastconv.nn.Conv2dReLU) for m in vgg.modules() if isinstance(m, nn.Conv2d))
    mob = build_model("mobilenet", 10, 3, 32, width=0.25, batch_norm=False)
    depthwise = [m for m in mob.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert all(isinstance(m, fastconv.nn.Conv2dReLU) for m in mob.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("name,kw,size,dtype,rtol", LOSS_PARAMS)
def test_same_losses_for_several_steps(backend, name, kw, size, dtype, rtol):
    """Same weights, same batches, SGD with momentum: losses agree at every step and so do the final
    weights, i.e. forward and every gradient of the fastconv build match torch's through training."""
    fast, ref = _pair(name, kw, size, dtype=dtype)
    ref.load_state_dict(fast.state_dict())
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(8, 3, size, size, generator=g, dtype=dtype), torch.randint(0, 5, (8,), generator=g))
               for _ in range(3)]
    losses = {}
    for tag, model in (("fastconv", fast), ("torch", ref)):
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        model.train()
        out = []
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            out.append(loss.item())
        losses[tag] = out
    for step, (a, b) in enumerate(zip(losses["fastconv"], losses["torch"])):
        assert abs(a - b) <= rtol * abs(b), f"step {step}: fastconv loss {a!r} vs torch {b!r} (rtol {rtol})"
    for (k, a), b in zip(fast.state_dict().items(), ref.state_dict().values()):
        if a.is_floating_point():
            scale = max(1.0, b.abs().max().item())
            torch.testing.assert_close(a, b, rtol=rtol * 10, atol=rtol * 10 * scale, msg=lambda m: f"{k}: {m}")


@pytest.mark.parametrize("name,kw,size", [CASES[0], CASES[4], CASES[6]], ids=[IDS[0], IDS[4], IDS[6]])
def test_channels_last_and_eval(backend, name, kw, size):
    fast, ref = _pair(name, kw, size)
    fast.eval()
    ref.eval()
    x = torch.randn(3, 3, size, size)
    expected = ref(x)
    torch.testing.assert_close(fast(x), expected, rtol=1e-4, atol=1e-5)
    fast = fast.to(memory_format=torch.channels_last)
    torch.testing.assert_close(fast(x.contiguous(memory_format=torch.channels_last)), expected, rtol=1e-4, atol=1e-5)


# The torchvision ImageNet architectures (full width, minimum input sizes) are tested in test_zoo_torchvision.py.
@pytest.mark.parametrize("name", [n for n in list_models() if n not in imagenet.SPECS])
@pytest.mark.parametrize("size", [8, 32])
def test_every_model_runs_at_small_and_cifar_sizes(name, size):
    kw = {"width": 4} if name.startswith("resnet18") else ({"width": 0.125} if name in ("vgg_small", "mobilenet") else {})
    with fastconv.use_backend("reference"):
        model = build_model(name, 7, 1, size, **kw)
        assert model(torch.randn(2, 1, size, size)).shape == (2, 7)


def test_resnet18_geometry():
    m = build_model("resnet18_imagenet", 1000, 3, 224, backend="torch")
    # torchvision's ResNet-18: 11,689,512 parameters, 62 parameter tensors.
    assert sum(p.numel() for p in m.parameters()) == 11_689_512
    keys = list(m.state_dict())
    assert keys[0] == "conv1.weight" and "layer2.0.downsample.0.weight" in keys and keys[-1] == "fc.bias"
    assert m.conv1.kernel_size == (7, 7) and m.conv1.stride == (2, 2)
    c = build_model("resnet18_cifar", 10, 3, 32, backend="torch")
    assert c.conv1.kernel_size == (3, 3) and c.conv1.stride == (1, 1) and isinstance(c.maxpool, nn.Identity)
    assert build_model("resnet18", 10, 3, 32).stem == "cifar"
    assert build_model("resnet18", 10, 3, 224, width=4).stem == "imagenet"


def test_lenet5_classic_geometry():
    m = build_model("lenet5", 10, 1, 32, backend="torch")
    assert m.classifier[1].in_features == 16 * 5 * 5
    assert [p.numel() for p in m.parameters()][:2] == [6 * 25, 6]


def test_errors():
    with pytest.raises(ValueError, match="unknown model 'alexnet'"):
        build_model("alexnet")
    with pytest.raises(ValueError, match="backend must be one of"):
        build_model("lenet5", backend="cpu")
    with pytest.raises(ValueError, match="stem must be"):
        build_model("resnet18", stem="tiny")
