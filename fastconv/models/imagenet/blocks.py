"""Building blocks shared by the torchvision-compatible ImageNet models.

Each block has the module tree and parameter names of its torchvision.ops counterpart, so the models
built from them have torchvision's state_dict keys:
  ConvNormActivation  conv -> norm -> activation as one nn.Sequential ('0.weight', '1.running_var', ...)
  SqueezeExcitation   global pool -> 1x1 conv (fc1) -> act -> 1x1 conv (fc2) -> gate, times the input
  StochasticDepth     drops whole residual branches per sample in training; the identity in eval
  LayerNorm2d         LayerNorm over the channels of an NCHW tensor
  Permute             x.permute(dims) as a module (ConvNeXt's channels-last MLP)
The convolutions and pools come from a `Layers` (fastconv.nn or torch.nn). Nothing here branches on
tensor values, so torch.fx can trace the models; stochastic_depth is an fx leaf (torch.fx.wrap), as
torchvision's is, because it builds its noise tensor from the input's shape.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import Layers

ModuleFactory = Callable[..., nn.Module]


def make_divisible(value: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """value rounded to the nearest multiple of divisor (at least min_value, default divisor), bumped up
    by one divisor if rounding lost more than 10% (the TensorFlow MobileNet channel rule)."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvNormActivation(nn.Sequential):
    """Conv2d (bias only when there is no norm layer) -> norm_layer -> activation_layer; padding defaults
    to 'same' for odd kernels at stride 1 ((kernel - 1) // 2 * dilation). None leaves a stage out."""

    def __init__(self, L: Layers, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: Optional[int] = None, groups: int = 1,
                 norm_layer: Optional[ModuleFactory] = nn.BatchNorm2d,
                 activation_layer: Optional[ModuleFactory] = nn.ReLU, dilation: int = 1, inplace: bool = True,
                 bias: Optional[bool] = None):
        if padding is None:
            padding = (kernel_size - 1) // 2 * dilation
        if bias is None:
            bias = norm_layer is None
        layers: List[nn.Module] = [L.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                                            dilation=dilation, groups=groups, bias=bias)]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if activation_layer is not None:
            layers.append(activation_layer(inplace=inplace))
        super().__init__(*layers)
        self.out_channels = out_channels


class SqueezeExcitation(nn.Module):
    """x * gate(fc2(act(fc1(mean_hw(x))))), Hu et al. 2018; fc1/fc2 are 1x1 convolutions with bias."""

    def __init__(self, L: Layers, input_channels: int, squeeze_channels: int,
                 activation: ModuleFactory = nn.ReLU, scale_activation: ModuleFactory = nn.Sigmoid):
        super().__init__()
        self.avgpool = L.AdaptiveAvgPool2d(1)
        self.fc1 = L.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = L.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def forward(self, input: Tensor) -> Tensor:
        scale = self.fc2(self.activation(self.fc1(self.avgpool(input))))
        return self.scale_activation(scale) * input


def stochastic_depth(input: Tensor, p: float, mode: str, training: bool = True) -> Tensor:
    """Zeroes the whole input ('batch') or whole samples ('row') with probability p and scales the
    survivors by 1 / (1 - p) (Huang et al. 2016); the identity when not training or p == 0."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"stochastic_depth: p must be in [0, 1], got {p}")
    if mode not in ("batch", "row"):
        raise ValueError(f"stochastic_depth: mode must be 'batch' or 'row', got {mode!r}")
    if not training or p == 0.0:
        return input
    keep = 1.0 - p
    shape = [input.shape[0] if mode == "row" else 1] + [1] * (input.ndim - 1)
    noise = torch.empty(shape, dtype=input.dtype, device=input.device).bernoulli_(keep)
    if keep > 0.0:
        noise.div_(keep)
    return input * noise


torch.fx.wrap("stochastic_depth")


class StochasticDepth(nn.Module):
    def __init__(self, p: float, mode: str):
        super().__init__()
        self.p = p
        self.mode = mode

    def forward(self, input: Tensor) -> Tensor:
        return stochastic_depth(input, self.p, self.mode, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.mode}"


class LayerNorm2d(nn.LayerNorm):
    """nn.LayerNorm(C) applied at every pixel of an (N, C, H, W) tensor."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Permute(nn.Module):
    def __init__(self, dims: Sequence[int]):
        super().__init__()
        self.dims = list(dims)

    def forward(self, x: Tensor) -> Tensor:
        return torch.permute(x, self.dims)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"
