"""The cpu backend's Winograd F(4x4, 3x3) path (csrc/cpu/conv2d_winograd_isa.cpp) and its weight-pack cache.

3x3 stride-1 float32 convolutions with >= 16 channels on both sides run through Winograd at the AVX2
and AVX-512 levels: forward (bias + ReLU fused), input gradient and weight gradient. These tests, run at
each of those levels this CPU has (the `vector_isa` fixture),
- check which problems take the path (`fastconv._C.conv2d_weight_pack_floats` says so) and that
  FASTCONV_CPU_WINOGRAD=0 turns it off,
- compare every output and gradient with torch in float64 over a grid of shapes with edge tiles,
  pads 0..2, channel counts off the 8- and 16-lane vectors, both layouts, strided views and the fused ReLU,
  with the foundation's float32 tolerance,
- compare Winograd with the direct kernels it replaces,
- check the weight-pack cache: hits, and invalidation by in-place updates, optimizer steps,
  `.data` replacement and the weight's death.
"""
from __future__ import annotations

import gc

import pytest
import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FC
from fastconv.backends import cpu as cpu_backend

from helpers import assert_rel

_C = cpu_backend._C
pytestmark = [pytest.mark.skipif(_C is None, reason="fastconv._C is not built"), pytest.mark.usefixtures("vector_isa")]


def _desc(x_shape, w_shape, padding=1, stride=1, dilation=1, groups=1):
    N, C, H, W = x_shape
    K, _, R, S = w_shape
    P = (H + 2 * padding - dilation * (R - 1) - 1) // stride + 1
    Q = (W + 2 * padding - dilation * (S - 1) - 1) // stride + 1
    x = torch.empty(x_shape)
    w = torch.empty(w_shape)
    return cpu_backend.conv_desc(x, w, (stride, stride), (padding, padding), (dilation, dilation), groups, (P, Q))


def _uses_winograd(x_shape, w_shape, dtype_code=0, **kw) -> bool:
    return _C.conv2d_weight_pack_floats(_desc(x_shape, w_shape, **kw), dtype_code, 0) > 0


def test_path_selection(monkeypatch, vector_isa):
    assert _uses_winograd((8, 16, 8, 8), (16, 16, 3, 3))
    assert _uses_winograd((4, 64, 14, 14), (256, 64, 3, 3), padding=0)
    assert _uses_winograd((4, 16, 8, 8), (16, 16, 3, 3), padding=2)
    assert not _uses_winograd((7, 16, 8, 8), (16, 16, 3, 3))  # 28 tiles: the weight transform would dominate
    # Not Winograd: float64, stride, dilation, groups, other filter sizes, too few channels, tiny images.
    assert not _uses_winograd((8, 16, 8, 8), (16, 16, 3, 3), dtype_code=1)
    assert not _uses_winograd((8, 16, 8, 8), (16, 16, 3, 3), stride=2)
    assert not _uses_winograd((8, 16, 8, 8), (16, 16, 3, 3), dilation=2)
    assert not _uses_winograd((8, 16, 8, 8), (16, 8, 3, 3), groups=2)
    assert not _uses_winograd((8, 16, 8, 8), (16, 16, 5, 5), padding=2)
    assert not _uses_winograd((8, 8, 8, 8), (16, 8, 3, 3))
    assert not _uses_winograd((8, 16, 8, 8), (8, 16, 3, 3))
    assert not _uses_winograd((64, 16, 2, 2), (16, 16, 3, 3))  # one 4x4 tile for 4 outputs
    lanes = 16 if vector_isa == "avx512" else 8
    floats = _C.conv2d_weight_pack_floats(_desc((8, 20, 8, 8), (33, 20, 3, 3)), 0, 0)
    assert floats == 36 * 20 * (48 if lanes == 16 else 40)  # 36 positions x C x K rounded up to the lanes
    assert _C.conv2d_weight_pack_floats(_desc((8, 20, 8, 8), (33, 20, 3, 3)), 0, 1) == 36 * 33 * (32 if lanes == 16 else 24)
    monkeypatch.setenv("FASTCONV_CPU_WINOGRAD", "0")
    assert not _uses_winograd((8, 16, 8, 8), (16, 16, 3, 3))


def _run(x, w, b, relu, padding, dy):
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    b = None if b is None else b.detach().requires_grad_()
    with fastconv.use_backend("cpu"):
        y = (FC.conv2d_relu if relu else FC.conv2d)(x, w, b, padding=padding)
        inputs = (x, w) if b is None else (x, w, b)
        grads = torch.autograd.grad(y, inputs, dy)
    return y, grads


def _reference(x, w, b, relu, padding, dy):
    xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    bd = None if b is None else b.detach().double().requires_grad_()
    y = F.conv2d(xd, wd, bd, padding=padding)
    if relu:
        y = y.relu()
    inputs = (xd, wd) if bd is None else (xd, wd, bd)
    return y, torch.autograd.grad(y, inputs, dy.double())


