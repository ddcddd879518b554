"""``compress``: Deep Compression (Han et al., 2016) for a checkpoint, with its true size on disk.

1. Magnitude pruning of every conv weight to the target sparsity, in steps, fine-tuning between
   steps on the checkpoint's own training data with the pruned weights held at zero.
2. Weight sharing: per layer, k-means (linear initialisation, as in the paper) over the surviving
   weights; each weight becomes a ``bits``-bit index into a float32 codebook.
3. Storage: per conv a bitmask of the surviving positions and their codes; everything else
   (biases, BatchNorm) as it is; the whole stream LZMA-compressed. The reported size is the file.

``load_compressed`` rebuilds the model from that file alone (the checkpoint's metadata travels in
it), so the accuracy reported after compression is the accuracy of what is on disk.
"""

from __future__ import annotations

import json
import lzma
import math
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import atomic_path, load_checkpoint, resolve_checkpoint
from .errors import SqueezeNetError, UsageError
from .zoo import create_model, load_weights

MAGIC = b"SQZC1\n"


def conv_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{name}.weight": m.weight for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def prune_masks(model: nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    """Per-layer masks keeping the largest-magnitude (1 - sparsity) of each conv's weights."""
    masks = {}
    for name, w in conv_weights(model).items():
        k = int(round(sparsity * w.numel()))
        if k == 0:
            masks[name] = torch.ones_like(w, dtype=torch.bool)
            continue
        threshold = w.detach().abs().flatten().kthvalue(k).values
        masks[name] = w.detach().abs() > threshold
    return masks


def apply_masks(model: nn.Module, masks: dict) -> None:
    with torch.no_grad():
        for name, w in conv_weights(model).items():
            w.mul_(masks[name])


