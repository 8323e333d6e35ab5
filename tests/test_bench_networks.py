"""The network benchmark (fastconv.benchmarks.networks, `fastconv bench --models / --breakdown`): the
command writes a valid report with ratios, the checks catch a wrong network, the breakdown's conv
geometries add up to the network's conv layers, the records / summary / printer additions. Tiny
images (32 px), quick timing; no assertion on speed."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import fastconv
from fastconv.benchmarks import networks as N
from fastconv.benchmarks import runner as R
from fastconv.benchmarks.records import (BASELINE, BenchRecord, Collector, Timing, format_records,
                                         network_summary)
from fastconv.benchmarks.report import SCHEMA_VERSION, make_report, read_records
from fastconv.cli import main

SIZE = 32
# The training checks at 64 px: at 32 px the last stages of these networks are 1x1, and batch norm in train
# mode over 2 values per channel makes the gradients ill-conditioned (mobilenet_v2's first-layer gradient
# norm is 6e8 in float32 against 3e8 in float64), so a check there can only be loose.
TRAIN_SIZE = 64
PEAK = {"compute_gflops": 100.0, "bandwidth_gbps": 10.0}


def _n_convs(model: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in model.modules())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("netbench")
    rc = main(["bench", "--models", "tv_resnet18", "--batches", "1,2", "--train-batch", "2", "--image-size", str(SIZE),
               "--variants", "torch,fastconv,fastconv-opt", "--quick", "--breakdown", "tv_resnet18", "--breakdown-batch", "2",
               "--out", str(out)])
    assert rc == 0
    return out, json.loads((out / "bench.json").read_text())


def test_report(run):
    out, report = run
    assert report["schema_version"] == SCHEMA_VERSION == 2 and report["kind"] == "fastconv-bench"
    cfg = report["config"]
    assert cfg["networks"] == ["tv_resnet18"] and cfg["image_size"] == SIZE
    assert cfg["variants"] == ["torch", "fastconv", "fastconv-opt"]
    nets = [r for r in report["rows"] if r["op"] == "network"]
    # fastconv-opt (optimize folds eval BatchNorm) is timed for inference only
    expected = {(m, f"tv_resnet18@b{b}", lay, v) for m, b in (("infer", 1), ("infer", 2), ("train", 2))
                for lay in ("nchw", "channels_last") for v in ("fastconv", "fastconv-opt") if m == "infer" or v == "fastconv"}
    assert {(r["mode"], r["shape"], r["layout"], r["backend"]) for r in nets} == expected
    for r in nets:
        assert r["note"] is None, r
        assert r["ours_ms"] > 0 and r["torch_ms"] > 0 and abs(r["ratio"] - r["torch_ms"] / r["ours_ms"]) < 1e-9
        assert r["shape_params"]["network"] == "tv_resnet18" and r["shape_params"]["image_size"] == SIZE
        assert r["work"] > 0 and r["ours_throughput"] > 0 and r["table"] == "networks"
    summary = {(s["mode"], s["batch"], s["layout"], s["variant"], s["baseline"]): s for s in report["network_summary"]}
    assert set(summary) == {(m, b, lay, v, "torch") for m, b in (("infer", 1), ("infer", 2), ("train", 2))
                            for lay in ("nchw", "channels_last") for v in ("fastconv", "fastconv-opt")
                            if m == "infer" or v == "fastconv"}
    assert all(s["networks"] == 1 and s["geomean_ratio"] > 0 for s in summary.values())
    assert (out / "ratio.png").read_bytes()[:4] == b"\x89PNG"
    assert read_records(report)[0].op == "network"  # the reader takes the new fields


def test_breakdown(run):
    _, report = run
    n_convs = _n_convs(N.build_network("tv_resnet18", SIZE))
    info = report["breakdown"]
    assert info["network"] == "tv_resnet18" and info["conv_layers"] == n_convs == 20 and info["batch"] == 2
    rows = [r for r in report["rows"] if r["op"] == "conv2d"]
    for mode in ("fwd", "fwdbwd"):
        for layout in ("nchw", "channels_last"):
            mine = [r for r in rows if r["mode"] == mode and r["layout"] == layout]
            assert len(mine) == info["geometries"] and sum(r["count"] for r in mine) == n_convs
            assert all(r["path"] and r["ratio"] > 0 and r["note"] is None for r in mine)
            assert all(r["table"] == "breakdown:tv_resnet18@b2" for r in mine)
            shares = [r["count"] * r["torch_ms"] for r in mine]
            assert shares == sorted(shares, reverse=True)
            if mode == "fwdbwd":
                assert all(("dgrad" in r["path"]) == r["shape_params"]["input_grad"] for r in mine)
    stem = [r for r in rows if r["shape_params"]["C"] == 3]
    assert stem and not any(r["shape_params"]["input_grad"] for r in stem)
    prof = info["profile"]["nchw"]
    assert set(prof) == {"infer", "train"} and set(prof["infer"]) == {"torch", "fastconv"}
    assert prof["infer"]["torch"]["conv"] > 0 and prof["train"]["fastconv"]["conv"] > 0


def test_printed_tables(run, capsys):
    _, report = run
    from fastconv.benchmarks.report import format_report

    text = "\n".join(format_report(report))
    assert "== network/infer float32 (fastconv vs torch eager) ==" in text
    assert "== networks: geometric mean over the networks" in text and "fastconv vs torch" in text
    assert "breakdown:tv_resnet18@b2" in text and "time-weighted ratio" in text
    assert "self time per op category" in text


@pytest.mark.parametrize("network", ["tv_resnet18", "mobilenet_v2"])
def test_conv_layers_add_up(network):
    model = N.build_network(network, SIZE)
    layers = N.conv_layers(model, N.make_input(2, SIZE, "channels_last"))
    assert sum(layers.values()) == _n_convs(model)
    assert len({s.name for s in layers}) == len(layers)
    assert all(s.N == 2 for s in layers)
    first = next(iter(layers))
    assert first.C == 3 and not first.input_grad and all(s.input_grad for s in list(layers)[1:])
    if network == "mobilenet_v2":
        assert any(s.groups == s.C == s.K > 1 and s.name.endswith("dw") for s in layers)


def _breaking(monkeypatch, how):
    """fastconv.convert, then one conv in the middle of the model computes something else."""
    real = fastconv.convert

    def convert(model, *args, **kwargs):
        model = real(model, *args, **kwargs)
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        conv = convs[len(convs) // 2]
        forward = conv.forward
        conv.forward = lambda x: how(forward(x))
        return model

    monkeypatch.setattr(fastconv, "convert", convert)


def _one(mode, batch=2, network="tv_resnet18", size=SIZE):
    cfg = N.NetConfig(batches=(batch,), modes=(mode,), variants=(BASELINE, "fastconv"), layouts=("nchw",),
                      image_size=size, train_batch=batch)
    return N.bench_network(network, cfg, R.TimingConfig.quick(), PEAK)


def test_infer_check_catches_a_wrong_conv(monkeypatch):
    _breaking(monkeypatch, lambda y: y + 1.0)
    (row,) = _one("infer")
    assert row.ours_ms is None and row.ratio is None and row.torch_ms > 0
    assert row.note.startswith("MISMATCH vs torch: logits")


def test_train_check_catches_a_wrong_conv(monkeypatch):
    # a constant added to a conv's output disappears in the train-mode batch norm after it; a flip does not
    _breaking(monkeypatch, lambda y: y.flip(-1))
    (row,) = _one("train", size=TRAIN_SIZE)
    assert row.ours_ms is None and row.note.startswith("MISMATCH vs torch:"), row.note


def test_checks_pass_on_the_converted_network():
    base = N.build_network("mobilenet_v2", SIZE)
    x, y = N.make_input(2, SIZE, "channels_last"), N.make_labels(2)
    ref = N.infer_step("torch", N.variant_model("torch", base, "infer", "channels_last", x), x)()
    model = N.variant_model("fastconv", base, "infer", "channels_last", x)
    assert any(isinstance(m, fastconv.nn.Conv2d) for m in model.modules())
    with torch.inference_mode():  # fastconv's ops run under inference_mode
        out = model(x)
    N.check_infer(out, ref)
    assert ref.abs().max() > 0.1  # calibrated batch norm: logits of a usable scale, not ~1e-9
    base = N.build_network("mobilenet_v2", TRAIN_SIZE)
    x = N.make_input(2, TRAIN_SIZE, "channels_last")
    train_ref = N.train_reference(N.variant_model("torch", base, "train", "channels_last", x), x, y)
    N.check_train(N.train_values(N.variant_model("fastconv", base, "train", "channels_last", x), x, y), train_ref)
    with pytest.raises(AssertionError, match="loss"):
        N.check_train((train_ref[0][0] * 1.01, train_ref[0][1]), train_ref)


def test_compile_variant_with_freezing():
    """The compile variant (inference, Inductor freezing) on a small conv net: compiles, matches eager."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 10))
    N.calibrate_batch_norm(base, 8)
    x = N.make_input(2, 8, "channels_last")
    ref = N.infer_step("torch", base, x)()
    model = N.variant_model("compile", base, "infer", "channels_last", x)
    seconds, out = N.compile_first_call(model, x)
    assert seconds > 0
    N.check_infer(out, ref)
    N.check_infer(N.infer_step("compile", model, x)(), ref)
    with pytest.raises(ValueError, match="inference only"):
        N.variant_model("compile", base, "train", "nchw", x)