CASES = [
    # (N, C, H, W, K, padding): edge tiles in both directions, channels off the 8- and 16-lane vectors
    (8, 16, 8, 8, 16, 1),
    (3, 19, 9, 13, 33, 1),     # 3 x 3 x 4 = 36 tiles
    (16, 16, 7, 6, 17, 0),
    (3, 40, 10, 11, 24, 2),    # 12x13 output: 3 x 3 x 4 = 36 tiles
    (1, 64, 32, 35, 48, 1),   # full 16x16 blocks of the NCHW staging transpose, and a partial one
    (8, 130, 6, 6, 70, 1),    # several K chunks (AVX-512: 64 + 64 + a 16-lane tail; AVX2: 4 x 16 + 8) and C tails
    (4, 20, 24, 26, 24, 1),   # weight gradient in 2 tile groups (168 tiles), the last one partial
    (8, 16, 32, 32, 16, 1),   # weight gradient in 8 tile groups of 64 tiles
    (6, 16, 40, 40, 16, 1),   # 600 tiles: 5 groups of 128 (the last partial), none empty
]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("bias,relu", [(True, False), (False, False), (True, True)])
@pytest.mark.parametrize("case", CASES, ids=[f"n{c[0]}c{c[1]}-{c[2]}x{c[3]}-k{c[4]}-p{c[5]}" for c in CASES])
def test_matches_torch_float64(case, layout, bias, relu):
    N, C, H, W, K, pad = case
    assert _uses_winograd((N, C, H, W), (K, C, 3, 3), padding=pad)
    x = torch.randn(N, C, H, W)
    w = torch.randn(K, C, 3, 3) / (3 * C ** 0.5)
    b = torch.randn(K) if bias else None
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    P, Q = H + 2 * pad - 2, W + 2 * pad - 2
    dy = torch.randn(N, K, P, Q)
    if layout == "channels_last":
        dy = dy.contiguous(memory_format=torch.channels_last)
    y, grads = _run(x, w, b, relu, pad, dy)
    y_ref, grads_ref = _reference(x, w, b, relu, pad, dy)
    assert_rel(y, y_ref, torch.float32, "output")
    assert y.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    for name, g, r in zip(("grad_input", "grad_weight", "grad_bias"), grads, grads_ref):
        assert_rel(g, r, torch.float32, name)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("relu", [False, True])
def test_weight_gradient_from_16_tiles(vector_isa, layout, relu):
    """At the AVX2 level the weight gradient takes Winograd from 16 output tiles (one 14x14 image), the
    forward and the input gradient from 32; AVX-512 keeps 32 for all three. Every gradient still
    matches torch in float64 either way."""
    x = torch.randn(1, 24, 14, 15)  # 4 x 4 = 16 tiles
    w = torch.randn(40, 24, 3, 3) / 15
    dy = torch.randn(1, 40, 14, 15)
    if layout == "channels_last":
        x, dy = x.contiguous(memory_format=torch.channels_last), dy.contiguous(memory_format=torch.channels_last)
    wgrad_path = cpu_backend.conv2d_path(x, w, pass_="wgrad", relu=relu, padding=1)
    assert (wgrad_path == "winograd_f4x4_3x3") == (vector_isa == "avx2"), wgrad_path
    assert cpu_backend.conv2d_path(x, w, pass_="fwd", relu=relu, padding=1) != "winograd_f4x4_3x3"
    x15 = x[:, :, :, :12]  # 4 x 3 = 12 tiles: direct everywhere
    assert cpu_backend.conv2d_path(x15, w, pass_="wgrad", relu=relu, padding=1) != "winograd_f4x4_3x3"
    b = torch.randn(40)
    y, grads = _run(x, w, b, relu, 1, dy)
    y_ref, grads_ref = _reference(x, w, b, relu, 1, dy)
    assert_rel(y, y_ref, torch.float32, "output")
    for name, g, r in zip(("grad_input", "grad_weight", "grad_bias"), grads, grads_ref):
        assert_rel(g, r, torch.float32, name)


def test_strided_views_and_mixed_layouts():
    """Inputs and gradients that are views (sliced, permuted) go through the staging copy."""
    base = torch.randn(3, 24, 12, 15)
    x = base[:, 2:22, :, 1:14]                       # channel and column slices: no unit strides to exploit
    w = torch.randn(20, 20, 3, 3).contiguous(memory_format=torch.channels_last) / 13
    dy = torch.randn(3, 20, 26, 12).transpose(2, 3)[:, :, :12, :13]  # transposed, non-contiguous view
    y, grads = _run(x, w, None, True, 1, dy)
    y_ref, grads_ref = _reference(x, w, None, True, 1, dy)
    assert_rel(y, y_ref, torch.float32, "output")
    for name, g, r in zip(("grad_input", "grad_weight"), grads, grads_ref):
        assert_rel(g, r, torch.float32, name)


