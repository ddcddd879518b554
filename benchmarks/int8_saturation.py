"""int8 weights in 8 or 7 bits, on the CPU it runs on: top-1 of each int8 file as arithmetic (the
QDQ graph run in float by onnxruntime with no graph optimisation) and as each runtime's int8
kernels compute it (onnxruntime fused, OpenVINO).

    PYTHONPATH=src python benchmarks/int8_saturation.py CHECKPOINT [--data-dir DIR] [--json FILE]

On a CPU without VNNI the u8 x s8 kernels sum pairs into saturating 16-bit integers, so 8-bit
weights can lose accuracy there that the arithmetic does not (benchmarks/RESULTS.md#int8-saturation).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from squeezenet.checkpoint import load_checkpoint
from squeezenet.device import cpu_name
from squeezenet.export import DEFAULT_OPSET, onnx_bytes
from squeezenet.quantize import openvino_accuracy, ort_accuracy, share_concat_scales, training_images
from squeezenet.splits import eval_data

SETTINGS = {"U8S8, 8-bit weights": dict(weight_type=QuantType.QInt8),
            "U8S8, 7-bit weights (reduce_range)": dict(weight_type=QuantType.QInt8, reduce_range=True),
            "U8U8": dict(weight_type=QuantType.QUInt8)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--data-dir", help="held-out images to score on (default: the checkpoint's test split)")
    p.add_argument("--json")
    args = p.parse_args()
    model, meta = load_checkpoint(args.checkpoint)
    calib = training_images(meta)
    data = eval_data(meta, data_dir=args.data_dir, split="test")
    fp32 = onnx_bytes(model, calib[:1], DEFAULT_OPSET, dynamic_batch=True, meta=meta)
    rows = {"fp32": {"onnxruntime": ort_accuracy(ort.InferenceSession(fp32, providers=["CPUExecutionProvider"]),
                                                 data)}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "fp32.onnx").write_bytes(fp32)
        quant_pre_process(str(tmp / "fp32.onnx"), str(tmp / "prepared.onnx"), skip_symbolic_shape=True)
        for i, (name, kwargs) in enumerate(SETTINGS.items()):
            class Reader(CalibrationDataReader):
                def __init__(self):
                    self.batches = iter([{"images": calib[j:j + 32].numpy()} for j in range(0, len(calib), 32)])

                def get_next(self):
                    return next(self.batches, None)
            out = tmp / f"int8-{i}.onnx"
            quantize_static(str(tmp / "prepared.onnx"), str(out), Reader(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, per_channel=True,
                            calibrate_method=CalibrationMethod.MinMax, **kwargs)
            share_concat_scales(out)
            plain = ort.SessionOptions()
            plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            rows[name] = {"arithmetic": ort_accuracy(ort.InferenceSession(str(out), plain), data),
                          "onnxruntime": ort_accuracy(ort.InferenceSession(str(out)), data),
                          "openvino": openvino_accuracy(out, data)}
            print(name, rows[name], flush=True)
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "cpu": cpu_name(),
              "eval_count": len(data), "top1": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
