"""fastconv's functional API, drop-in for torch.nn.functional.conv2d / max_pool2d / avg_pool2d.

This layer owns torch semantics: it accepts the same arguments (ints or tuples, padding='same' or
'valid', unbatched (C, H, W) input), applies torch's validation with messages that name the argument
and the expected form, normalizes everything once, and calls the custom ops in fastconv.ops, which
dispatch to a backend. Nothing here computes a convolution or a pooling.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from . import ops  # noqa: F401  (registers torch.ops.fastconv.*)
from .ops import conv1d as conv1d_ops
from .ops import conv2d as conv_ops
from .ops import conv_transpose as transpose_ops
from .ops import conv2d_fused as fused_ops
from .ops import pool_adaptive as adaptive_ops
from .ops._eager import direct_ok
from .ops._autocast import autocast_unifies
from .ops._eager import _PLAIN_TYPES
from ._utils import as_int, ntuple, pair, pool_out_hw
from .errors import ArgumentError, ArgumentTypeError

__all__ = ["conv1d", "conv1d_relu", "conv2d", "conv2d_relu", "conv2d_epilogue", "conv_transpose1d", "conv_transpose2d",
           "max_pool2d", "avg_pool2d"]

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_tensor(t, name: str, op: str) -> None:
    if not isinstance(t, Tensor):
        raise ArgumentTypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")


def _check_float(t: Tensor, name: str, op: str) -> None:
    if t.dtype not in _FLOAT_DTYPES:
        raise ArgumentTypeError(f"{op}: {name} must be a floating-point tensor (float32, float64, float16 or "
                                f"bfloat16), got {t.dtype}")


def _batched(input: Tensor, op: str, what: str, nd: int = 2) -> Tuple[Tensor, bool]:
    """Adds the batch dim to an unbatched (C, *spatial) input of nd spatial dims; returns
    (batched input, was_unbatched)."""
    if input.dim() == nd + 1:
        return input.unsqueeze(0), True
    if input.dim() == nd + 2:
        return input, False
    raise ArgumentError(f"{op}: expected {nd + 1}D (unbatched) or {nd + 2}D (batched) {what}, but got input of "
                        f"size: {list(input.shape)}")


def _positive(values: Tuple[int, ...], name: str, op: str, torch_says: str = "") -> None:
    """torch_says: torch's own words for the error, kept in ours (code matching torch's message finds it)."""
    if any(v <= 0 for v in values):
        why = f" ({torch_says})" if torch_says else ""
        raise ArgumentError(f"{op}: {name} must be positive{why}, got {name}={tuple(values)}")


# torch's messages for non-positive convolution strides and dilations
_CONV_STRIDE_SAYS = "non-positive stride is not supported"
_CONV_DILATION_SAYS = "dilation should be greater than zero"


# ----------------------------------------------------------------------------------------------------
# Convolution


# _conv_args is a pure function of its arguments' signature when the tensors are plain CPU tensors of
# one dtype and stride, padding and dilation are ints or tuples of ints (no 'same' padding, which may
# pad the input): their types, shapes and dtypes and the parameters themselves. A model calls each layer
# with one signature, so the validated, normalized result is remembered per signature and a repeated
# call skips the checks (a few us, several times that after a large kernel has evicted the
# interpreter's data). Invalid calls raise and are never remembered. Emptied when full.
_CONV_ARGS_MEMO: dict = {}
_CONV_ARGS_MEMO_MAX = 1024


def _int_or_ints(v) -> bool:
    return type(v) is int or (type(v) is tuple and all(type(e) is int for e in v))


def _conv_args_key(input, weight, bias, stride, padding, dilation, groups, op: str):
    """The memo key of a call, or None when the call's validation may depend on more than its key."""
    if type(input) not in _PLAIN_TYPES or type(weight) not in _PLAIN_TYPES or type(groups) is not int:
        return None
    if not (input.is_cpu and weight.is_cpu) or weight.dtype != input.dtype:
        return None
    if bias is not None and (type(bias) not in _PLAIN_TYPES or not bias.is_cpu or bias.dtype != input.dtype):
        return None
    if not (_int_or_ints(stride) and _int_or_ints(padding) and _int_or_ints(dilation)):
        return None
    return (op, input.shape, weight.shape, None if bias is None else bias.shape, input.dtype, stride, padding,
            dilation, groups)


