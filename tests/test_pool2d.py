"""fastconv.functional.max_pool2d / avg_pool2d against torch, over parameter grids.

Outputs and input gradients (random grad_output) vs torch's float64 result from the same inputs with
per-dtype relative tolerances; max-pool indices must EQUAL torch's (same dtype, same input), also
with ties, NaN and -inf; output memory format must be torch's.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastconv.functional as FC
from conftest import assert_rel, case_id, covered, same_memory_format, sample_grid


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


COMMON_AXES = {
    "kernel": [(1, 1), (2, 2), (3, 3), (2, 3), (3, 1), (4, 4), (5, 2)],
    "stride": [None, 1, 2, 3, (1, 2), (2, 1)],
    "padding": [0, 1, 2, (1, 0), (0, 2)],
    "ceil_mode": [False, True],
    "layout": ["contiguous", "channels_last", "slice", "permuted", "expanded", "unbatched"],
    "N": [1, 2, 3],
    "C": [1, 3, 5],
    "HW": [(5, 5), (7, 6), (8, 9), (4, 11), (10, 7)],
    "grad": ["contiguous", "channels_last", "transposed", "none"],
}
MAX_AXES = dict(COMMON_AXES, dilation=[1, 2, 3, (1, 2)], return_indices=[False, True])
AVG_AXES = dict(COMMON_AXES, count_include_pad=[True, False], divisor_override=[None, 1, 3, 7])


def _spatial(case):
    kh, kw = case["kernel"]
    dh, dw = _pair(case.get("dilation", 1))
    ph, pw = _pair(case["padding"])
    H, W = case["HW"]
    return max(H, dh * (kh - 1) + 1 - 2 * ph), max(W, dw * (kw - 1) + 1 - 2 * pw)


def _torch_accepts(kind):
    """Keeps the cases torch itself accepts (checked on a 'meta' tensor of the case's shape)."""

    def valid(case):
        H, W = _spatial(case)
        x = torch.empty(1, 1, H, W, device="meta")
        try:
            if kind == "max":
                F.max_pool2d(x, case["kernel"], case["stride"], case["padding"], case["dilation"], case["ceil_mode"])
            else:
                F.avg_pool2d(x, case["kernel"], case["stride"], case["padding"], case["ceil_mode"],
                             case["count_include_pad"], case["divisor_override"])
        except RuntimeError:
            return False
        return True

    return valid


MAX_CASES = sample_grid(MAX_AXES, n=170, seed=11, valid=_torch_accepts("max"))
AVG_CASES = sample_grid(AVG_AXES, n=150, seed=12, valid=_torch_accepts("avg"))
MAX_CASES_64 = sample_grid(MAX_AXES, n=30, seed=13, valid=_torch_accepts("max"))
AVG_CASES_64 = sample_grid(AVG_AXES, n=30, seed=14, valid=_torch_accepts("avg"))
HALF_MAX = sample_grid(dict(MAX_AXES, dtype=[torch.float16, torch.bfloat16]), n=16, seed=15,
                       valid=_torch_accepts("max"))
HALF_AVG = sample_grid(dict(AVG_AXES, dtype=[torch.float16, torch.bfloat16]), n=16, seed=16,
                       valid=_torch_accepts("avg"))


def make_input(case, dtype, values=None, seed=0):
    """The case's input as a view (with the case's layout) of a leaf tensor that requires grad.

    values(shape, gen) -> float64 tensor overrides the default standard-normal values."""
    gen = torch.Generator().manual_seed(seed)
    values = values or (lambda shape, g: torch.randn(*shape, generator=g, dtype=torch.float64))
    N, C = case["N"], case["C"]
    H, W = _spatial(case)
    layout = case["layout"]
    if layout == "slice":
        base = values((N, 2 * C, H + 2, 2 * W), gen).to(dtype).requires_grad_()
        return base[:, ::2, 1:H + 1, 1::2]
    if layout == "permuted":
        base = values((W, C, H, N), gen).to(dtype).requires_grad_()
        return base.permute(3, 1, 2, 0)
    if layout == "expanded":
        base = values((1, C, H, W), gen).to(dtype).requires_grad_()
        return base.expand(N, C, H, W)
    if layout == "unbatched":
        return values((C, H, W), gen).to(dtype).requires_grad_()
    x = values((N, C, H, W), gen).to(dtype).requires_grad_()
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x


def make_grad(shape, how, dtype, seed=1):
    gen = torch.Generator().manual_seed(seed)
    shape = tuple(shape)
    if how == "transposed":
        swapped = shape[:-2] + (shape[-1], shape[-2])
        return torch.randn(swapped, generator=gen, dtype=torch.float64).to(dtype).transpose(-1, -2)
    g = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    if how == "channels_last" and len(shape) == 4:
        g = g.contiguous(memory_format=torch.channels_last)
    return g


def max_args(case):
    return dict(kernel_size=case["kernel"], stride=case["stride"], padding=case["padding"],
                dilation=case["dilation"], ceil_mode=case["ceil_mode"])


def avg_args(case):
    return dict(kernel_size=case["kernel"], stride=case["stride"], padding=case["padding"],
                ceil_mode=case["ceil_mode"], count_include_pad=case["count_include_pad"],
                divisor_override=case["divisor_override"])


def check_max(case, dtype, values=None, tol=None):
    x = make_input(case, dtype, values)
    kwargs = max_args(case)
    with_grad = case["grad"] != "none"
    ri = case["return_indices"]
    with torch.set_grad_enabled(with_grad):
        out = FC.max_pool2d(x, **kwargs, return_indices=ri)
    y, idx = out if ri else (out, None)
    if not ri:
        assert isinstance(out, torch.Tensor)
    # torch in the same dtype from the same values: indices and memory format must be identical
    with torch.no_grad():
        y_t, idx_t = F.max_pool2d(x, **kwargs, return_indices=True)
    assert y.shape == y_t.shape and y.dtype == dtype
    same_memory_format(y, y_t)
    torch.testing.assert_close(y.detach(), y_t, rtol=0, atol=0, equal_nan=True, msg=lambda m: "output: " + m)
    if ri:
        assert idx.dtype == torch.int64
        assert torch.equal(idx, idx_t), f"indices differ from torch's at {(idx != idx_t).nonzero()[:5].tolist()}"
        same_memory_format(idx, idx_t, "indices")
    if not with_grad:
        assert not y.requires_grad
        return
    g = make_grad(y.shape, case["grad"], dtype)
    (gx,) = torch.autograd.grad(y, [x], g)
    xr = x.detach().to(torch.float64).requires_grad_()
    y_ref = F.max_pool2d(xr, **kwargs)
    (gx_ref,) = torch.autograd.grad(y_ref, [xr], g.to(torch.float64))
    assert_rel(gx, gx_ref, dtype, "grad_input", tol)


def check_avg(case, dtype, values=None, tol=None):
    x = make_input(case, dtype, values)
    kwargs = avg_args(case)
    with_grad = case["grad"] != "none"
    with torch.set_grad_enabled(with_grad):
        y = FC.avg_pool2d(x, **kwargs)
    with torch.no_grad():
        y_t = F.avg_pool2d(x, **kwargs)
    assert y.shape == y_t.shape and y.dtype == dtype
    same_memory_format(y, y_t)
    xr = x.detach().to(torch.float64).requires_grad_()
    y_ref = F.avg_pool2d(xr, **kwargs)
    assert_rel(y, y_ref, dtype, "output", tol)
    if not with_grad:
        assert not y.requires_grad
        return
    g = make_grad(y.shape, case["grad"], dtype)
    (gx,) = torch.autograd.grad(y, [x], g)
    (gx_ref,) = torch.autograd.grad(y_ref, [xr], g.to(torch.float64))
    assert_rel(gx, gx_ref, dtype, "grad_input", tol)


@pytest.mark.parametrize("case", MAX_CASES, ids=case_id)
def test_max_pool2d_float32(backend, case):
    check_max(case, torch.float32)


@pytest.mark.parametrize("case", MAX_CASES_64, ids=case_id)
def test_max_pool2d_float64(backend, case):
    check_max(case, torch.float64)


@pytest.mark.parametrize("case", HALF_MAX, ids=case_id)
def test_max_pool2d_half_precision(backend, case):
    case = dict(case)
    check_max(case, case.pop("dtype"))


@pytest.mark.parametrize("case", AVG_CASES, ids=case_id)
def test_avg_pool2d_float32(backend, case):
    check_avg(case, torch.float32)


@pytest.mark.parametrize("case", AVG_CASES_64, ids=case_id)
def test_avg_pool2d_float64(backend, case):
    check_avg(case, torch.float64)


@pytest.mark.parametrize("case", HALF_AVG, ids=case_id)
def test_avg_pool2d_half_precision(backend, case):
    case = dict(case)
    check_avg(case, case.pop("dtype"))


# ----------------------------------------------------------------------------------------------------
# Special values: ties, NaN, -inf. Overlapping windows with padding and ceil_mode, so that a special
# value is seen by several windows and some windows hang over the edge.

SPECIAL_CASES = [
    dict(kernel=k, stride=s, padding=p, dilation=d, ceil_mode=cm, layout=layout, N=2, C=3, HW=(7, 8),
         grad="contiguous", return_indices=True)
    for (k, s, p, d, cm) in [((3, 3), 1, 1, 1, False), ((2, 2), 2, 1, 1, True), ((3, 2), (2, 1), (1, 0), 2, True),
                             ((4, 4), 3, 2, 1, True)]
    for layout in ("contiguous", "channels_last")
]


def _ties(shape, gen):
    return torch.randint(0, 3, shape, generator=gen).to(torch.float64)


def _nans(shape, gen):
    v = torch.randn(*shape, generator=gen, dtype=torch.float64)
    v[torch.rand(*shape, generator=gen) < 0.15] = float("nan")
    return v


def _infs(shape, gen):
    v = torch.randint(0, 2, shape, generator=gen).to(torch.float64)
    v[torch.rand(*shape, generator=gen) < 0.6] = float("-inf")
    v[..., :3, :3] = float("-inf")  # whole windows of -inf
    return v


@pytest.mark.parametrize("case", SPECIAL_CASES, ids=case_id)
def test_max_pool2d_ties(backend, case):
    """Equal values in a window: torch keeps the first maximum in scan order; so must we."""
    check_max(case, torch.float32, values=_ties)


@pytest.mark.parametrize("case", SPECIAL_CASES, ids=case_id)
def test_max_pool2d_nan_propagates(backend, case):
    """A NaN in a window is its maximum (torch's rule), with torch's index."""
    x = make_input(case, torch.float32, values=_nans)
    kwargs = max_args(case)
    y, idx = FC.max_pool2d(x, **kwargs, return_indices=True)
    y_t, idx_t = F.max_pool2d(x.detach(), **kwargs, return_indices=True)
    assert torch.isnan(y_t).any(), "the test input should produce NaN outputs"
    torch.testing.assert_close(y, y_t, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(idx, idx_t)
    g = make_grad(y.shape, "contiguous", torch.float32)
    (gx,) = torch.autograd.grad(y, [x], g)
    (gx_t,) = torch.autograd.grad(F.max_pool2d(x, **kwargs), [x], g)
    torch.testing.assert_close(gx, gx_t, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", SPECIAL_CASES, ids=case_id)
def test_max_pool2d_neg_inf(backend, case):
    """-inf values and windows that are entirely -inf."""
    check_max(case, torch.float32, values=_infs)


@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool2d_nan_propagates(backend, count_include_pad):
    case = dict(kernel=(3, 3), stride=2, padding=1, ceil_mode=True, count_include_pad=count_include_pad,
                divisor_override=None, layout="contiguous", N=2, C=3, HW=(7, 8), grad="contiguous")
    x = make_input(case, torch.float32, values=_nans)
    y = FC.avg_pool2d(x, **avg_args(case))
    y_t = F.avg_pool2d(x.detach(), **avg_args(case))
    assert torch.equal(torch.isnan(y), torch.isnan(y_t))
    finite = ~torch.isnan(y_t)
    assert_rel(y.detach()[finite], y_t[finite], torch.float32)


# ----------------------------------------------------------------------------------------------------
# Empty batch and the indices contract

EMPTY_MAX = [dict(kernel=(3, 3), stride=2, padding=1, dilation=d, ceil_mode=cm, layout=layout, N=0, C=3,
                  HW=(7, 6), grad="contiguous", return_indices=True)
             for d in (1, 2) for cm in (False, True) for layout in ("contiguous", "channels_last")]
EMPTY_AVG = [dict(kernel=(3, 2), stride=None, padding=1, ceil_mode=cm, count_include_pad=cip, divisor_override=None,
                  layout=layout, N=0, C=3, HW=(7, 6), grad="contiguous")
             for cm in (False, True) for cip in (False, True) for layout in ("contiguous", "channels_last")]


@pytest.mark.parametrize("case", EMPTY_MAX, ids=case_id)
def test_max_pool2d_empty_batch(backend, case):
    check_max(case, torch.float32)


@pytest.mark.parametrize("case", EMPTY_AVG, ids=case_id)
def test_avg_pool2d_empty_batch(backend, case):
    check_avg(case, torch.float32)


def test_max_pool2d_indices_unpool(backend):
    """Indices are positions in the input plane (h * W + w), usable with torch's max_unpool2d."""
    x = torch.randn(2, 3, 8, 8)
    y, idx = FC.max_pool2d(x, 2, return_indices=True)
    unpooled = F.max_unpool2d(y, idx, 2, output_size=x.shape[-2:])
    y_t, idx_t = F.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(unpooled, F.max_unpool2d(y_t, idx_t, 2, output_size=x.shape[-2:]))


def test_grid_coverage():
    assert covered(MAX_CASES, MAX_AXES) == {}
    assert covered(AVG_CASES, AVG_AXES) == {}
    assert len(MAX_CASES) >= 150 and len(AVG_CASES) >= 130
    # ceil_mode windows that would start in the right padding are dropped by torch: such cases exist.
    assert any(c["ceil_mode"] and (c["stride"] or c["kernel"]) not in (1, (1, 1)) for c in MAX_CASES)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool2d_expanded_grad_output(backend, kind, layout):
    """y.sum().backward() hands the backward an expanded grad_output (all strides 0)."""
    case = dict(kernel=(3, 3), stride=2, padding=1, dilation=1, ceil_mode=True, count_include_pad=False,
                divisor_override=None, layout=layout, N=2, C=3, HW=(7, 8), grad="contiguous", return_indices=False)
    x = make_input(case, torch.float32)
    ours, theirs = (FC.max_pool2d, F.max_pool2d) if kind == "max" else (FC.avg_pool2d, F.avg_pool2d)
    kwargs = max_args(case) if kind == "max" else avg_args(case)
    (gx,) = torch.autograd.grad(ours(x, **kwargs).sum(), [x])
    xr = x.detach().double().requires_grad_()
    (gx_ref,) = torch.autograd.grad(theirs(xr, **kwargs).sum(), [xr])
    assert_rel(gx, gx_ref, torch.float32, "grad_input")
