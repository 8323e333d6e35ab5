"""max_pool2d and avg_pool2d, fastconv vs torch: forward (no indices, as in inference) and backward
alone (grad_input from a retained graph: max pooling reads the indices saved by its forward), NCHW and
channels_last, float32. Throughput is the minimum traffic (PoolShape.bytes / bytes_backward) per time.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastconv.functional as FC

from ._harness import Case

MODES = ("fwd", "bwd")


def _pool(impl: str, s):
    if s.op == "max":
        f = FC.max_pool2d if impl == "fastconv" else F.max_pool2d
    else:
        f = FC.avg_pool2d if impl == "fastconv" else F.avg_pool2d
    return lambda x: f(x, s.kernel, s.stride, s.pad)


def _inputs(s, layout: str):
    g = torch.Generator().manual_seed(4321)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(s.input_shape, generator=g).contiguous(memory_format=fmt)
    dy = torch.randn(s.output_shape, generator=g).contiguous(memory_format=fmt)
    return x, dy


def _step(impl: str, mode: str, s, x, dy):
    pool = _pool(impl, s)
    if mode == "fwd":
        return lambda: pool(x)
    xg = x.detach().requires_grad_(True)
    y = pool(xg)
    return lambda: torch.autograd.grad(y, xg, dy, retain_graph=True)[0]


@pytest.mark.parametrize("mode", MODES)
def test_pool2d(run_case, pool_shape, layout, impl, mode):
    s = pool_shape
    x, dy = _inputs(s, layout)
    work = s.bytes() if mode == "fwd" else s.bytes_backward()
    case = Case(f"{s.op}_pool2d", mode, s, layout, impl, work, "GB/s")
    fn = _step(impl, mode, s, x, dy)

    def check():
        torch.testing.assert_close(fn(), _step("torch", mode, s, x, dy)(),
                                   msg=lambda m: f"{'output' if mode == 'fwd' else 'grad_input'}: {m}")

    run_case(case, fn, check)
