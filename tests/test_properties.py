"""Property-based tests (hypothesis): random configurations of every public op against torch.

Valid configurations (conv2d, conv2d_relu, max_pool2d with and without indices, avg_pool2d, and the
nn layers): shapes incl. odd sizes, N = 0 and unbatched (C, H, W) input; stride, padding ('same' incl.
even kernels, i.e. asymmetric padding, 'valid', ints, lists, asymmetric pairs), dilation, groups
(incl. depthwise), bias, ceil_mode, count_include_pad, divisor_override, return_indices; input /
weight / grad_output layouts: contiguous, channels_last, sliced and permuted views, expanded (stride
0); dtypes float32, float64, float16, bfloat16. Output and every gradient vs torch in float64 from the
same values and views (helpers.REL_TOL's relative bound, plus the accumulation's rounding error
relative to the summed terms' magnitudes: assert_close), output memory format as torch's, max-pool
values and indices exactly torch's.

Invalid (or borderline) configurations: a valid configuration with one or two arguments replaced by
out-of-range, wrongly shaped or wrongly typed values. Wherever torch raises, fastconv must raise
fastconv.ArgumentError / ArgumentTypeError (its validation, a message naming the problem), never an
error from inside a kernel or a crash; wherever torch works, fastconv must work and agree with it,
except for these deliberate differences (each counted as a hypothesis event):
  - integer inputs (torch's CPU conv2d and max_pool2d take them): fastconv computes floating-point
    tensors only and raises ArgumentTypeError saying so;
  - an input with 0 channels: torch returns a 0-channel tensor (dropping the bias), fastconv the
    convolution's value, the empty sum (N, K, P, Q) plus bias;
  - mismatched input/weight/bias dtypes are always rejected (torch skips that check for an empty
    input and for some 'same'-padded shapes, where it promotes);
  - an empty batch (N = 0) is validated like any other: where torch's empty-batch shortcut skips a
    check (e.g. dilation > 0), fastconv raises if torch rejects the same call with one sample.
Two torch bugs shape the references: torch's float16 CPU conv2d crashes on some shapes (e.g. a padding
wider than the input), so torch is never run in float16/bfloat16 here; and torch's max-pool backward
writes out of bounds for a window lying entirely in the padding (its index is outside the plane), so
the max-pool gradient reference is a scatter of grad_output at torch's forward indices that skips
those (max_pool_grad_reference), which is what fastconv does.

Example budget: tests/_hypothesis_profiles.py ('ci' default: fixed seed, bounded; `--hypothesis-profile
long` for thousands of examples).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import event, given, note
from hypothesis import strategies as st

import fastconv
import fastconv.functional as FC
from helpers import REL_TOL, pair, same_memory_format

# float32 most of the time: it is the main target, and the half types' bound is loose.
DTYPE = st.sampled_from([torch.float32, torch.float32, torch.float32, torch.float64, torch.float16,
                         torch.bfloat16])
FC_ERRORS = (fastconv.ArgumentError, fastconv.ArgumentTypeError)

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")


def int_or_pair(lo, hi):
    """An int argument in every form torch takes: int, (a, b), [a], [a, b]."""
    i = st.integers(lo, hi)
    return st.one_of(i, st.tuples(i, i), i.map(lambda v: [v]), st.lists(i, min_size=2, max_size=2))


# ----------------------------------------------------------------------------------------------------
# Layouts: a leaf tensor (what gradients are taken against) and the view of it the op receives.

X_LAYOUTS = ["contiguous", "channels_last", "slice", "permuted", "expanded"]
W_LAYOUTS = ["contiguous", "channels_last", "slice", "permuted"]
G_LAYOUTS = ["contiguous", "channels_last", "transposed"]


def _leaf_and_view(shape, layout, dtype, gen):
    """(leaf, view_fn): view_fn(leaf) has `shape` and the layout; the leaf requires grad."""
    shape = tuple(shape)
    d = len(shape)

    def rnd(s):
        return torch.randn(*s, generator=gen, dtype=torch.float64).to(dtype)

    if layout == "channels_last" and d == 4:
        return rnd(shape).contiguous(memory_format=torch.channels_last).requires_grad_(), lambda t: t
    if layout == "slice":
        # every dim sliced out of a larger tensor: offset 1 and step 2 in the last two dims
        big = tuple(s + 1 for s in shape[:-2]) + tuple(2 * s + 1 for s in shape[-2:])
        idx = tuple(slice(1, 1 + s) for s in shape[:-2]) + tuple(slice(1, 1 + 2 * s, 2) for s in shape[-2:])
        return rnd(big).requires_grad_(), lambda t: t[idx]
    if layout == "permuted" or (layout == "channels_last" and d == 3):
        perm = list(reversed(range(d)))
        return rnd(tuple(shape[p] for p in perm)).requires_grad_(), lambda t: t.permute(*perm)
    if layout == "expanded" and d == 4 and shape[0] > 0:
        return rnd((1,) + shape[1:]).requires_grad_(), lambda t: t.expand(*shape)
    return rnd(shape).requires_grad_(), lambda t: t


def _grad_output(shape, how, dtype, gen):
    shape = tuple(shape)
    if how == "transposed" and len(shape) >= 2:
        swapped = shape[:-2] + (shape[-1], shape[-2])
        return torch.randn(swapped, generator=gen, dtype=torch.float64).to(dtype).transpose(-1, -2)
    g = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    if how == "channels_last" and len(shape) == 4:
        g = g.contiguous(memory_format=torch.channels_last)
    return g


def _ref_leaf(leaf):
    return leaf.detach().to(torch.float64).requires_grad_()


def max_pool_grad_reference(indices, g, x_shape):
    """dx of max pooling in float64: g added at the forward's indices (torch's, checked equal to ours)
    within each (n, c) plane. An index outside the plane, which torch gives a window lying entirely in
    the padding (its output is -inf and depends on no input), contributes nothing. torch's own backward
    is not used for this: it adds such a gradient outside the plane, into the next plane or past the end
    of the buffer (heap corruption; found by these tests)."""
    H, W = x_shape[-2:]
    planes = indices.reshape(-1, indices.shape[-2] * indices.shape[-1])
    grads = g.detach().to(torch.float64).reshape(planes.shape)
    inside = (planes >= 0) & (planes < H * W)
    dx = torch.zeros(planes.shape[0], H * W, dtype=torch.float64)
    dx.scatter_add_(1, torch.where(inside, planes, 0), torch.where(inside, grads, 0))
    return dx.reshape(x_shape)


def abs_scales(fn, inputs, g, mask=None):
    """The magnitudes a result's rounding error is relative to: fn on the inputs' absolute values, and
    its gradients for |grad_output| (times the ReLU mask, if any), all in float64."""
    leaves = [t.detach().to(torch.float64).abs().requires_grad_() if t is not None else None for t in inputs]
    out = fn(*leaves)
    ga = g.detach().to(torch.float64).abs()
    if mask is not None:
        ga = ga * mask
    wanted = [t for t in leaves if t is not None]
    return [out.detach().abs()] + [t.abs() for t in torch.autograd.grad(out, wanted, ga)]


def assert_close(got, ref, scale, dtype, what, extra=0.0):
    """||got - ref|| <= REL_TOL[dtype] * ||ref|| + 8 u ||scale||: helpers.REL_TOL's relative bound, plus the
    rounding error of the kernels' accumulation (unit roundoff u of float32, or float64), which is
    relative to the magnitudes of the summed terms (scale, see abs_scales), not to the result: a sum
    with heavy cancellation, e.g. a grad_bias of one channel, has a small ||ref|| and a normal error."""
    assert tuple(got.shape) == tuple(ref.shape), f"{what}: shape {tuple(got.shape)} != torch's {tuple(ref.shape)}"
    if ref.numel() == 0:
        return
    a, b = got.detach().to(torch.float64), ref.detach().to(torch.float64)
    assert torch.isfinite(a).all() or not torch.isfinite(b).all(), f"{what}: non-finite values"
    u = 2.0 ** -53 if dtype == torch.float64 else 2.0 ** -24
    norm = torch.linalg.vector_norm
    err, bound = norm(a - b).item(), REL_TOL[dtype] * norm(b).item() + 8 * u * norm(scale).item() + extra
    assert err <= bound, (f"{what}: ||ours - torch|| = {err:.3e} > {bound:.3e} (relative {err / max(norm(b).item(), 1e-300):.2e}, "
                          f"dtype {dtype})")


# ----------------------------------------------------------------------------------------------------
# Convolution


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    Cg, Kg = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    if draw(st.integers(0, 4)) == 0:  # depthwise (with channel multiplier Kg)
        Cg = 1
    R, S = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dilation = draw(int_or_pair(1, 3))
    dh, dw = pair(dilation)
    pad_kind = draw(st.sampled_from(["int", "pair", "same", "valid"]))
    if pad_kind == "same":
        stride = draw(st.sampled_from([1, (1, 1), [1]]))
        padding, (ph, pw) = "same", (0, 0)  # same: the padded size always fits the kernel
        min_h, min_w = 1, 1
    else:
        stride = draw(int_or_pair(1, 3))
        if pad_kind == "valid":
            padding = "valid"
        elif pad_kind == "int":
            padding = draw(st.integers(0, 3))
        else:
            padding = draw(st.sampled_from([tuple, list]))(draw(st.tuples(st.integers(0, 3), st.integers(0, 3))))
        ph, pw = (0, 0) if padding == "valid" else pair(padding)
        min_h, min_w = max(1, dh * (R - 1) + 1 - 2 * ph), max(1, dw * (S - 1) + 1 - 2 * pw)
    H, W = min_h + draw(st.integers(0, 6)), min_w + draw(st.integers(0, 6))
    N = draw(st.sampled_from([None, 0, 1, 1, 2, 3]))  # None: unbatched (C, H, W)
    return dict(
        op=draw(st.sampled_from(["conv2d", "conv2d_relu"])), N=N, C=Cg * groups, K=Kg * groups, groups=groups,
        H=H, W=W, R=R, S=S, stride=stride, padding=padding, dilation=dilation, bias=draw(st.booleans()),
        x_layout=draw(st.sampled_from(X_LAYOUTS)), w_layout=draw(st.sampled_from(W_LAYOUTS)),
        g_layout=draw(st.sampled_from(G_LAYOUTS)), dtype=draw(DTYPE), seed=draw(st.integers(0, 2**16)),
    )


def _torch_conv(op):
    if op == "conv2d":
        return F.conv2d
    return lambda *a, **k: torch.relu(F.conv2d(*a, **k))


def check_conv(case):
    """Ours in the case's dtype vs torch in float64 on the same values and the same views. Gradients
    are taken w.r.t. the views the op receives (for an expanded input, the sum over the batch that
    autograd adds next is not the op's)."""
    note(repr(case))
    dtype, gen = case["dtype"], torch.Generator().manual_seed(case["seed"])
    xs = (case["C"], case["H"], case["W"]) if case["N"] is None else (case["N"], case["C"], case["H"], case["W"])
    xl, xv = _leaf_and_view(xs, case["x_layout"], dtype, gen)
    wl, wv = _leaf_and_view((case["K"], case["C"] // case["groups"], case["R"], case["S"]), case["w_layout"],
                            dtype, gen)
    bl = torch.randn(case["K"], generator=gen, dtype=torch.float64).to(dtype).requires_grad_() if case["bias"] else None
    kw = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"], groups=case["groups"])
    fn, torch_fn = getattr(FC, case["op"]), _torch_conv(case["op"])

    x, w = xv(xl), wv(wl)
    y = fn(x, w, bl, **kw)
    inputs = [x, w] + ([bl] if bl is not None else [])
    g = _grad_output(y.shape, case["g_layout"], dtype, gen)
    grads = torch.autograd.grad(y, inputs, g)

    # torch, float64, same views (so the same strides): the reference values and memory format. (Not
    # torch in float16 on the CPU: its conv2d crashes on some of these shapes, e.g. padding > width.)
    xr, wr = xv(_ref_leaf(xl)), wv(_ref_leaf(wl))
    br = _ref_leaf(bl) if bl is not None else None
    y_ref = torch_fn(xr, wr, br, **kw)
    ref_grads = torch.autograd.grad(y_ref, [xr, wr] + ([br] if bl is not None else []), g.to(torch.float64))
    assert y.dtype == dtype and y.shape == y_ref.shape, f"{y.dtype} {tuple(y.shape)} vs torch's {tuple(y_ref.shape)}"
    if y.numel():  # (the strides of an empty result carry no layout: torch's are arbitrary there)
        same_memory_format(y, y_ref)
    mask = (y_ref > 0).to(torch.float64) if case["op"] == "conv2d_relu" else None
    scales = abs_scales(lambda a, b, c: F.conv2d(a, b, c, **kw), [xr, wr, br], g, mask)
    for name, got, ref, scale in zip(("output", "grad_input", "grad_weight", "grad_bias"), [y, *grads],
                                     [y_ref, *ref_grads], scales):
        assert got.dtype == dtype
        assert_close(got, ref, scale, dtype, name)


@given(case=conv_cases())
def test_conv_matches_torch(backend, case):
    event(f"{case['op']} {case['dtype']}")
    check_conv(case)


# ----------------------------------------------------------------------------------------------------
# Pooling


@st.composite
def pool_cases(draw, kind):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    kernel = draw(st.sampled_from(["int", "tuple", "list"]))
    kernel = kh if kernel == "int" else (kh, kw) if kernel == "tuple" else [kh, kw]
    kh, kw = pair(kernel)
    stride = draw(st.one_of(st.none(), st.just([]), int_or_pair(1, 3)))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    padding = draw(st.sampled_from([min(ph, pw), (ph, pw), [ph, pw]]))
    ph, pw = pair(padding)
    dilation = draw(int_or_pair(1, 3)) if kind == "max" else 1
    dh, dw = pair(dilation)
    H = max(1, dh * (kh - 1) + 1 - 2 * ph) + draw(st.integers(0, 7))
    W = max(1, dw * (kw - 1) + 1 - 2 * pw) + draw(st.integers(0, 7))
    case = dict(kind=kind, N=draw(st.sampled_from([None, 0, 1, 1, 2, 3])), C=draw(st.integers(1, 6)), H=H, W=W,
                kernel_size=kernel, stride=stride, padding=padding, ceil_mode=draw(st.booleans()),
                layout=draw(st.sampled_from(X_LAYOUTS)), grad=draw(st.sampled_from(G_LAYOUTS + ["none"])),
                dtype=draw(DTYPE), seed=draw(st.integers(0, 2**16)))
    if kind == "max":
        case.update(dilation=dilation, return_indices=draw(st.booleans()))
    else:
        case.update(count_include_pad=draw(st.booleans()),
                    divisor_override=draw(st.one_of(st.none(), st.integers(-3, 9).filter(bool))))
    return case


def _pool_kwargs(case):
    keys = ["kernel_size", "stride", "padding", "ceil_mode"]
    keys += ["dilation"] if case["kind"] == "max" else ["count_include_pad", "divisor_override"]
    return {k: case[k] for k in keys}


def check_pool(case):
    """Ours vs torch in float64 on the same values and views (max pooling is exact: values, indices
    and -inf for a window in the padding equal; gradients w.r.t. the view the op receives)."""
    note(repr(case))
    dtype, gen = case["dtype"], torch.Generator().manual_seed(case["seed"])
    shape = (case["C"], case["H"], case["W"]) if case["N"] is None else (case["N"], case["C"], case["H"], case["W"])
    leaf, view = _leaf_and_view(shape, case["layout"], dtype, gen)
    kw = _pool_kwargs(case)
    with_grad = case["grad"] != "none"
    x = view(leaf) if with_grad else view(leaf).detach()
    xr = view(_ref_leaf(leaf))
    if case["kind"] == "max":
        ri = case["return_indices"]
        out = FC.max_pool2d(x, **kw, return_indices=ri)
        y, idx = out if ri else (out, None)
        y_ref, idx_ref = F.max_pool2d(xr, **kw, return_indices=True)
        assert isinstance(y, torch.Tensor) and y.shape == y_ref.shape and y.dtype == dtype
        assert torch.equal(y.detach().double(), y_ref.detach()), "max_pool2d output differs from torch's"
        if ri:
            assert idx.dtype == torch.int64 and torch.equal(idx, idx_ref), "indices differ from torch's"
            if idx.numel():
                same_memory_format(idx, idx_ref, "indices")
    else:
        y = FC.avg_pool2d(x, **kw)
        y_ref = F.avg_pool2d(xr, **kw)
        assert y.shape == y_ref.shape and y.dtype == dtype
        scales = abs_scales(lambda a: F.avg_pool2d(a, **kw), [xr], torch.ones(y.shape))
        assert_close(y, y_ref, scales[0], dtype, "output")
    if y.numel():
        same_memory_format(y, y_ref)
    if not with_grad:
        assert not y.requires_grad
        return
    g = _grad_output(y.shape, case["grad"], dtype, gen)
    (gx,) = torch.autograd.grad(y, x, g)
    if case["kind"] == "max":
        gx_ref = max_pool_grad_reference(idx_ref, g, x.shape)
        scale = gx_ref  # (one term per element: exact up to the final rounding)
    else:
        (gx_ref,) = torch.autograd.grad(y_ref, xr, g.to(torch.float64))
        scale = abs_scales(lambda a: F.avg_pool2d(a, **kw), [xr], g)[1]
    assert gx.dtype == dtype
    assert_close(gx, gx_ref, scale, dtype, "grad_input")


@given(case=pool_cases("max"))
def test_max_pool_matches_torch(backend, case):
    event(f"return_indices={case['return_indices']} {case['dtype']}")
    check_pool(case)


@given(case=pool_cases("avg"))
def test_avg_pool_matches_torch(backend, case):
    event(f"divisor_override={case['divisor_override'] is not None} {case['dtype']}")
    check_pool(case)


# ----------------------------------------------------------------------------------------------------
# nn layers: same constructor arguments as torch's, same parameters (state_dict), same results.


@st.composite
def conv_module_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2]))
    C, K = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    R, S = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    mode = draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate", "circular"]))
    dilation = draw(int_or_pair(1, 2))
    if draw(st.booleans()):
        stride, padding = 1, draw(st.sampled_from(["same", "valid"]))
    else:
        stride, padding = draw(int_or_pair(1, 3)), draw(st.one_of(st.integers(0, 2),
                                                                  st.tuples(st.integers(0, 2), st.integers(0, 2))))
    dh, dw = pair(dilation)
    # input at least as large as the dilated kernel, and larger than the padding (reflect needs pad < size)
    H = max(dh * (R - 1) + 1, 3) + draw(st.integers(0, 5))
    W = max(dw * (S - 1) + 1, 3) + draw(st.integers(0, 5))
    return dict(relu=draw(st.booleans()), args=(C, K, (R, S)),
                kwargs=dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                            bias=draw(st.booleans()), padding_mode=mode),
                N=draw(st.sampled_from([None, 0, 1, 2])), H=H, W=W, layout=draw(st.sampled_from(X_LAYOUTS)),
                dtype=draw(st.sampled_from([torch.float32, torch.float64])), seed=draw(st.integers(0, 2**16)))


