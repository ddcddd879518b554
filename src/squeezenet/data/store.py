"""The decode cache: a folder's images decoded once into an on-disk uint8 array that training maps.

The store is the data set, not a second copy: ``np.memmap`` pages come from the OS page cache, so
memory stays about a batch whatever the folder's decoded size. One store per (folder contents,
size, channels, decoder), keyed by a hash of every file's path, size, mtime, ctime and inode (a
rewrite with a preserved mtime still changes the ctime). Each store is checked against its own
record when opened; a store that fails the check is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..errors import SqueezeNetError
from ..files import DISK_ERRORS, cache_dir
from .images import DECODER_VERSION, decode, decoders, shown

log = logging.getLogger("squeezenet")
STORE_VERSION = 1
DEFAULT_CAP_GB = 50.0  # SQUEEZENET_CACHE_MAX_GB: least recently used stores go beyond it


def stores_dir() -> Path:
    return cache_dir() / "decoded"


def store_key(root: Path, samples, size: int, channels: int) -> str:
    h = hashlib.sha256(f"{STORE_VERSION}|{DECODER_VERSION}|{decoders()}|{size}|{channels}|".encode())
    h.update(os.fsencode(root.resolve()))
    for p, label in samples:
        st = p.stat()
        h.update(os.fsencode(p.relative_to(root)))
        h.update(f"|{label}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}\n".encode())
    return h.hexdigest()[:32]


def open_store(key: str, labels: list[int]) -> tuple[torch.Tensor, list[int], list[str]] | None:
    """(images mapped from disk, indices of the readable images, skipped files), or None when the
    store is absent or does not match its record (then it is removed)."""
    folder = stores_dir() / key
    try:
        record = json.loads((folder / "store.json").read_text())
        n, c, h, w = record["shape"]
        ok = (record["version"] == STORE_VERSION and record["labels"] == labels and n == len(labels)
              and (folder / "images.u8").stat().st_size == n * c * h * w
              and all(0 <= i < n for i in record["valid"]))
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        if folder.exists():
            warnings.warn(f"the decode cache {folder} does not match its record: decoding again", stacklevel=3)
            shutil.rmtree(folder, ignore_errors=True)
        return None
    os.utime(folder / "store.json")  # least-recently-used order for the cap
    images = np.memmap(folder / "images.u8", dtype=np.uint8, mode="c", shape=(n, c, h, w))
    return torch.from_numpy(images), record["valid"], record["skipped"]


def decode_all(samples, size: int, channels: int, out: np.ndarray | int, progress: bool):
    """Decode every file into ``out[i]`` (an array, or a file descriptor written at image i's
    offset: the decoded pages go to the page cache, not to this process's memory) in parallel
    (the decoders release the GIL while decoding, so threads use every core); returns (indices of the
    readable files, the unreadable ones, each with its reason)."""
    item = channels * size * size

    def work(i):
        try:
            image = decode(samples[i][0], size, channels)
            if isinstance(out, int):
                os.pwrite(out, image.tobytes(), i * item)
            else:
                out[i] = image
            return None
        except Exception as e:  # PIL's decoders raise many types on hostile bytes: a named skip
            return i, f"{shown(samples[i][0])}: {type(e).__name__}: {e}"

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(tqdm(pool.map(work, range(len(samples)), chunksize=16), total=len(samples),
                            desc=f"decoding {len(samples):,} images at {size} px", unit="img",
                            disable=not progress, leave=False))
    failed = dict(r for r in results if r is not None)
    return [i for i in range(len(samples)) if i not in failed], list(failed.values())


def build_store(key: str, samples, size: int, channels: int, progress: bool):
    """Decode into a new store and return it as ``open_store`` does; None (with a warning) when the
    cache disk cannot hold it, so the caller decodes into memory instead."""
    n, nbytes = len(samples), len(samples) * channels * size * size
    final = stores_dir() / key
    tmp = stores_dir() / f".{key}.{os.getpid()}.building"
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        with open(tmp / "images.u8", "wb") as f:
            if nbytes:
                os.posix_fallocate(f.fileno(), 0, nbytes)  # ENOSPC now, not SIGBUS mid-decode
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        warnings.warn(f"cannot cache the decoded images in {stores_dir()} "
                      f"({DISK_ERRORS.get(e.errno, e.strerror)}; {nbytes / 1e9:.2f} GB needed): "
                      f"decoding into memory instead (set SQUEEZENET_CACHE to a disk with room)", stacklevel=3)
        return None
    try:
        fd = os.open(tmp / "images.u8", os.O_WRONLY)
        try:
            valid, skipped = decode_all(samples, size, channels, fd, progress)
            os.fsync(fd)
        finally:
            os.close(fd)
        record = {"version": STORE_VERSION, "shape": [n, channels, size, size], "valid": valid,
                  "skipped": skipped, "labels": [label for _, label in samples],
                  "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "source": shown(samples[0][0].parent.parent) if samples else ""}
        (tmp / "store.json").write_text(json.dumps(record))
        try:
            os.rename(tmp, final)
        except OSError:  # another process built the same store meanwhile: use that one
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(f"decoded {n:,} images into the cache ({nbytes / 1e9:.2f} GB in {final})")
    enforce_cap(keep=key)
    return open_store(key, [label for _, label in samples])


def decode_in_memory(samples, size: int, channels: int, progress: bool):
    nbytes = len(samples) * channels * size * size
    available = memory_available()
    if available is not None and nbytes > 0.8 * available:
        raise SqueezeNetError(
            f"the decoded images need {nbytes / 1e9:.1f} GB, more than the {available / 1e9:.1f} GB of "
            f"memory available, and the decode cache cannot hold them: point SQUEEZENET_CACHE at a disk "
            f"with {nbytes / 1e9:.1f} GB free, or lower --image-size")
    images = np.empty((len(samples), channels, size, size), dtype=np.uint8)
    valid, skipped = decode_all(samples, size, channels, images, progress)
    return torch.from_numpy(images), valid, skipped


def memory_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def list_stores() -> list[dict]:
    """Every store in the cache: key, shape, size on disk, source folder, last use."""
    out = []
    for folder in sorted(stores_dir().glob("[0-9a-f]*")):
        try:
            record = json.loads((folder / "store.json").read_text())
            used = (folder / "store.json").stat().st_mtime
            nbytes = (folder / "images.u8").stat().st_size
        except (OSError, ValueError):
            continue
        out.append({"key": folder.name, "shape": record["shape"], "bytes": nbytes,
                    "source": record.get("source", ""), "last_used": used})
    return out


def clear_stores() -> int:
    """Remove every store; returns the bytes freed."""
    freed = sum(s["bytes"] for s in list_stores())
    for folder in stores_dir().glob("*"):
        shutil.rmtree(folder, ignore_errors=True)
    return freed


def enforce_cap(keep: str | None = None) -> None:
    cap = float(os.environ.get("SQUEEZENET_CACHE_MAX_GB", DEFAULT_CAP_GB)) * 1e9
    stores = sorted(list_stores(), key=lambda s: s["last_used"])
    total = sum(s["bytes"] for s in stores)
    for s in stores:
        if total <= cap:
            break
        if s["key"] != keep:
            shutil.rmtree(stores_dir() / s["key"], ignore_errors=True)
            total -= s["bytes"]
