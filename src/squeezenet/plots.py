"""The outline's two plots (loss, accuracy), saved instead of shown, and a confusion matrix."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files, never windows: works on servers and in CI
import matplotlib.pyplot as plt

from .files import atomic_path


def _save(fig, path: Path, tight: bool = True) -> None:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight" if tight else None)
    finally:
        plt.close(fig)


def plot_curves(history: list[dict], out: Path) -> None:
    epochs = [h["epoch"] for h in history]
    for name, keys, ylabel in (("loss", ("train_loss", "val_loss"), "cross-entropy loss"),
                               ("accuracy", ("train_acc", "val_acc"), "top-1 accuracy (%)")):
        fig, ax = plt.subplots(figsize=(6, 4))
        fig.subplots_adjust(left=0.12, right=0.97, bottom=0.12, top=0.92)  # fixed margins: a "tight" save renders twice
        has_val = any(h[keys[1]] is not None for h in history)
        for key in keys:
            if key == keys[1] and not has_val:  # --val-fraction 0: no validation curve
                continue
            ax.plot(epochs, [h[key] for h in history], marker="o", label=key.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{'Loss' if name == 'loss' else 'Accuracy'}: train" + (" vs validation" if has_val else ""))
        ax.grid(alpha=0.3)
        ax.legend()
        _save(fig, out / f"{name}.png", tight=False)


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path, title: str) -> None:
    n = len(classes)
    size = max(5, min(16, 0.5 * n + 2))
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(confusion, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if n <= 30:
        ax.set_xticks(range(n), classes, rotation=45, ha="right")
        ax.set_yticks(range(n), classes)
        top = max(max(row) for row in confusion) or 1
        for i in range(n):
            for j in range(n):
                v = confusion[i][j]
                if v:
                    ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                            color="white" if v > top / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    _save(fig, path)
