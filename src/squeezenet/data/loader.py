"""Batches of (normalised, augmented images, labels) from a data set, the same on any device."""

from __future__ import annotations

import math

import torch

from .augment import augment_batch, random_erase


class Loader:
    """Batches from an ``ImageSet``/``NoiseSet``.

    ``sampler`` is any iterable of indices (e.g. ``DistributedSampler``); without one the order is
    a seeded permutation per epoch (``shuffle``) or sequential. Each batch's randomness comes from
    a generator seeded by (seed, epoch, batch number), so any batch can be remade on its own:
    resuming mid-epoch (``start``) gives the batches an uninterrupted epoch would have.

    ``device``: where batches are made. With a CUDA device and ``resident=True`` the whole uint8
    data set is copied there once and batches are normalised and augmented on the GPU (airbench's
    way); otherwise batches are made on the CPU and copied (pinned, asynchronous) to the device.
    """

    def __init__(self, data, batch_size: int, shuffle: bool = False, augment: str = "none",
                 seed: int = 0, drop_last: bool = False, sampler=None, channels_last: bool = False,
                 device: str | torch.device = "cpu", erase: float = 0.0, crop_pad: int | None = None,
                 size: int | None = None, rrc_scale=(0.25, 1.0), resident: bool = False):
        self.data, self.batch_size, self.shuffle, self.augment = data, batch_size, shuffle, augment
        self.erase = erase  # random-erasing probability per image, after ``augment``
        self.crop_pad, self.size, self.rrc_scale = crop_pad, size, rrc_scale
        self.seed, self.drop_last, self.sampler = seed, drop_last, sampler
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.device = torch.device(device)
        self.epoch, self.start = 0, 0
        self.resident = resident and hasattr(data, "images")
        if self.resident:  # one copy of the uint8 set on the device, batches gathered there
            data.images = data.images.to(self.device)
            if data.index is not None:
                data.index = data.index.to(self.device)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The next iteration yields ``epoch``'s batches from batch number ``start`` on."""
        self.epoch, self.start = epoch, start
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def _indices(self) -> torch.Tensor:
        if self.sampler is not None:
            return torch.as_tensor(list(self.sampler), dtype=torch.long)
        if self.shuffle:  # DistributedSampler's own permutation, so 1 and N processes agree
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            return torch.randperm(len(self.data), generator=g)
        return torch.arange(len(self.data))

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else len(self.data)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def generator(self, batch: int) -> torch.Generator:
        g = torch.Generator(device=self.device if self.resident else "cpu")
        return g.manual_seed((self.seed * 100_003 + self.epoch) * 1_000_003 + batch)

    def make_batch(self, idx: torch.Tensor, batch: int):
        g = self.generator(batch)
        if self.resident:
            idx = idx.to(self.device)
        x = self.data.batch(idx) if hasattr(self.data, "images") else self.data.batch(idx, g)
        x = augment_batch(x, self.augment, g, crop_pad=self.crop_pad, size=self.size, rrc_scale=self.rrc_scale)
        if self.erase > 0:
            x = random_erase(x, self.erase, g)
        y = self.data.labels[idx.cpu()] if self.resident else self.data.labels[idx]
        if self.device.type != "cpu" and not self.resident:
            x, y = x.pin_memory(), y.pin_memory()
        x = x.to(self.device, memory_format=self.memory_format, non_blocking=True)
        return x, y.to(self.device, non_blocking=True)

    def __iter__(self):
        order = self._indices()
        start, self.start = self.start, 0
        for b in range(start, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield self.make_batch(idx, b)
