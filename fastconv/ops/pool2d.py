"""torch.library custom ops for pooling: fastconv::max_pool2d, ::max_pool2d_with_indices,
::avg_pool2d and their backward ops. Same structure as ops/conv2d.py.

max_pool2d (no indices) serves inference; fastconv.functional picks max_pool2d_with_indices when
indices are asked for or a gradient will be needed. Indices follow torch: the flat position h*W + w
of the maximum inside its input plane, so they can be passed to torch's max_unpool2d.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .. import _utils
from ..backends import check_deterministic, resolve
from ..profiling import op_range


def _pool_output(input: Tensor, kernel, stride, padding, dilation, ceil_mode, dtype=None) -> Tensor:
    out_hw = _utils.pool_out_hw(input, kernel, stride, padding, dilation, ceil_mode)
    return _utils.empty_like_format((input.shape[0], input.shape[1], *out_hw), input,
                                    _utils.strides_like_channels_last(input), dtype=dtype)


@torch.library.custom_op("fastconv::max_pool2d", mutates_args=())
def max_pool2d(input: Tensor, kernel_size: List[int], stride: List[int], padding: List[int],
               dilation: List[int], ceil_mode: bool) -> Tensor:
    b = resolve(input.device)
    check_deterministic(b, "max_pool2d_fwd")
    with op_range("max_pool2d", b, input, kernel_size, stride):
        y, _ = b.max_pool2d_fwd(input, kernel_size, stride, padding, dilation, ceil_mode, False)
    return y


@torch.library.custom_op("fastconv::max_pool2d_with_indices", mutates_args=())
def max_pool2d_with_indices(input: Tensor, kernel_size: List[int], stride: List[int], padding: List[int],
                            dilation: List[int], ceil_mode: bool) -> Tuple[Tensor, Tensor]:
    b = resolve(input.device)
    check_deterministic(b, "max_pool2d_fwd")
    with op_range("max_pool2d_with_indices", b, input, kernel_size, stride):
        return b.max_pool2d_fwd(input, kernel_size, stride, padding, dilation, ceil_mode, True)


@torch.library.custom_op("fastconv::max_pool2d_backward", mutates_args=())
def max_pool2d_backward(grad_output: Tensor, input: Tensor, indices: Tensor, kernel_size: List[int],
                        stride: List[int], padding: List[int], dilation: List[int], ceil_mode: bool) -> Tensor:
    b = resolve(input.device)
    check_deterministic(b, "max_pool2d_bwd")
    with op_range("max_pool2d_backward", b, input, kernel_size, stride):
        return b.max_pool2d_bwd(grad_output, input, indices, kernel_size, stride, padding, dilation, ceil_mode)


@torch.library.custom_op("fastconv::avg_pool2d", mutates_args=())
def avg_pool2d(input: Tensor, kernel_size: List[int], stride: List[int], padding: List[int], ceil_mode: bool,
               count_include_pad: bool, divisor_override: Optional[int]) -> Tensor:
    b = resolve(input.device)
    check_deterministic(b, "avg_pool2d_fwd")
    with op_range("avg_pool2d", b, input, kernel_size, stride):
        return b.avg_pool2d_fwd(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                divisor_override)


@torch.library.custom_op("fastconv::avg_pool2d_backward", mutates_args=())
def avg_pool2d_backward(grad_output: Tensor, input: Tensor, kernel_size: List[int], stride: List[int],
                        padding: List[int], ceil_mode: bool, count_include_pad: bool,
                        divisor_override: Optional[int]) -> Tensor:
    b = resolve(input.device)
    check_deterministic(b, "avg_pool2d_bwd")
    with op_range("avg_pool2d_backward", b, input, kernel_size, stride):
        return b.avg_pool2d_bwd(grad_output, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                divisor_override)


@max_pool2d.register_fake
def _(input, kernel_size, stride, padding, dilation, ceil_mode):
    return _pool_output(input, kernel_size, stride, padding, dilation, ceil_mode)


@max_pool2d_with_indices.register_fake
def _(input, kernel_size, stride, padding, dilation, ceil_mode):
    return (_pool_output(input, kernel_size, stride, padding, dilation, ceil_mode),
            _pool_output(input, kernel_size, stride, padding, dilation, ceil_mode, dtype=torch.int64))


@max_pool2d_backward.register_fake
def _(grad_output, input, indices, kernel_size, stride, padding, dilation, ceil_mode):
    return _utils.grad_input_like(input)


@avg_pool2d.register_fake
def _(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    return _pool_output(input, kernel_size, stride, padding, (1, 1), ceil_mode)


@avg_pool2d_backward.register_fake
def _(grad_output, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    return _utils.grad_input_like(input)


def _max_setup_context(ctx, inputs, output):
    input, kernel_size, stride, padding, dilation, ceil_mode = inputs
    _, indices = output
    ctx.mark_non_differentiable(indices)
    # The indices get no gradient: without this autograd fills a zero tensor of their shape for the
    # backward's second argument on every step (0.18 ms for ShuffleNetV2's 8x24x56x56 stem pool).
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(input, indices)
    ctx.pool_args = (kernel_size, stride, padding, dilation, ceil_mode)


def _max_backward(ctx, grad_output, _grad_indices):
    if grad_output is None:  # grads are not materialized: no gradient reached the output
        return None, None, None, None, None, None
    input, indices = ctx.saved_tensors
    grad_input = torch.ops.fastconv.max_pool2d_backward(grad_output, input, indices, *ctx.pool_args)
    return grad_input, None, None, None, None, None


def _avg_setup_context(ctx, inputs, output):
    input = inputs[0]
    ctx.save_for_backward(input)
    ctx.pool_args = tuple(inputs[1:])


def _avg_backward(ctx, grad_output):
    (input,) = ctx.saved_tensors
    grad_input = torch.ops.fastconv.avg_pool2d_backward(grad_output, input, *ctx.pool_args)
    return grad_input, None, None, None, None, None, None


# torch.autocast: no autocast kernel on purpose. torch runs max_pool2d/avg_pool2d in their input's dtype
# under autocast (they are on no cast list); without a kernel for the Autocast keys these ops fall
# through autocast and do the same (tests/test_autocast.py checks it).
max_pool2d_with_indices.register_autograd(_max_backward, setup_context=_max_setup_context)
avg_pool2d.register_autograd(_avg_backward, setup_context=_avg_setup_context)
