"""The 'triton' backend's adaptive pooling kernels (fastconv/triton/pool_adaptive.py) and the 1-d pools (the
2-d kernels on (N, C, 1, L) views), run on CPU tensors by Triton's interpreter (TRITON_INTERPRET=1).

Sampled grids of tests/helpers.py (ADAPTIVE_AXES, MAX_POOL1D_AXES, AVG_POOL1D_AXES), small shapes: max values
and indices EQUAL torch's (also with ties and NaN), everything else within helpers.REL_TOL of torch in
float64, forward and backward; global average pooling (its own reduction kernel) included.
"""
from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

import fastconv  # noqa: E402
from helpers import (ADAPTIVE_AXES, AVG_POOL1D_AXES, MAX_POOL1D_AXES, case_id, check_adaptive,  # noqa: E402
                     check_pool1d, nans, pool1d_torch_accepts, sample_grid, ties)

AXES = dict(ADAPTIVE_AXES, C=[1, 3, 9], HW=[(1, 1), (5, 5), (7, 6), (4, 11), (9, 9)],
            dtype=[torch.float32, torch.float64, torch.float16, torch.bfloat16])
CASES = sample_grid(AXES, n=24, seed=71)
MAX1D = sample_grid(dict(MAX_POOL1D_AXES, N=[1, 2], C=[1, 3]), n=12, seed=72, valid=pool1d_torch_accepts("max"))
AVG1D = sample_grid(dict(AVG_POOL1D_AXES, N=[1, 2], C=[1, 3]), n=10, seed=73, valid=pool1d_torch_accepts("avg"))


@pytest.fixture(scope="module", autouse=True)
def triton_interpreter():
    """TRITON_INTERPRET=1 and the 'triton' backend for this module's tests, restored afterwards."""
    with triton.knobs.runtime.scope():
        triton.knobs.runtime.interpret = True
        with fastconv.use_backend("triton"):
            yield


@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_adaptive_pool2d(case, kind):
    case = dict(case)
    check_adaptive(case, case.pop("dtype"), kind)


@pytest.mark.parametrize("values", [ties, nans], ids=["ties", "nans"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_adaptive_max_special_values(values, layout):
    case = dict(output_size=(3, 4), layout=layout, N=2, C=3, HW=(7, 9), grad="contiguous")
    check_adaptive(case, torch.float32, "max", values=values)


@pytest.mark.parametrize("case", MAX1D, ids=case_id)
def test_max_pool1d(case):
    check_pool1d(case, torch.float32, "max")


@pytest.mark.parametrize("case", AVG1D, ids=case_id)
def test_avg_pool1d(case):
    check_pool1d(case, torch.float32, "avg")
