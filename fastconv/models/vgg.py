"""A small VGG: stacks of 3x3 conv + ReLU separated by 2x2 max pooling, global average pooling, one
linear classifier. Without batch norm every conv+ReLU is one fused Conv2dReLU; with batch norm it is
Conv2d (no bias) -> BatchNorm2d -> ReLU. A pooling step that would shrink the map below 1x1 is
skipped, so the same configuration runs on 8x8 digits and on 32x32 CIFAR-10. blur_pool=True makes the
poolings anti-aliased (max pool stride 1, then a stride-2 BlurPool2d); the parameter names stay the same.
"""
from __future__ import annotations

from typing import Sequence, Union

from torch import Tensor, nn

from .layers import Layers, check_image_size

DEFAULT_CFG = (32, "M", 64, "M", 128, 128, "M", 256, 256, "M")


class VGG(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                 cfg: Sequence[Union[int, str]] = DEFAULT_CFG, width: float = 1.0, batch_norm: bool = False,
                 backend: str = "fastconv", blur_pool: bool = False):
        super().__init__()
        check_image_size("VGG", image_size, 1)
        L = Layers(backend)
        layers = []
        c, size = in_channels, image_size
        for v in cfg:
            if v == "M":
                if size >= 2:
                    layers.append(L.max_pool(c, 2, blur=blur_pool))
                    size //= 2
                continue
            k = max(1, int(round(int(v) * width)))
            if batch_norm:
                layers += [L.Conv2d(c, k, 3, padding=1, bias=False), nn.BatchNorm2d(k), nn.ReLU(inplace=True)]
            else:
                layers.append(L.Conv2dReLU(c, k, 3, padding=1))
            c = k
        self.features = nn.Sequential(*layers)
        self.pool = L.global_avg_pool()
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)))
