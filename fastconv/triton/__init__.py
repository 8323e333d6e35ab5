"""fastconv's Triton kernels (the 'triton' backend): implicit-GEMM convolution forward, dgrad and wgrad with
fused bias + ReLU, depthwise convolution, max/avg pooling forward and backward.

    conv2d.py   _conv2d_fwd_kernel, _conv2d_dgrad_kernel, _conv2d_wgrad_kernel, _dwconv2d_*_kernel + launchers
    pool2d.py   _max_pool2d_{fwd,bwd}_kernel, _avg_pool2d_{fwd,bwd}_kernel + launchers
    pool_adaptive.py  _adaptive_{fwd,bwd}_kernel, _global_avg_fwd_kernel + launchers
    _jit.py     @triton.jit helpers shared by both; _common.py: launch-side flags and tuning helpers

Importing this package needs Triton; fastconv itself does not (fastconv.backends.triton imports it lazily).

Interpreter mode. `triton.jit` decides when a kernel is *decorated* whether it compiles for the GPU or
runs in Triton's CPU interpreter (TRITON_INTERPRET=1, read through triton.knobs.runtime.interpret).
`kernels()` returns the kernel modules decorated for the mode in force *now*: when the mode changed since
they were imported (a test process that set TRITON_INTERPRET=1 after something imported them), they are
re-imported, so the interpreter runs on CPU tensors and compiled kernels on GPU tensors.
"""
from __future__ import annotations

import importlib
import threading
from types import SimpleNamespace

from . import _common

_lock = threading.Lock()
_loaded = {"mode": None, "ns": None}
_MODULES = ("_jit", "conv2d", "pool2d", "pool_adaptive")  # import order: the kernel files bind _jit's helpers at import


def kernels() -> SimpleNamespace:
    """Namespace with the conv2d and pool2d kernel modules, decorated for the current interpreter mode."""
    mode = _common.interpreting()
    ns = _loaded["ns"]
    if ns is not None and _loaded["mode"] == mode:
        return ns
    with _lock:
        if _loaded["ns"] is None or _loaded["mode"] != mode:
            mods = {}
            for name in _MODULES:
                full = f"{__name__}.{name}"
                mod = importlib.import_module(full)
                if _loaded["mode"] is not None or _decorated_mode(mod) not in (None, mode):
                    mod = importlib.reload(mod)
                mods[name] = mod
            _loaded["ns"] = SimpleNamespace(conv2d=mods["conv2d"], pool2d=mods["pool2d"],
                                            pool_adaptive=mods["pool_adaptive"])
            _loaded["mode"] = mode
        return _loaded["ns"]


def _decorated_mode(mod):
    """True/False: the mode mod's kernels were decorated in (None if it defines none)."""
    for value in vars(mod).values():
        if getattr(getattr(value, "fn", None), "__module__", None) != mod.__name__:
            continue  # not decorated here (e.g. triton.language's own functions)
        kind = type(value).__name__
        if kind == "InterpretedFunction":
            return True
        if kind == "JITFunction":
            return False
    return None
