"""Augmentation of whole batches as tensor ops (no per-image Python), on whatever device holds them.

Every random draw comes from the ``generator`` passed in, which must live on the batch's device,
so a batch is reproducible from its generator's seed alone (exact resume, and the GPU path gives
the CPU path's batches).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import SqueezeNetError

AUGMENTS = ("none", "flip", "crop", "crop-noflip", "rrc")


def _rand(n: int, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device)


def random_crop_flip(x: torch.Tensor, pad: int, g: torch.Generator, flip: bool = True) -> torch.Tensor:
    """Random crop with ``pad`` pixels of reflection padding, and horizontal flip, per sample, as
    one gather over the whole batch."""
    n, c, h, w = x.shape
    dev = x.device
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=g, device=dev)
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=g, device=dev)
        rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # n,1,h,1
        cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]  # n,1,1,w
        x = padded[torch.arange(n, device=dev)[:, None, None, None],
                   torch.arange(c, device=dev)[None, :, None, None], rows, cols]
    if flip:
        x = torch.where((_rand(n, g, dev) < 0.5)[:, None, None, None], x.flip(3), x)
    return x


def random_resized_crop_flip(x: torch.Tensor, g: torch.Generator, size: int | None = None,
                             scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3), flip: bool = True) -> torch.Tensor:
    """Inception-style random-resized crop + flip for whole batches: one affine grid_sample to
    ``size`` x ``size`` (default: the input's size)."""
    n, c, h, w = x.shape
    dev = x.device
    area = torch.empty(n, device=dev).uniform_(*scale, generator=g)
    r = torch.exp(torch.empty(n, device=dev).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g))
    sw = torch.sqrt(area * r).clamp(max=1.0)  # crop width / image width
    sh = torch.sqrt(area / r).clamp(max=1.0)
    cx = (_rand(n, g, dev) * 2 - 1) * (1 - sw)
    cy = (_rand(n, g, dev) * 2 - 1) * (1 - sh)
    sign = torch.where(_rand(n, g, dev) < 0.5, -1.0, 1.0) if flip else torch.ones(n, device=dev)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2] = sw * sign, cx
    theta[:, 1, 1], theta[:, 1, 2] = sh, cy
    out = size or h
    grid = F.affine_grid(theta, [n, c, out, out], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def random_erase(x: torch.Tensor, p: float, g: torch.Generator, scale=(0.02, 0.4),
                 ratio=(0.3, 3.3)) -> torch.Tensor:
    """Random erasing (Zhong et al., 2020; torchvision's ``RandomErasing(value="random")``) for whole
    batches: with probability ``p`` per image, a rectangle covering ``scale`` of its area with aspect
    ``ratio`` is replaced by standard-normal noise (inputs are already normalised). One mask over the
    batch instead of a Python loop per image; a rectangle that does not fit is clipped to the image
    rather than redrawn."""
    n, _, h, w = x.shape
    dev = x.device
    area = torch.empty(n, device=dev).uniform_(*scale, generator=g) * (h * w)
    r = torch.exp(torch.empty(n, device=dev).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g))
    eh = torch.sqrt(area * r).round().clamp(1, h)
    ew = torch.sqrt(area / r).round().clamp(1, w)
    y0 = (_rand(n, g, dev) * (h - eh + 1)).floor()
    x0 = (_rand(n, g, dev) * (w - ew + 1)).floor()
    on = _rand(n, g, dev) < p
    rows, cols = torch.arange(h, device=dev), torch.arange(w, device=dev)
    in_rows = (rows >= y0[:, None]) & (rows < (y0 + eh)[:, None])  # n,h
    in_cols = (cols >= x0[:, None]) & (cols < (x0 + ew)[:, None])  # n,w
    mask = (in_rows[:, :, None] & in_cols[:, None, :] & on[:, None, None])[:, None]  # n,1,h,w
    return torch.where(mask, torch.randn(x.shape, generator=g, dtype=x.dtype, device=dev), x)


def augment_batch(x: torch.Tensor, kind: str, g: torch.Generator, crop_pad: int | None = None,
                  size: int | None = None, rrc_scale=(0.25, 1.0)) -> torch.Tensor:
    """``crop_pad``: the pad-and-crop shift in pixels (default: 1/8 of the image, 4 px at 32).
    ``size``: the output side where the stored images are larger than the model's input."""
    if kind == "rrc":
        return random_resized_crop_flip(x, g, size, scale=rrc_scale)
    if size is not None and size != x.shape[-1]:
        x = center_crop(x, size)
    pad = max(1, round(x.shape[-1] / 8)) if crop_pad is None else crop_pad
    if kind == "none":
        return x
    if kind == "flip":
        return random_crop_flip(x, 0, g)
    if kind == "crop":  # small images: pad-and-crop + flip (CIFAR standard: 4 px at 32)
        return random_crop_flip(x, pad, g)
    if kind == "crop-noflip":  # e.g. digits or text, where a mirror changes the class
        return random_crop_flip(x, pad, g, flip=False)
    raise SqueezeNetError(f"unknown augmentation {kind!r}: choose one of {', '.join(AUGMENTS)}")

