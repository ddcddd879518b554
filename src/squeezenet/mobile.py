"""``export --format executorch``: a ``.pte`` for phones, checked by ExecuTorch's own runtime
against PyTorch before it is written.

torch.export traces the BN-folded model (behind the uint8 preprocessing by default, so the app
passes RGB bytes), XNNPACK's partitioner delegates its ops (the ceil-mode pools included), and
int8 goes through PT2E with XNNPACK's quantizer (symmetric per-channel weights, calibrated on the
checkpoint's training images). Batch 1, static shapes: one photo at a time, as on a phone.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_checkpoint
from .data import normalize
from .errors import SqueezeNetError, UsageError
from .export import _compare, as_rgb_nhwc, check_input, default_out, fold_batchnorm, raw_wrapper, sample_images
from .files import atomic_path
from .quantize import accuracy, training_images
from .splits import eval_data

PRECISIONS = ("fp32", "int8")
NUM_CALIB = 64  # images for the PT2E observers


def require_executorch() -> None:
    if importlib.util.find_spec("executorch") is None:
        raise SqueezeNetError("--format executorch needs the executorch package: pip install 'squeezenet[mobile]'")


def lower(module: torch.nn.Module, example: torch.Tensor, calib: torch.Tensor | None = None) -> tuple[bytes, list]:
    """(the .pte program, ops left outside the XNNPACK delegate) of ``module`` at ``example``'s
    shape; ``calib``: quantize to int8 first (PT2E, observers fed these inputs one at a time)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export's and torchao's deprecation notices
        logging.getLogger("torchao").setLevel(logging.ERROR)
        program = torch.export.export(module.eval(), (example,))
        if calib is not None:
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                XNNPACKQuantizer,
                get_symmetric_quantization_config,
            )
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

            quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
            prepared = prepare_pt2e(program.module(), quantizer)
            for i in range(len(calib)):
                prepared(calib[i:i + 1])
            program = torch.export.export(convert_pt2e(prepared), (example,))
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        outside = [str(n.target).removeprefix("<EdgeOpOverload: ").split(">")[0]
                   for n in edge.exported_program().graph.nodes if n.op == "call_function"
                   and "executorch_call_delegate" not in str(n.target) and "getitem" not in str(n.target)]
        return edge.to_executorch().buffer, outside


def pte_runner(data: bytes):
    """A function from a batch (torch) to logits (numpy), run by ExecuTorch image by image."""
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(data)  # reads ``data`` in place: it must outlive the method
    method = program.load_method("forward")

    def run(x, keep=(data, program)):
        return np.concatenate([method.execute([torch.as_tensor(x[i:i + 1])])[0].numpy() for i in range(len(x))])
    return run


