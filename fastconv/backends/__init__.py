"""Backend registry: which implementation runs an op on a given tensor.

Backends: 'cpu' (fastconv._C, C++), 'cuda' (fastconv._C_cuda, CUDA C++), 'triton' (fastconv/triton/),
'reference' (pure torch, the tests' yardstick) and 'cuda_emu' (the CUDA kernels on the SIMT emulator, CPU
tensors, tests only). Each backend says which device types it serves and,
if it is unavailable, why. Selection, in order of precedence:
  1. `with fastconv.use_backend(name):` (per thread),
  2. `fastconv.set_backend(name)` (process-wide),
  3. the environment variable FASTCONV_BACKEND at import time,
  4. 'auto': the first available backend in AUTO_ORDER for the tensor's device type.
An explicitly chosen backend that cannot serve a tensor raises; auto never silently picks a backend
that is not in AUTO_ORDER for that device, and logs (logger 'fastconv') which one it picked.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import threading
import warnings
from typing import Dict, FrozenSet, Iterator, List, Optional, Tuple

import torch

log = logging.getLogger("fastconv")

AUTO = "auto"
# Preference per device type when the choice is 'auto'. 'reference' serves devices that have no
# native backend (e.g. a GPU without the CUDA module or Triton), and says so in fastconv.info().
AUTO_ORDER: Dict[str, List[str]] = {
    "cpu": ["cpu", "reference"],
    "cuda": ["cuda", "triton", "reference"],
}


class Backend:
    """Interface every backend implements. Tensors are 4-d, already validated by fastconv.functional."""

    name: str = "?"
    device_types: Tuple[str, ...] = ()

    def availability(self) -> Tuple[bool, str]:
        """(available, reason): the reason says why not, or what is in use."""
        return True, ""

    def usable(self) -> bool:
        """availability()[0] without building the reason: resolve() asks on every op call."""
        return self.availability()[0]

    def serves(self, device: torch.device) -> bool:
        return device.type in self.device_types

    def nondeterministic_ops(self) -> FrozenSet[str]:
        """The kernels (names of the methods below, e.g. 'conv2d_wgrad') whose results may differ from
        run to run on the same inputs (floating-point atomics, split-K order chosen at run time...).
        Under torch.use_deterministic_algorithms(True), the ops refuse to run them (or warn, with
        warn_only=True), as torch does for its own nondeterministic kernels. Default: none."""
        return frozenset()

    # Convolution. stride/padding/dilation are pairs; padding is symmetric (fastconv.functional
    # resolves asymmetric 'same' padding by padding the input first).
    def conv2d_fwd(self, x, w, bias, stride, padding, dilation, groups, relu):  # -> y
        raise NotImplementedError

    def conv2d_dgrad(self, dy, x, w, relu_y, stride, padding, dilation, groups):  # -> dx
        raise NotImplementedError

    def conv2d_wgrad(self, dy, x, w, relu_y, stride, padding, dilation, groups, need_weight, need_bias):
        raise NotImplementedError  # -> (dw or None, db or None)

    def conv2d_fused_fwd(self, x, w, bias, scale, residual, stride, padding, dilation, groups, activation,
                         residual_after, return_conv):
        """(y, c or None): y = act(conv(x, w) * scale + bias [+ residual]) [+ residual] (fastconv/ops/
        conv2d_fused.py), c the bias-free convolution when return_conv. This default composes it from
        conv2d_fwd and torch's elementwise ops (the bias and a lone ReLU still go to the kernel); a backend
        with epilogue kernels overrides it."""
        from ..ops.conv2d_fused import compose_epilogue

        if scale is None and residual is None and activation in ("none", "relu") and not return_conv:
            return self.conv2d_fwd(x, w, bias, stride, padding, dilation, groups, activation == "relu"), None
        if not return_conv and scale is None:
            # the bias in the kernel, the rest composed
            y = self.conv2d_fwd(x, w, bias, stride, padding, dilation, groups, False)
            return compose_epilogue(y, None, None, residual, activation, residual_after), None
        c = self.conv2d_fwd(x, w, None, stride, padding, dilation, groups, False)
        return compose_epilogue(c, bias, scale, residual, activation, residual_after), (c if return_conv else None)

    # Pooling. kernel/stride/padding/dilation are pairs.
    def max_pool2d_fwd(self, x, kernel, stride, padding, dilation, ceil_mode, with_indices):
        raise NotImplementedError  # -> (y, indices or None)

    def max_pool2d_bwd(self, dy, x, indices, kernel, stride, padding, dilation, ceil_mode):
        raise NotImplementedError  # -> dx

    def avg_pool2d_fwd(self, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
        raise NotImplementedError  # -> y

    def avg_pool2d_bwd(self, dy, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
        raise NotImplementedError  # -> dx

    # Adaptive pooling (ops/pool_adaptive.py). output_size a pair; (1, 1) is global average pooling.
    def adaptive_avg_pool2d_fwd(self, x, output_size):
        raise NotImplementedError  # -> y

    def adaptive_avg_pool2d_bwd(self, dy, x):
        raise NotImplementedError  # -> dx

    def adaptive_max_pool2d_fwd(self, x, output_size):
        raise NotImplementedError  # -> (y, indices)

    def adaptive_max_pool2d_bwd(self, dy, x, indices):
        raise NotImplementedError  # -> dx


_REGISTRY: Dict[str, Backend] = {}
_global_choice: str = AUTO
_local = threading.local()


def import_extension(name: str) -> Tuple[Optional[object], Optional[str]]:
    """Imports the compiled module fastconv.<name>: (module, None), or (None, why it is missing) as a
    phrase that follows the module's name: "is not built (...)" when the package has no file for it
    (no nvcc, FASTCONV_CUDA=0, a subset in FASTCONV_EXTENSIONS, a source checkout without
    `pip install -e .`), "is built but does not load: <the import error>" for a file that fails to load
    (a missing shared library, a build against another torch). Python's own message for the first case
    blames a circular import, because fastconv is still initializing while its backends load.
    """
    full = f"{__name__.rpartition('.')[0]}.{name}"
    try:
        return importlib.import_module(full), None
    except ImportError as exc:
        if importlib.util.find_spec(full) is None:
            return None, "is not built (the package has no compiled file for it)"
        return None, f"is built but does not load: {exc}"


def register_backend(backend: Backend) -> None:
    _REGISTRY[backend.name] = backend


def unregister_backend(name: str) -> Backend:
    """Removes a registered backend (e.g. one a test registered) and returns it. A process-wide choice
    of that backend falls back to 'auto'; a `use_backend` context still naming it fails on its next op."""
    global _global_choice
    name = _check_name(name)
    if name == AUTO:
        raise ValueError("fastconv: 'auto' is not a backend and cannot be unregistered")
    backend = _REGISTRY.pop(name)
    if _global_choice == name:
        _global_choice = AUTO
    return backend


def registered() -> Dict[str, Backend]:
    return dict(_REGISTRY)


def _check_name(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"fastconv backend name must be a str, got {type(name).__name__}")
    name = name.strip().lower()
    if name != AUTO and name not in _REGISTRY:
        raise ValueError(f"unknown fastconv backend {name!r}; expected one of {[AUTO] + sorted(_REGISTRY)}")
    return name


def set_backend(name: Optional[str]) -> None:
    """Chooses the backend process-wide ('auto' or None restores automatic choice)."""
    global _global_choice
    name = AUTO if name is None else _check_name(name)
    if name != AUTO:
        ok, why = _REGISTRY[name].availability()
        if not ok:
            raise RuntimeError(f"fastconv backend {name!r} is not available: {why}")
    _global_choice = name


def get_backend() -> str:
    """The backend name in force for this thread ('auto' unless one was chosen)."""
    stack = getattr(_local, "stack", None)
    return stack[-1] if stack else _global_choice


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager choosing the backend for this thread."""
    name = _check_name(name)
    if name != AUTO:
        ok, why = _REGISTRY[name].availability()
        if not ok:
            raise RuntimeError(f"fastconv backend {name!r} is not available: {why}")
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


