"""Small helpers shared by the functional layer, the ops and the backends."""
from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Sequence, Tuple, Union

import torch

from .errors import ArgumentError, ArgumentTypeError

IntOrPair = Union[int, Sequence[int]]


def _tensor_as_int(value: torch.Tensor, name: str, op: str, dims: Tuple[int, ...], allow_bool: bool) -> int:
    """torch's argument parser takes a one-element integer tensor where an int is expected."""
    integral = not (value.dtype.is_floating_point or value.dtype.is_complex)
    if not integral or (value.dtype == torch.bool and not allow_bool) or value.numel() != 1 or value.dim() not in dims:
        raise ArgumentTypeError(f"{op}: {name} must be an int or a tuple of 2 ints, got a tensor of size "
                                f"{list(value.shape)} and dtype {value.dtype}")
    return int(value.item())


def as_int(value, name: str, op: str, tensor_dims: Tuple[int, ...] = (0,)) -> int:
    """An int argument as torch takes it: int, SymInt, anything with __index__ (numpy ints) or a
    one-element integer tensor of `tensor_dims` dimensions; not bool."""
    if type(value) is int:  # the common case first: this runs several times per op call
        return value
    if isinstance(value, torch.SymInt):
        return value
    if isinstance(value, torch.Tensor):
        return _tensor_as_int(value, name, op, tensor_dims, allow_bool=False)
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise ArgumentTypeError(f"{op}: {name} must be an int or a tuple of 2 ints, got "
                                f"{type(value).__name__} {value!r}")
    return operator.index(value)


def pair(value: IntOrPair, name: str, op: str = "conv2d") -> Tuple[int, int]:
    """Normalizes an int or a 1/2-sequence to a pair, with torch's error for other lengths."""
    if type(value) is int:  # the common cases first: this runs several times per op call
        return (value, value)
    if type(value) in (tuple, list) and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        return (value[0], value[1])
    if isinstance(value, torch.Tensor):  # as torch's int-list arguments: a one-element integer/bool tensor
        v = _tensor_as_int(value, name, op, (0, 1), allow_bool=True)
        return (v, v)
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        v = as_int(value, name, op)
        return (v, v)
    items = [as_int(item, name, op) for item in value]
    if len(items) == 1:
        return (items[0], items[0])
    if len(items) != 2:
        raise ArgumentError(
            f"{op}: expected {name} to be a single integer value or a list of 2 values to match the "
            f"convolution dimensions, but got {name}={items}"
        )
    return (items[0], items[1])


def single(value, name: str, op: str = "conv1d") -> Tuple[int]:
    """Normalizes an int or a 1-sequence to a 1-tuple (the 1-d convolutions' stride, padding, ...), with
    torch's error for other lengths."""
    if type(value) is int:
        return (value,)
    if isinstance(value, torch.Tensor):
        return (_tensor_as_int(value, name, op, (0, 1), allow_bool=True),)
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return (as_int(value, name, op),)
    items = [as_int(item, name, op) for item in value]
    if len(items) != 1:
        raise ArgumentError(
            f"{op}: expected {name} to be a single integer value or a list of 1 values to match the "
            f"convolution dimensions, but got {name}={items}"
        )
    return (items[0],)


def ntuple(value, n: int, name: str, op: str) -> Tuple[int, ...]:
    """single() or pair(), by the number of spatial dimensions n."""
    return single(value, name, op) if n == 1 else pair(value, name, op)


def strides_like_channels_last(t: torch.Tensor) -> bool:
    """torch's memory-format heuristic (c10 is_channels_last_strides_2d) for a 4-d tensor.

    Outputs follow it the way torch's CPU kernels do: an op writes channels_last output when its
    input "suggests" channels_last, which is decided from the stride order, not from density.
    """
    if t.dim() != 4:
        return False
    sizes, strides = t.shape, t.stride()
    if strides[1] == 0:
        return False
    minimum = 0
    for d in (1, 3, 2, 0):
        if sizes[d] == 0:
            return False
        if strides[d] < minimum:
            return False
        if d == 0 and minimum == strides[1]:
            return False
        minimum = strides[d]
        if sizes[d] > 1:
            minimum *= sizes[d]
    return True


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if strides_like_channels_last(t) else torch.contiguous_format


def empty_like_format(shape: Sequence[int], like: torch.Tensor, channels_last: bool,
                      dtype: torch.dtype | None = None) -> torch.Tensor:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(list(shape), dtype=dtype or like.dtype, device=like.device, memory_format=fmt)


def grad_input_like(x: torch.Tensor) -> torch.Tensor:
    """Uninitialized gradient buffer for input x, in x's memory format (as torch's backward ops)."""
    return empty_like_format(x.shape, x, strides_like_channels_last(x))


def conv_output_or_trivial(x, w, bias, stride, padding, dilation, relu):
    """(y, out_hw, done): the forward output buffer of a native backend in torch's memory format, and
    done=True when no kernel is needed - an empty output, or an empty reduction (C = 0, or H/W = 0 with
    padding: y is the bias, then the ReLU)."""
    out_hw = conv_out_hw(x, w, stride, padding, dilation)
    y = empty_like_format((x.shape[0], w.shape[0], *out_hw), x, conv_output_channels_last(x, w))
    if y.numel() == 0:
        return y, out_hw, True
    if x.numel() == 0 or w.numel() == 0:
        y.zero_()
        if bias is not None:
            y += bias.view(1, -1, 1, 1)
        if relu:
            y.clamp_(min=0)
        return y, out_hw, True
    return y, out_hw, False


def conv_wgrad_outputs_or_trivial(dy, x, w, need_weight, need_bias):
    """(dw or None, db or None, done): the weight/bias gradient buffers of a native backend, and
    done=True when no kernel is needed (nothing requested, or an empty reduction or result: zeros)."""
    dw = torch.empty_like(w, memory_format=memory_format_of(w)) if need_weight else None
    db = torch.empty(w.shape[0], dtype=dy.dtype, device=dy.device) if need_bias else None
    if dw is None and db is None:
        return None, None, True
    if x.numel() == 0 or dy.numel() == 0 or w.numel() == 0:
        return (dw.zero_() if dw is not None else None), (db.zero_() if db is not None else None), True
    return dw, db, False


def conv_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def pool_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool) -> int:
    """torch's pooling_output_shape: with ceil_mode the last window must start inside the input
    or the left padding."""
    numerator = size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = numerator // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out



def conv_output_channels_last(x: torch.Tensor, w: torch.Tensor) -> bool:
    """torch's CPU rule: channels_last output when the input or the weight suggests it (an empty
    input gives a contiguous output whatever the weight's layout, as torch)."""
    if x.numel() == 0:
        return False
    return strides_like_channels_last(x) or strides_like_channels_last(w)


def conv_out_hw(x, w, stride, padding, dilation) -> Tuple[int, int]:
    return (
        conv_output_size(x.shape[2], w.shape[2], stride[0], padding[0], dilation[0]),
        conv_output_size(x.shape[3], w.shape[3], stride[1], padding[1], dilation[1]),
    )


def pool_out_hw(x, kernel, stride, padding, dilation, ceil_mode) -> Tuple[int, int]:
    return (
        pool_output_size(x.shape[2], kernel[0], stride[0], padding[0], dilation[0], ceil_mode),
        pool_output_size(x.shape[3], kernel[1], stride[1], padding[1], dilation[1], ceil_mode),
    )
