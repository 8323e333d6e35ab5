"""Backend registry, FASTCONV_BACKEND, fastconv.info() and the CLI, the C++ kernels' ISA levels, and
bitwise run-to-run determinism of the cpu backend."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest
import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FC
from fastconv import backends
from helpers import assert_rel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def restore_choice():
    previous = fastconv.get_backend()
    yield
    fastconv.set_backend(previous)


# ----------------------------------------------------------------------------------------------------
# Registry


def test_registered_backends():
    names = set(backends.registered())
    assert {"cpu", "reference"} <= names
    ok, why = backends.registered()["cpu"].availability()
    assert ok, f"the cpu backend must be available on this machine: {why}"


def test_set_and_get_backend(restore_choice):
    fastconv.set_backend("reference")
    assert fastconv.get_backend() == "reference"
    assert backends.resolve(torch.device("cpu")).name == "reference"
    fastconv.set_backend(" CPU ")
    assert fastconv.get_backend() == "cpu"
    assert backends.resolve(torch.device("cpu")).name == "cpu"
    fastconv.set_backend(None)
    assert fastconv.get_backend() == "auto"
    fastconv.set_backend("auto")
    assert fastconv.get_backend() == "auto"


def test_auto_picks_cpu_kernels(restore_choice):
    fastconv.set_backend("auto")
    assert backends.resolve(torch.device("cpu")).name == "cpu"


def test_unknown_backend_errors(restore_choice):
    before = fastconv.get_backend()
    with pytest.raises(ValueError, match="nope"):
        fastconv.set_backend("nope")
    with pytest.raises(ValueError, match="cpu"):  # lists the valid names
        fastconv.set_backend("nope")
    with pytest.raises(ValueError, match="nope"):
        with fastconv.use_backend("nope"):
            pass
    with pytest.raises(TypeError):
        fastconv.set_backend(3)
    assert fastconv.get_backend() == before


def test_use_backend_nested_and_restored(restore_choice):
    fastconv.set_backend("cpu")
    with fastconv.use_backend("reference"):
        assert fastconv.get_backend() == "reference"
        with fastconv.use_backend("cpu"):
            assert fastconv.get_backend() == "cpu"
            with fastconv.use_backend("auto"):
                assert fastconv.get_backend() == "auto"
            assert fastconv.get_backend() == "cpu"
        assert fastconv.get_backend() == "reference"
        # the context wins over a process-wide choice made inside it
        fastconv.set_backend("cpu")
        assert fastconv.get_backend() == "reference"
    assert fastconv.get_backend() == "cpu"
    with pytest.raises(KeyError):
        with fastconv.use_backend("reference"):
            raise KeyError("boom")
    assert fastconv.get_backend() == "cpu"


def test_use_backend_is_thread_local(restore_choice):
    fastconv.set_backend("cpu")
    seen = {}
    inside = threading.Event()
    release = threading.Event()

    def worker():
        seen["start"] = fastconv.get_backend()
        with fastconv.use_backend("reference"):
            seen["inside"] = fastconv.get_backend()
            inside.set()
            release.wait(10)
        seen["after"] = fastconv.get_backend()

    t = threading.Thread(target=worker)
    t.start()
    assert inside.wait(10)
    assert fastconv.get_backend() == "cpu"  # the other thread's context does not leak here
    with fastconv.use_backend("reference"):
        other = {}
        t2 = threading.Thread(target=lambda: other.setdefault("b", fastconv.get_backend()))
        t2.start()
        t2.join()
        assert other["b"] == "cpu"  # nor ours into a new thread
    release.set()
    t.join()
    assert seen == {"start": "cpu", "inside": "reference", "after": "cpu"}


def test_ops_dispatch_to_the_chosen_backend(restore_choice, monkeypatch):
    calls = []
    for name, b in backends.registered().items():
        original = type(b).conv2d_fwd

        def spy(self, *a, _name=name, _orig=original, **k):
            calls.append(_name)
            return _orig(self, *a, **k)

        monkeypatch.setattr(type(b), "conv2d_fwd", spy)
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    fastconv.set_backend("cpu")
    FC.conv2d(x, w)
    with fastconv.use_backend("reference"):
        FC.conv2d(x, w)
    fastconv.set_backend("auto")
    FC.conv2d(x, w)
    assert calls == ["cpu", "reference", "cpu"]


def test_explicit_backend_that_cannot_serve_device_raises(restore_choice):
    fastconv.set_backend("cpu")
    with pytest.raises(RuntimeError, match="cpu"):
        backends.resolve(torch.device("meta"))


# ----------------------------------------------------------------------------------------------------
# Subprocesses (FASTCONV_BACKEND, the CLI): started together, once, since each one imports torch.


@pytest.fixture(scope="module")
def subprocess_results():
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("FASTCONV_BACKEND", None)
    code = "import fastconv; print(fastconv.get_backend()); print(fastconv.backends.resolve(__import__('torch').device('cpu')).name)"
    jobs = {
        "env-reference": ([sys.executable, "-c", code], {"FASTCONV_BACKEND": "reference"}),
        "env-bad": ([sys.executable, "-c", code], {"FASTCONV_BACKEND": "no-such-backend"}),
        "info": ([sys.executable, "-m", "fastconv", "info"], {}),
        "info-json": ([sys.executable, "-m", "fastconv", "info", "--json"], {}),
    }
    procs = {
        k: subprocess.Popen(cmd, cwd=REPO, env=dict(env, **extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
        for k, (cmd, extra) in jobs.items()
    }
    out = {}
    for k, p in procs.items():
        stdout, stderr = p.communicate(timeout=120)
        out[k] = (p.returncode, stdout, stderr)
    return out


def test_env_var_selects_backend(subprocess_results):
    rc, out, err = subprocess_results["env-reference"]
    assert rc == 0, err
    assert out.split() == ["reference", "reference"]


def test_env_var_unknown_backend_fails_at_import(subprocess_results):
    rc, out, err = subprocess_results["env-bad"]
    assert rc != 0
    assert "FASTCONV_BACKEND" in err and "no-such-backend" in err


def test_cli_info(subprocess_results):
    rc, out, err = subprocess_results["info"]
    assert rc == 0, err
    assert out.startswith(f"fastconv {fastconv.__version__}")
    assert torch.__version__ in out
    for word in ("fastconv._C: built", "cpu", "reference", "available", "backend choice"):
        assert word in out, word


def test_cli_info_json(subprocess_results):
    rc, out, err = subprocess_results["info-json"]
    assert rc == 0, err
    data = json.loads(out)
    assert data["fastconv"] == fastconv.__version__
    assert data["torch"] == torch.__version__
    assert data["backends"]["cpu"]["available"] is True
    assert data["backends"]["reference"]["available"] is True
    assert data["_C"]["cpu_isa_detected"] in ("baseline", "avx2", "avx512")
    assert data["backend_choice"] == "auto"


def test_info_dict(restore_choice, capsys):
    fastconv.set_backend("reference")
    data = fastconv.info(print_it=False)
    assert capsys.readouterr().out == ""
    assert data["backend_choice"] == "reference"
    assert data["torch_threads"] == torch.get_num_threads()
    C = fastconv.backends.cpu._C
    assert data["_C"]["cpu_isa_detected"] == C.detected_cpu_isa()
    assert data["_C"]["cpu_isa_in_use"] == C.cpu_isa()
    assert set(data["_C"]["isa_variants"].split(",")) == {"baseline", "avx2", "avx512"}
    assert data["backends"]["cpu"]["devices"] == ["cpu"]
    assert "cpu" in data["auto_order"]
    printed = fastconv.info()
    text = capsys.readouterr().out
    assert printed["backend_choice"] == "reference"
    assert "fastconv" in text and "reference" in text


def test_missing_extension_module_is_reported_as_not_built():
    # Python's own ImportError here blames "a partially initialized module (most likely due to a
    # circular import)"; the reason a user reads must say that the module was not built.
    module, why = backends.import_extension("_C_no_such_module")
    assert module is None
    assert why == "is not built (the package has no compiled file for it)"


@pytest.mark.skipif(backends.cpu._C is None, reason="needs fastconv._C's file in the package")
def test_extension_module_that_does_not_load_gives_its_import_error(monkeypatch):
    def fail(name):
        raise ImportError(f"{name}: libcudart.so.13: cannot open shared object file")

    monkeypatch.setattr(backends.importlib, "import_module", fail)
    module, why = backends.import_extension("_C")
    assert module is None
    assert why == "is built but does not load: fastconv._C: libcudart.so.13: cannot open shared object file"


def test_cli_main_in_process(capsys):
    from fastconv import cli

    assert cli.main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fastconv"] == fastconv.__version__
    assert cli.main([]) == 2


# ----------------------------------------------------------------------------------------------------
# Backends agree; every ISA level of the C++ kernels is correct; the cpu backend is deterministic.


def _workload(seed=0):
    """Forward and backward of every op on a few configurations; returns every output and gradient."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    results = []
    conv_cfgs = [
        ((2, 4, 9, 8), (6, 2, 3, 3), dict(stride=1, padding=1, groups=2), False),
        ((1, 3, 11, 10), (5, 3, 5, 2), dict(stride=(2, 1), padding=(2, 0), dilation=(1, 2)), True),
        ((2, 8, 7, 7), (16, 1, 3, 3), dict(padding="same", groups=8), False),
        ((2, 17, 6, 9), (19, 17, 1, 1), dict(), True),  # odd channel counts: SIMD tails
    ]
    for xs, ws, kw, cl in conv_cfgs:
        for op in (FC.conv2d, FC.conv2d_relu):
            x, w, b = r(*xs), r(*ws), r(ws[0])
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
            y = op(x, w, b, **kw)
            grads = torch.autograd.grad(y, (x, w, b), r(*y.shape))
            results.append(("conv", op.__name__, xs, ws, kw, cl, x, w, b, y, grads))
    pool_cfgs = [((2, 5, 9, 8), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), False),
                 ((1, 19, 7, 6), dict(kernel_size=(2, 3), stride=1, padding=(1, 1)), True)]
    for xs, kw, cl in pool_cfgs:
        x = r(*xs)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        y, idx = FC.max_pool2d(x, **kw, return_indices=True)
        (gx,) = torch.autograd.grad(y, x, r(*y.shape))
        results.append(("max", xs, kw, cl, x, y, idx, gx))
        y = FC.avg_pool2d(x, **kw, count_include_pad=False)
        (gx,) = torch.autograd.grad(y, x, r(*y.shape))
        results.append(("avg", xs, kw, cl, x, y, gx))
    return results


