"""torch.compile(fullgraph=True) on a small model of fastconv.nn layers: no graph break, and the same
outputs and gradients as eager. Compilation is slow, so there is one model, compiled once."""
from __future__ import annotations

import torch
import torch._dynamo
from torch import nn

import fastconv.nn as fnn
from conftest import assert_rel


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            fnn.Conv2dReLU(3, 8, 3, padding=1),
            fnn.MaxPool2d(2),
            fnn.Conv2d(8, 8, 3, padding="same", groups=2, bias=False),
            fnn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
            fnn.Conv2d(8, 4, 2, padding="same", padding_mode="reflect"),
        )
        self.head = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


def _run(fn, model, x):
    """fn(x) forward and backward; returns output, input grad and the grads of model's parameters."""
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    y = fn(x)
    y.square().sum().backward()
    return y.detach(), x.grad, {n: p.grad.clone() for n, p in model.named_parameters()}


def test_compile_fullgraph_matches_eager(backend):
    torch._dynamo.reset()
    model = Small()
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)

    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1

    y_eager, gx_eager, grads_eager = _run(model, model, x)
    compiled = torch.compile(model, fullgraph=True)
    y_c, gx_c, grads_c = _run(compiled, model, x)
    # Same kernels, same inputs: compiled and eager differ at most by rounding order in the
    # torch parts (Linear, flatten) that inductor may fuse.
    assert_rel(y_c, y_eager, torch.float32, "output")
    assert_rel(gx_c, gx_eager, torch.float32, "grad_input")
    for name in grads_eager:
        assert_rel(grads_c[name], grads_eager[name], torch.float32, f"grad {name}")

    # A second call with another batch size works too (recompiles or dynamic shapes, no break).
    x2 = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert_rel(compiled(x2), model(x2), torch.float32, "output, batch 3")
