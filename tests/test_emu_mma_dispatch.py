"""The conv launchers' choice between the tensor-core kernels (kernels/conv2d_tc.cuh) and the SIMT
kernels, through the public API on the emulator: eligible calls (fp16/bf16, or fp32 with
torch.backends.cudnn.allow_tf32, channels_last activations with aligned channel counts) run the
tensor-core kernels, the rest the SIMT ones, and both give torch's results. Which kernels ran is read
from the launch recorder (kernel symbols), so a silent fallback would fail these tests."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FC
from helpers import REL_TOL, rel_err
from fastconv.backends import cuda as cuda_backend

emu = pytest.importorskip("fastconv._C_emu")
pytestmark = pytest.mark.emu


def kernels_used(fn):
    emu.start_recording()
    try:
        fn()
    finally:
        launches = emu.stop_recording()
    return [launch["signature"] for launch in launches]


def is_tc(signature: str) -> bool:
    return "_tc" in signature.split("(")[0]


def make(dtype, C=16, K=24, channels_last=True, N=2, H=9, W=7):
    x = torch.randn(N, C, H, W, dtype=torch.float64).to(dtype)
    w = torch.randn(K, C, 3, 3, dtype=torch.float64).to(dtype)
    b = torch.randn(K, dtype=torch.float64).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
        w = w.to(memory_format=torch.channels_last)
    return x, w, b


@pytest.fixture(autouse=True)
def _emulated(monkeypatch):
    monkeypatch.setattr(cuda_backend, "TENSOR_CORES", True)
    with fastconv.use_backend("cuda_emu"):
        yield


@pytest.mark.parametrize("dtype,tf32,expect_tc", [
    (torch.float16, False, True), (torch.bfloat16, False, True),
    (torch.float32, True, True), (torch.float32, False, False), (torch.float64, True, False),
])
def test_forward_dispatch_and_result(monkeypatch, dtype, tf32, expect_tc):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)
    x, w, b = make(dtype)
    used = kernels_used(lambda: cuda_backend.EmulatedCudaBackend().conv2d_fwd(x, w, b, (1, 1), (1, 1), (1, 1), 1, True))
    assert used and all(is_tc(s) == expect_tc for s in used), used
    y = FC.conv2d_relu(x, w, b, padding=1)
    ref = torch.relu(F.conv2d(x.double(), w.double(), b.double(), padding=1))
    # TF32 keeps 10 mantissa bits: a float16-sized error bound.
    tol = REL_TOL[torch.float16] if (dtype == torch.float32 and tf32) else REL_TOL[dtype]
    assert rel_err(y, ref) <= tol


@pytest.mark.parametrize("reason,kwargs", [
    ("NCHW activations", dict(channels_last=False)),
    ("C not a multiple of 8", dict(C=12)),
])
def test_ineligible_calls_run_simt(reason, kwargs):
    x, w, b = make(torch.float16, **kwargs)
    used = kernels_used(lambda: cuda_backend.EmulatedCudaBackend().conv2d_fwd(x, w, b, (1, 1), (1, 1), (1, 1), 1, False))
    assert used and not any(is_tc(s) for s in used), (reason, used)
    y = FC.conv2d(x, w, b, padding=1)
    assert rel_err(y, F.conv2d(x.double(), w.double(), b.double(), padding=1)) <= REL_TOL[torch.float16]


def test_backward_uses_tensor_cores_and_matches_torch():
    x, w, b = make(torch.float16, C=16, K=16)
    x.requires_grad_(); w.requires_grad_(); b.requires_grad_()
    y = FC.conv2d(x, w, b, padding=1)
    g = torch.randn_like(y, dtype=torch.float64).to(torch.float16).contiguous(memory_format=torch.channels_last)
    be = cuda_backend.EmulatedCudaBackend()
    used = kernels_used(lambda: be.conv2d_dgrad(g, x.detach(), w.detach(), None, (1, 1), (1, 1), (1, 1), 1))
    assert used and all(is_tc(s) for s in used), used
    used = kernels_used(lambda: be.conv2d_wgrad(g, x.detach(), w.detach(), None, (1, 1), (1, 1), (1, 1), 1, True, False))
    assert used and all(is_tc(s) for s in used), used
    grads = torch.autograd.grad(y, [x, w, b], g)
    refs = [t.detach().double().requires_grad_() for t in (x, w, b)]
    ref_grads = torch.autograd.grad(F.conv2d(*refs, padding=1), refs, g.double())
    for name, got, ref in zip(("grad_input", "grad_weight", "grad_bias"), grads, ref_grads):
        assert rel_err(got, ref) <= REL_TOL[torch.float16], name


def test_fused_relu_backward_falls_back_to_simt_and_is_right():
    """The tensor-core backward does not apply the ReLU mask: the fused op's backward runs SIMT."""
    x, w, b = make(torch.float16, C=16, K=16)
    x.requires_grad_(); w.requires_grad_()
    y = FC.conv2d_relu(x, w, b, padding=1)
    g = torch.randn_like(y, dtype=torch.float64).to(torch.float16)
    be = cuda_backend.EmulatedCudaBackend()
    used = kernels_used(lambda: be.conv2d_dgrad(g, x.detach(), w.detach(), y.detach(), (1, 1), (1, 1), (1, 1), 1))
    assert used and not any(is_tc(s) for s in used), used
    gx, gw = torch.autograd.grad(y, [x, w], g)
    xr, wr = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    yr = torch.relu(F.conv2d(xr, wr, b.double(), padding=1))
    rx, rw = torch.autograd.grad(yr, [xr, wr], g.double() * (y > 0).double())
    assert rel_err(gx, rx) <= REL_TOL[torch.float16] and rel_err(gw, rw) <= REL_TOL[torch.float16]