def _tensors(results):
    out = []
    for item in results:
        for v in item:
            if isinstance(v, torch.Tensor):
                out.append(v)
            elif isinstance(v, tuple) and v and isinstance(v[0], torch.Tensor):
                out.extend(v)
    return out


def test_cpu_and_reference_agree(restore_choice):
    fastconv.set_backend("cpu")
    cpu = _tensors(_workload())
    fastconv.set_backend("reference")
    ref = _tensors(_workload())
    assert len(cpu) == len(ref)
    for i, (a, b) in enumerate(zip(cpu, ref)):
        if a.dtype == torch.int64:
            assert torch.equal(a, b), f"tensor {i}: indices differ"
        else:
            assert_rel(a, b, torch.float32, f"tensor {i}")


def _check_against_torch(results):
    """Every output and gradient of _workload vs torch float64."""
    for item in results:
        if item[0] == "conv":
            _, name, _, _, kw, _, x, w, b, y, grads = item
            refs = [t.detach().double().requires_grad_() for t in (x, w, b)]
            y_ref = F.conv2d(*refs, **kw)
            if name == "conv2d_relu":
                y_ref = torch.relu(y_ref)
            assert_rel(y, y_ref, torch.float32, f"{name} {kw} output")
        elif item[0] == "max":
            _, _, kw, _, x, y, idx, _ = item
            y_ref, idx_ref = F.max_pool2d(x.detach(), **kw, return_indices=True)
            assert torch.equal(y, y_ref) and torch.equal(idx, idx_ref), f"max_pool2d {kw}"
        else:
            _, _, kw, _, x, y, _ = item
            assert_rel(y, F.avg_pool2d(x.detach().double(), **kw, count_include_pad=False), torch.float32,
                       f"avg_pool2d {kw}")


