"""Run many full-length training configurations side by side and collect their validation curves:
the recipe search and the one-change-per-row ablation, each row a real `squeezenet train` run.

Every row is the named recipe with one or a few values changed, trained for the recipe's own
number of epochs (not its time budget: rows that share a machine get no fixed share of it) on a
validation split carved from the training data (CIFAR-10: 5,000 of the 45,000 non-holdout images;
Fashion-MNIST: 10%; the CIFAR-10 holdout and the Fashion-MNIST test set are never read here). Rows
run as separate processes, ``--workers`` at a time, so a GPU that one small model cannot fill
trains several; the per-epoch seconds of rows that ran side by side are therefore not speeds (the
`--alone` run, and the CPU runs, are).

    # on a lent GPU:
    python benchmarks/sweep.py --cifar-dir D --fmnist-dir F --device cuda --workers 6 \\
        --deadline 300 --alone --record gpu-sweep --runs-jsonl OUT/runs.jsonl
    # a quick check of the machinery on a CPU:
    python benchmarks/sweep.py --rows 0,1 --workers 1 --extra="--train-size 600 --epochs 1"

``--out`` (default benchmarks/out/sweep.json, not kept in git) gets every row's curve and status;
``--record GROUP`` also appends each row that finished an epoch to benchmarks/results/runs.jsonl
(benchmarks/record.py; ``--runs-jsonl`` elsewhere), as run ``GROUP-<row name>`` of group GROUP,
which is where benchmarks/tables.py and benchmarks/RESULTS.md read results from.

``--alone`` then picks the CIFAR-10 row that reached 90% val with the fewest epochs (else the best
row at the recipe's length), runs it again with nothing beside it, and records its time-to-90%
(wall clock from process start, data loading included) and its holdout accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import record  # noqa: E402

from squeezenet.recipes import RECIPES  # noqa: E402

# (name, recipe, change). Order = priority: under a deadline the first rows finish first.
ROWS: list[tuple[str, str, dict]] = [
    ("cifar10 recipe", "cifar10", {}),
    ("fashion-mnist recipe", "fashion-mnist", {}),
    ("fashion-mnist lr 0.2", "fashion-mnist", {"lr": 0.2}),
    ("cifar10 dropout 0", "cifar10", {"dropout": 0.0}),
    ("fashion-mnist lr 0.2, dropout 0", "fashion-mnist", {"lr": 0.2, "dropout": 0.0}),
    ("cifar10 lr 0.4", "cifar10", {"lr": 0.4}),
    ("fashion-mnist lr 0.2, dropout 0, no label smoothing", "fashion-mnist",
     {"lr": 0.2, "dropout": 0.0, "label_smoothing": 0.0}),
    ("cifar10 90 epochs", "cifar10", {"epochs": 90}),
    ("fashion-mnist lr 0.1, dropout 0", "fashion-mnist", {"lr": 0.1, "dropout": 0.0}),
    ("cifar10 - simple bypass", "cifar10", {"bypass": "none"}),
    ("cifar10 - label smoothing", "cifar10", {"label_smoothing": 0.0}),
    ("fashion-mnist lr 0.2, dropout 0, flip only", "fashion-mnist",
     {"lr": 0.2, "dropout": 0.0, "augment": "flip"}),
    ("cifar10 - crop+flip augmentation", "cifar10", {"augment": "none"}),
    ("cifar10 + EMA 0.999", "cifar10", {"ema": 0.999}),
    ("cifar10 dropout 0.2, lr 0.4", "cifar10", {"dropout": 0.2, "lr": 0.4}),
    ("cifar10 - zero init of bypassed Fire BN", "cifar10", {"zero_init_residual": False}),
    ("cifar10 + final ReLU (paper)", "cifar10", {"final_relu": True}),
    ("cifar10 - BatchNorm (paper; lr 0.04)", "cifar10", {"batch_norm": False, "final_relu": True, "lr": 0.04}),
    ("cifar10 - small-input stem", "cifar10", {"small_input": False}),
    ("cifar10 batch 512, lr 0.4", "cifar10", {"batch_size": 512, "lr": 0.4}),
    ("cifar10 complex bypass", "cifar10", {"bypass": "complex"}),
    ("cifar10 - bf16 autocast (fp32)", "cifar10", {"amp": "off"}),
    ("cifar10 cosine schedule", "cifar10", {"schedule": "cosine"}),
    ("fashion-mnist lr 0.2, dropout 0, complex bypass", "fashion-mnist",
     {"lr": 0.2, "dropout": 0.0, "bypass": "complex"}),
    ("cifar10 150 epochs", "cifar10", {"epochs": 150}),
    # Fashion-MNIST ablation around lr 0.2 (rows 25-): each the recipe with one thing changed.
    ("fashion-mnist lr 0.2, 20 epochs", "fashion-mnist", {"lr": 0.2, "epochs": 20}),
    ("fashion-mnist lr 0.2 - simple bypass", "fashion-mnist", {"lr": 0.2, "bypass": "none"}),
    ("fashion-mnist lr 0.2 - label smoothing", "fashion-mnist", {"lr": 0.2, "label_smoothing": 0.0}),
    ("fashion-mnist lr 0.2, flip only (no crop)", "fashion-mnist", {"lr": 0.2, "augment": "flip"}),
    ("fashion-mnist lr 0.2 - augmentation", "fashion-mnist", {"lr": 0.2, "augment": "none"}),
    ("fashion-mnist lr 0.2, crop without flip", "fashion-mnist", {"lr": 0.2, "augment": "crop-noflip"}),
    ("fashion-mnist lr 0.2 + EMA 0.999", "fashion-mnist", {"lr": 0.2, "ema": 0.999}),
    ("fashion-mnist lr 0.2 - zero init of bypassed Fire BN", "fashion-mnist",
     {"lr": 0.2, "zero_init_residual": False}),
    ("fashion-mnist lr 0.2 + final ReLU (paper)", "fashion-mnist", {"lr": 0.2, "final_relu": True}),
    ("fashion-mnist - BatchNorm (paper; lr 0.04)", "fashion-mnist",
     {"lr": 0.04, "batch_norm": False, "final_relu": True}),
    ("fashion-mnist lr 0.2 - small-input stem", "fashion-mnist", {"lr": 0.2, "small_input": False}),
    ("fashion-mnist batch 512, lr 0.4", "fashion-mnist", {"batch_size": 512, "lr": 0.4}),
    ("fashion-mnist lr 0.2 - bf16 autocast (fp32)", "fashion-mnist", {"lr": 0.2, "amp": "off"}),
    ("fashion-mnist lr 0.2 - flip TTA", "fashion-mnist", {"lr": 0.2, "tta": False}),
    # Around the current fashion-mnist recipe (flip, no dropout, 12 epochs), on the 2-core CPU (rows 39-).
    ("fashion-mnist recipe - simple bypass", "fashion-mnist", {"bypass": "none"}),
    ("fashion-mnist recipe - simple bypass, batch 128, lr 0.1", "fashion-mnist",
     {"bypass": "none", "batch_size": 128, "lr": 0.1}),
    ("fashion-mnist recipe, squeeze ratio 1/6 (967k params)", "fashion-mnist", {"squeeze_ratio": 0.1667}),
    ("fashion-mnist recipe, 14 epochs", "fashion-mnist", {"epochs": 14}),
    # Random erasing (rows 43-): regularisation for the train/val gap (96.4 vs 94.1 on Fashion-MNIST).
    ("fashion-mnist recipe + random erasing 0.5", "fashion-mnist", {"erase": 0.5}),
    ("fashion-mnist recipe + random erasing 0.25", "fashion-mnist", {"erase": 0.25}),
    ("cifar10 recipe + random erasing 0.5", "cifar10", {"erase": 0.5}),
    # Seed-to-seed spread of the recipe itself (rows 46-): what "within noise" means.
    ("fashion-mnist recipe, seed 1", "fashion-mnist", {"seed": 1}),
    ("fashion-mnist recipe, seed 2", "fashion-mnist", {"seed": 2}),
    # Resolution at equal time (rows 48-): 28 -> 32 px gives fire6-9 4x4 maps instead of 3x3 for
    # about 1.4x the multiply-adds, so fewer epochs fit the same 15 minutes.
    ("fashion-mnist recipe at 32 px, 9 epochs", "fashion-mnist", {"image_size": 32, "epochs": 9}),
    ("fashion-mnist recipe at 32 px, 10 epochs", "fashion-mnist", {"image_size": 32, "epochs": 10}),
    # Weaker pad-and-crop (rows 50-): the short runs are capacity-bound (CIFAR-10 ends at 92% augmented
    # train accuracy), and on Fashion-MNIST flip alone beat 4 px crops + flip by 0.8 points.
    ("cifar10 recipe, crop shift 2 px instead of 4 (`--crop-pad 2`)", "cifar10", {"crop_pad": 2}),
    ("fashion-mnist recipe + 1 px crops (`--augment crop --crop-pad 1`)", "fashion-mnist",
     {"augment": "crop", "crop_pad": 1}),
    ("fashion-mnist recipe + 2 px crops (`--augment crop --crop-pad 2`)", "fashion-mnist",
     {"augment": "crop", "crop_pad": 2}),
]
# CPU budgets the recipes must fit (issue 4): CIFAR-10 45 min, Fashion-MNIST 15 min of training.
TARGET = {"cifar10": 90.0, "fashion-mnist": 94.5}


def flags(change: dict) -> list[str]:
    out = []
    for key, value in change.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            out += [flag, str(value)]
    return out


def command(recipe: str, change: dict, out: Path, args) -> list[str]:
    data = {"cifar10": (["--data-dir", args.cifar_dir] if args.cifar_dir else []) + ["--val-fraction", "0.1111"],
            "fashion-mnist": (["--data-dir", args.fmnist_dir] if args.fmnist_dir else []) + ["--val-fraction", "0.1"]}
    # an explicit length in epochs drops the recipe's time budget
    length = [] if "epochs" in change else ["--epochs", str(RECIPES[recipe]["epochs"])]
    return ([sys.executable, "-m", "squeezenet", "train", "--recipe", recipe, *data[recipe], *length,
             "--device", args.device, "--no-progress", "--out", str(out), *flags(change), *shlex.split(args.extra)])


def save_run(row: dict, out: Path, args, evals: list[dict] | None = None) -> None:
    """--record: the row's run directory as one row of runs.jsonl (benchmarks/record.py)."""
    if not args.record or not (out / "metrics.jsonl").is_file() or not (out / "metrics.jsonl").read_text().strip():
        return
    try:
        rid = f"{args.record}-{record.slug(row['row'])}" + ("-alone" if out.parent.name == "alone" else "")
        record.record(out, rid, args.record, evals, command=row["command"], runs=Path(args.runs_jsonl),
                      machine_name=device_name(args.device), sweep=Path(args.out).stem, sweep_row=row["row"],
                      change=row["change"], status=row["status"])
    except SystemExit as e:  # a duplicate id: the row stays in --out
        print(f"not recorded: {e}", file=sys.stderr, flush=True)


