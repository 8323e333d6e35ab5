"""The measurement core shared by `fastconv bench` and the pytest-benchmark suites in bench/.

- Case: one benchmark of the suites (op, mode, shape, layout, impl, dtype, device, work).
- make_step: the callable to time for a table row (fastconv or the torch baseline) and a check of our
  result against torch's, built the same way for the CLI and the suites.
- time_step: warm-up (first calls, allocator, OpenMP pool, caches, cuDNN autotuning), then rounds
  chosen from the time of one call; on CUDA every call is bracketed by CUDA events and synchronized.
- time_interleaved: several callables that compare with each other timed in alternating rounds (the
  network benchmark: torch eager, torch.compile and fastconv variants of one network).
- measure_peak: the roofs of %peak and the roofline. CPU: fastconv._C's native probes (vector FMA
  throughput and STREAM scale bandwidth, at the kernels' ISA level and thread count), with torch's SGEMM
  and copy rates kept for reference; CUDA: torch's GEMM and a large copy.
- BusyMeter: other processes' share of the CPUs while something was timed.
- peak_line / peak_details: the measured roofs as text.
The rows these measurements make, and their table: benchmarks.records; the JSON report: benchmarks.report.

The torch baseline is torch's own kernels: oneDNN (mkldnn) on CPU, cuDNN on CUDA with
`torch.backends.cudnn.benchmark = True` (set by prepare_device), so both sides get their best
algorithm. Ratio = torch_time / fastconv_time: > 1 means fastconv is faster.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .tables import ConvShape, PoolShape

# A benchmark during which other processes used more than this share of the machine's CPU time is
# flagged: on a 2-core machine one busy neighbour halves the cores an OpenMP kernel can use.
BUSY_FLAG = 0.10

CONV_OPS = ("conv2d", "conv2d_relu", "conv1d", "conv1d_relu", "conv_transpose2d")
POOL_OPS = ("max_pool2d", "avg_pool2d")
OPS = CONV_OPS + POOL_OPS
MODES = ("fwd", "bwd", "fwdbwd")
LAYOUTS = ("nchw", "channels_last")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16}


@dataclasses.dataclass
class Case:
    op: str          # one of OPS (or a whole-model op in bench/)
    mode: str        # fwd, bwd, fwdbwd (train_step for the model suite)
    shape: Any       # ConvShape, PoolShape (or the model suite's own shape)
    layout: str      # nchw or channels_last
    impl: str        # torch or fastconv
    work: float      # FLOPs or bytes per call
    unit: str        # "GFLOP/s" or "GB/s"
    dtype: str = "float32"
    device: str = "cpu"
    table: Optional[str] = None   # the shape table (TABLES) the shape came from, if any

    @property
    def key(self):
        return (self.op, self.mode, self.shape.name, self.layout, self.dtype)

    @property
    def group(self) -> str:
        """pytest-benchmark group: the torch baseline and ours of one row."""
        suffix = "" if self.dtype == "float32" else f"/{self.dtype}"
        return f"{self.op}/{self.mode}/{self.shape.name}/{self.layout}{suffix}"


def pct_of_peak(throughput: Optional[float], unit: str, peak: Dict[str, Any]) -> Optional[float]:
    if throughput is None or not peak:
        return None
    if unit == "GFLOP/s":
        ref = peak.get("compute_gflops") or peak.get("sgemm_gflops")
    else:  # bandwidth_gbps: stream scale on CPU; older reports and the CUDA suites have copy_gbps only
        ref = peak.get("bandwidth_gbps") or peak.get("copy_gbps")
    return 100.0 * throughput / ref if ref else None


def quantile(sorted_data: List[float], q: float) -> float:
    if len(sorted_data) == 1:
        return sorted_data[0]
    pos = q * (len(sorted_data) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_data) - 1)
    return sorted_data[lo] + (sorted_data[hi] - sorted_data[lo]) * (pos - lo)


def time_once(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def geomean(values: Sequence[float]) -> Optional[float]:
    vals = [v for v in values if v is not None and v > 0]
    return math.exp(sum(map(math.log, vals)) / len(vals)) if vals else None


# ----------------------------------------------------------------------------------------------------
# Device handling


# glibc malloc options (malloc.h): M_TRIM_THRESHOLD -1, M_MMAP_THRESHOLD -3.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def steady_allocator() -> bool:
    """Fixes glibc's allocation thresholds for the benchmark process, so every implementation's
    outputs are recycled heap memory instead of fresh pages on some calls. Returns whether it applied.

    Both torch's and our CPU outputs come from malloc. glibc moves its mmap threshold with the sizes it
    has freed and trims the heap top when enough of it is free, so depending on the allocation history
    of the process a 4-16 MiB output was either a reused heap block or a new mapping whose first touch
    page-faults every page, on every call: in the same run a 0.25 ms layer measured 1.45 ms (ours, the
    channels_last RGB stem) or 1.87 ms (torch, the NCHW stem), and torch's 0.7 ms depthwise layer 3.8 ms.
    With the mmap threshold at glibc's maximum (32 MiB) and heap trimming off, all of the tables'
    tensors are heap blocks and a layer's time is its own. Not glibc (or no mallopt): no change.
    """
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, 32 << 20) == 1
    return mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1 and ok


def prepare_device(device: str) -> None:
    """Fair baselines: outputs from reused heap blocks for both sides (steady_allocator); cuDNN picks its
    fastest algorithm per shape (autotuned during the warm-up)."""
    steady_allocator()
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(torch.device(device))


def synced(fn: Callable[[], Any], device: str) -> Callable[[], Any]:
    """fn followed by a device synchronize, so that a wall-clock timer (pytest-benchmark's) measures
    the kernels and not just their launch; fn itself on the CPU."""
    if torch.device(device).type != "cuda":
        return fn
    dev = torch.device(device)

    def run():
        out = fn()
        torch.cuda.synchronize(dev)
        return out

    return run


def device_name(device: str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return cpu_model()


def device_info(device: str) -> Dict[str, Any]:
    dev = torch.device(device)
    info: Dict[str, Any] = {"type": dev.type, "name": device_name(device), "cpu": cpu_model(),
                            "cpu_count": os.cpu_count(), "cpu_isa": cpu_isa()}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info.update(capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2 ** 30, 1),
                    multiprocessors=props.multi_processor_count)
    return info


def versions() -> Dict[str, Any]:
    import fastconv

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"fastconv": fastconv.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.version.cuda, "cudnn": cudnn}


# ----------------------------------------------------------------------------------------------------
# Timing


@dataclasses.dataclass
class TimingConfig:
    warmup_s: float = 0.25   # warm-up time (at least WARMUP_CALLS calls)
    target_s: float = 1.0    # measured time: rounds = target_s / (time of one call)
    min_rounds: int = 5
    max_rounds: int = 200

    WARMUP_CALLS = 2

    @classmethod
    def quick(cls) -> "TimingConfig":
        return cls(warmup_s=0.01, target_s=0.05, min_rounds=3, max_rounds=10)

    def rounds_for(self, one_call_s: float) -> int:
        return int(min(self.max_rounds, max(self.min_rounds, math.ceil(self.target_s / max(one_call_s, 1e-9)))))


def warm_up(fn: Callable[[], Any], cfg: TimingConfig, device: str = "cpu") -> float:
    """Runs fn for cfg.warmup_s (at least WARMUP_CALLS calls); returns the median time of one call
    after the first."""
    call = synced(fn, device)
    synchronize(device)
    times: List[float] = []
    t0 = time.perf_counter()
    while len(times) < cfg.WARMUP_CALLS or time.perf_counter() - t0 < cfg.warmup_s:
        times.append(time_once(call))
    return statistics.median(times[1:])


def time_step(fn: Callable[[], Any], cfg: TimingConfig, device: str = "cpu") -> List[float]:
    """Warm-up, then per-call times in seconds (sorted). CUDA: each call between two CUDA events on
    the current stream, read after synchronizing; CPU: perf_counter around each call."""
    rounds = cfg.rounds_for(warm_up(fn, cfg, device))
    times: List[float] = []
    if torch.device(device).type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(rounds)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(torch.device(device))
        times = [start.elapsed_time(end) / 1e3 for start, end in events]
    else:
        times = [time_once(fn) for _ in range(rounds)]
    return sorted(times)


def time_interleaved(fns: Dict[str, Callable[[], Any]], cfg: TimingConfig, device: str = "cpu"
                     ) -> Tuple[Dict[str, List[float]], Optional[float]]:
    """Times several callables that compare with each other (torch and fastconv variants of one network
    or layer) in alternating rounds, so that a slow phase of the machine (a neighbour process, the clock)
    falls on all of them alike: each is warmed up, then every round runs each callable once, the order
    rotated by one per round; all get the same number of rounds, chosen from the slowest one's time.
    Returns ({name: sorted per-call seconds}, other processes' CPU share over the rounds)."""
    names = list(fns)
    one = max(warm_up(fns[k], cfg, device) for k in names)
    rounds = cfg.rounds_for(one)
    calls = {k: synced(fns[k], device) for k in names}
    times: Dict[str, List[float]] = {k: [] for k in names}
    meter = BusyMeter()
    for i in range(rounds):
        shift = i % len(names)
        for k in names[shift:] + names[:shift]:
            times[k].append(time_once(calls[k]))
    busy = meter.others()
    return {k: sorted(v) for k, v in times.items()}, busy


# ----------------------------------------------------------------------------------------------------
# Work models per op and mode


def itemsize(dtype: str) -> int:
    return torch.empty(0, dtype=DTYPES[dtype]).element_size()


def conv_flops(s: ConvShape, mode: str) -> float:
    """fwd: 2·N·K·P·Q·(C/groups)·R·S; bwd: input and weight gradients (2x); fwdbwd: 3x."""
    return {"fwd": 1, "bwd": 2, "fwdbwd": 3}[mode] * s.flops


def conv_bytes(s: ConvShape, mode: str, size: int = 4) -> float:
    """Minimum traffic. fwd: x, w, b in, y out. dgrad: dy, w in, dx out; wgrad: dy, x in, dw, db out."""
    x, w, y = s.elems
    fwd = x + w + s.K + y
    bwd = (y + w + x) + (y + x + w + s.K)
    return size * {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}[mode]


def pool_bytes(s: PoolShape, mode: str, size: int = 4) -> float:
    """fwd without indices (inference); bwd reads dy (and max's int64 indices), writes dx; fwdbwd:
    the forward that records indices plus the backward."""
    if mode == "fwd":
        return s.bytes(size)
    if mode == "bwd":
        return s.bytes_backward(size)
    return s.bytes(size, indices=True) + s.bytes_backward(size)


def work_of(op: str, shape, mode: str, dtype: str = "float32") -> Tuple[float, str, float]:
    """(work per call, unit, bytes per call) of a row: FLOPs and GFLOP/s for convolution, bytes and
    GB/s for pooling."""
    size = itemsize(dtype)
    if isinstance(shape, ConvShape):
        return float(conv_flops(shape, mode)), "GFLOP/s", float(conv_bytes(shape, mode, size))
    b = float(pool_bytes(shape, mode, size))
    return b, "GB/s", b


def ops_for(shape, ops: Sequence[str]) -> List[str]:
    """The ops of `ops` that apply to a table row: a ConvShape's (ConvShape.ops: 2-d, 1-d or transposed);
    a PoolShape's own op."""
    if isinstance(shape, ConvShape):
        return [op for op in ops if op in shape.ops]
    own = f"{shape.op}_pool2d"
    return [own] if own in ops else []


# ----------------------------------------------------------------------------------------------------
# Steps: the callable timed for a row, and the check of our result against torch's


def _fmt(layout: str):
    return torch.channels_last if layout == "channels_last" else torch.contiguous_format


def conv_inputs(s: ConvShape, layout: str, grad: bool, dtype: str = "float32", device: str = "cpu"):
    """x, w, b (requiring grad when `grad`) and dy, deterministic (seeded on the CPU, then moved)."""
    g = torch.Generator().manual_seed(1234)
    fan_in = (s.K if s.transposed else s.C) // s.groups * s.R * s.S
    x = torch.randn(s.input_shape, generator=g)
    w = torch.randn(s.weight_shape, generator=g) / fan_in ** 0.5
    b = torch.randn(s.K, generator=g) * 0.1  # K: the output channels (transposed too)
    dy = torch.randn(s.output_shape, generator=g)
    dt = DTYPES[dtype]
    x, w, b, dy = (t.to(device=device, dtype=dt) for t in (x, w, b, dy))
    if s.dims == 1:  # channels_last: (N, C, L) with strides (L*C, 1, C), a sequence model's (N, L, C)
        if layout == "channels_last":
            x, dy = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (x, dy))
        return x.requires_grad_(grad), w.requires_grad_(grad), b.requires_grad_(grad), dy
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        w = w.contiguous(memory_format=torch.channels_last)
    dy = dy.contiguous(memory_format=_fmt(layout))
    return x.requires_grad_(grad), w.requires_grad_(grad), b.requires_grad_(grad), dy


def conv_forward(impl: str, op: str, s: ConvShape) -> Callable:
    """fastconv.functional's op, or torch's: F.<op> (+ in-place ReLU for the _relu ops, what
    nn.ReLU(inplace=True) does after a conv layer: the strongest unfused baseline)."""
    base = op[:-len("_relu")] if op.endswith("_relu") else op
    if impl == "fastconv":
        import fastconv.functional as FC

        f = getattr(FC, op)
    else:
        f = getattr(F, base)
    if base == "conv_transpose2d":
        return lambda x, w, b: f(x, w, b, s.stride, s.pad, s.output_padding, s.groups)
    if impl == "fastconv" or base == op:
        return lambda x, w, b: f(x, w, b, s.stride, s.pad, 1, s.groups)
    return lambda x, w, b: torch.relu_(f(x, w, b, s.stride, s.pad, 1, s.groups))


def conv_step(impl: str, op: str, mode: str, s: ConvShape, x, w, b, dy) -> Callable[[], Tuple]:
    """fwd: the output; fwdbwd: forward + (dx, dw, db); bwd: (dx, dw, db) from a retained graph."""
    fwd = conv_forward(impl, op, s)
    if mode == "fwd":
        return lambda: (fwd(x, w, b),)
    if mode == "fwdbwd":
        return lambda: torch.autograd.grad(fwd(x, w, b), (x, w, b), dy)
    y = fwd(x, w, b)
    return lambda: torch.autograd.grad(y, (x, w, b), dy, retain_graph=True)


def pool_fn(impl: str, s: PoolShape) -> Callable:
    if impl == "fastconv":
        import fastconv.functional as FC

        f = FC.max_pool2d if s.op == "max" else FC.avg_pool2d
    else:
        f = F.max_pool2d if s.op == "max" else F.avg_pool2d
    return lambda x: f(x, s.kernel, s.stride, s.pad)


def pool_inputs(s: PoolShape, layout: str, dtype: str = "float32", device: str = "cpu"):
    g = torch.Generator().manual_seed(4321)
    x = torch.randn(s.input_shape, generator=g).to(device=device, dtype=DTYPES[dtype])
    dy = torch.randn(s.output_shape, generator=g).to(device=device, dtype=DTYPES[dtype])
    return x.contiguous(memory_format=_fmt(layout)), dy.contiguous(memory_format=_fmt(layout))


def pool_step(impl: str, mode: str, s: PoolShape, x, dy) -> Callable[[], Any]:
    """fwd: no indices (inference); bwd: grad_input alone from a retained graph (max pooling reads the
    indices saved by its forward); fwdbwd: forward with indices + grad_input."""
    pool = pool_fn(impl, s)
    if mode == "fwd":
        return lambda: pool(x)
    xg = x.detach().requires_grad_(True)
    if mode == "fwdbwd":
        return lambda: torch.autograd.grad(pool(xg), xg, dy)[0]
    y = pool(xg)
    return lambda: torch.autograd.grad(y, xg, dy, retain_graph=True)[0]


# Tolerances of our result against torch's, per dtype (float16/bfloat16: both round the float32 result
# once, but torch may accumulate in a different order or precision).
TOLERANCES = {"float32": (1e-3, 1e-4), "float64": (1e-7, 1e-9), "float16": (1e-2, 1e-2), "bfloat16": (5e-2, 5e-2)}


def assert_same(ours, ref, names, dtype: str = "float32", strict: bool = False) -> None:
    """Convolution (strict=False): per-dtype tolerances, atol scaled by the largest reference value
    (the summation order differs). Pooling (strict=True): torch.testing's default tolerances."""
    rtol, atol = TOLERANCES[dtype]
    for name, o, r in zip(names, ours, ref):
        if strict:
            torch.testing.assert_close(o, r, msg=lambda m: f"{name}: {m}")
            continue
        scale = max(1.0, r.abs().max().item())
        torch.testing.assert_close(o, r, rtol=rtol, atol=atol * scale, msg=lambda m: f"{name}: {m}")


def relu_unambiguous_grad(op: str, mode: str, s: ConvShape, x, w, b, dy, dtype: str = "float32"):
    """dy for checking conv2d_relu (conv1d_relu) gradients: zero where the pre-activation is within the forward
    tolerance of 0. There the ReLU mask depends on the last bits of the forward result, which two
    correct kernels (direct vs Winograd, different summation orders) round to either side, and one
    flipped mask bit changes the input gradient by a whole dy value over an R x S x C window (2 of
    the 800K outputs of c256k256-14x14 flip between torch and fastconv's Winograd)."""
    if not op.endswith("_relu") or mode == "fwd":
        return dy
    with torch.no_grad():
        pre = conv_forward("torch", op[:-len("_relu")], s)(x, w, b)
        _, atol = TOLERANCES[dtype]
        eps = atol * max(1.0, pre.abs().max().item())
        return dy.masked_fill(pre.abs() <= eps, 0)


def check_conv(impl: str, op: str, mode: str, s: ConvShape, x, w, b, dy, dtype: str = "float32") -> None:
    """Raises if `impl`'s output (fwd) or gradients differ from torch's beyond the tolerances."""
    dy = relu_unambiguous_grad(op, mode, s, x, w, b, dy, dtype)
    names = ("output",) if mode == "fwd" else ("grad_input", "grad_weight", "grad_bias")
    assert_same(conv_step(impl, op, mode, s, x, w, b, dy)(), conv_step("torch", op, mode, s, x, w, b, dy)(),
                names, dtype)


def make_step(op: str, mode: str, shape, layout: str, impl: str, dtype: str = "float32",
              device: str = "cpu") -> Tuple[Callable[[], Any], Callable[[], None]]:
    """(step, check) for one row: step() runs `impl` once; check() raises if fastconv's result (output
    or every gradient) differs from torch's. Run both under the backend being measured."""
    if isinstance(shape, ConvShape):
        if op not in shape.ops:
            raise ValueError(f"{op} does not apply to the conv shape {shape.name}")
        x, w, b, dy = conv_inputs(shape, layout, grad=(mode != "fwd"), dtype=dtype, device=device)
        fn = conv_step(impl, op, mode, shape, x, w, b, dy)

        def check():
            check_conv(impl, op, mode, shape, x, w, b, dy, dtype)

        return fn, check
    if op != f"{shape.op}_pool2d":
        raise ValueError(f"{op} does not apply to a {shape.op} pooling shape")
    x, dy = pool_inputs(shape, layout, dtype, device)
    fn = pool_step(impl, mode, shape, x, dy)

    def check():
        name = "output" if mode == "fwd" else "grad_input"
        assert_same((fn(),), (pool_step("torch", mode, shape, x, dy)(),), (name,), dtype, strict=True)

    return fn, check


def not_implemented(exc: BaseException) -> bool:
    return isinstance(exc, NotImplementedError) or (
        isinstance(exc, RuntimeError) and "not implemented" in str(exc).lower())


# ----------------------------------------------------------------------------------------------------
# Measured peak. CPU: fastconv's own probes (csrc/cpu/peak_isa.cpp) are the roofs - the vector FMA
# throughput and STREAM scale bandwidth at the kernels' ISA level and thread count; torch's SGEMM and
# copy are measured as well, for reference. CUDA: torch's GEMM (cuBLAS) and a large copy (no native probe).

_PEAK: Dict[Tuple[str, str, int], Dict[str, Any]] = {}
_NATIVE_PEAK: Dict[Tuple[str, int, int, int], Dict[str, Any]] = {}

# fp32 FMA iterations per thread and repeat: 10^7 x 24 zmm FMAs is ~50 ms at 2 FMAs per cycle and ~2.5 GHz,
# long enough that the fork/join and the clock read are < 0.1 % of it.
FMA_ITERATIONS = 10_000_000
# MiB per STREAM array, at least. STREAM asks for arrays of 4x the last-level cache each; a 2-core slice of a
# server socket reports the whole socket's L3 (480 MiB on the development machine, shared with other
# tenants), so the bench settles for arrays of max(256 MiB, that L3): the pair is at least twice the cache.
STREAM_MIB_MIN = 256


def _last_level_cache_bytes() -> Optional[int]:
    """Size of the largest CPU cache that sysfs reports (the L3 of the socket, shared with whatever else
    runs on it), or None."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = f.read_text().strip().upper()
            mult = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30}.get(text[-1:], 1)
            sizes.append(int(text.rstrip("KMG")) * mult)
        except (OSError, ValueError):
            continue
    return max(sizes) if sizes else None


def default_stream_mib() -> int:
    """MiB per STREAM array: FASTCONV_PEAK_STREAM_MIB if set, else max(256, the last-level cache), so
    the two arrays are at least twice the cache that could hold them."""
    env = os.environ.get("FASTCONV_PEAK_STREAM_MIB")
    if env:
        return max(1, int(env))
    llc = _last_level_cache_bytes()
    return max(STREAM_MIB_MIN, -(-llc // 2 ** 20) if llc else 0)


def native_peak(threads: Optional[int] = None, fma_iterations: Optional[int] = None,
                stream_mib: Optional[int] = None, repeats: int = 5) -> Optional[Dict[str, Any]]:
    """fastconv._C's probes with `threads` OpenMP threads (default torch.get_num_threads()): fma_gflops
    (every thread runs independent vector FMA chains, no memory traffic) and stream_gbps (STREAM scale
    b = s * a over two arrays of stream_mib MiB, 2 x 4 bytes counted per element), each the best of
    `repeats`, at the ISA level of the kernels (fastconv._C.cpu_isa()). None if fastconv._C is not
    built (or predates the probes). Cached per (ISA, threads, iterations, size)."""
    try:
        from fastconv.backends import cpu as cpu_backend

        C = cpu_backend._C
    except Exception:  # noqa: BLE001
        C = None
    if C is None or not hasattr(C, "fma_peak"):
        return None
    threads = threads or torch.get_num_threads()
    fma_iterations = fma_iterations or FMA_ITERATIONS
    stream_mib = stream_mib or default_stream_mib()
    key = (C.cpu_isa(), threads, fma_iterations, stream_mib)
    if key in _NATIVE_PEAK:
        return _NATIVE_PEAK[key]
    fma = C.fma_peak(fma_iterations, repeats, threads)
    stream = C.stream_scale(stream_mib * 2 ** 20 // 4, 3.0, repeats, threads)
    if stream["mismatches"]:
        raise RuntimeError(f"fastconv._C.stream_scale: {stream['mismatches']} elements of b differ from 3 * a")
    out = {
        "isa": fma["isa"],
        "fma_gflops": fma["gflops"], "fma_threads": fma["threads"],
        "fma": (f"{fma['accumulators']} independent {fma['isa']} FMA chains of {fma['vector_floats']} floats "
                f"x {fma['threads']} threads, best of {repeats}"),
        "stream_gbps": stream["gbps"], "stream_threads": stream["threads"],
        "stream": (f"STREAM scale b = s*a, 2 x {stream_mib} MiB, {stream['threads']} threads, 2 x 4 bytes "
                   f"per element, best of {repeats}"),
    }
    _NATIVE_PEAK[key] = out
    return out


# The CPU compute roof per dtype, from the fp32 FMA probe: float64 vectors hold half the lanes; the CPU
# kernels compute float16/bfloat16 in float32.
_FMA_SCALE = {"float32": 1.0, "float64": 0.5, "float16": 1.0, "bfloat16": 1.0}


def measure_peak(device: str = "cpu", dtype: str = "float32", gemm_n: int = 2048,
                 copy_mib: int = 128, repeats: int = 5) -> Dict[str, Any]:
    """The roofs of %peak and of the roofline chart, and torch's rates for reference (best of `repeats`).

    compute_gflops / bandwidth_gbps are the roofs (compute_roof / bandwidth_roof say what they are):
      CPU:  fma_gflops (native FMA probe; x0.5 for float64) and stream_gbps (native STREAM scale), at
            torch.get_num_threads() threads - see native_peak. Without fastconv._C: torch's GEMM and copy.
      CUDA: torch.mm of an n x n `dtype` GEMM (cuBLAS) and a copy_ of copy_mib MiB.
    Always also: gemm_gflops (torch.mm n x n in `dtype`; sgemm_gflops when float32) and copy_gbps (a
    copy_ of copy_mib MiB, read + write counted), and ridge_flop_per_byte = compute / bandwidth.
    Cached per (device, dtype, threads)."""
    key = (device, dtype, torch.get_num_threads())
    if key in _PEAK:
        return _PEAK[key]
    dev = torch.device(device)
    dt = DTYPES[dtype]
    if dev.type == "cuda":
        gemm_n = max(gemm_n, 8192)
        copy_mib = max(copy_mib, 1024)
    meter = BusyMeter()

    def best(fn):
        fn()
        synchronize(device)
        return min(time_once(synced(fn, device)) for _ in range(repeats))

    a = torch.randn(gemm_n, gemm_n, device=dev).to(dt)
    b = torch.randn(gemm_n, gemm_n, device=dev).to(dt)
    t_mm = best(lambda: torch.mm(a, b))
    a = b = None  # free the GEMM operands before the copy buffers are allocated
    src = torch.randn(copy_mib * 2 ** 20 // 4, device=dev)
    dst = torch.empty_like(src)
    t_copy = best(lambda: dst.copy_(src))
    src = dst = None
    gemm = f"torch.mm {gemm_n}x{gemm_n} {dtype}"
    copy = f"{copy_mib} MiB copy_ (read + write)"
    peak: Dict[str, Any] = {"device": device, "device_name": device_name(device), "dtype": dtype,
                            "threads": torch.get_num_threads(),
                            "gemm_gflops": 2 * gemm_n ** 3 / t_mm / 1e9,
                            "copy_gbps": 2 * (copy_mib * 2 ** 20 // 4) * 4 / t_copy / 1e9,
                            "gemm": gemm, "copy": copy}
    if dtype == "float32":
        peak["sgemm_gflops"] = peak["gemm_gflops"]
    native = native_peak(repeats=repeats) if dev.type == "cpu" else None
    if native is not None:
        peak.update(native)
        scale = _FMA_SCALE.get(dtype, 1.0)
        peak["compute_gflops"] = native["fma_gflops"] * scale
        peak["compute_roof"] = "native FMA probe" + (f" x {scale} ({dtype})" if scale != 1.0 else "")
        peak["bandwidth_gbps"] = native["stream_gbps"]
        peak["bandwidth_roof"] = "native STREAM scale"
    else:
        peak["compute_gflops"] = peak["gemm_gflops"]
        peak["compute_roof"] = gemm
        peak["bandwidth_gbps"] = peak["copy_gbps"]
        peak["bandwidth_roof"] = copy
    peak["ridge_flop_per_byte"] = peak["compute_gflops"] / peak["bandwidth_gbps"]
    peak["others_cpu_share"] = meter.others()  # a busy neighbour lowers the roofs: peak_line flags it
    _PEAK[key] = peak
    return peak


def machine_peak() -> Dict[str, Any]:
    """The CPU peak in the form the bench/ suites report it: the roofs fma_gflops (with fma_threads, isa)
    and stream_gbps from the native probes, torch's sgemm_gflops and copy_gbps for reference, and
    compute_gflops / bandwidth_gbps, the roofs %peak uses (torch's numbers when fastconv._C is missing)."""
    p = measure_peak("cpu", "float32")
    keys = ("threads", "isa", "fma_gflops", "fma_threads", "fma", "stream_gbps", "stream_threads", "stream",
            "sgemm_gflops", "gemm", "copy_gbps", "copy", "compute_gflops", "compute_roof", "bandwidth_gbps",
            "bandwidth_roof", "ridge_flop_per_byte", "others_cpu_share")
    return {k: p[k] for k in keys if k in p}


# ----------------------------------------------------------------------------------------------------
# Contention: CPU time of the whole machine (/proc/stat) minus this process's own, over a wall interval.


class BusyMeter:
    def __init__(self):
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._ncpu = os.cpu_count() or 1
        self._start = self._sample()

    def _sample(self):
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # minus idle, iowait
        t = os.times()
        return time.perf_counter(), busy / self._tick, t.user + t.system

    def restart(self) -> None:
        self._start = self._sample()

    def others(self) -> Optional[float]:
        """Share of all CPUs used by other processes since the start (0..1), None if unknown."""
        end = self._sample()
        if end is None or self._start is None:
            return None
        wall = end[0] - self._start[0]
        if wall < 0.2:  # /proc/stat counts in clock ticks (10 ms): too coarse for shorter intervals
            return None
        others = (end[1] - self._start[1]) - (end[2] - self._start[2])
        return min(1.0, max(0.0, others / (wall * self._ncpu)))


# ----------------------------------------------------------------------------------------------------
# The measured peak as text


def fmt_num(v, width: int, prec: int) -> str:
    return format("n/a" if v is None else f"{v:.{prec}f}", f">{width}")


def peak_line(peak: Dict[str, Any]) -> str:
    """The line above the tables: the roofs %peak is taken against, then torch's rates for reference;
    flagged when other processes were busy while the peak was measured."""
    busy = peak.get("others_cpu_share")
    flag = (f" !busy {100 * busy:.0f}%: other processes ran while the peak was measured, so it is low"
            if busy is not None and busy > BUSY_FLAG else "")
    return _peak_text(peak) + flag


def peak_details(p: Dict[str, Any]) -> List[str]:
    """`fastconv bench --peak`: the roofs of one measure_peak() result, the probes behind them and
    torch's rates for reference."""
    lines = [f"{p['device_name']} ({p['device']}, {p['threads']} threads, {p['dtype']}): compute "
             f"{p['compute_gflops']:.1f} GFLOP/s ({p['compute_roof']}), bandwidth {p['bandwidth_gbps']:.1f} GB/s "
             f"({p['bandwidth_roof']}); ridge point {p['ridge_flop_per_byte']:.1f} FLOP/byte"]
    if p.get("fma_gflops") is not None:
        lines += [f"  FMA probe: {p['fma_gflops']:.1f} GFLOP/s ({p['fma']})",
                  f"  stream probe: {p['stream_gbps']:.1f} GB/s ({p['stream']})",
                  f"  torch reference: {p['gemm_gflops']:.1f} GFLOP/s ({p['gemm']}), "
                  f"{p['copy_gbps']:.1f} GB/s ({p['copy']})"]
    busy = p.get("others_cpu_share")
    if busy is not None and busy > BUSY_FLAG:
        lines.append(f"  !busy {100 * busy:.0f}%: other processes ran while the peak was measured, so it is low")
    return lines


def _num(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def _peak_text(peak: Dict[str, Any]) -> str:
    if peak.get("fma_gflops") is None and "compute_roof" in peak:  # CUDA, or a CPU without fastconv._C
        return (f"measured peak: {peak['compute_gflops']:.1f} GFLOP/s ({peak['compute_roof']}), "
                f"{peak['bandwidth_gbps']:.1f} GB/s ({peak['bandwidth_roof']}); %peak = ours against it")
    if peak.get("fma_gflops") is not None:
        roof = peak.get("compute_gflops")
        scaled = (f" ({_num(roof)} for {peak.get('dtype')})"
                  if roof is not None and abs(roof - peak["fma_gflops"]) > 1e-9 else "")
        if peak.get("sgemm_gflops") is not None:
            ref = f"torch SGEMM {_num(peak['sgemm_gflops'])} GFLOP/s"
        else:
            ref = f"torch GEMM {peak.get('dtype', '')} {_num(peak.get('gemm_gflops'))} GFLOP/s"
        return (f"measured peak: FMA {_num(peak['fma_gflops'])} GFLOP/s{scaled} ({peak.get('fma_threads')} threads, "
                f"{peak.get('isa')}), stream scale {_num(peak.get('stream_gbps'))} GB/s; {ref}, copy "
                f"{_num(peak.get('copy_gbps'))} GB/s for reference (%peak: ours against FMA for GFLOP/s, "
                f"stream scale for GB/s)")
    compute = peak.get("compute_gflops") or peak.get("sgemm_gflops")
    bandwidth = peak.get("bandwidth_gbps") or peak.get("copy_gbps")
    return (f"measured peak: torch GEMM {_num(compute)} GFLOP/s, copy {_num(bandwidth)} GB/s "
            f"(%peak: ours against it; no native probe on this device)")


# ----------------------------------------------------------------------------------------------------
# Machine and versions for the reports


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> Optional[str]:
    try:  # read-only query
        root = Path(__file__).resolve().parent.parent.parent
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_isa() -> Optional[str]:
    try:
        from fastconv.backends import cpu as cpu_backend

        return cpu_backend._C.cpu_isa() if cpu_backend._C is not None else None
    except Exception:  # noqa: BLE001
        return None


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
