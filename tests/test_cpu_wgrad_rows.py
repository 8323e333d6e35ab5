"""The cpu backend's filter-row weight gradient (csrc/cpu/conv2d_wgrad_rows_isa.cpp): float32, groups 1,
column dilation 1, filter rows of at most 12 floats (RGB stems), on AVX-512. Against torch in float64,
with 2 OpenMP threads explicitly (the xdist workers otherwise run 1), and 1 thread vs 2 threads bit for
bit: the pixel groups are fixed by the problem, so a thread-dependent split shows up as other bits.
"""
from __future__ import annotations

import pytest
import torch

from fastconv.backends import cpu as cpu_backend

from helpers import assert_rel, check_cpu_wgrad_two_threads, pair

_C = cpu_backend._C
pytestmark = pytest.mark.skipif(_C is None or _C.cpu_isa() != "avx512",
                                reason="the filter-row weight gradient is built for AVX-512 only")

# (N, C, H, W, K, R, S, stride, padding, dilation)
CASES = [
    (8, 3, 64, 64, 24, 3, 3, 2, 1, 1),    # ShuffleNetV2's stem kind: 8192 pixels, 2 groups, K tail (24 = 16 + 8)
    (4, 3, 90, 90, 32, 3, 3, 2, 1, 1),    # MobileNetV2's: two whole vectors of k, 8 groups with a short last one
    (2, 4, 20, 19, 40, 3, 3, 1, 0, 1),    # 12-float rows (the bound), no padding, k chunks of 32 + 8
    (1, 2, 23, 23, 7, 5, 5, 2, 2, 1),     # two channels, 5x5, a single group
    (2, 2, 15, 17, 16, 3, 5, (2, 1), (1, 2), (2, 1)),  # R != S, row dilation, row stride only
    (3, 3, 9, 9, 70, 3, 3, 1, 1, 1),      # 3 k chunks (32, 32, 6), stride 1 (C < 16: not Winograd)
]


def _wgrad(x, w, dy, relu_y, stride, padding, dilation):
    be = cpu_backend.CpuBackend()
    return be.conv2d_wgrad(dy, x, w, relu_y, pair(stride), pair(padding), pair(dilation), 1, True, True)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_rows_wgrad_two_threads(case, layout, relu):
    N, C, H, W, K, R, S, stride, pad, dil = case
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(pad), pair(dil)
    x = torch.randn(N, C, H, W)
    if layout == "strided":  # pixels not C floats apart: every window row through the zero-padded copy
        x = torch.randn(N, H, W, C + 2).permute(0, 3, 1, 2)[:, 1:C + 1]
    w = torch.randn(K, C, R, S)
    P = (H + 2 * ph - dh * (R - 1) - 1) // sh + 1
    Q = (W + 2 * pw - dw * (S - 1) - 1) // sw + 1
    dy = torch.randn(N, K, P, Q)
    relu_y = torch.randn(N, K, P, Q).clamp_min(0) if relu else None  # the fused op's output: 0 where masked
    if layout == "channels_last":
        x, dy = (t.contiguous(memory_format=torch.channels_last) for t in (x, dy))
    assert cpu_backend.conv2d_path(x, w, stride, pad, dil, pass_="wgrad", relu=relu) == "wgrad_rows"
    check_cpu_wgrad_two_threads(x, w, dy, relu_y, stride, pad, dil)


def test_rows_path_bounds(monkeypatch):
    """Rows of at most 12 floats, groups 1, column dilation 1, float32; FASTCONV_CPU_WGRAD_ROWS=0 hands
    them to the blocked kernel (same values, other rounding)."""
    def path(C, S, dtype=torch.float32, **kw):
        x = torch.empty(2, C, 16, 16, device="meta", dtype=dtype)
        w = torch.empty(8, C // kw.get("groups", 1), 3, S, device="meta", dtype=dtype)
        return cpu_backend.conv2d_path(x, w, pass_="wgrad", stride=2, **kw)

    assert path(4, 3) == "wgrad_rows" and path(3, 3) == "wgrad_rows"
    assert path(5, 3) == "wgrad_blocked"                    # 15 floats
    assert path(1, 3) != "wgrad_rows"                       # one channel: the GEMM kernels
    assert path(3, 3, dilation=(1, 2)) == "wgrad_blocked"   # column dilation: the taps are not one run
    assert path(4, 3, groups=2) != "wgrad_rows"
    assert path(3, 3, torch.float64) != "wgrad_rows"
    x, w, dy = torch.randn(2, 3, 30, 30), torch.randn(16, 3, 3, 3), torch.randn(2, 16, 15, 15)
    rows = _wgrad(x, w, dy, None, 2, 1, 1)[0]
    monkeypatch.setenv("FASTCONV_CPU_WGRAD_ROWS", "0")
    assert cpu_backend.conv2d_path(x, w, 2, 1, pass_="wgrad") == "wgrad_blocked"
    blocked = _wgrad(x, w, dy, None, 2, 1, 1)[0]
    assert_rel(rows, blocked, torch.float32)