def resolve(device: torch.device) -> Backend:
    """The backend that runs an op on a tensor of this device under the current choice."""
    choice = get_backend()
    if choice != AUTO:
        backend = _REGISTRY.get(choice)
        if backend is None:  # unregistered while a use_backend() context still names it
            raise RuntimeError(f"fastconv backend {choice!r} is no longer registered")
        if not backend.serves(device):
            raise RuntimeError(
                f"fastconv backend {choice!r} cannot run on {device.type} tensors "
                f"(it serves {', '.join(backend.device_types) or 'no device'}); "
                f"move the tensors or choose another backend with fastconv.set_backend()"
            )
        return backend
    for name in AUTO_ORDER.get(device.type, ["reference"]):
        backend = _REGISTRY.get(name)
        if backend is None or not backend.serves(device):
            continue
        if backend.usable():
            if name == "reference" and device.type != "cpu":
                log.debug("fastconv: no native backend for %s tensors; using the reference backend", device.type)
            return backend
    raise RuntimeError(f"fastconv: no backend available for {device.type} tensors")


def check_deterministic(backend: Backend, kernel: str) -> None:
    """Called by every op before it runs `kernel` (a Backend method name) of `backend`: honours
    torch.use_deterministic_algorithms() the way torch's own kernels do: a kernel the backend declares
    nondeterministic raises RuntimeError, or warns when warn_only=True."""
    if not torch.are_deterministic_algorithms_enabled() or kernel not in backend.nondeterministic_ops():
        return
    msg = (f"fastconv {kernel} on the {backend.name!r} backend does not have a deterministic implementation, "
           f"but you set 'torch.use_deterministic_algorithms(True)'. You can turn off determinism just for "
           f"this operation, or you can use the 'warn_only=True' option, if that's acceptable for your "
           f"application. You can also choose a backend whose {kernel} is deterministic with "
           f"fastconv.use_backend() / fastconv.set_backend() (the 'cpu' backend's kernels all are).")
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(msg, UserWarning, stacklevel=3)
    else:
        raise RuntimeError(msg)


def _choice_from_environment() -> None:
    env = os.environ.get("FASTCONV_BACKEND", "").strip()
    if env:
        try:
            set_backend(env)
        except (ValueError, RuntimeError) as exc:
            raise RuntimeError(f"FASTCONV_BACKEND={env!r}: {exc}") from None


def _register_builtin() -> None:
    from . import cpu, cuda, reference, triton

    register_backend(cpu.CpuBackend())
    register_backend(reference.ReferenceBackend())
    register_backend(cuda.CudaBackend())
    register_backend(cuda.EmulatedCudaBackend())
    register_backend(triton.TritonBackend())


_register_builtin()
_choice_from_environment()
