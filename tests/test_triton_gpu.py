"""The 'triton' backend on a CUDA GPU: the full convolution and pooling grids in float32, float16 and
bfloat16, torch.compile(fullgraph=True) with the backend, and the autotuned launch path.

Skipped without a CUDA GPU (tests/test_triton.py runs the same kernels in Triton's interpreter on the
CPU). Run when a GPU is available:  pytest tests/test_triton_gpu.py -q

Error bounds. float16/bfloat16 (and float32 with TF32) cannot be held to a fixed bound against float64
the way the CPU tests are: the error grows with the reduction length and the operand rounding. As the
house rules say, they are bounded relative to cuDNN's own error: for each output and gradient,
    err(ours)  = rel_err(triton result, reference),  err(cudnn) = rel_err(torch/cuDNN result, reference)
with the reference torch's float32 result (float64 for float32 inputs) from the same rounded inputs,
and  err(ours) <= RATIO * err(cudnn) + FLOOR[dtype]. float32 with TF32 off must meet helpers.REL_TOL.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs a CUDA GPU: the triton backend's GPU tests (the interpreter tests "
                                        "are tests/test_triton.py)")]

triton = pytest.importorskip("triton", reason="Triton is not installed (pip install 'fastconv[triton]')")

import fastconv  # noqa: E402
import fastconv.functional as FC  # noqa: E402
from helpers import (AVG_POOL_AXES, CONV_AXES, CONV_CHANNELS, MAX_POOL_AXES, REL_TOL, TRITON_AXES,  # noqa: E402
                     TRITON_CHANNELS, SmallNet, assert_rel, avg_pool_args, case_id, conv_valid, forward_backward,
                     make_conv_case, make_grad, make_pool_input, max_pool_args, pool_torch_accepts, rel_err,
                     same_memory_format, sample_grid, torch_conv_op)

DEVICE = "cuda"
RATIO = 2.0
FLOOR = {torch.float16: 2e-4, torch.bfloat16: 2e-3, torch.float32: 2e-5}

# The interpreter grid's channel configs (every kernel path), test_conv2d's, and layer-sized ones.
CHANNELS = {**CONV_CHANNELS, **TRITON_CHANNELS,
            "c64k128": (64, 128, 1), "c256k64": (256, 64, 1), "c96k80": (96, 80, 1), "g32": (128, 128, 32),
            "dw64": (64, 64, 64), "dw96": (96, 96, 96)}
AXES = dict(TRITON_AXES, channels=list(CHANNELS),
            layout=["contiguous", "cl_input", "cl_weight", "cl_both", "slice", "unbatched"],
            kernel=CONV_AXES["kernel"], stride=CONV_AXES["stride"], padding=CONV_AXES["padding"],
            dilation=CONV_AXES["dilation"], N=[1, 2, 3], HW=[(5, 5), (7, 9), (8, 6), (11, 4), (6, 13), (16, 16)])
CASES = {dt: sample_grid(AXES, n=120, seed=61 + i, valid=conv_valid)
         for i, dt in enumerate((torch.float32, torch.float16, torch.bfloat16))}


@pytest.fixture(autouse=True)
def triton_on_cuda(monkeypatch):
    """The triton backend, the heuristic config (autotuning every grid geometry would compile each of
    the configs for each; test_autotuned_launch covers the tuner), TF32 off unless a test turns it on."""
    monkeypatch.setenv("FASTCONV_AUTOTUNE", "0")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    with triton.knobs.runtime.scope():
        triton.knobs.runtime.interpret = False
        with fastconv.use_backend("triton"):
            yield


def _conv_results(case, dtype, fn, channels):
    """(output, grad_input, grad_weight[, grad_bias]) of fn on the case's tensors (on the GPU)."""
    x, w, b, kwargs = make_conv_case(case, dtype, channels=channels, device=DEVICE)
    y = fn(x, w, b, **kwargs)
    inputs = [t for t in (x, w, b) if t is not None]
    g = make_grad(y.shape, case["grad"], dtype, device=DEVICE)
    return [y.detach(), *torch.autograd.grad(y, inputs, g)], (x, w, b, kwargs, g)


