"""ResNet-18 (He et al. 2016) with torchvision's module names (conv1, bn1, layer1.0.conv1, ...,
layer2.0.downsample.0, fc), so torchvision-style state_dicts map onto it.

Stems:
  'imagenet': conv 7x7 stride 2 -> BN -> ReLU -> maxpool 3x3 stride 2 (224x224 -> 56x56)
  'cifar':    conv 3x3 stride 1 -> BN -> ReLU, no pooling (32x32 stays 32x32 into layer1)
Convolutions are followed by batch norm, not directly by ReLU, so they are plain Conv2d (no bias).
`width` scales the channels (64, 128, 256, 512 at width=64); tests use a narrow one.
blur_pool=True anti-aliases every downsampling (the arrangement of Zhang 2019's antialiased ResNets):
the imagenet stem's max pool runs at stride 1 followed by a stride-2 BlurPool2d; a stride-2 block
runs conv1 at stride 1 and blurs with stride 2 after its ReLU, and its shortcut blurs (stride 2) before
the stride-1 1x1 conv. The blur layers hold no parameters, so the state_dict keys stay torchvision's.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from .layers import Layers


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, L: Layers, in_planes: int, planes: int, stride: int = 1, blur_pool: bool = False):
        super().__init__()
        blur = blur_pool and stride > 1
        self.blur = L.blur_pool(planes, stride) if blur else nn.Identity()
        self.blur_shortcut = L.blur_pool(in_planes, stride) if blur else nn.Identity()
        if blur:
            stride = 1  # the convolutions run dense; the blur layers subsample
        self.conv1 = L.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = L.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: Optional[nn.Module] = None
        if stride != 1 or in_planes != planes or blur:
            self.downsample = nn.Sequential(L.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(self.blur_shortcut(x))
        out = self.blur(self.relu(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, stem: str = "cifar", width: int = 64,
                 backend: str = "fastconv", blur_pool: bool = False):
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"fastconv.models.ResNet18: stem must be 'cifar' or 'imagenet', got {stem!r}")
        L = Layers(backend)
        self.stem = stem
        if stem == "imagenet":
            self.conv1 = L.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = L.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = L.max_pool(width, 3, 2, 1, blur_pool) if stem == "imagenet" else nn.Identity()
        planes = [width, 2 * width, 4 * width, 8 * width]
        in_planes = width
        for i, (p, stride) in enumerate(zip(planes, (1, 2, 2, 2))):
            blocks = nn.Sequential(BasicBlock(L, in_planes, p, stride, blur_pool), BasicBlock(L, p, p, 1))
            setattr(self, f"layer{i + 1}", blocks)
            in_planes = p
        self.avgpool = L.global_avg_pool()
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():  # torchvision's initialization
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x))