def _conv_args(input, weight, bias, stride, padding, dilation, groups, op: str, nd: int = 2):
    """Validates conv arguments with torch's rules; returns the normalized call (input batched: nd + 2
    dims, was_unbatched, stride, padding, dilation as lists, groups)."""
    key = _conv_args_key(input, weight, bias, stride, padding, dilation, groups, op)
    if key is not None:
        hit = _CONV_ARGS_MEMO.get(key)
        if hit is not None:
            unbatched, stride, padding, dilation, groups = hit
            return (input.unsqueeze(0) if unbatched else input), unbatched, list(stride), list(padding), \
                list(dilation), groups
    x, unbatched, stride, padding, dilation, groups = _validate_conv_args(input, weight, bias, stride, padding,
                                                                          dilation, groups, op, nd)
    if key is not None:
        if len(_CONV_ARGS_MEMO) >= _CONV_ARGS_MEMO_MAX:
            _CONV_ARGS_MEMO.clear()
        _CONV_ARGS_MEMO[key] = (unbatched, tuple(stride), tuple(padding), tuple(dilation), groups)
    return x, unbatched, stride, padding, dilation, groups


def _validate_conv_args(input, weight, bias, stride, padding, dilation, groups, op: str, nd: int = 2):
    """_conv_args without the memo; nd spatial dims (2: conv2d, 1: conv1d)."""
    _check_tensor(input, "input", op)
    _check_tensor(weight, "weight", op)
    if bias is not None:
        _check_tensor(bias, "bias", op)
    x, unbatched = _batched(input, op, f"input to conv{nd}d", nd)
    _check_weight_rank(input, weight, nd, op, "out_channels, in_channels/groups")
    _check_same_dtype_device(x, weight, bias, op)
    _check_float(x, "input", op)
    groups = as_int(groups, "groups", op, tensor_dims=(0, 1))
    if groups <= 0:
        raise ArgumentError(f"{op}: groups must be positive (non-positive groups is not supported), got {groups}")
    stride = ntuple(stride, nd, "stride", op)
    dilation = ntuple(dilation, nd, "dilation", op)
    _positive(stride, "stride", op, _CONV_STRIDE_SAYS)
    _positive(dilation, "dilation", op, _CONV_DILATION_SAYS)

    if not isinstance(padding, str):  # torch checks the padding before the shapes
        padding = ntuple(padding, nd, "padding", op)
        if any(p < 0 for p in padding):
            raise ArgumentError(f"{op}: padding must be non-negative (negative padding is not supported), got "
                                f"padding={tuple(padding)}")

    K, Cg = weight.shape[:2]
    kernel = tuple(weight.shape[2:])
    if 0 in kernel:
        names = ("kernel_height", "kernel_width")[2 - nd:]
        sizes = " ".join(f"{n}: {k}" for n, k in zip(names, kernel))
        raise ArgumentError(f"{op}: kernel size should be greater than zero, but got weight of size "
                            f"{list(weight.shape)} ({sizes})")
    _check_groups(weight, groups, op)
    if x.shape[1] != Cg * groups:
        raise ArgumentError(f"{op}: Given groups={groups}, weight of size {list(weight.shape)}, expected input"
                            f"{list(x.shape)} to have {Cg * groups} channels, but got {x.shape[1]} channels "
                            f"instead")
    _check_nonempty_map(x, op)
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != K):
        raise ArgumentError(f"{op}: Given weight of size {list(weight.shape)}, expected bias to be 1-dimensional "
                            f"with {K} elements, but got bias of size {list(bias.shape)} instead")

    if isinstance(padding, str):
        if padding == "valid":
            padding = (0,) * nd
        elif padding == "same":
            if any(s != 1 for s in stride):
                raise ArgumentError(f"{op}: padding='same' is not supported for strided convolutions "
                                    f"(stride={stride})")
            # torch: total padding dilation*(k-1), left = total // 2, the odd remainder on the
            # right/bottom. The remainder is padded onto the input here so kernels see symmetric pads.
            total = [d * (k - 1) for d, k in zip(dilation, kernel)]
            padding = tuple(t // 2 for t in total)
            extra = [t - 2 * p for t, p in zip(total, padding)]
            if any(extra):
                pads = []
                for e in reversed(extra):  # F.pad: last dim first
                    pads += [0, e]
                x = F.pad(x, pads)
        else:
            raise ArgumentError(f"{op}: Invalid padding string: {padding!r}; expected 'same', 'valid', an int "
                                f"or a tuple of {nd} ints")

    padded = [x.shape[2 + i] + 2 * padding[i] for i in range(nd)]
    effective = [dilation[i] * (kernel[i] - 1) + 1 for i in range(nd)]
    if any(p < e for p, e in zip(padded, effective)):
        raise ArgumentError(f"{op}: Calculated padded input size per channel: ({' x '.join(map(str, padded))}). "
                            f"Kernel size: ({' x '.join(map(str, effective))}). Kernel size can't be greater "
                            f"than actual input size")
    return x, unbatched, list(stride), list(padding), list(dilation), groups


def _check_weight_rank(input: Tensor, weight: Tensor, nd: int, op: str, channel_dims: str) -> None:
    if weight.dim() == nd + 2:
        return
    # torch's words first: "weight should have at least three dimensions" / "Expected 3-dimensional input
    # for 3-dimensional weight [...]"
    if weight.dim() < 3:
        said = "weight should have at least three dimensions"
    else:
        said = (f"Expected {weight.dim()}-dimensional input for {weight.dim()}-dimensional weight "
                f"{list(weight.shape)}, but got {input.dim()}-dimensional input of size {list(input.shape)} instead")
    kernel_dims = "kH, kW" if nd == 2 else "kW"
    raise ArgumentError(f"{op}: {said}: weight must be {nd + 2}-dimensional ({channel_dims}, {kernel_dims}), got "
                        f"weight of size {list(weight.shape)}")


def _check_same_dtype_device(x: Tensor, weight: Tensor, bias: Optional[Tensor], op: str) -> None:
    # Under torch.autocast the op casts input, weight and bias to the autocast dtype (ops/_autocast.py),
    # so mixed float32/float16/bfloat16 arguments are valid there, as with F.conv2d.
    mixed_ok = (weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype)) and \
        autocast_unifies(x, weight, bias)
    if weight.dtype != x.dtype and not mixed_ok:
        raise ArgumentTypeError(f"{op}: input dtype {x.dtype} and weight dtype {weight.dtype} should be the same")
    if bias is not None and bias.dtype != x.dtype and not mixed_ok:
        raise ArgumentTypeError(f"{op}: input dtype {x.dtype} and bias dtype {bias.dtype} should be the same")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ArgumentError(f"{op}: input is on {x.device} but {name} is on {t.device}; they must be on "
                                f"the same device")


