"""DenseNet-121 (Huang et al. 2017, DenseNet-BC) as torchvision defines it.

    features: conv0 7x7/2 -> norm0 -> relu0 -> pool0 maxpool 3x3/2              224 -> 56
              denseblock1 (6 layers) -> transition1 -> denseblock2 (12) -> transition2 ->
              denseblock3 (24) -> transition3 -> denseblock4 (16) -> norm5         56 -> 7
    ReLU -> global average pool -> classifier
A dense layer sees the concatenation of the block input and every earlier layer's output:
BN -> ReLU -> conv 1x1 (4 * 32 channels) -> BN -> ReLU -> conv 3x3 (32 new channels). A transition
halves the channels (BN -> ReLU -> conv 1x1) and the resolution (avgpool 2x2/2).
Initialization (torchvision's): convs Kaiming-normal (fan_in, ReLU gain), BN 1/0, classifier bias 0
(its weight keeps PyTorch's default). Inputs must be at least 29x29 (torchvision's minimum: the third
transition pools a 2x2 map to 1x1).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import Layers

MIN_SIZE = 29


class DenseLayer(nn.Module):
    def __init__(self, L: Layers, num_input_features: int, growth_rate: int, bn_size: int, drop_rate: float):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = L.Conv2d(num_input_features, bn_size * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = L.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)
        self.drop_rate = float(drop_rate)

    def forward(self, features: List[Tensor]) -> Tensor:
        bottleneck = self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))
        new_features = self.conv2(self.relu2(self.norm2(bottleneck)))
        if self.drop_rate > 0:
            new_features = F.dropout(new_features, p=self.drop_rate, training=self.training)
        return new_features


class DenseBlock(nn.ModuleDict):
    def __init__(self, L: Layers, num_layers: int, num_input_features: int, bn_size: int, growth_rate: int,
                 drop_rate: float):
        super().__init__()
        for i in range(num_layers):
            layer = DenseLayer(L, num_input_features + i * growth_rate, growth_rate, bn_size, drop_rate)
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, init_features: Tensor) -> Tensor:
        features = [init_features]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    def __init__(self, L: Layers, num_input_features: int, num_output_features: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = L.Conv2d(num_input_features, num_output_features, 1, bias=False)
        self.pool = L.AvgPool2d(2, stride=2)


class DenseNet(nn.Module):
    def __init__(self, growth_rate: int = 32, block_config: Sequence[int] = (6, 12, 24, 16),
                 num_init_features: int = 64, bn_size: int = 4, drop_rate: float = 0.0, num_classes: int = 1000,
                 in_channels: int = 3, backend: str = "fastconv"):
        super().__init__()
        L = Layers(backend)
        self.features = nn.Sequential(OrderedDict([
            ("conv0", L.Conv2d(in_channels, num_init_features, 7, stride=2, padding=3, bias=False)),
            ("norm0", nn.BatchNorm2d(num_init_features)),
            ("relu0", nn.ReLU(inplace=True)),
            ("pool0", L.MaxPool2d(3, stride=2, padding=1)),
        ]))
        c = num_init_features
        for i, num_layers in enumerate(block_config):
            self.features.add_module(f"denseblock{i + 1}", DenseBlock(L, num_layers, c, bn_size, growth_rate,
                                                                      drop_rate))
            c += num_layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", Transition(L, c, c // 2))
                c //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(c))
        self.classifier = nn.Linear(c, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.features(x), inplace=True)
        # torchvision pools functionally here (no module): torch's adaptive pooling in both backends
        out = torch.flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1)
        return self.classifier(out)


def densenet121(num_classes: int = 1000, in_channels: int = 3, backend: str = "fastconv", **kwargs) -> DenseNet:
    return DenseNet(32, (6, 12, 24, 16), 64, num_classes=num_classes, in_channels=in_channels, backend=backend,
                    **kwargs)
