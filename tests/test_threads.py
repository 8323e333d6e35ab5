"""Thread safety: ops called concurrently from several Python threads give the results they give when
called one at a time, bitwise, on each thread's own backend; the backend choice stays thread-local.

The C++ kernels release the GIL, so calls from different threads really overlap (each opening its own
OpenMP team: torch's thread count is 2 here). Jobs mix every op (conv2d, conv2d_relu, max_pool2d with
indices, avg_pool2d, nn layers), forward and backward, shapes, dtypes and layouts, and each runs under
`fastconv.use_backend(...)` of its own ('cpu' or 'reference'); the cpu backend is deterministic
(test_deterministic.py) and so is torch's CPU code for these shapes, so every concurrent result must
equal the serial one bit for bit. The module-level mutable state of fastconv (the backend registry, the
process-wide backend choice, the profiling switch) is changed by another thread while the jobs run.
The cpu backend's weight-pack cache (fastconv/backends/cpu.py, WeightPackCache) is shared by all
threads: the "conv-shared-weight" job makes every thread use the same weight tensor (concurrent lookups
and stores of one entry), "conv-updated-weight" updates its weight in place between two calls (the
version check must drop the pack while other threads use the cache).
"""
from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import fastconv
import fastconv.functional as FC
from fastconv import backends, profiling
from fastconv.backends.reference import ReferenceBackend


def _r(gen, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=gen, dtype=dtype)


def _conv_job(xs, ws, kw, relu=False, cl=False, dtype=torch.float32):
    def run(gen):
        x, w, b = _r(gen, *xs, dtype=dtype), _r(gen, *ws, dtype=dtype), _r(gen, ws[0], dtype=dtype)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        for t in (x, w, b):
            t.requires_grad_()
        y = (FC.conv2d_relu if relu else FC.conv2d)(x, w, b, **kw)
        return [y, *torch.autograd.grad(y, (x, w, b), _r(gen, *y.shape, dtype=dtype))]
    return run


def _max_job(xs, kw, cl=False, dtype=torch.float32):
    def run(gen):
        x = _r(gen, *xs, dtype=dtype)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        y, idx = FC.max_pool2d(x, **kw, return_indices=True)
        return [y, idx, *torch.autograd.grad(y, x, _r(gen, *y.shape, dtype=dtype))]
    return run


def _avg_job(xs, kw, cl=False, dtype=torch.float32):
    def run(gen):
        x = _r(gen, *xs, dtype=dtype)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        y = FC.avg_pool2d(x, **kw)
        return [y, *torch.autograd.grad(y, x, _r(gen, *y.shape, dtype=dtype))]
    return run


def _nn_job(gen):
    layers = [fastconv.nn.Conv2dReLU(6, 8, 3, padding=1), fastconv.nn.MaxPool2d(2),
              fastconv.nn.Conv2d(8, 8, 3, padding="same", groups=2, padding_mode="circular"),
              fastconv.nn.AvgPool2d(3, 1, 1, count_include_pad=False)]
    with torch.no_grad():  # parameters from the job's generator (torch.manual_seed is process-wide)
        for layer in layers:
            for p in layer.parameters():
                p.copy_(_r(gen, *p.shape))
    x = _r(gen, 3, 6, 20, 17).requires_grad_()
    y = x
    for layer in layers:
        y = layer(y)
    params = [p for layer in layers for p in layer.parameters()]
    return [y, *torch.autograd.grad(y, [x, *params], _r(gen, *y.shape))]


# One weight (and bias) tensor used by every thread's "conv-shared-weight" job: the Winograd path's
# pack of it is cached once and then read concurrently.
SHARED_WEIGHT = torch.randn(24, 16, 3, 3, generator=torch.Generator().manual_seed(1234)).requires_grad_()


def _shared_weight_job(gen):
    x = _r(gen, 2, 16, 24, 24).requires_grad_()
    y = FC.conv2d(x, SHARED_WEIGHT, padding=1)
    return [y, *torch.autograd.grad(y, (x, SHARED_WEIGHT), _r(gen, *y.shape))]


def _updated_weight_job(gen):
    x, w = _r(gen, 2, 16, 20, 20), _r(gen, 16, 16, 3, 3)
    y1 = FC.conv2d_relu(x, w, padding=1)
    with torch.no_grad():
        w.mul_(-0.5)  # in place: bumps w._version, so the cached pack must not be used
    return [y1, FC.conv2d_relu(x, w, padding=1)]


