"""``predict``: top-k labels with probabilities for image files, on the fastest runtime.

The runtime and precision are ``runtime.make_engine``'s: by default the fastest measured on this
machine among those installed (int8 only where its measured accuracy loss is within bounds).
Images are read and run in batches, so a folder of thousands needs the memory of one batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .checkpoint import load_checkpoint
from .data import IMAGE_EXTENSIONS, load_image_files, normalize, shown
from .errors import SqueezeNetError
from .runs import RunMeta
from .runtime import PRECISIONS, RUNTIMES, make_engine

__all__ = ["PRECISIONS", "RUNTIMES", "make_predictor", "predict_files", "top_labels"]
BATCH = 64


def make_predictor(model, meta: RunMeta, runtime: str = "auto", checkpoint=None, precision: str = "auto"):
    """(function from a normalised NCHW float batch to logits as numpy, runtime name)."""
    engine = make_engine(model, meta, runtime, precision, checkpoint)
    return engine, engine.name


def top_labels(logits, classes, k: int) -> list[list[dict]]:
    """Per image, the ``k`` most probable labels with their softmax probabilities."""
    z = np.asarray(logits, dtype=np.float32)  # NumPy: cheaper than torch on a service's small batches
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    ix = np.argsort(-p, axis=1, kind="stable")[:, :min(k, len(classes))]
    return [[{"label": classes[i], "index": i, "probability": q} for i, q in zip(row, probs)]
            for row, probs in zip(ix.tolist(), np.take_along_axis(p, ix, axis=1).tolist())]


def image_paths(paths) -> list[Path]:
    """Files as given; a folder stands for the image files under it (sorted)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS
                           and not any(part.startswith(".") for part in q.relative_to(p).parts))
            if not found:
                raise SqueezeNetError(f"folder {shown(p)} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            out += found
        else:
            out.append(p)
    return out


def predict_files(checkpoint, paths, top_k: int = 5, runtime: str = "auto", batch_size: int = BATCH,
                  precision: str = "auto", engine=None):
    """(results, engine): per image its top-k; ``engine`` says which runtime ran and why."""
    if top_k < 1:
        raise SqueezeNetError(f"--top-k must be at least 1, got {top_k}")
    model, meta = load_checkpoint(checkpoint)
    pre, classes = meta.preprocess, meta.class_names
    paths = image_paths(paths)
    engine = engine or make_engine(model, meta, runtime, precision, checkpoint)
    results = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        images, names = load_image_files(chunk, pre.image_size, pre.in_channels, pre.resize_size)
        tops = top_labels(engine(normalize(images, pre.mean, pre.std)), classes, top_k)
        results += [{"image": n, "top": t} for n, t in zip(names, tops)]
    return results, engine
