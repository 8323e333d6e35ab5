"""The cpu backend's 1x1 channels_last weight gradient (csrc/cpu/conv2d_wgrad_pointwise_isa.cpp): float32,
groups 1, no padding, any stride, x and dy channels_last, at the AVX2 and AVX-512 levels (each that this
CPU has). Against torch in float64, with 1 and 2 OpenMP threads bit for bit (each dw element is one
task's sum in a fixed pixel order; the pixel groups are fixed by the problem), over the cases that take
each of its branches: pixel groups with their ordered sum (small K x C), several output tiles written
straight into dw, tails of K (not a multiple of the 6-row register tile) and of C (not a multiple of the
vector lanes), strided inputs (one run per output row), views whose rows are not contiguous, and a dw
that is not dense.
"""
from __future__ import annotations

import pytest
import torch

import fastconv
from fastconv.backends import cpu as cpu_backend

from helpers import assert_rel

pytestmark = pytest.mark.usefixtures("vector_isa")

CL = torch.channels_last

# (N, C, H, W, K, stride)
CASES = [
    (8, 64, 16, 16, 64, 1),     # 2048 pixels, one tile: 2 pixel groups summed in order
    (4, 48, 32, 32, 40, 1),     # 8 pixel groups; K = 6*6 + 4, C = 3 vectors
    (2, 37, 9, 11, 29, 2),      # stride 2: a run per output row; C, K off the lanes and rows
    (3, 300, 7, 7, 130, 1),     # 147 pixels, tiles of 132 x 256 rows/columns split for the threads
    (1, 520, 5, 5, 270, 3),     # stride 3, several tiles, batch 1
    (5, 17, 10, 10, 5, 1),      # K < one register tile, C < one vector
    (2, 2, 12, 12, 3, 2),       # the smallest C the kernel takes
]


def _wgrad(x, w, dy, stride, need_bias=True):
    be = cpu_backend.CpuBackend()
    return be.conv2d_wgrad(dy, x, w, None, (stride,) * 2, (0, 0), (1, 1), 1, True, need_bias)


def _inputs(N, C, H, W, K, stride):
    x = torch.randn(N, C, H, W).contiguous(memory_format=CL)
    w = torch.randn(K, C, 1, 1)
    P, Q = (H - 1) // stride + 1, (W - 1) // stride + 1
    dy = torch.randn(N, K, P, Q).contiguous(memory_format=CL)
    return x, w, dy


def _threads(n):
    class _Set:
        def __enter__(self):
            self.before = torch.get_num_threads()
            torch.set_num_threads(n)

        def __exit__(self, *exc):
            torch.set_num_threads(self.before)
    return _Set()


@pytest.mark.parametrize("case", CASES, ids=[f"n{c[0]}c{c[1]}k{c[4]}-{c[2]}x{c[3]}s{c[5]}" for c in CASES])
def test_pointwise_wgrad_matches_torch_and_threads(case):
    N, C, H, W, K, stride = case
    x, w, dy = _inputs(*case)
    assert cpu_backend.conv2d_path(x, w, pass_="wgrad", stride=stride) == "wgrad_pointwise"
    with _threads(1):
        serial = _wgrad(x, w, dy, stride)
    with _threads(2):
        runs = [_wgrad(x, w, dy, stride) for _ in range(3)]
    with _threads(3):  # an odd thread count splits the output tiles differently
        runs.append(_wgrad(x, w, dy, stride))
    ref = torch.nn.grad.conv2d_weight(x.double(), w.shape, dy.double(), stride=stride)
    assert_rel(serial[0], ref, torch.float32, "grad_weight")
    assert_rel(serial[1], dy.double().sum((0, 2, 3)), torch.float32, "grad_bias")
    for dw, db in runs:
        assert torch.equal(dw, serial[0]) and torch.equal(db, serial[1])


def test_pointwise_wgrad_strided_views():
    """x a channel slice of a wider channels_last tensor (pixel rows C_full floats apart), dy a spatial
    slice (rows not contiguous from one output row to the next): the kernel reads them in place."""
    wide = torch.randn(3, 80, 14, 14).contiguous(memory_format=CL)
    x = wide[:, 8:72]
    assert x.stride(1) == 1 and x.stride(3) == 80
    w = torch.randn(48, 64, 1, 1)
    dy_full = torch.randn(3, 48, 9, 11).contiguous(memory_format=CL)
    dy = dy_full[:, :, 1:8, 2:9]
    assert dy.stride(1) == 1 and dy.shape[2:] == (7, 7)
    assert cpu_backend.conv2d_path(x, w, pass_="wgrad", stride=2) == "wgrad_pointwise"
    dw, db = _wgrad(x, w, dy, 2)
    ref = torch.nn.grad.conv2d_weight(x.double(), w.shape, dy.double(), stride=2)
    assert_rel(dw, ref, torch.float32, "grad_weight")
    assert_rel(db, dy.double().sum((0, 2, 3)), torch.float32, "grad_bias")


def test_pointwise_wgrad_through_autograd_channels_last_weight():
    """The module path: fastconv.nn.Conv2d in channels_last (its weight too), loss.backward()."""
    torch.manual_seed(0)
    conv = fastconv.nn.Conv2d(96, 200, 1, stride=2, bias=True).to(memory_format=CL)
    ref = torch.nn.Conv2d(96, 200, 1, stride=2, bias=True).double()
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(4, 96, 15, 15).contiguous(memory_format=CL)
    g = torch.randn(4, 200, 8, 8).contiguous(memory_format=CL)
    conv(x).backward(g)
    ref(x.double()).backward(g.double())
    assert_rel(conv.weight.grad, ref.weight.grad, torch.float32, "grad_weight")
    assert_rel(conv.bias.grad, ref.bias.grad, torch.float32, "grad_bias")


def test_pointwise_wgrad_not_taken():
    """Padding, a 3x3 filter, groups, an NCHW dy, float64 or the fused ReLU's mask: other kernels."""
    x, w, dy = _inputs(2, 32, 8, 8, 16, 1)
    assert cpu_backend.conv2d_path(x, w, pass_="wgrad", padding=1) != "wgrad_pointwise"
    assert cpu_backend.conv2d_path(x, torch.randn(16, 32, 3, 3), pass_="wgrad", stride=2) != "wgrad_pointwise"
    assert cpu_backend.conv2d_path(x, torch.randn(16, 16, 1, 1), pass_="wgrad", groups=2) != "wgrad_pointwise"
    assert cpu_backend.conv2d_path(x.contiguous(), w, pass_="wgrad") != "wgrad_pointwise"
    assert cpu_backend.conv2d_path(x.double(), w.double(), pass_="wgrad") != "wgrad_pointwise"
    assert cpu_backend.conv2d_path(x, w, pass_="wgrad", relu=True) != "wgrad_pointwise"


def test_switch_off(monkeypatch):
    """FASTCONV_CPU_WGRAD_POINTWISE=0 selects the blocked kernel: same values, other rounding."""
    x, w, dy = _inputs(4, 64, 12, 12, 72, 1)
    pointwise = _wgrad(x, w, dy, 1)[0]
    monkeypatch.setenv("FASTCONV_CPU_WGRAD_POINTWISE", "0")
    assert cpu_backend.conv2d_path(x, w, pass_="wgrad") == "wgrad_blocked"
    blocked = _wgrad(x, w, dy, 1)[0]
    assert_rel(pointwise, blocked, torch.float32)
