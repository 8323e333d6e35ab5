"""Deployment: ONNX export (both exporters, run in ONNX Runtime), torch.jit.trace with its checks, and
torch.export save/load, of converted (fastconv.convert) and optimized (fastconv.optimize) models.

The ONNX tests need the [onnx] extra (onnx, onnxscript, onnxruntime; [test] has them). Sizes are small
(32x32 inputs) to keep CI short.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch
from torch import nn

import fastconv
import fastconv.functional as FC
from fastconv.models import build_model

import fastconv.export as fexport

# The ONNX tests need the [onnx] extra (in [test] too); the TorchScript and torch.export tests do not.
HAS_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX,
                                reason="needs onnx, onnxscript, onnxruntime: pip install 'fastconv[onnx]'")

EXPORTERS = [pytest.param(True, id="dynamo"), pytest.param(False, id="torchscript")]
MODELS = ["tv_resnet18", "mobilenet_v2"]


def _model(name: str, optimize: bool, seed: int = 0) -> nn.Module:
    """A converted zoo model in eval mode with random BatchNorm statistics (fresh ones are the identity,
    and MobileNetV2's initial classifier gives outputs near 0: a comparison would prove little)."""
    torch.manual_seed(seed)
    model = build_model(name, num_classes=10, image_size=32, backend="torch")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.1)
    model = fastconv.convert(model.eval())
    if optimize:
        model = fastconv.optimize(model, (torch.randn(1, 3, 32, 32),))
    return model


def _onnx_run(path, *inputs):
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), inputs)}
    return [torch.from_numpy(o) for o in sess.run(None, feed)]


def _assert_standard_onnx(path):
    import onnx
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    nodes = list(model.graph.node)
    custom = [(n.domain, n.op_type) for n in nodes if n.domain not in ("", "ai.onnx")]
    assert not custom, f"custom-domain nodes in the exported graph: {custom}"
    assert not model.functions, f"local functions in the exported graph: {[f.name for f in model.functions]}"
    return {n.op_type for n in nodes}


def _export(module, args, path, dynamo):
    fexport.to_onnx(module, args, str(path), dynamo=dynamo, **({"verbose": False} if dynamo else {}))


@needs_onnx
@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("optimize", [False, True], ids=["converted", "optimized"])
@pytest.mark.parametrize("name", MODELS)
def test_zoo_onnx_matches_torch(name, optimize, dynamo, tmp_path):
    model = _model(name, optimize)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    _export(model, (x,), tmp_path / "m.onnx", dynamo)
    ops = _assert_standard_onnx(tmp_path / "m.onnx")
    assert "Conv" in ops
    (out,) = _onnx_run(tmp_path / "m.onnx", x)
    assert ref.abs().max() > 0.1  # the comparison below is not one of near-zero outputs
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


# ---- each translation on its own: every case of a grid is one output of one exported module ----

class _Cases(nn.Module):
    """forward(*inputs) -> one output per case (a case returning a tuple adds each element): a grid
    costs one export per exporter, which is what takes the time (about 4 s each with dynamo)."""

    def __init__(self, cases):
        super().__init__()
        self.cases = cases

    def forward(self, *xs):
        outs = []
        for fn in self.cases:
            y = fn(*xs)
            outs.extend(y if isinstance(y, tuple) else (y,))
        return tuple(outs)


def _check_onnx(cases, inputs, tmp_path, dynamo, want_ops, tol=1e-5):
    module = _Cases(cases).eval()
    with torch.no_grad():
        refs = module(*inputs)
    _export(module, tuple(inputs), tmp_path / "op.onnx", dynamo)
    ops = _assert_standard_onnx(tmp_path / "op.onnx")
    assert want_ops <= ops, f"expected ONNX ops {want_ops} in {ops}"
    outs = _onnx_run(tmp_path / "op.onnx", *inputs)
    assert len(outs) == len(refs)
    for i, (o, r) in enumerate(zip(outs, refs)):
        torch.testing.assert_close(o, r, rtol=tol, atol=tol, msg=lambda m: f"output {i}: {m}")


CONV_CASES = [  # (C, K, kernel, stride, padding, dilation, groups, bias)
    (3, 8, 3, 1, 1, 1, 1, True),
    (4, 6, (3, 1), (2, 1), (1, 0), 1, 2, False),
    (8, 8, 3, 2, 2, 2, 8, True),
    (3, 7, 1, 1, 0, 1, 1, True),
]


