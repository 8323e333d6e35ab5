"""The 'cuda' backend (fastconv._C_cuda: hand-written CUDA C++ kernels, kernels/*.cuh, launched by
csrc/cuda/*.cu) and its emulated twin 'cuda_emu' (fastconv._C_emu: the same launchers and kernels
compiled by g++ against the SIMT emulator in csrc/emu/, run on CPU tensors; the tests' way of running
every CUDA kernel without a GPU).

Both call the same launcher interface (csrc/cuda/api.h) with (data_ptr, sizes, strides) tuples, a
dtype code and the caller's current stream (0 for the emulator). The kernels read and write through
strides, so NCHW, channels_last and strided views need no copies; outputs are allocated here in
torch's memory format (channels_last when the input, or for conv the weight, suggests it), as the cpu
backend does. float16 and bfloat16 run natively with float32 accumulation; float64 in float64.
"""
from __future__ import annotations

import os

import torch

from .. import _utils
from . import Backend, cuda_nvrtc, import_extension

_C_cuda, _CUDA_IMPORT_ERROR = import_extension("_C_cuda")  # not built without nvcc, or with FASTCONV_CUDA=0
_C_emu, _EMU_IMPORT_ERROR = import_extension("_C_emu")

_DTYPE_CODE = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}

# The tensor-core kernels (kernels/conv2d_tc.cuh) run every eligible convolution: float16/bfloat16, and
# float32 as TF32 when torch.backends.cudnn.allow_tf32 allows it (cuDNN's rule), with channels_last
# activations. FASTCONV_CUDA_TENSOR_CORES=0 (or setting this to False) keeps every call on the SIMT kernels.
TENSOR_CORES = os.environ.get("FASTCONV_CUDA_TENSOR_CORES", "1") != "0"


def _t4(t: torch.Tensor):
    return (t.data_ptr(), list(t.shape), list(t.stride()))


def _dtype_code(t: torch.Tensor, backend: str) -> int:
    code = _DTYPE_CODE.get(t.dtype)
    if code is None:
        raise TypeError(f"fastconv {backend} backend: unsupported dtype {t.dtype}; expected float32, float64, "
                        f"float16 or bfloat16")
    return code


def conv_shape(x, w, stride, padding, dilation, groups, out_hw):
    """The 18 fields of fc::ConvShape: N C H W K R S P Q, stride, padding, dilation (h, w), groups,
    allow_tf32, tensor_cores."""
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    return (N, C, H, W, K, R, S, out_hw[0], out_hw[1], stride[0], stride[1], padding[0], padding[1],
            dilation[0], dilation[1], groups, bool(torch.backends.cudnn.allow_tf32), bool(TENSOR_CORES))


def pool_shape(x, out_hw, kernel, stride, padding, dilation=(1, 1)):
    """The 14 fields of fc::PoolShape: N C H W P Q, kernel, stride, padding, dilation (h, w)."""
    N, C, H, W = x.shape
    return (N, C, H, W, out_hw[0], out_hw[1], kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1],
            dilation[0], dilation[1])


def _use_nvrtc() -> bool:
    return _C_cuda is None or os.environ.get("FASTCONV_CUDA_JIT", "0") == "1"


