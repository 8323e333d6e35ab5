"""fastconv's adaptive and 1-d pools against torch: adaptive_avg_pool2d (global average pooling as its (1, 1)
case), adaptive_max_pool2d, adaptive_avg_pool1d, max_pool1d, avg_pool1d.

Over parameter grids (tests/helpers.py: ADAPTIVE_AXES, MAX_POOL1D_AXES, AVG_POOL1D_AXES): outputs and input
gradients vs torch's float64 result with per-dtype tolerances, max values and indices EQUAL to torch's
(also with ties and NaN), memory format as torch's; gradcheck, opcheck, torch.compile(fullgraph=True),
error cases (each asserting torch raises too), the nn modules (state_dict both ways) and convert().
The CPU kernels also: every ISA level, more threads than cores, and the path each layout takes.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastconv
import fastconv.functional as FC
import fastconv.nn as fnn
from helpers import (ADAPTIVE_AXES, AVG_POOL1D_AXES, MAX_POOL1D_AXES, case_id, check_adaptive, check_pool1d,
                     covered, make_adaptive_input, nans, pool1d_torch_accepts, sample_grid, ties)

ADAPTIVE_CASES = sample_grid(ADAPTIVE_AXES, n=60, seed=31)
ADAPTIVE_CASES_64 = sample_grid(ADAPTIVE_AXES, n=16, seed=32)
ADAPTIVE_HALF = sample_grid(dict(ADAPTIVE_AXES, dtype=[torch.float16, torch.bfloat16]), n=10, seed=33)
MAX1D_CASES = sample_grid(MAX_POOL1D_AXES, n=60, seed=34, valid=pool1d_torch_accepts("max"))
AVG1D_CASES = sample_grid(AVG_POOL1D_AXES, n=50, seed=35, valid=pool1d_torch_accepts("avg"))
ADAPTIVE1D_CASES = sample_grid(dict(POOL1D_AXES_ADAPTIVE := {
    "output_size": [1, 2, 3, 7, 20, (4,)], "layout": ["contiguous", "slice", "transposed", "unbatched"],
    "N": [1, 2], "C": [1, 3, 17], "L": [1, 5, 8, 16], "grad": ["contiguous", "transposed", "none"]}), n=24, seed=36)


def test_grids_cover_every_value():
    assert covered(ADAPTIVE_CASES, ADAPTIVE_AXES) == {}
    assert covered(MAX1D_CASES, MAX_POOL1D_AXES) == {}
    assert covered(AVG1D_CASES, AVG_POOL1D_AXES) == {}
    assert covered(ADAPTIVE1D_CASES, POOL1D_AXES_ADAPTIVE) == {}


@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("case", ADAPTIVE_CASES, ids=case_id)
def test_adaptive_pool2d_float32(backend, case, kind):
    check_adaptive(case, torch.float32, kind)


@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("case", ADAPTIVE_CASES_64, ids=case_id)
def test_adaptive_pool2d_float64(backend, case, kind):
    check_adaptive(case, torch.float64, kind)


@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("case", ADAPTIVE_HALF, ids=case_id)
def test_adaptive_pool2d_half_precision(backend, case, kind):
    case = dict(case)
    check_adaptive(case, case.pop("dtype"), kind)


@pytest.mark.parametrize("values", [ties, nans], ids=["ties", "nans"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("output_size", [(1, 1), (3, 4), (9, 5)])
def test_adaptive_max_pool2d_special_values(backend, values, layout, output_size):
    case = dict(output_size=output_size, layout=layout, N=2, C=20, HW=(7, 8), grad="none")
    check_adaptive(case, torch.float32, "max", values=values)


@pytest.mark.parametrize("case", MAX1D_CASES, ids=case_id)
def test_max_pool1d(backend, case):
    check_pool1d(case, torch.float32, "max")


@pytest.mark.parametrize("case", AVG1D_CASES, ids=case_id)
def test_avg_pool1d(backend, case):
    check_pool1d(case, torch.float32, "avg")


@pytest.mark.parametrize("case", ADAPTIVE1D_CASES, ids=case_id)
def test_adaptive_avg_pool1d(backend, case):
    check_pool1d(case, torch.float32, "adaptive")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_empty_inputs(backend, dtype):
    """N = 0, C = 0 and output_size 0 give torch's empty results (and an all-zero gradient)."""
    for shape, size in [((0, 3, 5, 4), (2, 2)), ((2, 0, 5, 4), (2, 2)), ((2, 3, 5, 4), (0, 2))]:
        x = torch.randn(shape, dtype=dtype, requires_grad=True)
        for ours, theirs in [(FC.adaptive_avg_pool2d, F.adaptive_avg_pool2d),
                             (FC.adaptive_max_pool2d, F.adaptive_max_pool2d)]:
            if shape[1] == 0 and ours is FC.adaptive_max_pool2d:  # torch's max refuses an empty C
                with pytest.raises(RuntimeError):
                    theirs(x, size)
                with pytest.raises(RuntimeError, match="dimension 1 being empty"):
                    ours(x, size)
                continue
            y = ours(x, size)
            assert y.shape == theirs(x, size).shape
            (g,) = torch.autograd.grad(y.sum(), x)
            assert g.shape == x.shape and not g.any()
    for fn, args in [(FC.max_pool1d, (2,)), (FC.avg_pool1d, (2,)), (FC.adaptive_avg_pool1d, (3,))]:
        assert fn(torch.randn(0, 3, 5, dtype=dtype), *args).shape == (0, 3, 3 if fn is FC.adaptive_avg_pool1d else 2)


