"""The 'cuda' backend (fastconv._C_cuda) on a GPU: the conv and pool grids of test_conv2d.py and
test_pool2d.py on CUDA tensors in every dtype, and compute-sanitizer memcheck/racecheck on a small grid.

Skipped without a GPU (this is what a lent GPU runs; CI runs the same kernels on the SIMT emulator in
tests/test_emu_*.py). The bound: our relative error against torch's float64 result (computed on the
CPU from the same values) must be at most ERR_FACTOR times cuDNN's own error for the same call in
the same dtype, or the dtype's floor (REL_TOL) when cuDNN happens to be exact. TF32 is off for the
fp32 comparison: the SIMT kernels compute in true fp32, and so does cuDNN then.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FC
from helpers import (AVG_POOL_CASES, CONV_FP32_CASES, MAX_POOL_CASES, REL_TOL, avg_pool_args, case_id, make_conv_case,
                     make_grad, make_pool_input, max_pool_args, rel_err, torch_conv_op)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available() or not fastconv.backends.registered()["cuda"].availability()[0],
    reason="needs a CUDA GPU and fastconv._C_cuda (" + fastconv.backends.registered()["cuda"].availability()[1] + ")",
)]

ERR_FACTOR = 4.0
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


@pytest.fixture(autouse=True)
def _cuda_backend():
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    with fastconv.use_backend("cuda"):
        yield
    torch.backends.cudnn.allow_tf32 = tf32


def to_cuda_like(t: torch.Tensor) -> torch.Tensor:
    """The same values on the GPU with the same strides (a view of a fresh buffer for strided cases)."""
    out = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cuda") if _dense(t) else None
    if out is None:
        return t.detach().cuda().requires_grad_(t.requires_grad)
    out.copy_(t.detach())
    return out.requires_grad_(t.requires_grad)


def _dense(t: torch.Tensor) -> bool:
    return t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t.is_contiguous()


def bound(ours_err: float, cudnn_err: float, dtype: torch.dtype, what: str):
    limit = max(ERR_FACTOR * cudnn_err, REL_TOL[dtype])
    assert ours_err <= limit, f"{what}: relative error {ours_err:.3e} > {limit:.3e} (cuDNN's {cudnn_err:.3e}, {dtype})"


def check_conv(case, dtype):
    x, w, b, kwargs = make_conv_case(case, dtype)
    inputs = [x, w] + ([b] if b is not None else [])
    cuda_inputs = [to_cuda_like(t.detach()).requires_grad_() for t in inputs]
    torch_fn = torch_conv_op(case["op"])
    y = getattr(FC, case["op"])(*cuda_inputs[:2], cuda_inputs[2] if b is not None else None, **kwargs)
    g = make_grad(y.shape, case["grad"], dtype).cuda()
    grads = torch.autograd.grad(y, cuda_inputs, g)
    cudnn_inputs = [t.detach().clone().requires_grad_() for t in cuda_inputs]
    y_cudnn = torch_fn(*cudnn_inputs[:2], cudnn_inputs[2] if b is not None else None, **kwargs)
    grads_cudnn = torch.autograd.grad(y_cudnn, cudnn_inputs, g)
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    y_ref = torch_fn(*ref_inputs[:2], ref_inputs[2] if b is not None else None, **kwargs)
    grads_ref = torch.autograd.grad(y_ref, ref_inputs, g.cpu().double())
    bound(rel_err(y.cpu(), y_ref), rel_err(y_cudnn.cpu(), y_ref), dtype, "output")
    for name, ours, theirs, ref in zip(("grad_input", "grad_weight", "grad_bias"), grads, grads_cudnn, grads_ref):
        bound(rel_err(ours.cpu(), ref), rel_err(theirs.cpu(), ref), dtype, name)


# Under compute-sanitizer (10-100x slower) a small slice of the grids runs.
UNDER_SANITIZER = bool(os.environ.get("FASTCONV_UNDER_SANITIZER"))

CONV_CASES = [(c, torch.float32) for c in CONV_FP32_CASES[:120]] + [
    (c, dt) for dt in (torch.float16, torch.bfloat16, torch.float64) for c in CONV_FP32_CASES[120:170]]
if UNDER_SANITIZER:
    CONV_CASES = CONV_CASES[:10] + CONV_CASES[120:122] + CONV_CASES[170:172]


@pytest.mark.parametrize("case,dtype", CONV_CASES, ids=[f"{case_id(c)}-{str(d)[6:]}" for c, d in CONV_CASES])
def test_conv2d_cuda(case, dtype):
    check_conv(case, dtype)


POOL_CASES = ([("max", c, d) for d in DTYPES for c in MAX_POOL_CASES[:40]]
              + [("avg", c, d) for d in DTYPES for c in AVG_POOL_CASES[:40]])
if UNDER_SANITIZER:
    POOL_CASES = POOL_CASES[:6] + POOL_CASES[-6:]


@pytest.mark.parametrize("kind,case,dtype", POOL_CASES,
                         ids=[f"{k}-{case_id(c)}-{str(d)[6:]}" for k, c, d in POOL_CASES])
def test_pool2d_cuda(kind, case, dtype):
    x_cpu = make_pool_input(case, dtype)
    x = to_cuda_like(x_cpu.detach()).requires_grad_()
    if kind == "max":
        kwargs = max_pool_args(case)
        y, idx = FC.max_pool2d(x, **kwargs, return_indices=True)
        y_t, idx_t = F.max_pool2d(x.detach(), **kwargs, return_indices=True)
        assert torch.equal(idx, idx_t), "indices differ from cuDNN/torch's"
        torch.testing.assert_close(y, y_t, rtol=0, atol=0, equal_nan=True)
        fn = lambda t: F.max_pool2d(t, **kwargs)  # noqa: E731
    else:
        kwargs = avg_pool_args(case)
        y = FC.avg_pool2d(x, **kwargs)
        fn = lambda t: F.avg_pool2d(t, **kwargs)  # noqa: E731
    g = make_grad(y.shape, "contiguous", dtype).cuda()
    (gx,) = torch.autograd.grad(y, [x], g)
    xt = x.detach().clone().requires_grad_()
    y_t = fn(xt)
    (gx_t,) = torch.autograd.grad(y_t, [xt], g)
    xr = x_cpu.detach().double().requires_grad_()
    y_ref = fn(xr)
    (gx_ref,) = torch.autograd.grad(y_ref, [xr], g.cpu().double())
    bound(rel_err(y.cpu(), y_ref), rel_err(y_t.cpu(), y_ref), dtype, "output")
    bound(rel_err(gx.cpu(), gx_ref), rel_err(gx_t.cpu(), gx_ref), dtype, "grad_input")


def test_runs_on_the_current_stream():
    x = torch.randn(2, 8, 16, 16, device="cuda")
    w = torch.randn(16, 8, 3, 3, device="cuda")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        y = FC.conv2d(x, w, padding=1)
    s.synchronize()
    torch.testing.assert_close(y, F.conv2d(x, w, padding=1), rtol=1e-4, atol=1e-4)


def test_deterministic_run_to_run():
    x = torch.randn(4, 16, 20, 20, device="cuda", requires_grad=True)
    w = torch.randn(32, 16, 3, 3, device="cuda", requires_grad=True)
    b = torch.randn(32, device="cuda", requires_grad=True)
    results = []
    for _ in range(3):
        y = FC.conv2d_relu(x, w, b, padding=1)
        grads = torch.autograd.grad(y.square().sum(), [x, w, b])
        results.append([y] + list(grads))
    for other in results[1:]:
        for a, b_ in zip(results[0], other):
            assert torch.equal(a, b_)


@pytest.mark.skipif(shutil.which("compute-sanitizer") is None, reason="compute-sanitizer not on the PATH")
@pytest.mark.parametrize("tool", ["memcheck", "racecheck", "initcheck"])
def test_compute_sanitizer(tool):
    """A small slice of this file under compute-sanitizer: no memory error, race or uninitialized read."""
    if UNDER_SANITIZER:
        pytest.skip("already running under compute-sanitizer")
    cmd = ["compute-sanitizer", "--tool", tool, "--error-exitcode", "99", sys.executable, "-m", "pytest", "-q",
           "-p", "no:cacheprovider", __file__, "-k", "not test_compute_sanitizer", "-x"]
    env = dict(os.environ, FASTCONV_UNDER_SANITIZER="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 0, f"compute-sanitizer --tool {tool} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"


def test_nvrtc_path_with_cupy(monkeypatch):
    """The CuPy/NVRTC path (used when _C_cuda is not built), forced on: kernels compiled from kernels/
    at run time, launched on torch's memory and stream, same results as torch."""
    pytest.importorskip("cupy", reason="the NVRTC path needs CuPy")
    monkeypatch.setenv("FASTCONV_CUDA_JIT", "1")
    ok, why = fastconv.backends.registered()["cuda"].availability()
    assert ok, why
    x = torch.randn(2, 6, 13, 11, device="cuda", requires_grad=True)
    w = torch.randn(8, 3, 3, 3, device="cuda", requires_grad=True)
    b = torch.randn(8, device="cuda", requires_grad=True)
    y = FC.conv2d_relu(x, w, b, padding=1, groups=2)
    grads = torch.autograd.grad(y.square().sum(), [x, w, b])
    xt, wt, bt = (t.detach().clone().requires_grad_() for t in (x, w, b))
    yt = torch.relu(F.conv2d(xt, wt, bt, padding=1, groups=2))
    grads_t = torch.autograd.grad(yt.square().sum(), [xt, wt, bt])
    torch.testing.assert_close(y, yt, rtol=1e-4, atol=1e-4)
    for g, gt in zip(grads, grads_t):
        torch.testing.assert_close(g, gt, rtol=1e-3, atol=1e-3)
    xc = x.detach().to(memory_format=torch.channels_last)
    torch.testing.assert_close(FC.max_pool2d(xc, 3, 2, 1), F.max_pool2d(xc, 3, 2, 1))
    torch.testing.assert_close(FC.avg_pool2d(xc, 2), F.avg_pool2d(xc, 2))


def test_concurrent_threads_on_their_own_streams():
    """Several Python threads, each on its own CUDA stream, run conv and pool forward+backward at once:
    every result equals the one computed alone (the kernels keep no global state; launches go to the
    caller's current stream)."""
    import concurrent.futures

    def job(seed):
        g = torch.Generator(device="cuda").manual_seed(seed)
        x = torch.randn(2, 16, 24, 24, device="cuda", generator=g).requires_grad_()
        w = torch.randn(32, 16, 3, 3, device="cuda", generator=g).requires_grad_()
        y = FC.max_pool2d(FC.conv2d_relu(x, w, padding=1), 2)
        return [y.detach()] + list(torch.autograd.grad(y.square().sum(), [x, w]))

    alone = [job(s) for s in range(6)]
    torch.cuda.synchronize()

    def on_stream(seed):
        with fastconv.use_backend("cuda"):   # the backend choice is per thread
            stream = torch.cuda.Stream()
            with torch.cuda.stream(stream):
                out = job(seed)
            stream.synchronize()
            return out

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        together = list(pool.map(on_stream, range(6)))
    for a, b in zip(alone, together):
        for ta, tb in zip(a, b):
            assert torch.equal(ta, tb)
