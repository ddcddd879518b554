"""Training throughput, measured in one run (issue: train, evaluate, predict).

1. The outline's configuration (noise 3x224x224, batch 32, Adam 1e-3, 1 epoch) through our
   trainer vs the outline's own loop (benchmarks/seed_outline.py).
2. End-to-end trainer throughput on CIFAR-sized data (32x32 RGB, the cifar10 recipe's model,
   batch, optimizer and augmentation) vs the model-only training step on pre-made tensors.

    python benchmarks/train_throughput.py --out benchmarks/results/speed/train_throughput.json
"""

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import seed_outline  # noqa: E402

from squeezenet import create_model  # noqa: E402
from squeezenet.config import make_config  # noqa: E402
from squeezenet.optim import create_optimizer  # noqa: E402
from squeezenet.recipes import RECIPES  # noqa: E402
from squeezenet.train import train  # noqa: E402


def step_only(cfg, steps: int = 12, warmup: int = 3) -> float:
    """Model-only training steps on one pre-made channels_last batch: the ceiling for the loop."""
    model = create_model(cfg.arch, num_classes=10, bypass=cfg.bypass, batch_norm=cfg.batch_norm,
                         small_input=cfg.small_input, final_relu=cfg.final_relu)
    model = model.to(memory_format=torch.channels_last).train()
    opt = create_optimizer(cfg, model)
    x = torch.randn(cfg.batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    return timed_steps(model, opt, x, cfg.label_smoothing, steps, warmup)


def timed_steps(model, opt, x: torch.Tensor, label_smoothing: float, steps: int, warmup: int,
                autocast=contextlib.nullcontext) -> float:
    """Images/s of ``steps`` training steps on the one batch ``x`` (random labels), after ``warmup``."""
    y = torch.randint(0, 10, (len(x),))
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        with autocast():
            loss = F.cross_entropy(model(x), y, label_smoothing=label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * len(x) / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="benchmarks/results/speed/train_throughput.json")
    p.add_argument("--train-size", type=int, default=12_000)
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        seed = seed_outline.run()
        ours = train(make_config({"dataset": "noise", "epochs": 1, "batch_size": 32, "optimizer": "adam",
                                  "lr": 1e-3, "out": f"{tmp}/noise", "progress": False}))
        ours10 = train(make_config({"dataset": "noise", "arch": "squeezenet1_0", "epochs": 1, "batch_size": 32,
                                    "optimizer": "adam", "lr": 1e-3, "train_size": 400, "out": f"{tmp}/noise10",
                                    "progress": False}))
        result["outline"] = {
            "seed_loop_images_per_s": round(seed, 2),
            "ours_squeezenet1_1_images_per_s": ours["images_per_s"],
            "ours_squeezenet1_0_images_per_s": ours10["images_per_s"],
            "speedup_v1_1": round(ours["images_per_s"] / seed, 2),
            "speedup_v1_0": round(ours10["images_per_s"] / seed, 2),
            "target": ">= 3x the outline's loop",
        }
        print(json.dumps(result["outline"], indent=2), flush=True)

        cifar = {**RECIPES["cifar10"], "dataset": "shapes", "epochs": 1, "train_size": args.train_size,
                 "out": f"{tmp}/cifar", "progress": False, "tta": False}
        cfg = make_config(cifar)
        ceiling = step_only(cfg)
        e2e = train(cfg)
        ceiling_after = step_only(cfg)
        model_only = (ceiling + ceiling_after) / 2  # bracket the trainer run against drift
        result["pipeline"] = {
            "data": f"{args.train_size} synthetic 3x32x32 images (CIFAR-sized), cifar10 recipe model and batch",
            "model_only_step_images_per_s": round(model_only, 1),
            "end_to_end_images_per_s": e2e["images_per_s"],
            "ratio": round(e2e["images_per_s"] / model_only, 3),
            "target": ">= 0.9",
        }
        print(json.dumps(result["pipeline"], indent=2), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
