"""torch.compile(model, backend="fastconv"): dynamo's graph rewritten with fused fastconv ops, then Inductor.

One small CNN holds every pattern the rewrite fuses (conv-BatchNorm-ReLU, a ResNet block's add then ReLU,
an inverted residual's add, an SE gate, hardswish, an activation then an add). Compilation is slow on
two cores, so each mode (inference, training, eval under autograd) compiles it once.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from torch import nn

import fastconv.fusion.compile_backend as cb
from helpers import assert_net_close, randomize_bn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.expand = nn.Conv2d(8, 16, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(16)
        self.fc1 = nn.Conv2d(16, 4, 1)
        self.fc2 = nn.Conv2d(4, 16, 1)
        self.project = nn.Conv2d(16, 8, 1, bias=False)
        self.bn4 = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 8, 3, padding="same")
        self.tail = nn.Conv2d(8, 8, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.relu(self.bn0(self.stem(x)))                      # conv+bn+relu
        y = self.relu(self.bn1(self.conv1(x)))                      # conv+bn+relu
        y = self.bn2(self.conv2(y))
        y += x
        x = self.relu(y)                                            # conv+bn+add+relu
        z = F.hardswish(self.bn3(self.expand(x)))                   # conv+bn+hardswish
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(z.mean((2, 3), keepdim=True)))))  # conv+relu, conv+sigmoid
        x = x + self.bn4(self.project(z * gate))                    # conv+bn+add (residual first)
        x = F.silu(self.head(x)) + x                                # conv+silu+add
        return F.relu(self.tail(x) + x)                             # conv+add+relu


INFERENCE = {"conv+bn+relu": 2, "conv+bn+add+relu": 1, "conv+bn+hardswish": 1, "conv+relu": 1,
             "conv+sigmoid": 1, "conv+bn+add": 1, "conv+silu+add": 1, "conv+add+relu": 1}
# BatchNorm in training mode stays torch's: the convs before it are plain fastconv convs
TRAINING = {"conv": 5, "conv+relu": 1, "conv+sigmoid": 1, "conv+silu+add": 1, "conv+add+relu": 1}


def make_net() -> Net:
    torch.manual_seed(0)
    return randomize_bn(Net())


def recording_rewrite():
    """A clean dynamo cache and counters, and cb.rewrite wrapped to keep the graphs it rewrote."""
    torch._dynamo.reset()
    cb.stats.clear()
    graphs = []
    original = cb.rewrite

    def rewrite(gm, example_inputs):
        result = original(gm, example_inputs)
        graphs.append(gm.graph)
        return result

    return graphs, rewrite


def targets(graph) -> set:
    return {n.target for n in graph.nodes if n.op == "call_function"}


def test_backend_registered_and_declared():
    assert "fastconv" in torch._dynamo.list_backends()
    # declared for an installed fastconv: torch.compile finds it without `import fastconv`
    pyproject = (Path(__file__).parent.parent / "pyproject.toml").read_text()
    assert re.search(r'\[project\.entry-points\."torch_dynamo_backends"\]\nfastconv = '
                     r'"fastconv\.fusion\.compile_backend:fastconv_backend"', pyproject)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_inference_fuses_folds_and_refolds(monkeypatch, memory_format):
    model = make_net().eval().to(memory_format=memory_format)
    graphs, rewrite = recording_rewrite()
    monkeypatch.setattr(cb, "rewrite", rewrite)
    x = torch.randn(2, 3, 10, 9).contiguous(memory_format=memory_format)
    compiled = torch.compile(model, backend="fastconv")
    with torch.no_grad():
        assert_net_close(compiled(x), model(x))
        assert dict(cb.stats) == INFERENCE
        ops = targets(graphs[0])
        assert torch.ops.fastconv.conv2d_fused.default in ops and torch.ops.fastconv.conv2d_relu.default in ops
        assert not ops & {torch.conv2d, F.batch_norm, F.relu, F.hardswish, torch.sigmoid}
        # the folded weights follow the model: a parameter written in place, a BatchNorm statistic
        model.conv1.weight.mul_(1.5)
        model.bn4.running_var.add_(0.5)
        assert_net_close(compiled(x), model(x))
        model.load_state_dict(randomize_bn(make_net(), seed=3).state_dict())
        assert_net_close(compiled(x), model(x))
    assert len(graphs) == 1  # no recompilation for any of it


def test_fold_in_graph(monkeypatch):
    monkeypatch.setattr(cb, "FOLD", "graph")
    model = make_net().eval()
    torch._dynamo.reset()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        compiled = torch.compile(model, backend="fastconv")
        assert_net_close(compiled(x), model(x))
        model.bn1.running_mean.add_(1.0)
        assert_net_close(compiled(x), model(x))


def _step(fn, model, x):
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    y = fn(x)
    y.square().mean().backward()
    return y.detach(), x.grad, {n: p.grad for n, p in model.named_parameters()}


def test_training_step_matches_eager(monkeypatch):
    model = make_net().train()
    reference = copy.deepcopy(model)
    graphs, rewrite = recording_rewrite()
    monkeypatch.setattr(cb, "rewrite", rewrite)
    compiled = torch.compile(model, backend="fastconv")
    x = torch.randn(4, 3, 8, 8)
    for i in range(2):  # the second step starts from updated running statistics
        with torch.profiler.profile() as prof:
            y, gx, grads = _step(compiled, model, x)
        if i == 1:  # the backward runs fastconv's dgrad / wgrad kernels (the ops' registered autograd)
            names = {e.key for e in prof.key_averages()}
            assert {"fastconv::conv2d_fused", "fastconv::conv2d_dgrad", "fastconv::conv2d_wgrad"} <= names
        y_ref, gx_ref, grads_ref = _step(reference, reference, x)
        assert_net_close(y, y_ref)
        assert_net_close(gx, gx_ref, "input gradient", tol=1e-3)
        for name, g in grads.items():
            assert_net_close(g, grads_ref[name], f"{name} gradient", tol=1e-3)
        for (name, b), b_ref in zip(model.named_buffers(), reference.buffers()):
            assert_net_close(b.float(), b_ref.float(), name)
    assert dict(cb.stats) == TRAINING
    ops = targets(graphs[0])
    assert torch.ops.fastconv.conv2d.default in ops and F.batch_norm in ops


def test_eval_under_autograd():
    """Eval-mode BatchNorm with grad enabled: the BatchNorm becomes the op's scale and shift, so the
    gradients of its weight and bias and of the conv's weight are torch's."""
    model = make_net().eval()
    reference = copy.deepcopy(model)
    torch._dynamo.reset()
    cb.stats.clear()
    compiled = torch.compile(model, backend="fastconv")
    x = torch.randn(2, 3, 8, 8)
    y, gx, grads = _step(compiled, model, x)
    y_ref, gx_ref, grads_ref = _step(reference, reference, x)
    assert_net_close(y, y_ref)
    assert_net_close(gx, gx_ref, "input gradient", tol=1e-3)
    for name, g in grads.items():
        assert_net_close(g, grads_ref[name], f"{name} gradient", tol=1e-3)
    assert dict(cb.stats) == INFERENCE
