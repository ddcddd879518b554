"""What each trick of the cifar10 recipe is worth: one short training run per row, each row the
recipe with one thing changed, all on the same subset and validation split (carved from the
training data; the holdout is never touched here).

    python benchmarks/ablation.py --data-dir data/cifar10-holdout --train-size 8000 --epochs 3 \
        --record cifar10-early-training

``--out`` (default benchmarks/out/, not kept in git) gets the rows' summary; ``--record GROUP``
also appends each row's run to benchmarks/results/runs.jsonl (benchmarks/record.py) as run
``GROUP-<row name>`` of group GROUP, where benchmarks/RESULTS.md reads its figures from.

Short runs (the early-training regime, where most of these tricks decide whether SqueezeNet
trains at all); the full-length effect of each is smaller.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from squeezenet.checkpoint import load_checkpoint
from squeezenet.config import make_config
from squeezenet.evaluate import evaluate
from squeezenet.recipes import RECIPES
from squeezenet.splits import eval_loader
from squeezenet.train import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
import record as runs_table  # noqa: E402

ROWS = [
    ("recipe (BN, simple bypass, no final ReLU, label smoothing 0.1, crop+flip, flip TTA, bf16)", {}),
    ("peak lr 0.4 instead of 0.2", {"lr": 0.4}),
    ("- zero init of bypassed Fire BN scales", {"zero_init_residual": False}),
    ("- simple bypass", {"bypass": "none"}),
    ("- label smoothing", {"label_smoothing": 0.0}),
    ("- crop+flip augmentation", {"augment": "none"}),
    ("+ EMA of weights (0.999)", {"ema": 0.999}),
    ("- bf16 autocast (fp32)", {"amp": "off"}),
    ("- channels_last", {"channels_last": False}),
    ("+ final ReLU (as in the paper)", {"final_relu": True}),
    ("- BatchNorm (as in the paper)", {"batch_norm": False, "final_relu": True, "lr": 0.04}),
    ("- small-input stem (ImageNet stem at 32 px)", {"small_input": False}),
]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", default="data/cifar10-holdout")
    p.add_argument("--train-size", type=int, default=8_000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rows", default="all", help="comma-separated row numbers, or all")
    p.add_argument("--out", default="benchmarks/out/ablation_cifar10.json")
    p.add_argument("--record", metavar="GROUP", help="also append each row's run to runs.jsonl as group GROUP")
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    rows = ROWS if args.rows == "all" else [ROWS[int(i)] for i in args.rows.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, change) in enumerate(rows):
            cfg = make_config({**RECIPES["cifar10"], "data_dir": args.data_dir, "train_size": args.train_size,
                               "epochs": args.epochs, "progress": False, "out": f"{tmp}/row{i}", **change})
            t0 = time.perf_counter()
            last = train(cfg)
            wall = time.perf_counter() - t0
            rows_ = [json.loads(x) for x in Path(last["out"], "metrics.jsonl").read_text().splitlines()]
            record = {"row": name, "change": change, "val_acc": last["val_acc"], "val_loss": last["val_loss"],
                      "train_seconds": round(sum(r["seconds"] for r in rows_), 1),
                      "images_per_s": round(sum(r["images_per_s"] for r in rows_) / len(rows_), 1),
                      "wall_seconds": round(wall, 1)}
            if not change:  # TTA is free to ablate: evaluate the recipe's model without it
                model, meta = load_checkpoint(Path(last["out"]) / "last.safetensors")
                _, loader = eval_loader(meta, split="val")
                record["val_acc_without_tta"] = round(evaluate(model, loader, 10, tta=False)["top1"], 2)
            results.append(record)
            if args.record:
                runs_table.record(last["out"], f"{args.record}-{runs_table.slug(name)}", args.record, note=name,
                                  change=change)
            print(json.dumps(record), flush=True)
    out = {"command": f"python benchmarks/ablation.py --data-dir {args.data_dir} --train-size {args.train_size} "
                      f"--epochs {args.epochs}",
           "setup": f"{args.train_size} CIFAR-10 training images (val 10% carved), {args.epochs} epochs, "
                    f"2-core CPU", "rows": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
