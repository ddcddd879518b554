"""``predict``: top-k labels with probabilities for image files, on the fastest runtime.

``auto`` picks onnxruntime when it is installed (3-4x PyTorch eager for v1.1 at 224 px on the
2-core CPU; ``squeezenet bench``). The ONNX model is exported once per checkpoint and kept in the
cache directory, keyed by the checkpoint's content. Images are read and run in batches, so a
folder of thousands needs the memory of one batch.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_checkpoint, resolve_checkpoint
from .data import IMAGE_EXTENSIONS, load_image_files, normalize, shown
from .errors import SqueezeNetError
from .files import atomic_path, cache_dir
from .runs import RunMeta

RUNTIMES = ("auto", "torch", "onnxruntime")
BATCH = 64


def pick_runtime(runtime: str = "auto") -> str:
    available = importlib.util.find_spec("onnxruntime") is not None and \
        importlib.util.find_spec("onnx") is not None
    if runtime == "auto":
        return "onnxruntime" if available else "torch"
    if runtime == "onnxruntime" and not available:
        raise SqueezeNetError("--runtime onnxruntime needs the onnx and onnxruntime packages: "
                              "pip install 'squeezenet[deploy]'")
    if runtime not in RUNTIMES:
        raise SqueezeNetError(f"unknown runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    return runtime


def make_predictor(model, meta: RunMeta, runtime: str = "auto", checkpoint=None):
    """(function from a normalised NCHW float batch to logits as numpy, runtime name)."""
    runtime = pick_runtime(runtime)
    if runtime == "torch":
        model = model.eval().to(memory_format=torch.channels_last)

        def run(x):
            with torch.no_grad():
                return model(x.contiguous(memory_format=torch.channels_last)).numpy()
        return run, "torch"
    from .export import onnx_bytes, ort_session

    pre = meta.preprocess
    example = torch.zeros(1, pre.in_channels, pre.image_size, pre.image_size)
    if checkpoint is None:
        session = ort_session(onnx_bytes(model, example, dynamic_batch=True, meta=meta))
    else:
        digest = hashlib.sha256(resolve_checkpoint(checkpoint).read_bytes()).hexdigest()[:24]
        path = cache_dir() / "onnx" / f"{digest}.onnx"
        if not path.is_file():
            data = onnx_bytes(model, example, dynamic_batch=True, meta=meta)
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
        session = ort_session(path)
    return (lambda x: session.run(None, {"images": x.contiguous().numpy()})[0]), "onnxruntime"


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


def predict_files(checkpoint, paths, top_k: int = 5, runtime: str = "auto", batch_size: int = BATCH):
    if top_k < 1:
        raise SqueezeNetError(f"--top-k must be at least 1, got {top_k}")
    model, meta = load_checkpoint(checkpoint)
    pre, classes = meta.preprocess, meta.class_names
    paths = image_paths(paths)
    run, runtime = make_predictor(model, meta, runtime, checkpoint)
    k, results = min(top_k, len(classes)), []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        images, names = load_image_files(chunk, pre.image_size, pre.in_channels)
        logits = torch.from_numpy(np.asarray(run(normalize(images, pre.mean, pre.std))))
        top = torch.softmax(logits.float(), dim=1).topk(k, dim=1)
        results += [{"image": n, "top": [{"label": classes[i], "index": int(i), "probability": float(p)}
                                              for p, i in zip(ps.tolist(), ix.tolist())]}
                    for n, ps, ix in zip(names, top.values, top.indices)]
    return results, runtime
