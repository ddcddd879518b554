"""The C engine's deployment rows, measured in one run on this machine.

    PYTHONPATH=src python benchmarks/engine_targets.py --model cifar10=runs/c10-deploy:FILE.sqz \
        --model photos=runs/iw-photo:FILE.sqz:data/imagewoof2-160/val --v11 runs/v11-128 \
        [--browser-images N] [--latency-images 200] [--out FILE.json]

Per model (NAME=CHECKPOINT:COMPRESSED[:HELD-OUT DIR]), on every held-out image: the C engine
natively (fp32, int8, int8 weights with fp32 math, the compressed file's codebooks), the page in
headless Chromium on the engine's WebAssembly build (fp32, int8 weights, codebooks) and on
onnxruntime-web (fp32, int8) one after the other in one browser, and LiteRT (.tflite fp32 and
int8, the interpreter on one thread) where litert-torch is installed: file size raw and gzip,
top-1 and agreement with PyTorch's top-1, p50 latency at batch 1 (native and LiteRT: one
thread, ``--latency-images`` images; the page: its own timing of the model call). The page rows
also give everything the page loads, gzip-compressed. Then RAM and flash of ``export --format c
--precision int8`` for the ``--v11`` checkpoint at 96, 128 and 224 px, the high-water mark of
each run, and the WebAssembly engine's p50 in Node for int8 activations against int8 weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from squeezenet.cengine import NativeEngine, export_c, packaged_wasm, reference_logits
from squeezenet.checkpoint import load_checkpoint, resolve_checkpoint
from squeezenet.device import cpu_name
from squeezenet.export import as_rgb_nhwc
from squeezenet.lowering import lower
from squeezenet.quantize import training_images
from squeezenet.splits import eval_data
from squeezenet.web import export_web

REPO = Path(__file__).resolve().parents[1]


def gz(data: bytes) -> int:
    return len(gzip.compress(data, 9, mtime=0))


def held_out(meta, data_dir, limit=None):
    """(uint8 NHWC images at the model's size, labels, the same images at the resize size for the
    page: its own resize is then the identity and its crop takes the same pixels)."""
    data = eval_data(meta, data_dir=data_dir, split="test")
    n = len(data) if limit is None else min(limit, len(data))
    idx = torch.arange(n)
    pre = meta.preprocess
    side = pre.resize_size or pre.image_size
    big = data if side == pre.image_size else eval_data(
        meta.replace(preprocess=dataclasses.replace(pre, image_size=side, resize_size=side)), data_dir=data_dir,
        split="test")
    return as_rgb_nhwc(data.uint8(idx)), data.labels[idx].numpy(), as_rgb_nhwc(big.uint8(idx)).numpy()


def score(logits_or_top, labels, reference) -> dict:
    top = logits_or_top if logits_or_top.ndim == 1 else logits_or_top.argmax(1)
    return {"top1": float((top == labels).mean() * 100), "agreement": float((top == reference).mean() * 100),
            "eval_count": len(top)}


def native_row(data: bytes, images, labels, reference, n_latency: int, decode: bool = True) -> dict:
    engine = NativeEngine(data)
    per_block = p50(engine, images[:n_latency]) if not decode else None
    engine.decode()
    row = {"bytes": len(data), "bytes_gzip": gz(data), **score(engine(images), labels, reference),
           "p50_ms_b1": p50(engine, images[:n_latency])}
    if per_block is not None:  # codebook: as on a microcontroller, each block decoded when used
        row["p50_ms_b1_decoded_at_load"], row["p50_ms_b1"] = row["p50_ms_b1"], per_block
    return row


def p50(engine: NativeEngine, images) -> float:
    times = []
    for im in images:
        engine.input[...] = im
        t0 = time.perf_counter()
        engine.lib.sqz_run(engine.model)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


def tflite_rows(model, meta, images, labels, reference, n_latency: int) -> dict:
    import importlib.util

    if importlib.util.find_spec("litert_torch") is None or importlib.util.find_spec("ai_edge_litert") is None:
        return {}
    from ai_edge_litert.interpreter import Interpreter

    from squeezenet.mobile import NUM_CALIB, Probabilities, require_litert, tflite_bytes

    require_litert()
    module = Probabilities(model, meta).eval()
    rows = {}
    for precision in ("fp32", "int8"):
        calib = training_images(meta, n=NUM_CALIB, raw=True) if precision == "int8" else None
        data = tflite_bytes(module, images[:1], calib)
        it = Interpreter(model_content=data, num_threads=1)
        it.allocate_tensors()
        inp, out = it.get_input_details()[0], it.get_output_details()[0]
        top, times = [], []
        for i, im in enumerate(images.numpy()):
            it.set_tensor(inp["index"], im[None])
            t0 = time.perf_counter()
            it.invoke()
            if i < n_latency:
                times.append((time.perf_counter() - t0) * 1000)
            top.append(int(it.get_tensor(out["index"]).argmax()))
        rows[f"LiteRT {precision} (.tflite)"] = {"file": f"model.{precision}.tflite", "bytes": len(data),
                                                 "bytes_gzip": gz(data), **score(np.array(top), labels, reference),
                                                 "p50_ms_b1": float(np.median(times))}
    return rows


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


def page_rows(ckpt, compressed, meta, page_images, labels, reference, n: int, tmp: Path,
              data_dir=None) -> tuple[dict, dict]:
    """The exported pages in one headless Chromium, one after the other, on the first ``n`` images."""
    sites = {"browser engine fp32": (ckpt, "fp32", "engine"), "browser engine int8": (ckpt, "int8", "engine"),
             "browser engine codebook": (compressed, "fp32", "engine"),
             "browser onnxruntime-web fp32": (ckpt, "fp32", "ort-web"),
             "browser onnxruntime-web int8": (ckpt, "int8", "ort-web")}
    root = tmp / "sites"
    names = []
    (root / "images").mkdir(parents=True)
    for i, im in enumerate(page_images[:n]):
        Image.fromarray(im).save(root / "images" / f"h{i}.png")
        names.append(f"../images/h{i}.png")
    exported = {}
    for name, (source, precision, runtime) in sites.items():
        exported[name] = export_web(source, root / name.replace(" ", "-"), precision, runtime=runtime,
                                    data_dir=data_dir)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    spec = {"pages": [{"url": f"{base}/{name.replace(' ', '-')}/", "urls": names} for name in sites]}
    (root / "spec.json").write_text(json.dumps(spec))
    try:
        proc = subprocess.run(["node", str(REPO / "web" / "check_page.mjs"), "-", f"@{root / 'spec.json'}"],
                              capture_output=True, text=True, timeout=7200, cwd=REPO / "web")
    finally:
        httpd.shutdown()
    pages = json.loads(proc.stdout.strip().splitlines()[-1])["pages"]
    rows, transfer = {}, {}
    for (name, r), out in zip(exported.items(), pages):
        if "error" in out:
            raise SystemExit(f"{name}: {out['error']}")
        top = np.array([res["top"][0]["index"] for res in out["results"]])
        loaded = sorted({u.removeprefix(f"{base}/{name.replace(' ', '-')}/") or "index.html"
                         for u in out["requests"] if "/images/" not in u})
        files_gzip = {f: r["files_gzip"][f] if "files_gzip" in r else gz((Path(r["out"]) / f).read_bytes())
                      for f in loaded}
        transfer[name] = {"files": files_gzip, "bytes_gzip": sum(files_gzip.values()), "bytes": r["bytes_total"]}
        model_file = "model.sqz" if r["runtime"] == "engine" else "model.onnx"
        rows[name] = {"file": f"site/ ({model_file} + {'engine.wasm' if r['runtime'] == 'engine' else 'ort/'})",
                      "bytes": r["bytes_total"], "bytes_gzip": transfer[name]["bytes_gzip"],
                      **score(top, labels[:n], reference[:n]),
                      "p50_ms_b1": float(np.median([res["ms"] for res in out["results"]])), "status": out["status"]}
    return rows, transfer


def ram_rows(ckpt, data_dir, tmp: Path) -> list[dict]:
    rows = []
    for size in (96, 128, 224):
        r = export_c(ckpt, tmp / f"c{size}", "int8", data_dir, input_size=size, check_limit=200)
        rows.append({k: r[k] for k in ("input_size", "ram_bytes", "arena_bytes", "stack_bytes", "ram_high_water",
                                       "flash_bytes", "model_bytes", "code_bytes", "code_target")}
                    | {"check": r["check"]})
        print(f"v1.1 int8 at {size} px: RAM {r['ram_bytes']:,} (arena {r['arena_bytes']:,}, high water "
              f"{r['ram_high_water']:,}), flash {r['flash_bytes']:,}", flush=True)
    return rows


def node_int8(model, meta, tmp: Path) -> dict:
    """The WebAssembly engine's p50 in Node: int8 activations against int8 weights with fp32 math."""
    out = {}
    for precision in ("int8", "int8w", "fp32"):
        calib = training_images(meta, n=256) if precision == "int8" else None
        path = tmp / f"node-{precision}.sqz"
        path.write_bytes(lower(model, meta, precision, calib))
        r = subprocess.run(["node", str(REPO / "benchmarks" / "engine_speed.mjs"), str(packaged_wasm()), str(path),
                            "100"], capture_output=True, text=True, timeout=600)
        out[precision] = json.loads(r.stdout)["p50_ms"]
    return out


