"""Transfer learning for `fastconv train --init CHECKPOINT_OR_STATE_DICT [--freeze-backbone | --finetune-lr LR]`.

--init loads pretrained weights into the freshly built model before training: a checkpoint.pt of
`fastconv train`, or a state_dict file (torch.save of a dict of tensors) such as torchvision's released
weights for the zoo's torchvision architectures (`resnet50-11ad3fa6.pth` into --model resnet50). Every
parameter and buffer must match by name and shape, except:
- the classifier head (the model's last nn.Linear): when the class counts differ, or a fastconv
  checkpoint was trained on other classes (digits 0-4 -> 5-9), it keeps its fresh initialization - the
  head is replaced - and the run says so;
- the stem convolution, when pretrained on RGB and the images are greyscale: its weights are summed over
  the three input channels (the same response as the RGB filters give to a grey image replicated x3).

The backbone is everything but the head. --freeze-backbone trains the head only (the backbone's
parameters get requires_grad=False; BatchNorm statistics still update in train mode); --finetune-lr
gives the backbone its own, usually lower, learning rate while the head trains at --lr.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .checkpoint import FORMAT, CheckpointError
from .engine import ConfigError


def head_name(model: nn.Module) -> str:
    """The classifier head: the last nn.Linear in module order (fc, classifier.6, ...)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ConfigError(f"--init: {type(model).__name__} has no nn.Linear classifier head to replace")
    return names[-1]


def read_state_dict(path) -> Tuple[Dict[str, torch.Tensor], str, Optional[List[str]]]:
    """(state_dict, what it is, its class names if a fastconv checkpoint) from --init's file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"--init {str(p)!r} does not exist (expected a checkpoint.pt of `fastconv train` or "
                              f"a torchvision-format state_dict file)")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"--init: cannot read {str(p)!r}: {exc}") from None
    what, classes = "state_dict", None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        obj, what, classes = obj["model"], "fastconv checkpoint", [str(c) for c in obj.get("classes", [])]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"--init: {str(p)!r} is neither a fastconv checkpoint nor a state_dict (a dict of "
                              f"parameter names to tensors)")
    # Saved from a DistributedDataParallel or torch.compile wrapper: drop the wrapper's prefix.
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj, what, classes


def _stem_weight(model: nn.Module) -> str:
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    return f"{convs[0]}.weight" if convs else ""


def load_pretrained(model: nn.Module, path, classes: Optional[Sequence[str]] = None, log=print) -> Dict[str, Any]:
    """Loads --init's weights into model (in place); returns what was loaded and replaced. The head is
    replaced when its shape differs, or when a fastconv checkpoint's class names differ from `classes`
    (same count, other classes: its outputs would mean the wrong classes)."""
    source, what, source_classes = read_state_dict(path)
    new_classes = (classes is not None and source_classes is not None
                   and [str(c) for c in classes] != source_classes)
    target = model.state_dict()
    head = head_name(model)
    head_keys = {f"{head}.weight", f"{head}.bias"}
    stem = _stem_weight(model)
    load, replaced, problems = {}, [], []
    for k, t in target.items():
        if k not in source:
            problems.append(f"{k} missing")
            continue
        s = source[k]
        if k in head_keys and (s.shape != t.shape or new_classes):
            replaced.append(k)
        elif s.shape == t.shape:
            load[k] = s
        elif k == stem and s.dim() == 4 and s.shape[1] == 3 and t.shape[1] == 1 and s.shape[0] == t.shape[0]:
            load[k] = s.sum(1, keepdim=True)
        else:
            problems.append(f"{k} is {tuple(s.shape)} there, {tuple(t.shape)} here")
    problems += [f"{k} unexpected" for k in source if k not in target]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} in all)" if len(problems) > 5 else "")
        raise ConfigError(f"--init {str(path)!r} ({what}) does not fit --model's parameters: {shown}. "
                          f"Pass weights of the same architecture (the class count may differ)")
    model.load_state_dict(load, strict=False)
    if replaced:
        n_src = source[f"{head}.weight"].shape[0]
        n_dst = target[f"{head}.weight"].shape[0]
        why = f"{n_src} -> {n_dst} classes" if n_src != n_dst else f"classes {source_classes} -> {list(classes)}"
        log(f"  --init: loaded {len(load)} tensors from {path} ({what}); classifier head {head!r} replaced "
            f"({why}, freshly initialized)")
    else:
        log(f"  --init: loaded {len(load)} tensors from {path} ({what}), classifier head {head!r} included")
    return {"loaded": len(load), "replaced": replaced, "head": head, "source": what}


def param_groups(model: nn.Module, cfg) -> List[Dict[str, Any]]:
    """The optimizer's parameter groups for --freeze-backbone / --finetune-lr (one group otherwise)."""
    freeze = bool(getattr(cfg, "freeze_backbone", False))
    finetune_lr = getattr(cfg, "finetune_lr", None)
    if not freeze and finetune_lr is None:
        return [{"params": list(model.parameters())}]
    if not getattr(cfg, "init", None):
        raise ConfigError(f"{'--freeze-backbone' if freeze else '--finetune-lr'} needs --init (the pretrained "
                          f"weights it keeps or fine-tunes)")
    if freeze and finetune_lr is not None:
        raise ConfigError("--freeze-backbone and --finetune-lr exclude each other (a frozen backbone has no "
                          "learning rate)")
    head = model.get_submodule(head_name(model))
    head_ids = {id(p) for p in head.parameters()}
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    if freeze:
        for p in backbone:
            p.requires_grad_(False)
        return [{"params": list(head.parameters())}]
    if finetune_lr <= 0:
        raise ConfigError(f"--finetune-lr must be positive, got {finetune_lr}")
    return [{"params": backbone, "lr": float(finetune_lr)}, {"params": list(head.parameters())}]
