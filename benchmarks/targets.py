"""The deployment table: every target of a trained checkpoint, measured in one run on this machine.

    PYTHONPATH=src python benchmarks/targets.py --checkpoint RUN/best.safetensors [--seconds 3]
        [--ort-web web/node_modules/onnxruntime-web/dist] [--browser-images 1000] [--out FILE.json]

Per target: the file and its size, top-1 on the checkpoint's holdout (its test split) and top-1
agreement with PyTorch there, p50 latency at batch 1 and img/s at batch 32 (``timing.measure``,
all in-process runtimes interleaved, so their ratios hold on a shared machine). ExecuTorch runs
batch 1 (its .pte is static): its batch-32 figure is 32 single-image calls. The browser rows run
onnxruntime-web in Debian's headless Chromium on ``--browser-images`` holdout images written as
PNGs at the model's size (exact pixels), timed by the page. Then the default runtime of
``predict``/``serve`` (``auto``) against the fastest measured (bf16 and int8 included), batch 1
and 32, for the checkpoint, for v1.1 at 224 px with random weights (1,000 classes: fp32 is all
``auto`` may choose, having no accuracy to measure the others by) and, with --v11-checkpoint, for
a v1.1 at 224 px trained on photos (``quantize --data-dir`` measured its int8 and bf16).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from squeezenet import runtime
from squeezenet.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from squeezenet.device import cpu_name
from squeezenet.export import as_rgb_nhwc, default_out, export, openvino_model, ort_session
from squeezenet.quantize import quantize
from squeezenet.splits import eval_data
from squeezenet.timing import measure
from squeezenet.zoo import create_model

REPO = Path(__file__).resolve().parents[1]


def predictions(run, data, raw=False, batch=256) -> np.ndarray:
    """Top-1 class of every image of ``data`` by ``run`` (numpy batch in, logits out)."""
    out = []
    for start in range(0, len(data), batch):
        idx = torch.arange(start, min(start + batch, len(data)))
        x = as_rgb_nhwc(data.uint8(idx)) if raw else data.batch(idx)
        out.append(np.asarray(run(x.contiguous().numpy())).argmax(1))
    return np.concatenate(out)


def in_process_targets(ckpt: Path, tmp: Path, skip_executorch: bool) -> dict:
    """name -> (file, function on a numpy float NCHW batch, raw-input function or None)."""
    model, meta = load_checkpoint(ckpt)
    fp32 = Path(export(ckpt, "onnx", tmp / "model.onnx", dynamic_batch=True)["out"])
    int8 = default_out(ckpt, ".int8.onnx")
    if not runtime.find_int8(ckpt).path:  # the record `predict --precision auto` reads, measured now
        quantize(ckpt, out=int8, bench_seconds=0.5)

    def torch_run(x):
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()
    targets = {"PyTorch eager fp32": (resolve_checkpoint(ckpt), torch_run)}
    for name, path in (("onnxruntime fp32", fp32), ("onnxruntime int8", int8)):
        s = ort_session(path)
        targets[name] = (path, lambda x, s=s: s.run(None, {"images": x})[0])
    if runtime.installed("openvino"):
        for name, path, prec in (("OpenVINO fp32", fp32, "fp32"), ("OpenVINO bf16", fp32, "bf16"),
                                 ("OpenVINO int8", int8, "int8")):
            if prec != "bf16" or runtime.openvino_bf16():  # without bf16 units it would be fp32 again
                targets[name] = (path, openvino_model(path, prec))
    if not skip_executorch and importlib.util.find_spec("executorch") is not None:
        from squeezenet.mobile import export_executorch, pte_runner

        for prec in ("fp32", "int8"):
            r = export_executorch(ckpt, tmp / f"model.{prec}.pte", prec, input_type="float")
            run = pte_runner(Path(r["out"]).read_bytes())
            targets[f"ExecuTorch XNNPACK {prec}"] = (Path(r["out"]), lambda x, run=run: run(torch.from_numpy(x)))
    return targets


def accuracy_rows(targets: dict, data) -> dict:
    labels = data.labels.numpy()
    reference = predictions(targets["PyTorch eager fp32"][1], data)
    rows = {}
    for name, (path, run) in targets.items():
        t = time.time()
        pred = reference if name == "PyTorch eager fp32" else predictions(run, data)
        rows[name] = {"file": str(path), "bytes": Path(path).stat().st_size,
                      "top1": 100 * float((pred == labels).mean()),
                      "agreement": 100 * float((pred == reference).mean()), "eval_count": len(labels),
                      "eval_seconds": time.time() - t}
        print(f"{name}: top-1 {rows[name]['top1']:.2f}%, agreement {rows[name]['agreement']:.2f}%", flush=True)
    return rows, reference


def speed(fns: dict, example: torch.Tensor, seconds: float) -> dict:
    """name -> {p50_ms at batch 1, images_per_s at batch 32, images_per_s at batch 1}."""
    out = {name: {} for name in fns}
    for b in (1, 32):
        x = example.repeat(32 // len(example) + 1, 1, 1, 1)[:b].contiguous()
        for name, r in measure(fns, x, seconds).items():
            out[name][f"b{b}"] = r
        print(f"batch {b}: " + ", ".join(f"{k} {v[f'b{b}']['images_per_s']:,.0f}" for k, v in out.items())
              + " img/s", flush=True)
    return out


def default_vs_fastest(ckpt, seconds: float, tmp: Path) -> dict:
    """The ``auto`` engine (as ``predict`` builds it) timed beside every candidate it chose among."""
    model, meta = load_checkpoint(ckpt)
    engine = runtime.make_engine(model, meta, "auto", "auto", ckpt)
    int8 = runtime.find_int8(ckpt)
    bf16 = runtime.installed("openvino") and runtime.openvino_bf16()
    every = [(rt, pr) for rt in runtime.RUNTIMES[1:] if runtime.installed(rt) for pr in ("fp32", "bf16", "int8")
             if (rt != "torch" or pr == "fp32") and (pr != "bf16" or (rt == "openvino" and bf16))]
    fns = {"default (auto)": lambda x: engine(x)}
    for rt, pr in every:
        if pr == "int8" and int8.path is None:
            continue
        fn = runtime.build(rt, pr, model, meta, ckpt, int8)
        fns[runtime.label(rt, pr)] = fn
    pre = meta.preprocess
    x = torch.randn(32, pre.in_channels, pre.image_size, pre.image_size, generator=torch.Generator().manual_seed(0))
    result = {"chosen": engine.name, "reason": engine.reason}
    for b in (1, 32):
        r = measure(fns, x[:b].contiguous(), seconds)
        ips = {k: v["images_per_s"] for k, v in r.items()}
        fastest = max((k for k in ips if k != "default (auto)"), key=ips.get)
        allowed = [runtime.label(*c) for c in runtime.candidates("auto", "auto", int8)]
        fastest_allowed = max((k for k in ips if k in allowed), key=ips.get)
        result[f"b{b}"] = {"images_per_s": ips, "fastest": fastest, "fastest_allowed": fastest_allowed,
                           "ratio_vs_fastest": ips["default (auto)"] / ips[fastest],
                           "ratio_vs_fastest_allowed": ips["default (auto)"] / ips[fastest_allowed]}
        print(f"default {engine.name}, batch {b}: {ips['default (auto)']:,.0f} img/s = "
              f"{result[f'b{b}']['ratio_vs_fastest']:.2f}x the fastest ({fastest} {ips[fastest]:,.0f})", flush=True)
    return result


def v11_checkpoint(tmp: Path) -> Path:
    path = tmp / "v11-224" / "best.safetensors"
    torch.manual_seed(0)
    save_checkpoint(path, create_model("squeezenet1_1", num_classes=1000), {
        "arch": "squeezenet1_1", "model_kwargs": {"num_classes": 1000}, "class_names": [str(i) for i in range(1000)],
        "preprocess": {"image_size": 224, "in_channels": 3, "mean": [0.485, 0.456, 0.406],
                       "std": [0.229, 0.224, 0.225]}})
    return path


def browser_rows(ckpt, data, reference, n: int, ort_web, tmp: Path) -> dict:
    """The web page (fp32 and int8) in headless Chromium on ``n`` holdout images at the model's size."""
    import shutil
    import threading
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from PIL import Image

    from squeezenet.web import export_web

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass
    rows, n = {}, min(n, len(data))
    labels = data.labels.numpy()[:n]
    for prec in ("fp32", "int8"):
        site = tmp / f"site-{prec}"
        r = export_web(ckpt, site, prec, ort_web)
        names = []
        for i in range(n):
            arr = data.uint8(torch.tensor([i]))[0].permute(1, 2, 0).numpy()
            Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(site / f"h{i}.png")
            names.append(f"h{i}.png")
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(site)))
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        try:
            proc = subprocess.run(["node", str(REPO / "web" / "check_page.mjs"),
                                   f"http://127.0.0.1:{httpd.server_address[1]}/", json.dumps({"urls": names})],
                                  capture_output=True, text=True, timeout=1800, cwd=REPO / "web")
        finally:
            httpd.shutdown()
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        pred = np.array([res["top"][0]["index"] for res in out["results"]])
        ms = np.array([res["ms"] for res in out["results"]])
        rows[f"browser onnxruntime-web {prec}"] = {
            "file": "site/ (model.onnx + ort/)", "bytes": r["bytes_total"], "bytes_model": r["bytes_model"],
            "bytes_runtime": r["bytes_runtime"], "top1": 100 * float((pred == labels).mean()),
            "agreement": 100 * float((pred == reference[:n]).mean()), "eval_count": n,
            "p50_ms_b1": float(np.percentile(ms, 50)), "status": out.get("status")}
        shutil.rmtree(site)
        print(f"browser {prec}: top-1 {rows[f'browser onnxruntime-web {prec}']['top1']:.2f}% on {n}, p50 "
              f"{np.percentile(ms, 50):.1f} ms, transfer {r['bytes_total'] / 1e6:.2f} MB", flush=True)
    return rows