def _isa_levels():
    return ["baseline", "avx2", "avx512"]


@pytest.fixture
def cpu_c(restore_choice):
    fastconv.set_backend("cpu")
    C = fastconv.backends.cpu._C
    before = C.cpu_isa()
    yield C
    C.set_cpu_isa(before)


@pytest.mark.parametrize("isa", _isa_levels())
def test_isa_levels_correct(cpu_c, isa):
    detected = cpu_c.detected_cpu_isa()
    levels = _isa_levels()
    if levels.index(isa) > levels.index(detected):
        pytest.skip(f"this CPU supports up to {detected}")
    cpu_c.set_cpu_isa(isa)
    assert cpu_c.cpu_isa() == isa
    results = _workload()
    _check_against_torch(results)
    # gradients too, against the cpu backend's other levels via the reference backend
    with fastconv.use_backend("reference"):
        ref = _tensors(_workload())
    for i, (a, b) in enumerate(zip(_tensors(results), ref)):
        if a.dtype == torch.int64:
            assert torch.equal(a, b), f"{isa}: tensor {i}: indices differ"
        else:
            assert_rel(a, b, torch.float32, f"{isa}: tensor {i}")


def test_set_cpu_isa_rejects_unknown(cpu_c):
    before = cpu_c.cpu_isa()
    with pytest.raises((ValueError, RuntimeError)):
        cpu_c.set_cpu_isa("sse9000")
    assert cpu_c.cpu_isa() == before


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_cpu_backend_bitwise_deterministic(cpu_c, two_threads):
    first = _tensors(_workload())
    for _ in range(2):
        again = _tensors(_workload())
        for i, (a, b) in enumerate(zip(first, again)):
            assert torch.equal(a, b), f"tensor {i} differs between identical runs"


