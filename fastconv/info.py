"""fastconv.info(): what was built, what is available on this machine, and why not."""
from __future__ import annotations

import platform
from typing import Any, Dict

import torch

from . import backends
from .version import __version__


def info_dict() -> Dict[str, Any]:
    from .backends import cpu as cpu_backend

    out: Dict[str, Any] = {
        "fastconv": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    C = cpu_backend._C
    if C is not None:
        build = dict(C.build_info())
        build["cpu_isa_detected"] = C.detected_cpu_isa()
        build["cpu_isa_in_use"] = C.cpu_isa()
        out["_C"] = build
    else:
        out["_C"] = f"not built: {cpu_backend._IMPORT_ERROR}"
    out["_C_cuda"] = "not built: the CUDA backend is not part of this version yet"
    try:
        import triton  # noqa: F401

        out["triton"] = getattr(triton, "__version__", "installed")
    except ImportError:
        out["triton"] = None
    out["backends"] = {}
    for name, backend in sorted(backends.registered().items()):
        ok, why = backend.availability()
        out["backends"][name] = {"available": ok, "devices": list(backend.device_types), "detail": why}
    out["backend_choice"] = backends.get_backend()
    out["auto_order"] = backends.AUTO_ORDER
    return out


def info(print_it: bool = True) -> Dict[str, Any]:
    """Prints (and returns) the build and availability report."""
    data = info_dict()
    if print_it:
        print(format_info(data))
    return data


def format_info(data: Dict[str, Any]) -> str:
    lines = [f"fastconv {data['fastconv']}  (torch {data['torch']}, Python {data['python']}, {data['machine']})"]
    lines.append(f"  torch threads: {data['torch_threads']}   CUDA device: {data['cuda_device'] or 'none'}")
    c = data["_C"]
    if isinstance(c, dict):
        lines.append(f"  fastconv._C: built ({c['compiler']}, OpenMP {'on' if c['openmp'] else 'off'}), ISA variants "
                     f"{c['isa_variants']}; CPU supports {c['cpu_isa_detected']}, using {c['cpu_isa_in_use']}")
    else:
        lines.append(f"  fastconv._C: {c}")
    lines.append(f"  fastconv._C_cuda: {data['_C_cuda']}")
    lines.append(f"  triton: {data['triton'] or 'not installed'}")
    lines.append(f"  backend choice: {data['backend_choice']}  (auto order: "
                 + "; ".join(f"{dev}: {' > '.join(names)}" for dev, names in data["auto_order"].items()) + ")")
    for name, b in data["backends"].items():
        state = "available" if b["available"] else "unavailable"
        lines.append(f"    {name:<10} {state:<12} devices={','.join(b['devices'])}  {b['detail']}")
    return "\n".join(lines)
