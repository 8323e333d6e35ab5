"""The 'triton' backend's kernels, run on CPU tensors by Triton's interpreter (TRITON_INTERPRET=1).

Interpreter mode. Triton 3.9 reads TRITON_INTERPRET through triton.knobs.runtime.interpret, and
triton.jit consults it when a function is *decorated*. Two consequences under `pytest -n 2`, where a
worker imports every test module and may have imported Triton already (torch.compile's inductor does,
in test_compile.py): (1) fastconv's kernels may have been decorated for the GPU before this file set the
variable - fastconv.triton.kernels() re-decorates them whenever the mode changed; (2) triton.language's
own @jit library functions (tl.cdiv, tl.zeros, tl.sum) stay compiled-mode functions that the
interpreter refuses to call - the kernels use only builtins and fastconv.triton._jit's helpers. So no
module-level os.environ setting is needed or used: the module fixture turns the knob on for this file's
tests only (knobs.runtime.scope() restores knob and environment), and no other module sees it.

What runs: every op and option through fastconv.functional on the 'triton' backend - the implicit-GEMM
conv paths (flattened C*R*S reduction for tiny Cg such as RGB input, tap-major for Cg >= 16), the strided
dgrad phases, split-K wgrad, the bias-only wgrad, the depthwise kernels, max/avg pooling with every
option - outputs and all gradients vs torch in float64 (helpers.rel_err, REL_TOL), NCHW, channels_last
and non-contiguous views, float32/float16/bfloat16/float64; the int64-offset path; the host-side logic
(TF32 flag, autotune gating, config pruning, availability, interpreter-mode reload, fastconv.info()).

Shapes are small and the grids sampled: the interpreter runs each program in Python.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

triton = pytest.importorskip("triton", reason="Triton is not installed (pip install 'fastconv[triton]')")

import fastconv  # noqa: E402
import fastconv.functional as FC  # noqa: E402
from fastconv import backends  # noqa: E402
from fastconv.backends.triton import TritonBackend  # noqa: E402
from fastconv.triton import _common as cm  # noqa: E402
from fastconv.triton import kernels  # noqa: E402
from helpers import (AVG_POOL_AXES, EMPTY_AVG_POOL_CASES, EMPTY_MAX_POOL_CASES, MAX_POOL_AXES,  # noqa: E402
                     POOL_SPECIAL_CASES, REL_TOL, TRITON_AXES, TRITON_CHANNELS, assert_rel, case_id, check_avg_pool,
                     check_conv_case, check_max_pool, conv_valid, covered, make_conv_case, make_pool_input,
                     max_pool_args, nans, neg_infs, pool_torch_accepts, sample_grid, ties)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", autouse=True)
def triton_interpreter():
    """TRITON_INTERPRET=1 and the 'triton' backend for this module's tests, restored afterwards."""
    with triton.knobs.runtime.scope():
        triton.knobs.runtime.interpret = True  # also sets os.environ["TRITON_INTERPRET"] = "1"
        with fastconv.use_backend("triton"):
            yield


# ----------------------------------------------------------------------------------------------------
# Convolution grid

# The grid's channel configurations (one per kernel path) and axes are helpers.TRITON_CHANNELS and
# TRITON_AXES (tests/test_triton_gpu.py samples the same axes on a GPU); cases are built and checked by
# helpers.make_conv_case / check_conv_case with channels=TRITON_CHANNELS.

FP32_CASES = sample_grid(TRITON_AXES, n=52, seed=41, valid=conv_valid)  # every value of every axis at least once


def _per_path(dtypes, seed):
    """One case per (kernel path, dtype), the other axes rotating: float16/bfloat16/float64 reach every
    kernel without the full grid (sample_grid's forced values alone would be ~50 cases per dtype)."""
    paths = ["rgb", "c5k3", "c20k36", "g2c17", "c48k16", "g3", "dw20", "dwx2"]
    rot = dict(kernel=[(3, 3), (1, 1), (2, 5), (5, 3)], stride=[1, 2, (2, 1)], padding=[1, "same", 0],
               dilation=[1, 2, (1, 2)], layout=["contiguous", "cl_both", "slice", "cl_input"],
               grad=["contiguous", "transposed", "channels_last"], op=["conv2d_relu", "conv2d"], bias=[True, False])
    cases = []
    for i, (ch, dt) in enumerate((ch, dt) for dt in dtypes for ch in paths):
        c = {k: v[(i + seed) % len(v)] for k, v in rot.items()}
        c.update(channels=ch, N=2, HW=(7, 9), dtype=dt)
        if c["padding"] == "same":
            c["stride"] = 1
        cases.append(c)
    return cases


