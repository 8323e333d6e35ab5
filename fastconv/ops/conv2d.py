"""torch.library custom ops for convolution: fastconv::conv2d, ::conv2d_relu and their backward ops.

Each op dispatches to the backend chosen for its tensors (fastconv.backends.resolve), has a fake
implementation (shapes and memory format only) so torch.compile traces it without a graph break,
and the forward ops have registered autograd whose backward calls our own dgrad/wgrad ops.

The ops take already-normalized arguments (4-d tensors, pairs of ints, symmetric padding);
fastconv.functional validates and normalizes user input before calling them.

Backward of y = relu(conv(x, w) + b): with m = (y > 0),
  dx = conv_transpose(dy * m, w),  dw = correlate(x, dy * m),  db = sum_{n,p,q} (dy * m).
The ReLU mask is applied by the dgrad/wgrad kernels while they read dy (relu_output = y), so the
fused op's backward costs no extra pass over dy.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .. import _utils
from ..backends import check_deterministic, resolve
from ._autocast import register_lower_precision
from ._eager import AUTOGRAD, DIRECT, direct_ok, eager_route
from ..profiling import is_enabled as profiling_enabled, op_range


def _conv_output(input: Tensor, weight: Tensor, stride, padding, dilation) -> Tensor:
    out_hw = _utils.conv_out_hw(input, weight, stride, padding, dilation)
    return _utils.empty_like_format((input.shape[0], weight.shape[0], *out_hw), input,
                                    _utils.conv_output_channels_last(input, weight))


def _forward_impl(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int], padding: List[int],
                  dilation: List[int], groups: int, relu: bool) -> Tensor:
    """The implementation of fastconv::conv2d (relu False) and ::conv2d_relu (relu True)."""
    b = resolve(input.device)
    check_deterministic(b, "conv2d_fwd")
    if not profiling_enabled():  # the usual case: no range, and none of its arguments built per call
        return b.conv2d_fwd(input, weight, bias, stride, padding, dilation, groups, relu)
    with op_range("conv2d_relu" if relu else "conv2d", b, input, weight.shape[2:], stride):
        return b.conv2d_fwd(input, weight, bias, stride, padding, dilation, groups, relu)


@torch.library.custom_op("fastconv::conv2d", mutates_args=())
def conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int], padding: List[int],
           dilation: List[int], groups: int) -> Tensor:
    return _forward_impl(input, weight, bias, stride, padding, dilation, groups, False)


@torch.library.custom_op("fastconv::conv2d_relu", mutates_args=())
def conv2d_relu(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int], padding: List[int],
                dilation: List[int], groups: int) -> Tensor:
    return _forward_impl(input, weight, bias, stride, padding, dilation, groups, True)


def forward(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int], padding: List[int],
            dilation: List[int], groups: int, relu: bool) -> Tensor:
    """fastconv::conv2d or ::conv2d_relu on normalized arguments: through torch.ops, or straight to the
    implementation when nothing needs to see the op (plain eager inference, see ops/_eager.py)."""
    route = eager_route(input, weight, bias)
    if route == DIRECT:
        return _forward_impl(input, weight, bias, stride, padding, dilation, groups, relu)
    if route == AUTOGRAD:
        return FastconvConv2d.apply(input, weight, bias, stride, padding, dilation, groups, relu)
    op = torch.ops.fastconv.conv2d_relu if relu else torch.ops.fastconv.conv2d
    return op(input, weight, bias, stride, padding, dilation, groups)


def _dgrad_impl(grad_output: Tensor, input: Tensor, weight: Tensor, relu_output: Optional[Tensor],
                stride: List[int], padding: List[int], dilation: List[int], groups: int) -> Tensor:
    """The implementation of fastconv::conv2d_dgrad."""
    b = resolve(input.device)
    check_deterministic(b, "conv2d_dgrad")
    if not profiling_enabled():
        return b.conv2d_dgrad(grad_output, input, weight, relu_output, stride, padding, dilation, groups)
    with op_range("conv2d_dgrad", b, input, weight.shape[2:], stride):
        return b.conv2d_dgrad(grad_output, input, weight, relu_output, stride, padding, dilation, groups)


def _wgrad_impl(grad_output: Tensor, input: Tensor, weight: Tensor, relu_output: Optional[Tensor],
                stride: List[int], padding: List[int], dilation: List[int], groups: int,
                need_weight: bool, need_bias: bool) -> Tuple[Tensor, Tensor]:
    """The implementation of fastconv::conv2d_wgrad."""
    b = resolve(input.device)
    check_deterministic(b, "conv2d_wgrad")
    if not profiling_enabled():
        dw, db = b.conv2d_wgrad(grad_output, input, weight, relu_output, stride, padding, dilation, groups,
                                need_weight, need_bias)
    else:
        with op_range("conv2d_wgrad", b, input, weight.shape[2:], stride):
            dw, db = b.conv2d_wgrad(grad_output, input, weight, relu_output, stride, padding, dilation, groups,
                                    need_weight, need_bias)
    empty = grad_output.new_empty(0)
    return (dw if dw is not None else empty, db if db is not None else empty.clone())


@torch.library.custom_op("fastconv::conv2d_dgrad", mutates_args=())
def conv2d_dgrad(grad_output: Tensor, input: Tensor, weight: Tensor, relu_output: Optional[Tensor],
                 stride: List[int], padding: List[int], dilation: List[int], groups: int) -> Tensor:
    return _dgrad_impl(grad_output, input, weight, relu_output, stride, padding, dilation, groups)


@torch.library.custom_op("fastconv::conv2d_wgrad", mutates_args=())
def conv2d_wgrad(grad_output: Tensor, input: Tensor, weight: Tensor, relu_output: Optional[Tensor],
                 stride: List[int], padding: List[int], dilation: List[int], groups: int,
                 need_weight: bool, need_bias: bool) -> Tuple[Tensor, Tensor]:
    """Returns (grad_weight, grad_bias); an unrequested gradient is an empty tensor."""
    return _wgrad_impl(grad_output, input, weight, relu_output, stride, padding, dilation, groups, need_weight,
                       need_bias)


def dgrad(grad_output: Tensor, input: Tensor, weight: Tensor, relu_output: Optional[Tensor], stride: List[int],
          padding: List[int], dilation: List[int], groups: int) -> Tensor:
    """fastconv::conv2d_dgrad, called directly when nothing needs to see the op (ops/_eager.py)."""
    if direct_ok(grad_output, input, weight, relu_output):
        return _dgrad_impl(grad_output, input, weight, relu_output, stride, padding, dilation, groups)
    return torch.ops.fastconv.conv2d_dgrad(grad_output, input, weight, relu_output, stride, padding, dilation,
                                           groups)


def wgrad(grad_output: Tensor, input: Tensor, weight: Tensor, relu_output: Optional[Tensor], stride: List[int],
          padding: List[int], dilation: List[int], groups: int, need_weight: bool,
          need_bias: bool) -> Tuple[Tensor, Tensor]:
    """fastconv::conv2d_wgrad, called directly when nothing needs to see the op (ops/_eager.py)."""
    if direct_ok(grad_output, input, weight, relu_output):
        return _wgrad_impl(grad_output, input, weight, relu_output, stride, padding, dilation, groups, need_weight,
                           need_bias)
    return torch.ops.fastconv.conv2d_wgrad(grad_output, input, weight, relu_output, stride, padding, dilation,
                                           groups, need_weight, need_bias)


@conv2d.register_fake
def _(input, weight, bias, stride, padding, dilation, groups):
    return _conv_output(input, weight, stride, padding, dilation)


@conv2d_relu.register_fake
def _(input, weight, bias, stride, padding, dilation, groups):
    return _conv_output(input, weight, stride, padding, dilation)


@conv2d_dgrad.register_fake
def _(grad_output, input, weight, relu_output, stride, padding, dilation, groups):
    return _utils.grad_input_like(input)


@conv2d_wgrad.register_fake
def _(grad_output, input, weight, relu_output, stride, padding, dilation, groups, need_weight, need_bias):
    dw = (torch.empty_like(weight, memory_format=_utils.memory_format_of(weight)) if need_weight
          else grad_output.new_empty(0))
    db = grad_output.new_empty(weight.shape[0] if need_bias else 0)
    return dw, db


def _setup_context(ctx, inputs, output, relu: bool):
    input, weight, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(input, weight, output if relu else None)
    ctx.conv_args = (stride, padding, dilation, groups)
    ctx.has_bias = bias is not None


def _backward(ctx, grad_output):
    input, weight, relu_output = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conv_args
    need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
    need_bias = need_bias and ctx.has_bias
    grad_input = grad_weight = grad_bias = None
    # dgrad() and wgrad() with the route decided once for both.
    if direct_ok(grad_output, input, weight, relu_output):
        dgrad_fn, wgrad_fn = _dgrad_impl, _wgrad_impl
    else:
        dgrad_fn, wgrad_fn = torch.ops.fastconv.conv2d_dgrad, torch.ops.fastconv.conv2d_wgrad
    if need_input:
        grad_input = dgrad_fn(grad_output, input, weight, relu_output, stride, padding, dilation, groups)
    if need_weight or need_bias:
        dw, db = wgrad_fn(grad_output, input, weight, relu_output, stride, padding, dilation, groups, need_weight,
                          need_bias)
        grad_weight = dw if need_weight else None
        grad_bias = db if need_bias else None
    return grad_input, grad_weight, grad_bias, None, None, None, None


class FastconvConv2d(torch.autograd.Function):
    """fastconv::conv2d / ::conv2d_relu (relu) for eager training (ops/_eager.py, eager_route's
    AUTOGRAD): the op's implementation, context and backward without the custom op's dispatch."""

    @staticmethod
    def forward(ctx, input, weight, bias, stride, padding, dilation, groups, relu):
        output = _forward_impl(input, weight, bias, stride, padding, dilation, groups, relu)
        _setup_context(ctx, (input, weight, bias, stride, padding, dilation, groups), output, relu)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        return (*_backward(ctx, grad_output), None)


conv2d.register_autograd(
    _backward, setup_context=lambda ctx, inputs, output: _setup_context(ctx, inputs, output, relu=False))
conv2d_relu.register_autograd(
    _backward, setup_context=lambda ctx, inputs, output: _setup_context(ctx, inputs, output, relu=True))

# torch.autocast: conv2d's rule (torch's lower-precision list on CUDA and CPU): inputs cast to the
# autocast dtype before autograd records the op; the backward ops then see one dtype throughout.
register_lower_precision("conv2d")
register_lower_precision("conv2d_relu")
