"""torch.autocast support for fastconv's custom ops.

torch puts conv2d on autocast's lower-precision list for CUDA and CPU: inside `torch.autocast(...)` its
floating-point inputs are cast to the autocast dtype (float16/bfloat16) before the kernel runs, float64
tensors excepted. fastconv's forward convolution ops get the same rule through a kernel on the
AutocastCUDA / AutocastCPU dispatch keys. torch.library.register_autocast would fix the target dtype at
registration time; this kernel reads it when the op runs (torch.autocast(..., dtype=...)), as torch's
own autocast kernels do. The casts happen before autograd, so gradients flow back to the float32
leaves through them, as with torch's conv2d.

Pooling is on no autocast list in torch (it runs in its input's dtype); the pooling ops register no
autocast kernel and so fall through autocast unchanged, which gives the same behaviour.
"""
from __future__ import annotations

from typing import Any

import torch

_KEYS = {"cuda": "AutocastCUDA", "cpu": "AutocastCPU"}

_lib = torch.library.Library("fastconv", "FRAGMENT")  # kept alive: owns the registrations below


def _autocast_dtype(device_type: str) -> torch.dtype:
    getter = getattr(torch, "get_autocast_dtype", None)
    if getter is not None:
        return getter(device_type)
    return torch.get_autocast_gpu_dtype() if device_type == "cuda" else torch.get_autocast_cpu_dtype()


def _cast(value: Any, device_type: str, dtype: torch.dtype) -> Any:
    """torch's autocast eligibility: floating-point tensors on the autocast device, float64 excluded."""
    if (isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float64
            and value.device.type == device_type):
        return value.to(dtype)
    return value


def register_lower_precision(op_name: str) -> None:
    """Registers torch's lower-precision autocast rule for fastconv::<op_name> on CUDA and CPU."""
    op = getattr(torch.ops.fastconv, op_name).default
    for device_type, key in _KEYS.items():
        dispatch_key = getattr(torch._C.DispatchKey, key)

        def kernel(_keyset, *args, _device_type=device_type, _dispatch_key=dispatch_key):
            dtype = _autocast_dtype(_device_type)
            # run the op once more below autocast (torch.library.register_autocast does the same)
            with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(_dispatch_key)):
                return op(*(_cast(a, _device_type, dtype) for a in args))

        _lib.impl(op_name, kernel, key, with_keyset=True)


def autocast_unifies(*tensors) -> bool:
    """True when autocast is on for the tensors' device and will cast all of them to one dtype, so
    that a dtype mismatch between them (an float16 activation and a float32 weight) is not an error."""
    ts = [t for t in tensors if t is not None]
    device_type = ts[0].device.type
    if device_type not in _KEYS:
        return False
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        enabled = torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()
    return enabled and all(t.is_floating_point() and t.dtype != torch.float64 and t.device.type == device_type
                           for t in ts)
