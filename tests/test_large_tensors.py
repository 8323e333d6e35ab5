"""Tensors of more than 2^31 elements on the cpu backend: every index and offset must be 64-bit.

Three float32 problems of 2^31 + a little elements (8 GiB each, one at a time; the cpu backend computes
float32 in place, without the float32 copy it makes of float16/bfloat16 tensors, see
fastconv/backends/cpu.py):
  - pooling forward over ONE plane of 32769 x 65536: element offsets and max-pool indices (h * W + w)
    beyond 2^31 (fp32 max pooling blends indices as int32 lanes where a plane allows it); the windows
    read every 64th row, so only those pages are ever touched;
  - pooling backward into a grad_input of 524289 planes of 64 x 64: plane offsets beyond 2^31;
  - conv2d with an output of 32769 planes of 256 x 256 (forward, then dgrad/wgrad/bias-grad reading it
    back as grad_output): output-channel offsets beyond 2^31.
The values are built so that a wrong offset shows everywhere (each row / plane holds its own number,
checked over the whole tensor with cheap reductions) and the last rows / planes, where a 32-bit index
would have wrapped, are compared with torch.

Peak memory is one 8 GiB tensor plus < 1 GiB (measured: peak RSS 9.0 GB for the file). The fixture
big_memory runs one such test at a time on the machine (a file lock, so the pytest-xdist workers take
turns), skips it when less than 10 GiB is available, and caps the address space while it runs. The tests
run in CI; on an idle 2-core machine each takes a few seconds (mostly page faults and one or two passes
over 8 GiB), `python -m pytest tests/test_large_tensors.py -q` runs them alone.
"""
from __future__ import annotations

import fcntl
import gc
import os
import resource
import tempfile

import pytest
import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FC
from helpers import assert_rel

pytestmark = pytest.mark.slow  # tensors of 2^31+ elements: 3-40 s each

GiB = 1 << 30
BIG = 1 << 31
NEEDED_GIB = 10.0
# Address space allowed on top of what the process maps when a test starts: the one 8 GiB tensor, the
# outputs and indices (< 0.5 GiB), torch's slices for the checks and OpenMP stacks.
EXTRA_ADDRESS_SPACE_GIB = 10.0


def available_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / (1 << 20)
    return 0.0


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