def _net_row(net, batch, layout, backend, ours, torch_ms, mode="infer"):
    shape = N.NetShape(net, batch, 64)
    return BenchRecord.measured("network", mode, shape, layout, ours=Timing(ours, ours, ours, 3),
                                base=Timing(torch_ms, torch_ms, torch_ms, 3), work=1e9, unit="GFLOP/s", peak=PEAK,
                                backend=backend, table="networks", compile_s=30.0 if backend == "compile" else None)


def test_network_summary_and_printer():
    recs = [_net_row("a", 1, "nchw", "fastconv", 1.0, 2.0), _net_row("a", 1, "nchw", "compile", 0.5, 2.0),
            _net_row("b", 1, "nchw", "fastconv", 1.0, 0.5), _net_row("b", 1, "nchw", "compile", 2.0, 0.5),
            _net_row("a", 8, "nchw", "fastconv", 1.0, 1.5)]
    s = {(x["batch"], x["variant"], x["baseline"]): x for x in network_summary(recs)}
    assert s[(1, "fastconv", "torch")]["geomean_ratio"] == pytest.approx(1.0)   # 2 and 0.5
    assert s[(1, "compile", "torch")]["geomean_ratio"] == pytest.approx(1.0)    # 4 and 0.25
    assert s[(1, "fastconv", "compile")]["geomean_ratio"] == pytest.approx(1.0)  # 0.5 and 2
    assert s[(8, "fastconv", "torch")]["networks"] == 1 and (8, "fastconv", "compile") not in s
    text = "\n".join(format_records(recs))
    assert "(compile 30.0 s)" in text and "fastconv vs compile" in text and "compile vs torch" in text
    report = make_report("fastconv-bench", recs, "cpu", {"threads": 2}, PEAK)
    assert report["network_summary"] == network_summary(recs)
    assert read_records(json.loads(json.dumps(report))) == recs
    plain = make_report("fastconv-bench", [], "cpu", {"threads": 2}, PEAK)
    assert "network_summary" not in plain and "breakdown" not in plain


