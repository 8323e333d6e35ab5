"""`fastconv bench`: the JSON report's schema, the PNG charts, --compare and --peak (quick mode, tiny
batch; no assertion on timings)."""
from __future__ import annotations

import json
import platform

import pytest

from fastconv.benchmarks import TABLES
from fastconv.benchmarks.report import SCHEMA_VERSION
from fastconv.benchmarks.runner import make_step, work_of
from fastconv.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

ROW_KEYS = {
    "table": str, "op": str, "mode": str, "shape": str, "shape_params": dict, "layout": str, "dtype": str,
    "device": str, "backend": str, "unit": str, "work": float, "bytes": float,
}
ROW_NUMBERS = ("ours_ms", "ours_p20_ms", "ours_p80_ms", "torch_ms", "torch_p20_ms", "torch_p80_ms",
               "ours_throughput", "torch_throughput", "ours_pct_peak", "ratio")


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    rc = main(["bench", "--table", "cpu_conv,cpu_pool", "--filter", "3x3", "--batch", "1", "--quick",
               "--modes", "fwd,bwd", "--layouts", "nchw", "--out", str(out)])
    assert rc == 0
    return out


def test_tables_are_consistent():
    assert len(TABLES["resnet50"]) == 23
    assert len({(s.C, s.K, s.H, s.R, s.stride) for s in TABLES["resnet50"]}) == 23
    assert len(TABLES["resnet18_cifar"]) == 11
    assert all(s.groups == s.C == s.K for s in TABLES["mobilenet_dw"])
    for name, rows in TABLES.items():
        assert len({s.name for s in rows}) == len(rows), name
        assert all(s.P > 0 and s.Q > 0 for s in rows), name


@pytest.mark.slow  # report_dir runs the benchmark suites: 5-20 s
def test_json_schema(report_dir):
    report = json.loads((report_dir / "bench.json").read_text())
    assert report["schema_version"] == SCHEMA_VERSION == 2
    assert report["kind"] == "fastconv-bench"
    for key, typ in (("date", str), ("device", dict), ("versions", dict), ("config", dict), ("peak", dict),
                     ("rows", list), ("summary", list), ("ratio", str)):
        assert isinstance(report[key], typ), key
    assert "git_commit" in report
    assert report["device"]["type"] == "cpu" and isinstance(report["device"]["name"], str)
    assert {"fastconv", "torch", "python"} <= set(report["versions"])
    assert report["peak"]["compute_gflops"] > 0 and report["peak"]["copy_gbps"] > 0
    ops = {(r["op"], r["mode"]) for r in report["rows"]}
    assert ops == {("conv2d", "fwd"), ("conv2d_relu", "fwd"), ("conv2d", "bwd"), ("conv2d_relu", "bwd"),
                   ("max_pool2d", "fwd"), ("max_pool2d", "bwd"), ("avg_pool2d", "fwd"), ("avg_pool2d", "bwd")}
    for r in report["rows"]:
        for key, typ in ROW_KEYS.items():
            assert isinstance(r[key], typ), (key, r[key])
        for key in ROW_NUMBERS:
            assert isinstance(r[key], float) and r[key] > 0, (key, r)
        assert r["note"] is None, r["note"]
        assert r["shape_params"]["N"] == 1 and "3x3" in r["shape"]
        assert r["unit"] == ("GFLOP/s" if r["op"].startswith("conv") else "GB/s")
        assert abs(r["ratio"] - r["torch_ms"] / r["ours_ms"]) < 1e-9
        if r["unit"] == "GFLOP/s":
            assert r["intensity"] > 0
    for s in report["summary"]:
        assert s["geomean_ratio"] > 0 and s["rows"] > 0
        assert set(s["geomean_ratio_by_layout"]) == {"nchw"}


