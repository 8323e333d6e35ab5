"""`fastconv bench --compare A.json B.json`: per-row change of fastconv's time and of the ratio to
torch between two runs (B against A), with geometric means. Accepts every report that
benchmarks.report reads: schema_version 2 from any producer (`fastconv bench`, the pytest suites'
--fastconv-report, the GPU-backend suite), and the older files (schema_version 1 bench.json, the
suites' "tables" files); rows are matched on (op, mode, shape, layout, dtype, backend)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, List, Tuple

from .records import BenchRecord
from .report import load_report, read_records
from .runner import fmt_num, geomean


def load_rows(path) -> Tuple[Dict[str, Any], "OrderedDict[tuple, BenchRecord]"]:
    """(report, its records keyed by (op, mode, shape, layout, dtype, backend))."""
    data = load_report(path)
    rows: "OrderedDict[tuple, BenchRecord]" = OrderedDict()
    for r in read_records(data):
        rows[(r.op, r.mode, r.shape, r.layout, r.dtype, r.backend)] = r
    return data, rows


def compare(path_a, path_b) -> Dict[str, Any]:
    """Matched rows with time_change = B_ours_ms / A_ours_ms (< 1: B faster) and the ratios of both."""
    _, a = load_rows(path_a)
    _, b = load_rows(path_b)
    out: List[Dict[str, Any]] = []
    for key, ra in a.items():
        rb = b.get(key)
        if rb is None:
            continue
        ta, tb = ra.ours_ms, rb.ours_ms
        out.append({"key": key, "a_ms": ta, "b_ms": tb, "time_change": tb / ta if ta and tb else None,
                    "a_ratio": ra.ratio, "b_ratio": rb.ratio,
                    "ratio_change": rb.ratio / ra.ratio if ra.ratio and rb.ratio else None})
    return {"rows": out, "only_a": [k for k in a if k not in b], "only_b": [k for k in b if k not in a],
            "geomean_time_change": geomean([r["time_change"] for r in out]),
            "geomean_a_ratio": geomean([r["a_ratio"] for r in out]),
            "geomean_b_ratio": geomean([r["b_ratio"] for r in out])}


def format_compare(result: Dict[str, Any], name_a: str = "A", name_b: str = "B") -> List[str]:
    lines = [f"B = {name_b} against A = {name_a}; time change = B/A of fastconv's median (< 1: B faster); "
             f"ratio = torch_time / fastconv_time in each run"]
    head = (f"{'op/mode':<20} {'shape':<30} {'layout':<13} {'dtype':<8} {'A ms':>9} {'B ms':>9} "
            f"{'change':>8} {'A ratio':>8} {'B ratio':>8}")
    lines += [head, "-" * len(head)]
    for r in result["rows"]:
        op, mode, shape, layout, dtype, _ = r["key"]
        ch = r["time_change"]
        change = "n/a" if ch is None else f"{100 * (ch - 1):+.1f}%"
        lines.append(f"{op + '/' + mode:<20} {shape[:30]:<30} {layout:<13} {dtype:<8} {fmt_num(r['a_ms'], 9, 3)} "
                     f"{fmt_num(r['b_ms'], 9, 3)} {change:>8} {fmt_num(r['a_ratio'], 8, 2)} "
                     f"{fmt_num(r['b_ratio'], 8, 2)}")
    g = result["geomean_time_change"]
    lines.append(f"geomean over {len(result['rows'])} rows: time change "
                 f"{'n/a' if g is None else f'{100 * (g - 1):+.1f}%'}, ratio A {fmt_num(result['geomean_a_ratio'], 0, 2)}"
                 f" -> B {fmt_num(result['geomean_b_ratio'], 0, 2)}")
    for which, keys in (("only in A", result["only_a"]), ("only in B", result["only_b"])):
        if keys:
            lines.append(f"{len(keys)} rows {which} (not compared)")
    return lines
