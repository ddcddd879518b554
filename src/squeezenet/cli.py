"""``squeezenet`` command line: parses flags and calls the library, nothing more.

Exit codes: 0 success, 2 usage error, 1 any other failure (one message on stderr; a traceback
only with --debug), 130/143 when Ctrl-C or SIGTERM stopped training (its state saved).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from .errors import SqueezeNetError, UsageError
from .files import DISK_ERRORS


def _write_json(path: str | None, obj) -> None:
    if path:
        from .files import write_text_atomic

        write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


# ----------------------------------------------------------------------------- info

def cmd_info(args) -> int:
    from .info import describe

    flags = {k: getattr(args, k) for k in MODEL_FLAGS if getattr(args, k, None) is not None}
    text, summary = describe(args.target, args.recipe, args.input_size, args.num_classes, args.in_channels, flags)
    _write_json(args.json, summary)
    print(text)
    return 0


MODEL_FLAGS = ("bypass", "batch_norm", "small_input", "final_relu", "squeeze_ratio", "pool_after",
               "stem_channels", "dropout", "zero_init_residual")


# ----------------------------------------------------------------------------- train

def cmd_train(args) -> int:
    from .config import make_config, option_fields
    from .device import use_all_cores
    from .train import train

    cfg = make_config({f.name: getattr(args, f.name) for f in option_fields()}, args.config)
    use_all_cores()
    train(cfg)
    return 0


# ----------------------------------------------------------------------------- eval / predict

def cmd_eval(args) -> int:
    from .checkpoint import load_checkpoint
    from .config import MAX_TTA_SHIFT
    from .evaluate import evaluate
    from .rundir import train_hashes
    from .splits import eval_loader

    model, meta = load_checkpoint(args.checkpoint)
    if args.image_size is not None and args.image_size != meta.preprocess.image_size:
        if args.image_size < model.min_input_size:
            raise UsageError(f"--image-size {args.image_size} is below the model's minimum {model.min_input_size}")
        meta = meta.at_size(args.image_size)  # content hashes are of the trained size: not comparable
        hashes = None
    else:
        hashes = train_hashes(args.checkpoint) if args.split == "test" else None
    data, loader = eval_loader(meta, args.dataset, args.data_dir, args.split, args.batch_size, hashes)
    tta = meta.tta if args.tta is None else args.tta
    shift = meta.tta_shift if args.tta_shift is None else args.tta_shift
    if not 0 <= shift <= MAX_TTA_SHIFT:
        raise UsageError(f"--tta-shift must be 0 to {MAX_TTA_SHIFT} pixels, got {shift}")
    shift = shift if tta else 0
    result = evaluate(model, loader, meta.num_classes, tta=tta, shift=shift)
    classes = meta.class_names
    _write_json(args.json, {"checkpoint": str(args.checkpoint), "split": args.split, "tta": tta,
                            "tta_shift": shift, "classes": classes, **result})
    views = (f", flip + {shift} px shift TTA (6 views)" if shift else ", flip TTA") if tta else ""
    print(f"{args.checkpoint}: {meta.arch} on {args.dataset or meta.dataset} {args.split} "
          f"({result['count']:,} images{views})")
    print(f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}")
    width = max(len(c) for c in classes)
    for name, acc, row in zip(classes, result["per_class"], result["confusion"]):
        print(f"  {name:<{width}}  {acc:6.2f}%  ({sum(row)} images)")
    if len(classes) <= 20:
        print("confusion matrix (rows: true, columns: predicted):")
        for row in result["confusion"]:
            print("  " + " ".join(f"{v:>5}" for v in row))
    return 0


def cmd_predict(args) -> int:
    from .predict import predict_files

    results, engine = predict_files(args.checkpoint, args.images, args.top_k, args.runtime,
                                    precision=args.precision)
    _write_json(args.json, {"runtime": engine.name, "runtime_reason": engine.reason,
                            "runtime_images_per_s": engine.measured, "predictions": results})
    for r in results:
        best = ", ".join(f"{p['label']} {p['probability'] * 100:.1f}%" for p in r["top"])
        print(f"{r['image']}: {best}")
    print(f"(runtime: {engine.name}: {engine.reason})", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- deploy

def cmd_export(args) -> int:
    from .export import export

    if args.format == "web":
        return _export_web(args)
    if args.format == "executorch":
        return _export_executorch(args)
    if args.format == "c":
        return _export_c(args)
    if args.format == "tflite":
        return _export_tflite(args)
    if args.precision not in (None, "fp32"):
        raise UsageError("--precision int8 for ONNX is `squeezenet quantize`; --precision applies to "
                         "--format web and executorch")
    r = export(args.checkpoint, args.format, args.out, args.opset, args.dynamic_batch, args.input or "float")
    _write_json(args.json, r)
    print(f"wrote {r['out']} ({r['bytes'] / 1e6:.2f} MB, {r['format']}"
          f"{', opset ' + str(r['opset']) if r['opset'] else ''}); checked against PyTorch on "
          f"{r['checked_on']} images: max abs diff {r['max_abs_diff']:.2e}")
    return 0


def _export_web(args) -> int:
    from .web import export_web

    if args.input not in (None, "uint8"):
        raise UsageError("the web page feeds the model uint8 pixels: --input float does not apply to --format web")
    r = export_web(args.checkpoint, args.out, args.precision or "fp32", args.ort_web, args.top_k, args.calib_data,
                   args.runtime or "engine", args.data_dir)
    _write_json(args.json, r)
    if "check" in r:
        c = r["check"]
        check = (f"checked against PyTorch on {c['images']:,} images: logits {c['max_rel_diff']:.1e} apart"
                 + (f", top-1 {c['top1_engine']:.2f}% (PyTorch fp32 {c['top1_pytorch']:.2f}%)" if "top1_engine" in c
                    else ""))
    else:
        check = (f"checked against PyTorch on {r['checked_on']} images: max abs diff {r['max_abs_diff']:.2e}"
                 if "max_abs_diff" in r else f"top-1 fp32 {r['top1_fp32']:.2f}% int8 {r['top1_int8']:.2f}% "
                 f"on {r['eval_count']:,} images")
    runtime = (f"the C engine as WebAssembly {r['bytes_runtime'] / 1e3:.1f} KB" if r["runtime"] == "engine" else
               f"onnxruntime-web {r['ort_web']} {r['bytes_runtime'] / 1e6:.2f} MB")
    print(f"wrote {r['out']}/ ({r['bytes_total'] / 1e6:.3f} MB, {r['bytes_gzip'] / 1e6:.3f} MB gzipped: model "
          f"{r['bytes_model'] / 1e6:.3f} MB {r['precision']}, {runtime}); {check}")
    print(f"serve it from any static host, e.g. python -m http.server -d {r['out']} 8000")
    return 0


def _export_c(args) -> int:
    from .cengine import export_c

    if args.input not in (None, "uint8"):
        raise UsageError("the C engine takes uint8 RGB pixels: --input float does not apply to --format c")
    r = export_c(args.checkpoint, args.out, args.precision or "fp32", args.data_dir, args.max_ram, args.input_size,
                 args.check_images, args.calib_data)
    _write_json(args.json, r)
    c = r["check"]
    score = (f"; top-1 {c['top1_engine']:.2f}% (PyTorch fp32 {c['top1_pytorch']:.2f}%)" if "top1_engine" in c else "")
    print(f"wrote {r['out']}/ ({r['precision']}, {r['input_size']} px): flash {r['flash_bytes']:,} bytes (model "
          f"{r['model_bytes']:,} + code {r['code_bytes']:,}, {r['code_target']}), RAM {r['ram_bytes']:,} bytes "
          f"(arena {r['arena_bytes']:,}, stack about {r['stack_bytes']:,}; the example's high-water mark "
          f"{r['ram_high_water']:,})")
    print(f"checked against PyTorch on {c['images']:,} images ({c['source']}): logits {c['max_rel_diff']:.1e} "
          f"apart, same top-1 on {c['agreement']:.2f}%{score}")
    print(f"build and run it: make -C {r['out']} && {r['out']}/sqz-classify IMAGE.ppm")
    return 0


def _export_tflite(args) -> int:
    from .mobile import export_tflite

    if args.input not in (None, "uint8"):
        raise UsageError("the .tflite takes uint8 RGB pixels: --input float does not apply to --format tflite")
    r = export_tflite(args.checkpoint, args.out, args.precision or "fp32", args.calib_data)
    _write_json(args.json, r)
    check = (f"max abs diff {r['max_abs_diff']:.2e} on {r['checked_on']} images" if "max_abs_diff" in r else
             f"top-1 fp32 {r['top1_fp32']:.2f}% int8 {r['top1_int8']:.2f}% on {r['eval_count']:,} images")
    print(f"wrote {r['out']} ({r['bytes'] / 1e6:.2f} MB, LiteRT {r['precision']}, uint8 RGB in, probabilities out) "
          f"and {r['labels']}; run by the LiteRT interpreter against PyTorch: {check}")
    return 0


def _export_executorch(args) -> int:
    from .mobile import export_executorch

    r = export_executorch(args.checkpoint, args.out, args.precision or "fp32", args.input or "uint8", args.calib_data)
    _write_json(args.json, r)
    check = (f"max abs diff {r['max_abs_diff']:.2e} on {r['checked_on']} images" if "max_abs_diff" in r else
             f"top-1 fp32 {r['top1_fp32']:.2f}% int8 {r['top1_int8']:.2f}% on {r['eval_count']:,} images")
    print(f"wrote {r['out']} ({r['bytes'] / 1e6:.2f} MB, ExecuTorch {r['precision']}, XNNPACK, {r['input']} "
          f"input); run by ExecuTorch against PyTorch: {check}")
    return 0


def cmd_serve(args) -> int:
    from .serve import serve

    serve(args.checkpoint, args.host, args.port, args.runtime, args.precision, args.max_batch, args.max_wait_ms,
          args.max_bytes, args.ort_web, args.page, args.streams, args.workers, args.max_queue, args.timeout_s,
          args.read_timeout_s, args.max_connections, args.api_key, args.cors_origin)
    return 0


def cmd_quantize(args) -> int:
    from .quantize import quantize

    r = quantize(args.checkpoint, args.calib_data, args.out, args.split, args.calib_images, args.seconds, args.input,
                 args.data_dir)
    _write_json(args.json, r)
    print(f"wrote {r['out']}: int8 {r['bytes_int8'] / 1e6:.2f} MB vs fp32 {r['bytes_fp32'] / 1e6:.2f} MB "
          f"({r['calibration_images']} calibration images)")
    print(f"top-1 on {r['split']} ({r['eval_count']:,} images): fp32 {r['top1_fp32']:.2f}%  "
          f"int8 {r['top1_int8']:.2f}%  (drop {r['top1_drop']:+.2f} points)")
    ov = [f"{name} {r[key]:.2f}% (drop {r['top1_fp32'] - r[key]:+.2f})" for name, key in (
        ("int8", "top1_int8_openvino"), ("bf16", "top1_bf16_openvino")) if r.get(key) is not None]
    if ov:
        print("on openvino: " + "  ".join(ov))
    print(f"onnxruntime batch {r['batch']}: fp32 {r['images_per_s_fp32']:,.0f} img/s  "
          f"int8 {r['images_per_s_int8']:,.0f} img/s  ({r['speedup']:.2f}x)")
    return 0


def cmd_compress(args) -> int:
    from .compress import compress

    r = compress(args.checkpoint, args.sparsity, args.bits, args.steps, args.out, args.split, args.data_dir)
    _write_json(args.json, r)
    print(f"wrote {r['out']}: {r['bytes_compressed'] / 1e6:.3f} MB vs {r['bytes_fp32'] / 1e6:.3f} MB "
          f"fp32 safetensors ({1 / r['size_ratio']:.1f}x smaller; {r['sparsity']:.1%} of conv weights "
          f"pruned, {r['bits']}-bit shared weights)")
    print(f"top-1 on {r['split']} ({r['eval_count']:,} images): before {r['top1_before']:.2f}%  pruned "
          f"{r['top1_pruned_fp32']:.2f}%  compressed {r['top1_after']:.2f}%  (drop {r['top1_drop']:+.2f})")
    return 0


def cmd_bench(args) -> int:
    from .bench import RUNTIMES, bench

    try:
        sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    except ValueError:
        raise UsageError(f"--batch-sizes takes numbers separated by commas, got {args.batch_sizes!r}") from None
    runtimes = tuple(args.runtimes.split(",")) if args.runtimes else RUNTIMES
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown or min(sizes) < 1:
        raise UsageError(f"unknown runtime {unknown[0]!r}: choose from {', '.join(RUNTIMES)}" if unknown
                         else "--batch-sizes must be positive")
    r = bench(args.target, args.input_size, sizes, runtimes, args.seconds, train=args.train)
    _write_json(args.json, r)
    return 0


def cmd_cache(args) -> int:
    from .data.store import clear_stores, list_stores, stores_dir

    if args.action == "clear":
        print(f"removed the decode cache in {stores_dir()} ({clear_stores() / 1e9:.2f} GB)")
        return 0
    stores = list_stores()
    for s in stores:
        print(f"{s['key']}  {'x'.join(map(str, s['shape'])):>20}  {s['bytes'] / 1e9:7.2f} GB  {s['source']}")
    print(f"{len(stores)} decoded data sets, {sum(s['bytes'] for s in stores) / 1e9:.2f} GB in {stores_dir()}")
    return 0


# ----------------------------------------------------------------------------- parser

def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .config import add_train_arguments

    p = argparse.ArgumentParser(prog="squeezenet", description=(
        "SqueezeNet: AlexNet-level accuracy with 50x fewer parameters. Train, evaluate, predict, "
        "export, quantize, compress and benchmark."))
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("-v", "--verbose", action="store_true", help="also debug messages")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("info", help="per-layer table of any model: shapes, parameters, multiply-adds")
    s.add_argument("target", nargs="?", metavar="ARCH|CHECKPOINT", help="an architecture or a checkpoint "
                   "(default: squeezenet1_1, or the --recipe's model)")
    s.add_argument("--recipe", help="the model of this training recipe")
    s.add_argument("--input-size", type=_positive)
    s.add_argument("--num-classes", type=_positive)
    s.add_argument("--in-channels", type=_positive)
    add_train_arguments(s, groups=("model",), only=MODEL_FLAGS)
    s.add_argument("--json", help="also write the figures to this JSON file")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("train", help="train a model (default: the built-in shapes data set)")
    s.add_argument("--config", metavar="FILE", help="settings from a TOML file or a run's config.json; "
                   "flags override them")
    add_train_arguments(s)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("eval", help="top-1/top-5, per-class accuracy and confusion matrix")
    s.add_argument("checkpoint", help="a .safetensors checkpoint or a run directory")
    s.add_argument("--dataset", help="default: the data set the checkpoint was trained on")
    s.add_argument("--data-dir")
    s.add_argument("--split", choices=("val", "test"), default="test")
    s.add_argument("--batch-size", type=_positive, default=256)
    s.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="flip test-time augmentation (default: as trained)")
    s.add_argument("--tta-shift", type=int, default=None, metavar="N",
                   help="with TTA, also average views shifted by N pixels (default: as trained)")
    s.add_argument("--image-size", type=_positive, default=None, metavar="N",
                   help="evaluate at N x N with the same crop fraction (default: as trained)")
    s.add_argument("--json")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("predict", help="top-k labels with probabilities for image files or folders")
    s.add_argument("checkpoint")
    s.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders of them")
    s.add_argument("--top-k", type=_positive, default=5)
    _add_runtime_flags(s)
    s.add_argument("--json")
    s.set_defaults(func=cmd_predict)
    _add_deploy_parsers(sub)
    return p


def _add_runtime_flags(s) -> None:
    s.add_argument("--runtime", choices=("auto", "torch", "onnxruntime", "openvino"), default="auto",
                   help="auto: the fastest installed one, measured on this machine (cached)")
    s.add_argument("--precision", choices=("auto", "fp32", "bf16", "int8"), default="auto",
                   help="auto: int8 or bf16 (openvino) where `squeezenet quantize` measured at most 0.5 points "
                        "of top-1 lost")


def _add_serve_parser(sub) -> None:
    s = sub.add_parser("serve", help="HTTP API (POST /predict, GET /health, GET /model, GET /metrics) and the "
                       "web page")
    s.add_argument("checkpoint")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only; "
                   "beyond it without --api-key, a warning is printed)")
    s.add_argument("--port", type=int, default=8000)
    _add_runtime_flags(s)
    s.add_argument("--max-batch", type=_positive, default=32, help="images per inference call (32)")
    s.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a request waits for others to batch with")
    s.add_argument("--max-bytes", type=_positive, default=10 * 1024 * 1024, help="upload size limit (10 MiB)")
    s.add_argument("--workers", type=_positive, help="server processes, the cores shared among them (default: "
                                                     "one per core, at most 4; 1 for the lowest latency)")
    s.add_argument("--streams", type=_positive, default=1, help="batches each worker runs at once, its cores "
                                                                "shared among them (1)")
    s.add_argument("--max-queue", type=_positive, help="images waiting per worker; past it, 503 with "
                   "Retry-After at once (default: 8 x --max-batch)")
    s.add_argument("--timeout-s", type=_positive_float, default=10.0, help="seconds from a request's body to its "
                   "answer; past it, 504 (10)")
    s.add_argument("--read-timeout-s", type=_positive_float, default=30.0, help="seconds for a request's headers "
                   "to arrive, then for its body; past it, 408 (30)")
    s.add_argument("--max-connections", type=_positive, default=2048, help="open connections per worker; past it "
                   "the longest idle is closed, else the new one gets 503 (2048)")
    s.add_argument("--api-key", metavar="KEY", help="required on /predict, /model and /metrics as "
                   "'Authorization: Bearer KEY' (default: $SQUEEZENET_API_KEY, which ps does not show; none: "
                   "open to whoever reaches it)")
    s.add_argument("--cors-origin", metavar="ORIGIN", help="let pages of this origin call the API (e.g. "
                   "https://example.com; default: none)")
    s.add_argument("--ort-web", metavar="DIR", help="the page at / on onnxruntime-web from this dist folder "
                   "(default: on squeezenet's engine as WebAssembly)")
    s.add_argument("--page", action=argparse.BooleanOptionalAction, default=True, help="serve the web page at /")
    s.set_defaults(func=cmd_serve)


def _add_deploy_parsers(sub) -> None:
    s = sub.add_parser("export", help="ONNX, TorchScript, a web page or ExecuTorch, checked against PyTorch")
    s.add_argument("checkpoint")
    s.add_argument("--format", required=True, help="onnx, torchscript, web (a static folder that runs in the "
                   "browser), executorch (.pte for phones), tflite (LiteRT, for Android and MediaPipe) or c "
                   "(the C engine for microcontrollers and "
                   "embedded Linux: model.c/.h, the engine, an example and its Makefile)")
    s.add_argument("--out", help="default: beside the checkpoint (.onnx / .pt / site/ / .pte / c/)")
    s.add_argument("--input", choices=("uint8", "float"), help="uint8: RGB pixels (N, H, W, 3) with the "
                   "preprocessing inside the model (default for web and executorch); float: normalised "
                   "NCHW (default for onnx and torchscript)")
    s.add_argument("--precision", choices=("fp32", "int8"), help="web, executorch, tflite and c: int8 quantized on the "
                   "training images (default fp32)")
    s.add_argument("--calib-data", help="int8: folder of calibration images (default: the training data)")
    s.add_argument("--ort-web", metavar="DIR", help="web: onnxruntime-web's dist folder (default: "
                   "./node_modules/onnxruntime-web/dist, the cache, else the npm registry, verified)")
    s.add_argument("--top-k", type=_positive, default=5, help="web: labels shown per image")
    s.add_argument("--runtime", choices=("engine", "ort-web"), help="web: squeezenet's C engine as WebAssembly "
                   "(default: a few KB) or onnxruntime-web (14 MB)")
    s.add_argument("--opset", type=int, default=17, help="ONNX opset (10..20)")
    s.add_argument("--dynamic-batch", action="store_true", help="any batch size (default: batch 1)")
    s.add_argument("--input-size", type=_positive, help="c: the input size to plan for (default: the checkpoint's)")
    s.add_argument("--max-ram", metavar="BYTES", help="c: fail if the model needs more RAM (e.g. 163840 or 160K)")
    s.add_argument("--data-dir", help="c, web: held-out images to check the export on (default: the checkpoint's "
                   "evaluation split)")
    s.add_argument("--check-images", type=_positive, help="c: check on at most this many images (default: all)")
    s.add_argument("--json")
    s.set_defaults(func=cmd_export)

    _add_serve_parser(sub)

    s = sub.add_parser("quantize", help="int8 ONNX (onnxruntime static QDQ), calibrated on training images; "
                                       "int8 and bf16 accuracy measured")
    s.add_argument("checkpoint")
    s.add_argument("--calib-data", help="folder of calibration images (default: the checkpoint's training data)")
    s.add_argument("--calib-images", type=_positive, default=256)
    s.add_argument("--out", help="default: beside the checkpoint (.int8.onnx)")
    s.add_argument("--split", choices=("val", "test"), default="test", help="where top-1 is measured")
    s.add_argument("--data-dir", help="held-out images to measure top-1 on (DIR/<class>/...; default: the "
                                      "checkpoint's own test set)")
    s.add_argument("--input", choices=("float", "uint8"), default="float",
                   help="the int8 model's input: float (normalised NCHW, as predict runs it) or uint8 RGB NHWC")
    s.add_argument("--seconds", type=float, default=2.0, help="timed seconds per model for the speed figure")
    s.add_argument("--json")
    s.set_defaults(func=cmd_quantize)

    s = sub.add_parser("compress", help="Deep Compression: prune + fine-tune, k-means weight sharing")
    s.add_argument("checkpoint")
    # the smallest file within a point of top-1 on a validation split: benchmarks/RESULTS.md#compress-defaults
    s.add_argument("--sparsity", type=float, default=0.6, help="fraction of the inner conv weights pruned (0.6)")
    s.add_argument("--bits", type=int, default=4, help="bits per shared weight (4)")
    s.add_argument("--steps", type=_positive, default=500, help="retraining steps in all, batch 128 (500)")
    s.add_argument("--out", help="default: beside the checkpoint (.sqz)")
    s.add_argument("--split", choices=("val", "test"), default="test")
    s.add_argument("--data-dir", help="held-out images to score before and after (default: the checkpoint's "
                   "evaluation split)")
    s.add_argument("--json")
    s.set_defaults(func=cmd_compress)

    s = sub.add_parser("bench", help="inference img/s and latency per runtime, plus a training step")
    s.add_argument("target", nargs="?", default="squeezenet1_1", metavar="ARCH|CHECKPOINT")
    s.add_argument("--input-size", type=_positive, help="default: 224, or the checkpoint's")
    s.add_argument("--batch-sizes", default="1,32")
    s.add_argument("--runtimes", help="comma-separated subset of eager,channels_last,compile,onnxruntime,"
                                      "onnxruntime-int8,openvino,openvino-bf16,openvino-int8")
    s.add_argument("--seconds", type=float, default=2.0, help="timed seconds per runtime and batch size")
    s.add_argument("--train", action=argparse.BooleanOptionalAction, default=True,
                   help="also time a training step")
    s.add_argument("--json")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("cache", help="list or clear the decode cache of image folders")
    s.add_argument("action", choices=("list", "clear"), nargs="?", default="list")
    s.set_defaults(func=cmd_cache)


class _Console(logging.Handler):
    """Library messages to stdout (warnings and errors to stderr), bound to the streams of this call."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stdout if record.levelno < logging.WARNING else sys.stderr
        prefix = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        stream.write(prefix + record.getMessage() + "\n")
        stream.flush()


