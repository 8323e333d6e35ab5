"""The NVRTC path of the 'cuda' backend: for an install without nvcc (fastconv._C_cuda not built) on a
machine with a GPU and CuPy. The same kernels/*.cuh sources are compiled at run time by NVRTC through
`cupy.RawModule` (on first use of each kernel; CuPy caches the binaries on disk) and launched on
torch's memory and torch's current stream (no copies).

No launch logic is duplicated here. Each call goes through the C++ launchers of fastconv._C_emu (the
launchers built by g++ against the SIMT emulator) in *recording* mode: they check the arguments,
choose the kernel and its tiling exactly as in fastconv._C_cuda, and instead of running anything they
record each launch — kernel symbol, grid, block, dynamic shared memory and the bytes of every
argument converted to the kernel's parameter type. This module then looks each kernel up by name in
the NVRTC module and replays the launch with cuLaunchKernel (the argument bytes are passed as they
are, so structures cross unchanged). The pointers the launchers record are never dereferenced on the
host, so they are the device pointers of the CUDA tensors.

FASTCONV_CUDA_JIT=1 forces this path even when fastconv._C_cuda is built (to test it on a GPU).
"""
from __future__ import annotations

import ctypes
import functools
import glob
import os
import threading
from typing import Dict, List, Optional

# Launcher functions of the module interface (csrc/cuda/bind.cpp) that launch kernels; the rest
# (conv2d_wgrad_workspace_bytes) are pure host functions and pass through.
LAUNCHERS = ("conv2d_fwd", "conv2d_dgrad", "conv2d_wgrad", "max_pool2d_fwd", "max_pool2d_bwd",
             "avg_pool2d_fwd", "avg_pool2d_bwd", "adaptive_pool2d_fwd", "adaptive_pool2d_bwd")


def kernels_dir() -> Optional[str]:
    """kernels/ of a source checkout or editable install (the directory beside the package)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for candidate in (os.path.join(os.path.dirname(here), "kernels"), os.path.join(here, "kernels")):
        if glob.glob(os.path.join(candidate, "*.cuh")):
            return candidate
    return None


def name_expression(signature: str) -> str:
    """The NVRTC name expression of a kernel from its demangled signature:
    'void fc::k<float, true>(fc::Tensor4, float const*)' -> 'fc::k<float, true>',
    'fc::k(float const*)' -> 'fc::k'."""
    s = signature.strip()
    if not s.endswith(")"):
        raise ValueError(f"not a function signature: {signature!r}")
    depth = 0
    for i in range(len(s) - 1, -1, -1):   # the '(' that opens the parameter list
        if s[i] == ")":
            depth += 1
        elif s[i] == "(":
            depth -= 1
            if depth == 0:
                s = s[:i]
                break
    depth = 0
    for i, ch in enumerate(s):             # a template's demangled name starts with its return type
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == " " and depth == 0 and s[:i] == "void":
            return s[i + 1:]
    return s


class NvrtcModule:
    """Duck-types fastconv._C_cuda: the same functions, run as recorded launches replayed by CuPy."""

    build_info = {"build": "NVRTC via CuPy (compiled on first use)", "archs": "jit"}

    def __init__(self, emu_module, cupy_module, source_dir: str):
        self._emu = emu_module
        self._cupy = cupy_module
        self._source = "\n".join(f'#include "{os.path.basename(p)}"'
                                 for p in sorted(glob.glob(os.path.join(source_dir, "*.cuh"))))
        self._options = ("-std=c++17", f"-I{source_dir}")
        self._functions: Dict[tuple, object] = {}
        self._lock = threading.Lock()

    def _function(self, expression: str, device: int):
        key = (expression, device)
        with self._lock:
            fn = self._functions.get(key)
            if fn is None:
                module = self._cupy.RawModule(code=self._source, options=self._options,
                                              name_expressions=[expression])
                fn = self._functions[key] = module.get_function(expression)
        return fn

    def _replay(self, launches: List[dict], stream: int) -> None:
        cupy = self._cupy
        import torch

        device = torch.cuda.current_device()
        with cupy.cuda.Device(device):
            for launch in launches:
                fn = self._function(name_expression(launch["signature"]), device)
                smem = int(launch["dynamic_smem"])
                if smem > 48 * 1024:   # above the default limit a kernel must opt in, as cudaFuncSetAttribute does
                    fn.max_dynamic_shared_size_bytes = smem
                buffers = [ctypes.create_string_buffer(p, len(p)) for p in launch["params"]]
                pointers = (ctypes.c_void_p * max(1, len(buffers)))(*[ctypes.addressof(b) for b in buffers])
                cupy.cuda.driver.launchKernel(fn.ptr, *launch["grid"], *launch["block"], smem, stream,
                                              ctypes.addressof(pointers), 0)

    def __getattr__(self, name: str):
        host = getattr(self._emu, name)
        if name not in LAUNCHERS:
            return host

        @functools.wraps(host)
        def launcher(*args, **kwargs):
            stream = kwargs["stream"] if "stream" in kwargs else args[-1]
            self._emu.start_recording()
            try:
                host(*args, **kwargs)
            finally:
                launches = self._emu.stop_recording()
            self._replay(launches, stream)

        return launcher


_instance: Optional[NvrtcModule] = None
_reason: Optional[str] = None


def load() -> Optional[NvrtcModule]:
    """The NVRTC module, or None (see reason())."""
    global _instance, _reason
    if _instance is not None or _reason is not None:
        return _instance
    try:
        import cupy
    except ImportError as exc:
        _reason = f"CuPy is not installed ({exc})"
        return None
    from . import cuda as cuda_backend

    if cuda_backend._C_emu is None:
        _reason = f"fastconv._C_emu {cuda_backend._EMU_IMPORT_ERROR}"
        return None
    source_dir = kernels_dir()
    if source_dir is None:
        _reason = "the kernels/ sources are not beside the package (a source checkout or editable install has them)"
        return None
    _instance = NvrtcModule(cuda_backend._C_emu, cupy, source_dir)
    return _instance


def reason() -> str:
    return _reason or ""
