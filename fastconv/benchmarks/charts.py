"""PNG charts of a `fastconv bench` report (plotting is a separate step from measuring: these read
only the report dict, so `fastconv bench --charts-from A.json` can redraw an old run).

- ratio.png: per layer, torch_time / fastconv_time (> 1: fastconv faster), one panel per
  op/mode/dtype/backend, one bar per layout.
- roofline.png: x = arithmetic intensity (FLOP per byte of minimum traffic), y = GFLOP/s, with the
  measured compute peak (torch GEMM) and the measured copy bandwidth as the roof; one point per
  convolution row for fastconv and one for torch. (Pooling rows do no FLOP-counted work and are
  left out: their GB/s against the bandwidth line is in the table.)
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List

LAYOUT_COLORS = {"nchw": "#1f77b4", "channels_last": "#ff7f0e"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def ratio_chart(report: Dict[str, Any], path: Path) -> Path:
    plt = _plt()
    groups: "OrderedDict[str, List[Dict[str, Any]]]" = OrderedDict()
    for r in report["rows"]:
        groups.setdefault(f"{r['op']}/{r['mode']} {r['dtype']} ({r['backend']})", []).append(r)
    n = max(1, len(groups))
    heights = [max(2.0, 0.28 * len({r["shape"] for r in rows}) + 1.2) for rows in groups.values()] or [2.0]
    fig, axes = plt.subplots(n, 1, figsize=(9, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (title, rows) in zip(axes[:, 0], groups.items()):
        shapes = list(OrderedDict.fromkeys(r["shape"] for r in rows))
        layouts = list(OrderedDict.fromkeys(r["layout"] for r in rows))
        h = 0.8 / max(1, len(layouts))
        for j, layout in enumerate(layouts):
            by_shape = {r["shape"]: r for r in rows if r["layout"] == layout}
            ys = [i + (j - (len(layouts) - 1) / 2) * h for i in range(len(shapes))]
            vals = [(by_shape.get(s) or {}).get("ratio") or 0.0 for s in shapes]
            ax.barh(ys, vals, height=h, color=LAYOUT_COLORS.get(layout), label=layout)
        ax.axvline(1.0, color="black", lw=1, ls="--")
        ax.set_yticks(range(len(shapes)))
        ax.set_yticklabels(shapes, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("ratio = torch time / fastconv time (> 1: fastconv faster)", fontsize=8)
        ax.legend(fontsize=7, loc="lower right")
    dev = report.get("device", {})
    fig.suptitle(f"fastconv vs torch on {dev.get('name', '?')} ({report.get('date', '')[:10]})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def roofline_chart(report: Dict[str, Any], path: Path) -> Path:
    plt = _plt()
    peak = report.get("peak") or {}
    rows = [r for r in report["rows"] if r.get("unit") == "GFLOP/s" and r.get("intensity")]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    xs = [r["intensity"] for r in rows] or [1.0]
    lo, hi = min(xs) / 2, max(xs) * 2
    compute, bw = peak.get("compute_gflops"), peak.get("copy_gbps")
    if compute and bw:
        ridge = compute / bw
        lo, hi = min(lo, ridge / 4), max(hi, ridge * 4)
        grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
        ax.plot(grid, [min(compute, bw * x) for x in grid], color="black", lw=1.5,
                label=f"measured roof: {compute:.0f} GFLOP/s, {bw:.0f} GB/s")
    for impl, key, marker, color in (("fastconv", "ours_throughput", "o", "#d62728"),
                                     ("torch", "torch_throughput", "s", "#7f7f7f")):
        pts = [(r["intensity"], r[key]) for r in rows if r.get(key)]
        if pts:
            ax.scatter(*zip(*pts), marker=marker, s=22, color=color, alpha=0.8, label=impl)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_xlabel("arithmetic intensity (FLOP / byte of minimum traffic)")
    ax.set_ylabel("GFLOP/s")
    dev = report.get("device", {})
    ax.set_title(f"roofline, {dev.get('name', '?')}, {report['config'].get('threads')} threads", fontsize=9)
    ax.grid(True, which="both", lw=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_charts(report: Dict[str, Any], out_dir: Path) -> List[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [ratio_chart(report, out_dir / "ratio.png")]
    if any(r.get("unit") == "GFLOP/s" for r in report["rows"]):
        paths.append(roofline_chart(report, out_dir / "roofline.png"))
    return paths
