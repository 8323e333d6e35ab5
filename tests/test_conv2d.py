"""fastconv.functional.conv2d / conv2d_relu against torch, over parameter grids.

Each case runs forward and backward (random grad_output) through fastconv on the selected backend
and compares the output and every gradient (input, weight, bias) with torch's float64 result from
the same inputs: ||ours - ref|| / ||ref|| <= REL_TOL[dtype]. The output's memory format must be
torch's (channels_last exactly when torch's output is).

The grid's axes and its float32 sample (shared with tests/test_cuda_gpu.py) are in tests/helpers.py
(CONV_AXES, CONV_FP32_CASES), with the case builder and the check. The full product of the axes is far
too big to run; `sample_grid` draws a deterministic sample that uses every value of every axis at least
once (test_grid_coverage checks that).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastconv.functional as FC
from helpers import (CONV_AXES, CONV_FP32_CASES, REL_TOL, assert_rel, case_id, check_conv_case, conv_valid, covered,
                     make_conv_case, make_grad, same_memory_format, sample_grid, torch_conv_op)

FP64_CASES = sample_grid(CONV_AXES, n=50, seed=2, valid=conv_valid)
HALF_AXES = dict(CONV_AXES, dtype=[torch.float16, torch.bfloat16])
HALF_CASES = sample_grid(HALF_AXES, n=40, seed=3, valid=conv_valid)


@pytest.mark.parametrize("case", CONV_FP32_CASES, ids=case_id)
def test_conv2d_float32(backend, case):
    check_conv_case(case, torch.float32)


@pytest.mark.parametrize("case", FP64_CASES, ids=case_id)
def test_conv2d_float64(backend, case):
    check_conv_case(case, torch.float64)


@pytest.mark.parametrize("case", HALF_CASES, ids=case_id)
def test_conv2d_half_precision(backend, case):
    """float16/bfloat16 are accepted on the CPU (computed in float32, rounded once): a loose bound
    against torch's float64 result from the same (already rounded) inputs."""
    case = dict(case)
    dtype = case.pop("dtype")
    check_conv_case(case, dtype)


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
    check_conv_case(case, torch.float32)
    x, w, b, kwargs = make_conv_case(case, torch.float32)
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
    x, w, b, kwargs = make_conv_case(case, torch.float32)
    x, w, b = x.detach(), w.detach(), b.detach()
    want = requires.split("+")
    named = {"input": x, "weight": w, "bias": b}
    for k in want:
        named[k].requires_grad_()
    y = getattr(FC, op)(x, w, b, **kwargs)
    g = make_grad(y.shape, "contiguous", torch.float32)
    grads = torch.autograd.grad(y, [named[k] for k in want], g)
    ref = {k: v.double().requires_grad_() for k, v in named.items()}
    y_ref = torch_conv_op(op)(ref["input"], ref["weight"], ref["bias"], **kwargs)
    ref_grads = torch.autograd.grad(y_ref, [ref[k] for k in want], g.double())
    for k, got, r in zip(want, grads, ref_grads):
        assert_rel(got, r, torch.float32, f"grad {k}")


def test_conv2d_no_grad_output(backend):
    """Under no_grad (inference) the result is the same and carries no graph."""
    case = dict(op="conv2d", kernel=(3, 3), stride=2, padding=1, dilation=1, channels="c3", bias=True,
                layout="cl_input", N=2, HW=(9, 8), grad="contiguous")
    x, w, b, kwargs = make_conv_case(case, torch.float32)
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
    assert covered(CONV_FP32_CASES, CONV_AXES) == {}
    assert len(CONV_FP32_CASES) >= 200
    # 'same' with even kernels (asymmetric padding) is in the grid, with and without dilation.
    even_same = [c for c in CONV_FP32_CASES if c["padding"] == "same" and any(k % 2 == 0 for k in c["kernel"])]
    assert len(even_same) >= 5
    assert REL_TOL[torch.float32] == 1e-5


@pytest.mark.parametrize("layout", ["contiguous", "cl_both"])
@pytest.mark.parametrize("op", ["conv2d", "conv2d_relu"])
def test_conv2d_expanded_grad_output(backend, op, layout):
    """y.sum().backward() hands the backward an expanded grad_output (all strides 0)."""
    case = dict(op=op, kernel=(3, 2), stride=(2, 1), padding=1, dilation=1, channels="g2", bias=True,
                layout=layout, N=2, HW=(7, 6), grad="contiguous")
    x, w, b, kwargs = make_conv_case(case, torch.float32)
    y = getattr(FC, op)(x, w, b, **kwargs)
    grads = torch.autograd.grad(y.sum(), [x, w, b])
    ref = [t.detach().double().requires_grad_() for t in (x, w, b)]
    ref_grads = torch.autograd.grad(torch_conv_op(op)(*ref, **kwargs).sum(), ref)
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
    ref = torch_conv_op(op)(x, w, b, padding=1)
    same_memory_format(ours, ref)
    assert_rel(ours, ref, torch.float32)
