"""Readers for the standard data sets (Fashion-MNIST's IDX files, CIFAR-10's pickles) and verified
downloads. Every reader validates what it reads before trusting it: sizes against headers, a
decompressed size capped at what the header implies, pickles through an allow-list."""

from __future__ import annotations

import gzip
import hashlib
import math
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import SqueezeNetError
from ..files import atomic_path, mkdir
from .folder import load_folder
from .sets import ImageSet

MAX_IDX_BYTES = 2 ** 31  # 2 GiB of pixels: 45x Fashion-MNIST's training set


def verified_download(url: str, dest: Path, sha256: str) -> Path:
    """Fetch ``url`` (HTTPS) to ``dest``, moved into place only when its SHA-256 matches."""
    digest = hashlib.sha256()
    with atomic_path(dest) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
                while chunk := r.read(1 << 20):
                    digest.update(chunk)
                    f.write(chunk)
        except OSError as e:
            raise SqueezeNetError(f"could not download {url} ({e})") from None
        if digest.hexdigest() != sha256:
            raise SqueezeNetError(f"the download of {url} does not match its published SHA-256 (got "
                                  f"{digest.hexdigest()[:16]}..., expected {sha256[:16]}...): it was "
                                  f"incomplete or altered and was not kept; try again, or download it by hand")
    return dest


# ----------------------------------------------------------------------------- Fashion-MNIST

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]
FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
FASHION_URL = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/{file}"
FASHION_SHA256 = {
    "train-images-idx3-ubyte.gz": "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",
    "train-labels-idx1-ubyte.gz": "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",
    "t10k-images-idx3-ubyte.gz": "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",
    "t10k-labels-idx1-ubyte.gz": "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf",
}
FASHION_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
FASHION_DOWNLOAD_DIR = "data/fashion-mnist"


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped), validated: magic, dimensions and size must agree. A
    gzipped file is decompressed only as far as its header says it holds (a bomb stops there)."""
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as f:
            head = f.read(4)
            if len(head) < 4 or head[:3] != b"\x00\x00\x08" or not 1 <= head[3] <= 4:
                raise SqueezeNetError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
            raw_dims = f.read(4 * head[3])
            if len(raw_dims) < 4 * head[3]:
                raise SqueezeNetError(f"{path} is truncated (header incomplete)")
            dims = [int.from_bytes(raw_dims[i:i + 4], "big") for i in range(0, len(raw_dims), 4)]
            expected = math.prod(dims)  # Python ints: a hostile header cannot overflow
            if expected > MAX_IDX_BYTES:
                raise SqueezeNetError(f"{path}: its header says it holds {expected:,} bytes of pixels, over "
                                      f"the {MAX_IDX_BYTES:,} this reader accepts: a corrupt or hostile file")
            body = f.read(expected + 1)
    except (OSError, EOFError, ValueError, zlib.error) as e:  # BadGzipFile is an OSError
        raise SqueezeNetError(f"{path} is not a readable IDX file ({e}); download it again") from None
    if len(body) != expected:
        size = "more" if len(body) > expected else f"{8 + 4 * len(dims) + len(body) - 4:,}"
        raise SqueezeNetError(f"{path} holds {size} bytes but its header says {4 + 4 * len(dims) + expected:,}: "
                              f"the file is truncated or corrupt; download it again")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def load_fashion_mnist(data_dir: str | Path | None, split: str, download: bool = True) -> ImageSet:
    if data_dir is None:
        data_dir = FASHION_DIR if Path(FASHION_DIR).is_dir() else FASHION_DOWNLOAD_DIR
    data_dir = Path(data_dir)
    files = [data_dir / f for f in FASHION_FILES[split]]
    missing = [f for f in files if not f.exists() and not f.with_suffix("").exists()]
    if missing and download:
        try:
            for f in missing:
                verified_download(FASHION_URL.format(file=f.name), f, FASHION_SHA256[f.name])
            missing = []
        except SqueezeNetError:
            pass
    if missing:
        raise SqueezeNetError(
            f"Fashion-MNIST not found in {data_dir} (missing {', '.join(f.name for f in missing)}) "
            f"and it could not be downloaded. Get it with `apt-get install dataset-fashion-mnist` "
            f"(puts it in {FASHION_DIR}) or download the four IDX .gz files from "
            f"https://github.com/zalandoresearch/fashion-mnist into --data-dir")
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
CIFAR_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"


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


def download_cifar10(root: Path) -> None:
    """The official archive, verified, then extracted beside ``root`` and renamed into place, so
    an interrupted download or extract leaves nothing that looks complete."""
    mkdir(root)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        archive = verified_download(CIFAR_URL, Path(tmp) / "cifar-10-python.tar.gz", CIFAR_SHA256)
        with tarfile.open(archive) as t:
            t.extractall(tmp, filter="data")
        shutil.move(str(Path(tmp) / "cifar-10-batches-py"), str(root / "cifar-10-batches-py"))


def load_cifar10(data_dir: str | Path | None, split: str, download: bool = True, strict: bool = False):
    """The official pickle batches, or an image-folder copy (``train/<class>/*.jpg``)."""
    root = Path(data_dir or "data/cifar10")
    pickles = _find_cifar_pickles(root)
    folder = root / split if (root / split).is_dir() else None
    if folder is None and root.is_dir() and {d.name for d in root.iterdir() if d.is_dir()} == set(CIFAR_CLASSES):
        folder = root  # the class folders themselves, e.g. --data-dir cifar10-test/
    if pickles is None and folder is None and download and not root.exists():
        try:
            download_cifar10(root)
        except (SqueezeNetError, OSError, tarfile.TarError):
            pass
        pickles = _find_cifar_pickles(root)
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
