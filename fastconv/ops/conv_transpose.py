"""torch.library custom ops for transposed convolution: fastconv::conv_transpose2d and ::conv_transpose1d.

A transposed convolution of x (N, C_in, H, W) with w (C_in, C_out/groups, R, S) is the input gradient of
the convolution whose weight is w (K = C_in output channels, C = C_out input channels) and whose
input has the transposed convolution's output size

    H_out = (H - 1) * stride - 2 * padding + dilation * (R - 1) + output_padding + 1

so the forward is every backend's conv2d dgrad kernel with x in the place of grad_output; those kernels
visit only the taps that hit a stride phase, so no zero is ever inserted or multiplied. The bias is
added after (the dgrad kernels have no bias epilogue). Backward, with g = grad_output:

    grad_input  = conv2d(g, w, stride, padding, dilation, groups)[:, :, :H, :W]
    grad_weight = the conv2d weight gradient with g as the input and x as the output gradient
    grad_bias   = sum of g over (N, H_out, W_out)

(the slice matters only when output_padding >= stride, allowed by torch when it is below the
dilation: the convolution of g then has rows that no input pixel produced.)

A 1-d transposed convolution runs on (N, C, 1, L) views, as fastconv::conv1d does.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from .. import _utils
from ..backends import check_deterministic, resolve
from ..profiling import op_range
from ._autocast import register_lower_precision
from . import conv2d as conv2d_ops
from ._eager import direct_ok
from .conv1d import as_2d


def output_size(size: int, kernel: int, stride: int, padding: int, output_padding: int, dilation: int) -> int:
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def _output_4d(input: Tensor, weight: Tensor, stride, padding, output_padding, dilation, groups) -> Tensor:
    """The uninitialized output in torch's memory format (channels_last when input or weight suggests it)."""
    hw = [output_size(input.shape[2 + i], weight.shape[2 + i], stride[i], padding[i], output_padding[i],
                      dilation[i]) for i in range(2)]
    shape = (input.shape[0], weight.shape[1] * groups, *hw)
    return _utils.empty_like_format(shape, input, _utils.conv_output_channels_last(input, weight))


def _forward_4d(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride, padding, output_padding, dilation,
                groups: int, name: str) -> Tensor:
    b = resolve(input.device)
    check_deterministic(b, "conv2d_dgrad")
    # The dgrad kernels take the convolution's input only for its shape, dtype and memory format, and
    # allocate their result in that format: `shape_of_output` is never written or read.
    shape_of_output = _output_4d(input, weight, stride, padding, output_padding, dilation, groups)
    with op_range(name, b, shape_of_output, weight.shape[2:], stride):
        y = b.conv2d_dgrad(input, shape_of_output, weight, None, stride, padding, dilation, groups)
    if bias is not None:
        y += bias.view(1, -1, 1, 1)
    return y


def _backward_4d(input, weight, grad_output, stride, padding, dilation, groups, needs):
    """(grad_input, grad_weight, grad_bias) of a 2-d transposed convolution (None where not needed)."""
    need_input, need_weight, need_bias = needs
    grad_input = grad_weight = grad_bias = None
    if need_input:
        gi = conv2d_ops.forward(grad_output, weight, None, stride, padding, dilation, groups, False)
        if gi.shape[2:] != input.shape[2:]:
            gi = gi[:, :, :input.shape[2], :input.shape[3]]
        grad_input = gi
    if need_weight:
        grad_weight, _ = conv2d_ops.wgrad(input, grad_output, weight, None, stride, padding, dilation, groups, True,
                                           False)
    if need_bias:
        grad_bias = grad_output.sum(dim=(0, 2, 3), dtype=torch.float32 if grad_output.dtype in (
            torch.float16, torch.bfloat16) else None).to(grad_output.dtype)
    return grad_input, grad_weight, grad_bias


# ----------------------------------------------------------------------------------------------------
# 2-d