class CudaBackend(Backend):
    """_C_cuda when it was built; otherwise (or with FASTCONV_CUDA_JIT=1) the NVRTC path through CuPy."""

    name = "cuda"
    device_types = ("cuda",)

    def _module(self):
        return cuda_nvrtc.load() if _use_nvrtc() else _C_cuda

    def _stream(self, t: torch.Tensor) -> int:
        return torch.cuda.current_stream(t.device).cuda_stream

    def availability(self):
        if _use_nvrtc():
            built = ("forced by FASTCONV_CUDA_JIT=1" if _C_cuda is not None
                     else f"fastconv._C_cuda {_CUDA_IMPORT_ERROR}")
            if cuda_nvrtc.load() is None:
                return False, f"{built}, and the NVRTC path is unavailable: {cuda_nvrtc.reason()}"
            if not torch.cuda.is_available():
                return False, f"{built}; NVRTC path (CuPy) ready; no GPU present"
            return True, f"{built}; kernels compiled by NVRTC (CuPy) on first use"
        archs = "sm_" + _C_cuda.build_info["archs"].replace(";", ", sm_")
        if not torch.cuda.is_available():
            return False, f"fastconv._C_cuda built for {archs}; no GPU present"
        return True, f"CUDA C++ kernels for {archs}"

    # ---- convolution -----------------------------------------------------------------------------
    def conv2d_fwd(self, x, w, bias, stride, padding, dilation, groups, relu):
        y, out_hw, done = _utils.conv_output_or_trivial(x, w, bias, stride, padding, dilation, relu)
        if done:
            return y
        if bias is not None:
            bias = bias.contiguous()
        self._module().conv2d_fwd(conv_shape(x, w, stride, padding, dilation, groups, out_hw),
                                  _dtype_code(x, self.name), _t4(x), _t4(w),
                                  bias.data_ptr() if bias is not None else 0, _t4(y), bool(relu), self._stream(x))
        return y

    def conv2d_dgrad(self, dy, x, w, relu_y, stride, padding, dilation, groups):
        dx = _utils.grad_input_like(x)
        if dx.numel() == 0:
            return dx
        if dy.numel() == 0 or w.numel() == 0:
            return dx.zero_()
        self._module().conv2d_dgrad(conv_shape(x, w, stride, padding, dilation, groups, dy.shape[2:]),
                                    _dtype_code(x, self.name), _t4(dy), _t4(w),
                                    _t4(relu_y) if relu_y is not None else None, _t4(dx), self._stream(x))
        return dx

    def conv2d_wgrad(self, dy, x, w, relu_y, stride, padding, dilation, groups, need_weight, need_bias):
        dw, db, done = _utils.conv_wgrad_outputs_or_trivial(dy, x, w, need_weight, need_bias)
        if done:
            return dw, db
        m = self._module()
        shape = conv_shape(x, w, stride, padding, dilation, groups, dy.shape[2:])
        code = _dtype_code(x, self.name)
        ws_bytes = m.conv2d_wgrad_workspace_bytes(shape, code)
        # Scratch from torch's caching allocator, so the split reduction's partial sums cost no cudaMalloc.
        workspace = torch.empty(ws_bytes, dtype=torch.uint8, device=x.device) if ws_bytes else None
        m.conv2d_wgrad(shape, code, _t4(dy), _t4(x), _t4(relu_y) if relu_y is not None else None,
                       _t4(dw) if dw is not None else None, db.data_ptr() if db is not None else 0,
                       workspace.data_ptr() if workspace is not None else 0, ws_bytes, self._stream(x))
        return dw, db

    # ---- pooling ---------------------------------------------------------------------------------
    def max_pool2d_fwd(self, x, kernel, stride, padding, dilation, ceil_mode, with_indices):
        out_hw = _utils.pool_out_hw(x, kernel, stride, padding, dilation, ceil_mode)
        cl = _utils.strides_like_channels_last(x)
        shape = (x.shape[0], x.shape[1], *out_hw)
        y = _utils.empty_like_format(shape, x, cl)
        idx = _utils.empty_like_format(shape, x, cl, dtype=torch.int64) if with_indices else None
        if y.numel() == 0:
            return y, idx
        self._module().max_pool2d_fwd(pool_shape(x, out_hw, kernel, stride, padding, dilation),
                                      _dtype_code(x, self.name), _t4(x), _t4(y),
                                      _t4(idx) if idx is not None else None, self._stream(x))
        return y, idx

    def max_pool2d_bwd(self, dy, x, indices, kernel, stride, padding, dilation, ceil_mode):
        dx = _utils.grad_input_like(x)
        if dx.numel() == 0:
            return dx
        self._module().max_pool2d_bwd(pool_shape(x, dy.shape[2:], kernel, stride, padding, dilation),
                                      _dtype_code(x, self.name), _t4(dy), _t4(indices), _t4(dx), self._stream(x))
        return dx

    def avg_pool2d_fwd(self, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
        out_hw = _utils.pool_out_hw(x, kernel, stride, padding, (1, 1), ceil_mode)
        y = _utils.empty_like_format((x.shape[0], x.shape[1], *out_hw), x, _utils.strides_like_channels_last(x))
        if y.numel() == 0:
            return y
        self._module().avg_pool2d_fwd(pool_shape(x, out_hw, kernel, stride, padding), _dtype_code(x, self.name),
                                      _t4(x), _t4(y), bool(count_include_pad), int(divisor_override or 0),
                                      self._stream(x))
        return y

    def avg_pool2d_bwd(self, dy, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
        dx = _utils.grad_input_like(x)
        if dx.numel() == 0:
            return dx
        self._module().avg_pool2d_bwd(pool_shape(x, dy.shape[2:], kernel, stride, padding),
                                      _dtype_code(x, self.name), _t4(dy), _t4(dx), bool(count_include_pad),
                                      int(divisor_override or 0), self._stream(x))
        return dx

    # ---- adaptive pooling (kernels/pool2d_adaptive.cuh) -------------------------------------------
    def _adaptive_fwd(self, x, output_size, is_max):
        cl = _utils.strides_like_channels_last(x)
        shape = (x.shape[0], x.shape[1], *output_size)
        y = _utils.empty_like_format(shape, x, cl)
        idx = _utils.empty_like_format(shape, x, cl, dtype=torch.int64) if is_max else None
        if y.numel() != 0:
            self._module().adaptive_pool2d_fwd(pool_shape(x, output_size, (1, 1), (1, 1), (0, 0)),
                                               _dtype_code(x, self.name), _t4(x), _t4(y),
                                               _t4(idx) if is_max else None, self._stream(x))
        return (y, idx) if is_max else y

    def _adaptive_bwd(self, dy, x, indices):
        dx = _utils.grad_input_like(x)
        if dx.numel() == 0:
            return dx
        if dy.numel() == 0:
            return dx.zero_()
        self._module().adaptive_pool2d_bwd(pool_shape(x, dy.shape[2:], (1, 1), (1, 1), (0, 0)),
                                           _dtype_code(x, self.name), _t4(dy),
                                           _t4(indices) if indices is not None else None, _t4(dx), self._stream(x))
        return dx

    def adaptive_avg_pool2d_fwd(self, x, output_size):
        return self._adaptive_fwd(x, output_size, False)

    def adaptive_avg_pool2d_bwd(self, dy, x):
        return self._adaptive_bwd(dy, x, None)

    def adaptive_max_pool2d_fwd(self, x, output_size):
        return self._adaptive_fwd(x, output_size, True)

    def adaptive_max_pool2d_bwd(self, dy, x, indices):
        return self._adaptive_bwd(dy, x, indices)


class EmulatedCudaBackend(CudaBackend):
    """The CUDA kernels on the SIMT emulator, for CPU tensors: slow (each CUDA thread is a fiber), for
    tests and for reading a kernel's behaviour in a debugger. Never chosen automatically."""

    name = "cuda_emu"
    device_types = ("cpu",)

    def _module(self):
        return _C_emu

    def _stream(self, t: torch.Tensor) -> int:
        return 0

    def availability(self):
        if _C_emu is None:
            return False, f"fastconv._C_emu {_EMU_IMPORT_ERROR}; run `pip install -e .`"
        return True, (f"the CUDA kernels on the SIMT emulator (CPU tensors; threads in "
                      f"{_C_emu.thread_order()} order)")
