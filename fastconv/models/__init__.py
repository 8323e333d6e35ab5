"""Complete CNNs built from fastconv.nn layers, or from torch.nn layers with the same parameter names.

    from fastconv.models import build_model
    fast = build_model("resnet18_cifar", num_classes=10)                   # fastconv.nn layers
    ref = build_model("resnet18_cifar", num_classes=10, backend="torch")   # torch.nn layers
    ref.load_state_dict(fast.state_dict())                                 # same keys, same shapes

Models: lenet5, vgg_small, resnet18 (stem chosen from the image size), resnet18_cifar,
resnet18_imagenet, mobilenet (depthwise-separable; stem chosen from the image size).
`backend='fastconv'` builds fastconv.nn layers, whose kernels follow fastconv.set_backend();
`backend='torch'` builds torch.nn layers. With the same torch seed both builds draw the same
initial weights (same modules, same order).
"""
from __future__ import annotations

from typing import Callable, Dict, List

from torch import nn

from .layers import BACKENDS, GlobalAvgPool2d, Layers, TorchConv2dReLU
from .lenet import LeNet5
from .mobilenet import DepthwiseSeparable, MobileNet
from .resnet import BasicBlock, ResNet18
from .vgg import VGG

__all__ = ["build_model", "list_models", "MODELS", "LeNet5", "VGG", "ResNet18", "MobileNet", "BasicBlock",
           "DepthwiseSeparable", "Layers", "TorchConv2dReLU", "GlobalAvgPool2d", "BACKENDS"]


def _stem(image_size: int) -> str:
    return "imagenet" if image_size >= 128 else "cifar"


def _lenet5(num_classes, in_channels, image_size, backend, **kw):
    return LeNet5(num_classes, in_channels, image_size, backend=backend, **kw)


def _vgg_small(num_classes, in_channels, image_size, backend, **kw):
    return VGG(num_classes, in_channels, image_size, backend=backend, **kw)


def _resnet18(num_classes, in_channels, image_size, backend, **kw):
    kw.setdefault("stem", _stem(image_size))
    return ResNet18(num_classes, in_channels, backend=backend, **kw)


def _resnet18_cifar(num_classes, in_channels, image_size, backend, **kw):
    return ResNet18(num_classes, in_channels, stem="cifar", backend=backend, **kw)


def _resnet18_imagenet(num_classes, in_channels, image_size, backend, **kw):
    return ResNet18(num_classes, in_channels, stem="imagenet", backend=backend, **kw)


def _mobilenet(num_classes, in_channels, image_size, backend, **kw):
    kw.setdefault("stem", _stem(image_size))
    return MobileNet(num_classes, in_channels, backend=backend, **kw)


# name -> builder(num_classes, in_channels, image_size, backend, **model_kwargs)
MODELS: Dict[str, Callable[..., nn.Module]] = {
    "lenet5": _lenet5,
    "vgg_small": _vgg_small,
    "resnet18": _resnet18,
    "resnet18_cifar": _resnet18_cifar,
    "resnet18_imagenet": _resnet18_imagenet,
    "mobilenet": _mobilenet,
}


def list_models() -> List[str]:
    return list(MODELS)


def build_model(name: str, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                backend: str = "fastconv", **kwargs) -> nn.Module:
    """Builds model `name` for (in_channels, image_size, image_size) inputs and num_classes outputs.

    backend: 'fastconv' (fastconv.nn layers) or 'torch' (torch.nn layers). Extra keyword arguments go
    to the model's constructor (e.g. width=, batch_norm=, channels=).
    """
    key = name.strip().lower().replace("-", "_")
    if key not in MODELS:
        raise ValueError(f"fastconv.models: unknown model {name!r}; expected one of {list_models()}")
    return MODELS[key](num_classes, in_channels, image_size, backend, **kwargs)
