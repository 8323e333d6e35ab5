"""The 'cpu' backend: fastconv._C, hand-written C++ kernels (OpenMP, AVX2/AVX-512 dispatch).

Tensors cross into C++ as (data_ptr, sizes, strides) and a dtype code; the kernels read inputs
through their strides (any layout, non-contiguous views) and write outputs that are allocated here in
torch's memory format: channels_last when the input (or, for conv, the weight) suggests it.
The kernels compute in float32 and float64; float16 and bfloat16 tensors are computed in float32 and
rounded once at the end (torch's CPU kernels also accumulate these in float32).
"""
from __future__ import annotations

import functools
import os
import threading
import weakref
from collections import OrderedDict
from typing import NamedTuple, Optional, Tuple

import torch

from .. import _utils
from . import Backend, import_extension

_C, _IMPORT_ERROR = import_extension("_C")

_DTYPE_CODE = {torch.float32: 0, torch.float64: 1}
# The kernels' activation codes (csrc/cpu/epilogue.h: Act)
_ACT_CODE = {"none": 0, "relu": 1, "relu6": 2, "silu": 3, "hardswish": 4, "hardsigmoid": 5, "gelu": 6, "sigmoid": 7}


def _trivial_epilogue(y: torch.Tensor, act: int, residual, residual_after: bool) -> torch.Tensor:
    """The epilogue of an output no kernel computes (empty, or an empty reduction: y is the bias)."""
    from ..ops.conv2d_fused import compose_epilogue

    name = next(k for k, v in _ACT_CODE.items() if v == act)
    return compose_epilogue(y, None, None, residual, name, residual_after)
_UPCAST = (torch.float16, torch.bfloat16)


def _t4(t: torch.Tensor):
    return (t.data_ptr(), list(t.shape), list(t.stride()))


# Below these sizes a kernel runs on one thread. An OpenMP fork/join costs microseconds on an idle
# machine but a scheduler time slice (milliseconds) whenever another process holds a core: a LeNet step
# on 8x8 digits whose second convolution (1.2M multiply-adds, ~10 us of work) ran on 2 threads had a
# p90 of 66 ms against 3.6 ms on one thread with one core busy elsewhere. 8M multiply-adds is ~100 us
# of single-thread work, where a second thread pays for itself even on a busy machine.
# A convolution's work counts the elements it reads and writes as well (_CONV_ELEMENT_MACS multiply-adds
# each: a core computes ~80 multiply-adds per ns and moves ~5 floats per ns from beyond its L2), so that
# layers with few multiply-adds per element still get both cores: a depthwise 3x3 layer (9 per output)
# of N=4, 128 channels, 32x32 (4.7M multiply-adds, 1M elements) took 200 us on one thread and
# 105-110 us on two (torch's: 108 us).
_CONV_SERIAL_MACS = 1 << 23      # multiply-add equivalents of one convolution pass
_CONV_ELEMENT_MACS = 16          # multiply-adds that take as long as moving one input/output element
_POOL_SERIAL_ELEMENTS = 1 << 16  # input elements of one pooling pass


def _threads(work: int, serial_below: int) -> int:
    return 1 if work < serial_below else torch.get_num_threads()


def _conv_work(x: torch.Tensor, w: torch.Tensor, out_hw) -> int:
    """Multiply-add equivalents of one convolution pass: its multiply-adds plus _CONV_ELEMENT_MACS per
    element of the input and the output."""
    outputs = x.shape[0] * w.shape[0] * out_hw[0] * out_hw[1]
    macs = outputs * w.shape[1] * w.shape[2] * w.shape[3]
    return macs + _CONV_ELEMENT_MACS * (x.numel() + outputs)


def _conv_threads(x: torch.Tensor, w: torch.Tensor, out_hw) -> int:
    return _threads(_conv_work(x, w, out_hw), _CONV_SERIAL_MACS)


def _pool_threads(x: torch.Tensor) -> int:
    return _threads(x.numel(), _POOL_SERIAL_ELEMENTS)


def _fast_getenv(name: str):
    """The process environment's raw value of `name` (bytes), or None: os.environ's own dict, which
    os.environ[...] = / del / monkeypatch keep current, without os.environ.get's key encoding."""
    data = getattr(os.environ, "_data", None)
    if data is None or os.name != "posix":
        value = os.environ.get(name)
        return None if value is None else value.encode()
    return data.get(name.encode())


