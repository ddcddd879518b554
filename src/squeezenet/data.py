"""Data sets as whole uint8 tensors, and a loader that batches, normalises and augments them.

Every data set is decoded once into one ``(N, C, H, W)`` uint8 tensor (the airbench way): later
epochs decode nothing, and augmentation is a few tensor ops on whole batches instead of per-sample
PIL calls, so the data pipeline costs almost nothing next to the model.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import pickle
import shutil
import tarfile
import urllib.request
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import SqueezeNetError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
# Decompression-bomb guard: refuse images over 64 megapixels (PIL's own default warns at 89 M).
MAX_IMAGE_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class ImageSet:
    """Decoded images (uint8, N x C x H x W), labels (int64) and how to normalise them."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    def subset(self, idx: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[idx], self.labels[idx], self.classes, self.mean, self.std)

    def batch(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Float batch, normalised: (x / 255 - mean) / std folded into one multiply-add."""
        x = self.images[idx].float()
        scale = torch.tensor([1 / (255 * s) for s in self.std]).view(1, -1, 1, 1)
        shift = torch.tensor([-m / s for m, s in zip(self.mean, self.std)]).view(1, -1, 1, 1)
        return torch.addcmul(shift, x, scale)


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

    def batch(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        shape = (len(idx), self.channels, self.image_size, self.image_size)
        return torch.randn(shape, generator=generator)


# ----------------------------------------------------------------------------- augmentation

def random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator, flip: bool = True,
                     flip_mask: torch.Tensor | None = None):
    """Random crop with ``pad`` pixels of reflection padding, and horizontal flip, per sample, as
    one gather over the whole batch. ``flip_mask`` (bool, one per sample) says which images to
    mirror instead of a coin toss each."""
    n, _, h, w = x.shape
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        rows = (oy[:, None] + torch.arange(h))[:, None, :, None]  # n,1,h,1
        cols = (ox[:, None] + torch.arange(w))[:, None, None, :]  # n,1,1,w
        x = padded[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None],
                   rows, cols]
    if flip:
        mask = torch.rand(n, generator=generator) < 0.5 if flip_mask is None else flip_mask
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


def random_resized_crop_flip(x: torch.Tensor, generator: torch.Generator, scale=(0.25, 1.0),
                             ratio=(3 / 4, 4 / 3), flip: bool = True):
    """Inception-style random-resized crop + flip for whole batches: one affine grid_sample."""
    n = x.shape[0]
    area = torch.empty(n).uniform_(*scale, generator=generator)
    log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    r = torch.exp(log_r)
    sw = torch.sqrt(area * r).clamp(max=1.0)  # crop width / image width
    sh = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - sw)
    cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - sh)
    sign = torch.ones(n)
    if flip:
        sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sw * sign, cx
    theta[:, 1, 1], theta[:, 1, 2] = sh, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def random_erase(x: torch.Tensor, p: float, generator: torch.Generator, scale=(0.02, 0.4),
                 ratio=(0.3, 3.3)) -> torch.Tensor:
    """Random erasing (Zhong et al., 2020; torchvision's ``RandomErasing(value="random")``) for whole
    batches: with probability ``p`` per image, a rectangle covering ``scale`` of its area with aspect
    ``ratio`` is replaced by standard-normal noise (inputs are already normalised). One mask over the
    batch instead of a Python loop per image; a rectangle that does not fit is clipped to the image
    rather than redrawn."""
    n, _, h, w = x.shape
    area = torch.empty(n).uniform_(*scale, generator=generator) * (h * w)
    r = torch.exp(torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator))
    eh = torch.sqrt(area * r).round().clamp(1, h)
    ew = torch.sqrt(area / r).round().clamp(1, w)
    y0 = (torch.rand(n, generator=generator) * (h - eh + 1)).floor()
    x0 = (torch.rand(n, generator=generator) * (w - ew + 1)).floor()
    on = torch.rand(n, generator=generator) < p
    rows, cols = torch.arange(h), torch.arange(w)
    in_rows = (rows >= y0[:, None]) & (rows < (y0 + eh)[:, None])  # n,h
    in_cols = (cols >= x0[:, None]) & (cols < (x0 + ew)[:, None])  # n,w
    mask = (in_rows[:, :, None] & in_cols[:, None, :] & on[:, None, None])[:, None]  # n,1,h,w
    return torch.where(mask, torch.randn(x.shape, generator=generator, dtype=x.dtype), x)


def augment_batch(x: torch.Tensor, kind: str, generator: torch.Generator,
                  flip_mask: torch.Tensor | None = None, crop_pad: int | None = None) -> torch.Tensor:
    """``crop_pad``: the pad-and-crop shift in pixels (default: 1/8 of the image, 4 px at 32)."""
    pad = max(1, round(x.shape[-1] / 8)) if crop_pad is None else crop_pad
    if kind == "none":
        return x
    if kind == "flip":
        return random_crop_flip(x, 0, generator, flip_mask=flip_mask)
    if kind == "crop":  # small images: pad-and-crop + flip (CIFAR standard: 4 px at 32)
        return random_crop_flip(x, pad, generator, flip_mask=flip_mask)
    if kind == "crop-noflip":  # e.g. digits or text, where a mirror changes the class
        return random_crop_flip(x, pad, generator, flip=False)
    if kind == "rrc":
        return random_resized_crop_flip(x, generator)
    raise SqueezeNetError(f"unknown augmentation {kind!r}: choose none, flip, crop, crop-noflip or rrc")


class Loader:
    """Batches of (float images, labels) from an ``ImageSet``/``NoiseSet``.

    ``sampler`` is any iterable of indices (e.g. ``DistributedSampler``); without one the order is
    a seeded permutation per epoch (``shuffle``) or sequential. Randomness comes from a generator
    seeded by (seed, epoch), so an epoch is reproducible on its own, which makes resume exact.

    ``alternate_flip`` (airbench, Jordan 2024) replaces the coin toss per image and epoch: each image
    is mirrored in every other epoch, from a random first choice, so any two consecutive epochs
    show both orientations of every image.
    """

    def __init__(self, data, batch_size: int, shuffle: bool = False, augment: str = "none",
                 seed: int = 0, drop_last: bool = False, sampler=None, channels_last: bool = False,
                 device: str | torch.device = "cpu", erase: float = 0.0, alternate_flip: bool = False,
                 crop_pad: int | None = None):
        self.data, self.batch_size, self.shuffle, self.augment = data, batch_size, shuffle, augment
        self.erase = erase  # random-erasing probability per image, after ``augment``
        self.crop_pad = crop_pad
        self.seed, self.drop_last, self.sampler = seed, drop_last, sampler
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.device = torch.device(device)
        self.epoch = 0
        self.flip_phase = (torch.randint(0, 2, (len(data),), generator=torch.Generator().manual_seed(seed + 7))
                           if alternate_flip else None)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
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

    def __iter__(self):
        order = self._indices()
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)  # augmentation
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            if self.drop_last and len(idx) < self.batch_size:
                break
            flip = None if self.flip_phase is None else (self.flip_phase[idx] + self.epoch) % 2 == 1
            x = augment_batch(self.data.batch(idx, g), self.augment, g, flip_mask=flip,
                              crop_pad=self.crop_pad)
            if self.erase > 0:
                x = random_erase(x, self.erase, g)
            y = self.data.labels[idx]
            x = x.to(self.device, memory_format=self.memory_format, non_blocking=True)
            yield x, y.to(self.device, non_blocking=True)


def train_val_split(data, val_fraction: float, seed: int):
    """A seeded split of the training data into (train, val); the test split is ``eval``'s only.
    ``val_fraction`` 0 is the final fit on every training image: (data, None)."""
    if val_fraction == 0:
        return data, None
    if not 0 < val_fraction < 1:
        raise SqueezeNetError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    n_val = max(1, round(len(data) * val_fraction))
    if n_val >= len(data):
        raise SqueezeNetError(f"{len(data)} images are too few to carve a validation split from")
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return data.subset(perm[n_val:].sort().values), data.subset(perm[:n_val].sort().values)


# ----------------------------------------------------------------------------- synthetic sets

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


# ----------------------------------------------------------------------------- Fashion-MNIST

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]
FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/{file}"
FASHION_DIR = "/usr/share/datasets/fashion-mnist"


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped), validated: magic, dimensions and size must agree."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, ValueError, zlib.error) as e:  # BadGzipFile is an OSError
        raise SqueezeNetError(f"{path} is not a readable IDX file ({e}); download it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        raise SqueezeNetError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise SqueezeNetError(f"{path} is truncated (header incomplete)")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + math.prod(dims)  # Python ints: a hostile header cannot overflow
    if len(raw) != expected:
        raise SqueezeNetError(f"{path} holds {len(raw)} bytes but its header says {expected}: "
                              f"the file is truncated or corrupt; download it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _download(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def load_fashion_mnist(data_dir: str | Path | None, split: str, download: bool = True) -> ImageSet:
    data_dir = Path(data_dir or FASHION_DIR)
    files = [data_dir / f for f in FASHION_FILES[split]]
    missing = [f for f in files if not f.exists() and not f.with_suffix("").exists()]
    if missing and download:
        try:
            for f in missing:
                _download(FASHION_URL.format(file=f.name), f)
            missing = []
        except OSError:
            pass
    if missing:
        raise SqueezeNetError(
            f"Fashion-MNIST not found in {data_dir} (missing {', '.join(f.name for f in missing)}) "
            f"and it could not be downloaded. Get it with `apt-get install dataset-fashion-mnist` "
            f"(puts it in {FASHION_DIR}) or download the four IDX .gz files from "
            f"{FASHION_URL.format(file='')} into --data-dir")
    images, labels = (read_idx(f if f.exists() else f.with_suffix("")) for f in files)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise SqueezeNetError(f"Fashion-MNIST files in {data_dir} do not match: {images.shape} images, "
                              f"{labels.shape} labels")
    if labels.size and labels.max() >= 10:
        raise SqueezeNetError(f"Fashion-MNIST labels in {data_dir} go up to {labels.max()}: corrupt file")
    return ImageSet(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                    list(FASHION_CLASSES), (0.2860,), (0.3530,))


# ----------------------------------------------------------------------------- CIFAR-10

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR's batches are pickles: allow only what they hold (numpy arrays, builtins). A payload
    naming any other callable is refused before it can run."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden global {module}.{name}")


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = _NumpyOnlyUnpickler(f, encoding="bytes").load()
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[b"labels"], dtype=np.int64)
        data = data.reshape(-1, 3, 32, 32)
    except FileNotFoundError:
        raise SqueezeNetError(f"CIFAR-10 batch {path} is missing") from None
    except Exception as e:  # corrupt, truncated or hostile pickles raise many types
        raise SqueezeNetError(f"{path} is not a valid CIFAR-10 batch ({type(e).__name__}: {e})") from None
    if len(data) != len(labels) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise SqueezeNetError(f"{path} is corrupt: {len(data)} images, {len(labels)} labels")
    return data, labels


def _find_cifar_pickles(root: Path) -> Path | None:
    for cand in (root, root / "cifar-10-batches-py"):
        if (cand / "data_batch_1").exists() or (cand / "test_batch").exists():
            return cand
    return None


def load_cifar10(data_dir: str | Path | None, split: str, download: bool = True, strict: bool = False):
    """The official pickle batches, or an image-folder copy (``train/<class>/*.jpg``)."""
    root = Path(data_dir or "data/cifar10")
    pickles = _find_cifar_pickles(root)
    folder = root / split if (root / split).is_dir() else None
    if folder is None and root.is_dir() and {d.name for d in root.iterdir() if d.is_dir()} == set(CIFAR_CLASSES):
        folder = root  # the class folders themselves, e.g. --data-dir cifar10-test/
    if pickles is None and folder is None and download and not root.exists():
        try:
            archive = root / "cifar-10-python.tar.gz"
            _download(CIFAR_URL, archive)
            with tarfile.open(archive) as t:
                t.extractall(root, filter="data")
            pickles = _find_cifar_pickles(root)
        except (OSError, tarfile.TarError):
            pass
    if pickles is not None:
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        parts = [read_cifar_batch(pickles / n) for n in names]
        images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        return ImageSet(images, labels, list(CIFAR_CLASSES), CIFAR_MEAN, CIFAR_STD)
    if folder is not None:
        data = load_folder(folder, image_size=32, strict=strict)
        data.mean, data.std = CIFAR_MEAN, CIFAR_STD
        return data
    raise SqueezeNetError(
        f"CIFAR-10 {split} split not found in {root}: expected the python batches "
        f"(cifar-10-batches-py/ from {CIFAR_URL}) or an image folder {root / split}/<class>/*.jpg. "
        f"Download and unpack it there, or pass --data-dir")


# ----------------------------------------------------------------------------- image folders

def _decode(path: Path, image_size: int, channels: int) -> np.ndarray:
    """Any mode (palette, RGBA, 16-bit, CMYK) to RGB or L; shorter side resized to image_size,
    then centre-cropped."""
    with Image.open(path) as im:
        # PIL only warns between MAX_IMAGE_PIXELS and twice that; refuse before decoding anything.
        if im.width * im.height > MAX_IMAGE_PIXELS:
            raise Image.DecompressionBombError(f"{im.width}x{im.height} pixels is over the limit of "
                                               f"{MAX_IMAGE_PIXELS:,} (a decompression bomb?)")
        if min(im.size) < 1:
            raise ValueError(f"empty image ({im.width}x{im.height})")
        im.draft("RGB" if channels == 3 else "L", (image_size, image_size))  # JPEG: decode smaller
        if im.mode in ("I", "F") or im.mode.startswith("I;16"):
            # 16/32-bit greyscale: PIL's convert would clip at 255 (mostly white); scale 16 -> 8 bit.
            im = Image.fromarray((np.asarray(im, dtype=np.float64) / 257).clip(0, 255).astype(np.uint8))
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            background = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(background, im)
        im = im.convert("RGB" if channels == 3 else "L")
        w, h = im.size
        s = image_size / min(w, h)
        if (w, h) != (image_size, image_size):
            nw, nh = max(image_size, round(w * s)), max(image_size, round(h * s))
            im = im.resize((nw, nh), Image.BILINEAR, reducing_gap=3.0)
            left, top = (nw - image_size) // 2, (nh - image_size) // 2
            im = im.crop((left, top, left + image_size, top + image_size))
        arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def scan_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]], list[str]]:
    """Class folders -> (classes, [(file, label)], ignored non-image files)."""
    if not root.is_dir():
        raise SqueezeNetError(f"data directory {root} does not exist: pass --data-dir DIR with one "
                              f"sub-folder of images per class (DIR/cat/1.jpg, DIR/dog/2.png, ...)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise SqueezeNetError(f"{root} has no class folders: expected DIR/<class name>/<image files>")
    samples, ignored = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.is_file() and not p.name.startswith("."))
        images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
        ignored += [str(p) for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
        if not images:
            raise SqueezeNetError(f"class folder {root / name} has no images "
                                  f"({', '.join(sorted(IMAGE_EXTENSIONS))}): add some or remove it")
        samples += [(p, label) for p in images]
    return classes, samples, ignored


def load_folder(root: str | Path, image_size: int = 224, channels: int = 3, strict: bool = False,
                cache: bool = True) -> ImageSet:
    """A ``class_name/image`` tree (the ImageNet layout), decoded once into a uint8 tensor.

    Unreadable images are skipped with a warning naming each file, or raise with ``strict``.
    The decoded tensor is cached on disk (keyed by the file list, sizes and mtimes), so a second
    run decodes nothing.
    """
    root = Path(root)
    classes, samples, ignored = scan_folder(root)
    if ignored:
        warnings.warn(f"ignoring {len(ignored)} non-image file(s) in {root}, e.g. {ignored[0]}",
                      stacklevel=2)
    key = _cache_key(root, samples, image_size, channels)
    cached = _cache_load(key) if cache else None
    if cached is not None:
        images, labels, skipped = cached
    else:
        def decode(item):
            try:
                return _decode(item[0], image_size, channels)
            except Exception as e:  # PIL's decoders raise many types on hostile bytes: a named skip
                return f"{item[0]}: {type(e).__name__}: {e}"

        # PIL releases the GIL while decoding, so threads use every core.
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            decoded = list(pool.map(decode, samples, chunksize=64))
        skipped = [d for d in decoded if isinstance(d, str)]
        if skipped and strict:
            raise SqueezeNetError(f"{len(skipped)} unreadable image(s), e.g. {skipped[0]} "
                                  f"(without --strict they are skipped with a warning)")
        keep = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
        if not keep:
            raise SqueezeNetError(f"no readable images in {root}")
        images = torch.from_numpy(np.stack([decoded[i] for i in keep]))
        labels = torch.tensor([samples[i][1] for i in keep], dtype=torch.long)
        if cache:
            _cache_save(key, images, labels, skipped)
    for s in skipped:
        warnings.warn(f"skipped unreadable image {s}", stacklevel=2)
    mean = IMAGENET_MEAN if channels == 3 else (sum(IMAGENET_MEAN) / 3,)
    std = IMAGENET_STD if channels == 3 else (sum(IMAGENET_STD) / 3,)
    return ImageSet(images, labels, classes, mean, std, skipped=skipped)


def _cache_dir() -> Path:
    return Path(os.environ.get("SQUEEZENET_CACHE", Path.home() / ".cache" / "squeezenet"))


def _cache_key(root: Path, samples, image_size: int, channels: int) -> str:
    h = hashlib.sha256(f"v1|{root.resolve()}|{image_size}|{channels}".encode())
    for p, label in samples:
        st = p.stat()
        h.update(f"{p.relative_to(root)}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def _cache_load(key: str):
    path = _cache_dir() / f"{key}.pt"
    if not path.exists():
        return None
    try:
        d = torch.load(path, weights_only=True)
        return d["images"], d["labels"], list(d["skipped"])
    except Exception:  # a stale or broken cache is rebuilt, never trusted
        return None


def _cache_save(key: str, images, labels, skipped) -> None:
    from .checkpoint import atomic_path

    try:
        with atomic_path(_cache_dir() / f"{key}.pt") as tmp:
            torch.save({"images": images, "labels": labels, "skipped": skipped}, tmp)
    except OSError:
        pass  # a cache is an optimisation; a read-only home must not fail training


# ----------------------------------------------------------------------------- front door

DATASETS = ("shapes", "noise", "fashion-mnist", "cifar10", "folder")


def load_dataset(name: str, split: str = "train", data_dir: str | Path | None = None,
                 image_size: int | None = None, seed: int = 0, strict: bool = False,
                 channels: int = 3, size: int | None = None):
    """The ``train`` or ``test`` split of a data set. Synthetic sets are generated (their test
    split from another seed)."""
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
        root = Path(data_dir)
        if split == "test" and (root / "test").is_dir():
            root = root / "test"
        elif (root / "train").is_dir() and split == "train":
            root = root / "train"
        data = load_folder(root, image_size or 224, channels=channels, strict=strict)
    else:
        raise SqueezeNetError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    if image_size and data.image_size != image_size:
        data = resize(data, image_size)
    if size is not None and size < len(data):  # a seeded random subset: folders are sorted by class
        keep = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:size]
        data = data.subset(keep.sort().values)
    return data


def resize(data: ImageSet, image_size: int) -> ImageSet:
    """Resize a whole uint8 set at once (e.g. Fashion-MNIST 28 -> 32 or CIFAR 32 -> 224)."""
    out = torch.empty(len(data), data.channels, image_size, image_size, dtype=torch.uint8)
    for s in range(0, len(data), 4096):
        x = data.images[s:s + 4096].float()
        y = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True,
                          align_corners=False)
        out[s:s + 4096] = y.round().clamp(0, 255).to(torch.uint8)
    return ImageSet(out, data.labels, data.classes, data.mean, data.std, data.skipped)


def load_image_files(paths, image_size: int, channels: int) -> tuple[torch.Tensor, list[str]]:
    """Images for ``predict``: decoded like training data; unreadable ones raise, naming the file."""
    arrays = []
    for p in map(Path, paths):
        if not p.is_file():
            raise SqueezeNetError(f"image {p} does not exist")
        try:
            arrays.append(_decode(p, image_size, channels))
        except Exception as e:  # PIL's decoders raise many types on hostile bytes
            raise SqueezeNetError(f"cannot read image {p}: {type(e).__name__}: {e}") from None
    return torch.from_numpy(np.stack(arrays)), [str(p) for p in paths]


def split_seed(meta: dict) -> int:
    """The seed a checkpoint's train/val split was carved with (older checkpoints: its --seed)."""
    return meta.get("split_seed", meta.get("seed", 0))


def checkpoint_splits(meta: dict, dataset: str | None = None, data_dir: str | None = None):
    """(train, val) as the checkpoint's run carved them: same data set, subset, fraction and seed,
    at its input size and channels. ``val`` is None after a final fit (--val-fraction 0).
    ``dataset`` and ``data_dir`` (eval's, already resolved) replace the checkpoint's own."""
    pre = meta["preprocess"]
    full = load_dataset(dataset or meta["dataset"], "train", data_dir if dataset else meta.get("data_dir"),
                        pre["image_size"], seed=split_seed(meta), channels=pre["in_channels"],
                        size=meta.get("train_size"))
    return train_val_split(full, meta.get("val_fraction", 0.1), split_seed(meta))


def load_eval_split(meta: dict, dataset: str | None, data_dir: str | None, split: str,
                    batch_size: int = 256):
    """The data a checkpoint is evaluated on, preprocessed as it was trained (size, channels,
    normalisation from its metadata). ``val`` re-carves the training run's validation split."""
    dataset = dataset or meta["dataset"]
    data_dir = data_dir if data_dir is not None else (meta.get("data_dir") if dataset == meta["dataset"] else None)
    pre = meta["preprocess"]
    channels = pre["in_channels"]
    if split == "val":
        _, data = checkpoint_splits(meta, dataset, data_dir)
        if data is None:
            raise SqueezeNetError("this model trained on all of its training data (--val-fraction 0), "
                                  "so it has no validation split: use --split test")
    else:
        data = load_dataset(dataset, "test", data_dir, pre["image_size"], seed=split_seed(meta),
                            channels=channels)
    if data.channels != channels:
        raise SqueezeNetError(f"the checkpoint expects {channels}-channel images, the data has "
                              f"{data.channels}")
    classes = meta["class_names"]
    if len(data.classes) != len(classes):
        raise SqueezeNetError(f"the checkpoint has {len(classes)} classes, the {dataset} data has "
                              f"{len(data.classes)}: evaluate it on the data set it was trained for")
    if dataset == "folder" and list(data.classes) != list(classes):
        raise SqueezeNetError(f"class folders {data.classes} differ from the checkpoint's {classes}")
    data.mean, data.std = tuple(pre["mean"]), tuple(pre["std"])
    return data, Loader(data, batch_size)