@given(case=conv_module_cases())
def test_conv_modules_match_torch(backend, case):
    note(repr(case))
    dtype, gen = case["dtype"], torch.Generator().manual_seed(case["seed"])
    torch.manual_seed(case["seed"])
    ref_layer = torch.nn.Conv2d(*case["args"], **case["kwargs"]).to(torch.float64)
    cls = fastconv.nn.Conv2dReLU if case["relu"] else fastconv.nn.Conv2d
    layer = cls(*case["args"], **case["kwargs"]).to(dtype)
    assert layer.state_dict().keys() == ref_layer.state_dict().keys()
    layer.load_state_dict(ref_layer.state_dict())  # same parameters (rounded to dtype)
    ref_layer.load_state_dict(layer.state_dict())  # ... and torch uses exactly those values
    C, H, W = case["args"][0], case["H"], case["W"]
    shape = (C, H, W) if case["N"] is None else (case["N"], C, H, W)
    leaf, view = _leaf_and_view(shape, case["layout"], dtype, gen)
    y = layer(view(leaf))
    ref = _ref_leaf(leaf)
    y_ref = ref_layer(view(ref))
    mask = (y_ref > 0).to(torch.float64) if case["relu"] else None
    if case["relu"]:
        y_ref = torch.relu(y_ref)
    g = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    ours = torch.autograd.grad(y, [leaf, *layer.parameters()], g.to(dtype))
    theirs = torch.autograd.grad(y_ref, [ref, *ref_layer.parameters()], g)
    names = [n for n, _ in ref_layer.named_parameters()]

    def layer_on(x_, *params):  # the torch layer with these parameter values
        return torch.func.functional_call(ref_layer, dict(zip(names, params)), (view(x_),))

    scales = abs_scales(layer_on, [ref, *ref_layer.parameters()], g, mask)
    for name, a, b, sc in zip(["output", "grad input"] + [f"grad {n}" for n in names], [y, *ours], [y_ref, *theirs],
                              scales):
        assert_close(a, b, sc, dtype, name)