def test_agrees_with_direct_kernels(monkeypatch):
    x = torch.randn(2, 32, 14, 14).contiguous(memory_format=torch.channels_last)
    w = torch.randn(48, 32, 3, 3) / 17
    b = torch.randn(48)
    dy = torch.randn(2, 48, 14, 14)
    wino = _run(x, w, b, True, 1, dy)
    monkeypatch.setenv("FASTCONV_CPU_WINOGRAD", "0")
    assert not _uses_winograd(tuple(x.shape), tuple(w.shape))
    direct = _run(x, w, b, True, 1, dy)
    for a, d in zip((wino[0], *wino[1]), (direct[0], *direct[1])):
        assert_rel(a, d, torch.float32)
    for a, d in zip((wino[0], *wino[1][:2]), (direct[0], *direct[1][:2])):
        assert not torch.equal(a, d)  # two algorithms really ran (the bias gradient is the same kernel)


def test_bitwise_deterministic_across_threads():
    x = torch.randn(4, 32, 20, 20)
    w = torch.randn(40, 32, 3, 3) / 17
    dy = torch.randn(4, 40, 20, 20)
    before = torch.get_num_threads()
    try:
        results = []
        for nth in (1, 2, 2):
            torch.set_num_threads(nth)
            y, grads = _run(x, w, None, False, 1, dy)
            results.append([y, *grads])
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------
# The weight-pack cache


@pytest.fixture
def cache(weight_pack_cache):
    return weight_pack_cache


def _fwd(x, w):
    with fastconv.use_backend("cpu"):
        return FC.conv2d(x, w, padding=1)


def _ref_fwd(x, w):
    return F.conv2d(x.double(), w.detach().double(), padding=1)


def test_cache_hits_for_the_same_weight(cache):
    x = torch.randn(8, 16, 8, 8)
    w = torch.randn(16, 16, 3, 3)
    first = _fwd(x, w)
    assert cache.info()["entries"] == 1 and cache.info()["misses"] == 1
    second = _fwd(x, w)
    assert cache.info()["hits"] == 1
    assert torch.equal(first, second)


def test_cache_serves_forward_and_input_gradient_separately(cache):
    x = torch.randn(8, 16, 8, 8, requires_grad=True)
    w = torch.randn(24, 16, 3, 3, requires_grad=True)
    for _ in range(2):
        with fastconv.use_backend("cpu"):
            y = FC.conv2d(x, w, padding=1)
        y.backward(torch.ones_like(y))
    info = cache.info()
    assert info["entries"] == 2  # forward pack and input-gradient pack of the same weight
    assert info["hits"] == 2 and info["misses"] == 2


@pytest.mark.parametrize("update", ["mul_", "copy_", "optimizer", "data", "load_state_dict"])
def test_cache_invalidated_by_weight_updates(cache, update):
    x = torch.randn(8, 16, 8, 8)
    layer = torch.nn.Conv2d(16, 16, 3, padding=1, bias=False)
    w = layer.weight
    _fwd(x, w)
    if update == "mul_":
        with torch.no_grad():
            w.mul_(-2.0)
    elif update == "copy_":
        with torch.no_grad():
            w.copy_(torch.randn_like(w))
    elif update == "optimizer":
        opt = torch.optim.SGD([w], lr=0.5)
        w.grad = torch.randn_like(w)
        opt.step()
    elif update == "data":
        w.data = torch.randn_like(w)  # new storage: data_ptr changes
    else:
        layer.load_state_dict({"weight": torch.randn_like(w)})
    y = _fwd(x, w)
    assert_rel(y, _ref_fwd(x, w), torch.float32)


def test_cache_entry_dies_with_its_weight(cache):
    x = torch.randn(8, 16, 8, 8)
    for i in range(4):
        w = torch.randn(16, 16, 3, 3)  # often at the address of the previous, freed weight
        y = _fwd(x, w)
        assert_rel(y, _ref_fwd(x, w), torch.float32)
        del w
        gc.collect()
        assert cache.info()["entries"] == 0


def test_cache_disabled_and_bounded(cache, monkeypatch):
    x = torch.randn(8, 16, 8, 8)
    weights = [torch.randn(16, 16, 3, 3) for _ in range(3)]
    one_pack = (36 * 16 * 16 + 16 * 16 * 3 * 3) * 4  # the transform, then the weight sample the kernel checks
    monkeypatch.setattr(cache, "max_bytes", 2 * one_pack)
    for w in weights:
        _fwd(x, w)
    assert cache.info()["entries"] == 2 and cache.info()["bytes"] == 2 * one_pack  # the oldest evicted
    cache.clear()
    monkeypatch.setenv("FASTCONV_WEIGHT_CACHE", "0")
    y = _fwd(x, weights[0])
    assert cache.info()["entries"] == 0
    assert_rel(y, _ref_fwd(x, weights[0]), torch.float32)


def test_pack_size_checked_by_the_binding():
    d = _desc((8, 16, 8, 8), (16, 16, 3, 3))
    x, w, y = torch.randn(8, 16, 8, 8), torch.randn(16, 16, 3, 3), torch.empty(8, 16, 8, 8)
    small = torch.empty(10)
    t4 = cpu_backend._t4
    with pytest.raises(ValueError, match="pack holds 10 floats"):
        _C.conv2d_fwd(d, 0, t4(x), t4(w), 0, t4(y), False, 1, pack=(small.data_ptr(), 10, False))

