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
NAMES = ["info", "demo", "train", "evaluate", "predict", "bench", "profile"]


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
