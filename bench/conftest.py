"""pytest-benchmark harness for fastconv vs torch (the baseline is measured in the same run).

Every benchmark is parametrized impl in {torch, fastconv} x shape x layout (x op x mode) and put in the
pytest-benchmark group "op/mode/shape/layout", so each torch baseline sits next to ours. A session
collector (fastconv.benchmarks.records.Collector) keeps both timings, writes the ratio into both
benchmarks' extra_info, and at the end prints the same tables as `fastconv bench`, one per op/mode/dtype
(median ms, GFLOP/s or GB/s, % of the measured machine peak, ratio = torch_time / our_time, > 1 means
fastconv is faster, and the geometric mean of the ratios, overall and per layout).

    pytest bench/ --benchmark-only                        # full tables (a few minutes on 2 cores)
    pytest bench/ --benchmark-only --bench-short          # smoke test for CI (seconds)
    pytest bench/ --benchmark-only --fastconv-report bench/results/cpu.json   # + cpu-roofline.png, cpu-ratio.png

Options (command line, or the environment for CI):
  --bench-short / FASTCONV_BENCH_SHORT=1      a few shapes at N=2, few rounds
  --fastconv-backend / FASTCONV_BENCH_BACKEND  backend for the 'fastconv' impl (default 'cpu')
  --fastconv-report PATH                      also write the report as JSON (fastconv.benchmarks.report,
                                              kind "bench-suite": the rows, machine, versions and measured
                                              peak), and next to it PATH-stem-roofline.png (every conv
                                              row against the FMA and stream roofs, pooling GB/s beside
                                              it) and PATH-stem-ratio.png; the PNGs need matplotlib (the
                                              'train' extra): without it a note is printed, no PNG
  --bench-device / FASTCONV_BENCH_DEVICE      cpu (default) or cuda: tensors live there; on CUDA
                                              cudnn.benchmark = True and every timed call synchronizes
  --bench-dtypes / FASTCONV_BENCH_DTYPES      comma-separated dtypes (default float32)
  --bench-conv-table, --bench-pool-table      shape tables from fastconv.benchmarks.TABLES
                                              (default cpu_conv, cpu_pool; e.g. resnet50, pool); the
                                              conv1d / transposed suite (test_conv1d_transpose.py) runs
                                              the tables conv1d and conv_transpose
  FASTCONV_BENCH_THREADS                      torch and kernel threads (default 2)
  FASTCONV_BENCH_NETWORKS                     bench/test_networks.py: comma-separated networks or 'all'
                                              (default all; short mode tv_resnet18)
  FASTCONV_BENCH_NET_BATCHES                  its inference batch sizes (default 1,8,32; short 1)
  FASTCONV_BENCH_TRAIN_BATCH                  its training-step batch size (default 8; short 2)
  FASTCONV_BENCH_IMAGE_SIZE                   its input size in pixels (default 224; short 64)
  FASTCONV_BENCH_COMPILE                      its torch.compile variant, 1 or 0 (default 1; short 0)
  FASTCONV_BENCH_TARGET_S                     measured time per benchmark (default 1.0 s, short 0.05 s)
  FASTCONV_PEAK_STREAM_MIB                    MiB per array of the stream probe (default: max(256, L3))

The measured peak (the line above the tables, "peak" in the JSON) is, on the CPU, fastconv's own probes
at the kernels' ISA level and the bench's thread count: fma_gflops (independent vector FMA chains, no
memory traffic) and stream_gbps (STREAM scale b = s * a over arrays beyond the L3); %peak and the
roofline use them. torch's SGEMM (sgemm_gflops) and copy (copy_gbps) are measured for reference. On
CUDA there is no native probe: the roofs are torch's GEMM and copy.

Before a fastconv benchmark is timed, its result (the output, or every gradient) is compared with
torch's; a wrong result fails the test and no speed is recorded. A kernel that raises "not
implemented" skips that benchmark (its torch baseline still runs and the table shows n/a).
"""
from __future__ import annotations

import dataclasses
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable, List, Optional

import pytest
import torch

import fastconv
from fastconv.benchmarks.tables import ConvShape, PoolShape

from ._harness import (BASELINE, BusyMeter, Case, Collector, Timing, format_report, machine_peak, make_report,
                       measure_peak, not_implemented, prepare_device, synced, synchronize, time_once,
                       write_report)

