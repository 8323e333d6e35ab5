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
        out["_C"] = cpu_backend._IMPORT_ERROR.removeprefix("is ")
    out["_C_cuda"] = _cuda_module_info()
    out["_C_emu"] = _emu_module_info()
    out["triton"] = _triton_info()
    out["backends"] = {}
    for name, backend in sorted(backends.registered().items()):
        ok, why = backend.availability()
        out["backends"][name] = {"available": ok, "devices": list(backend.device_types), "detail": why}
    out["backend_choice"] = backends.get_backend()
    out["auto_order"] = backends.AUTO_ORDER
    return out


def _cuda_module_info():
    from .backends import cuda as cuda_backend

    m = cuda_backend._C_cuda
    if m is None:
        return cuda_backend._CUDA_IMPORT_ERROR.removeprefix("is ")
    archs = m.build_info["archs"].split(";")
    gpu = "GPU present" if torch.cuda.is_available() else "no GPU present"
    return f"built by nvcc for sm_{', sm_'.join(archs)} (+PTX for sm_{archs[-1]}); {gpu}"


def _emu_module_info():
    from .backends import cuda as cuda_backend

    m = cuda_backend._C_emu
    if m is None:
        return cuda_backend._EMU_IMPORT_ERROR.removeprefix("is ")
    return "built (the CUDA kernels on the SIMT emulator, backend 'cuda_emu' for tests)"


def _triton_info() -> Dict[str, Any]:
    """Triton's version (None if it cannot be imported) and whether the 'triton' backend can run here, and why."""
    from .backends import triton as triton_backend

    version = None
    if triton_backend._triton_missing() is None:
        import triton

        version = getattr(triton, "__version__", "installed")
    backend = backends.registered().get("triton") or triton_backend.TritonBackend()
    ok, why = backend.availability()
    return {"version": version, "available": ok, "interpreter": triton_backend.interpreting(), "detail": why}


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
    lines.append(f"  fastconv._C_emu: {data['_C_emu']}")
    t = data["triton"]
    lines.append(f"  triton: {t['version'] or 'not installed'}; backend 'triton' "
                 f"{'usable' if t['available'] else 'not usable'}: {t['detail']}")
    lines.append(f"  backend choice: {data['backend_choice']}  (auto order: "
                 + "; ".join(f"{dev}: {' > '.join(names)}" for dev, names in data["auto_order"].items()) + ")")
    for name, b in data["backends"].items():
        state = "available" if b["available"] else "unavailable"
        lines.append(f"    {name:<10} {state:<12} devices={','.join(b['devices'])}  {b['detail']}")
    return "\n".join(lines)
