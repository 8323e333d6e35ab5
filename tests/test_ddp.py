"""Data-parallel training: `torchrun --nproc_per_node=2 -m fastconv train` on gloo gives the weights of
one process trained with the same global batch (float64, so the only difference is the order in which
DDP sums the two halves of each batch's gradient)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("sklearn")

import torch.distributed as dist  # noqa: E402

from fastconv.cli.train import run_train  # noqa: E402

pytestmark = [pytest.mark.slow,  # two training processes: 8-15 s
              pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                 reason="torch.distributed with gloo is not available")]

# 192 samples, global batch 32: 6 steps per epoch, 2 epochs; LeNet-5 has no batch norm, so the two
# processes' update is exactly the single-process update.
ARGS = ["--train-subset", "192", "--test-subset", "64", "--batch-size", "32", "--epochs", "2", "--dtype", "float64",
        "--progress", "off", "--lr", "0.1"]


def test_two_process_gloo_equals_single_process(backend, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", FASTCONV_BACKEND="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "fastconv",
           "train", "--backend", backend, "--out", str(tmp_path / "ddp"), *ARGS]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Rank 0 alone logs and writes.
    assert proc.stdout.count("test accuracy:") == 1, proc.stdout
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["world_size"] == 2

    single = run_train(["--backend", backend, "--out", str(tmp_path / "one"), *ARGS])
    assert single["world_size"] == 1
    a = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)["model"]
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-10, atol=1e-12, msg=lambda m: f"{k}: {m}")
    # The logged (all-reduced) training losses are the single process's too.
    for h1, h2 in zip(metrics["history"], single["history"]):
        assert h1["train_loss"] == pytest.approx(h2["train_loss"], rel=1e-9)
