"""torch.compile(fullgraph=True) on a small model of fastconv.nn layers: no graph break, and the same
outputs and gradients as eager. Compilation is slow, so there is one model, compiled once."""
from __future__ import annotations

import pytest
import torch
import torch._dynamo

from helpers import SmallNet, assert_rel, forward_backward

pytestmark = pytest.mark.slow  # compiling: 4-10 s alone, 10-60 s in the full suite


def test_compile_fullgraph_matches_eager(backend):
    torch._dynamo.reset()
    model = SmallNet()
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)

    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1

    y_eager, gx_eager, grads_eager = forward_backward(model, model, x)
    compiled = torch.compile(model, fullgraph=True)
    y_c, gx_c, grads_c = forward_backward(compiled, model, x)
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
