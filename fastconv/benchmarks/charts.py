"""PNG charts of a benchmark report (plotting is a separate step from measuring: these read only the
report dict, so an old run can be redrawn). Every report benchmarks.report reads is drawn (schema 2 from
any producer, and the older files); report_rows turns it into one list of row dicts (BenchRecord's fields).

- ratio.png: per layer (or network), torch_time / fastconv_time (> 1: fastconv faster), one panel per
  op/mode/dtype/backend (a network run: per mode and variant, compile's ratio to torch eager too), one
  bar per layout.
- roofline.png: x = arithmetic intensity (FLOP per byte of minimum traffic), y = GFLOP/s. Two roofs,
  drawn separately and as their envelope: the compute roof (CPU: the native FMA probe; CUDA: torch's
  GEMM) and the bandwidth roof (CPU: the native STREAM scale; CUDA: a large copy); torch's SGEMM rate
  is a dotted reference line when it is not itself the roof. One colour per shape; a filled circle for
  fastconv, a hollow square for torch (every op, mode and layout of the shape: fwd and fwdbwd sit at
  different intensities). Pooling rows do no FLOP-counted work, so they get a panel of their own next
  to the roofline: GB/s per row against the bandwidth roof.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List

LAYOUT_COLORS = {"nchw": "#1f77b4", "channels_last": "#ff7f0e"}
OURS_STYLE = {"marker": "o", "s": 26, "alpha": 0.85}
TORCH_STYLE = {"marker": "s", "s": 30, "alpha": 0.85, "facecolors": "none", "linewidths": 1.0}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def report_rows(report: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The rows of a report of any schema, as dicts of BenchRecord's fields (op, mode, shape, layout,
    dtype, backend, unit, intensity, ours_throughput, torch_throughput, ratio, ...)."""
    from .report import read_records

    return [r.to_dict() for r in read_records(report)]


def _device_name(report: Dict[str, Any]) -> str:
    dev = report.get("device")
    if isinstance(dev, dict):
        return dev.get("name", "?")
    return report.get("device_name") or str(dev or "?")


def _threads(report: Dict[str, Any]) -> Any:
    return (report.get("config") or {}).get("threads") or report.get("threads") or "?"