def _check_groups(weight: Tensor, groups: int, op: str) -> None:
    """torch's rule: weight's dim 0 (out_channels; in_channels for a transposed conv) a multiple of groups."""
    if weight.shape[0] < groups:
        raise ArgumentError(f"{op}: Given groups={groups}, expected weight to be at least {groups} at dimension 0, "
                            f"but got weight of size {list(weight.shape)} instead")
    if weight.shape[0] % groups != 0:
        raise ArgumentError(f"{op}: Given groups={groups}, expected weight to be divisible by {groups} at "
                            f"dimension 0, but got weight of size {list(weight.shape)} instead")


def _check_nonempty_map(x: Tensor, op: str) -> None:
    if 0 in x.shape[2:] and x.shape[0] != 0 and x.shape[1] != 0:
        raise ArgumentError(f"{op}: Only zero batch or zero channel inputs are supported, but got input shape: "
                            f"{list(x.shape)}")


def conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
           stride: Union[int, Sequence[int]] = 1, padding: Union[str, int, Sequence[int]] = 0,
           dilation: Union[int, Sequence[int]] = 1, groups: int = 1) -> Tensor:
    """2-d convolution; same arguments, semantics and output memory format as F.conv2d."""
    x, unbatched, stride, padding, dilation, groups = _conv_args(input, weight, bias, stride, padding, dilation,
                                                         groups, "conv2d")
    y = conv_ops.forward(x, weight, bias, stride, padding, dilation, groups, relu=False)
    return y.squeeze(0) if unbatched else y


def conv2d_relu(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                stride: Union[int, Sequence[int]] = 1, padding: Union[str, int, Sequence[int]] = 0,
                dilation: Union[int, Sequence[int]] = 1, groups: int = 1) -> Tensor:
    """relu(conv2d(...)) computed in one pass: bias and ReLU are applied by the convolution kernel as
    it stores the output, and the backward applies the ReLU mask while reading grad_output."""
    x, unbatched, stride, padding, dilation, groups = _conv_args(input, weight, bias, stride, padding, dilation,
                                                         groups, "conv2d_relu")
    y = conv_ops.forward(x, weight, bias, stride, padding, dilation, groups, relu=True)
    return y.squeeze(0) if unbatched else y


