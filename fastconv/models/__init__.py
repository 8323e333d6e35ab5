"""Complete CNNs built from fastconv.nn layers, or from torch.nn layers with the same parameter names.

    from fastconv.models import build_model
    fast = build_model("resnet18_cifar", num_classes=10)                   # fastconv.nn layers
    ref = build_model("resnet18_cifar", num_classes=10, backend="torch")   # torch.nn layers
    ref.load_state_dict(fast.state_dict())                                 # same keys, same shapes

Two families:
- The small zoo: lenet5, vgg_small, resnet18 (stem chosen from the image size), resnet18_cifar,
  resnet18_imagenet, mobilenet (depthwise-separable v1; stem chosen from the image size). Sized for
  digits and CIFAR-10; conv+ReLU pairs are fused Conv2dReLU layers.
- torchvision's ImageNet architectures (fastconv.models.imagenet), with torchvision's module trees,
  parameter/buffer names, initialization and eval semantics, so a torchvision state_dict loads with
  strict=True: tv_resnet18, resnet50, mobilenet_v2, mobilenet_v3_large, efficientnet_b0,
  resnext50_32x4d, regnet_y_400mf, densenet121, convnext_tiny, shufflenet_v2_x1_0, googlenet, vgg11.
  Naming: torchvision's name wherever the small zoo does not already use it; the one collision,
  resnet18, keeps its small-zoo meaning and torchvision's ResNet-18 is registered as tv_resnet18.
  (resnet18_imagenet has the same state_dict keys, shapes, initialization and eval outputs as
  torchvision's resnet18 and loads its weights too, but it is the small zoo's class - a `width`
  argument, a global-pool module that torch.fx cannot trace; tv_resnet18 is the exact module tree.)
  They take any image_size down to torchvision's documented minimum (1 for most: strided convs are
  padded and the pooling is adaptive; googlenet 15, densenet121 29, convnext_tiny and vgg11 32) and
  raise a ValueError naming it below that. GoogLeNet defaults to torchvision's aux_logits=True,
  transform_input=False (its ImageNet weights have aux_logits=False).

`backend='fastconv'` builds fastconv.nn layers, whose kernels follow fastconv.set_backend();
`backend='torch'` builds torch.nn layers. With the same torch seed both builds draw the same
initial weights (same modules, same order).
"""
from __future__ import annotations

import functools
from typing import Callable, Dict, List

from torch import nn

from . import imagenet
from .layers import BACKENDS, AdaptiveAvgPool2d, GlobalAvgPool2d, Layers, TorchConv2dReLU
from .lenet import LeNet5
from .mobilenet import DepthwiseSeparable, MobileNet
from .resnet import BasicBlock, ResNet18
from .vgg import VGG

__all__ = ["build_model", "list_models", "MODELS", "LeNet5", "VGG", "ResNet18", "MobileNet", "BasicBlock",
           "DepthwiseSeparable", "Layers", "TorchConv2dReLU", "GlobalAvgPool2d", "AdaptiveAvgPool2d", "BACKENDS",
           "imagenet"]


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
for _name in imagenet.SPECS:
    MODELS[_name] = functools.partial(imagenet.build, _name)


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
