"""conv1d (+ fused conv1d_relu) and conv_transpose2d, fastconv vs torch: forward, and forward+backward
(input, weight and bias gradients), NCHW and channels_last (1-d: (N, C, L) with the channel stride 1, a
sequence model's (N, L, C) transposed), float32. Tables: fastconv.benchmarks.TABLES['conv1d'] (speech and
sequence layers) and ['conv_transpose'] (DCGAN / U-Net / FCN decoder layers), shared with
`fastconv bench --table conv1d,conv_transpose`. Inputs, steps and checks are fastconv.benchmarks.runner's.
"""
from __future__ import annotations

import pytest

from ._harness import Case, check_conv, conv_inputs, conv_step

MODES = ("fwd", "fwdbwd")


def _run(run_case, bench_config, s, table, layout, dtype, impl, op, mode):
    device = bench_config.device
    x, w, b, dy = conv_inputs(s, layout, grad=(mode == "fwdbwd"), dtype=dtype, device=device)
    work = s.flops if mode == "fwd" else s.flops_fwd_bwd
    case = Case(op, mode, s, layout, impl, work, "GFLOP/s", dtype=dtype, device=device, table=table)
    fn = conv_step(impl, op, mode, s, x, w, b, dy)

    def check():
        check_conv(impl, op, mode, s, x, w, b, dy, dtype)

    run_case(case, fn, check)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", ("conv1d", "conv1d_relu"))
def test_conv1d(run_case, bench_config, conv1d_shape, layout, dtype, impl, op, mode):
    _run(run_case, bench_config, conv1d_shape, "conv1d", layout, dtype, impl, op, mode)


@pytest.mark.parametrize("mode", MODES)
def test_conv_transpose2d(run_case, bench_config, conv_transpose_shape, layout, dtype, impl, mode):
    _run(run_case, bench_config, conv_transpose_shape, "conv_transpose", layout, dtype, impl, "conv_transpose2d", mode)