def conv2d_epilogue(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                    stride: Union[int, Sequence[int]] = 1, padding: Union[str, int, Sequence[int]] = 0,
                    dilation: Union[int, Sequence[int]] = 1, groups: int = 1, *, scale: Optional[Tensor] = None,
                    activation: str = "none", residual: Optional[Tensor] = None,
                    residual_after_activation: bool = False) -> Tensor:
    """A convolution and its epilogue in one op:

        y = act(conv2d(input, weight) * scale + bias + residual)       (residual_after_activation=False)
        y = act(conv2d(input, weight) * scale + bias) + residual       (residual_after_activation=True)

    with scale and bias per output channel (optional), act one of 'none', 'relu', 'relu6', 'silu',
    'hardswish', 'hardsigmoid', 'gelu', 'sigmoid' (torch's definitions) and residual (optional) a tensor of
    the output's shape. The arguments before `*` are F.conv2d's. Autograd gives every tensor's gradient.
    """
    op = "conv2d_epilogue"
    x, unbatched, stride, padding, dilation, groups = _conv_args(input, weight, bias, stride, padding, dilation,
                                                         groups, op)
    if not isinstance(activation, str) or activation not in fused_ops.ACTIVATIONS:
        raise ArgumentError(f"{op}: activation must be one of {list(fused_ops.ACTIVATIONS)}, got {activation!r}")
    if not isinstance(residual_after_activation, bool):
        raise ArgumentTypeError(f"{op}: residual_after_activation must be a bool, got "
                                f"{type(residual_after_activation).__name__}")
    K = weight.shape[0]
    if scale is not None:
        _check_tensor(scale, "scale", op)
        if scale.dim() != 1 or scale.shape[0] != K:
            raise ArgumentError(f"{op}: expected scale to be 1-dimensional with {K} elements (one per output "
                                f"channel), but got scale of size {list(scale.shape)}")
    if residual is not None:
        _check_tensor(residual, "residual", op)
        out_shape = [x.shape[0], K, *_conv_out_hw_of(x, weight, stride, padding, dilation)]
        want = out_shape[1:] if unbatched else out_shape
        if list(residual.shape) != want:
            raise ArgumentError(f"{op}: expected residual of the output's size {want}, but got residual of "
                                f"size {list(residual.shape)}")
        if unbatched:
            residual = residual.unsqueeze(0)
    for name, t in (("scale", scale), ("residual", residual)):
        if t is None:
            continue
        if t.device != x.device:
            raise ArgumentError(f"{op}: input is on {x.device} but {name} is on {t.device}; they must be on the "
                                f"same device")
        if t.dtype != x.dtype and not autocast_unifies(x, t):
            raise ArgumentTypeError(f"{op}: input dtype {x.dtype} and {name} dtype {t.dtype} should be the same")
    tensors = (x, weight, bias, scale, residual)
    return_conv = _may_need_grad(*tensors) and not fused_ops.mask_backward_ok(activation, scale is not None,
                                                                              residual_after_activation)
    args = (x, weight, bias, scale, residual, stride, padding, dilation, groups, activation,
            residual_after_activation, return_conv)
    if direct_ok(*tensors):
        y, _ = fused_ops._fused_impl(*args)
    else:
        y, _ = torch.ops.fastconv.conv2d_fused(*args)
    return y.squeeze(0) if unbatched else y


def _conv_out_hw_of(x: Tensor, weight: Tensor, stride, padding, dilation):
    from ._utils import conv_out_hw

    return conv_out_hw(x, weight, stride, padding, dilation)


# ----------------------------------------------------------------------------------------------------
# 1-d convolution (ops/conv1d.py: the 2-d kernels on (N, C, 1, L) views)


def conv1d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
           stride: Union[int, Sequence[int]] = 1, padding: Union[str, int, Sequence[int]] = 0,
           dilation: Union[int, Sequence[int]] = 1, groups: int = 1) -> Tensor:
    """1-d convolution; same arguments and semantics as F.conv1d (input (N, C, L) or unbatched (C, L))."""
    x, unbatched, stride, padding, dilation, groups = _conv_args(input, weight, bias, stride, padding, dilation,
                                                                 groups, "conv1d", nd=1)
    y = conv1d_ops.forward(x, weight, bias, stride, padding, dilation, groups, relu=False)
    return y.squeeze(0) if unbatched else y


def conv1d_relu(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                stride: Union[int, Sequence[int]] = 1, padding: Union[str, int, Sequence[int]] = 0,
                dilation: Union[int, Sequence[int]] = 1, groups: int = 1) -> Tensor:
    """relu(conv1d(...)) in one pass, as conv2d_relu."""
    x, unbatched, stride, padding, dilation, groups = _conv_args(input, weight, bias, stride, padding, dilation,
                                                                 groups, "conv1d_relu", nd=1)
    y = conv1d_ops.forward(x, weight, bias, stride, padding, dilation, groups, relu=True)
    return y.squeeze(0) if unbatched else y


# ----------------------------------------------------------------------------------------------------
# Transposed convolution (ops/conv_transpose.py: the dgrad kernels)


