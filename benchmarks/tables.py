"""The Markdown tables of benchmarks/RESULTS.md (and the README's results table), made from
benchmarks/results/runs.jsonl, one row per training run (benchmarks/record.py appends them).

    python benchmarks/tables.py [--table NAME]   # print one table, or all of them
    python benchmarks/tables.py --check          # exit 1 if RESULTS.md's tables differ from runs.jsonl
    python benchmarks/tables.py --write          # rewrite them in RESULTS.md

RESULTS.md marks each generated table with ``<!-- table:NAME -->`` ... ``<!-- /table -->``; the
text around them is written by hand. Accuracies are top-1 in percent; "6 views N px" is flip +
shifts by N px (evaluate.tta_views), "flip" the image and its mirror, "one" the image alone. On
CIFAR-10 "holdout" is the 5,000 images benchmarks/make_cifar_holdout.py sets aside (scored once a
recipe was chosen), "val" the split carved from the training images (recipes were chosen on it).
img/s is training images per second over the whole run. Reads recipes.py from its file, so it
needs neither torch nor an install.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = HERE / "results" / "runs.jsonl"
RESULTS_MD = HERE / "RESULTS.md"

_spec = importlib.util.spec_from_file_location("recipes", HERE.parent / "src" / "squeezenet" / "recipes.py")
_recipes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_recipes)
RECIPES = _recipes.RECIPES

# What an absent or null value meant in a saved config (older configs predate some settings;
# null is the architecture's own value: v1.1's squeeze ratio and pools, 64 conv1 filters).
ABSENT = {"optimizer": "sgd", "squeeze_ratio": 0.125, "pool_after": "conv1,fire3,fire5", "stem_channels": 64,
          "crop_pad": 4, "erase": 0.0, "ema": 0.0, "progressive_resize": 1.0, "dropout": 0.0, "tta_shift": 0,
          "time_budget": None, "val_fraction": 0.1}
# How long and on which images a run trains: what varies between a recipe's runs (final fit or
# validation split, budget); every other value of a recipe is what makes a run "of the recipe".
PROTOCOL = {"epochs", "time_budget", "val_fraction"}
# Budgets the README reports besides each recipe's own: CIFAR-10's 30-minute stretch goal.
EXTRA_BUDGETS = {"cifar10": (1800.0,), "folder": (2670.0,)}
DATASET = {"shapes": "shapes (synthetic)", "fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}
SPLIT = {"holdout": "on the 5,000-image holdout", "test": "test", "val": "val"}
COUNT = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven"}


def load_runs(path: Path = RUNS) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def by_id(runs: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in runs}


def value(cfg: dict, key: str):
    v = cfg.get(key)
    return ABSENT.get(key) if v is None else v


def matches_recipe(run: dict, recipe: str, keys=None) -> bool:
    """Whether the run trained with the recipe's values now (all but PROTOCOL, or ``keys``)."""
    if run["recipe"] != recipe:
        return False
    if run["config"] is None:  # the shapes demo's config was not saved: it is the default job
        return recipe == "shapes" and run["group"] == "shapes-demo"
    want = RECIPES[recipe]
    keys = [k for k in want if k not in PROTOCOL] if keys is None else keys
    return all(value(run["config"], k) == (ABSENT.get(k) if want.get(k) is None else want.get(k)) for k in keys)


def score(run: dict, split: str, views: str) -> float | None:
    """Top-1 of a `squeezenet eval` of the run (not the per-epoch validation)."""
    found = [e["top1"] for e in run["evals"] if e["split"] == split and e["views"] == views and "epoch" not in e]
    return found[-1] if found else None


def epoch_score(run: dict, which: str | int = "last") -> dict | None:
    """The per-epoch validation: its last epoch, its best (best_val.json) or epoch N."""
    per_epoch = [e for e in run["evals"] if e["split"] == "val" and "epoch" in e]
    if which == "best":
        per_epoch = [e for e in per_epoch if e["file"].endswith("best_val.json")] or per_epoch
        return max(per_epoch, key=lambda e: e["top1"], default=None)
    if which == "last":
        return max(per_epoch, key=lambda e: (e["epoch"], not e["file"].endswith("best_val.json")), default=None)
    return next((e for e in per_epoch if e["epoch"] == which), None)


def seed_label(run: dict) -> str:
    cfg = run["config"] or run.get("change")
    if not cfg:  # no saved config: the seed flags of its command
        cfg = {k.replace("-", "_"): int(v) for k, v in
               re.findall(r"--(seed|split-seed) (\d+)", run["command"] or run.get("recorded_command") or "")}
    flags = []
    if cfg.get("seed"):
        flags.append(f"--seed {cfg['seed']}")
    if cfg.get("split_seed") is not None and cfg.get("split_seed") != cfg.get("seed"):
        flags.append(f"--split-seed {cfg['split_seed']}")
    return f"`{' '.join(flags)}`" if flags else "seed 0"


def ids(runs: list[dict]) -> str:
    return ", ".join(f"`{r['id']}`" for r in runs)


