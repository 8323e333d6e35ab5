"""fastconv's GPU backends ('cuda': CUDA C++ SIMT + tensor-core kernels; 'triton') against cuDNN on a
CUDA GPU: ResNet-50's convolution layers at batch 32 (fastconv.benchmarks.TABLES['resnet50']) and the
pooling table, float16, bfloat16 and float32, NCHW and channels_last; convolution forward, dgrad
alone, wgrad alone (+ bias gradient) and forward+backward, plain and fused with bias+ReLU.

    pytest bench/test_gpu_backends.py --benchmark-only                         # the full tables (GPU)
    FASTCONV_BENCH_SHORT=1 pytest bench/test_gpu_backends.py --benchmark-only  # 4 layers, float16 (CI smoke)
    FASTCONV_GPU_BENCH_BACKENDS=cuda pytest bench/test_gpu_backends.py --benchmark-only   # one backend
    FASTCONV_GPU_BENCH_REPORT=bench/results/gpu-<gpu>-<date>.json pytest bench/test_gpu_backends.py --benchmark-only

Baselines: F.conv2d with torch.backends.cudnn.benchmark = True (cuDNN picks its fastest algorithm per
shape during the warm-up), and for conv2d_relu F.conv2d (with bias) followed by an in-place ReLU - the
unfused cuDNN conv + bias + ReLU our fused kernel replaces. float32 runs with cuDNN's default TF32
setting (torch.backends.cudnn.allow_tf32), which our kernels follow. Pooling: torch's CUDA kernels.

Timing: each measurement launches the step `inner` times back to back and synchronizes once (so the
launch latency of a small layer is not counted as its run time); the median (and 20/80 % quantiles)
over rounds, divided by `inner`, is the time per call. The rows are fastconv.benchmarks.records'
BenchRecords and print as `fastconv bench`'s tables: median ms of both, TFLOP/s (2*N*K*P*Q*C/g*R*S per
forward, x3 for forward+backward) or GB/s for pooling, % of the device's measured peak in the row's
dtype (torch.mm in the same dtype for FLOP/s - the tensor-core peak for float16/bfloat16/TF32 - and a
1 GiB copy for GB/s; fastconv.benchmarks.runner.measure_peak) and ratio = cuDNN time / backend time
(> 1: fastconv faster), with the geometric mean per table (overall and per layout). The JSON report
is fastconv.benchmarks.report's (kind "bench-gpu-backends"; throughputs in GFLOP/s there). dgrad and
wgrad are timed alone by detaching the other operand in the forward (autograd then asks the backward
op for that gradient only).

Without a CUDA GPU every test is skipped at once (CI's short mode has no GPU).

bench/gpu_check.sh drives this file under a time budget: FASTCONV_BENCH_DEADLINE (Unix time) makes every
case that starts after it skip itself (the report holds what ran), and its dry run points it at the CPU:
FASTCONV_GPU_BENCH_DEVICE=cpu with FASTCONV_GPU_BENCH_BACKENDS=cpu, and the table cut down by
FASTCONV_GPU_BENCH_LAYERS (layer names), FASTCONV_GPU_BENCH_DTYPES and FASTCONV_GPU_BENCH_BATCH.
The JSON report's text tables are written next to it (same name, .txt).
"""
from __future__ import annotations

import dataclasses
import os
import time

import pytest
import torch

from fastconv.benchmarks import TABLES
from fastconv.benchmarks.records import BASELINE, Collector, Timing
from fastconv.benchmarks.report import format_report, make_report, write_report
from fastconv.benchmarks.runner import (Case, conv_forward, conv_inputs, conv_step, measure_peak, pool_inputs,
                                        pool_step, synchronize, versions)

DEVICE = os.environ.get("FASTCONV_GPU_BENCH_DEVICE", "cuda").strip().lower() or "cuda"
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                reason="the GPU-backend-vs-cuDNN benchmarks need a CUDA GPU")


def _env_list(value, default):
    """The comma-separated names of an environment variable's value, or default when it is empty."""
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value.strip() else default

DTYPES = ("float16", "bfloat16", "float32")
LAYOUTS = ("nchw", "channels_last")
SHORT_LAYERS = ("r50-conv1-7x7s2", "r50-l1-3x3-c64-56", "r50-l3-1x1-c256k1024-14", "r50-l4-3x3-c512-7")
SHORT = os.environ.get("FASTCONV_BENCH_SHORT", "").strip().lower() not in ("", "0", "false", "no", "off")
BACKENDS = [b.strip() for b in os.environ.get("FASTCONV_GPU_BENCH_BACKENDS", "cuda,triton").split(",") if b.strip()]
CONV_MODES = ("fwd", "fwdbwd") if SHORT else ("fwd", "dgrad", "wgrad", "fwdbwd")

