"""Dataset loaders. Each returns a DataSplits: train and test Datasets of normalized float images
(C, H, W) with int64 labels, the class names, and the preprocessing (size, channels, mean/std) that a
new image must go through before the trained model sees it (`preprocess_image`)."""
from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

DATASETS = ("digits", "cifar10", "folder")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_LAYOUT = ("a directory in the CIFAR-10 python batches format: data_batch_1 ... data_batch_5, "
                  "test_batch and batches.meta (cifar-10-python.tar.gz from "
                  "https://www.cs.toronto.edu/~kriz/cifar.html, extracted; the directory itself or its "
                  "parent holding cifar-10-batches-py/)")
FOLDER_LAYOUT = ("an image folder with one sub-folder per class (DIR/<class>/*.png|jpg|...), split into "
                 "train/test with the seed, or DIR/train/<class>/... and DIR/test/<class>/... (or val/)")


class DatasetError(ValueError):
    """A dataset directory is missing or not in the expected format; the message says what was expected."""


def collate_batch(batch):
    """collate_fn for datasets whose __getitems__ already returns the (images, labels) batch."""
    return batch


class TensorImageDataset(Dataset):
    """Images held in memory (uint8 or float, N x C x H x W), normalized on the fly per batch."""

    def __init__(self, images: Tensor, labels: Tensor, mean: Sequence[float], std: Sequence[float],
                 scale: float = 1.0):
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.images, self.labels = images, labels.long()
        c = images.shape[1]
        self.scale = scale
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(1, c, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).reshape(1, c, 1, 1)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitems__(self, indices: List[int]) -> Tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self.images[idx].float() * self.scale
        return (x - self.mean) / self.std, self.labels[idx]

    def __getitem__(self, i: int) -> Tuple[Tensor, Tensor]:
        x, y = self.__getitems__([i])
        return x[0], y[0]

    def subset(self, n: Optional[int]) -> "TensorImageDataset":
        if n is None or n >= len(self):
            return self
        out = TensorImageDataset.__new__(TensorImageDataset)
        out.__dict__.update(self.__dict__)
        out.images, out.labels = self.images[:n], self.labels[:n]
        return out


@dataclass
class DataSplits:
    name: str
    train: Dataset
    test: Dataset
    classes: List[str]
    in_channels: int
    image_size: int
    mean: List[float]
    std: List[float]
    extra: Dict = field(default_factory=dict)  # preprocessing details for new images (e.g. invert)

    def info(self) -> Dict:
        """What a checkpoint records so that evaluate/predict can rebuild the preprocessing."""
        return {"dataset": self.name, "classes": list(self.classes), "in_channels": self.in_channels,
                "image_size": self.image_size, "mean": list(self.mean), "std": list(self.std), **self.extra}


def _subset(ds: Dataset, n: Optional[int]) -> Dataset:
    if n is None:
        return ds
    if hasattr(ds, "subset"):
        return ds.subset(n)
    return torch.utils.data.Subset(ds, range(min(n, len(ds))))


# ----------------------------------------------------------------------------------------------------
# scikit-learn digits: 1797 8x8 grey images with 17 levels (0 = background, 16 = ink).


def load_digits(image_size: int = 8, seed: int = 0, test_fraction: float = 0.2) -> DataSplits:
    try:
        from sklearn.datasets import load_digits as sk_load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise ImportError("the digits dataset comes with scikit-learn: pip install scikit-learn "
                          "(or pip install 'fastconv[train]')") from exc
    X, y = sk_load_digits(return_X_y=True)
    X = X.astype(np.float32).reshape(-1, 1, 8, 8) / 16.0
    # A stratified split that depends only on `seed`.
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=test_fraction, random_state=seed,
                                                        stratify=y)
    train, test = torch.from_numpy(X_train), torch.from_numpy(X_test)
    if image_size != 8:
        train = F.interpolate(train, size=(image_size, image_size), mode="bilinear", align_corners=False)
        test = F.interpolate(test, size=(image_size, image_size), mode="bilinear", align_corners=False)
    mean, std = float(train.mean()), float(train.std())
    classes = [str(d) for d in range(10)]
    return DataSplits("digits", TensorImageDataset(train, torch.from_numpy(y_train), [mean], [std]),
                      TensorImageDataset(test, torch.from_numpy(y_test), [mean], [std]), classes, 1, image_size,
                      [mean], [std], {"ink": "light"})


