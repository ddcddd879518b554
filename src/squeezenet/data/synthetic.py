"""Generated data sets: learnable shapes (the default job, no downloads) and the outline's noise."""

from __future__ import annotations

import torch

from .sets import ImageSet, NoiseSet

SHAPES = ["circle", "square", "triangle", "ring", "plus", "cross", "diamond", "hbar", "vbar", "frame"]


def _shape_masks(dx: torch.Tensor, dy: torch.Tensor) -> list[torch.Tensor]:
    """One mask per class in SHAPES, in units of the shape's radius."""
    d2, ax, ay = dx * dx + dy * dy, dx.abs(), dy.abs()
    box = torch.maximum(ax, ay)
    return [
        d2 <= 1,
        box <= 0.8,
        (dy >= -0.9) & (dy <= 0.8) & (ax <= 0.55 * (dy + 0.9)),
        (d2 <= 1) & (d2 >= 0.36),
        ((ax <= 0.25) & (ay <= 1)) | ((ay <= 0.25) & (ax <= 1)),
        (((dx - dy).abs() <= 0.3) | ((dx + dy).abs() <= 0.3)) & (box <= 0.85),
        ax + ay <= 1,
        (ay <= 0.3) & (ax <= 1),
        (ax <= 0.3) & (ay <= 1),
        (box <= 0.9) & (box >= 0.55),
    ]


def make_shapes(n: int, image_size: int = 32, seed: int = 0, noise: float = 0.08) -> ImageSet:
    """10 classes of shapes at random position, size and colour on a random background, with
    pixel noise. Deterministic by seed; learnable, unlike noise, so training visibly works."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(SHAPES), (n,), generator=g)
    images = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    coords = torch.arange(image_size, dtype=torch.float32) + 0.5
    for start in range(0, n, 2048):
        m = min(2048, n - start)
        r = image_size * (0.18 + 0.17 * torch.rand(m, 1, 1, generator=g))
        cx = r + (image_size - 2 * r) * torch.rand(m, 1, 1, generator=g)
        cy = r + (image_size - 2 * r) * torch.rand(m, 1, 1, generator=g)
        dx, dy = (coords.view(1, 1, -1) - cx) / r, (coords.view(1, -1, 1) - cy) / r
        masks = torch.stack(_shape_masks(dx, dy))  # classes, m, H, W
        mask = masks[labels[start:start + m], torch.arange(m)].unsqueeze(1).float()
        bg = torch.rand(m, 3, 1, 1, generator=g)
        # foreground at least 0.35 away from the background in mean brightness or hue
        fg = (bg + (0.35 + 0.65 * torch.rand(m, 3, 1, 1, generator=g))) % 1.0
        x = bg * (1 - mask) + fg * mask + noise * torch.randn(m, 3, image_size, image_size, generator=g)
        images[start:start + m] = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageSet(images, labels, list(SHAPES), (0.5, 0.5, 0.5), (0.29, 0.29, 0.29))


def make_noise(n: int = 1000, image_size: int = 224, seed: int = 0, num_classes: int = 10) -> NoiseSet:
    labels = torch.randint(0, num_classes, (n,), generator=torch.Generator().manual_seed(seed))
    return NoiseSet(labels, image_size)
