"""Determinism: every op of the cpu backend gives bitwise-identical outputs and gradients run to run and
with 1 or 2 threads, and torch.use_deterministic_algorithms(True) is honoured.

The workload covers every public op (functional conv2d / conv2d_relu / max_pool2d with indices /
avg_pool2d and the nn layers) in float32, float64, float16 and bfloat16, NCHW and channels_last, at
sizes above the cpu backend's serial thresholds (fastconv/backends/cpu.py), so that the
multi-threaded work splits run. (test_backends.py checks a smaller workload the same way.)

use_deterministic_algorithms: a backend declares its nondeterministic kernels with
Backend.nondeterministic_ops(); the ops then raise torch's RuntimeError ("... does not have a
deterministic implementation, but you set 'torch.use_deterministic_algorithms(True)' ...") or warn with
warn_only=True. Checked with a fake backend registered by the test; the cpu backend (no
nondeterministic kernel) must work under determinism, with torch filling uninitialized memory (so an
output element a kernel forgot to write shows up as NaN) and give the same bits as without it.
"""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FC
from fastconv import backends
from fastconv.backends.reference import ReferenceBackend
from helpers import assert_rel

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _rnd(gen, shape, dtype):
    return torch.randn(*shape, generator=gen, dtype=torch.float32).to(dtype)


def _grads(out, inputs, gen):
    g = _rnd(gen, out.shape, out.dtype)
    leaves = [t for t in inputs if t is not None and t.requires_grad]
    return list(torch.autograd.grad(out, leaves, g))


def workload(dtype, seed=0):
    """Every op, forward and backward; returns the list of (name, tensor) of outputs and gradients.

    Sizes: conv 2*32*32*32*16*9 = 9.4M multiply-adds (over the backend's 8M serial threshold), pools
    2*16*48*48 = 74k elements (over 64k), so 2 threads split the work."""
    gen = torch.Generator().manual_seed(seed)
    out = []

    def leaf(*shape, cl=False):
        t = _rnd(gen, shape, dtype)
        if cl:
            t = t.contiguous(memory_format=torch.channels_last)
        return t.requires_grad_()

    conv_cfgs = [
        ("nchw-3x3", (2, 16, 32, 32), (32, 16, 3, 3), dict(padding=1), False),
        ("cl-strided-dilated", (2, 16, 34, 33), (32, 8, 3, 2), dict(stride=(1, 2), padding=(2, 1), dilation=2,
                                                                    groups=2), True),
        ("depthwise-same", (2, 32, 40, 40), (32, 1, 5, 5), dict(padding="same", groups=32), False),
        ("cl-1x1", (2, 64, 24, 24), (96, 64, 1, 1), dict(), True),
    ]
    for name, xs, ws, kw, cl in conv_cfgs:
        for op in ("conv2d", "conv2d_relu"):
            x, w, b = leaf(*xs, cl=cl), leaf(*ws), leaf(ws[0])
            y = getattr(FC, op)(x, w, b, **kw)
            out += [(f"{op}-{name}-y", y)] + [(f"{op}-{name}-d{i}", g) for i, g in
                                               enumerate(_grads(y, (x, w, b), gen))]
    pool_cfgs = [
        ("nchw", (2, 16, 48, 48), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), False),
        ("cl", (2, 16, 48, 48), dict(kernel_size=(2, 3), stride=1, padding=(1, 1)), True),
        ("nchw-s3", (2, 16, 50, 47), dict(kernel_size=4, stride=3, padding=2), False),
    ]
    for name, xs, kw, cl in pool_cfgs:
        x = leaf(*xs, cl=cl)
        y, idx = FC.max_pool2d(x, **kw, dilation=1 + (name == "nchw-s3"), return_indices=True)
        out += [(f"max-{name}-y", y), (f"max-{name}-idx", idx), (f"max-{name}-dx", _grads(y, (x,), gen)[0])]
        with torch.no_grad():  # the inference op (no indices)
            out.append((f"max-{name}-inference", FC.max_pool2d(x, **kw)))
        for extra in (dict(count_include_pad=False), dict(divisor_override=5)):
            y = FC.avg_pool2d(x, **kw, **extra)
            out += [(f"avg-{name}-{extra}-y", y), (f"avg-{name}-{extra}-dx", _grads(y, (x,), gen)[0])]
    # nn layers (the module path: parameters, padding_mode)
    torch.manual_seed(seed)
    layers = [
        fastconv.nn.Conv2d(16, 24, 3, padding=1, padding_mode="reflect"),
        fastconv.nn.Conv2dReLU(16, 24, 3, stride=2, padding=1),
        fastconv.nn.MaxPool2d(3, 2, 1),
        fastconv.nn.AvgPool2d(2, count_include_pad=False),
    ]
    for i, layer in enumerate(layers):
        layer = layer.to(dtype)
        x = leaf(2, 16, 48, 48)
        y = layer(x)
        out += [(f"nn{i}-y", y)] + [(f"nn{i}-d{j}", g) for j, g in
                                    enumerate(_grads(y, (x, *layer.parameters()), gen))]
    return out


