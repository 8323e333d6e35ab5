"""Deploying fastconv models: ONNX translations of every fastconv op, for both of torch's ONNX exporters.

    import fastconv.export
    fastconv.export.to_onnx(model, (x,), "model.onnx")             # torch.onnx.export(dynamo=True)
    fastconv.export.to_onnx(model, (x,), "model.onnx", dynamo=False)  # the TorchScript-based exporter
    # or torch.onnx.export directly:
    torch.onnx.export(model, (x,), "model.onnx", custom_translation_table=fastconv.export.onnx_translation_table())
    torch.onnx.export(model, (x,), "model.onnx", dynamo=False)      # symbolics registered on import

Each fastconv op becomes standard ONNX operators (Conv, ConvTranspose, Relu, Add, MaxPool, AveragePool, ...), so an
exported fastconv model is a plain ONNX model that any runtime runs; there is no custom domain.

TRANSLATIONS is the one table, keyed by the op's name in the fastconv namespace. An entry is
    Translation(emit, arg_kinds)
with emit(b, *op_args) building the op's outputs from ONNX nodes through `b` (an _Builder: b.op(name,
*inputs, **attributes), b.const(...), b.is_none(value)), and arg_kinds the TorchScript exporter's
parse_args codes for the op's schema ("v" tensor, "i" int, "is" int list, "b" bool, "s" str, "f"
float). The same emit function serves both exporters: the dynamo exporter passes Python values and
onnxscript tensors, the TorchScript exporter graph values that parse_args turns into Python values.
Adding an op = one emit function + one TRANSLATIONS line (see docs/deployment.md).

Only forward ops are translated: ONNX models are inference graphs (the backward ops never appear in
an eval-mode export).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import torch

from . import ops as _ops  # noqa: F401  (registers the ops looked up below)
from .ops.conv2d_fused import ACTIVATIONS

__all__ = ["TRANSLATIONS", "Translation", "onnx_translation_table", "register_torchscript_symbolics",
           "to_onnx", "save_for_deployment", "check_format", "FORMATS", "SYMBOLIC_OPSET"]

# The lowest opset the TorchScript-based exporter may target with these symbolics: Clip with min/max
# inputs (11), MaxPool dilations and ceil_mode (10), Mod (10).
SYMBOLIC_OPSET = 11


class _Builder:
    """Emits ONNX nodes for one exporter; attributes are plain Python values (int, float, str, lists)."""

    def op(self, name: str, *inputs: Any, outputs: int = 1, **attrs: Any) -> Any:
        raise NotImplementedError

    def const(self, values, dtype: torch.dtype) -> Any:
        """A constant tensor from a Python number (0-d) or list (1-d)."""
        raise NotImplementedError

    def scalar(self, value: float) -> Any:
        """A 0-d fp32 constant: broadcasts in Mul/Add and is the shape Clip's min/max inputs must have
        (exported models are fp32, see docs/deployment.md)."""
        return self.const(value, torch.float32)

    def is_none(self, value: Any) -> bool:
        raise NotImplementedError

    def static_hw(self, value: Any) -> Optional[Tuple[int, int]]:
        """The (H, W) of an NCHW value when the exporter knows them as numbers, else None."""
        raise NotImplementedError


class _OnnxscriptBuilder(_Builder):
    """torch.onnx.export(dynamo=True): translation functions call onnxscript ops (traced)."""

    def __init__(self):
        from onnxscript import opset18
        self._opset = opset18

    def op(self, name, *inputs, outputs=1, **attrs):
        # onnxscript returns every output of the op's schema (MaxPool: values and indices).
        result = getattr(self._opset, name)(*inputs, **attrs)
        return result[0] if outputs == 1 and isinstance(result, tuple) else result

    def const(self, values, dtype):
        import onnx.numpy_helper
        return self._opset.Constant(value=onnx.numpy_helper.from_array(torch.tensor(values, dtype=dtype).numpy()))

    def is_none(self, value):
        return value is None

    def static_hw(self, value):
        dims = getattr(getattr(value, "shape", None), "dims", None) or getattr(value, "shape", None)
        try:
            h, w = dims[-2], dims[-1]
            return (h, w) if isinstance(h, int) and isinstance(w, int) else None
        except (TypeError, IndexError):
            return None


class _TorchScriptBuilder(_Builder):
    """torch.onnx.export(dynamo=False): g.op with typed attribute suffixes (_i, _f, _s)."""

    def __init__(self, g):
        self._g = g

    def op(self, name, *inputs, outputs=1, **attrs):
        typed = {}
        for key, value in attrs.items():
            probe = value[0] if isinstance(value, (list, tuple)) and value else value
            suffix = "f" if isinstance(probe, float) else "s" if isinstance(probe, str) else "i"
            typed[f"{key}_{suffix}"] = list(value) if isinstance(value, tuple) else value
        return self._g.op(name, *inputs, outputs=outputs, **typed)

    def const(self, values, dtype):
        return self._g.op("Constant", value_t=torch.tensor(values, dtype=dtype))

    def is_none(self, value):
        # parse_args has turned the non-tensor arguments into Python values already.
        return value is None or (isinstance(value, torch._C.Value) and value.node().mustBeNone())

    def static_hw(self, value):
        sizes = value.type().sizes() if hasattr(value.type(), "sizes") else None
        return (sizes[-2], sizes[-1]) if sizes and None not in sizes[-2:] else None


# ---- translations (one function per op, op arguments in the op's schema order) ----

def _conv(b: _Builder, input, weight, bias, stride, padding, dilation, groups):
    """Conv for 1-d and 2-d alike (one entry per spatial dim; ONNX pads: all begins, then all ends)."""
    inputs = (input, weight) if b.is_none(bias) else (input, weight, bias)
    return b.op("Conv", *inputs, strides=list(stride), pads=list(padding) * 2, dilations=list(dilation),
                group=int(groups))


def _conv_transpose(b, input, weight, bias, stride, padding, output_padding, dilation, groups):
    """ConvTranspose, 1-d and 2-d: torch's weight layout (C, K/groups, kernel...) is ONNX's."""
    inputs = (input, weight) if b.is_none(bias) else (input, weight, bias)
    return b.op("ConvTranspose", *inputs, strides=list(stride), pads=list(padding) * 2,
                output_padding=list(output_padding), dilations=list(dilation), group=int(groups))


def _conv_plain(b, input, weight, bias, stride, padding, dilation, groups):
    return _conv(b, input, weight, bias, stride, padding, dilation, groups)


def _conv_relu(b, input, weight, bias, stride, padding, dilation, groups):
    return b.op("Relu", _conv(b, input, weight, bias, stride, padding, dilation, groups))


def _activation(b: _Builder, name: str, z):
    if name == "none":
        return z
    if name == "relu":
        return b.op("Relu", z)
    if name == "relu6":
        return b.op("Clip", z, b.scalar(0.0), b.scalar(6.0))
    if name == "sigmoid":
        return b.op("Sigmoid", z)
    if name == "silu":
        return b.op("Mul", z, b.op("Sigmoid", z))
    if name == "hardsigmoid":  # torch: relu6(z + 3) / 6
        return b.op("HardSigmoid", z, alpha=1.0 / 6.0, beta=0.5)
    if name == "hardswish":
        return b.op("Mul", z, b.op("HardSigmoid", z, alpha=1.0 / 6.0, beta=0.5))
    if name == "gelu":  # torch's default (approximate='none'): z * (1 + erf(z / sqrt 2)) / 2
        erf = b.op("Erf", b.op("Div", z, b.scalar(math.sqrt(2.0))))
        return b.op("Mul", b.op("Mul", z, b.op("Add", erf, b.scalar(1.0))), b.scalar(0.5))
    raise ValueError(f"fastconv.export: no ONNX translation for activation {name!r} "
                     f"(known: {sorted(ACTIVATIONS)})")


def _per_channel(b: _Builder, v):
    return b.op("Reshape", v, b.const([1, -1, 1, 1], torch.int64))


def _conv2d_fused(b, input, weight, bias, scale, residual, stride, padding, dilation, groups, activation,
                  residual_after, return_conv):
    has_scale, has_bias, has_residual = not b.is_none(scale), not b.is_none(bias), not b.is_none(residual)
    if not has_scale and not return_conv:
        c = None
        z = _conv(b, input, weight, bias, stride, padding, dilation, groups)  # the bias inside Conv
    else:
        c = _conv(b, input, weight, None, stride, padding, dilation, groups)
        z = c if not has_scale else b.op("Mul", c, _per_channel(b, scale))
        if has_bias:
            z = b.op("Add", z, _per_channel(b, bias))
    if has_residual and not residual_after:
        z = b.op("Add", z, residual)
    y = _activation(b, activation, z)
    if has_residual and residual_after:
        y = b.op("Add", y, residual)
    # The second output (the bias-free convolution, for the backward) is empty unless asked for.
    return y, (c if return_conv else b.const([], torch.float32))


def _max_pool(b, input, kernel_size, stride, padding, dilation, ceil_mode, outputs):
    return b.op("MaxPool", input, outputs=outputs, kernel_shape=list(kernel_size), strides=list(stride),
                pads=[padding[0], padding[1], padding[0], padding[1]], dilations=list(dilation),
                ceil_mode=int(ceil_mode))


def _max_pool2d(b, input, kernel_size, stride, padding, dilation, ceil_mode):
    return _max_pool(b, input, kernel_size, stride, padding, dilation, ceil_mode, 1)


def _max_pool2d_with_indices(b, input, kernel_size, stride, padding, dilation, ceil_mode):
    y, flat = _max_pool(b, input, kernel_size, stride, padding, dilation, ceil_mode, 2)
    # ONNX indexes the whole NCHW tensor, torch one plane: torch's index = ONNX's mod H*W.
    shape = b.op("Shape", input)
    hw = b.op("Mul", b.op("Gather", shape, b.const([2], torch.int64)),
              b.op("Gather", shape, b.const([3], torch.int64)))
    return y, b.op("Mod", flat, hw)


def _avg_pool2d(b, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    pads = [padding[0], padding[1], padding[0], padding[1]]
    if b.is_none(divisor_override):
        return b.op("AveragePool", input, kernel_shape=list(kernel_size), strides=list(stride), pads=pads,
                    ceil_mode=int(ceil_mode), count_include_pad=int(count_include_pad))
    if ceil_mode:
        raise ValueError("fastconv.export: avg_pool2d with divisor_override and ceil_mode=True has no ONNX "
                         "translation (AveragePool's divisor at a partial last window differs)")
    # Every window lies inside the padded input without ceil_mode: sum = mean over kh*kw (pads counted).
    mean = b.op("AveragePool", input, kernel_shape=list(kernel_size), strides=list(stride), pads=pads,
                count_include_pad=1)
    return b.op("Mul", mean, b.scalar(kernel_size[0] * kernel_size[1] / float(divisor_override)))


def _adaptive_window(b: _Builder, input, output_size, op: str) -> Tuple[int, int]:
    """kernel = stride of an adaptive pool whose windows are uniform (H, W multiples of the output size);
    other adaptive windows overlap unevenly and have no ONNX pooling op."""
    hw = b.static_hw(input)
    if hw is None or hw[0] % output_size[0] or hw[1] % output_size[1]:
        raise ValueError(f"fastconv.export: {op} to {list(output_size)} from an input of size "
                         f"{list(hw) if hw else 'unknown at export'} has non-uniform windows; ONNX pooling needs "
                         f"the input size a multiple of the output size (or output size 1 x 1)")
    return hw[0] // output_size[0], hw[1] // output_size[1]


def _adaptive_avg_pool2d(b, input, output_size):
    if list(output_size) == [1, 1]:
        return b.op("GlobalAveragePool", input)
    k = _adaptive_window(b, input, output_size, "adaptive_avg_pool2d")
    return b.op("AveragePool", input, kernel_shape=list(k), strides=list(k))


def _adaptive_max_pool2d(b, input, output_size):
    k = _adaptive_window(b, input, output_size, "adaptive_max_pool2d")
    return _max_pool2d_with_indices(b, input, k, k, (0, 0), (1, 1), False)


class Translation(NamedTuple):
    emit: Callable[..., Any]   # emit(builder, *op_args) -> output or tuple of outputs
    arg_kinds: Tuple[str, ...]  # torch.onnx.symbolic_helper.parse_args codes, schema order


_CONV = ("v", "v", "v", "is", "is", "is", "i")
_CONV_T = ("v", "v", "v", "is", "is", "is", "is", "i")
# op name in the fastconv namespace -> its translation. New ops: one line here (docs/deployment.md).
TRANSLATIONS: Dict[str, Translation] = {
    "conv1d": Translation(_conv_plain, _CONV),  # _conv and _conv_transpose: 1-d and 2-d
    "conv1d_relu": Translation(_conv_relu, _CONV),
    "conv2d": Translation(_conv_plain, _CONV),
    "conv2d_relu": Translation(_conv_relu, _CONV),
    "conv_transpose1d": Translation(_conv_transpose, _CONV_T),
    "conv_transpose2d": Translation(_conv_transpose, _CONV_T),
    "conv2d_fused": Translation(_conv2d_fused, ("v", "v", "v", "v", "v", "is", "is", "is", "i", "s", "b", "b")),
    "max_pool2d": Translation(_max_pool2d, ("v", "is", "is", "is", "is", "b")),
    "max_pool2d_with_indices": Translation(_max_pool2d_with_indices, ("v", "is", "is", "is", "is", "b")),
    "avg_pool2d": Translation(_avg_pool2d, ("v", "is", "is", "is", "b", "b", "i")),
    "adaptive_avg_pool2d": Translation(_adaptive_avg_pool2d, ("v", "is")),
    "adaptive_max_pool2d": Translation(_adaptive_max_pool2d, ("v", "is")),
}


def _overload(name: str):
    return getattr(torch.ops.fastconv, name).default


def onnx_translation_table() -> Dict[Callable, Callable]:
    """{torch.ops.fastconv.<op>.default: onnxscript translation} for torch.onnx.export(dynamo=True)'s
    custom_translation_table argument. Needs the [onnx] extra (onnxscript)."""
    table = {}
    for name, tr in TRANSLATIONS.items():
        def translate(*args, _emit=tr.emit, **kwargs):
            return _emit(_OnnxscriptBuilder(), *args, **kwargs)
        translate.__name__ = f"fastconv_{name}"
        table[_overload(name)] = translate
    return table


def register_torchscript_symbolics(opset_version: int = SYMBOLIC_OPSET) -> None:
    """Registers a symbolic function for each fastconv op with the TorchScript-based exporter
    (torch.onnx.export(dynamo=False)), for every target opset >= opset_version. Idempotent; done once
    when this module is imported."""
    from torch.onnx import register_custom_op_symbolic, symbolic_helper

    for name, tr in TRANSLATIONS.items():
        # wraps: parse_args names the arguments from the wrapped signature (emit's, after `b`).
        @functools.wraps(tr.emit)
        def symbolic(g, *args, _emit=tr.emit):
            return _emit(_TorchScriptBuilder(g), *args)
        register_custom_op_symbolic(f"fastconv::{name}", symbolic_helper.parse_args(*tr.arg_kinds)(symbolic),
                                    opset_version)


def to_onnx(model: torch.nn.Module, args: Tuple, f, *, dynamo: bool = True, **kwargs):
    """torch.onnx.export with fastconv's translations: dynamo=True passes onnx_translation_table()
    (merged with any custom_translation_table given), dynamo=False uses the registered symbolics.
    Returns what torch.onnx.export returns (an ONNXProgram for dynamo=True)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"fastconv.export.to_onnx: model must be a torch.nn.Module, got {type(model).__name__}")
    if dynamo:
        table = onnx_translation_table()
        table.update(kwargs.pop("custom_translation_table", None) or {})
        return torch.onnx.export(model, args, f, dynamo=True, custom_translation_table=table, **kwargs)
    return torch.onnx.export(model, args, f, dynamo=False, **kwargs)