def test_cpu_backend_independent_of_thread_count(cpu_c, two_threads):
    """The kernels split work independently of the thread count (csrc/cpu headers): 1 and 2 threads
    give bitwise identical results."""
    two = _tensors(_workload())
    torch.set_num_threads(1)
    one = _tensors(_workload())
    for i, (a, b) in enumerate(zip(two, one)):
        assert torch.equal(a, b), f"tensor {i} differs between 1 and 2 threads"


# ----------------------------------------------------------------------------------------------------
# The cpu backend's forward plans (backends/cpu.py: _FWD_PLANS): output shape and memory format,
# ConvDesc and work size derived once per call geometry.


def test_cpu_forward_plans_follow_the_geometry(restore_choice):
    from fastconv.backends import cpu as cpu_backend
    fastconv.set_backend("cpu")
    cpu_backend._FWD_PLANS.clear()
    w, b = torch.randn(8, 4, 3, 3), torch.randn(8)
    x = torch.randn(2, 4, 9, 9)
    cases = [
        (x, {}),                                                 # a plan is made ...
        (torch.randn(2, 4, 9, 9), {}),                           # ... and reused for new data
        (x.contiguous(memory_format=torch.channels_last), {}),   # same shape, other strides
        (x, {"stride": 2}), (x, {"padding": 1}), (x, {"dilation": 2}),
        (x.double(), {}),
        (torch.randn(3, 4, 9, 9), {}),
        # 1x1 output of a channels_last input: torch's output strides (8, 1, 8, 8) are channels_last
        # but also fit a contiguous tensor's shape; the plan keeps the strides themselves.
        (torch.randn(2, 4, 3, 3).contiguous(memory_format=torch.channels_last), {}),
    ]
    for xi, kw in cases:
        wi, bi = w.to(xi.dtype), b.to(xi.dtype)
        ref = F.conv2d(xi, wi, bi, **kw)
        for _ in range(2):  # the second call runs from the plan
            y = FC.conv2d(xi, wi, bi, **kw)
            assert y.shape == ref.shape
            assert y.stride() == ref.stride()
            assert_rel(y, ref, xi.dtype, "output")
    assert len(cpu_backend._FWD_PLANS) == 8  # one per geometry: the first two calls share one
    # Calls that need no kernel (empty output or reduction) are answered without a plan.
    assert FC.conv2d(torch.randn(0, 4, 9, 9), w).shape == (0, 8, 7, 7)
    assert len(cpu_backend._FWD_PLANS) == 8


def _grads_by_backend(dy, x, w, relu_y, stride, padding, need_weight=True, need_bias=True):
    """(dx, dw, db) of the cpu backend's dgrad and wgrad, called as the ops call them."""
    from fastconv.backends import cpu as cpu_backend
    b = cpu_backend.CpuBackend()
    args = ([stride] * 2, [padding] * 2, [1, 1], 1)
    dx = b.conv2d_dgrad(dy, x, w, relu_y, *args)
    dw, db = b.conv2d_wgrad(dy, x, w, relu_y, *args, need_weight, need_bias)
    return dx, dw, db


