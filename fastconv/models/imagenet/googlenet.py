"""GoogLeNet / Inception v1 (Szegedy et al. 2015) as torchvision defines it.

    conv1 7x7/2 -> maxpool1 -> conv2 1x1 -> conv3 3x3 -> maxpool2                224 -> 28
    inception3a, 3b -> maxpool3 -> inception4a..4e -> maxpool4 -> inception5a, 5b   28 -> 7
    global average pool -> Dropout(0.2) -> fc
Every conv is a BasicConv2d: conv (no bias) -> BN (eps 1e-3) -> ReLU. An Inception module concatenates
four branches: 1x1; 1x1 -> 3x3; 1x1 -> 3x3 (torchvision's 3x3 where the paper has 5x5, kept so that
its weights load: pytorch/vision#906); maxpool 3x3/1 -> 1x1. Max pools use ceil_mode.

As torchvision's GoogLeNet built without weights: aux_logits=True adds two auxiliary classifiers
(after inception4a and 4d: adaptive pool to 4x4 -> BasicConv2d 1x1 (128) -> fc 1024 -> ReLU ->
Dropout(0.7) -> fc), run only in training mode, where forward returns
GoogLeNetOutputs(logits, aux_logits2, aux_logits1) holding, as torchvision's does, the aux1 head's
output in the second field and the aux2 head's in the third. In eval mode, or with aux_logits=False
(the layout of torchvision's ImageNet weights, 6,624,904 parameters), forward returns the logits.
transform_input=False by default (True re-normalizes ImageNet-normalized RGB to the [-1, 1] scaling the
ported weights expect). Initialization (init_weights=True): conv and linear weights truncated-normal
std 0.01 in [-2, 2], BN 1/0; linear biases keep PyTorch's default. Inputs must be at least 15x15.
"""
from __future__ import annotations

from collections import namedtuple
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import Layers

MIN_SIZE = 15

GoogLeNetOutputs = namedtuple("GoogLeNetOutputs", ["logits", "aux_logits2", "aux_logits1"])


class BasicConv2d(nn.Module):
    def __init__(self, L: Layers, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0):
        super().__init__()
        self.conv = L.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    def __init__(self, L: Layers, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int,
                 ch5x5: int, pool_proj: int):
        super().__init__()
        self.branch1 = BasicConv2d(L, in_channels, ch1x1, 1)
        self.branch2 = nn.Sequential(BasicConv2d(L, in_channels, ch3x3red, 1),
                                     BasicConv2d(L, ch3x3red, ch3x3, 3, padding=1))
        self.branch3 = nn.Sequential(BasicConv2d(L, in_channels, ch5x5red, 1),
                                     BasicConv2d(L, ch5x5red, ch5x5, 3, padding=1))
        self.branch4 = nn.Sequential(L.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
                                     BasicConv2d(L, in_channels, pool_proj, 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    def __init__(self, L: Layers, in_channels: int, num_classes: int, dropout: float = 0.7):
        super().__init__()
        self.conv = BasicConv2d(L, in_channels, 128, 1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: Tensor) -> Tensor:
        # torchvision pools functionally here (no module): torch's adaptive pooling in both backends
        x = torch.flatten(self.conv(F.adaptive_avg_pool2d(x, (4, 4))), 1)
        return self.fc2(self.dropout(F.relu(self.fc1(x), inplace=True)))


class GoogLeNet(nn.Module):
    def __init__(self, num_classes: int = 1000, aux_logits: bool = True, transform_input: bool = False,
                 init_weights: bool = True, dropout: float = 0.2, dropout_aux: float = 0.7, in_channels: int = 3,
                 backend: str = "fastconv"):
        super().__init__()
        if transform_input and in_channels != 3:
            raise ValueError(f"GoogLeNet: transform_input=True re-normalizes RGB inputs; in_channels must be 3, "
                             f"got {in_channels}")
        L = Layers(backend)
        self.aux_logits = aux_logits
        self.transform_input = transform_input
        self.conv1 = BasicConv2d(L, in_channels, 64, 7, stride=2, padding=3)
        self.maxpool1 = L.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(L, 64, 64, 1)
        self.conv3 = BasicConv2d(L, 64, 192, 3, padding=1)
        self.maxpool2 = L.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception3a = Inception(L, 192, 64, 96, 128, 16, 32, 32)
        self.inception3b = Inception(L, 256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = L.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = Inception(L, 480, 192, 96, 208, 16, 48, 64)
        self.inception4b = Inception(L, 512, 160, 112, 224, 24, 64, 64)
        self.inception4c = Inception(L, 512, 128, 128, 256, 24, 64, 64)
        self.inception4d = Inception(L, 512, 112, 144, 288, 32, 64, 64)
        self.inception4e = Inception(L, 528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = L.MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception5a = Inception(L, 832, 256, 160, 320, 32, 128, 128)
        self.inception5b = Inception(L, 832, 384, 192, 384, 48, 128, 128)
        self.aux1: Optional[InceptionAux] = InceptionAux(L, 512, num_classes, dropout_aux) if aux_logits else None
        self.aux2: Optional[InceptionAux] = InceptionAux(L, 528, num_classes, dropout_aux) if aux_logits else None
        self.avgpool = L.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(1024, num_classes)

        if init_weights:
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

    def _transform_input(self, x: Tensor) -> Tensor:
        # (x - imagenet_mean) / imagenet_std, re-expressed as (x' - 0.5) / 0.5 per channel
        if not self.transform_input:
            return x
        ch0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
        ch1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
        ch2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
        return torch.cat((ch0, ch1, ch2), 1)

    def forward(self, x: Tensor):
        x = self.maxpool1(self.conv1(self._transform_input(x)))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        aux1 = self.aux1(x) if self.aux1 is not None and self.training else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        aux2 = self.aux2(x) if self.aux2 is not None and self.training else None
        x = self.maxpool4(self.inception4e(x))
        x = self.inception5b(self.inception5a(x))
        x = self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))
        if self.training and self.aux_logits:
            return GoogLeNetOutputs(x, aux1, aux2)
        return x


def googlenet(num_classes: int = 1000, in_channels: int = 3, backend: str = "fastconv", **kwargs) -> GoogLeNet:
    return GoogLeNet(num_classes, in_channels=in_channels, backend=backend, **kwargs)
