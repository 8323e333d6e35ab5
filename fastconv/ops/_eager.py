"""When a forward op may skip torch's dispatcher and call its implementation directly.

A call through a torch.library custom op costs about 18 us of Python dispatch (autograd wrapper,
redispatch, the dynamo-disable wrapper) before the kernel starts, and more after a large kernel has
evicted that Python code and its objects from the caches: on a 16.8 MB depthwise layer the time spent
outside the backend rose from about 34 us (small layer) to about 77 us. torch's own F.conv2d spends
about 5 us. The dispatcher is only needed when something other than the caller observes or transforms
the call, so a forward op runs its implementation directly when none of these holds:

- torch.compile / torch.export is tracing (the op must appear in the graph);
- a TorchFunctionMode or TorchDispatchMode is active (FakeTensorMode, FlopCounterMode, proxy tracing,
  user modes all see the op);
- a functorch transform (vmap, grad, jvp) is active, or a forward-AD dual level is open;
- autocast is enabled (the op's autocast kernel casts the inputs, ops/_autocast.py);
- the profiler is recording (the op's range, "fastconv::conv2d", is what users look for);
- torch.jit.trace is tracing (the traced graph must hold the op);
- autograd must record the op: grad mode on and some tensor argument requires grad;
- a tensor argument is a subclass (other than nn.Parameter, whose __torch_function__ is disabled) or a
  meta tensor.

The direct call runs the very function registered as the op's implementation, so results are
identical; tests/test_eager_direct.py checks each condition and the bitwise equality.

Eager training (eager_route's AUTOGRAD): when only the last two conditions keep an op off the direct
path - autograd must record it, nothing else observes it - the op runs as a plain
torch.autograd.Function around the same implementation and the same backward, and the backward ops
go direct by direct_ok (grad mode is off in a backward without create_graph). The custom op's
autograd wrapper (fill_defaults, redispatch, the dynamo-disable wrapper) and the backward ops'
dispatch cost most of a small layer's training time: a 1x1 conv on a 1x8x2x2 input, forward+backward,
2 threads, 370 us -> 190 us (torch: 80); the forward alone in grad mode 96 -> 35 us (torch: 9).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.autograd import forward_ad as _forward_ad

_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)

_C = torch._C
_len_dispatch_stack = getattr(_C, "_len_torch_dispatch_stack", None)
_function_mode_enabled = getattr(_C, "_is_torch_function_mode_enabled", None)
_functorch_active = getattr(_C, "_are_functorch_transforms_active", None)
_any_autocast = getattr(_C, "_is_any_autocast_enabled", None)
_profiler_enabled = getattr(_C._autograd, "_profiler_enabled", None)
_tracing_state = getattr(_C, "_get_tracing_state", None)
_is_compiling = torch.compiler.is_compiling
# On a torch without one of these queries the direct path is never taken (the op path is always right).
_QUERIES_PRESENT = None not in (_len_dispatch_stack, _function_mode_enabled, _functorch_active, _any_autocast,
                                _profiler_enabled, _tracing_state)


def _forward_ad_active() -> bool:
    return getattr(_forward_ad, "_current_level", -1) >= 0


# eager_route's answers.
OP = 0        # through torch.ops
DIRECT = 1    # the implementation itself (nothing records or observes the call)
AUTOGRAD = 2  # the implementation inside the op's plain autograd.Function (autograd records it)


def eager_route(*tensors: Optional[Tensor]) -> int:
    """How an op called with these tensor arguments (None allowed) runs: OP, DIRECT or AUTOGRAD (see
    the module docstring)."""
    if _is_compiling() or not _QUERIES_PRESENT:
        return OP
    if (_len_dispatch_stack() or _function_mode_enabled() or _functorch_active() or _any_autocast()
            or _profiler_enabled() or _tracing_state() is not None or _forward_ad_active()):
        return OP
    grad = torch.is_grad_enabled()
    route = DIRECT
    for t in tensors:
        if t is None:
            continue
        if type(t) not in _PLAIN_TYPES or t.is_meta:
            return OP
        if grad and t.requires_grad:
            route = AUTOGRAD
    return route


def direct_ok(*tensors: Optional[Tensor]) -> bool:
    """True when an op called with these tensor arguments (None allowed) may run its implementation
    directly instead of through torch.ops (see the module docstring)."""
    return eager_route(*tensors) == DIRECT
