"""fastconv.functional.conv2d / conv2d_relu against torch, over parameter grids.

Each case runs forward and backward (random grad_output) through fastconv on the selected backend
and compares the output and every gradient (input, weight, bias) with torch's float64 result from
the same inputs: ||ours - ref|| / ||ref|| <= REL_TOL[dtype]. The output's memory format must be
torch's (channels_last exactly when torch's output is).

The full product of the axes below is far too big to run; `sample_grid` draws a deterministic
sample that uses every value of every axis at least once (test_grid_coverage checks that).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastconv.functional as FC
from conftest import REL_TOL, assert_rel, case_id, covered, same_memory_format, sample_grid

# (name, C, K, groups): group configurations, incl. depthwise (groups == C) with multiplier 1 and 2.
CHANNELS = {
    "c1": (1, 2, 1),
    "c3": (3, 4, 1),
    "c4k3": (4, 3, 1),
    "g2": (4, 6, 2),
    "g2b": (6, 4, 2),
    "g3": (6, 3, 3),
    "dw3": (3, 3, 3),
    "dw4": (4, 4, 4),
    "dwx2": (3, 6, 3),
    "dw1x2": (1, 2, 1),
}

AXES = {
    "op": ["conv2d", "conv2d_relu"],
    "kernel": [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (7, 7), (1, 3), (3, 1), (2, 5), (7, 3), (4, 1)],
    "stride": [1, 2, 3, (1, 2), (3, 1)],
    "padding": [0, 1, 2, (1, 2), (0, 3), "same", "valid"],
    "dilation": [1, 2, 3, (1, 2), (3, 1)],
    "channels": list(CHANNELS),
    "bias": [True, False],
    "layout": ["contiguous", "cl_input", "cl_weight", "cl_both", "slice", "permuted", "expanded", "unbatched"],
    "N": [1, 2, 3],
    "HW": [(5, 5), (7, 9), (8, 6), (11, 4), (6, 13)],
    "grad": ["contiguous", "channels_last", "transposed"],
}


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _valid(case) -> bool:
    # torch: padding='same' only with stride 1.
    return not (case["padding"] == "same" and _pair(case["stride"]) != (1, 1))


def _spatial(case):
    """Input H, W: the case's base size, enlarged where the dilated kernel would not fit."""
    R, S = case["kernel"]
    dh, dw = _pair(case["dilation"])
    pad = case["padding"]
    ph, pw = (0, 0) if isinstance(pad, str) else _pair(pad)
    H, W = case["HW"]
    H = max(H, dh * (R - 1) + 1 - 2 * ph)
    W = max(W, dw * (S - 1) + 1 - 2 * pw)
    return H, W


FP32_CASES = sample_grid(AXES, n=260, seed=1, valid=_valid)
FP64_CASES = sample_grid(AXES, n=50, seed=2, valid=_valid)
HALF_AXES = dict(AXES, dtype=[torch.float16, torch.bfloat16])
HALF_CASES = sample_grid(HALF_AXES, n=40, seed=3, valid=_valid)