def test_gradcheck(backend):
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64, requires_grad=True)
    xl = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    x1 = torch.randn(2, 3, 11, dtype=torch.float64, requires_grad=True)
    for t in (x, xl):
        for size in [(1, 1), (3, 4), (9, 11)]:
            assert torch.autograd.gradcheck(lambda v: FC.adaptive_avg_pool2d(v, size), (t,))
            assert torch.autograd.gradcheck(lambda v: FC.adaptive_max_pool2d(v, size), (t,))
    assert torch.autograd.gradcheck(lambda v: FC.max_pool1d(v, 3, 2, 1, 2, True), (x1,))
    assert torch.autograd.gradcheck(lambda v: FC.avg_pool1d(v, 3, 2, 1, True, False), (x1,))
    assert torch.autograd.gradcheck(lambda v: FC.adaptive_avg_pool1d(v, 4), (x1,))


@pytest.mark.parametrize("size", [(1, 1), (3, 2)])
def test_opcheck(backend, size):
    x = torch.randn(2, 3, 7, 5, requires_grad=True)
    xl = torch.randn(2, 20, 7, 5).to(memory_format=torch.channels_last).requires_grad_()
    for t in (x, xl):
        torch.library.opcheck(torch.ops.fastconv.adaptive_avg_pool2d.default, (t, list(size)))
        torch.library.opcheck(torch.ops.fastconv.adaptive_max_pool2d.default, (t, list(size)))
        y, idx = torch.ops.fastconv.adaptive_max_pool2d(t.detach(), list(size))
        g = torch.randn_like(y)
        torch.library.opcheck(torch.ops.fastconv.adaptive_avg_pool2d_backward.default, (g, t.detach()))
        torch.library.opcheck(torch.ops.fastconv.adaptive_max_pool2d_backward.default, (g, t.detach(), idx))


class _PoolNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.mp1 = fnn.MaxPool1d(3, 2, 1, ceil_mode=True)
        self.ap1 = fnn.AvgPool1d(2, count_include_pad=False, padding=1)
        self.aap1 = fnn.AdaptiveAvgPool1d(5)
        self.amp = fnn.AdaptiveMaxPool2d((3, 2))
        self.gap = fnn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        s = self.aap1(self.ap1(self.mp1(x.flatten(2))))  # (N, C, 5)
        return self.gap(self.amp(x)).flatten(1) + s.sum(-1)


