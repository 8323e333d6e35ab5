"""MobileNetV2 (Sandler et al. 2018) and MobileNetV3-Large (Howard et al. 2019) as torchvision defines
them: a stride-2 stem, inverted residual blocks (1x1 expand -> depthwise kxk -> [squeeze-excitation] ->
1x1 linear projection, plus the input when shapes allow), a 1x1 head conv, global pooling, classifier.

MobileNetV2: ReLU6 everywhere, BN eps 1e-5; classifier Dropout(0.2) -> Linear(1280, classes).
MobileNetV3-Large: ReLU or Hardswish per block, SE gated by Hardsigmoid on some blocks, BN eps 1e-3 and
momentum 0.01; classifier Linear(960, 1280) -> Hardswish -> Dropout(0.2) -> Linear(1280, classes).
Initialization (both, as torchvision): convs Kaiming-normal fan_out, conv biases 0, BN 1/0, linear
weights N(0, 0.01), biases 0. width_mult scales the channels (rounded to multiples of 8). Any input of
at least 1x1 works (every strided conv is padded; the pooling is adaptive).
"""
from __future__ import annotations

from functools import partial
from typing import List, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import Layers
from .blocks import ConvNormActivation, SqueezeExcitation, make_divisible

# MobileNetV2 stages: expansion t, output channels c, blocks n, stride of the first block s.
V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
             (6, 320, 1, 1))


class InvertedResidualV2(nn.Module):
    def __init__(self, L: Layers, c_in: int, c_out: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(c_in * expand_ratio))
        self.stride = stride
        self.use_res_connect = stride == 1 and c_in == c_out
        layers: List[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvNormActivation(L, c_in, hidden, 1, activation_layer=nn.ReLU6))
        layers += [ConvNormActivation(L, hidden, hidden, 3, stride, groups=hidden, activation_layer=nn.ReLU6),
                   L.Conv2d(hidden, c_out, 1, bias=False),
                   nn.BatchNorm2d(c_out)]
        self.conv = nn.Sequential(*layers)
        self.out_channels = c_out

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                 dropout: float = 0.2, backend: str = "fastconv"):
        super().__init__()
        L = Layers(backend)
        c = make_divisible(32 * width_mult)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult))
        features: List[nn.Module] = [ConvNormActivation(L, in_channels, c, 3, 2, activation_layer=nn.ReLU6)]
        for t, c_stage, n, s in V2_STAGES:
            c_out = make_divisible(c_stage * width_mult)
            for i in range(n):
                features.append(InvertedResidualV2(L, c, c_out, s if i == 0 else 1, t))
                c = c_out
        features.append(ConvNormActivation(L, c, self.last_channel, 1, activation_layer=nn.ReLU6))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        _init_mobilenet(self)

    def forward(self, x: Tensor) -> Tensor:
        # torchvision pools functionally here (no module): torch's adaptive pooling in both backends
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


class V3Block(NamedTuple):
    c_in: int
    kernel: int
    expanded: int
    c_out: int
    use_se: bool
    hardswish: bool  # else ReLU
    stride: int


# MobileNetV3-Large, Table 1 of the paper (dilation 1, full tail).
V3_LARGE = (
    V3Block(16, 3, 16, 16, False, False, 1),
    V3Block(16, 3, 64, 24, False, False, 2),
    V3Block(24, 3, 72, 24, False, False, 1),
    V3Block(24, 5, 72, 40, True, False, 2),
    V3Block(40, 5, 120, 40, True, False, 1),
    V3Block(40, 5, 120, 40, True, False, 1),
    V3Block(40, 3, 240, 80, False, True, 2),
    V3Block(80, 3, 200, 80, False, True, 1),
    V3Block(80, 3, 184, 80, False, True, 1),
    V3Block(80, 3, 184, 80, False, True, 1),
    V3Block(80, 3, 480, 112, True, True, 1),
    V3Block(112, 3, 672, 112, True, True, 1),
    V3Block(112, 5, 672, 160, True, True, 2),
    V3Block(160, 5, 960, 160, True, True, 1),
    V3Block(160, 5, 960, 160, True, True, 1),
)


class InvertedResidualV3(nn.Module):
    def __init__(self, L: Layers, cfg: V3Block, norm_layer):
        super().__init__()
        act = nn.Hardswish if cfg.hardswish else nn.ReLU
        self.use_res_connect = cfg.stride == 1 and cfg.c_in == cfg.c_out
        layers: List[nn.Module] = []
        if cfg.expanded != cfg.c_in:
            layers.append(ConvNormActivation(L, cfg.c_in, cfg.expanded, 1, norm_layer=norm_layer,
                                             activation_layer=act))
        layers.append(ConvNormActivation(L, cfg.expanded, cfg.expanded, cfg.kernel, cfg.stride,
                                         groups=cfg.expanded, norm_layer=norm_layer, activation_layer=act))
        if cfg.use_se:
            layers.append(SqueezeExcitation(L, cfg.expanded, make_divisible(cfg.expanded // 4),
                                            scale_activation=nn.Hardsigmoid))
        layers.append(ConvNormActivation(L, cfg.expanded, cfg.c_out, 1, norm_layer=norm_layer,
                                         activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = cfg.c_out

    def forward(self, input: Tensor) -> Tensor:
        result = self.block(input)
        return result + input if self.use_res_connect else result


class MobileNetV3(nn.Module):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                 dropout: float = 0.2, backend: str = "fastconv"):
        super().__init__()
        L = Layers(backend)
        norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)

        def ch(c: int) -> int:
            return make_divisible(c * width_mult)

        blocks = [b._replace(c_in=ch(b.c_in), expanded=ch(b.expanded), c_out=ch(b.c_out)) for b in V3_LARGE]
        last_channel = ch(1280)
        layers: List[nn.Module] = [ConvNormActivation(L, in_channels, blocks[0].c_in, 3, 2, norm_layer=norm_layer,
                                                      activation_layer=nn.Hardswish)]
        layers += [InvertedResidualV3(L, b, norm_layer) for b in blocks]
        head_channels = 6 * blocks[-1].c_out
        layers.append(ConvNormActivation(L, blocks[-1].c_out, head_channels, 1, norm_layer=norm_layer,
                                         activation_layer=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = L.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(head_channels, last_channel),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(last_channel, num_classes),
        )
        _init_mobilenet(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def _init_mobilenet(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def mobilenet_v2(num_classes: int = 1000, in_channels: int = 3, backend: str = "fastconv", **kwargs) -> MobileNetV2:
    return MobileNetV2(num_classes, in_channels, backend=backend, **kwargs)


def mobilenet_v3_large(num_classes: int = 1000, in_channels: int = 3, backend: str = "fastconv",
                       **kwargs) -> MobileNetV3:
    return MobileNetV3(num_classes, in_channels, backend=backend, **kwargs)
