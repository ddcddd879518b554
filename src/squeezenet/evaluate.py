"""Accuracy of a model on a loader: loss, top-1, top-5, per-class accuracy, confusion matrix."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def tta_views(x: torch.Tensor, tta: bool = False, shift: int = 0) -> list[torch.Tensor]:
    """The images test-time augmentation averages over: ``x``; with ``tta`` also its mirror image;
    with ``shift`` > 0 also both translated by (+shift, +shift) and (-shift, -shift) pixels, with
    the reflection padding of the crop augmentation (6 views). What each set of views is worth:
    benchmarks/RESULTS.md#tta-views."""
    views = [x, x.flip(3)] if tta else [x]
    if tta and shift > 0:
        h, w = x.shape[-2:]
        padded = F.pad(x, (shift, shift, shift, shift), mode="reflect")
        for offset in (0, 2 * shift):
            moved = padded[..., offset:offset + h, offset:offset + w]
            views += [moved, moved.flip(3)]
    return views


@torch.no_grad()
def predict_logits(model, x: torch.Tensor, tta: bool = False, shift: int = 0) -> torch.Tensor:
    """Logits, averaged over the test-time augmentation views (``tta_views``) when asked."""
    views = tta_views(x, tta, shift)
    return sum(model(v).float() for v in views) / len(views)


def evaluate(model, loader, num_classes: int, tta: bool = False, autocast=None, shift: int = 0) -> dict:
    """Every sample the loader yields is counted once. Returns figures in percent."""
    return summarize_confusion(*evaluate_raw(model, loader, num_classes, tta, autocast, shift))


@torch.no_grad()
def evaluate_raw(model, loader, num_classes: int, tta: bool = False, autocast=None, shift: int = 0):
    """Sums to reduce across processes: (confusion matrix, summed loss, top-5 hits)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    top5 = torch.zeros((), dtype=torch.long, device=device)
    for x, y in loader:
        if autocast is not None:
            with autocast():
                logits = predict_logits(model, x, tta, shift)
        else:
            logits = predict_logits(model, x, tta, shift)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        k = min(5, num_classes)
        top5 += (logits.topk(k, dim=1).indices == y[:, None]).any(dim=1).sum()
        confusion += torch.bincount(y * num_classes + logits.argmax(1),
                                    minlength=num_classes * num_classes).view(num_classes, num_classes)
    model.train(was_training)
    return confusion, loss_sum, top5


def summarize_confusion(confusion: torch.Tensor, loss_sum, top5) -> dict:
    confusion = confusion.cpu()
    count = int(confusion.sum())
    correct = int(confusion.diag().sum())
    per_class = (confusion.diag().double() / confusion.sum(1).clamp(min=1).double() * 100).tolist()
    return {
        "count": count,
        "loss": float(loss_sum) / max(count, 1),
        "top1": 100.0 * correct / max(count, 1),
        "top5": 100.0 * int(top5) / max(count, 1),
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }
