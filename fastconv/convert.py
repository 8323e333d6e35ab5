"""fastconv.convert(model): run an existing torch model on fastconv's kernels, in place."""
from __future__ import annotations

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


# A convolution directly followed by nn.ReLU in an nn.Sequential: the fused module it becomes.
_FUSED_RELU = {
    nn.Conv1d: fnn.Conv1dReLU,
    fnn.Conv1d: fnn.Conv1dReLU,
    nn.Conv2d: fnn.Conv2dReLU,
    fnn.Conv2d: fnn.Conv2dReLU,
}


def _is_relu(module: nn.Module) -> bool:
    return type(module) is nn.ReLU


def convert(model: nn.Module, fuse_relu: bool = True) -> nn.Module:
    """Replaces torch.nn Conv1d / Conv2d / ConvTranspose1d / ConvTranspose2d / MaxPool2d / AvgPool2d in `model`
    with fastconv's, in place.

    The modules keep their parameter tensors, buffers and hooks: each one's class is switched to the
    fastconv subclass, which differs only in forward. With fuse_relu, a Conv2d (Conv1d) directly followed
    by an nn.ReLU inside an nn.Sequential becomes a Conv2dReLU (Conv1dReLU) and the ReLU becomes
    nn.Identity, so the Sequential's indices and the state_dict keys stay the same. Returns `model`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fastconv.convert: model must be a torch.nn.Module, got {type(model).__name__}")
    if fuse_relu:
        for module in model.modules():
            if isinstance(module, nn.Sequential):
                _fuse_conv_relu(module)
    for module in model.modules():
        target = _REPLACEMENTS.get(type(module))
        if target is not None:
            module.__class__ = target
    return model


def _fuse_conv_relu(seq: nn.Sequential) -> None:
    names = list(seq._modules.keys())
    for first, second in zip(names, names[1:]):
        conv, relu = seq._modules[first], seq._modules[second]
        fused = _FUSED_RELU.get(type(conv))
        if fused is not None and _is_relu(relu):
            conv.__class__ = fused
            seq._modules[second] = nn.Identity()


