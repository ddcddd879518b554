"""Inference runtimes for ``predict`` and ``serve``: PyTorch, onnxruntime and OpenVINO, fp32, bf16
(OpenVINO, on CPUs with bf16 units) and int8, and ``auto``: the fastest on the machine it runs on,
chosen by measurement.

Which runtime and precision wins depends on the CPU (AVX-512 VNNI, AMX) and on the batch size, so
``auto`` times every installed candidate briefly at batch 1 and 32 on the checkpoint's own model
and keeps the choice in the cache directory, per CPU and model file; a batch then runs on the
candidate that won at the measured size nearest to it. int8 and bf16 are candidates only where
``squeezenet quantize`` measured that runtime's top-1 loss on the checkpoint's evaluation data
within ``INT8_MAX_DROP`` points (the record it writes beside the int8 file).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checkpoint import resolve_checkpoint
from .data import normalize
from .device import cpu_name
from .errors import SqueezeNetError, UsageError
from .export import default_out, onnx_bytes, openvino_bf16, openvino_model, ort_session, pixel_input
from .files import atomic_path, cache_dir, write_text_atomic
from .quantize import INT8_MAX_DROP, file_digest, record_path
from .runs import RunMeta
from .timing import measure

RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
PRECISIONS = ("auto", "fp32", "bf16", "int8")
# What each runtime needs installed, and the extra that installs it.
NEEDS = {"onnxruntime": (("onnx", "onnxruntime"), "deploy"), "openvino": (("onnx", "openvino"), "openvino")}
CALIB_BATCHES = (1, 32)
CALIB_SECONDS = 0.3  # timed seconds per candidate and batch size: enough to rank runtimes 20%+ apart
CLOSE = 0.8  # candidates within this of the fastest are timed again, for at least CLOSE_CALLS calls
CLOSE_CALLS = 8
CHOICE_VERSION = 3  # bump when the measurement changes, so that cached choices are redone


def installed(runtime: str) -> bool:
    return runtime == "torch" or all(importlib.util.find_spec(m) is not None for m in NEEDS[runtime][0])


def require(runtime: str) -> None:
    if not installed(runtime):
        modules, extra = NEEDS[runtime]
        raise SqueezeNetError(f"--runtime {runtime} needs the {' and '.join(modules)} packages: "
                              f"pip install 'squeezenet[{extra}]'")


@dataclass
class Int8Model:
    """The int8 file beside a checkpoint and what its record says (``allowed``: runtime -> bool;
    ``bf16``: OpenVINO's bf16 was measured within the bound too)."""

    path: Path | None
    allowed: dict[str, bool] = field(default_factory=dict)
    note: str = ""
    bf16: bool = False


def find_int8(checkpoint) -> Int8Model:
    """``best.int8.onnx`` beside ``best.safetensors`` with a record that matches both files."""
    if checkpoint is None:
        return Int8Model(None, note="no int8 model (no checkpoint file)")
    ckpt = resolve_checkpoint(checkpoint)
    path = default_out(ckpt, ".int8.onnx")
    hint = f"run `squeezenet quantize {ckpt}`"
    if not path.is_file():
        return Int8Model(None, note=f"no int8 model ({path.name} is absent: {hint})")
    try:
        record = json.loads(record_path(path).read_text())
        drops = {"onnxruntime": record["top1_fp32"] - record["top1_int8"]}
        if record.get("top1_int8_openvino") is not None:
            drops["openvino"] = record["top1_fp32"] - record["top1_int8_openvino"]
        stale = record["checkpoint_sha256"] != file_digest(ckpt) or record["int8_sha256"] != file_digest(path)
        float_input = record.get("input", "float") == "float"
    except (OSError, ValueError, KeyError, TypeError):
        return Int8Model(None, note=f"int8 not measured ({record_path(path).name} is absent or unreadable: {hint})")
    if stale:
        return Int8Model(None, note=f"{path.name} is from another checkpoint or was changed ({hint} again)")
    if not float_input:
        return Int8Model(None, note=f"{path.name} takes uint8 pixels ({hint} without --input uint8)")
    allowed = {rt: drop <= INT8_MAX_DROP for rt, drop in drops.items()}
    note = "int8 top-1 drop on " + ", ".join(f"{rt} {d:+.2f}" for rt, d in drops.items())
    bf16 = record.get("top1_bf16_openvino")
    if bf16 is not None:
        note += f", bf16 on openvino {record['top1_fp32'] - bf16:+.2f}"
    note += f" points ({record.get('split', 'test')}, {record.get('eval_count', '?')} images; bound {INT8_MAX_DROP})"
    return Int8Model(path, allowed, note, bf16 is not None and record["top1_fp32"] - bf16 <= INT8_MAX_DROP)


def candidates(runtime: str, precision: str, int8: Int8Model) -> list[tuple[str, str]]:
    """(runtime, precision) pairs to consider; explicit choices that cannot run raise."""
    if runtime not in RUNTIMES:
        raise UsageError(f"unknown runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if runtime == "torch" and precision == "int8":
        raise UsageError("--runtime torch runs fp32 only: int8 runs on onnxruntime or openvino")
    if precision == "bf16" and runtime not in ("auto", "openvino"):
        raise UsageError("--precision bf16 runs on openvino only (--runtime openvino)")
    if runtime != "auto":
        require(runtime)
    if precision == "int8" and int8.path is None:
        raise SqueezeNetError(f"--precision int8: {int8.note}")
    runtimes = [runtime] if runtime != "auto" else [r for r in RUNTIMES[1:] if installed(r)]
    bf16 = "openvino" in runtimes and openvino_bf16()
    if precision == "bf16" and not bf16:
        raise SqueezeNetError("--precision bf16: " + ("this CPU has no bf16 units (AMX or AVX512-BF16) for "
                                                      "OpenVINO" if "openvino" in runtimes else
                                                      "needs openvino: pip install 'squeezenet[openvino]'"))
    out = []
    for rt in runtimes:
        if precision in ("auto", "fp32"):
            out.append((rt, "fp32"))
        if rt == "openvino" and bf16 and (precision == "bf16" or (precision == "auto" and int8.bf16)):
            out.append((rt, "bf16"))
        if rt != "torch" and int8.path is not None and (precision == "int8" or
                                                        (precision == "auto" and int8.allowed.get(rt))):
            out.append((rt, "int8"))
    if not out:
        raise SqueezeNetError(f"no runtime runs int8 here: install onnxruntime or openvino ({int8.note})")
    return out


def fp32_onnx(model, meta: RunMeta, checkpoint=None):
    """The fp32 ONNX model: bytes, or a file in the cache keyed by the checkpoint's content."""
    pre = meta.preprocess
    example = torch.zeros(1, pre.in_channels, pre.image_size, pre.image_size)
    if checkpoint is None:
        return onnx_bytes(model, example, dynamic_batch=True, meta=meta)
    digest = file_digest(resolve_checkpoint(checkpoint))[:24]
    path = cache_dir() / "onnx" / f"{digest}.onnx"
    if not path.is_file():
        data = onnx_bytes(model, example, dynamic_batch=True, meta=meta)
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    return path


def build(runtime: str, precision: str, model, meta: RunMeta, checkpoint=None, int8: Int8Model | None = None,
          threads: int | None = None, streams: int = 1, pixels: bool = False):
    """A function from a normalised NCHW float batch (torch) to logits (numpy), ``streams`` calls at
    once; ``threads``: the runtime's threads per call (torch: the process's). ``pixels``: from the
    decoded uint8 pixels instead, (N, H, W, C) numpy, normalised inside the ONNX runtimes' graph."""
    pre = meta.preprocess
    if runtime == "torch":
        model = model.eval().to(memory_format=torch.channels_last)

        def run(x):
            if pixels:
                x = normalize(torch.from_numpy(x).permute(0, 3, 1, 2), pre.mean, pre.std)
            with torch.no_grad():
                return model(x.contiguous(memory_format=torch.channels_last)).numpy()
        return run
    source = int8.path if precision == "int8" else fp32_onnx(model, meta, checkpoint)
    if pixels:
        source = pixel_input(source, pre.mean, pre.std)
    as_array = (lambda x: x) if pixels else (lambda x: x.contiguous().numpy())
    if runtime == "onnxruntime":
        session = ort_session(source, threads)
        return lambda x: session.run(None, {"images": as_array(x)})[0]
    infer = openvino_model(source, precision, threads, streams)

    def run(x):
        return np.asarray(infer(as_array(x)))
    run.openvino = infer
    return run


def example_batch(meta: RunMeta, n: int, pixels: bool = False):
    """``n`` random images as the runners take them: the speed of a dense CNN does not depend on the pixels."""
    pre, g = meta.preprocess, torch.Generator().manual_seed(0)
    if pixels:
        return torch.randint(0, 256, (n, pre.image_size, pre.image_size, pre.in_channels), generator=g,
                             dtype=torch.uint8).numpy()
    return torch.randn(n, pre.in_channels, pre.image_size, pre.image_size, generator=g)


def label(runtime: str, precision: str) -> str:
    return f"{runtime} {precision}"


def machine_key(model_digest: str, cands, threads: int | None = None, pixels: bool = False) -> str:
    """What a measured choice depends on: the CPU, the threads, the runtimes' versions, the model."""
    from importlib.metadata import PackageNotFoundError, version

    def v(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return None
    parts = [CHOICE_VERSION, cpu_name(), os.cpu_count(), threads or torch.get_num_threads(), model_digest,
             sorted(cands), "pixels" if pixels else "float",
             {p: v(p) for p in ("torch", "onnxruntime", "openvino")}]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:24]


def repeat(x, b: int):
    """The batch ``x`` (torch or numpy) repeated to ``b`` images."""
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(np.resize(x, (b, *x.shape[1:])))
    return x.repeat(math.ceil(b / len(x)), 1, 1, 1)[:b].contiguous()


def measure_candidates(fns: dict, x, seconds: float = CALIB_SECONDS) -> dict:
    """images/s of each candidate at each of ``CALIB_BATCHES`` (``x`` repeated to the size). Those
    within ``CLOSE`` of the fastest are timed again over more calls: where one call takes a
    quarter second (v1.1 at 224 px, batch 32, on a slow CPU) the first pass is three calls, and
    runtimes 10% apart swapped places in one of four calibrations (benchmarks/RESULTS.md#calibration)."""
    out = {}
    for b in CALIB_BATCHES:
        xb = repeat(x, b)
        rates = {name: r["images_per_s"] for name, r in measure(fns, xb, seconds, warmup=1, min_iters=2).items()}
        close = {name: fns[name] for name, v in rates.items() if v >= CLOSE * max(rates.values())}
        if len(close) > 1:
            again = measure(close, xb, seconds, slice_s=seconds, warmup=0, min_iters=CLOSE_CALLS)
            rates.update({name: r["images_per_s"] for name, r in again.items()})
        out[str(b)] = rates
    return out


def nearest(sizes, n: int) -> int:
    """The measured batch size nearest to ``n`` (on a log scale), whose runner runs a batch of ``n``."""
    return min(sizes, key=lambda b: abs(math.log(max(n, 1)) - math.log(b)))


@dataclass
class Engine:
    """Logits (numpy) for a normalised NCHW float batch (torch), or for uint8 (N, H, W, C) pixels
    (numpy) where ``pixels``, each batch on the runner chosen for its size."""

    runners: dict[int, tuple[str, object]]  # measured batch size -> (candidate label, function)
    reason: str
    measured: dict | None = None
    pixels: bool = False

    def __call__(self, x) -> np.ndarray:
        return self.runners[self.nearest(len(x))][1](x)

    def compile_in_background(self) -> None:
        """From now on OpenVINO compiles a batch size new to it on a thread (a service never stalls for it)."""
        for _, fn in self.runners.values():
            if hasattr(fn, "openvino"):
                fn.openvino.background = True

    def close(self) -> None:
        """Stops the runtimes' own threads (OpenVINO's compiler) before the process exits."""
        for _, fn in self.runners.values():
            if hasattr(fn, "openvino"):
                fn.openvino.close()

    @property
    def compiling(self) -> int:
        """Batch sizes OpenVINO is still compiling (meanwhile its dynamic-shape model answers them)."""
        return sum(fn.openvino.compiling for _, fn in self.runners.values() if hasattr(fn, "openvino"))

    def nearest(self, n: int) -> int:
        return nearest(self.runners, n)

    @property
    def name(self) -> str:
        labels = {lbl for lbl, _ in self.runners.values()}
        if len(labels) == 1:
            return labels.pop()
        return " / ".join(f"{lbl} at batch {b}" for b, (lbl, _) in sorted(self.runners.items()))


def make_engine(model, meta: RunMeta, runtime: str = "auto", precision: str = "auto", checkpoint=None,
                seconds: float = CALIB_SECONDS, threads: int | None = None, streams: int = 1,
                pixels: bool = False) -> Engine:
    """The runtime and precision asked for, or the fastest measured among those allowed, each call
    on ``threads`` threads (default: the process's), ``streams`` calls at once; ``pixels``: the
    engine takes uint8 (N, H, W, C) pixels (``build``)."""
    int8 = find_int8(checkpoint) if precision != "fp32" else Int8Model(None, note="fp32 asked for")
    cands = candidates(runtime, precision, int8)
    if len(cands) == 1:
        rt, pr = cands[0]
        fn = build(rt, pr, model, meta, checkpoint, int8, threads, streams, pixels)
        why = "as asked" if runtime != "auto" else "the only one installed"
        note = f"; {int8.note}" if pr != "fp32" else ""
        return Engine({CALIB_BATCHES[0]: (label(rt, pr), fn)}, f"{why}{note}", pixels=pixels)
    names = {label(rt, pr): (rt, pr) for rt, pr in cands}
    digest = file_digest(resolve_checkpoint(checkpoint)) if checkpoint is not None else \
        hashlib.sha256(b"".join(t.numpy().tobytes() for t in model.state_dict().values())).hexdigest()
    if int8.path is not None:
        digest += file_digest(int8.path)
    cache = cache_dir() / "runtime" / f"{machine_key(digest, names, threads, pixels)}.json"
    measured = cached_measurement(cache, names)
    fns = {}
    if measured is None:  # time them all; a cached choice builds only the winners
        fns = {name: build(*names[name], model, meta, checkpoint, int8, threads, streams, pixels) for name in names}
        measured = measure_candidates(fns, example_batch(meta, 8, pixels), seconds)
        write_text_atomic(cache, json.dumps({"cpu": cpu_name(), "threads": threads or torch.get_num_threads(),
                                             "images_per_s": measured}, indent=2) + "\n")
        how = "measured"
    else:
        how = "cached measurement"
    runners = {}
    for b in CALIB_BATCHES:
        best = max(measured[str(b)], key=measured[str(b)].get)
        if best not in fns:
            fns[best] = build(*names[best], model, meta, checkpoint, int8, threads, streams, pixels)
        runners[b] = (best, fns[best])
    figures = "; ".join(f"batch {b}: " + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(
        measured[str(b)].items(), key=lambda kv: -kv[1])) + " img/s" for b in CALIB_BATCHES)
    reason = f"the fastest here, {how} on {cpu_name()} ({figures}; cache {cache}); {int8.note}"
    return Engine(runners, reason, measured, pixels)


def cached_measurement(cache: Path, names) -> dict | None:
    try:
        measured = json.loads(cache.read_text())["images_per_s"]
        if all(set(measured[str(b)]) == set(names) for b in CALIB_BATCHES):
            return measured
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None
