"""Training-step speed of conv1 widths (``--stem-channels``), interleaved in one run.

The conv1 stage of the small-input stem runs its BatchNorm, ReLU and max-pool at full resolution
(64 x 32 x 32 per CIFAR image), so it costs far more time than its multiply-adds. This measures
what a thinner stem buys, on the cifar10 and fashion-mnist recipes' models: model-only training
steps (bf16 autocast where native, channels_last, SGD as the recipe), the widths taking turns
round after round so that the machine's drift falls on all of them alike.

    python benchmarks/stem_speed.py --out benchmarks/results/speed/stem_speed.json
"""

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import timed_steps  # noqa: E402

from squeezenet import create_model  # noqa: E402
from squeezenet.config import make_config, pool_layers  # noqa: E402
from squeezenet.device import autocast  # noqa: E402
from squeezenet.optim import create_optimizer  # noqa: E402

SHAPES = {"cifar10": (3, 32), "fashion-mnist": (1, 28)}


def recipe_model(cfg, stem: int | None = None, squeeze_ratio: float | None = None):
    """The recipe's model with ``stem`` conv1 filters and ``squeeze_ratio`` (None: the version's
    64 and 0.125, whatever the recipe sets)."""
    kwargs = dict(num_classes=10, in_channels=SHAPES[cfg.dataset][0], bypass=cfg.bypass,
                  batch_norm=cfg.batch_norm, small_input=cfg.small_input, final_relu=cfg.final_relu,
                  dropout=cfg.dropout)
    if stem is not None:
        kwargs["stem_channels"] = stem
    if squeeze_ratio is not None:
        kwargs["squeeze_ratio"] = squeeze_ratio
    if cfg.pool_after:
        kwargs["pool_after"] = pool_layers(cfg.pool_after)
    return create_model(cfg.arch, **kwargs)


def steps_per_s(cfg, stem: int | None, steps: int, warmup: int = 3, size: int | None = None,
                squeeze_ratio: float | None = None) -> float:
    """Images/s of the recipe's model with ``stem`` conv1 filters (None: the version's) and
    ``squeeze_ratio`` (None: the version's 0.125) on ``size`` px inputs (None: the data set's own
    size)."""
    channels, full = SHAPES[cfg.dataset]
    size = size or full
    model = recipe_model(cfg, stem, squeeze_ratio).to(memory_format=torch.channels_last).train()
    opt = create_optimizer(cfg, model)
    x = torch.randn(cfg.batch_size, channels, size, size).contiguous(memory_format=torch.channels_last)
    return timed_steps(model, opt, x, cfg.label_smoothing, steps, warmup, autocast(cfg.amp, torch.device("cpu")))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="benchmarks/results/speed/stem_speed.json")
    p.add_argument("--stems", default="64,32,16")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    stems = [int(s) for s in args.stems.split(",")]
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "torch": torch.__version__, "what": "model-only training steps, images/s, median of "
              f"{args.rounds} interleaved rounds of {args.steps} steps", "recipes": {}}
    for recipe in SHAPES:
        cfg = make_config({"recipe": recipe})
        runs = {s: [] for s in stems}
        for _ in range(args.rounds):
            for s in stems:
                runs[s].append(steps_per_s(cfg, s, args.steps))
        median = {s: statistics.median(v) for s, v in runs.items()}
        result["recipes"][recipe] = {
            "batch_size": cfg.batch_size, "pool_after": cfg.pool_after or "the version's",
            "images_per_s": {str(s): [round(v, 1) for v in runs[s]] for s in stems},
            "speedup_vs_first": {str(s): round(median[s] / median[stems[0]], 3) for s in stems},
        }
        print(recipe, json.dumps(result["recipes"][recipe]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
