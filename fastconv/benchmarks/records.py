"""One benchmark row, and the one table that prints rows, for every producer: `fastconv bench`
(benchmarks.sweep), the pytest-benchmark suites (bench/conftest.py) and the GPU-backend suite
(bench/test_gpu_backends.py).

- Timing: one side's measurement (a fastconv backend, or the torch baseline): median and 20/80 %
  quantiles of the per-call time in seconds, rounds, and other processes' CPU share while it ran.
- BenchRecord: a row: what ran (op, mode, shape, layout, dtype, fastconv backend, device), both
  sides' times, the work per call, throughputs, % of the measured peak and ratio. Its fields are the
  JSON row of every report (fastconv.benchmarks.report documents them).
- Collector: pairs the torch baseline's Timing with each backend's, for producers that time the two
  in separate tests (the suites); records() then gives the rows.
- summarize / format_records: geometric means of the ratios, and the table printer.
- network_summary: the whole-network rows (op "network", benchmarks.networks) as geometric means over
  the networks per mode, batch and layout, of each variant against torch eager and of fastconv against
  torch.compile.

The baseline is torch's own kernels: oneDNN (mkldnn) on CPU, cuDNN on CUDA (cudnn.benchmark on).
Ratio = torch time / fastconv time: > 1 means fastconv is faster.
"""
from __future__ import annotations

import dataclasses
import statistics
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from .runner import BUSY_FLAG, MODES, OPS, Case, fmt_num, geomean, pct_of_peak, quantile, work_of
from .tables import ConvShape, PoolShape

RATIO_DEFINITION = "torch_time / fastconv_time (> 1: fastconv faster)"
BASELINE = "torch"  # the Collector's name for the baseline side
NETWORK_OP = "network"  # the op of a whole-network row (benchmarks.networks); its backend is the variant
COMPILE = "compile"     # the torch.compile variant of a network: a second baseline for fastconv's

Peak = Union[Dict[str, Any], Callable[[str], Dict[str, Any]]]  # one peak, or dtype -> its peak


@dataclasses.dataclass(frozen=True)
class Timing:
    median: float            # seconds per call
    p20: float
    p80: float
    rounds: int
    busy: Optional[float] = None   # other processes' share of the CPUs while this was timed (0..1)

    @classmethod
    def of(cls, seconds: Sequence[float], busy: Optional[float] = None) -> "Timing":
        data = sorted(seconds)
        return cls(statistics.median(data), quantile(data, 0.2), quantile(data, 0.8), len(data), busy)


