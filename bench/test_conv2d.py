"""conv2d and fused conv2d_relu, fastconv vs torch: forward, and forward+backward (input, weight and
bias gradients), NCHW and channels_last, float32 (--bench-dtypes for more).

The torch baseline for conv2d_relu is F.conv2d followed by an in-place ReLU (what nn.ReLU(inplace=True)
does after a conv layer) - the strongest unfused baseline, with no extra output allocation. Inputs,
steps and the check are fastconv.benchmarks.runner's, shared with `fastconv bench`.
"""
from __future__ import annotations

import pytest

from ._harness import Case, check_conv, conv_inputs, conv_step

OPS = ("conv2d", "conv2d_relu")
MODES = ("fwd", "fwdbwd")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", OPS)
def test_conv2d(run_case, bench_config, conv_shape, layout, dtype, impl, op, mode):
    s = conv_shape
    device = bench_config.device
    x, w, b, dy = conv_inputs(s, layout, grad=(mode == "fwdbwd"), dtype=dtype, device=device)
    work = s.flops if mode == "fwd" else s.flops_fwd_bwd
    case = Case(op, mode, s, layout, impl, work, "GFLOP/s", dtype=dtype, device=device)
    fn = conv_step(impl, op, mode, s, x, w, b, dy)

    def check():
        check_conv(impl, op, mode, s, x, w, b, dy, dtype)

    run_case(case, fn, check)