HALF_CASES = _per_path([torch.float16, torch.bfloat16], seed=0)
FP64_CASES = _per_path([torch.float64], seed=1)


def _rnd(gen, shape, dtype):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def check_conv(case, dtype, tol=None):
    check_conv_case(case, dtype, tol, channels=TRITON_CHANNELS)


@pytest.mark.parametrize("case", FP32_CASES, ids=case_id)
def test_conv_float32(case):
    check_conv(case, torch.float32)


@pytest.mark.parametrize("case", HALF_CASES, ids=case_id)
def test_conv_half_precision(case):
    """float16/bfloat16 operands, float32 accumulation, one rounding of the result."""
    case = dict(case)
    dtype = case.pop("dtype")
    check_conv(case, dtype)


@pytest.mark.parametrize("case", FP64_CASES, ids=case_id)
def test_conv_float64(case):
    case = dict(case)
    check_conv(case, case.pop("dtype"))


def test_conv_grid_coverage():
    assert covered(FP32_CASES, TRITON_AXES) == {}
    assert {c["dtype"] for c in HALF_CASES} == {torch.float16, torch.bfloat16}
    paths = {("flat" if (C // g) < 16 else "tap") if not (g > 1 and g == C == K) else "dw"
             for C, K, g in (TRITON_CHANNELS[c["channels"]] for c in FP32_CASES)}
    assert paths == {"flat", "tap", "dw"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_conv_rgb_stem(dtype):
    """ResNet's 7x7/2 stem on RGB input (C = 3): the flattened reduction pads 147 to 5 slices of 32."""
    case = dict(op="conv2d_relu", kernel=(7, 7), stride=2, padding=3, dilation=1, channels="rgb", bias=True,
                layout="cl_input", N=2, HW=(17, 15), grad="contiguous")
    check_conv(case, dtype)


def _wgrad_vs_reference(channels, kernel, stride, padding, N, HW, need_weight=True, need_bias=True, relu=True):
    """TritonBackend.conv2d_wgrad (and dgrad) called directly, against the reference backend in float64."""
    C, K, groups = TRITON_CHANNELS[channels]
    gen = torch.Generator().manual_seed(3)
    x = _rnd(gen, (N, C, *HW), torch.float32)
    w = _rnd(gen, (K, C // groups, *kernel), torch.float32)
    y = F.conv2d(x, w, None, stride, padding, 1, groups)
    dy = _rnd(gen, tuple(y.shape), torch.float32)
    args = (dy, x, w, torch.relu(y) if relu else None, stride, padding, (1, 1), groups)
    ref_backend = backends.registered()["reference"]
    ref_args = tuple(a.double() if torch.is_tensor(a) else a for a in args)
    ours = TritonBackend().conv2d_wgrad(*args, need_weight, need_bias)
    ref = ref_backend.conv2d_wgrad(*ref_args, True, True)
    for name, got, r, wanted in zip(("grad_weight", "grad_bias"), ours, ref, (need_weight, need_bias)):
        if wanted:
            assert got.dtype == torch.float32
            assert_rel(got, r, torch.float32, name)
        else:
            assert got is None
    return args, ref_args


@pytest.mark.parametrize("channels,kernel", [("c20k36", (1, 1)), ("rgb", (3, 3)), ("dw20", (3, 3))])
def test_conv_split_k_wgrad(channels, kernel):
    """N*P*Q >= 1024: wgrad splits the reduction over several programs (float32 partials summed in a
    fixed order), for the tap-major, flattened and depthwise kernels; the bias gradient rides along."""
    from fastconv.triton import conv2d as tconv

    assert tconv._split_k(1, 2 * 24 * 24, torch.device("cpu")) > 1
    _wgrad_vs_reference(channels, kernel, (1, 1), (kernel[0] // 2, kernel[1] // 2), N=2, HW=(24, 24))


@pytest.mark.parametrize("channels", ["c20k36", "rgb", "dw4"])
@pytest.mark.parametrize("need", ["weight", "bias", "both"])
def test_conv_wgrad_partial_requests(channels, need):
    """need_weight/need_bias: the bias-only launch skips the weight GEMM; the ReLU mask (relu_y) is applied
    inside dgrad and wgrad."""
    args, ref_args = _wgrad_vs_reference(channels, (3, 3), (2, 2), (1, 1), N=2, HW=(9, 7),
                                         need_weight=need in ("weight", "both"), need_bias=need in ("bias", "both"))
    if need == "both":
        dx = TritonBackend().conv2d_dgrad(*args)
        assert_rel(dx, backends.registered()["reference"].conv2d_dgrad(*ref_args), torch.float32, "grad_input")


@pytest.mark.parametrize("op", ["conv2d", "conv2d_relu"])
def test_conv_empty_batch(op):
    case = dict(op=op, kernel=(3, 3), stride=1, padding=1, dilation=1, channels="c20k36", bias=True,
                layout="cl_input", N=0, HW=(6, 5), grad="contiguous")
    x, w, b, kwargs = make_conv_case(case, torch.float32, channels=TRITON_CHANNELS)
    y = getattr(FC, op)(x, w, b, **kwargs)
    assert y.shape == (0, 36, 6, 5)
    gw, gb = torch.autograd.grad(y, [w, b], torch.empty_like(y))
    assert not gw.any() and not gb.any()


def test_conv_expanded_grad_output():
    """y.sum() hands the backward kernels an expanded grad_output (all strides 0)."""
    case = dict(op="conv2d_relu", kernel=(3, 3), stride=2, padding=1, dilation=1, channels="g2c17", bias=True,
                layout="cl_both", N=2, HW=(7, 6), grad="contiguous")
    x, w, b, kwargs = make_conv_case(case, torch.float32, channels=TRITON_CHANNELS)
    grads = torch.autograd.grad(FC.conv2d_relu(x, w, b, **kwargs).sum(), [x, w, b])
    ref = [t.detach().double().requires_grad_() for t in (x, w, b)]
    ref_grads = torch.autograd.grad(torch.relu(F.conv2d(*ref, **kwargs)).sum(), ref)
    for name, got, r in zip(("grad_input", "grad_weight", "grad_bias"), grads, ref_grads):
        assert_rel(got, r, torch.float32, name)


def test_int64_offsets(monkeypatch):
    """The IDX64 variants (int64 address math, chosen when a tensor can reach past 2^31 elements) give
    the same results: forced on for small tensors, every kernel family."""
    monkeypatch.setattr(cm, "needs_int64", lambda *tensors: True)
    for channels, layout in (("rgb", "contiguous"), ("c20k36", "cl_both"), ("dw4", "cl_input")):
        check_conv(dict(op="conv2d_relu", kernel=(3, 3), stride=2, padding=1, dilation=1, channels=channels,
                        bias=True, layout=layout, N=2, HW=(7, 6), grad="contiguous"), torch.float32)
    case = dict(POOL_SPECIAL_CASES[2])
    check_max_pool(case, torch.float32)
    check_avg_pool(dict(case, count_include_pad=False, divisor_override=None), torch.float32)


@pytest.mark.parametrize("layout", ["contiguous", "cl_both"])
def test_gpu_tile_shapes(monkeypatch, layout):
    """The depthwise and pooling kernels with the tile shapes a GPU gets (4-channel tiles for NCHW, up
    to 64 channels for channels_last), which the interpreter otherwise replaces by one big tile."""
    monkeypatch.setattr(cm, "INTERPRETER_BIG_TILES", False)
    assert cm.pixel_channel_tile(torch.empty(1, 20, 3, 3), 9, 20) == (16, 4)
    check_conv(dict(op="conv2d_relu", kernel=(3, 3), stride=2, padding=1, dilation=1, channels="dw20", bias=True,
                    layout=layout, N=2, HW=(7, 6), grad="contiguous"), torch.float32)
    case = dict(POOL_SPECIAL_CASES[3 if layout == "cl_both" else 2], C=6)
    check_max_pool(case, torch.float32)
    check_avg_pool(dict(case, count_include_pad=False, divisor_override=None), torch.float32)


def test_needs_int64_reach():
    meta = dict(device="meta", dtype=torch.float16)
    assert not cm.needs_int64(torch.empty(2, 3, 4, 5, **meta), None)
    assert cm.needs_int64(torch.empty(2 ** 31, **meta))
    big_stride = torch.empty(0, **meta).as_strided((2, 3), (2 ** 31, 1))  # small numel, far reach
    assert cm.needs_int64(big_stride)
    assert not cm.needs_int64(torch.empty(0, 2 ** 32, **meta))  # empty: nothing is addressed


# ----------------------------------------------------------------------------------------------------
# Pooling: the cpu backend's grid (tests/test_pool2d.py), its cases and checks in helpers (indices must equal torch's), sampled smaller

MAX_CASES = sample_grid(MAX_POOL_AXES, n=40, seed=51, valid=pool_torch_accepts("max"))
AVG_CASES = sample_grid(AVG_POOL_AXES, n=40, seed=52, valid=pool_torch_accepts("avg"))
# float16, bfloat16, float64: every 8th case of the float32 grids, the dtype rotating
OTHER_DTYPES = [torch.float16, torch.bfloat16, torch.float64]
HALF_MAX = [dict(c, dtype=OTHER_DTYPES[i % 3]) for i, c in enumerate(MAX_CASES[::8])]
HALF_AVG = [dict(c, dtype=OTHER_DTYPES[i % 3]) for i, c in enumerate(AVG_CASES[3::8])]


@pytest.mark.parametrize("case", MAX_CASES, ids=case_id)
def test_max_pool2d(case):
    check_max_pool(case, torch.float32)


@pytest.mark.parametrize("case", AVG_CASES, ids=case_id)
def test_avg_pool2d(case):
    check_avg_pool(case, torch.float32)


@pytest.mark.parametrize("case", HALF_MAX, ids=case_id)
def test_max_pool2d_other_dtypes(case):
    case = dict(case)
    check_max_pool(case, case.pop("dtype"))


@pytest.mark.parametrize("case", HALF_AVG, ids=case_id)
def test_avg_pool2d_other_dtypes(case):
    case = dict(case)
    check_avg_pool(case, case.pop("dtype"))


@pytest.mark.parametrize("values", ["ties", "nan", "neg_inf"])
@pytest.mark.parametrize("case", [POOL_SPECIAL_CASES[i] for i in (1, 2, 7)], ids=case_id)
def test_max_pool2d_special_values(case, values):
    """Ties keep torch's first maximum; NaN wins (torch's last NaN); all -inf windows keep the first tap."""
    if values == "nan":
        x = make_pool_input(case, torch.float32, values=nans)
        kwargs = max_pool_args(case)
        y, idx = FC.max_pool2d(x, **kwargs, return_indices=True)
        y_t, idx_t = F.max_pool2d(x.detach(), **kwargs, return_indices=True)
        torch.testing.assert_close(y, y_t, rtol=0, atol=0, equal_nan=True)
        assert torch.equal(idx, idx_t)
    else:
        check_max_pool(case, torch.float32, values=ties if values == "ties" else neg_infs)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool2d_empty_batch(kind):
    case = (EMPTY_MAX_POOL_CASES if kind == "max" else EMPTY_AVG_POOL_CASES)[-1]
    (check_max_pool if kind == "max" else check_avg_pool)(case, torch.float32)


def test_pool_grid_coverage():
    assert covered(MAX_CASES, MAX_POOL_AXES) == {}
    assert covered(AVG_CASES, AVG_POOL_AXES) == {}


# ----------------------------------------------------------------------------------------------------
# Host-side logic: precision flags, autotuning, configs, availability, interpreter reload, info


def test_dtype_flags(monkeypatch):
    x32 = torch.empty(1)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert cm.dtype_flags(x32)["PRECISION"] == "tf32"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert cm.dtype_flags(x32)["PRECISION"] == "ieee"
    for dt in (torch.float16, torch.bfloat16, torch.float64):
        assert cm.dtype_flags(torch.empty(1, dtype=dt))["PRECISION"] == "ieee"
    assert cm.dtype_flags(torch.empty(1, dtype=torch.float64))["ACC_F64"]
    # bf16 tiles are widened only in the interpreter (its np.matmul on raw bf16 bits is wrong)
    assert cm.dtype_flags(torch.empty(1, dtype=torch.bfloat16))["DOT_F32"]
    with triton.knobs.runtime.scope():
        triton.knobs.runtime.interpret = False
        assert not cm.dtype_flags(torch.empty(1, dtype=torch.bfloat16))["DOT_F32"]


def test_autotune_gating(monkeypatch):
    assert not cm.autotune_enabled()  # interpreter: always the heuristic config
    with triton.knobs.runtime.scope():
        triton.knobs.runtime.interpret = False
        monkeypatch.delenv("FASTCONV_AUTOTUNE", raising=False)
        assert cm.autotune_enabled()
        monkeypatch.setenv("FASTCONV_AUTOTUNE", "0")
        assert not cm.autotune_enabled()
        monkeypatch.setenv("FASTCONV_AUTOTUNE", "1")
        torch.use_deterministic_algorithms(True)
        try:
            assert not cm.autotune_enabled()  # a tuned config could change the summation order
        finally:
            torch.use_deterministic_algorithms(False)


def test_launch_picks_tuned_or_heuristic(monkeypatch):
    from fastconv.triton import conv2d as tconv

    calls = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            return lambda *a, **k: calls.append((self.name, grid, sorted(k)))

    def grid(meta):
        return (meta["BLOCK_M"],)

    heur = tconv._heuristic(1000, 64, 64, torch.float16)
    monkeypatch.setattr(cm, "autotune_enabled", lambda: True)
    tconv._launch(Fake("tuned"), Fake("plain"), grid, (1,), {"HAS_BIAS": True}, heur)
    monkeypatch.setattr(cm, "autotune_enabled", lambda: False)
    tconv._launch(Fake("tuned"), Fake("plain"), grid, (1,), {"HAS_BIAS": True}, heur)
    assert calls[0][0] == "tuned" and calls[0][2] == sorted(["HAS_BIAS", *cm.LAUNCH])
    assert calls[1] == ("plain", (heur["BLOCK_M"],), sorted(["HAS_BIAS", *heur, *cm.LAUNCH]))


def test_configs_legal_and_pruned():
    from fastconv.triton import conv2d as tconv

    configs = tconv._configs()
    for c in configs:
        for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"):
            v = c.kwargs[k]
            assert v >= cm.MIN_DOT and v & (v - 1) == 0, (k, v)
    x16 = torch.empty(1, dtype=torch.float16)
    prune = tconv._prune("fwd_m", "fwd_n", "fwd_k")
    small = prune(configs, dict(x_ptr=x16, Kg=8, Cg=3, R=7, S=7, PQ_BUCKET=cm.bucket(112 * 112)), FLAT_CRS=True)
    assert small and all(c.kwargs["BLOCK_N"] <= 32 for c in small)
    wide = prune(configs, dict(x_ptr=x16, Kg=256, Cg=256, R=3, S=3, PQ_BUCKET=cm.bucket(56 * 56)), FLAT_CRS=False)
    assert len(wide) == len(configs)
    tiny = prune(configs, dict(x_ptr=torch.empty(1, dtype=torch.float64), Kg=1, Cg=1, R=1, S=1, PQ_BUCKET=1),
                 FLAT_CRS=True)
    assert len(tiny) >= 1
    for m, n, k, dt in ((10, 3, 3, torch.float64), (10 ** 6, 512, 512, torch.float16)):
        h = tconv._heuristic(m, n, k, dt)
        assert min(h["BLOCK_M"], h["BLOCK_N"], h["BLOCK_K"]) >= cm.MIN_DOT


def test_backend_availability(monkeypatch):
    b = TritonBackend()
    ok, why = b.availability()
    assert ok and "interpreter" in why
    assert b.serves(torch.device("cpu")) and "cpu" in b.device_types
    assert "triton" not in backends.AUTO_ORDER["cpu"]
    with triton.knobs.runtime.scope():
        triton.knobs.runtime.interpret = False
        ok, why = b.availability()
        assert not b.serves(torch.device("cpu"))
        if not torch.cuda.is_available():
            assert not ok and "no CUDA GPU" in why and "TRITON_INTERPRET=1" in why
            with pytest.raises(RuntimeError, match="not available"):
                fastconv.set_backend("triton")
    from fastconv.backends import triton as tb

    monkeypatch.setattr(tb, "_triton_missing", lambda: "triton is not installed")
    assert b.availability() == (False, "triton is not installed")
    assert not b.serves(torch.device("cpu"))


def test_kernels_follow_interpreter_mode():
    """kernels() re-decorates the kernel modules when TRITON_INTERPRET changed since they were imported."""
    assert type(kernels().conv2d._conv2d_fwd_kernel).__name__ == "InterpretedFunction"
    with triton.knobs.runtime.scope():
        triton.knobs.runtime.interpret = False
        k = kernels()
        assert type(k.conv2d._conv2d_fwd_kernel).__name__ == "JITFunction"
        assert type(k.pool2d._max_pool2d_fwd_kernel).__name__ == "JITFunction"
    k = kernels()
    assert type(k.conv2d._conv2d_fwd_kernel).__name__ == "InterpretedFunction"
    assert type(k.pool2d._avg_pool2d_bwd_kernel).__name__ == "InterpretedFunction"
    x = torch.randn(1, 3, 5, 5)
    assert_rel(FC.max_pool2d(x, 2), F.max_pool2d(x, 2), torch.float32)


def _compile_for_gpu(fn, consts, ptr_types, unit_strides, capability):
    """Compiles a kernel for an NVIDIA GPU of this compute capability - no GPU needed: Triton's NVIDIA
    backend and its bundled ptxas run on the host. Integer arguments get the divisibility-by-16 hint and
    unit strides the constant 1, as the JIT specializes them for a channels_last launch."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    consts = dict(consts, **{name: 1 for name in unit_strides})
    sig = {n: "constexpr" if n in consts else ptr_types.get(n, ptr_types["*"]) if n.endswith("_ptr") else "i32"
           for n in fn.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names) if sig[n] != "constexpr"}
    return triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                          target=GPUTarget("cuda", capability, 32),
                          options=dict(num_warps=8, num_stages=3, enable_fp_fusion=True))


def test_kernels_compile_for_gpus():
    """The kernels compile for sm_90 and sm_80 (wgmma / mma.sync), and the channels_last implicit GEMM with
    full tiles streams its operands through shared memory with cp.async (the software pipeline): the
    property the EVEN_* variants exist for. The interpreter cannot show either."""
    pytest.importorskip("triton.backends.nvidia", reason="Triton's NVIDIA backend is not installed")
    with triton.knobs.runtime.scope():
        triton.knobs.runtime.interpret = False
        k = kernels()
        blocks = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, GROUP_M=8, EVEN_C=True, EVEN_K=True, IDX64=False,
                      ACC_F64=False, DOT_F32=False, PRECISION="ieee")
        fwd = _compile_for_gpu(k.conv2d._conv2d_fwd_kernel, dict(blocks, HAS_BIAS=True, FUSE_RELU=True, FLAT_CRS=False),
                               {"*": "*fp16"}, ("sx_c", "sw_c", "sy_k"), 90)
        ir = fwd.asm["ttgir"]
        assert "warp_group_dot" in ir and "async_copy_global_to_local" in ir
        wgrad = _compile_for_gpu(k.conv2d._conv2d_wgrad_kernel,
                                 dict(blocks, PRECISION="tf32", COMPUTE_DW=True, COMPUTE_DB=True, RELU_MASK=True,
                                      FLAT_CRS=False),
                                 {"*": "*fp32", "dw_ptr": "*fp32", "db_ptr": "*fp32"}, ("sdy_k", "sry_k", "sx_c"), 80)
        assert "async_copy_global_to_local" in wgrad.asm["ttgir"]
        _compile_for_gpu(k.pool2d._max_pool2d_fwd_kernel,
                         dict(WITH_INDICES=True, IDX64=True, ACC_F64=False, BLOCK_PQ=16, BLOCK_C=64),
                         {"*": "*bf16", "i_ptr": "*i64"}, ("sx_c", "sy_c", "si_c"), 90)
    assert type(kernels().conv2d._conv2d_fwd_kernel).__name__ == "InterpretedFunction"


def test_info_reports_triton():
    data = fastconv.info(print_it=False)
    t = data["triton"]
    assert t["version"] == triton.__version__
    assert t["available"] and "interpreter" in t["detail"]
    assert data["backends"]["triton"]["available"]
    from fastconv.info import format_info

    assert f"triton: {triton.__version__}" in format_info(data)


def test_fastconv_imports_without_triton():
    """Triton is optional: with `import triton` failing, fastconv imports and reports why."""
    code = ("import sys; sys.modules['triton'] = None\n"
            "import fastconv\n"
            "ok, why = fastconv.backends.registered()['triton'].availability()\n"
            "assert not ok and 'triton' in why, why\n"
            "d = fastconv.info(print_it=False)['triton']\n"
            "assert d['version'] is None and not d['available'], d\n"
            "print('ok')\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_tolerances_unchanged():
    assert REL_TOL[torch.float32] == 1e-5 and REL_TOL[torch.bfloat16] == 2e-2
