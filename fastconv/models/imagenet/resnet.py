"""ResNet-18, ResNet-50 (He et al. 2016) and ResNeXt-50 32x4d (Xie et al. 2017) as torchvision defines them.

    stem: conv 7x7/2 -> BN -> ReLU -> maxpool 3x3/2          224 -> 56
    layer1..layer4: residual blocks at 64, 128, 256, 512 planes, the first block of layers 2-4 at
        stride 2 with a 1x1/2 conv + BN projection ('downsample') on the shortcut   56 -> 7
    global average pool -> fc
BasicBlock (two 3x3 convs) for ResNet-18, [2, 2, 2, 2] blocks; Bottleneck (1x1 reduce, 3x3, 1x1 expand
x4, the stride on the 3x3 as in torchvision's "ResNet v1.5") for ResNet-50, [3, 4, 6, 3]. ResNeXt-50
32x4d is ResNet-50 with a grouped 3x3 (32 groups) in bottlenecks of width planes * 4/64 * 32 (128-1024).
torchvision's initialization: convs Kaiming-normal (fan_out, ReLU gain), BN weight 1 / bias 0, fc
PyTorch's default. Accepts any input size of at least 1x1.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Type, Union

import torch
from torch import Tensor, nn

from ..layers import Layers


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, L: Layers, in_planes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = L.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = L.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, L: Layers, in_planes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None, groups: int = 1, base_width: int = 64):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = L.Conv2d(in_planes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = L.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = L.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


Block = Union[Type[BasicBlock], Type[Bottleneck]]


class ResNet(nn.Module):
    def __init__(self, block: Block, layers: Sequence[int], num_classes: int = 1000, in_channels: int = 3,
                 zero_init_residual: bool = False, backend: str = "fastconv", groups: int = 1,
                 width_per_group: int = 64):
        super().__init__()
        L = Layers(backend)
        if block is BasicBlock and (groups != 1 or width_per_group != 64):
            raise ValueError("ResNet: BasicBlock only supports groups=1 and width_per_group=64")
        self.groups, self.base_width = groups, width_per_group
        self.in_planes = 64
        self.conv1 = L.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = L.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(L, block, 64, layers[0], stride=1)
        self.layer2 = self._make_layer(L, block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(L, block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(L, block, 512, layers[3], stride=2)
        self.avgpool = L.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # each residual branch starts as zero, each block as the identity
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, L: Layers, block: Block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out_planes = planes * block.expansion
        downsample = None
        if stride != 1 or self.in_planes != out_planes:
            downsample = nn.Sequential(L.Conv2d(self.in_planes, out_planes, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(out_planes))
        shape = {} if block is BasicBlock else {"groups": self.groups, "base_width": self.base_width}
        layers: List[nn.Module] = [block(L, self.in_planes, planes, stride, downsample, **shape)]
        self.in_planes = out_planes
        layers += [block(L, out_planes, planes, **shape) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000, in_channels: int = 3, backend: str = "fastconv", **kwargs) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels, backend=backend, **kwargs)


def resnet50(num_classes: int = 1000, in_channels: int = 3, backend: str = "fastconv", **kwargs) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels, backend=backend, **kwargs)


def resnext50_32x4d(num_classes: int = 1000, in_channels: int = 3, backend: str = "fastconv", **kwargs) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels, backend=backend, groups=32, width_per_group=4,
                  **kwargs)
