"""Soak: thousands of forward/backward calls of mixed shapes leave memory, file descriptors and threads
where they were after warm-up.

Each step of the workload runs every public op once, forward and backward: functional conv2d and the
fused conv2d_relu (groups, stride, 'same' padding, channels_last, float32/float64/bfloat16), max_pool2d
with indices, avg_pool2d, the nn layers (incl. a reflect-padded Conv2d), calls that fail validation and a
call that fails inside the C++ module (exceptions must not leak either), on the cpu backend. Input sizes
change at every step (H, W cycle through co-prime periods), so a cache keyed by shape that grew without
bound would show as growth. Every few steps the test records, after gc.collect() and malloc_trim(0):
  - RSS (/proc/self/status VmRSS): growth after warm-up must stay under RSS_TOLERANCE_MIB,
  - Python objects tracked by the garbage collector, and live torch.Tensor objects (reference leaks),
    counted with fastconv's bounded caches emptied (see BOUNDED_CACHES),
  - open file descriptors (/proc/self/fd) and threads (threading.active_count(), /proc/self/task),
  - on a GPU, torch.cuda.memory_allocated() (that part is skipped without CUDA).
test_soak_harness_detects_a_leak checks that the harness does see a leak of one small tensor per step,
test_soak_harness_counts_objects_not_bounded_caches that it sees a leak of one small Python object per
step and not the bounded caches filling up.

Bounded caches. fastconv keeps per-geometry state by design: the cpu backend's forward, input-gradient
and weight-gradient plans (backends/cpu.py, _FWD_PLANS, _DGRAD_PLANS, _WGRAD_PLANS), its pooling descriptors (_POOL_DESCS) and the conv argument memo
(functional.py, _CONV_ARGS_MEMO), each emptied when it reaches its bound (1024 entries), and the
weight-pack cache (bounded in bytes, entries die with their weight). The workload's sizes never repeat within a run, so these fill at ~1.6 entries
a step; how full they are when the test starts depends on what ran before it in the process. So the
soak empties them before the baseline and before the final counts (the count is then independent of
what ran before), and runs with their bounds lowered to SOAK_CACHE_BOUND entries, so that during the
measured steps they fill and empty several times and every sample checks that they keep their bound: a
cache that stopped emptying itself would fail that check, an object that leaks the object count.

CI mode: a fixed number of steps (SOAK_STEPS: ~6000 op calls, a few seconds on an idle 2-core machine).
Long mode, for manual runs: set FASTCONV_SOAK_SECONDS to run the workload for that long, e.g.
    FASTCONV_SOAK_SECONDS=1800 python -m pytest tests/test_soak.py -q -s
(-s prints the RSS trace). FASTCONV_SOAK_THREADS sets torch's thread count for the run (default 2, so
the kernels' OpenMP regions run).
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import statistics
import threading
import time

import pytest
import torch

import fastconv
import fastconv.functional as FC
from fastconv.backends import cpu as cpu_backend

SOAK_STEPS = 300            # CI: steps after warm-up, each ~20 op calls (forward and backward): 6000 calls
WARMUP_STEPS = 40
SAMPLE_EVERY = 25
RSS_TOLERANCE_MIB = 8.0     # measured noise after warm-up: < 1 MiB; a 64 KiB-per-step leak is 19 MiB
OBJECT_TOLERANCE = 200      # gc-tracked Python objects (a few caches in torch/pytest settle late)
SOAK_CACHE_BOUND = 64       # entries: the bounded dict caches fill and empty every ~40 steps during a soak

# fastconv's caches that are bounded by design: (module, dict, its bound), as the code names them
BOUNDED_CACHES = [(cpu_backend, "_FWD_PLANS", "_FWD_PLANS_MAX"), (cpu_backend, "_DGRAD_PLANS", "_DGRAD_PLANS_MAX"),
                  (cpu_backend, "_WGRAD_PLANS", "_WGRAD_PLANS_MAX"), (FC, "_CONV_ARGS_MEMO", "_CONV_ARGS_MEMO_MAX"),
                  (cpu_backend, "_POOL_DESCS", "_POOL_DESCS_MAX")]

_LIBC = None
try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc: no malloc_trim, the RSS tolerance absorbs the free lists
    pass


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # peak, a weaker fallback


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def task_count() -> int:
    return len(os.listdir("/proc/self/task"))


def live_tensors() -> int:
    # issubclass(type(o)) rather than isinstance(o): no __class__ lookups on arbitrary objects (some warn)
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


def settle():
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def cache_sizes() -> dict:
    """Entries in each bounded dict cache, and the weight-pack cache's bytes, with their bounds."""
    sizes = {name: (len(getattr(mod, name)), getattr(mod, bound)) for mod, name, bound in BOUNDED_CACHES}
    sizes["weight_pack_cache"] = (cpu_backend.weight_pack_cache.info()["bytes"], cpu_backend.weight_pack_cache.max_bytes)
    return sizes