# (name, run) — sizes from tiny to above the cpu backend's serial thresholds (so some calls open
# OpenMP teams while other threads' calls run).
JOBS = [
    ("conv-3x3", _conv_job((2, 8, 20, 20), (16, 8, 3, 3), dict(padding=1))),
    ("conv-big", _conv_job((2, 16, 32, 32), (32, 16, 3, 3), dict(padding=1))),
    ("conv-relu-cl-strided", _conv_job((2, 8, 17, 15), (12, 4, 3, 2), dict(stride=2, padding=(1, 0), groups=2),
                                       relu=True, cl=True)),
    ("conv-depthwise-f64", _conv_job((1, 6, 13, 11), (6, 1, 5, 5), dict(padding="same", groups=6),
                                     dtype=torch.float64)),
    ("conv-dilated-bf16", _conv_job((2, 4, 12, 12), (4, 4, 3, 3), dict(dilation=2, padding=2), relu=True,
                                    dtype=torch.bfloat16)),
    ("max-ceil", _max_job((2, 16, 48, 48), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True))),
    ("max-cl-dilated", _max_job((2, 9, 15, 14), dict(kernel_size=2, stride=1, dilation=2), cl=True)),
    ("avg-divisor", _avg_job((2, 16, 48, 48), dict(kernel_size=(3, 2), stride=(2, 1), padding=1,
                                                   divisor_override=4))),
    ("avg-cl-f64", _avg_job((1, 5, 11, 9), dict(kernel_size=3, padding=1, count_include_pad=False), cl=True,
                            dtype=torch.float64)),
    ("nn-stack", _nn_job),
    ("conv-shared-weight", _shared_weight_job),
    ("conv-updated-weight", _updated_weight_job),
]
BACKENDS = ["cpu", "reference"]
SEED = {name: i for i, (name, _) in enumerate(JOBS)}


def run_job(name, fn, backend, seed, check_choice=True):
    with fastconv.use_backend(backend):
        if check_choice:
            assert fastconv.get_backend() == backend
            assert backends.resolve(torch.device("cpu")).name == backend
        out = [t.detach() for t in fn(torch.Generator().manual_seed(seed))]
        if check_choice:  # still ours after the calls (another thread's choice never leaks in)
            assert fastconv.get_backend() == backend
    return out


def assert_bitwise(got, want, what):
    assert len(got) == len(want), what
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride(), f"{what}: tensor {i} layout"
        assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                     and torch.equal(a.nan_to_num(), b.nan_to_num())), f"{what}: tensor {i} differs"


@pytest.fixture
def two_omp_threads():
    before, choice = torch.get_num_threads(), fastconv.get_backend()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)
    fastconv.set_backend(choice)