def measure_model(name: str, spec: str, browser_images: int | None, n_latency: int, tmp: Path) -> dict:
    ckpt, compressed, *rest = spec.split(":")
    data_dir = rest[0] if rest else None
    path = resolve_checkpoint(ckpt)
    model, meta = load_checkpoint(path)
    images, labels, page_images = held_out(meta, data_dir)
    reference = reference_logits(model, meta, images).argmax(1)
    t0 = time.time()
    rows = {"PyTorch fp32": {"file": path.name, "bytes": path.stat().st_size, "bytes_gzip": gz(path.read_bytes()),
                             **score(reference, labels, reference)}}
    calib = training_images(meta, n=256)
    files = {"C native fp32": lower(model, meta, "fp32"), "C native int8": lower(model, meta, "int8", calib),
             "C native int8 weights, fp32 math": lower(model, meta, "int8w")}
    for row, data in files.items():
        rows[row] = {"file": "model.c", **native_row(data, images.numpy(), labels, reference, n_latency)}
        print(f"{name} {row}: {rows[row]['top1']:.2f}% ({rows[row]['agreement']:.2f}%), p50 "
              f"{rows[row]['p50_ms_b1']:.2f} ms", flush=True)
    sqz = Path(compressed).read_bytes()
    rows["C native codebook"] = {"file": Path(compressed).name,
                                 **native_row(sqz, images.numpy(), labels, reference, n_latency, decode=False)}
    rows.update(tflite_rows(model, meta, images, labels, reference, n_latency))
    page, transfer = page_rows(path, compressed, meta, page_images, labels, reference, browser_images or len(labels),
                               tmp / name, data_dir)
    rows.update(page)
    for row, r in rows.items():
        latency = f", p50 {r['p50_ms_b1']:.2f} ms" if "p50_ms_b1" in r else ""
        print(f"{name} {row}: {r['bytes'] / 1e6:.3f} MB ({r['bytes_gzip'] / 1e6:.3f} gzip), top-1 {r['top1']:.2f}% "
              f"({r['agreement']:.2f}%){latency}", flush=True)
    return {"checkpoint": str(path), "compressed": compressed, "data_dir": data_dir, "input_size":
            meta.preprocess.image_size, "rows": rows, "page_transfer": transfer, "seconds": time.time() - t0,
            "wasm_node_p50_ms": node_int8(model, meta, tmp)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, metavar="NAME=CKPT:COMPRESSED[:DATA]")
    p.add_argument("--v11", help="a 10-class v1.1 checkpoint: RAM and flash of int8 C at 96, 128 and 224 px")
    p.add_argument("--v11-data", help="held-out images for the v1.1 checks")
    p.add_argument("--browser-images", type=int, help="page rows on the first N held-out images (default: all)")
    p.add_argument("--latency-images", type=int, default=200)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "speed" / "engine-targets.json"))
    args = p.parse_args()
    t0 = time.time()
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "cpu": cpu_name(),
              "date": time.strftime("%Y-%m-%d"), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for spec in args.model:
            name, _, rest = spec.partition("=")
            result["models"][name] = measure_model(name, rest, args.browser_images, args.latency_images, tmp)
        if args.v11:
            result["ram"] = ram_rows(args.v11, args.v11_data, tmp)
    result["seconds"] = time.time() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
