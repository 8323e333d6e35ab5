"""torch.library custom ops for 1-d convolution: fastconv::conv1d and ::conv1d_relu.

A 1-d convolution of x (N, C, L) with w (K, C/groups, kW) is the 2-d convolution of the views
x[:, :, None, :] (N, C, 1, L) and w[:, :, None, :] (K, C/groups, 1, kW) with stride (1, s),
padding (0, p) and dilation (1, d): no copy, and every backend's conv2d engines (forward, dgrad,
wgrad, the fused bias + ReLU) serve it. A (N, C, L) tensor with strides (L*C, 1, C) - the layout of a
sequence model's (N, L, C) activations transposed - is a channels_last (N, C, 1, L) view, so it runs on
the channels_last kernels and gives an output of the same (N, K, L) stride order.

The backward ops are conv2d's (fastconv::conv2d_dgrad / ::conv2d_wgrad, through ops/conv2d.py's dgrad and
wgrad: direct when nothing observes them) on the same views.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from .. import _utils
from ..backends import check_deterministic, resolve
from ..profiling import is_enabled as profiling_enabled, op_range
from ._autocast import register_lower_precision
from . import conv2d as conv2d_ops
from ._eager import direct_ok


def as_2d(stride: List[int], padding: List[int], dilation: List[int]):
    """The 2-d convolution parameters of a 1-d convolution on (N, C, 1, L) views."""
    return [1, stride[0]], [0, padding[0]], [1, dilation[0]]


def _output_3d(input: Tensor, weight: Tensor, stride, padding, dilation) -> Tensor:
    """The output buffer a backend returns, as its (N, K, L_out) view: contiguous, or with strides
    (L_out*K, 1, K) when the 2-d views suggest channels_last (see the module docstring)."""
    x4, w4 = input.unsqueeze(2), weight.unsqueeze(2)
    s2, p2, d2 = as_2d(stride, padding, dilation)
    out_hw = _utils.conv_out_hw(x4, w4, s2, p2, d2)
    y4 = _utils.empty_like_format((input.shape[0], weight.shape[0], *out_hw), input,
                                  _utils.conv_output_channels_last(x4, w4))
    return y4.squeeze(2)


def _forward_impl(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int], padding: List[int],
                  dilation: List[int], groups: int, relu: bool) -> Tensor:
    b = resolve(input.device)
    check_deterministic(b, "conv2d_fwd")
    s2, p2, d2 = as_2d(stride, padding, dilation)
    x4, w4 = input.unsqueeze(2), weight.unsqueeze(2)
    if not profiling_enabled():
        return b.conv2d_fwd(x4, w4, bias, s2, p2, d2, groups, relu).squeeze(2)
    with op_range("conv1d_relu" if relu else "conv1d", b, x4, w4.shape[2:], s2):
        return b.conv2d_fwd(x4, w4, bias, s2, p2, d2, groups, relu).squeeze(2)


@torch.library.custom_op("fastconv::conv1d", mutates_args=())
def conv1d(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int], padding: List[int],
           dilation: List[int], groups: int) -> Tensor:
    return _forward_impl(input, weight, bias, stride, padding, dilation, groups, False)


@torch.library.custom_op("fastconv::conv1d_relu", mutates_args=())
def conv1d_relu(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int], padding: List[int],
                dilation: List[int], groups: int) -> Tensor:
    return _forward_impl(input, weight, bias, stride, padding, dilation, groups, True)


def forward(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int], padding: List[int],
            dilation: List[int], groups: int, relu: bool) -> Tensor:
    """fastconv::conv1d or ::conv1d_relu on normalized 3-d arguments (directly when nothing needs to
    see the op, as ops.conv2d.forward)."""
    if direct_ok(input, weight, bias):
        return _forward_impl(input, weight, bias, stride, padding, dilation, groups, relu)
    op = torch.ops.fastconv.conv1d_relu if relu else torch.ops.fastconv.conv1d
    return op(input, weight, bias, stride, padding, dilation, groups)


@conv1d.register_fake
def _(input, weight, bias, stride, padding, dilation, groups):
    return torch.empty_like(_output_3d(input, weight, stride, padding, dilation))


@conv1d_relu.register_fake
def _(input, weight, bias, stride, padding, dilation, groups):
    return torch.empty_like(_output_3d(input, weight, stride, padding, dilation))


def _setup_context(ctx, inputs, output, relu: bool):
    input, weight, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(input, weight, output if relu else None)
    ctx.conv_args = (stride, padding, dilation, groups)
    ctx.has_bias = bias is not None


def _backward(ctx, grad_output):
    input, weight, relu_output = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conv_args
    s2, p2, d2 = as_2d(stride, padding, dilation)
    need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
    need_bias = need_bias and ctx.has_bias
    dy4, x4, w4 = grad_output.unsqueeze(2), input.unsqueeze(2), weight.unsqueeze(2)
    ry4 = relu_output.unsqueeze(2) if relu_output is not None else None
    grad_input = grad_weight = grad_bias = None
    if need_input:
        grad_input = conv2d_ops.dgrad(dy4, x4, w4, ry4, s2, p2, d2, groups).squeeze(2)
    if need_weight or need_bias:
        dw, db = conv2d_ops.wgrad(dy4, x4, w4, ry4, s2, p2, d2, groups, need_weight, need_bias)
        grad_weight = dw.squeeze(2) if need_weight else None
        grad_bias = db if need_bias else None
    return grad_input, grad_weight, grad_bias, None, None, None, None


conv1d.register_autograd(
    _backward, setup_context=lambda ctx, inputs, output: _setup_context(ctx, inputs, output, relu=False))
conv1d_relu.register_autograd(
    _backward, setup_context=lambda ctx, inputs, output: _setup_context(ctx, inputs, output, relu=True))

# torch.autocast: conv1d is on torch's lower-precision list, as conv2d.
register_lower_precision("conv1d")
register_lower_precision("conv1d_relu")