def run_row(i: int, row: tuple, args, root: Path, deadline: float) -> dict:
    name, recipe, change = row
    out = root / f"row{i:02d}"
    cmd = command(recipe, change, out, args)
    t0 = time.time()
    epochs_wall: list[float] = []  # wall seconds from process start at the end of each epoch
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    tail: list[str] = []
    timer = threading.Timer(max(1.0, deadline - time.time()), proc.kill)
    timer.start()
    for line in proc.stdout:
        if line.startswith("epoch "):
            epochs_wall.append(round(time.time() - t0, 2))
        tail = (tail + [line.rstrip()])[-6:]
    rc = proc.wait()
    timer.cancel()
    metrics = out / "metrics.jsonl"
    hist = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
    val = [h["val_acc"] for h in hist]
    target = TARGET[recipe]
    reached = next((k for k, v in enumerate(val) if v >= target), None)
    cumulative = 0.0
    train_s = []
    for h in hist:
        cumulative += h["seconds"]
        train_s.append(round(cumulative, 2))
    config = json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else {}
    return {
        "row": name, "recipe": recipe, "change": change, "epochs": config.get("epochs"),
        "status": "done" if rc == 0 else ("stopped at the deadline" if time.time() >= deadline else f"failed rc {rc}"),
        "epochs_done": len(hist), "final_val_acc": val[-1] if val else None,
        "best_val_acc": max(val) if val else None, "train_acc_last": hist[-1]["train_acc"] if hist else None,
        "val_acc_per_epoch": val, "train_seconds_cumulative": train_s, "wall_seconds_at_epoch_end": epochs_wall,
        "target": target, "epoch_reaching_target": None if reached is None else reached + 1,
        "wall_seconds_to_target": None if reached is None or reached >= len(epochs_wall) else epochs_wall[reached],
        "train_seconds_to_target": None if reached is None else train_s[reached],
        "command": " ".join(["squeezenet", *cmd[3:]]), "out": str(out),
        "log_tail": tail if rc != 0 else [],
    }