_LAYERS = _env_list(os.environ.get("FASTCONV_GPU_BENCH_LAYERS", ""), SHORT_LAYERS if SHORT else None)
_BATCH = int(os.environ.get("FASTCONV_GPU_BENCH_BATCH", "0") or 0)
CONV_SHAPES = [s.with_batch(_BATCH) if _BATCH else s for s in TABLES["resnet50"] if _LAYERS is None or s.name in _LAYERS]
POOL_SHAPES = TABLES["pool"][:3] if SHORT else TABLES["pool"]
POOL_SHAPES = [dataclasses.replace(s, N=_BATCH) if _BATCH else s for s in POOL_SHAPES]
CONV_DTYPES = _env_list(os.environ.get("FASTCONV_GPU_BENCH_DTYPES", ""), ("float16",) if SHORT else DTYPES)
POOL_DTYPES = tuple(d for d in CONV_DTYPES if d in (("float16",) if SHORT else ("float16", "float32"))) or CONV_DTYPES[:1]
_DEADLINE = float(os.environ.get("FASTCONV_BENCH_DEADLINE", "0") or 0)
TARGET_S = float(os.environ.get("FASTCONV_BENCH_TARGET_S", "0") or 0) or (0.3 if SHORT else 1.0)

COLLECTOR = Collector(BACKENDS)  # cuDNN's Timing (side BASELINE) and each backend's, per case


# Relative error (Frobenius norm) of a backend's result against cuDNN's, above which no speed is recorded:
# both round to the same dtype but sum in different orders (TF32 for float32 by default).
_CHECK_TOL = {"float16": 1e-2, "bfloat16": 5e-2, "float32": 1e-2}


def _check(ours, ref, names, dt):
    for name, o, r in zip(names, ours, ref):
        o, r = o.detach().double(), r.detach().double()
        err = (torch.linalg.vector_norm(o - r) / torch.linalg.vector_norm(r).clamp_min(1e-30)).item()
        assert err <= _CHECK_TOL[dt], f"{name}: relative error {err:.2e} against cuDNN ({dt})"


def _within_budget(case, which):
    """Skips (and notes in the report) a case that would start after FASTCONV_BENCH_DEADLINE."""
    if _DEADLINE and time.time() > _DEADLINE:
        COLLECTOR.skip(case, "time budget spent (FASTCONV_BENCH_DEADLINE)", BASELINE if which == "cudnn" else which)
        pytest.skip("time budget spent (FASTCONV_BENCH_DEADLINE)")


def _backend_ready(name, case):
    import fastconv

    ok, why = fastconv.backends.registered()[name].availability()
    if not ok:
        COLLECTOR.skip(case, f"backend {name!r} unavailable: {why}", name)
        pytest.skip(f"{name} backend unavailable: {why}")


def _conv_step(impl, op, mode, shape, x, w, b, dy):
    """conv_step's modes, plus dgrad / wgrad alone: the other operand is detached in the forward, so
    the backward computes only the gradient asked for (wgrad includes the bias gradient)."""
    if mode not in ("dgrad", "wgrad"):
        return conv_step(impl, op, mode, shape, x, w, b, dy)
    fwd = conv_forward(impl, op, shape)
    if mode == "dgrad":
        y = fwd(x, w.detach(), b.detach())
        return lambda: torch.autograd.grad(y, (x,), dy, retain_graph=True)
    y = fwd(x.detach(), w, b)
    return lambda: torch.autograd.grad(y, (w, b), dy, retain_graph=True)


_GRAD_NAMES = {"fwd": ("output",), "dgrad": ("grad_input",), "wgrad": ("grad_weight", "grad_bias"),
               "fwdbwd": ("grad_input", "grad_weight", "grad_bias")}


def _time(benchmark, fn, target_s: float) -> Timing:
    """Seconds per call: rounds of `inner` back-to-back calls, one synchronize per round."""
    fn()
    synchronize(DEVICE)
    t0 = time.perf_counter()
    fn()
    synchronize(DEVICE)
    one = max(time.perf_counter() - t0, 1e-6)
    inner = max(1, min(50, int(2e-3 / one)))  # ~2 ms per round at least

    def rounds():
        for _ in range(inner):
            fn()
        synchronize(DEVICE)

    n = int(min(100, max(5, target_s / (one * inner))))
    benchmark.pedantic(rounds, rounds=n, iterations=1, warmup_rounds=2)
    return Timing.of([t / inner for t in benchmark.stats.stats.data])


def _record(case, which, timing, benchmark):
    COLLECTOR.add(case, timing, BASELINE if which == "cudnn" else which)
    benchmark.extra_info.update(op=case.op, mode=case.mode, shape=case.shape.name, layout=case.layout,
                                dtype=case.dtype, impl=which, median_ms=timing.median * 1e3,
                                throughput=case.work / timing.median / 1e9, unit=case.unit)


@pytest.fixture(scope="module", autouse=True)
def _cudnn_benchmark():
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    yield
    torch.backends.cudnn.benchmark = previous