def _reference(x, w, b, kwargs, g, op, dtype):
    """torch on the GPU in float32 (float64 for float32 inputs) from the same rounded values."""
    ref_t = torch.float64 if dtype == torch.float32 else torch.float32
    leaves = [t.detach().to(ref_t).requires_grad_() for t in (x, w, b) if t is not None]
    y = torch_conv_op(op)(leaves[0], leaves[1], leaves[2] if b is not None else None, **kwargs)
    return [y.detach(), *torch.autograd.grad(y, leaves, g.to(ref_t))]


NAMES = ("output", "grad_input", "grad_weight", "grad_bias")


def check_conv_gpu(case, dtype, tf32=False, channels=CHANNELS):
    torch.backends.cudnn.allow_tf32 = tf32
    ours, (x, w, b, kwargs, g) = _conv_results(case, dtype, getattr(FC, case["op"]), channels)
    theirs, _ = _conv_results(case, dtype, torch_conv_op(case["op"]), channels)  # cuDNN, same inputs
    ref = _reference(x, w, b, kwargs, g, case["op"], dtype)
    same_memory_format(ours[0], theirs[0])
    for name, o, t, r in zip(NAMES, ours, theirs, ref):
        assert o.dtype == dtype, f"{name}: dtype {o.dtype}"
        err, err_cudnn = rel_err(o, r), rel_err(t, r)
        if dtype == torch.float32 and not tf32:
            assert err <= REL_TOL[torch.float32], f"{name}: relative error {err:.2e} (cuDNN {err_cudnn:.2e})"
        else:
            bound = RATIO * err_cudnn + FLOOR[dtype]
            assert err <= bound, f"{name}: relative error {err:.2e} > {bound:.2e} (cuDNN's {err_cudnn:.2e}, {dtype})"


@pytest.mark.parametrize("case", CASES[torch.float32], ids=case_id)
def test_conv_float32(case):
    check_conv_gpu(case, torch.float32)


@pytest.mark.parametrize("case", CASES[torch.float32][::4], ids=case_id)
def test_conv_float32_tf32(case):
    """TF32 allowed (cudnn.allow_tf32, torch's default): our tl.dot uses TF32 as cuDNN does."""
    check_conv_gpu(case, torch.float32, tf32=True)


@pytest.mark.parametrize("case", CASES[torch.float16], ids=case_id)
def test_conv_float16(case):
    check_conv_gpu(case, torch.float16)


@pytest.mark.parametrize("case", CASES[torch.bfloat16], ids=case_id)
def test_conv_bfloat16(case):
    check_conv_gpu(case, torch.bfloat16)