def ratio_chart(report: Dict[str, Any], path: Path) -> Path:
    plt = _plt()
    groups: "OrderedDict[str, List[Dict[str, Any]]]" = OrderedDict()
    for r in report_rows(report):
        groups.setdefault(f"{r['op']}/{r['mode']} {r['dtype']} ({r['backend']})", []).append(r)
    n = max(1, len(groups))
    heights = [max(2.0, 0.28 * len({r["shape"] for r in rows}) + 1.2) for rows in groups.values()] or [2.0]
    # constrained layout keeps the figure title clear of the first panel's title (tight_layout
    # ignores suptitle and drew the two over each other)
    fig, axes = plt.subplots(n, 1, figsize=(9, sum(heights)), squeeze=False, layout="constrained",
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
    fig.suptitle(f"fastconv vs torch on {_device_name(report)} ({report.get('date', '')[:10]})", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _roofs(peak: Dict[str, Any]):
    """(compute GFLOP/s, its label, bandwidth GB/s, its label, reference GFLOP/s or None, its label)."""
    compute = peak.get("compute_gflops") or peak.get("sgemm_gflops")
    bandwidth = peak.get("bandwidth_gbps") or peak.get("copy_gbps")
    if peak.get("fma_gflops") is not None:
        c_label = (f"FMA peak {compute:.0f} GFLOP/s ({peak.get('fma_threads', '?')} threads, "
                   f"{peak.get('isa', '?')})")
        b_label = f"stream scale {bandwidth:.1f} GB/s"
        ref = peak.get("sgemm_gflops") or peak.get("gemm_gflops")
        r_label = f"torch SGEMM {ref:.0f} GFLOP/s (reference)" if ref else ""
    else:
        c_label = f"GEMM {compute:.0f} GFLOP/s" if compute else ""
        b_label = f"copy {bandwidth:.1f} GB/s" if bandwidth else ""
        ref, r_label = None, ""
    return compute, c_label, bandwidth, b_label, ref, r_label


def _shape_colors(shapes: List[str]) -> Dict[str, Any]:
    plt = _plt()
    cmap = plt.get_cmap("tab10" if len(shapes) <= 10 else "tab20")
    n = cmap.N
    if len(shapes) > n:
        cmap = plt.get_cmap("turbo")
        return {s: cmap(i / max(1, len(shapes) - 1)) for i, s in enumerate(shapes)}
    return {s: cmap(i % n) for i, s in enumerate(shapes)}


def _roofline_panel(ax, rows, peak, notes):
    from matplotlib.lines import Line2D

    conv = [r for r in rows if r.get("unit") == "GFLOP/s" and r.get("intensity")]
    left_out = [r for r in rows if r.get("unit") == "GFLOP/s" and not r.get("intensity")]
    if left_out:
        names = ", ".join(OrderedDict.fromkeys(f"{r['op']}/{r['mode']}" for r in left_out))
        notes.append(f"not drawn: {len(left_out)} GFLOP/s rows with no traffic model ({names})")
    compute, c_label, bandwidth, b_label, ref, r_label = _roofs(peak)
    xs = [r["intensity"] for r in conv] or [1.0]
    lo, hi = min(xs) / 2, max(xs) * 2
    if compute and bandwidth:
        ridge = compute / bandwidth
        lo, hi = min(lo, ridge / 4), max(hi, ridge * 4)
    grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    handles = []
    if compute and bandwidth:
        ax.plot(grid, [min(compute, bandwidth * x) for x in grid], color="black", lw=2.0, zorder=3)
        ax.plot(grid, [bandwidth * x for x in grid], color="#2ca02c", lw=1.0, ls="--", zorder=2)
        ax.plot(grid, [compute] * len(grid), color="#d62728", lw=1.0, ls="--", zorder=2)
        ax.axvline(compute / bandwidth, color="black", lw=0.5, ls=":")
        handles += [Line2D([], [], color="#d62728", ls="--", label=c_label),
                    Line2D([], [], color="#2ca02c", ls="--", label=b_label),
                    Line2D([], [], color="black", lw=2.0, label=f"roof (ridge {compute / bandwidth:.1f} FLOP/byte)")]
    if ref and ref != compute:
        ax.plot(grid, [ref] * len(grid), color="#7f7f7f", lw=1.0, ls=":", zorder=2)
        handles.append(Line2D([], [], color="#7f7f7f", ls=":", label=r_label))
    shapes = list(OrderedDict.fromkeys(r["shape"] for r in conv))
    colors = _shape_colors(shapes)
    ys = []
    for r in conv:
        c = colors[r["shape"]]
        if r.get("ours_throughput"):
            ax.scatter([r["intensity"]], [r["ours_throughput"]], color=c, zorder=4, **OURS_STYLE)
            ys.append(r["ours_throughput"])
        if r.get("torch_throughput"):
            ax.scatter([r["intensity"]], [r["torch_throughput"]], edgecolors=c, zorder=4, **TORCH_STYLE)
            ys.append(r["torch_throughput"])
    handles += [Line2D([], [], marker="o", ls="", color="black", label="fastconv"),
                Line2D([], [], marker="s", ls="", color="black", markerfacecolor="none", label="torch")]
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    tops = [v for v in (compute, ref) if v] + ys
    if tops:
        ax.set_ylim(min(ys + [min(tops)]) / 3 if ys else min(tops) / 100, max(tops) * 2)
    ax.set_xlabel("arithmetic intensity (FLOP / byte of minimum traffic)")
    ax.set_ylabel("effective GFLOP/s (direct convolution's FLOP count)")
    ax.text(0.01, 0.99, "Winograd layers (3x3 stride 1) do ~1/4 of the counted multiplies: above the FMA roof",
            transform=ax.transAxes, fontsize=6, va="top", color="0.35")
    ax.grid(True, which="both", lw=0.3)
    first = ax.legend(handles=handles, fontsize=7, loc="lower right")
    ax.add_artist(first)
    if shapes:
        shape_handles = [Line2D([], [], marker="o", ls="", color=colors[s], label=s) for s in shapes]
        ax.legend(handles=shape_handles, fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.12),
                  ncol=min(4, len(shapes)), title="shape (every op, mode and layout of it)", title_fontsize=7)
    if not conv:
        ax.text(0.5, 0.5, "no convolution rows", transform=ax.transAxes, ha="center")


def _bandwidth_panel(ax, pool_rows, peak):
    """GB/s of every pooling row (fastconv and torch) against the bandwidth roof."""
    labels = [f"{r['shape']} {r['op'].split('_')[0]}/{r['mode']} {r['layout']}" for r in pool_rows]
    ys = list(range(len(pool_rows)))
    ours = [(y, r["ours_throughput"]) for y, r in zip(ys, pool_rows) if r.get("ours_throughput")]
    base = [(y, r["torch_throughput"]) for y, r in zip(ys, pool_rows) if r.get("torch_throughput")]
    if ours:
        ax.scatter([v for _, v in ours], [y for y, _ in ours], color="#d62728", label="fastconv", **OURS_STYLE)
    if base:
        ax.scatter([v for _, v in base], [y for y, _ in base], edgecolors="#555555", label="torch", **TORCH_STYLE)
    _, _, bandwidth, b_label, _, _ = _roofs(peak)
    if bandwidth:
        ax.axvline(bandwidth, color="#2ca02c", lw=1.5, ls="--", label=b_label)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=6.5)
    ax.set_ylim(len(ys) - 0.5, -0.5)
    ax.set_xscale("log")
    ax.set_xlabel("GB/s of minimum traffic")
    ax.set_title("pooling (no FLOPs): bandwidth", fontsize=9)
    ax.grid(True, axis="x", which="both", lw=0.3)
    ax.legend(fontsize=7, loc="lower right")


