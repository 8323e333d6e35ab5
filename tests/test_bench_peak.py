"""The benchmark report's measured peak and charts: the native probes (fastconv._C.fma_peak,
stream_scale, stream_scale_buffers at every ISA level this CPU has), measure_peak's roofs, the line
above the tables, the roofline PNG, and one short pytest-bench run with --fastconv-report (JSON fields
and PNGs). No assertion on absolute speeds: the machine may be shared."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastconv
from fastconv.benchmarks import runner

REPO = str(Path(__file__).resolve().parent.parent)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LEVELS = ["baseline", "avx2", "avx512"]
LANES = {"baseline": 4, "avx2": 8, "avx512": 16}


@pytest.fixture
def cpu_c():
    C = fastconv.backends.cpu._C
    assert C is not None, "fastconv._C is not built"
    before = C.cpu_isa()
    yield C
    C.set_cpu_isa(before)


def _levels(C):
    return LEVELS[: LEVELS.index(C.detected_cpu_isa()) + 1]


def _positive(v):
    return isinstance(v, float) and math.isfinite(v) and v > 0


def test_fma_peak_counts_every_flop(cpu_c):
    for isa in _levels(cpu_c):
        cpu_c.set_cpu_isa(isa)
        r = cpu_c.fma_peak(20_000, 2, 2)
        assert r["isa"] == isa and r["vector_floats"] == LANES[isa]
        assert r["accumulators"] >= 8  # FMA latency 4 x 2 ports: fewer chains could not reach the peak
        assert 1 <= r["threads"] <= 2
        assert r["flops"] == 2 * r["vector_floats"] * r["accumulators"] * 20_000 * r["threads"]
        assert _positive(r["seconds"]) and _positive(r["gflops"])
        assert abs(r["gflops"] - r["flops"] / r["seconds"] / 1e9) < 1e-6 * r["gflops"]
        # every chain converges to 1.0 (acc = acc * (1 - 2^-20) + 2^-20): the checksum counts the lanes
        lanes = r["vector_floats"] * r["accumulators"] * r["threads"]
        assert math.isfinite(r["checksum"]) and 0.9 * lanes < r["checksum"] < 1.2 * lanes


def test_fma_peak_scales_with_iterations(cpu_c):
    short = cpu_c.fma_peak(100_000, 5, 1)
    long = cpu_c.fma_peak(400_000, 5, 1)
    assert long["flops"] == 4 * short["flops"]
    # 4x the work takes longer (best of 5 each, so a preempted repeat does not decide it)
    assert long["seconds"] > 2 * short["seconds"]


def test_stream_scale_buffers_computes_b_equals_s_times_a(cpu_c):
    n = 100_003  # not a multiple of a vector or of a thread's 64-byte share: tails on every path
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, generator=g)
    a[:4] = torch.tensor([0.0, -0.0, float("inf"), -1e-40])  # signed zero, inf, a denormal
    for isa in _levels(cpu_c):
        cpu_c.set_cpu_isa(isa)
        b = torch.full((n,), float("nan"))
        r = cpu_c.stream_scale_buffers(a.data_ptr(), b.data_ptr(), n, -2.5, 2, 2)
        assert r["mismatches"] == 0 and r["isa"] == isa
        assert r["bytes"] == 2 * 4 * n and _positive(r["gbps"])
        want = a * -2.5
        assert torch.equal(b.view(torch.int32), want.view(torch.int32)), isa  # bitwise, -0.0 included


def test_stream_scale_allocates_and_verifies(cpu_c):
    n = (4 << 20) // 4 + 5
    r = cpu_c.stream_scale(n, 3.0, 2, 2)
    assert r["mismatches"] == 0
    assert r["n"] == n and r["array_bytes"] == 4 * n and r["bytes"] == 8 * n
    assert 1 <= r["threads"] <= 2 and _positive(r["seconds"]) and _positive(r["gbps"])


def test_probe_arguments_are_checked(cpu_c):
    a = torch.zeros(64)
    with pytest.raises(ValueError, match="iterations"):
        cpu_c.fma_peak(0, 1, 1)
    with pytest.raises(ValueError, match="n must be"):
        cpu_c.stream_scale(0, 1.0, 1, 1)
    with pytest.raises(ValueError, match="overlap"):
        cpu_c.stream_scale_buffers(a.data_ptr(), a.data_ptr() + 16, 32, 1.0, 1, 1)


@pytest.fixture
def fresh_peak(monkeypatch):
    """measure_peak with small sizes, without leaving them in the module's caches."""
    monkeypatch.setattr(runner, "_PEAK", {})
    monkeypatch.setattr(runner, "_NATIVE_PEAK", {})
    monkeypatch.setattr(runner, "FMA_ITERATIONS", 200_000)
    monkeypatch.setenv("FASTCONV_PEAK_STREAM_MIB", "8")
    return lambda dtype="float32": runner.measure_peak("cpu", dtype, gemm_n=256, copy_mib=8, repeats=2)


