"""Data: readers for each data set, augmentation of whole batches, and the loader.

``load_dataset(name, split)`` is the front door; every set is one uint8 tensor of images (a memory
map of the decode cache for image folders) with labels, class names and normalisation.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import SqueezeNetError
from .augment import AUGMENTS, augment_batch, random_erase
from .folder import load_folder
from .images import IMAGE_EXTENSIONS, decode, load_image_files, scan_folder, shown
from .loader import Loader
from .readers import (
    CIFAR_CLASSES,
    FASHION_CLASSES,
    load_cifar10,
    load_fashion_mnist,
    read_cifar_batch,
    read_idx,
)
from .sets import ImageSet, NoiseSet, image_hashes, normalize, resize, train_val_split
from .synthetic import SHAPES, make_noise, make_shapes

DATASETS = ("shapes", "noise", "fashion-mnist", "cifar10", "folder")
DEFAULT_AUGMENT = {"shapes": "flip", "noise": "none", "fashion-mnist": "crop", "cifar10": "crop",
                   "folder": "rrc"}

__all__ = ["AUGMENTS", "CIFAR_CLASSES", "DATASETS", "DEFAULT_AUGMENT", "FASHION_CLASSES", "IMAGE_EXTENSIONS",
           "SHAPES", "ImageSet", "Loader", "NoiseSet", "augment_batch", "decode", "folder_split_root", "image_hashes",
           "load_cifar10", "load_dataset", "load_fashion_mnist", "load_folder", "load_image_files", "make_noise",
           "make_shapes", "normalize", "random_erase", "read_cifar_batch", "read_idx", "resize", "scan_folder",
           "shown", "train_val_split"]


def folder_split_root(data_dir: str | Path, split: str) -> Path:
    """The folder a ``folder`` data set's split is read from: ``DIR/train`` / ``DIR/test`` when they
    exist, else ``DIR`` itself (its class folders)."""
    root = Path(data_dir)
    return root / split if (root / split).is_dir() else root


def load_dataset(name: str, split: str = "train", data_dir: str | Path | None = None,
                 image_size: int | None = None, seed: int = 0, strict: bool = False,
                 channels: int = 3, size: int | None = None, resize_size: int | None = None):
    """The ``train`` or ``test`` split of a data set. Synthetic sets are generated (their test
    split from another seed). ``size``: a seeded random subset of that many images (a view).
    ``resize_size``: folders are stored with their shorter side at this size (>= image_size) and
    read as their centre ``image_size`` crop (``ImageSet.crop``)."""
    if name == "shapes":
        n = size or (10_000 if split == "train" else 2_000)
        return make_shapes(n, image_size or 32, seed=seed + (0 if split == "train" else 7919))
    if name == "noise":
        n = size or (1000 if split == "train" else 200)
        return make_noise(n, image_size or 224, seed=seed + (0 if split == "train" else 7919))
    if name == "fashion-mnist":
        data = load_fashion_mnist(data_dir, split)
    elif name == "cifar10":
        data = load_cifar10(data_dir, split, strict=strict)
    elif name == "folder":
        if data_dir is None:
            raise SqueezeNetError("--dataset folder needs --data-dir DIR (one sub-folder per class)")
        image_size = image_size or 224
        data = load_folder(folder_split_root(data_dir, split), resize_size or image_size, channels=channels,
                           strict=strict).cropped(image_size)
    else:
        raise SqueezeNetError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    if image_size and data.image_size != image_size:  # e.g. Fashion-MNIST 28 -> 32
        data = resize(data, image_size)
    if size is not None and size < len(data):  # a seeded random subset: folders are sorted by class
        keep = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:size]
        data = data.subset(keep.sort().values)
    return data
