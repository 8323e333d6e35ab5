"""max_pool2d's channels_last paths on the CPU backend, checked bit for bit against torch:

- the forward's channel tail: channels past the last whole vector are one more vector ending at channel C
  (C = 19, 24, 37, 70 have a tail at both float32 and float64 vector widths; C = 3 is under one vector
  and stays scalar), with and without indices;
- the backward: a gather of C-vectors when there are fewer images than the scatter needs to keep the
  threads busy (N = 1, 2 here), the scatter otherwise (N = 9); both sum each dx element's terms in
  torch's order, so the bits must match torch's;
- indices that are not a max pool's (outside their window, or outside the plane): the gather matches
  fewer entries than there are and the call is redone by the scatter, which adds dy at any index in the
  plane and skips the others.
"""
from __future__ import annotations

import pytest
import torch

import fastconv.functional as FC

CL = torch.channels_last

# (kernel, stride, padding, dilation, ceil_mode)
CONFIGS = [
    (3, 2, 1, 1, False),             # ResNet's / ShuffleNet's stem pool
    (3, 1, 1, 1, False),             # GoogLeNet's branch pool: up to 9 windows cover a pixel
    (2, 2, 0, 1, True),              # windows that do not overlap, a last window hanging over
    ((3, 2), (2, 1), (1, 0), 1, True),
    (3, 2, 1, 2, False),             # dilation: the scatter
]
CHANNELS = [3, 16, 19, 24, 37, 70]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32 if t.dtype == torch.float32 else torch.int64)


def _assert_bitwise(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    diff = (_bits(ours) != _bits(theirs)).nonzero()
    assert diff.numel() == 0, (f"{diff.shape[0]} elements differ, first at {diff[0].tolist()}: "
                               f"{ours[tuple(diff[0])].item()} vs torch {theirs[tuple(diff[0])].item()}")


def _input(n, c, h, w, dtype, seed, ties=False):
    g = torch.Generator().manual_seed(seed)
    if ties:  # many equal maxima: torch keeps the first in row-major order
        x = torch.randint(0, 3, (n, c, h, w), generator=g).to(dtype)
    else:
        x = torch.randn(n, c, h, w, generator=g, dtype=dtype)
    return x.contiguous(memory_format=CL)


def _config_id(c):
    return "k{}-s{}-p{}-d{}-{}".format(*[str(v).replace(" ", "") for v in c[:4]], "ceil" if c[4] else "floor")


@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("batch", [1, 2, 9])
@pytest.mark.parametrize("ties", [False, True], ids=["randn", "ties"])
def test_max_pool2d_channels_last_forward_and_backward_bitwise(backend, isa, config, channels, batch, ties):
    kernel, stride, padding, dilation, ceil_mode = config
    for dtype in (torch.float32, torch.float64):
        x = _input(batch, channels, 11, 13, dtype, seed=channels * 31 + batch, ties=ties)
        _assert_bitwise(FC.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode),
                        torch.nn.functional.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode))
        xo, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
        yo, io = FC.max_pool2d(xo, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
        yt, it = torch.nn.functional.max_pool2d(xt, kernel, stride, padding, dilation, ceil_mode,
                                                return_indices=True)
        _assert_bitwise(yo, yt)
        assert torch.equal(io, it)
        g = torch.Generator().manual_seed(7)
        dy = torch.randn(yt.shape, generator=g, dtype=dtype).contiguous(memory_format=CL)
        yo.backward(dy)
        yt.backward(dy)
        assert xo.grad.is_contiguous(memory_format=CL)
        _assert_bitwise(xo.grad, xt.grad)


def _scatter_reference(dy, indices, input_shape):
    """dx[n, c, i] = sum in (p, q) order of dy[n, c, p, q] over outputs with index i inside the plane."""
    n, c, h, w = input_shape
    dx = torch.zeros(n, c, h * w, dtype=dy.dtype)
    flat_dy, flat_ind = dy.reshape(n, c, -1), indices.reshape(n, c, -1)
    for j in range(flat_dy.shape[2]):
        i = flat_ind[:, :, j]
        ok = (i >= 0) & (i < h * w)
        src = torch.where(ok, flat_dy[:, :, j], torch.zeros((), dtype=dy.dtype))
        dx.scatter_add_(2, torch.where(ok, i, 0).unsqueeze(2), src.unsqueeze(2))
    return dx.reshape(n, c, h, w)


@pytest.mark.parametrize("batch", [1, 9])
@pytest.mark.parametrize("channels", [5, 24])
def test_max_pool2d_backward_takes_any_indices(backend, batch, channels):
    """Indices moved out of their windows (inside the plane) and out of the plane: the result is the
    scatter's, torch's (inside the plane) and the reference's (outside it)."""
    x = _input(batch, channels, 12, 12, torch.float32, seed=3)
    args = ([3, 3], [2, 2], [1, 1], [1, 1], False)
    y, ind = torch.ops.aten.max_pool2d_with_indices(x, *args)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(4)).contiguous(memory_format=CL)

    moved = ind.clone()
    moved[0, 1, 0, 0] = 12 * 12 - 1           # far from window (0, 0)
    moved[-1, -1, 2, 3] = 0                   # likewise
    moved = moved.contiguous(memory_format=CL)
    ours = torch.ops.fastconv.max_pool2d_backward(dy, x, moved, *args)
    _assert_bitwise(ours, torch.ops.aten.max_pool2d_with_indices_backward(dy, x, *args, moved))

    outside = ind.clone()
    outside[0, 0, 1, 1] = 12 * 12             # one past the plane
    outside[-1, 2, 4, 0] = -1
    outside = outside.contiguous(memory_format=CL)
    ours = torch.ops.fastconv.max_pool2d_backward(dy, x, outside, *args)
    _assert_bitwise(ours, _scatter_reference(dy, outside, x.shape).contiguous(memory_format=CL))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_max_pool2d_backward_same_bits_for_any_thread_count(backend, threads):
    x = _input(1, 40, 30, 30, torch.float32, seed=11, ties=True).requires_grad_()
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y = FC.max_pool2d(x, 3, 2, 1)
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(5)).contiguous(memory_format=CL)
        (want,) = torch.autograd.grad(y, x, dy)
        torch.set_num_threads(threads)
        (got,) = torch.autograd.grad(FC.max_pool2d(x, 3, 2, 1), x, dy)
    finally:
        torch.set_num_threads(previous)
    _assert_bitwise(got, want)
