"""The CIFAR-10 time-budget runs as one Markdown table: each row one 44.5-minute training run on
the 2-core CPU, read from its saved files in benchmarks/results/ (``PREFIX_config.json``,
``PREFIX_metrics.jsonl`` and the ``squeezenet eval --json`` results saved beside them).

    python benchmarks/budget_table.py [--results benchmarks/results] [--json OUT]

"change" lists the run's training settings that differ from the ``cifar10`` recipe now (the views
at eval are columns, not settings: 6 views are flip + shifts by 1 or 2 px). Every eval result
names its own split and views, so each accuracy lands in its column whatever the file is called:
val is the 5,000 images carved from the training data (recipes were chosen on it), holdout the
5,000 that ``make_cifar_holdout.py`` set aside (scored after the choice). The runs trained on
different days; this machine's speed drifts by about 20% within a day, so compare epochs' worth
with that in mind.
"""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

# recipes.py is plain values: loaded from its file, so this table needs neither torch nor an install
_spec = importlib.util.spec_from_file_location(
    "recipes", Path(__file__).resolve().parents[1] / "src" / "squeezenet" / "recipes.py")
_recipes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_recipes)
RECIPES = _recipes.RECIPES

TRAIN_IMAGES = 45_000  # CIFAR-10's 50,000 less make_cifar_holdout.py's 5,000
# The settings compared, with what an absent or null value meant (older configs predate some
# flags; null is the architecture's own value: v1.1's squeeze ratio and pools, 64 conv1 filters).
COMPARED = {"optimizer": "sgd", "squeeze_ratio": 0.125, "pool_after": "conv1,fire3,fire5",
            "stem_channels": 64, "crop_pad": 4, "erase": 0.0, "ema": 0.0, "progressive_resize": 1.0,
            "dropout": 0.0}
VIEWS = (("val", 2), ("val", 1), ("val", 0), ("test", 2), ("test", 1), ("test", 0))


def value(cfg: dict, key: str):
    v = cfg.get(key)
    return COMPARED[key] if v is None else v


def runs(results: Path) -> list[dict]:
    recipe = RECIPES["cifar10"]
    prefixes = sorted(p.name[: -len("_config.json")] for p in results.glob("cifar10_*budget*_config.json"))
    evals: dict[str, dict] = {p: {} for p in prefixes}
    for f in sorted(results.glob("cifar10_*budget*.json")):
        if f.name.endswith(("_config.json", "_best_val.json")):
            continue
        owner = max((p for p in prefixes if f.name.startswith(p + "_")), key=len, default=None)
        d = json.loads(f.read_text())
        if owner and "top1" in d and "split" in d:
            evals[owner][(d["split"], d["tta_shift"] if d.get("tta") else -1)] = d["top1"]
    rows = []
    for p in prefixes:
        cfg = json.loads((results / f"{p}_config.json").read_text())
        metrics = [json.loads(line) for line in (results / f"{p}_metrics.jsonl").read_text().splitlines()]
        train = TRAIN_IMAGES - round(TRAIN_IMAGES * cfg["val_fraction"])
        images = sum(m["images_per_s"] * m["seconds"] for m in metrics)
        seconds = sum(m["seconds"] for m in metrics)
        change = {k: value(cfg, k) for k in COMPARED if value(cfg, k) != value(recipe, k)}
        rows.append({"run": p, "final_fit": cfg["val_fraction"] == 0, "seed": cfg["seed"], "change": change,
                     "epochs_worth": round(images / train, 1), "images_per_s": round(images / seconds),
                     "train_acc_last": metrics[-1]["train_acc"],
                     "accuracy": {f"{s} {'flip' if v == 0 else f'6 views {v} px'}": evals[p].get((s, v))
                                  for s, v in VIEWS}})
    return rows


def markdown(rows: list[dict]) -> str:
    cols = [f"{s} {'flip' if v == 0 else f'6 views {v} px'}" for s, v in VIEWS]
    out = ["| run | change from the recipe now | epochs' worth | img/s | train acc | "
           + " | ".join(c.replace("test", "holdout") for c in cols) + " |",
           "| --- " * (5 + len(cols)) + "|"]
    for r in rows:
        change = ", ".join(f"{k} {v}" for k, v in r["change"].items()) or "(the recipe now)"
        if r["final_fit"]:
            change += "; final fit, no val split"
        if r["seed"]:
            change += f"; seed {r['seed']}"
        acc = [f"{r['accuracy'][c]:.2f}" if r["accuracy"][c] is not None else "" for c in cols]
        out.append(f"| `{r['run']}` | {change} | {r['epochs_worth']} | {r['images_per_s']} | "
                   f"{r['train_acc_last']:.1f} | " + " | ".join(acc) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    rows = runs(args.results)
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
