"""Issue 5's targets, measured in one run; writes benchmarks/results/speed/deploy.json.

    PYTHONPATH=src python benchmarks/deploy.py --checkpoint RUN_DIR [--seconds 3]

Speed: v1.1 at 224 px (random weights, 1000 classes, as in ANCHORS.md), batch 1 and 32, runtimes
timed interleaved (bench.measure) so the ratios hold on a shared machine. Accuracy and size: the
checkpoint(s) given, through the same code as ``squeezenet quantize`` and ``squeezenet compress``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from squeezenet.bench import make_runners
from squeezenet.compress import compress
from squeezenet.files import write_text_atomic
from squeezenet.predict import make_predictor
from squeezenet.quantize import quantize
from squeezenet.timing import measure
from squeezenet.zoo import create_model


def speed(seconds: float) -> dict:
    model = create_model("squeezenet1_1", num_classes=1000).eval()
    x = torch.randn(32, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    runners = make_runners(model, x[:1], ("eager", "channels_last", "onnxruntime", "onnxruntime-int8"),
                           calib=x)
    meta = {"preprocess": {"image_size": 224, "in_channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3},
            "class_names": [str(i) for i in range(1000)], "arch": "squeezenet1_1"}
    default, name = make_predictor(model, meta, "auto")  # what `squeezenet predict` runs
    fns = {f"default ({name})": default, **{rt: fn for rt, (fn, _) in runners.items()}}
    # The default is onnxruntime fp32 itself: a second identical session shows the noise floor of
    # a ratio between two sessions on this shared machine.
    fns["onnxruntime (identical second session, control)"] = make_runners(model, x[:1], ("onnxruntime",))[
        "onnxruntime"][0]
    out = {}
    for b in (1, 32):
        out[b] = measure(fns, x[:b], seconds)
        print(f"batch {b}: " + ", ".join(f"{k} {v['images_per_s']:.0f}" for k, v in out[b].items()) + " img/s")
    d = f"default ({name})"
    ratios = {}
    for b in (1, 32):
        ratios[f"default_vs_ort_fp32_b{b}"] = out[b][d]["images_per_s"] / out[b]["onnxruntime"]["images_per_s"]
        ratios[f"default_vs_eager_nchw_b{b}"] = out[b][d]["images_per_s"] / out[b]["eager"]["images_per_s"]
    ratios["int8_vs_ort_fp32_b32"] = (out[32]["onnxruntime-int8"]["images_per_s"]
                                      / out[32]["onnxruntime"]["images_per_s"])
    for b in (1, 32):
        ratios[f"control_vs_ort_fp32_b{b}"] = (out[b]["onnxruntime (identical second session, control)"]
                                               ["images_per_s"] / out[b]["onnxruntime"]["images_per_s"])
    return {"default_runtime": name, "throughput": {str(b): r for b, r in out.items()}, "ratios": ratios}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", action="append", default=[], help="trained checkpoint (repeatable)")
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per runtime and batch size")
    p.add_argument("--compress-steps", type=int, default=3000)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "speed" / "deploy.json"))
    p.add_argument("--merge", action="store_true",
                   help="keep the models in --out that this run does not redo (each records its command)")
    p.add_argument("--skip-compress", action="store_true",
                   help="with --merge: keep each model's compression result from --out (quantize and speed only)")
    args = p.parse_args()
    if args.skip_compress:
        kept = {m["checkpoint"] for m in json.loads(Path(args.out).read_text())["models"]} \
            if args.merge and Path(args.out).is_file() else set()
        if missing := [c for c in args.checkpoint if c not in kept]:
            p.error(f"--skip-compress keeps earlier compression results: needs --merge and an --out that "
                    f"holds {', '.join(missing)}")
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.time()
    command = " ".join([Path(sys.executable).name, *sys.argv])
    result = {"command": command, "machine": platform.processor()
              or platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
              "note": "shared machine: absolute img/s are noisy; the ratios are measured interleaved in one run",
              "speed_v1_1_224": speed(args.seconds), "models": []}
    earlier_models = {}
    if args.merge and Path(args.out).is_file():
        earlier = json.loads(Path(args.out).read_text())
        earlier_models = {m["checkpoint"]: {"command": earlier["command"], **m} for m in earlier["models"]}
        result["models"] = [m for c, m in earlier_models.items() if c not in args.checkpoint]
    for ckpt in args.checkpoint:
        q = quantize(ckpt, bench_seconds=args.seconds)
        if args.skip_compress:
            old = earlier_models[ckpt]
            c = {"command": old["command"], **old["compress"]}  # the compress run's own command wins
        else:
            c = {**compress(ckpt, steps=args.compress_steps), "command": command}
        result["models"].append({"command": command, "checkpoint": ckpt, "quantize": q, "compress": c})
        print(f"{ckpt}: int8 top-1 {q['top1_fp32']:.2f} -> {q['top1_int8']:.2f}; compressed "
              f"{c['bytes_compressed'] / 1e3:.0f} kB ({c['size_ratio']:.3f}x) top-1 {c['top1_before']:.2f} -> "
              f"{c['top1_after']:.2f}")
    r, ms = result["speed_v1_1_224"]["ratios"], result["models"]
    result["targets"] = {
        "default >= 0.95x ORT fp32, b1 and b32": min(r["default_vs_ort_fp32_b1"], r["default_vs_ort_fp32_b32"]) >= 0.95,
        "default >= 2x eager NCHW, b1 and b32": min(r["default_vs_eager_nchw_b1"], r["default_vs_eager_nchw_b32"]) >= 2,
        "int8 >= 1.8x ORT fp32 at b32": r["int8_vs_ort_fp32_b32"] >= 1.8,
        "int8 top-1 drop <= 0.5": all(m["quantize"]["top1_drop"] <= 0.5 for m in ms) if ms else None,
        "compressed <= 1/10 of fp32 safetensors": all(m["compress"]["size_ratio"] <= 0.1 for m in ms) if ms else None,
        "compressed top-1 drop <= 1": all(m["compress"]["top1_drop"] <= 1 for m in ms) if ms else None,
    }
    result["seconds"] = round(time.time() - t0, 1)
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps({"ratios": r, "targets": result["targets"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
