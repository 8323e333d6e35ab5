"""The CPU input gradient's correlations: a residue class with dx columns that no window reads,
against torch in float64 at every ISA level.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastconv.functional as FC
from helpers import assert_rel

CL = torch.channels_last
@pytest.mark.parametrize("case", [(1, 5, 16, 9, (1, 2), (1, 2)), (2, 16, 5, 13, (2, 2), 2), (1, 8, 3, 17, (3, 2), 2)],
                         ids=["1x2", "2x2", "3x2"])
def test_input_grad_columns_past_the_last_window(isa, case):
    """Residue classes with a dx column that no window reads (odd W, a 2-wide filter at stride 2): the
    class has one more column than dy, and its correlation must write zeros there, not read past dy's
    row (the pointwise GEMM once did, at the AVX2 and baseline levels: garbage in dx's last column)."""
    N, C, K, W, ks, stride = case
    x = torch.randn(N, C, 5, W).contiguous(memory_format=CL).requires_grad_()
    w = torch.randn(K, C, *ks).contiguous(memory_format=CL)
    y = FC.conv2d(x, w, None, stride=stride)
    g = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, (x,), g)
    xd = x.detach().double().requires_grad_()
    (dxr,) = torch.autograd.grad(F.conv2d(xd, w.double(), None, stride=stride), (xd,), g.double())
    assert_rel(dx, dxr, torch.float32, "dx")
