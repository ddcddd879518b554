"""Data sets as one uint8 tensor (in RAM or memory-mapped from disk) plus labels; splits are views."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import SqueezeNetError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class ImageSet:
    """Decoded images (uint8, N x C x H x W), labels (int64) and how to normalise them.

    ``index`` makes a subset a view: ``images`` stays the one stored copy (a memory map for large
    folders) and a subset holds only its indices and labels. ``crop``: images are stored larger
    than the model's input (shorter side at image_size / crop_pct) and read as their centre
    ``crop`` square (evaluation); training crops from the stored images instead."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    skipped: list[str] = field(default_factory=list)
    index: torch.Tensor | None = None
    crop: int | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_size(self) -> int:
        return self.crop or self.images.shape[-1]

    @property
    def stored_size(self) -> int:
        return self.images.shape[-1]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Positions in ``images`` of this set's samples ``idx``."""
        return idx if self.index is None else self.index[idx]

    def subset(self, idx: torch.Tensor) -> ImageSet:
        return ImageSet(self.images, self.labels[idx], self.classes, self.mean, self.std, self.skipped,
                        self.rows(idx), self.crop)

    def cropped(self, size: int | None) -> ImageSet:
        """This set read as its centre ``size`` crop (None: as stored)."""
        return ImageSet(self.images, self.labels, self.classes, self.mean, self.std, self.skipped, self.index,
                        None if size == self.stored_size else size)

    def uint8(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.images[self.rows(idx)]
        if self.crop is not None and self.crop < x.shape[-1]:
            top = (x.shape[-2] - self.crop) // 2
            left = (x.shape[-1] - self.crop) // 2
            x = x[..., top:top + self.crop, left:left + self.crop]
        return x

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        """Float batch, normalised: (x / 255 - mean) / std folded into one multiply-add."""
        return normalize(self.uint8(idx), self.mean, self.std)


def image_hashes(data: ImageSet, chunk: int = 4096):
    """A 64-bit content hash of every image's pixels (as the set reads them), to find the same
    image in two sets (training and test) whatever the files are called."""
    import hashlib

    import numpy as np

    out = np.empty(len(data), dtype=np.uint64)
    for start in range(0, len(data), chunk):
        block = data.uint8(torch.arange(start, min(start + chunk, len(data)))).contiguous().numpy()
        for i, image in enumerate(block):
            out[start + i] = int.from_bytes(hashlib.blake2b(image.tobytes(), digest_size=8).digest(), "little")
    return out


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    scale = torch.tensor([1 / (255 * s) for s in std], device=x.device).view(1, -1, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], device=x.device).view(1, -1, 1, 1)
    return torch.addcmul(shift, x.float(), scale)


@dataclass
class NoiseSet:
    """The outline's data: standard-normal images and random labels, made a batch at a time."""

    labels: torch.Tensor
    image_size: int = 224
    channels: int = 3
    classes: list[str] = field(default_factory=lambda: [f"class{i}" for i in range(10)])
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: torch.Tensor) -> NoiseSet:
        return NoiseSet(self.labels[idx], self.image_size, self.channels, self.classes)

    def cropped(self, size: int | None) -> NoiseSet:
        return self

    def batch(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        shape = (len(idx), self.channels, self.image_size, self.image_size)
        return torch.randn(shape, generator=generator)


def train_val_split(data, val_fraction: float, seed: int, stratified: bool = True):
    """A seeded split of the training data into (train, val) views; ``val_fraction`` 0 is the final
    fit on every image: (data, None). ``stratified``: each class gives the same fraction (its
    rounding spread over classes), so a small or unbalanced folder keeps every class in both."""
    if val_fraction == 0:
        return data, None
    if not 0 < val_fraction < 1:
        raise SqueezeNetError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    n_val = max(1, round(len(data) * val_fraction))
    if n_val >= len(data):
        raise SqueezeNetError(f"{len(data)} images are too few to carve a validation split from")
    g = torch.Generator().manual_seed(seed)
    if not stratified:  # how checkpoints written before stratification carved theirs
        perm = torch.randperm(len(data), generator=g)
        val = perm[:n_val]
    else:
        val = _stratified(data.labels, n_val, g)
    is_val = torch.zeros(len(data), dtype=torch.bool)
    is_val[val] = True
    return data.subset(torch.nonzero(~is_val).flatten()), data.subset(torch.nonzero(is_val).flatten())


def _stratified(labels: torch.Tensor, n_val: int, g: torch.Generator) -> torch.Tensor:
    """``n_val`` indices, each class contributing in proportion (largest remainders get the rest)."""
    classes = torch.unique(labels)
    counts = torch.stack([(labels == c).sum() for c in classes])
    exact = counts.double() * n_val / len(labels)
    take = exact.floor().long()
    rest = n_val - int(take.sum())
    if rest > 0:
        order = torch.argsort(exact - take.double(), descending=True, stable=True)
        take[order[:rest]] += 1
    take = torch.minimum(take, counts - 1).clamp(min=0)  # every class keeps a training image
    picks = []
    for c, k in zip(classes, take.tolist()):
        members = torch.nonzero(labels == c).flatten()
        picks.append(members[torch.randperm(len(members), generator=g)[:k]])
    return torch.cat(picks)


def resize(data: ImageSet, image_size: int) -> ImageSet:
    """Resize a whole uint8 set at once (e.g. Fashion-MNIST 28 -> 32 or CIFAR 32 -> 224)."""
    out = torch.empty(len(data), data.channels, image_size, image_size, dtype=torch.uint8)
    for s in range(0, len(data), 4096):
        x = data.uint8(torch.arange(s, min(s + 4096, len(data)))).float()
        y = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True,
                          align_corners=False)
        out[s:s + 4096] = y.round().clamp(0, 255).to(torch.uint8)
    return ImageSet(out, data.labels, data.classes, data.mean, data.std, data.skipped)