IMPLS = ("torch", "fastconv")
LAYOUTS = ("nchw", "channels_last")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def pytest_addoption(parser):
    group = parser.getgroup("fastconv-bench", "fastconv benchmarks")
    group.addoption("--bench-short", action="store_true", default=_env_flag("FASTCONV_BENCH_SHORT"),
                    help="smoke-test mode: few shapes, N=2, few rounds (env FASTCONV_BENCH_SHORT=1)")
    group.addoption("--fastconv-backend", default=os.environ.get("FASTCONV_BENCH_BACKEND", "cpu"),
                    help="fastconv backend benchmarked against torch (default: cpu; env FASTCONV_BENCH_BACKEND)")
    group.addoption("--fastconv-report", default=None, metavar="PATH",
                    help="write the fastconv-vs-torch ratio tables, machine and versions to this JSON file")
    group.addoption("--bench-device", default=os.environ.get("FASTCONV_BENCH_DEVICE", "cpu"),
                    help="device of the benchmarked tensors: cpu or cuda (env FASTCONV_BENCH_DEVICE)")
    group.addoption("--bench-dtypes", default=os.environ.get("FASTCONV_BENCH_DTYPES", "float32"),
                    help="comma-separated dtypes for the op suites (default float32; env FASTCONV_BENCH_DTYPES)")
    group.addoption("--bench-conv-table", default=os.environ.get("FASTCONV_BENCH_CONV_TABLE", "cpu_conv"),
                    help="conv shape table (fastconv.benchmarks.TABLES; default cpu_conv)")
    group.addoption("--bench-pool-table", default=os.environ.get("FASTCONV_BENCH_POOL_TABLE", "cpu_pool"),
                    help="pooling shape table (fastconv.benchmarks.TABLES; default cpu_pool)")


@dataclasses.dataclass
class BenchConfig:
    short: bool
    backend: str
    threads: int
    target_s: float      # measured time per benchmark: rounds = target_s / (time of one call)
    warmup_s: float      # warm-up time per benchmark (at least WARMUP_CALLS calls)
    min_rounds: int
    max_rounds: int
    report: Optional[str]
    device: str = "cpu"
    dtypes: tuple = ("float32",)
    conv_table: str = "cpu_conv"
    pool_table: str = "cpu_pool"
    networks: tuple = ()          # bench/test_networks.py (fastconv.benchmarks.networks)
    net_batches: tuple = (1, 8, 32)
    train_batch: int = 8
    image_size: int = 224
    compile: bool = True

    WARMUP_CALLS = 2


def pytest_configure(config):
    short = bool(config.getoption("--bench-short"))
    cfg = BenchConfig(
        short=short,
        backend=str(config.getoption("--fastconv-backend")).strip().lower(),
        threads=int(os.environ.get("FASTCONV_BENCH_THREADS", "2")),
        target_s=float(os.environ.get("FASTCONV_BENCH_TARGET_S", 0.05 if short else 1.0)),
        warmup_s=0.01 if short else 0.25,
        min_rounds=3 if short else 5,
        max_rounds=10 if short else 200,
        report=config.getoption("--fastconv-report"),
        device=str(config.getoption("--bench-device")).strip().lower(),
        dtypes=tuple(d.strip() for d in str(config.getoption("--bench-dtypes")).split(",") if d.strip()),
        conv_table=str(config.getoption("--bench-conv-table")).strip(),
        pool_table=str(config.getoption("--bench-pool-table")).strip(),
        **_network_config(short),
    )
    prepare_device(cfg.device)
    config._fastconv_bench = cfg
    config._fastconv_collector = Collector([cfg.backend])
    config._fastconv_busy = BusyMeter()
    torch.set_num_threads(cfg.threads)


def _network_config(short: bool) -> dict:
    """bench/test_networks.py's axes from the environment; short mode: tv_resnet18 at 64 px, inference at
    batch 1 and a training step at batch 2 (batch norm in train mode at batch 1 would normalize over the
    4 values per channel of the last stage), no torch.compile (minutes per network on 2 cores)."""
    from fastconv.benchmarks import networks as N

    nets = os.environ.get("FASTCONV_BENCH_NETWORKS") or ("tv_resnet18" if short else "all")
    batches = os.environ.get("FASTCONV_BENCH_NET_BATCHES") or ("1" if short else "1,8,32")
    return dict(
        networks=tuple(N.network_names([n for n in nets.split(",") if n.strip()])),
        net_batches=tuple(int(b) for b in batches.split(",") if b.strip()),
        train_batch=int(os.environ.get("FASTCONV_BENCH_TRAIN_BATCH", "2" if short else "8")),
        image_size=int(os.environ.get("FASTCONV_BENCH_IMAGE_SIZE", "64" if short else "224")),
        compile=_env_flag("FASTCONV_BENCH_COMPILE") if "FASTCONV_BENCH_COMPILE" in os.environ else not short,
    )


@pytest.fixture(scope="session")
def bench_config(pytestconfig) -> BenchConfig:
    return pytestconfig._fastconv_bench