def test_compile_fullgraph(backend):
    torch._dynamo.reset()
    net = _PoolNet()
    x = torch.randn(2, 3, 8, 9, requires_grad=True)
    eager = net(x)
    (g_eager,) = torch.autograd.grad(eager.sum(), x)
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    (g_comp,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(g_comp, g_eager)


ERROR_CASES = [
    # (name, fastconv call, torch call) - both must raise
    ("aavg_5d", lambda m: m.adaptive_avg_pool2d(torch.randn(1, 2, 3, 4, 5), 2)),
    ("aavg_empty_h", lambda m: m.adaptive_avg_pool2d(torch.randn(2, 3, 0, 4), 2)),
    ("aavg_3_sizes", lambda m: m.adaptive_avg_pool2d(torch.randn(2, 3, 4, 4), (2, 2, 2))),
    ("aavg_negative", lambda m: m.adaptive_avg_pool2d(torch.randn(2, 3, 4, 4), (-1, 2))),
    ("aavg_int_dtype", lambda m: m.adaptive_avg_pool2d(torch.ones(2, 3, 4, 4, dtype=torch.long), 2)),
    ("amax_5d", lambda m: m.adaptive_max_pool2d(torch.randn(1, 2, 3, 4, 5), 2)),
    ("amax_empty_w", lambda m: m.adaptive_max_pool2d(torch.randn(2, 3, 4, 0), 2)),
    ("amax_empty_c", lambda m: m.adaptive_max_pool2d(torch.randn(2, 0, 4, 4), 2)),
    ("aavg_3d_empty_h", lambda m: m.adaptive_avg_pool2d(torch.randn(3, 0, 4), 2)),
    ("amax_3_sizes", lambda m: m.adaptive_max_pool2d(torch.randn(2, 3, 4, 4), (2, 2, 2))),
    ("amax_negative", lambda m: m.adaptive_max_pool2d(torch.randn(2, 3, 4, 4), (-1, 2))),
    ("amax_int_dtype", lambda m: m.adaptive_max_pool2d(torch.ones(2, 3, 4, 4, dtype=torch.long), 2)),
    ("aavg1d_4d", lambda m: m.adaptive_avg_pool1d(torch.randn(2, 3, 4, 4), 2)),
    ("aavg1d_2_sizes", lambda m: m.adaptive_avg_pool1d(torch.randn(3, 8), (2, 2))),
    ("aavg1d_negative", lambda m: m.adaptive_avg_pool1d(torch.randn(3, 8), -1)),
    ("aavg1d_empty_l", lambda m: m.adaptive_avg_pool1d(torch.randn(2, 3, 0), 2)),
    ("mp1_4d", lambda m: m.max_pool1d(torch.randn(2, 3, 4, 4), 2)),
    ("mp1_1d", lambda m: m.max_pool1d(torch.randn(5), 2)),
    ("mp1_pad", lambda m: m.max_pool1d(torch.randn(3, 8), 3, padding=2)),
    ("mp1_kernel0", lambda m: m.max_pool1d(torch.randn(3, 8), 0)),
    ("mp1_stride0", lambda m: m.max_pool1d(torch.randn(3, 8), 2, stride=0)),
    ("mp1_dilation0", lambda m: m.max_pool1d(torch.randn(3, 8), 2, dilation=0)),
    ("mp1_too_small", lambda m: m.max_pool1d(torch.randn(3, 8), 20)),
    ("mp1_empty_l", lambda m: m.max_pool1d(torch.randn(2, 3, 0), 2)),
    ("mp1_kernel_pair", lambda m: m.max_pool1d(torch.randn(3, 8), (2, 2))),
    ("ap1_4d", lambda m: m.avg_pool1d(torch.randn(2, 3, 4, 4), 2)),
    ("ap1_pad", lambda m: m.avg_pool1d(torch.randn(3, 8), 3, padding=2)),
    ("ap1_kernel0", lambda m: m.avg_pool1d(torch.randn(3, 8), 0)),
    ("ap1_stride0", lambda m: m.avg_pool1d(torch.randn(3, 8), 2, stride=0)),
    ("ap1_too_small", lambda m: m.avg_pool1d(torch.randn(3, 8), 20)),
    ("ap1_empty_l", lambda m: m.avg_pool1d(torch.randn(2, 3, 0), 2)),
    ("ap1_kernel_pair", lambda m: m.avg_pool1d(torch.randn(3, 8), (2, 2))),
]


@pytest.mark.parametrize("name,call", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_errors_match_torch(backend, name, call):
    with pytest.raises((RuntimeError, ValueError, TypeError, NotImplementedError)):
        call(F)  # torch raises too
    with pytest.raises((RuntimeError, ValueError, TypeError)) as info:
        call(FC)
    op = name.split("_")[0]
    words = {"aavg": "adaptive_avg_pool2d", "amax": "adaptive_max_pool2d", "aavg1d": "adaptive_avg_pool1d",
             "mp1": "max_pool1d", "ap1": "avg_pool1d"}
    assert words[op] in str(info.value)  # the message names the op


def test_error_messages_are_torchs():
    with pytest.raises(RuntimeError, match=r"adaptive_avg_pool2d\(\): Expected input to have non-zero size for "
                                           r"non-batch dimensions, but input has sizes \[2, 3, 0, 4\] with dimension 2"):
        FC.adaptive_avg_pool2d(torch.randn(2, 3, 0, 4), 2)
    with pytest.raises(RuntimeError, match=r"adaptive_avg_pool2d\(\): output_size must be 2"):
        FC.adaptive_avg_pool2d(torch.randn(2, 3, 4, 4), (2, 2, 2))
    with pytest.raises(RuntimeError, match=r"max_pool1d\(\) padding should be at most half of kernel size .*, but got "
                                           r"padding=2 and kernel_size=3"):
        FC.max_pool1d(torch.randn(3, 8), 3, padding=2)
    with pytest.raises(RuntimeError, match=r"max_pool1d\(\) Invalid computed output size: 0"):
        FC.max_pool1d(torch.randn(3, 8), 20)


MODULES = [
    (nn.AdaptiveAvgPool2d, fnn.AdaptiveAvgPool2d, dict(output_size=(3, None)), (2, 3, 7, 9)),
    (nn.AdaptiveAvgPool2d, fnn.AdaptiveAvgPool2d, dict(output_size=1), (2, 3, 7, 9)),
    (nn.AdaptiveMaxPool2d, fnn.AdaptiveMaxPool2d, dict(output_size=(2, 4), return_indices=True), (2, 3, 7, 9)),
    (nn.AdaptiveAvgPool1d, fnn.AdaptiveAvgPool1d, dict(output_size=4), (2, 3, 9)),
    (nn.MaxPool1d, fnn.MaxPool1d, dict(kernel_size=3, stride=2, padding=1, dilation=2, return_indices=True,
                                       ceil_mode=True), (2, 3, 12)),
    (nn.AvgPool1d, fnn.AvgPool1d, dict(kernel_size=3, stride=2, padding=1, ceil_mode=True,
                                       count_include_pad=False), (2, 3, 12)),
]


@pytest.mark.parametrize("torch_cls,ours_cls,kwargs,shape", MODULES, ids=[f"{m[0].__name__}" for m in MODULES])
def test_modules_match_torch_and_convert(backend, torch_cls, ours_cls, kwargs, shape):
    x = torch.randn(shape)
    ref, ours = torch_cls(**kwargs), ours_cls(**kwargs)
    assert isinstance(ours, torch_cls) and repr(ours) == repr(ref)
    ours.load_state_dict(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    out, expected = ours(x), ref(x)
    for a, b in zip(out if isinstance(out, tuple) else (out,), expected if isinstance(expected, tuple) else (expected,)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    model = nn.Sequential(torch_cls(**kwargs))
    fastconv.convert(model)
    assert type(model[0]) is ours_cls


def test_convert_model_with_pools(backend):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveMaxPool2d((4, 4)), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(1), nn.Unflatten(1, (1, 8)), nn.MaxPool1d(2), nn.AvgPool1d(2),
                          nn.AdaptiveAvgPool1d(1), nn.Flatten(1))
    x = torch.randn(2, 3, 10, 10, requires_grad=True)
    expected = model(x)
    (g_ref,) = torch.autograd.grad(expected.sum(), x)
    fastconv.convert(model)
    assert [type(m) for m in model if "Pool" in type(m).__name__] == [
        fnn.AdaptiveMaxPool2d, fnn.AdaptiveAvgPool2d, fnn.MaxPool1d, fnn.AvgPool1d, fnn.AdaptiveAvgPool1d]
    out = model(x)
    (g,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# The CPU kernels: paths, ISA levels, threads

CPU_PATH_CASES = [
    # (shape, channels_last, output_size, pass, path)
    ((2, 8, 7, 7), False, (1, 1), "avg_fwd", "global_planes"),
    ((2, 8, 7, 7), True, (1, 1), "avg_fwd", "nhwc"),
    ((2, 8, 7, 7), False, (3, 3), "avg_fwd", "nchw_rows"),
    ((2, 8, 7, 7), False, (1, 1), "max_fwd", "nchw_rows"),
    ((2, 8, 7, 7), True, (3, 3), "max_fwd", "nhwc"),
    ((2, 8, 7, 7), False, (1, 1), "avg_bwd", "global_fill"),
    ((2, 8, 7, 7), True, (2, 2), "avg_bwd", "scatter_nhwc"),
    ((2, 8, 7, 7), False, (2, 2), "avg_bwd", "scatter_planes"),
]


@pytest.mark.parametrize("shape,cl,size,pass_,path", CPU_PATH_CASES, ids=[f"{c[3]}-{c[4]}" for c in CPU_PATH_CASES])
def test_cpu_paths(shape, cl, size, pass_, path):
    from fastconv.backends.cpu import adaptive_pool2d_path

    x = torch.empty(shape, device="meta")
    if cl:
        x = x.to(memory_format=torch.channels_last)
    assert adaptive_pool2d_path(x, size, pass_) == path
    strided = torch.empty(2, 8, 7, 14, device="meta")[..., ::2]
    assert adaptive_pool2d_path(strided, (3, 3), "avg_fwd") == "generic"


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "slice"])
@pytest.mark.parametrize("output_size", [(1, 1), (3, 5)])
def test_cpu_isa_levels_and_threads(isa, layout, output_size):
    """Every ISA level, 1 and 5 threads (more than the cores): results bitwise identical across thread
    counts and within tolerance of torch."""
    fastconv.set_backend("cpu")
    try:
        case = dict(output_size=output_size, layout=layout, N=3, C=40, HW=(13, 11), grad="contiguous")
        results = []
        for threads in (1, 5):
            prev = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                check_adaptive(case, torch.float32, "avg")
                check_adaptive(case, torch.float32, "max")
                x = make_adaptive_input(case, torch.float32)
                results.append((FC.adaptive_avg_pool2d(x, output_size), FC.adaptive_max_pool2d(x, output_size, True)))
            finally:
                torch.set_num_threads(prev)
        (a1, (m1, i1)), (a5, (m5, i5)) = results
        assert torch.equal(a1, a5) and torch.equal(m1, m5) and torch.equal(i1, i5)
    finally:
        fastconv.set_backend(None)


def test_cpu_global_pool_large_plane():
    """Global average pooling of planes longer than the 8-vector unrolled loop (and an odd tail)."""
    fastconv.set_backend("cpu")
    try:
        x = torch.randn(2, 3, 67, 73, dtype=torch.float64)
        torch.testing.assert_close(FC.adaptive_avg_pool2d(x.float(), 1).double(), x.mean((2, 3), keepdim=True),
                                   rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(FC.adaptive_avg_pool2d(x, 1), x.mean((2, 3), keepdim=True), rtol=1e-12, atol=0)
    finally:
        fastconv.set_backend(None)


@pytest.mark.parametrize("threads", [1, 3])
def test_global_average_backward_channels_last(backend, threads):
    """The channels_last global-average backward writes pixel by pixel along the channels (cpu: its own
    loop): every (n, h, w, c) of dx is dy[n, c] / (H*W), for a channel count that is no vector multiple and
    more threads than cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(3, 37, 5, 7, dtype=torch.float64).to(memory_format=torch.channels_last).requires_grad_()
        dy = torch.randn(3, 37, 1, 1, dtype=torch.float64)
        (dx,) = torch.autograd.grad(FC.adaptive_avg_pool2d(x, 1), x, dy)
        assert dx.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(dx, (dy / 35).expand(3, 37, 5, 7), rtol=0, atol=0)
    finally:
        torch.set_num_threads(previous)
