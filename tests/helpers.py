"""The test suite's shared plain helpers: tolerances and the error measure, grid sampling, and the
convolution and pooling grids (case builders, torch references, checks) that several backends' tests
run. Fixtures live in conftest.py; everything else shared lives here. Test modules import from this
module (`from helpers import ...`; pytest puts tests/ on sys.path) and never from one another.

The yardstick is always torch: results in float64 computed by torch from the same inputs, compared
with `rel_err` = ||ours - ref|| / ||ref|| (Frobenius norm over the whole tensor).

A grid case is a dict of axis values (see CONV_AXES, MAX_POOL_AXES, AVG_POOL_AXES). The full product of
the axes is far too big to run; `sample_grid` draws a deterministic sample that uses every value of
every axis at least once (`covered` checks that).
"""
from __future__ import annotations

import contextlib
import random
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

import fastconv.functional as FC
import fastconv.nn as fnn

# Relative error bound per dtype: ||ours - ref|| / ||ref|| with ref = torch in float64.
# float16/bfloat16 run in float32 and are rounded once: the bound is a few output ulps.
REL_TOL = {
    torch.float32: 1e-5,
    torch.float64: 1e-10,
    torch.float16: 3e-3,
    torch.bfloat16: 2e-2,
}


def _cpu_isas() -> list:
    """The CPU kernels' ISA levels this machine can run, best first ([] without fastconv._C)."""
    try:
        from fastconv import _C
    except ImportError:
        return []
    order = ["baseline", "avx2", "avx512"]
    return [i for i in reversed(order) if order.index(i) <= order.index(_C.detected_cpu_isa())]


CPU_ISAS = _cpu_isas()


# ----------------------------------------------------------------------------------------------------
# Comparing with torch


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


# ----------------------------------------------------------------------------------------------------
# Grids


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


def pair(v):
    """An int or a sequence of one or two as a 2-tuple, as torch reads stride/padding/dilation/kernel."""
    if isinstance(v, int):
        return (v, v)
    v = tuple(v)
    return (v[0], v[0]) if len(v) == 1 else v


