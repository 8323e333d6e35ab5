"""What a run reports: accuracy per class, the confusion matrix (as text), metrics.json and the plot
of the loss and accuracy curves."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence

import torch


def confusion_matrix(targets: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) int64 counts: row = true class, column = predicted class."""
    idx = targets.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> List[float]:
    totals = confusion.sum(1).clamp_min(1)
    return (confusion.diag().double() / totals.double()).tolist()


def format_per_class(classes: Sequence[str], confusion: torch.Tensor) -> List[str]:
    accs = per_class_accuracy(confusion)
    width = max(5, max(len(c) for c in classes))
    lines = [f"  {'class':<{width}}  accuracy  correct/total"]
    for i, (c, acc, row) in enumerate(zip(classes, accs, confusion.tolist())):
        lines.append(f"  {c:<{width}}  {100 * acc:7.2f}%  {row[i]:>7}/{sum(row)}")
    return lines


def format_confusion(classes: Sequence[str], confusion: torch.Tensor, max_label: int = 6) -> List[str]:
    labels = [c[:max_label] for c in classes]
    cell = max(max_label if len(classes) <= 12 else 4, len(str(int(confusion.max()))) if confusion.numel() else 1)
    cell = max(cell, max(len(x) for x in labels))
    head = " " * (cell + 2) + " ".join(f"{x:>{cell}}" for x in labels)
    lines = ["  confusion matrix (rows: true class, columns: predicted)", head]
    for x, row in zip(labels, confusion.tolist()):
        lines.append(f"  {x:>{cell}}" + "".join(f" {v:>{cell}}" for v in row))
    return lines


def write_json(path: Path, data: Dict) -> None:
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def plot_curves(path: Path, history: List[Dict], title: str) -> None:
    """Loss (train, test) and accuracy (train, test) per epoch, side by side, as a PNG.

    Uses matplotlib's object API with the Agg canvas: no pyplot state, no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    test = [(h["epoch"], h["test_loss"], h["test_accuracy"]) for h in history if h.get("test_loss") is not None]
    if test:
        ax_loss.plot([t[0] for t in test], [t[1] for t in test], "s-", label="test")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.set_yscale("log")
    ax_loss.grid(True, alpha=0.3)
    ax_loss.legend()
    ax_acc.plot(epochs, [100 * h["train_accuracy"] for h in history], "o-", label="train")
    if test:
        ax_acc.plot([t[0] for t in test], [100 * t[2] for t in test], "s-", label="test")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.grid(True, alpha=0.3)
    ax_acc.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
