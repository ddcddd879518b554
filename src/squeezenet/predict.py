"""``predict``: top-k labels with probabilities for image files, on the fastest runtime."""

from __future__ import annotations

import torch

from .checkpoint import load_checkpoint
from .data import load_image_files
from .errors import SqueezeNetError


def normalise(images: torch.Tensor, pre: dict) -> torch.Tensor:
    mean = torch.tensor(pre["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(pre["std"]).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std


def predict_files(checkpoint, paths, top_k: int = 5, runtime: str = "auto"):
    model, meta = load_checkpoint(checkpoint)
    pre, classes = meta["preprocess"], meta["class_names"]
    images, names = load_image_files(paths, pre["image_size"], pre["in_channels"])
    x = normalise(images, pre)
    if runtime == "onnxruntime":
        raise SqueezeNetError("the onnxruntime runtime needs `squeezenet export` support")
    with torch.no_grad():
        probs = torch.softmax(model(x.contiguous(memory_format=torch.channels_last)), dim=1)
    k = min(top_k, len(classes))
    top = probs.topk(k, dim=1)
    results = [{"image": n, "top": [{"label": classes[i], "index": int(i), "probability": float(p)}
                                    for p, i in zip(ps.tolist(), ix.tolist())]}
               for n, ps, ix in zip(names, top.values, top.indices)]
    return results, "torch"