def test_measure_peak_uses_the_native_roofs(fresh_peak):
    p = fresh_peak()
    for key in ("fma_gflops", "stream_gbps", "sgemm_gflops", "gemm_gflops", "copy_gbps", "compute_gflops",
                "bandwidth_gbps", "ridge_flop_per_byte"):
        assert _positive(p[key]), key
    assert p["threads"] == torch.get_num_threads() and p["fma_threads"] == p["stream_threads"] == p["threads"]
    assert p["isa"] == fastconv.backends.cpu._C.cpu_isa()
    assert p["compute_gflops"] == p["fma_gflops"] and p["bandwidth_gbps"] == p["stream_gbps"]
    assert "2 x 8 MiB" in p["stream"]
    assert runner.pct_of_peak(p["fma_gflops"] / 2, "GFLOP/s", p) == pytest.approx(50.0)
    assert runner.pct_of_peak(p["stream_gbps"] / 4, "GB/s", p) == pytest.approx(25.0)
    p64 = fresh_peak("float64")
    assert p64["compute_gflops"] == pytest.approx(p64["fma_gflops"] / 2)
    line = runner.peak_line(p)
    assert line.startswith("measured peak: FMA ") and f"({p['threads']} threads, {p['isa']})" in line
    assert "stream scale" in line and "torch SGEMM" in line and "for reference" in line
    assert set(runner.machine_peak()) >= {"fma_gflops", "stream_gbps", "sgemm_gflops", "copy_gbps", "isa"}


def test_peak_line_without_native_probe():
    line = runner.peak_line({"sgemm_gflops": 1000.0, "copy_gbps": 900.0})  # the CUDA suites' peak
    assert "1000.0 GFLOP/s" in line and "900.0 GB/s" in line and "FMA" not in line and "busy" not in line


def test_peak_line_flags_a_busy_machine():
    peak = {"fma_gflops": 400.0, "fma_threads": 2, "isa": "avx512", "stream_gbps": 30.0, "compute_gflops": 400.0,
            "sgemm_gflops": 350.0, "copy_gbps": 28.0}
    assert "!busy" not in runner.peak_line(dict(peak, others_cpu_share=0.02))
    assert "!busy 40%" in runner.peak_line(dict(peak, others_cpu_share=0.4))


def _synthetic_suite_report():
    """A --fastconv-report file as the pytest suites write it (two conv rows, one pool row)."""
    peak = {"fma_gflops": 400.0, "fma_threads": 2, "isa": "avx512", "stream_gbps": 30.0, "compute_gflops": 400.0,
            "bandwidth_gbps": 30.0, "sgemm_gflops": 350.0, "copy_gbps": 28.0}
    conv = [{"shape": "c64k64-32x32-3x3", "layout": lay, "fastconv_throughput": 200.0, "torch_throughput": 150.0,
             "ratio": 1.3, "intensity": 40.0} for lay in ("nchw", "channels_last")]
    old = {"shape": "c64k64-32x32-1x1@n2", "layout": "nchw", "fastconv_throughput": 50.0, "torch_throughput": 60.0,
           "ratio": 0.8}  # an older report: no intensity, found from the shape table
    pool = [{"shape": "avg-2x2s2", "layout": "nchw", "fastconv_throughput": 25.0, "torch_throughput": 10.0,
             "ratio": 2.5}]
    return {"date": "2026-11-23T00:00:00+00:00", "device": "cpu", "device_name": "test CPU", "threads": 2,
            "backend": "cpu", "peak": peak,
            "tables": {"conv2d/fwd": {"unit": "GFLOP/s", "rows": conv + [old]},
                       "avg_pool2d/fwd": {"unit": "GB/s", "rows": pool}}}


