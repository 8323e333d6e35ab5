"""torch.library custom ops for adaptive pooling: fastconv::adaptive_avg_pool2d,
::adaptive_max_pool2d (with indices) and their backward ops. Same structure as ops/pool2d.py.

Output (p, q) of an output_size (P, Q) pools input rows [floor(p*H/P), ceil((p+1)*H/P)) and the
columns likewise (torch's windows). Global average pooling is output_size (1, 1); the backends give it
its own path. Indices of adaptive_max_pool2d are torch's: h * W + w in the input plane.

The 1-d pools (adaptive_avg_pool1d, max_pool1d, avg_pool1d) have no ops of their own: fastconv.functional
runs the 2-d ops on an (N, C, 1, L) view of the input.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor

from .. import _utils
from ..backends import check_deterministic, resolve
from ..profiling import is_enabled as profiling_enabled, op_range


def _adaptive_output(input: Tensor, output_size, dtype=None) -> Tensor:
    return _utils.empty_like_format((input.shape[0], input.shape[1], *output_size), input,
                                    _utils.strides_like_channels_last(input), dtype=dtype)


# The forward implementations are plain functions too: fastconv.functional calls them directly in eager
# inference (ops/_eager.py: direct_ok), where the custom op's dispatch would cost more than a global
# pooling of a classifier head's features.
def avg_impl(input: Tensor, output_size: List[int]) -> Tensor:
    b = resolve(input.device)
    check_deterministic(b, "adaptive_avg_pool2d_fwd")
    if not profiling_enabled():  # the usual case: no range
        return b.adaptive_avg_pool2d_fwd(input, output_size)
    with op_range("adaptive_avg_pool2d", b, input, output_size, output_size):
        return b.adaptive_avg_pool2d_fwd(input, output_size)


def max_impl(input: Tensor, output_size: List[int]) -> Tuple[Tensor, Tensor]:
    b = resolve(input.device)
    check_deterministic(b, "adaptive_max_pool2d_fwd")
    if not profiling_enabled():
        return b.adaptive_max_pool2d_fwd(input, output_size)
    with op_range("adaptive_max_pool2d", b, input, output_size, output_size):
        return b.adaptive_max_pool2d_fwd(input, output_size)


adaptive_avg_pool2d = torch.library.custom_op("fastconv::adaptive_avg_pool2d", avg_impl, mutates_args=())
adaptive_max_pool2d = torch.library.custom_op("fastconv::adaptive_max_pool2d", max_impl, mutates_args=())


@torch.library.custom_op("fastconv::adaptive_avg_pool2d_backward", mutates_args=())
def adaptive_avg_pool2d_backward(grad_output: Tensor, input: Tensor) -> Tensor:
    b = resolve(input.device)
    check_deterministic(b, "adaptive_avg_pool2d_bwd")
    with op_range("adaptive_avg_pool2d_backward", b, input, grad_output.shape[2:], grad_output.shape[2:]):
        return b.adaptive_avg_pool2d_bwd(grad_output, input)


@torch.library.custom_op("fastconv::adaptive_max_pool2d_backward", mutates_args=())
def adaptive_max_pool2d_backward(grad_output: Tensor, input: Tensor, indices: Tensor) -> Tensor:
    b = resolve(input.device)
    check_deterministic(b, "adaptive_max_pool2d_bwd")
    with op_range("adaptive_max_pool2d_backward", b, input, grad_output.shape[2:], grad_output.shape[2:]):
        return b.adaptive_max_pool2d_bwd(grad_output, input, indices)


@adaptive_avg_pool2d.register_fake
def _(input, output_size):
    return _adaptive_output(input, output_size)


@adaptive_avg_pool2d_backward.register_fake
def _(grad_output, input):
    return _utils.grad_input_like(input)


@adaptive_max_pool2d.register_fake
def _(input, output_size):
    return _adaptive_output(input, output_size), _adaptive_output(input, output_size, dtype=torch.int64)


@adaptive_max_pool2d_backward.register_fake
def _(grad_output, input, indices):
    return _utils.grad_input_like(input)


def _avg_setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _avg_backward(ctx, grad_output):
    (input,) = ctx.saved_tensors
    return torch.ops.fastconv.adaptive_avg_pool2d_backward(grad_output, input), None


def _max_setup_context(ctx, inputs, output):
    _, indices = output
    ctx.mark_non_differentiable(indices)
    ctx.save_for_backward(inputs[0], indices)


def _max_backward(ctx, grad_output, _grad_indices):
    input, indices = ctx.saved_tensors
    return torch.ops.fastconv.adaptive_max_pool2d_backward(grad_output, input, indices), None


# torch.autocast: no autocast kernel, as for the other pools (torch runs them in the input's dtype).
adaptive_avg_pool2d.register_autograd(_avg_backward, setup_context=_avg_setup_context)
adaptive_max_pool2d.register_autograd(_max_backward, setup_context=_max_setup_context)