@pytest.mark.slow
def test_charts_written(report_dir):
    for name in ("ratio.png", "roofline.png"):
        data = (report_dir / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000, name


def test_no_charts_and_output(tmp_path, capsys):
    rc = main(["bench", "--table", "cpu_pool", "--filter", "max-2x2", "--batch", "1", "--quick",
               "--layouts", "channels_last", "--out", str(tmp_path), "--no-charts"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "max_pool2d/fwd float32" in out and "geomean ratio" in out and "GB/s" in out
    assert (tmp_path / "bench.json").exists() and not list(tmp_path.glob("*.png"))


def _synthetic(path, times, ratios):
    rows = [{"op": "conv2d", "mode": "fwd", "shape": f"s{i}", "layout": "nchw", "dtype": "float32", "backend": "cpu",
             "ours_ms": t, "torch_ms": t * r, "ratio": r} for i, (t, r) in enumerate(zip(times, ratios))]
    path.write_text(json.dumps({"schema_version": SCHEMA_VERSION, "rows": rows}))
    return str(path)


def test_compare(tmp_path, capsys):
    a = _synthetic(tmp_path / "a.json", [1.0, 2.0, 4.0], [0.5, 1.0, 2.0])
    b = _synthetic(tmp_path / "b.json", [0.5, 2.0, 2.0], [1.0, 1.0, 4.0])
    assert main(["bench", "--compare", a, b]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("conv2d/fwd")]
    assert len(lines) == 3
    assert "-50.0%" in lines[0] and "+0.0%" in lines[1]
    # geomean of the time changes 0.5, 1, 0.5 = 0.63 -> -37.0%; ratio geomean 1.00 -> 4^(1/3) = 1.59
    assert "-37.0%" in out and "ratio A 1.00 -> B 1.59" in out


def test_compare_pytest_report(tmp_path, capsys):
    report = {"backend": "cpu", "tables": {"conv2d/fwd": {"unit": "GFLOP/s", "rows": [
        {"shape": "x", "layout": "nchw", "fastconv_ms": 2.0, "torch_ms": 1.0, "ratio": 0.5}]}}}
    a = tmp_path / "a.json"
    a.write_text(json.dumps(report))
    assert main(["bench", "--compare", str(a), str(a)]) == 0
    assert "+0.0%" in capsys.readouterr().out


def test_compare_rejects_other_json(tmp_path, capsys):
    p = tmp_path / "x.json"
    p.write_text("{}")
    assert main(["bench", "--compare", str(p), str(p)]) == 2


def test_peak(capsys):
    assert main(["bench", "--peak"]) == 0
    out = capsys.readouterr().out
    assert "GFLOP/s" in out and "GB/s" in out


def test_bad_arguments(capsys):
    assert main(["bench", "--table", "nope"]) == 2
    assert main(["bench", "--ops", "conv3d"]) == 2
    assert main(["bench", "--dtypes", "int8"]) == 2


@pytest.mark.parametrize("mode", ["fwd", "bwd", "fwdbwd"])
def test_steps_match_torch(mode):
    """make_step's check passes for each op and mode (what the CLI runs before timing)."""
    import fastconv

    conv = TABLES["cpu_conv"][1].with_batch(1)
    pool = TABLES["cpu_pool"][1].with_batch(1)
    for op, shape in (("conv2d_relu", conv), ("max_pool2d", pool)):
        with fastconv.use_backend("cpu"):
            fn, check = make_step(op, mode, shape, "channels_last", "fastconv")
            check()
        assert work_of(op, shape, mode)[0] > 0


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_steady_allocator_applies_on_glibc():
    """The bench fixes glibc's mmap/trim thresholds (benchmarks/runner.py: steady_allocator); mallopt
    rejects an out-of-range value, so this fails if the chosen values stop being valid."""
    from fastconv.benchmarks.runner import steady_allocator
    assert steady_allocator() is True


@pytest.mark.parametrize("table", ["conv1d", "conv_transpose"])
def test_conv1d_and_transposed_rows_are_torchs_shapes(table):
    """Each row's input/weight/output shapes are what torch's op gives (the FLOP and byte models read
    them), and its step passes the check against torch (a small batch, both layouts)."""
    import torch
    import torch.nn.functional as F

    import fastconv

    for s in TABLES[table]:
        x, w = torch.empty(s.input_shape, device="meta"), torch.empty(s.weight_shape, device="meta")
        if s.transposed:
            y = F.conv_transpose2d(x, w, None, s.stride, s.pad, s.output_padding, s.groups)
        else:
            y = F.conv1d(x, w, None, s.stride, s.pad, 1, s.groups)
        assert tuple(y.shape) == s.output_shape, s.name
    small = min(TABLES[table], key=lambda s: s.flops).with_batch(1)
    for op in small.ops:
        for layout in ("nchw", "channels_last"):
            with fastconv.use_backend("cpu"):
                fn, check = make_step(op, "fwdbwd", small, layout, "fastconv")
                check()
