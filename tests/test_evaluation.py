"""Honest evaluation: `fastconv train --folds K` (k-fold cross-validation) and `fastconv evaluate
--conformal ALPHA` (split conformal prediction, reliability diagram, ECE), and the dataset views they
use (fastconv.data.subsets)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from fastconv.data import TensorImageDataset
from fastconv.data.subsets import labels_of, select, stratified_folds
from fastconv.data.datasets import DataSplits, DatasetError
from fastconv.training.evaluation import (conformal_quantile, coverage_interval, prediction_sets, reliability)


def toy_splits(n_train=60, n_test=30, classes=3) -> DataSplits:
    x = torch.arange(n_train, dtype=torch.float32).reshape(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    y = torch.arange(n_train) % classes
    xt = -torch.ones(n_test, 1, 2, 2)
    yt = torch.arange(n_test) % classes
    names = [f"c{i}" for i in range(classes)]
    return DataSplits("toy", TensorImageDataset(x, y, [0.0], [1.0]), TensorImageDataset(xt, yt, [0.0], [1.0]),
                      names, 1, 2, [0.0], [1.0])


# ----------------------------------------------------------------------------------------------------
# dataset views


@pytest.mark.parametrize("n, folds", [(60, 5), (61, 4), (7, 3)])
def test_stratified_folds_partition(n, folds):
    labels = torch.arange(n) % 3
    assign = stratified_folds(labels, folds, seed=0)
    sizes = [int((assign == f).sum()) for f in range(folds)]
    assert sum(sizes) == n and max(sizes) - min(sizes) <= 1
    for c in range(3):  # each class spread evenly over the folds too
        per = [int(((assign == f) & (labels.numpy() == c)).sum()) for f in range(folds)]
        assert max(per) - min(per) <= 1
    assert not (stratified_folds(labels, folds, seed=1) == assign).all() or n < folds + 2


def test_select_folds_hold_out_each_training_image_once():
    seen = []
    for fold in range(4):
        s = select(toy_splits(), folds=4, fold=fold, seed=0)
        train_ids = s.train.__getitems__(list(range(len(s.train))))[0][:, 0, 0, 0].tolist()
        held_ids = s.test.__getitems__(list(range(len(s.test))))[0][:, 0, 0, 0].tolist()
        assert not set(train_ids) & set(held_ids) and len(train_ids) + len(held_ids) == 60
        seen += held_ids
    assert sorted(seen) == [float(i) for i in range(60)]


def test_select_classes_and_per_class():
    s = select(toy_splits(), classes=["c2", "c0"], train_per_class=4)
    assert s.classes == ["c2", "c0"] and s.info()["classes"] == ["c2", "c0"]
    x, y = s.train.__getitems__(list(range(len(s.train))))
    # c2 -> 0, c0 -> 1; the first 4 training images of each class: ids 0, 3, 6, 9 (c0) and 2, 5, 8, 11 (c2)
    assert sorted(zip(x[:, 0, 0, 0].tolist(), y.tolist())) == sorted(
        [(float(i), 1) for i in (0, 3, 6, 9)] + [(float(i), 0) for i in (2, 5, 8, 11)])
    assert sorted(labels_of(s.test).tolist()) == [0] * 10 + [1] * 10
    with pytest.raises(DatasetError, match=r"--classes c0,c9: expected distinct class names .*unknown: \['c9'\]"):
        select(toy_splits(), classes=["c0", "c9"])
    with pytest.raises(DatasetError, match="--train-per-class must be at least 1"):
        select(toy_splits(), train_per_class=0)


# ----------------------------------------------------------------------------------------------------
# conformal prediction and calibration: the math on hand-made and simulated data


def test_conformal_quantile_by_hand():
    # scores 1 - p(true) = 0.1, 0.2, ..., 0.9 (n = 9); alpha 0.2 -> k = ceil(10 * 0.8) = 8 -> qhat = 0.8
    p_true = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    probs = torch.stack([p_true, 1 - p_true], 1)
    labels = torch.zeros(9, dtype=torch.long)
    assert conformal_quantile(probs, labels, 0.2) == pytest.approx(0.8)
    assert conformal_quantile(probs, labels, 0.05) == math.inf  # ceil(10 * 0.95) = 10 > 9
    sets = prediction_sets(torch.tensor([[0.25, 0.75], [0.15, 0.85]]), 0.8)
    assert sets.tolist() == [[True, True], [False, True]]


def _simulated(n, k=5, gen=None):
    """An imperfect but exchangeable classifier: labels drawn from its own softmax (so calibrated)."""
    probs = torch.softmax(2.5 * torch.randn(n, k, generator=gen, dtype=torch.float64), 1)
    labels = torch.multinomial(probs, 1, generator=gen)[:, 0]
    return probs, labels


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_conformal_coverage_within_finite_sample_bound(alpha):
    """Over 400 random calibration/test splits: the mean coverage lies in [1 - alpha, 1 - alpha + 1/(n+1)]
    (up to 4 standard errors of the mean), and each split's coverage in its 99.9% BetaBinomial range."""
    gen = torch.Generator().manual_seed(0)
    n_cal, n_test, reps = 100, 200, 400
    covs, outside = [], 0
    lo, hi = coverage_interval(n_cal, n_test, alpha)
    n = n_cal + n_test
    probs, labels = _simulated(reps * n, gen=gen)
    for r in range(reps):
        p, y = probs[r * n:(r + 1) * n], labels[r * n:(r + 1) * n]
        qhat = conformal_quantile(p[:n_cal], y[:n_cal], alpha)
        cov = prediction_sets(p[n_cal:], qhat).gather(1, y[n_cal:, None]).double().mean().item()
        covs.append(cov)
        outside += not lo <= cov <= hi
    c = torch.tensor(covs)
    se = float(c.std()) / math.sqrt(reps)
    assert 1 - alpha - 4 * se <= float(c.mean()) <= 1 - alpha + 1 / (n_cal + 1) + 4 * se, (float(c.mean()), se)
    assert outside <= 0.01 * reps  # 0.1% expected
    assert lo < 1 - alpha < hi


