"""The pieces of the benchmark harness that bench/conftest.py and the suites share: the benchmark case,
its timing record, the session collector that pairs fastconv with torch, the ratio tables, the
measured machine peak, a CPU-contention meter and the machine/version facts for the JSON report."""
from __future__ import annotations

import dataclasses
import math
import os
import platform
import subprocess
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

# A benchmark during which other processes used more than this share of the machine's CPU time is
# flagged: on a 2-core machine one busy neighbour halves the cores an OpenMP kernel can use.
BUSY_FLAG = 0.10


@dataclasses.dataclass
class Case:
    op: str          # conv2d, conv2d_relu, max_pool2d, avg_pool2d
    mode: str        # fwd, fwdbwd, bwd
    shape: Any       # fastconv.benchmarks.ConvShape or PoolShape
    layout: str      # nchw or channels_last
    impl: str        # torch or fastconv
    work: float      # FLOPs or bytes per call
    unit: str        # "GFLOP/s" or "GB/s"

    @property
    def key(self):
        return (self.op, self.mode, self.shape.name, self.layout)

    @property
    def group(self) -> str:
        return f"{self.op}/{self.mode}/{self.shape.name}/{self.layout}"


@dataclasses.dataclass
class Record:
    case: Case
    median: float
    p20: float
    p80: float
    rounds: int
    busy: Optional[float]          # other processes' share of the CPUs while this was timed
    extra_info: Dict[str, Any]     # the benchmark's extra_info (the ratio is added once both ran)

    @property
    def throughput(self) -> float:
        return self.case.work / self.median / 1e9

    def pct_peak(self, peak: Dict[str, float]) -> Optional[float]:
        ref = peak.get("sgemm_gflops" if self.case.unit == "GFLOP/s" else "copy_gbps")
        return 100.0 * self.throughput / ref if ref else None


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


# ----------------------------------------------------------------------------------------------------
# Machine peak, measured once: torch's SGEMM (oneDNN/MKL) for compute, a 128 MiB copy for memory.

_PEAK: Dict[str, float] = {}


def machine_peak() -> Dict[str, float]:
    if not _PEAK:
        n = 2048
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        best = min(time_once(lambda: torch.mm(a, b)) for _ in range(5))
        _PEAK["sgemm_gflops"] = 2 * n ** 3 / best / 1e9
        src = torch.randn(32 * 1024 * 1024)  # 128 MiB, far beyond the caches
        dst = torch.empty_like(src)
        dst.copy_(src)
        best = min(time_once(lambda: dst.copy_(src)) for _ in range(5))
        _PEAK["copy_gbps"] = 2 * src.numel() * 4 / best / 1e9  # read + write
    return _PEAK


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
# Collector and ratio tables


class Collector:
    def __init__(self):
        self.rows: "OrderedDict[tuple, Dict[str, Any]]" = OrderedDict()

    def _row(self, case: Case) -> Dict[str, Any]:
        return self.rows.setdefault(case.key, {"case": case, "torch": None, "fastconv": None, "skip": None})

    def skip(self, case: Case, why: str) -> None:
        self._row(case)["skip"] = why

    def add(self, rec: Record) -> None:
        row = self._row(rec.case)
        row[rec.case.impl] = rec
        ours, base = row["fastconv"], row["torch"]
        if ours is not None and base is not None:
            ratio = base.median / ours.median
            ours.extra_info["ratio_vs_torch"] = ratio
            base.extra_info["ratio_vs_torch"] = ratio

    def tables(self, peak: Dict[str, float]) -> "OrderedDict[str, Dict[str, Any]]":
        out: "OrderedDict[str, Dict[str, Any]]" = OrderedDict()
        for (op, mode, _, _), row in self.rows.items():
            t = out.setdefault(f"{op}/{mode}", {"unit": row["case"].unit, "rows": [], "geomean_ratio": None})
            ours, base = row["fastconv"], row["torch"]
            busy = [r.busy for r in (ours, base) if r is not None and r.busy is not None]
            t["rows"].append({
                "shape": row["case"].shape.name,
                "layout": row["case"].layout,
                "fastconv_ms": ours.median * 1e3 if ours else None,
                "fastconv_p20_ms": ours.p20 * 1e3 if ours else None,
                "fastconv_p80_ms": ours.p80 * 1e3 if ours else None,
                "torch_ms": base.median * 1e3 if base else None,
                "torch_p20_ms": base.p20 * 1e3 if base else None,
                "torch_p80_ms": base.p80 * 1e3 if base else None,
                "fastconv_throughput": ours.throughput if ours else None,
                "torch_throughput": base.throughput if base else None,
                "fastconv_pct_peak": ours.pct_peak(peak) if ours else None,
                "ratio": base.median / ours.median if ours and base else None,
                "others_cpu_share": max(busy) if busy else None,
                "note": row["skip"],
            })
        for t in out.values():
            ratios = [r["ratio"] for r in t["rows"] if r["ratio"]]
            t["geomean_ratio"] = math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else None
        return out


def _fmt(v, width: int, prec: int) -> str:
    return format("n/a" if v is None else f"{v:.{prec}f}", f">{width}")


def format_tables(tables, backend: str, threads: int, peak: Dict[str, float]) -> List[str]:
    lines = [f"fastconv ({backend} backend) vs torch {torch.__version__}, float32, {threads} threads; "
             f"ratio = torch_time / fastconv_time (> 1: fastconv faster)"]
    if peak:
        lines.append(f"measured peak: torch SGEMM {peak['sgemm_gflops']:.1f} GFLOP/s, copy "
                     f"{peak['copy_gbps']:.1f} GB/s (%peak: ours against it)")
    flagged = False
    for name, t in tables.items():
        u = t["unit"]
        head = (f"{'shape':<26} {'layout':<13} {'ours ms':>9} {'torch ms':>9} {'ours ' + u:>13} "
                f"{'torch ' + u:>14} {'%peak':>6} {'ratio':>7}")
        lines += ["", f"== {name} ==", head, "-" * len(head)]
        for r in t["rows"]:
            line = (f"{r['shape']:<26} {r['layout']:<13} {_fmt(r['fastconv_ms'], 9, 3)} "
                    f"{_fmt(r['torch_ms'], 9, 3)} {_fmt(r['fastconv_throughput'], 13, 1)} "
                    f"{_fmt(r['torch_throughput'], 14, 1)} {_fmt(r['fastconv_pct_peak'], 6, 1)} "
                    f"{_fmt(r['ratio'], 7, 2)}")
            if r["others_cpu_share"] is not None and r["others_cpu_share"] > BUSY_FLAG:
                line += f" !busy {100 * r['others_cpu_share']:.0f}%"
                flagged = True
            if r["note"] and r["ratio"] is None:
                line += f"   ({r['note'][:60]})"
            lines.append(line)
        lines.append(f"{'geomean ratio':<26} {'':<13} {'':>9} {'':>9} {'':>13} {'':>14} {'':>6} "
                     f"{_fmt(t['geomean_ratio'], 7, 2)}")
    if flagged:
        lines += ["", f"!busy N%: other processes used N% of the machine's CPU time while that row was "
                      f"timed (> {100 * BUSY_FLAG:.0f}%); re-run those rows on a quiet machine"]
    return lines


# ----------------------------------------------------------------------------------------------------
# Machine and versions for the report


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
        root = Path(__file__).resolve().parent.parent
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
