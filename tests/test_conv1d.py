"""fastconv.functional.conv1d / conv1d_relu and fastconv.nn.Conv1d against torch.

The grid (helpers.CONV1D_AXES) runs forward and backward on the selected backend (conftest `backend`)
and compares the output and every gradient with torch's float64 result. Samples of it run again on the
SIMT emulator (the CUDA kernels) and in Triton's interpreter. Errors, torch.compile, opcheck,
gradcheck, the nn module (padding modes, state_dict) and convert() follow.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastconv
import fastconv.functional as FC
import fastconv.nn as fnn
from helpers import (CONV1D_AXES, REL_TOL, case_id, check_against_torch, conv1d_valid, covered, make_conv1d_case,
                     sample_grid)

FP32_CASES = sample_grid(CONV1D_AXES, n=90, seed=101, valid=conv1d_valid)
FP64_CASES = sample_grid(CONV1D_AXES, n=30, seed=102, valid=conv1d_valid)
HALF_CASES = sample_grid(dict(CONV1D_AXES, dtype=[torch.float16, torch.bfloat16]), n=24, seed=103,
                         valid=conv1d_valid)


def _check(case, dtype, device="cpu"):
    x, w, b, kwargs = make_conv1d_case(case, dtype, device=device)
    return check_against_torch(case["op"], x, w, b, kwargs, dtype, case["grad"])


def test_grid_coverage():
    assert covered(FP32_CASES, CONV1D_AXES) == {}


@pytest.mark.parametrize("case", FP32_CASES, ids=case_id)
def test_conv1d_float32(backend, case):
    _check(case, torch.float32)


@pytest.mark.parametrize("case", FP64_CASES, ids=case_id)
def test_conv1d_float64(backend, case):
    _check(case, torch.float64)


@pytest.mark.parametrize("case", HALF_CASES, ids=case_id)
def test_conv1d_half_precision(backend, case):
    case = dict(case)
    _check(case, case.pop("dtype"))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_output_stride_order_follows_input(backend, layout):
    """A (N, C, L) input with strides (L*C, 1, C) - the transpose of a sequence model's (N, L, C) - runs on
    the channels_last kernels and gives an output with the same stride order, so transposing it back
    to (N, L, K) is free (torch returns a contiguous output there; the values are the same)."""
    case = dict(op="conv1d", kernel=3, stride=1, padding=1, dilation=1, channels="c3", bias=True, layout=layout,
                N=2, L=9, grad="contiguous")
    x, w, b, kwargs = make_conv1d_case(case, torch.float32)
    y = FC.conv1d(x, w, b, **kwargs)
    if layout == "channels_last":
        assert y.stride() == (y.shape[2] * y.shape[1], 1, y.shape[1])
        assert y.transpose(1, 2).is_contiguous()
    else:
        assert y.is_contiguous()


def test_empty_batch(backend):
    x = torch.randn(0, 4, 9, requires_grad=True)
    w = torch.randn(6, 2, 3, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    y = FC.conv1d(x, w, b, groups=2, padding=1)
    assert y.shape == (0, 6, 9)
    y.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))


# ----------------------------------------------------------------------------------------------------
# The other backends: the CUDA kernels on the SIMT emulator, the Triton kernels in the interpreter

EMU_CASES = sample_grid(dict(CONV1D_AXES, dtype=[torch.float32, torch.float64, torch.float16, torch.bfloat16],
                             layout=["contiguous", "channels_last", "unbatched"]), n=16, seed=104,
                        valid=conv1d_valid)


@pytest.mark.emu
@pytest.mark.parametrize("order", ["forward", "reversed"])
@pytest.mark.parametrize("case", EMU_CASES, ids=case_id)
def test_conv1d_on_emulator(case, order):
    _C_emu = pytest.importorskip("fastconv._C_emu", reason="the SIMT emulator module is not built")
    case = dict(case)
    dtype = case.pop("dtype")
    _C_emu.set_thread_order(order)
    try:
        with fastconv.use_backend("cuda_emu"):
            _check(case, dtype)
    finally:
        _C_emu.set_thread_order("forward")


TRITON_CASES = sample_grid(dict(CONV1D_AXES, layout=["contiguous", "channels_last", "unbatched"]), n=12,
                           seed=105, valid=conv1d_valid)


@pytest.mark.parametrize("case", TRITON_CASES, ids=case_id)
def test_conv1d_on_triton_interpreter(case, triton_interpreted):
    _check(case, torch.float32)


# ----------------------------------------------------------------------------------------------------
# Errors: each call is also an error in torch (checked first), and ours names the argument


def _w(*shape):
    return torch.randn(*shape)


ERROR_CASES = [
    ("input rank", dict(input=torch.randn(2, 4, 10, 1), weight=_w(6, 4, 3)), "input"),
    ("input rank 1", dict(input=torch.randn(10), weight=_w(6, 4, 3)), "input"),
    ("weight rank", dict(input=torch.randn(2, 4, 10), weight=_w(6, 4, 3, 1)), "weight"),
    ("channels", dict(input=torch.randn(2, 5, 10), weight=_w(6, 4, 3)), "channels"),
    ("stride length", dict(input=torch.randn(2, 4, 10), weight=_w(6, 4, 3), stride=(1, 2)), "stride"),
    ("stride zero", dict(input=torch.randn(2, 4, 10), weight=_w(6, 4, 3), stride=0), "stride"),
    ("same strided", dict(input=torch.randn(2, 4, 10), weight=_w(6, 4, 3), padding="same", stride=2), "same"),
    ("bad padding string", dict(input=torch.randn(2, 4, 10), weight=_w(6, 4, 3), padding="full"), "padding"),
    ("negative padding", dict(input=torch.randn(2, 4, 10), weight=_w(6, 4, 3), padding=-1), "padding"),
    ("groups", dict(input=torch.randn(2, 4, 10), weight=_w(6, 4, 3), groups=4), "groups"),
    ("groups zero", dict(input=torch.randn(2, 4, 10), weight=_w(6, 4, 3), groups=0), "groups"),
    ("kernel too big", dict(input=torch.randn(2, 4, 1), weight=_w(6, 4, 3)), "Kernel size"),
    ("bias size", dict(input=torch.randn(2, 4, 10), weight=_w(6, 4, 3), bias=torch.randn(5)), "bias"),
    ("dtype", dict(input=torch.randn(2, 4, 10), weight=_w(6, 4, 3).double()), "dtype"),
    ("integer input", dict(input=torch.ones(2, 4, 10, dtype=torch.int32), weight=_w(6, 4, 3)), "input"),
    ("zero length", dict(input=torch.randn(2, 4, 0), weight=_w(6, 4, 3)), "input"),
]


@pytest.mark.parametrize("name,kwargs,needle", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_errors_like_torch(name, kwargs, needle):
    with pytest.raises((RuntimeError, ValueError, TypeError, NotImplementedError)):
        F.conv1d(**kwargs)
    with pytest.raises((RuntimeError, ValueError, TypeError)) as info:
        FC.conv1d(**kwargs)
    assert needle in str(info.value) and "conv1d" in str(info.value)


# ----------------------------------------------------------------------------------------------------
# torch.compile, opcheck, gradcheck


def test_compile_fullgraph():
    torch._dynamo.reset()
    model = nn.Sequential(fnn.Conv1dReLU(4, 8, 5, padding=2), fnn.Conv1d(8, 8, 3, groups=8, stride=2),
                          fnn.Conv1d(8, 3, 1))
    x = torch.randn(2, 4, 33)
    ref = model(x)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    torch.testing.assert_close(y, ref)
    y.sum().backward()
    xt = x.transpose(1, 2).contiguous().transpose(1, 2)  # the channels_last-like stride order: a recompile
    torch.testing.assert_close(compiled(xt), model(xt))


@pytest.mark.parametrize("op", ["conv1d", "conv1d_relu"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck(op, layout):
    case = dict(op=op, kernel=3, stride=2, padding=1, dilation=2, channels="g2", bias=True, layout=layout, N=2,
                L=11, grad="contiguous")
    x, w, b, kw = make_conv1d_case(case, torch.float32)
    x = x.detach().requires_grad_()  # a leaf with the case's strides
    args = (x, w, b, [kw["stride"]], [kw["padding"]], [kw["dilation"]], kw["groups"])
    torch.library.opcheck(getattr(torch.ops.fastconv, op).default, args)


@pytest.mark.parametrize("kwargs", [dict(stride=2, padding=1), dict(groups=3, dilation=2, padding="same")])
def test_gradcheck(kwargs):
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 3 // kwargs.get("groups", 1), 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: FC.conv1d(*t, **kwargs), (x, w, b))
    assert torch.autograd.gradcheck(lambda *t: FC.conv1d_relu(*t, **kwargs), (x, w, b))


# ----------------------------------------------------------------------------------------------------
# nn.Conv1d, convert()


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
def test_module_matches_torch(padding_mode):
    torch.manual_seed(1)
    ref = nn.Conv1d(4, 6, 3, padding=2, dilation=2, groups=2, padding_mode=padding_mode)
    ours = fnn.Conv1d(4, 6, 3, padding=2, dilation=2, groups=2, padding_mode=padding_mode)
    ours.load_state_dict(ref.state_dict())
    assert set(ours.state_dict()) == set(ref.state_dict())
    x = torch.randn(2, 4, 13)
    torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(ours(x[0]), ref(x[0]))  # unbatched


def test_convert_fuses_conv1d_relu_and_keeps_state_dict():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv1d(3, 8, 5, padding="same"), nn.ReLU(), nn.Conv1d(8, 8, 3, groups=8), nn.GELU(),
                          nn.Conv1d(8, 2, 1))
    x = torch.randn(2, 3, 20)
    ref, keys = model(x), set(model.state_dict())
    fastconv.convert(model)
    assert type(model[0]) is fnn.Conv1dReLU and isinstance(model[1], nn.Identity)
    assert type(model[2]) is fnn.Conv1d and type(model[4]) is fnn.Conv1d
    assert set(model.state_dict()) == keys
    torch.testing.assert_close(model(x), ref, rtol=REL_TOL[torch.float32] * 10, atol=1e-5)