def empty_bounded_caches() -> None:
    for mod, name, _ in BOUNDED_CACHES:
        getattr(mod, name).clear()
    cpu_backend.weight_pack_cache.clear()


@contextlib.contextmanager
def small_cache_bounds(entries=SOAK_CACHE_BOUND):
    """The bounded dict caches bounded at `entries` meanwhile (their bounds are read at each insertion)."""
    saved = [(mod, bound, getattr(mod, bound)) for mod, _, bound in BOUNDED_CACHES]
    for mod, _, bound in BOUNDED_CACHES:
        setattr(mod, bound, entries)
    try:
        yield
    finally:
        for mod, bound, value in saved:
            setattr(mod, bound, value)


class Workload:
    """One step = every op, forward and backward, at sizes that depend on the step number."""

    def __init__(self, device="cpu"):
        self.device = device
        torch.manual_seed(0)
        self.layers = [
            fastconv.nn.Conv2d(8, 16, 3, padding=1, padding_mode="reflect"),
            fastconv.nn.Conv2dReLU(16, 16, 3, stride=2, padding=1, groups=4),
            fastconv.nn.MaxPool2d(3, 2, 1, ceil_mode=True),
            fastconv.nn.AvgPool2d(2, count_include_pad=False),
        ]
        for layer in self.layers:
            layer.to(device)
        self.w = torch.randn(12, 4, 3, 3, device=device, requires_grad=True)
        self.b = torch.randn(12, device=device, requires_grad=True)
        self.wd = torch.randn(8, 1, 5, 5, device=device, dtype=torch.float64, requires_grad=True)
        self.wbig = torch.randn(32, 16, 3, 3, device=device, requires_grad=True)

    def step(self, i: int) -> None:
        dev = self.device
        H, W = 9 + i % 23, 7 + i % 19  # co-prime periods: 437 distinct sizes before they repeat
        N = 1 + i % 3
        # conv, fused conv, groups, strides, channels_last
        x = torch.randn(N, 8, H, W, device=dev, requires_grad=True)
        xc = x.contiguous(memory_format=torch.channels_last) if i % 2 else x
        y = FC.conv2d(xc, self.w, self.b, stride=1 + i % 2, padding=1, groups=2)
        y2 = FC.conv2d_relu(xc, self.w, self.b, padding="same", groups=2)
        (y.sum() + y2.square().mean()).backward()
        # float64 depthwise, dilation
        xd = torch.randn(N, 8, H, W, device=dev, dtype=torch.float64, requires_grad=True)
        FC.conv2d(xd, self.wd, None, padding=2, dilation=(1, 2) if W > 8 else 1, groups=8).sum().backward()
        # bfloat16 (upcast path)
        xb = torch.randn(N, 8, H, W, device=dev, dtype=torch.bfloat16, requires_grad=True)
        FC.conv2d_relu(xb, self.w.detach().bfloat16(), None, padding=1, groups=2).float().sum().backward()
        # pools
        p, idx = FC.max_pool2d(x, 3, 2, 1, dilation=1 + i % 2, ceil_mode=True, return_indices=True)
        a = FC.avg_pool2d(xc, (2, 3), 1, (1, 1), ceil_mode=bool(i % 2), count_include_pad=False,
                          divisor_override=None if i % 3 else 5)
        (p.sum() + a.sum() + idx.sum() * 0).backward()
        with torch.no_grad():  # inference path (max_pool2d without indices)
            FC.max_pool2d(x, 2)
        if i % 5 == 0:  # over the cpu backend's serial thresholds: the kernels' OpenMP regions run
            xbig = torch.randn(2, 16, 32, 32, device=dev, requires_grad=True)
            ybig = FC.conv2d(xbig, self.wbig, padding=1)
            FC.max_pool2d(ybig, 2, return_indices=True)[0].sum().backward()
        # nn layers, chained
        z = x
        for layer in self.layers:
            z = layer(z)
        z.sum().backward()
        # error paths: validation, and an exception raised inside the C++ module
        for bad in (lambda: FC.conv2d(x, self.w, stride=0), lambda: FC.avg_pool2d(x, 2, padding=2),
                    lambda: FC.max_pool2d(x[:, :, :0], 2)):
            try:
                bad()
            except fastconv.ArgumentError:
                pass
            else:
                raise AssertionError("an invalid call did not raise")
        if dev == "cpu" and i % 4 == 0:
            C = fastconv.backends.cpu._C
            d = C.PoolDesc()  # all sizes 0: the module's own check rejects it
            try:
                C.avg_pool2d_fwd(d, 0, (0, [1, 1, 1, 1], [1, 1, 1, 1]), (0, [1, 1, 1, 1], [1, 1, 1, 1]), 1)
            except (ValueError, RuntimeError):
                pass
            else:
                raise AssertionError("fastconv._C accepted an inconsistent PoolDesc")
        for t in (x, xd, xb, self.w, self.b, self.wd, self.wbig,
                  *[q for layer in self.layers for q in layer.parameters()]):
            t.grad = None