def _transposed_args(input, weight, bias, stride, padding, output_padding, groups, dilation, op: str, nd: int):
    """Validates F.conv_transpose{nd}d's arguments with torch's rules; returns (input batched, unbatched,
    stride, padding, output_padding, dilation as lists, groups)."""
    _check_tensor(input, "input", op)
    _check_tensor(weight, "weight", op)
    if bias is not None:
        _check_tensor(bias, "bias", op)
    x, unbatched = _batched(input, op, f"input to {op}", nd)
    _check_weight_rank(input, weight, nd, op, "in_channels, out_channels/groups")
    _check_same_dtype_device(x, weight, bias, op)
    _check_float(x, "input", op)
    groups = as_int(groups, "groups", op, tensor_dims=(0, 1))
    if groups <= 0:
        raise ArgumentError(f"{op}: groups must be positive (non-positive groups is not supported), got {groups}")
    if isinstance(padding, str):
        raise ArgumentTypeError(f"{op}: padding must be an int or a tuple of {nd} ints (a transposed convolution "
                                f"takes no padding string), got {padding!r}")
    stride = ntuple(stride, nd, "stride", op)
    padding = ntuple(padding, nd, "padding", op)
    output_padding = ntuple(output_padding, nd, "output_padding", op)
    dilation = ntuple(dilation, nd, "dilation", op)
    _positive(stride, "stride", op, _CONV_STRIDE_SAYS)
    _positive(dilation, "dilation", op, _CONV_DILATION_SAYS)
    for name, v in (("padding", padding), ("output_padding", output_padding)):
        if any(p < 0 for p in v):
            raise ArgumentError(f"{op}: {name} must be non-negative (negative {name} is not supported), got "
                                f"{name}={tuple(v)}")
    if any(o >= s and o >= d for o, s, d in zip(output_padding, stride, dilation)):
        dims = ("height", "width")[2 - nd:]
        got = " ".join(f"{what}_{dim}: {v[i]}" for what, v in (("output_padding", output_padding),
                                                                ("stride", stride), ("dilation", dilation))
                       for i, dim in enumerate(dims))
        raise ArgumentError(f"{op}: output padding must be smaller than either stride or dilation, but got {got}")
    kernel = tuple(weight.shape[2:])
    if 0 in kernel:
        raise ArgumentError(f"{op}: kernel size should be greater than zero, but got weight of size "
                            f"{list(weight.shape)}")
    _check_groups(weight, groups, op)
    if x.shape[1] != weight.shape[0]:
        raise ArgumentError(f"{op}: Given transposed=1, weight of size {list(weight.shape)}, expected input"
                            f"{list(x.shape)} to have {weight.shape[0]} channels, but got {x.shape[1]} channels "
                            f"instead")
    _check_nonempty_map(x, op)
    out_channels = weight.shape[1] * groups
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != out_channels):
        raise ArgumentError(f"{op}: Given transposed=1, weight of size {list(weight.shape)}, expected bias to be "
                            f"1-dimensional with {out_channels} elements, but got bias of size {list(bias.shape)} "
                            f"instead")
    out = [transpose_ops.output_size(x.shape[2 + i], kernel[i], stride[i], padding[i], output_padding[i],
                                     dilation[i]) for i in range(nd)]
    if any(o <= 0 for o in out):
        raise ArgumentError(f"{op}: Given input size per channel: ({' x '.join(str(v) for v in x.shape[2:])}). "
                            f"Calculated output size per channel: ({' x '.join(map(str, out))}). Output size is "
                            f"too small (reduce padding or enlarge the input)")
    return x, unbatched, list(stride), list(padding), list(output_padding), list(dilation), groups


def _conv_transpose(input, weight, bias, stride, padding, output_padding, groups, dilation, op: str, nd: int):
    x, unbatched, stride, padding, output_padding, dilation, groups = _transposed_args(
        input, weight, bias, stride, padding, output_padding, groups, dilation, op, nd)
    y = transpose_ops.forward(x, weight, bias, stride, padding, output_padding, dilation, groups)
    return y.squeeze(0) if unbatched else y


def conv_transpose2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                     stride: Union[int, Sequence[int]] = 1, padding: Union[int, Sequence[int]] = 0,
                     output_padding: Union[int, Sequence[int]] = 0, groups: int = 1,
                     dilation: Union[int, Sequence[int]] = 1) -> Tensor:
    """2-d transposed convolution; same arguments (note: groups before dilation), semantics and output
    memory format as F.conv_transpose2d. Weight (in_channels, out_channels/groups, kH, kW)."""
    return _conv_transpose(input, weight, bias, stride, padding, output_padding, groups, dilation,
                           "conv_transpose2d", 2)


def conv_transpose1d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                     stride: Union[int, Sequence[int]] = 1, padding: Union[int, Sequence[int]] = 0,
                     output_padding: Union[int, Sequence[int]] = 0, groups: int = 1,
                     dilation: Union[int, Sequence[int]] = 1) -> Tensor:
    """1-d transposed convolution; same arguments and semantics as F.conv_transpose1d."""
    return _conv_transpose(input, weight, bias, stride, padding, output_padding, groups, dilation,
                           "conv_transpose1d", 1)


# ----------------------------------------------------------------------------------------------------
# Pooling


