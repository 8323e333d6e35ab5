"""EfficientNet-B0 (Tan & Le 2019) as torchvision defines it.

    stem conv 3x3/2 (32) -> 16 MBConv blocks in 7 stages -> conv 1x1 (1280) -> pool -> Dropout(0.2) -> fc
MBConv: 1x1 expand (skipped at expansion 1) -> depthwise kxk -> squeeze-excitation (squeeze to a quarter
of the block's *input* channels, SiLU, sigmoid gate) -> 1x1 projection without activation; when the
shapes allow, stochastic depth on the branch plus the input. The drop probability grows linearly with
the block index, 0.2 * i / 16 (so 0 for the first block), and is off in eval mode. SiLU everywhere.
Initialization (torchvision's): convs Kaiming-normal fan_out, biases 0, BN 1/0, the classifier
U(-1/sqrt(classes), 1/sqrt(classes)) with bias 0. Any input of at least 1x1.
"""
from __future__ import annotations

import math
from functools import partial
from typing import List, NamedTuple

import torch
from torch import Tensor, nn

from ..layers import Layers
from .blocks import ConvNormActivation, SqueezeExcitation, StochasticDepth, make_divisible


class MBConvStage(NamedTuple):
    expand_ratio: int
    kernel: int
    stride: int
    c_in: int
    c_out: int
    num_layers: int


# Table 1 of the paper (B0: width and depth multipliers 1.0).
B0_STAGES = (
    MBConvStage(1, 3, 1, 32, 16, 1),
    MBConvStage(6, 3, 2, 16, 24, 2),
    MBConvStage(6, 5, 2, 24, 40, 2),
    MBConvStage(6, 3, 2, 40, 80, 3),
    MBConvStage(6, 5, 1, 80, 112, 3),
    MBConvStage(6, 5, 2, 112, 192, 4),
    MBConvStage(6, 3, 1, 192, 320, 1),
)


class MBConv(nn.Module):
    def __init__(self, L: Layers, c_in: int, c_out: int, expand_ratio: int, kernel: int, stride: int,
                 stochastic_depth_prob: float):
        super().__init__()
        self.use_res_connect = stride == 1 and c_in == c_out
        expanded = make_divisible(c_in * expand_ratio)
        layers: List[nn.Module] = []
        if expanded != c_in:
            layers.append(ConvNormActivation(L, c_in, expanded, 1, activation_layer=nn.SiLU))
        layers.append(ConvNormActivation(L, expanded, expanded, kernel, stride, groups=expanded,
                                         activation_layer=nn.SiLU))
        layers.append(SqueezeExcitation(L, expanded, max(1, c_in // 4), activation=partial(nn.SiLU, inplace=True)))
        layers.append(ConvNormActivation(L, expanded, c_out, 1, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")
        self.out_channels = c_out

    def forward(self, input: Tensor) -> Tensor:
        result = self.block(input)
        if self.use_res_connect:
            result = self.stochastic_depth(result) + input
        return result


class EfficientNet(nn.Module):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.2,
                 stochastic_depth_prob: float = 0.2, backend: str = "fastconv"):
        super().__init__()
        L = Layers(backend)
        stages = [s._replace(c_in=make_divisible(s.c_in), c_out=make_divisible(s.c_out)) for s in B0_STAGES]
        layers: List[nn.Module] = [ConvNormActivation(L, in_channels, stages[0].c_in, 3, 2, activation_layer=nn.SiLU)]
        total_blocks = sum(s.num_layers for s in stages)
        block_id = 0
        for s in stages:
            stage: List[nn.Module] = []
            for i in range(s.num_layers):
                c_in, stride = (s.c_in, s.stride) if i == 0 else (s.c_out, 1)
                p = stochastic_depth_prob * float(block_id) / total_blocks
                stage.append(MBConv(L, c_in, s.c_out, s.expand_ratio, s.kernel, stride, p))
                block_id += 1
            layers.append(nn.Sequential(*stage))
        head_channels = 4 * stages[-1].c_out
        layers.append(ConvNormActivation(L, stages[-1].c_out, head_channels, 1, activation_layer=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = L.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout, inplace=True), nn.Linear(head_channels, num_classes))

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def efficientnet_b0(num_classes: int = 1000, in_channels: int = 3, backend: str = "fastconv",
                    **kwargs) -> EfficientNet:
    return EfficientNet(num_classes, in_channels, backend=backend, **kwargs)