# ResNet-50-sized layers (channels_last, the tensor-core path with full tiles) in every dtype
RESNET_LAYERS = [(64, 64, 56, 1, 1), (64, 256, 56, 1, 1), (128, 128, 28, 3, 2), (256, 1024, 14, 1, 1),
                 (512, 512, 7, 3, 1), (3, 64, 112, 7, 2)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("layer", RESNET_LAYERS, ids=lambda l: f"c{l[0]}k{l[1]}h{l[2]}r{l[3]}s{l[4]}")
def test_resnet_layers(layer, dtype):
    C, K, H, R, u = layer
    case = dict(op="conv2d_relu", kernel=(R, R), stride=u, padding=R // 2, dilation=1, channels="layer",
                bias=True, layout="cl_both", N=4, HW=(H, H), grad="channels_last")
    check_conv_gpu(case, dtype, tf32=dtype == torch.float32, channels=dict(CHANNELS, layer=(C, K, 1)))


# ----------------------------------------------------------------------------------------------------
# Pooling: bitwise equal to torch's CUDA kernels for max (values and indices), bounded for avg


def _on_cuda(case, dtype, values=None):
    x = make_pool_input(case, dtype, values)
    base = x._base if x._base is not None else x
    base_cuda = base.detach().to(DEVICE).requires_grad_()
    # rebuild the same view on the GPU
    view = base_cuda.as_strided(x.shape, x.stride(), x.storage_offset() - base.storage_offset())
    return view, base_cuda


POOL_MAX = sample_grid(MAX_POOL_AXES, n=80, seed=71, valid=pool_torch_accepts("max"))
POOL_AVG = sample_grid(AVG_POOL_AXES, n=80, seed=72, valid=pool_torch_accepts("avg"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", POOL_MAX, ids=case_id)
def test_max_pool2d(case, dtype):
    x, _ = _on_cuda(case, dtype)
    kw = max_pool_args(case)
    y, idx = FC.max_pool2d(x, **kw, return_indices=True)
    y_t, idx_t = F.max_pool2d(x, **kw, return_indices=True)
    torch.testing.assert_close(y, y_t, rtol=0, atol=0)
    assert torch.equal(idx, idx_t)
    same_memory_format(y, y_t)
    g = make_grad(y.shape, "contiguous" if case["grad"] == "none" else case["grad"], dtype).to(DEVICE)
    (gx,) = torch.autograd.grad(y, [x], g)
    xr = x.detach().double().requires_grad_()  # same values: the same maxima and indices as the input's
    (gx_r,) = torch.autograd.grad(F.max_pool2d(xr, **kw), [xr], g.double())
    assert_rel(gx, gx_r, dtype, "grad_input")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", POOL_AVG, ids=case_id)
def test_avg_pool2d(case, dtype):
    x, _ = _on_cuda(case, dtype)
    kw = avg_pool_args(case)
    y = FC.avg_pool2d(x, **kw)
    y_t = F.avg_pool2d(x, **kw)
    xr = x.detach().double().requires_grad_()
    y_r = F.avg_pool2d(xr, **kw)
    same_memory_format(y, y_t)
    g = make_grad(y.shape, "contiguous" if case["grad"] == "none" else case["grad"], dtype).to(DEVICE)
    (gx,) = torch.autograd.grad(y, [x], g)
    (gx_t,) = torch.autograd.grad(y_t, [x], g)
    (gx_r,) = torch.autograd.grad(y_r, [xr], g.double())
    for name, o, t, r in (("output", y, y_t, y_r), ("grad_input", gx, gx_t, gx_r)):
        err, err_t = rel_err(o, r), rel_err(t, r)
        assert err <= max(REL_TOL[dtype], RATIO * err_t), f"{name}: {err:.2e} (torch {err_t:.2e})"


# ----------------------------------------------------------------------------------------------------
# Autotuning, torch.compile


def test_autotuned_launch(monkeypatch):
    """FASTCONV_AUTOTUNE=1: the autotuned kernels (pruned configs, keyed on geometry) give the same results
    within tolerance; a second batch size with the same geometry reuses the tuned config."""
    monkeypatch.setenv("FASTCONV_AUTOTUNE", "1")
    from fastconv.triton import kernels

    k = kernels().conv2d
    for N in (4, 8):
        case = dict(op="conv2d_relu", kernel=(3, 3), stride=1, padding=1, dilation=1, channels="c64k128",
                    bias=True, layout="cl_both", N=N, HW=(16, 16), grad="channels_last")
        check_conv_gpu(case, torch.float16)
    keys = list(k._conv2d_fwd_tuned.cache)
    assert len(keys) == 1, f"batch size must not be part of the tuning key: {keys}"


def test_compile_fullgraph():
    """torch.compile(fullgraph=True) of fastconv layers on the triton backend: no graph break, eager's results."""
    import torch._dynamo

    torch._dynamo.reset()
    model = SmallNet().to(DEVICE)
    x = torch.randn(2, 3, 16, 16, device=DEVICE).contiguous(memory_format=torch.channels_last)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    y_eager, gx_eager, grads_eager = forward_backward(model, model, x)
    compiled = torch.compile(model, fullgraph=True)
    y_c, gx_c, grads_c = forward_backward(compiled, model, x)
    tol = 1e-5
    assert rel_err(y_c, y_eager) <= tol and rel_err(gx_c, gx_eager) <= tol
    for name in grads_eager:
        assert rel_err(grads_c[name], grads_eager[name]) <= tol, name


def test_autocast_cuda():
    """Under torch.autocast('cuda') conv2d runs the fp16 kernels and pooling keeps its input dtype."""
    x = torch.randn(2, 8, 16, 16, device=DEVICE).contiguous(memory_format=torch.channels_last)
    w = torch.randn(16, 8, 3, 3, device=DEVICE)
    with torch.autocast("cuda", dtype=torch.float16):
        y = FC.conv2d_relu(x, w, None, padding=1)
        y_t = torch.relu(F.conv2d(x, w, None, padding=1))
        p = FC.max_pool2d(y, 2)
    assert y.dtype == y_t.dtype == torch.float16 and p.dtype == torch.float16
    assert rel_err(y, y_t) <= 2e-3
