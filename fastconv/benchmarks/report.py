"""The JSON report of a benchmark run, one schema for every producer, and its reader.

Written by `fastconv bench` (OUT/bench.json, kind "fastconv-bench"), the pytest-benchmark suites
(`pytest bench/ --benchmark-only --fastconv-report PATH`, kind "bench-suite") and the GPU-backend
suite (FASTCONV_GPU_BENCH_REPORT=PATH, kind "bench-gpu-backends"); read by `fastconv bench --compare`
(benchmarks.compare) and the charts (benchmarks.charts).

schema_version 2:
  schema_version    2
  kind              the producer (above)
  date              UTC, ISO 8601
  device            {type, name, cpu, cpu_count, cpu_isa; on CUDA also capability, memory_gib,
                    multiprocessors}  (runner.device_info)
  versions          {fastconv, torch, python, cuda, cudnn; the GPU suite adds triton}
  git_commit        the checkout's HEAD, or null
  config            how it ran; always device, threads, quick (few rounds: --quick, the suites'
                    short mode), backends, dtypes; then the producer's own (tables, ops, modes,
                    layouts, batch, filter, timing, short, tf32, autotune, backend_availability, ...)
  peak              the roofs %peak is taken against, for the first dtype (runner.measure_peak:
                    compute_gflops / compute_roof, bandwidth_gbps / bandwidth_roof, the native probes'
                    fma_* / stream_* on the CPU, torch's gemm / copy rates, others_cpu_share)
  peaks             {dtype: peak}, when rows of several dtypes were measured against their own peak
  ratio             "torch_time / fastconv_time (> 1: fastconv faster)"
  others_cpu_share  other processes' share of the CPUs over the whole run (0..1), or null
  rows              one object per (op, mode, shape, layout, dtype, backend): the fields of
                    records.BenchRecord -
                      op, mode, shape, layout, dtype, backend, device, table, shape_params,
                      unit ("GFLOP/s" or "GB/s": throughputs are always in these, also on a GPU),
                      work (FLOPs or bytes per call), bytes (minimum traffic), intensity (work / bytes,
                      GFLOP/s rows), ours_ms, ours_p20_ms, ours_p80_ms, ours_rounds, torch_ms,
                      torch_p20_ms, torch_p80_ms, torch_rounds, ours_throughput, torch_throughput,
                      ours_pct_peak, torch_pct_peak, ratio (torch_ms / ours_ms), others_cpu_share,
                      note (why a side has no time); the network benchmark's rows add count and path
                      (--breakdown layers: how many of the network's conv layers have this geometry,
                      the cpu backend's algorithm per pass) and compile_s (torch.compile's compile
                      time, excluded from ours_ms); absent in older files, read as null
  summary           per (op, mode, dtype, backend): rows, geomean_ratio, geomean_ratio_by_layout
  network_summary   only with network rows (op "network", benchmarks.networks): per (mode, batch, layout,
                    dtype, variant, baseline): networks, geomean_ratio - baseline "torch": torch eager
                    time / the variant's; "compile": torch.compile's time / the variant's
  breakdown         only from `fastconv bench --breakdown NET`: network, batch, image_size, layouts,
                    conv_layers, geometries, profile {layout: {mode: {variant: {category: ms}}}}:
                    torch.profiler self time per op category (conv, batch_norm, ...) of one step, and
                    notes (a step that could not be profiled, and why)

Older files, read by read_records into the same rows:
  - schema_version 1, `fastconv bench`: the same row fields (no geomean_ratio_by_layout in summary);
  - the suites' files before schema 2 (no schema_version): "tables": {"op/mode[/dtype]": {"unit", "rows"}}
    with fastconv_ms, fastconv_p20_ms, fastconv_p80_ms, fastconv_throughput, fastconv_pct_peak (= ours_*),
    torch_*, intensity (filled from the shape tables when missing), ratio, others_cpu_share, note, and
    the backend at the top level;
  - the GPU-backend suite's files before schema 2: "tables": {"backend/op/mode/dtype": [rows]} with
    cudnn_ms (= torch_ms), ours_ms, ours_throughput / cudnn_throughput in the row's unit (TFLOP/s or
    GB/s), pct_peak (= ours_pct_peak), ratio.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from . import runner
from .records import (NETWORK_OP, RATIO_DEFINITION, WINOGRAD_NOTE, BenchRecord, format_records, network_summary,
                      summarize)

SCHEMA_VERSION = 2
KINDS = ("fastconv-bench", "bench-suite", "bench-gpu-backends")


def make_report(kind: str, records: Sequence[BenchRecord], device: str, config: Dict[str, Any],
                peak: Dict[str, Any], *, peaks: Optional[Dict[str, Dict[str, Any]]] = None,
                versions: Optional[Dict[str, Any]] = None, others_cpu_share: Optional[float] = None,
                extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The report dict (schema_version 2) of a run's records; config gets `device`; `extra`: the
    producer's own top-level sections (the network benchmark's breakdown)."""
    if kind not in KINDS:
        raise ValueError(f"report kind {kind!r}: expected one of {KINDS}")
    report: Dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "kind": kind, "date": runner.utc_now(),
        "device": runner.device_info(device), "versions": versions or runner.versions(),
        "git_commit": runner.git_commit(), "config": dict(config, device=device), "peak": peak,
    }
    if peaks:
        report["peaks"] = peaks
    report.update(ratio=RATIO_DEFINITION, others_cpu_share=others_cpu_share,
                  rows=[r.to_dict() for r in records], summary=summarize(records))
    if any(r.op == NETWORK_OP for r in records):
        report["network_summary"] = network_summary(records)
    report.update(extra or {})
    return report


