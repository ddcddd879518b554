"""``compress``: Deep Compression (Han et al., 2016) for a checkpoint, with its true size on disk.

1. Magnitude pruning of the conv weights to the target sparsity, in steps, retraining after each
   on the checkpoint's own training data with the pruned weights held at zero.
2. Weight sharing: per layer, k-means (linear initialisation, as in the paper) over the surviving
   weights, then retraining of the shared values (centroids); each weight is a ``bits``-bit index
   into a float32 codebook.
3. Storage: the C engine's model file (``modelfile``), each conv as a bitmask of the surviving
   positions, their codes bit-packed and its codebook (BatchNorm a per-channel scale beside it).
   The file is a checkpoint like any other (``eval``, ``predict``, ``info`` and ``export`` read
   it; ``load_checkpoint`` decodes it for PyTorch) and the C engine and the page run it as it is.
   The reported size is the file's; the accuracy reported after compression is that of the model
   decoded from the file on disk.
"""

from __future__ import annotations

import functools
import gzip
import itertools
import logging
import math
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_checkpoint, resolve_checkpoint
from .data import DEFAULT_AUGMENT, Loader
from .device import autocast
from .errors import SqueezeNetError, UsageError
from .evaluate import evaluate
from .export import default_out
from .files import atomic_path
from .lowering import lower
from .rundir import train_hashes
from .runs import RunMeta
from .splits import eval_loader, run_splits
from .train import Diverged, train_one_epoch

log = logging.getLogger("squeezenet")


def conv_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{name}.weight": m.weight for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def prune_masks(model: nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    """Per-layer masks keeping the largest-magnitude (1 - sparsity) of each conv's weights. The
    first conv and the classifier conv stay dense (as Deep Compression keeps its most sensitive
    layers denser): they hold 1% of the weights, and pruning them cost accuracy out of proportion."""
    masks = {}
    weights = conv_weights(model)
    names = list(weights)
    for name, w in weights.items():
        k = 0 if name in (names[0], names[-1]) else int(round(sparsity * w.numel()))
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


def training_batches(meta: RunMeta, batch_size: int = 128):
    """An endless stream of augmented batches from the checkpoint's own training split (the
    validation and test images stay unseen), under the augmentation the model was trained with,
    crop shift included: a stronger one cost a compressed model accuracy. Random erasing is left
    out: a regulariser for a long run's overfitting, not for these short stages."""
    try:
        train_set, _ = run_splits(meta)
    except SqueezeNetError as e:
        raise SqueezeNetError(f"fine-tuning needs the checkpoint's training data ({meta.dataset}): {e}") from None
    augment = meta.augment or DEFAULT_AUGMENT.get(meta.dataset, "none")
    loader = Loader(train_set, min(batch_size, len(train_set)), shuffle=True, augment=augment,
                    seed=meta.seed, drop_last=True, channels_last=True, crop_pad=meta.crop_pad)
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from loader


def sgd_stage(model: nn.Module, batches, steps: int, lr: float, project) -> None:
    """``steps`` SGD steps through the trainer's ``train_one_epoch``, the learning rate decayed
    from ``lr`` to 0 along a cosine, so the stage ends settled (a converged model fine-tuned at a
    constant rate ends in its noise); ``project`` puts the weights back on the constraint set
    (pruned / shared) after every step."""
    model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-5, nesterov=True)
    cosine = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / steps)))
    try:  # islice: a loop that stops early closes a generator it was given (tqdm's `yield from`), not an islice
        train_one_epoch(model, itertools.islice(batches, steps), opt, scheduler=cosine,
                        amp=autocast("auto", torch.device("cpu")), max_steps=steps, after_step=project)
    except Diverged as d:
        raise SqueezeNetError(f"fine-tuning diverged at step {d.step + 1} (loss {d.loss}): "
                              f"nothing was written") from None
    model.eval()


