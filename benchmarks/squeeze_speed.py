"""Training-step speed of squeeze ratios (``--squeeze-ratio``, the paper's SR), interleaved.

SR sets every Fire module's squeeze width as a fraction of its expand width (v1.1: 0.125, so
fire2 squeezes 128 channels to 16). Both expand convolutions read the squeeze output, so their
multiply-adds grow with SR too: SR 0.25 doubles almost all of the Fire modules' work. On the CPU
the time grows less than the work (oneDNN's bf16 kernels run wider channel counts more
efficiently), and this measures by how much, on the cifar10 recipe's model: model-only training
steps as in ``stem_speed.py``, the ratios taking turns round after round.

    python benchmarks/squeeze_speed.py --out benchmarks/results/speed/squeeze_speed.json
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
from stem_speed import recipe_model, steps_per_s  # noqa: E402

from squeezenet.config import make_config  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="benchmarks/results/speed/squeeze_speed.json")
    p.add_argument("--recipe", default="cifar10")
    p.add_argument("--ratios", default="0.125,0.1875,0.25")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    ratios = [float(r) for r in args.ratios.split(",")]
    cfg = make_config({"recipe": args.recipe})
    runs = {r: [] for r in ratios}
    for _ in range(args.rounds):
        for r in ratios:
            runs[r].append(steps_per_s(cfg, None, args.steps, squeeze_ratio=r))
    median = {r: statistics.median(v) for r, v in runs.items()}
    params = {r: sum(t.numel() for t in recipe_model(cfg, squeeze_ratio=r).parameters()) for r in ratios}
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "torch": torch.__version__, "recipe": args.recipe, "batch_size": cfg.batch_size,
              "what": f"model-only training steps, images/s, median of {args.rounds} interleaved "
                      f"rounds of {args.steps} steps",
              "parameters": {str(r): params[r] for r in ratios},
              "images_per_s": {str(r): [round(v, 1) for v in runs[r]] for r in ratios},
              "speedup_vs_first": {str(r): round(median[r] / median[ratios[0]], 3) for r in ratios}}
    print(json.dumps(result, indent=2), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