def assert_bitwise(a, b, what):
    assert len(a) == len(b)
    for (name, t), (_, u) in zip(a, b):
        assert t.dtype == u.dtype and t.shape == u.shape and t.stride() == u.stride(), f"{what}: {name} layout"
        # equal as bits: NaN payloads and -0.0 too
        ta, ua = t.detach().contiguous(), u.detach().contiguous()
        if ta.is_floating_point():
            view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[ta.element_size()]
            ta, ua = ta.view(view), ua.view(view)
        assert torch.equal(ta, ua), f"{what}: {name} differs"


@pytest.fixture
def cpu_backend():
    previous = fastconv.get_backend()
    fastconv.set_backend("cpu")
    yield
    fastconv.set_backend(previous)


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.fixture
def deterministic_mode():
    """Restores torch's determinism settings (and fill_uninitialized_memory) after the test."""
    import torch.utils.deterministic as tud

    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              tud.fill_uninitialized_memory)
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    tud.fill_uninitialized_memory = before[2]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_run_to_run_and_thread_count(cpu_backend, threads, dtype):
    threads(2)
    first = workload(dtype)
    again = workload(dtype)
    assert_bitwise(first, again, "run to run (2 threads)")
    threads(1)
    one = workload(dtype)
    assert_bitwise(first, one, "1 thread vs 2 threads")


def test_workload_matches_torch(cpu_backend):
    """The workload itself is right (so the bitwise checks compare correct results): float64 outputs
    and gradients vs the reference backend (torch)."""
    ours = workload(torch.float64)
    with fastconv.use_backend("reference"):
        ref = workload(torch.float64)
    for (name, a), (_, b) in zip(ours, ref):
        if a.dtype == torch.int64:
            assert torch.equal(a, b), name
        else:
            assert_rel(a, b, torch.float64, name)


def test_cpu_backend_under_use_deterministic_algorithms(cpu_backend, deterministic_mode):
    """No error, no warning, and the same bits as without determinism; torch fills uninitialized memory
    (NaN) in this mode, so an output element a kernel does not write would show."""
    plain = workload(torch.float32)
    torch.use_deterministic_algorithms(True)
    import torch.utils.deterministic as tud

    tud.fill_uninitialized_memory = True
    assert torch.empty(4).isnan().all()  # the mode is on: empty() is NaN-filled
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        det = workload(torch.float32)
    assert_bitwise(plain, det, "deterministic mode")
    for name, t in det:
        if t.is_floating_point():
            assert not t.isnan().any(), f"{name}: NaN (an element the kernel did not write)"


def test_cpu_backend_declares_no_nondeterministic_kernel():
    assert backends.registered()["cpu"].nondeterministic_ops() == frozenset()
    assert backends.Backend().nondeterministic_ops() == frozenset()


# ----------------------------------------------------------------------------------------------------
# A backend with nondeterministic kernels (a fake: torch's results, flagged nondeterministic).


class NondetBackend(ReferenceBackend):
    name = "test-nondeterministic"
    device_types = ("cpu",)
    kernels = frozenset({"conv2d_wgrad", "max_pool2d_bwd", "avg_pool2d_fwd"})

    def nondeterministic_ops(self):
        return self.kernels


