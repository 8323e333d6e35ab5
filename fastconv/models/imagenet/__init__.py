"""ImageNet architectures with torchvision's module trees: a torchvision state_dict loads with strict=True.

    from fastconv.models import build_model
    model = build_model("mobilenet_v2", num_classes=1000, image_size=224)         # fastconv.nn layers
    model.load_state_dict(torch.load("mobilenet_v2-b0353104.pth"))              # torchvision's weights

Each model has torchvision's parameter and buffer names, shapes, hyper-parameters (BN eps/momentum,
dropout, stochastic depth), initialization and eval-mode semantics; in_channels changes the stem conv
only. Convolutions and pools come from fastconv.nn (backend='fastconv') or torch.nn (backend='torch');
adaptive average pooling runs fastconv's avg_pool2d when the windows are uniform, else its
adaptive_avg_pool2d (see layers.AdaptiveAvgPool2d), and where torchvision pools with a function rather than a module
(mobilenet_v2, densenet121, shufflenet's mean, GoogLeNet's aux heads) both backends use torch's.
Activations stay separate modules as in torchvision (no fused Conv2dReLU), so module indices match.
torch.fx.symbolic_trace traces the torch builds as it traces torchvision's models; a fastconv build
traces with a Tracer that keeps the conv/pool modules as leaves (fastconv.functional checks that its
inputs are tensors, which fx's Proxy objects are not).

SPECS maps each registered name to its constructor, the smallest input side it accepts (torchvision's
documented min_size) and the constructor argument that `fastconv train --width` scales, if any.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional

from torch import nn

from . import convnext, densenet, efficientnet, googlenet, mobilenet, regnet, resnet, shufflenet, vgg
from .convnext import ConvNeXt
from .densenet import DenseNet
from .efficientnet import EfficientNet
from .googlenet import GoogLeNet, GoogLeNetOutputs
from .mobilenet import MobileNetV2, MobileNetV3
from .regnet import RegNet, regnet_stages
from .resnet import ResNet
from .shufflenet import ShuffleNetV2
from .vgg import VGG

__all__ = ["SPECS", "TORCHVISION_NAME", "ImageNetSpec", "build", "width_kwargs", "ResNet", "MobileNetV2",
           "MobileNetV3", "EfficientNet", "RegNet", "DenseNet", "ConvNeXt", "ShuffleNetV2", "GoogLeNet",
           "GoogLeNetOutputs", "VGG", "regnet_stages"]


class ImageNetSpec(NamedTuple):
    constructor: Callable[..., nn.Module]  # (num_classes, in_channels, backend=, **model_kwargs)
    min_size: int = 1
    width_kwarg: Optional[str] = None


# fastconv name -> spec. torchvision's name, except where the original zoo already had it: 'resnet18'
# (whose stem depends on the image size) stays, and torchvision's ResNet-18 is 'tv_resnet18'.
SPECS: Dict[str, ImageNetSpec] = {
    "tv_resnet18": ImageNetSpec(resnet.resnet18),
    "resnet50": ImageNetSpec(resnet.resnet50),
    "resnext50_32x4d": ImageNetSpec(resnet.resnext50_32x4d),
    "mobilenet_v2": ImageNetSpec(mobilenet.mobilenet_v2, width_kwarg="width_mult"),
    "mobilenet_v3_large": ImageNetSpec(mobilenet.mobilenet_v3_large, width_kwarg="width_mult"),
    "efficientnet_b0": ImageNetSpec(efficientnet.efficientnet_b0),
    "regnet_y_400mf": ImageNetSpec(regnet.regnet_y_400mf),
    "densenet121": ImageNetSpec(densenet.densenet121, min_size=densenet.MIN_SIZE),
    "convnext_tiny": ImageNetSpec(convnext.convnext_tiny, min_size=convnext.MIN_SIZE),
    "shufflenet_v2_x1_0": ImageNetSpec(shufflenet.shufflenet_v2_x1_0),
    "googlenet": ImageNetSpec(googlenet.googlenet, min_size=googlenet.MIN_SIZE),
    "vgg11": ImageNetSpec(vgg.vgg11, min_size=vgg.MIN_SIZE),
}
TORCHVISION_NAME = {name: ("resnet18" if name == "tv_resnet18" else name) for name in SPECS}


def build(name: str, num_classes: int, in_channels: int, image_size: int, backend: str, **kwargs: Any) -> nn.Module:
    spec = SPECS[name]
    if image_size < spec.min_size:
        raise ValueError(f"fastconv.models.{name}: inputs must be at least {spec.min_size}x{spec.min_size} (as for "
                         f"torchvision's {TORCHVISION_NAME[name]}), got image_size={image_size}; resize the images "
                         f"(e.g. fastconv train --image-size {spec.min_size})")
    return spec.constructor(num_classes, in_channels, backend=backend, **kwargs)


def width_kwargs(name: str, width: float) -> Dict[str, float]:
    """The constructor arguments for a channel multiplier `width` (1.0: none)."""
    if width == 1.0:
        return {}
    arg = SPECS[name].width_kwarg
    if arg is None:
        raise ValueError(f"{name} has no channel-width multiplier (torchvision's {TORCHVISION_NAME[name]} has "
                         f"none); leave the width at 1")
    return {arg: width}