def test_cpu_gradient_plans_follow_the_geometry():
    """The input- and weight-gradient plans (_DGRAD_PLANS, _WGRAD_PLANS): one per geometry (shapes,
    strides, ReLU mask, dtype, conv parameters, whether dw is wanted), reused for new data; each call's
    gradients match torch's in shape, strides and values, first call (plan made) and second (reused)."""
    from fastconv.backends import cpu as cpu_backend
    cpu_backend._DGRAD_PLANS.clear()
    cpu_backend._WGRAD_PLANS.clear()
    cl = torch.channels_last
    w = torch.randn(8, 4, 3, 3, dtype=torch.float64)
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    cases = [  # (x, stride, padding, relu)
        (x, 1, 0, False), (torch.randn_like(x), 1, 0, False),  # the second reuses the first's plans
        (x.contiguous(memory_format=cl), 1, 0, False), (x, 2, 1, False), (x, 1, 1, True), (x.float(), 1, 0, False),
        (torch.randn(3, 4, 9, 9, dtype=torch.float64), 1, 0, False),
    ]
    for xi, s, p, relu in cases:
        wi = w.to(xi.dtype).clone().requires_grad_()
        xg = xi.detach().clone(memory_format=torch.preserve_format).requires_grad_()
        bias = torch.randn(8, dtype=xi.dtype, requires_grad=True)
        y = F.conv2d(xg, wi, bias, s, p)
        y = y.relu() if relu else y
        dy = torch.randn_like(y)
        y.backward(dy)
        relu_y = y.detach() if relu else None
        for _ in range(2):
            dx, dw, db = _grads_by_backend(dy, xi, wi.detach(), relu_y, s, p)
            for ours, ref, what in ((dx, xg.grad, "grad_input"), (dw, wi.grad, "grad_weight"), (db, bias.grad, "grad_bias")):
                assert ours.shape == ref.shape and ours.stride() == ref.stride(), what
                assert_rel(ours, ref, xi.dtype, what)
    assert len(cpu_backend._DGRAD_PLANS) == 6 and len(cpu_backend._WGRAD_PLANS) == 6
    # The bias gradient alone shares the plan geometry but writes no weight gradient; it is planned apart.
    dx, dw, db = _grads_by_backend(torch.ones(2, 8, 7, 7, dtype=torch.float64), x, w, None, 1, 0, need_weight=False)
    assert dw is None and torch.equal(db, torch.full((8,), 98.0, dtype=torch.float64))
    assert len(cpu_backend._WGRAD_PLANS) == 7
    # Calls that need no kernel (an empty tensor) are answered without a plan, every time.
    for _ in range(2):
        dx, dw, db = _grads_by_backend(torch.randn(0, 8, 7, 7), torch.randn(0, 4, 9, 9), w.float(), None, 1, 0)
        assert dx.shape == (0, 4, 9, 9) and torch.equal(dw, torch.zeros(8, 4, 3, 3)) and torch.equal(db, torch.zeros(8))
    assert len(cpu_backend._DGRAD_PLANS) == 6 and len(cpu_backend._WGRAD_PLANS) == 7


