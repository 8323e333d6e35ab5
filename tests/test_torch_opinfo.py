"""fastconv.functional against PyTorch's own test inputs for the same operators: the OpInfo entries of
torch.testing._internal.common_methods_invocations (op_db), which PyTorch's test suite runs on every
backend. For each operator fastconv implements:

- every sample input (float32 and float64, with gradients): our output and every input's gradient match
  torch's on the same sample (the sample's own arguments: positional, keyword, string padding, ...);
- every error input: ours raises the error type torch's test expects, with a message matching torch's
  regular expression.

OPINFO_OPS maps an OpInfo name to our function's name; an operator added to fastconv.functional gets a
line.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings

import pytest
import torch

# Importing torch's OpInfo database changes process-wide state (torch.backends.disable_global_flags,
# which then refuses the cudnn flag changes other tests make), so it is only imported in a child
# process: each test runs this file as a script.
OPINFO_OPS = {
    "nn.functional.conv1d": "conv1d",
    "nn.functional.conv2d": "conv2d",
    "nn.functional.conv_transpose1d": "conv_transpose1d",
    "nn.functional.conv_transpose2d": "conv_transpose2d",
    "nn.functional.max_pool2d": "max_pool2d",
    "nn.functional.avg_pool2d": "avg_pool2d",
    "nn.functional.adaptive_avg_pool2d": "adaptive_avg_pool2d",
    "nn.functional.adaptive_max_pool2d": "adaptive_max_pool2d",
    "nn.functional.adaptive_avg_pool1d": "adaptive_avg_pool1d",
    "nn.functional.max_pool1d": "max_pool1d",
    "nn.functional.avg_pool1d": "avg_pool1d",
}


# torch's OpInfos for the transposed convolutions list no error inputs (tests/test_conv_transpose.py has
# ours); the child fails if an op named here has none.
ERROR_OPS = sorted(n for n in OPINFO_OPS if "transpose" not in n)


def _run(*args):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *args], capture_output=True, text=True,
                          env=env, timeout=900)
    assert proc.returncode == 0, f"{args}: rc {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.mark.slow  # one process importing torch's OpInfo database and running ~250 samples: 10-30 s
def test_sample_inputs(backend):
    out = _run("samples", backend, *sorted(OPINFO_OPS))
    assert out.count("samples checked") == len(OPINFO_OPS) and "samples checked: 0" not in out, out


def test_error_inputs():
    out = _run("errors", "cpu", *ERROR_OPS)
    assert out.count("error inputs checked") == len(ERROR_OPS) and "checked: 0" not in out, out


# ----------------------------------------------------------------------------------------------------
# The child process


def _tensors(sample):
    ts = [sample.input] + [a for a in sample.args if isinstance(a, torch.Tensor)]
    ts += [v for v in sample.kwargs.values() if isinstance(v, torch.Tensor)]
    return [t for t in ts if t.requires_grad]


def _check_samples(op, ours) -> int:
    n = 0
    for dtype in (torch.float32, torch.float64):
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
        for sample in op.sample_inputs("cpu", dtype, requires_grad=True):
            n += 1
            y = ours(sample.input, *sample.args, **sample.kwargs)
            ref = op.op(sample.input, *sample.args, **sample.kwargs)
            y, ref = (y[0], ref[0]) if isinstance(ref, tuple) else (y, ref)
            what = f"{op.name} {dtype} sample {n}: input {tuple(sample.input.shape)}, kwargs {sample.kwargs}"
            torch.testing.assert_close(y, ref, **tol, msg=lambda m: f"{what}: {m}")
            inputs = _tensors(sample)
            if not inputs or ref.numel() == 0:
                continue
            g = torch.randn_like(ref)
            got = torch.autograd.grad(y, inputs, g, allow_unused=True)
            want = torch.autograd.grad(ref, inputs, g, allow_unused=True)
            for i, (a, b) in enumerate(zip(got, want)):
                if b is not None:
                    torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{what}, gradient {i}: {m}")
    return n


def _check_errors(op, ours) -> int:
    n, wrong = 0, []
    for ei in op.error_inputs("cpu"):
        s = ei.sample_input
        n += 1
        try:
            ours(s.input, *s.args, **s.kwargs)
        except ei.error_type as exc:
            if not re.search(ei.error_regex, str(exc)):
                wrong.append(f"torch expects {ei.error_regex!r}, ours said {str(exc)!r}")
        except Exception as exc:  # noqa: BLE001
            wrong.append(f"torch raises {ei.error_type.__name__}, ours {type(exc).__name__}: {exc}")
        else:
            wrong.append(f"no error for input {tuple(s.input.shape)} {s.args} {s.kwargs} (torch raises "
                         f"{ei.error_type.__name__})")
    assert not wrong, f"{op.name}:\n" + "\n".join(wrong)
    return n


def _main(what: str, backend: str, *names: str) -> None:
    import fastconv
    import fastconv.functional as FC
    from torch.testing._internal.common_methods_invocations import op_db

    fastconv.set_backend(backend)
    warnings.simplefilter("ignore")  # torch's 'same'-padding copy warning
    for name in names:
        op = next(o for o in op_db if o.name == name and o.variant_test_name == "")
        ours = getattr(FC, OPINFO_OPS[name])
        if what == "samples":
            print(f"{name}: samples checked: {_check_samples(op, ours)}")
        else:
            assert op.error_inputs_func is not None, f"torch's OpInfo for {name} has no error inputs"
            print(f"{name}: error inputs checked: {_check_errors(op, ours)}")


if __name__ == "__main__":
    _main(*sys.argv[1:])