def table(rows: dict, speeds: dict) -> str:
    lines = ["| target | file | size | top-1 (agreement with PyTorch) | p50 ms, batch 1 | img/s, batch 32 |",
             "|---|---|---:|---:|---:|---:|"]
    for name, r in rows.items():
        s = speeds.get(name, {})
        p50 = s["b1"]["p50_ms"] if s else r.get("p50_ms_b1")
        ips = f"{s['b32']['images_per_s']:,.0f}" if s else "-"
        lines.append(f"| {name} | {r['file'] if r['file'].startswith('site/') else Path(r['file']).name} | "
                     f"{r['bytes'] / 1e6:.2f} MB | {r['top1']:.2f}% ({r['agreement']:.2f}%) | "
                     f"{p50:.2f} | {ips} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--ort-web", default=str(REPO / "web" / "node_modules" / "onnxruntime-web" / "dist"))
    p.add_argument("--browser-images", type=int, default=1000)
    p.add_argument("--v11-checkpoint", help="a trained squeezenet1_1 at 224 px, quantized (see above)")
    p.add_argument("--skip-browser", action="store_true")
    p.add_argument("--skip-executorch", action="store_true")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "speed" / "targets.json"))
    args = p.parse_args()
    t0 = time.time()
    ckpt = resolve_checkpoint(args.checkpoint)
    _, meta = load_checkpoint(ckpt)
    data = eval_data(meta, split="test")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        targets = in_process_targets(ckpt, tmp, args.skip_executorch)
        rows, reference = accuracy_rows(targets, data)
        example = data.batch(torch.arange(min(32, len(data))))
        speeds = speed({k: (lambda x, f=f: f(x.numpy())) for k, (_, f) in targets.items()}, example, args.seconds)
        if not args.skip_browser:
            rows.update(browser_rows(ckpt, data, reference, args.browser_images, args.ort_web, tmp))
        defaults = {"checkpoint": default_vs_fastest(ckpt, args.seconds, tmp),
                    "squeezenet1_1 at 224 px, random weights": default_vs_fastest(v11_checkpoint(tmp), args.seconds,
                                                                                  tmp)}
        if args.v11_checkpoint:
            defaults["squeezenet1_1 at 224 px, trained"] = default_vs_fastest(args.v11_checkpoint, args.seconds, tmp)
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "cpu": cpu_name(),
              "threads": torch.get_num_threads(), "python": platform.python_version(), "seconds": time.time() - t0,
              "rows": rows, "speed": speeds, "default_runtime": defaults}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows, speeds))
    print(f"wrote {args.out} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
