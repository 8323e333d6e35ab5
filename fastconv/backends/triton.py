"""The 'triton' backend: fastconv.triton's kernels (implicit-GEMM convolution, depthwise, pooling).

Serves CUDA tensors when Triton is installed and a CUDA GPU is present. With TRITON_INTERPRET=1 it also
serves CPU tensors: Triton's interpreter then runs the same kernels on the CPU (slow, exact logic),
which is how the kernels are tested on machines without a GPU. Triton stays optional: nothing here
imports it until the backend is asked whether it is available or runs a kernel.

Outputs follow the cpu backend's memory-format rules (fastconv._utils): channels_last output when the
input (or, for conv, the weight) suggests it, gradients in their tensor's format. float32 (TF32 only
when torch.backends.cudnn.allow_tf32 allows it), float16 and bfloat16 (float32 accumulation) and
float64 (float64 accumulation) run natively; nothing is upcast on the host.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
from typing import Optional, Tuple

import torch

from . import Backend


@functools.lru_cache(maxsize=None)
def _triton_missing() -> Optional[str]:
    """Why Triton cannot be used (None when it can)."""
    try:
        spec = importlib.util.find_spec("triton")
    except (ImportError, ValueError):  # e.g. sys.modules["triton"] = None: imports of it are blocked
        spec = None
    if spec is None:
        return "triton is not installed (pip install 'fastconv[triton]')"
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # noqa: BLE001  (a broken install: report it, do not crash fastconv)
        return f"triton failed to import: {type(exc).__name__}: {exc}"
    return None


def interpreting() -> bool:
    """TRITON_INTERPRET=1 (Triton's knob) with Triton importable."""
    if _triton_missing() is not None:
        return False
    from ..triton import _common

    return _common.interpreting()


class TritonBackend(Backend):
    name = "triton"

    @property
    def device_types(self) -> Tuple[str, ...]:  # type: ignore[override]
        return ("cuda", "cpu") if interpreting() else ("cuda",)

    def availability(self):
        missing = _triton_missing()
        if missing is not None:
            return False, missing
        import triton

        version = getattr(triton, "__version__", "?")
        if interpreting():
            return True, (f"Triton {version} interpreter (TRITON_INTERPRET=1): kernels run on the CPU, on cpu "
                          f"tensors; slow, for testing")
        if not torch.cuda.is_available():
            return False, (f"no CUDA GPU (torch.cuda.is_available() is False; Triton {version} is installed); "
                           f"set TRITON_INTERPRET=1 to run the kernels on CPU tensors in Triton's interpreter")
        return True, f"Triton {version} kernels on {torch.cuda.get_device_name(0)}"

    def serves(self, device: torch.device) -> bool:
        if device.type == "cuda":
            return True
        return device.type == "cpu" and interpreting()

    @staticmethod
    def _k():
        from ..triton import kernels

        return kernels()

    @staticmethod
    def _on(t: torch.Tensor):
        """Launch context for t: its CUDA device (Triton launches on the current device and stream)."""
        if t.device.type == "cpu":
            if not interpreting():
                raise RuntimeError("fastconv triton backend: cpu tensors run only in Triton's interpreter; set "
                                   "TRITON_INTERPRET=1, or move the tensors to a CUDA device")
            return contextlib.nullcontext()
        return torch.cuda.device(t.device)

    # Convolution
    def conv2d_fwd(self, x, w, bias, stride, padding, dilation, groups, relu):
        with self._on(x):
            return self._k().conv2d.conv2d_fwd(x, w, bias, stride, padding, dilation, groups, relu)

    def conv2d_dgrad(self, dy, x, w, relu_y, stride, padding, dilation, groups):
        with self._on(dy):
            return self._k().conv2d.conv2d_dgrad(dy, x, w, relu_y, stride, padding, dilation, groups)

    def conv2d_wgrad(self, dy, x, w, relu_y, stride, padding, dilation, groups, need_weight, need_bias):
        with self._on(dy):
            return self._k().conv2d.conv2d_wgrad(dy, x, w, relu_y, stride, padding, dilation, groups, need_weight,
                                                 need_bias)

    # Pooling
    def max_pool2d_fwd(self, x, kernel, stride, padding, dilation, ceil_mode, with_indices):
        with self._on(x):
            return self._k().pool2d.max_pool2d_fwd(x, kernel, stride, padding, dilation, ceil_mode, with_indices)

    def max_pool2d_bwd(self, dy, x, indices, kernel, stride, padding, dilation, ceil_mode):
        with self._on(dy):
            return self._k().pool2d.max_pool2d_bwd(dy, x, indices, kernel, stride, padding, dilation, ceil_mode)

    def avg_pool2d_fwd(self, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
        with self._on(x):
            return self._k().pool2d.avg_pool2d_fwd(x, kernel, stride, padding, ceil_mode, count_include_pad,
                                                   divisor_override)

    def avg_pool2d_bwd(self, dy, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
        with self._on(dy):
            return self._k().pool2d.avg_pool2d_bwd(dy, x, kernel, stride, padding, ceil_mode, count_include_pad,
                                                   divisor_override)

    # Adaptive pooling (fastconv/triton/pool_adaptive.py)
    def adaptive_avg_pool2d_fwd(self, x, output_size):
        with self._on(x):
            return self._k().pool_adaptive.adaptive_fwd(x, output_size, False)

    def adaptive_avg_pool2d_bwd(self, dy, x):
        with self._on(dy):
            return self._k().pool_adaptive.adaptive_bwd(dy, x, None)

    def adaptive_max_pool2d_fwd(self, x, output_size):
        with self._on(x):
            return self._k().pool_adaptive.adaptive_fwd(x, output_size, True)

    def adaptive_max_pool2d_bwd(self, dy, x, indices):
        with self._on(dy):
            return self._k().pool_adaptive.adaptive_bwd(dy, x, indices)