def _conv_case(case, relu, x_channels, seed):
    C, K, k, stride, padding, dilation, groups, bias = case
    kh, kw = (k, k) if isinstance(k, int) else k
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(K, C // groups, kh, kw, generator=g)
    b = torch.randn(K, generator=g) if bias else None
    f = FC.conv2d_relu if relu else FC.conv2d
    return lambda x: f(x[:, :C], w, b, stride, padding, dilation, groups)


@needs_onnx
@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_conv2d_onnx(dynamo, tmp_path):
    cases = [_conv_case(c, relu, 8, i) for i, c in enumerate(CONV_CASES) for relu in (False, True)]
    x = torch.randn(2, 8, 11, 10, generator=torch.Generator().manual_seed(1))
    _check_onnx(cases, [x], tmp_path, dynamo, {"Conv", "Relu"}, tol=1e-4)


CONV1D_CASES = [  # (C, K, kernel, stride, padding, dilation, groups, bias)
    (3, 8, 3, 1, 1, 1, 1, True), (4, 6, 5, 2, 2, 2, 2, False), (8, 8, 3, 1, 1, 1, 8, True),
]
CONV_T_CASES = [  # (C, K, kernel, stride, padding, output_padding, dilation, groups, bias)
    (4, 6, 3, 2, 1, 1, 1, 1, True), (4, 6, 2, 1, 0, 0, 2, 2, False), (8, 8, 3, 3, 1, 2, 1, 8, True),
]


def _conv1d_case(case, relu, seed):
    C, K, k, stride, padding, dilation, groups, bias = case
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(K, C // groups, k, generator=g)
    b = torch.randn(K, generator=g) if bias else None
    f = FC.conv1d_relu if relu else FC.conv1d
    return lambda x, x2: f(x[:, :C], w, b, stride, padding, dilation, groups)


def _conv_t_case(case, nd, seed):
    C, K, k, stride, padding, out_pad, dilation, groups, bias = case
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(C, K // groups, *([k] * nd), generator=g)
    b = torch.randn(K, generator=g) if bias else None
    f = FC.conv_transpose1d if nd == 1 else FC.conv_transpose2d
    return lambda x, x2: f((x if nd == 1 else x2)[:, :C], w, b, stride, padding, out_pad, groups, dilation)


@needs_onnx
@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_conv1d_and_transposed_onnx(dynamo, tmp_path):
    g = torch.Generator().manual_seed(6)
    x, x2 = torch.randn(2, 8, 13, generator=g), torch.randn(2, 8, 7, 6, generator=g)
    cases = [_conv1d_case(c, relu, i) for i, c in enumerate(CONV1D_CASES) for relu in (False, True)]
    cases += [_conv_t_case(c, nd, i) for i, c in enumerate(CONV_T_CASES) for nd in (1, 2)]
    _check_onnx(cases, [x, x2], tmp_path, dynamo, {"Conv", "Relu", "ConvTranspose"}, tol=1e-4)


EPILOGUE_CASES = [  # (activation, scale, residual: none/before/after, bias)
    ("none", False, "none", True), ("relu", False, "before", True), ("relu", True, "after", False),
    ("relu6", True, "none", True), ("silu", False, "after", True), ("hardswish", True, "before", True),
    ("hardsigmoid", False, "none", False), ("gelu", True, "none", True), ("sigmoid", False, "before", True),
]


def test_epilogue_cases_cover_every_activation():
    from fastconv.ops.conv2d_fused import ACTIVATIONS
    assert {c[0] for c in EPILOGUE_CASES} == set(ACTIVATIONS)


def _epilogue_case(case, seed):
    activation, has_scale, residual, bias = case
    g = torch.Generator().manual_seed(seed)
    w, b, s = torch.randn(6, 4, 3, 3, generator=g), torch.randn(6, generator=g), torch.rand(6, generator=g) + 0.5
    return lambda x, r: FC.conv2d_epilogue(x, w, b if bias else None, 1, 1, 1, 1,
                                           scale=s if has_scale else None, activation=activation,
                                           residual=None if residual == "none" else r,
                                           residual_after_activation=residual == "after")


@needs_onnx
@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_conv2d_epilogue_onnx(dynamo, tmp_path):
    g = torch.Generator().manual_seed(2)
    x, r = torch.randn(2, 4, 9, 9, generator=g), torch.randn(2, 6, 9, 9, generator=g)
    cases = [_epilogue_case(c, i) for i, c in enumerate(EPILOGUE_CASES)]
    _check_onnx(cases, [x, r], tmp_path, dynamo, {"Conv"}, tol=1e-4)


MAX_CASES = [  # (kernel, stride, padding, dilation, ceil_mode, return_indices)
    (3, 2, 1, 1, False, True), (2, 2, 0, 1, True, True), ((3, 2), (2, 1), (1, 0), 2, True, False),
    (3, 1, 1, (1, 2), False, False),
]


@needs_onnx
@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_max_pool2d_onnx(dynamo, tmp_path):
    """With return_indices the indices are torch's (the position in the plane), not ONNX's (in the tensor)."""
    x = torch.randn(2, 3, 12, 11, generator=torch.Generator().manual_seed(3))
    cases = [lambda x, c=c: FC.max_pool2d(x, *c[:5], return_indices=c[5]) for c in MAX_CASES]
    _check_onnx(cases, [x], tmp_path, dynamo, {"MaxPool", "Mod"})


AVG_CASES = [  # (kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
    (3, 2, 1, False, True, None), (3, 2, 1, True, False, None), ((2, 3), (1, 2), (1, 1), True, True, None),
    (3, 2, 1, False, True, 5), (2, 2, 0, False, False, 3),
]


@needs_onnx
@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_avg_pool2d_onnx(dynamo, tmp_path):
    x = torch.randn(2, 3, 12, 11, generator=torch.Generator().manual_seed(5))
    cases = [lambda x, c=c: FC.avg_pool2d(x, *c) for c in AVG_CASES]
    _check_onnx(cases, [x], tmp_path, dynamo, {"AveragePool"})


@needs_onnx
def test_avg_pool2d_divisor_with_ceil_mode_is_refused(tmp_path):
    x = torch.randn(1, 2, 7, 7)
    module = _Cases([lambda x: FC.avg_pool2d(x, 2, 2, 0, True, True, 3)])
    with pytest.raises(Exception, match="divisor_override and ceil_mode"):
        _export(module, (x,), tmp_path / "m.onnx", False)


def _forward_ops():
    names = [n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastconv::")]
    return sorted({n.split(".")[0] for n in names
                   if not n.endswith(("_backward", "_dgrad", "_wgrad"))})


def test_every_forward_op_has_a_translation():
    """A new fastconv op needs one TRANSLATIONS entry (docs/deployment.md) to export to ONNX."""
    ops = _forward_ops()
    assert "conv2d" in ops and "max_pool2d" in ops
    missing = [op for op in ops if op not in fexport.TRANSLATIONS]
    assert not missing, f"fastconv ops without an ONNX translation in fastconv/export.py: {missing}"
    assert set(fexport.onnx_translation_table()) == {getattr(torch.ops.fastconv, n).default
                                                      for n in fexport.TRANSLATIONS}


def test_to_onnx_rejects_a_non_module(tmp_path):
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        fexport.to_onnx(lambda x: x, (torch.randn(1),), tmp_path / "m.onnx")


# ---- torch.jit.trace (default checks) and a fresh process loading what was saved ----

_LOAD_AND_RUN = """
import sys, torch
import fastconv  # registers the fastconv ops that the saved programs call
x, cases = torch.load(sys.argv[1])
for kind, path, ref in cases:
    module = torch.jit.load(path) if kind == "torchscript" else torch.export.load(path).module()
    with torch.no_grad():
        torch.testing.assert_close(module(x), ref, rtol=1e-5, atol=1e-5, msg=lambda m: path + ": " + m)
print("fresh-process match:", len(cases))
"""


def _fresh_process_check(x, cases, tmp_path):
    """Loads every (kind, path, expected output) in one new Python process and compares (one process:
    starting one and importing torch is most of the cost)."""
    torch.save((x, cases), tmp_path / "cases.pt")
    res = subprocess.run([sys.executable, "-c", _LOAD_AND_RUN, str(tmp_path / "cases.pt")],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and f"fresh-process match: {len(cases)}" in res.stdout, res.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_jit_trace_and_torch_export_round_trip(name, tmp_path):
    """Converted and optimized: torch.jit.trace with its default checks (it retraces under no_grad and
    compares the graphs) and torch.export, each saved and loaded in the same and in a fresh process."""
    x = torch.randn(2, 3, 32, 32)
    cases = []
    for optimize in (False, True):
        model = _model(name, optimize)
        with torch.no_grad():
            ref = model(x)
        traced = torch.jit.trace(model, x)
        assert "fastconv::" in str(traced.inlined_graph)  # the traced module runs fastconv's kernels
        ep = torch.export.export(model, (x,))
        assert any(str(n.target).startswith("fastconv.") for n in ep.graph.nodes)
        tag = "optimized" if optimize else "converted"
        ts_path, ep_path = tmp_path / f"{tag}.pt", tmp_path / f"{tag}.pt2"
        traced.save(str(ts_path))
        torch.export.save(ep, str(ep_path))
        with torch.no_grad():
            torch.testing.assert_close(traced(x), ref, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(torch.export.load(str(ep_path)).module()(x), ref, rtol=1e-5, atol=1e-5)
        cases += [("torchscript", str(ts_path), ref), ("exported", str(ep_path), ref)]
    _fresh_process_check(x, cases, tmp_path)


def test_jit_trace_graph_is_independent_of_grad_mode():
    """The cause of jit.trace's 'Graphs differed' failure: the ops chosen depended on the grad mode."""
    torch.manual_seed(0)
    small = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
    x = torch.randn(1, 3, 16, 16)
    model = fastconv.optimize(fastconv.convert(small.eval()), (x,))
    with torch.no_grad():
        no_grad = torch.jit.trace(model, x, check_trace=False).inlined_graph
    with_grad = torch.jit.trace(model, x, check_trace=False).inlined_graph

    def kinds(g):
        return [n.kind() for n in g.nodes()]
    assert kinds(no_grad) == kinds(with_grad)
    assert "fastconv::max_pool2d_with_indices" in kinds(no_grad)


@needs_onnx
def test_train_export_writes_models_that_agree(tmp_path):
    """`fastconv train --export ...`: the three files load (fresh objects) and give the same outputs."""
    from fastconv.cli.train import run_train

    metrics = run_train(["--epochs", "1", "--train-subset", "64", "--test-subset", "16", "--progress", "off",
                         "--out", str(tmp_path), "--export", "onnx", "--export", "torchscript",
                         "--export", "exported"])
    paths = metrics["exports"]
    assert sorted(paths) == ["exported", "onnx", "torchscript"]
    assert all(p.startswith(str(tmp_path)) for p in paths.values())
    x = torch.randn(1, 1, 8, 8)  # digits: one channel, 8x8
    with torch.no_grad():
        ts = torch.jit.load(paths["torchscript"])(x)
        ep = torch.export.load(paths["exported"]).module()(x)
    (ox,) = _onnx_run(paths["onnx"], x)
    _assert_standard_onnx(paths["onnx"])
    assert ts.shape == (1, 10) and ts.abs().max() > 0
    torch.testing.assert_close(ep, ts, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ox, ts, rtol=1e-4, atol=1e-4)


def test_optimized_model_torch_export_without_grad():
    """torch.export of an optimized model under no_grad (fake tensors: no data pointer for the fold's cache
    key); the program computes the fold from the parameters it holds, so it follows new weights."""
    torch.manual_seed(0)
    small = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
    x = torch.randn(1, 3, 8, 8)
    model = fastconv.optimize(fastconv.convert(small.eval()), (x,))
    with torch.no_grad():
        ref = model(x)
        ep = torch.export.export(model, (x,))
        torch.testing.assert_close(ep.module()(x), ref, rtol=1e-5, atol=1e-5)


def test_train_export_onnx_without_the_extra_stops_before_training(monkeypatch, tmp_path):
    import importlib.util as iu

    from fastconv.cli.train import run_train
    from fastconv.training.engine import ConfigError

    real = iu.find_spec
    monkeypatch.setattr(iu, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(ConfigError,
                       match=r"--export onnx: ONNX export needs onnxscript: pip install 'fastconv\[onnx\]'"):
        run_train(["--epochs", "1", "--out", str(tmp_path), "--export", "onnx"])
    assert not (tmp_path / "checkpoint.pt").exists()
    with pytest.raises(ValueError, match="export format must be one of"):
        fexport.check_format("tflite")


ADAPTIVE_CASES = [  # (op, output_size): global (1 x 1) and uniform windows of a 12 x 10 input
    ("adaptive_avg_pool2d", 1), ("adaptive_avg_pool2d", (4, 5)), ("adaptive_avg_pool2d", (6, 2)),
    ("adaptive_max_pool2d", (3, 5)), ("adaptive_max_pool2d", 1),
]


@needs_onnx
@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_adaptive_pools_onnx(dynamo, tmp_path):
    """Global average is GlobalAveragePool; uniform adaptive windows are AveragePool / MaxPool (max: torch's
    indices); a 1-d pool is the 2-d op on a view."""
    x = torch.randn(2, 3, 12, 10, generator=torch.Generator().manual_seed(6))
    cases = [lambda x, c=c: getattr(FC, c[0])(x, c[1]) for c in ADAPTIVE_CASES]
    cases.append(lambda x: FC.adaptive_max_pool2d(x, (4, 2), return_indices=True))
    cases.append(lambda x: FC.max_pool1d(x.flatten(2), 4, 2, 1))
    cases.append(lambda x: FC.adaptive_avg_pool1d(x.flatten(2), 20))
    _check_onnx(cases, [x], tmp_path, dynamo, {"GlobalAveragePool", "AveragePool", "MaxPool"})


@needs_onnx
def test_adaptive_pool_with_uneven_windows_is_refused(tmp_path):
    x = torch.randn(1, 2, 7, 7)
    with pytest.raises(ValueError, match="non-uniform windows"):
        _export(_Cases([lambda x: FC.adaptive_avg_pool2d(x, 3)]).eval(), (x,), tmp_path / "m.onnx", False)
