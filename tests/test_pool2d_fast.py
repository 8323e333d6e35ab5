"""The CPU backend's pooling forward without indices (inference: no grad, return_indices=False) runs fast
kernels (csrc/cpu/pool2d_fwd_nchw_isa.cpp, pool2d_fwd_nhwc_isa.cpp) that must still give torch's output
bit for bit:

- max, channels_last: one max instruction per tap (max_pixel_block_fast), which equals torch's rule
  `v > best || isnan(v)` only while no tap is NaN, so a range that read a NaN is redone by the exact
  scan (infinities stay on the fast path: the max instruction is exact for them);
- max and avg, NCHW, stride 2, 2x2 or 3x3 windows without dilation (pool_s2_nchw): column strips that
  carry the window row shared by two output rows, taps from two loads per row, padding -inf (max) or
  +0 (avg), rows outside the plane likewise; max planes with a NaN are redone by the exact scan;
- max, NCHW, other windows taller than the stride (3x3 stride 1 ...): separable, the row maxima of
  each input row, then the maxima over the window's rows (max_fwd_nchw_separable);
- avg (every path): sums in torch's order, from +0, padding taps adding +0, divided by the divisor
  (a multiply by the reciprocal only where the divisor is a power of two, which is bitwise the same).

So the grids here compare bit patterns (int views), not values: the sign of a zero that ties with
another zero (torch keeps the first in row-major order), NaN payloads (the last NaN wins), infinities,
and sums in torch's order. Widths reach past 2 vectors so that interior chunks (plain loads) and edge
chunks (masked loads) both run, at every ISA level the machine has.
"""
from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F

import fastconv.functional as FC


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32 if t.dtype == torch.float32 else torch.int64)


def _assert_bitwise(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    assert ours.is_contiguous(memory_format=torch.channels_last) == theirs.is_contiguous(
        memory_format=torch.channels_last)
    diff = (_bits(ours) != _bits(theirs)).nonzero()
    assert diff.numel() == 0, (f"{diff.shape[0]} elements differ, first at {diff[0].tolist()}: "
                               f"{ours[tuple(diff[0])].item()} vs torch {theirs[tuple(diff[0])].item()}")


def _nan(payload: int, dtype) -> torch.Tensor:
    """A quiet NaN with the given payload bits (so that which NaN wins is visible)."""
    if dtype == torch.float32:
        return torch.tensor([0x7FC00000 | payload], dtype=torch.int32).view(torch.float32)[0]
    return torch.tensor([0x7FF8000000000000 | payload], dtype=torch.int64).view(torch.float64)[0]


def _seed(*parts) -> int:
    return zlib.crc32(repr(parts).encode())


def _values(kind: str, shape, dtype, gen) -> torch.Tensor:
    if kind == "randn":
        return torch.randn(*shape, generator=gen, dtype=dtype)
    if kind == "signed_zeros":  # ties between -0 and +0 (and 1s): the first maximum's sign must win
        choice = torch.randint(0, 3, shape, generator=gen)
        return torch.stack([torch.tensor(-0.0), torch.tensor(0.0), torch.tensor(-1.0)]).to(dtype)[choice]
    v = torch.randn(*shape, generator=gen, dtype=dtype)
    where = torch.rand(*shape, generator=gen) < 0.02
    if kind == "nan":  # distinct payloads: torch's rule takes the last NaN of a window
        for i, flat in enumerate(where.flatten().nonzero().flatten().tolist()):
            v.view(-1)[flat] = _nan(1 + i % 1000, dtype)
    elif kind == "inf":
        v[where] = float("inf")
    elif kind == "neg_inf":
        v[where] = float("-inf")
        v[..., :3, :4] = float("-inf")  # whole windows of -inf
    return v


# (kernel, stride, padding, dilation, ceil_mode)
MAX_CONFIGS = [
    (3, 2, 1, 1, False),            # ResNet's pool: NCHW column strips (pool_s2_nchw)
    (3, 2, 1, 1, True),             # strips, ceil mode: the last window row is outside the plane
    (3, 2, 0, 1, True),             # strips without padding, ceil mode: the last window hangs over
    (2, 2, 0, 1, False),            # strips, window = stride (CL: the fast pixel max)
    (2, 2, 1, 1, True),             # strips: padding on both sides of a 2x2 window
    (3, 1, 1, 1, False),            # separable, stride 1 (generic row taps)
    ((3, 2), 2, (1, 0), 1, False),  # separable (3 rows > stride 2), two-tap stride-2 rows
    (3, 2, 1, 2, False),            # dilation: separable with generic row taps
    ((4, 3), (3, 2), (2, 1), 1, True),
]
# NCHW strips need N*C >= 2 threads' worth of planes: (1, 3, 9, 37) takes the row scan there, (2, 3, 9, 37)
# the strips with a chunk narrower than a vector (fp64) or two overlapping ones (fp32, AVX-512). Widths
# 16 and 32 are 2L for some (dtype, ISA): a padded chunk's last tap is then the row's last column.
SHAPES = [(2, 5, 56, 56), (1, 3, 9, 37), (2, 3, 9, 37), (2, 2, 40, 70), (1, 4, 5, 5), (2, 2, 10, 16), (2, 2, 12, 32)]
VALUES = ["randn", "signed_zeros", "nan", "inf", "neg_inf"]


def _case_id(c):
    return "k{}-s{}-p{}-d{}-{}".format(*[str(v).replace(" ", "") for v in c[:4]], "ceil" if c[4] else "floor")


@pytest.mark.parametrize("config", MAX_CONFIGS, ids=_case_id)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("values", VALUES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_max_pool2d_inference_bitwise(backend, isa, config, shape, values, layout):
    kernel, stride, padding, dilation, ceil_mode = config
    gen = torch.Generator().manual_seed(_seed(config, shape, values))
    for dtype in (torch.float32, torch.float64):
        x = _values(values, shape, dtype, gen)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        try:
            want = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)
        except RuntimeError:
            pytest.skip("torch rejects this configuration for the shape")
        got = FC.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)
        _assert_bitwise(got, want)