def finetune(model: nn.Module, meta: dict, sparsity: float, steps: int, prune_steps: int = 3,
             lr: float = 0.01, batch_size: int = 128, log=print) -> dict:
    """Prune to ``sparsity`` in ``prune_steps`` equal steps, fine-tuning ``steps`` SGD steps in all
    on the training split (the validation and test images stay unseen). Returns the final masks."""
    from .data import Loader, load_dataset, train_val_split
    from .train import DEFAULT_AUGMENT

    pre = meta["preprocess"]
    try:
        full = load_dataset(meta["dataset"], "train", meta.get("data_dir"), pre["image_size"],
                            seed=meta.get("seed", 0), channels=pre["in_channels"], size=meta.get("train_size"))
    except SqueezeNetError as e:
        raise SqueezeNetError(f"fine-tuning needs the checkpoint's training data ({meta['dataset']}): {e}") from None
    train_set, _ = train_val_split(full, meta.get("val_fraction", 0.1), meta.get("seed", 0))
    train_set.mean, train_set.std = tuple(pre["mean"]), tuple(pre["std"])
    loader = Loader(train_set, min(batch_size, len(train_set)), shuffle=True,
                    augment=DEFAULT_AUGMENT.get(meta["dataset"], "none"), seed=meta.get("seed", 0),
                    drop_last=True, channels_last=True)
    model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-5, nesterov=True)

    def batches():
        for epoch in range(10**9):
            loader.set_epoch(epoch)
            yield from loader

    stream, per_prune = batches(), max(1, math.ceil(steps / prune_steps))
    for step in range(steps):
        if step % per_prune == 0:  # the next pruning step: sparsity ramps up linearly
            target = sparsity * min(1.0, (step // per_prune + 1) / prune_steps)
            masks = prune_masks(model, target)
            apply_masks(model, masks)
            log(f"  step {step}: pruned to {target:.0%} sparsity")
        x, y = next(stream)
        model.train()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        apply_masks(model, masks)  # momentum and weight decay would otherwise regrow pruned weights
    model.eval()
    masks = prune_masks(model, sparsity)
    apply_masks(model, masks)
    return masks


def kmeans_1d(values: torch.Tensor, bits: int, iters: int = 25) -> tuple[torch.Tensor, torch.Tensor]:
    """(codebook, codes): 2**bits centroids, linearly initialised over [min, max] (Deep
    Compression's choice: it keeps the rare large weights, which matter most)."""
    k = min(2 ** bits, values.numel())
    centroids = torch.linspace(float(values.min()), float(values.max()), k, dtype=torch.float64)
    v = values.double()
    for _ in range(iters):
        codes = torch.bucketize(v, (centroids[1:] + centroids[:-1]) / 2)
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, codes, v)
        counts = torch.bincount(codes, minlength=k)
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        centroids, _ = centroids.sort()
    codes = torch.bucketize(v, (centroids[1:] + centroids[:-1]) / 2)
    return centroids.float(), codes.to(torch.uint8)


def encode(model: nn.Module, meta: dict, bits: int) -> bytes:
    """The compressed file's bytes: header (JSON) + per-tensor payloads, LZMA-compressed."""
    convs = set(conv_weights(model))
    header, chunks = {"meta": meta, "bits": bits, "tensors": []}, []
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        if name in convs:
            mask = t != 0
            codebook, codes = kmeans_1d(t[mask], bits) if mask.any() else (torch.zeros(1), torch.zeros(0))
            parts = [np.packbits(mask.flatten().numpy()).tobytes(), codebook.numpy().tobytes(),
                     codes.numpy().astype(np.uint8).tobytes()]
            header["tensors"].append({"name": name, "kind": "sparse-shared", "shape": list(t.shape),
                                      "sizes": [len(p) for p in parts]})
        else:
            parts = [t.numpy().tobytes()]
            header["tensors"].append({"name": name, "kind": "raw", "shape": list(t.shape),
                                      "dtype": str(t.numpy().dtype), "sizes": [len(parts[0])]})
        chunks += parts
    head = json.dumps(header).encode()
    body = struct.pack("<I", len(head)) + head + b"".join(chunks)
    return MAGIC + lzma.compress(body, preset=9 | lzma.PRESET_EXTREME)


def load_compressed(path: str | Path) -> tuple[nn.Module, dict]:
    """The model (eval mode) and metadata stored in a ``compress`` file."""
    path = Path(path)
    if not path.is_file():
        raise SqueezeNetError(f"compressed model {path} does not exist")
    raw = path.read_bytes()
    if not raw.startswith(MAGIC):
        raise SqueezeNetError(f"{path} is not a file written by `squeezenet compress`")
    try:
        body = lzma.decompress(raw[len(MAGIC):])
        (n,) = struct.unpack("<I", body[:4])
        header = json.loads(body[4:4 + n])
    except (lzma.LZMAError, struct.error, ValueError) as e:
        raise SqueezeNetError(f"{path} is corrupt ({e})") from None
    pos, state = 4 + n, {}
    for t in header["tensors"]:
        parts = []
        for size in t["sizes"]:
            parts.append(body[pos:pos + size])
            pos += size
        shape = t["shape"]
        if t["kind"] == "raw":
            state[t["name"]] = torch.from_numpy(np.frombuffer(parts[0], dtype=t["dtype"]).copy()).view(shape)
        else:
            numel = math.prod(shape)
            mask = torch.from_numpy(np.unpackbits(np.frombuffer(parts[0], np.uint8))[:numel].astype(bool))
            codebook = torch.from_numpy(np.frombuffer(parts[1], np.float32).copy())
            codes = torch.from_numpy(np.frombuffer(parts[2], np.uint8).astype(np.int64))
            w = torch.zeros(numel)
            w[mask] = codebook[codes]
            state[t["name"]] = w.view(shape)
    meta = header["meta"]
    model = create_model(meta["arch"], **meta["model_kwargs"])
    load_weights(model, state)
    return model.eval(), meta


def compress(checkpoint, sparsity: float = 0.7, bits: int = 6, steps: int = 300, out=None,
             split: str = "test", log=print) -> dict:
    from .data import load_eval_split
    from .evaluate import evaluate
    from .export import default_out

    if not 0 <= sparsity < 1:
        raise UsageError(f"--sparsity must be in [0, 1), got {sparsity}")
    if not 1 <= bits <= 8:
        raise UsageError(f"--bits must be 1..8, got {bits}")
    path = resolve_checkpoint(checkpoint)
    model, meta = load_checkpoint(path)
    _, loader = load_eval_split(meta, None, None, split)
    classes = len(meta["class_names"])
    before = evaluate(model, loader, classes)["top1"]
    log(f"{path}: top-1 {before:.2f}% on {split}; pruning to {sparsity:.0%} with {steps} fine-tuning steps")
    torch.manual_seed(meta.get("seed", 0))
    finetune(model, meta, sparsity, steps, log=log)
    pruned = evaluate(model, loader, classes)["top1"]
    data = encode(model.to(memory_format=torch.contiguous_format), meta, bits)
    out = Path(out) if out else default_out(path, ".sqz")
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
        restored, _ = load_compressed(tmp)  # what is on disk, not what is in memory
        after = evaluate(restored, loader, classes)["top1"]
    weights = conv_weights(restored)
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    total = sum(w.numel() for w in weights.values())
    fp32 = path.stat().st_size
    return {"checkpoint": str(path), "out": str(out), "split": split, "eval_count": len(loader.data),
            "sparsity": zeros / total, "bits": bits, "finetune_steps": steps,
            "top1_before": before, "top1_pruned_fp32": pruned, "top1_after": after,
            "top1_drop": before - after, "bytes_fp32": fp32, "bytes_compressed": len(data),
            "size_ratio": len(data) / fp32}