@dataclasses.dataclass
class BenchRecord:
    op: str                                  # conv2d, conv2d_relu, max_pool2d, avg_pool2d, network, or a model (bench/)
    mode: str                                # fwd, bwd, fwdbwd (GPU suite: also dgrad, wgrad; train_step;
                                             # network: infer, train)
    shape: str                               # the shape's name in its table ('@nN': batch overridden;
                                             # network: '<net>@b<batch>')
    layout: str                              # nchw or channels_last
    dtype: str = "float32"
    backend: str = "?"                       # the fastconv backend measured against torch (network rows:
                                             # the variant - fastconv, fastconv-opt, compile)
    device: str = "cpu"                      # cpu, cuda, cuda:N
    table: Optional[str] = None              # the shape table (fastconv.benchmarks.TABLES) it came from
    shape_params: Optional[Dict[str, Any]] = None   # the shape's fields (N, C, H, W, K, R, S, stride, ...)
    unit: str = "GFLOP/s"                    # of the throughputs: GFLOP/s (convolution) or GB/s (pooling)
    work: Optional[float] = None             # FLOPs or bytes per call
    bytes: Optional[float] = None            # minimum traffic per call
    intensity: Optional[float] = None        # work / bytes for GFLOP/s rows (the roofline's x)
    ours_ms: Optional[float] = None          # fastconv's median ms per call
    ours_p20_ms: Optional[float] = None
    ours_p80_ms: Optional[float] = None
    ours_rounds: Optional[int] = None
    torch_ms: Optional[float] = None         # the baseline's
    torch_p20_ms: Optional[float] = None
    torch_p80_ms: Optional[float] = None
    torch_rounds: Optional[int] = None
    ours_throughput: Optional[float] = None  # work / median, in `unit`
    torch_throughput: Optional[float] = None
    ours_pct_peak: Optional[float] = None    # 100 * throughput / the measured roof (compute or bandwidth)
    torch_pct_peak: Optional[float] = None
    ratio: Optional[float] = None            # torch_ms / ours_ms (> 1: fastconv faster)
    others_cpu_share: Optional[float] = None  # the larger of both sides' busy share
    note: Optional[str] = None               # why a side has no time (not implemented, mismatch, error)
    count: Optional[int] = None              # a network's conv layers of this geometry (--breakdown rows)
    path: Optional[str] = None               # the cpu backend's algorithm per pass (--breakdown rows)
    compile_s: Optional[float] = None        # one-time setup excluded from the times (torch.compile's compile)

    @property
    def busy(self) -> bool:
        """Other processes used more than BUSY_FLAG of the CPUs while this row was timed."""
        return self.others_cpu_share is not None and self.others_cpu_share > BUSY_FLAG

    @classmethod
    def measured(cls, op: str, mode: str, shape: Any, layout: str, *, ours: Optional[Timing],
                 base: Optional[Timing], work: Optional[float], unit: str, peak: Dict[str, Any],
                 dtype: str = "float32", backend: str = "?", device: str = "cpu", table: Optional[str] = None,
                 nbytes: Optional[float] = None, note: Optional[str] = None, count: Optional[int] = None,
                 path: Optional[str] = None, compile_s: Optional[float] = None) -> "BenchRecord":
        """The row of fastconv's Timing (ours) and torch's (base), either of them None when it did not
        run; `shape` is a shape dataclass (or its name)."""
        params = None
        if dataclasses.is_dataclass(shape):
            params = {k: v for k, v in dataclasses.asdict(shape).items() if k != "name"}
        thr = {side: work / t.median / 1e9 if t and work else None for side, t in (("ours", ours), ("torch", base))}
        busy = [t.busy for t in (ours, base) if t is not None and t.busy is not None]
        return cls(
            op=op, mode=mode, shape=shape if isinstance(shape, str) else shape.name, layout=layout, dtype=dtype,
            backend=backend, device=device, table=table, shape_params=params, unit=unit,
            work=float(work) if work is not None else None, bytes=float(nbytes) if nbytes is not None else None,
            intensity=work / nbytes if unit == "GFLOP/s" and work and nbytes else None,
            ours_ms=ours.median * 1e3 if ours else None, ours_p20_ms=ours.p20 * 1e3 if ours else None,
            ours_p80_ms=ours.p80 * 1e3 if ours else None, ours_rounds=ours.rounds if ours else None,
            torch_ms=base.median * 1e3 if base else None, torch_p20_ms=base.p20 * 1e3 if base else None,
            torch_p80_ms=base.p80 * 1e3 if base else None, torch_rounds=base.rounds if base else None,
            ours_throughput=thr["ours"], torch_throughput=thr["torch"],
            ours_pct_peak=pct_of_peak(thr["ours"], unit, peak), torch_pct_peak=pct_of_peak(thr["torch"], unit, peak),
            ratio=base.median / ours.median if ours and base else None,
            others_cpu_share=max(busy) if busy else None, note=note, count=count, path=path, compile_s=compile_s)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "BenchRecord":
        """A row of a schema 1 or 2 report (unknown keys ignored, missing ones None)."""
        missing = [k for k in ("op", "mode", "shape", "layout") if k not in d]
        if missing:
            raise ValueError(f"benchmark row without {', '.join(missing)}: {d}")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _bytes_of(case: Case) -> Optional[float]:
    """Minimum traffic per call of a shape-table row; None for what has no traffic model (a whole
    model, the GPU suite's dgrad / wgrad alone)."""
    if case.op in OPS and case.mode in MODES and isinstance(case.shape, (ConvShape, PoolShape)):
        return work_of(case.op, case.shape, case.mode, case.dtype)[2]
    return None