def test_max_pool2d_inference_nan_in_one_plane_only(backend):
    """The exact redo is per plane (NCHW) / per range (channels_last): planes without a NaN keep the fast
    result, the one with a NaN gets torch's, and all are bitwise torch's."""
    x = torch.randn(4, 6, 56, 56)
    x[2, 3, 17, 20] = _nan(5, torch.float32)
    x[2, 3, 17, 21] = _nan(9, torch.float32)  # the same window: the later NaN wins
    for layout in (torch.contiguous_format, torch.channels_last):
        xl = x.contiguous(memory_format=layout)
        _assert_bitwise(FC.max_pool2d(xl, 3, 2, 1), F.max_pool2d(xl, 3, 2, 1))


# (kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
AVG_CONFIGS = [
    (3, 2, 1, False, True, None),
    (3, 2, 1, True, False, None),
    (2, 2, 0, False, True, None),
    ((2, 3), 2, (1, 1), True, True, None),
    (3, 2, 1, False, False, 5),
    ((3, 2), (1, 2), (1, 0), False, True, None),
    ((3, 4), 2, (1, 2), False, True, None),  # stride 2, width 4
    (3, 2, 1, True, True, 4),               # a power-of-two override: the reciprocal multiply
    ((2, 5), 2, (0, 2), True, False, None),  # width 5, clipped divisors at both row ends
    (2, 2, 1, True, False, None),           # NCHW strips: 2x2 padded, clipped divisors 1 and 2
    (3, 2, 0, True, True, None),            # strips without padding, ceil mode: divisors 9, 6 and 4
    (2, 2, 0, False, True, 3),              # strips, an override that is not a power of two
]


@pytest.mark.parametrize("config", AVG_CONFIGS, ids=lambda c: "-".join(str(v).replace(" ", "") for v in c))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("values", ["randn", "signed_zeros", "nan"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_avg_pool2d_inference_bitwise(backend, isa, config, shape, values, layout):
    kernel, stride, padding, ceil_mode, count_include_pad, divisor_override = config
    gen = torch.Generator().manual_seed(_seed(config, shape, values))
    for dtype in (torch.float32, torch.float64):
        x = _values(values, shape, dtype, gen)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        try:
            want = F.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
        except RuntimeError:
            pytest.skip("torch rejects this configuration for the shape")
        got = FC.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
        if values == "nan":  # NaN sums: positions match; payload arithmetic is not torch's to define
            assert torch.equal(torch.isnan(got), torch.isnan(want))
            keep = ~torch.isnan(want)
            _assert_bitwise(got[keep], want[keep])
        else:
            _assert_bitwise(got, want)
