"""The layer set a model is built from: fastconv.nn's modules, or torch.nn's with the same names.

Every model in fastconv.models takes `backend='fastconv'` (fastconv.nn layers, whose kernels are picked
by fastconv's backend registry) or `backend='torch'` (torch.nn layers). Both builds create the same
modules in the same order with the same parameter names, so one seed gives the same initial weights
and a state_dict loads into either; only the forward computation differs.

A convolution directly followed by ReLU is one module: fastconv.nn.Conv2dReLU (bias and ReLU fused
into the kernel) or, for torch, TorchConv2dReLU (nn.Conv2d then F.relu). Both are nn.Conv2d
subclasses, hence the identical state_dict keys ('features.0.weight', not 'features.0.0.weight').
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import functional as FC
from .. import nn as fnn

BACKENDS = ("fastconv", "torch")


class TorchConv2dReLU(nn.Conv2d):
    """nn.Conv2d followed by ReLU in one module: the torch.nn counterpart of fastconv.nn.Conv2dReLU."""

    def forward(self, input: Tensor) -> Tensor:
        return F.relu(super().forward(input))

    def extra_repr(self) -> str:
        return super().extra_repr() + ", relu=True"


class GlobalAvgPool2d(nn.Module):
    """(N, C, H, W) -> (N, C): the mean over H x W (avg_pool2d with the whole plane as the window)."""

    def __init__(self, use_fastconv: bool):
        super().__init__()
        self.use_fastconv = use_fastconv

    def forward(self, x: Tensor) -> Tensor:
        pool = FC.avg_pool2d if self.use_fastconv else F.avg_pool2d
        return torch.flatten(pool(x, list(x.shape[-2:])), 1)

    def extra_repr(self) -> str:
        return "fastconv" if self.use_fastconv else "torch"


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """nn.AdaptiveAvgPool2d on fastconv's avg_pool2d where the windows are uniform.

    When H and W are multiples of the output size (always for a 1x1 output, the global pooling of every
    classifier head), adaptive pooling is avg_pool2d with kernel = stride = (H // oh, W // ow): fastconv's
    kernel computes it. Otherwise the windows overlap or differ in size (e.g. GoogLeNet's auxiliary heads
    pool 14x14 to 4x4), which no fastconv kernel implements: torch's F.adaptive_avg_pool2d does.
    """

    def forward(self, input: Tensor) -> Tensor:
        H, W = input.shape[-2:]
        oh, ow = _output_size(self.output_size, H, W)
        if oh > 0 and ow > 0 and H % oh == 0 and W % ow == 0:
            return FC.avg_pool2d(input, (H // oh, W // ow))
        return F.adaptive_avg_pool2d(input, self.output_size)


class BlurPool2d(nn.Module):
    """Anti-aliased downsampling (Zhang 2019, "Making Convolutional Networks Shift-Invariant Again"): a
    fixed binomial low-pass filter, one per channel, applied with the given stride.

    A strided max pool or conv samples its input without low-pass filtering first, so a 1-pixel shift of
    the input can change the downsampled map completely (aliasing). The anti-aliased forms keep the
    operation dense and let this layer do the subsampling:
        MaxPool(k, stride s)        -> MaxPool(k, stride 1), BlurPool(s)
        Conv(stride s) -> ReLU      -> Conv(stride 1) -> ReLU, BlurPool(s)
    The filter is the outer product of the binomial row ([1, 2, 1] for size 3, [1, 3, 3, 1] for 4,
    [1, 4, 6, 4, 1] for 5) normalized to sum 1, run as a depthwise convolution (groups = channels: the
    fastconv backends' depthwise kernels, or F.conv2d for backend 'torch') with zero padding
    (size - 1) // 2 - the output has the size of a stride-s pooling with the same padding rule. The
    filter is a non-persistent buffer: it is not learned and not in the state_dict.
    """

    def __init__(self, channels: int, stride: int = 2, filter_size: int = 3, use_fastconv: bool = True):
        super().__init__()
        if channels < 1:
            raise ValueError(f"BlurPool2d: channels must be positive, got {channels}")
        if stride < 1:
            raise ValueError(f"BlurPool2d: stride must be positive, got {stride}")
        if not 1 <= filter_size <= 7:
            raise ValueError(f"BlurPool2d: filter_size must be in 1..7, got {filter_size}")
        self.channels, self.stride, self.filter_size = channels, stride, filter_size
        self.padding = (filter_size - 1) // 2
        self.use_fastconv = use_fastconv
        row = torch.tensor([math.comb(filter_size - 1, i) for i in range(filter_size)], dtype=torch.float64)
        kernel = torch.outer(row, row) / row.sum() ** 2
        self.register_buffer("filter", kernel.to(torch.float32).expand(channels, 1, -1, -1).contiguous(),
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 3 or x.shape[-3] != self.channels:
            raise ValueError(f"BlurPool2d: expected input of shape (N, {self.channels}, H, W), got "
                             f"{tuple(x.shape)}")
        conv = FC.conv2d if self.use_fastconv else F.conv2d
        weight = self.filter.to(x.dtype)
        return conv(x, weight, None, self.stride, self.padding, 1, self.channels)

    def extra_repr(self) -> str:
        return (f"{self.channels}, stride={self.stride}, filter_size={self.filter_size}, "
                f"{'fastconv' if self.use_fastconv else 'torch'}")


def _output_size(size: Union[int, Sequence[Optional[int]]], H: int, W: int) -> Tuple[int, int]:
    oh, ow = (size, size) if isinstance(size, int) else tuple(size)
    return (H if oh is None else oh), (W if ow is None else ow)


class Layers:
    """Factory of the conv/pool modules for one backend ('fastconv' or 'torch')."""

    def __init__(self, backend: str = "fastconv"):
        if backend not in BACKENDS:
            raise ValueError(f"fastconv.models: backend must be one of {BACKENDS} (fastconv.nn or torch.nn "
                             f"layers), got {backend!r}; choose fastconv's kernel backend with "
                             f"fastconv.set_backend()")
        self.backend = backend
        fast = backend == "fastconv"
        self.Conv2d = fnn.Conv2d if fast else nn.Conv2d
        self.Conv2dReLU = fnn.Conv2dReLU if fast else TorchConv2dReLU
        self.MaxPool2d = fnn.MaxPool2d if fast else nn.MaxPool2d
        self.AvgPool2d = fnn.AvgPool2d if fast else nn.AvgPool2d
        self.AdaptiveAvgPool2d = AdaptiveAvgPool2d if fast else nn.AdaptiveAvgPool2d
        self._fast = fast

    def global_avg_pool(self) -> nn.Module:
        return GlobalAvgPool2d(self._fast)

    def blur_pool(self, channels: int, stride: int = 2, filter_size: int = 3) -> BlurPool2d:
        return BlurPool2d(channels, stride, filter_size, self._fast)

    def max_pool(self, channels: int, kernel: int, stride: Optional[int] = None, padding: int = 0,
                 blur: bool = False) -> nn.Module:
        """MaxPool2d(kernel, stride, padding), or with blur its anti-aliased form MaxPool2d(kernel, 1,
        padding) then BlurPool2d(stride): the same output size for 2x2/stride-2 and 3x3/stride-2/pad-1."""
        stride = kernel if stride is None else stride
        if not blur or stride == 1:
            return self.MaxPool2d(kernel, stride=stride, padding=padding)
        return nn.Sequential(self.MaxPool2d(kernel, stride=1, padding=padding), self.blur_pool(channels, stride))


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def check_image_size(model: str, image_size: int, minimum: int) -> None:
    if image_size < minimum:
        raise ValueError(f"fastconv.models.{model}: image_size must be at least {minimum}, got {image_size}")


def as_tuple(values: Sequence[int]) -> tuple:
    return tuple(int(v) for v in values)
