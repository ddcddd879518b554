"""``quantize``: int8 post-training static quantization with onnxruntime (QDQ format).

Weights int8 per output channel, activations uint8 (U8S8: the layout VNNI's u8 x s8 dot product
takes), ranges calibrated on real training images. The weights use 7 of their 8 bits: a CPU
without VNNI (AVX2, AVX-512 without VNNI) multiplies u8 x s8 pairs into saturating 16-bit sums,
which 8-bit weights overflow, and then the same file scores points lower there than where it was
measured (benchmarks/RESULTS.md#int8-saturation). Accuracy is measured, not assumed: int8
SqueezeNet is reported to lose 3 points on some CPUs, so top-1 before and after is part of the
result, with file size and speed, and is written beside the int8 file (``X.int8.json``), with
OpenVINO's bf16 top-1 where the CPU has bf16 units: that record is what lets ``predict --precision
auto`` choose int8 or bf16 (within ``INT8_MAX_DROP`` points).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_checkpoint
from .device import cpu_name
from .errors import SqueezeNetError
from .export import (
    DEFAULT_OPSET,
    as_rgb_nhwc,
    check_input,
    default_out,
    onnx_bytes,
    openvino_bf16,
    openvino_model,
    ort_session,
)
from .files import atomic_path, write_text_atomic
from .rundir import train_hashes
from .runs import RunMeta
from .splits import eval_data, run_splits
from .timing import measure

NUM_CALIB = 256  # images; MinMax ranges settle well before this on 10-class sets
INT8_MAX_DROP = 0.5  # top-1 points int8 may lose and still be chosen automatically


def training_images(meta: RunMeta, calib_data=None, n: int = NUM_CALIB, seed: int = 0,
                    raw: bool = False) -> torch.Tensor:
    """``n`` normalised images the checkpoint was trained on (its training split, never the
    validation or test images), or from the folder ``calib_data``; ``raw``: uint8 NHWC RGB."""
    from .data import load_folder

    pre = meta.preprocess
    try:
        if calib_data is not None:
            if not Path(calib_data).is_dir():
                raise SqueezeNetError(f"{calib_data} is not a directory")
            data = load_folder(calib_data, pre.image_size, channels=pre.in_channels)
        else:
            data, _ = run_splits(meta)
    except SqueezeNetError as e:
        source = f"--calib-data {calib_data}" if calib_data is not None else \
            f"the checkpoint's training data ({meta.dataset}, data dir {meta.data_dir})"
        raise SqueezeNetError(f"no calibration data: {source} cannot be read ({e}). Pass --calib-data "
                              f"DIR, a folder of training images (DIR/<class>/<images>)") from None
    if len(data) == 0:
        raise SqueezeNetError("no calibration data: the calibration set holds no images")
    data.mean, data.std = tuple(pre.mean), tuple(pre.std)
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    return as_rgb_nhwc(data.uint8(idx)) if raw else data.batch(idx)


def quantize_model(fp32: bytes, calib: np.ndarray, out: Path, batch: int = 32) -> None:
    """Write the int8 QDQ model of the ONNX model ``fp32`` to ``out``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"images": calib[i:i + batch]} for i in range(0, len(calib), batch)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        raw, prepared = Path(tmp) / "fp32.onnx", Path(tmp) / "prepared.onnx"
        raw.write_bytes(fp32)
        # Folds BatchNorm into the convs and infers shapes, so QDQ pairs land on the fused graph.
        quant_pre_process(str(raw), str(prepared), skip_symbolic_shape=True)
        # reduce_range: weights in [-64, 64], so 255 x 64 x 2 fits the 16-bit sums of CPUs without VNNI
        quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        per_channel=True, reduce_range=True, calibrate_method=CalibrationMethod.MinMax)
        share_concat_scales(out)


def share_concat_scales(path: Path) -> int:
    """Give each Concat's inputs the quantization (scale, zero point) of its output.

    Each Fire module ends in a Concat of two ReLU branches. Quantized separately, onnxruntime runs
    it as QLinearConcat, which requantizes every input through a lookup table: measured 30% of the
    int8 model's time at 224 px, batch 32 (more than the fp32 Concat). With one shared scale the
    concat is a plain copy. The shared range is the union of the branches' (the output's), so the
    narrower branch is quantized a little more coarsely: the accuracy is measured after. Returns
    the number of Concat nodes changed."""
    import onnx

    model = onnx.load(str(path))
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Concat":
            continue
        outs = [c for c in consumers.get(node.output[0], []) if c.op_type == "QuantizeLinear"]
        ins = [producer.get(i) for i in node.input]
        if len(outs) != 1 or not all(d is not None and d.op_type == "DequantizeLinear" for d in ins):
            continue
        quants = [producer.get(d.input[0]) for d in ins]
        if not all(q is not None and q.op_type == "QuantizeLinear" for q in quants):
            continue
        if any(len(consumers.get(d.input[0], [])) != 1 for d in ins):  # a Q output read elsewhere too
            continue
        scale, zero = outs[0].input[1], outs[0].input[2]
        for q, d in zip(quants, ins):
            for n in (q, d):
                n.input[1], n.input[2] = scale, zero
        changed += 1
    used = {i for n in model.graph.node for i in n.input}
    unused = [t for t in model.graph.initializer if t.name not in used]  # the replaced scales
    for t in unused:
        model.graph.initializer.remove(t)
    onnx.save(model, str(path))
    return changed


