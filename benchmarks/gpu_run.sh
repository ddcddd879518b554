#!/usr/bin/env bash
# One prepared run on a lent GPU: CIFAR-10's time to 90% and Imagewoof's time to 72% (the CPU
# targets' accuracy), each recipe with a validation split scored every epoch, and the GPU's
# utilisation sampled throughout. Data (ignored by git, copied there by hand):
#   .gpudata/cifar10-jpeg-train.tar.gz   .gpudata/imagewoof2-160.tar
# Usage: OUT=dir bash benchmarks/gpu_run.sh        (writes OUT/gpu_run.json and the runs' logs)
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/out} WORK=${WORK:-/tmp/sqz}
mkdir -p "$OUT" "$WORK"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" || exit 3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv

[ -d "$WORK/cifar10/train" ] || { mkdir -p "$WORK/cifar10" && tar xzf .gpudata/cifar10-jpeg-train.tar.gz -C "$WORK/cifar10"; }
[ -d "$WORK/holdout" ] || python3 benchmarks/make_cifar_holdout.py "$WORK/cifar10/train" "$WORK/holdout"
[ -d "$WORK/imagewoof2-160" ] || tar xf .gpudata/imagewoof2-160.tar -C "$WORK"

nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -lms 500 > "$OUT/gpu_util.csv" &
SMI=$!
run() {  # id, then train flags: the epochs it trained and the wall time of each, from its metrics
  local id=$1; shift
  local t0; t0=$(date +%s.%N)
  python3 -m squeezenet train --device cuda --no-progress --out "$WORK/$id" "$@" > "$OUT/$id.log" 2>&1
  echo "{\"id\": \"$id\", \"rc\": $?, \"start\": $t0, \"end\": $(date +%s.%N)}" >> "$OUT/runs.txt"
  cp "$WORK/$id/metrics.jsonl" "$OUT/$id.metrics.jsonl" 2>/dev/null
}
run cifar10 --recipe cifar10 --data-dir "$WORK/holdout" --val-fraction 0.1111 --epochs 40
run imagewoof --recipe folder --data-dir "$WORK/imagewoof2-160/train" --val-fraction 0.1 --epochs 40
kill $SMI
python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
util = [float(line.split(",")[1].strip().split()[0]) for line in (out / "gpu_util.csv").read_text().splitlines()
        if line.count(",") >= 2]
result = {"gpu_utilisation_mean_percent": sum(util) / max(len(util), 1), "runs": {}}
for run, target in (("cifar10", 90.0), ("imagewoof", 72.0)):
    rows = [json.loads(x) for x in (out / f"{run}.metrics.jsonl").read_text().splitlines()]
    seconds, reached = 0.0, None
    for r in rows:
        seconds += r["seconds"]
        if reached is None and r["val_acc"] is not None and r["val_acc"] >= target:
            reached = {"epoch": r["epoch"], "training_seconds": round(seconds, 1), "val_acc": r["val_acc"]}
    result["runs"][run] = {"target": target, "reached": reached, "best_val": max(r["val_acc"] for r in rows),
                           "images_per_s": [r["images_per_s"] for r in rows]}
(out / "gpu_run.json").write_text(json.dumps(result, indent=2))
print(json.dumps(result, indent=2)[:2000])
PY