def make_case(case, dtype, seed=0):
    """Builds (x, w, b, g, kwargs, leaves) for a case; x and w are views of leaf tensors in `leaves`
    with the case's layout, g is the grad_output with the case's layout (made later, see grad_output)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    C, K, groups = CHANNELS[case["channels"]]
    R, S = case["kernel"]
    N = case["N"]
    H, W = _spatial(case)
    layout = case["layout"]
    Cg = C // groups

    if layout == "slice":
        xb = rnd(N, 2 * C, H + 3, 2 * W + 1).requires_grad_()
        x = xb[:, 1::2, 2:2 + H, 1::2][..., :W]
    elif layout == "permuted":
        xb = rnd(C, W, N, H).requires_grad_()
        x = xb.permute(2, 0, 3, 1)
    elif layout == "expanded":
        xb = rnd(1, C, H, W).requires_grad_()
        x = xb.expand(N, C, H, W)
    elif layout == "unbatched":
        xb = rnd(C, H, W).requires_grad_()
        x = xb
    else:
        xb = rnd(N, C, H, W).requires_grad_()
        x = xb.to(memory_format=torch.channels_last) if layout in ("cl_input", "cl_both") else xb

    if layout == "permuted":
        wb = rnd(Cg, K, S, R).requires_grad_()
        w = wb.permute(1, 0, 3, 2)
    else:
        wb = rnd(K, Cg, R, S).requires_grad_()
        w = wb.to(memory_format=torch.channels_last) if layout in ("cl_weight", "cl_both") else wb
    b = rnd(K).requires_grad_() if case["bias"] else None
    kwargs = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"], groups=groups)
    return x, w, b, kwargs


def make_grad(y_shape, how, dtype, seed=1):
    gen = torch.Generator().manual_seed(seed)
    shape = tuple(y_shape)
    if how == "transposed" and len(shape) >= 2:
        swapped = shape[:-2] + (shape[-1], shape[-2])
        return torch.randn(swapped, generator=gen, dtype=torch.float64).to(dtype).transpose(-1, -2)
    g = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    if how == "channels_last" and len(shape) == 4:
        g = g.contiguous(memory_format=torch.channels_last)
    return g


def _torch_op(op):
    if op == "conv2d":
        return F.conv2d
    return lambda *a, **k: torch.relu(F.conv2d(*a, **k))


def check_case(case, dtype, tol=None):
    x, w, b, kwargs = make_case(case, dtype)
    ours_fn = getattr(FC, case["op"])
    torch_fn = _torch_op(case["op"])

    # ours, in the case's dtype
    y = ours_fn(x, w, b, **kwargs)
    # torch in the same dtype: the memory format to match
    with torch.no_grad():
        y_torch = torch_fn(x, w, b, **kwargs)
    assert y.dtype == dtype
    assert y.shape == y_torch.shape, f"output shape {tuple(y.shape)} != torch's {tuple(y_torch.shape)}"
    same_memory_format(y, y_torch)

    g = make_grad(y.shape, case["grad"], dtype)
    inputs = [x, w] + ([b] if b is not None else [])
    grads = torch.autograd.grad(y, inputs, g)

    # torch in float64 from the same values: the reference
    ref_inputs = [t.detach().to(torch.float64).requires_grad_() for t in inputs]
    xr, wr = ref_inputs[:2]
    br = ref_inputs[2] if b is not None else None
    y_ref = torch_fn(xr, wr, br, **kwargs)
    ref_grads = torch.autograd.grad(y_ref, ref_inputs, g.to(torch.float64))

    assert_rel(y, y_ref, dtype, "output", tol)
    for name, got, ref in zip(("grad_input", "grad_weight", "grad_bias"), grads, ref_grads):
        assert got.dtype == dtype, f"{name} dtype {got.dtype}"
        assert_rel(got, ref, dtype, name, tol)


@pytest.mark.parametrize("case", FP32_CASES, ids=case_id)
def test_conv2d_float32(backend, case):
    check_case(case, torch.float32)


@pytest.mark.parametrize("case", FP64_CASES, ids=case_id)
def test_conv2d_float64(backend, case):
    check_case(case, torch.float64)


@pytest.mark.parametrize("case", HALF_CASES, ids=case_id)
def test_conv2d_half_precision(backend, case):
    """float16/bfloat16 are accepted on the CPU (computed in float32, rounded once): a loose bound
    against torch's float64 result from the same (already rounded) inputs."""
    case = dict(case)
    dtype = case.pop("dtype")
    check_case(case, dtype)


# N = 0: an empty batch gives an empty output; the weight and bias gradients are exactly zero.
EMPTY_CASES = [
    dict(op=op, kernel=k, stride=s, padding=p, dilation=1, channels=ch, bias=bias, layout=layout, N=0,
         HW=(6, 5), grad="contiguous")
    for op in ("conv2d", "conv2d_relu")
    for (k, s, p, ch, bias, layout) in [
        ((3, 3), 1, 1, "c3", True, "contiguous"),
        ((2, 2), 1, "same", "g2", True, "cl_input"),
        ((1, 3), 2, 0, "dwx2", False, "cl_weight"),
        ((3, 3), 1, "valid", "dw4", True, "contiguous"),
    ]
]


@pytest.mark.parametrize("case", EMPTY_CASES, ids=case_id)
def test_conv2d_empty_batch(backend, case):
    check_case(case, torch.float32)
    x, w, b, kwargs = make_case(case, torch.float32)
    y = getattr(FC, case["op"])(x, w, b, **kwargs)
    assert y.shape[0] == 0
    gw, *gb = torch.autograd.grad(y, [w] + ([b] if b is not None else []), torch.empty_like(y))
    assert torch.equal(gw, torch.zeros_like(gw)), "grad_weight must be zeros for an empty batch"
    for t in gb:
        assert torch.equal(t, torch.zeros_like(t)), "grad_bias must be zeros for an empty batch"


