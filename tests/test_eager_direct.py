"""The eager direct path of the forward convolution ops (fastconv/ops/_eager.py).

Plain eager inference calls the ops' implementation without torch's dispatcher; every context that
must see the op (autograd, torch.compile, modes, functorch, autocast, profiler, jit.trace, forward AD,
subclasses, meta tensors) keeps the torch.ops path. Checked here: the condition itself in each
context, that the op really is seen there (a dispatch mode, the profiler, jit.trace, dynamo's graph),
that the direct path is really taken in plain eager, and that both paths give bitwise-equal results.
"""
from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import fastconv.functional as FC
import fastconv.ops.conv2d as conv_ops
from fastconv.ops._eager import direct_ok


def _args(channels_last=False, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 9, 10, generator=g, dtype=dtype)
    w = torch.randn(6, 8, 3, 3, generator=g, dtype=dtype)
    b = torch.randn(6, generator=g, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, w, b


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


class _FunctionRecorder(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


class _Sub(torch.Tensor):
    pass


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_direct_and_op_paths_bitwise_equal(backend, relu, channels_last, dtype):
    x, w, b = _args(channels_last, dtype)
    assert direct_ok(x, w, b)
    fn = FC.conv2d_relu if relu else FC.conv2d
    op = torch.ops.fastconv.conv2d_relu if relu else torch.ops.fastconv.conv2d
    y_direct = fn(x, w, b, stride=(1, 2), padding=1)
    y_op = op(x, w, b, [1, 2], [1, 1], [1, 1], 1)
    assert y_direct.dtype == y_op.dtype and y_direct.shape == y_op.shape
    assert y_direct.stride() == y_op.stride()
    assert torch.equal(y_direct, y_op)


def test_plain_eager_takes_direct_path(backend, monkeypatch):
    calls = []
    real = conv_ops._forward_impl
    monkeypatch.setattr(conv_ops, "_forward_impl", lambda *a: calls.append(a[-1]) or real(*a))
    x, w, b = _args()
    rec = _Recorder()
    FC.conv2d(x, w, b, padding=1)
    FC.conv2d_relu(x, w, None)
    assert calls == [False, True]
    with rec:  # through torch.ops, the op reaches the mode; the direct path does not go there
        FC.conv2d(x, w, b)
    assert "fastconv.conv2d.default" in rec.ops


def test_grad_keeps_op_path():
    x, w, b = _args()
    assert direct_ok(x, w, b)
    w.requires_grad_()
    assert not direct_ok(x, w, b)
    with torch.no_grad():
        assert direct_ok(x, w, b)
    p = torch.nn.Parameter(w.detach().clone())
    assert not direct_ok(x, p, None)
    p.requires_grad_(False)
    assert direct_ok(x, p, None)  # a Parameter is a plain tensor here (its __torch_function__ is disabled)


def test_autograd_still_records(backend):
    x, w, b = _args()
    w.requires_grad_()
    y = FC.conv2d(x, w, b, padding=1)
    assert y.grad_fn is not None
    y.sum().backward()
    assert w.grad is not None and w.grad.shape == w.shape


def test_modes_keep_op_path(backend):
    x, w, b = _args()
    rec = _Recorder()
    with rec:
        assert not direct_ok(x, w, b)
        FC.conv2d_relu(x, w, b, padding=1)
    assert "fastconv.conv2d_relu.default" in rec.ops
    with _FunctionRecorder():
        assert not direct_ok(x, w, b)


def test_subclass_and_meta_keep_op_path():
    x, w, b = _args()
    assert not direct_ok(x.as_subclass(_Sub), w, b)
    assert not direct_ok(x, w, b.as_subclass(_Sub))
    assert not direct_ok(x.to("meta"), w.to("meta"), None)
    y = FC.conv2d(x.to("meta"), w.to("meta"), b.to("meta"), padding=1)  # the op's fake implementation
    assert y.is_meta and y.shape == (2, 6, 9, 10)


def test_functorch_autocast_forward_ad_keep_op_path():
    x, w, b = _args()
    seen = []
    torch.vmap(lambda xi: seen.append(direct_ok(xi, w, b)) or xi)(x)
    assert seen == [False]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not direct_ok(x, w, b)
    with fwAD.dual_level():
        assert not direct_ok(x, w, b)
    assert direct_ok(x, w, b)


def test_profiler_sees_op(backend):
    x, w, b = _args()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        assert not direct_ok(x, w, b)
        FC.conv2d(x, w, b, padding=1)
    assert any(e.name == "fastconv::conv2d" for e in prof.events())


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # _conv_args's shape checks, traced as constants
def test_jit_trace_records_op(backend):
    x, w, b = _args()
    traced = torch.jit.trace(lambda t: FC.conv2d(t, w, b, padding=1), (x,), check_trace=False)
    assert "fastconv::conv2d" in str(traced.graph)
    assert torch.equal(traced(x), FC.conv2d(x, w, b, padding=1))


def test_dynamo_graph_holds_op(backend):
    import torch._dynamo
    torch._dynamo.reset()
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    x, w, b = _args()
    fn = torch.compile(lambda t: FC.conv2d(t, w, b, padding=1), backend=capture, fullgraph=True)
    y = fn(x)
    assert len(graphs) == 1
    assert any("fastconv.conv2d" in str(n.target) for n in graphs[0].graph.nodes), graphs[0].graph
    assert torch.equal(y, FC.conv2d(x, w, b, padding=1))
