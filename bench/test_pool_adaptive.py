"""adaptive_avg_pool2d (global average pooling as its 1 x 1 case) and adaptive_max_pool2d, fastconv vs torch:
forward (no indices, as in inference) and backward alone, NCHW and channels_last, on the
fastconv.benchmarks table cpu_adaptive_pool. Throughput is the minimum traffic (AdaptivePoolShape.bytes /
bytes_backward) per time; the report's %peak column is the share of the measured STREAM bandwidth.
"""
from __future__ import annotations

import pytest

from fastconv.benchmarks.runner import itemsize

from ._harness import Case, assert_same, pool_inputs, pool_step

MODES = ("fwd", "bwd")


@pytest.mark.parametrize("mode", MODES)
def test_adaptive_pool2d(run_case, bench_config, adaptive_pool_shape, layout, dtype, impl, mode):
    s = adaptive_pool_shape
    device = bench_config.device
    x, dy = pool_inputs(s, layout, dtype, device)
    size = itemsize(dtype)
    work = s.bytes(size) if mode == "fwd" else s.bytes_backward(size)
    case = Case(f"{s.op}_pool2d", mode, s, layout, impl, work, "GB/s", dtype=dtype, device=device)
    fn = pool_step(impl, mode, s, x, dy)

    def check():
        name = "output" if mode == "fwd" else "grad_input"
        assert_same((fn(),), (pool_step("torch", mode, s, x, dy)(),), (name,), dtype, strict=True)

    run_case(case, fn, check)