@pytest.fixture(scope="module")
def serial_results():
    """Every (job, backend) run alone, one at a time: the expected results."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        return {(name, b): run_job(name, fn, b, seed=SEED[name]) for name, fn in JOBS for b in BACKENDS}
    finally:
        torch.set_num_threads(before)


def test_backends_differ_in_bits(serial_results):
    """The bitwise checks below can tell which backend ran a job: cpu and reference (torch) results
    differ in the last bits for most jobs (while agreeing to rounding: the absolute tolerance scales with
    the tensor's largest value, since 3x3 float32 layers run through Winograd, whose error is a few
    1e-6 of the largest values rather than of each element)."""
    differ = 0
    for name, _ in JOBS:
        cpu, ref = serial_results[(name, "cpu")], serial_results[(name, "reference")]
        differ += any(not torch.equal(a, b) for a, b in zip(cpu, ref))
        for a, b in zip(cpu, ref):
            if a.is_floating_point():
                tol = 2e-2 if a.dtype == torch.bfloat16 else 1e-4
                scale = max(1.0, b.abs().max().item()) if b.numel() else 1.0
                assert torch.allclose(a.double(), b.double(), rtol=tol, atol=tol * scale), name
            else:
                assert torch.equal(a, b), name
    assert differ >= len(JOBS) // 2


def test_concurrent_calls_equal_serial(two_omp_threads, serial_results):
    """A pool of 6 threads runs every (job, backend) 3 times in a shuffled order."""
    tasks = [(name, fn, b) for name, fn in JOBS for b in BACKENDS] * 3
    random.Random(0).shuffle(tasks)
    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [(name, b, pool.submit(run_job, name, fn, b, SEED[name])) for name, fn, b in tasks]
        for name, b, fut in futures:
            assert_bitwise(fut.result(timeout=300), serial_results[(name, b)], f"{name} on {b}")


def test_concurrent_with_global_state_changes(two_omp_threads, serial_results):
    """Threads started together (barrier) each loop over the jobs on their own backend while another
    thread flips the process-wide backend choice, toggles profiling and registers / unregisters a
    backend: no job sees any of it."""
    n_threads, rounds = 4, 2
    barrier = threading.Barrier(n_threads + 1)
    stop = threading.Event()
    errors = []

    class Extra(ReferenceBackend):
        name = "test-threads-extra"

    def worker(k):
        try:
            barrier.wait(30)
            backend = BACKENDS[k % 2]
            order = list(JOBS)
            random.Random(k).shuffle(order)
            for _ in range(rounds):
                for name, fn in order:
                    got = run_job(name, fn, backend, SEED[name])
                    assert_bitwise(got, serial_results[(name, backend)], f"thread {k}: {name} on {backend}")
        except BaseException as exc:  # noqa: BLE001  (reported by the main thread)
            errors.append(exc)

    def meddler():
        barrier.wait(30)
        i = 0
        while not stop.is_set():
            fastconv.set_backend(BACKENDS[i % 2])
            profiling.enable(i % 3 == 0)
            if i % 2 == 0:
                backends.register_backend(Extra())
            else:
                backends.unregister_backend(Extra.name)
            i += 1
            stop.wait(0.001)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    chaos = threading.Thread(target=meddler)
    for t in threads + [chaos]:
        t.start()
    try:
        for t in threads:
            t.join(300)
            assert not t.is_alive(), "a worker thread hung"
    finally:
        stop.set()
        chaos.join(30)
        profiling.enable(False)
        if Extra.name in backends.registered():
            backends.unregister_backend(Extra.name)
    if errors:
        raise errors[0]


def test_choice_is_thread_local_in_a_pool(two_omp_threads):
    """Pool threads are reused: a job's use_backend() must not stay behind in its worker thread, also
    when the job raised; a thread without a choice of its own sees the process-wide one."""
    fastconv.set_backend("cpu")

    def with_choice(name, fail):
        with fastconv.use_backend(name):
            if fail:
                FC.conv2d(torch.randn(1, 2, 4, 4), torch.randn(3, 2, 3, 3), stride=0)  # raises
            return fastconv.get_backend()

    def without_choice():
        return fastconv.get_backend(), backends.resolve(torch.device("cpu")).name

    with ThreadPoolExecutor(max_workers=2) as pool:
        for i in range(20):
            fut = pool.submit(with_choice, "reference", i % 2 == 1)
            if i % 2:
                with pytest.raises(fastconv.ArgumentError):
                    fut.result(30)
            else:
                assert fut.result(30) == "reference"
            assert pool.submit(without_choice).result(30) == ("cpu", "cpu")
        fastconv.set_backend("reference")
        assert pool.submit(without_choice).result(30) == ("reference", "reference")
    assert fastconv.get_backend() == "reference"  # the main thread: process-wide choice, no context


@pytest.mark.parametrize("x_shape, w_shape, out_hw, threads", [
    ((32, 6, 4, 4), (16, 6, 5, 5), (4, 4), 1),        # LeNet's second convolution on 8x8 digits: 1.2M multiply-adds
    ((4, 128, 32, 32), (128, 1, 3, 3), (32, 32), 2),  # depthwise: 4.7M multiply-adds but 1M elements moved
    ((1, 64, 56, 56), (64, 64, 3, 3), (56, 56), 2),   # 116M multiply-adds
    ((1, 8, 16, 16), (8, 1, 3, 3), (16, 16), 1),      # a small depthwise layer
])
def test_conv_thread_count_counts_elements_moved(two_omp_threads, x_shape, w_shape, out_hw, threads):
    """The cpu backend runs a convolution on one thread below _CONV_SERIAL_MACS of work, counting the
    elements it reads and writes as well as its multiply-adds, so a depthwise layer of a few images gets
    both cores although it has few multiply-adds."""
    from fastconv.backends import cpu as cpu_backend
    assert cpu_backend._conv_threads(torch.empty(x_shape), torch.empty(w_shape), out_hw) == threads
