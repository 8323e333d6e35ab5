"""`fastconv bench`: fastconv's kernels against torch's (oneDNN on CPU, cuDNN on CUDA) on a shape table,
or whole networks against torch eager and torch.compile.

    fastconv bench                                    # table cpu_conv, conv2d + conv2d_relu, fwd, both layouts
    fastconv bench --table resnet50 --batch 8 --quick # ResNet-50's distinct conv layers at N=8, few rounds
    fastconv bench --table pool --modes fwd,bwd       # pooling layers (GB/s)
    fastconv bench --table conv1d,conv_transpose      # 1-d (speech, sequence) and transposed (decoder) layers
    fastconv bench --models resnet50,mobilenet_v2     # networks: infer at batch 1, 8, 32 and a train step
    fastconv bench --models all --variants torch,fastconv --batches 1,8   # every network, no torch.compile
    fastconv bench --breakdown resnet50 --modes infer # time per conv layer of ResNet-50, ours vs torch
    fastconv bench --peak                             # the device's measured roofs only (CPU: FMA, stream)
    fastconv bench --compare A/bench.json B/bench.json

Prints one table per op/mode/dtype/backend: median time of both, GFLOP/s (or GB/s), % of the measured
peak, ratio = torch_time / fastconv_time (> 1: fastconv faster) and its geometric mean; writes
bench.json (schema: fastconv.benchmarks.report) and ratio.png / roofline.png into --out (default: a
new folder under ./bench-out/). Tables: fastconv.benchmarks.TABLES; the sweep: fastconv.benchmarks.sweep;
the networks (--models, --breakdown): fastconv.benchmarks.networks.
"""
from __future__ import annotations

import argparse
import datetime
from pathlib import Path
from typing import List

from ._util import csv as _csv
from ._util import fail

NAME = "bench"
HELP = "benchmark fastconv's kernels against torch on a shape table, or whole networks"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..benchmarks import TABLES

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("\n\n")[1]
    p.add_argument("--table", default="cpu_conv",
                   help=f"comma-separated shape tables: {', '.join(TABLES)} (default cpu_conv)")
    p.add_argument("--ops", default="conv2d,conv2d_relu,conv1d,conv1d_relu,conv_transpose2d,max_pool2d,avg_pool2d",
                   help="comma-separated ops; each row runs those that apply to it (conv ops on conv "
                        "shapes, a pooling row's own op) (default: all)")
    p.add_argument("--modes", default=None,
                   help="comma-separated: fwd, bwd (backward alone), fwdbwd (default fwd); with --models or "
                        "--breakdown: infer, train (default both)")
    p.add_argument("--backends", default=None,
                   help="comma-separated fastconv backends (default: the auto backend for --device)")
    p.add_argument("--dtypes", default="float32", help="comma-separated: float32, float64, float16, bfloat16")
    p.add_argument("--layouts", default="nchw,channels_last", help="comma-separated: nchw, channels_last")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and fastconv (default: torch's)")
    p.add_argument("--batch", type=int, default=None, metavar="N", help="override every row's batch size N")
    p.add_argument("--filter", default=None, metavar="TEXT", help="only the rows whose shape name contains TEXT")
    p.add_argument("--quick", action="store_true", help="few rounds (0.05 s per row; numbers are rough)")
    p.add_argument("--no-check", action="store_true", help="skip the check of our result against torch's")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="folder for bench.json and the PNG charts (default: ./bench-out/<date>-<table>)")
    p.add_argument("--no-charts", action="store_true", help="write no PNG charts")
    p.add_argument("--peak", action="store_true",
                   help="measure and print the device's compute peak and bandwidth only (CPU: the native FMA "
                        "and STREAM scale probes, torch's GEMM and copy for reference)")
    p.add_argument("--compare", nargs=2, default=None, metavar=("A.json", "B.json"),
                   help="print the per-row change from run A to run B and exit")
    net = p.add_argument_group("networks (fastconv.benchmarks.networks; --table, --ops, --dtypes, --batch "
                               "and --filter do not apply)")
    net.add_argument("--models", default=None, metavar="NETS",
                     help="comma-separated networks of fastconv.models.imagenet, or 'all' (tv_resnet18, resnet50, "
                          "mobilenet_v2, ...): time each as torch eager, torch.compile and fastconv.convert")
    net.add_argument("--batches", default="1,8,32", help="inference batch sizes (default 1,8,32)")
    net.add_argument("--train-batch", type=int, default=8, metavar="N",
                     help="batch size of the training step (default 8)")
    net.add_argument("--variants", default=None,
                     help="comma-separated: torch (always, the baseline), compile (torch.compile with Inductor "
                          "freezing, inference only; minutes of compiling per network on 2 cores), fastconv "
                          "(fastconv.convert), fastconv-opt (fastconv.optimize, inference only) (default: all)")
    net.add_argument("--image-size", type=int, default=224, metavar="PX", help="input height and width (default 224)")
    net.add_argument("--breakdown", default=None, metavar="NET",
                     help="also time every distinct conv layer of NET, forward (infer) and forward+backward "
                          "(train), ours vs torch, with its share of the time and the cpu backend's algorithm, "
                          "and profile where NET's eager time goes")
    net.add_argument("--breakdown-batch", type=int, default=8, metavar="N",
                     help="batch size of --breakdown (default 8)")


