"""What the command modules share: the error line and the comma-separated option lists."""
from __future__ import annotations

import sys
from typing import Any, Callable, List, Optional, Tuple

# The 'train' extra (pyproject.toml): what train / evaluate / predict import when they run.
TRAIN_EXTRA_MODULES = ("sklearn", "matplotlib", "tqdm", "PIL")


def fail(command: str, message: object) -> int:
    """Prints `fastconv COMMAND: error: MESSAGE` to stderr; returns the exit code 2."""
    print(f"fastconv {command}: error: {message}", file=sys.stderr)
    return 2


def csv(value: str) -> List[str]:
    return [p.strip() for p in value.split(",") if p.strip()]


def missing_train_extra(exc: ImportError) -> Optional[str]:
    """The message for an ImportError of one of the 'train' extra's modules (raised directly, or
    re-raised with advice by fastconv.data); None for any other ImportError, which is a bug to show."""
    names = {getattr(e, "name", None) for e in (exc, exc.__cause__) if isinstance(e, ImportError)}
    if not any(n and n.split(".")[0] in TRAIN_EXTRA_MODULES for n in names):
        return None
    msg = str(exc)
    if "fastconv[train]" not in msg:
        msg += " (train, evaluate and predict need the 'train' extra: pip install 'fastconv[train]')"
    return msg


def run_training_call(command: str, fn: Callable[[], Any]) -> Tuple[Any, Optional[int]]:
    """(fn(), None) for train / evaluate / predict; (None, exit code 2) after printing the error line when
    fn raises one of fastconv.training's user errors or misses a module of the 'train' extra."""
    from ..training import user_errors

    try:
        return fn(), None
    except user_errors() as exc:
        return None, fail(command, exc)
    except ImportError as exc:
        msg = missing_train_extra(exc)
        if msg is None:
            raise
        return None, fail(command, msg)
