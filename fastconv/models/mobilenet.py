"""A MobileNet (v1, Howard et al. 2017): a stem conv, then depthwise-separable blocks
(depthwise 3x3 conv, groups = channels -> BN -> ReLU -> pointwise 1x1 conv -> BN -> ReLU),
global average pooling and a linear classifier.

`width` multiplies every channel count (1.0 is the paper's 32 ... 1024). Stem 'imagenet' has
stride 2 (224x224 inputs); stem 'cifar' stride 1 (32x32). With batch_norm=False each conv+ReLU is a
fused Conv2dReLU with bias, which is what exercises fastconv's grouped (depthwise) kernels with the
ReLU epilogue. blur_pool=True makes the stride-2 blocks anti-aliased: their depthwise conv runs at
stride 1 and a stride-2 BlurPool2d follows its ReLU (the stem is left strided); parameter names stay.
"""
from __future__ import annotations

from torch import Tensor, nn

from .layers import Layers

# (output channels, stride) of the 13 depthwise-separable blocks.
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
          (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


def _conv_bn_relu(L: Layers, c_in: int, c_out: int, kernel: int, stride: int, groups: int,
                  batch_norm: bool) -> nn.Sequential:
    padding = kernel // 2
    if batch_norm:
        return nn.Sequential(L.Conv2d(c_in, c_out, kernel, stride, padding, groups=groups, bias=False),
                             nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))
    return nn.Sequential(L.Conv2dReLU(c_in, c_out, kernel, stride, padding, groups=groups))


class DepthwiseSeparable(nn.Module):
    def __init__(self, L: Layers, c_in: int, c_out: int, stride: int, batch_norm: bool, blur_pool: bool = False):
        super().__init__()
        blur = blur_pool and stride > 1
        self.depthwise = _conv_bn_relu(L, c_in, c_in, 3, 1 if blur else stride, c_in, batch_norm)
        self.blur = L.blur_pool(c_in, stride) if blur else nn.Identity()
        self.pointwise = _conv_bn_relu(L, c_in, c_out, 1, 1, 1, batch_norm)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.blur(self.depthwise(x)))


class MobileNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, stem: str = "cifar", width: float = 1.0,
                 batch_norm: bool = True, backend: str = "fastconv", blur_pool: bool = False):
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"fastconv.models.MobileNet: stem must be 'cifar' or 'imagenet', got {stem!r}")
        L = Layers(backend)

        def ch(c: int) -> int:
            return max(8, int(round(c * width)))

        c = ch(32)
        self.stem = _conv_bn_relu(L, in_channels, c, 3, 2 if stem == "imagenet" else 1, 1, batch_norm)
        blocks = []
        for c_out, stride in BLOCKS:
            blocks.append(DepthwiseSeparable(L, c, ch(c_out), stride, batch_norm, blur_pool))
            c = ch(c_out)
        self.blocks = nn.Sequential(*blocks)
        self.pool = L.global_avg_pool()
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.blocks(self.stem(x))))