@pytest.hookimpl(trylast=True)  # after the @parametrize markers (op, mode): impl varies fastest, so each
def pytest_generate_tests(metafunc):  # torch baseline runs right before its fastconv pair
    # The shape tables live in fastconv.benchmarks, shared with the `fastconv bench` command.
    from fastconv.benchmarks import TABLES, short_table

    cfg: BenchConfig = metafunc.config._fastconv_bench
    for fixture, table in (("conv_shape", cfg.conv_table), ("pool_shape", cfg.pool_table),
                           ("conv1d_shape", "conv1d"), ("conv_transpose_shape", "conv_transpose")):
        if fixture in metafunc.fixturenames:
            shapes = short_table(table) if cfg.short else TABLES[table]
            metafunc.parametrize(fixture, shapes, ids=[s.name for s in shapes])
    if "layout" in metafunc.fixturenames:
        metafunc.parametrize("layout", LAYOUTS)
    if "dtype" in metafunc.fixturenames:
        metafunc.parametrize("dtype", cfg.dtypes)
    if "network" in metafunc.fixturenames:
        metafunc.parametrize("network", cfg.networks)
    if "net_batch" in metafunc.fixturenames:
        metafunc.parametrize("net_batch", cfg.net_batches)
    if "impl" in metafunc.fixturenames:
        metafunc.parametrize("impl", IMPLS)
    if "variant" in metafunc.fixturenames:  # the network suite's impl axis: torch first, its variants after it
        from fastconv.benchmarks import networks as N

        mode = "infer" if metafunc.function.__name__.endswith("infer") else "train"
        variants = [v for v in N.mode_variants(N.VARIANTS, mode) if v != N.COMPILE or cfg.compile]
        metafunc.parametrize("variant", variants)


_not_implemented = not_implemented


@pytest.fixture
def run_case(benchmark, pytestconfig):
    """run_case(case, fn, check=None). For fastconv: runs check() once (it raises on a result that
    differs from torch's) under the chosen backend. Then warms up, picks the rounds from the time of
    one call, times fn with benchmark.pedantic and records the median for the ratio table. On CUDA
    the timed callable synchronizes after fn, so the time is the kernels', not their launch's."""
    cfg: BenchConfig = pytestconfig._fastconv_bench
    collector: Collector = pytestconfig._fastconv_collector

    def run(case: Case, fn: Callable[[], Any], check: Optional[Callable[[], None]] = None,
            side: Optional[str] = None) -> None:
        """side: the name of this impl's column (default: the baseline for torch, else the fastconv
        backend); the network suite names its variants (fastconv, compile)."""
        if case.table is None and isinstance(case.shape, (ConvShape, PoolShape)):
            case = dataclasses.replace(case, table=cfg.conv_table if isinstance(case.shape, ConvShape)
                                       else cfg.pool_table)
        fn = synced(fn, case.device)
        benchmark.group = case.group  # must be set before pedantic(): pytest-benchmark copies it then
        info = benchmark.extra_info
        ours = case.impl != "torch"
        side = side or (cfg.backend if ours else BASELINE)
        info.update(op=case.op, mode=case.mode, shape=case.shape.name, layout=case.layout, impl=case.impl,
                    backend=side if ours else "torch", dtype=case.dtype,
                    device=case.device,
                    threads=torch.get_num_threads(), work=case.work, unit=case.unit,
                    shape_params={k: v for k, v in dataclasses.asdict(case.shape).items() if k != "name"})
        ctx = _nullcontext()
        if case.impl.startswith("fastconv"):  # fastconv, or the network suite's fastconv-opt
            backend = fastconv.backends.registered().get(cfg.backend)
            ok, why = backend.availability() if backend else (False, "unknown backend")
            if not ok:
                collector.skip(case, f"backend {cfg.backend!r} unavailable: {why}", side)
                pytest.skip(f"fastconv backend {cfg.backend!r} unavailable: {why}")
            ctx = fastconv.use_backend(cfg.backend)
        with ctx:
            try:
                if check is not None and ours:
                    check()
                if not benchmark.enabled:  # --benchmark-disable: the check and one plain call
                    benchmark.pedantic(fn, rounds=1)
                    return
                times: List[float] = []  # warm-up: first calls, allocator, OpenMP pool, caches, cuDNN autotuning
                synchronize(case.device)
                t0 = time.perf_counter()
                while len(times) < cfg.WARMUP_CALLS or time.perf_counter() - t0 < cfg.warmup_s:
                    times.append(time_once(fn))
            except Exception as exc:  # noqa: BLE001
                if ours and _not_implemented(exc):
                    collector.skip(case, str(exc), side)
                    pytest.skip(f"fastconv {cfg.backend}: {case.op} {case.mode} not implemented yet ({exc})")
                raise
            one = statistics.median(times[1:])
            rounds = int(min(cfg.max_rounds, max(cfg.min_rounds, math.ceil(cfg.target_s / max(one, 1e-9)))))
            meter = BusyMeter()
            benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1, iterations=1)
            busy = meter.others()
        stats = getattr(benchmark, "stats", None)
        if not stats:  # --benchmark-disable: the check ran, nothing was timed
            return
        timing = Timing.of(stats.stats.data, busy=busy)
        info.update(median_ms=timing.median * 1e3, p20_ms=timing.p20 * 1e3, p80_ms=timing.p80 * 1e3,
                    throughput=case.work / timing.median / 1e9, others_cpu_share=busy)
        collector.add(case, timing, side, info)

    return run


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# bench/gpu_check.sh's budgeted run (FASTCONV_BENCH_DEADLINE set): test_gpu_backends.py's cases breadth
# first, so that a run the deadline cuts short has covered every layer in the first combinations instead
# of every combination of the first two layers. Order: channels_last before NCHW (the tensor-core path),
# conv2d before the fused conv2d_relu, float16, bfloat16, float32, then fwd / pooling / dgrad / wgrad /
# fwd+bwd, then the table's order; cuDNN and the backends of one case stay together (a ratio needs both).
_GPU_ORDER = {"fmt": ("channels_last", "nchw"), "op": ("conv2d", "conv2d_relu"),
              "dt": ("float16", "bfloat16", "float32"), "mode": ("fwd", "dgrad", "wgrad", "fwdbwd")}


