"""Training-step speed of the recipes' models at smaller input sizes (``--progressive-resize``).

Progressive resizing pays only as far as smaller images train faster. This measures model-only
training steps (bf16 autocast where native, channels_last, SGD as the recipe) of the cifar10 and
fashion-mnist recipes' models at each input side, the sizes taking turns round after round so that
the machine's drift falls on all of them alike.

    python benchmarks/resize_speed.py --out benchmarks/results/resize_speed.json
"""

import argparse
import contextlib
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
from squeezenet.train import autocast_for, make_config, make_optimizer, pool_layers  # noqa: E402

SHAPES = {"cifar10": (3, 32), "fashion-mnist": (1, 28)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="benchmarks/results/resize_speed.json")
    p.add_argument("--scales", default="1,0.875,0.75,0.625,0.5")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    scales = [float(s) for s in args.scales.split(",")]
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "torch": torch.__version__, "what": "model-only training steps, images/s, median of "
              f"{args.rounds} interleaved rounds of {args.steps} steps", "recipes": {}}
    for recipe, (channels, full) in SHAPES.items():
        cfg = make_config({"recipe": recipe})
        kwargs = dict(num_classes=10, in_channels=channels, bypass=cfg.bypass, batch_norm=cfg.batch_norm,
                      small_input=cfg.small_input, final_relu=cfg.final_relu, dropout=cfg.dropout)
        if cfg.pool_after:
            kwargs["pool_after"] = pool_layers(cfg.pool_after)
        model = create_model(cfg.arch, **kwargs).to(memory_format=torch.channels_last).train()
        opt = make_optimizer(cfg, model)
        autocast = autocast_for(cfg, torch.device("cpu")) or contextlib.nullcontext
        sizes = sorted({2 * round(full * s / 2) for s in scales}, reverse=True)
        batches = {n: torch.randn(cfg.batch_size, channels, n, n).contiguous(memory_format=torch.channels_last)
                   for n in sizes}
        runs = {n: [] for n in sizes}
        for _ in range(args.rounds):
            for n in sizes:
                runs[n].append(timed_steps(model, opt, batches[n], cfg.label_smoothing, args.steps, 2, autocast))
        median = {n: statistics.median(v) for n, v in runs.items()}
        result["recipes"][recipe] = {
            "batch_size": cfg.batch_size, "pool_after": cfg.pool_after or "the version's",
            "images_per_s": {str(n): [round(v, 1) for v in runs[n]] for n in sizes},
            "speedup_vs_full_size": {str(n): round(median[n] / median[full], 3) for n in sizes},
        }
        print(recipe, json.dumps(result["recipes"][recipe]["speedup_vs_full_size"]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
