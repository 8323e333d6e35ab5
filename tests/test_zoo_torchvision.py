"""fastconv.models.imagenet: torchvision's ImageNet architectures with torchvision's state_dicts.

The expectations are written down from torchvision's definitions and weight metadata, not read from the
code under test: the parameter counts are the `num_params` of torchvision's ImageNet weights, the
state_dict sizes are counted from the module trees (the formula is next to each number), and the spot
keys and shapes are those of torchvision's checkpoints. Then, per model: a torch-backend state_dict saved
with torch.save loads with strict=True into the fastconv build and both give the same eval outputs;
the same seed gives both builds the same weights; a train-mode step runs on the fastconv build;
torch.fx traces it; in_channels changes the stem only; the smallest input torchvision documents works.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

import fastconv
from fastconv.models import AdaptiveAvgPool2d, build_model, list_models
from fastconv.models.imagenet import SPECS, GoogLeNetOutputs, regnet_stages
from fastconv.models.imagenet.blocks import StochasticDepth, stochastic_depth

# name: (torchvision num_params, state_dict entries, {key: shape}). A conv with BN is 1 + 5 entries (BN:
# weight, bias, running_mean, running_var, num_batches_tracked), a linear or biased conv 2, an SE 4.
GEOMETRY = {
    # 20 conv+BN (stem, 8 blocks x 2, 3 downsample) + fc
    "tv_resnet18": (11_689_512, 20 * 6 + 2, {
        "conv1.weight": (64, 3, 7, 7), "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer4.1.bn2.running_var": (512,), "fc.weight": (1000, 512)}),
    # 53 conv+BN (stem, 16 bottlenecks x 3, 4 downsample) + fc
    "resnet50": (25_557_032, 53 * 6 + 2, {
        "layer1.0.downsample.0.weight": (256, 64, 1, 1), "layer3.5.conv2.weight": (256, 256, 3, 3),
        "layer4.2.bn3.running_var": (2048,), "fc.weight": (1000, 2048)}),
    # ResNet-50's tree; the 3x3 convs grouped (32 groups of 4-32 channels), bottlenecks twice as wide
    "resnext50_32x4d": (25_028_904, 53 * 6 + 2, {
        "layer1.0.conv1.weight": (128, 64, 1, 1), "layer1.0.conv2.weight": (128, 4, 3, 3),
        "layer3.5.conv2.weight": (512, 16, 3, 3), "layer4.0.conv2.weight": (1024, 32, 3, 3),
        "layer4.2.conv3.weight": (2048, 1024, 1, 1), "fc.weight": (1000, 2048)}),
    # 52 conv+BN (stem, first block 2, 16 blocks x 3, head) + classifier linear
    "mobilenet_v2": (3_504_872, 52 * 6 + 2, {
        "features.1.conv.0.0.weight": (32, 1, 3, 3), "features.1.conv.1.weight": (16, 32, 1, 1),
        "features.2.conv.0.0.weight": (96, 16, 1, 1), "features.17.conv.3.running_mean": (320,),
        "features.18.0.weight": (1280, 320, 1, 1), "classifier.1.weight": (1000, 1280)}),
    # 46 conv+BN (stem, first block 2, 14 blocks x 3, head) + 8 SE + 2 linears
    "mobilenet_v3_large": (5_483_032, 46 * 6 + 8 * 4 + 2 * 2, {
        "features.0.0.weight": (16, 3, 3, 3), "features.1.block.0.0.weight": (16, 1, 3, 3),
        "features.4.block.2.fc1.weight": (24, 72, 1, 1), "features.4.block.1.0.weight": (72, 1, 5, 5),
        "features.16.0.weight": (960, 160, 1, 1), "classifier.0.weight": (1280, 960),
        "classifier.3.weight": (1000, 1280)}),
    # 49 conv+BN (stem, first block 2, 15 blocks x 3, head) + 16 SE + classifier linear
    "efficientnet_b0": (5_288_548, 49 * 6 + 16 * 4 + 2, {
        "features.0.0.weight": (32, 3, 3, 3), "features.1.0.block.0.0.weight": (32, 1, 3, 3),
        "features.1.0.block.1.fc1.weight": (8, 32, 1, 1), "features.1.0.block.2.0.weight": (16, 32, 1, 1),
        "features.2.0.block.0.0.weight": (96, 16, 1, 1), "features.8.0.weight": (1280, 320, 1, 1),
        "classifier.1.weight": (1000, 1280)}),
    # 53 conv+BN (stem, 16 blocks x 3, 4 projections) + 16 SE + fc
    "regnet_y_400mf": (4_344_144, 53 * 6 + 16 * 4 + 2, {
        "stem.0.weight": (32, 3, 3, 3), "trunk_output.block1.block1-0.proj.0.weight": (48, 32, 1, 1),
        "trunk_output.block1.block1-0.f.b.0.weight": (48, 8, 3, 3),
        "trunk_output.block1.block1-0.f.se.fc1.weight": (8, 48, 1, 1),
        "trunk_output.block4.block4-5.f.c.1.running_var": (440,), "fc.weight": (1000, 440)}),
    # 120 convs (conv0, 58 dense layers x 2, 3 transitions), 121 BNs (norm0, 58 x 2, 3, norm5), classifier
    "densenet121": (7_978_856, 120 + 121 * 5 + 2, {
        "features.conv0.weight": (64, 3, 7, 7), "features.denseblock1.denselayer1.conv1.weight": (128, 64, 1, 1),
        "features.transition1.conv.weight": (128, 256, 1, 1),
        "features.denseblock4.denselayer16.norm1.running_var": (992,),
        "features.denseblock4.denselayer16.conv2.weight": (32, 128, 3, 3), "features.norm5.weight": (1024,),
        "classifier.weight": (1000, 1024)}),
    # stem conv+LN 4, 18 blocks x 9 (dwconv 2, LN 2, 2 linears 4, layer_scale), 3 downsamples x 4, head LN+fc 4
    "convnext_tiny": (28_589_128, 4 + 18 * 9 + 3 * 4 + 4, {
        "features.0.0.weight": (96, 3, 4, 4), "features.0.1.weight": (96,),
        "features.1.0.block.0.weight": (96, 1, 7, 7), "features.1.0.layer_scale": (96, 1, 1),
        "features.1.0.block.3.weight": (384, 96), "features.2.0.weight": (96,),
        "features.2.1.weight": (192, 96, 2, 2), "features.5.8.block.5.weight": (384, 1536),
        "classifier.0.weight": (768,), "classifier.2.weight": (1000, 768)}),
    # 56 conv+BN (conv1, 3 stride-2 units x 5, 13 units x 3, conv5) + fc
    "shufflenet_v2_x1_0": (2_278_604, 56 * 6 + 2, {
        "conv1.0.weight": (24, 3, 3, 3), "stage2.0.branch1.0.weight": (24, 1, 3, 3),
        "stage2.0.branch1.2.weight": (58, 24, 1, 1), "stage2.1.branch2.0.weight": (58, 58, 1, 1),
        "stage4.3.branch2.6.running_var": (232,), "conv5.0.weight": (1024, 464, 1, 1), "fc.weight": (1000, 1024)}),
    # 57 BasicConv2d (3 + 9 inception modules x 6) + fc; aux_logits=False as torchvision's weights
    "googlenet": (6_624_904, 57 * 6 + 2, {
        "conv1.conv.weight": (64, 3, 7, 7), "conv1.bn.running_var": (64,),
        "inception3a.branch1.conv.weight": (64, 192, 1, 1), "inception3a.branch3.1.conv.weight": (32, 16, 3, 3),
        "inception3a.branch4.1.conv.weight": (32, 192, 1, 1), "inception5b.branch2.1.conv.weight": (384, 192, 3, 3),
        "fc.weight": (1000, 1024)}),
    # 8 biased convs + 3 linears
    "vgg11": (132_863_336, 8 * 2 + 3 * 2, {
        "features.0.weight": (64, 3, 3, 3), "features.3.weight": (128, 64, 3, 3),
        "features.18.weight": (512, 512, 3, 3), "classifier.0.weight": (4096, 25088),
        "classifier.6.weight": (1000, 4096)}),
}
NAMES = list(GEOMETRY)
# The smallest input side torchvision documents (weights meta "min_size"); 1 for the others.
MIN_SIZE = {"googlenet": 15, "densenet121": 29, "convnext_tiny": 32, "vgg11": 32}
# The stem convolution, the one layer in_channels changes.
STEM = {"tv_resnet18": "conv1.weight", "resnet50": "conv1.weight", "resnext50_32x4d": "conv1.weight",
        "mobilenet_v2": "features.0.0.weight",
        "mobilenet_v3_large": "features.0.0.weight", "efficientnet_b0": "features.0.0.weight",
        "regnet_y_400mf": "stem.0.weight", "densenet121": "features.conv0.weight",
        "convnext_tiny": "features.0.0.weight", "shufflenet_v2_x1_0": "conv1.0.weight",
        "googlenet": "conv1.conv.weight", "vgg11": "features.0.weight"}
FASTCONV_TYPES = (fastconv.nn.Conv2d, fastconv.nn.MaxPool2d, fastconv.nn.AvgPool2d, AdaptiveAvgPool2d)


def _kw(name, **kw):
    # GoogLeNet as torchvision's ImageNet weights have it, unless a test asks for the aux heads.
    return {"aux_logits": False, **kw} if name == "googlenet" else kw


def _build(name, backend, seed=0, num_classes=10, in_channels=3, image_size=64, **kw):
    torch.manual_seed(seed)
    return build_model(name, num_classes, in_channels, image_size, backend=backend, **_kw(name, **kw))


def _randomize_norms(model, seed=1):
    """Random BN/LN affine parameters and running statistics, and layer scales of order 1, so that eval
    mode exercises them (freshly initialized they are close to the identity); linear biases zero, so
    that the outputs come from the features (at initialization GoogLeNet's and ShuffleNet's features
    fade out in eval mode and both builds would output just the classifier bias)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.bias.zero_()
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.1, generator=g)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
        for key, p in model.named_parameters():
            if key.endswith("layer_scale"):
                p.uniform_(0.5, 1.0, generator=g)