@pytest.fixture
def nondet_backend():
    backends.register_backend(NondetBackend())
    try:
        with fastconv.use_backend(NondetBackend.name):
            yield
    finally:
        backends.unregister_backend(NondetBackend.name)
    assert NondetBackend.name not in backends.registered()


MESSAGE = (r"does not have a deterministic implementation, but you set "
           r"'torch\.use_deterministic_algorithms\(True\)'")


def _conv_step(op=FC.conv2d, params_grad=True):
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=params_grad)
    b = torch.randn(4, requires_grad=params_grad)
    y = op(x, w, b, padding=1)
    return y, (x, w, b)


def test_nondeterministic_kernel_raises(nondet_backend, deterministic_mode):
    torch.use_deterministic_algorithms(True)
    y, (x, w, b) = _conv_step(params_grad=False)  # forward and dgrad are deterministic: fine
    (gx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    y, (x, w, b) = _conv_step()
    with pytest.raises(RuntimeError, match=MESSAGE) as info:
        torch.autograd.grad(y, (x, w), torch.ones_like(y))  # needs wgrad
    assert "conv2d_wgrad" in str(info.value) and NondetBackend.name in str(info.value)
    with pytest.raises(RuntimeError, match=MESSAGE):
        y, (x, w, b) = _conv_step(FC.conv2d_relu)
        y.sum().backward()
    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    y = FC.max_pool2d(x, 2)  # forward fine
    with pytest.raises(RuntimeError, match=MESSAGE):
        y.sum().backward()
    with pytest.raises(RuntimeError, match=MESSAGE):
        FC.avg_pool2d(x, 2)
    with pytest.raises(RuntimeError, match=MESSAGE):
        fastconv.nn.AvgPool2d(2)(x)


def test_nondeterministic_kernel_warns_with_warn_only(nondet_backend, deterministic_mode):
    torch.use_deterministic_algorithms(True, warn_only=True)
    y, (x, w, b) = _conv_step()
    with pytest.warns(UserWarning, match=MESSAGE):
        gx, gw, gb = torch.autograd.grad(y, (x, w, b), torch.ones_like(y))
    # and the results are still right
    xr, wr, br = (t.detach().double().requires_grad_() for t in (x, w, b))
    yr = F.conv2d(xr, wr, br, padding=1)
    for ours, ref in zip((gx, gw, gb), torch.autograd.grad(yr, (xr, wr, br), torch.ones_like(yr))):
        assert_rel(ours, ref, torch.float32)
    xp = torch.randn(1, 2, 6, 6)
    with pytest.warns(UserWarning, match=MESSAGE):
        yp = FC.avg_pool2d(xp, 2)
    assert_rel(yp, F.avg_pool2d(xp.double(), 2), torch.float32)


def test_nondeterministic_kernel_runs_without_determinism(nondet_backend, deterministic_mode):
    torch.use_deterministic_algorithms(False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, (x, w, b) = _conv_step()
        y.sum().backward()
        FC.avg_pool2d(torch.randn(1, 2, 6, 6), 2)
    assert w.grad is not None


def test_deterministic_alternative_by_backend_choice(nondet_backend, deterministic_mode):
    """The way out the message names: the same call on the cpu backend runs under determinism."""
    torch.use_deterministic_algorithms(True)
    with fastconv.use_backend("cpu"):
        y, (x, w, b) = _conv_step()
        y.sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()


def test_unregister_backend():
    backends.register_backend(NondetBackend())
    previous = fastconv.get_backend()
    try:
        fastconv.set_backend(NondetBackend.name)
        with fastconv.use_backend(NondetBackend.name):
            assert backends.unregister_backend(NondetBackend.name).name == NondetBackend.name
            with pytest.raises(RuntimeError, match="no longer registered"):
                FC.conv2d(torch.randn(1, 1, 3, 3), torch.randn(1, 1, 1, 1))
        assert fastconv.get_backend() == "auto"  # the process-wide choice fell back
    finally:
        backends.registered().get(NondetBackend.name) and backends.unregister_backend(NondetBackend.name)
        fastconv.set_backend(previous)
    with pytest.raises(ValueError, match="unknown"):
        backends.unregister_backend(NondetBackend.name)
    with pytest.raises(ValueError):
        backends.unregister_backend("auto")
