"""The tensor-core conv2d kernels (kernels/conv2d_tc.cuh, launchers csrc/cuda/conv2d_tc.cu) run whole on
the SIMT emulator against torch: forward with every tile configuration and all three dtypes' logic (fp16,
bf16, fp32-as-TF32), edge tiles (N*P*Q and K not multiples of the tile), stride / padding / dilation,
groups, bias and ReLU, strided views; dgrad and wgrad (split reductions too) over the same grid; in
forward and reversed thread order; and the eligibility rules (odd channel counts, fp64, fp32 without
TF32, NCHW operands, misaligned views, the fused-ReLU mask in backward -> False and nothing written).

The reference is torch in float64 on the same (rounded) inputs: fp16/bf16 inputs are exact there, and
for fp32 the reference rounds x and w to TF32 (cvt.rna) as the kernel does, so what remains is the fp32
accumulation and one rounding of the output."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import pair

emu = pytest.importorskip("fastconv._C_emu", reason="fastconv._C_emu is built by every `pip install -e .`")
pytestmark = pytest.mark.emu
if not hasattr(emu, "mma_selftest"):
    pytest.skip("fastconv._C_emu predates the tensor-core kernels: rebuild it", allow_module_level=True)
k = emu.mma_selftest

CODE = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
CONFIGS = list(k.configs)   # "128x128", "128x64", "64x128", "64x64"
# Relative Frobenius error against the float64 reference of the rounded inputs: fp32 accumulation plus
# one output rounding.
TOL = {torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 6e-3}


@pytest.fixture(params=["forward", "reversed"])
def order(request):
    emu.set_thread_order(request.param, 7)
    yield request.param
    emu.set_thread_order("forward", 0)


def tf32(x: torch.Tensor) -> torch.Tensor:
    b = x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    b = (b + 0x1000) & 0xFFFFE000
    return torch.where(b >= 2**31, b - 2**32, b).to(torch.int32).view(torch.float32)


def t4(t: torch.Tensor):
    return (t.data_ptr(), list(t.shape), list(t.stride()))


def conv_shape(x, w, y, stride, padding, dilation, groups):
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    P, Q = y.shape[2:]
    return (N, C, H, W, K, R, S, P, Q, sh, sw, ph, pw, dh, dw, groups)


def make(N, C, H, W, K, R, S, dtype, groups=1, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(K, C // groups, R, S, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    b = torch.randn(K, generator=g).to(dtype) if bias else None
    return x, w, b


def reference(x, w, b, stride, padding, dilation, groups, relu):
    rx, rw = x.double(), w.double()
    if x.dtype == torch.float32:
        rx, rw = tf32(x).double(), tf32(w).double()
    ref = F.conv2d(rx, rw, b.double() if b is not None else None, pair(stride), pair(padding), pair(dilation), groups)
    return ref.relu() if relu else ref


def run(x, w, b, stride=1, padding=0, dilation=1, groups=1, relu=False, config="auto", y=None, allow_tf32=True):
    ref = reference(x, w, b, stride, padding, dilation, groups, relu)
    if y is None:
        y = torch.full(ref.shape, float("nan"), dtype=x.dtype).contiguous(memory_format=torch.channels_last)
    shape = conv_shape(x, w, y, stride, padding, dilation, groups)
    cfg = -1 if config == "auto" else CONFIGS.index(config)
    ok = k.conv2d_fwd_tc(shape, CODE[x.dtype], t4(x), t4(w), b.data_ptr() if b is not None else 0, t4(y), relu,
                         allow_tf32, cfg)
    return ok, y, ref


def assert_matches(y, ref, dtype):
    assert not torch.isnan(y).any(), "outputs left unwritten (NaN)"
    err = ((y.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()
    assert err < TOL[dtype], f"relative error {err:.3e} >= {TOL[dtype]:.1e}"


DTYPES = [torch.float16, torch.bfloat16, torch.float32]
DT_IDS = ["f16", "bf16", "tf32"]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_every_config_and_dtype_with_edge_tiles(order, dtype, config):
    """N*P*Q = 2*9*9 = 162 and K = 72 fill no tile evenly (edge rows and columns masked); R*S*C = 216
    leaves a partial last k-tile; bias + ReLU in the epilogue."""
    x, w, b = make(2, 24, 9, 9, 72, 3, 3, dtype, seed=1)
    ok, y, ref = run(x, w, b, padding=1, relu=True, config=config)
    assert ok
    assert_matches(y, ref, dtype)


GEOMETRIES = [
    # N, C, H, W, K, R, S, stride, padding, dilation, groups
    (1, 8, 11, 13, 16, 1, 1, 1, 0, 1, 1),              # 1x1, one k-tile
    (2, 16, 12, 10, 24, 3, 3, 2, 1, 1, 1),             # stride 2
    (1, 8, 13, 11, 8, 3, 3, 1, 2, 2, 1),               # dilation 2
    (1, 16, 15, 15, 16, 7, 7, 2, 3, 1, 1),             # 7x7 stride 2 pad 3 (a ResNet stem, small)
    (2, 8, 10, 9, 12, 3, 5, (2, 1), (1, 2), (1, 2), 1),  # asymmetric everything
    (3, 40, 6, 6, 20, 3, 3, 1, 1, 1, 1),               # C = 40: k-tiles straddle taps, K = 20
    (2, 32, 7, 7, 24, 3, 3, 1, 1, 1, 2),               # groups = 2: Cg = 16, Kg = 12
    (1, 64, 5, 5, 32, 1, 1, 1, 0, 1, 4),               # groups = 4, 1x1
    (2, 8, 5, 5, 8, 5, 5, 1, 0, 1, 1),                 # one output pixel per image (M = 2)
]


@pytest.mark.parametrize("geom", GEOMETRIES, ids=lambda g: "x".join(map(str, g[:7])) + f"_s{g[7]}p{g[8]}d{g[9]}g{g[10]}")
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_geometries(order, dtype, geom):
    N, C, H, W, K, R, S, stride, padding, dilation, groups = geom
    x, w, b = make(N, C, H, W, K, R, S, dtype, groups=groups, seed=2)
    ok, y, ref = run(x, w, b, stride, padding, dilation, groups)
    assert ok
    assert_matches(y, ref, dtype)


@pytest.mark.parametrize("bias,relu", [(False, False), (True, False), (False, True), (True, True)])
def test_bias_and_relu_epilogue(order, bias, relu):
    x, w, b = make(2, 16, 6, 7, 40, 3, 3, torch.float16, seed=3, bias=bias)
    ok, y, ref = run(x, w, b, padding=1, relu=relu)
    assert ok
    assert_matches(y, ref, torch.float16)
    if relu:
        assert (y >= 0).all()


def test_strided_views_and_nchw_output(order):
    """x: channels 8..23 of a 32-channel NHWC tensor (pixel stride 32, base offset 16 bytes); y: NCHW
    (channel stride P*Q: the epilogue's scalar path); w: KRSC with a padded K stride."""
    dtype = torch.bfloat16
    xb, _, b = make(2, 32, 8, 8, 24, 3, 3, dtype, seed=4)
    x = xb[:, 8:24]
    wb = torch.randn(24, 3, 3, 24).to(dtype)          # K, R, S, C with C padded to 24
    w = wb[:, :, :, :16].permute(0, 3, 1, 2)           # (K, C=16, R, S), channel stride 1
    assert x.stride(1) == 1 and w.stride(1) == 1
    ref = reference(x, w, b, 1, 1, 1, 1, False)
    y = torch.full(ref.shape, float("nan"), dtype=dtype)   # NCHW contiguous
    ok, y, ref = run(x, w, b, padding=1, y=y)
    assert ok
    assert_matches(y, ref, dtype)


@pytest.mark.parametrize("dtype,C,groups,eligible", [
    (torch.float16, 6, 1, False), (torch.float16, 12, 1, False), (torch.bfloat16, 20, 1, False),
    (torch.float16, 16, 2, True), (torch.float16, 24, 2, False),     # Cg = 8 / 12
    (torch.float32, 6, 1, False), (torch.float32, 12, 1, True),      # fp32 chunks are 4 channels
])
def test_odd_channel_counts_are_not_eligible(dtype, C, groups, eligible):
    x, w, b = make(1, C, 5, 5, 8, 3, 3, dtype, groups=groups, seed=5)
    ok, y, ref = run(x, w, b, padding=1, groups=groups)
    assert ok == eligible
    if eligible:
        assert_matches(y, ref, dtype)
    else:
        assert torch.isnan(y).all(), "an ineligible problem wrote its output"
        why = k.conv2d_fwd_tc_ineligible(conv_shape(x, w, y, 1, 1, 1, groups), CODE[dtype], t4(x), t4(w), t4(y), True)
        assert "not a multiple of" in why


def test_other_ineligible_problems():
    x, w, b = make(1, 16, 5, 5, 8, 3, 3, torch.float16)
    cases = {
        "float64": (x.double().contiguous(memory_format=torch.channels_last),
                    w.double().contiguous(memory_format=torch.channels_last), b.double(), True),
        "TF32 not allowed": (x.float(), w.float(), b.float(), False),
        "input is not channels_last": (x.contiguous(), w, b, True),
        "weight is not KRSC": (x, w.contiguous(), b, True),
        "input strides or address": (torch.empty(1 * 5 * 5 * 16 + 4, dtype=torch.float16)[4:].view(1, 5, 5, 16)
                                     .permute(0, 3, 1, 2).copy_(x), w, b, True),
    }
    for reason, (xx, ww, bb, allow) in cases.items():
        ok, y, _ = run(xx, ww, bb, padding=1, allow_tf32=allow)
        assert not ok, reason
        assert torch.isnan(y).all(), reason
        why = k.conv2d_fwd_tc_ineligible(conv_shape(xx, ww, y, 1, 1, 1, 1), CODE[xx.dtype], t4(xx), t4(ww), t4(y), allow)
        assert reason.split()[0].lower() in why.lower(), (reason, why)


def test_empty_batch_and_bad_arguments():
    x, w, b = make(1, 16, 5, 5, 8, 3, 3, torch.float16)
    x0 = x[:0]
    y0 = torch.empty(0, 8, 5, 5, dtype=torch.float16)
    assert k.conv2d_fwd_tc(conv_shape(x0, w, y0, 1, 1, 1, 1), CODE[torch.float16], t4(x0), t4(w), 0, t4(y0),
                           False, True, -1)
    y = torch.empty(1, 8, 5, 5, dtype=torch.float16)
    bad = list(conv_shape(x, w, y, 1, 1, 1, 1))
    bad[4] = 9   # K disagrees with the weight
    with pytest.raises(ValueError, match="weight has size"):
        k.conv2d_fwd_tc(tuple(bad), CODE[torch.float16], t4(x), t4(w), 0, t4(y), False, True, -1)


@pytest.mark.parametrize("shape,sms,want", [
    ((32, 64, 56, 56, 64, 3, 3, 56, 56, 1, 1, 1, 1, 1, 1, 1), 108, "128x64"),    # ResNet-50 conv2_x 3x3
    ((32, 64, 56, 56, 256, 1, 1, 56, 56, 1, 1, 0, 0, 1, 1, 1), 108, "128x128"),  # conv2_x 1x1 expand
    ((2, 16, 9, 9, 24, 3, 3, 9, 9, 1, 1, 1, 1, 1, 1, 1), 108, "64x64"),          # tiny
])
def test_tile_heuristic(shape, sms, want):
    assert k.conv2d_fwd_tc_choose(shape, CODE[torch.float16], sms) == want


# ---- dgrad and wgrad ------------------------------------------------------------------------------------

def backward_case(N, C, H, W, K, R, S, stride, padding, dilation, groups, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    cl = torch.channels_last
    x = torch.randn(N, C, H, W, generator=g).to(dtype).contiguous(memory_format=cl)
    w = torch.randn(K, C // groups, R, S, generator=g).to(dtype).contiguous(memory_format=cl)
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    P = (H + 2 * ph - dh * (R - 1) - 1) // sh + 1
    Q = (W + 2 * pw - dw * (S - 1) - 1) // sw + 1
    dy = torch.randn(N, K, P, Q, generator=g).to(dtype).contiguous(memory_format=cl)
    rx, rw, rdy = (tf32(a) if dtype == torch.float32 else a for a in (x, w, dy))
    xd, wd = rx.double().requires_grad_(), rw.double().requires_grad_()
    F.conv2d(xd, wd, None, (sh, sw), (ph, pw), (dh, dw), groups).backward(rdy.double())
    shape = (N, C, H, W, K, R, S, P, Q, sh, sw, ph, pw, dh, dw, groups)
    return shape, x, w, dy, xd.grad, wd.grad


def run_dgrad(shape, dy, w, dtype, config="auto", dx=None, relu_y=None):
    N, C, H, W = shape[:4]
    if dx is None:
        dx = torch.full((N, C, H, W), float("nan"), dtype=dtype).contiguous(memory_format=torch.channels_last)
    cfg = -1 if config == "auto" else CONFIGS.index(config)
    ok = k.conv2d_dgrad_tc(shape, CODE[dtype], t4(dy), t4(w), t4(relu_y) if relu_y is not None else None, t4(dx),
                           True, cfg)
    return ok, dx


def run_wgrad(shape, dy, x, dtype, config="auto", splits=0, dw=None):
    K, Cg, R, S = shape[4], shape[1] // shape[15], shape[5], shape[6]
    if dw is None:
        dw = torch.full((K, Cg, R, S), float("nan"), dtype=dtype).contiguous(memory_format=torch.channels_last)
    cfg = -1 if config == "auto" else CONFIGS.index(config)
    nbytes = k.conv2d_wgrad_tc_workspace_bytes(shape, CODE[dtype], cfg, splits)
    ws = torch.full((max(1, nbytes // 4),), float("nan"))
    ok = k.conv2d_wgrad_tc(shape, CODE[dtype], t4(dy), t4(x), None, t4(dw), ws.data_ptr(), nbytes, True, cfg, splits)
    return ok, dw, nbytes


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_backward_every_config_and_dtype(order, dtype, config):
    """dgrad: N*H*W = 2*9*10 = 180 rows, C = 24 columns, R*S*K = 9*40 = 360 reduction (partial k-tile).
    wgrad: K = 40 rows, R*S*C = 216 columns, N*P*Q = 180 reduction, split in 2."""
    shape, x, w, dy, dx_ref, dw_ref = backward_case(2, 24, 9, 10, 40, 3, 3, 1, 1, 1, 1, dtype, seed=6)
    ok, dx = run_dgrad(shape, dy, w, dtype, config)
    assert ok
    assert_matches(dx, dx_ref, dtype)
    ok, dw, nbytes = run_wgrad(shape, dy, x, dtype, config, splits=2)
    assert ok and nbytes > 0
    assert_matches(dw, dw_ref, dtype)


@pytest.mark.parametrize("geom", GEOMETRIES, ids=lambda g: "x".join(map(str, g[:7])) + f"_s{g[7]}p{g[8]}d{g[9]}g{g[10]}")
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_backward_geometries(order, dtype, geom):
    N, C, H, W, K, R, S, stride, padding, dilation, groups = geom
    shape, x, w, dy, dx_ref, dw_ref = backward_case(N, C, H, W, K, R, S, stride, padding, dilation, groups, dtype, seed=7)
    Kg = K // groups
    vec = 4 if dtype == torch.float32 else 8
    ok, dx = run_dgrad(shape, dy, w, dtype)
    assert ok == (Kg % vec == 0)   # dy's chunks run along k
    if ok:
        assert_matches(dx, dx_ref, dtype)
    ok, dw, _ = run_wgrad(shape, dy, x, dtype)
    assert ok == (Kg % vec == 0)
    if ok:
        assert_matches(dw, dw_ref, dtype)


@pytest.mark.parametrize("splits", [1, 3, 7])
def test_wgrad_split_reduction_is_deterministic(splits):
    """A forced split (7 splits of a 15-k-tile reduction: the last one shorter), the same bits twice."""
    shape, x, w, dy, _, dw_ref = backward_case(3, 16, 11, 10, 16, 3, 3, 1, 1, 1, 1, torch.float16, seed=8)
    ok, dw1, nbytes = run_wgrad(shape, dy, x, torch.float16, "64x64", splits)
    assert ok and (nbytes > 0) == (splits > 1)
    assert_matches(dw1, dw_ref, torch.float16)
    _, dw2, _ = run_wgrad(shape, dy, x, torch.float16, "64x64", splits)
    assert torch.equal(dw1, dw2)


def test_backward_strided_outputs_and_ineligible():
    """dx and dw with NCHW / KCRS strides (scalar epilogue stores); the fused-ReLU mask, odd K and an
    NCHW grad_output are not eligible and leave the outputs untouched."""
    dtype = torch.bfloat16
    shape, x, w, dy, dx_ref, dw_ref = backward_case(2, 16, 7, 6, 16, 3, 3, 1, 1, 1, 1, dtype, seed=9)
    dx = torch.full(x.shape, float("nan"), dtype=dtype)                  # NCHW
    ok, dx = run_dgrad(shape, dy, w, dtype, dx=dx)
    assert ok
    assert_matches(dx, dx_ref, dtype)
    dw = torch.full(w.shape, float("nan"), dtype=dtype)                  # KCRS
    ok, dw, _ = run_wgrad(shape, dy, x, dtype, dw=dw, splits=1)
    assert ok
    assert_matches(dw, dw_ref, dtype)

    ok, dx = run_dgrad(shape, dy, w, dtype, relu_y=dy)
    assert not ok and torch.isnan(dx).all()
    ok, dx = run_dgrad(shape, dy.contiguous(), w, dtype)
    assert not ok and torch.isnan(dx).all()
    shape12, x12, w12, dy12, _, _ = backward_case(1, 16, 5, 5, 12, 3, 3, 1, 1, 1, 1, dtype)
    ok, dx = run_dgrad(shape12, dy12, w12, dtype)
    assert not ok and torch.isnan(dx).all()
    ok, dw, _ = run_wgrad(shape12, dy12, x12, dtype)
    assert not ok and torch.isnan(dw).all()
