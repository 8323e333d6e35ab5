"""The sweep behind `fastconv bench` (front-end: fastconv.cli.bench): every (table row, op, mode, layout,
dtype) timed for torch and for each fastconv backend, in one process, with the check of our result
against torch's before timing; run_bench returns the report dict (schema: fastconv.benchmarks.report).
"""
from __future__ import annotations

import statistics
from typing import Any, Dict, List, Optional


def run_bench(tables: List[str], ops: List[str], modes: List[str], backends: List[str], dtypes: List[str],
              layouts: List[str], device: str = "cpu", batch: Optional[int] = None, quick: bool = False,
              name_filter: Optional[str] = None, check: bool = True) -> Dict[str, Any]:
    """Times every (row, op, mode, layout, dtype) for torch and for each backend; returns the report
    dict (schema_version 1)."""
    import torch

    from .. import backends as B
    from . import TABLES
    from . import runner as R

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
    from .runner import geomean

    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["op"], r["mode"], r["dtype"], r["backend"]), []).append(r)
    return [{"op": op, "mode": mode, "dtype": dtype, "backend": backend, "rows": len(rs),
             "geomean_ratio": geomean([r["ratio"] for r in rs if r["ratio"]])}
            for (op, mode, dtype, backend), rs in groups.items()]


def _peak_line(peak: Dict[str, Any]) -> str:
    """The roofs %peak is taken against (native FMA / stream probes on the CPU), torch's for reference."""
    from .runner import peak_line

    if peak.get("fma_gflops") is not None or "compute_roof" not in peak:
        return peak_line(peak)
    return (f"measured peak: {peak['compute_gflops']:.1f} GFLOP/s ({peak['compute_roof']}), "
            f"{peak['bandwidth_gbps']:.1f} GB/s ({peak['bandwidth_roof']}); %peak = ours against it")


def format_report(report: Dict[str, Any]) -> List[str]:
    from .runner import BUSY_FLAG, fmt_num

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