def configure_logging(quiet: bool = False, verbose: bool = False) -> None:
    logger = logging.getLogger("squeezenet")
    for h in [h for h in logger.handlers if isinstance(h, _Console)]:
        logger.removeHandler(h)
    logger.addHandler(_Console())
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


def _show_warning(message, *_args, **_kwargs) -> None:
    sys.stderr.write(f"warning: {message}\n")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.quiet, args.verbose)
    # The command owns its warnings: one line each on this call's stderr.
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _run(args, parser)


def _run(args, parser) -> int:
    where = f"squeezenet {args.command}"
    try:
        return args.func(args)
    except UsageError as e:
        if args.debug:
            raise
        parser.exit(2, f"{where}: error: {e}\n")
    except SqueezeNetError as e:
        if args.debug:
            raise
        print(f"{where}: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 1)
    except KeyboardInterrupt:
        print(f"{where}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader left early (`squeezenet eval ... | head`): stop quietly, as Unix tools do.
        # Results files (--json) were written before printing. Stdout goes to /dev/null so that
        # the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as e:  # the last resort: one line in words, the traceback only with --debug
        if args.debug:
            raise
        print(f"{where}: error: {_in_words(e)}", file=sys.stderr)
        return 1


def _in_words(e: BaseException) -> str:
    if isinstance(e, MemoryError):
        return ("out of memory: use a smaller --batch-size or --image-size, or free memory "
                "(run with --debug for the traceback)")
    if isinstance(e, OSError) and e.errno in DISK_ERRORS:
        where = f" on {e.filename}" if e.filename else ""
        return f"{DISK_ERRORS[e.errno]}{where} ({e.strerror}); free space or fix the permissions and run again"
    if isinstance(e, OSError) and e.filename:
        return f"{e.strerror or e} ({Path(os.fsdecode(e.filename))})"
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"unexpected {type(e).__name__}: {text[:300]} (run with --debug for the traceback; please report it)"


if __name__ == "__main__":
    sys.exit(main())