def soak(step_fn, steps=None, seconds=None, warmup=WARMUP_STEPS, every=SAMPLE_EVERY, cuda=False, verbose=False):
    """Runs step_fn(i) for warm-up, then for `steps` steps (or `seconds`), sampling resources; the
    bounded caches run with small bounds meanwhile (module docstring)."""
    with small_cache_bounds():
        torch.ones(1 << 22).sum()  # torch's own thread pool starts now, not at a later, larger step
        empty_bounded_caches()
        for i in range(warmup):
            step_fn(i)
        # what the bounded caches hold depends on the calls made before, in this test and in earlier ones
        empty_bounded_caches()
        settle()
        # RSS first: listing the gc's objects allocates memory that is freed but not trimmed (20 MiB once
        # the torchvision zoo tests have run: the harness test then saw RSS fall while leaking)
        base = dict(rss=rss_mib(), objects=len(gc.get_objects()), tensors=live_tensors(), fds=fd_count(),
                    tasks=task_count(), threads=threading.active_count(),
                    cuda=torch.cuda.memory_allocated() if cuda else 0)
        samples = []
        start, i = time.monotonic(), warmup
        while True:
            step_fn(i)
            i += 1
            done = (i - warmup >= steps) if seconds is None else (time.monotonic() - start >= seconds)
            if (i - warmup) % every == 0 or done:
                settle()
                samples.append(dict(step=i, rss=rss_mib(), fds=fd_count(), tasks=task_count(),
                                    threads=threading.active_count(), caches=cache_sizes(),
                                    cuda=torch.cuda.memory_allocated() if cuda else 0))
                if verbose:
                    print(f"step {i}: RSS {samples[-1]['rss']:.1f} MiB (base {base['rss']:.1f}), "
                          f"fds {samples[-1]['fds']}, tasks {samples[-1]['tasks']}")
            if done:
                break
        empty_bounded_caches()
        settle()
        end = dict(objects=len(gc.get_objects()), tensors=live_tensors())
    return base, samples, end


def check_stable(base, samples, end):
    tail = samples[-3:]
    growth = statistics.median(s["rss"] for s in tail) - base["rss"]
    trace = ", ".join(f"{s['rss'] - base['rss']:+.1f}" for s in samples)
    assert growth < RSS_TOLERANCE_MIB, (
        f"RSS grew by {growth:.1f} MiB after warm-up (tolerance {RSS_TOLERANCE_MIB} MiB); trace (MiB vs "
        f"baseline {base['rss']:.0f} MiB): {trace}")
    assert end["tensors"] <= base["tensors"], f"live tensors: {base['tensors']} after warm-up, {end['tensors']} at the end"
    assert end["objects"] - base["objects"] < OBJECT_TOLERANCE, (
        f"gc-tracked objects grew from {base['objects']} to {end['objects']}")
    for s in samples:
        for name, (size, bound) in s["caches"].items():
            assert size <= bound, f"{name} holds {size} (entries or bytes) at step {s['step']}, over its bound {bound}"
        assert s["fds"] <= base["fds"], f"file descriptors: {base['fds']} after warm-up, {s['fds']} at step {s['step']}"
        assert s["threads"] <= base["threads"], f"Python threads: {base['threads']} -> {s['threads']}"
        assert s["tasks"] <= base["tasks"], f"OS threads: {base['tasks']} after warm-up, {s['tasks']} at step {s['step']}"
        assert s["cuda"] <= base["cuda"], f"CUDA memory allocated: {base['cuda']} -> {s['cuda']} bytes"