@st.composite
def pool_module_cases(draw):
    kind = draw(st.sampled_from(["max", "avg"]))
    case = draw(pool_cases(kind))
    case["dtype"] = draw(st.sampled_from([torch.float32, torch.float64]))
    return case


@given(case=pool_module_cases())
def test_pool_modules_match_torch(backend, case):
    note(repr(case))
    kw = _pool_kwargs(case)
    if case["kind"] == "max":
        kw["return_indices"] = case["return_indices"]
        ours, ref_layer = fastconv.nn.MaxPool2d(**kw), torch.nn.MaxPool2d(**kw)
    else:
        ours, ref_layer = fastconv.nn.AvgPool2d(**kw), torch.nn.AvgPool2d(**kw)
    assert repr(ours).split("(", 1)[1] == repr(ref_layer).split("(", 1)[1]
    dtype, gen = case["dtype"], torch.Generator().manual_seed(case["seed"])
    shape = (case["C"], case["H"], case["W"]) if case["N"] is None else (case["N"], case["C"], case["H"], case["W"])
    leaf, view = _leaf_and_view(shape, case["layout"], dtype, gen)
    out, out_ref = ours(view(leaf)), ref_layer(view(_ref_leaf(leaf)))
    if case["kind"] == "max" and case["return_indices"]:
        (out, idx), (out_ref, idx_ref) = out, out_ref
        assert torch.equal(idx, idx_ref)
    if case["kind"] == "max":  # exact, and -inf for a window that lies in the padding
        assert torch.equal(out.double(), out_ref)
    else:
        scale = abs_scales(lambda a: ref_layer(view(a)), [leaf], torch.ones(out.shape))[0]
        assert_close(out, out_ref, scale, dtype, "output")
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    (gx,) = torch.autograd.grad(out, leaf, g.to(dtype))
    if case["kind"] == "max":
        _, idx_ref = F.max_pool2d(view(leaf).detach().double(), **dict(kw, return_indices=True))
        plane = max_pool_grad_reference(idx_ref, g, view(leaf).shape)
        ref = _ref_leaf(leaf)
        (gx_ref,) = torch.autograd.grad(view(ref), ref, plane)  # through the view, back to the leaf
        scale = gx_ref
    else:
        ref = _ref_leaf(leaf)
        (gx_ref,) = torch.autograd.grad(ref_layer(view(ref)), ref, g)
        scale = abs_scales(lambda a: ref_layer(view(a)), [leaf], g)[1]
    assert_close(gx, gx_ref, scale, dtype, "grad_input")


