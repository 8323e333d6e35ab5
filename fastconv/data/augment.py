"""Training-time data augmentation, applied per batch to the normalized images a dataset returns.

    shift      random translation by up to `pad` pixels in each direction (pad, then crop back to H x W);
               no flips: a mirrored digit is another symbol (digits' default, pad 1)
    crop-flip  random crop with padding plus a horizontal flip with probability 1/2 (CIFAR-10's usual
               recipe, pad 4 on 32x32; image folders' default, pad = size / 8)
    none

The padding is the image background before normalization (raw 0: black, no ink), i.e. -mean/std per
channel after it. Offsets and flips are drawn from torch's global generator, which the checkpoint
saves, so a resumed run draws the same augmentations as an uninterrupted one (with --workers 0; worker
processes draw from their own seeded generators).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

AUGMENTATIONS = ("none", "shift", "crop-flip")
# --augment left unset: what each dataset trains with.
DEFAULT_AUGMENT = {"digits": "shift", "cifar10": "crop-flip", "folder": "crop-flip"}


def default_pad(image_size: int) -> int:
    """1 pixel on 8x8 digits, 4 on 32x32 CIFAR-10: an eighth of the side, at least 1."""
    return max(1, image_size // 8)


def random_shift(x: Tensor, pad: int, fill: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Each image of x (N, C, H, W) translated by (dy, dx), both uniform in [-pad, pad]; uncovered
    pixels take fill (C,). Equal to padding by `pad` with fill and cropping H x W at a random place."""
    N, C, H, W = x.shape
    if pad <= 0 or N == 0:
        return x
    padded = fill.to(x.dtype).reshape(1, C, 1, 1).expand(N, C, H + 2 * pad, W + 2 * pad).clone()
    padded[:, :, pad:pad + H, pad:pad + W] = x
    off = torch.randint(0, 2 * pad + 1, (N, 2), generator=generator)  # top-left corner of the crop
    rows = (off[:, 0:1] + torch.arange(H)).reshape(N, H, 1)  # (N, H, 1)
    cols = (off[:, 1:2] + torch.arange(W)).reshape(N, 1, W)  # (N, 1, W)
    n = torch.arange(N).reshape(N, 1, 1)
    return padded.permute(0, 2, 3, 1)[n, rows, cols].permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)


def random_hflip(x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Each image of x (N, C, H, W) mirrored left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(flip.reshape(-1, 1, 1, 1), x.flip(-1), x)


class AugmentedDataset(Dataset):
    """`base` (a dataset of normalized images) with an augmentation applied to every batch it returns."""

    def __init__(self, base: Dataset, kind: str, mean: Sequence[float], std: Sequence[float], pad: int):
        if kind not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {list(AUGMENTATIONS)}, got {kind!r}")
        self.base, self.kind, self.pad = base, kind, int(pad)
        mean_t = torch.tensor(mean, dtype=torch.float32)
        self.fill = -mean_t / torch.tensor(std, dtype=torch.float32)  # raw 0, normalized

    def __len__(self) -> int:
        return len(self.base)

    def __getitems__(self, indices: List[int]) -> Tuple[Tensor, Tensor]:
        if hasattr(self.base, "__getitems__"):
            x, y = self.base.__getitems__(indices)
        else:
            items = [self.base[i] for i in indices]
            x, y = torch.stack([a for a, _ in items]), torch.stack([torch.as_tensor(b) for _, b in items])
        return self.apply(x), y

    def __getitem__(self, i: int) -> Tuple[Tensor, Tensor]:
        x, y = self.__getitems__([i])
        return x[0], y[0]

    def apply(self, x: Tensor) -> Tensor:
        if self.kind == "none":
            return x
        x = random_shift(x, self.pad, self.fill)
        return random_hflip(x) if self.kind == "crop-flip" else x


def augment_train_split(splits, kind: str) -> None:
    """Wraps splits.train (a DataSplits) in the augmentation `kind`; the test split stays as it is."""
    if kind not in AUGMENTATIONS:
        raise ValueError(f"--augment {kind}: expected one of {', '.join(AUGMENTATIONS)}")
    if kind != "none":
        splits.train = AugmentedDataset(splits.train, kind, splits.mean, splits.std, default_pad(splits.image_size))
