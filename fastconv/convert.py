"""fastconv.convert(model): run an existing torch model on fastconv's kernels, in place."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import nn as fnn

# Exact torch types that convert() replaces, and what they become. Subclasses of these (a user's
# own Conv2d with a custom forward, or fastconv's modules) are left alone.
_REPLACEMENTS = {
    nn.Conv1d: fnn.Conv1d,
    nn.Conv2d: fnn.Conv2d,
    nn.ConvTranspose1d: fnn.ConvTranspose1d,
    nn.ConvTranspose2d: fnn.ConvTranspose2d,
    nn.MaxPool2d: fnn.MaxPool2d,
    nn.AvgPool2d: fnn.AvgPool2d,
}
# Adaptive and 1-d pooling (issue #30).
_REPLACEMENTS.update({
    nn.AdaptiveAvgPool2d: fnn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d: fnn.AdaptiveMaxPool2d,
    nn.AdaptiveAvgPool1d: fnn.AdaptiveAvgPool1d,
    nn.MaxPool1d: fnn.MaxPool1d,
    nn.AvgPool1d: fnn.AvgPool1d,
})


# A convolution directly followed by nn.ReLU in an nn.Sequential: the fused module it becomes.
_FUSED_RELU = {
    nn.Conv1d: fnn.Conv1dReLU,
    fnn.Conv1d: fnn.Conv1dReLU,
    nn.Conv2d: fnn.Conv2dReLU,
    fnn.Conv2d: fnn.Conv2dReLU,
}


def _is_relu(module: nn.Module) -> bool:
    return type(module) is nn.ReLU


MEMORY_FORMATS = ("auto", "channels_last", "preserve")


def convert(model: nn.Module, fuse_relu: bool = True, memory_format: str = "auto") -> nn.Module:
    """Replaces torch.nn Conv1d / Conv2d / ConvTranspose1d / ConvTranspose2d / MaxPool2d / AvgPool2d (and the
    adaptive and 1-d pools: AdaptiveAvgPool2d, AdaptiveMaxPool2d, AdaptiveAvgPool1d, MaxPool1d, AvgPool1d) in
    `model` with fastconv's, in place.

    The modules keep their parameter tensors, buffers and hooks: each one's class is switched to the
    fastconv subclass, which differs only in forward. With fuse_relu, a Conv2d (Conv1d) directly followed
    by an nn.ReLU inside an nn.Sequential becomes a Conv2dReLU (Conv1dReLU) and the ReLU becomes
    nn.Identity, so the Sequential's indices and the state_dict keys stay the same. Returns `model`.

    memory_format: where the model's activations live when it is called with NCHW (contiguous) images.
    'channels_last' runs the network in channels_last: a hook on `model` hands it channels_last copies of
    its 4-d floating-point inputs and gives its 4-d outputs back contiguous, so callers see torch's values
    and layouts (the kernels' sums run in another order: float rounding differs). 'auto' (the default)
    does that for a model with a Conv2d and without a LayerNorm, and keeps it only if the layout carries
    through: if on the first such call some Conv2d received an NCHW input (a reshape in forward, such as
    ShuffleNet's channel shuffle, made a contiguous copy), later calls run as given. 'preserve' never
    changes layouts. docs/fusion.md (convert() and memory formats) has the measurements.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fastconv.convert: model must be a torch.nn.Module, got {type(model).__name__}")
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"fastconv.convert: memory_format must be one of {MEMORY_FORMATS}, got {memory_format!r}")
    if fuse_relu:
        for module in model.modules():
            if isinstance(module, nn.Sequential):
                _fuse_conv_relu(module)
    for module in model.modules():
        target = _REPLACEMENTS.get(type(module))
        if target is not None:
            module.__class__ = target
    set_layout(model, memory_format)
    return model


# ---------------------------------------------------------------------------------------------------
# Running an NCHW caller's model in channels_last.
#
# Why: fastconv's channels_last kernels are the faster ones on most layers (vectors along channels:
# no lanes wasted on 7- or 14-column rows, depthwise loops over channel vectors), and the layout, once
# the input has it, carries through convolutions, BatchNorm, activations and adds. Converted networks
# at batch 8, 2 threads, AMD EPYC Zen 4 (bench/results/cpu-2026-12-06-epyc-zen4-vm-networks.txt), ours
# in channels_last against ours in NCHW: ResNet-50 316 ms / 387, MobileNetV2 52 / 89, EfficientNet-B0
# 80 / 105, GoogLeNet 101 / 123, DenseNet-121 259 / 302; slower only where forward reshapes: ShuffleNetV2
# 41 / 34 (its channel shuffle copies to NCHW, which the first-call check below catches) and ConvNeXt-T
# 486 / 446 (its LayerNorm blocks permute to NHWC and back), which 'auto' leaves as given.


def _conv_types() -> tuple:
    from .fusion.modules import FusedConv2d  # optimize()'s conv modules (not nn.Conv2d subclasses)
    return (nn.Conv2d, FusedConv2d)


class _Layout:
    """The hooks' state, a picklable object on the model (torch.save(model) keeps it)."""

    def __init__(self, mode: str):
        self.mode = mode          # 'channels_last' or 'auto' (until the first call decides), 'preserve'
        self.converted = []       # per nested call: whether its inputs were converted
        self.nchw_seen = False    # during the first 'auto' call: some Conv2d received an NCHW input


def _is_nchw_image(t: Any) -> bool:
    return (isinstance(t, torch.Tensor) and t.dim() == 4 and t.is_floating_point() and t.shape[1] > 1
            and t.shape[2] * t.shape[3] > 1 and t.is_contiguous()
            and not t.is_contiguous(memory_format=torch.channels_last))


def _to_nchw(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.contiguous() if out.dim() == 4 else out
    if isinstance(out, tuple) and hasattr(out, "_fields"):  # a namedtuple (GoogLeNet's outputs)
        return type(out)(*(_to_nchw(o) for o in out))
    if isinstance(out, (tuple, list)):
        return type(out)(_to_nchw(o) for o in out)
    if isinstance(out, dict):
        return {k: _to_nchw(v) for k, v in out.items()}
    return out


class _LayoutPreHook:
    def __call__(self, module: nn.Module, args: tuple):
        state = getattr(module, "_fastconv_layout", None)
        convert = (state is not None and state.mode != "preserve" and not torch.jit.is_tracing()
                   and not torch.jit.is_scripting() and any(_is_nchw_image(a) for a in args))
        if state is not None:
            state.converted.append(convert)
        if not convert:
            return None
        if state.mode == "auto":
            state.nchw_seen = False
            for m in module.modules():
                if isinstance(m, _conv_types()):
                    m._fastconv_layout_probe = m.register_forward_pre_hook(_ProbeHook(state))
        return tuple(a.contiguous(memory_format=torch.channels_last) if _is_nchw_image(a) else a for a in args)


class _LayoutHook:
    def __call__(self, module: nn.Module, args: tuple, out: Any):
        state = getattr(module, "_fastconv_layout", None)
        if state is None or not state.converted or not state.converted.pop():
            return None
        if state.mode == "auto":
            for m in module.modules():
                probe = m.__dict__.pop("_fastconv_layout_probe", None)
                if probe is not None:
                    probe.remove()
            state.mode = "preserve" if state.nchw_seen else "channels_last"
        return _to_nchw(out)


class _ProbeHook:
    def __init__(self, state: _Layout):
        self.state = state

    def __call__(self, module: nn.Module, args: tuple):
        if args and _is_nchw_image(args[0]):
            self.state.nchw_seen = True


def set_layout(model: nn.Module, memory_format: str) -> None:
    if memory_format == "auto":
        convs = any(isinstance(m, _conv_types()) for m in model.modules())
        norms = any(isinstance(m, nn.LayerNorm) for m in model.modules())
        memory_format = "auto" if convs and not norms else "preserve"
    state = getattr(model, "_fastconv_layout", None)
    if state is None:
        if memory_format == "preserve":
            return
        model._fastconv_layout = _Layout(memory_format)
        model.register_forward_pre_hook(_LayoutPreHook())
        model.register_forward_hook(_LayoutHook())
    else:  # converted before: the hooks are in place
        state.mode = memory_format


def _fuse_conv_relu(seq: nn.Sequential) -> None:
    names = list(seq._modules.keys())
    for first, second in zip(names, names[1:]):
        conv, relu = seq._modules[first], seq._modules[second]
        fused = _FUSED_RELU.get(type(conv))
        if fused is not None and _is_relu(relu):
            conv.__class__ = fused
            seq._modules[second] = nn.Identity()


