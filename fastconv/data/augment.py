"""Training-time data augmentation, applied per batch to the normalized images a dataset returns.

    shift      random translation by up to `pad` pixels in each direction (pad, then crop back to H x W);
               no flips: a mirrored digit is another symbol (digits' default, pad 1)
    crop-flip  random crop with padding plus a horizontal flip with probability 1/2 (CIFAR-10's usual
               recipe, pad 4 on 32x32; image folders' default, pad = size / 8)
    none

The padding is the image background before normalization (raw 0: black, no ink), i.e. -mean/std per
channel after it.

What sample i gets in epoch e is a hash of (seed, e, i) - no generator state: the same augmentation
whatever batch, DataLoader worker or data-parallel rank the sample lands in. So `torchrun` training
still equals one process with the global batch, and --resume stays exact without saving any state.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

AUGMENTATIONS = ("none", "shift", "crop-flip")
# --augment left unset: what each dataset trains with.
DEFAULT_AUGMENT = {"digits": "shift", "cifar10": "crop-flip", "folder": "crop-flip"}


def default_pad(image_size: int) -> int:
    """1 pixel on 8x8 digits, 4 on 32x32 CIFAR-10: an eighth of the side, at least 1."""
    return max(1, image_size // 8)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijection of uint64 whose outputs look independent (numpy's uint64
    arithmetic wraps modulo 2^64)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def sample_draws(seed: int, epoch: int, indices, count: int) -> np.ndarray:
    """(len(indices), count) uint64 values, a function of (seed, epoch, index) only."""
    golden = np.uint64(0x9E3779B97F4A7C15)
    key = _mix(np.array([seed % 2 ** 64], dtype=np.uint64) + golden)
    key = _mix(key ^ np.uint64(epoch % 2 ** 64))
    z = _mix(key ^ np.asarray(indices, dtype=np.uint64))[:, None]
    return _mix(z + golden * np.arange(1, count + 1, dtype=np.uint64)[None, :])


def shift(x: Tensor, offsets: Tensor, pad: int, fill: Tensor) -> Tensor:
    """Image n of x (N, C, H, W) padded by `pad` with fill (C,) and cropped H x W at offsets[n] = (top,
    left), each in [0, 2 * pad]: a translation by (pad - top, pad - left)."""
    N, C, H, W = x.shape
    if pad <= 0 or N == 0:
        return x
    padded = fill.to(x.dtype).reshape(1, C, 1, 1).expand(N, C, H + 2 * pad, W + 2 * pad).clone()
    padded[:, :, pad:pad + H, pad:pad + W] = x
    rows = (offsets[:, 0:1] + torch.arange(H)).reshape(N, H, 1)  # (N, H, 1)
    cols = (offsets[:, 1:2] + torch.arange(W)).reshape(N, 1, W)  # (N, 1, W)
    n = torch.arange(N).reshape(N, 1, 1)
    return padded.permute(0, 2, 3, 1)[n, rows, cols].permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)


def hflip(x: Tensor, mask: Tensor) -> Tensor:
    """The images of x (N, C, H, W) where mask (N,) is True mirrored left-right."""
    return torch.where(mask.reshape(-1, 1, 1, 1), x.flip(-1), x)


class AugmentedDataset(Dataset):
    """`base` (a dataset of normalized images) with an augmentation applied to every batch it returns;
    the training loop calls set_epoch(e) before each epoch (as DistributedSampler's)."""

    def __init__(self, base: Dataset, kind: str, mean, std, pad: int, seed: int = 0):
        if kind not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {list(AUGMENTATIONS)}, got {kind!r}")
        self.base, self.kind, self.pad, self.seed, self.epoch = base, kind, int(pad), int(seed), 0
        self.fill = -torch.tensor(mean, dtype=torch.float32) / torch.tensor(std, dtype=torch.float32)  # raw 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitems__(self, indices: List[int]) -> Tuple[Tensor, Tensor]:
        if hasattr(self.base, "__getitems__"):
            x, y = self.base.__getitems__(indices)
        else:
            items = [self.base[i] for i in indices]
            x, y = torch.stack([a for a, _ in items]), torch.stack([torch.as_tensor(b) for _, b in items])
        return self.apply(x, indices), y

    def __getitem__(self, i: int) -> Tuple[Tensor, Tensor]:
        x, y = self.__getitems__([i])
        return x[0], y[0]

    def draws(self, indices) -> Tuple[Tensor, Tensor]:
        """(offsets (N, 2) in [0, 2 * pad], flip mask (N,)) of these samples in the current epoch."""
        d = sample_draws(self.seed, self.epoch, indices, 3)
        offsets = torch.from_numpy((d[:, :2] % np.uint64(2 * self.pad + 1)).astype(np.int64))
        flips = torch.from_numpy((d[:, 2] >> np.uint64(63)).astype(bool))
        return offsets, flips

    def apply(self, x: Tensor, indices) -> Tensor:
        if self.kind == "none" or x.shape[0] == 0:
            return x
        offsets, flips = self.draws(indices)
        x = shift(x, offsets, self.pad, self.fill)
        return hflip(x, flips) if self.kind == "crop-flip" else x


def augment_train_split(splits, kind: str, seed: int = 0) -> None:
    """Wraps splits.train (a DataSplits) in the augmentation `kind`; the test split stays as it is."""
    if kind not in AUGMENTATIONS:
        raise ValueError(f"--augment {kind}: expected one of {', '.join(AUGMENTATIONS)}")
    if kind != "none":
        splits.train = AugmentedDataset(splits.train, kind, splits.mean, splits.std, default_pad(splits.image_size),
                                        seed)