class LeafConvPoolTracer(torch.fx.Tracer):
    """Keeps conv and pool modules (fastconv.nn's included) as leaves: fastconv's functional layer checks
    its arguments' types, which an fx Proxy is not, so the tracer must not descend into it."""

    def is_leaf_module(self, m, qualname):
        return isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)) or \
            super().is_leaf_module(m, qualname)


def _close(ours, ref, what):
    scale = ref.abs().max().item()
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5 * max(scale, 1e-3), msg=lambda m: f"{what}: {m}")


def test_registered_names():
    names = list_models()
    assert set(NAMES) <= set(names) and set(NAMES) == set(SPECS)
    # The original zoo keeps its names and meanings.
    assert names[:6] == ["lenet5", "vgg_small", "resnet18", "resnet18_cifar", "resnet18_imagenet", "mobilenet"]


@pytest.mark.parametrize("name", NAMES)
def test_torchvision_parameters_and_state_dict_keys(name):
    num_params, entries, spots = GEOMETRY[name]
    model = _build(name, "torch", num_classes=1000, image_size=224)
    assert sum(p.numel() for p in model.parameters()) == num_params
    sd = model.state_dict()
    assert len(sd) == entries
    for key, shape in spots.items():
        assert key in sd, f"{key} missing; near: {[k for k in sd if k.split('.')[0] == key.split('.')[0]][:8]}"
        assert tuple(sd[key].shape) == shape, key


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_file_loads_strict_and_outputs_match(backend, name, tmp_path):
    fast, ref = _build(name, "fastconv"), _build(name, "torch")
    # Same seed, same modules in the same order: the same initial weights and the same keys.
    fs, rs = fast.state_dict(), ref.state_dict()
    assert list(fs) == list(rs)
    for key in fs:
        assert torch.equal(fs[key], rs[key]), key
    assert any(isinstance(m, FASTCONV_TYPES) for m in fast.modules())
    assert not any(isinstance(m, FASTCONV_TYPES) for m in ref.modules())

    x = torch.randn(1, 3, 64, 64)
    fast.eval()
    ref.eval()
    with torch.no_grad():
        _close(fast(x), ref(x), "same seed")

        # A torch-backend checkpoint on disk into a fastconv build of another seed, strict.
        _randomize_norms(ref)
        torch.save(ref.state_dict(), tmp_path / "tv.pt")
        loaded = _build(name, "fastconv", seed=5)
        result = loaded.load_state_dict(torch.load(tmp_path / "tv.pt", weights_only=True), strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        loaded.eval()
        expected = ref(x)
        assert expected.abs().max() > 1e-3
        _close(loaded(x), expected, "loaded checkpoint")

        # torch.fx: the torch build traces as is (and replays it exactly: eval has no randomness); the
        # fastconv build with conv/pool modules as leaves.
        traced = torch.fx.symbolic_trace(ref)
        torch.testing.assert_close(traced(x), expected, rtol=0, atol=0)
        traced_fast = torch.fx.GraphModule(loaded, LeafConvPoolTracer().trace(loaded))
        _close(traced_fast(x), expected, "traced fastconv build")


@pytest.mark.parametrize("name", NAMES)
def test_train_step_on_fastconv(backend, name):
    model = _build(name, "fastconv", image_size=32, **({"aux_logits": True} if name == "googlenet" else {}))
    model.train()
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 7])
    out = model(x)
    if name == "googlenet":
        assert isinstance(out, GoogLeNetOutputs)
        loss = F.cross_entropy(out.logits, y) + 0.3 * (F.cross_entropy(out.aux_logits1, y) +
                                                       F.cross_entropy(out.aux_logits2, y))
    else:
        assert out.shape == (2, 10)
        loss = F.cross_entropy(out, y)
    loss.backward()
    for key, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), key
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.num_batches_tracked.item() == 1 for m in bns)