@pytest.mark.parametrize("requires", ["input", "weight", "bias", "weight+bias", "input+bias"])
@pytest.mark.parametrize("op", ["conv2d", "conv2d_relu"])
def test_conv2d_partial_requires_grad(backend, op, requires):
    """Only the requested gradients are computed, and they are right."""
    case = dict(op=op, kernel=(3, 3), stride=1, padding=1, dilation=1, channels="g2", bias=True,
                layout="contiguous", N=2, HW=(7, 6), grad="contiguous")
    x, w, b, kwargs = make_case(case, torch.float32)
    x, w, b = x.detach(), w.detach(), b.detach()
    want = requires.split("+")
    named = {"input": x, "weight": w, "bias": b}
    for k in want:
        named[k].requires_grad_()
    y = getattr(FC, op)(x, w, b, **kwargs)
    g = make_grad(y.shape, "contiguous", torch.float32)
    grads = torch.autograd.grad(y, [named[k] for k in want], g)
    ref = {k: v.double().requires_grad_() for k, v in named.items()}
    y_ref = _torch_op(op)(ref["input"], ref["weight"], ref["bias"], **kwargs)
    ref_grads = torch.autograd.grad(y_ref, [ref[k] for k in want], g.double())
    for k, got, r in zip(want, grads, ref_grads):
        assert_rel(got, r, torch.float32, f"grad {k}")


def test_conv2d_no_grad_output(backend):
    """Under no_grad (inference) the result is the same and carries no graph."""
    case = dict(op="conv2d", kernel=(3, 3), stride=2, padding=1, dilation=1, channels="c3", bias=True,
                layout="cl_input", N=2, HW=(9, 8), grad="contiguous")
    x, w, b, kwargs = make_case(case, torch.float32)
    with torch.no_grad():
        y = FC.conv2d(x, w, b, **kwargs)
        y_relu = FC.conv2d_relu(x, w, b, **kwargs)
    assert not y.requires_grad and not y_relu.requires_grad
    y_ref = F.conv2d(x.detach().double(), w.detach().double(), b.detach().double(), **kwargs)
    assert_rel(y, y_ref, torch.float32)
    assert_rel(y_relu, torch.relu(y_ref), torch.float32)
    assert (y_relu >= 0).all()


def test_grid_coverage():
    """The sampled grids use every value of every axis (so no axis silently drops out)."""
    assert covered(FP32_CASES, AXES) == {}
    assert len(FP32_CASES) >= 200
    # 'same' with even kernels (asymmetric padding) is in the grid, with and without dilation.
    even_same = [c for c in FP32_CASES if c["padding"] == "same" and any(k % 2 == 0 for k in c["kernel"])]
    assert len(even_same) >= 5
    assert REL_TOL[torch.float32] == 1e-5


@pytest.mark.parametrize("layout", ["contiguous", "cl_both"])
@pytest.mark.parametrize("op", ["conv2d", "conv2d_relu"])
def test_conv2d_expanded_grad_output(backend, op, layout):
    """y.sum().backward() hands the backward an expanded grad_output (all strides 0)."""
    case = dict(op=op, kernel=(3, 2), stride=(2, 1), padding=1, dilation=1, channels="g2", bias=True,
                layout=layout, N=2, HW=(7, 6), grad="contiguous")
    x, w, b, kwargs = make_case(case, torch.float32)
    y = getattr(FC, op)(x, w, b, **kwargs)
    grads = torch.autograd.grad(y.sum(), [x, w, b])
    ref = [t.detach().double().requires_grad_() for t in (x, w, b)]
    ref_grads = torch.autograd.grad(_torch_op(op)(*ref, **kwargs).sum(), ref)
    for name, got, r in zip(("grad_input", "grad_weight", "grad_bias"), grads, ref_grads):
        assert_rel(got, r, torch.float32, name)


@pytest.mark.parametrize("K", [32, 40])
@pytest.mark.parametrize("op", ["conv2d", "conv2d_relu"])
def test_conv2d_large_channels_last_output(backend, op, K):
    """Outputs of 2 MiB and more take the kernels' streaming-store path (non-temporal stores where
    a row of K outputs is 64-byte aligned: K = 32; plain stores otherwise: K = 40)."""
    torch.manual_seed(0)
    x = torch.randn(8, 3, 48, 48, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    w = torch.randn(K, 3, 3, 3, dtype=torch.float64)
    b = torch.randn(K, dtype=torch.float64)
    ours = getattr(FC, op)(x.float(), w.float(), b.float(), padding=1)
    assert ours.numel() * 4 >= 2 << 20
    ref = _torch_op(op)(x, w, b, padding=1)
    same_memory_format(ours, ref)
    assert_rel(ours, ref, torch.float32)
