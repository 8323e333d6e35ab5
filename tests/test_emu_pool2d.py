"""The CUDA pooling kernels (kernels/pool2d_max.cuh, kernels/pool2d_avg.cuh, launched by
csrc/cuda/pool2d.cu) run on the SIMT emulator (backend 'cuda_emu') against torch.

Through the public API (fastconv.functional under fastconv.use_backend('cuda_emu')), forward and
autograd backward, over a sampled parameter grid: kernel 1..5, stride (overlapping windows included,
for the backward gathers), padding up to kernel // 2, dilation (max), ceil_mode, count_include_pad,
divisor_override, return_indices, NCHW / channels_last / strided / permuted / unbatched inputs,
strided grad_output, every dtype, odd sizes. Each case runs with the emulator's threads in forward
and in reversed order. Yardsticks:
  - max_pool2d values and indices EQUAL torch's in the same dtype (also with NaN, -inf and ties);
  - every other result within helpers.REL_TOL of torch in float64 from the same values;
  - output memory format as torch's;
  - the emulator really ran the kernels (launch statistics).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FC
from fastconv import _utils
from helpers import (assert_max_pool_forward_is_torchs, assert_rel, avg_pool_args, case_id, covered, make_grad,
                     max_pool_args, pair, pool_spatial, pool_torch_accepts, same_memory_format, sample_grid)

_C_emu = pytest.importorskip("fastconv._C_emu", reason="the SIMT emulator module is not built")
pytestmark = pytest.mark.emu

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


COMMON_AXES = {
    "kernel": [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (2, 3), (5, 1), (1, 4)],
    "stride": [None, 1, 2, 3, (1, 2), (2, 3)],
    "padding": [0, 1, 2, (1, 0), (0, 2)],
    "ceil_mode": [False, True],
    "layout": ["contiguous", "channels_last", "slice", "permuted", "unbatched"],
    "dtype": DTYPES,
    "NC": [(1, 1), (2, 3), (1, 8), (3, 5), (7, 2)],  # N > 4: the emulator build splits samples over grid y, z
    "HW": [(5, 5), (7, 6), (8, 9), (4, 11), (13, 7), (1, 6)],
    "grad": ["contiguous", "channels_last", "transposed", "none"],
}
MAX_AXES = dict(COMMON_AXES, dilation=[1, 2, (1, 3), (3, 1)], return_indices=[False, True])
AVG_AXES = dict(COMMON_AXES, count_include_pad=[True, False], divisor_override=[None, 1, 3, 7])


def _max_windows_touch_input(case):
    """No max window lies entirely in the padding (dilation + ceil_mode on small inputs): torch's CPU
    backward then scatters to an index outside the window, even outside the plane (memory corruption),
    and our gather, like torch's CUDA one, ignores it; there is no torch result to compare with."""
    H, W = pool_spatial(case)
    stride = pair(case["stride"] if case["stride"] is not None else case["kernel"])
    for size, k, s, p, d, axis in zip((H, W), case["kernel"], stride, pair(case["padding"]),
                                      pair(case["dilation"]), (0, 1)):
        out = _utils.pool_output_size(size, k, s, p, d, case["ceil_mode"])
        for o in range(out):
            if not any(0 <= o * s - p + i * d < size for i in range(k)):
                return False
    return True


def _valid(kind):
    """The cases torch accepts; for max, also only those whose windows all touch the input."""
    accepts = pool_torch_accepts(kind)

    def valid(case):
        return accepts(case) and (kind != "max" or _max_windows_touch_input(case))

    return valid


MAX_CASES = sample_grid(MAX_AXES, n=100, seed=51, valid=_valid("max"))
AVG_CASES = sample_grid(AVG_AXES, n=90, seed=52, valid=_valid("avg"))


def test_grids_cover_every_axis_value():
    assert covered(MAX_CASES, MAX_AXES) == {}
    assert covered(AVG_CASES, AVG_AXES) == {}


# ----------------------------------------------------------------------------------------------------
# Fixtures and helpers


def _normal(shape, gen):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def make_input(case, values=_normal, seed=0):
    """The case's input (values drawn in float64, then cast) as a view with the case's layout, of a
    leaf that requires grad. This grid's own builder: N, C (`NC`) and the dtype are axes of its cases,
    and its 'slice' and 'permuted' views are not the CPU grid's (helpers.make_pool_input), so the SIMT
    kernels see other stride orders than the C++ ones."""
    gen = torch.Generator().manual_seed(seed)
    dtype = case["dtype"]
    N, C = case["NC"]
    H, W = pool_spatial(case)
    layout = case["layout"]
    if layout == "slice":  # every other channel and column, rows 1..H: no unit stride anywhere
        base = values((N, 2 * C, H + 2, 2 * W), gen).to(dtype).requires_grad_()
        return base[:, ::2, 1:H + 1, ::2]
    if layout == "permuted":  # strides ordered (n, c, h, w) fastest to slowest: neither layout
        base = values((W, H, C, N), gen).to(dtype).requires_grad_()
        return base.permute(3, 2, 1, 0)
    if layout == "unbatched":
        return values((C, H, W), gen).to(dtype).requires_grad_()
    x = values((N, C, H, W), gen).to(dtype).requires_grad_()
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x


