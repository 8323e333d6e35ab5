"""fastconv::conv2d_fused: a convolution with a general epilogue, and its autograd.

    c = conv2d(x, w)                                     (no bias)
    z = c * scale[k] + shift[k]  (+ residual)            (scale, shift: per output channel, optional)
    y = act(z)                   (+ residual)            (residual before or after the activation)

act is one of ACTIVATIONS (torch's definitions). What the folded layers of a network need: an
eval-mode BatchNorm folded into the weights (or kept as scale and shift), the activation after it, and
the residual add of a ResNet block. A backend computes the forward (Backend.conv2d_fused_fwd: native
kernels apply the epilogue while the output tile is in registers; the base class composes it from
conv2d_fwd and torch's elementwise ops).

Backward, with g = dL/dy and dz = g * act'(z) (g itself where there is no activation):
    d residual = dz (added before the activation) or g (after),  d shift = sum_{n,p,q} dz,
    d scale = sum_{n,p,q} dz * c,  dc = dz * scale,  dx = dgrad(dc),  dw = wgrad(dc).
With no scale, an activation that is none or ReLU and no residual after it, the derivative follows from
y alone (ReLU: y > 0), so the forward saves y and the dgrad / wgrad kernels apply the ReLU mask while
they read dy, as conv2d_relu's backward does. Otherwise the forward also returns c (return_conv) and the
backward recomputes z from it.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _utils
from ..backends import check_deterministic, resolve
from . import conv2d as conv2d_ops
from ._autocast import register_lower_precision
from ..profiling import is_enabled as profiling_enabled, op_range

# name -> (act(z), d act(z) / dz given (grad, z)): torch's functions and backward kernels, so a composed
# epilogue gives torch's values and gradients.
ACTIVATIONS: Dict[str, Tuple[Callable[[Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]]] = {
    "none": (lambda z: z, lambda g, z: g),
    "relu": (torch.relu, lambda g, z: torch.ops.aten.threshold_backward(g, z, 0)),
    "relu6": (lambda z: F.hardtanh(z, 0.0, 6.0), lambda g, z: torch.ops.aten.hardtanh_backward(g, z, 0.0, 6.0)),
    "silu": (F.silu, torch.ops.aten.silu_backward),
    "hardswish": (F.hardswish, torch.ops.aten.hardswish_backward),
    "hardsigmoid": (F.hardsigmoid, torch.ops.aten.hardsigmoid_backward),
    "gelu": (F.gelu, lambda g, z: torch.ops.aten.gelu_backward(g, z)),
    "sigmoid": (torch.sigmoid, lambda g, z: torch.ops.aten.sigmoid_backward(g, torch.sigmoid(z))),
}


def mask_backward_ok(activation: str, has_scale: bool, residual_after: bool) -> bool:
    """True when the backward needs only y (the ReLU mask or nothing), not the convolution's output."""
    return activation in ("none", "relu") and not has_scale and not residual_after


def _channel(v: Optional[Tensor]) -> Optional[Tensor]:
    return None if v is None else v.view(1, -1, 1, 1)


def compose_epilogue(c: Tensor, bias: Optional[Tensor], scale: Optional[Tensor], residual: Optional[Tensor],
                     activation: str, residual_after: bool) -> Tensor:
    """y from the bias-free convolution output c, in torch's elementwise ops (any backend)."""
    z = c if scale is None else c * _channel(scale)
    if bias is not None:
        z = z + _channel(bias)
    if residual is not None and not residual_after:
        z = z + residual
    y = ACTIVATIONS[activation][0](z)
    if residual is not None and residual_after:
        y = y + residual
    return y


def _fused_impl(input: Tensor, weight: Tensor, bias: Optional[Tensor], scale: Optional[Tensor],
                residual: Optional[Tensor], stride: List[int], padding: List[int], dilation: List[int], groups: int,
                activation: str, residual_after: bool, return_conv: bool) -> Tuple[Tensor, Tensor]:
    b = resolve(input.device)
    check_deterministic(b, "conv2d_fwd")
    args = (input, weight, bias, scale, residual, stride, padding, dilation, groups, activation, residual_after,
            return_conv)
    if not profiling_enabled():
        y, c = b.conv2d_fused_fwd(*args)
    else:
        with op_range(f"conv2d_{activation}", b, input, weight.shape[2:], stride):
            y, c = b.conv2d_fused_fwd(*args)
    return y, (c if c is not None else input.new_empty(0))


