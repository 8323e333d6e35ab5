"""`fastconv profile` and fastconv.profiling: the trace holds a named range per fastconv op, the ranges
cost nothing while profiling is off, and --ncu prints the Nsight Compute command."""
from __future__ import annotations

import json

import torch

import fastconv
import fastconv.functional as FC
from fastconv import profiling
from fastconv.cli import main


def _names(trace_path):
    events = json.loads(trace_path.read_text())
    events = events["traceEvents"] if isinstance(events, dict) else events
    return {e.get("name", "") for e in events}


def test_profile_trace_has_fastconv_ops(tmp_path, capsys):
    out = tmp_path / "trace.json"
    assert main(["profile", "--steps", "1", "--batch", "4", "--out", str(out), "--top", "5"]) == 0
    names = _names(out)
    backend = fastconv.backends.resolve(torch.device("cpu")).name
    for op in ("conv2d_relu", "conv2d_dgrad", "conv2d_wgrad", "max_pool2d_with_indices", "max_pool2d_backward"):
        assert any(n.startswith(f"fastconv::{op}[{backend},float32,") for n in names), (op, sorted(names))
    assert f"fastconv::conv2d_relu[{backend},float32,5x5,s1]" in names
    text = capsys.readouterr().out
    assert "fastconv::conv2d_relu[" in text and str(out) in text


def test_profile_default_path_in_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["profile", "--steps", "1", "--warmup", "0", "--batch", "2", "--top", "3"]) == 0
    traces = list(tmp_path.glob("fastconv-trace-*.json"))
    assert len(traces) == 1 and any(n.startswith("fastconv::") for n in _names(traces[0]))


def test_range_names_and_off_by_default():
    x = torch.randn(1, 4, 9, 9)
    w = torch.randn(8, 4, 3, 3)
    assert not profiling.is_enabled()
    with torch.profiler.profile() as prof:
        FC.conv2d(x, w, None, stride=2)
    assert not any(e.key.startswith("fastconv::conv2d[") for e in prof.key_averages())
    with profiling.enabled(), torch.profiler.profile() as prof:
        FC.conv2d(x, w, None, stride=2)
        FC.avg_pool2d(x, 3, stride=(1, 2))
    keys = {e.key for e in prof.key_averages()}
    backend = fastconv.backends.resolve(x.device).name
    assert f"fastconv::conv2d[{backend},float32,3x3,s2]" in keys
    assert f"fastconv::avg_pool2d[{backend},float32,3x3,s1x2]" in keys
    assert not profiling.is_enabled()


def test_ncu_prints_command(capsys, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)  # never launch ncu from the unit tests
    assert main(["profile", "--ncu"]) == 0
    out = capsys.readouterr().out
    assert "ncu " in out and "--kernel-name regex:fastconv" in out and "--nvtx" in out
    assert "not running it: `ncu` is not on PATH" in out
