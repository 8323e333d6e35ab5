"""Honest evaluation: k-fold cross-validation (`fastconv train --folds K`), split conformal prediction
and calibration (`fastconv evaluate --conformal ALPHA`).

Cross-validation: the training split is dealt into K stratified folds (fastconv.data.subsets); run i
trains on the other K-1 folds and is validated on fold i; the test split is not used. metrics.json
holds each fold's metrics and the mean and sample standard deviation of the fold accuracies.

Split conformal prediction (Vovk et al.; Angelopoulos & Bates, "A gentle introduction to conformal
prediction", 2021): the test split is divided at random (seeded) into a calibration part of n images
and an evaluation part. The score of an image is 1 - p(true class); qhat is the ceil((n+1)(1-alpha))-th
smallest calibration score; the prediction set of a new image is every class with 1 - p <= qhat. For
exchangeable data, P(true class in set) is at least 1 - alpha and, without ties, at most
1 - alpha + 1/(n+1). Conditional on the calibration set, the coverage is Beta(n+1-l, l) with
l = floor((n+1) alpha), so the number of covered images among m evaluation images is
BetaBinomial(m, n+1-l, l): `coverage_interval` gives the range it stays in with 99.9% probability,
the finite-sample check of an observed coverage.

Calibration: the reliability diagram bins the top-class confidence into 10 equal-width bins and plots
each bin's accuracy against its mean confidence; the expected calibration error (ECE) is the
size-weighted mean of |accuracy - confidence| over the bins (Guo et al. 2017).
"""
from __future__ import annotations

import math
import statistics
import time
from argparse import Namespace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from . import report
from .engine import ConfigError


# ----------------------------------------------------------------------------------------------------
# k-fold cross-validation


def cross_validate(cfg: Namespace) -> Dict[str, Any]:
    """K trainings (fastconv.training.train) on the folds of the training split; writes metrics.json."""
    from .engine import train

    folds = int(cfg.folds)
    if folds < 2:
        raise ConfigError(f"--folds must be at least 2, got {folds}")
    if cfg.resume:
        raise ConfigError("--folds cannot be combined with --resume (each fold is a run of its own)")
    out = Path(cfg.out) if cfg.out else Path.cwd() / "runs" / f"{cfg.model}-{cfg.dataset}-cv{folds}-" \
                                                             f"{time.strftime('%Y%m%d-%H%M%S')}"
    per_fold: List[Dict[str, Any]] = []
    for i in range(folds):
        print(f"fastconv train --folds {folds}: fold {i + 1}/{folds} (validated on fold {i})", flush=True)
        m = train(Namespace(**{**vars(cfg), "fold": i, "out": str(out / f"fold{i}")}))
        if "rank" in m:  # a non-main process of a distributed run
            continue
        per_fold.append({"fold": i, "accuracy": m["test_accuracy"], "loss": m["test_loss"],
                         "correct": m["test_correct"], "total": m["test_total"],
                         "per_class_accuracy": m["per_class_accuracy"], "train_seconds": m["train_seconds"],
                         "checkpoint": m["checkpoint"]})
    if not per_fold:
        return {"folds": folds}
    accs = [f["accuracy"] for f in per_fold]
    metrics = {
        "folds": folds,
        "mean_accuracy": statistics.fmean(accs),
        "std_accuracy": statistics.stdev(accs),
        "min_accuracy": min(accs),
        "max_accuracy": max(accs),
        "pooled_accuracy": sum(f["correct"] for f in per_fold) / sum(f["total"] for f in per_fold),
        "per_fold": per_fold,
        "model": cfg.model,
        "dataset": cfg.dataset,
        "args": {k: v for k, v in vars(cfg).items() if k != "fold"},
    }
    report.write_json(out / "metrics.json", metrics)
    print(f"\n{folds}-fold cross-validation: accuracy {100 * metrics['mean_accuracy']:.2f}% +- "
          f"{100 * metrics['std_accuracy']:.2f}% (mean +- sample std over folds; min "
          f"{100 * metrics['min_accuracy']:.2f}%, max {100 * metrics['max_accuracy']:.2f}%)",
          "  per fold: " + ", ".join(f"{100 * a:.2f}%" for a in accs), f"wrote {out / 'metrics.json'}",
          sep="\n", flush=True)
    return metrics


# ----------------------------------------------------------------------------------------------------
# split conformal prediction


def conformal_quantile(cal_probs: torch.Tensor, cal_labels: torch.Tensor, alpha: float) -> float:
    """qhat: the ceil((n+1)(1-alpha))-th smallest score 1 - p(true class); inf when that exceeds n."""
    if not 0 < alpha < 1:
        raise ConfigError(f"--conformal ALPHA must be in (0, 1), got {alpha}")
    n = cal_labels.numel()
    k = math.ceil((n + 1) * (1 - alpha))
    if k > n:
        return math.inf
    scores = 1 - cal_probs.double().gather(1, cal_labels.long()[:, None])[:, 0]
    return float(scores.sort().values[k - 1])


def prediction_sets(probs: torch.Tensor, qhat: float) -> torch.Tensor:
    """(N, K) bool: class j is in image i's set when 1 - p_ij <= qhat."""
    return (1 - probs.double()) <= qhat


