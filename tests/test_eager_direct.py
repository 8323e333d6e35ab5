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


# ----------------------------------------------------------------------------------------------------
# Eager training: eager_route's AUTOGRAD runs the op's implementation inside a plain autograd.Function.

def _grads(fn, x, w, b, g):
    x, w, b = (t.detach().clone().requires_grad_() for t in (x, w, b))
    y = fn(x, w, b, stride=(1, 2), padding=1)
    y.backward(g)
    return y.detach(), x.grad, w.grad, b.grad, y.grad_fn


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_eager_autograd_and_op_paths_bitwise_equal(backend, relu, channels_last, dtype):
    x, w, b = _args(channels_last, dtype)
    fn = FC.conv2d_relu if relu else FC.conv2d
    g = torch.randn(2, 6, 9, 5, dtype=dtype)
    eager = _grads(fn, x, w, b, g)
    with _FunctionRecorder():  # a mode: the torch.ops path and the op's registered autograd
        op = _grads(fn, x, w, b, g)
    assert type(eager[-1]).__name__ == "FastconvConv2dBackward"
    assert type(op[-1]).__name__ != "FastconvConv2dBackward"
    for name, a, o in zip(("y", "dx", "dw", "db"), eager[:-1], op[:-1]):
        assert a.stride() == o.stride(), name
        assert torch.equal(a, o), name


def test_eager_autograd_route_conditions():
    from fastconv.ops._eager import AUTOGRAD, DIRECT, OP, eager_route
    x, w, b = _args()
    assert eager_route(x, w, b) == DIRECT
    w.requires_grad_()
    assert eager_route(x, w, b) == AUTOGRAD
    with torch.no_grad():
        assert eager_route(x, w, b) == DIRECT
    with _FunctionRecorder():
        assert eager_route(x, w, b) == OP
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert eager_route(x, w, b) == OP
    assert eager_route(x.as_subclass(_Sub), w, b) == OP


def test_eager_autograd_partial_grads_and_hooks(backend, monkeypatch):
    """Only the gradients autograd asks for; saved-tensor hooks see the saved tensors; the backward
    ops go direct (no torch.ops call reaches a dispatch mode set inside the backward)."""
    x, w, b = _args()
    w.requires_grad_()
    packed = []

    def pack(t):
        packed.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = FC.conv2d(x, w, b, padding=1)
    assert type(y.grad_fn).__name__ == "FastconvConv2dBackward"
    assert (2, 8, 9, 10) in packed and (6, 8, 3, 3) in packed
    dw, = torch.autograd.grad(y.sum(), (w,))
    assert x.grad is None and b.grad is None
    wr = w.detach().double().requires_grad_()
    ref, = torch.autograd.grad(torch.nn.functional.conv2d(x.double(), wr, b.double(), padding=1).sum(), (wr,))
    torch.testing.assert_close(dw.double(), ref, rtol=1e-4, atol=1e-4)
    seen = []
    monkeypatch.setattr(conv_ops, "direct_ok", lambda *t: seen.append(direct_ok(*t)) or seen[-1])
    FC.conv2d(x, w, b, padding=1).sum().backward()
    assert w.grad is not None and seen == [True]  # the weight gradient's op, called directly


def test_profiler_sees_backward_ops_in_training(backend):
    x, w, b = _args()
    w.requires_grad_()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        FC.conv2d(x, w, b, padding=1).sum().backward()
    names = {e.name for e in prof.events()}
    assert {"fastconv::conv2d", "fastconv::conv2d_wgrad"} <= names


def test_double_backward_same_on_both_paths(backend):
    """create_graph=True: the backward ops go through torch.ops on both paths, which have no autograd
    formula of their own; both paths raise the same error at the second backward."""
    x, w, _ = _args()
    errors = []
    for mode in (None, _FunctionRecorder()):
        xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
        if mode is not None:
            mode.__enter__()
        try:
            gx, = torch.autograd.grad(FC.conv2d(xg, wg, None, padding=1).sum(), (xg,), create_graph=True)
            assert gx.requires_grad
            with pytest.raises(RuntimeError, match="no autograd formula") as err:
                gx.sum().backward()
            errors.append(str(err.value))
        finally:
            if mode is not None:
                mode.__exit__(None, None, None)
    assert errors[0] == errors[1]
