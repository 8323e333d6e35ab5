"""max_pool2d and avg_pool2d, fastconv vs torch: forward (no indices, as in inference) and backward
alone (grad_input from a retained graph: max pooling reads the indices saved by its forward), NCHW and
channels_last, float32 (--bench-dtypes for more). Throughput is the minimum traffic
(PoolShape.bytes / bytes_backward) per time. Inputs and steps are fastconv.benchmarks.runner's.
"""
from __future__ import annotations

import pytest

from fastconv.benchmarks.runner import itemsize

from ._harness import Case, assert_same, pool_inputs, pool_step

MODES = ("fwd", "bwd")


@pytest.mark.parametrize("mode", MODES)
def test_pool2d(run_case, bench_config, pool_shape, layout, dtype, impl, mode):
    s = pool_shape
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
