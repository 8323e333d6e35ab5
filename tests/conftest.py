"""Shared fixtures for fastconv's correctness tests (plain helpers and the shared grids: tests/helpers.py).

Every test that runs a kernel takes the `backend` fixture. By default it is parametrized over the
'cpu' backend (fastconv._C, the main target); `--backend NAME` (repeatable) or FASTCONV_TEST_BACKENDS
(comma-separated) choose others, e.g. `pytest tests --backend reference` checks the tests themselves
against the pure-torch backend. A backend that cannot be selected (e.g. _C not built) makes the tests
ERROR, never skip.
"""
from __future__ import annotations

import os
import random

import pytest
import torch

import fastconv
import _hypothesis_profiles  # noqa: F401  (hypothesis profiles: 'ci', the default, and 'long')
from helpers import CPU_ISAS

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


def _at_isa(level):
    from fastconv import _C
    previous = _C.cpu_isa()
    _C.set_cpu_isa(level)
    try:
        yield level
    finally:
        _C.set_cpu_isa(previous)


@pytest.fixture(params=CPU_ISAS)
def isa(request):
    """Runs the test at each ISA level of the CPU kernels (fastconv._C.set_cpu_isa), since their
    specializations differ per level; restores the previous level afterwards."""
    yield from _at_isa(request.param)


@pytest.fixture(params=[i for i in CPU_ISAS if i != "baseline"])
def vector_isa(request):
    """As `isa`, over the levels with FMA vectors (avx2, avx512) this CPU has: the channels_last block
    kernels (csrc/cpu/cl_blocks.h: the blocked and pointwise weight gradients) exist only there. A CPU
    with neither runs none of these tests (pytest reports them skipped)."""
    yield from _at_isa(request.param)


@pytest.fixture
def weight_pack_cache():
    """The cpu backend's weight-pack cache, empty at the start and the end of the test."""
    from fastconv.backends import cpu as cpu_backend
    c = cpu_backend.weight_pack_cache
    c.clear()
    yield c
    c.clear()


@pytest.fixture(params=["forward", "reversed"])
def thread_order(request):
    """The SIMT emulator (fastconv._C_emu) schedules each block's threads in this order; restored to
    'forward' afterwards."""
    from fastconv import _C_emu
    _C_emu.set_thread_order(request.param)
    try:
        yield request.param
    finally:
        _C_emu.set_thread_order("forward")


@pytest.fixture
def triton_interpreted():
    """The 'triton' backend with TRITON_INTERPRET=1 (its kernels run on CPU tensors) for one test, for test
    modules that sample their grids on Triton (tests/test_triton.py does this for its whole module)."""
    triton = pytest.importorskip("triton", reason="Triton is not installed")
    with triton.knobs.runtime.scope():
        triton.knobs.runtime.interpret = True  # also sets os.environ["TRITON_INTERPRET"] = "1"
        with fastconv.use_backend("triton"):
            yield
