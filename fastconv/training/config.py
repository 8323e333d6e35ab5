"""The configuration of a training run: the defaults of the options `fastconv train` leaves unset, per
dataset and in general, and resolve_config, which fills them in (from the checkpoint first, on
--resume). The options themselves are defined by fastconv.cli.train."""
from __future__ import annotations

from argparse import Namespace
from pathlib import Path
from typing import Any, Dict, Tuple, Type

from ..data.augment import DEFAULT_AUGMENT
from ..models import list_models

# Per-dataset defaults for the options left unset. digits: LeNet-5 at twice the standard width
# (12 and 32 channels), SGD + weight decay, random 1-pixel shifts (--augment shift, data.augment), label
# smoothing 0.1, 40 epochs. Seeds 0-4 (busy machine, 2026-12-06): 99.17-99.44% on 2 threads, 98.61-99.44%
# on 1. Measured on 1 thread on the way there: the old default (20 epochs, no shifts, no smoothing)
# 98.06-98.89% (and 97.22% for one seed on another machine: too close to 97.5%); shifts at 40 epochs
# without smoothing 98.33-99.17%, but 97.78% for seed 1 with other shift draws (2 threads); 60 epochs
# 98.33-98.89% (4 seeds); width 3 97.78-99.17% (3 seeds). Plain width: 97.2-98.6%; Adam: 95-97%.
DATASET_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "digits": {"model": "lenet5", "epochs": 40, "batch_size": 32, "weight_decay": 5e-4, "label_smoothing": 0.1},
    "cifar10": {"model": "resnet18_cifar", "epochs": 30, "batch_size": 128, "weight_decay": 5e-4},
    "folder": {"model": "resnet18", "epochs": 20, "batch_size": 64, "weight_decay": 5e-4},
}
LR_DEFAULTS = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}
GENERAL_DEFAULTS: Dict[str, Any] = {
    "dataset": "digits", "data_dir": None, "optimizer": "sgd", "momentum": 0.9, "lr_schedule": "cosine",
    "seed": 0, "image_size": None, "train_subset": None, "test_subset": None, "dtype": "float32",
    "label_smoothing": 0.0, "amp": "none", "channels_last": False,
    "device": "auto", "backend": "auto", "compile": False, "out": None, "resume": None, "save_every": 0,
    "eval_every": 1, "workers": 0, "progress": "auto", "export": None,
    "init": None, "freeze_backbone": False, "finetune_lr": None, "classes": None, "train_per_class": None,
    "folds": None, "fold": None,
}
# Issue #33's options: anti-aliased downsampling and LeNet-5's head (None: the model's own); --augment's
# default is per dataset (data.augment.DEFAULT_AUGMENT).
GENERAL_DEFAULTS.update({"blur_pool": False, "head": None})
# Options that define the training itself: on --resume they come from the checkpoint unless given.
FROM_CHECKPOINT = ("dataset", "data_dir", "model", "epochs", "batch_size", "lr", "optimizer", "momentum",
                   "weight_decay", "lr_schedule", "seed", "image_size", "width", "train_subset", "test_subset",
                   "dtype", "label_smoothing", "amp", "channels_last", "eval_every",
                   "init", "freeze_backbone", "finetune_lr", "classes", "train_per_class")
FROM_CHECKPOINT += ("augment", "blur_pool", "head")

BACKEND_CHOICES = ("auto", "cpu", "cuda", "triton", "torch", "reference")
MODEL_NAMES = tuple(list_models())  # the --model choices: the whole zoo


def resolve_config(args: Namespace) -> Namespace:
    """Fills the options left unset (None): from the checkpoint (on --resume), then dataset and general
    defaults."""
    from .checkpoint import latest, load

    given = {k: v for k, v in vars(args).items() if k not in ("command",)}
    cfg: Dict[str, Any] = {}
    if given.get("resume"):
        if Path(given["resume"]).expanduser().is_dir():  # a run directory: its latest complete checkpoint
            given["resume"] = str(latest(given["resume"]))
        saved = load(given["resume"])["args"]
        for k in FROM_CHECKPOINT:
            if given.get(k) is None and k in saved:
                cfg[k] = saved[k]
    for k, v in given.items():
        if v is not None:
            cfg[k] = v
    dataset = cfg.get("dataset") or GENERAL_DEFAULTS["dataset"]
    for k, v in {**GENERAL_DEFAULTS, **DATASET_DEFAULTS[dataset]}.items():
        cfg.setdefault(k, v)
    cfg.setdefault("lr", LR_DEFAULTS[cfg["optimizer"]])
    # A checkpoint from before --augment existed trained without augmentation.
    cfg.setdefault("augment", "none" if given.get("resume") else DEFAULT_AUGMENT[dataset])
    cfg.setdefault("width", 2.0 if (dataset, cfg["model"]) == ("digits", "lenet5") else 1.0)
    cfg["channels_last"] = bool(cfg["channels_last"])
    cfg["compile"] = bool(cfg["compile"])
    cfg["freeze_backbone"] = bool(cfg["freeze_backbone"])
    cfg["blur_pool"] = bool(cfg["blur_pool"])
    return Namespace(**cfg)


def user_errors() -> Tuple[Type[Exception], ...]:
    """The exceptions that mean a wrong option, dataset or checkpoint (reported in one line, not a trace)."""
    from ..data import DatasetError
    from .checkpoint import CheckpointError
    from .engine import ConfigError

    return (DatasetError, CheckpointError, ConfigError)