def _pool_args(input, kernel_size, stride, padding, dilation, ceil_mode, op: str):
    # torch's order: the window's parameters first, then the input's shape (its messages are kept in ours)
    _check_tensor(input, "input", op)
    kernel = pair(kernel_size, "kernel_size", op)
    if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0):
        stride = kernel  # torch: stride defaults to kernel_size (None or an empty list)
    stride = pair(stride, "stride", op)
    padding = pair(padding, "padding", op)
    dilation = pair(dilation, "dilation", op)
    _positive(kernel, "kernel_size", op)
    _positive(stride, "stride", op, "stride should not be zero")
    _positive(dilation, "dilation", op, "dilation should be greater than zero")
    if not isinstance(ceil_mode, bool):
        raise ArgumentTypeError(f"{op}: ceil_mode must be a bool, got {type(ceil_mode).__name__}")
    if any(p < 0 for p in padding):
        raise ArgumentError(f"{op}: pad must be non-negative, but got padding={tuple(padding)}")
    # torch bounds the padding by half the kernel size, whatever the dilation.
    if any(p > k // 2 for p, k in zip(padding, kernel)):
        raise ArgumentError(f"{op}: pad should be at most half of effective kernel size (pad should be smaller "
                            f"than or equal to half of kernel size), but got padding={tuple(padding)} and "
                            f"kernel_size={tuple(kernel)}")
    if input.dim() not in (3, 4) or any(s == 0 for s in input.shape[-3:]):
        raise ArgumentError(f"{op}: Expected 3D or 4D (batch mode) tensor with optional 0 dim batch size for "
                            f"input, but got: {list(input.shape)} (a 3D (C, H, W) or 4D (N, C, H, W) input with "
                            f"non-zero C, H, W)")
    _check_float(input, "input", op)
    x, unbatched = _batched(input, op, "input")
    out_hw = pool_out_hw(x, kernel, stride, padding, dilation, ceil_mode)
    if out_hw[0] < 1 or out_hw[1] < 1:
        raise ArgumentError(f"{op}: Given input size: ({x.shape[1]}x{x.shape[2]}x{x.shape[3]}). Calculated "
                            f"output size: ({x.shape[1]}x{out_hw[0]}x{out_hw[1]}). Output size is too small")
    return x, unbatched, list(kernel), list(stride), list(padding), list(dilation)


def _may_need_grad(*tensors: Optional[Tensor]) -> bool:
    """Whether the op chosen for these tensors must support a backward (max pool's indices, the fused
    op's saved convolution). Under torch.jit.trace always: the traced graph must not depend on the grad
    mode, since jit.trace's check retraces under torch.no_grad() and compares the graphs (a graph
    traced with grad held max_pool2d_with_indices, the check's max_pool2d), and a traced module may be
    trained."""
    if torch.jit.is_tracing():
        return True
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def max_pool2d(input: Tensor, kernel_size: Union[int, Sequence[int]], stride=None,
               padding: Union[int, Sequence[int]] = 0, dilation: Union[int, Sequence[int]] = 1,
               ceil_mode: bool = False, return_indices: bool = False):
    """Same as F.max_pool2d; indices (with return_indices=True) are torch's: h * W + w in the plane."""
    x, unbatched, kernel, stride, padding, dilation = _pool_args(input, kernel_size, stride, padding, dilation,
                                                                 ceil_mode, "max_pool2d")
    if return_indices or _may_need_grad(x):
        y, idx = torch.ops.fastconv.max_pool2d_with_indices(x, kernel, stride, padding, dilation, ceil_mode)
    else:
        y, idx = torch.ops.fastconv.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode), None
    if unbatched:
        y = y.squeeze(0)
        idx = idx.squeeze(0) if idx is not None else None
    return (y, idx) if return_indices else y


def avg_pool2d(input: Tensor, kernel_size: Union[int, Sequence[int]], stride=None,
               padding: Union[int, Sequence[int]] = 0, ceil_mode: bool = False, count_include_pad: bool = True,
               divisor_override: Optional[int] = None) -> Tensor:
    """Same as F.avg_pool2d, including count_include_pad and divisor_override."""
    x, unbatched, kernel, stride, padding, _ = _pool_args(input, kernel_size, stride, padding, 1, ceil_mode,
                                                          "avg_pool2d")
    if not isinstance(count_include_pad, bool):
        raise ArgumentTypeError(f"avg_pool2d: count_include_pad must be a bool, got "
                                f"{type(count_include_pad).__name__}")
    if divisor_override is not None:
        divisor_override = as_int(divisor_override, "divisor_override", "avg_pool2d")
        if divisor_override == 0:
            raise ArgumentError("avg_pool2d: divisor must be not zero (divisor_override=0)")
    y = torch.ops.fastconv.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad,
                                      divisor_override)
    return y.squeeze(0) if unbatched else y


