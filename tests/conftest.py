"""Shared fixtures and helpers for fastconv's correctness tests.

Every test that runs a kernel takes the `backend` fixture. By default it is parametrized over the
'cpu' backend (fastconv._C, the main target); `--backend NAME` (repeatable) or FASTCONV_TEST_BACKENDS
(comma-separated) choose others, e.g. `pytest tests --backend reference` checks the tests themselves
against the pure-torch backend. A backend that cannot be selected (e.g. _C not built) makes the tests
ERROR, never skip.

The yardstick is always torch: results in float64 computed by torch from the same inputs, compared
with `rel_err` = ||ours - ref|| / ||ref|| (Frobenius norm over the whole tensor).
"""
from __future__ import annotations

import os
import random
from typing import Iterable, Optional

import pytest
import torch

import fastconv
import _hypothesis_profiles  # noqa: F401  (hypothesis profiles: 'ci', the default, and 'long')

# Relative error bound per dtype: ||ours - ref|| / ||ref|| with ref = torch in float64.
# float16/bfloat16 run in float32 and are rounded once: the bound is a few output ulps.
REL_TOL = {
    torch.float32: 1e-5,
    torch.float64: 1e-10,
    torch.float16: 3e-3,
    torch.bfloat16: 2e-2,
}

DEFAULT_BACKENDS = ("cpu",)


# The cpu backend's scratch buffers are reused across calls; poisoned with NaN on every use here, a
# kernel that reads scratch it did not write fails the comparison instead of passing by luck.
os.environ.setdefault("FASTCONV_POISON_SCRATCH", "1")


def pytest_configure(config):
    # Under pytest-xdist, share the cores between the workers: with -n 2 on 2 cores, each worker
    # runs torch (and the cpu backend, which takes torch.get_num_threads()) on 1 thread instead of 4
    # OpenMP threads spinning on 2 cores. Multi-threaded paths are exercised explicitly by
    # test_backends.py (determinism across 1 and 2 threads), which sets the thread count itself.
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers and os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))


def pytest_addoption(parser):
    parser.addoption(
        "--backend", action="append", default=None, dest="fastconv_backends",
        help="fastconv backend(s) the kernel tests run on (repeatable; default: cpu)",
    )


def _backends(config) -> list:
    chosen = config.getoption("fastconv_backends")
    if chosen:
        return list(chosen)
    env = os.environ.get("FASTCONV_TEST_BACKENDS", "").strip()
    if env:
        return [b.strip() for b in env.split(",") if b.strip()]
    return list(DEFAULT_BACKENDS)


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", _backends(metafunc.config), indirect=True, scope="function")


@pytest.fixture
def backend(request):
    """Selects a fastconv backend process-wide for the test and restores the previous choice.

    TF32 is off meanwhile: the float32 tolerances are for true float32 arithmetic, which the CUDA
    backends (and their emulation) only do when torch.backends.cudnn.allow_tf32 is False."""
    name = request.param
    previous, tf32 = fastconv.get_backend(), torch.backends.cudnn.allow_tf32
    fastconv.set_backend(name)  # raises (test ERROR, not skip) if the backend is unavailable
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield name
    finally:
        fastconv.set_backend(previous)
        torch.backends.cudnn.allow_tf32 = tf32


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same RNG state, so failures reproduce in isolation."""
    torch.manual_seed(0)
    random.seed(0)
    yield


def _cpu_isas() -> list:
    """The CPU kernels' ISA levels this machine can run, best first ([] without fastconv._C)."""
    try:
        from fastconv import _C
    except ImportError:
        return []
    order = ["baseline", "avx2", "avx512"]
    return [i for i in reversed(order) if order.index(i) <= order.index(_C.detected_cpu_isa())]


CPU_ISAS = _cpu_isas()


@pytest.fixture(params=CPU_ISAS)
def isa(request):
    """Runs the test at each ISA level of the CPU kernels (fastconv._C.set_cpu_isa), since their
    specializations differ per level; restores the previous level afterwards."""
    from fastconv import _C
    previous = _C.cpu_isa()
    _C.set_cpu_isa(request.param)
    yield request.param
    _C.set_cpu_isa(previous)


