"""fastconv.functional.conv_transpose2d / conv_transpose1d and fastconv.nn.ConvTranspose1d/2d against torch.

The grids (helpers.TRANSPOSED_AXES, TRANSPOSED1D_AXES) run forward and backward on the selected backend
and compare the output (and its memory format) and every gradient with torch's float64 result; they
include output_padding >= stride (allowed below the dilation), where the output has rows that no input
pixel reaches. Samples run again on the SIMT emulator and in Triton's interpreter. Errors,
torch.compile, opcheck, gradcheck, the nn modules (output_size) and convert() follow.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastconv
import fastconv.functional as FC
import fastconv.nn as fnn
from helpers import (REL_TOL, TRANSPOSED1D_AXES, TRANSPOSED_AXES, case_id, check_against_torch, covered,
                     make_transposed_case, sample_grid, transposed_valid)

VALID_2D, VALID_1D = transposed_valid(2), transposed_valid(1)
FP32_CASES = sample_grid(TRANSPOSED_AXES, n=90, seed=111, valid=VALID_2D)
FP64_CASES = sample_grid(TRANSPOSED_AXES, n=30, seed=112, valid=VALID_2D)
HALF_CASES = sample_grid(dict(TRANSPOSED_AXES, dtype=[torch.float16, torch.bfloat16]), n=24, seed=113,
                         valid=VALID_2D)
CASES_1D = sample_grid(TRANSPOSED1D_AXES, n=40, seed=114, valid=VALID_1D)


def _check(case, dtype):
    x, w, b, kwargs = make_transposed_case(case, dtype)
    return check_against_torch(case["op"], x, w, b, kwargs, dtype, case["grad"])


def test_grid_coverage():
    assert covered(FP32_CASES, TRANSPOSED_AXES) == {}
    assert covered(CASES_1D, TRANSPOSED1D_AXES) == {}


def test_grid_reaches_output_padding_beyond_stride():
    """output_padding >= stride (with a larger dilation): the case the dgrad mapping must slice for."""
    def beyond(case):
        s, op = case["stride"], case["output_padding"]
        s, op = ((s, s) if isinstance(s, int) else s), ((op, op) if isinstance(op, int) else op)
        return any(o >= si for o, si in zip(op, s))
    assert any(beyond(c) for c in FP32_CASES)


@pytest.mark.parametrize("case", FP32_CASES, ids=case_id)
def test_conv_transpose2d_float32(backend, case):
    _check(case, torch.float32)


@pytest.mark.parametrize("case", FP64_CASES, ids=case_id)
def test_conv_transpose2d_float64(backend, case):
    _check(case, torch.float64)


@pytest.mark.parametrize("case", HALF_CASES, ids=case_id)
def test_conv_transpose2d_half_precision(backend, case):
    case = dict(case)
    _check(case, case.pop("dtype"))


@pytest.mark.parametrize("case", CASES_1D, ids=case_id)
def test_conv_transpose1d(backend, case):
    _check(case, torch.float32)


@pytest.mark.parametrize("op,shape", [("conv_transpose2d", (0, 4, 5, 5)), ("conv_transpose1d", (0, 4, 5))])
def test_empty_batch(backend, op, shape):
    x = torch.randn(*shape, requires_grad=True)
    w = torch.randn(4, 3, *([3] * (len(shape) - 2)), requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    y = getattr(FC, op)(x, w, b, stride=2)
    assert y.shape == getattr(F, op)(x, w, b, stride=2).shape
    y.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))


# ----------------------------------------------------------------------------------------------------
# The other backends: the CUDA dgrad/forward/wgrad kernels on the SIMT emulator, Triton's in the interpreter

EMU_CASES = sample_grid(dict(TRANSPOSED_AXES, dtype=[torch.float32, torch.float64, torch.float16, torch.bfloat16],
                             layout=["contiguous", "cl_both", "cl_input", "unbatched"]), n=16, seed=115,
                        valid=VALID_2D)


@pytest.mark.emu
@pytest.mark.parametrize("order", ["forward", "reversed"])
@pytest.mark.parametrize("case", EMU_CASES, ids=case_id)
def test_conv_transpose2d_on_emulator(case, order):
    _C_emu = pytest.importorskip("fastconv._C_emu", reason="the SIMT emulator module is not built")
    case = dict(case)
    dtype = case.pop("dtype")
    _C_emu.set_thread_order(order)
    try:
        with fastconv.use_backend("cuda_emu"):
            _check(case, dtype)
    finally:
        _C_emu.set_thread_order("forward")


TRITON_CASES = sample_grid(dict(TRANSPOSED_AXES, layout=["contiguous", "cl_both", "unbatched"]), n=12, seed=116,
                           valid=VALID_2D)


@pytest.mark.parametrize("case", TRITON_CASES, ids=case_id)
def test_conv_transpose2d_on_triton_interpreter(case, triton_interpreted):
    _check(case, torch.float32)


@pytest.mark.parametrize("case", CASES_1D[:6], ids=case_id)
def test_conv_transpose1d_on_triton_interpreter(case, triton_interpreted):
    _check(case, torch.float32)


# ----------------------------------------------------------------------------------------------------
# Errors: each call is also an error in torch (checked first), and ours names the argument

X, W = torch.randn(2, 4, 5, 5), torch.randn(4, 3, 3, 3)
ERROR_CASES = [
    ("output_padding vs stride", dict(input=X, weight=W, output_padding=1), "output padding"),
    ("output_padding one dim", dict(input=X, weight=W, stride=2, output_padding=(1, 2)), "output padding"),
    ("negative output_padding", dict(input=X, weight=W, output_padding=-1), "output_padding"),
    ("channels", dict(input=torch.randn(2, 5, 5, 5), weight=W), "channels"),
    ("groups", dict(input=X, weight=W, groups=3), "groups"),
    ("groups zero", dict(input=X, weight=W, groups=0), "groups"),
    ("output too small", dict(input=X, weight=W, padding=5), "Output size"),
    ("negative padding", dict(input=X, weight=W, padding=-1), "padding"),
    ("padding string", dict(input=X, weight=W, padding="same"), "padding"),
    ("bias size", dict(input=X, weight=W, bias=torch.randn(4)), "bias"),
    ("weight rank", dict(input=X, weight=torch.randn(4, 3, 3)), "weight"),
    ("input rank", dict(input=torch.randn(4, 5, 5, 5, 5), weight=W), "input"),
    ("stride zero", dict(input=X, weight=W, stride=0), "stride"),
    ("dilation zero", dict(input=X, weight=W, dilation=0), "dilation"),
    ("stride length", dict(input=X, weight=W, stride=(1, 2, 3)), "stride"),
    ("zero height", dict(input=torch.randn(2, 4, 0, 5), weight=W), "input"),
    ("dtype", dict(input=X, weight=W.double()), "dtype"),
]


@pytest.mark.parametrize("name,kwargs,needle", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_errors_like_torch(name, kwargs, needle):
    with pytest.raises((RuntimeError, ValueError, TypeError)):
        F.conv_transpose2d(**kwargs)
    with pytest.raises((RuntimeError, ValueError, TypeError)) as info:
        FC.conv_transpose2d(**kwargs)
    assert needle in str(info.value) and "conv_transpose2d" in str(info.value)


def test_conv_transpose1d_errors_like_torch():
    x, w = torch.randn(2, 4, 5), torch.randn(4, 3, 3)
    for kwargs in (dict(output_padding=1), dict(stride=(1, 2)), dict(padding=4)):
        with pytest.raises(RuntimeError):
            F.conv_transpose1d(x, w, **kwargs)
        with pytest.raises(RuntimeError, match="conv_transpose1d"):
            FC.conv_transpose1d(x, w, **kwargs)
    with pytest.raises(RuntimeError):
        F.conv_transpose1d(torch.randn(5), w)
    with pytest.raises(RuntimeError, match="input"):
        FC.conv_transpose1d(torch.randn(5), w)


# ----------------------------------------------------------------------------------------------------
# torch.compile, opcheck, gradcheck


def test_compile_fullgraph():
    torch._dynamo.reset()
    model = nn.Sequential(fnn.ConvTranspose2d(4, 8, 4, stride=2, padding=1), nn.ReLU(),
                          fnn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1, groups=4))
    x = torch.randn(2, 4, 5, 5)
    ref = model(x)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    torch.testing.assert_close(y, ref)
    y.sum().backward()
    xc = x.to(memory_format=torch.channels_last)
    yc = compiled(xc)
    torch.testing.assert_close(yc, model(xc))
    assert yc.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("op", ["conv_transpose2d", "conv_transpose1d"])
@pytest.mark.parametrize("cl", [False, True])
def test_opcheck(op, cl):
    nd = 2 if op.endswith("2d") else 1
    x = torch.randn(2, 4, *([5] * nd))
    if cl:
        x = x.to(memory_format=torch.channels_last) if nd == 2 else x.transpose(1, 2).contiguous().transpose(1, 2)
    x.requires_grad_()
    w = torch.randn(4, 3, *([3] * nd), requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    args = (x, w, b, [2] * nd, [1] * nd, [1] * nd, [1] * nd, 2)
    torch.library.opcheck(getattr(torch.ops.fastconv, op).default, args)


@pytest.mark.parametrize("kwargs", [dict(stride=2, padding=1, output_padding=1),
                                    dict(groups=2, dilation=2, stride=(1, 3), output_padding=(1, 2))])
def test_gradcheck(kwargs):
    x = torch.randn(2, 4, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3 * kwargs.get("groups", 1), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: FC.conv_transpose2d(*t, **kwargs), (x, w, b))


# ----------------------------------------------------------------------------------------------------
# nn modules, convert()


def test_module_output_size_and_state_dict():
    torch.manual_seed(3)
    ref = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, groups=2)
    ours = fnn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, groups=2)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 4, 7, 7)
    for size in (None, [13, 13], [14, 14], [2, 6, 14, 13]):
        torch.testing.assert_close(ours(x, output_size=size), ref(x, output_size=size))
    with pytest.raises(ValueError):
        ref(x, output_size=[20, 20])
    with pytest.raises(ValueError):
        ours(x, output_size=[20, 20])
    ref1, ours1 = nn.ConvTranspose1d(4, 2, 5, stride=3), fnn.ConvTranspose1d(4, 2, 5, stride=3)
    ours1.load_state_dict(ref1.state_dict())
    x1 = torch.randn(2, 4, 9)
    torch.testing.assert_close(ours1(x1, output_size=[29]), ref1(x1, output_size=[29]))
    torch.testing.assert_close(ours1(x1[0]), ref1(x1[0]))  # unbatched


def test_convert_decoder():
    """A DCGAN-style decoder: convert() swaps every ConvTranspose2d and the result computes the same."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.ConvTranspose2d(16, 8, 4, 1, 0, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.ConvTranspose2d(8, 4, 4, 2, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.ConvTranspose2d(4, 3, 4, 2, 1), nn.Tanh()).eval()
    z = torch.randn(2, 16, 1, 1)
    ref = model(z)
    fastconv.convert(model)
    assert all(type(m) is fnn.ConvTranspose2d for m in model if isinstance(m, nn.ConvTranspose2d))
    torch.testing.assert_close(model(z), ref, rtol=REL_TOL[torch.float32] * 10, atol=1e-5)
