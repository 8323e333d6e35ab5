"""fastconv.functional.max_pool2d / avg_pool2d against torch, over parameter grids.

Outputs and input gradients (random grad_output) vs torch's float64 result from the same inputs with
per-dtype relative tolerances; max-pool indices must EQUAL torch's (same dtype, same input), also
with ties, NaN and -inf; output memory format must be torch's. The grids' axes, the float32 samples
and the special-value and empty-batch cases (shared with the triton and cuda tests), the input builder
and the checks are in tests/helpers.py.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastconv.functional as FC
from helpers import (AVG_POOL_AXES, AVG_POOL_CASES, EMPTY_AVG_POOL_CASES, EMPTY_MAX_POOL_CASES, MAX_POOL_AXES,
                     MAX_POOL_CASES, POOL_SPECIAL_CASES, assert_rel, avg_pool_args, case_id, check_avg_pool,
                     check_max_pool, covered, make_grad, make_pool_input, max_pool_args, nans, neg_infs,
                     pool_torch_accepts, sample_grid, ties)

MAX_CASES_64 = sample_grid(MAX_POOL_AXES, n=30, seed=13, valid=pool_torch_accepts("max"))
AVG_CASES_64 = sample_grid(AVG_POOL_AXES, n=30, seed=14, valid=pool_torch_accepts("avg"))
HALF_MAX = sample_grid(dict(MAX_POOL_AXES, dtype=[torch.float16, torch.bfloat16]), n=16, seed=15,
                       valid=pool_torch_accepts("max"))
HALF_AVG = sample_grid(dict(AVG_POOL_AXES, dtype=[torch.float16, torch.bfloat16]), n=16, seed=16,
                       valid=pool_torch_accepts("avg"))


@pytest.mark.parametrize("case", MAX_POOL_CASES, ids=case_id)
def test_max_pool2d_float32(backend, case):
    check_max_pool(case, torch.float32)


@pytest.mark.parametrize("case", MAX_CASES_64, ids=case_id)
def test_max_pool2d_float64(backend, case):
    check_max_pool(case, torch.float64)


@pytest.mark.parametrize("case", HALF_MAX, ids=case_id)
def test_max_pool2d_half_precision(backend, case):
    case = dict(case)
    check_max_pool(case, case.pop("dtype"))


@pytest.mark.parametrize("case", AVG_POOL_CASES, ids=case_id)
def test_avg_pool2d_float32(backend, case):
    check_avg_pool(case, torch.float32)


@pytest.mark.parametrize("case", AVG_CASES_64, ids=case_id)
def test_avg_pool2d_float64(backend, case):
    check_avg_pool(case, torch.float64)


@pytest.mark.parametrize("case", HALF_AVG, ids=case_id)
def test_avg_pool2d_half_precision(backend, case):
    case = dict(case)
    check_avg_pool(case, case.pop("dtype"))


# ----------------------------------------------------------------------------------------------------
# Special values: ties, NaN, -inf. Overlapping windows with padding and ceil_mode, so that a special
# value is seen by several windows and some windows hang over the edge (helpers.POOL_SPECIAL_CASES).


@pytest.mark.parametrize("case", POOL_SPECIAL_CASES, ids=case_id)
def test_max_pool2d_ties(backend, case):
    """Equal values in a window: torch keeps the first maximum in scan order; so must we."""
    check_max_pool(case, torch.float32, values=ties)


@pytest.mark.parametrize("case", POOL_SPECIAL_CASES, ids=case_id)
def test_max_pool2d_nan_propagates(backend, case):
    """A NaN in a window is its maximum (torch's rule), with torch's index."""
    x = make_pool_input(case, torch.float32, values=nans)
    kwargs = max_pool_args(case)
    y, idx = FC.max_pool2d(x, **kwargs, return_indices=True)
    y_t, idx_t = F.max_pool2d(x.detach(), **kwargs, return_indices=True)
    assert torch.isnan(y_t).any(), "the test input should produce NaN outputs"
    torch.testing.assert_close(y, y_t, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(idx, idx_t)
    g = make_grad(y.shape, "contiguous", torch.float32)
    (gx,) = torch.autograd.grad(y, [x], g)
    (gx_t,) = torch.autograd.grad(F.max_pool2d(x, **kwargs), [x], g)
    torch.testing.assert_close(gx, gx_t, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", POOL_SPECIAL_CASES, ids=case_id)
def test_max_pool2d_neg_inf(backend, case):
    """-inf values and windows that are entirely -inf."""
    check_max_pool(case, torch.float32, values=neg_infs)


@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool2d_nan_propagates(backend, count_include_pad):
    case = dict(kernel=(3, 3), stride=2, padding=1, ceil_mode=True, count_include_pad=count_include_pad,
                divisor_override=None, layout="contiguous", N=2, C=3, HW=(7, 8), grad="contiguous")
    x = make_pool_input(case, torch.float32, values=nans)
    y = FC.avg_pool2d(x, **avg_pool_args(case))
    y_t = F.avg_pool2d(x.detach(), **avg_pool_args(case))
    assert torch.equal(torch.isnan(y), torch.isnan(y_t))
    finite = ~torch.isnan(y_t)
    assert_rel(y.detach()[finite], y_t[finite], torch.float32)


# ----------------------------------------------------------------------------------------------------
# Empty batch and the indices contract


@pytest.mark.parametrize("case", EMPTY_MAX_POOL_CASES, ids=case_id)
def test_max_pool2d_empty_batch(backend, case):
    check_max_pool(case, torch.float32)


@pytest.mark.parametrize("case", EMPTY_AVG_POOL_CASES, ids=case_id)
def test_avg_pool2d_empty_batch(backend, case):
    check_avg_pool(case, torch.float32)


def test_max_pool2d_indices_unpool(backend):
    """Indices are positions in the input plane (h * W + w), usable with torch's max_unpool2d."""
    x = torch.randn(2, 3, 8, 8)
    y, idx = FC.max_pool2d(x, 2, return_indices=True)
    unpooled = F.max_unpool2d(y, idx, 2, output_size=x.shape[-2:])
    y_t, idx_t = F.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(unpooled, F.max_unpool2d(y_t, idx_t, 2, output_size=x.shape[-2:]))


def test_grid_coverage():
    assert covered(MAX_POOL_CASES, MAX_POOL_AXES) == {}
    assert covered(AVG_POOL_CASES, AVG_POOL_AXES) == {}
    assert len(MAX_POOL_CASES) >= 150 and len(AVG_POOL_CASES) >= 130
    # ceil_mode windows that would start in the right padding are dropped by torch: such cases exist.
    assert any(c["ceil_mode"] and (c["stride"] or c["kernel"]) not in (1, (1, 1)) for c in MAX_POOL_CASES)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool2d_expanded_grad_output(backend, kind, layout):
    """y.sum().backward() hands the backward an expanded grad_output (all strides 0)."""
    case = dict(kernel=(3, 3), stride=2, padding=1, dilation=1, ceil_mode=True, count_include_pad=False,
                divisor_override=None, layout=layout, N=2, C=3, HW=(7, 8), grad="contiguous", return_indices=False)
    x = make_pool_input(case, torch.float32)
    ours, theirs = (FC.max_pool2d, F.max_pool2d) if kind == "max" else (FC.avg_pool2d, F.avg_pool2d)
    kwargs = max_pool_args(case) if kind == "max" else avg_pool_args(case)
    (gx,) = torch.autograd.grad(ours(x, **kwargs).sum(), [x])
    xr = x.detach().double().requires_grad_()
    (gx_ref,) = torch.autograd.grad(theirs(xr, **kwargs).sum(), [xr])
    assert_rel(gx, gx_ref, torch.float32, "grad_input")