# format -> file name written by save_for_deployment (`fastconv train --export FORMAT`)
FORMATS = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "exported": "model.pt2"}


def check_format(fmt: str) -> None:
    """Raises a ValueError naming what is missing when `fmt` cannot be written here (before a training
    run spends its time, not after)."""
    if fmt not in FORMATS:
        raise ValueError(f"export format must be one of {sorted(FORMATS)}, got {fmt!r}")
    if fmt == "onnx":
        import importlib.util
        missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
        if missing:
            raise ValueError(f"ONNX export needs {' and '.join(missing)}: pip install 'fastconv[onnx]'")


def save_for_deployment(model: torch.nn.Module, example: torch.Tensor, fmt: str, directory) -> str:
    """Writes `model` (put in eval mode) in format `fmt` into `directory` as FORMATS[fmt]; returns the
    path. onnx: to_onnx (dynamo exporter); torchscript: torch.jit.trace with its checks, then save;
    exported: torch.export.export, then torch.export.save (load it after `import fastconv`)."""
    import os

    check_format(fmt)
    path = os.path.join(str(directory), FORMATS[fmt])
    model.eval()
    if fmt == "torchscript":
        torch.jit.trace(model, example).save(path)
        return path
    with torch.no_grad():  # an inference graph: max pools without indices, no saved tensors
        if fmt == "onnx":
            to_onnx(model, (example,), path, dynamo=True, verbose=False, external_data=False)
        else:
            torch.export.save(torch.export.export(model, (example,)), path)
    return path


register_torchscript_symbolics()
