"""Datasets for `fastconv train`: scikit-learn's digits, CIFAR-10 (python batches), image folders.

    splits = load_dataset("digits", seed=0)
    splits.train, splits.test      # torch Datasets yielding (C, H, W) float images and int labels
    splits.classes, splits.info()  # class names; what predict() needs to preprocess a new image

Every dataset here supports batched fetching (`__getitems__`), so a DataLoader built with
`make_loader` gets whole (images, labels) batches without per-sample Python work.
"""
from __future__ import annotations

from .datasets import (IMAGE_EXTENSIONS, DataSplits, DatasetError, ImageFolderDataset, TensorImageDataset,
                       collate_batch, load_cifar10, load_dataset, load_digits, load_image_folder, load_image,
                       preprocess_image, DATASETS)

__all__ = ["load_dataset", "load_digits", "load_cifar10", "load_image_folder", "load_image", "preprocess_image",
           "DataSplits", "DatasetError", "TensorImageDataset", "ImageFolderDataset", "collate_batch",
           "IMAGE_EXTENSIONS", "DATASETS"]