def test_cpu_prepared_gradient_calls_check_geometry_once_and_pointers_per_call():
    """_C.ConvDgradCall / ConvWgradCall (the gradient plans' kernel calls): sizes and strides checked
    when made, pointers per call (a ReLU mask or weight gradient exactly when made with one); results
    are _C.conv2d_dgrad's / conv2d_wgrad's bit for bit."""
    from fastconv import _C
    from fastconv.backends import cpu as cpu_backend
    t4, geo = cpu_backend._t4, cpu_backend._geometry
    x, w, dy = torch.randn(2, 4, 9, 9), torch.randn(8, 4, 3, 3), torch.randn(2, 8, 7, 7)
    relu_y = torch.randn(2, 8, 7, 7).relu()
    d = cpu_backend.conv_desc(x, w, (1, 1), (0, 0), (1, 1), 1, (7, 7))
    dx_ref, dx = torch.empty_like(x), torch.full_like(x, float("nan"))
    _C.conv2d_dgrad(d, 0, t4(dy), t4(w), t4(relu_y), t4(dx_ref), 1)
    dcall = _C.ConvDgradCall(d, 0, geo(dy), geo(w), geo(relu_y), geo(dx))
    dcall(dy.data_ptr(), w.data_ptr(), relu_y.data_ptr(), dx.data_ptr(), 1)
    assert torch.equal(dx, dx_ref)
    dw_ref, db_ref, dw, db = torch.empty_like(w), torch.empty(8), torch.full_like(w, float("nan")), torch.empty(8)
    _C.conv2d_wgrad(d, 0, t4(dy), t4(x), None, t4(dw_ref), db_ref.data_ptr(), 1)
    wcall = _C.ConvWgradCall(d, 0, geo(dy), geo(x), None, geo(dw))
    wcall(dy.data_ptr(), x.data_ptr(), 0, dw.data_ptr(), db.data_ptr(), 1)
    assert torch.equal(dw, dw_ref) and torch.equal(db, db_ref)
    with pytest.raises(ValueError, match=r"grad_input has size \(2, 4, 9, 8\), expected \(2, 4, 9, 9\)"):
        _C.ConvDgradCall(d, 0, geo(dy), geo(w), None, ((2, 4, 9, 8), x.stride()))
    with pytest.raises(ValueError, match="grad_output has a negative stride"):
        _C.ConvWgradCall(d, 0, ((2, 8, 7, 7), (392, 49, 7, -1)), geo(x), None, geo(w))
    with pytest.raises(ValueError, match="needs the relu_output pointer"):
        dcall(dy.data_ptr(), w.data_ptr(), 0, dx.data_ptr(), 1)
    with pytest.raises(ValueError, match="grad_input has a null data pointer"):
        dcall(dy.data_ptr(), w.data_ptr(), relu_y.data_ptr(), 0, 1)
    with pytest.raises(ValueError, match="relu_output and grad_weight pointers"):
        wcall(dy.data_ptr(), x.data_ptr(), relu_y.data_ptr(), dw.data_ptr(), 0, 1)
    with pytest.raises(ValueError, match="relu_output and grad_weight pointers"):
        wcall(dy.data_ptr(), x.data_ptr(), 0, 0, db.data_ptr(), 1)
    with pytest.raises(ValueError, match="input has a null data pointer"):
        wcall(dy.data_ptr(), 0, 0, dw.data_ptr(), 0, 1)


def test_cpu_prepared_forward_call_checks_geometry_once_and_pointers_per_call():
    """_C.ConvFwdCall (the forward plans' kernel call): sizes and strides are checked when it is made,
    data pointers on every call; its result is _C.conv2d_fwd's, bit for bit."""
    from fastconv import _C
    from fastconv.backends import cpu as cpu_backend
    x, w, b = torch.randn(2, 4, 9, 9), torch.randn(8, 4, 3, 3), torch.randn(8)
    y_ref, y = torch.empty(2, 8, 7, 7), torch.full((2, 8, 7, 7), float("nan"))
    d = cpu_backend.conv_desc(x, w, (1, 1), (0, 0), (1, 1), 1, (7, 7))
    _C.conv2d_fwd(d, 0, cpu_backend._t4(x), cpu_backend._t4(w), b.data_ptr(), cpu_backend._t4(y_ref), True, 1)
    call = _C.ConvFwdCall(d, 0, x.shape, x.stride(), w.shape, w.stride(), y.shape, y.stride())
    call(x.data_ptr(), w.data_ptr(), b.data_ptr(), y.data_ptr(), True, 1)
    assert torch.equal(y, y_ref)
    with pytest.raises(ValueError, match=r"output has size \(2, 8, 7, 6\), expected \(2, 8, 7, 7\)"):
        _C.ConvFwdCall(d, 0, x.shape, x.stride(), w.shape, w.stride(), (2, 8, 7, 6), y.stride())
    with pytest.raises(ValueError, match="weight has a negative stride"):
        _C.ConvFwdCall(d, 0, x.shape, x.stride(), w.shape, (36, 9, 3, -1), y.shape, y.stride())
    with pytest.raises(ValueError, match="dtype code must be 0"):
        _C.ConvFwdCall(d, 7, x.shape, x.stride(), w.shape, w.stride(), y.shape, y.stride())
    with pytest.raises(ValueError, match="input has a null data pointer"):
        call(0, w.data_ptr(), b.data_ptr(), y.data_ptr(), True, 1)
    with pytest.raises(ValueError, match="output has a null data pointer"):
        call(x.data_ptr(), w.data_ptr(), b.data_ptr(), 0, True, 1)