@pytest.mark.parametrize("name", NAMES)
def test_in_channels_changes_the_stem_only_and_smallest_input(backend, name):
    size = MIN_SIZE.get(name, 1)
    three = _build(name, "torch", image_size=size).state_dict()
    one = _build(name, "fastconv", in_channels=1, image_size=size)
    changed = [k for k, v in one.state_dict().items() if v.shape != three[k].shape]
    assert changed == [STEM[name]] and one.state_dict()[STEM[name]].shape[1] == 1
    one.eval()
    with torch.no_grad():
        assert one(torch.randn(1, 1, size, size)).shape == (1, 10)
    if size > 1:
        with pytest.raises(ValueError, match=f"at least {size}x{size}"):
            build_model(name, 10, 1, size - 1)


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "convnext_tiny", "shufflenet_v2_x1_0"])
def test_channels_last(backend, name):
    fast, ref = _build(name, "fastconv").eval(), _build(name, "torch").eval()
    _randomize_norms(ref)
    fast.load_state_dict(ref.state_dict())
    fast = fast.to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        _close(fast(x.contiguous(memory_format=torch.channels_last)), ref(x), "channels_last")


def test_resnet18_imagenet_takes_torchvision_resnet18_weights():
    """The small zoo's resnet18_imagenet predates tv_resnet18 and has the same state_dict and eval outputs."""
    tv = _build("tv_resnet18", "torch", num_classes=1000, image_size=224).eval()
    _randomize_norms(tv)
    old = build_model("resnet18_imagenet", 1000, 3, 224, backend="torch").eval()
    old.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        _close(old(x), tv(x), "resnet18_imagenet")


