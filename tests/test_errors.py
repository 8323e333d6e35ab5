"""Bad arguments: wherever torch rejects a call, fastconv rejects it too, BEFORE any kernel runs, with
an exception that is a RuntimeError or a ValueError/TypeError (fastconv.ArgumentError is both) and a
message naming the argument. Each case also asserts that torch raises (so the list stays honest).
And the edge cases where torch works must work in fastconv, with torch's result.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FC
from helpers import assert_rel


class KernelRan(Exception):
    """Raised by the spy that replaces backend resolution: a kernel was about to run."""


@pytest.fixture
def no_kernel(monkeypatch):
    """Fails any op dispatch: the functional layer must reject the call before reaching a backend."""
    calls = []

    def spy(device):
        calls.append(device)
        raise KernelRan(f"a fastconv kernel was dispatched (device {device}) for an invalid call")

    for mod in ("fastconv.ops.conv2d", "fastconv.ops.pool2d"):
        monkeypatch.setattr(sys.modules[mod], "resolve", spy)
    return calls


def _x(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, dtype=dtype, device=device)


X = lambda: _x(2, 4, 6, 6)  # noqa: E731
W = lambda: _x(6, 2, 3, 3)  # noqa: E731  (groups=2 with X)
B = lambda: _x(6)  # noqa: E731

# (id, call(conv_fn) -> result, regex the message must match). conv_fn is F.conv2d, FC.conv2d or
# FC.conv2d_relu; all calls are made with keyword-compatible positional args like F.conv2d.
CONV_ERRORS = [
    ("input-rank2", lambda f: f(_x(4, 6), W(), B(), groups=2), r"input"),
    ("input-rank5", lambda f: f(_x(1, 2, 4, 6, 6), W(), B(), groups=2), r"input"),
    ("weight-rank3", lambda f: f(X(), _x(6, 4, 3), B()), r"weight"),
    ("weight-rank5", lambda f: f(X(), _x(6, 4, 3, 3, 1), B()), r"weight"),
    ("channel-mismatch", lambda f: f(_x(2, 3, 6, 6), _x(6, 4, 3, 3), B()), r"channels"),
    ("group-channel-mismatch", lambda f: f(X(), W(), B(), groups=4), r"groups"),
    ("K-not-divisible-by-groups", lambda f: f(X(), _x(5, 2, 3, 3), _x(5), groups=2), r"groups"),
    ("groups-zero", lambda f: f(X(), _x(6, 4, 3, 3), B(), groups=0), r"groups"),
    ("groups-negative", lambda f: f(X(), _x(6, 4, 3, 3), B(), groups=-2), r"groups"),
    ("padding-negative", lambda f: f(X(), W(), B(), 1, -1, 1, 2), r"padding"),
    ("padding-negative-tuple", lambda f: f(X(), W(), B(), 1, (1, -2), 1, 2), r"padding"),
    ("padding-3-values", lambda f: f(X(), W(), B(), 1, (1, 1, 1), 1, 2), r"padding"),
    ("padding-string", lambda f: f(X(), W(), B(), 1, "full", 1, 2), r"padding"),
    ("padding-same-strided", lambda f: f(X(), W(), B(), 2, "same", 1, 2), r"same|stride"),
    ("padding-same-strided-tuple", lambda f: f(X(), W(), B(), (1, 2), "same", 1, 2), r"same|stride"),
    ("stride-zero", lambda f: f(X(), W(), B(), 0, 0, 1, 2), r"stride"),
    ("stride-negative", lambda f: f(X(), W(), B(), (1, -1), 0, 1, 2), r"stride"),
    ("stride-3-values", lambda f: f(X(), W(), B(), (1, 1, 1), 0, 1, 2), r"stride"),
    ("stride-float", lambda f: f(X(), W(), B(), 1.5, 0, 1, 2), r"stride"),
    ("dilation-zero", lambda f: f(X(), W(), B(), 1, 0, 0, 2), r"dilation"),
    ("dilation-negative", lambda f: f(X(), W(), B(), 1, 0, (-1, 1), 2), r"dilation"),
    ("kernel-larger-than-input", lambda f: f(_x(1, 4, 2, 2), W(), B(), groups=2), r"kernel size|input size"),
    ("dilated-kernel-larger-than-padded", lambda f: f(X(), W(), B(), 1, 1, 4, 2), r"kernel size|input size"),
    ("kernel-larger-unbatched", lambda f: f(_x(4, 2, 6), W(), B(), groups=2), r"kernel size|input size"),
    ("weight-dtype", lambda f: f(X(), W().double(), B(), groups=2), r"weight"),
    ("bias-dtype", lambda f: f(X(), W(), B().double(), groups=2), r"bias"),
    ("input-dtype-half-weight-float", lambda f: f(X().half(), W(), None, groups=2), r"weight|input"),
    ("bias-wrong-length", lambda f: f(X(), W(), _x(5), groups=2), r"bias"),
    ("bias-2d", lambda f: f(X(), W(), _x(6, 1), groups=2), r"bias"),
    ("bool-dtype", lambda f: f(X().bool(), W().bool(), None, groups=2), r"input|dtype"),
    ("input-not-tensor", lambda f: f([[1.0]], W(), B()), r"input"),
    ("weight-not-tensor", lambda f: f(X(), 3.0, B()), r"weight"),
]


def _assert_rejected(call, regex):
    """call() raises one of the accepted types naming the argument; KernelRan (not one of them)
    propagates and fails the test if validation let the call through to a backend."""
    with pytest.raises((RuntimeError, ValueError, TypeError), match="(?i)" + regex):
        call()


@pytest.mark.parametrize("case", CONV_ERRORS, ids=[c[0] for c in CONV_ERRORS])
def test_torch_rejects_conv(case):
    _, call, _ = case
    with pytest.raises(Exception):
        call(F.conv2d)


@pytest.mark.parametrize("op", ["conv2d", "conv2d_relu"])
@pytest.mark.parametrize("case", CONV_ERRORS, ids=[c[0] for c in CONV_ERRORS])
def test_fastconv_rejects_conv(backend, no_kernel, op, case):
    _, call, regex = case
    _assert_rejected(lambda: call(getattr(FC, op)), regex)


# Device mismatch. There is no second real device here; torch lets 'meta' tensors mix with CPU ones
# (the result is on the input's device), so torch does not reject these calls; between two real
# devices (cpu and cuda) it does ("Expected all tensors to be on the same device"). fastconv's kernels
# read raw pointers, so fastconv must reject any mismatch before dispatch.
DEVICE_ERRORS = [
    ("weight-on-meta", lambda f: f(X(), W().to("meta"), B(), groups=2), r"weight"),
    ("bias-on-meta", lambda f: f(X(), W(), B().to("meta"), groups=2), r"bias"),
    ("input-on-meta", lambda f: f(X().to("meta"), W(), B(), groups=2), r"weight|input"),
    ("input-and-weight-on-meta", lambda f: f(X().to("meta"), W().to("meta"), B(), groups=2), r"bias"),
]


@pytest.mark.parametrize("op", ["conv2d", "conv2d_relu"])
@pytest.mark.parametrize("case", DEVICE_ERRORS, ids=[c[0] for c in DEVICE_ERRORS])
def test_fastconv_rejects_device_mismatch(backend, no_kernel, op, case):
    _, call, regex = case
    _assert_rejected(lambda: call(getattr(FC, op)), regex)


def test_argument_error_types():
    assert issubclass(fastconv.ArgumentError, ValueError) and issubclass(fastconv.ArgumentError, RuntimeError)
    assert issubclass(fastconv.ArgumentTypeError, TypeError) and issubclass(fastconv.ArgumentTypeError, RuntimeError)


# ----------------------------------------------------------------------------------------------------
# Pooling. call(fn, kind): fn is torch's or fastconv's max_pool2d / avg_pool2d; kind "max" or "avg".

P = lambda: _x(2, 3, 8, 8)  # noqa: E731

POOL_ERRORS = [
    ("input-rank2", lambda f: f(_x(8, 8), 2), r"input", ("max", "avg")),
    ("input-rank5", lambda f: f(_x(1, 2, 3, 8, 8), 2), r"input", ("max", "avg")),
    ("zero-channels", lambda f: f(_x(1, 0, 8, 8), 2), r"input", ("max", "avg")),
    ("zero-height", lambda f: f(_x(1, 2, 0, 8), 2), r"input", ("max", "avg")),
    ("kernel-zero", lambda f: f(P(), 0), r"kernel", ("max", "avg")),
    ("kernel-negative", lambda f: f(P(), (2, -1)), r"kernel", ("max", "avg")),
    ("kernel-3-values", lambda f: f(P(), (2, 2, 2)), r"kernel", ("max", "avg")),
    ("stride-zero", lambda f: f(P(), 2, 0), r"stride", ("max", "avg")),
    ("stride-negative", lambda f: f(P(), 2, (1, -1)), r"stride", ("max", "avg")),
    ("padding-negative", lambda f: f(P(), 3, 1, -1), r"pad", ("max", "avg")),
    ("padding-over-half-kernel", lambda f: f(P(), 3, 1, 2), r"pad", ("max", "avg")),
    ("padding-over-half-kernel-w", lambda f: f(P(), (3, 2), 1, (1, 2)), r"pad", ("max", "avg")),
    ("padding-over-half-kernel-k1", lambda f: f(P(), 1, 1, 1), r"pad", ("max", "avg")),
    # torch requires pad <= kernel_size // 2 even when dilation makes the effective kernel larger
    ("padding-over-half-kernel-dilated", lambda f: f(P(), 2, 1, 2, 3), r"pad", ("max",)),
    ("padding-over-half-kernel-dilated-3", lambda f: f(P(), 3, 1, 2, 2), r"pad", ("max",)),
    ("dilation-zero", lambda f: f(P(), 2, 2, 0, 0), r"dilation", ("max",)),
    ("dilation-negative", lambda f: f(P(), 2, 2, 0, (1, -1)), r"dilation", ("max",)),
    ("output-too-small", lambda f: f(_x(1, 2, 2, 2), 3), r"size", ("max", "avg")),
    ("output-too-small-dilated", lambda f: f(_x(1, 2, 4, 4), 3, 1, 0, 2), r"size", ("max",)),
    ("output-too-small-unbatched", lambda f: f(_x(2, 2, 8), (3, 2)), r"size", ("max", "avg")),
    ("bool-dtype", lambda f: f(P().bool(), 2), r"input|dtype", ("max", "avg")),
    ("complex-dtype", lambda f: f(P().to(torch.complex64), 2), r"input|dtype", ("max", "avg")),
    ("int-dtype-avg", lambda f: f(P().to(torch.int32), 2), r"input|dtype", ("avg",)),
    ("input-not-tensor", lambda f: f([[[1.0]]], 1), r"input", ("max", "avg")),
    ("divisor-override-zero", lambda f: f(P(), 2, divisor_override=0), r"divisor", ("avg",)),
    ("divisor-override-float", lambda f: f(P(), 2, divisor_override=2.0), r"divisor", ("avg",)),
    ("ceil-mode-not-bool", lambda f: f(P(), 2, 2, 0, ceil_mode=1), r"ceil_mode", ("avg",)),
    ("count-include-pad-not-bool", lambda f: f(P(), 3, 1, 1, False, 1), r"count_include_pad", ("avg",)),
    ("count-include-pad-none", lambda f: f(P(), 3, 1, 1, False, None), r"count_include_pad", ("avg",)),
]
POOL_ERROR_CASES = [(c[0] + "-" + kind, c[1], c[2], kind) for c in POOL_ERRORS for kind in c[3]]


def _pool_fn(lib, kind):
    return getattr(lib, f"{kind}_pool2d")


@pytest.mark.parametrize("case", POOL_ERROR_CASES, ids=[c[0] for c in POOL_ERROR_CASES])
def test_torch_rejects_pool(case):
    _, call, _, kind = case
    with pytest.raises(Exception):
        call(_pool_fn(F, kind))


@pytest.mark.parametrize("case", POOL_ERROR_CASES, ids=[c[0] for c in POOL_ERROR_CASES])
def test_fastconv_rejects_pool(backend, no_kernel, case):
    _, call, regex, kind = case
    _assert_rejected(lambda: call(_pool_fn(FC, kind)), regex)
    if kind == "max":  # the return_indices / autograd path validates the same way
        _assert_rejected(lambda: call(lambda *a, **k: FC.max_pool2d(*a, **k, return_indices=True)), regex)


# ----------------------------------------------------------------------------------------------------
# Valid edge cases: torch accepts them, so fastconv must, with torch's result.

CONV_VALID = [
    ("padding-larger-than-kernel", lambda f, t: f(t(1, 2, 4, 5), t(3, 2, 3, 3), t(3), 1, 5)),
    ("kernel-equals-padded-input", lambda f, t: f(t(2, 2, 1, 1), t(3, 2, 3, 3), t(3), 1, 1)),
    ("kernel-equals-input", lambda f, t: f(t(2, 2, 4, 3), t(3, 2, 4, 3), None)),
    ("stride-larger-than-input", lambda f, t: f(t(2, 2, 5, 5), t(3, 2, 2, 2), t(3), 10)),
    ("single-element-lists", lambda f, t: f(t(2, 2, 7, 6), t(3, 2, 3, 3), t(3), [2], (1,), [2])),
    ("list-args", lambda f, t: f(t(2, 2, 7, 6), t(3, 2, 3, 3), t(3), [2, 1], [1, 0], [1, 2])),
    ("depthwise-multiplier-3", lambda f, t: f(t(1, 2, 5, 5), t(6, 1, 3, 3), t(6), 1, 1, 1, 2)),
    ("same-even-dilated", lambda f, t: f(t(1, 2, 6, 7), t(2, 2, 4, 2), t(2), 1, "same", (2, 3))),
    ("same-1x1", lambda f, t: f(t(1, 2, 3, 3), t(2, 2, 1, 1), t(2), 1, "same")),
    ("valid", lambda f, t: f(t(1, 2, 6, 7), t(2, 2, 3, 2), None, (2, 1), "valid")),
    ("empty-batch", lambda f, t: f(t(0, 2, 6, 7), t(2, 2, 3, 2), t(2), 1, 1)),
    ("size-1-spatial", lambda f, t: f(t(2, 3, 1, 1), t(4, 3, 1, 1), t(4))),
    ("unbatched-same", lambda f, t: f(t(2, 5, 4), t(3, 2, 3, 2), t(3), 1, "same")),
    # torch takes any integer with __index__ (numpy integers from configs, torch.Size)
    ("numpy-int-args", lambda f, t: f(t(1, 4, 7, 6), t(4, 2, 3, 3), t(4), np.int64(2), np.int32(1), np.int64(1),
                                      np.int64(2))),
    ("numpy-int-tuples", lambda f, t: f(t(1, 2, 7, 6), t(2, 2, 3, 3), t(2), (np.int64(1), np.int64(2)),
                                        (np.int64(1), np.int64(0)))),
    ("torch-size-args", lambda f, t: f(t(1, 2, 7, 6), t(2, 2, 3, 3), t(2), torch.Size([2, 1]), torch.Size([1]))),
]


def _tensor_factory(dtype):
    return lambda *shape: torch.randn(*shape, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("op", ["conv2d", "conv2d_relu"])
@pytest.mark.parametrize("case", CONV_VALID, ids=[c[0] for c in CONV_VALID])
def test_conv_valid_edge_cases(backend, op, case):
    _, call = case
    torch.manual_seed(3)
    y = call(getattr(FC, op), _tensor_factory(torch.float32))
    torch.manual_seed(3)
    y_ref = call(F.conv2d, _tensor_factory(torch.float64))
    if op == "conv2d_relu":
        y_ref = torch.relu(y_ref)
    assert_rel(y, y_ref, torch.float32)


POOL_VALID = [
    ("padding-half-kernel", lambda f, t: f(t(2, 3, 7, 6), 3, 1, 1), ("max", "avg")),
    ("padding-half-even-kernel", lambda f, t: f(t(2, 3, 7, 6), (4, 2), (3, 1), (2, 1)), ("max", "avg")),
    ("kernel-equals-input", lambda f, t: f(t(2, 3, 5, 4), (5, 4)), ("max", "avg")),
    ("stride-larger-than-kernel", lambda f, t: f(t(2, 3, 9, 9), 2, 4), ("max", "avg")),
    ("ceil-last-window-in-padding", lambda f, t: f(t(1, 2, 6, 6), 3, 2, 1, ceil_mode=True), ("max", "avg")),
    ("ceil-partial-window", lambda f, t: f(t(1, 2, 7, 5), 2, 2, ceil_mode=True), ("max", "avg")),
    ("stride-empty-list", lambda f, t: f(t(1, 2, 6, 6), 2, []), ("max", "avg")),
    ("single-element-lists", lambda f, t: f(t(1, 2, 7, 6), [3], [2], [1]), ("max", "avg")),
    ("dilated-half-kernel-pad", lambda f, t: f(t(1, 2, 9, 9), 3, 2, 1, 3), ("max",)),
    ("empty-batch", lambda f, t: f(t(0, 2, 6, 6), 2), ("max", "avg")),
    ("unbatched", lambda f, t: f(t(2, 5, 6), 2), ("max", "avg")),
    ("divisor-override-1", lambda f, t: f(t(1, 2, 6, 6), 3, 1, 1, divisor_override=1), ("avg",)),
    ("divisor-override-negative", lambda f, t: f(t(1, 2, 6, 6), 2, divisor_override=-2), ("avg",)),
    ("divisor-override-large", lambda f, t: f(t(1, 2, 6, 6), 2, 1, 1, True, False, 1000), ("avg",)),
    ("numpy-int-args", lambda f, t: f(t(1, 2, 7, 6), np.int64(3), np.int64(2), np.int64(1)), ("max", "avg")),
    ("numpy-int-divisor", lambda f, t: f(t(1, 2, 7, 6), 3, 2, 1, divisor_override=np.int64(5)), ("avg",)),
]
POOL_VALID_CASES = [(c[0] + "-" + kind, c[1], kind) for c in POOL_VALID for kind in c[2]]


@pytest.mark.parametrize("case", POOL_VALID_CASES, ids=[c[0] for c in POOL_VALID_CASES])
def test_pool_valid_edge_cases(backend, case):
    _, call, kind = case
    torch.manual_seed(3)
    x_factory = _tensor_factory(torch.float32)
    y = call(_pool_fn(FC, kind), x_factory)
    torch.manual_seed(3)
    y_ref = call(_pool_fn(F, kind), _tensor_factory(torch.float64))
    assert_rel(y, y_ref, torch.float32)


def test_conv_args_memo_never_admits_an_invalid_call():
    """functional._conv_args remembers validated call signatures. After a call is remembered, its
    invalid neighbours (the same tensors with one argument changed) still raise; mixed dtypes, string
    padding and tensor subclasses are never remembered; an unbatched call remembered comes back
    unbatched."""
    import fastconv.functional as FCm
    FCm._CONV_ARGS_MEMO.clear()
    x, w, b = torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3), torch.randn(6)
    ref = F.conv2d(x, w, b, stride=(1, 2), padding=1)
    for _ in range(2):
        assert_rel(FC.conv2d(x, w, b, stride=(1, 2), padding=1), ref, torch.float32, "output")
    assert len(FCm._CONV_ARGS_MEMO) == 1
    bad = [
        (lambda f: f(x, w, b, stride=(1, 2), padding=1, groups=2), RuntimeError),      # 4 channels, 2 groups of 4
        (lambda f: f(x, w, torch.randn(5), stride=(1, 2), padding=1), RuntimeError),  # bias of 5 for 6 outputs
        (lambda f: f(x[:, :, :2, :2], w, b, stride=(1, 2), padding=0), RuntimeError),  # kernel larger than input
        (lambda f: f(x.double(), w, b, stride=(1, 2), padding=1), (TypeError, RuntimeError)),  # dtypes differ
        (lambda f: f(x, w, b, stride=(1, 0), padding=1), RuntimeError),              # stride 0
        (lambda f: f(x, w, b, stride=(1, 2), padding=-1), RuntimeError),
    ]
    for call, exc in bad:
        with pytest.raises(exc):
            call(F.conv2d)
        with pytest.raises(exc):
            call(FC.conv2d)
    FC.conv2d(x, w, b, padding="same")
    FC.conv2d(x, torch.nn.Parameter(w), b, padding=1)  # Parameter counts as a plain tensor: remembered
    xb = x.bfloat16()  # a bfloat16 input with float32 weights is valid under autocast only
    with torch.autocast("cpu", dtype=torch.bfloat16):
        FC.conv2d(xb, w, b, padding=1)
    with pytest.raises((TypeError, RuntimeError)):
        FC.conv2d(xb, w, b, padding=1)
    assert len(FCm._CONV_ARGS_MEMO) == 2

    class Sub(torch.Tensor):
        pass

    FC.conv2d(x.as_subclass(Sub), w, b, padding=1)
    assert len(FCm._CONV_ARGS_MEMO) == 2
    for _ in range(2):
        y = FC.conv2d(x[0], w, b, padding=2)
        assert y.shape == (6, 10, 10)
        assert_rel(y, F.conv2d(x[0], w, b, padding=2), torch.float32, "output")
    assert len(FCm._CONV_ARGS_MEMO) == 3
