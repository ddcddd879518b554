"""The images a run trained, validated and is tested on, rebuilt from its ``RunMeta``: the same
data set, subset, split fraction and seed, at its input size, normalised as it was trained."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .data import CIFAR_CLASSES, ImageSet, Loader, folder_split_root, image_hashes, load_dataset, train_val_split
from .errors import SqueezeNetError
from .runs import RunMeta


def run_splits(meta: RunMeta, dataset: str | None = None, data_dir: str | None = None):
    """(train, val) as the run carved them; ``val`` is None after a final fit (--val-fraction 0)."""
    dataset, data_dir = _source(meta, dataset, data_dir)
    pre = meta.preprocess
    full = load_dataset(dataset, "train", data_dir, pre.image_size, seed=meta.split_seed,
                        channels=pre.in_channels, size=meta.train_size, resize_size=pre.resize_size)
    train, val = train_val_split(full, meta.val_fraction, meta.split_seed, stratified=meta.stratified)
    for part in (train, val):
        if part is not None:
            _as_trained(part, meta, dataset)
    return train, val


MAX_OVERLAP = 0.5  # a "test" set more than half made of training images is refused


def eval_data(meta: RunMeta, dataset: str | None = None, data_dir: str | None = None,
              split: str = "test", train_hashes: np.ndarray | None = None) -> ImageSet:
    """The ``val`` or ``test`` images of a run. ``val`` re-carves the run's validation split;
    ``test`` refuses a folder that is the run's own training images, and, given the content
    hashes of the run's training images, says how many test images are among them (refusing
    a set that is mostly training images)."""
    if split == "val":
        _, data = run_splits(meta, dataset, data_dir)
        if data is None:
            raise SqueezeNetError("this model trained on all of its training data (--val-fraction 0), "
                                  "so it has no validation split: use --split test")
        return data
    dataset, data_dir = _source(meta, dataset, data_dir)
    trained_on = _folder_read(meta.dataset, meta.data_dir, "train")
    testing_on = _folder_read(dataset, data_dir, "test")
    if testing_on is not None and testing_on == trained_on:
        raise SqueezeNetError(
            f"{testing_on} holds the images this model trained on and no separate test set "
            f"({testing_on}/test is absent): scoring them would print training accuracy as test "
            f"accuracy. Pass --data-dir with held-out images (DIR/<class>/...), or use --split val")
    pre = meta.preprocess
    data = load_dataset(dataset, "test", data_dir, pre.image_size, seed=meta.split_seed, channels=pre.in_channels,
                        resize_size=pre.resize_size)
    data = _as_trained(data, meta, dataset)
    if train_hashes is not None and hasattr(data, "images"):
        seen = int(np.isin(image_hashes(data), train_hashes).sum())
        if seen > MAX_OVERLAP * len(data):
            raise SqueezeNetError(f"{seen:,} of the {len(data):,} test images are images this model trained on: "
                                  f"the score would be training accuracy. Evaluate on held-out images")
        if seen:
            warnings.warn(f"{seen:,} of the {len(data):,} test images are also in the training images "
                          f"(same pixels): the score is inflated by them", stacklevel=2)
    return data


def eval_loader(meta: RunMeta, dataset=None, data_dir=None, split: str = "test", batch_size: int = 256,
                train_hashes=None):
    data = eval_data(meta, dataset, data_dir, split, train_hashes)
    return data, Loader(data, batch_size)


def _source(meta: RunMeta, dataset, data_dir) -> tuple[str, str | None]:
    """The data set and folder to read: given ones, else the run's (its folder only for its own set)."""
    dataset = dataset or meta.dataset
    if dataset is None:
        raise SqueezeNetError("this checkpoint does not record its data set: pass --dataset and --data-dir")
    if data_dir is None and dataset == meta.dataset:
        data_dir = meta.data_dir
    return dataset, data_dir


def _folder_read(dataset: str | None, data_dir: str | None, split: str) -> Path | None:
    """The folder a split of an image-folder data set is read from (None: not a folder set)."""
    if dataset == "folder" and data_dir is not None:
        return folder_split_root(data_dir, split).resolve()
    if dataset == "cifar10" and data_dir is not None:
        root = Path(data_dir)
        if (root / split).is_dir():
            return (root / split).resolve()
        if root.is_dir() and {d.name for d in root.iterdir() if d.is_dir()} == set(CIFAR_CLASSES):
            return root.resolve()
    return None


def _as_trained(data: ImageSet, meta: RunMeta, dataset: str) -> ImageSet:
    pre = meta.preprocess
    if data.channels != pre.in_channels:
        raise SqueezeNetError(f"the checkpoint expects {pre.in_channels}-channel images, the data has "
                              f"{data.channels}")
    if len(data.classes) != meta.num_classes:
        raise SqueezeNetError(f"the checkpoint has {meta.num_classes} classes, the {dataset} data has "
                              f"{len(data.classes)}: evaluate it on the data set it was trained for")
    if dataset == "folder" and list(data.classes) != list(meta.class_names):
        raise SqueezeNetError(f"class folders {data.classes} differ from the checkpoint's {meta.class_names}")
    data.mean, data.std = tuple(pre.mean), tuple(pre.std)
    return data