# (key, expected std as torchvision initializes it, from the shape). Kaiming-normal with ReLU gain:
# sqrt(2 / fan), fan_out = out * kh * kw or fan_in = in * kh * kw; PyTorch's default conv/linear init is
# U(+-1/sqrt(fan_in)), std 1/sqrt(3 fan_in).
INIT_STD = {
    "tv_resnet18": [("layer3.0.conv1.weight", math.sqrt(2 / (256 * 9))), ("fc.weight", 1 / math.sqrt(3 * 512))],
    "resnet50": [("layer3.0.conv2.weight", math.sqrt(2 / (256 * 9))), ("fc.weight", 1 / math.sqrt(3 * 2048))],
    "resnext50_32x4d": [("layer3.0.conv2.weight", math.sqrt(2 / (512 * 9))),
                        ("fc.weight", 1 / math.sqrt(3 * 2048))],
    "mobilenet_v2": [("features.18.0.weight", math.sqrt(2 / 1280)), ("classifier.1.weight", 0.01)],
    "mobilenet_v3_large": [("features.16.0.weight", math.sqrt(2 / 960)), ("classifier.0.weight", 0.01)],
    "efficientnet_b0": [("features.8.0.weight", math.sqrt(2 / 1280)),
                        ("classifier.1.weight", 1 / math.sqrt(3 * 1000))],
    "regnet_y_400mf": [("trunk_output.block4.block4-0.f.a.0.weight", math.sqrt(2 / 440)), ("fc.weight", 0.01)],
    "densenet121": [("features.denseblock3.denselayer24.conv1.weight", math.sqrt(2 / 992)),
                    ("classifier.weight", 1 / math.sqrt(3 * 1024))],
    "convnext_tiny": [("features.5.0.block.3.weight", 0.02), ("features.4.1.weight", 0.02)],
    "shufflenet_v2_x1_0": [("conv5.0.weight", 1 / math.sqrt(3 * 464))],
    "googlenet": [("inception4e.branch2.1.conv.weight", 0.01), ("fc.weight", 0.01)],
    "vgg11": [("features.16.weight", math.sqrt(2 / (512 * 9))), ("classifier.3.weight", 0.01)],
}
# Biases torchvision sets to zero (the others keep PyTorch's default).
ZERO_BIAS = {"mobilenet_v2": "classifier.1.bias", "mobilenet_v3_large": "features.4.block.2.fc1.bias",
             "efficientnet_b0": "features.1.0.block.1.fc2.bias", "regnet_y_400mf": "fc.bias",
             "densenet121": "classifier.bias", "convnext_tiny": "features.1.0.block.0.bias", "vgg11": "features.0.bias"}


