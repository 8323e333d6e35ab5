"""--blur-pool and --head as model constructor arguments (issue #33's architecture options).

Only the small zoo takes them: torchvision's architectures keep torchvision's exact module trees.
Checkpoints written before these options existed have neither in their arguments: the plain model."""
from __future__ import annotations

from argparse import Namespace
from typing import Any, Dict

BLUR_POOL_MODELS = ("lenet5", "vgg_small", "resnet18", "resnet18_cifar", "resnet18_imagenet", "mobilenet")


def arch_options(cfg: Namespace) -> Dict[str, Any]:
    from .engine import ConfigError

    out: Dict[str, Any] = {}
    if getattr(cfg, "blur_pool", False):
        if cfg.model not in BLUR_POOL_MODELS:
            raise ConfigError(f"--blur-pool: supported by {', '.join(BLUR_POOL_MODELS)}, not {cfg.model} "
                              f"(torchvision's architectures keep torchvision's module tree)")
        out["blur_pool"] = True
    head = getattr(cfg, "head", None)
    if head is not None:
        if cfg.model != "lenet5":
            raise ConfigError(f"--head {head}: only lenet5 has a choice of head; {cfg.model} always ends in "
                              f"global average pooling and one linear layer")
        out["head"] = head
    return out