@pytest.fixture
def soak_env():
    previous_backend, previous_threads = fastconv.get_backend(), torch.get_num_threads()
    fastconv.set_backend("cpu")
    torch.set_num_threads(int(os.environ.get("FASTCONV_SOAK_THREADS", "2")))
    yield
    torch.set_num_threads(previous_threads)
    fastconv.set_backend(previous_backend)


def _duration():
    s = os.environ.get("FASTCONV_SOAK_SECONDS", "").strip()
    return float(s) if s else None


@pytest.mark.slow
def test_soak_cpu(soak_env, capsys):
    work = Workload("cpu")
    seconds = _duration()
    with capsys.disabled() if seconds else contextlib.nullcontext():
        base, samples, end = soak(work.step, steps=SOAK_STEPS, seconds=seconds, verbose=bool(seconds))
    check_stable(base, samples, end)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the CUDA memory part needs a GPU")
def test_soak_cuda():
    work = Workload("cuda")
    seconds = _duration()
    base, samples, end = soak(lambda i: (work.step(i), torch.cuda.synchronize()), steps=SOAK_STEPS // 2,
                              seconds=seconds, cuda=True, verbose=bool(seconds))
    check_stable(base, samples, end)


@pytest.mark.slow  # 3-5 s alone, 10-15 s in the full suite (the gc's walks over a larger heap)
def test_soak_harness_detects_a_leak(soak_env):
    """The measurements can fail: leaking a 64 KiB tensor per step (a gradient kept by mistake) over the
    CI step count is caught, by the tensor count and by RSS."""
    kept = []

    def leaky(i):
        x = torch.randn(2, 8, 32, 32, requires_grad=True)  # 64 KiB
        y = FC.avg_pool2d(x, 2)
        y.sum().backward()
        kept.append(x.grad)  # the leak

    base, samples, end = soak(leaky, steps=SOAK_STEPS)
    with pytest.raises(AssertionError, match="RSS grew|live tensors"):
        check_stable(base, samples, end)
    growth = samples[-1]["rss"] - base["rss"]
    assert growth > 0.5 * SOAK_STEPS * 64 / 1024, f"RSS grew only {growth:.1f} MiB with a 64 KiB/step leak"
    kept.clear()


@pytest.mark.slow
def test_soak_harness_counts_objects_not_bounded_caches(soak_env):
    """A conv at a new geometry every step fills the bounded caches (a plan and a memo entry per step,
    several gc-tracked objects each: over the run, several times the object tolerance); that alone
    passes. Keeping one small Python object per step as well (a list that grows) is caught by the
    object count."""
    kept = []

    def step(i, leak):
        x = torch.randn(1, 2, 5 + i % 97, 4 + i // 97, requires_grad=True)  # a new geometry every step
        FC.conv2d(x, torch.ones(3, 2, 3, 3)).sum().backward()
        if leak:
            kept.append([i])  # a list: tracked by the gc (a dict of ints or a bare int would not be)

    bounds = [getattr(mod, bound) for mod, _, bound in BOUNDED_CACHES]
    check_stable(*soak(lambda i: step(i, False), steps=SOAK_STEPS, every=100))
    assert [getattr(mod, bound) for mod, _, bound in BOUNDED_CACHES] == bounds, "cache bounds not restored"
    base, samples, end = soak(lambda i: step(i, True), steps=SOAK_STEPS, every=100)
    with pytest.raises(AssertionError, match="gc-tracked objects grew"):
        check_stable(base, samples, end)
    kept.clear()