@pytest.fixture
def weight_pack_cache():
    """The cpu backend's weight-pack cache, empty at the start and the end of the test."""
    from fastconv.backends import cpu as cpu_backend
    c = cpu_backend.weight_pack_cache
    c.clear()
    yield c
    c.clear()


# ----------------------------------------------------------------------------------------------------
# Helpers


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """||ours - ref|| / ||ref|| in float64; the absolute norm when ref is all zeros; 0 for empty tensors.

    Shapes must agree. NaN anywhere in ours (but not in ref) gives inf.
    """
    assert isinstance(ours, torch.Tensor), f"expected a tensor, got {type(ours).__name__}"
    assert tuple(ours.shape) == tuple(ref.shape), f"shape {tuple(ours.shape)} != torch's {tuple(ref.shape)}"
    if ref.numel() == 0:
        return 0.0
    a = ours.detach().to(torch.float64)
    b = ref.detach().to(torch.float64)
    if not torch.isfinite(a).all() and torch.isfinite(b).all():
        return float("inf")
    diff = torch.linalg.vector_norm(a - b).item()
    denom = torch.linalg.vector_norm(b).item()
    return diff / denom if denom > 0 else diff


def assert_rel(ours: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str = "output",
               tol: Optional[float] = None) -> None:
    tol = REL_TOL[dtype] if tol is None else tol
    err = rel_err(ours, ref)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e} (dtype {dtype})"


def same_memory_format(ours: torch.Tensor, ref: torch.Tensor, what: str = "output") -> None:
    """ours is laid out as torch's result is: contiguous and/or channels_last exactly when torch's is."""
    for fmt in (torch.contiguous_format, torch.channels_last):
        if ref.dim() != 4 and fmt is torch.channels_last:
            continue
        assert ours.is_contiguous(memory_format=fmt) == ref.is_contiguous(memory_format=fmt), (
            f"{what}: memory format differs from torch's: ours strides {ours.stride()}, torch's {ref.stride()} "
            f"(shape {tuple(ref.shape)}, {fmt})"
        )


def sample_grid(axes: dict, n: int, seed: int, valid=None) -> list:
    """A deterministic sample of n cases from the product of the axes (dict name -> values).

    Cases are drawn value by value with a seeded RNG, so that every value of every axis is
    exercised even when the full product is too big to run; `valid(case) -> bool` filters.
    Each value of each axis is first forced into at least one case (round-robin), then the rest
    are random.
    """
    rng = random.Random(seed)
    names = list(axes)
    cases, seen = [], set()

    def draw(forced=None):
        for _ in range(1000):
            case = {k: rng.choice(list(axes[k])) for k in names}
            if forced:
                case[forced[0]] = forced[1]
            key = repr(sorted(case.items(), key=lambda kv: kv[0]))
            if key in seen or (valid is not None and not valid(case)):
                continue
            seen.add(key)
            return case
        return None

    for k in names:
        for v in axes[k]:
            case = draw((k, v))
            if case is not None:
                cases.append(case)
    while len(cases) < n:
        case = draw()
        if case is None:
            break
        cases.append(case)
    return cases


def case_id(case: dict) -> str:
    def fmt(v):
        if isinstance(v, tuple):
            return "x".join(str(i) for i in v)
        if isinstance(v, torch.dtype):
            return str(v).replace("torch.", "")
        return str(v)

    return "-".join(f"{k}={fmt(v)}" for k, v in case.items())


def covered(cases: Iterable[dict], axes: dict) -> dict:
    """For each axis, the values that no case uses (empty dict: full coverage)."""
    cases = list(cases)
    missing = {}
    for k, values in axes.items():
        used = {repr(c[k]) for c in cases}
        lacking = [v for v in values if repr(v) not in used]
        if lacking:
            missing[k] = lacking
    return missing
