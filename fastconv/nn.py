"""Drop-in torch.nn layers running on fastconv's kernels.

Each module subclasses its torch.nn counterpart, so constructor arguments, parameter initialization,
state_dict keys, repr and isinstance checks are torch's own; only the forward computation differs.
That is also what lets fastconv.convert() switch an existing module's class in place.
"""
from __future__ import annotations

from typing import List, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from . import functional as FC

__all__ = ["Conv1d", "Conv1dReLU", "Conv2d", "Conv2dReLU", "ConvTranspose1d", "ConvTranspose2d", "MaxPool2d",
           "AvgPool2d"]


class _FusedReLUFrom:
    """from_conv for the fused Conv*ReLU modules."""

    @classmethod
    def from_conv(cls, conv: nn.Module):
        """A fused module sharing conv's parameter tensors (conv itself is left unchanged)."""
        fused = cls.__new__(cls)
        # Own containers (parameters, buffers, hooks), shared tensors.
        fused.__dict__.update({k: v.copy() if isinstance(v, dict) else v for k, v in conv.__dict__.items()})
        return fused

    def extra_repr(self) -> str:
        return super().extra_repr() + ", relu=True"


class Conv1d(nn.Conv1d):
    """torch.nn.Conv1d on fastconv kernels (all padding modes: zeros, reflect, replicate, circular)."""

    _fuse_relu = False

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        conv = FC.conv1d_relu if self._fuse_relu else FC.conv1d
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return conv(input, weight, bias, self.stride, 0, self.dilation, self.groups)
        return conv(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class Conv1dReLU(_FusedReLUFrom, Conv1d):
    """Conv1d followed by ReLU, fused into the convolution kernel's store (as Conv2dReLU)."""

    _fuse_relu = True


class ConvTranspose1d(nn.ConvTranspose1d):
    """torch.nn.ConvTranspose1d on fastconv kernels (output_size in forward included)."""

    def forward(self, input: Tensor, output_size: Optional[List[int]] = None) -> Tensor:
        if self.padding_mode != "zeros":
            raise ValueError("Only `zeros` padding mode is supported for ConvTranspose1d")
        output_padding = self._output_padding(input, output_size, self.stride, self.padding, self.kernel_size, 1,
                                              self.dilation)
        return FC.conv_transpose1d(input, self.weight, self.bias, self.stride, self.padding, output_padding,
                                   self.groups, self.dilation)


class ConvTranspose2d(nn.ConvTranspose2d):
    """torch.nn.ConvTranspose2d on fastconv kernels (output_size in forward included)."""

    def forward(self, input: Tensor, output_size: Optional[List[int]] = None) -> Tensor:
        if self.padding_mode != "zeros":
            raise ValueError("Only `zeros` padding mode is supported for ConvTranspose2d")
        output_padding = self._output_padding(input, output_size, self.stride, self.padding, self.kernel_size, 2,
                                              self.dilation)
        return FC.conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding, output_padding,
                                   self.groups, self.dilation)


class Conv2d(nn.Conv2d):
    """torch.nn.Conv2d on fastconv kernels (all padding modes: zeros, reflect, replicate, circular)."""

    _fuse_relu = False

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        conv = FC.conv2d_relu if self._fuse_relu else FC.conv2d
        if self.padding_mode != "zeros":
            # As torch: pad with the chosen mode first, then a convolution without padding.
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return conv(input, weight, bias, self.stride, 0, self.dilation, self.groups)
        return conv(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class Conv2dReLU(_FusedReLUFrom, Conv2d):
    """Conv2d followed by ReLU, fused: bias and ReLU are applied inside the convolution kernel.

    Same constructor, parameters and state_dict keys as torch.nn.Conv2d, so the weights of a
    Conv2d (or of a fastconv.convert()ed Conv2d + ReLU pair) load directly.
    """

    _fuse_relu = True


class MaxPool2d(nn.MaxPool2d):
    """torch.nn.MaxPool2d on fastconv kernels (return_indices, ceil_mode, dilation included)."""

    def forward(self, input: Tensor):
        return FC.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                             ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class AvgPool2d(nn.AvgPool2d):
    """torch.nn.AvgPool2d on fastconv kernels (count_include_pad, divisor_override included)."""

    def forward(self, input: Tensor) -> Tensor:
        return FC.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                             self.count_include_pad, self.divisor_override)