def accuracy(run, data, raw: bool = False, batch: int = 256) -> float:
    """Top-1 in percent over an ``ImageSet`` of ``run``, a function from a numpy batch to logits
    (``raw``: fed uint8 NHWC RGB, else normalised NCHW)."""
    correct = 0
    for start in range(0, len(data), batch):
        idx = torch.arange(start, min(start + batch, len(data)))
        x = as_rgb_nhwc(data.uint8(idx)) if raw else data.batch(idx)
        logits = run(x.contiguous().numpy())
        correct += int((logits.argmax(1) == data.labels[idx].numpy()).sum())
    return 100.0 * correct / max(len(data), 1)


def ort_accuracy(session, data, raw: bool = False) -> float:
    return accuracy(lambda x: session.run(None, {"images": x})[0], data, raw)


def openvino_accuracy(source, data, raw: bool = False, precision: str = "int8") -> float | None:
    """Top-1 of an ONNX model run by OpenVINO (its int8 kernels round differently; bf16 on CPUs
    with bf16 units), None without OpenVINO, or for bf16 without those units."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None or (precision == "bf16" and not openvino_bf16()):
        return None
    return accuracy(openvino_model(source, precision), data, raw)


def file_digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def record_path(int8_path) -> Path:
    """``best.int8.onnx`` -> ``best.int8.json``: the accuracy record beside the int8 file."""
    return Path(int8_path).with_suffix(".json")


def quantize(checkpoint, calib_data=None, out=None, split: str = "test", num_calib: int = NUM_CALIB,
             bench_seconds: float = 2.0, input_type: str = "float", data_dir=None) -> dict:
    from .checkpoint import resolve_checkpoint

    check_input(input_type)
    raw = input_type == "uint8"
    model, meta = load_checkpoint(checkpoint)
    calib = training_images(meta, calib_data, num_calib, raw=raw)  # first: no data, no work
    out = Path(out) if out else default_out(checkpoint, ".int8.onnx")
    fp32 = onnx_bytes(model, calib[:1], DEFAULT_OPSET, dynamic_batch=True, meta=meta, raw_input=raw)
    data = eval_data(meta, data_dir=data_dir, split=split,
                     train_hashes=train_hashes(checkpoint) if split == "test" else None)
    with atomic_path(out) as tmp:
        quantize_model(fp32, calib.numpy(), tmp)
        int8_session = ort_session(tmp)
        fp32_session = ort_session(fp32)
        before, after = ort_accuracy(fp32_session, data, raw), ort_accuracy(int8_session, data, raw)
        after_ov = openvino_accuracy(tmp, data, raw)
        bf16 = openvino_accuracy(fp32, data, raw, "bf16")
        x = calib[:32].repeat((32 + len(calib) - 1) // len(calib), *[1] * (calib.dim() - 1))[:32].numpy()
        speed = measure({name: lambda b, s=s: s.run(None, {"images": b})
                         for name, s in (("fp32", fp32_session), ("int8", int8_session))}, x, bench_seconds)
        size, digest = tmp.stat().st_size, file_digest(tmp)
    result = {"checkpoint": str(checkpoint), "out": str(out), "split": split, "input": input_type,
              "eval_count": len(data), "calibration_images": len(calib),
              "scheme": "onnxruntime static QDQ, U8S8, per-channel 7-bit weights, MinMax", "cpu": cpu_name(),
              "top1_fp32": before, "top1_int8": after, "top1_drop": before - after,
              "bytes_fp32": len(fp32), "bytes_int8": size, "size_ratio": size / len(fp32),
              "batch": 32, "images_per_s_fp32": speed["fp32"]["images_per_s"],
              "images_per_s_int8": speed["int8"]["images_per_s"],
              "speedup": speed["int8"]["images_per_s"] / speed["fp32"]["images_per_s"],
              "top1_int8_openvino": after_ov, "top1_bf16_openvino": bf16,
              "checkpoint_sha256": file_digest(resolve_checkpoint(checkpoint)), "int8_sha256": digest}
    write_text_atomic(record_path(out), json.dumps(result, indent=2) + "\n")
    return result
