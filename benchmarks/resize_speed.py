"""Training-step speed of the recipes' models at smaller input sizes (``--progressive-resize``).

Progressive resizing pays only as far as smaller images train faster. This measures model-only
training steps (bf16 autocast where native, channels_last, SGD as the recipe) of the cifar10 and
fashion-mnist recipes' models at each input side, the sizes taking turns round after round so that
the machine's drift falls on all of them alike.

    python benchmarks/resize_speed.py --out benchmarks/results/resize_speed.json
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
from stem_speed import SHAPES, steps_per_s  # noqa: E402

from squeezenet.train import make_config  # noqa: E402


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
    for recipe, (_, full) in SHAPES.items():
        cfg = make_config({"recipe": recipe})
        sizes = sorted({2 * round(full * s / 2) for s in scales}, reverse=True)
        runs = {n: [] for n in sizes}
        for _ in range(args.rounds):
            for n in sizes:
                runs[n].append(steps_per_s(cfg, cfg.stem_channels, args.steps, warmup=2, size=n))
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
