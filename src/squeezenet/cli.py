"""``squeezenet`` command line: parses flags and calls the library, nothing more.

Exit codes: 0 success, 2 usage error, 1 any other failure (one message on stderr; a traceback
only with --debug).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from .errors import SqueezeNetError, UsageError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    return value


def _duration(text: str) -> float:
    """Seconds from '2700', '2700s', '45m' or '1.5h'."""
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], units[text[-1]]) if text[-1:] in units else (text, 1)
    try:
        return float(number) * unit
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration like 45m, 900s or 1.5h, got {text!r}") from None


def _write_json(path: str | None, obj) -> None:
    if path:
        from .checkpoint import write_text_atomic

        write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


# ----------------------------------------------------------------------------- info

def cmd_info(args) -> int:
    from .summary import format_info
    from .zoo import create_model, list_models

    if args.arch not in list_models():
        raise UsageError(f"unknown architecture {args.arch!r}: choose one of {', '.join(list_models())}")
    model = create_model(args.arch, num_classes=args.num_classes, in_channels=args.in_channels,
                         bypass=args.bypass, batch_norm=args.batch_norm, small_input=args.small_input,
                         final_relu=args.final_relu)
    if args.input_size < model.min_input_size:
        raise UsageError(f"--input-size {args.input_size} is below {args.arch}'s minimum input size "
                         f"{model.min_input_size}")
    text, summary = format_info(args.arch, model, args.input_size)
    _write_json(args.json, summary)
    print(text)
    return 0


# ----------------------------------------------------------------------------- train

TRAIN_FLAGS = [
    # (flag, type, help)
    ("--recipe", str, "named recipe (shapes, noise, fashion-mnist, cifar10, folder); flags override it"),
    ("--arch", str, "architecture (see `squeezenet info --help`)"),
    ("--dataset", str, "shapes (default), noise, fashion-mnist, cifar10 or folder"),
    ("--data-dir", str, "where the data set lives (folder: DIR/<class>/<images>)"),
    ("--image-size", _positive_int, "resize images to N x N (default: the data set's own size)"),
    ("--val-fraction", float, "fraction of the training data held out for validation (0.1); 0 trains on "
                              "all of it (a final fit: no per-epoch validation; the last epoch is best)"),
    ("--epochs", _positive_int, "number of epochs (total, also when resuming)"),
    ("--time-budget", _duration, "train for this long (45m, 900s, 1.5h) instead of --epochs: the schedule "
                                 "runs on elapsed training time and ends with the budget"),
    ("--batch-size", _positive_int, "global batch size"),
    ("--optimizer", str, "sgd (Nesterov), adam, adamw or muon (Muon on the Fire filters, SGD on the rest)"),
    ("--lr", float, "peak learning rate"),
    ("--momentum", float, "SGD momentum (0.9)"),
    ("--muon-lr", float, "with --optimizer muon: the Fire filters' peak lr, a relative step size (0.05)"),
    ("--muon-momentum", float, "with --optimizer muon: the Fire filters' Nesterov momentum (0.6)"),
    ("--muon-ns-steps", int, "with --optimizer muon: Newton-Schulz iterations per step (5; airbench runs 3)"),
    ("--weight-decay", float, "weight decay (not applied to biases and BatchNorm)"),
    ("--schedule", str, "onecycle, cosine, step or constant (after linear warm-up)"),
    ("--warmup-epochs", float, "epochs of linear learning-rate warm-up"),
    ("--label-smoothing", float, "label smoothing (0 = off)"),
    ("--grad-clip", float, "clip the gradient norm to this value (0 = off)"),
    ("--ema", float, "keep an exponential moving average of the weights with this decay (0 = off)"),
    ("--augment", str, "auto, none, flip, crop, crop-noflip or rrc (random-resized crop)"),
    ("--lookahead", int, "Lookahead: every N steps pull the weights halfway back to the slow weights (0 = off)"),
    ("--crop-pad", int, "pad-and-crop shift in pixels for --augment crop (default: 1/8 of the image, 4 at 32 px)"),
    ("--progressive-resize", float, "progressive resizing: training images start at this fraction of their "
                                    "side and grow to full size (1 = off)"),
    ("--resize-finetune", float, "with --progressive-resize, the final fraction of training at full size (0.2)"),
    ("--erase", float, "random erasing: probability per training image of noise over a random rectangle (0 = off)"),
    ("--bypass", str, "none, simple or complex (paper section 6)"),
    ("--dropout", float, "dropout before conv10 (0.5)"),
    ("--squeeze-ratio", float, "the paper's SR: squeeze channels / expand channels (0.125 in v1.0 and v1.1)"),
    ("--pool-after", str, "the layers the 3x3/2 max-pools follow, e.g. conv1,fire3,fire7 (default: "
                          "the version's: conv1,fire3,fire5 in v1.1, conv1,fire4,fire8 in v1.0)"),
    ("--stem-channels", int, "conv1's filters (default: the version's, 64 in v1.1, 96 in v1.0)"),
    ("--weights", str, "initial weights: a .pth/.safetensors file, or 'torchvision' (download)"),
    ("--device", str, "auto, cpu or cuda"),
    ("--amp", str, "mixed precision: auto (bf16 where the GPU or CPU has it natively), bf16, fp16 or off"),
    ("--seed", int, "random seed (0): initialisation, order, augmentation, and the split unless --split-seed"),
    ("--split-seed", int, "seed of the train/val split alone (default: --seed); fix it to compare seeds on one split"),
    ("--out", str, "output directory (default runs/<timestamp>)"),
    ("--resume", str, "continue the run in this directory from its last completed epoch"),
    ("--stop-after", _positive_int, "end this invocation after N epochs (continue with --resume)"),
    ("--train-size", _positive_int, "use a seeded random subset of N training images (quick runs)"),
    ("--tta-shift", _positive_int, "with --tta, eval also averages views shifted by N pixels (0 = flip only)"),
]
TRAIN_SWITCHES = [
    ("--batch-norm", "BatchNorm after every conv (off by default, as in the paper)"),
    ("--small-input", "3x3 stride-1 stem without pooling, for 28-32 px images"),
    ("--final-relu", "ReLU after conv10, as in the paper (on by default)"),
    ("--zero-init-residual", "with BN, bypassed Fire modules start as the identity (on by default)"),
    ("--channels-last", "NHWC memory format (faster on CPU; on by default)"),
    ("--tta", "evaluate with horizontal-flip test-time augmentation"),
    ("--alternate-flip", "mirror each training image in every other epoch instead of at random"),
    ("--whiten", "initialise conv1 as a patch-whitening transform of the training images"),
    ("--strict", "unreadable images are an error instead of a skipped warning"),
    ("--progress", "progress bar (default: on terminals only)"),
]


def cmd_train(args) -> int:
    from .train import make_config, num_threads_default, train

    values = {flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_"))
              for flag, *_ in TRAIN_FLAGS + TRAIN_SWITCHES}
    cfg = make_config(values)
    num_threads_default()
    train(cfg)
    return 0


# ----------------------------------------------------------------------------- eval / predict

def cmd_eval(args) -> int:
    from .checkpoint import load_checkpoint
    from .data import load_eval_split
    from .evaluate import MAX_TTA_SHIFT, evaluate

    model, meta = load_checkpoint(args.checkpoint)
    data, loader = load_eval_split(meta, args.dataset, args.data_dir, args.split, args.batch_size)
    tta = meta.get("tta", False) if args.tta is None else args.tta
    shift = meta.get("tta_shift", 0) if args.tta_shift is None else args.tta_shift
    if not 0 <= shift <= MAX_TTA_SHIFT:
        raise UsageError(f"--tta-shift must be 0 to {MAX_TTA_SHIFT} pixels, got {shift}")
    shift = shift if tta else 0
    result = evaluate(model, loader, len(meta["class_names"]), tta=tta, shift=shift)
    classes = meta["class_names"]
    _write_json(args.json, {"checkpoint": str(args.checkpoint), "split": args.split, "tta": tta,
                            "tta_shift": shift, "classes": classes, **result})
    views = (f", flip + {shift} px shift TTA (6 views)" if shift else ", flip TTA") if tta else ""
    print(f"{args.checkpoint}: {meta['arch']} on {args.dataset or meta['dataset']} {args.split} "
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

    results, runtime = predict_files(args.checkpoint, args.images, args.top_k, args.runtime)
    _write_json(args.json, {"runtime": runtime, "predictions": results})
    for r in results:
        best = ", ".join(f"{p['label']} {p['probability'] * 100:.1f}%" for p in r["top"])
        print(f"{r['image']}: {best}")
    print(f"(runtime: {runtime})", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- deploy

def cmd_export(args) -> int:
    from .export import export

    r = export(args.checkpoint, args.format, args.out, args.opset, args.dynamic_batch)
    _write_json(args.json, r)
    print(f"wrote {r['out']} ({r['bytes'] / 1e6:.2f} MB, {r['format']}"
          f"{', opset ' + str(r['opset']) if r['opset'] else ''}); checked against PyTorch on "
          f"{r['checked_on']} images: max abs diff {r['max_abs_diff']:.2e}")
    return 0


def cmd_quantize(args) -> int:
    from .quantize import quantize

    r = quantize(args.checkpoint, args.calib_data, args.out, args.split, args.calib_images, args.seconds)
    _write_json(args.json, r)
    print(f"wrote {r['out']}: int8 {r['bytes_int8'] / 1e6:.2f} MB vs fp32 {r['bytes_fp32'] / 1e6:.2f} MB "
          f"({r['calibration_images']} calibration images)")
    print(f"top-1 on {r['split']} ({r['eval_count']:,} images): fp32 {r['top1_fp32']:.2f}%  "
          f"int8 {r['top1_int8']:.2f}%  (drop {r['top1_drop']:+.2f} points)")
    print(f"onnxruntime batch {r['batch']}: fp32 {r['images_per_s_fp32']:,.0f} img/s  "
          f"int8 {r['images_per_s_int8']:,.0f} img/s  ({r['speedup']:.2f}x)")
    return 0


def cmd_compress(args) -> int:
    from .compress import compress

    r = compress(args.checkpoint, args.sparsity, args.bits, args.steps, args.out, args.split)
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


# ----------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    from .model import BYPASS_MODES
    from .zoo import list_models

    p = argparse.ArgumentParser(prog="squeezenet", description=(
        "SqueezeNet: AlexNet-level accuracy with 50x fewer parameters. Train, evaluate, predict, "
        "export, quantize, compress and benchmark."))
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("info", help="per-layer table: shapes, parameters, multiply-adds")
    s.add_argument("arch", help=f"one of {', '.join(list_models())}")
    s.add_argument("--input-size", type=_positive_int, default=224)
    s.add_argument("--num-classes", type=_positive_int, default=1000)
    s.add_argument("--in-channels", type=_positive_int, default=3)
    s.add_argument("--bypass", choices=BYPASS_MODES, default="none")
    s.add_argument("--batch-norm", action="store_true")
    s.add_argument("--small-input", action="store_true")
    s.add_argument("--final-relu", action=argparse.BooleanOptionalAction, default=True)
    s.add_argument("--json", help="also write the figures to this JSON file")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("train", help="train a model (default: the built-in shapes data set)")
    for flag, typ, text in TRAIN_FLAGS:
        s.add_argument(flag, type=typ, default=None, help=text)
    for flag, text in TRAIN_SWITCHES:
        s.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("eval", help="top-1/top-5, per-class accuracy and confusion matrix")
    s.add_argument("checkpoint", help="a .safetensors checkpoint or a run directory")
    s.add_argument("--dataset", help="default: the data set the checkpoint was trained on")
    s.add_argument("--data-dir")
    s.add_argument("--split", choices=("val", "test"), default="test")
    s.add_argument("--batch-size", type=_positive_int, default=256)
    s.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="flip test-time augmentation (default: as trained)")
    s.add_argument("--tta-shift", type=_positive_int, default=None, metavar="N",
                   help="with TTA, also average views shifted by N pixels (default: as trained)")
    s.add_argument("--json")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("predict", help="top-k labels with probabilities for image files")
    s.add_argument("checkpoint")
    s.add_argument("images", nargs="+", metavar="IMAGE")
    s.add_argument("--top-k", type=_positive_int, default=5)
    s.add_argument("--runtime", choices=("auto", "torch", "onnxruntime"), default="auto",
                   help="auto: the fastest available (onnxruntime when installed)")
    s.add_argument("--json")
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("export", help="ONNX or TorchScript, checked against PyTorch, metadata inside")
    s.add_argument("checkpoint")
    s.add_argument("--format", required=True, help="onnx or torchscript")
    s.add_argument("--out", help="default: beside the checkpoint (.onnx / .pt)")
    s.add_argument("--opset", type=int, default=17, help="ONNX opset (10..20)")
    s.add_argument("--dynamic-batch", action="store_true", help="any batch size (default: batch 1)")
    s.add_argument("--json")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("quantize", help="int8 ONNX (onnxruntime static QDQ), calibrated on training images")
    s.add_argument("checkpoint")
    s.add_argument("--calib-data", help="folder of calibration images (default: the checkpoint's training data)")
    s.add_argument("--calib-images", type=_positive_int, default=256)
    s.add_argument("--out", help="default: beside the checkpoint (.int8.onnx)")
    s.add_argument("--split", choices=("val", "test"), default="test", help="where top-1 is measured")
    s.add_argument("--seconds", type=float, default=2.0, help="timed seconds per model for the speed figure")
    s.add_argument("--json")
    s.set_defaults(func=cmd_quantize)

    s = sub.add_parser("compress", help="Deep Compression: prune + fine-tune, k-means weight sharing")
    s.add_argument("checkpoint")
    s.add_argument("--sparsity", type=float, default=0.5, help="fraction of conv weights pruned (0.5)")
    s.add_argument("--bits", type=int, default=4, help="bits per shared weight (4)")
    s.add_argument("--steps", type=int, default=3000, help="retraining steps in all, batch 128 (3000)")
    s.add_argument("--out", help="default: beside the checkpoint (.sqz)")
    s.add_argument("--split", choices=("val", "test"), default="test")
    s.add_argument("--json")
    s.set_defaults(func=cmd_compress)

    s = sub.add_parser("bench", help="inference img/s and latency per runtime, plus a training step")
    s.add_argument("target", nargs="?", default="squeezenet1_1", metavar="ARCH|CHECKPOINT")
    s.add_argument("--input-size", type=_positive_int, help="default: 224, or the checkpoint's")
    s.add_argument("--batch-sizes", default="1,32")
    s.add_argument("--runtimes", help="comma-separated subset of eager,channels_last,compile,"
                                      "onnxruntime,onnxruntime-int8")
    s.add_argument("--seconds", type=float, default=2.0, help="timed seconds per runtime and batch size")
    s.add_argument("--train", action=argparse.BooleanOptionalAction, default=True,
                   help="also time a training step")
    s.add_argument("--json")
    s.set_defaults(func=cmd_bench)
    return p


def _format_warning(message, category, filename, lineno, line=None):
    return f"warning: {message}\n"


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.formatwarning = _format_warning
    try:
        return args.func(args)
    except UsageError as e:
        if args.debug:
            raise
        parser.exit(2, f"squeezenet {args.command}: error: {e}\n")
    except SqueezeNetError as e:
        if args.debug:
            raise
        print(f"squeezenet {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader left early (`squeezenet eval ... | head`): stop quietly, as Unix tools do.
        # Results files (--json) were written before printing. Stdout goes to /dev/null so that
        # the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