def finetune(model: nn.Module, meta: RunMeta, sparsity: float, bits: int, steps: int, prune_steps: int = 3,
             lr: float = 0.01, after_pruning=None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Deep Compression's two retraining phases, ``steps`` SGD steps in all:
    1. prune to ``sparsity`` in ``prune_steps`` equal steps, each followed by retraining with the
       pruned weights held at zero;
    2. share weights (per-layer k-means, ``bits`` bits) and retrain the shared values: after every
       step each cluster takes the mean of its members, i.e. each centroid moves by the mean
       gradient of its weights (the paper sums them; the mean is the same step at a scaled rate).
    ``after_pruning(model)`` is called between the phases. Returns conv name -> (codebook, codes)
    of the surviving weights, in mask order."""
    batches = training_batches(meta)
    prune_steps = prune_steps if sparsity > 0 else 0  # no pruning: every step retrains the sharing
    per_stage = max(1, steps // (prune_steps + 1))
    masks: dict[str, torch.Tensor] = {}
    for stage in range(prune_steps):
        target = sparsity * (stage + 1) / prune_steps
        masks = prune_masks(model, target)
        apply_masks(model, masks)
        log.info(f"  pruned to {target:.0%} sparsity; retraining {per_stage} steps")
        sgd_stage(model, batches, per_stage, lr, functools.partial(apply_masks, model, masks))
    if after_pruning is not None:
        after_pruning(model)
    weights = conv_weights(model)
    shared, clusters = {}, {}  # clusters: name -> (codes as indices, members per cluster), fixed
    with torch.no_grad():
        for name, w in weights.items():
            masks[name] = w != 0
            shared[name] = kmeans_1d(w[masks[name]], bits) if masks[name].any() else (torch.zeros(1), None)
            if shared[name][1] is not None:
                idx = shared[name][1].long()
                clusters[name] = (idx, torch.bincount(idx, minlength=len(shared[name][0])).clamp(min=1))

    def share():  # every surviving weight := its cluster's mean (and pruned ones stay 0)
        with torch.no_grad():
            for name, w in weights.items():
                if name not in clusters:
                    w.zero_()
                    continue
                idx, counts = clusters[name]
                sums = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, idx, w[masks[name]].double())
                codebook = (sums / counts).float()
                shared[name] = (codebook, shared[name][1])
                w.zero_()
                w[masks[name]] = codebook[idx]

    share()
    log.info(f"  shared weights ({bits}-bit codebooks per layer); retraining them {per_stage} steps")
    sgd_stage(model, batches, per_stage, lr, share)
    return shared


def kmeans_1d(values: torch.Tensor, bits: int, iters: int = 25) -> tuple[torch.Tensor, torch.Tensor]:
    """(codebook, codes): 2**bits centroids, linearly initialised over [min, max] (Deep
    Compression's choice: it keeps the rare large weights, which matter most)."""
    k = min(2 ** bits, values.numel())
    unique, inverse = torch.unique(values, return_inverse=True)
    if len(unique) <= k:  # already shared (e.g. a compressed model re-encoded): exact, no k-means
        return unique.float(), inverse.to(torch.uint8)
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


def encode(model: nn.Module, meta: RunMeta, bits: int, shared: dict | None = None) -> bytes:
    """The compressed file's bytes: the model file with every conv in codebook form, ``shared``'s
    codebooks (from ``finetune``) where given, else a k-means of each conv's surviving weights
    (exact where a layer holds at most 2**bits values)."""
    books = dict(shared or {})
    with torch.no_grad():
        for name, w in conv_weights(model).items():
            if name not in books or books[name][1] is None:
                mask = w != 0
                books[name] = kmeans_1d(w[mask], bits) if mask.any() else (torch.zeros(1), None)
    return lower(model.eval(), meta, "fp32", codebooks=books)


def compress(checkpoint, sparsity: float = 0.6, bits: int = 4, steps: int = 500, out=None,
             split: str = "test", data_dir=None) -> dict:
    if not 0 <= sparsity < 1:
        raise UsageError(f"--sparsity must be in [0, 1), got {sparsity}")
    if not 1 <= bits <= 8:
        raise UsageError(f"--bits must be 1..8, got {bits}")
    path = resolve_checkpoint(checkpoint)
    model, meta = load_checkpoint(path)
    _, loader = eval_loader(meta, data_dir=data_dir, split=split,
                            train_hashes=train_hashes(path) if split == "test" else None)
    classes = meta.num_classes
    before = evaluate(model, loader, classes)["top1"]
    log.info(f"{path}: top-1 {before:.2f}% on {split}; pruning to {sparsity:.0%} with {steps} fine-tuning steps")
    torch.manual_seed(meta.seed)
    pruned = {}
    shared = finetune(model, meta, sparsity, bits, steps,
                      after_pruning=lambda m: pruned.update(top1=evaluate(m, loader, classes)["top1"]))
    data = encode(model.to(memory_format=torch.contiguous_format), meta, bits, shared)
    out = Path(out) if out else default_out(path, ".sqz")
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
        restored, _ = load_checkpoint(tmp)  # what is on disk, not what is in memory
        after = evaluate(restored, loader, classes)["top1"]
    weights = conv_weights(restored)
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    total = sum(w.numel() for w in weights.values())
    fp32 = path.stat().st_size
    return {"checkpoint": str(path), "out": str(out), "split": split, "eval_count": len(loader.data),
            "sparsity": zeros / total, "bits": bits, "finetune_steps": steps,
            "top1_before": before, "top1_pruned_fp32": pruned["top1"], "top1_after": after,
            "top1_drop": before - after, "bytes_fp32": fp32, "bytes_compressed": len(data),
            "bytes_gzip": len(gzip.compress(data, 9)), "size_ratio": len(data) / fp32}