class Collector:
    """The rows of a suite whose torch baseline and fastconv backends are timed in separate tests:
    add() each Timing under its side's name (BASELINE or the backend's), skip() a backend that could
    not run a case; records() pairs them, one row per case and backend."""

    def __init__(self, backends: Sequence[str] = ()):
        self.backends: List[str] = list(backends)
        self._default = set(backends)
        self.rows: "OrderedDict[tuple, Dict[str, Any]]" = OrderedDict()

    def _row(self, case: Case) -> Dict[str, Any]:
        return self.rows.setdefault(case.key, {"case": case, "times": {}, "notes": {}, "infos": {}})

    def _see(self, side: str) -> None:
        if side != BASELINE and side not in self.backends:
            self.backends.append(side)

    def skip(self, case: Case, why: str, backend: str) -> None:
        self._see(backend)
        self._row(case)["notes"][backend] = why

    def add(self, case: Case, timing: Timing, side: str, extra_info: Optional[Dict[str, Any]] = None) -> None:
        """Records one side's Timing; once a backend and the baseline both ran, their pytest-benchmark
        extra_info get ratio_vs_torch."""
        self._see(side)
        row = self._row(case)
        row["times"][side] = timing
        if extra_info is not None:
            row["infos"][side] = extra_info
        base = row["times"].get(BASELINE)
        for name, t in row["times"].items():
            if name != BASELINE and base is not None:
                for info in (row["infos"].get(name), row["infos"].get(BASELINE)):
                    if info is not None:
                        info["ratio_vs_torch"] = base.median / t.median

    def records(self, peak: Peak) -> List[BenchRecord]:
        """One row per case and backend, for the backends that ran (or were skipped) on some case of
        that op - the network suite's variants (fastconv, compile) get no rows on the op suites' cases,
        nor the op suites' backend on a network - or, for an op that no backend ran on (every check
        failed), the constructor's backends, whose rows then show n/a."""
        peak_of = peak if callable(peak) else (lambda _dtype: peak)
        used: Dict[str, set] = {}
        for row in self.rows.values():
            sides = (set(row["times"]) | set(row["notes"])) - {BASELINE}
            used.setdefault(row["case"].op, set()).update(sides)
        out = []
        for row in self.rows.values():
            case: Case = row["case"]
            for backend in self.backends:
                if backend not in (used[case.op] or self._default):
                    continue
                out.append(BenchRecord.measured(
                    case.op, case.mode, case.shape, case.layout, ours=row["times"].get(backend),
                    base=row["times"].get(BASELINE), work=case.work, unit=case.unit, peak=peak_of(case.dtype),
                    dtype=case.dtype, backend=backend, device=case.device, table=case.table,
                    nbytes=_bytes_of(case), note=row["notes"].get(backend)))
        return out


def _groups(records: Sequence[BenchRecord]) -> "OrderedDict[tuple, List[BenchRecord]]":
    groups: "OrderedDict[tuple, List[BenchRecord]]" = OrderedDict()
    for r in records:
        groups.setdefault((r.op, r.mode, r.dtype, r.backend), []).append(r)
    return groups


def _layout_geomeans(rows: Sequence[BenchRecord]) -> Dict[str, Optional[float]]:
    layouts = list(OrderedDict.fromkeys(r.layout for r in rows))
    return {lay: geomean([r.ratio for r in rows if r.layout == lay]) for lay in layouts}


def summarize(records: Sequence[BenchRecord]) -> List[Dict[str, Any]]:
    """Per (op, mode, dtype, backend): the number of rows, the geometric mean of the ratios, and the
    geometric mean per layout."""
    return [{"op": op, "mode": mode, "dtype": dtype, "backend": backend, "rows": len(rows),
             "geomean_ratio": geomean([r.ratio for r in rows]),
             "geomean_ratio_by_layout": _layout_geomeans(rows)}
            for (op, mode, dtype, backend), rows in _groups(records).items()]


WINOGRAD_NOTE = ("GFLOP/s = 2*N*K*P*Q*C*R*S/groups / time (direct convolution's count, for every algorithm): "
                 "the cpu backend's Winograd F(4x4,3x3) layers (3x3, stride 1, float32) do ~1/4 of those "
                 "multiplies, so their effective GFLOP/s can exceed the FMA peak")
SHAPE_WIDTH = 34


def _share_totals(rows: Sequence[BenchRecord]) -> Dict[str, float]:
    """Per layout: the sum of count x torch time over a breakdown table's rows."""
    totals: Dict[str, float] = {}
    for r in rows:
        if r.count and r.torch_ms:
            totals[r.layout] = totals.get(r.layout, 0.0) + r.count * r.torch_ms
    return totals


