"""fastconv.optimize: the fx rewrite that folds BatchNorm and fuses conv epilogues.

The expected fusion counts are written down from the architectures (torchvision's definitions), not read
from the code under test: per model, how many convolutions are followed by a BatchNorm, then by which
activation, and which of them end a residual branch. Every model runs with random weights and random
BatchNorm statistics and affine parameters, so that a fold that is off shows in the outputs.
"""
from __future__ import annotations

import copy
import io
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastconv
import fastconv.fusion.modules as fusion_modules
import fastconv.nn as fnn
from fastconv.fusion import FusedConv2d, OptimizeError, OptimizedModule
from fastconv.models import build_model
from helpers import assert_net_close, randomize_bn


def zoo(name: str, size: int = 32, **kw) -> nn.Module:
    if name == "googlenet":
        kw.setdefault("aux_logits", False)
    return randomize_bn(build_model(name, num_classes=10, image_size=size, backend="torch", **kw).eval())


# name -> {pattern: count} and the number of convs left unfused, from the architectures:
# resnets: stem + first conv of each block conv+bn+relu, the block's last conv takes the residual add and
# the ReLU after it, downsample projections conv+bn; SE blocks: fc1 + its activation, fc2 + the gate.
EXPECTED = {
    # stem + 8 blocks x conv1; 8 blocks end in add+relu; 3 downsample
    "tv_resnet18": ({"conv+bn+relu": 9, "conv+bn+add+relu": 8, "conv+bn": 3}, 0),
    # stem + 16 bottlenecks x (conv1, conv2); 16 x conv3 + add + relu; 4 downsample
    "resnet50": ({"conv+bn+relu": 33, "conv+bn+add+relu": 16, "conv+bn": 4}, 0),
    "resnext50_32x4d": ({"conv+bn+relu": 33, "conv+bn+add+relu": 16, "conv+bn": 4}, 0),
    # relu6: stem, the first block's depthwise, 16 blocks x (expand, depthwise), the last 1x1; 17
    # projections, 10 of them on residual blocks (stride 1, same width: 1+2+3+2+2 over the stages)
    "mobilenet_v2": ({"conv+bn+relu6": 35, "conv+bn+add": 10, "conv+bn": 7}, 0),
    # 15 bnecks: 14 expand convs (not the first), 15 depthwise, 15 projections (10 residual), stem and
    # last conv hardswish; bnecks 1-6 ReLU (5 expand + 6 dw), 7-15 hardswish (9 + 9); 8 SE blocks
    "mobilenet_v3_large": ({"conv+bn+hardswish": 20, "conv+bn+relu": 11, "conv+bn+add": 10, "conv+bn": 5,
                            "conv+relu": 8, "conv+hardsigmoid": 8}, 0),
    # 16 MBConv blocks: 15 expand + 16 depthwise + stem + head SiLU; 16 SE; 16 projections, 9 residual
    # (stochastic depth, the identity in eval, between the projection and the add)
    "efficientnet_b0": ({"conv+bn+silu": 33, "conv+silu": 16, "conv+sigmoid": 16, "conv+bn+add": 9,
                         "conv+bn": 7}, 0),
    # stem + 16 blocks x (a, b) relu; 16 x c + add + relu; 16 SE; 4 projections
    "regnet_y_400mf": ({"conv+bn+relu": 33, "conv+bn+add+relu": 16, "conv+relu": 16, "conv+sigmoid": 16,
                        "conv+bn": 4}, 0),
    # conv0 + 58 dense layers' conv1 (-> norm2 -> relu2); conv2 outputs feed concatenations (58) and the
    # 3 transitions' convs feed an average pool
    "densenet121": ({"conv+bn+relu": 59}, 61),
    # stem and downsampling convs feed LayerNorm, the depthwise convs a permute: nothing fused
    "convnext_tiny": ({}, 22),
    # conv1, conv5, 3 first blocks x 3 ReLU convs (branch1 1x1, branch2 two 1x1), 13 blocks x 2; the
    # depthwise convs (2 per first block, 1 per other) have no activation
    "shufflenet_v2_x1_0": ({"conv+bn+relu": 37, "conv+bn": 19}, 0),
    # 3 stem convs + 9 inceptions x 6 BasicConv2d
    "googlenet": ({"conv+bn+relu": 57}, 0),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_zoo_outputs_counts_and_state_dict(name):
    model = zoo(name)
    x = torch.randn(2, 3, 32, 32)
    optimized, report = fastconv.optimize(model, x, report=True)
    with torch.no_grad():
        assert_net_close(optimized(x), model(x))
    patterns, unfused = EXPECTED[name]
    assert dict(report.patterns) == patterns
    assert len(report.unfused) == unfused
    assert report.folded_bn == sum(n for p, n in patterns.items() if "+bn" in p)
    sd, osd = model.state_dict(), optimized.state_dict()
    assert list(osd) == list(sd)
    assert all(torch.equal(osd[k], sd[k]) for k in sd)
    assert optimized.fastconv_report is report


@pytest.mark.parametrize("name", ["tv_resnet18", "mobilenet_v3_large"])
def test_load_state_dict_refolds(name):
    model = zoo(name)
    x = torch.randn(1, 3, 32, 32)
    optimized = fastconv.optimize(model, x)
    with torch.no_grad():
        optimized(x)  # folded once
    g = torch.Generator().manual_seed(1)
    perturbed = {k: (v + 0.1 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v)
                 for k, v in model.state_dict().items()}
    perturbed.update({k: v.abs() + 0.5 for k, v in perturbed.items() if k.endswith("running_var")})
    reference = copy.deepcopy(model)
    reference.load_state_dict(perturbed)
    optimized.load_state_dict(perturbed)
    with torch.no_grad():
        assert_net_close(optimized(x), reference(x))
        # an in-place edit of one BatchNorm's statistics is seen too
        bn = next(m for m in reference.modules() if isinstance(m, nn.BatchNorm2d))
        bn.running_mean.add_(0.25)
        optimized.load_state_dict(reference.state_dict())
        assert_net_close(optimized(x), reference(x))


@pytest.mark.parametrize("name", ["tv_resnet18", "mobilenet_v3_large"])
def test_channels_last(name):
    model = zoo(name).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    optimized = fastconv.optimize(model, x)
    with torch.no_grad():
        assert_net_close(optimized(x), model(x))
        assert_net_close(optimized(x.contiguous()), model(x.contiguous()))


class ConvCatPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(6, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        return self.pool(torch.cat([self.conv(x), x], 1))


def test_fastconv_build_and_modules_switched():
    """A fastconv-backend build (fastconv.nn leaves) fuses the same; the pools and unfused convs of a torch
    build become fastconv's, as convert() makes them, in the result only."""
    model = randomize_bn(build_model("tv_resnet18", num_classes=10, image_size=32, backend="fastconv").eval())
    x = torch.randn(1, 3, 32, 32)
    optimized, report = fastconv.optimize(model, x, report=True)
    assert report.patterns["conv+bn+add+relu"] == 8
    model = ConvCatPool().eval()
    optimized, report = fastconv.optimize(model, torch.randn(1, 6, 8, 8), report=True)
    assert type(optimized.conv) is fnn.Conv2d and type(optimized.pool) is fnn.MaxPool2d
    assert type(model.conv) is nn.Conv2d and type(model.pool) is nn.MaxPool2d
    assert report.converted == {"Conv2d": 1, "MaxPool2d": 1} and report.unfused == {"conv": "next op: cat"}


# ----------------------------------------------------------------------------------------------------
# Patterns, one small module each


class Chain(nn.Module):
    """conv -> bn -> tail(y, x): the tail is the pattern under test."""

    def __init__(self, tail, bn=True, conv_kw=None, bn_kw=None, channels=6):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=not bn, **(conv_kw or {}))
        self.bn = nn.BatchNorm2d(channels, **(bn_kw or {})) if bn else nn.Identity()
        self.tail = tail
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.tail(self, self.bn(self.conv(x)), x)


def _iadd(m, y, x):
    y += x
    return F.relu(y)


TAILS = {
    # name: (tail, pattern fused or None)
    "ReLU(inplace=True)": (lambda m, y, x: m.act(y), "conv+bn+relu"),
    "F.relu": (lambda m, y, x: F.relu(y), "conv+bn+relu"),
    "F.relu inplace": (lambda m, y, x: F.relu(y, inplace=True), "conv+bn+relu"),
    "torch.relu": (lambda m, y, x: torch.relu(y), "conv+bn+relu"),
    "Tensor.relu_": (lambda m, y, x: y.relu_(), "conv+bn+relu"),
    "relu6": (lambda m, y, x: F.relu6(y), "conv+bn+relu6"),
    "hardtanh(0,6)": (lambda m, y, x: F.hardtanh(y, 0.0, 6.0), "conv+bn+relu6"),
    "hardtanh(-1,1)": (lambda m, y, x: F.hardtanh(y), None),
    "silu": (lambda m, y, x: F.silu(y), "conv+bn+silu"),
    "hardswish": (lambda m, y, x: F.hardswish(y), "conv+bn+hardswish"),
    "hardsigmoid": (lambda m, y, x: F.hardsigmoid(y), "conv+bn+hardsigmoid"),
    "gelu": (lambda m, y, x: F.gelu(y), "conv+bn+gelu"),
    "gelu tanh": (lambda m, y, x: F.gelu(y, approximate="tanh"), None),
    "sigmoid": (lambda m, y, x: torch.sigmoid(y), "conv+bn+sigmoid"),
    "leaky_relu": (lambda m, y, x: F.leaky_relu(y, 0.1), None),
    "add then relu": (lambda m, y, x: F.relu(y + x), "conv+bn+add+relu"),
    "residual first": (lambda m, y, x: x + y, "conv+bn+add"),
    "torch.add": (lambda m, y, x: torch.add(y, x), "conv+bn+add"),
    "Tensor.add": (lambda m, y, x: y.add(x), "conv+bn+add"),
    "add alpha": (lambda m, y, x: torch.add(y, x, alpha=2), None),
    "iadd then relu": (_iadd, "conv+bn+add+relu"),
    "relu then add": (lambda m, y, x: F.relu(y) + x, "conv+bn+relu+add"),
    "broadcast add": (lambda m, y, x: y + x.mean((2, 3), keepdim=True), None),
    "scalar add": (lambda m, y, x: y + 1.0, None),
    "two users": (lambda m, y, x: F.relu(y) * y, None),
    "add self": (lambda m, y, x: y + y, None),
}


@pytest.mark.parametrize("tail", list(TAILS))
def test_pattern(tail):
    fn, pattern = TAILS[tail]
    model = randomize_bn(Chain(fn).eval())
    x = torch.randn(2, 6, 7, 5)
    optimized, report = fastconv.optimize(model, x, report=True)
    with torch.no_grad():
        assert_net_close(optimized(x), model(x))
    if pattern is None:
        # the conv still folds its BatchNorm when the next op is not fusable; nothing more
        assert list(report.patterns) in (["conv+bn"], []), report.patterns
    else:
        assert list(report.patterns) == [pattern], report.summary()


@pytest.mark.parametrize("case", ["bias", "affine=False", "reflect", "circular", "groups", "stride2 dilation2",
                                  "no bn"])
def test_conv_and_bn_variants(case):
    conv_kw, bn_kw, bn, channels = {}, {}, True, 6
    if case == "affine=False":
        bn_kw = {"affine": False}
    elif case in ("reflect", "circular"):
        conv_kw = {"padding_mode": case}
    elif case == "groups":
        conv_kw = {"groups": 3}
    elif case == "stride2 dilation2":
        conv_kw = {"stride": 2, "dilation": 2}
    elif case == "no bn":
        bn = False
    model = Chain(lambda m, y, x: F.silu(y), bn=bn, conv_kw=conv_kw, bn_kw=bn_kw, channels=channels)
    if case == "bias":
        model.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=True)
    model = randomize_bn(model.eval())
    x = torch.randn(2, channels, 9, 8)
    optimized, report = fastconv.optimize(model, x, report=True)
    with torch.no_grad():
        assert_net_close(optimized(x), model(x))
    assert list(report.patterns) == (["conv+bn+silu"] if bn else ["conv+silu"])