def roofline_chart(report: Dict[str, Any], path: Path) -> Path:
    plt = _plt()
    peak = report.get("peak") or {}
    rows = report_rows(report)
    pool_rows = [r for r in rows if r.get("unit") == "GB/s" and (r.get("ours_throughput") or r.get("torch_throughput"))]
    notes: List[str] = []
    # constrained layout leaves room for the shape legend below the roofline axes
    if pool_rows:
        height = max(5.5, 0.18 * len(pool_rows) + 1.5)
        fig, (ax, ax_pool) = plt.subplots(1, 2, figsize=(15, height), layout="constrained",
                                          gridspec_kw={"width_ratios": [3, 2]})
        _bandwidth_panel(ax_pool, pool_rows, peak)
        _plain_log_ticks(ax_pool.xaxis)
    else:
        fig, ax = plt.subplots(figsize=(10, 5.5), layout="constrained")
    _roofline_panel(ax, rows, peak, notes)
    _plain_log_ticks(ax.xaxis)
    _plain_log_ticks(ax.yaxis)
    ax.set_title(f"roofline, {_device_name(report)}, {_threads(report)} threads "
                 f"({str(report.get('date', ''))[:10]})", fontsize=9)
    if notes:
        fig.supxlabel("; ".join(notes), fontsize=7, color="#555555")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plain_log_ticks(axis) -> None:
    """Log-axis labels as plain numbers (20, 50, 100 rather than 2x10^1), minor ticks at 2 and 5 only."""
    from matplotlib.ticker import FuncFormatter

    def minor(v, _):
        if v <= 0:
            return ""
        lead = v / 10 ** math.floor(math.log10(v) + 1e-9)
        return f"{v:g}" if abs(lead - 2) < 1e-6 or abs(lead - 5) < 1e-6 else ""

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(minor))


def write_charts(report: Dict[str, Any], out_dir: Path, prefix: str = "") -> List[Path]:
    """ratio.png and (when the report has throughputs of layers: a traffic model, or GB/s) roofline.png
    in out_dir, named prefix + name. Whole-network rows have no traffic model: a network-only report
    gets ratio.png alone."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = report_rows(report)
    paths = [ratio_chart(report, out_dir / f"{prefix}ratio.png")]
    if any((r.get("ours_throughput") or r.get("torch_throughput")) and (r.get("intensity") or r.get("unit") == "GB/s")
           for r in rows):
        paths.append(roofline_chart(report, out_dir / f"{prefix}roofline.png"))
    return paths