@pytest.mark.parametrize("name", NAMES)
def test_torchvision_initialization(name):
    model = _build(name, "torch", num_classes=1000, image_size=224)
    sd = model.state_dict()
    for key, std in INIT_STD[name]:
        assert sd[key].float().std().item() == pytest.approx(std, rel=0.05), key
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    if name in ZERO_BIAS:
        assert torch.all(sd[ZERO_BIAS[name]] == 0)
    if name == "regnet_y_400mf":  # the SE convs' biases keep PyTorch's default
        assert sd["trunk_output.block1.block1-0.f.se.fc1.bias"].abs().max() > 0
    if name == "convnext_tiny":
        assert all(torch.all(p == 1e-6) for k, p in sd.items() if k.endswith("layer_scale"))


def test_hyperparameters_as_torchvision():
    v3 = build_model("mobilenet_v3_large", backend="torch")
    assert all(m.eps == 1e-3 and m.momentum == 0.01 for m in v3.modules() if isinstance(m, nn.BatchNorm2d))
    assert isinstance(v3.features[4].block[2].scale_activation, nn.Hardsigmoid)
    g = build_model("googlenet", backend="torch")
    assert all(m.eps == 1e-3 for m in g.modules() if isinstance(m, nn.BatchNorm2d))
    assert g.transform_input is False and g.aux_logits is True
    c = build_model("convnext_tiny", backend="torch")
    assert all(m.eps == 1e-6 for m in c.modules() if isinstance(m, nn.LayerNorm))
    # Stochastic depth grows linearly with the block index: EfficientNet 0.2 * i / 16, ConvNeXt 0.1 * i / 17.
    e = build_model("efficientnet_b0", backend="torch")
    assert [m.p for m in e.modules() if isinstance(m, StochasticDepth)] == [0.2 * i / 16 for i in range(16)]
    assert [m.p for m in c.modules() if isinstance(m, StochasticDepth)] == [0.1 * i / 17.0 for i in range(18)]
    assert [m.p for m in e.modules() if isinstance(m, nn.Dropout)] == [0.2]
    assert [m.p for m in build_model("vgg11", backend="torch").modules() if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    # RegNetY-400MF's stages, from the paper's quantized linear rule.
    assert regnet_stages(16, 48, 27.89, 2.09, 8) == ([1, 3, 6, 6], [48, 104, 208, 440], [8, 8, 8, 8])


def test_googlenet_aux_heads_and_transform_input(backend):
    # torchvision's googlenet() without weights: aux_logits=True, two aux heads of
    # BasicConv2d 1x1 (in*128 + 2*128) + fc 2048->1024 + fc 1024->classes.
    aux = 2 * (128 * 2 + 2048 * 1024 + 1024 + 1024 * 1000 + 1000) + (512 + 528) * 128
    full = _build("googlenet", "fastconv", num_classes=1000, image_size=224, aux_logits=True)
    assert sum(p.numel() for p in full.parameters()) == 6_624_904 + aux
    model = _build("googlenet", "fastconv", image_size=32, aux_logits=True)
    heads = {}
    model.aux1.register_forward_hook(lambda m, i, o: heads.__setitem__("aux1", o))
    model.aux2.register_forward_hook(lambda m, i, o: heads.__setitem__("aux2", o))
    x = torch.randn(2, 3, 32, 32)
    out = model.train()(x)
    assert isinstance(out, GoogLeNetOutputs) and out.logits.shape == (2, 10)
    # torchvision returns the aux1 head's output in the aux_logits2 field and aux2's in aux_logits1.
    assert out.aux_logits2 is heads["aux1"] and out.aux_logits1 is heads["aux2"]
    heads.clear()
    model.eval()
    with torch.no_grad():
        y = model(x)
        assert isinstance(y, torch.Tensor) and not heads  # eval: logits only, aux heads not run
        # transform_input=True is the per-channel affine map of torchvision's ported weights.
        t = _build("googlenet", "fastconv", image_size=32, aux_logits=True, transform_input=True)
        t.load_state_dict(model.state_dict())
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        x_t = (x * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1) - 0.5) / 0.5
        _close(t.eval()(x), model(x_t), "transform_input")
    # Without aux heads the state_dict is the layout of torchvision's ImageNet weights.
    plain = _build("googlenet", "fastconv", image_size=32)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("aux")})
    assert plain.train()(x).shape == (2, 10)
    with pytest.raises(ValueError, match="in_channels must be 3"):
        build_model("googlenet", in_channels=1, transform_input=True)