def run_rows(rows: list[tuple[int, tuple]], args, root: Path, deadline: float, results: list, save) -> None:
    queue = list(rows)
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                if not queue or time.time() >= deadline:
                    return
                i, row = queue.pop(0)
            result = run_row(i, row, args, root, deadline)
            with lock:
                results.append(result)
                save()
                save_run(result, Path(result["out"]), args)
                print(json.dumps({k: result[k] for k in ("row", "status", "epochs_done", "final_val_acc",
                                                          "best_val_acc")}), flush=True)

    threads = [threading.Thread(target=worker) for _ in range(args.workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar-dir", help="CIFAR-10 train/test folders (benchmarks/make_cifar_holdout.py)")
    p.add_argument("--fmnist-dir", help="Fashion-MNIST IDX files (default: the Debian package's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--rows", default="all", help="comma-separated row numbers, or all")
    p.add_argument("--workers", type=int, default=1, help="rows trained at the same time")
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1) // 2), help="CPU threads per row")
    p.add_argument("--deadline", type=float, default=1e9, help="seconds: stop starting and kill rows after it")
    p.add_argument("--alone", action="store_true", help="then rerun the chosen CIFAR-10 row with nothing beside it")
    p.add_argument("--alone-deadline", type=float, default=240.0)
    p.add_argument("--extra", default="", help="flags appended to every row (quick checks)")
    p.add_argument("--runs", help="keep the run directories here (default: a temporary directory)")
    p.add_argument("--out", default="benchmarks/out/sweep.json", help="every row's curve and status")
    p.add_argument("--record", metavar="GROUP", help="also append each row to runs.jsonl as group GROUP")
    p.add_argument("--runs-jsonl", default=str(record.RUNS), help="where --record appends (default: %(default)s)")
    args = p.parse_args()

    chosen = range(len(ROWS)) if args.rows == "all" else [int(i) for i in args.rows.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.runs or tmp)
        root.mkdir(parents=True, exist_ok=True)
        report: dict = {"command": " ".join(["python", "benchmarks/sweep.py", *sys.argv[1:]]),
                        "device": device_name(args.device), "workers": args.workers, "rows": []}

        def save():
            report["rows"].sort(key=lambda r: [x[0] for x in ROWS].index(r["row"]))
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(report, indent=1) + "\n")

        run_rows([(i, ROWS[i]) for i in chosen], args, root, time.time() + args.deadline, report["rows"], save)
        if args.alone:
            row = choose(report["rows"])
            if row is not None:
                i = [x[0] for x in ROWS].index(row["row"])
                alone = run_row(i, ROWS[i], args, root / "alone", time.time() + args.alone_deadline)
                alone["holdout"] = holdout(Path(alone["out"]), args)
                report["alone"] = alone
                if alone["holdout"] and "top1" in alone["holdout"]:
                    save_run(alone, Path(alone["out"]), args, [{"file": str(Path(alone["out"]) / "holdout.json")}])
                print(json.dumps({k: alone[k] for k in ("row", "status", "final_val_acc", "wall_seconds_to_target",
                                                         "holdout")}), flush=True)
        save()