def _impl_2d(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int], padding: List[int],
             output_padding: List[int], dilation: List[int], groups: int) -> Tensor:
    return _forward_4d(input, weight, bias, stride, padding, output_padding, dilation, groups, "conv_transpose2d")


@torch.library.custom_op("fastconv::conv_transpose2d", mutates_args=())
def conv_transpose2d(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int], padding: List[int],
                     output_padding: List[int], dilation: List[int], groups: int) -> Tensor:
    return _impl_2d(input, weight, bias, stride, padding, output_padding, dilation, groups)


@conv_transpose2d.register_fake
def _(input, weight, bias, stride, padding, output_padding, dilation, groups):
    return _output_4d(input, weight, stride, padding, output_padding, dilation, groups)


def _setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, output_padding, dilation, groups = inputs
    ctx.save_for_backward(input, weight)
    ctx.conv_args = (stride, padding, dilation, groups)
    ctx.has_bias = bias is not None


def _backward_2d(ctx, grad_output):
    input, weight = ctx.saved_tensors
    needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2] and ctx.has_bias)
    grads = _backward_4d(input, weight, grad_output, *ctx.conv_args, needs)
    return (*grads, None, None, None, None, None)


conv_transpose2d.register_autograd(_backward_2d, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------------
# 1-d: (N, C, L) as (N, C, 1, L)


def _params_2d(stride, padding, output_padding, dilation):
    s2, p2, d2 = as_2d(stride, padding, dilation)
    return s2, p2, [0, output_padding[0]], d2


def _impl_1d(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int], padding: List[int],
             output_padding: List[int], dilation: List[int], groups: int) -> Tensor:
    s2, p2, op2, d2 = _params_2d(stride, padding, output_padding, dilation)
    return _forward_4d(input.unsqueeze(2), weight.unsqueeze(2), bias, s2, p2, op2, d2, groups,
                       "conv_transpose1d").squeeze(2)


@torch.library.custom_op("fastconv::conv_transpose1d", mutates_args=())
def conv_transpose1d(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int], padding: List[int],
                     output_padding: List[int], dilation: List[int], groups: int) -> Tensor:
    return _impl_1d(input, weight, bias, stride, padding, output_padding, dilation, groups)


@conv_transpose1d.register_fake
def _(input, weight, bias, stride, padding, output_padding, dilation, groups):
    s2, p2, op2, d2 = _params_2d(stride, padding, output_padding, dilation)
    return torch.empty_like(_output_4d(input.unsqueeze(2), weight.unsqueeze(2), s2, p2, op2, d2, groups).squeeze(2))


def _backward_1d(ctx, grad_output):
    input, weight = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conv_args
    s2, p2, d2 = as_2d(stride, padding, dilation)
    needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2] and ctx.has_bias)
    gi, gw, gb = _backward_4d(input.unsqueeze(2), weight.unsqueeze(2), grad_output.unsqueeze(2), s2, p2, d2, groups,
                              needs)
    return (gi.squeeze(2) if gi is not None else None, gw.squeeze(2) if gw is not None else None, gb,
            None, None, None, None, None)


conv_transpose1d.register_autograd(_backward_1d, setup_context=_setup_context)


def forward(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int], padding: List[int],
            output_padding: List[int], dilation: List[int], groups: int) -> Tensor:
    """fastconv::conv_transpose1d / 2d (by the input's rank) on normalized batched arguments; directly
    when nothing needs to see the op (ops/_eager.py)."""
    one_d = input.dim() == 3
    if direct_ok(input, weight, bias):
        impl = _impl_1d if one_d else _impl_2d
        return impl(input, weight, bias, stride, padding, output_padding, dilation, groups)
    op = torch.ops.fastconv.conv_transpose1d if one_d else torch.ops.fastconv.conv_transpose2d
    return op(input, weight, bias, stride, padding, output_padding, dilation, groups)


# torch.autocast: the transposed convolutions are on torch's lower-precision list, as conv2d.
register_lower_precision("conv_transpose2d")
register_lower_precision("conv_transpose1d")