@pytest.mark.parametrize("which", ["cudnn"] + BACKENDS)
@pytest.mark.parametrize("mode", CONV_MODES)
@pytest.mark.parametrize("op", ["conv2d", "conv2d_relu"])
@pytest.mark.parametrize("fmt", LAYOUTS)
@pytest.mark.parametrize("dt", CONV_DTYPES)
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=lambda s: s.name)
def test_gpu_conv(benchmark, shape, dt, fmt, op, mode, which):
    import fastconv

    impl = "torch" if which == "cudnn" else "fastconv"
    work = shape.flops_fwd_bwd if mode == "fwdbwd" else shape.flops
    case = Case(op, mode, shape, fmt, impl, work, "GFLOP/s", dtype=dt, device=DEVICE, table="resnet50")
    _within_budget(case, which)
    if which != "cudnn":
        _backend_ready(which, case)
    x, w, b, dy = conv_inputs(shape, fmt, grad=(mode != "fwd"), dtype=dt, device=DEVICE)
    fn = _conv_step(impl, op, mode, shape, x, w, b, dy)
    ctx = fastconv.use_backend(which) if which != "cudnn" else _null()
    with ctx:
        if which != "cudnn":  # a wrong result records no speed
            _check(fn(), _conv_step("torch", op, mode, shape, x, w, b, dy)(), _GRAD_NAMES[mode], dt)
        timing = _time(benchmark, fn, TARGET_S)
    _record(case, which, timing, benchmark)


@pytest.mark.parametrize("which", ["cudnn"] + BACKENDS)
@pytest.mark.parametrize("mode", ["fwd", "bwd"])
@pytest.mark.parametrize("fmt", LAYOUTS)
@pytest.mark.parametrize("dt", POOL_DTYPES)
@pytest.mark.parametrize("shape", POOL_SHAPES, ids=lambda s: s.name)
def test_gpu_pool(benchmark, shape, dt, fmt, mode, which):
    import fastconv

    impl = "torch" if which == "cudnn" else "fastconv"
    size = torch.empty(0, dtype=getattr(torch, dt)).element_size()
    work = shape.bytes(size) if mode == "fwd" else shape.bytes_backward(size)
    case = Case(f"{shape.op}_pool2d", mode, shape, fmt, impl, work, "GB/s", dtype=dt, device=DEVICE, table="pool")
    _within_budget(case, which)
    if which != "cudnn":
        _backend_ready(which, case)
    x, dy = pool_inputs(shape, fmt, dt, DEVICE)
    fn = pool_step(impl, mode, shape, x, dy)
    ctx = fastconv.use_backend(which) if which != "cudnn" else _null()
    with ctx:
        if which != "cudnn":
            _check((fn(),), (pool_step("torch", mode, shape, x, dy)(),), ("pool",), dt)
        timing = _time(benchmark, fn, TARGET_S)
    _record(case, which, timing, benchmark)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# ----------------------------------------------------------------------------------------------------
# Report: printed at the end of the module, and written as JSON when FASTCONV_GPU_BENCH_REPORT is set


def gpu_report(collector: Collector) -> dict:
    """The report (fastconv.benchmarks.report, kind "bench-gpu-backends") of the collected rows, each
    row's %peak against the measured peak of its own dtype."""
    import fastconv

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    dtypes = list(dict.fromkeys(row["case"].dtype for row in collector.rows.values()))
    peaks = {dt: measure_peak(DEVICE, dt) for dt in dtypes}
    availability = {}
    for b in collector.backends:
        backend = fastconv.backends.registered().get(b)
        availability[b] = backend.availability()[1] if backend else "unknown backend"
    config = {"backends": list(collector.backends), "dtypes": dtypes, "layouts": list(LAYOUTS),
              "tables": ["resnet50", "pool"], "modes": list(CONV_MODES),
              "threads": torch.get_num_threads(), "quick": SHORT, "short": SHORT,
              "tf32": torch.backends.cudnn.allow_tf32, "autotune": os.environ.get("FASTCONV_AUTOTUNE", "1"),
              "backend_availability": availability}
    return make_report("bench-gpu-backends", collector.records(lambda dt: peaks[dt]), DEVICE, config,
                       peaks[dtypes[0]], peaks=peaks, versions=dict(versions(), triton=triton_version))


@pytest.fixture(scope="module", autouse=True)
def _report(request):
    yield
    if not COLLECTOR.rows:
        return
    report = gpu_report(COLLECTOR)
    lines = ["", "fastconv GPU backends vs cuDNN", *format_report(report)]
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    for line in lines:
        if reporter is not None:
            reporter.write_line(line)
        else:
            print(line)
    path = os.environ.get("FASTCONV_GPU_BENCH_REPORT")
    if path:
        write_report(report, path)
        with open(os.path.splitext(path)[0] + ".txt", "w") as f:
            f.write("\n".join(lines[1:]) + "\n")
