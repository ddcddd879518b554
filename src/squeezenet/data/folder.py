"""A ``class_name/image`` tree (the ImageNet layout) as an ImageSet backed by the decode cache."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

from ..errors import SqueezeNetError
from .images import scan_folder, shown
from .sets import IMAGENET_MEAN, IMAGENET_STD, ImageSet
from .store import build_store, decode_in_memory, open_store, store_key


def load_folder(root: str | Path, image_size: int = 224, channels: int = 3, strict: bool = False,
                cache: bool = True, progress: bool | None = None) -> ImageSet:
    """Every image under ``root/<class>/``, decoded once (upright, shorter side to ``image_size``,
    centre square) into the on-disk decode cache and mapped from there; a second run decodes
    nothing. Unreadable images are skipped with a warning naming each, or raise with ``strict``
    (also when the cache is warm)."""
    root = Path(root)
    classes, samples = scan_folder(root)
    progress = sys.stderr.isatty() if progress is None else progress
    labels = [label for _, label in samples]
    found = None
    if cache:
        key = store_key(root, samples, image_size, channels)
        found = open_store(key, labels) or build_store(key, samples, image_size, channels, progress)
    images, valid, skipped = found or decode_in_memory(samples, image_size, channels, progress)
    if skipped and strict:
        raise SqueezeNetError(f"{len(skipped)} unreadable image(s), e.g. {skipped[0]} "
                              f"(without --strict they are skipped with a warning)")
    if not valid:
        raise SqueezeNetError(f"no readable images in {shown(root)}")
    for s in skipped:
        warnings.warn(f"skipped unreadable image {s}", stacklevel=2)
    index = torch.tensor(valid, dtype=torch.long)
    mean = IMAGENET_MEAN if channels == 3 else (sum(IMAGENET_MEAN) / 3,)
    std = IMAGENET_STD if channels == 3 else (sum(IMAGENET_STD) / 3,)
    return ImageSet(images, torch.tensor(labels, dtype=torch.long)[index], classes, mean, std,
                    skipped=skipped, index=None if len(valid) == len(samples) else index)