def coverage_interval(n_cal: int, n_test: int, alpha: float, confidence: float = 0.999) -> Tuple[float, float]:
    """The central `confidence` range of the empirical coverage on n_test images (BetaBinomial law)."""
    l_ = math.floor((n_cal + 1) * alpha)
    if l_ < 1:  # qhat = inf: every set is every class
        return 1.0, 1.0
    a, b, m = float(n_cal + 1 - l_), float(l_), n_test
    k = torch.arange(m + 1, dtype=torch.float64)
    lg = torch.lgamma
    # BetaBinomial pmf: C(m, k) B(k + a, m - k + b) / B(a, b), in logs; the terms without k are constants
    const = math.lgamma(m + 1) - math.lgamma(m + a + b) - math.lgamma(a) - math.lgamma(b) + math.lgamma(a + b)
    log_pmf = const - lg(k + 1) - lg(m - k + 1) + lg(k + a) + lg(m - k + b)
    cdf = log_pmf.exp().cumsum(0)
    cdf = cdf / cdf[-1]  # the pmf sums to 1 up to rounding in the lgamma sums
    tail = (1 - confidence) / 2
    lo = int(torch.searchsorted(cdf, torch.tensor([tail], dtype=torch.float64))[0])
    hi = int(torch.searchsorted(cdf, torch.tensor([1 - tail], dtype=torch.float64))[0])
    return lo / m, min(hi, m) / m


def reliability(probs: torch.Tensor, labels: torch.Tensor, bins: int = 10) -> Dict[str, Any]:
    """Per confidence bin: count, mean confidence, accuracy; and the expected calibration error."""
    conf, pred = probs.double().max(1)
    correct = (pred == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    which = torch.bucketize(conf, edges[1:-1], right=True)  # bin i holds (edges[i], edges[i+1]]; 0 holds [0, .]
    rows, ece, n = [], 0.0, max(1, labels.numel())
    for b in range(bins):
        sel = which == b
        count = int(sel.sum())
        if count:
            c, a = float(conf[sel].mean()), float(correct[sel].mean())
            ece += count / n * abs(a - c)
        else:
            c = a = None
        rows.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": count, "confidence": c,
                     "accuracy": a})
    return {"bins": rows, "ece": ece}


def plot_reliability(path: Path, rel: Dict[str, Any], title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    rows = [r for r in rel["bins"] if r["count"]]
    width = rel["bins"][0]["upper"] - rel["bins"][0]["lower"]
    ax.bar([r["lower"] for r in rows], [r["accuracy"] for r in rows], width=width, align="edge",
           edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], "o", color="tab:red",
            label="(mean confidence, accuracy)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE {100 * rel['ece']:.2f}%")
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)


@torch.no_grad()
def predicted_probabilities(model, loader, device, dtype, channels_last: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    from .engine import _float_logits, _to_device

    probs, labels = [], []
    for x, y in loader:
        x, y = _to_device(x, y, device, dtype, channels_last)
        probs.append(torch.softmax(_float_logits(model(x)), 1).cpu())
        labels.append(y.cpu())
    return torch.cat(probs), torch.cat(labels)


def conformal_evaluate(path, alpha: float, device: str = "auto", backend: str = "auto", data_dir=None,
                       batch_size: int = 256, calibration_fraction: float = 0.5, seed: int = 0,
                       out: Optional[str] = None) -> Dict[str, Any]:
    """`fastconv evaluate CHECKPOINT --conformal ALPHA`: calibrates on part of the test split, reports
    coverage and set size on the rest, and writes the reliability diagram (whole test split)."""
    from .. import backends
    from .engine import DTYPES, _loader, load_data, load_for_inference

    if not 0 < calibration_fraction < 1:
        raise ConfigError(f"--calibration-fraction must be in (0, 1), got {calibration_fraction}")
    if not 0 < alpha < 1:
        raise ConfigError(f"--conformal ALPHA must be in (0, 1), got {alpha}")
    previous = backends.get_backend()
    try:
        model, ckpt, cfg, dev, label = load_for_inference(path, device, backend, data_dir)
        data = load_data(cfg)
        loader = _loader(data.test, batch_size, torch.utils.data.SequentialSampler(data.test), 0, dev)
        probs, labels = predicted_probabilities(model, loader, dev, DTYPES[cfg.dtype], cfg.channels_last)
    finally:
        backends.set_backend(previous)
    n = labels.numel()
    n_cal = round(calibration_fraction * n)
    if n_cal < 1 or n_cal >= n:
        raise ConfigError(f"--calibration-fraction {calibration_fraction} of {n} test images leaves no "
                          f"calibration or no evaluation image")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cal, ev = perm[:n_cal], perm[n_cal:]
    qhat = conformal_quantile(probs[cal], labels[cal], alpha)
    sets = prediction_sets(probs[ev], qhat)
    covered = sets.gather(1, labels[ev][:, None])[:, 0]
    sizes = sets.sum(1)
    lo, hi = coverage_interval(n_cal, len(ev), alpha)
    rel = reliability(probs, labels)
    png = Path(out).expanduser() if out else Path(path).expanduser().parent / "reliability.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    plot_reliability(png, rel, f"{cfg.model} on {cfg.dataset}, test split ({n} images)")
    k = probs.shape[1]
    return {
        "checkpoint": str(path), "alpha": alpha, "n_calibration": n_cal, "n_evaluation": int(len(ev)),
        "qhat": qhat, "coverage": float(covered.double().mean()), "mean_set_size": float(sizes.double().mean()),
        "set_size_counts": torch.bincount(sizes, minlength=k + 1).tolist(),
        "expected_coverage": [1 - alpha, min(1.0, 1 - alpha + 1 / (n_cal + 1))],
        "coverage_interval_99_9": [lo, hi],
        "accuracy": float((probs.argmax(1) == labels).double().mean()), "ece": rel["ece"],
        "reliability_bins": rel["bins"], "reliability_png": str(png), "backend": label, "device": str(dev),
    }