# ----------------------------------------------------------------------------------------------------
# Adaptive pooling and the 1-d pools (issue #30). The 1-d pools run the 2-d ops on an (N, C, 1, L) view
# of their input (no copy); their indices are then torch's 1-d ones (h = 0, so h * W + w = w).

__all__ += ["adaptive_avg_pool2d", "adaptive_max_pool2d", "adaptive_avg_pool1d", "max_pool1d", "avg_pool1d"]


def _adaptive_input(input, op: str) -> Tuple[Tensor, bool]:
    """Checks an adaptive 2-d pool's input as torch does; returns (input as 4-d, was_unbatched)."""
    _check_tensor(input, "input", op)
    if input.dim() not in (3, 4):
        # torch's words differ by side: "Input dimension should be at least 3" below 3 dims
        said = "Input dimension should be at least 3; " if input.dim() < 3 else ""
        raise ArgumentError(f"{op}(): {said}Expected 3D or 4D tensor, but got {list(input.shape)}")
    # torch: avg checks the spatial dimensions only (an empty channel dimension gives an empty output), max
    # every dimension after the first
    for i in range(input.dim() - 2 if op == "adaptive_avg_pool2d" else 1, input.dim()):
        if input.shape[i] == 0:
            raise ArgumentError(f"{op}(): Expected input to have non-zero size for non-batch dimensions, but input "
                                f"has sizes {list(input.shape)} with dimension {i} being empty")
    _check_float(input, "input", op)
    return (input.unsqueeze(0), True) if input.dim() == 3 else (input, False)


def _adaptive_size(output_size, x: Tensor, op: str) -> list:
    """output_size as torch takes it (an int, or 2 entries, None meaning the input's size) -> [P, Q]."""
    if isinstance(output_size, Tensor) or type(output_size) is int or hasattr(output_size, "__index__"):
        output_size = (output_size, output_size)
    if not isinstance(output_size, (list, tuple, torch.Size)):
        raise ArgumentTypeError(f"{op}: output_size must be an int or a tuple of 2 ints (None for the input's size), "
                                f"got {type(output_size).__name__}")
    if len(output_size) != 2:
        raise ArgumentError(f"{op}(): output_size must be 2 entries (internal error: output_size.size() must be 2), "
                            f"got {list(output_size)}")
    sizes = [x.shape[2 + i] if v is None else as_int(v, "output_size", op) for i, v in enumerate(output_size)]
    if any(v < 0 for v in sizes):
        raise ArgumentError(f"{op}: elements of output_size must be greater than or equal to 0 but received "
                            f"{{{sizes[0]}, {sizes[1]}}} (Trying to create tensor with negative dimension)")
    return sizes


def adaptive_avg_pool2d(input: Tensor, output_size) -> Tensor:
    """Same as F.adaptive_avg_pool2d; output_size (1, 1) is global average pooling (its own fast path)."""
    op = "adaptive_avg_pool2d"
    x, unbatched = _adaptive_input(input, op)
    size = _adaptive_size(output_size, x, op)
    if direct_ok(x):
        y = adaptive_ops.avg_impl(x, size)
    else:
        y = torch.ops.fastconv.adaptive_avg_pool2d(x, size)
    return y.squeeze(0) if unbatched else y


def adaptive_max_pool2d(input: Tensor, output_size, return_indices: bool = False):
    """Same as F.adaptive_max_pool2d; indices (return_indices=True) are torch's: h * W + w in the plane."""
    op = "adaptive_max_pool2d"
    x, unbatched = _adaptive_input(input, op)
    size = _adaptive_size(output_size, x, op)
    if direct_ok(x):
        y, idx = adaptive_ops.max_impl(x, size)
    else:
        y, idx = torch.ops.fastconv.adaptive_max_pool2d(x, size)
    if unbatched:
        y, idx = y.squeeze(0), idx.squeeze(0)
    return (y, idx) if return_indices else y


def _as_1d(input, op: str, what: str) -> Tuple[Tensor, bool]:
    """A 1-d pool's (C, L) or (N, C, L) input as an (N, C, 1, L) view; (view, was_unbatched)."""
    _check_tensor(input, "input", op)
    if input.dim() not in (2, 3):
        raise ArgumentError(f"{op}: Expected 2D or 3D (batch mode) tensor with optional 0 dim batch size for "
                            f"{what}, but got:{list(input.shape)}")
    return (input.unsqueeze(0) if input.dim() == 2 else input).unsqueeze(2), input.dim() == 2


def _one(value, name: str, op: str) -> int:
    """A 1-d pool's int argument, given as an int or a sequence of one int."""
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ArgumentError(f"{op}() {name} must be an int, list of ints or tuple of ints of size 1 but got "
                                f"size {len(value)}")
        value = value[0]
    return as_int(value, name, op)