# ----------------------------------------------------------------------------------------------------
# CIFAR-10, python batches: pickled dicts {b'data': uint8 (N, 3072) as R, G, B planes of 32x32,
# b'labels': list of N ints}; batches.meta {b'label_names': [...]}.


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except Exception as exc:
        raise DatasetError(f"cifar10: cannot read {path} as a pickled CIFAR-10 batch ({exc}); expected "
                           f"{CIFAR10_LAYOUT}") from None
    if not isinstance(d, dict):
        raise DatasetError(f"cifar10: {path} holds a {type(d).__name__}, expected a dict with 'data' and "
                           f"'labels' (the CIFAR-10 python batches format)")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def _cifar_batch(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    if "data" not in d or "labels" not in d:
        raise DatasetError(f"cifar10: {path} has keys {sorted(d)}, expected 'data' (uint8, N x 3072) and "
                           f"'labels' (N ints)")
    data, labels = np.asarray(d["data"]), np.asarray(d["labels"])
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise DatasetError(f"cifar10: {path}: 'data' is {data.dtype} of shape {data.shape}, expected uint8 of "
                           f"shape (N, 3072) (3 x 32 x 32 per row)")
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise DatasetError(f"cifar10: {path}: {labels.shape[0] if labels.ndim else 0} labels for "
                           f"{data.shape[0]} images, expected one label per image")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"cifar10: {path}: labels must be in 0..9, got {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar10(data_dir) -> DataSplits:
    if data_dir is None:
        raise DatasetError(f"cifar10: no data directory given (--data-dir); expected {CIFAR10_LAYOUT}")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DatasetError(f"cifar10: data directory {str(root)!r} does not exist; expected {CIFAR10_LAYOUT}")
    if not (root / "test_batch").exists() and (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    train_files = sorted(root.glob("data_batch_*"), key=lambda p: p.name)
    missing = [n for n in ("test_batch",) if not (root / n).is_file()]
    if not train_files:
        missing.insert(0, "data_batch_1 ... data_batch_5")
    if missing:
        raise DatasetError(f"cifar10: {str(root)!r} lacks {', '.join(missing)}; expected {CIFAR10_LAYOUT}")
    parts = [_cifar_batch(p) for p in train_files]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_test, y_test = _cifar_batch(root / "test_batch")
    classes = list(CIFAR10_CLASSES)
    if (root / "batches.meta").is_file():
        meta = _unpickle(root / "batches.meta")
        names = meta.get("label_names")
        if names is not None:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
            if len(names) != 10:
                raise DatasetError(f"cifar10: {root / 'batches.meta'}: {len(names)} label_names, expected 10")
            classes = names
    xt = torch.from_numpy(np.ascontiguousarray(x_train))
    mean = (xt.float().mean(dim=(0, 2, 3)) / 255.0).tolist()
    std = (xt.float().std(dim=(0, 2, 3)) / 255.0).clamp_min(1e-3).tolist()
    return DataSplits("cifar10", TensorImageDataset(xt, torch.from_numpy(y_train), mean, std, 1 / 255.0),
                      TensorImageDataset(torch.from_numpy(np.ascontiguousarray(x_test)), torch.from_numpy(y_test),
                                         mean, std, 1 / 255.0), classes, 3, 32, mean, std)


# ----------------------------------------------------------------------------------------------------
# Image folders: DIR/<class>/<image>, or DIR/{train,test|val}/<class>/<image>.


def _require_pil():
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError("reading image files needs Pillow: pip install pillow (it comes with matplotlib, "
                          "pip install 'fastconv[train]')") from exc
    return Image


def load_image(path, in_channels: int, image_size: int) -> Tensor:
    """An image file as a float tensor (in_channels, image_size, image_size) with values in [0, 1]."""
    Image = _require_pil()
    try:
        with Image.open(path) as im:
            im = im.convert("L" if in_channels == 1 else "RGB")
            if im.size != (image_size, image_size):
                im = im.resize((image_size, image_size), Image.BILINEAR)
            a = np.asarray(im, dtype=np.float32) / 255.0
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # PIL's decoders raise all four on bad files
        raise DatasetError(f"cannot read image {str(path)!r}: it is truncated or not a valid image ({exc})") from None
    t = torch.from_numpy(a.copy())
    return t.unsqueeze(0) if in_channels == 1 else t.permute(2, 0, 1).contiguous()


def preprocess_image(path, info: Dict) -> Tensor:
    """A new image file preprocessed as the training data of a checkpoint were (info = DataSplits.info())."""
    x = load_image(path, info["in_channels"], info["image_size"])
    if info.get("ink") == "light" and float(x.mean()) > 0.5:
        x = 1.0 - x  # digits are light ink on a dark background; a scan is usually dark on light
    c = info["in_channels"]
    mean = torch.tensor(info["mean"], dtype=torch.float32).reshape(c, 1, 1)
    std = torch.tensor(info["std"], dtype=torch.float32).reshape(c, 1, 1)
    return (x - mean) / std


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _scan_classes(root: Path) -> Dict[str, List[Path]]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DatasetError(f"folder: {str(root)!r} has no class sub-folders; expected {FOLDER_LAYOUT}")
    out = {}
    for c in classes:
        entries = sorted(p for p in (root / c).rglob("*") if p.is_file() and not _hidden(p, root / c))
        files = [p for p in entries if _is_image(p)]
        if not files:
            raise DatasetError(f"folder: class folder {str(root / c)!r} has no image files "
                               f"({', '.join(IMAGE_EXTENSIONS)}); expected {FOLDER_LAYOUT}")
        others = [p for p in entries if not _is_image(p)]
        if others:  # skipped, but said: a silent skip could leave a class smaller than the user counted
            more = f" and {len(others) - 1} more" if len(others) > 1 else ""
            warnings.warn(f"folder: skipping {str(others[0])!r}{more}: not an image file (expected one of "
                          f"{', '.join(IMAGE_EXTENSIONS)})", UserWarning, stacklevel=3)
        out[c] = files
    return out


def _hidden(p: Path, top: Path) -> bool:
    """A file or folder below `top` whose name starts with '.' (.DS_Store, .ipynb_checkpoints/...)."""
    return any(part.startswith(".") for part in p.relative_to(top).parts)


class ImageFolderDataset(Dataset):
    """Image files read on demand (decoded, converted, resized and normalized per access)."""

    def __init__(self, files: List[Path], labels: List[int], in_channels: int, image_size: int,
                 mean: Sequence[float], std: Sequence[float]):
        self.files, self.labels = list(files), torch.tensor(labels, dtype=torch.long)
        self.in_channels, self.image_size = in_channels, image_size
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(in_channels, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).reshape(in_channels, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Tuple[Tensor, Tensor]:
        x = load_image(self.files[i], self.in_channels, self.image_size)
        return (x - self.mean) / self.std, self.labels[i]

    def __getitems__(self, indices: List[int]) -> Tuple[Tensor, Tensor]:
        items = [self[i] for i in indices]
        return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])

    def subset(self, n: Optional[int]) -> "ImageFolderDataset":
        if n is None or n >= len(self):
            return self
        out = ImageFolderDataset.__new__(ImageFolderDataset)
        out.__dict__.update(self.__dict__)
        out.files, out.labels = self.files[:n], self.labels[:n]
        return out


def _channels_of(files: Sequence[Path]) -> int:
    """1 if every image is greyscale, else 3 (PIL reads only the header to know the mode)."""
    Image = _require_pil()
    for f in files:
        try:
            with Image.open(f) as im:
                mode = im.mode
        except (OSError, ValueError) as exc:
            raise DatasetError(f"folder: cannot read image {str(f)!r}: {exc}") from None
        if mode not in ("1", "L", "LA", "I", "I;16", "F"):
            return 3
    return 1


def load_image_folder(data_dir, image_size: int = 32, seed: int = 0, test_fraction: float = 0.2) -> DataSplits:
    if data_dir is None:
        raise DatasetError(f"folder: no data directory given (--data-dir); expected {FOLDER_LAYOUT}")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DatasetError(f"folder: data directory {str(root)!r} does not exist; expected {FOLDER_LAYOUT}")
    test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        train_map, test_map = _scan_classes(root / "train"), _scan_classes(test_dir)
        if sorted(test_map) != sorted(train_map):
            raise DatasetError(f"folder: {str(test_dir)!r} has classes {sorted(test_map)} but "
                               f"{str(root / 'train')!r} has {sorted(train_map)}; they must be the same")
        classes = sorted(train_map)
        train = [(f, i) for i, c in enumerate(classes) for f in train_map[c]]
        test = [(f, i) for i, c in enumerate(classes) for f in test_map[c]]
    else:
        per_class = _scan_classes(root)
        classes = sorted(per_class)
        rng = np.random.default_rng(seed)
        train, test = [], []
        for i, c in enumerate(classes):  # a stratified split: test_fraction of each class, at least one
            files = per_class[c]
            order = rng.permutation(len(files))
            n_test = max(1, int(round(test_fraction * len(files)))) if len(files) > 1 else 0
            test += [(files[j], i) for j in order[:n_test]]
            train += [(files[j], i) for j in order[n_test:]]
    in_channels = _channels_of([f for f, _ in train + test])
    mean, std = [0.5] * in_channels, [0.5] * in_channels
    make = lambda items: ImageFolderDataset([f for f, _ in items], [y for _, y in items], in_channels,  # noqa: E731
                                            image_size, mean, std)
    return DataSplits("folder", make(train), make(test), classes, in_channels, image_size, mean, std)


def load_dataset(name: str, data_dir=None, seed: int = 0, image_size: Optional[int] = None,
                 train_subset: Optional[int] = None, test_subset: Optional[int] = None) -> DataSplits:
    """Loads dataset `name` ('digits', 'cifar10' or 'folder'); subsets keep the first n samples."""
    if name == "digits":
        splits = load_digits(image_size or 8, seed)
    elif name == "cifar10":
        if image_size not in (None, 32):
            raise DatasetError(f"cifar10: images are 32x32; --image-size {image_size} is not supported")
        splits = load_cifar10(data_dir)
    elif name == "folder":
        splits = load_image_folder(data_dir, image_size or 32, seed)
    else:
        raise DatasetError(f"unknown dataset {name!r}; expected one of {list(DATASETS)}")
    splits.train = _subset(splits.train, train_subset)
    splits.test = _subset(splits.test, test_subset)
    return splits