def md_table(head: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(head) + " |", "| --- " * len(head) + "|"]
    out += ["| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


# ----------------------------------------------------------------------------- all results
# Each row: several runs of one recipe (seeds), the scores shown (split, views: the first is the
# recipe's own), and the words for what the recipe and model were. Newest recipes first.
V11_MODEL = "v1.1, small stem, BN, simple bypass"
SR25_MODEL = ("v1.1 fires with twice the squeeze width (SR 0.25: fire2 squeezes to 32), small stem, pools after "
              "conv1, fire3, fire7; BN, simple bypass")
CIFAR_VIEWS = ["6 views 2 px", "6 views 1 px", "flip"]
CIFAR_V1 = ["6 views 1 px", "flip"]
ALL_RESULTS = [
    dict(data="shapes (synthetic)", recipe="`shapes` (default, 7 epochs)", model=V11_MODEL,
         runs=["shapes-demo"], show=[("test", ["one"]), ("val", [])]),
    dict(data="Fashion-MNIST, time budget, final fit (the recipe now)",
         recipe="`fashion-mnist`: 14.5 minutes of training, **Muon on the Fire filters** (lr 0.05), SGD on the "
                "rest; 1 px pad-and-crop shifts + flip in training, 6 views at eval, all 60,000 training images",
         model=V11_MODEL, runs=["fmnist-muon-final-s0", "fmnist-muon-final-s1"], show=[("test", ["6 views 1 px"])]),
    dict(data="Fashion-MNIST, time budget (the recipe now)",
         recipe="`fashion-mnist` with a validation split (`--val-fraction 0.1`)", model="as above",
         runs=["fmnist-muon-val-s0", "fmnist-muon-val-s2"],
         show=[("test", ["6 views 1 px"]), ("val", ["6 views 1 px"])]),
    dict(data="Fashion-MNIST, time budget, final fit, SGD (before Muon)",
         recipe="`fashion-mnist --optimizer sgd`: 1 px pad-and-crop shifts + flip in training, flip + 1 px shifted "
                "views at eval (6 views), all 60,000 training images", model=V11_MODEL,
         runs=["fmnist-sgd-final-s0", "fmnist-sgd-final-s1", "fmnist-sgd-final-s2"],
         show=[("test", ["6 views 1 px", "flip"])]),
    dict(data="Fashion-MNIST, time budget, SGD (before Muon)",
         recipe="`fashion-mnist --optimizer sgd` with a validation split", model="as above",
         runs=["fmnist-sgd-val-s0", "fmnist-sgd-val-s1-split0", "fmnist-sgd-val-s1", "fmnist-sgd-val-s2"],
         show=[("test", ["6 views 1 px"]), ("val", ["6 views 1 px"])]),
    dict(data="Fashion-MNIST, time budget, flip recipe (before 1 px crops)",
         recipe="`fashion-mnist --optimizer sgd --augment flip --tta-shift 0` with a validation split: the same "
                "schedule stretched over 14.5 minutes of training", model=V11_MODEL,
         runs=["fmnist-flip-val-s0", "fmnist-flip-val-s1", "fmnist-flip-val-s2", "fmnist-flip-val-s1-split0"],
         show=[("test", ["flip"]), ("val", [])]),
    dict(data="Fashion-MNIST, time budget, final fit, flip recipe",
         recipe="`fashion-mnist --optimizer sgd --augment flip --tta-shift 0`: all 60,000 training images",
         model=V11_MODEL, runs=["fmnist-flip-final"], show=[("test", ["flip"])]),
    dict(data="CIFAR-10, time budget, final fit (the recipe now)",
         recipe="`cifar10`: 44.5 minutes of training, **Muon on the Fire filters** (lr 0.05), SGD on the rest; "
                "SR 0.25, 2 px crops + flip + random erasing on a quarter of the images in training, flip + 2 px "
                "shifted views at eval (6 views), all 45,000 non-holdout images", model=SR25_MODEL,
         runs=["cifar10-muon-final-s0", "cifar10-muon-final-s1", "cifar10-muon-final-s2"],
         show=[("holdout", CIFAR_VIEWS)]),
    dict(data="CIFAR-10, time budget (the recipe now)",
         recipe="`cifar10` with a validation split (`--val-fraction 0.1111`)", model="as above",
         runs=["cifar10-muon-val"], show=[("holdout", CIFAR_VIEWS), ("val", CIFAR_VIEWS)]),
    dict(data="CIFAR-10, 30-minute budget, final fit (the recipe now)", recipe="`cifar10 --time-budget 30m`",
         model="as above", runs=["cifar10-muon-30m-final"], show=[("holdout", CIFAR_VIEWS)]),
    dict(data="CIFAR-10, 30-minute budget (the recipe now)",
         recipe="`cifar10 --time-budget 30m` with a validation split", model="as above",
         runs=["cifar10-muon-30m-val"], show=[("holdout", CIFAR_VIEWS), ("val", CIFAR_VIEWS)]),
    dict(data="CIFAR-10, time budget, final fit, SGD (before Muon)",
         recipe="`cifar10 --optimizer sgd`: SR 0.25, 2 px crops + flip + **random erasing on a quarter of the "
                "images** in training, flip + 2 px shifted views at eval (6 views), all 45,000 non-holdout images",
         model=SR25_MODEL, runs=["cifar10-sgd-final-s0", "cifar10-sgd-final-s1", "cifar10-sgd-final-s2"],
         show=[("holdout", CIFAR_VIEWS)]),
    dict(data="CIFAR-10, time budget, SGD (before Muon)", recipe="`cifar10 --optimizer sgd` with a validation split",
         model="as above", runs=["cifar10-sgd-val"], show=[("val", CIFAR_VIEWS), ("holdout", CIFAR_VIEWS)]),
    dict(data="CIFAR-10, time budget, squeeze ratio 0.25 (before random erasing)",
         recipe="`cifar10 --optimizer sgd --erase 0 --tta-shift 1` with a validation split", model=SR25_MODEL,
         runs=["cifar10-sr25-val"], show=[("holdout", CIFAR_V1), ("val", CIFAR_V1)]),
    dict(data="CIFAR-10, time budget, squeeze ratio 0.25, final fit",
         recipe="the same on all 45,000 non-holdout images", model="as above", runs=["cifar10-sr25-final"],
         show=[("holdout", CIFAR_V1)]),
    dict(data="CIFAR-10, time budget, late pool (before wider squeeze layers)",
         recipe="`cifar10 --optimizer sgd --erase 0 --tta-shift 1 --squeeze-ratio 0.125` with a validation split",
         model="v1.1 fires, small stem, pools after conv1, fire3, **fire7**; BN, simple bypass",
         runs=["cifar10-pool7-val"], show=[("holdout", CIFAR_V1), ("val", CIFAR_V1)]),
    dict(data="CIFAR-10, time budget, late pool, final fit", recipe="the same on all 45,000 non-holdout images",
         model="as above", runs=["cifar10-pool7-final"], show=[("holdout", CIFAR_V1)]),
    dict(data="CIFAR-10, time budget (before late pooling)",
         recipe="`cifar10 --optimizer sgd --erase 0 --tta-shift 1 --squeeze-ratio 0.125 --pool-after "
                "conv1,fire3,fire5` with a validation split",
         model="v1.1 (pools after conv1, fire3, fire5), small stem, BN, simple bypass",
         runs=["cifar10-v11-val"], show=[("holdout", CIFAR_V1), ("val", CIFAR_V1)]),
    dict(data="CIFAR-10, time budget, final fit (before late pooling)",
         recipe="the same on all 45,000 non-holdout images", model="as above", runs=["cifar10-v11-final"],
         show=[("holdout", CIFAR_V1)]),
    dict(data="Fashion-MNIST, 12 epochs", recipe="`fashion-mnist` as it was (12 epochs, lr 0.2, flip, no dropout, "
                                                 "SGD)", model=V11_MODEL,
         runs=["fmnist-12ep", "fmnist-12ep-s1", "fmnist-12ep-s2"], show=[("test", ["flip"]), ("val", [])]),
    dict(data="CIFAR-10, 45 epochs", recipe="`cifar10` as it was (45 epochs, lr 0.2, 2 px crops + flip, no "
                                            "dropout, SGD) with a validation split",
         model="v1.1 (pools after conv1, fire3, fire5), small stem, BN, simple bypass",
         runs=["cifar10-45ep-pad2", ("4 px crops", "cifar10-45ep-pad4")],
         show=[("holdout", CIFAR_V1), ("val", CIFAR_V1)],
         mean=False),
    dict(data="Fashion-MNIST, 12 epochs, final fit", recipe="the same on all 60,000 training images",
         model=V11_MODEL, runs=["fmnist-12ep-final-s0", "fmnist-12ep-final-s1", "fmnist-12ep-final-s2"],
         show=[("test", ["flip"])]),
    dict(data="CIFAR-10, 40 epochs, final fit", recipe="the same on all 45,000 non-holdout images for 40 epochs "
                                                       "(the 45 epochs' number of steps)",
         model="v1.1 (pools after conv1, fire3, fire5), small stem, BN, simple bypass",
         runs=["cifar10-40ep-pad2-final", ("4 px crops", "cifar10-40ep-pad4-final-s0"),
               ("4 px crops, `--seed 1`", "cifar10-40ep-pad4-final-s1")], show=[("holdout", CIFAR_V1)]),
]


def _scores(run: dict, show: list, first: bool) -> str:
    parts = []
    for j, (split, views) in enumerate(show):
        found = [(v, score(run, split, v)) for v in views]
        found = [(v, x) for v, x in found if x is not None]
        if not found and split == "val":
            best = epoch_score(run, "best")
            if best:
                found = [("best epoch, " + best["views"], best["top1"])]
        if not found:
            continue
        (v0, x0), rest = found[0], found[1:]
        where = SPLIT[split] if (first and j == 0) else ("holdout" if split == "holdout" else split)
        head = f"**{x0:.2f}% {where}**" if j == 0 else f"{x0:.2f}% {where}"
        parts.append(head + f" ({v0}" + "".join(f"; {x:.2f}% {v}" for v, x in rest) + ")")
    return ", ".join(parts)


def accuracy_cell(runs: list[tuple[str, dict]], show: list, mean: bool = True) -> str:
    out = []
    for i, (label, r) in enumerate(runs):
        text = _scores(r, show, i == 0)
        if text:
            out.append(text if i == 0 else f"{label}: {text}")
    split, views = show[0]
    primary = [score(r, split, views[0]) for _, r in runs] if views and mean else []
    primary = [x for x in primary if x is not None]
    if len(primary) > 1 and len(primary) == len(runs):
        out.append(f"mean of the {COUNT.get(len(primary), len(primary))}: {sum(primary) / len(primary):.2f}%")
    return "; ".join(out)


def _speed(r: dict) -> str:
    if r["epochs_worth"] is not None:
        return f"{r['epochs_worth']} epochs' worth at {r['images_per_s']:,.0f} img/s"
    return f"{r['epochs']} epochs at {r['images_per_s']:,.0f} img/s"


def time_cell(runs: list[tuple[str, dict]]) -> str:
    timed = [(label, r) for label, r in runs if r["images_per_s"] is not None]
    if not timed:
        return ""
    label0, r0 = timed[0]
    budget = (r0["config"] or {}).get("time_budget")
    seconds = f"{r0['train_seconds']:,.0f} s"
    head = f"{seconds} of training" if budget else f"{seconds} of epochs"
    details = [_speed(r0) if budget else f"{r0['train_seconds'] / 60:.1f} min, {_speed(r0)}"]
    for label, r in timed[1:]:
        same = abs(r["train_seconds"] - r0["train_seconds"]) < 5
        details.append(f"{label}: " + ("" if same else f"{r['train_seconds']:,.0f} s, ") + _speed(r))
    text = f"{head} ({'; '.join(details)})"
    if r0.get("wall_min"):
        wall = r0["wall_min"]
        text += f", {wall * 60:.0f} s wall" if wall < 5 else f", {wall} min from start to last checkpoint"
        if (r0["config"] or {}).get("val_fraction"):
            text += " (per-epoch validation included)"
    return text


def command_cell(r: dict, show: list) -> str:
    if not r["command"]:
        return f"not reproducible with today's flags ({r.get('command_note', 'no command recorded')})"
    out = re.search(r"--out (\S+)", r["command"])
    data = re.search(r"--data-dir (\S+)", r["command"])
    split = "test" if show[0][0] in ("test", "holdout") or len(show) > 1 else "val"
    ev = f"squeezenet eval {out.group(1) if out else 'RUN'}" + (f" --data-dir {data.group(1)}" if data else "")
    ev += f" --split {split}"
    views = show[0][1][0] if show[0][1] else None
    shift = int(views.split()[2]) if views and views.startswith("6 views") else 0
    recorded = (r["config"] or {}).get("tta_shift") or 0
    if r["config"] and (r["config"].get("tta") and shift != recorded):
        ev += f" --tta-shift {shift}"
    return f"`{r['command']}` then `{ev}`"


def all_results(runs: list[dict]) -> str:
    index = by_id(runs)
    rows = []
    for spec in ALL_RESULTS:
        members = []
        for item in spec["runs"]:
            label, rid = item if isinstance(item, tuple) else (None, item)
            r = index[rid]
            members.append((label or seed_label(r), r))
        r0 = members[0][1]
        rows.append([spec["data"], spec["recipe"], spec["model"], f"{r0['params']:,}" if r0["params"] else "",
                     accuracy_cell(members, spec["show"], spec.get("mean", True)), time_cell(members),
                     command_cell(r0, spec["show"]),
                     ids([r for _, r in members])])
    return md_table(["data set", "recipe", "model", "params", "accuracy", "training time", "command", "runs"], rows)


# ----------------------------------------------------------------------------- CIFAR-10 budget runs
COMPARED = ("optimizer", "squeeze_ratio", "pool_after", "stem_channels", "crop_pad", "erase", "ema",
            "progressive_resize", "dropout")
BUDGET_VIEWS = [("val", "6 views 2 px"), ("val", "6 views 1 px"), ("val", "flip"),
                ("holdout", "6 views 2 px"), ("holdout", "6 views 1 px"), ("holdout", "flip")]


def cifar10_budget(runs: list[dict]) -> str:
    recipe = RECIPES["cifar10"]
    rows = []
    for r in sorted((r for r in runs if r["group"] == "cifar10-budget"), key=lambda r: r["id"]):
        cfg = r["config"]
        change = {k: value(cfg, k) for k in COMPARED if value(cfg, k) != value(recipe, k)}
        text = ", ".join(f"{k} {v}" for k, v in change.items()) or "(the recipe now)"
        if cfg["val_fraction"] == 0:
            text += "; final fit, no val split"
        if cfg["seed"]:
            text += f"; seed {cfg['seed']}"
        acc = [score(r, s, v) for s, v in BUDGET_VIEWS]
        rows.append([f"`{r['id']}`", text, r["epochs_worth"], f"{r['images_per_s']:.0f}", f"{r['train_acc_last']:.1f}",
                     *("" if x is None else f"{x:.2f}" for x in acc)])
    return md_table(["run", "change from the recipe now", "epochs' worth", "img/s", "train acc",
                     *(f"{s} {v}" for s, v in BUDGET_VIEWS)], rows)


# ----------------------------------------------------------------------------- ablations
GPU_BASE = {"cifar10": "h200-cifar10", "fashion-mnist": "h200-fmnist-lr0.2"}


def curve(run: dict) -> list[dict]:
    return [json.loads(x) for x in (RUNS.parent / run["curve"]).read_text().splitlines() if x.strip()]


def ablation_gpu(runs: list[dict], recipe: str) -> str:
    """Full-length runs of the recipe of its date on the lent H200, one change each; a row cut short
    by the sweep's deadline is compared with the base at the same epoch (same schedule length, so
    the same learning rate at that point)."""
    index = by_id(runs)
    base = index[GPU_BASE[recipe]]
    base_val = epoch_score(base)["top1"]
    rows = []
    for r in runs:
        if not r["group"].startswith("gpu-sweep") or r["recipe"] != recipe or not r["epochs"] or \
                r.get("sweep_row") == "alone":
            continue
        n, total, val = r["epochs"], r["schedule_epochs"], epoch_score(r)["top1"]
        if n == total:
            delta = "" if r is base else f"{val - base_val:+.2f}"
            if total != base["schedule_epochs"]:
                delta += f" (longer: {total} vs {base['schedule_epochs']} epochs)"
            rows.append([r["sweep_row"], total, f"{val:.2f}", delta, f"{r['train_acc_last']:.2f}", f"`{r['id']}`"])
        elif total != base["schedule_epochs"]:  # another schedule length: no like-for-like point
            rows.append([f"{r['sweep_row']} (stopped by the deadline at epoch {n} of {total})", f"{n}/{total}",
                         f"{val:.2f} at epoch {n}", "not comparable mid-schedule", f"{r['train_acc_last']:.2f}",
                         f"`{r['id']}`"])
        else:
            ref = curve(base)[n - 1]["val_acc"]
            rows.append([f"{r['sweep_row']} (stopped by the deadline at epoch {n} of {total})", f"{n}/{total}",
                         f"{val:.2f} at epoch {n}",
                         f"{val - ref:+.2f} vs base at epoch {n} ({ref:.2f}); mid-schedule, noisy",
                         f"{r['train_acc_last']:.2f}", f"`{r['id']}`"])
    return md_table(["row", "epochs", "val top-1", "vs base", "train acc (augmented)", "run"], rows)


def ablation_cpu_fashion_mnist(runs: list[dict]) -> str:
    """The 12-epoch Fashion-MNIST recipe with one change per row, full length on the 2-core CPU."""
    base = by_id(runs)["fmnist-12ep"]
    base_val = epoch_score(base)["top1"]
    sweep = [r for r in runs if r["group"] == "fashion-mnist-12ep" and r.get("sweep")]
    sweep.sort(key=lambda r: "seed" in r["change"])  # the seed rows, scored on other splits, last
    rows = [["fashion-mnist recipe (the results-table run)", base["epochs"], f"{base_val:.2f}", "",
             f"{base['train_acc_last']:.2f}", f"`{base['id']}`"]]
    for r in sweep:
        val = epoch_score(r)["top1"]
        label = r.get("note") or r["sweep_row"]
        test = score(r, "test", "flip")
        if test is not None:
            label += f"; test {test:.2f}%"
        delta = f"{val - base_val:+.2f}"
        if "seed" in r["change"]:
            delta = f"({delta}, other split)"
        rows.append([label, r["epochs"], f"{val:.2f}", delta, f"{r['train_acc_last']:.2f}", f"`{r['id']}`"])
    return md_table(["row", "epochs", "val top-1", "vs recipe", "train acc (augmented)", "run"], rows)


def screen_cifar10(runs: list[dict]) -> str:
    """airbench's tricks screened at 8 epochs: val top-1 after epoch 1 and after epoch 8."""
    screen = [r for r in runs if r["group"] == "cifar10-screen-8ep"]
    base = by_id(runs)["cifar10-8ep"]
    base_val = epoch_score(base)["top1"]
    rows = []
    for r in [base] + [r for r in screen if r is not base]:
        val = epoch_score(r)["top1"]
        rows.append([r.get("note") or r["sweep_row"], f"{epoch_score(r, 1)['top1']:.2f}", f"{val:.2f}",
                     "" if r is base else f"{val - base_val:+.2f}", f"`{r['id']}`"])
    return md_table(["row", "val top-1 after epoch 1", "after epoch 8", "vs recipe", "run"], rows)


# ----------------------------------------------------------------------------- the README's table
def _protocol(r: dict) -> tuple:
    cfg = r["config"] or {}
    return (-(cfg.get("time_budget") or 0), bool(cfg.get("val_fraction")))


def readme(runs: list[dict]) -> str:
    """One row per recipe now and way of running it (final fit or validation split, budget): every
    run whose settings are the recipe's, with each evaluation's scores and their mean."""
    rows = []
    for recipe in ("shapes", "fashion-mnist", "cifar10"):
        want = RECIPES[recipe]
        budgets = {want.get("time_budget"), *EXTRA_BUDGETS.get(recipe, ())}
        mine = [r for r in runs if matches_recipe(r, recipe) and
                (r["config"] is None or r["config"].get("time_budget") in budgets)]
        for key in sorted({_protocol(r) for r in mine}):
            group = [r for r in mine if _protocol(r) == key]
            group.sort(key=lambda r: ((r["config"] or {}).get("seed", 0), r["id"]))
            cfg = group[0]["config"] or {}
            budget = cfg.get("time_budget")
            what = [DATASET[recipe]]
            if budget:
                what.append(f"{budget / 60:g} minutes")
            what.append("with a validation split" if cfg.get("val_fraction") else
                        "final fit" if cfg else "")
            settings = sorted({(e["split"], e["views"]) for r in group for e in r["evals"] if "epoch" not in e},
                              key=lambda sv: (("holdout", "test", "val").index(sv[0]), sv[1] != _views(want),
                                              sv[1]))
            acc = []
            for split, views in settings:
                xs = [score(r, split, views) for r in group]
                got = [x for x in xs if x is not None]
                text = f"{split} {views}: " + ", ".join("-" if x is None else f"{x:.2f}" for x in xs)
                if len(got) > 1:
                    text += f" (mean {sum(got) / len(got):.2f})"
                acc.append(text)
            if not acc:
                best = [epoch_score(r, "best") for r in group]
                acc = ["val (best epoch): " + ", ".join(f"{e['top1']:.2f}" for e in best if e)]
            seconds = sorted(r["train_seconds"] for r in group)
            worth = [r["epochs_worth"] for r in group if r["epochs_worth"] is not None]
            time = f"{seconds[0]:,.0f} s" + (f" to {seconds[-1]:,.0f} s" if seconds[-1] - seconds[0] >= 5 else "")
            if worth:
                time += f" ({min(worth)}-{max(worth)} epochs' worth)" if len(set(worth)) > 1 else \
                    f" ({worth[0]} epochs' worth)"
            rows.append([", ".join(w for w in what if w), f"`{recipe}`",
                         f"{cfg.get('image_size') or want.get('image_size')} px",
                         f"{group[0]['params']:,}" if group[0]["params"] else "", "; ".join(acc), time,
                         "; ".join(sorted({r["machine"] for r in group})), f"`{group[0]['command']}`", ids(group)])
    return md_table(["data set", "recipe", "resolution", "params", "accuracy (top-1 %, runs in seed order)",
                     "training time", "machine", "command", "runs"], rows)


def readme_short(runs: list[dict]) -> str:
    """The README's summary: each recipe's final fits (and CIFAR-10's 30-minute one), scored with
    the recipe's own test-time views on the test images, mean over seeds."""
    rows = []
    for recipe in ("shapes", "fashion-mnist", "cifar10", "folder"):
        want = RECIPES[recipe]
        budgets = {want.get("time_budget"), *EXTRA_BUDGETS.get(recipe, ())}
        mine = [r for r in runs if matches_recipe(r, recipe) and (r["config"] is None or (
            r["config"].get("time_budget") in budgets and not r["config"].get("val_fraction")))]
        for budget in sorted({(r["config"] or {}).get("time_budget") or 0 for r in mine}, reverse=True):
            group = sorted((r for r in mine if ((r["config"] or {}).get("time_budget") or 0) == budget),
                           key=lambda r: ((r["config"] or {}).get("seed", 0), r["id"]))
            split = next((sp for sp in ("holdout", "test") if any(e["split"] == sp for r in group
                                                                  for e in r["evals"])), None)
            xs = [x for x in (score(r, split, _views(want)) for r in group) if x is not None] if split else []
            if not xs:
                continue
            acc = f"**{sum(xs) / len(xs):.2f}%**" + (f" (mean of {len(xs)}: " + ", ".join(f"{x:.2f}" for x in xs)
                                                      + ")" if len(xs) > 1 else "")
            cfg = group[0]["config"] or {}
            name = DATASET.get(recipe) or ("Imagewoof" if "imagewoof" in str(cfg.get("data_dir")) else "photos")
            what = f"{name}, {split if split != 'holdout' else '5,000-image holdout'}"
            if name == "Imagewoof":  # its val/ folder is the test set: the recipe was chosen inside train/
                what = "Imagewoof, val/ (3,929 photos)"
            time = f"{budget / 60:g} min" if budget else f"{group[0]['train_seconds']:,.0f} s"
            rows.append([what, f"`{recipe}`", f"{cfg.get('image_size') or want.get('image_size')} px",
                         f"{group[0]['params']:,}" if group[0]["params"] else "", acc, time,
                         group[0]["machine"], f"`{group[0]['command']}`"])
    return md_table(["data set, scored on", "recipe", "input", "params", "top-1", "training",
                     "machine", "command"], rows)


def photos(runs: list[dict]) -> str:
    """Imagewoof: the folder recipe's screening rows (16-20 epochs on 8,123 images, val = 902
    images carved from train/) and its budgeted final fits (every train/ image, scored once on val/,
    the test set)."""
    rows = []
    for r in (r for r in runs if r["group"] in ("imagewoof-screen", "imagewoof-final")):
        final = r["group"] == "imagewoof-final"
        e = None if final else epoch_score(r, "last")
        test = score(r, "test", "flip") if final else None
        cfg = r["config"] or {}
        rows.append([f"`{r['id']}`", r.get("note") or "", f"{cfg.get('image_size')} px",
                     f"{r['epochs_worth'] or r['epochs']}", f"{r['images_per_s']:,.0f}" if r["images_per_s"] else "",
                     f"{e['top1']:.2f}" if e else "", f"**{test:.2f}**" if test is not None else "",
                     f"{r['train_seconds']:,.0f} s", f"`{r['command']}`"])
    return md_table(["run", "what", "input", "epochs", "img/s", "val top-1 (flip, last epoch)",
                     "test top-1 (val/, flip)", "training", "command"], rows)


SPEED = HERE / "results" / "speed"
NOT_MEASURED = "(not measured on this commit: run the command in the note above)"


def _speed_file(name: str) -> dict | None:
    p = SPEED / name
    return json.loads(p.read_text()) if p.is_file() else None


def _from_targets(table, name: str = "targets.json"):
    """A table made from speed/``name`` (a run of targets.py), closed by the machine and the command
    that measured it."""
    def make(_runs: list[dict]) -> str:
        t = _speed_file(name)
        if t is None:
            return NOT_MEASURED
        return table(t).replace("{machine}", f"{t['cpu']}, {t['threads']} threads: `{t['command']}`")
    return make


def deploy(t: dict) -> str:
    """Every target of one trained checkpoint, from one run of benchmarks/targets.py."""
    rows = []
    for name, r in t["rows"].items():
        s = t["speed"].get(name)
        p50 = s["b1"]["p50_ms"] if s else r.get("p50_ms_b1")
        file = r["file"] if r["file"].startswith("site/") else Path(r["file"]).name
        size = f"{r['bytes'] / 1e6:.2f} MB"
        if "bytes_runtime" in r:
            size += f" ({r['bytes_model'] / 1e6:.2f} model + {r['bytes_runtime'] / 1e6:.2f} runtime)"
        rows.append([name, f"`{file}`", size, f"{r['top1']:.2f}% ({r['agreement']:.2f}%, {r['eval_count']:,} images)",
                     f"{p50:.2f}", f"{s['b32']['images_per_s']:,.0f}" if s else "-"])
    head = ["target", "file", "size", "top-1 (agreement with PyTorch)", "p50 ms, batch 1", "img/s, batch 32"]
    return md_table(head, rows) + "\n\n{machine}"


def deploy_defaults(t: dict) -> str:
    """The default runtime of predict/serve (auto) against the fastest measured, batch 1 and 32."""
    rows = []
    for model, d in t["default_runtime"].items():
        for b in ("b1", "b32"):
            r = d[b]
            ips = r["images_per_s"]
            rows.append([model, b[1:], f"{d['chosen']}", f"{ips['default (auto)']:,.0f}",
                         f"{r['fastest']} {ips[r['fastest']]:,.0f}", f"**{r['ratio_vs_fastest']:.2f}x**",
                         f"{r['ratio_vs_fastest_allowed']:.2f}x"])
    head = ["model", "batch", "default chose", "default img/s", "fastest measured, img/s", "default / fastest",
            "default / fastest it may choose"]
    return md_table(head, rows) + "\n\n{machine}"


SERVED = (("serve-cifar10", "CIFAR-10 recipe, 32 px"),
          ("serve-cifar10-wrk", "CIFAR-10 recipe, 32 px, load from wrk"),
          ("serve-cifar10-16", "CIFAR-10 recipe, 32 px"),
          ("serve-v11-224", "v1.1 at 224 px, random weights"),
          ("serve-iw-v11-224", "v1.1 at 224 px, trained"),
          ("serve-iw-photo", "photo recipe, 128 px, trained"))


def deploy_serve(_runs: list[dict], suffix: str = "") -> str:
    """benchmarks/serve_load.py: the service under load against bench on the same runtime
    (speed/serve-*``suffix``.json: one machine's runs)."""
    rows, measured = [], []
    for name, label in SERVED:
        r = _speed_file(f"{name}{suffix}.json")
        if r is None:
            continue
        measured.append(r)
        s = r["serve"]
        b = str(max(1, round(s["mean_batch"])))
        cpu = s["server_cpu_seconds"]
        rows.append([label, s["runtime"], str(s["images_per_request"]),
                     f"{s['requests']:,} at concurrency {r['concurrency']}", str(s["failures"]),
                     f"{s['p50_ms']:.1f} / {s['p95_ms']:.1f}", f"{s['mean_batch']:.1f}",
                     f"{cpu:.1f} (decoding {100 * s['decode_seconds'] / cpu:.0f}%, model "
                     f"{100 * s['inference_seconds'] / cpu:.0f}%)", f"{s['images_per_s']:,.0f}",
                     f"{r['bench'][b]['images_per_s']:,.0f} (batch {b})", f"**{r['serve_vs_bench'][b]:.2f}x**"])
    if not rows:
        return NOT_MEASURED
    head = ["model", "runtime", "images per request", "requests", "failures", "p50 / p95 ms", "mean batch",
            "server CPU s", "served img/s", "bench img/s, same runtime", "serve / bench"]
    return md_table(head, rows) + f"\n\n{measured[0].get('machine', 'this machine')}: " + "; ".join(
        f"`{r['command']}`" for r in measured)


ENGINE = "engine-targets-epyc.json"  # one run of benchmarks/engine_targets.py
ENGINE_ROWS = ("PyTorch fp32", "C native fp32", "C native int8", "C native int8 weights, fp32 math",
               "C native codebook", "browser engine fp32", "browser engine int8", "browser engine codebook",
               "browser onnxruntime-web fp32", "browser onnxruntime-web int8", "LiteRT fp32 (.tflite)",
               "LiteRT int8 (.tflite)")


def _engine(table):
    def make(_runs: list[dict]) -> str:
        t = _speed_file(ENGINE)
        if t is None:
            return NOT_MEASURED
        return table(t) + f"\n\n{t['cpu']}, {t['date']}: `{t['command']}`"
    return make


ENGINE_SHORT = tuple(r for r in ENGINE_ROWS if r not in ("C native int8 weights, fp32 math",
                                                         "browser onnxruntime-web int8"))


def engine_targets(t: dict, names=ENGINE_ROWS) -> str:
    """The C engine, the page and LiteRT beside PyTorch, per data set: size (gzip), top-1 and agreement, p50."""
    models = t["models"]
    head = ["target"]
    for name, m in models.items():
        head += [f"{name} ({m['input_size']} px): size (gzip)", "top-1 (agreement)", "p50 ms"]
    rows = []
    for row in names:
        if not any(row in m["rows"] for m in models.values()):
            continue
        cells = [row]
        for m in models.values():
            r = m["rows"].get(row)
            if r is None:
                cells += ["-", "-", "-"]
                continue
            cells += [f"{r['bytes'] / 1e6:.3f} MB ({r['bytes_gzip'] / 1e6:.3f})",
                      f"{r['top1']:.2f}% ({r['agreement']:.2f}%)", f"{r['p50_ms_b1']:.2f}" if "p50_ms_b1" in r else "-"]
        rows.append(cells)
    return md_table(head, rows)


def engine_page(t: dict) -> str:
    """Everything each page loads, gzip-compressed, and the part that is not the model."""
    rows = []
    for name, m in t["models"].items():
        for page, r in m["page_transfer"].items():
            model = sum(v for k, v in r["files"].items() if k.startswith("model."))
            rows.append([name, page.removeprefix("browser "), f"{r['bytes_gzip'] / 1e6:.3f} MB",
                         f"{model / 1e6:.3f} MB", f"{(r['bytes_gzip'] - model) / 1e3:.1f} KB",
                         ", ".join(sorted(r["files"]))])
    return md_table(["model", "page", "loads (gzip)", "of which the model", "the rest", "files"], rows)


def engine_ram(t: dict) -> str:
    """export --format c --precision int8 of a 10-class v1.1: RAM and flash, stated and measured."""
    rows = [[f"{r['input_size']} px", f"{r['ram_bytes']:,}", f"{r['arena_bytes']:,}", f"{r['stack_bytes']:,}",
             f"{r['ram_high_water']:,}", f"{r['flash_bytes']:,}", f"{r['model_bytes']:,}",
             f"{r['code_bytes']:,} ({r['code_target']})",
             f"{r['check']['top1_engine']:.2f}% ({r['check']['top1_pytorch']:.2f}%)"] for r in t.get("ram", [])]
    return md_table(["input", "RAM bytes", "arena (input + activations)", "stack (bound)", "arena high-water, run",
                     "flash bytes", "model", "engine code", "top-1 int8 (fp32)"], rows)


def compress_sweep(_runs: list[dict]) -> str:
    """compress on a validation split: file size against top-1 lost (results/compress/*-val-*.json)."""
    rows = []
    for path in sorted((HERE / "results" / "compress").glob("cifar10-val-*.json")):
        r = json.loads(path.read_text())
        rows.append([f"{r['out'].split('/s')[-1].split('-b')[0]}", str(r["bits"]), str(r["finetune_steps"]),
                     f"{100 * r['sparsity']:.1f}%", f"{r['bytes_compressed'] / 1e3:.0f} KB",
                     f"{r['bytes_gzip'] / 1e3:.0f} KB", f"{r['top1_before']:.2f}%", f"{r['top1_after']:.2f}%",
                     f"{r['top1_drop']:+.2f}"])
    rows.sort(key=lambda row: float(row[4].split()[0]))
    return md_table(["--sparsity", "--bits", "--steps", "weights zero", "file", "gzip", "val top-1 before",
                     "after", "lost"], rows) if rows else NOT_MEASURED


def serve_soak(name: str) -> str:
    """benchmarks/serve_soak.py and serve_hardened.py: capacity, a soak at 80% of it, an overload
    at 3x; the shutdown under load, try after try."""
    r = _speed_file(f"{name}.json")
    if r is None:
        return NOT_MEASURED

    def ms(d, key):
        return " / ".join(f"{d[key][q]:,.0f}" for q in ("p50", "p99", "max")) if key in d else "-"

    def statuses(d):
        return ", ".join(f"{k}: {v:,}" for k, v in sorted(d["statuses"].items()))
    cap = max(r["capacity_by_connections"], key=lambda c: r["capacity_by_connections"][c])
    rows = []
    for phase, label, offered in ((f"capacity_{cap}", f"capacity: closed loop, {cap} connections", "-"),
                                  ("soak", "soak", f"{r['soak']['offered_valid_img_s']:,.0f} img/s (80%)"),
                                  ("overload", "overload", f"{r['overload']['offered_img_s']:,.0f} img/s (3x)")):
        p = r[phase]
        extra = ""
        if phase == "soak":
            growth = ", ".join(f"{100 * g:+.1f}%" for g in p["rss_growth"].values())
            slow = p["slowloris"]
            extra = (f"; bad uploads {statuses(p['bad'])}; 11 MB bodies {statuses(p['oversize'])}; slowloris "
                     f"connections cut {slow.get('cut', 0):,} times (after {slow.get('cut_after_s_max', 0)} s "
                     f"at most); worker RSS from 60 s to the end {growth}")
        elif phase == "overload":
            extra = f"; {p['vs_capacity']:.2f}x capacity"
        rows.append([label, f"{p['seconds']:,.0f}", offered, f"{p['valid']['per_s_200']:,.1f}",
                     statuses(p["valid"]) + extra, ms(p["valid"], "ms_200"), ms(p["valid"], "ms_503"),
                     f"{p['server_cpu_s']:,.0f} / {p['client_cpu_s']:,.0f} / {p['other_cpu_s']:,.0f}"])
    head = ["phase", "seconds", "offered", "answered 200, img/s", "valid images' answers", "200 ms p50 / p99 / max",
            "503 ms p50 / p99 / max", "CPU s: service / client / other"]
    text = md_table(head, rows) + f"\n\n{r['machine']}, {r['cores']} cores, {r['service']['workers']} workers " \
        f"({r['service']['runtime']}): `{r['command']}`"
    h = _speed_file("serve-hardened-epyc.json" if name.endswith("-epyc") else "serve-hardened.json")
    if h is not None:
        text += "\n\nShutdown under load: " + "; ".join(
            f"{rt} {v['tries'] - v['failed']} of {v['tries']} tries passed (stopped within {v['max_stopped_s']:.1f} s "
            f"of SIGTERM)" for rt, v in h["runtimes"].items()) + f", `{h['command']}`"
    return text


def _views(recipe: dict) -> str:
    if not recipe.get("tta"):
        return "one"
    return f"6 views {recipe['tta_shift']} px" if recipe.get("tta_shift") else "flip"


TABLES = {
    "all-results": all_results,
    "cifar10-budget": cifar10_budget,
    "ablation-gpu-fashion-mnist": lambda runs: ablation_gpu(runs, "fashion-mnist"),
    "ablation-gpu-cifar10": lambda runs: ablation_gpu(runs, "cifar10"),
    "ablation-cpu-fashion-mnist": ablation_cpu_fashion_mnist,
    "screen-cifar10-8ep": screen_cifar10,
    "readme": readme,
    "readme-short": readme_short,
    "photos": photos,
    "deploy": _from_targets(deploy),
    "deploy-defaults": _from_targets(deploy_defaults),
    "deploy-serve": deploy_serve,
    # the same measurements on a 2-core AMD EPYC with AVX2 only (no AVX-512, VNNI or bf16)
    "deploy-epyc": _from_targets(deploy, "targets-epyc.json"),
    "deploy-defaults-epyc": _from_targets(deploy_defaults, "targets-epyc.json"),
    "deploy-serve-epyc": lambda runs: deploy_serve(runs, "-epyc"),
    "engine-targets": _engine(engine_targets),
    "engine-targets-short": _engine(lambda t: engine_targets(t, ENGINE_SHORT)),
    "engine-page": _engine(engine_page),
    "engine-ram": _engine(engine_ram),
    "compress-sweep": compress_sweep,
    "serve-soak-epyc": lambda runs: serve_soak("serve-soak-iw-photo-epyc"),
}
SECTION = re.compile(r"(<!-- table:(?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


def render(text: str, runs: list[dict]) -> str:
    """``text`` with every marked section replaced by the table runs.jsonl gives now."""
    def fill(m: re.Match) -> str:
        name = m.group("name")
        if name not in TABLES:
            raise SystemExit(f"{RESULTS_MD.name}: unknown table {name!r} (known: {', '.join(TABLES)})")
        return f"{m.group(1)}{TABLES[name](runs)}\n{m.group(4)}"

    return SECTION.sub(fill, text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=", ".join(TABLES))
    p.add_argument("--table", choices=TABLES, help="print only this table")
    p.add_argument("--runs", type=Path, default=RUNS)
    p.add_argument("--results-md", type=Path, default=RESULTS_MD)
    p.add_argument("--readme", type=Path, default=HERE.parent / "README.md")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if the tables in RESULTS.md or the README are stale")
    mode.add_argument("--write", action="store_true", help="rewrite the tables in RESULTS.md and the README")
    args = p.parse_args(argv)
    runs = load_runs(args.runs)
    if args.check or args.write:
        status = 0
        for doc in (args.results_md, args.readme, args.readme.parent / "docs" / "deploy.md"):
            old = doc.read_text()
            new = render(old, runs)
            if args.write:
                if new != old:
                    doc.write_text(new)
                print(f"{doc}: {len(SECTION.findall(new))} tables {'rewritten' if new != old else 'up to date'}")
            elif new != old:
                stale = [m.group("name") for m, n in zip(SECTION.finditer(old), SECTION.finditer(new))
                         if m.group(0) != n.group(0)]
                print(f"{doc}: stale tables {', '.join(stale)}: run python benchmarks/tables.py --write",
                      file=sys.stderr)
                status = 1
        return status
    for name in [args.table] if args.table else TABLES:
        print(f"{name}:\n\n{TABLES[name](runs)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