@pytest.fixture
def big_memory():
    """One big test at a time per machine (a file lock); skipped without 10 GiB available. During the
    test the process's address space is capped at what it maps now + 10 GiB (RLIMIT_AS): a second copy
    of a big tensor (an upcast, a .contiguous(), a float64 reduction) then fails as an allocation error
    in the test instead of pushing a shared machine into the OOM killer."""
    with open(os.path.join(tempfile.gettempdir(), "fastconv-large-tensor-tests.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        avail = available_gib()
        if avail < NEEDED_GIB:
            pytest.skip(f"needs {NEEDED_GIB:.0f} GiB of available memory, this machine has {avail:.1f} GiB")
        before = fastconv.get_backend()
        fastconv.set_backend("cpu")
        gc.collect()
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = _status_kib("VmSize") * 1024 + int(EXTRA_ADDRESS_SPACE_GIB * GiB)
        resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
            fastconv.set_backend(before)
            gc.collect()


def test_pool_forward_one_plane_over_2_31(big_memory):
    """One plane of 32769 x 65536 = 2^31 + 65536 elements: row h starts at offset h * 2^16, the last one
    at 2^31. The windows (1 x 4, stride 64 x 64) read every 64th row, so only those rows are filled
    (and resident: 128 MiB of the 8 GiB allocation). x[0, 0, h, w] = h + u[w] with u in [0.375, 0.625):
    every window's max and mean has floor h, so a read from a wrong row shows anywhere; max indices
    must be h * W + w (2^31 and above in the last row)."""
    H, W, SH = (1 << 15) + 1, 1 << 16, 64
    assert H * W > BIG and (H - 1) % SH == 0
    x = torch.empty(1, 1, H, W)
    read_rows = torch.arange(0, H, SH)  # the rows the windows read; the last is H - 1
    u = torch.rand(W, generator=torch.Generator().manual_seed(0)) * 0.25 + 0.375
    torch.add(read_rows.float().view(-1, 1), u.view(1, W), out=x[0, 0, ::SH])
    kw = dict(kernel_size=(1, 4), stride=(SH, 64))
    P, Q = len(read_rows), (W - 4) // 64 + 1
    rows = read_rows.view(1, 1, P, 1)

    y, idx = FC.max_pool2d(x, **kw, return_indices=True)
    assert y.shape == (1, 1, P, Q) and idx.dtype == torch.int64
    assert torch.equal(y.floor().long(), rows.expand_as(y)), "a max-pool window read another row"
    assert torch.equal(torch.div(idx, W, rounding_mode="floor"), rows.expand_as(idx)), "index row wrong"
    assert idx[0, 0, -1].min().item() >= BIG, "the last row's indices must be beyond 2^31"
    # vs torch on the last and first rows (torch's indices are relative to the slice)
    y_t, idx_t = F.max_pool2d(x[:, :, -1:], **kw, return_indices=True)
    assert torch.equal(y[:, :, -1:], y_t) and torch.equal(idx[:, :, -1:], idx_t + (H - 1) * W)
    y_0, idx_0 = F.max_pool2d(x[:, :, :1], **kw, return_indices=True)
    assert torch.equal(y[:, :, :1], y_0) and torch.equal(idx[:, :, :1], idx_0)

    a = FC.avg_pool2d(x, **kw)
    assert torch.equal(a.floor().long(), rows.expand_as(a)), "an avg-pool window read another row"
    torch.testing.assert_close(a[:, :, -1:].double(), F.avg_pool2d(x[:, :, -1:].double(), **kw), rtol=1e-6, atol=0)
    # a non-contiguous view of the same memory (the last 128 columns of each row)
    v = x[:, :, :, -128:]
    b = FC.avg_pool2d(v, **kw)
    assert torch.equal(b.floor().long(), rows.expand_as(b))
    torch.testing.assert_close(b[:, :, -1:].double(), F.avg_pool2d(v[:, :, -1:].double(), **kw), rtol=1e-6, atol=0)
    bm, bi = FC.max_pool2d(v, **kw, return_indices=True)  # indices within v's own (H, 128) plane
    bm_t, bi_t = F.max_pool2d(v[:, :, -1:], **kw, return_indices=True)
    assert torch.equal(bm[:, :, -1:], bm_t) and torch.equal(bi[:, :, -1:], bi_t + (H - 1) * 128)
    assert torch.equal(bm.floor().long(), rows.expand_as(bm))


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_backward_many_planes_over_2_31(big_memory, kind):
    """grad_input of 524289 planes of 64 x 64 (2^31 + 4096 elements; plane c starts at c * 4096). The
    input is one plane expanded over C (stride 0: the backward only needs its shape and the indices).
    grad_output of plane c is v_c = c % 1000 + 1 in each of its 8 x 8 outputs, so each plane of
    grad_input must sum to exactly 64 * v_c (float32 sums of these values are exact): a write into a
    wrong plane shows. The last and first planes are also compared with torch elementwise."""
    C, H, W = BIG // 4096 + 1, 64, 64
    assert C * H * W > BIG
    base = torch.randn(1, 1, H, W, generator=torch.Generator().manual_seed(1))
    x = base.expand(1, C, H, W).requires_grad_()
    kw = dict(kernel_size=2, stride=8)  # 8 x 8 outputs per plane
    pool = FC.max_pool2d if kind == "max" else FC.avg_pool2d
    y = pool(x, **kw)
    assert y.shape == (1, C, 8, 8)
    v = (torch.arange(C) % 1000 + 1).float()
    dy = v.view(1, C, 1, 1).expand(1, C, 8, 8).contiguous()
    (dx,) = torch.autograd.grad(y, x, dy)
    del y
    assert dx.shape == (1, C, H, W) and dx.is_contiguous()
    sums = dx.sum(dim=(2, 3)).view(C)
    bad = (sums != 64 * v).nonzero().view(-1)
    assert bad.numel() == 0, f"{bad.numel()} planes of grad_input have a wrong sum, e.g. planes {bad[:5].tolist()}"
    tail = 3
    torch_pool = getattr(F, f"{kind}_pool2d")
    for sl in (slice(C - tail, C), slice(0, tail)):
        xs = base.expand(1, tail, H, W).double().requires_grad_()
        (dx_t,) = torch.autograd.grad(torch_pool(xs, **kw), xs, dy[:, sl].double())
        assert torch.equal(dx[:, sl].double(), dx_t), f"planes {sl} differ from torch's"


def test_conv_output_over_2_31(big_memory):
    """y = conv2d(x, w, b) with x (1, 1, 256, 256), w (32769, 1, 1, 1): y[0, k] = w[k] * x + b[k],
    2^31 + 65536 elements. Every plane is checked through its sum (k's own w[k] and b[k]) and the last
    planes elementwise vs torch; then y is fed back as grad_output: dgrad, wgrad and the bias gradient
    read it at the same offsets."""
    K, H, W = BIG // 65536 + 1, 256, 256
    assert K * H * W > BIG
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 1, H, W, generator=gen).requires_grad_()
    w = (torch.rand(K, 1, 1, 1, generator=gen) + 0.5).requires_grad_()
    b = torch.randn(K, generator=gen).requires_grad_()
    y = FC.conv2d(x, w, b)
    assert y.shape == (1, K, H, W)
    xd = x.detach().double()
    sx, sxx = xd.sum().item(), (xd * xd).sum().item()

    sums = y.detach().sum(dim=(2, 3)).view(K).double()  # float32 (pairwise) sums: no float64 copy of y
    expected = w.detach().double().view(K) * sx + b.detach().double() * (H * W)
    torch.testing.assert_close(sums, expected, rtol=1e-5, atol=1e-2)
    tail = 4
    y_t = F.conv2d(xd, w.detach()[-tail:].double(), b.detach()[-tail:].double())
    torch.testing.assert_close(y.detach()[:, -tail:].double(), y_t, rtol=1e-6, atol=1e-6)

    # backward with grad_output = y (dy[k] = w[k] x + b[k]):
    #   dx = sum_k w[k] dy[k], dw[k] = <dy[k], x> = w[k] sxx + b[k] sx, db[k] = sum(dy[k]) (= sums)
    dx, dw, db = torch.autograd.grad(y, (x, w, b), y.detach())
    wd, bd = w.detach().double().view(K), b.detach().double()
    assert_rel(db, sums, torch.float32, "grad_bias")
    assert_rel(dw.view(K), wd * sxx + bd * sx, torch.float32, "grad_weight")
    assert_rel(dx, (wd * wd).sum() * xd + (wd * bd).sum(), torch.float32, "grad_input")
