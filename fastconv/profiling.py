"""Named ranges around every fastconv op, for torch.profiler traces and Nsight (NVTX).

fastconv/ops/*.py wrap each backend call in `op_range(...)`. While profiling is off (the default)
that is one global read and a shared no-op context manager, nothing measurable next to a kernel.
While it is on (`with fastconv.profiling.enabled():`, or `enable()`), each call opens

    torch.profiler.record_function("fastconv::conv2d_relu[cpu,float32,3x3,s1]")

(and, on CUDA tensors, an NVTX range of the same name, so that `nsys` and `ncu --nvtx` see it).
The name says op, backend, dtype, filter/window size and stride.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

import torch

_ENABLED = False


class _Null:
    __slots__ = ()

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


_NULL = _Null()


def is_enabled() -> bool:
    return _ENABLED


def enable(on: bool = True) -> None:
    global _ENABLED
    _ENABLED = bool(on)


@contextlib.contextmanager
def enabled(on: bool = True) -> Iterator[None]:
    """Named ranges on (or off) inside the block; restores the previous state."""
    global _ENABLED
    before = _ENABLED
    _ENABLED = bool(on)
    try:
        yield
    finally:
        _ENABLED = before


def _pair(v) -> str:
    if v is None:
        return "?"
    v = list(v) if isinstance(v, (list, tuple)) else [v, v]
    return str(v[0]) if len(v) == 2 and v[0] == v[1] else "x".join(map(str, v))


def range_name(op: str, backend: str, dtype: torch.dtype, window: Sequence[int], stride) -> str:
    """e.g. fastconv::conv2d_relu[cpu,float32,3x3,s1]"""
    kh, kw = (list(window) + [1, 1])[:2] if window is not None else ("?", "?")
    return f"fastconv::{op}[{backend},{str(dtype).replace('torch.', '')},{kh}x{kw},s{_pair(stride)}]"


class _Range:
    __slots__ = ("name", "cuda", "rf")

    def __init__(self, name: str, cuda: bool):
        self.name, self.cuda, self.rf = name, cuda, None

    def __enter__(self):
        if self.cuda:
            torch.cuda.nvtx.range_push(self.name)
        self.rf = torch.autograd.profiler.record_function(self.name)
        self.rf.__enter__()
        return self

    def __exit__(self, *exc):
        self.rf.__exit__(*exc)
        if self.cuda:
            torch.cuda.nvtx.range_pop()
        return False


def op_range(op: str, backend, x: torch.Tensor, window: Optional[Sequence[int]], stride):
    """Context manager for one op call: a no-op unless profiling is enabled. `backend` is the resolved
    Backend (its name goes into the range name); window is the filter's (R, S) or the pooling kernel."""
    if not _ENABLED:
        return _NULL
    return _Range(range_name(op, getattr(backend, "name", str(backend)), x.dtype, window, stride),
                  x.device.type == "cuda")