def choose(rows: list[dict]) -> dict | None:
    """The CIFAR-10 row that reached 90% val with the fewest epochs, else the best finished one."""
    cifar = [r for r in rows if r["recipe"] == "cifar10" and r["status"] == "done"]
    hit = [r for r in cifar if r["epoch_reaching_target"] is not None]
    if hit:
        return min(hit, key=lambda r: (r["epochs"], -r["final_val_acc"]))
    at_length = [r for r in cifar if r["epochs"] == min(x["epochs"] for x in cifar)] if cifar else []
    return max(at_length, key=lambda r: r["final_val_acc"], default=None)


def holdout(run: Path, args) -> dict | None:
    """The chosen run's accuracy on the CIFAR-10 holdout (never used to choose anything), also
    written to RUN/holdout.json."""
    if not args.cifar_dir or not (run / "best.safetensors").exists():
        return None
    out = run / "holdout.json"
    r = subprocess.run([sys.executable, "-m", "squeezenet", "eval", str(run),
                        "--data-dir", args.cifar_dir, "--split", "test", "--json", str(out)],
                       capture_output=True, text=True)
    return json.loads(out.read_text()) if r.returncode == 0 else {"error": r.stdout[-500:]}


def device_name(device: str) -> str:
    import torch

    if device != "cpu" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {os.cpu_count()} CPU cores"
    return f"CPU ({os.cpu_count()} cores), torch {torch.__version__}"


if __name__ == "__main__":
    main()
