"""`fastconv bench`: fastconv's kernels against torch's (oneDNN on CPU, cuDNN on CUDA) on a shape table.

    fastconv bench                                    # table cpu_conv, conv2d + conv2d_relu, fwd, both layouts
    fastconv bench --table resnet50 --batch 8 --quick # ResNet-50's distinct conv layers at N=8, few rounds
    fastconv bench --table pool --modes fwd,bwd       # pooling layers (GB/s)
    fastconv bench --peak                             # the device's measured roofs only (CPU: FMA, stream)
    fastconv bench --compare A/bench.json B/bench.json

Prints one table per op/mode/dtype/backend: median time of both, GFLOP/s (or GB/s), % of the measured
peak, ratio = torch_time / fastconv_time (> 1: fastconv faster) and its geometric mean; writes
bench.json (schema_version 1: device, versions, commit, date, config, peak, rows) and ratio.png /
roofline.png into --out (default: a new folder under ./bench-out/). Tables: fastconv.benchmarks.TABLES.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from .cli import command


def _csv(v: str) -> List[str]:
    return [p.strip() for p in v.split(",") if p.strip()]


def _bench_args(p: argparse.ArgumentParser) -> None:
    from .benchmarks import TABLES

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("\n\n")[1]
    p.add_argument("--table", default="cpu_conv",
                   help=f"comma-separated shape tables: {', '.join(TABLES)} (default cpu_conv)")
    p.add_argument("--ops", default="conv2d,conv2d_relu,max_pool2d,avg_pool2d",
                   help="comma-separated ops; each row runs those that apply to it (conv ops on conv "
                        "shapes, a pooling row's own op) (default: all)")
    p.add_argument("--modes", default="fwd", help="comma-separated: fwd, bwd (backward alone), fwdbwd (default fwd)")
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


def _die(msg: str) -> int:
    print(f"fastconv bench: error: {msg}", file=sys.stderr)
    return 2


@command("bench", "benchmark fastconv's kernels against torch on a shape table", _bench_args)
def _bench(args: argparse.Namespace) -> int:
    import torch

    from .benchmarks import runner

    if args.compare:
        from .benchmarks.compare import compare, format_compare

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
            p = runner.measure_peak(device, dt)
            print(f"{p['device_name']} ({device}, {p['threads']} threads, {dt}): compute {p['compute_gflops']:.1f} "
                  f"GFLOP/s ({p['compute_roof']}), bandwidth {p['bandwidth_gbps']:.1f} GB/s ({p['bandwidth_roof']}); "
                  f"ridge point {p['ridge_flop_per_byte']:.1f} FLOP/byte")
            if p.get("fma_gflops") is not None:
                print(f"  FMA probe: {p['fma_gflops']:.1f} GFLOP/s ({p['fma']})\n"
                      f"  stream probe: {p['stream_gbps']:.1f} GB/s ({p['stream']})\n"
                      f"  torch reference: {p['gemm_gflops']:.1f} GFLOP/s ({p['gemm']}), "
                      f"{p['copy_gbps']:.1f} GB/s ({p['copy']})")
            busy = p.get("others_cpu_share")
            if busy is not None and busy > runner.BUSY_FLAG:
                print(f"  !busy {100 * busy:.0f}%: other processes ran while the peak was measured, so it is low")
        return 0

    from .benchmarks import TABLES

    tables = _csv(args.table)
    bad = [t for t in tables if t not in TABLES]
    if bad:
        return _die(f"unknown table(s) {bad}; expected {list(TABLES)}")
    ops, modes, layouts = _csv(args.ops), _csv(args.modes), _csv(args.layouts)
    for name, vals, allowed in (("op", ops, runner.OPS), ("mode", modes, runner.MODES),
                                ("layout", layouts, runner.LAYOUTS)):
        bad = [v for v in vals if v not in allowed]
        if bad:
            return _die(f"unknown {name}(s) {bad}; expected {list(allowed)}")
    from . import backends as B

    backends = _csv(args.backends) if args.backends else [B.resolve(dev).name]
    for b in backends:
        if b not in B.registered():
            return _die(f"unknown backend {b!r}; expected one of {sorted(B.registered())}")
    if args.batch is not None and args.batch < 1:
        return _die("--batch must be >= 1")

    report = run_bench(tables, ops, modes, backends, dtypes, layouts, device, args.batch, args.quick,
                       args.filter, check=not args.no_check)
    if not report["rows"]:
        return _die("no rows selected (check --table, --ops and --filter)")
    print("\n".join(format_report(report)))

    out = Path(args.out) if args.out else _default_out(tables)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "bench.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nreport: {path}")
    if not args.no_charts:
        from .benchmarks.charts import write_charts

        for chart in write_charts(report, out):
            print(f"chart:  {chart}")
    return 0


def _default_out(tables: List[str]) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("bench-out") / f"{stamp}-{'+'.join(tables)}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = Path(f"{base}-{i}")
    return path


def run_bench(tables: List[str], ops: List[str], modes: List[str], backends: List[str], dtypes: List[str],
              layouts: List[str], device: str = "cpu", batch: Optional[int] = None, quick: bool = False,
              name_filter: Optional[str] = None, check: bool = True) -> Dict[str, Any]:
    """Times every (row, op, mode, layout, dtype) for torch and for each backend; returns the report
    dict (schema_version 1)."""
    import torch

    from . import backends as B
    from .benchmarks import TABLES
    from .benchmarks import runner as R

    R.prepare_device(device)
    timing = R.TimingConfig.quick() if quick else R.TimingConfig()
    busy_run = R.BusyMeter()
    peak = R.measure_peak(device, dtypes[0])
    rows: List[Dict[str, Any]] = []
    for table in tables:
        for shape in TABLES[table]:
            if batch is not None:
                shape = shape.with_batch(batch)
            if name_filter and name_filter not in shape.name:
                continue
            for op in R.ops_for(shape, ops):
                for mode in modes:
                    for dtype in dtypes:
                        for layout in layouts:
                            rows += _run_row(R, B, table, shape, op, mode, dtype, layout, device, backends,
                                             timing, peak, check)
    return {
        "schema_version": R.SCHEMA_VERSION,
        "kind": "fastconv-bench",
        "date": R.utc_now(),
        "device": R.device_info(device),
        "versions": R.versions(),
        "git_commit": R.git_commit(),
        "config": {"tables": tables, "ops": ops, "modes": modes, "backends": backends, "dtypes": dtypes,
                   "layouts": layouts, "device": device, "threads": torch.get_num_threads(), "batch": batch,
                   "quick": quick, "filter": name_filter, "warmup_s": timing.warmup_s, "target_s": timing.target_s,
                   "min_rounds": timing.min_rounds, "max_rounds": timing.max_rounds},
        "peak": peak,
        "ratio": R.RATIO_DEFINITION,
        "others_cpu_share": busy_run.others(),
        "rows": rows,
        "summary": summarize(rows),
    }


def _time(R, fn, timing, device):
    meter = R.BusyMeter()
    data = R.time_step(fn, timing, device)
    return {"median": statistics.median(data), "p20": R.quantile(data, 0.2), "p80": R.quantile(data, 0.8),
            "rounds": len(data), "busy": meter.others()}


def _run_row(R, B, table, shape, op, mode, dtype, layout, device, backends, timing, peak, check):
    import dataclasses

    work, unit, nbytes = R.work_of(op, shape, mode, dtype)
    base: Dict[str, Any] = {
        "table": table, "op": op, "mode": mode, "shape": shape.name,
        "shape_params": {k: v for k, v in dataclasses.asdict(shape).items() if k != "name"},
        "layout": layout, "dtype": dtype, "device": device, "unit": unit, "work": work, "bytes": nbytes,
        "intensity": work / nbytes if unit == "GFLOP/s" and nbytes else None,
    }
    torch_t, torch_note = None, None
    try:
        fn, _ = R.make_step(op, mode, shape, layout, "torch", dtype, device)
        torch_t = _time(R, fn, timing, device)
        del fn
    except Exception as exc:  # noqa: BLE001  (e.g. a dtype torch has no CPU kernel for)
        torch_note = f"torch: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    out = []
    for backend in backends:
        row = dict(base, backend=backend)
        ours, note = None, torch_note
        try:
            with B.use_backend(backend):
                fn, chk = R.make_step(op, mode, shape, layout, "fastconv", dtype, device)
                if check:
                    chk()
                ours = _time(R, fn, timing, device)
        except AssertionError as exc:
            note = f"MISMATCH vs torch: {str(exc).splitlines()[0][:120]}"
        except Exception as exc:  # noqa: BLE001
            kind = "not implemented" if R.not_implemented(exc) else type(exc).__name__
            note = f"fastconv {backend}: {kind}: {str(exc).splitlines()[0][:120]}"
        t_ours = ours["median"] if ours else None
        t_torch = torch_t["median"] if torch_t else None
        thr_ours = work / t_ours / 1e9 if t_ours else None
        thr_torch = work / t_torch / 1e9 if t_torch else None
        busy = [t["busy"] for t in (ours, torch_t) if t and t["busy"] is not None]
        row.update({
            "ours_ms": t_ours * 1e3 if t_ours else None,
            "ours_p20_ms": ours["p20"] * 1e3 if ours else None,
            "ours_p80_ms": ours["p80"] * 1e3 if ours else None,
            "ours_rounds": ours["rounds"] if ours else None,
            "torch_ms": t_torch * 1e3 if t_torch else None,
            "torch_p20_ms": torch_t["p20"] * 1e3 if torch_t else None,
            "torch_p80_ms": torch_t["p80"] * 1e3 if torch_t else None,
            "torch_rounds": torch_t["rounds"] if torch_t else None,
            "ours_throughput": thr_ours, "torch_throughput": thr_torch,
            "ours_pct_peak": R.pct_of_peak(thr_ours, unit, peak),
            "torch_pct_peak": R.pct_of_peak(thr_torch, unit, peak),
            "ratio": t_torch / t_ours if t_ours and t_torch else None,
            "others_cpu_share": max(busy) if busy else None,
            "note": note,
        })
        out.append(row)
    return out


def summarize(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    from .benchmarks.runner import geomean

    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["op"], r["mode"], r["dtype"], r["backend"]), []).append(r)
    return [{"op": op, "mode": mode, "dtype": dtype, "backend": backend, "rows": len(rs),
             "geomean_ratio": geomean([r["ratio"] for r in rs if r["ratio"]])}
            for (op, mode, dtype, backend), rs in groups.items()]


def _peak_line(peak: Dict[str, Any]) -> str:
    """The roofs %peak is taken against (native FMA / stream probes on the CPU), torch's for reference."""
    from .benchmarks.runner import peak_line

    if peak.get("fma_gflops") is not None or "compute_roof" not in peak:
        return peak_line(peak)
    return (f"measured peak: {peak['compute_gflops']:.1f} GFLOP/s ({peak['compute_roof']}), "
            f"{peak['bandwidth_gbps']:.1f} GB/s ({peak['bandwidth_roof']}); %peak = ours against it")