def _assert_emulated(launches, threads_at_least):
    """The pooling launchers ran on the emulator: `launches` kernels, enough threads for the outputs."""
    stats = _C_emu.launch_stats()
    assert stats["launches"] == launches, f"expected {launches} emulated launches, got {stats}"
    assert stats["threads"] >= threads_at_least, f"too few emulated threads: {stats}"


def check_max(case, values=_normal, exact_grad=None):
    dtype = case["dtype"]
    x = make_input(case, values)
    kwargs = max_pool_args(case)
    with_grad = case["grad"] != "none"
    ri = case.get("return_indices", True)
    _C_emu.reset_launch_stats()
    with fastconv.use_backend("cuda_emu"), torch.set_grad_enabled(with_grad):
        out = FC.max_pool2d(x, **kwargs, return_indices=ri)
        y, idx = out if ri else (out, None)
        if with_grad:
            g = make_grad(y.shape, case["grad"], dtype)
            (gx,) = torch.autograd.grad(y, [x], g)
    _assert_emulated(2 if with_grad else 1, y.numel() + (x.numel() if with_grad else 0))

    assert_max_pool_forward_is_torchs(x, y, idx, kwargs, dtype)
    if not with_grad:
        return
    xr = x.detach().to(torch.float64).requires_grad_()
    (gx_ref,) = torch.autograd.grad(F.max_pool2d(xr, **kwargs), [xr], g.to(torch.float64))
    same_memory_format(gx, gx_ref, "grad_input")
    assert_rel(gx, gx_ref, dtype, "grad_input")
    if exact_grad if exact_grad is not None else dtype in (torch.float32, torch.float64):
        # The gather sums each input's windows in (p, q) order, as torch's CPU scatter adds them.
        (gx_t,) = torch.autograd.grad(F.max_pool2d(x, **kwargs), [x], g)
        torch.testing.assert_close(gx, gx_t, rtol=0, atol=0, msg=lambda m: "grad_input vs torch's: " + m)


def check_avg(case, values=_normal):
    dtype = case["dtype"]
    x = make_input(case, values)
    kwargs = avg_pool_args(case)
    with_grad = case["grad"] != "none"
    _C_emu.reset_launch_stats()
    with fastconv.use_backend("cuda_emu"), torch.set_grad_enabled(with_grad):
        y = FC.avg_pool2d(x, **kwargs)
        if with_grad:
            g = make_grad(y.shape, case["grad"], dtype)
            (gx,) = torch.autograd.grad(y, [x], g)
    _assert_emulated(2 if with_grad else 1, y.numel() + (x.numel() if with_grad else 0))

    with torch.no_grad():
        y_t = F.avg_pool2d(x, **kwargs)
    assert y.dtype == dtype and y.shape == y_t.shape
    same_memory_format(y, y_t)
    xr = x.detach().to(torch.float64).requires_grad_()
    y_ref = F.avg_pool2d(xr, **kwargs)
    assert_rel(y, y_ref, dtype, "output")
    exact = dtype in (torch.float32, torch.float64)
    if exact:
        # Same sums in the same order, the same IEEE division: torch's CPU result bit for bit.
        torch.testing.assert_close(y.detach(), y_t, rtol=0, atol=0, msg=lambda m: "output vs torch's: " + m)
    if not with_grad:
        return
    (gx_ref,) = torch.autograd.grad(y_ref, [xr], g.to(torch.float64))
    same_memory_format(gx, gx_ref, "grad_input")
    assert_rel(gx, gx_ref, dtype, "grad_input")
    if exact:  # each dx sums dy / divisor over its windows in (p, q) order, as torch's scatter adds them
        (gx_t,) = torch.autograd.grad(F.avg_pool2d(x, **kwargs), [x], g)
        torch.testing.assert_close(gx, gx_t, rtol=0, atol=0, msg=lambda m: "grad_input vs torch's: " + m)


# ----------------------------------------------------------------------------------------------------
# The grids


@pytest.mark.parametrize("case", MAX_CASES, ids=case_id)
def test_max_pool2d(thread_order, case):
    check_max(case)


@pytest.mark.parametrize("case", AVG_CASES, ids=case_id)
def test_avg_pool2d(thread_order, case):
    check_avg(case)