def _weighted_lines(rows: Sequence[BenchRecord]) -> List[str]:
    """A breakdown table's totals per layout: every layer counted as often as the network has it."""
    out = []
    for lay in OrderedDict.fromkeys(r.layout for r in rows):
        both = [r for r in rows if r.layout == lay and r.count and r.torch_ms and r.ours_ms]
        if not both:
            continue
        t = sum(r.count * r.torch_ms for r in both)
        o = sum(r.count * r.ours_ms for r in both)
        out.append(f"{'all ' + str(sum(r.count for r in both)) + ' layers x count':<{SHAPE_WIDTH}} {lay:<13} "
                   f"torch {t:.3f} ms, ours {o:.3f} ms: time-weighted ratio {t / o:.2f}")
    return out


def format_records(records: Sequence[BenchRecord]) -> List[str]:
    """One table per (op, mode, dtype, backend): median ms of both sides, their throughput (TFLOP/s on
    a GPU), fastconv's % of peak, the ratio; then the geometric mean of the ratios (and per layout when
    the table has several). Rows timed while other processes were busy are flagged. A network's layer
    breakdown (rows with a count) adds how many layers share the geometry, their share of the torch
    conv time and the cpu backend's algorithm, and closes with time-weighted totals; whole-network rows
    (op "network", backend = the variant) are followed by network_summary's geometric means."""
    lines: List[str] = []
    flagged = False
    for (op, mode, dtype, backend), rows in _groups(records).items():
        unit = rows[0].unit
        tera = unit == "GFLOP/s" and rows[0].device != "cpu"
        tu, scale, prec = ("TFLOP/s", 1e-3, 2) if tera else (unit, 1.0, 1)
        counted = any(r.count is not None for r in rows)
        totals = _share_totals(rows) if counted else {}
        count_head = f" {'n':>3} {'share':>6}" if counted else ""
        head = (f"{'shape':<{SHAPE_WIDTH}} {'layout':<13}{count_head} "
                f"{'ours ms':>9} {'torch ms':>9} {'ours ' + tu:>13} "
                f"{'torch ' + tu:>14} {'%peak':>6} {'ratio':>6}{'  path' if counted else ''}")
        if op == NETWORK_OP:
            title = f"== {op}/{mode} {dtype} ({backend} vs torch eager) =="
        else:
            where = f", {rows[0].table}" if counted and rows[0].table else ""
            title = f"== {op}/{mode} {dtype} (fastconv backend {backend}{where}) =="
        lines += ["", title, head, "-" * len(head)]
        for r in rows:
            extra = ""
            if counted:
                share = (100 * r.count * r.torch_ms / totals[r.layout]
                         if r.count and r.torch_ms and totals.get(r.layout) else None)
                extra = f" {fmt_num(r.count, 3, 0)} {fmt_num(share, 5, 1)}%"
            line = (f"{r.shape[:SHAPE_WIDTH]:<{SHAPE_WIDTH}} {r.layout:<13}{extra} {fmt_num(r.ours_ms, 9, 3)} "
                    f"{fmt_num(r.torch_ms, 9, 3)} "
                    f"{fmt_num(r.ours_throughput and r.ours_throughput * scale, 13, prec)} "
                    f"{fmt_num(r.torch_throughput and r.torch_throughput * scale, 14, prec)} "
                    f"{fmt_num(r.ours_pct_peak, 6, 1)} {fmt_num(r.ratio, 6, 2)}")
            if counted and r.path:
                line += f"  {r.path}"
            if r.compile_s is not None:
                line += f"  (compile {r.compile_s:.1f} s)"
            if r.busy:
                line += f" !busy {100 * r.others_cpu_share:.0f}%"
                flagged = True
            if r.note:
                line += f"  ({r.note[:70]})"
            lines.append(line)
        pad = f" {'':>3} {'':>6}" if counted else ""
        line = (f"{'geomean ratio':<{SHAPE_WIDTH}} {'':<13}{pad} {'':>9} {'':>9} {'':>13} {'':>14} {'':>6} "
                f"{fmt_num(geomean([r.ratio for r in rows]), 6, 2)}")
        by_layout = _layout_geomeans(rows)
        if len(by_layout) > 1:
            line += "  (" + ", ".join(f"{lay} {fmt_num(g, 0, 2)}" for lay, g in by_layout.items()) + ")"
        lines.append(line)
        if counted:
            lines += _weighted_lines(rows)
    lines += format_network_summary(network_summary(records))
    if flagged:
        lines += ["", f"!busy N%: other processes used N% of the CPU time while that row was timed "
                      f"(> {100 * BUSY_FLAG:.0f}%); re-run those rows on a quiet machine"]
    return lines


