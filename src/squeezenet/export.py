"""``export``: a checkpoint as a self-contained ONNX or TorchScript file, checked after writing.

The file carries the class names and the preprocessing (input size, channels, mean, std) in its
metadata (ONNX ``metadata_props``, TorchScript extra file ``squeezenet.json``), so another program
can use it with nothing else. The check runs the written file on real images from the checkpoint's
own evaluation data and compares it with PyTorch (max abs diff <= 1e-4).
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import load_checkpoint
from .errors import SqueezeNetError, UsageError
from .files import atomic_path
from .model import Fire
from .runs import RunMeta

FORMATS = ("onnx", "torchscript")
# 10: first MaxPool with ceil_mode (the torchvision export bug); 13: per-channel QDQ for quantize;
# 20: the highest the TorchScript-based exporter writes. The torch.export-based exporter needs the
# extra package onnxscript and gains nothing for a plain CNN, so it is not used.
MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 10, 20, 17
TOLERANCE = 1e-4
EXTRA_FILE = "squeezenet.json"


def metadata(meta: RunMeta) -> dict[str, str]:
    """What a consumer needs to feed the model: string key/values, JSON where not a plain string."""
    pre = meta.preprocess
    return {"arch": meta.arch, "class_names": json.dumps(meta.class_names),
            "image_size": str(pre.image_size), "in_channels": str(pre.in_channels),
            "mean": json.dumps(list(pre.mean)), "std": json.dumps(list(pre.std)),
            "input_layout": "NCHW float32, (pixel / 255 - mean) / std",
            "squeezenet_metadata": json.dumps(meta.to_dict())}


def sample_inputs(meta: RunMeta, n: int = 8) -> torch.Tensor:
    """``n`` real, normalised images from the checkpoint's evaluation data (random ones, with a
    warning, where that data is not on this machine)."""
    from .splits import eval_data

    try:
        data = eval_data(meta, split="test")
        return data.batch(torch.arange(min(n, len(data))))
    except SqueezeNetError as e:
        warnings.warn(f"checking the export on random inputs: the evaluation data is unavailable ({e})", stacklevel=2)
        pre = meta.preprocess
        g = torch.Generator().manual_seed(0)
        return torch.randn(n, pre.in_channels, pre.image_size, pre.image_size, generator=g)


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(f"unsupported --opset {opset}: choose {MIN_OPSET}..{MAX_OPSET} (ceil-mode "
                         f"max-pooling needs >= {MIN_OPSET}; {MAX_OPSET} is the exporter's highest)")


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy with each BatchNorm folded into the conv(s) before it. Fire's expand BN
    follows the concat, which no graph optimiser can fold, so it is split over both expand convs
    here; otherwise it stays a separate op and int8 quantization leaves it in float."""
    model = copy.deepcopy(model).eval()

    @torch.no_grad()
    def fold(convs, bn):
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        for conv, s, b in zip(convs, scale.split([c.out_channels for c in convs]),
                              shift.split([c.out_channels for c in convs])):
            bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
            conv.weight.mul_(s.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter(bias * s + b)
        return nn.Identity()

    for m in model.modules():
        if isinstance(m, Fire) and isinstance(m.squeeze_bn, nn.BatchNorm2d):
            m.squeeze_bn = fold([m.squeeze], m.squeeze_bn)
            m.expand_bn = fold([m.expand1x1, m.expand3x3], m.expand_bn)
    if isinstance(model.features[1], nn.BatchNorm2d):  # the stem: conv1 -> BN
        model.features[1] = fold([model.features[0]], model.features[1])
    return model


def onnx_bytes(model: torch.nn.Module, example: torch.Tensor, opset: int = DEFAULT_OPSET,
               dynamic_batch: bool = True, meta: RunMeta | None = None) -> bytes:
    """The serialised ONNX model (eval mode: dropout gone, BatchNorm folded into the convs)."""
    import onnx

    check_opset(opset)
    model = fold_batchnorm(model)
    f = io.BytesIO()
    axes = {"images": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(model, (example.contiguous(),), f, dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=["logits"], dynamic_axes=axes,
                          do_constant_folding=True)
    proto = onnx.load_from_string(f.getvalue())
    if meta is not None:
        for key, value in metadata(meta).items():
            proto.metadata_props.add(key=key, value=value)
    return proto.SerializeToString()


def ort_session(model_bytes_or_path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    source = str(model_bytes_or_path) if isinstance(model_bytes_or_path, Path) else model_bytes_or_path
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def verify_onnx(data: bytes, model: torch.nn.Module, x: torch.Tensor) -> float:
    """onnx.checker, then max |ONNX - PyTorch| over ``x``; raises above ``TOLERANCE``."""
    import onnx

    try:
        onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    except onnx.checker.ValidationError as e:
        raise SqueezeNetError(f"the exported ONNX model is invalid: {e}") from None
    session = ort_session(data)
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    fixed = session.get_inputs()[0].shape[0]
    step = fixed if isinstance(fixed, int) else len(x)  # a static-batch model takes its own size
    got = np.concatenate([session.run(None, {"images": x[i:i + step].numpy()})[0]
                          for i in range(0, len(x) - step + 1, step)])
    return _compare(got, expected[:len(got)], "ONNX")


def _compare(got, expected, what: str) -> float:
    """Max abs difference of the logits. The bound is 1e-4 for logits up to 1 and scales with them
    beyond: a poorly trained net's logits reach hundreds, where one float32 step is already 6e-5 and
    folding BatchNorm into the convs moves a few steps."""
    diff = float(abs(got - expected).max())
    bound = TOLERANCE * max(1.0, float(abs(expected).max()))
    if not diff <= bound:
        raise SqueezeNetError(f"the {what} model's outputs differ from PyTorch's by {diff:.2e} "
                              f"(tolerance {bound:.2g}); not writing it")
    return diff


def export(checkpoint, fmt: str, out=None, opset: int = DEFAULT_OPSET, dynamic_batch: bool = False) -> dict:
    """Export, verify and write atomically; returns what was written and the measured difference."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        check_opset(opset)
    model, meta = load_checkpoint(checkpoint)
    x = sample_inputs(meta)
    example = x if dynamic_batch else x[:1]
    if fmt == "onnx":
        data = onnx_bytes(model, example, opset, dynamic_batch, meta)
        diff = verify_onnx(data, model, x)
        out = Path(out) if out else default_out(checkpoint, ".onnx")
        with atomic_path(out) as tmp:
            tmp.write_bytes(data)
    else:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(fold_batchnorm(model), example)
            traced = torch.jit.freeze(traced)
            f = io.BytesIO()
            torch.jit.save(traced, f, _extra_files={EXTRA_FILE: json.dumps(metadata(meta))})
            f.seek(0)
            reloaded = torch.jit.load(f)
            diff = _compare(reloaded(x).numpy(), model(x).numpy(), "TorchScript")
        out = Path(out) if out else default_out(checkpoint, ".pt")
        with atomic_path(out) as tmp:
            tmp.write_bytes(f.getvalue())
    return {"format": fmt, "out": str(out), "bytes": out.stat().st_size, "max_abs_diff": diff,
            "opset": opset if fmt == "onnx" else None, "dynamic_batch": dynamic_batch,
            "checked_on": len(x)}


def default_out(checkpoint, suffix: str) -> Path:
    """``run/best.safetensors`` -> ``run/best.onnx``; a run directory means its best checkpoint."""
    path = Path(checkpoint)
    return (path / "best.safetensors" if path.is_dir() else path).with_suffix(suffix)