def test_stochastic_depth():
    x = torch.randn(64, 3, 2, 2)
    assert stochastic_depth(x, 0.5, "row", training=False) is x
    assert stochastic_depth(x, 0.0, "row", training=True) is x
    assert torch.all(stochastic_depth(x, 1.0, "row") == 0)
    y = stochastic_depth(x, 0.5, "row")
    kept = (y != 0).flatten(1).any(1)
    assert 0 < kept.sum() < 64  # whole samples dropped, survivors scaled by 1 / (1 - p)
    torch.testing.assert_close(y[kept], x[kept] * 2)
    b = stochastic_depth(x, 0.5, "batch")
    assert torch.all(b == 0) or torch.equal(b, x * 2)
    with pytest.raises(ValueError, match="mode"):
        stochastic_depth(x, 0.5, "col")
    # An fx leaf, as torchvision's is: traced models call it instead of baking its shape arithmetic in.
    graph = torch.fx.symbolic_trace(build_model("efficientnet_b0", backend="torch")).graph
    assert sum(n.op == "call_function" and n.target is stochastic_depth for n in graph.nodes) == 9


@pytest.mark.parametrize("size,out", [(14, 1), (14, 7), (14, (7, 2)), (14, 4), (5, (None, 2)), (1, 7)])
def test_adaptive_avg_pool2d(backend, size, out):
    """fastconv's avg_pool2d where the windows are uniform, torch's adaptive pooling where not."""
    x = torch.randn(2, 5, size, size + 2, requires_grad=True)
    ours, ref = AdaptiveAvgPool2d(out)(x), nn.AdaptiveAvgPool2d(out)(x)
    _close(ours, ref, "forward")
    g = torch.randn_like(ref)
    _close(torch.autograd.grad(ours, x, g)[0], torch.autograd.grad(ref, x, g)[0], "grad")


def test_train_command(tmp_path):
    pytest.importorskip("sklearn")
    from fastconv.cli.train import run_train
    from fastconv.training.engine import ConfigError

    tiny = ["--dataset", "digits", "--epochs", "1", "--train-subset", "64", "--test-subset", "32",
            "--progress", "off"]
    m = run_train(["--model", "mobilenet_v2", "--out", str(tmp_path / "a"), *tiny])  # 8x8 digits
    assert m["model"] == "mobilenet_v2" and m["test_total"] == 32
    m = run_train(["--model", "googlenet", "--image-size", "16", "--out", str(tmp_path / "b"), *tiny])
    assert m["num_parameters"] == 6_624_904 - 1000 * 1024 - 1000 + 10 * 1024 + 10 - 3 * 64 * 49 + 64 * 49
    with pytest.raises(ConfigError, match="at least 32x32"):
        run_train(["--model", "vgg11", "--out", str(tmp_path / "c"), *tiny])
    with pytest.raises(ConfigError, match="no channel-width multiplier"):
        run_train(["--model", "resnet50", "--width", "0.5", "--out", str(tmp_path / "d"), *tiny])
