"""RegNetY-400MF (Radosavovic et al. 2020) as torchvision defines it.

    stem conv 3x3/2 (32) -> BN -> ReLU
    4 stages ('block1'..'block4', blocks named 'block{stage}-{i}'), each a chain of residual
    bottlenecks: f = a: 1x1 -> b: grouped 3x3 (stride 2 in a stage's first block) -> se -> c: 1x1,
    with a 1x1/stride conv + BN projection ('proj') on the shortcut when the shape changes, ReLU after
    the sum
    global average pool -> fc
The stage widths and depths come from the paper's quantized linear rule (regnet_stages below); for
RegNetY-400MF (depth 16, w_0 48, w_a 27.89, w_m 2.09, group width 8, SE ratio 0.25) they are
depths [1, 3, 6, 6], widths [48, 104, 208, 440]. SE squeezes to round(0.25 * the block's input width).
Initialization (torchvision's): convs N(0, sqrt(2 / (kh * kw * out_channels))) (the SE convs' biases
keep PyTorch's default), BN 1/0, fc N(0, 0.01) with bias 0. Any input of at least 1x1.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import List, Optional, Tuple

from torch import Tensor, nn

from ..layers import Layers
from .blocks import ConvNormActivation, SqueezeExcitation, make_divisible


def regnet_stages(depth: int, w_0: int, w_a: float, w_m: float, group_width: int,
                  bottleneck_multiplier: float = 1.0) -> Tuple[List[int], List[int], List[int]]:
    """(stage depths, stage widths, group widths) of a RegNet, Sec. 3.3 of the paper: block j gets the
    continuous width u_j = w_0 + w_a * j, quantized in log space with step w_m and to multiples of 8;
    consecutive blocks of equal width form a stage. Widths are then adjusted so that the bottleneck
    width is a multiple of the group width."""
    if w_a < 0 or w_0 <= 0 or w_m <= 1 or w_0 % 8 != 0:
        raise ValueError(f"regnet_stages: invalid RegNet parameters w_0={w_0}, w_a={w_a}, w_m={w_m}")
    widths = []
    for j in range(depth):
        steps = round(math.log((w_0 + w_a * j) / w_0) / math.log(w_m))
        widths.append(int(round(w_0 * w_m ** steps / 8) * 8))
    stage_widths, stage_depths = [], []
    for w in widths:
        if stage_widths and stage_widths[-1] == w:
            stage_depths[-1] += 1
        else:
            stage_widths.append(w)
            stage_depths.append(1)
    bottlenecks = [int(w * bottleneck_multiplier) for w in stage_widths]
    groups = [min(group_width, b) for b in bottlenecks]
    stage_widths = [int(make_divisible(b, g) / bottleneck_multiplier) for b, g in zip(bottlenecks, groups)]
    return stage_depths, stage_widths, groups


class BottleneckTransform(nn.Sequential):
    def __init__(self, L: Layers, width_in: int, width_out: int, stride: int, group_width: int,
                 bottleneck_multiplier: float, se_ratio: Optional[float]):
        w_b = int(round(width_out * bottleneck_multiplier))
        layers: "OrderedDict[str, nn.Module]" = OrderedDict()
        layers["a"] = ConvNormActivation(L, width_in, w_b, 1)
        layers["b"] = ConvNormActivation(L, w_b, w_b, 3, stride, groups=w_b // group_width)
        if se_ratio:
            layers["se"] = SqueezeExcitation(L, w_b, int(round(se_ratio * width_in)), activation=nn.ReLU)
        layers["c"] = ConvNormActivation(L, w_b, width_out, 1, activation_layer=None)
        super().__init__(layers)


class ResBottleneckBlock(nn.Module):
    def __init__(self, L: Layers, width_in: int, width_out: int, stride: int, group_width: int,
                 bottleneck_multiplier: float, se_ratio: Optional[float]):
        super().__init__()
        self.proj: Optional[nn.Module] = None
        if width_in != width_out or stride != 1:
            self.proj = ConvNormActivation(L, width_in, width_out, 1, stride, activation_layer=None)
        self.f = BottleneckTransform(L, width_in, width_out, stride, group_width, bottleneck_multiplier, se_ratio)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.proj is None else self.proj(x)
        return self.activation(shortcut + self.f(x))


class AnyStage(nn.Sequential):
    def __init__(self, L: Layers, width_in: int, width_out: int, stride: int, depth: int, group_width: int,
                 bottleneck_multiplier: float, se_ratio: Optional[float], stage_index: int):
        super().__init__()
        for i in range(depth):
            block = ResBottleneckBlock(L, width_in if i == 0 else width_out, width_out, stride if i == 0 else 1,
                                       group_width, bottleneck_multiplier, se_ratio)
            self.add_module(f"block{stage_index}-{i}", block)


class RegNet(nn.Module):
    def __init__(self, depth: int, w_0: int, w_a: float, w_m: float, group_width: int, se_ratio: Optional[float],
                 num_classes: int = 1000, in_channels: int = 3, stem_width: int = 32,
                 bottleneck_multiplier: float = 1.0, backend: str = "fastconv"):
        super().__init__()
        L = Layers(backend)
        self.stem = ConvNormActivation(L, in_channels, stem_width, 3, 2)
        depths, widths, groups = regnet_stages(depth, w_0, w_a, w_m, group_width, bottleneck_multiplier)
        stages = []
        width = stem_width
        for i, (d, w, g) in enumerate(zip(depths, widths, groups)):
            stages.append((f"block{i + 1}", AnyStage(L, width, w, 2, d, g, bottleneck_multiplier, se_ratio, i + 1)))
            width = w
        self.trunk_output = nn.Sequential(OrderedDict(stages))
        self.avgpool = L.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.trunk_output(self.stem(x)))
        return self.fc(x.flatten(start_dim=1))


def regnet_y_400mf(num_classes: int = 1000, in_channels: int = 3, backend: str = "fastconv", **kwargs) -> RegNet:
    return RegNet(16, 48, 27.89, 2.09, 8, 0.25, num_classes, in_channels, backend=backend, **kwargs)