def write_report(report: Dict[str, Any], path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def load_report(path) -> Dict[str, Any]:
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or not ("rows" in data or "tables" in data):
        raise ValueError(f"{path}: not a fastconv benchmark report (no 'rows' or 'tables')")
    return data


def read_records(report: Dict[str, Any]) -> List[BenchRecord]:
    """The rows of a report of any schema as BenchRecords (see the module docstring)."""
    if "rows" in report:
        return [BenchRecord.from_dict(r) for r in report["rows"]]
    if "tables" not in report:
        raise ValueError("not a fastconv benchmark report (no 'rows' or 'tables')")
    out: List[BenchRecord] = []
    for name, table in report["tables"].items():
        if isinstance(table, list):  # the GPU-backend suite: "backend/op/mode/dtype": [rows]
            out += [_gpu_v1_row(name, r) for r in table]
        else:
            out += [_suite_v1_row(report, name, table.get("unit", "GFLOP/s"), r) for r in table["rows"]]
    return out


def _suite_v1_row(report: Dict[str, Any], name: str, unit: str, r: Dict[str, Any]) -> BenchRecord:
    parts = name.split("/")
    op, mode = parts[0], parts[1] if len(parts) > 1 else "?"
    dtype = parts[2] if len(parts) > 2 else "float32"
    intensity = r.get("intensity")
    if intensity is None and unit == "GFLOP/s":
        intensity = _intensity_from_table(op, mode, r["shape"], dtype)
    device = report.get("device")
    return BenchRecord(
        op=op, mode=mode, shape=r["shape"], layout=r["layout"], dtype=dtype, backend=report.get("backend", "?"),
        device=device if isinstance(device, str) else "cpu", unit=unit, intensity=intensity,
        ours_ms=r.get("fastconv_ms"), ours_p20_ms=r.get("fastconv_p20_ms"), ours_p80_ms=r.get("fastconv_p80_ms"),
        torch_ms=r.get("torch_ms"), torch_p20_ms=r.get("torch_p20_ms"), torch_p80_ms=r.get("torch_p80_ms"),
        ours_throughput=r.get("fastconv_throughput"), torch_throughput=r.get("torch_throughput"),
        ours_pct_peak=r.get("fastconv_pct_peak"), torch_pct_peak=r.get("torch_pct_peak"), ratio=r.get("ratio"),
        others_cpu_share=r.get("others_cpu_share"), note=r.get("note"))


def _gpu_v1_row(name: str, r: Dict[str, Any]) -> BenchRecord:
    backend, op, mode, dtype = (name.split("/") + ["?"] * 4)[:4]
    scale = 1e3 if r.get("unit") == "TFLOP/s" else 1.0  # to GFLOP/s
    thr = {k: r[k] * scale if r.get(k) is not None else None for k in ("ours_throughput", "cudnn_throughput")}
    return BenchRecord(
        op=op, mode=mode, shape=r["shape"], layout=r["layout"], dtype=dtype, backend=backend, device="cuda",
        unit="GB/s" if r.get("unit") == "GB/s" else "GFLOP/s", ours_ms=r.get("ours_ms"), torch_ms=r.get("cudnn_ms"),
        ours_throughput=thr["ours_throughput"], torch_throughput=thr["cudnn_throughput"],
        ours_pct_peak=r.get("pct_peak"), ratio=r.get("ratio"))


def _intensity_from_table(op: str, mode: str, shape_name: str, dtype: str) -> Optional[float]:
    """FLOP per byte of a conv row of an older report that did not record it, found by shape name in
    the shape tables (short-mode rows are named 'name@nN')."""
    from .tables import TABLES, ConvShape

    if op not in runner.CONV_OPS:
        return None
    base, _, batch = shape_name.partition("@n")
    for shapes in TABLES.values():
        for s in shapes:
            if isinstance(s, ConvShape) and s.name == base:
                if batch.isdigit():
                    s = s.with_batch(int(batch))
                try:
                    return runner.conv_flops(s, mode) / runner.conv_bytes(s, mode, runner.itemsize(dtype))
                except KeyError:
                    return None
    return None


def format_report(report: Dict[str, Any]) -> List[str]:
    """What every producer prints: who ran against what, where; the measured peak; the Winograd note
    for the cpu backend's GFLOP/s; the tables (records.format_records)."""
    versions, dev, cfg = report.get("versions", {}), report.get("device", {}), report.get("config", {})
    records = read_records(report)
    lines = [f"fastconv {versions.get('fastconv', '?')} vs torch {versions.get('torch', '?')} on "
             f"{dev.get('name', '?') if isinstance(dev, dict) else dev} ({cfg.get('device', '?')}, "
             f"{cfg.get('threads', '?')} threads){', quick' if cfg.get('quick') else ''}; "
             f"ratio = {report.get('ratio', RATIO_DEFINITION)}"]
    peaks = report.get("peaks") or {}
    if len(peaks) > 1:
        lines += [f"{dtype}: {runner.peak_line(p)}" for dtype, p in peaks.items()]
    elif report.get("peak"):
        lines.append(runner.peak_line(report["peak"]))
    if any(r.unit == "GFLOP/s" and r.backend == "cpu" for r in records):
        lines.append(WINOGRAD_NOTE)
    return lines + format_records(records) + format_breakdown_profile(report.get("breakdown"))


def format_breakdown_profile(breakdown: Optional[Dict[str, Any]]) -> List[str]:
    """Where a network's eager time goes: torch.profiler self time per op category, per layout, mode and
    variant (the `breakdown` section of a --breakdown report), largest category first."""
    if not breakdown or not breakdown.get("profile"):
        return []
    lines = ["", f"== {breakdown.get('network')} at batch {breakdown.get('batch')}, {breakdown.get('image_size')} px: "
                 f"self time per op category (torch.profiler, one step) =="]
    for layout, modes in breakdown["profile"].items():
        for mode, variants in modes.items():
            for variant, cats in variants.items():
                total = sum(cats.values())
                if total <= 0:
                    continue
                top = sorted(cats.items(), key=lambda kv: -kv[1])
                parts = ", ".join(f"{k} {v:.1f} ms ({100 * v / total:.0f}%)" for k, v in top if v / total >= 0.005)
                lines.append(f"{mode:<6} {layout:<13} {variant:<9} {total:9.1f} ms: {parts}")
    return lines + [f"not profiled: {n}" for n in breakdown.get("notes") or ()]