@pytest.mark.parametrize("case", ["training", "no running stats"])
def test_bn_not_folded(case):
    model = Chain(lambda m, y, x: F.relu(y)).eval()
    if case == "training":
        model.bn.train()
    else:
        model.bn = nn.BatchNorm2d(6, track_running_stats=False).eval()
    randomize_bn(model)
    x = torch.randn(2, 6, 5, 5)
    optimized, report = fastconv.optimize(model, x, report=True)
    assert not report.fused
    assert "BatchNorm" in report.unfused["conv"]
    with torch.no_grad():
        assert_net_close(optimized(x), Chain.forward(model, x))


class MutatesInput(nn.Module):
    """The conv's input is written in place before the BatchNorm: a fused call at the BatchNorm's position
    would read the written value."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        x = x * 1.0
        y = self.conv(x)
        x.relu_()
        return self.bn(y) + x


def test_in_place_write_between_stops_the_chain():
    model = randomize_bn(MutatesInput().eval())
    x = torch.randn(1, 4, 6, 6)
    optimized, report = fastconv.optimize(model, x, report=True)
    with torch.no_grad():
        assert_net_close(optimized(x), model(x))
    assert not report.fused and "in place" in report.unfused["conv"]


def test_eval_identities_removed():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Identity(), nn.ReLU())
    model = randomize_bn(model.eval())
    x = torch.randn(1, 3, 8, 8)
    optimized, report = fastconv.optimize(model, x, report=True)
    assert dict(report.patterns) == {"conv+bn+relu": 1}
    assert dict(report.removed) == {"Dropout": 1, "Identity": 1}


# ----------------------------------------------------------------------------------------------------
# The contract: eval mode, a copy unless inplace, check, fallback, errors


def test_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval.*torch.compile"):
        fastconv.optimize(zoo("tv_resnet18").train(), torch.randn(1, 3, 32, 32))


def test_original_untouched_unless_inplace():
    model = zoo("tv_resnet18")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 32, 32)
    optimized = fastconv.optimize(model, x)
    assert type(model.conv1) is nn.Conv2d and type(model.maxpool) is nn.MaxPool2d
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert optimized.conv1.weight is not model.conv1.weight
    shared = fastconv.optimize(model, x, inplace=True)
    assert shared.conv1.weight is model.conv1.weight
    with torch.no_grad():
        assert_net_close(model(x), shared(x))  # model itself still computes the same


def test_check_catches_a_wrong_fold(monkeypatch):
    """A fold that forgets the BatchNorm is caught, and the error names the first fused node that differs."""
    monkeypatch.setattr(fusion_modules, "fold_bn", lambda weight, bias, *rest, **kw: (weight, bias))
    model = zoo("tv_resnet18")
    with pytest.raises(OptimizeError, match=r"first fused node that differs.*fastconv_fused\.conv1 .*bn=bn1"):
        fastconv.optimize(model, torch.randn(1, 3, 32, 32))


def test_check_catches_an_unfaithful_trace():
    """torch.fx traces the class's forward; an instance whose forward was replaced computes something else,
    and check=True says so instead of returning the trace."""
    model = ConvCatPool().eval()
    model.forward = lambda x: torch.cat([model.conv(x), x], 1)
    with pytest.raises(OptimizeError, match="does not compute what the original does"):
        fastconv.optimize(model, torch.randn(1, 6, 8, 8))


class Untraceable(nn.Module):
    """Python control flow on a tensor value in forward; its children trace."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.stem(x)
        if y.mean() > 0:  # data-dependent
            y = y + self.body(y)
        return self.head(y)


