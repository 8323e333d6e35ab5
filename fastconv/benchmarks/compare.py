"""`fastconv bench --compare A.json B.json`: per-row change of fastconv's time and of the ratio to
torch between two runs (B against A), with geometric means. Accepts the `fastconv bench` report
(schema_version 1) and the pytest suites' `--fastconv-report` file."""
from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Tuple

from .runner import fmt_num, geomean


def load_rows(path) -> Tuple[Dict[str, Any], "OrderedDict[tuple, Dict[str, Any]]"]:
    """(report, rows keyed by (op, mode, shape, layout, dtype, backend))."""
    data = json.loads(Path(path).read_text())
    rows: "OrderedDict[tuple, Dict[str, Any]]" = OrderedDict()
    if "rows" in data:
        for r in data["rows"]:
            rows[(r["op"], r["mode"], r["shape"], r["layout"], r.get("dtype", "float32"), r.get("backend", "?"))] = r
    elif "tables" in data:  # the pytest suites' report: {"op/mode": {"rows": [...]}}
        for name, t in data["tables"].items():
            parts = name.split("/")
            op, mode = parts[0], parts[1]
            dtype = parts[2] if len(parts) > 2 else "float32"
            for r in t["rows"]:
                rows[(op, mode, r["shape"], r["layout"], dtype, data.get("backend", "?"))] = {
                    "ours_ms": r.get("fastconv_ms"), "torch_ms": r.get("torch_ms"), "ratio": r.get("ratio")}
    else:
        raise ValueError(f"{path}: not a fastconv benchmark report (no 'rows' or 'tables')")
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
        ta, tb = ra.get("ours_ms"), rb.get("ours_ms")
        out.append({"key": key, "a_ms": ta, "b_ms": tb, "time_change": tb / ta if ta and tb else None,
                    "a_ratio": ra.get("ratio"), "b_ratio": rb.get("ratio"),
                    "ratio_change": rb["ratio"] / ra["ratio"] if ra.get("ratio") and rb.get("ratio") else None})
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