_ENABLED_MEMO: list = [object(), True]  # [raw value last parsed, whether the cache is on]


class WeightPackCache:
    """Packed (transformed) weights of the C++ kernels, reused while the weight tensor is unchanged.

    The Winograd kernels multiply against U = G w G^T (36 x C x K floats, 9 MiB for a 256x256 3x3
    layer); the implicit-GEMM kernels against w packed into microkernel panels (4.5 MiB for a 256x256
    3x3 layer); either costs a pass over the pack on every call. An entry is keyed by the weight tensor
    object and the pack's kind (("forward", format) with the format number the forward kernel reports,
    ConvFwdCall.pack_info(): kernel family, microkernel shape, dtype, ISA level, groups; or
    ("input_grad",) for the Winograd input gradient) and is valid while the tensor is alive and its
    data_ptr, shape, strides and version counter (``tensor._version``, bumped by every in-place
    update: optimizer steps, ``copy_``, ``load_state_dict``) are those the pack was made from.
    A weak reference drops the entry when the tensor dies, so a new tensor at the same address
    never meets a stale pack. Writes that bypass the version counter (through ``.data``, as
    gradcheck's perturbations and old-style update loops do, or from outside torch) are invisible
    here; the C++ side catches them: every pack ends with a copy of (a sample of) the weight's
    elements, compared before the pack is used (csrc/module.cpp, with_checked_pack). A sparse write
    through ``.data`` to a weight of more than 4096 elements can fall between the samples: call
    ``clear()`` (``fastconv.backends.cpu.weight_pack_cache.clear()``) after such writes, or set
    FASTCONV_WEIGHT_CACHE=0. Least recently used entries beyond ``max_bytes`` are evicted.
    Thread-safe: two threads missing at once both pack (into their own buffers).
    """

    def __init__(self, max_bytes: int = 512 << 20):
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: "OrderedDict[Tuple[int, tuple], dict]" = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    @staticmethod
    def enabled() -> bool:
        # Read at every lookup (tests and users switch it at run time), but only re-parsed when the raw
        # value changed: os.environ.get alone is ~0.8 us, the parse as much again, per conv call.
        raw = _fast_getenv("FASTCONV_WEIGHT_CACHE")
        if raw is not _ENABLED_MEMO[0]:
            _ENABLED_MEMO[:] = [raw, raw is None or raw.strip().lower() not in (b"0", b"false", b"off", b"no")]
        return _ENABLED_MEMO[1]

    @staticmethod
    def _state(w: torch.Tensor):
        return (w.data_ptr(), tuple(w.shape), w.stride(), w._version)

    def lookup(self, w: torch.Tensor, kind: tuple, floats: int):
        """(buffer, ready) for the kernel: a cached pack (ready) or a new buffer to fill."""
        key = (id(w), kind)
        if self.enabled():
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None and entry["ref"]() is w and entry["buf"].numel() >= floats:
                    if entry["state"] == self._state(w):
                        self._entries.move_to_end(key)
                        self.hits += 1
                        return entry["buf"], True
                    # The same weight, updated in place (a training step): refill its buffer rather than
                    # allocate a new one. A fresh 38 MiB buffer (512x512 layer) page-faults on first
                    # touch, which cost ~10 ms per layer and pass. The entry leaves the cache until the
                    # kernel has refilled it (store()), so no other thread takes it as ready meanwhile.
                    del self._entries[key]
                    self._bytes -= entry["bytes"]
                    self.misses += 1
                    return entry["buf"], False
                self.misses += 1
        return torch.empty(floats, dtype=torch.float32), False

    def store(self, w: torch.Tensor, kind: tuple, buf: torch.Tensor) -> None:
        """Remembers buf as the pack of w (as it is now) after the kernel filled it."""
        if not self.enabled():
            return
        key = (id(w), kind)
        try:
            ref = weakref.ref(w, functools.partial(self._forget, key))
        except TypeError:  # not weak-referenceable: never cached
            return
        nbytes = buf.numel() * buf.element_size()
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old["bytes"]
            self._entries[key] = {"ref": ref, "state": self._state(w), "buf": buf, "bytes": nbytes}
            self._bytes += nbytes
            while self._bytes > self.max_bytes and self._entries:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted["bytes"]

    def _forget(self, key, ref) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry["ref"] is ref:
                del self._entries[key]
                self._bytes -= entry["bytes"]

    def clear(self) -> None:
        """Drops every pack and resets the hit/miss counters."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self.hits = self.misses = 0

    def info(self) -> dict:
        with self._lock:
            return {"entries": len(self._entries), "bytes": self._bytes, "hits": self.hits, "misses": self.misses}


weight_pack_cache = WeightPackCache()


def _packed_call(kernel, args: tuple, w: torch.Tensor, floats: int, kind, **kwargs) -> None:
    """Calls kernel(*args, pack=..., **kwargs) with the cached pack of w of this kind (a pack of `floats`
    float32 elements) when the kernel uses one (floats > 0), else kernel(*args, **kwargs)."""
    if floats == 0:
        kernel(*args, **kwargs)
        return
    buf, ready = weight_pack_cache.lookup(w, kind, floats)
    kernel(*args, pack=(buf.data_ptr(), buf.numel(), ready), **kwargs)
    if not ready:
        weight_pack_cache.store(w, kind, buf)


class _FwdPlan(NamedTuple):
    """What conv2d_fwd derives from a call's geometry alone (shapes, strides, dtype, conv parameters):
    the output's shape and strides (torch's memory format for it), the kernel's ConvDesc, the kernel call
    with every tensor's sizes and strides already checked (_C.ConvFwdCall: only data pointers pass per
    call) and its work (_conv_work: what sets its thread count)."""
    out_shape: Tuple[int, ...]
    out_stride: Tuple[int, ...]
    desc: object
    dtype_code: int
    call: object
    work: int


# conv2d_fwd's plans by geometry. Deriving one costs ~10 us of Python per call on a warm cache and
# 3-4x that after a large kernel has evicted the interpreter's data. A plan depends only on its key,
# so a hit is always right; the dict is emptied when full (a model has a few dozen layer geometries).
_FWD_PLANS: dict = {}
_FWD_PLANS_MAX = 1024


class _GradPlan(NamedTuple):
    """What conv2d_dgrad / conv2d_wgrad derive from a call's geometry alone, as _FwdPlan for the forward:
    the gradient's shape and strides (dx; dw, None when the weight gradient is not wanted), the kernel
    call with every tensor's sizes and strides checked (_C.ConvDgradCall / ConvWgradCall) and its work.
    A plan exists only for geometries that need a kernel (no empty tensor or reduction)."""
    out_shape: Optional[Tuple[int, ...]]
    out_stride: Optional[Tuple[int, ...]]
    call: object
    work: int


# The backward passes' plans by geometry, as _FWD_PLANS. A ShuffleNetV2 training step spent ~45 us of
# Python per conv backward outside the kernels (2 threads, batch 8): the descriptor, four tensors' sizes
# and strides converted per call, the output allocation and thread count derived again.
_DGRAD_PLANS: dict = {}
_DGRAD_PLANS_MAX = 1024
_WGRAD_PLANS: dict = {}
_WGRAD_PLANS_MAX = 1024


def _remember(plans: dict, bound: int, key, plan) -> None:
    if len(plans) >= bound:
        plans.clear()
    plans[key] = plan


def _geometry(t: torch.Tensor):
    return (tuple(t.shape), t.stride())


def _upcasting(fn):
    """Runs float16/bfloat16 calls in float32 and casts tensor results back to the input dtype."""

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        first = args[0]  # every op's first argument is a tensor (the generator below is ~1 us per call)
        dtype = first.dtype if isinstance(first, torch.Tensor) else next(
            a.dtype for a in args if isinstance(a, torch.Tensor))
        if dtype not in _UPCAST:
            return fn(self, *args, **kwargs)
        up = [a.float() if isinstance(a, torch.Tensor) and a.dtype == dtype else a for a in args]
        out = fn(self, *up, **kwargs)
        if isinstance(out, tuple):
            return tuple(o.to(dtype) if isinstance(o, torch.Tensor) and o.is_floating_point() else o for o in out)
        return out.to(dtype)

    return wrapper


def _dtype_code(t: torch.Tensor) -> int:
    code = _DTYPE_CODE.get(t.dtype)
    if code is None:
        raise TypeError(f"fastconv cpu backend: unsupported dtype {t.dtype}; expected float32, float64, "
                        f"float16 or bfloat16")
    return code


def conv_desc(x: torch.Tensor, w: torch.Tensor, stride, padding, dilation, groups, out_hw):
    d = _C.ConvDesc()
    d.N, d.C, d.H, d.W = x.shape
    d.K, _, d.R, d.S = w.shape
    d.P, d.Q = out_hw
    d.stride_h, d.stride_w = stride
    d.pad_h, d.pad_w = padding
    d.dil_h, d.dil_w = dilation
    d.groups = groups
    return d


# pool_desc's descriptors by their fields: filling a PoolDesc costs ~4 us of pybind11 attribute writes,
# a fifth of a global pooling of an SE block's 960 x 7 x 7 features at batch 1. Descriptors are never
# modified after pool_desc returns them, so a hit is always right; emptied when full.
_POOL_DESCS: dict = {}
_POOL_DESCS_MAX = 1024


def pool_desc(x: torch.Tensor, out_hw, kernel, stride, padding, dilation=(1, 1),
              count_include_pad=True, divisor_override=None):
    key = (x.shape, tuple(out_hw), tuple(kernel), tuple(stride), tuple(padding), tuple(dilation),
           bool(count_include_pad), divisor_override)
    d = _POOL_DESCS.get(key)
    if d is None:
        d = _new_pool_desc(x, out_hw, kernel, stride, padding, dilation, count_include_pad, divisor_override)
        if len(_POOL_DESCS) >= _POOL_DESCS_MAX:
            _POOL_DESCS.clear()
        _POOL_DESCS[key] = d
    return d


def _new_pool_desc(x, out_hw, kernel, stride, padding, dilation, count_include_pad, divisor_override):
    d = _C.PoolDesc()
    d.N, d.C, d.H, d.W = x.shape
    d.P, d.Q = out_hw
    d.kernel_h, d.kernel_w = kernel
    d.stride_h, d.stride_w = stride
    d.pad_h, d.pad_w = padding
    d.dil_h, d.dil_w = dilation
    d.count_include_pad = bool(count_include_pad)
    d.divisor_override = int(divisor_override or 0)
    return d


class CpuBackend(Backend):
    name = "cpu"
    device_types = ("cpu",)

    def usable(self):
        return _C is not None

    def availability(self):
        if _C is None:
            return False, f"fastconv._C {_IMPORT_ERROR}; run `pip install -e .`"
        isa = _C.cpu_isa()
        def off(var):
            return " (off: " + var + "=0)" if os.environ.get(var, "1") == "0" else ""

        winograd = (f"Winograd F(4x4,3x3) for 3x3 stride-1 float32 layers{off('FASTCONV_CPU_WINOGRAD')}, "
                    f"blocked float32 weight gradient{off('FASTCONV_CPU_WGRAD_BLOCKED')}"
                    if isa != "baseline" else "no Winograd / blocked weight gradient at the baseline level")
        return True, f"C++ kernels, ISA {isa} (detected {_C.detected_cpu_isa()}); {winograd}"

    @_upcasting
    def conv2d_fwd(self, x, w, bias, stride, padding, dilation, groups, relu):
        return self._fwd(x, w, bias, stride, padding, dilation, groups, _ACT_CODE["relu"] if relu else 0, None,
                         False)

    @_upcasting
    def conv2d_fused_fwd(self, x, w, bias, scale, residual, stride, padding, dilation, groups, activation,
                         residual_after, return_conv):
        """The epilogue in the kernels (activation, residual); a per-channel scale, or the convolution
        output autograd wants (training), are composed by the base class."""
        if scale is not None or return_conv:
            return super().conv2d_fused_fwd(x, w, bias, scale, residual, stride, padding, dilation, groups,
                                            activation, residual_after, return_conv)
        return self._fwd(x, w, bias, stride, padding, dilation, groups, _ACT_CODE[activation], residual,
                         residual_after), None

    def _fwd(self, x, w, bias, stride, padding, dilation, groups, act, residual, residual_after):
        key = (x.shape, x.stride(), w.shape, w.stride(), x.dtype, tuple(stride), tuple(padding), tuple(dilation),
               groups)
        plan = _FWD_PLANS.get(key)
        if plan is None:
            y, out_hw, done = _utils.conv_output_or_trivial(x, w, bias, stride, padding, dilation, False)
            if done:
                return _trivial_epilogue(y, act, residual, residual_after)
            desc, code = conv_desc(x, w, stride, padding, dilation, groups, out_hw), _dtype_code(x)
            call = _C.ConvFwdCall(desc, code, x.shape, x.stride(), w.shape, w.stride(), y.shape, y.stride())
            plan = _FwdPlan(tuple(y.shape), y.stride(), desc, code, call, _conv_work(x, w, out_hw))
            _remember(_FWD_PLANS, _FWD_PLANS_MAX, key, plan)
        else:
            y = torch.empty_strided(plan.out_shape, plan.out_stride, dtype=x.dtype)
        if bias is not None:
            bias = bias.contiguous()
        extra = {}
        if residual is not None:
            if residual.stride() != y.stride() or residual.dtype != y.dtype:  # the kernels read it at y's offsets
                residual = torch.empty_strided(y.shape, y.stride(), dtype=y.dtype).copy_(residual)
            extra = {"residual": _t4(residual), "residual_after": bool(residual_after)}
        # The pack's size and format are asked per call, not kept in the plan: they depend on the ISA level,
        # which tests switch at run time.
        floats, kind = plan.call.pack_info()
        _packed_call(plan.call, (x.data_ptr(), w.data_ptr(), bias.data_ptr() if bias is not None else 0, y.data_ptr(),
                                 act, _threads(plan.work, _CONV_SERIAL_MACS)),
                     w, floats, ("forward", kind), **extra)
        return y

    @_upcasting
    def conv2d_dgrad(self, dy, x, w, relu_y, stride, padding, dilation, groups):
        key = (dy.shape, dy.stride(), x.shape, x.stride(), w.shape, w.stride(),
               None if relu_y is None else (relu_y.shape, relu_y.stride()), x.dtype, tuple(stride), tuple(padding), tuple(dilation),
               groups)
        plan = _DGRAD_PLANS.get(key)
        if plan is None:
            dx = _utils.grad_input_like(x)
            if dx.numel() == 0:
                return dx
            if dy.numel() == 0 or w.numel() == 0:
                return dx.zero_()
            d = conv_desc(x, w, stride, padding, dilation, groups, dy.shape[2:])
            call = _C.ConvDgradCall(d, _dtype_code(x), _geometry(dy), _geometry(w),
                                    _geometry(relu_y) if relu_y is not None else None, _geometry(dx))
            plan = _GradPlan(tuple(dx.shape), dx.stride(), call, _conv_work(x, w, dy.shape[2:]))
            _remember(_DGRAD_PLANS, _DGRAD_PLANS_MAX, key, plan)
        else:
            dx = torch.empty_strided(plan.out_shape, plan.out_stride, dtype=x.dtype)
        floats, kind, taps = plan.call.pack_info()
        _packed_call(plan.call, (dy.data_ptr(), w.data_ptr(), relu_y.data_ptr() if relu_y is not None else 0,
                                 dx.data_ptr(), _threads(plan.work, _CONV_SERIAL_MACS)),
                     w, floats, ("input_grad", kind, taps))
        return dx

    @_upcasting
    def conv2d_wgrad(self, dy, x, w, relu_y, stride, padding, dilation, groups, need_weight, need_bias):
        key = (dy.shape, dy.stride(), x.shape, x.stride(), w.shape, w.stride(),
               None if relu_y is None else (relu_y.shape, relu_y.stride()), x.dtype, tuple(stride), tuple(padding), tuple(dilation),
               groups, need_weight)
        plan = _WGRAD_PLANS.get(key)
        if plan is None:
            dw, db, done = _utils.conv_wgrad_outputs_or_trivial(dy, x, w, need_weight, need_bias)
            if done:
                return dw, db
            d = conv_desc(x, w, stride, padding, dilation, groups, dy.shape[2:])
            call = _C.ConvWgradCall(d, _dtype_code(x), _geometry(dy), _geometry(x),
                                    _geometry(relu_y) if relu_y is not None else None,
                                    _geometry(dw) if dw is not None else None)
            plan = _GradPlan(None if dw is None else tuple(dw.shape), None if dw is None else dw.stride(), call,
                             _conv_work(x, w, dy.shape[2:]))
            _remember(_WGRAD_PLANS, _WGRAD_PLANS_MAX, key, plan)
        else:
            dw = torch.empty_strided(plan.out_shape, plan.out_stride, dtype=x.dtype) if need_weight else None
            db = torch.empty(w.shape[0], dtype=dy.dtype) if need_bias else None
            if dw is None and db is None:
                return None, None
        plan.call(dy.data_ptr(), x.data_ptr(), relu_y.data_ptr() if relu_y is not None else 0,
                  dw.data_ptr() if dw is not None else 0, db.data_ptr() if db is not None else 0,
                  _threads(plan.work, _CONV_SERIAL_MACS))
        return dw, db

    @_upcasting
    def max_pool2d_fwd(self, x, kernel, stride, padding, dilation, ceil_mode, with_indices):
        out_hw = _utils.pool_out_hw(x, kernel, stride, padding, dilation, ceil_mode)
        cl = _utils.strides_like_channels_last(x)
        shape = (x.shape[0], x.shape[1], *out_hw)
        y = _utils.empty_like_format(shape, x, cl)
        idx = _utils.empty_like_format(shape, x, cl, dtype=torch.int64) if with_indices else None
        if y.numel() == 0:
            return y, idx
        d = pool_desc(x, out_hw, kernel, stride, padding, dilation)
        _C.max_pool2d_fwd(d, _dtype_code(x), _t4(x), _t4(y), _t4(idx) if idx is not None else None, _pool_threads(x))
        return y, idx

    @_upcasting
    def max_pool2d_bwd(self, dy, x, indices, kernel, stride, padding, dilation, ceil_mode):
        dx = _utils.grad_input_like(x)
        if dx.numel() == 0:
            return dx
        d = pool_desc(x, dy.shape[2:], kernel, stride, padding, dilation)
        _C.max_pool2d_bwd(d, _dtype_code(x), _t4(dy), _t4(indices), _t4(dx), _pool_threads(x))
        return dx

    @_upcasting
    def avg_pool2d_fwd(self, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
        out_hw = _utils.pool_out_hw(x, kernel, stride, padding, (1, 1), ceil_mode)
        y = _utils.empty_like_format((x.shape[0], x.shape[1], *out_hw), x, _utils.strides_like_channels_last(x))
        if y.numel() == 0:
            return y
        d = pool_desc(x, out_hw, kernel, stride, padding, (1, 1), count_include_pad, divisor_override)
        _C.avg_pool2d_fwd(d, _dtype_code(x), _t4(x), _t4(y), _pool_threads(x))
        return y

    @_upcasting
    def avg_pool2d_bwd(self, dy, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
        dx = _utils.grad_input_like(x)
        if dx.numel() == 0:
            return dx
        d = pool_desc(x, dy.shape[2:], kernel, stride, padding, (1, 1), count_include_pad, divisor_override)
        _C.avg_pool2d_bwd(d, _dtype_code(x), _t4(dy), _t4(dx), _pool_threads(x))
        return dx

    # ---- adaptive pooling (ops/pool_adaptive.py; kernels in csrc/cpu/pool2d_adaptive_isa.cpp) --------
    def _adaptive_out(self, x, output_size, dtype=None):
        return _utils.empty_like_format((x.shape[0], x.shape[1], *output_size), x,
                                        _utils.strides_like_channels_last(x), dtype=dtype)

    @_upcasting
    def adaptive_avg_pool2d_fwd(self, x, output_size):
        y = self._adaptive_out(x, output_size)
        if y.numel() == 0:
            return y
        _C.adaptive_avg_pool2d_fwd(pool_desc(x, output_size, (1, 1), (1, 1), (0, 0)), _dtype_code(x), _t4(x),
                                   _t4(y), _pool_threads(x))
        return y

    @_upcasting
    def adaptive_avg_pool2d_bwd(self, dy, x):
        dx = _utils.grad_input_like(x)
        if dx.numel() == 0:
            return dx
        if dy.numel() == 0:
            return dx.zero_()
        _C.adaptive_avg_pool2d_bwd(pool_desc(x, dy.shape[2:], (1, 1), (1, 1), (0, 0)), _dtype_code(x), _t4(dy),
                                   _t4(dx), _pool_threads(x))
        return dx

    @_upcasting
    def adaptive_max_pool2d_fwd(self, x, output_size):
        y = self._adaptive_out(x, output_size)
        idx = self._adaptive_out(x, output_size, dtype=torch.int64)
        if y.numel() == 0:
            return y, idx
        _C.adaptive_max_pool2d_fwd(pool_desc(x, output_size, (1, 1), (1, 1), (0, 0)), _dtype_code(x), _t4(x),
                                   _t4(y), _t4(idx), _pool_threads(x))
        return y, idx

    @_upcasting
    def adaptive_max_pool2d_bwd(self, dy, x, indices):
        dx = _utils.grad_input_like(x)
        if dx.numel() == 0:
            return dx
        if dy.numel() == 0:
            return dx.zero_()
        # The scatter of dy at the indices is max_pool2d's backward; the window fields are unused.
        _C.max_pool2d_bwd(pool_desc(x, dy.shape[2:], (1, 1), (1, 1), (0, 0)), _dtype_code(x), _t4(dy),
                          _t4(indices), _t4(dx), _pool_threads(x))
        return dx


CONV_PASSES = ("fwd", "dgrad", "wgrad")


def conv2d_path(input: torch.Tensor, weight: torch.Tensor, stride=1, padding=0, dilation=1, groups=1,
                pass_: str = "fwd", relu: bool = False) -> str:
    """The algorithm the cpu backend runs for one pass of this convolution at the current ISA level
    (fastconv._C.cpu_isa()), as its path chooser (csrc/cpu/conv2d_isa.cpp) decides it: e.g.
    'winograd_f4x4_3x3', 'igemm_nhwc/rows_whole_windows', 'residue_classes > igemm_nchw_direct',
    'wgrad_blocked'; 'none' when no kernel runs (an empty problem).

    Arguments as F.conv2d's (input and weight may be meta tensors: only their sizes, strides and dtype
    matter); pass_: 'fwd', 'dgrad' (input gradient, dx in the input's memory format and dy in the
    output's) or 'wgrad'; relu: the backward of the fused conv2d_relu (dgrad applies its mask).
    """
    from ..errors import ArgumentError
    from ..functional import _conv_args

    if _C is None:
        raise RuntimeError(f"fastconv.backends.cpu.conv2d_path: fastconv._C {_IMPORT_ERROR}")
    if pass_ not in CONV_PASSES:
        raise ArgumentError(f"conv2d_path: pass_ must be one of {CONV_PASSES}, got {pass_!r}")
    meta = [torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta") for t in (input, weight)]
    x, _, stride, padding, dilation, groups = _conv_args(*meta[:1], meta[1], None, stride, padding, dilation, groups,
                                                         "conv2d_path")
    w = meta[1]
    y, out_hw, done = _utils.conv_output_or_trivial(x, w, None, stride, padding, dilation, False)
    if done or (pass_ != "fwd" and x.numel() == 0):
        return "none"
    desc = conv_desc(x, w, stride, padding, dilation, groups, out_hw)
    code = _DTYPE_CODE.get(x.dtype, 0)  # float16 / bfloat16 run the float32 kernels
    x_stride = _utils.grad_input_like(x).stride() if pass_ == "dgrad" else x.stride()
    return _C.conv2d_path(desc, code, pass_, list(x_stride), list(y.stride()), bool(relu))


ADAPTIVE_PASSES = ("avg_fwd", "max_fwd", "avg_bwd")


def adaptive_pool2d_path(input: torch.Tensor, output_size, pass_: str = "avg_fwd") -> str:
    """The path the cpu backend's adaptive pooling kernels (csrc/cpu/pool2d_adaptive_isa.cpp) take for a 4-d
    input and a (P, Q) output_size: 'global_planes', 'nhwc', 'nchw_rows' or 'generic' for the forward passes
    ('avg_fwd', 'max_fwd'); 'global_fill', 'scatter_nhwc' or 'scatter_planes' for 'avg_bwd' (dx in the
    input's memory format)."""
    from ..errors import ArgumentError

    if _C is None:
        raise RuntimeError(f"fastconv.backends.cpu.adaptive_pool2d_path: fastconv._C {_IMPORT_ERROR}")
    if pass_ not in ADAPTIVE_PASSES:
        raise ArgumentError(f"adaptive_pool2d_path: pass_ must be one of {ADAPTIVE_PASSES}, got {pass_!r}")
    stride = _utils.grad_input_like(input.to("meta")).stride() if pass_ == "avg_bwd" else input.stride()
    d = pool_desc(input, output_size, (1, 1), (1, 1), (0, 0))
    return _C.adaptive_pool2d_path(d, pass_, list(stride))