def make_grad(shape, how, dtype, seed=1, device="cpu"):
    """A random grad_output of the given shape: 'contiguous', 'channels_last' (4-d) or 'transposed'
    (the last two dims' strides swapped). The values are drawn on the CPU, the same on every device."""
    gen = torch.Generator().manual_seed(seed)
    shape = tuple(shape)
    if how == "transposed" and len(shape) >= 2:
        swapped = shape[:-2] + (shape[-1], shape[-2])
        g = torch.randn(swapped, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
        return g.transpose(-1, -2)
    g = torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    if how == "channels_last" and len(shape) == 4:
        g = g.contiguous(memory_format=torch.channels_last)
    return g


# ----------------------------------------------------------------------------------------------------
# Convolution: the CPU grid (tests/test_conv2d.py, reused on CUDA by tests/test_cuda_gpu.py) and the
# Triton grid's channel configurations (tests/test_triton.py, reused by tests/test_triton_gpu.py)

# (name, C, K, groups): group configurations, incl. depthwise (groups == C) with multiplier 1 and 2.
CONV_CHANNELS = {
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

CONV_AXES = {
    "op": ["conv2d", "conv2d_relu"],
    "kernel": [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (7, 7), (1, 3), (3, 1), (2, 5), (7, 3), (4, 1)],
    "stride": [1, 2, 3, (1, 2), (3, 1)],
    "padding": [0, 1, 2, (1, 2), (0, 3), "same", "valid"],
    "dilation": [1, 2, 3, (1, 2), (3, 1)],
    "channels": list(CONV_CHANNELS),
    "bias": [True, False],
    "layout": ["contiguous", "cl_input", "cl_weight", "cl_both", "slice", "permuted", "expanded", "unbatched"],
    "N": [1, 2, 3],
    "HW": [(5, 5), (7, 9), (8, 6), (11, 4), (6, 13)],
    "grad": ["contiguous", "channels_last", "transposed"],
}

# (C, K, groups) chosen per Triton kernel path: Cg < 16 runs the flattened (c, r, s) reduction; Cg >= 16
# the tap-major one with channel slices (20, 17 and 48 leave a partial 32-channel slice; 32 -> 64 has
# only full tiles: the EVEN_* variants without clamps); groups == C == K the depthwise kernels (20
# channels: partial channel tiles in both layouts); K = 2C with groups = C a GEMM with Kg = 2.
TRITON_CHANNELS = {
    "c1k2": (1, 2, 1),
    "rgb": (3, 8, 1),
    "c5k3": (5, 3, 1),
    "c20k36": (20, 36, 1),
    "c48k16": (48, 16, 1),
    "c32k64": (32, 64, 1),
    "g2c17": (34, 40, 2),
    "g3": (6, 3, 3),
    "dw4": (4, 4, 4),
    "dw20": (20, 20, 20),
    "dwx2": (3, 6, 3),
}

TRITON_AXES = {
    "op": ["conv2d", "conv2d_relu"],
    "kernel": [(1, 1), (2, 2), (3, 3), (5, 5), (7, 7), (1, 3), (3, 1), (2, 5)],
    "stride": [1, 2, 3, (1, 2), (2, 1)],
    "padding": [0, 1, 2, (1, 2), "same", "valid"],
    "dilation": [1, 2, (1, 2), (3, 1)],
    "channels": list(TRITON_CHANNELS),
    "bias": [True, False],
    "layout": ["contiguous", "cl_input", "cl_weight", "cl_both", "slice", "unbatched"],
    "N": [1, 2],
    "HW": [(5, 5), (7, 9), (8, 6), (11, 4)],
    "grad": ["contiguous", "channels_last", "transposed"],
}


def conv_valid(case) -> bool:
    # torch: padding='same' only with stride 1.
    return not (case["padding"] == "same" and pair(case["stride"]) != (1, 1))


def conv_spatial(case):
    """Input H, W: the case's base size, enlarged where the dilated kernel would not fit."""
    R, S = case["kernel"]
    dh, dw = pair(case["dilation"])
    pad = case["padding"]
    ph, pw = (0, 0) if isinstance(pad, str) else pair(pad)
    H, W = case["HW"]
    H = max(H, dh * (R - 1) + 1 - 2 * ph)
    W = max(W, dw * (S - 1) + 1 - 2 * pw)
    return H, W


CONV_FP32_CASES = sample_grid(CONV_AXES, n=260, seed=1, valid=conv_valid)


def make_conv_case(case, dtype, seed=0, channels=None, device="cpu"):
    """(x, w, b, kwargs) for a case: x and w views with the case's layout of leaf tensors that require
    grad, b a leaf (or None), kwargs the conv parameters. `channels` maps the case's 'channels' name to
    (C, K, groups) (default CONV_CHANNELS). The values are drawn in float64 on the CPU (the same on every
    device and for every layout of the same shape), then cast and moved.

    Layouts: 'contiguous'; 'cl_input', 'cl_weight', 'cl_both' (= 'channels_last'): channels_last input
    and/or weight; 'slice': every other channel and column, rows 2..H+1 (no unit stride anywhere);
    'permuted': strides ordered neither NCHW nor NHWC, input and weight; 'expanded': a batch expanded
    from one sample (stride 0); 'unbatched': a 3-d input."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)

    C, K, groups = (channels or CONV_CHANNELS)[case["channels"]]
    R, S = case["kernel"]
    N = case["N"]
    H, W = conv_spatial(case)
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
        cl = layout in ("cl_input", "cl_both", "channels_last")
        x = xb.to(memory_format=torch.channels_last) if cl else xb

    if layout == "permuted":
        wb = rnd(Cg, K, S, R).requires_grad_()
        w = wb.permute(1, 0, 3, 2)
    else:
        wb = rnd(K, Cg, R, S).requires_grad_()
        cl = layout in ("cl_weight", "cl_both", "channels_last")
        w = wb.to(memory_format=torch.channels_last) if cl else wb
    b = rnd(K).requires_grad_() if case["bias"] else None
    kwargs = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"], groups=groups)
    return x, w, b, kwargs


def torch_conv_op(op):
    """torch's counterpart of fastconv.functional.<op>."""
    if op == "conv2d":
        return F.conv2d
    return lambda *a, **k: torch.relu(F.conv2d(*a, **k))


def check_conv_case(case, dtype, tol=None, channels=None, ours=None):
    """fastconv.functional.<case['op']> forward and backward (grad_output with the case's layout) vs torch:
    the output's dtype, shape and memory format as torch's in the same dtype; the output and every
    gradient (input, weight, bias) within tol (default REL_TOL[dtype]) of torch's float64 result from
    the same values.

    ours(case), when given, is a context manager under which fastconv's forward and backward run (e.g.
    another backend, and a check that its kernels ran); by default they run on the current backend."""
    x, w, b, kwargs = make_conv_case(case, dtype, channels=channels)
    ours_fn = getattr(FC, case["op"])
    torch_fn = torch_conv_op(case["op"])
    inputs = [x, w] + ([b] if b is not None else [])

    with ours(case) if ours is not None else contextlib.nullcontext():
        # ours, in the case's dtype
        y = ours_fn(x, w, b, **kwargs)
        # torch in the same dtype: the memory format to match
        with torch.no_grad():
            y_torch = torch_fn(x, w, b, **kwargs)
        assert y.dtype == dtype
        assert y.shape == y_torch.shape, f"output shape {tuple(y.shape)} != torch's {tuple(y_torch.shape)}"
        same_memory_format(y, y_torch)

        g = make_grad(y.shape, case["grad"], dtype)
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


# ----------------------------------------------------------------------------------------------------
# 1-d and transposed convolution (tests/test_conv1d.py, tests/test_conv_transpose.py; sampled again on the
# SIMT emulator and in Triton's interpreter there)

CONV1D_AXES = {
    "op": ["conv1d", "conv1d_relu"],
    "kernel": [1, 2, 3, 4, 5, 7, 11],
    "stride": [1, 2, 3],
    "padding": [0, 1, 3, "same", "valid"],
    "dilation": [1, 2, 3],
    "channels": list(CONV_CHANNELS),
    "bias": [True, False],
    # channels_last: (N, C, L) with strides (L*C, 1, C), a sequence model's (N, L, C) transposed
    "layout": ["contiguous", "channels_last", "slice", "expanded", "unbatched"],
    "N": [1, 2, 3],
    "L": [5, 9, 16, 23],
    "grad": ["contiguous", "transposed"],
}

TRANSPOSED_AXES = {
    "op": ["conv_transpose2d"],
    "kernel": [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (1, 3), (3, 2)],
    "stride": [1, 2, 3, (1, 2), (2, 1)],
    "padding": [0, 1, 2, (1, 0)],
    "output_padding": [0, 1, 2, (0, 1)],
    "dilation": [1, 2, (1, 3)],
    "channels": list(CONV_CHANNELS),  # (C_in, C_out, groups): weight (C_in, C_out / groups, R, S)
    "bias": [True, False],
    "layout": ["contiguous", "cl_input", "cl_weight", "cl_both", "slice", "permuted", "unbatched"],
    "N": [1, 2, 3],
    "HW": [(4, 4), (5, 7), (6, 3)],
    "grad": ["contiguous", "channels_last", "transposed"],
}

TRANSPOSED1D_AXES = {
    "op": ["conv_transpose1d"],
    "kernel": [1, 2, 3, 4, 5],
    "stride": [1, 2, 3],
    "padding": [0, 1, 2],
    "output_padding": [0, 1, 2],
    "dilation": [1, 2, 3],
    "channels": list(CONV_CHANNELS),
    "bias": [True, False],
    "layout": ["contiguous", "channels_last", "slice", "unbatched"],
    "N": [1, 2],
    "L": [4, 7, 12],
    "grad": ["contiguous", "transposed"],
}


def _per_dim(v, nd):
    return (v,) * nd if isinstance(v, int) else tuple(v)


def transposed_output_size(case, nd):
    """The transposed convolution's output size per spatial dim (torch's formula)."""
    sizes = case["HW"] if nd == 2 else (case["L"],)
    kernel = _per_dim(case["kernel"], nd)
    s, p, op, d = (_per_dim(case[k], nd) for k in ("stride", "padding", "output_padding", "dilation"))
    return [(sizes[i] - 1) * s[i] - 2 * p[i] + d[i] * (kernel[i] - 1) + op[i] + 1 for i in range(nd)]


def transposed_valid(nd):
    """torch's rules: output_padding below the stride or the dilation; a positive output size."""
    def valid(case):
        s, op, d = (_per_dim(case[k], nd) for k in ("stride", "output_padding", "dilation"))
        if any(o >= si and o >= di for o, si, di in zip(op, s, d)):
            return False
        return all(o > 0 for o in transposed_output_size(case, nd))
    return valid


def conv1d_valid(case) -> bool:
    return not (case["padding"] == "same" and case["stride"] != 1)


def _rnd_factory(dtype, seed, device="cpu"):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    return rnd


def _make_1d_input(rnd, layout, N, C, L):
    if layout == "channels_last":
        xb = rnd(N, L, C).requires_grad_()
        return xb, xb.transpose(1, 2)
    if layout == "slice":
        xb = rnd(N, 2 * C, 2 * L + 1).requires_grad_()
        return xb, xb[:, 1::2, 1::2][..., :L]
    if layout == "expanded":
        xb = rnd(1, C, L).requires_grad_()
        return xb, xb.expand(N, C, L)
    if layout == "unbatched":
        xb = rnd(C, L).requires_grad_()
        return xb, xb
    xb = rnd(N, C, L).requires_grad_()
    return xb, xb


def make_conv1d_case(case, dtype, seed=0, device="cpu"):
    """(x, w, b, kwargs) for a CONV1D_AXES case: x a view with the case's layout of a leaf."""
    rnd = _rnd_factory(dtype, seed, device)
    C, K, groups = CONV_CHANNELS[case["channels"]]
    k, d = case["kernel"], case["dilation"]
    pad = 0 if isinstance(case["padding"], str) else case["padding"]
    L = max(case["L"], d * (k - 1) + 1 - 2 * pad)
    _, x = _make_1d_input(rnd, case["layout"], case["N"], C, L)
    w = rnd(K, C // groups, k).requires_grad_()
    b = rnd(K).requires_grad_() if case["bias"] else None
    return x, w, b, dict(stride=case["stride"], padding=case["padding"], dilation=d, groups=groups)


def make_transposed_case(case, dtype, seed=0, device="cpu"):
    """(x, w, b, kwargs) for a TRANSPOSED_AXES (2-d) or TRANSPOSED1D_AXES case. channels (C, K, groups)
    read as C_in = C, C_out = K: weight (C_in, C_out / groups, *kernel)."""
    rnd = _rnd_factory(dtype, seed, device)
    C, K, groups = CONV_CHANNELS[case["channels"]]
    layout = case["layout"]
    if "L" in case:
        _, x = _make_1d_input(rnd, layout, case["N"], C, case["L"])
        w = rnd(C, K // groups, case["kernel"]).requires_grad_()
    else:
        N, (H, W), (R, S) = case["N"], case["HW"], case["kernel"]
        if layout == "slice":
            x = rnd(N, 2 * C, H + 3, 2 * W + 1).requires_grad_()[:, 1::2, 2:2 + H, 1::2][..., :W]
        elif layout == "permuted":
            x = rnd(C, W, N, H).requires_grad_().permute(2, 0, 3, 1)
        elif layout == "unbatched":
            x = rnd(C, H, W).requires_grad_()
        else:
            x = rnd(N, C, H, W).requires_grad_()
            if layout in ("cl_input", "cl_both"):
                x = x.to(memory_format=torch.channels_last)
        if layout == "permuted":
            w = rnd(K // groups, C, S, R).requires_grad_().permute(1, 0, 3, 2)
        else:
            w = rnd(C, K // groups, R, S).requires_grad_()
            if layout in ("cl_weight", "cl_both"):
                w = w.to(memory_format=torch.channels_last)
    b = rnd(K).requires_grad_() if case["bias"] else None
    kwargs = dict(stride=case["stride"], padding=case["padding"], output_padding=case["output_padding"],
                  groups=groups, dilation=case["dilation"])
    return x, w, b, kwargs


TORCH_OPS = {
    "conv1d": F.conv1d,
    "conv1d_relu": lambda *a, **k: torch.relu(F.conv1d(*a, **k)),
    "conv_transpose1d": F.conv_transpose1d,
    "conv_transpose2d": F.conv_transpose2d,
}


def check_against_torch(op, x, w, b, kwargs, dtype, grad, tol=None, memory_format=True):
    """fastconv.functional.<op>(x, w, b, **kwargs) forward and backward (grad_output laid out as `grad`)
    vs torch's F.<op>: dtype and shape as torch's in the same dtype, memory format too (4-d outputs, with
    memory_format); the output and every gradient within tol of torch's float64 result."""
    inputs = [x, w] + ([b] if b is not None else [])
    y = getattr(FC, op)(x, w, b, **kwargs)
    with torch.no_grad():
        y_torch = TORCH_OPS[op](x, w, b, **kwargs)
    assert y.dtype == dtype
    assert y.shape == y_torch.shape, f"output shape {tuple(y.shape)} != torch's {tuple(y_torch.shape)}"
    if memory_format and y.dim() == 4:
        same_memory_format(y, y_torch)
    g = make_grad(y.shape, grad, dtype, device=x.device)
    grads = torch.autograd.grad(y, inputs, g)
    ref_inputs = [t.detach().cpu().to(torch.float64).requires_grad_() for t in inputs]
    y_ref = TORCH_OPS[op](ref_inputs[0], ref_inputs[1], ref_inputs[2] if b is not None else None, **kwargs)
    ref_grads = torch.autograd.grad(y_ref, ref_inputs, g.cpu().to(torch.float64))
    assert_rel(y.cpu(), y_ref, dtype, "output", tol)
    for name, got, ref in zip(("grad_input", "grad_weight", "grad_bias"), grads, ref_grads):
        assert got.dtype == dtype, f"{name} dtype {got.dtype}"
        assert_rel(got.cpu(), ref, dtype, name, tol)
    return y


# ----------------------------------------------------------------------------------------------------
# Pooling: the CPU grid (tests/test_pool2d.py, reused by tests/test_triton.py, tests/test_triton_gpu.py
# and tests/test_cuda_gpu.py)

POOL_AXES = {
    "kernel": [(1, 1), (2, 2), (3, 3), (2, 3), (3, 1), (4, 4), (5, 2)],
    "stride": [None, 1, 2, 3, (1, 2), (2, 1)],
    "padding": [0, 1, 2, (1, 0), (0, 2)],
    "ceil_mode": [False, True],
    "layout": ["contiguous", "channels_last", "slice", "permuted", "expanded", "unbatched"],
    "N": [1, 2, 3],
    "C": [1, 3, 5],
    "HW": [(5, 5), (7, 6), (8, 9), (4, 11), (10, 7)],
    "grad": ["contiguous", "channels_last", "transposed", "none"],
}
MAX_POOL_AXES = dict(POOL_AXES, dilation=[1, 2, 3, (1, 2)], return_indices=[False, True])
AVG_POOL_AXES = dict(POOL_AXES, count_include_pad=[True, False], divisor_override=[None, 1, 3, 7])


def pool_spatial(case):
    """Input H, W: the case's base size, enlarged where the (dilated) window would not fit."""
    kh, kw = case["kernel"]
    dh, dw = pair(case.get("dilation", 1))
    ph, pw = pair(case["padding"])
    H, W = case["HW"]
    return max(H, dh * (kh - 1) + 1 - 2 * ph), max(W, dw * (kw - 1) + 1 - 2 * pw)


def pool_torch_accepts(kind):
    """Keeps the cases torch itself accepts (checked on a 'meta' tensor of the case's shape)."""

    def valid(case):
        H, W = pool_spatial(case)
        x = torch.empty(1, 1, H, W, device="meta")
        try:
            if kind == "max":
                F.max_pool2d(x, case["kernel"], case["stride"], case["padding"], case["dilation"], case["ceil_mode"])
            else:
                F.avg_pool2d(x, case["kernel"], case["stride"], case["padding"], case["ceil_mode"],
                             case["count_include_pad"], case["divisor_override"])
        except RuntimeError:
            return False
        return True

    return valid


MAX_POOL_CASES = sample_grid(MAX_POOL_AXES, n=170, seed=11, valid=pool_torch_accepts("max"))
AVG_POOL_CASES = sample_grid(AVG_POOL_AXES, n=150, seed=12, valid=pool_torch_accepts("avg"))

# Special values: ties, NaN, -inf. Overlapping windows with padding and ceil_mode, so that a special
# value is seen by several windows and some windows hang over the edge.
POOL_SPECIAL_CASES = [
    dict(kernel=k, stride=s, padding=p, dilation=d, ceil_mode=cm, layout=layout, N=2, C=3, HW=(7, 8),
         grad="contiguous", return_indices=True)
    for (k, s, p, d, cm) in [((3, 3), 1, 1, 1, False), ((2, 2), 2, 1, 1, True), ((3, 2), (2, 1), (1, 0), 2, True),
                             ((4, 4), 3, 2, 1, True)]
    for layout in ("contiguous", "channels_last")
]

# N = 0: an empty batch gives an empty output.
EMPTY_MAX_POOL_CASES = [
    dict(kernel=(3, 3), stride=2, padding=1, dilation=d, ceil_mode=cm, layout=layout, N=0, C=3, HW=(7, 6),
         grad="contiguous", return_indices=True)
    for d in (1, 2) for cm in (False, True) for layout in ("contiguous", "channels_last")]
EMPTY_AVG_POOL_CASES = [
    dict(kernel=(3, 2), stride=None, padding=1, ceil_mode=cm, count_include_pad=cip, divisor_override=None,
         layout=layout, N=0, C=3, HW=(7, 6), grad="contiguous")
    for cm in (False, True) for cip in (False, True) for layout in ("contiguous", "channels_last")]


def ties(shape, gen):
    """Values for make_pool_input: few distinct values, so windows hold equal maxima."""
    return torch.randint(0, 3, shape, generator=gen).to(torch.float64)


def nans(shape, gen):
    """Values for make_pool_input: normal, with NaN in ~15% of the places."""
    v = torch.randn(*shape, generator=gen, dtype=torch.float64)
    v[torch.rand(*shape, generator=gen) < 0.15] = float("nan")
    return v


def neg_infs(shape, gen):
    """Values for make_pool_input: 0, 1 and -inf (~60%), and whole windows of -inf in the corner."""
    v = torch.randint(0, 2, shape, generator=gen).to(torch.float64)
    v[torch.rand(*shape, generator=gen) < 0.6] = float("-inf")
    v[..., :3, :3] = float("-inf")  # whole windows of -inf
    return v


def make_pool_input(case, dtype, values=None, seed=0):
    """The case's input as a view (with the case's layout) of a leaf tensor that requires grad.

    values(shape, gen) -> float64 tensor overrides the default standard-normal values."""
    gen = torch.Generator().manual_seed(seed)
    values = values or (lambda shape, g: torch.randn(*shape, generator=g, dtype=torch.float64))
    N, C = case["N"], case["C"]
    H, W = pool_spatial(case)
    layout = case["layout"]
    if layout == "slice":
        base = values((N, 2 * C, H + 2, 2 * W), gen).to(dtype).requires_grad_()
        return base[:, ::2, 1:H + 1, 1::2]
    if layout == "permuted":
        base = values((W, C, H, N), gen).to(dtype).requires_grad_()
        return base.permute(3, 1, 2, 0)
    if layout == "expanded":
        base = values((1, C, H, W), gen).to(dtype).requires_grad_()
        return base.expand(N, C, H, W)
    if layout == "unbatched":
        return values((C, H, W), gen).to(dtype).requires_grad_()
    x = values((N, C, H, W), gen).to(dtype).requires_grad_()
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x


def max_pool_args(case):
    return dict(kernel_size=case["kernel"], stride=case["stride"], padding=case["padding"],
                dilation=case["dilation"], ceil_mode=case["ceil_mode"])


def avg_pool_args(case):
    return dict(kernel_size=case["kernel"], stride=case["stride"], padding=case["padding"],
                ceil_mode=case["ceil_mode"], count_include_pad=case["count_include_pad"],
                divisor_override=case["divisor_override"])


def assert_max_pool_forward_is_torchs(x, y, idx, kwargs, dtype):
    """y (and idx, unless None) of a max pool of x with kwargs: EQUAL to torch's in the same dtype from the
    same values, memory format included."""
    with torch.no_grad():
        y_t, idx_t = F.max_pool2d(x, **kwargs, return_indices=True)
    assert y.dtype == dtype and y.shape == y_t.shape
    same_memory_format(y, y_t)
    torch.testing.assert_close(y.detach(), y_t, rtol=0, atol=0, equal_nan=True, msg=lambda m: "output: " + m)
    if idx is not None:
        assert idx.dtype == torch.int64
        assert torch.equal(idx, idx_t), f"indices differ from torch's at {(idx != idx_t).nonzero()[:5].tolist()}"
        same_memory_format(idx, idx_t, "indices")


def check_max_pool(case, dtype, values=None, tol=None):
    """fastconv.functional.max_pool2d on the current backend vs torch: output, indices and memory format
    EQUAL to torch's in the same dtype; grad_input within tol of torch's float64 result."""
    x = make_pool_input(case, dtype, values)
    kwargs = max_pool_args(case)
    with_grad = case["grad"] != "none"
    ri = case["return_indices"]
    with torch.set_grad_enabled(with_grad):
        out = FC.max_pool2d(x, **kwargs, return_indices=ri)
    y, idx = out if ri else (out, None)
    if not ri:
        assert isinstance(out, torch.Tensor)
    assert_max_pool_forward_is_torchs(x, y, idx, kwargs, dtype)
    if not with_grad:
        assert not y.requires_grad
        return
    g = make_grad(y.shape, case["grad"], dtype)
    (gx,) = torch.autograd.grad(y, [x], g)
    xr = x.detach().to(torch.float64).requires_grad_()
    y_ref = F.max_pool2d(xr, **kwargs)
    (gx_ref,) = torch.autograd.grad(y_ref, [xr], g.to(torch.float64))
    assert_rel(gx, gx_ref, dtype, "grad_input", tol)


def check_avg_pool(case, dtype, values=None, tol=None):
    """fastconv.functional.avg_pool2d on the current backend vs torch: memory format as torch's; output
    and grad_input within tol of torch's float64 result."""
    x = make_pool_input(case, dtype, values)
    kwargs = avg_pool_args(case)
    with_grad = case["grad"] != "none"
    with torch.set_grad_enabled(with_grad):
        y = FC.avg_pool2d(x, **kwargs)
    with torch.no_grad():
        y_t = F.avg_pool2d(x, **kwargs)
    assert y.shape == y_t.shape and y.dtype == dtype
    same_memory_format(y, y_t)
    xr = x.detach().to(torch.float64).requires_grad_()
    y_ref = F.avg_pool2d(xr, **kwargs)
    assert_rel(y, y_ref, dtype, "output", tol)
    if not with_grad:
        assert not y.requires_grad
        return
    g = make_grad(y.shape, case["grad"], dtype)
    (gx,) = torch.autograd.grad(y, [x], g)
    (gx_ref,) = torch.autograd.grad(y_ref, [xr], g.to(torch.float64))
    assert_rel(gx, gx_ref, dtype, "grad_input", tol)


# ----------------------------------------------------------------------------------------------------
# torch.compile: one small model of fastconv.nn layers (tests/test_compile.py, tests/test_triton_gpu.py)


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            fnn.Conv2dReLU(3, 8, 3, padding=1),
            fnn.MaxPool2d(2),
            fnn.Conv2d(8, 8, 3, padding="same", groups=2, bias=False),
            fnn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
            fnn.Conv2d(8, 4, 2, padding="same", padding_mode="reflect"),
        )
        self.head = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


def forward_backward(fn, model, x):
    """fn(x) forward and backward; returns output, input grad and the grads of model's parameters."""
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    y = fn(x)
    y.square().sum().backward()
    return y.detach(), x.grad, {n: p.grad.clone() for n, p in model.named_parameters()}


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random running statistics and affine parameters in every BatchNorm (the zoo initializes them to
    mean 0, var 1, weight 1, bias 0, which a fold that forgets a term would still match)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model


def assert_net_close(got: torch.Tensor, ref: torch.Tensor, what: str = "output", tol: float = 1e-4) -> None:
    """Float32 tolerance for a whole network: the fold and fastconv's kernels change the rounding only."""
    scale = ref.detach().abs().max().item()
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol * scale, msg=lambda m: f"{what}: {m}")


# ----------------------------------------------------------------------------------------------------
# Adaptive pooling and the 1-d pools (issue #30): grids and checks shared by tests/test_pool_adaptive.py,
# tests/test_emu_pool_adaptive.py and tests/test_triton_pool_adaptive.py (each on its own backend).

ADAPTIVE_AXES = {
    # (1, 1) and 1: global pooling; None: the input's size; sizes above the input's: overlapping windows
    "output_size": [(1, 1), 1, (2, 3), 3, (4, None), (None, 2), (5, 7), (10, 12)],
    "layout": ["contiguous", "channels_last", "slice", "permuted", "expanded", "unbatched"],
    "N": [1, 2, 3],
    "C": [1, 3, 5, 40],  # 40: channels_last channel blocks of unequal width
    "HW": [(1, 1), (5, 5), (7, 6), (8, 9), (4, 11), (14, 14)],
    "grad": ["contiguous", "channels_last", "transposed", "none"],
}

POOL1D_AXES = {
    "kernel": [1, 2, 3, 4, 5],
    "stride": [None, 1, 2, 3],
    "padding": [0, 1, 2],
    "ceil_mode": [False, True],
    "layout": ["contiguous", "slice", "transposed", "unbatched"],
    "N": [1, 2, 3],
    "C": [1, 3, 5],
    "L": [5, 8, 11, 16],
    "grad": ["contiguous", "transposed", "none"],
}
MAX_POOL1D_AXES = dict(POOL1D_AXES, dilation=[1, 2, 3], return_indices=[False, True])
AVG_POOL1D_AXES = dict(POOL1D_AXES, count_include_pad=[True, False])


def max_pool1d_args(case):
    return dict(kernel_size=case["kernel"], stride=case["stride"], padding=case["padding"],
                dilation=case["dilation"], ceil_mode=case["ceil_mode"])


def avg_pool1d_args(case):
    return dict(kernel_size=case["kernel"], stride=case["stride"], padding=case["padding"],
                ceil_mode=case["ceil_mode"], count_include_pad=case["count_include_pad"])


def pool1d_torch_accepts(kind):
    """Keeps the 1-d cases torch itself accepts (on a 'meta' tensor of the case's shape)."""

    def valid(case):
        x = torch.empty(1, 1, case["L"], device="meta")
        try:
            if kind == "max":
                F.max_pool1d(x, **max_pool1d_args(case))
            else:
                F.avg_pool1d(x, **avg_pool1d_args(case))
        except RuntimeError:
            return False
        return True

    return valid


def make_adaptive_input(case, dtype, values=None, seed=0):
    """The adaptive case's (N, C, H, W) input in the case's layout (make_pool_input's layouts)."""
    return make_pool_input(dict(case, kernel=(1, 1), padding=0), dtype, values, seed)


def make_pool1d_input(case, dtype, values=None, seed=0):
    """The 1-d case's (N, C, L) input as a view (layout 'contiguous', 'slice', 'transposed': L strides C,
    'unbatched': (C, L)) of a leaf tensor that requires grad."""
    gen = torch.Generator().manual_seed(seed)
    values = values or (lambda shape, g: torch.randn(*shape, generator=g, dtype=torch.float64))
    N, C, L = case["N"], case["C"], case["L"]
    layout = case["layout"]
    if layout == "slice":
        return values((N, 2 * C, 2 * L + 1), gen).to(dtype).requires_grad_()[:, ::2, 1::2]
    if layout == "transposed":
        return values((N, L, C), gen).to(dtype).requires_grad_().transpose(1, 2)
    if layout == "unbatched":
        return values((C, L), gen).to(dtype).requires_grad_()
    return values((N, C, L), gen).to(dtype).requires_grad_()


def _grad_check(x, y, y_ref, xr, grad, dtype, tol):
    """x's gradient through y (fastconv) for a random grad_output of the given layout vs xr's through
    y_ref (torch in float64)."""
    g = make_grad(y.shape, grad, dtype)
    (gx,) = torch.autograd.grad(y, [x], g)
    (gx_ref,) = torch.autograd.grad(y_ref, [xr], g.to(torch.float64))
    assert_rel(gx, gx_ref, dtype, "grad_input", tol)


def check_pooling(ours, theirs, x, kwargs, dtype, grad, has_indices, tol=None, exact=False):
    """ours(x, **kwargs) (fastconv.functional) vs theirs (torch.nn.functional) on the current backend.

    Max pools (has_indices): the output and the indices (return_indices=True) EQUAL torch's in the same
    dtype from the same values; others (exact=False): the output within tol of torch's float64 result.
    Memory format as torch's; grad_input (grad != 'none') within tol of torch's float64 gradient."""
    with_grad = grad != "none"
    with torch.set_grad_enabled(with_grad):
        out = ours(x, **kwargs)
    with torch.set_grad_enabled(with_grad):  # torch's max_pool1d picks its kernel (and layout) by grad mode
        ref_same = theirs(x, **kwargs)
    ref_same = tuple(t.detach() for t in ref_same) if isinstance(ref_same, tuple) else ref_same.detach()
    y, idx = out if has_indices and kwargs.get("return_indices") else (out, None)
    ref_y = ref_same[0] if isinstance(ref_same, tuple) else ref_same
    assert isinstance(y, torch.Tensor) and y.shape == ref_y.shape and y.dtype == dtype
    same_memory_format(y, ref_y)
    xr = x.detach().to(torch.float64).requires_grad_()
    plain = {k: v for k, v in kwargs.items() if k != "return_indices"}
    y_ref = theirs(xr, **plain)
    if has_indices or exact:
        torch.testing.assert_close(y.detach(), ref_y, rtol=0, atol=0, equal_nan=True,
                                   msg=lambda m: "output: " + m)
    else:
        assert_rel(y, y_ref, dtype, "output", tol)
    if idx is not None:
        assert idx.dtype == torch.int64
        assert torch.equal(idx, ref_same[1]), \
            f"indices differ from torch's at {(idx != ref_same[1]).nonzero()[:5].tolist()}"
        same_memory_format(idx, ref_same[1], "indices")
    if not with_grad:
        assert not y.requires_grad
        return
    _grad_check(x, y, y_ref, xr, grad, dtype, tol)


def check_adaptive(case, dtype, kind, values=None, tol=None):
    """fastconv.functional.adaptive_{avg,max}_pool2d on the current backend vs torch (check_pooling)."""
    x = make_adaptive_input(case, dtype, values)
    if kind == "max":
        kwargs = dict(output_size=case["output_size"], return_indices=case.get("return_indices", True))
        check_pooling(FC.adaptive_max_pool2d, F.adaptive_max_pool2d, x, kwargs, dtype, case["grad"], True, tol)
    else:
        check_pooling(FC.adaptive_avg_pool2d, F.adaptive_avg_pool2d, x, dict(output_size=case["output_size"]),
                      dtype, case["grad"], False, tol)


def check_pool1d(case, dtype, kind, values=None, tol=None):
    """fastconv.functional.{max,avg,adaptive_avg}_pool1d on the current backend vs torch (check_pooling)."""
    x = make_pool1d_input(case, dtype, values)
    if kind == "max":
        kwargs = dict(max_pool1d_args(case), return_indices=case["return_indices"])
        check_pooling(FC.max_pool1d, F.max_pool1d, x, kwargs, dtype, case["grad"], True, tol)
    elif kind == "avg":
        check_pooling(FC.avg_pool1d, F.avg_pool1d, x, avg_pool1d_args(case), dtype, case["grad"], False, tol)
    else:
        check_pooling(FC.adaptive_avg_pool1d, F.adaptive_avg_pool1d, x, dict(output_size=case["output_size"]),
                      dtype, case["grad"], False, tol)


def check_cpu_wgrad_two_threads(x, w, dy, relu_y, stride, padding, dilation) -> None:
    """The cpu backend's weight and bias gradients (groups 1) against torch in float64, at 1 OpenMP thread
    and then three times at 2, bit for bit equal to the 1-thread result (the xdist workers otherwise run
    1 thread): kernels whose work split depends on the thread count show up as other bits."""
    from fastconv.backends import cpu as cpu_backend

    be = cpu_backend.CpuBackend()
    s, p, d = pair(stride), pair(padding), pair(dilation)

    def wgrad():
        return be.conv2d_wgrad(dy, x, w, relu_y, s, p, d, 1, True, True)

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = wgrad()
        torch.set_num_threads(2)
        runs = [wgrad() for _ in range(3)]
    finally:
        torch.set_num_threads(before)
    g = dy.double() if relu_y is None else dy.double() * (relu_y > 0)
    ref = torch.nn.grad.conv2d_weight(x.double(), w.shape, g, stride=s, padding=p, dilation=d)
    assert_rel(serial[0], ref, torch.float32, "grad_weight")
    assert_rel(serial[1], g.sum((0, 2, 3)), torch.float32, "grad_bias")
    for dw, db in runs:
        assert torch.equal(dw, serial[0]) and torch.equal(db, serial[1])