def test_reliability_and_ece_by_hand():
    # confidences 0.95 (2 images, 1 right), 0.55 (2 images, both right): bins (0.9, 1] and (0.5, 0.6]
    probs = torch.tensor([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.55, 0.45]])
    labels = torch.tensor([0, 1, 0, 0])
    rel = reliability(probs, labels)
    assert rel["ece"] == pytest.approx(0.5 * abs(0.5 - 0.95) + 0.5 * abs(1.0 - 0.55))
    counts = [b["count"] for b in rel["bins"]]
    assert counts == [0, 0, 0, 0, 0, 2, 0, 0, 0, 2]


# ----------------------------------------------------------------------------------------------------
# the commands


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    from fastconv.cli.train import run_train

    out = tmp_path_factory.mktemp("conformal") / "run"
    run_train(["--epochs", "4", "--train-subset", "600", "--progress", "off", "--out", str(out)])
    return out


def test_evaluate_conformal_coverage_on_the_test_set(digits_run, capsys):
    from fastconv.cli import main

    ckpt = str(digits_run / "checkpoint.pt")
    for alpha in (0.05, 0.1):
        assert main(["evaluate", ckpt, "--conformal", str(alpha), "--json"]) == 0
        res = json.loads(capsys.readouterr().out)
        lo, hi = res["coverage_interval_99_9"]
        assert res["n_calibration"] == 180 and res["n_evaluation"] == 180
        assert lo <= res["coverage"] <= hi, res
        assert res["expected_coverage"] == pytest.approx([1 - alpha, 1 - alpha + 1 / 181])
        assert 0 < res["mean_set_size"] <= 10 and sum(res["set_size_counts"]) == 180  # LAC sets may be empty
        assert 0 <= res["ece"] <= 1
        assert open(res["reliability_png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert main(["evaluate", ckpt, "--conformal", "0.1"]) == 0
    text = capsys.readouterr().out
    assert "coverage" in text and "mean set size" in text and "ECE" in text
    assert main(["evaluate", ckpt, "--conformal", "1.5"]) == 2
    assert "--conformal ALPHA must be in (0, 1), got 1.5" in capsys.readouterr().err


def test_train_folds_writes_per_fold_metrics(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from fastconv.cli import main

    out = tmp_path / "cv"
    assert main(["train", "--folds", "3", "--epochs", "2", "--train-subset", "150", "--progress", "off",
                 "--out", str(out)]) == 0
    assert "3-fold cross-validation: accuracy" in capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    folds = m["per_fold"]
    assert [f["fold"] for f in folds] == [0, 1, 2] and sum(f["total"] for f in folds) == 150
    accs = [f["accuracy"] for f in folds]
    assert m["mean_accuracy"] == pytest.approx(sum(accs) / 3)
    assert m["std_accuracy"] == pytest.approx(float(torch.tensor(accs).std()))
    for f in folds:
        assert (out / f"fold{f['fold']}" / "checkpoint.pt").is_file()
        fold_metrics = json.loads((out / f"fold{f['fold']}" / "metrics.json").read_text())
        assert fold_metrics["test_total"] == f["total"] and len(fold_metrics["history"]) == 2
    assert main(["train", "--folds", "1", "--epochs", "1", "--out", str(tmp_path / "x")]) == 2
    assert "--folds must be at least 2, got 1" in capsys.readouterr().err