# ----------------------------------------------------------------------------------------------------
# Special values for max: NaN (propagates, torch's index: the last NaN in the window), -inf (whole
# windows of it: torch's index is the first tap), ties (the first maximum). Overlapping windows with
# padding, dilation and ceil_mode, so that a special value is seen by several windows and the backward
# gathers it several times.

SPECIAL_GEOMETRY = [((3, 3), 1, 1, 1, False), ((2, 2), 2, 1, 1, True), ((3, 2), (2, 1), (1, 0), 2, True),
                    ((4, 4), 3, 2, 1, True), ((5, 3), (1, 2), (2, 1), (1, 2), False)]
SPECIAL_CASES = [
    dict(kernel=k, stride=s, padding=p, dilation=d, ceil_mode=cm, layout=layout, dtype=dtype, NC=(2, 3),
         HW=(9, 8), grad="transposed" if layout == "channels_last" else "contiguous", return_indices=True)
    for (k, s, p, d, cm) in SPECIAL_GEOMETRY
    for layout, dtype in (("contiguous", torch.float32), ("channels_last", torch.float16),
                          ("slice", torch.bfloat16), ("channels_last", torch.float64))
]


def _nans(shape, gen):
    v = torch.randn(*shape, generator=gen, dtype=torch.float64)
    v[torch.rand(*shape, generator=gen) < 0.15] = float("nan")
    v[..., 0, :2] = float("nan")  # two NaNs in the first windows: the later one is torch's index
    return v


def _infs_and_ties(shape, gen):
    v = torch.randint(-1, 2, shape, generator=gen).to(torch.float64)  # many ties
    v[torch.rand(*shape, generator=gen) < 0.4] = float("-inf")
    v[..., :4, :4] = float("-inf")  # whole windows of -inf
    return v


@pytest.mark.parametrize("case", SPECIAL_CASES, ids=case_id)
def test_max_pool2d_nan_propagates(thread_order, case):
    x = make_input(case, _nans)
    assert torch.isnan(F.max_pool2d(x.detach(), **max_pool_args(case))).any(), "the input should give NaN outputs"
    check_max(case, _nans)


@pytest.mark.parametrize("case", SPECIAL_CASES, ids=case_id)
def test_max_pool2d_neg_inf_and_ties(thread_order, case):
    check_max(case, _infs_and_ties)


# ----------------------------------------------------------------------------------------------------
# Heavily overlapping windows (stride 1, 5x5): every input lies in up to 25 windows, so the backward
# gathers sum many terms (max: several windows share a maximum; avg: all of them contribute).

OVERLAP_CASES = [
    dict(kernel=(5, 5), stride=1, padding=2, dilation=1, ceil_mode=False, layout=layout, dtype=dtype, NC=(2, 5),
         HW=(11, 10), grad="contiguous", return_indices=False, count_include_pad=cip, divisor_override=None)
    for layout, dtype, cip in (("contiguous", torch.float32, True), ("channels_last", torch.float32, False),
                               ("channels_last", torch.bfloat16, True), ("contiguous", torch.float64, False))
]


def _few_values(shape, gen):  # many equal maxima shared by neighbouring windows
    return torch.randint(0, 4, shape, generator=gen).to(torch.float64)


@pytest.mark.parametrize("case", OVERLAP_CASES, ids=case_id)
def test_overlapping_windows(thread_order, case):
    check_max(case, _few_values)
    check_avg(case)


# ----------------------------------------------------------------------------------------------------
# The grid: x covers one sample, y and z the samples. The emulator build puts 4 samples per grid row,
# so N = 9 takes a 3-deep z whose last slice is partly past the batch (threads that must do nothing).

BATCH_CASES = [
    dict(kernel=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), ceil_mode=True, layout=layout,
         dtype=dtype, NC=(9, 3), HW=(7, 9), grad="transposed", return_indices=True, count_include_pad=False,
         divisor_override=None)
    for layout, dtype in (("contiguous", torch.float32), ("channels_last", torch.float16), ("slice", torch.float64))
]


@pytest.mark.parametrize("case", BATCH_CASES, ids=case_id)
def test_batch_split_over_grid_y_and_z(thread_order, case):
    N, C = case["NC"]
    H, W = pool_spatial(case)
    for op, kwargs in ((F.max_pool2d, max_pool_args(case)), (F.avg_pool2d, avg_pool_args(case))):
        x = make_input(case).detach()
        P, Q = op(x, **kwargs).shape[2:]
        _C_emu.reset_launch_stats()
        with fastconv.use_backend("cuda_emu"):
            (FC.max_pool2d if op is F.max_pool2d else FC.avg_pool2d)(x, **kwargs)
        blocks_per_sample = -(-C * P * Q // 256)
        assert _C_emu.launch_stats()["blocks"] == blocks_per_sample * 4 * 3, _C_emu.launch_stats()
    check_max(case)
    check_avg(case)
