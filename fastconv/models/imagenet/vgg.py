"""VGG-11 (Simonyan & Zisserman 2015, configuration A, no batch norm) as torchvision defines it.

    features: [conv 3x3 (bias) -> ReLU] x 8 at 64, 128, 256, 256, 512, 512, 512, 512 channels with
              five maxpools 2x2/2 in between                                   224 -> 7
    avgpool: adaptive to 7x7 (so that any input of at least 32x32 reaches the 25088-wide classifier)
    classifier: Linear(25088, 4096) -> ReLU -> Dropout(0.5) -> Linear(4096, 4096) -> ReLU -> Dropout ->
                Linear(4096, classes)
Conv and ReLU stay separate modules (features.0, features.1, ...) so that the indices, hence the
state_dict keys, are torchvision's; fusing them is the graph optimizer's job (fastconv.models'
vgg_small builds fused Conv2dReLU layers instead). Initialization (torchvision's): convs Kaiming-normal
fan_out with ReLU gain, biases 0; linear weights N(0, 0.01), biases 0.
"""
from __future__ import annotations

from typing import List, Sequence, Union

import torch
from torch import Tensor, nn

from ..layers import Layers

MIN_SIZE = 32
CFG_A = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
    def __init__(self, cfg: Sequence[Union[int, str]] = CFG_A, batch_norm: bool = False, num_classes: int = 1000,
                 in_channels: int = 3, dropout: float = 0.5, init_weights: bool = True, backend: str = "fastconv"):
        super().__init__()
        L = Layers(backend)
        layers: List[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(L.MaxPool2d(2, stride=2))
                continue
            layers.append(L.Conv2d(c, int(v), 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(int(v)))
            layers.append(nn.ReLU(inplace=True))
            c = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = L.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        if init_weights:
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0, 0.01)
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg11(num_classes: int = 1000, in_channels: int = 3, backend: str = "fastconv", **kwargs) -> VGG:
    return VGG(CFG_A, False, num_classes, in_channels, backend=backend, **kwargs)