@torch.library.custom_op("fastconv::conv2d_fused", mutates_args=())
def conv2d_fused(input: Tensor, weight: Tensor, bias: Optional[Tensor], scale: Optional[Tensor],
                 residual: Optional[Tensor], stride: List[int], padding: List[int], dilation: List[int], groups: int,
                 activation: str, residual_after: bool, return_conv: bool) -> Tuple[Tensor, Tensor]:
    """(y, c): c is the bias-free convolution output when return_conv, else an empty tensor."""
    return _fused_impl(input, weight, bias, scale, residual, stride, padding, dilation, groups, activation,
                       residual_after, return_conv)


@conv2d_fused.register_fake
def _(input, weight, bias, scale, residual, stride, padding, dilation, groups, activation, residual_after,
      return_conv):
    out_hw = _utils.conv_out_hw(input, weight, stride, padding, dilation)
    shape = (input.shape[0], weight.shape[0], *out_hw)
    cl = _utils.conv_output_channels_last(input, weight)
    y = _utils.empty_like_format(shape, input, cl)
    return y, (_utils.empty_like_format(shape, input, cl) if return_conv else input.new_empty(0))


def _setup_context(ctx, inputs, output):
    input, weight, bias, scale, residual, stride, padding, dilation, groups, activation, residual_after, \
        return_conv = inputs
    y, c = output
    ctx.mark_non_differentiable(c)  # returned for the backward only
    mask_ok = mask_backward_ok(activation, scale is not None, residual_after)
    ctx.save_for_backward(input, weight, bias, scale, residual,
                          y if mask_ok and activation == "relu" else None, None if mask_ok else c)
    ctx.conv_args = (stride, padding, dilation, groups)
    ctx.epilogue = (activation, residual_after, mask_ok)


def _backward(ctx, grad_y, grad_c):
    input, weight, bias, scale, residual, relu_y, c = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conv_args
    activation, residual_after, mask_ok = ctx.epilogue
    need_x, need_w, need_b, need_s, need_r = ctx.needs_input_grad[:5]
    grads = [None] * 12
    if mask_ok:
        # dz = g masked by y > 0 (ReLU) or g; the kernels apply the mask while they read g.
        dz_kernels, relu_mask = grad_y, relu_y
        dz = None
        if need_r:
            dz = grad_y if relu_y is None else torch.ops.aten.threshold_backward(grad_y, relu_y, 0)
            grads[4] = dz
    else:
        if c.dim() != 4:  # called without return_conv: recompute c
            c = conv2d_ops.forward(input, weight, None, stride, padding, dilation, groups, False)
        z = compose_epilogue(c, bias, scale, residual if not residual_after else None, "none", False)
        dz = ACTIVATIONS[activation][1](grad_y, z)
        if need_r:
            grads[4] = grad_y if residual_after else dz
        if need_s:
            grads[3] = (dz * c).sum(dim=(0, 2, 3))
        dz_kernels, relu_mask = (dz if scale is None else dz * _channel(scale)), None
    if need_x:
        grads[0] = conv2d_ops.dgrad(dz_kernels, input, weight, relu_mask, stride, padding, dilation, groups)
    # The wgrad kernels give d shift = sum(dc) too when there is no scale (dc = dz).
    bias_from_kernels = need_b and scale is None
    if need_w or bias_from_kernels:
        dw, db = conv2d_ops.wgrad(dz_kernels, input, weight, relu_mask, stride, padding, dilation, groups, need_w,
                                  bias_from_kernels)
        grads[1] = dw if need_w else None
        grads[2] = db if bias_from_kernels else None
    if need_b and scale is not None:
        grads[2] = dz.sum(dim=(0, 2, 3))
    return tuple(grads)


conv2d_fused.register_autograd(_backward, setup_context=_setup_context)
register_lower_precision("conv2d_fused")