def _from_1d(t: Tensor, unbatched: bool) -> Tensor:
    t = t.squeeze(2)
    return t.squeeze(0) if unbatched else t


def adaptive_avg_pool1d(input: Tensor, output_size) -> Tensor:
    """Same as F.adaptive_avg_pool1d: adaptive_avg_pool2d's kernels on an (N, C, 1, L) view."""
    op = "adaptive_avg_pool1d"
    _check_tensor(input, "input", op)
    if input.dim() not in (2, 3):
        raise ArgumentError(f"{op}: Expected 2 to 3 dimensions, but got {input.dim()}-dimensional tensor for "
                            f"argument #1 'input'")
    if isinstance(output_size, (list, tuple)) and len(output_size) != 1:
        raise ArgumentError(f"{op}() argument 'output_size' should contain one int (got {len(output_size)})")
    if output_size is None:
        raise ArgumentTypeError(f"{op}(): argument 'output_size' must be an int or a tuple of one int, not None")
    size = _one(output_size, "output_size", op)
    if size < 0:
        raise ArgumentError(f"{op}: elements of output_size must be greater than or equal to 0 but received {size}")
    if input.shape[-1] == 0 or (input.dim() == 2 and input.shape[0] == 0):
        raise ArgumentError(f"{op}(): Expected input to have non-zero size for non-batch dimensions, but input has "
                            f"sizes {list(input.shape)}")
    x, unbatched = _as_1d(input, op, "input")
    return _from_1d(adaptive_avg_pool2d(x, (1, size)), unbatched)


def _pool1d_args(input, kernel_size, stride, padding, dilation, ceil_mode, op: str):
    """Validates a 1-d pool's arguments (torch's rules and messages); returns the (N, C, 1, L) view,
    was_unbatched and the 2-d pool's kernel, stride, padding and dilation pairs (1 along h)."""
    x, unbatched = _as_1d(input, op, "input")
    if x.shape[1] == 0 or x.shape[3] == 0:
        raise ArgumentError(f"{op}: Expected 2D or 3D (batch mode) tensor with optional 0 dim batch size for input, "
                            f"but got:{list(input.shape)}")
    _check_float(x, "input", op)
    k = _one(kernel_size, "kernel_size", op)
    s = k if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0) else _one(stride, "stride", op)
    p, d = _one(padding, "padding", op), _one(dilation, "dilation", op)
    for name, v in (("kernel_size", k), ("stride", s), ("dilation", d)):
        if v <= 0:
            raise ArgumentError(f"{op}() {name} must be greater than zero, but got {v}")
    if p < 0:
        raise ArgumentError(f"{op}() padding must be non-negative (pad must be non-negative), but got {p}")
    if p > k // 2:
        raise ArgumentError(f"{op}() padding should be at most half of kernel size (pad should be at most half of "
                            f"effective kernel size), but got padding={p} and kernel_size={k}")
    if not isinstance(ceil_mode, bool):
        raise ArgumentTypeError(f"{op}: ceil_mode must be a bool, got {type(ceil_mode).__name__}")
    out = pool_out_hw(x, (1, k), (1, s), (0, p), (1, d), ceil_mode)[1]
    if out < 1:
        raise ArgumentError(f"{op}() Invalid computed output size: {out}")
    return x, unbatched, [1, k], [1, s], [0, p], [1, d]


def max_pool1d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               return_indices: bool = False):
    """Same as F.max_pool1d (return_indices, ceil_mode, dilation): max_pool2d's kernels on an (N, C, 1, L)
    view; indices are positions along L, as torch's."""
    x, unbatched, kernel, stride, padding, dilation = _pool1d_args(input, kernel_size, stride, padding, dilation,
                                                                   ceil_mode, "max_pool1d")
    if return_indices or (torch.is_grad_enabled() and x.requires_grad):
        y, idx = torch.ops.fastconv.max_pool2d_with_indices(x, kernel, stride, padding, dilation, ceil_mode)
    else:
        # torch's own 1-d kernel serves this case and writes a contiguous output whatever the input's strides
        y, idx = torch.ops.fastconv.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode).contiguous(), None
    y = _from_1d(y, unbatched)
    return (y, _from_1d(idx, unbatched)) if return_indices else y


def avg_pool1d(input: Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True) -> Tensor:
    """Same as F.avg_pool1d (count_include_pad, ceil_mode): avg_pool2d's kernels on an (N, C, 1, L) view."""
    op = "avg_pool1d"
    x, unbatched, kernel, stride, padding, _ = _pool1d_args(input, kernel_size, stride, padding, 1, ceil_mode, op)
    if not isinstance(count_include_pad, bool):
        raise ArgumentTypeError(f"{op}: count_include_pad must be a bool, got {type(count_include_pad).__name__}")
    y = torch.ops.fastconv.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad, None)
    return _from_1d(y, unbatched)