def _gpu_priority(item, position):
    params = getattr(getattr(item, "callspec", None), "params", {})
    if "test_gpu_backends.py" not in item.nodeid or "fmt" not in params:
        return (1, position)

    def rank(axis, value):
        order = _GPU_ORDER[axis]
        return order.index(value) if value in order else len(order)

    pool = item.originalname == "test_gpu_pool"  # right after the first convolution mode (cheap cases)
    return (0, rank("fmt", params["fmt"]), 0 if pool else rank("op", params["op"]), rank("dt", params["dt"]),
            1.5 if pool else rank("mode", params["mode"]), position)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("FASTCONV_BENCH_DEADLINE", "").strip():
        keyed = sorted((_gpu_priority(item, i), i) for i, item in enumerate(items))
        items[:] = [items[i] for _, i in keyed]


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own tables
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    collector: Optional[Collector] = getattr(config, "_fastconv_collector", None)
    if collector is None or not collector.rows:
        return
    cfg: BenchConfig = config._fastconv_bench
    busy_run = config._fastconv_busy.others()
    timed = any(row["times"] for row in collector.rows.values())
    if timed and cfg.device != "cpu":
        peak = measure_peak(cfg.device, "float32")
    else:
        peak = dict(machine_peak()) if timed else {}
    run_config = {"backends": [cfg.backend], "dtypes": list(cfg.dtypes), "tables": [cfg.conv_table, cfg.pool_table],
                  "networks": list(cfg.networks), "net_batches": list(cfg.net_batches), "train_batch": cfg.train_batch,
                  "image_size": cfg.image_size, "compile": cfg.compile,
                  "threads": cfg.threads, "quick": cfg.short, "short": cfg.short, "warmup_s": cfg.warmup_s,
                  "target_s": cfg.target_s, "min_rounds": cfg.min_rounds, "max_rounds": cfg.max_rounds}
    report = make_report("bench-suite", collector.records(peak), cfg.device, run_config, peak,
                         others_cpu_share=busy_run)
    terminalreporter.section("fastconv vs torch")
    for line in format_report(report):
        terminalreporter.write_line(line)
    if busy_run is not None:
        terminalreporter.write_line(f"\nother processes used {100 * busy_run:.1f}% of the CPU time during the run")
    if cfg.report:
        path = write_report(report, cfg.report)
        terminalreporter.write_line(f"fastconv report written to {path}")
        for line in _write_charts(report, path):
            terminalreporter.write_line(line)


def _write_charts(report: dict, path: Path) -> List[str]:
    """PATH-stem-ratio.png and PATH-stem-roofline.png next to the JSON report; a one-line note instead
    when matplotlib is missing or drawing fails (a chart never fails the bench)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return ["fastconv charts skipped: matplotlib is not installed (pip install -e '.[train]')"]
    from fastconv.benchmarks.charts import write_charts

    try:
        paths = write_charts(report, path.parent, prefix=f"{path.stem}-")
    except Exception as exc:  # noqa: BLE001
        return [f"fastconv charts skipped: {type(exc).__name__}: {exc}"]
    return [f"fastconv chart written to {p}" for p in paths]
