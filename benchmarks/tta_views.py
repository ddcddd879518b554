"""Which test-time views pay: one trained run scored with several sets of shifted views.

    python benchmarks/tta_views.py RUN [--split val|test] [--json OUT]

Every view is the image or its mirror, shifted by (dy, dx) in {-1, 0, 1} px with the reflection
padding of training's crops (``evaluate.tta_views`` uses the diagonal pair (-1, -1), (+1, +1): 6
views). The model runs once per offset; each set's accuracy averages the logits of its offsets, so
the sets are compared on identical forward passes. Scored in fp32 like ``squeezenet eval``.
Choose view sets on ``--split val`` only; the test split is for the recipe once chosen.
"""

import argparse
import json

import torch
import torch.nn.functional as F

from squeezenet.checkpoint import load_checkpoint
from squeezenet.errors import SqueezeNetError
from squeezenet.splits import eval_loader

OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
SETS = {
    "flip (2 views)": [(0, 0)],
    "diagonal shifts (6 views, evaluate.tta_views)": [(0, 0), (-1, -1), (1, 1)],
    "both diagonals (10 views)": [(0, 0), (-1, -1), (1, 1), (-1, 1), (1, -1)],
    "axis shifts (10 views)": [(0, 0), (0, 1), (0, -1), (1, 0), (-1, 0)],
    "all 9 offsets (18 views)": OFFSETS,
}


@torch.no_grad()
def offset_logits(model, loader, pad: int = 1) -> tuple[dict, torch.Tensor]:
    """Per offset, the summed logits of the shifted image and its mirror, over the whole split."""
    logits: dict = {o: [] for o in OFFSETS}
    labels = []
    for x, y in loader:
        labels.append(y)
        h, w = x.shape[-2:]
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        for dy, dx in OFFSETS:
            v = padded[..., pad + dy:pad + dy + h, pad + dx:pad + dx + w]
            logits[(dy, dx)].append(model(v).float() + model(v.flip(3)).float())
    return {o: torch.cat(v) for o, v in logits.items()}, torch.cat(labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a run directory or .safetensors checkpoint")
    ap.add_argument("--split", choices=("val", "test"), default="val")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    model, meta = load_checkpoint(args.run)
    model.eval()
    _, loader = eval_loader(meta, None, args.data_dir, args.split, 512)
    logits, y = offset_logits(model, loader)
    top1 = {}
    for name, offsets in SETS.items():
        top1[name] = round((sum(logits[o] for o in offsets).argmax(1) == y).float().mean().item() * 100, 2)
        print(f"{name}: {top1[name]:.2f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"run": str(args.run), "split": args.split, "count": len(y), "top1": top1}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    try:
        main()
    except SqueezeNetError as e:  # bad run path or data: the message, as the CLI prints it
        raise SystemExit(f"error: {e}") from None
