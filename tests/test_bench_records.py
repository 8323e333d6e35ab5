"""The one benchmark row type (fastconv.benchmarks.records.BenchRecord), its table printer, the suites'
Collector and the JSON report (fastconv.benchmarks.report): schema 2 round trip, the readers of the
older files (the committed bench/results/ reports among them) and --compare across schemas. No timing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastconv.benchmarks import TABLES
from fastconv.benchmarks.compare import compare, load_rows
from fastconv.benchmarks.records import BASELINE, BenchRecord, Collector, Timing, format_records, summarize
from fastconv.benchmarks.report import SCHEMA_VERSION, format_report, load_report, make_report, read_records
from fastconv.benchmarks.runner import Case, conv_bytes
from fastconv.cli import main

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"
SUITE_V1 = RESULTS / "cpu-2026-12-05-xeon-vm.json"  # a committed report of the pytest suites before schema 2
# `fastconv bench`, schema_version 1: the report once committed as bench/results/cpu_conv-example/bench.json
BENCH_V1 = Path(__file__).resolve().parent / "data" / "bench-schema1-cpu_conv.json"
PEAK = {"compute_gflops": 400.0, "bandwidth_gbps": 20.0}

CONV = TABLES["cpu_conv"][1]   # c64k64-32x32-3x3
POOL = TABLES["cpu_pool"][0]   # max-2x2s2


def _record(shape=CONV, layout="nchw", ours=1.0, base=2.0, backend="cpu", device="cpu", busy=None, **kw):
    t = (lambda ms: Timing(ms / 1e3, ms / 1e3, ms / 1e3, 5, busy) if ms else None)
    work, unit, nbytes = (shape.flops, "GFLOP/s", conv_bytes(shape, "fwd")) if shape is CONV else \
        (shape.bytes(), "GB/s", shape.bytes())
    op = "conv2d" if shape is CONV else "max_pool2d"
    return BenchRecord.measured(op, "fwd", shape, layout, ours=t(ours), base=t(base), work=work, unit=unit,
                                peak=PEAK, backend=backend, device=device, nbytes=nbytes, **kw)


def test_measured_fields():
    r = _record(ours=2.0, base=3.0, table="cpu_conv")
    assert (r.op, r.mode, r.shape, r.layout, r.dtype, r.backend, r.table) == (
        "conv2d", "fwd", CONV.name, "nchw", "float32", "cpu", "cpu_conv")
    assert r.shape_params["C"] == 64 and "name" not in r.shape_params
    assert r.ours_ms == pytest.approx(2.0) and r.torch_ms == pytest.approx(3.0) and r.ours_rounds == 5
    assert r.ratio == pytest.approx(1.5)
    assert r.ours_throughput == pytest.approx(CONV.flops / 2e-3 / 1e9)
    assert r.ours_pct_peak == pytest.approx(100 * r.ours_throughput / PEAK["compute_gflops"])
    assert r.intensity == pytest.approx(CONV.flops / conv_bytes(CONV, "fwd"))
    p = _record(shape=POOL)
    assert p.unit == "GB/s" and p.intensity is None
    assert p.ours_pct_peak == pytest.approx(100 * p.ours_throughput / PEAK["bandwidth_gbps"])
    none = _record(ours=None)
    assert none.ours_ms is None and none.ratio is None and none.ours_pct_peak is None and none.torch_ms == 2.0


def test_round_trip_and_busy():
    r = _record(busy=0.3)
    assert r.busy and r.others_cpu_share == 0.3 and not _record(busy=0.05).busy
    assert BenchRecord.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    assert BenchRecord.from_dict({**r.to_dict(), "future_field": 1}) == r
    with pytest.raises(ValueError, match="layout"):
        BenchRecord.from_dict({"op": "conv2d", "mode": "fwd", "shape": "x"})


def test_table_columns_and_geomeans():
    rows = [_record(layout="nchw", ours=1.0, base=2.0), _record(layout="channels_last", ours=2.0, base=1.0, busy=0.5),
            _record(shape=POOL, ours=None, note="fastconv cpu: not implemented: x")]
    lines = format_records(rows)
    assert lines[1] == "== conv2d/fwd float32 (fastconv backend cpu) =="
    assert lines[2].split() == ["shape", "layout", "ours", "ms", "torch", "ms", "ours", "GFLOP/s", "torch",
                                "GFLOP/s", "%peak", "ratio"]
    assert set(lines[3]) == {"-"} and len(lines[3]) == len(lines[2])
    assert lines[4].startswith(CONV.name) and lines[4].split()[-1] == "2.00"
    assert lines[5].split()[-3:] == ["0.50", "!busy", "50%"]
    assert lines[6].startswith("geomean ratio") and lines[6].endswith("1.00  (nchw 2.00, channels_last 0.50)")
    pool = lines[lines.index("== max_pool2d/fwd float32 (fastconv backend cpu) ==") + 1:]
    assert "GB/s" in pool[0] and "n/a" in pool[2] and "(fastconv cpu: not implemented: x)" in pool[2]
    assert pool[3].startswith("geomean ratio") and "(" not in pool[3]  # one layout: no per-layout means
    assert lines[-1].startswith("!busy N%: other processes used N%")
    gpu = format_records([_record(device="cuda", backend="cuda")])
    assert "ours TFLOP/s" in gpu[2] and f"{CONV.flops / 1e-3 / 1e12:.2f}" in gpu[4]
    s = summarize(rows)
    assert [(x["op"], x["rows"]) for x in s] == [("conv2d", 2), ("max_pool2d", 1)]
    assert s[0]["geomean_ratio"] == pytest.approx(1.0)
    assert s[0]["geomean_ratio_by_layout"] == pytest.approx({"nchw": 2.0, "channels_last": 0.5})


def test_collector_pairs_baseline_and_backends():
    c = Collector(["cpu"])
    case = Case("conv2d", "fwd", CONV, "nchw", "torch", CONV.flops, "GFLOP/s", table="cpu_conv")
    info_torch, info_ours = {}, {}
    c.add(case, Timing(2e-3, 2e-3, 2e-3, 3), BASELINE, info_torch)
    c.add(case, Timing(1e-3, 1e-3, 1e-3, 3, 0.2), "cpu", info_ours)
    assert info_ours["ratio_vs_torch"] == info_torch["ratio_vs_torch"] == pytest.approx(2.0)
    c.skip(case, "backend 'triton' unavailable: no GPU", "triton")
    other = Case("conv2d", "fwd", CONV, "channels_last", "torch", CONV.flops, "GFLOP/s")
    c.add(other, Timing(1e-3, 1e-3, 1e-3, 3), BASELINE)
    recs = c.records(PEAK)
    assert [(r.layout, r.backend) for r in recs] == [("nchw", "cpu"), ("nchw", "triton"),
                                                     ("channels_last", "cpu"), ("channels_last", "triton")]
    cpu, triton = recs[0], recs[1]
    assert cpu.ratio == pytest.approx(2.0) and cpu.others_cpu_share == 0.2 and cpu.table == "cpu_conv"
    assert cpu.intensity == pytest.approx(CONV.flops / conv_bytes(CONV, "fwd"))
    assert triton.ours_ms is None and triton.torch_ms == pytest.approx(2.0) and "unavailable" in triton.note
    assert recs[2].ours_ms is None and recs[2].note is None
    by_dtype = c.records(lambda dtype: {"compute_gflops": 100.0} if dtype == "float32" else {})
    assert by_dtype[0].ours_pct_peak == pytest.approx(100 * by_dtype[0].ours_throughput / 100.0)


def test_make_report_schema(tmp_path):
    recs = [_record(), _record(layout="channels_last")]
    report = make_report("bench-suite", recs, "cpu", {"threads": 2, "quick": True, "backends": ["cpu"]}, PEAK,
                         others_cpu_share=0.01)
    assert report["schema_version"] == SCHEMA_VERSION == 2 and report["kind"] == "bench-suite"
    assert report["config"]["device"] == "cpu" and report["device"]["type"] == "cpu"
    assert {"fastconv", "torch", "python"} <= set(report["versions"]) and "git_commit" in report
    assert report["rows"] == [r.to_dict() for r in recs] and report["summary"] == summarize(recs)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    assert read_records(load_report(path)) == recs
    text = format_report(report)
    assert text[0].startswith("fastconv ") and "(cpu, 2 threads), quick; ratio = torch_time / fastconv_time" in text[0]
    assert text[1].startswith("measured peak: torch GEMM") and text[2].startswith("GFLOP/s = 2*N*K*P*Q*C*R*S")
    with pytest.raises(ValueError, match="kind"):
        make_report("other", recs, "cpu", {}, PEAK)


def test_read_committed_suite_report_v1():
    """A committed file of the suites before schema 2: 'tables' with fastconv_* fields."""
    data = json.loads(SUITE_V1.read_text())
    recs = read_records(data)
    assert len(recs) == sum(len(t["rows"]) for t in data["tables"].values())
    first = data["tables"]["conv2d/fwd"]["rows"][0]
    r = recs[0]
    assert (r.op, r.mode, r.dtype, r.backend, r.unit) == ("conv2d", "fwd", "float32", "cpu", "GFLOP/s")
    assert (r.shape, r.layout) == (first["shape"], first["layout"])
    assert (r.ours_ms, r.ours_p80_ms, r.torch_ms, r.ours_throughput, r.ours_pct_peak, r.ratio) == (
        first["fastconv_ms"], first["fastconv_p80_ms"], first["torch_ms"], first["fastconv_throughput"],
        first["fastconv_pct_peak"], first["ratio"])
    assert {x.unit for x in recs if x.op.endswith("pool2d")} == {"GB/s"}


def test_read_old_suite_report_without_intensity():
    old = {"backend": "cpu", "tables": {"conv2d/fwdbwd/float64": {"unit": "GFLOP/s", "rows": [
        {"shape": f"{CONV.name}@n2", "layout": "nchw", "fastconv_ms": 2.0, "torch_ms": 1.0, "ratio": 0.5}]}}}
    (r,) = read_records(old)
    assert (r.mode, r.dtype, r.ratio) == ("fwdbwd", "float64", 0.5)
    s = CONV.with_batch(2)
    assert r.intensity == pytest.approx(3 * s.flops / conv_bytes(s, "fwdbwd", 8))


def test_read_gpu_suite_report_v1():
    """The GPU-backend suite's file before schema 2: cudnn_ms, TFLOP/s throughputs, pct_peak."""
    old = {"peaks": {}, "ratio": "cudnn_time / backend_time (> 1: fastconv faster)", "tables": {
        "cuda/conv2d/wgrad/float16": [{"shape": "r50-l1-3x3-c64-56", "layout": "channels_last", "cudnn_ms": 0.2,
                                       "ours_ms": 0.1, "ours_throughput": 300.0, "cudnn_throughput": 150.0,
                                       "unit": "TFLOP/s", "pct_peak": 40.0, "ratio": 2.0}],
        "triton/max_pool2d/fwd/float16": [{"shape": "p", "layout": "nchw", "cudnn_ms": 0.1, "ours_ms": 0.2,
                                           "ours_throughput": 900.0, "cudnn_throughput": 1800.0, "unit": "GB/s",
                                           "pct_peak": 30.0, "ratio": 0.5}]}}
    conv, pool = read_records(old)
    assert (conv.backend, conv.op, conv.mode, conv.dtype, conv.device) == ("cuda", "conv2d", "wgrad", "float16", "cuda")
    assert conv.unit == "GFLOP/s" and conv.ours_throughput == 300e3 and conv.torch_throughput == 150e3
    assert (conv.torch_ms, conv.ours_ms, conv.ours_pct_peak, conv.ratio) == (0.2, 0.1, 40.0, 2.0)
    assert (pool.backend, pool.unit, pool.ours_throughput, pool.torch_ms) == ("triton", "GB/s", 900.0, 0.1)


def test_compare_across_schemas(tmp_path, capsys):
    """The committed schema 1 `fastconv bench` file against the suites' old file, and a schema 2 file
    against both: rows match on (op, mode, shape, layout, dtype, backend)."""
    _, v1 = load_rows(BENCH_V1)
    _, suite = load_rows(SUITE_V1)
    res = compare(BENCH_V1, SUITE_V1)
    shared = [k for k in v1 if k in suite]
    assert shared and len(res["rows"]) == len(shared)
    row = res["rows"][0]
    assert row["time_change"] == pytest.approx(suite[row["key"]].ours_ms / v1[row["key"]].ours_ms)
    recs = [BenchRecord.from_dict(dict(suite[k].to_dict(), ours_ms=suite[k].ours_ms / 2)) for k in shared[:3]]
    new = tmp_path / "new.json"
    new.write_text(json.dumps(make_report("fastconv-bench", recs, "cpu", {"threads": 2}, PEAK)))
    res = compare(SUITE_V1, new)
    assert len(res["rows"]) == 3 and res["geomean_time_change"] == pytest.approx(0.5)
    assert main(["bench", "--compare", str(BENCH_V1), str(new)]) == 0
    assert "ratio A" in capsys.readouterr().out
