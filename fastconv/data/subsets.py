"""Views of a dataset's splits for transfer learning and cross-validation (`fastconv train --classes,
--train-per-class, --folds`): keep some classes (relabelled 0..k-1 in the order given), keep the first
n training images of each class, or hold out one of K stratified folds of the training split as the
test split. Views index the underlying dataset, so its batched fetching (__getitems__) is kept.

    select(splits, classes=["5", "6", "7", "8", "9"], train_per_class=10)   # 50 training images
    select(splits, folds=5, fold=2, seed=0)    # train: folds 0, 1, 3, 4 of the training split; test: fold 2
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .datasets import DataSplits, DatasetError


class RelabeledSubset(Dataset):
    """dataset[indices[i]] with its label mapped through `relabel` (a lookup table: old -> new label)."""

    def __init__(self, base: Dataset, indices: Sequence[int], relabel: Optional[Tensor] = None):
        self.base, self.indices, self.relabel = base, [int(i) for i in indices], relabel
        self.labels = labels_of(base)[torch.as_tensor(self.indices, dtype=torch.long)]
        if relabel is not None:
            self.labels = relabel[self.labels]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitems__(self, indices: List[int]):
        mapped = [self.indices[i] for i in indices]
        if hasattr(self.base, "__getitems__"):
            x, y = self.base.__getitems__(mapped)
        else:
            items = [self.base[i] for i in mapped]
            x, y = torch.stack([a for a, _ in items]), torch.as_tensor([b for _, b in items])
        return x, (y if self.relabel is None else self.relabel[y])

    def __getitem__(self, i: int):
        x, y = self.__getitems__([i])
        return x[0], y[0]


def labels_of(ds: Dataset) -> Tensor:
    """The int64 labels of every sample (read from .labels when the dataset has them)."""
    if hasattr(ds, "labels"):
        return torch.as_tensor(ds.labels, dtype=torch.long)[:len(ds)]
    return torch.as_tensor([int(ds[i][1]) for i in range(len(ds))], dtype=torch.long)


def stratified_folds(labels: Tensor, folds: int, seed: int) -> np.ndarray:
    """fold index (0..folds-1) per sample: each class's samples, in a seeded order, dealt round-robin."""
    rng = np.random.default_rng(seed)
    assign = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for c in torch.unique(labels).tolist():
        idx = np.flatnonzero(labels.numpy() == c)
        rng.shuffle(idx)
        assign[idx] = (np.arange(len(idx)) + offset) % folds
        offset += len(idx)  # classes continue the deal where the last one stopped: fold sizes differ by <= 1
    return assign


def select(splits: DataSplits, classes: Optional[Sequence[str]] = None, train_per_class: Optional[int] = None,
           folds: Optional[int] = None, fold: Optional[int] = None, seed: int = 0) -> DataSplits:
    """The view of `splits` that the options ask for (all None: splits itself)."""
    if classes:
        names = [str(c) for c in classes]
        unknown = [c for c in names if c not in splits.classes]
        if unknown or len(set(names)) != len(names):
            raise DatasetError(f"--classes {','.join(names)}: expected distinct class names of the {splits.name} "
                               f"dataset ({', '.join(splits.classes)})" + (f"; unknown: {unknown}" if unknown else ""))
        relabel = torch.full((len(splits.classes),), -1, dtype=torch.long)
        for new, c in enumerate(names):
            relabel[splits.classes.index(c)] = new
        for part in ("train", "test"):
            ds = getattr(splits, part)
            keep = torch.nonzero(relabel[labels_of(ds)] >= 0).flatten().tolist()
            setattr(splits, part, RelabeledSubset(ds, keep, relabel))
        splits.classes = names
    if folds:
        if folds < 2 or fold is None or not 0 <= fold < folds:
            raise DatasetError(f"--folds {folds}: expected at least 2 folds and a fold index in [0, {folds})")
        labels = labels_of(splits.train)
        if len(labels) < folds:
            raise DatasetError(f"--folds {folds}: only {len(labels)} training images")
        assign = stratified_folds(labels, folds, seed)
        base = splits.train
        splits.train = RelabeledSubset(base, np.flatnonzero(assign != fold).tolist())
        splits.test = RelabeledSubset(base, np.flatnonzero(assign == fold).tolist())
    if train_per_class is not None:
        if train_per_class < 1:
            raise DatasetError(f"--train-per-class must be at least 1, got {train_per_class}")
        labels = labels_of(splits.train)
        keep = sorted(i for c in torch.unique(labels).tolist()
                      for i in torch.nonzero(labels == c).flatten()[:train_per_class].tolist())
        splits.train = RelabeledSubset(splits.train, keep)
    return splits
