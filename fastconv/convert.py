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
    'channels_last' runs the network in channels_last: hooks on `model` hand it channels_last copies of
    its 4-d floating-point inputs and give its 4-d outputs back contiguous, so callers see torch's values
    and layouts (the kernels' sums run in another order: float rounding differs). 'auto' (the default)
    does that for a model with a Conv2d and without a LayerNorm if the layout carries through: before the
    first call with NCHW images, one forward without autograd on channels_last copies (buffers put back
    after) checks that every Conv2d receives a channels_last input and nothing raises; a reshape in
    forward (ShuffleNet's channel shuffle copies to contiguous) or a `.view` that needs NCHW strides
    keeps the model as given. 'preserve' never changes layouts. docs/fusion.md (convert() and memory formats) has the measurements.
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
# at batch 8, 2 threads, AMD EPYC Zen 4 (the network report of d4666e2, in git history), ours
# in channels_last against ours in NCHW: ResNet-50 316 ms / 387, MobileNetV2 52 / 89, EfficientNet-B0
# 80 / 105, GoogLeNet 101 / 123, DenseNet-121 259 / 302; slower only where forward reshapes: ShuffleNetV2
# 41 / 34 (its channel shuffle copies to NCHW, which the first-call check below catches) and ConvNeXt-T
# 486 / 446 (its LayerNorm blocks permute to NHWC and back), which 'auto' leaves as given.


def _conv_types() -> tuple:
    from .fusion.modules import FusedConv2d  # optimize()'s conv modules (not nn.Conv2d subclasses)
    return (nn.Conv2d, FusedConv2d)


class _Layout:
    """The layout hooks' state, a picklable object on the model (torch.save(model) keeps it): mode is
    'channels_last', 'preserve', or 'auto' until the first call with NCHW images decides."""

    def __init__(self, mode: str):
        self.mode = mode
        self.converted = []  # per call in progress (calls may nest): whether its inputs were converted


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


def _probe_channels_last(model: nn.Module, cl_args: tuple, kwargs: dict) -> bool:
    """Whether the layout carries through `model` on these inputs: one forward on the channels_last copies
    (no autograd; in training mode the buffers, such as BatchNorm's running statistics, put back after;
    the random number generators of the CPU and of the inputs' GPUs put back too, so that Dropout draws
    the masks the unconverted model would) in which every convolution must receive a channels_last
    input and nothing may raise (a `.view` that needs NCHW strides)."""
    nchw_seen = []

    def probe(module, inputs):
        if inputs and _is_nchw_image(inputs[0]):
            nchw_seen.append(type(module).__name__)

    # In training mode BatchNorm updates its running statistics; eval-mode modules leave buffers alone
    # (and may hold inference tensors, which refuse in-place writes outside inference mode).
    saved = [b.detach().clone() for b in model.buffers()] if model.training else None
    handles = [m.register_forward_pre_hook(probe) for m in model.modules() if isinstance(m, _conv_types())]
    gpus = sorted({t.device.index or 0 for t in cl_args if isinstance(t, torch.Tensor) and t.is_cuda})
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=gpus):
            model.forward(*cl_args, **kwargs)
    except Exception:
        return False
    finally:
        for h in handles:
            h.remove()
        if saved is not None:
            with torch.no_grad():
                for b, v in zip(model.buffers(), saved):
                    b.copy_(v)
    return not nchw_seen


class _LayoutPreHook:
    """Hands the model channels_last copies of its NCHW image inputs; the first such call of an 'auto'
    model decides first, with _probe_channels_last, whether it runs that way from then on."""

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict):
        state = module._fastconv_layout
        convert = (state.mode != "preserve" and not torch.jit.is_tracing() and not torch.jit.is_scripting()
                   and any(_is_nchw_image(a) for a in args))
        if convert:
            cl_args = tuple(a.contiguous(memory_format=torch.channels_last) if _is_nchw_image(a) else a for a in args)
            if state.mode == "auto":
                if torch.compiler.is_compiling():  # undecided under dynamo / torch.export: run as given
                    convert = False
                else:
                    state.mode = "channels_last" if _probe_channels_last(module, cl_args, kwargs) else "preserve"
                    convert = state.mode == "channels_last"
        state.converted.append(convert)
        return (cl_args, kwargs) if convert else None


class _LayoutHook:
    """Gives 4-d outputs back contiguous after a call whose inputs _LayoutPreHook converted (also when
    forward raised: always_call, so the per-call record stays balanced)."""

    def __call__(self, module: nn.Module, args: tuple, out: Any):
        state = module._fastconv_layout
        if state.converted and state.converted.pop():
            return _to_nchw(out)
        return None


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
        model.register_forward_pre_hook(_LayoutPreHook(), with_kwargs=True)
        model.register_forward_hook(_LayoutHook(), always_call=True)
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


