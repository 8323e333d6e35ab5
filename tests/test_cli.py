"""The `fastconv` command's front-end (fastconv.cli): the registry of command modules, the top-level
help, `python -m fastconv`, and the one-line error of train / evaluate / predict when the optional
'train' extra is missing."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastconv import cli
from fastconv.cli import COMMANDS, main
from fastconv.cli._util import missing_train_extra

REPO = str(Path(__file__).resolve().parent.parent)
NAMES = ["info", "demo", "train", "evaluate", "predict", "explain", "bench", "profile"]


def test_registry():
    assert list(COMMANDS) == NAMES
    for name, module in COMMANDS.items():
        assert module.__name__ == f"fastconv.cli.{name}" and module.NAME == name
        assert isinstance(module.HELP, str) and callable(module.add_arguments) and callable(module.run)


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: fastconv") and all(f"    {n}" in out for n in NAMES)


def test_python_m_fastconv_info():
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "fastconv", "info"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("fastconv ") and "backend choice:" in proc.stdout


def test_train_without_scikit_learn(tmp_path, monkeypatch, capsys):
    """The digits dataset needs scikit-learn (the 'train' extra): one line on stderr, exit code 2."""
    monkeypatch.setitem(sys.modules, "sklearn", None)  # `import sklearn...` raises ModuleNotFoundError
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    assert main(["train", "--epochs", "1", "--progress", "off", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastconv train: error: the digits dataset comes with scikit-learn")
    assert "pip install 'fastconv[train]'" in err and "Traceback" not in err


@pytest.mark.parametrize("command", [["evaluate"], ["predict", "x.png"]])
def test_checkpoint_commands_report_a_missing_checkpoint(tmp_path, capsys, command):
    missing = str(tmp_path / "none.pt")
    assert main([command[0], missing] + command[1:]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fastconv {command[0]}: error: checkpoint '{missing}' does not exist") and "Traceback" not in err


def test_missing_train_extra_message():
    tqdm = ModuleNotFoundError("No module named 'tqdm'", name="tqdm")
    assert missing_train_extra(tqdm).endswith("pip install 'fastconv[train]')")
    wrapped = ImportError("reading image files needs Pillow: pip install pillow (pip install 'fastconv[train]')")
    wrapped.__cause__ = ModuleNotFoundError("No module named 'PIL'", name="PIL")
    assert missing_train_extra(wrapped) == str(wrapped)
    assert missing_train_extra(ModuleNotFoundError("No module named 'fastconv._x'", name="fastconv._x")) is None


def test_other_import_errors_are_not_hidden(monkeypatch):
    import fastconv.training as training

    def broken(cfg):
        raise ModuleNotFoundError("No module named 'fastconv._missing'", name="fastconv._missing")

    monkeypatch.setattr(training, "train", broken)
    with pytest.raises(ModuleNotFoundError):
        cli.main(["train", "--epochs", "1"])


def test_info_explain_conv(capsys):
    """`fastconv info --explain-conv`: the cpu path chooser's answer for each pass at each ISA level the
    CPU has, the level in use restored afterwards."""
    from fastconv import _C
    from fastconv.backends.cpu import conv2d_path
    import torch

    before = _C.cpu_isa()
    assert main(["info", "--explain-conv", "2,64,20,20,32,3", "--stride", "2", "--padding", "1",
                 "--channels-last", "--relu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert _C.cpu_isa() == before
    assert out[0].startswith("conv2d_relu 2x64x20x20 -> 32, 3x3, stride 2, padding 1") and "channels_last" in out[0]
    x = torch.empty(2, 64, 20, 20, device="meta").contiguous(memory_format=torch.channels_last)
    w = torch.empty(32, 64, 3, 3, device="meta")
    want = [f"    {p:6s} {conv2d_path(x, w, 2, 1, pass_=p, relu=True)}" for p in ("fwd", "dgrad", "wgrad")]
    i = out.index(f"  {before} (in use):")
    assert out[i + 1:i + 4] == want
    assert main(["info", "--explain-conv", "1,3,4,4,8,7"]) == 2
    assert "Kernel size can't be greater than actual input size" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["info", "--explain-conv", "1,3,x"])