# ----------------------------------------------------------------------------------------------------
# Invalid and borderline configurations: a valid case with one or two arguments mutated. Whatever
# torch does, fastconv does: raise (with its own clear error) or give torch's result.

BAD_INTS = [0, -1, -3, 1.5, 2.0, True, None, "2", (1, 0), (0, 1), (-1, 2), (1, 1, 1), (), [], (2,), [3, 1],
            (1.0, 1), torch.tensor(2), torch.tensor([2]), torch.tensor([1, 2]), torch.tensor(2.0), torch.tensor(True),
            (torch.tensor(1), 2)]


def _pick_bad(draw, extra=()):
    return draw(st.sampled_from(BAD_INTS + list(extra)))


@st.composite
def conv_mutations(draw):
    case = draw(conv_cases())
    case.update(x_layout="contiguous", w_layout="contiguous", g_layout="contiguous")
    xs = [case["C"], case["H"], case["W"]] if case["N"] is None else [case["N"], case["C"], case["H"], case["W"]]
    ws = [case["K"], case["C"] // case["groups"], case["R"], case["S"]]
    call = dict(x_shape=xs, w_shape=ws, b_shape=[case["K"]] if case["bias"] else None, x_dtype=case["dtype"],
                w_dtype=case["dtype"], b_dtype=case["dtype"], stride=case["stride"], padding=case["padding"],
                dilation=case["dilation"], groups=case["groups"], op=case["op"], seed=case["seed"])
    kinds = draw(st.lists(st.sampled_from(
        ["x_rank", "w_rank", "x_dim", "w_dim", "x_zero", "w_zero", "bias", "dtype", "stride", "padding", "dilation",
         "groups", "small_input"]), min_size=1, max_size=2))
    for kind in kinds:
        if kind == "x_rank":
            call["x_shape"] = draw(st.sampled_from([call["x_shape"][-2:], [1, 1] + call["x_shape"][-3:], []]))
        elif kind == "w_rank":
            call["w_shape"] = draw(st.sampled_from([call["w_shape"][:3], call["w_shape"] + [1], call["w_shape"][1:]]))
        elif kind in ("x_dim", "w_dim", "x_zero", "w_zero"):
            shape = call[kind[0] + "_shape"]
            if shape:
                i = draw(st.integers(0, len(shape) - 1))
                shape[i] = 0 if kind.endswith("zero") else max(0, shape[i] + draw(st.sampled_from([-1, 1, 2])))
        elif kind == "bias":
            K = call["w_shape"][0] if call["w_shape"] else 1
            call["b_shape"] = draw(st.sampled_from([[K + 1], [max(K - 1, 0)], [K, 1], [1, K], [], [K]]))
        elif kind == "dtype":
            which = draw(st.sampled_from(["x_dtype", "w_dtype", "b_dtype"]))
            call[which] = draw(st.sampled_from([torch.float64, torch.float16, torch.int32, torch.int64, torch.bool,
                                                torch.complex64, torch.float32, torch.uint8]))
        elif kind == "padding":
            call["padding"] = _pick_bad(draw, ["same", "valid", "full", "SAME", 7, (0, 5)])
        elif kind == "groups":
            call["groups"] = draw(st.sampled_from([0, -1, 2, 3, 4, 1.0, True, None, (1,), 6]))
        elif kind == "small_input":
            call["x_shape"] = call["x_shape"][:-2] + [1, draw(st.integers(0, 2))]
        else:
            call[kind] = _pick_bad(draw)
    return call


def _make_tensor(shape, dtype, gen):
    t = torch.randn(tuple(shape), generator=gen, dtype=torch.float64) * 3
    if dtype.is_complex:
        return t.to(dtype)
    if dtype == torch.bool:
        return t > 0
    if not dtype.is_floating_point:
        return t.round().to(dtype)
    return t.to(dtype)


HALF = (torch.float16, torch.bfloat16)


def _torch_safe(*tensors):
    """The tensors to ask torch with. Never torch's float16/bfloat16 CPU kernels (its conv2d crashes on
    some shapes, e.g. a padding wider than the input): when all dtypes are the same half type, float32
    copies; when they are mixed, the halves become int16 / int8 (dtypes no case uses otherwise), so that
    the dtypes still differ and torch's checks answer as for the original call, without computing."""
    dtypes = {t.dtype for t in tensors if t is not None}
    if not dtypes & set(HALF):
        return tensors
    if len(dtypes) == 1:
        return tuple(t.detach().float() if t is not None else None for t in tensors)
    stand_in = {torch.float16: torch.int16, torch.bfloat16: torch.int8}
    return tuple(t.detach().to(stand_in.get(t.dtype, t.dtype)) if t is not None else None for t in tensors)


def _known_difference(exc, x, torch_rejects_batch_of_one=None) -> bool:
    """The deliberate differences where torch works and fastconv raises (module docstring)."""
    msg = str(exc)
    if isinstance(exc, fastconv.ArgumentTypeError) and "must be a floating-point tensor" in msg:
        event("known difference: integer input (fastconv computes floating-point tensors only)")
        return True
    if isinstance(exc, fastconv.ArgumentTypeError) and "should be the same" in msg:
        # torch compares the input's dtype with the weight's and the bias's on most paths, but not for an
        # empty input, nor for some 'same'-padded shapes (it then promotes); fastconv always does
        event("known difference: mismatched dtypes are always rejected")
        return True
    if x.dim() == 4 and x.shape[0] == 0 and torch_rejects_batch_of_one is not None and torch_rejects_batch_of_one():
        # torch's empty-batch shortcut skips some checks (e.g. dilation > 0); the same call with one
        # sample is rejected by torch too
        event("known difference: an empty batch is validated like any other")
        return True
    return False


def _expect_same_behaviour(ours_fn, torch_fn, compare, x, torch_with_batch_of_one=None):
    """torch_fn() raising => ours_fn() raises fastconv's argument error; otherwise compare(ours, torch).
    torch_with_batch_of_one() (optional) runs torch's call with an input of batch size 1 instead of 0."""
    try:
        expected = torch_fn()
    except Exception as exc:  # noqa: BLE001  (whatever torch raises counts as a rejection)
        event("torch raises")
        note(f"torch raised {type(exc).__name__}: {exc}")
        with pytest.raises(FC_ERRORS) as info:
            ours_fn()
        assert str(info.value).strip(), "fastconv raised an error without a message"
        note(f"fastconv raised {type(info.value).__name__}: {info.value}")
        return
    event("torch works")
    try:
        got = ours_fn()
    except FC_ERRORS as exc:
        def rejects():
            try:
                torch_with_batch_of_one()
            except Exception:  # noqa: BLE001
                return True
            return False

        if _known_difference(exc, x, rejects if torch_with_batch_of_one is not None else None):
            return
        raise
    compare(got, expected)


def _compare_float(got, expected, dtype, scale):
    """got: ours in dtype; expected: torch's, in float64 for floating dtypes; scale: see abs_scales.
    For float16/bfloat16 the relative bound is at least twice the error of the exact result rounded to
    that dtype (results in the half types' subnormal range, e.g. with a huge divisor_override)."""
    assert isinstance(got, torch.Tensor)
    assert got.shape == expected.shape and got.dtype == dtype, (
        f"{got.dtype} {tuple(got.shape)} vs torch's {tuple(expected.shape)} (expected dtype {dtype})")
    extra = 0.0
    if dtype in HALF and expected.numel():
        extra = 2 * torch.linalg.vector_norm(expected.to(dtype).double() - expected).item()
    assert_close(got, expected, scale, dtype if dtype in REL_TOL else torch.float32, "output", extra)


@given(call=conv_mutations())
def test_conv_invalid_args_like_torch(backend, call):
    note(repr(call))
    gen = torch.Generator().manual_seed(call["seed"])
    x = _make_tensor(call["x_shape"], call["x_dtype"], gen)
    w = _make_tensor(call["w_shape"], call["w_dtype"], gen)
    b = _make_tensor(call["b_shape"], call["b_dtype"], gen) if call["b_shape"] is not None else None
    args = (call["stride"], call["padding"], call["dilation"], call["groups"])
    dtype = call["x_dtype"]
    relu = call["op"] == "conv2d_relu"

    def torch_fn():
        y = F.conv2d(*_torch_safe(x, w, b), *args)
        if dtype.is_floating_point:  # the reference: torch in float64
            y = F.conv2d(x.double(), w.double(), b.double() if b is not None else None, *args)
        return torch.relu(y) if relu else y

    def compare(got, expected):
        if x.dim() in (3, 4) and x.shape[-3] == 0 and got.shape != expected.shape:
            # The other difference: an input with 0 channels (and weight K x 0 x R x S). torch's
            # empty-input path returns a tensor with 0 channels (and drops the bias); fastconv returns
            # the convolution's value, an empty sum: shape (N, K, P, Q), the bias in every element.
            event("known difference: C = 0 gives the (N, K, P, Q) empty sum, torch a 0-channel tensor")
            K = w.shape[0]
            assert got.shape[-3] == K and got.shape[-2:] == expected.shape[-2:]
            want = torch.zeros_like(got) + (b.view(K, 1, 1) if b is not None else 0)
            assert torch.equal(got, torch.relu(want) if relu else want)
            return
        scale = F.conv2d(x.double().abs(), w.double().abs(), b.double().abs() if b is not None else None, *args)
        _compare_float(got, expected, dtype, scale)

    def torch_with_batch_of_one():
        x1 = torch.zeros((1,) + tuple(x.shape[1:]), dtype=x.dtype)
        return F.conv2d(*_torch_safe(x1, w, b), *args)

    _expect_same_behaviour(lambda: getattr(FC, call["op"])(x, w, b, *args), torch_fn, compare, x,
                           torch_with_batch_of_one)


@st.composite
def pool_mutations(draw):
    kind = draw(st.sampled_from(["max", "avg"]))
    case = draw(pool_cases(kind))
    case.update(layout="contiguous")
    shape = [case["C"], case["H"], case["W"]] if case["N"] is None else [case["N"], case["C"], case["H"], case["W"]]
    kw = _pool_kwargs(case)
    call = dict(kind=kind, shape=shape, dtype=case["dtype"], kw=kw, seed=case["seed"],
                return_indices=case.get("return_indices", False), requires_grad=draw(st.booleans()))
    names = ["rank", "dim", "zero", "dtype", "kernel_size", "stride", "padding", "ceil_mode", "small_input"]
    names += ["dilation"] if kind == "max" else ["count_include_pad", "divisor_override"]
    for m in draw(st.lists(st.sampled_from(names), min_size=1, max_size=2)):
        if m == "rank":
            call["shape"] = draw(st.sampled_from([shape[-2:], [1, 1] + shape[-3:], [shape[-1]]]))
        elif m in ("dim", "zero"):
            i = draw(st.integers(0, len(call["shape"]) - 1))
            call["shape"][i] = 0 if m == "zero" else max(0, call["shape"][i] + draw(st.sampled_from([-2, -1, 1])))
        elif m == "dtype":
            call["dtype"] = draw(st.sampled_from([torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64,
                                                  torch.float64]))
        elif m == "small_input":
            call["shape"] = call["shape"][:-2] + [draw(st.integers(0, 2)), draw(st.integers(0, 2))]
        elif m == "padding":
            kh, kw_ = pair(case["kernel_size"])  # (kw's may have been mutated already)
            kw["padding"] = _pick_bad(draw, [kh // 2 + 1, (0, kw_ // 2 + 1), (kh, 0)])
        elif m == "ceil_mode":
            kw["ceil_mode"] = draw(st.sampled_from([1, 0, None, "yes", 1.0]))
        elif m == "count_include_pad":
            kw["count_include_pad"] = draw(st.sampled_from([1, 0, None, "no"]))
        elif m == "divisor_override":
            kw["divisor_override"] = draw(st.sampled_from([0, -1, 2.0, True, "3", (2,), 10**6]))
        else:
            kw[m] = _pick_bad(draw, [None] if m == "stride" else [])
    return call


@given(call=pool_mutations())
def test_pool_invalid_args_like_torch(backend, call):
    note(repr(call))
    gen = torch.Generator().manual_seed(call["seed"])
    x = _make_tensor(call["shape"], call["dtype"], gen)
    dtype = call["dtype"]
    if call["requires_grad"] and dtype.is_floating_point:
        x.requires_grad_()
    kw, ri = call["kw"], call["return_indices"]
    ours_fn = getattr(FC, f"{call['kind']}_pool2d")
    torch_fn = getattr(F, f"{call['kind']}_pool2d")
    if call["kind"] == "max":
        kw = dict(kw, return_indices=ri)

    def reference():
        (xs,) = _torch_safe(x)
        out = torch_fn(xs, **kw)
        if dtype.is_floating_point:  # float64 reference (max pooling: exact in any float dtype)
            out = torch_fn(x.detach().double(), **kw)
        return out

    def compare(got, expected):
        if call["kind"] == "max" and ri:
            (got, idx), (expected, idx_t) = got, expected
            assert torch.equal(idx, idx_t), "indices differ from torch's"
        if call["kind"] == "max":
            assert got.shape == expected.shape and got.dtype == dtype
            assert torch.equal(got.detach().to(expected.dtype), expected.detach())
        else:
            _compare_float(got, expected, dtype, abs_scales(lambda a: torch_fn(a, **kw), [x], expected)[0])
        if x.requires_grad and got.numel():
            (gx,) = torch.autograd.grad(got.sum(), x)
            xr = x.detach().double().requires_grad_()
            if call["kind"] == "max":
                _, idx_ref = F.max_pool2d(xr.detach(), **dict(kw, return_indices=True))
                gx_ref = scale = max_pool_grad_reference(idx_ref, torch.ones(idx_ref.shape), x.shape)
            else:
                (gx_ref,) = torch.autograd.grad(torch_fn(xr, **kw).sum(), xr)
                scale = abs_scales(lambda a: torch_fn(a, **kw), [x], torch.ones(got.shape))[1]
            assert_close(gx, gx_ref, scale, dtype, "grad_input")

    def torch_with_batch_of_one():
        (x1,) = _torch_safe(torch.zeros((1,) + tuple(x.shape[1:]), dtype=x.dtype))
        return torch_fn(x1, **kw)

    _expect_same_behaviour(lambda: ours_fn(x, **kw), reference, compare, x, torch_with_batch_of_one)


# ----------------------------------------------------------------------------------------------------
# The strategies reach every kind of value of every axis (so no axis silently drops out of the tests).


def _draw(strategy, n=150):
    """n examples of a strategy, generated (not shrunk) with a fixed seed; no kernel runs."""
    from hypothesis import Phase, settings

    out = []

    @settings(max_examples=n, derandomize=True, database=None, phases=[Phase.generate], deadline=None)
    @given(case=strategy)
    def collect(case):
        out.append(case)

    collect()
    return out


def test_strategies_cover_the_axes():
    conv = _draw(conv_cases())
    for what, pred in {
        "unbatched": lambda c: c["N"] is None,
        "N=0": lambda c: c["N"] == 0,
        "same, even kernel (asymmetric padding)": lambda c: c["padding"] == "same" and c["R"] % 2 == 0,
        "valid": lambda c: c["padding"] == "valid",
        "asymmetric padding pair": lambda c: isinstance(c["padding"], (tuple, list)) and c["padding"][0] != c["padding"][1],
        "depthwise": lambda c: c["groups"] > 1 and c["C"] == c["groups"],
        "dilation pair": lambda c: isinstance(c["dilation"], (tuple, list)) and len(set(c["dilation"])) == 2,
        "channels_last input": lambda c: c["x_layout"] == "channels_last" and c["N"] is not None,
        "expanded input": lambda c: c["x_layout"] == "expanded" and (c["N"] or 0) > 1,
        "sliced weight": lambda c: c["w_layout"] == "slice",
        "transposed grad_output": lambda c: c["g_layout"] == "transposed",
        "bias": lambda c: c["bias"],
        "conv2d_relu": lambda c: c["op"] == "conv2d_relu",
        "bfloat16": lambda c: c["dtype"] == torch.bfloat16,
        "float16": lambda c: c["dtype"] == torch.float16,
        "float64": lambda c: c["dtype"] == torch.float64,
    }.items():
        assert any(pred(c) for c in conv), f"the conv strategy never draws: {what}"
    # 300 draws: hypothesis starts from small values, and with a fixed seed the first 150 avg cases held 47
    # divisor_overrides, none negative (an unrelated change to the package moved the seed's draws there)
    avg = _draw(pool_cases("avg"), 300)
    for what, pred in {
        "ceil_mode with padding": lambda c: c["ceil_mode"] and pair(c["padding"]) != (0, 0),
        "negative divisor_override": lambda c: c["divisor_override"] is not None and c["divisor_override"] < 0,
        "count_include_pad=False": lambda c: not c["count_include_pad"],
        "stride None": lambda c: c["stride"] is None,
        "stride []": lambda c: c["stride"] == [],
        "no gradient (inference)": lambda c: c["grad"] == "none",
    }.items():
        assert any(pred(c) for c in avg), f"the avg_pool strategy never draws: {what}"
    mx = _draw(pool_cases("max"))
    assert any(c["return_indices"] and pair(c["dilation"]) != (1, 1) and c["ceil_mode"] for c in mx)
    assert any(c["N"] == 0 for c in mx) and any(c["N"] is None for c in mx)
    # the mutation strategies draw (every combination of mutations is valid to build)
    assert len(_draw(conv_mutations(), 50)) == 50 and len(_draw(pool_mutations(), 50)) == 50
