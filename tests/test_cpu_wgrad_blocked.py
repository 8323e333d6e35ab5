"""The cpu backend's blocked weight gradient (csrc/cpu/conv2d_wgrad_blocked_isa.cpp): float32, groups 1, any
filter / stride / dilation / padding, at the AVX2 and AVX-512 levels (each that this CPU has). Run with 2 OpenMP threads explicitly (the xdist
workers otherwise run 1), against torch in float64, and 1 thread vs 2 threads bit for bit, a few
times: each thread has its own gather buffers and the tile groups are fixed by the problem, so any
overlap between the threads' buffers shows up here as a wrong or unstable gradient.
"""
from __future__ import annotations

import pytest
import torch

import fastconv
from fastconv.backends import cpu as cpu_backend

from helpers import assert_rel, check_cpu_wgrad_two_threads

pytestmark = pytest.mark.usefixtures("vector_isa")

@pytest.fixture(autouse=True)
def _no_rows_or_pointwise_kernel(monkeypatch):
    """The RGB stem below is the filter-row kernel's (test_cpu_wgrad_rows.py) and the 1x1 layers the
    pointwise kernel's (test_cpu_wgrad_pointwise.py) unless they are off."""
    monkeypatch.setenv("FASTCONV_CPU_WGRAD_ROWS", "0")
    monkeypatch.setenv("FASTCONV_CPU_WGRAD_POINTWISE", "0")


# (N, C, H, W, K, R, S, stride, padding, dilation): enough output pixels for 8 tile groups of 64.
CASES = [
    (8, 64, 16, 16, 64, 1, 1, 1, 0, 1),    # 1x1
    (8, 3, 32, 32, 32, 3, 3, 1, 1, 1),     # RGB stem: 27-long im2col rows
    (8, 24, 30, 30, 40, 3, 3, 2, 1, 1),    # stride 2, channels off the 16 lanes
    (4, 8, 40, 37, 20, 3, 3, 1, 2, 2),     # dilated, 8 channels (not Winograd)
    (2, 5, 45, 45, 17, 7, 7, 2, 3, 1),     # 7x7 stride-2 stem, rows longer than one vector chunk
    (4, 16, 34, 34, 24, 3, 3, 1, 1, 2),    # an NCHW layer the AVX2 level stages too (>= 16 channels, 4096 pixels)
    (3, 256, 33, 33, 250, 3, 3, 2, 1, 1),  # a 2304 x 256 sum matrix (> 2 MiB) over 867 pixels: blocks of 256
]


def _takes_blocked(isa, layout, N, C, K, R, S, P, Q):
    """Where the blocked kernel runs: channels_last always; NCHW at AVX2 only with taps on >= 16 channels and
    >= 2048 output pixels (the GEMM kernels keep the rest: conv2d_isa.cpp, wgrad_blocked_skips_nchw)."""
    return isa == "avx512" or layout == "channels_last" or (R * S > 1 and C >= 16 and N * P * Q >= 2048)


def _wgrad(x, w, dy, relu_y, stride, padding, dilation):
    be = cpu_backend.CpuBackend()
    dw, db = be.conv2d_wgrad(dy, x, w, relu_y, (stride,) * 2, (padding,) * 2, (dilation,) * 2, 1, True, True)
    return dw, db


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case", CASES, ids=[f"c{c[1]}k{c[4]}-{c[5]}x{c[6]}s{c[7]}p{c[8]}d{c[9]}" for c in CASES])
def test_blocked_wgrad_two_threads(case, layout, relu, vector_isa):
    N, C, H, W, K, R, S, stride, pad, dil = case
    x = torch.randn(N, C, H, W)
    w = torch.randn(K, C, R, S)
    P = (H + 2 * pad - dil * (R - 1) - 1) // stride + 1
    Q = (W + 2 * pad - dil * (S - 1) - 1) // stride + 1
    dy = torch.randn(N, K, P, Q)
    relu_y = torch.randn(N, K, P, Q).clamp_min(0) if relu else None  # the fused op's output: 0 where masked
    if layout == "channels_last":
        x, dy = (t.contiguous(memory_format=torch.channels_last) for t in (x, dy))
    expected = "wgrad_blocked" if _takes_blocked(vector_isa, layout, N, C, K, R, S, P, Q) else "wgrad_gemm_nchw"
    assert cpu_backend.conv2d_path(x, w, stride, pad, dil, pass_="wgrad", relu=relu) == expected
    check_cpu_wgrad_two_threads(x, w, dy, relu_y, stride, pad, dil)


def test_switch_off(monkeypatch):
    """FASTCONV_CPU_WGRAD_BLOCKED=0 selects the previous kernels: same values, other rounding."""
    x, w, dy = torch.randn(4, 16, 20, 20), torch.randn(24, 16, 1, 1), torch.randn(4, 24, 20, 20)
    blocked = _wgrad(x, w, dy, None, 1, 0, 1)[0]
    monkeypatch.setenv("FASTCONV_CPU_WGRAD_BLOCKED", "0")
    direct = _wgrad(x, w, dy, None, 1, 0, 1)[0]
    assert_rel(blocked, direct, torch.float32)
    with fastconv.use_backend("cpu"):
        assert torch.isfinite(direct).all()
    ref = torch.nn.grad.conv2d_weight(x.double(), w.shape, dy.double())
    assert_rel(direct, ref, torch.float32)
