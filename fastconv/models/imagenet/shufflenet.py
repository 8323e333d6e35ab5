"""ShuffleNetV2 1.0x (Ma et al. 2018) as torchvision defines it.

    conv1: conv 3x3/2 (24) -> BN -> ReLU -> maxpool 3x3/2                         224 -> 56
    stage2, stage3, stage4: 4, 8, 4 units at 116, 232, 464 channels               56 -> 7
    conv5: conv 1x1 (1024) -> BN -> ReLU -> mean over H, W -> fc
A unit of stride 1 splits the channels in halves, transforms one (1x1 -> BN -> ReLU -> depthwise 3x3
-> BN -> 1x1 -> BN -> ReLU, 'branch2') and concatenates it with the other; a unit of stride 2 feeds
the whole input to both branch2 and branch1 (depthwise 3x3/2 -> BN -> 1x1 -> BN -> ReLU). Either way a
channel shuffle with 2 groups follows. PyTorch's default initialization (torchvision adds none).
Any input of at least 1x1.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import Tensor, nn

from ..layers import Layers


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """(N, g * c, H, W) -> (N, c * g, H, W): channel i * c + j moves to j * g + i. Written without
    reading x's sizes, so torch.fx traces it."""
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


class ShuffleUnit(nn.Module):
    def __init__(self, L: Layers, c_in: int, c_out: int, stride: int):
        super().__init__()
        if stride not in (1, 2, 3):
            raise ValueError(f"ShuffleNetV2: stride must be 1, 2 or 3, got {stride}")
        self.stride = stride
        branch = c_out // 2
        if stride == 1 and c_in != 2 * branch:
            raise ValueError(f"ShuffleNetV2: a stride-1 unit needs c_in == c_out, got {c_in} -> {c_out}")
        if stride > 1:
            self.branch1 = nn.Sequential(
                L.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
                nn.BatchNorm2d(c_in),
                L.Conv2d(c_in, branch, 1, bias=False),
                nn.BatchNorm2d(branch),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            L.Conv2d(c_in if stride > 1 else branch, branch, 1, bias=False),
            nn.BatchNorm2d(branch),
            nn.ReLU(inplace=True),
            L.Conv2d(branch, branch, 3, stride, 1, groups=branch, bias=False),
            nn.BatchNorm2d(branch),
            L.Conv2d(branch, branch, 1, bias=False),
            nn.BatchNorm2d(branch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            halves = x.chunk(2, dim=1)
            out = torch.cat((halves[0], self.branch2(halves[1])), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, stages_repeats: Sequence[int] = (4, 8, 4),
                 stages_out_channels: Sequence[int] = (24, 116, 232, 464, 1024), num_classes: int = 1000,
                 in_channels: int = 3, backend: str = "fastconv"):
        super().__init__()
        if len(stages_repeats) != 3 or len(stages_out_channels) != 5:
            raise ValueError("ShuffleNetV2: expected 3 stage repeats and 5 stage output channels, got "
                             f"{list(stages_repeats)} and {list(stages_out_channels)}")
        L = Layers(backend)
        self._stage_out_channels = list(stages_out_channels)
        c = stages_out_channels[0]
        self.conv1 = nn.Sequential(L.Conv2d(in_channels, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c),
                                   nn.ReLU(inplace=True))
        self.maxpool = L.MaxPool2d(3, stride=2, padding=1)
        for name, repeats, c_out in zip(("stage2", "stage3", "stage4"), stages_repeats, stages_out_channels[1:]):
            units: List[nn.Module] = [ShuffleUnit(L, c, c_out, 2)]
            units += [ShuffleUnit(L, c_out, c_out, 1) for _ in range(repeats - 1)]
            setattr(self, name, nn.Sequential(*units))
            c = c_out
        c_out = stages_out_channels[-1]
        self.conv5 = nn.Sequential(L.Conv2d(c, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))
        self.fc = nn.Linear(c_out, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage4(self.stage3(self.stage2(self.maxpool(self.conv1(x)))))
        x = self.conv5(x).mean([2, 3])  # global pooling as torchvision writes it: a torch mean in both backends
        return self.fc(x)


def shufflenet_v2_x1_0(num_classes: int = 1000, in_channels: int = 3, backend: str = "fastconv",
                       **kwargs) -> ShuffleNetV2:
    return ShuffleNetV2((4, 8, 4), (24, 116, 232, 464, 1024), num_classes, in_channels, backend=backend, **kwargs)