def format_report(report: Dict[str, Any]) -> List[str]:
    from .benchmarks.runner import BUSY_FLAG, fmt_num

    dev, cfg, peak = report["device"], report["config"], report["peak"]
    lines = [f"fastconv {report['versions']['fastconv']} vs torch {report['versions']['torch']} on "
             f"{dev['name']} ({cfg['device']}, {cfg['threads']} threads){', quick' if cfg['quick'] else ''}; "
             f"ratio = {report['ratio']}",
             _peak_line(peak)]
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for r in report["rows"]:
        groups.setdefault((r["op"], r["mode"], r["dtype"], r["backend"]), []).append(r)
    summary = {(s["op"], s["mode"], s["dtype"], s["backend"]): s for s in report["summary"]}
    flagged = False
    for key, rows in groups.items():
        op, mode, dtype, backend = key
        u = rows[0]["unit"]
        tu = "TFLOP/s" if u == "GFLOP/s" and cfg["device"] != "cpu" else u
        scale = 1e-3 if tu == "TFLOP/s" else 1.0
        head = (f"{'shape':<34} {'layout':<13} {'ours ms':>9} {'torch ms':>9} {'ours ' + tu:>13} "
                f"{'torch ' + tu:>14} {'%peak':>6} {'ratio':>6}")
        lines += ["", f"== {op}/{mode} {dtype} (fastconv backend {backend}) ==", head, "-" * len(head)]
        for r in rows:
            line = (f"{r['shape'][:34]:<34} {r['layout']:<13} {fmt_num(r['ours_ms'], 9, 3)} "
                    f"{fmt_num(r['torch_ms'], 9, 3)} "
                    f"{fmt_num(r['ours_throughput'] and r['ours_throughput'] * scale, 13, 2 if scale < 1 else 1)} "
                    f"{fmt_num(r['torch_throughput'] and r['torch_throughput'] * scale, 14, 2 if scale < 1 else 1)} "
                    f"{fmt_num(r['ours_pct_peak'], 6, 1)} {fmt_num(r['ratio'], 6, 2)}")
            if r["others_cpu_share"] is not None and r["others_cpu_share"] > BUSY_FLAG:
                line += f" !busy {100 * r['others_cpu_share']:.0f}%"
                flagged = True
            if r["note"]:
                line += f"  ({r['note'][:70]})"
            lines.append(line)
        g = summary.get(key, {}).get("geomean_ratio")
        lines.append(f"{'geomean ratio':<34} {'':<13} {'':>9} {'':>9} {'':>13} {'':>14} {'':>6} {fmt_num(g, 6, 2)}")
    if flagged:
        lines += ["", f"!busy N%: other processes used N% of the CPU time while that row was timed "
                      f"(> {100 * BUSY_FLAG:.0f}%); re-run those rows on a quiet machine"]
    return lines
