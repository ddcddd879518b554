"""``bench``: inference throughput and latency per runtime and batch size, plus a training step.

Runtimes: PyTorch eager (NCHW and channels_last), torch.compile (skipped, with the reason, where
it does not work), onnxruntime fp32 and int8 (static QDQ), OpenVINO fp32, bf16 (its default on
CPUs with bf16 units, from the fp32 file) and int8 (the same QDQ file); a runtime that is not
installed is skipped, naming the extra that installs it. Each runtime is called repeatedly for a
fixed time: throughput over those calls, p50/p95 of the per-call latency. The int8 model is
calibrated on the benchmark's random inputs: its speed does not depend on the ranges. Timings on
a shared machine are noisy: compare runtimes within one run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .checkpoint import load_checkpoint
from .device import use_all_cores
from .errors import UsageError
from .export import onnx_bytes, openvino_bf16, openvino_model, ort_session
from .quantize import quantize_model
from .timing import measure
from .zoo import create_model, list_models

log = logging.getLogger("squeezenet")

RUNTIMES = ("eager", "channels_last", "compile", "onnxruntime", "onnxruntime-int8", "openvino", "openvino-bf16",
            "openvino-int8")


def load_subject(target: str, input_size: int | None = None, num_classes: int = 1000):
    """(model, input size, input channels, description) for an architecture name or a checkpoint."""
    if target in list_models():
        model = create_model(target, num_classes=num_classes).eval()
        size = input_size or 224
        name = f"{target} (random weights, {num_classes} classes)"
    elif Path(target).exists() or target.endswith(".safetensors"):
        model, meta = load_checkpoint(target)
        size = input_size or meta.preprocess.image_size
        name = f"{target} ({meta.arch})"
    else:
        raise UsageError(f"{target!r} is neither an architecture ({', '.join(list_models())}) nor a "
                         f"checkpoint file")
    if size < model.min_input_size:
        raise UsageError(f"--input-size {size} is below the model's minimum {model.min_input_size}")
    return model, size, model.in_channels, name


def make_runners(model, example: torch.Tensor, runtimes=RUNTIMES, calib: torch.Tensor | None = None):
    """name -> (callable on a float NCHW batch, or None, and a note: why skipped / what it is)."""
    runners = {}
    model = model.eval()
    if "eager" in runtimes:
        runners["eager"] = (_no_grad(model), "PyTorch eager, NCHW")
    if "channels_last" in runtimes:
        cl = _copy(model).to(memory_format=torch.channels_last)
        runners["channels_last"] = (_no_grad(cl, torch.channels_last), "PyTorch eager, NHWC")
    if "compile" in runtimes:
        runners["compile"] = _compiled(model, example)
    onnx_runtimes = [rt for rt in runtimes if rt.startswith(("onnxruntime", "openvino"))]
    if onnx_runtimes:
        fp32 = onnx_bytes(model, example[:1], dynamic_batch=True)
        int8 = _int8(fp32, calib if calib is not None else example) if any(
            rt.endswith("-int8") for rt in onnx_runtimes) else None
        if "onnxruntime" in runtimes:
            runners["onnxruntime"] = (_ort(ort_session(fp32)), "onnxruntime fp32")
        if "onnxruntime-int8" in runtimes:
            runners["onnxruntime-int8"] = (_ort(ort_session(int8)), "onnxruntime int8 (static QDQ, U8S8, per-channel)")
        for rt, source, precision, note in (("openvino", fp32, "fp32", "OpenVINO fp32 (f32 hint)"),
                                            ("openvino-bf16", fp32, "bf16", "OpenVINO default precision, fp32 file"),
                                            ("openvino-int8", int8, "int8", "OpenVINO on the QDQ int8 file")):
            if rt in runtimes:
                runners[rt] = _openvino(source, precision, note)
    return runners


def _openvino(source: bytes, precision: str, note: str):
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return None, "skipped: openvino is not installed (pip install 'squeezenet[openvino]')"
    if precision == "bf16" and not openvino_bf16():  # OpenVINO's default would be fp32: the row above again
        return None, "skipped: this CPU has no bf16 units (AMX or AVX512-BF16)"
    infer = openvino_model(source, precision)
    return (lambda x: infer(x.numpy())), note


def _copy(model):
    import copy

    return copy.deepcopy(model)


def _no_grad(model, memory_format=torch.contiguous_format):
    def run(x):
        with torch.no_grad():
            return model(x.contiguous(memory_format=memory_format))
    return run


def _ort(session):
    return lambda x: session.run(None, {"images": x.numpy()})[0]


def _compiled(model, example):
    """torch.compile needs a working C++ toolchain on CPU; any failure is a skip with its reason."""
    try:
        cl = _copy(model).to(memory_format=torch.channels_last)
        compiled = torch.compile(cl)
        run = _no_grad(compiled, torch.channels_last)
        run(example)  # compile now, so a failure is caught here rather than mid-benchmark
        return run, "torch.compile (inductor), channels_last"
    except Exception as e:  # inductor raises many types (missing compiler, unsupported op)
        return None, f"skipped: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def _int8(fp32: bytes, calib: torch.Tensor) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "int8.onnx"
        quantize_model(fp32, calib.numpy(), path)
        return path.read_bytes()


def training_step(model, size: int, channels: int, batch: int, seconds: float) -> dict:
    """Forward + backward + SGD step on random data, channels_last (the trainer's default)."""
    model = _copy(model).train().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, channels, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, model.num_classes, (batch,))

    def step(x):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return measure({"train": step}, x, seconds)["train"]


def bench(target: str = "squeezenet1_1", input_size: int | None = None, batch_sizes=(1, 32),
          runtimes=RUNTIMES, seconds: float = 2.0, train: bool = True) -> dict:
    use_all_cores()
    model, size, channels, name = load_subject(target, input_size)
    g = torch.Generator().manual_seed(0)
    example = torch.randn(max(batch_sizes), channels, size, size, generator=g)
    log.info(f"{name} at {size}x{size}, {torch.get_num_threads()} threads; preparing runtimes ...")
    runners = make_runners(model, example[:1], runtimes, calib=example)
    skipped = {rt: note for rt, (fn, note) in runners.items() if fn is None}
    fns = {rt: fn for rt, (fn, _) in runners.items() if fn is not None}
    records = []
    for b in batch_sizes:
        log.info(f"batch {b} ...")
        for rt, r in measure(fns, example[:b], seconds).items():
            records.append({"runtime": rt, "batch_size": b, **r, "note": runners[rt][1]})
    if train:
        b = max(batch_sizes)
        records.append({"runtime": "train-step", "batch_size": b,
                        **training_step(model, size, channels, b, seconds),
                        "note": "forward + backward + SGD step, channels_last"})
    log.info(format_table(records, skipped))
    return {"model": name, "input_size": size, "threads": torch.get_num_threads(),
            "records": records, "skipped": skipped}


def format_table(records, skipped) -> str:
    lines = [f"{'runtime':<18} {'batch':>5} {'img/s':>9} {'p50 ms':>9} {'p95 ms':>9}"]
    for r in records:
        lines.append(f"{r['runtime']:<18} {r['batch_size']:>5} {r['images_per_s']:>9.1f} "
                     f"{r['p50_ms']:>9.2f} {r['p95_ms']:>9.2f}")
    lines += [f"{rt:<18} {note}" for rt, note in skipped.items()]
    return "\n".join(lines)