def export_executorch(checkpoint, out=None, precision: str = "fp32", input_type: str = "uint8",
                      calib_data=None, split: str = "test") -> dict:
    """Lower, run with ExecuTorch, compare with PyTorch (fp32: logits; int8: top-1 on the
    evaluation data), then write atomically."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown --precision {precision!r} for executorch: choose fp32 or int8")
    check_input(input_type)
    require_executorch()
    model, meta = load_checkpoint(checkpoint)
    pre, raw = meta.preprocess, input_type == "uint8"
    module = raw_wrapper(model, meta) if raw else fold_batchnorm(model)
    images = sample_images(meta)
    x = normalize(images, pre.mean, pre.std)
    fed = as_rgb_nhwc(images) if raw else x
    calib = training_images(meta, calib_data, NUM_CALIB, raw=raw) if precision == "int8" else None
    try:
        data, outside = lower(module, fed[:1], calib)
    except Exception as e:  # torch.export and the lowering raise many types for unsupported graphs
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise SqueezeNetError(f"cannot lower this checkpoint to ExecuTorch ({type(e).__name__}: {first})") from None
    run = pte_runner(data)
    with torch.no_grad():
        expected = model(x).numpy()
    got = run(fed)
    check = {"agreement_top1": float((got.argmax(1) == expected.argmax(1)).mean()), "checked_on": len(x)}
    if precision == "fp32":
        check["max_abs_diff"] = _compare(got, expected, "ExecuTorch")
    else:
        test = eval_data(meta, split=split)
        torch_run = lambda b: model(torch.as_tensor(b)).detach().numpy()  # noqa: E731
        with torch.no_grad():
            check.update(top1_fp32=accuracy(torch_run, test), top1_int8=accuracy(run, test, raw), eval_count=len(test))
        check["top1_drop"] = check["top1_fp32"] - check["top1_int8"]
    out = Path(out) if out else default_out(checkpoint, ".int8.pte" if precision == "int8" else ".pte")
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    return {"format": "executorch", "out": str(out), "bytes": out.stat().st_size, "precision": precision,
            "input": input_type, "delegate": "XNNPACK", "outside_delegate": sorted(set(outside)), **check}


# ----------------------------------------------------------------------------- LiteRT (.tflite)

def require_litert() -> None:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # LiteRT's C++ logging, one line per interpreter
    missing = [m for m in ("litert_torch", "ai_edge_litert") if importlib.util.find_spec(m) is None]
    if missing:
        raise SqueezeNetError(f"--format tflite needs {' and '.join(missing)}: pip install 'squeezenet-kit[tflite]' "
                              f"(litert-torch and ai-edge-litert, about 0.9 GB with jax)")


class Probabilities(torch.nn.Module):
    """uint8 RGB pixels (N, H, W, 3) in, class probabilities out: what Android's and MediaPipe's
    image classifiers take and give (their scores are probabilities)."""

    def __init__(self, model: torch.nn.Module, meta):
        super().__init__()
        self.net = raw_wrapper(model, meta)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(images), dim=1)


def tflite_bytes(module: torch.nn.Module, example: torch.Tensor, calib: torch.Tensor | None = None) -> bytes:
    """The ``.tflite`` of ``module`` at ``example``'s shape by litert-torch; ``calib``: int8 first
    (PT2E with LiteRT's quantizer: static, symmetric per-channel weights, observers fed these)."""
    import tempfile

    import litert_torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("torchao", "absl", "litert_torch"):
            logging.getLogger(name).setLevel(logging.ERROR)
        module = module.eval()
        if calib is None:
            edge = litert_torch.convert(module, (example,))
        else:
            from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
            from litert_torch.quantize.quant_config import QuantConfig
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

            quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
            prepared = prepare_pt2e(torch.export.export(module, (example,)).module(), quantizer)
            for i in range(len(calib)):
                prepared(calib[i:i + 1])
            edge = litert_torch.convert(convert_pt2e(prepared, fold_quantize=False), (example,),
                                        quant_config=QuantConfig(pt2e_quantizer=quantizer))
        with tempfile.TemporaryDirectory() as tmp:
            edge.export(f"{tmp}/m.tflite")
            return Path(f"{tmp}/m.tflite").read_bytes()


def tflite_runner(data: bytes):
    """A function from uint8 NHWC images (numpy) to probabilities, run by the LiteRT interpreter
    image by image (an int8 output dequantized by its own scale)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=data)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero = out.get("quantization", (0.0, 0))

    def run(x):
        rows = []
        for i in range(len(x)):
            interpreter.set_tensor(inp["index"], np.ascontiguousarray(x[i:i + 1]))
            interpreter.invoke()
            y = interpreter.get_tensor(out["index"]).astype(np.float32)
            rows.append((y - zero) * scale if scale else y)
        return np.concatenate(rows)
    return run


def export_tflite(checkpoint, out=None, precision: str = "fp32", calib_data=None, split: str = "test") -> dict:
    """``export --format tflite``: converted by litert-torch, run by the LiteRT interpreter against
    PyTorch (fp32: probabilities within 1e-4; int8: top-1 on the evaluation data), then written
    with ``labels.txt`` beside it."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown --precision {precision!r} for tflite: choose fp32 or int8")
    require_litert()
    model, meta = load_checkpoint(checkpoint)
    if meta.preprocess.in_channels not in (1, 3):
        raise SqueezeNetError(f"the .tflite takes RGB pixels, and this model takes {meta.preprocess.in_channels} "
                              f"channels")
    module = Probabilities(model, meta).eval()
    images = as_rgb_nhwc(sample_images(meta))
    calib = training_images(meta, calib_data, NUM_CALIB, raw=True) if precision == "int8" else None
    try:
        data = tflite_bytes(module, images[:1], calib)
    except Exception as e:  # the converter raises many types for unsupported graphs
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise SqueezeNetError(f"cannot convert this checkpoint to LiteRT ({type(e).__name__}: {first})") from None
    run = tflite_runner(data)
    with torch.no_grad():
        expected = module(images).numpy()
    got = run(images.numpy())
    check = {"agreement_top1": float((got.argmax(1) == expected.argmax(1)).mean()), "checked_on": len(images)}
    if precision == "fp32":
        check["max_abs_diff"] = _compare(got, expected, "LiteRT")
    else:
        test = eval_data(meta, split=split)
        with torch.no_grad():
            check.update(top1_fp32=accuracy(lambda b: module(torch.as_tensor(b)).numpy(), test, raw=True),
                         top1_int8=accuracy(run, test, raw=True), eval_count=len(test))
        check["top1_drop"] = check["top1_fp32"] - check["top1_int8"]
    out = Path(out) if out else default_out(checkpoint, ".int8.tflite" if precision == "int8" else ".tflite")
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    labels = out.with_name(out.stem + ".labels.txt")
    with atomic_path(labels) as tmp:
        tmp.write_text("\n".join(meta.class_names) + "\n")
    return {"format": "tflite", "out": str(out), "labels": str(labels), "bytes": len(data), "precision": precision,
            "input": "uint8 NHWC RGB", "output": "probabilities", **check}