def test_fallback_per_submodule_warns():
    model = randomize_bn(Untraceable().eval())
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(UserWarning, match=r"cannot trace Untraceable as a whole \(TraceError.*stem, body"):
        optimized, report = fastconv.optimize(model, x, report=True)
    with torch.no_grad():
        assert_net_close(optimized(x), model(x))
    assert type(optimized) is Untraceable and isinstance(optimized.stem, OptimizedModule)
    assert dict(report.patterns) == {"conv+bn+relu": 1, "conv+bn": 1}
    assert report.submodules == ["stem", "body"] and type(optimized.head) is fnn.Conv2d
    sd = model.state_dict()
    assert list(optimized.state_dict()) == list(sd)


def test_nothing_traces_raises():
    class Branchy(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    with pytest.raises(OptimizeError, match="cannot trace Branchy.*torch.compile"):
        fastconv.optimize(Branchy().eval(), torch.randn(1, 3, 4, 4))


def test_report_summary_and_log(caplog):
    with caplog.at_level(logging.INFO, logger="fastconv"):
        optimized = fastconv.optimize(zoo("mobilenet_v2"), torch.randn(1, 3, 32, 32))
    text = optimized.fastconv_report.summary()
    assert "52 convs fused (52 BatchNorms folded)" in text and "35  conv+bn+relu6" in text
    assert text in caplog.text


# ----------------------------------------------------------------------------------------------------
# The optimized module


def test_copy_pickle_and_autograd():
    model = zoo("tv_resnet18")
    x = torch.randn(2, 3, 32, 32)
    optimized = fastconv.optimize(model, x)
    with torch.no_grad():
        ref = model(x)
    clone = copy.deepcopy(optimized)
    buf = io.BytesIO()
    torch.save(optimized, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    for other in (clone, loaded):
        assert list(other.state_dict()) == list(model.state_dict())
        with torch.no_grad():
            assert_net_close(other(x), ref)
    # under autograd (eval mode): gradients reach the original parameters, BatchNorm's included
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    optimized(xa).square().sum().backward()
    model(xb).square().sum().backward()
    assert_net_close(xa.grad, xb.grad, "input gradient")
    for (name, p), q in zip(optimized.named_parameters(), model.parameters()):
        assert_net_close(p.grad, q.grad, f"{name} gradient", tol=1e-3)
    with pytest.raises(RuntimeError, match="for inference"):
        optimized.train()


def test_fused_module_repr_and_folding():
    conv, bn = nn.Conv2d(3, 4, 3, bias=False), randomize_bn(nn.BatchNorm2d(4).eval())
    fused = FusedConv2d(conv, bn, "relu", "before", conv_name="a.conv", bn_name="a.bn")
    assert repr(fused) == "FusedConv2d(conv=a.conv, bn=a.bn (folded), activation=relu, residual=before)"
    x, r = torch.randn(1, 3, 6, 6), torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        assert_net_close(fused(x, r), F.relu(bn(conv(x)) + r))
        w = fused.weight
        fused(x, r)
        assert fused.weight is w  # cached
        conv.weight.mul_(2)
        assert_net_close(fused(x, r), F.relu(bn(conv(x)) + r))
        assert fused.weight is not w
    assert fused.state_dict() == {}
