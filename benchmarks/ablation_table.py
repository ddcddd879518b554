"""The ablation tables (Markdown) from sweep results: each row one full-length training run.

    python benchmarks/ablation_table.py benchmarks/results/sweep_gpu_h200_{1,2}.json

A row cut short by the sweep's deadline is compared with its base run at the same epoch (same
schedule length, so the same learning rate at that point), and marked as such.
"""

import json
import sys

BASE = {"cifar10": "cifar10 recipe", "fashion-mnist": "fashion-mnist lr 0.2"}


def main(paths: list[str]) -> None:
    rows = [r for p in paths for r in json.load(open(p))["rows"]]
    by_name = {r["row"]: r for r in rows}
    for recipe in ("fashion-mnist", "cifar10"):
        base = by_name[BASE[recipe]]
        print(f"\n{recipe}: every row is the `{recipe}` recipe at its full length with the change named "
              f"(validation top-1, flip TTA, one run each; base = {BASE[recipe]!r})\n")
        print("| row | epochs | val top-1 | vs base | train acc (augmented) |")
        print("| --- | --- | --- | --- | --- |")
        for r in (r for r in rows if r["recipe"] == recipe and r["epochs_done"]):
            n, total = r["epochs_done"], r["epochs"]
            if n == total:
                delta = "" if r is base else f"{r['final_val_acc'] - base['final_val_acc']:+.2f}"
                if total != base["epochs"]:
                    delta += f" (longer: {total} vs {base['epochs']} epochs)"
                print(f"| {r['row']} | {total} | {r['final_val_acc']:.2f} | {delta} | {r['train_acc_last']:.2f} |")
            elif total != base["epochs"]:  # another schedule length: no like-for-like point
                print(f"| {r['row']} (stopped by the deadline at epoch {n} of {total}) | {n}/{total} | "
                      f"{r['final_val_acc']:.2f} at epoch {n} | not comparable mid-schedule | "
                      f"{r['train_acc_last']:.2f} |")
            else:
                ref = base["val_acc_per_epoch"][n - 1]
                print(f"| {r['row']} (stopped by the deadline at epoch {n} of {total}) | {n}/{total} | "
                      f"{r['final_val_acc']:.2f} at epoch {n} | {r['final_val_acc'] - ref:+.2f} vs base at "
                      f"epoch {n} ({ref:.2f}); mid-schedule, noisy | {r['train_acc_last']:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