def test_report_rows_and_roofline_png(tmp_path):
    pytest.importorskip("matplotlib")
    from fastconv.benchmarks import charts

    report = _synthetic_suite_report()
    rows = charts.report_rows(report)
    assert len(rows) == 4 and {r["op"] for r in rows} == {"conv2d", "avg_pool2d"}
    old = next(r for r in rows if r["shape"].endswith("@n2"))
    assert old["intensity"] > 0  # c64k64 1x1 at N=2 from TABLES
    paths = charts.write_charts(report, tmp_path, prefix="r-")
    assert [p.name for p in paths] == ["r-ratio.png", "r-roofline.png"]
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, p


@pytest.mark.slow
def test_bench_report_has_peak_fields_and_pngs(tmp_path):
    """One tiny conv shape and one pooling shape, forward, NCHW, through the real bench/ harness."""
    report = tmp_path / "report.json"
    # Not an xdist worker itself (this test may run under -n 2: the child must not inherit that).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_ADDOPTS"))}
    env.update(PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               FASTCONV_PEAK_STREAM_MIB="16", FASTCONV_BENCH_TARGET_S="0.01")
    cmd = [sys.executable, "-m", "pytest", "-p", "no:xdist", "bench/test_conv2d.py", "bench/test_pool2d.py", "--benchmark-only",
           "--bench-short", "-q", "-p", "no:cacheprovider", "--fastconv-report", str(report),
           "-k", "c64k64-32x32-1x1 and nchw and conv2d- and not fwdbwd or avg-2x2s2 and nchw and fwd"]
    proc = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "measured peak: FMA " in out and "stream scale" in out and "torch SGEMM" in out
    data = json.loads(report.read_text())
    assert data["schema_version"] == 2 and data["kind"] == "bench-suite"
    peak = data["peak"]
    for key in ("fma_gflops", "stream_gbps", "sgemm_gflops", "copy_gbps", "compute_gflops", "bandwidth_gbps"):
        assert _positive(peak[key]), key
    assert peak["fma_threads"] == data["config"]["threads"] and peak["isa"] == data["device"]["cpu_isa"]
    conv = [r for r in data["rows"] if (r["op"], r["mode"]) == ("conv2d", "fwd")]
    pool = [r for r in data["rows"] if (r["op"], r["mode"]) == ("avg_pool2d", "fwd")]
    assert len(conv) == 1 and len(pool) == 1 and len(data["rows"]) == 2
    for r in conv + pool:
        assert r["backend"] == "cpu" and r["table"] in ("cpu_conv", "cpu_pool") and r["work"] > 0
        for key in ("ours_throughput", "torch_throughput", "ours_pct_peak", "torch_pct_peak", "ratio"):
            assert _positive(r[key]), (key, r)
    assert conv[0]["ours_pct_peak"] == pytest.approx(100 * conv[0]["ours_throughput"] / peak["fma_gflops"])
    assert pool[0]["ours_pct_peak"] == pytest.approx(100 * pool[0]["ours_throughput"] / peak["stream_gbps"])
    assert conv[0]["intensity"] > 0 and pool[0]["intensity"] is None
    assert "== conv2d/fwd float32 (fastconv backend cpu) ==" in out
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "charts skipped: matplotlib is not installed" in out
        return
    for name in ("report-roofline.png", "report-ratio.png"):
        png = (tmp_path / name).read_bytes()
        assert png[:8] == PNG_MAGIC and len(png) > 5000, name
        assert f"chart written to {tmp_path / name}" in out
