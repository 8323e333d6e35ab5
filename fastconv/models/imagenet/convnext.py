"""ConvNeXt-Tiny (Liu et al. 2022) as torchvision defines it.

    features.0: stem conv 4x4/4 (96, with bias) -> LayerNorm2d                    224 -> 56
    features.1, 3, 5, 7: stages of 3, 3, 9, 3 CNBlocks at 96, 192, 384, 768 channels
    features.2, 4, 6: downsampling LayerNorm2d -> conv 2x2/2                        56 -> 7
    global average pool -> classifier: LayerNorm2d -> Flatten -> Linear
CNBlock: depthwise 7x7 conv (bias) -> to channels-last -> LayerNorm(eps 1e-6) -> Linear(4C) -> GELU ->
Linear(C) -> back to NCHW, scaled per channel by layer_scale (initialized to 1e-6), stochastic depth,
plus the input. The drop probability grows linearly from 0 to 0.1 over the 18 blocks; off in eval.
Initialization (torchvision's): conv and linear weights truncated-normal std 0.02, biases 0;
LayerNorm 1/0. Inputs must be at least 32x32 (stem /4 and three /2 downsamplings without padding).
"""
from __future__ import annotations

from functools import partial
from typing import List, NamedTuple, Optional

import torch
from torch import Tensor, nn

from ..layers import Layers
from .blocks import ConvNormActivation, LayerNorm2d, Permute, StochasticDepth

MIN_SIZE = 32


class CNStage(NamedTuple):
    channels: int
    out_channels: Optional[int]  # channels after the downsampling that follows; None for the last stage
    num_layers: int


TINY = (CNStage(96, 192, 3), CNStage(192, 384, 3), CNStage(384, 768, 9), CNStage(768, None, 3))


class CNBlock(nn.Module):
    def __init__(self, L: Layers, dim: int, layer_scale: float, stochastic_depth_prob: float):
        super().__init__()
        self.block = nn.Sequential(
            L.Conv2d(dim, dim, 7, padding=3, groups=dim, bias=True),
            Permute([0, 2, 3, 1]),
            nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(dim, 4 * dim),
            nn.GELU(),
            nn.Linear(4 * dim, dim),
            Permute([0, 3, 1, 2]),
        )
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")

    def forward(self, input: Tensor) -> Tensor:
        result = self.stochastic_depth(self.layer_scale * self.block(input))
        return result + input


class ConvNeXt(nn.Module):
    def __init__(self, stages=TINY, stochastic_depth_prob: float = 0.1, layer_scale: float = 1e-6,
                 num_classes: int = 1000, in_channels: int = 3, backend: str = "fastconv"):
        super().__init__()
        L = Layers(backend)
        norm_layer = partial(LayerNorm2d, eps=1e-6)
        layers: List[nn.Module] = [ConvNormActivation(L, in_channels, stages[0].channels, 4, 4, padding=0,
                                                      norm_layer=norm_layer, activation_layer=None, bias=True)]
        total_blocks = sum(s.num_layers for s in stages)
        block_id = 0
        for s in stages:
            blocks: List[nn.Module] = []
            for _ in range(s.num_layers):
                p = stochastic_depth_prob * block_id / (total_blocks - 1.0)
                blocks.append(CNBlock(L, s.channels, layer_scale, p))
                block_id += 1
            layers.append(nn.Sequential(*blocks))
            if s.out_channels is not None:
                layers.append(nn.Sequential(norm_layer(s.channels), L.Conv2d(s.channels, s.out_channels, 2, stride=2)))
        self.features = nn.Sequential(*layers)
        self.avgpool = L.AdaptiveAvgPool2d(1)
        last = stages[-1].out_channels or stages[-1].channels
        self.classifier = nn.Sequential(norm_layer(last), nn.Flatten(1), nn.Linear(last, num_classes))

        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)))


def convnext_tiny(num_classes: int = 1000, in_channels: int = 3, backend: str = "fastconv", **kwargs) -> ConvNeXt:
    return ConvNeXt(TINY, num_classes=num_classes, in_channels=in_channels, backend=backend, **kwargs)