def _die(msg: str) -> int:
    return fail(NAME, msg)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..benchmarks import runner

    if args.compare:
        from ..benchmarks.compare import compare, format_compare

        try:
            result = compare(*args.compare)
        except (OSError, ValueError, KeyError) as exc:
            return _die(str(exc))
        print("\n".join(format_compare(result, *args.compare)))
        return 0

    device = args.device.strip().lower()
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        return _die(f"--device {args.device!r}: {exc}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        return _die("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = _csv(args.dtypes)
    bad = [d for d in dtypes if d not in runner.DTYPES]
    if bad:
        return _die(f"unknown dtype(s) {bad}; expected {list(runner.DTYPES)}")

    if args.peak:
        for dt in dtypes:
            print("\n".join(runner.peak_details(runner.measure_peak(device, dt))))
        return 0
    if args.models or args.breakdown:
        return _run_networks(args, device)

    from ..benchmarks import TABLES

    tables = _csv(args.table)
    bad = [t for t in tables if t not in TABLES]
    if bad:
        return _die(f"unknown table(s) {bad}; expected {list(TABLES)}")
    ops, modes, layouts = _csv(args.ops), _csv(args.modes or "fwd"), _csv(args.layouts)
    for name, vals, allowed in (("op", ops, runner.OPS), ("mode", modes, runner.MODES),
                                ("layout", layouts, runner.LAYOUTS)):
        bad = [v for v in vals if v not in allowed]
        if bad:
            return _die(f"unknown {name}(s) {bad}; expected {list(allowed)}")
    from .. import backends as B

    backends = _csv(args.backends) if args.backends else [B.resolve(dev).name]
    for b in backends:
        if b not in B.registered():
            return _die(f"unknown backend {b!r}; expected one of {sorted(B.registered())}")
    if args.batch is not None and args.batch < 1:
        return _die("--batch must be >= 1")

    from ..benchmarks.report import format_report
    from ..benchmarks.sweep import run_bench

    report = run_bench(tables, ops, modes, backends, dtypes, layouts, device, args.batch, args.quick,
                       args.filter, check=not args.no_check)
    if not report["rows"]:
        return _die("no rows selected (check --table, --ops and --filter)")
    print("\n".join(format_report(report)))

    _write(report, args, tables)
    return 0


def _write(report, args: argparse.Namespace, names: List[str]) -> None:
    from ..benchmarks.report import write_report

    out = Path(args.out) if args.out else _default_out(names)
    out.mkdir(parents=True, exist_ok=True)
    path = write_report(report, out / "bench.json")
    print(f"\nreport: {path}")
    if not args.no_charts:
        from ..benchmarks.charts import write_charts

        for chart in write_charts(report, out):
            print(f"chart:  {chart}")


def _ints(name: str, value: str) -> List[int]:
    try:
        vals = [int(v) for v in _csv(value)]
    except ValueError:
        raise ValueError(f"{name} {value!r}: expected comma-separated integers") from None
    if not vals or min(vals) < 1:
        raise ValueError(f"{name} {value!r}: expected batch sizes >= 1")
    return vals


def _run_networks(args: argparse.Namespace, device: str) -> int:
    """--models / --breakdown: the network benchmark (fastconv.benchmarks.networks)."""
    import sys

    from ..benchmarks import networks as N
    from ..benchmarks import runner
    from ..benchmarks.report import format_report

    try:
        names = N.network_names(_csv(args.models)) if args.models else []
        breakdown = N.network_names([args.breakdown])[0] if args.breakdown else None
        batches = _ints("--batches", args.batches)
        _ints("--train-batch", str(args.train_batch))
        _ints("--breakdown-batch", str(args.breakdown_batch))
    except ValueError as exc:
        return _die(str(exc))
    modes, layouts = _csv(args.modes or ",".join(N.NET_MODES)), _csv(args.layouts)
    variants = _csv(args.variants) if args.variants else list(N.VARIANTS)
    for name, vals, allowed in (("mode", modes, N.NET_MODES), ("layout", layouts, runner.LAYOUTS),
                                ("variant", variants, N.VARIANTS)):
        bad = [v for v in vals if v not in allowed]
        if bad:
            return _die(f"unknown {name}(s) {bad}; expected {list(allowed)}" +
                        (" (--modes of a network run: infer, train)" if name == "mode" else ""))
    variants = ["torch"] + [v for v in variants if v != "torch"]
    from ..models import imagenet

    small = [n for n in names + ([breakdown] if breakdown else []) if args.image_size < imagenet.SPECS[n].min_size]
    if args.image_size < 1 or small:
        return _die(f"--image-size {args.image_size}: too small for {small or 'any network'} (torchvision's minimum "
                    f"sizes: {', '.join(f'{n} {imagenet.SPECS[n].min_size}' for n in small)})")
    cfg = N.NetConfig(batches=batches, modes=modes, variants=variants, layouts=layouts, image_size=args.image_size,
                      train_batch=args.train_batch, check=not args.no_check, device=device)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    report = N.run_networks(names, cfg, quick=args.quick, breakdown_net=breakdown,
                            breakdown_batch=args.breakdown_batch, log=log)
    print("\n".join(format_report(report)))
    _write(report, args, ["networks"] if names else [f"breakdown-{breakdown}"])
    return 0


def _default_out(tables: List[str]) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("bench-out") / f"{stamp}-{'+'.join(tables)}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = Path(f"{base}-{i}")
    return path
