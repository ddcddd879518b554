#!/usr/bin/env bash
# One prepared run on a lent GPU machine (the `device` tool): the recipe search + ablation sweep
# (benchmarks/sweep.py, rows side by side), then the chosen CIFAR-10 row alone for time-to-90%.
# Expects the data in .gpudata/ (copied there by hand, ignored by git):
#   .gpudata/cifar10-jpeg-train.tar.gz   (../shared/data)
#   .gpudata/fashion-mnist/*.gz          (/usr/share/datasets/fashion-mnist)
# Usage: OUT=dir SWEEP_DEADLINE=300 bash benchmarks/gpu_run.sh --alone [extra sweep.py flags]
# (FMNIST_ONLY=1: skip the CIFAR-10 data, for Fashion-MNIST rows only; RECORD=NAME: the runs' group,
# default gpu-sweep). Each row that finished an epoch is a row of $OUT/runs.jsonl (benchmarks/record.py);
# once fetched, append them to the results: cat OUT/runs.jsonl >> benchmarks/results/runs.jsonl
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/out}
DEVICE=${DEVICE:-cuda}
WORK=${WORK:-/tmp/sqz}
mkdir -p "$OUT" "$WORK"
T0=$(date +%s)
log() { echo "[$(( $(date +%s) - T0 ))s] $*"; }

python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null

log "data"
if [ -n "${FMNIST_ONLY:-}" ]; then :; else
if [ ! -d "$WORK/cifar10/train" ]; then
  mkdir -p "$WORK/cifar10" && tar xzf .gpudata/cifar10-jpeg-train.tar.gz -C "$WORK/cifar10" || exit 3
fi
python3 benchmarks/make_cifar_holdout.py "$WORK/cifar10/train" "$WORK/holdout" || exit 3
fi
# Decode once into the disk cache, so the rows started together find it ready.
python3 -c "
from squeezenet.data import load_dataset
import os
for split in ('train', 'test') if not os.environ.get('FMNIST_ONLY') else ():
    d = load_dataset('cifar10', split, '$WORK/holdout')
    print(split, len(d), d.images.shape)
d = load_dataset('fashion-mnist', 'train', '.gpudata/fashion-mnist'); print('fmnist', d.images.shape)
" || exit 3

# Several small trainings share the GPU far better through MPS (kernels of different processes run
# concurrently); if the daemon cannot start or CUDA fails under it, go on without it.
if [ "$DEVICE" = cuda ] && command -v nvidia-cuda-mps-control >/dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=$WORK/mps CUDA_MPS_LOG_DIRECTORY=$WORK/mps-log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  if timeout 20 nvidia-cuda-mps-control -d && \
     timeout 60 python3 -c "import torch; x = torch.ones(4, device='cuda'); print('MPS ok', float(x.sum()))"; then
    log "MPS on"
  else
    log "MPS unusable: going on without it"
    echo quit | timeout 10 nvidia-cuda-mps-control 2>/dev/null
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  fi
fi

log "sweep"
python3 benchmarks/sweep.py --cifar-dir "$WORK/holdout" --fmnist-dir .gpudata/fashion-mnist --device "$DEVICE" \
  --workers "${WORKERS:-6}" --threads "${THREADS:-2}" --deadline "${SWEEP_DEADLINE:-300}" \
  --alone-deadline "${ALONE_DEADLINE:-200}" --runs "$WORK/runs" --out "$OUT/sweep.json" \
  --record "${RECORD:-gpu-sweep}" --runs-jsonl "$OUT/runs.jsonl" "$@"
log "sweep done rc $?"
echo quit | timeout 10 nvidia-cuda-mps-control 2>/dev/null
# Curves and the chosen run's artifacts (no checkpoints but the alone run's best) for the record.
tar czf "$OUT/runs.tar.gz" -C "$WORK" --exclude='*.state.pt' --exclude='last.safetensors' \
  --exclude='*.safetensors' runs 2>/dev/null
log "end"
