"""Checkpoints: one torch.save'd dict holding everything needed to continue training exactly (model,
optimizer, LR schedule, grad scaler, completed epochs, RNG states, history) and to use the model later
(arguments, class names, preprocessing). Only plain types and tensors are stored, so the file loads
with torch.load(weights_only=True)."""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

FORMAT = "fastconv-checkpoint/1"


def rng_state(loader_generator: Optional[torch.Generator] = None) -> Dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if loader_generator is not None:
        state["loader"] = loader_generator.get_state()
    return state


def set_rng_state(state: Dict[str, Any], loader_generator: Optional[torch.Generator] = None) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if loader_generator is not None and "loader" in state:
        loader_generator.set_state(state["loader"])


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, (tuple, list)) else x


def save(path: Path, payload: Dict[str, Any]) -> None:
    """Writes atomically: a temporary file, flushed to the disk, renamed over the target, and the
    directory entry flushed too. A process killed (or a machine losing power) during the write leaves
    the previous checkpoint intact and at most a partial CHECKPOINT.tmp, which the next save overwrites."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT, **payload}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows, where directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CheckpointError(ValueError):
    pass


def load(path, map_location="cpu") -> Dict[str, Any]:
    """The checkpoint at `path`, a file or a run directory (then its latest complete checkpoint)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = latest(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist (expected a checkpoint.pt written by "
                              f"`fastconv train`, or its run directory)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: the file is truncated or corrupted "
                              f"({_first_line(exc)}); resume from the run directory to use the latest complete "
                              f"checkpoint in it, or from an earlier checkpoint_epochN.pt") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a fastconv checkpoint (expected a dict with "
                              f"format={FORMAT!r}, written by `fastconv train`)")
    return ckpt


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _epoch_of(path: Path) -> int:
    """The completed epochs a checkpoint holds, -1 if it cannot be read (truncated, corrupted, foreign)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable file is skipped, and named by latest()
        return -1
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        return -1
    return int(ckpt.get("epoch", 0))


def latest(run_dir) -> Path:
    """The complete checkpoint of a run directory with the most epochs: checkpoint.pt or a
    checkpoint_epochN.pt (--save-every). Unreadable ones are skipped with a warning that names them,
    so a run killed while a checkpoint was being replaced resumes from the last complete one."""
    import warnings

    run_dir = Path(run_dir).expanduser()
    candidates = sorted(run_dir.glob("checkpoint*.pt"))
    if not candidates:
        raise CheckpointError(f"run directory {str(run_dir)!r} holds no checkpoint*.pt (expected the output "
                              f"directory of `fastconv train`)")
    epochs = {p: _epoch_of(p) for p in candidates}
    bad = [p for p, e in epochs.items() if e < 0]
    good = [p for p, e in epochs.items() if e >= 0]
    if not good:
        raise CheckpointError(f"run directory {str(run_dir)!r}: no complete checkpoint; every one is truncated "
                              f"or corrupted: {', '.join(repr(str(p)) for p in bad)}")
    # Most epochs first; checkpoint.pt over an equal checkpoint_epochN.pt (it sorts first by name).
    best = max(good, key=lambda p: (epochs[p], p.name == "checkpoint.pt"))
    if bad:
        warnings.warn(f"skipped truncated or corrupted checkpoint(s) {', '.join(repr(str(p)) for p in bad)}; "
                      f"using {str(best)!r} (epoch {epochs[best]})", RuntimeWarning, stacklevel=2)
    return best