def _batch_of(r: BenchRecord) -> Optional[int]:
    if r.shape_params and r.shape_params.get("batch") is not None:
        return int(r.shape_params["batch"])
    _, _, tail = r.shape.partition("@b")
    digits = tail.split("@")[0]
    return int(digits) if digits.isdigit() else None


def network_summary(records: Sequence[BenchRecord]) -> List[Dict[str, Any]]:
    """Whole-network rows (op "network") per (mode, batch, layout, dtype): for each variant the geometric
    mean over the networks of its ratio to torch eager (baseline "torch"), and for each non-compile
    variant that of compile_time / its time (baseline "compile": > 1, faster than torch.compile), over
    the networks where both ran. Empty without network rows."""
    rows = [r for r in records if r.op == NETWORK_OP]
    groups: "OrderedDict[tuple, List[BenchRecord]]" = OrderedDict()
    for r in rows:
        groups.setdefault((r.mode, _batch_of(r), r.layout, r.dtype), []).append(r)
    first = {k: i for i, k in enumerate(OrderedDict.fromkeys(x for r in rows for x in (r.mode, r.layout, r.dtype)))}
    keys = sorted(groups, key=lambda k: (first[k[0]], k[1] or 0, first[k[3]], first[k[2]]))
    out: List[Dict[str, Any]] = []
    for (mode, batch, layout, dtype) in keys:
        grp = groups[(mode, batch, layout, dtype)]
        variants = list(OrderedDict.fromkeys(r.backend for r in grp))
        compiled = {r.shape: r.ours_ms for r in grp if r.backend == COMPILE and r.ours_ms}
        for v in variants:
            mine = [r for r in grp if r.backend == v]
            ratios = [r.ratio for r in mine if r.ratio]
            out.append({"mode": mode, "batch": batch, "layout": layout, "dtype": dtype, "variant": v,
                        "baseline": BASELINE, "networks": len(ratios), "geomean_ratio": geomean(ratios)})
            if v != COMPILE and compiled:
                vs = [compiled[r.shape] / r.ours_ms for r in mine if r.ours_ms and r.shape in compiled]
                out.append({"mode": mode, "batch": batch, "layout": layout, "dtype": dtype, "variant": v,
                            "baseline": COMPILE, "networks": len(vs), "geomean_ratio": geomean(vs)})
    return out


def format_network_summary(summary: Sequence[Dict[str, Any]]) -> List[str]:
    """network_summary as one table: a row per mode, batch, layout (dtype when not float32), a column
    per variant and baseline: 'fastconv vs torch' = geomean of torch_time / fastconv_time."""
    if not summary:
        return []
    cols = list(OrderedDict.fromkeys((s["variant"], s["baseline"]) for s in summary))
    names = [f"{v} vs {b}" for v, b in cols]
    width = max(14, *(len(n) for n in names))
    head = f"{'mode':<6} {'batch':>5} {'layout':<13} " + " ".join(f"{n:>{width}}" for n in names)
    lines = ["", "== networks: geometric mean over the networks of time(baseline) / time(variant) ==", head,
             "-" * len(head)]
    keys = list(OrderedDict.fromkeys((s["mode"], s["batch"], s["layout"], s["dtype"]) for s in summary))
    for mode, batch, layout, dtype in keys:
        cell = {(s["variant"], s["baseline"]): s for s in summary
                if (s["mode"], s["batch"], s["layout"], s["dtype"]) == (mode, batch, layout, dtype)}
        vals = []
        for c in cols:
            s = cell.get(c)
            vals.append(f"{'':>{width}}" if s is None else
                        f"{fmt_num(s['geomean_ratio'], width - 5, 2)} ({s['networks']:>2})")
        label = layout if dtype == "float32" else f"{layout} {dtype}"
        lines.append(f"{mode:<6} {fmt_num(batch, 5, 0)} {label:<13} " + " ".join(vals))
    lines.append("(n): networks in the geometric mean; > 1: the variant is faster than the baseline")
    return lines