def test_collector_keeps_variants_to_their_op():
    """A suite session with the op benchmarks (backend cpu) and the network ones (variants): rows only
    where a side ran on that op."""
    c = Collector(["cpu"])
    conv = R.Case("conv2d", "fwd", R.ConvShape(1, 3, 8, 8, 4, 3, 3), "nchw", "torch", 1.0, "GFLOP/s")
    net = R.Case("network", "infer", N.NetShape("a", 1), "nchw", "torch", 1.0, "GFLOP/s")
    for case, side in ((conv, BASELINE), (conv, "cpu"), (net, BASELINE), (net, "fastconv"), (net, "compile")):
        c.add(case, Timing(1e-3, 1e-3, 1e-3, 3), side)
    assert [(r.op, r.backend) for r in c.records(PEAK)] == [("conv2d", "cpu"), ("network", "fastconv"),
                                                          ("network", "compile")]


def test_op_categories():
    cat = N.op_category
    assert cat("aten::mkldnn_convolution") == cat("fastconv::conv2d_relu[cpu,float32,3x3,s1]") == "conv"
    assert cat("autograd::engine::evaluate_function: ConvolutionBackward0") == "conv"
    assert cat("fastconv::max_pool2d[cpu,float32,3x3,s2]") == "pool"
    assert cat("GeneratedBackwardFor_fastconv_max_pool2d_with_indices_default") == "pool"
    assert cat("GeneratedBackwardFor_fastconv_conv2d_default") == "conv"
    assert cat("GeneratedBackwardFor_fastconv_batch_norm_default") == "batch_norm"
    assert cat("aten::native_batch_norm") == "batch_norm" and cat("aten::relu_") == "activation"
    assert cat("aten::addmm") == cat("aten::mm") == "linear" and cat("aten::to") == "copy/alloc"
    assert cat("Optimizer.step#SGD.step") == "optimizer" and cat("aten::add_") == "elementwise"


def test_bad_arguments(capsys):
    assert main(["bench", "--models", "resnet9000"]) == 2
    assert main(["bench", "--models", "tv_resnet18", "--modes", "fwd"]) == 2
    assert main(["bench", "--models", "tv_resnet18", "--variants", "torch,jit"]) == 2
    assert main(["bench", "--models", "tv_resnet18", "--batches", "0"]) == 2
    assert main(["bench", "--models", "googlenet", "--image-size", "8"]) == 2
    err = capsys.readouterr().err
    assert "unknown network 'resnet9000'" in err and "infer, train" in err and "googlenet 15" in err
    assert N.network_names(["all"]) == list(N.DEFAULT_NETWORKS)
