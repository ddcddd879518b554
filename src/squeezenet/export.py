"""``export``: a checkpoint as a self-contained ONNX or TorchScript file, checked after writing.

The file carries the class names and the preprocessing (input size, channels, mean, std) in its
metadata (ONNX ``metadata_props``, TorchScript extra file ``squeezenet.json``), so another program
can use it with nothing else. The check runs the written file on real images from the checkpoint's
own evaluation data and compares it with PyTorch (max abs diff <= 1e-4).

Two input layouts: ``float`` (N, C, H, W), normalised, as PyTorch takes it; ``uint8`` (N, H, W, 3),
RGB pixels 0-255 at the model's size, with scaling, normalisation and the transpose inside the
graph, so a caller outside Python only decodes, resizes and crops (the mismatch most reported when
SqueezeNet runs elsewhere: BGR, 0-255 vs 0-1, mean/std, NCHW/NHWC).
"""

from __future__ import annotations

import copy
import functools
import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import load_checkpoint
from .data import normalize
from .errors import SqueezeNetError, UsageError
from .files import atomic_path
from .model import Fire
from .runs import RunMeta

FORMATS = ("onnx", "torchscript")
# Formats whose writers live above this layer (web.py, mobile.py); the CLI dispatches to them.
TARGETS = (*FORMATS, "web", "executorch", "tflite", "c")
INPUTS = ("float", "uint8")
# 10: first MaxPool with ceil_mode (the torchvision export bug); 13: per-channel QDQ for quantize;
# 20: the highest the TorchScript-based exporter writes. The torch.export-based exporter needs the
# extra package onnxscript and gains nothing for a plain CNN, so it is not used.
MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 10, 20, 17
TOLERANCE = 1e-4
EXTRA_FILE = "squeezenet.json"


def metadata(meta: RunMeta, raw_input: bool = False) -> dict[str, str]:
    """What a consumer needs to feed the model: string key/values, JSON where not a plain string."""
    pre = meta.preprocess
    layout = (f"NHWC uint8 RGB 0-255, {pre.image_size}x{pre.image_size} (shorter side resized, centre "
              f"crop); scaling and normalisation are inside the model") if raw_input else \
        "NCHW float32, (pixel / 255 - mean) / std"
    return {"arch": meta.arch, "class_names": json.dumps(meta.class_names),
            "image_size": str(pre.image_size), "in_channels": str(pre.in_channels),
            "mean": json.dumps(list(pre.mean)), "std": json.dumps(list(pre.std)),
            "input_layout": layout, "input_dtype": "uint8" if raw_input else "float32",
            "squeezenet_metadata": json.dumps(meta.to_dict())}


class RawImageInput(nn.Module):
    """uint8 RGB pixels (N, H, W, 3) in, the model's logits out: the NHWC -> NCHW transpose, /255
    and (x - mean) / std inside the graph. A 1-channel model converts to grey exactly as PIL's
    ``convert("L")`` does (integer luma, rounded), so its inputs match ``predict``'s."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model, self.grey = model, len(mean) == 1
        self.register_buffer("scale", torch.tensor([1 / (255 * s) for s in std]).view(1, -1, 1, 1))
        self.register_buffer("shift", torch.tensor([-m / s for m, s in zip(mean, std)]).view(1, -1, 1, 1))
        self.register_buffer("luma", torch.tensor([19595.0, 38470.0, 7471.0]).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()
        if self.grey:  # exact in float32: the sum stays below 2**24
            x = torch.floor(((x * self.luma).sum(1, keepdim=True) + 32768) / 65536)
        return self.model(x * self.scale + self.shift)


def raw_wrapper(model: nn.Module, meta: RunMeta) -> nn.Module:
    """The BN-folded model behind ``RawImageInput`` (eval mode)."""
    if meta.preprocess.in_channels not in (1, 3):
        raise SqueezeNetError(f"the uint8 input takes RGB images, and this model takes {meta.preprocess.in_channels} "
                              f"channels: export it with --input float (normalised NCHW)")
    return RawImageInput(fold_batchnorm(model), meta.preprocess.mean, meta.preprocess.std).eval()


def sample_images(meta: RunMeta, n: int = 8) -> torch.Tensor:
    """``n`` real uint8 images (N, C, H, W) from the checkpoint's evaluation data (random ones, with
    a warning, where that data is not on this machine)."""
    from .splits import eval_data

    try:
        data = eval_data(meta, split="test")
        return data.uint8(torch.arange(min(n, len(data))))
    except SqueezeNetError as e:
        warnings.warn(f"checking the export on random inputs: the evaluation data is unavailable ({e})", stacklevel=2)
        pre = meta.preprocess
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, 256, (n, pre.in_channels, pre.image_size, pre.image_size), generator=g,
                             dtype=torch.uint8)


def as_rgb_nhwc(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) as the raw-input model takes it: (N, H, W, 3), grey repeated (its luma is itself)."""
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    return images.permute(0, 2, 3, 1).contiguous()


def sample_inputs(meta: RunMeta, n: int = 8) -> torch.Tensor:
    """``sample_images``, normalised as the float-input model takes them."""
    pre = meta.preprocess
    return normalize(sample_images(meta, n), pre.mean, pre.std)


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(f"unsupported --opset {opset}: choose {MIN_OPSET}..{MAX_OPSET} (ceil-mode "
                         f"max-pooling needs >= {MIN_OPSET}; {MAX_OPSET} is the exporter's highest)")


def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) per channel of an eval-mode BatchNorm: y = x * scale + shift."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy with each BatchNorm folded into the conv(s) before it. Fire's expand BN
    follows the concat, which no graph optimiser can fold, so it is split over both expand convs
    here; otherwise it stays a separate op and int8 quantization leaves it in float."""
    model = copy.deepcopy(model).eval()

    @torch.no_grad()
    def fold(convs, bn):
        scale, shift = bn_affine(bn)
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
               dynamic_batch: bool = True, meta: RunMeta | None = None, raw_input: bool = False) -> bytes:
    """The serialised ONNX model (eval mode: dropout gone, BatchNorm folded into the convs).
    ``raw_input``: uint8 NHWC RGB in (``meta`` required, ``example`` one such batch)."""
    import onnx

    check_opset(opset)
    if raw_input:
        if meta is None:
            raise ValueError("a raw-input export needs the checkpoint's preprocessing (meta)")
        model = raw_wrapper(model, meta)
    else:
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
        for key, value in metadata(meta, raw_input).items():
            proto.metadata_props.add(key=key, value=value)
    return proto.SerializeToString()


def pixel_input(model_bytes_or_path, mean, std) -> bytes:
    """The ONNX model (float NCHW input ``images``, normalised) behind a uint8 (N, H, W, C) input
    of the same name: the transpose, the cast and (x / 255 - mean) / std as its first nodes. A
    server hands the runtime its decoded pixels as they are: normalising them in NumPy or PyTorch
    cost a 224-px image more than the runtime's fused ops (benchmarks/RESULTS.md#serving)."""
    import onnx
    from onnx import TensorProto, helper

    source = model_bytes_or_path
    proto = onnx.load(str(source)) if isinstance(source, (str, Path)) else onnx.load_from_string(source)
    graph = proto.graph
    (old,) = graph.input
    shape = [d.dim_param or d.dim_value for d in old.type.tensor_type.shape.dim]  # N, C, H, W
    old.name, c = "normalised", len(mean)
    for n in graph.node:
        for j, i in enumerate(n.input):
            if i == "images":
                n.input[j] = "normalised"
    scale = helper.make_tensor("pixel_scale", TensorProto.FLOAT, [1, c, 1, 1], [1 / (255 * s) for s in std])
    shift = helper.make_tensor("pixel_shift", TensorProto.FLOAT, [1, c, 1, 1], [-m / s for m, s in zip(mean, std)])
    graph.initializer.extend([scale, shift])
    nodes = [helper.make_node("Transpose", ["images"], ["pixels_nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Cast", ["pixels_nchw"], ["pixels_float"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["pixels_float", "pixel_scale"], ["pixels_scaled"]),
             helper.make_node("Add", ["pixels_scaled", "pixel_shift"], ["normalised"])]
    nodes += list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.input.remove(old)
    graph.input.append(helper.make_tensor_value_info("images", TensorProto.UINT8,
                                                     [shape[0], shape[2], shape[3], shape[1]]))
    return proto.SerializeToString()


def ort_session(model_bytes_or_path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    source = str(model_bytes_or_path) if isinstance(model_bytes_or_path, Path) else model_bytes_or_path
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


@functools.cache
def openvino_bf16() -> bool:
    """Whether OpenVINO computes bf16 natively on this CPU (AMX or AVX512-BF16)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def openvino_model(model_bytes_or_path, precision: str = "fp32", threads: int | None = None,
                   streams: int = 1) -> OpenVINOModel:
    """A function from a numpy batch to logits, by OpenVINO on the CPU from an ONNX model.
    ``fp32`` pins float32 math (on CPUs with bf16 units OpenVINO's default runs float layers in
    bf16), ``bf16`` asks for bf16 math from the same file, ``int8`` runs a QDQ file. ``streams`` calls can run at once,
    each on ``threads`` threads (OpenVINO runs the calls of one stream one after the other)."""
    import openvino as ov

    core = ov.Core()
    source = model_bytes_or_path
    model = core.read_model(str(source)) if isinstance(source, (str, Path)) else core.read_model(source)
    config = {"PERFORMANCE_HINT": "LATENCY"} if streams == 1 else {"NUM_STREAMS": streams}
    if precision == "fp32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    elif precision == "bf16" and openvino_bf16():  # elsewhere OpenVINO refuses the hint: its default then
        config["INFERENCE_PRECISION_HINT"] = "bf16"
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads * streams  # OpenVINO's figure is for all its streams
    return OpenVINOModel(core, model, config)


class OpenVINOModel:
    """Each batch size met more than once on a model compiled for that shape: OpenVINO's
    dynamic-shape path is slower, most for a small model at varying batch sizes
    (benchmarks/RESULTS.md#serving). The dynamic-shape model answers a size's first call (a
    one-off ``predict`` compiles nothing more) and the second compiles it; once ``background`` is
    set (a service, where every size recurs) the first call has it compiled, on one thread, while
    the dynamic model goes on answering. At most ``MAX_SHAPES`` sizes are compiled."""

    MAX_SHAPES = 64

    def __init__(self, core, model, config: dict):
        import queue
        import threading

        self.core, self.model, self.config, self.background, self.closed = core, model, config, False, False
        self.dynamic = _Compiled(core.compile_model(model, "CPU", config))
        self.static: dict[int, _Compiled] = {}
        self.calls: dict[int, int] = {}  # batch size -> calls, until it is compiled
        self.asked: set[int] = set()  # sizes whose compiling was asked for
        self.failed: set[int] = set()
        self.todo: queue.SimpleQueue = queue.SimpleQueue()
        self.lock, self.compiler = threading.Lock(), None

    @property
    def compiling(self) -> int:
        """Batch sizes waiting for their compiled model."""
        return len(self.asked) - len(self.static) - len(self.failed)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        compiled = self.static.get(len(x))
        if compiled is None:
            with self.lock:
                n = self.calls[len(x)] = self.calls.get(len(x), 0) + 1
                ask = n == (1 if self.background else 2) and len(self.asked) < self.MAX_SHAPES and not self.closed
                if ask:
                    self.asked.add(len(x))
            if ask and self.background:
                self.todo.put(x.shape)
                self._start_compiler()
            elif ask:
                self._compile(x.shape)
            compiled = self.static.get(len(x), self.dynamic)
        return compiled(x)

    def _compile(self, shape) -> None:
        model = self.model.clone()
        model.reshape(list(shape))
        self.static[shape[0]] = _Compiled(self.core.compile_model(model, "CPU", self.config))

    def _start_compiler(self) -> None:
        import threading

        def work():
            while (shape := self.todo.get()) is not None:
                try:
                    self._compile(shape)
                except Exception as e:  # the dynamic-shape model goes on answering this size
                    self.failed.add(shape[0])
                    warnings.warn(f"OpenVINO could not compile batch size {shape[0]}: {type(e).__name__}: {e}",
                                  stacklevel=1)
        with self.lock:
            if self.compiler is None:  # a daemon: it only ever waits for work or compiles
                self.compiler = threading.Thread(target=work, name="squeezenet-openvino-compile", daemon=True)
                self.compiler.start()

    def close(self) -> None:
        """Compiles nothing more, and waits for the compile in progress: a process that exits while an
        OpenVINO thread compiles aborts (``terminate called without an active exception``)."""
        import queue

        with self.lock:
            self.closed, compiler, self.compiler = True, self.compiler, None
        if compiler is None:
            return
        try:  # the sizes still waiting are dropped
            while True:
                self.todo.get_nowait()
        except queue.Empty:
            pass
        self.todo.put(None)
        compiler.join()


class _Compiled:
    """A compiled model and its idle infer requests: one per call in flight, kept for later calls."""

    def __init__(self, compiled):
        import queue

        import openvino as ov

        self.compiled, self.idle, self.tensor, self.empty = compiled, queue.SimpleQueue(), ov.Tensor, queue.Empty
        self.idle.put(compiled.create_infer_request())

    def __call__(self, x: np.ndarray) -> np.ndarray:
        try:
            request = self.idle.get_nowait()
        except self.empty:  # another thread holds the request
            request = self.compiled.create_infer_request()
        try:  # the tensor-level calls: InferRequest.infer's input dispatch costs a small model's call more
            request.set_input_tensor(self.tensor(np.ascontiguousarray(x), shared_memory=True))
            request.infer()
            return request.get_output_tensor().data.copy()
        finally:
            self.idle.put(request)


def verify_onnx(data: bytes, model: torch.nn.Module, x: torch.Tensor, raw: torch.Tensor | None = None) -> float:
    """onnx.checker, then max |ONNX - PyTorch| over ``x``; raises above ``TOLERANCE``. ``raw``: the
    same images as the raw-input model takes them (uint8 NHWC), fed to the file instead of ``x``."""
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
    fed = x if raw is None else raw
    got = np.concatenate([session.run(None, {"images": fed[i:i + step].numpy()})[0]
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


def check_input(input_type: str) -> None:
    if input_type not in INPUTS:
        raise UsageError(f"unknown --input {input_type!r}: choose uint8 (RGB pixels, NHWC; preprocessing "
                         f"inside the model) or float (normalised NCHW)")


def export(checkpoint, fmt: str, out=None, opset: int = DEFAULT_OPSET, dynamic_batch: bool = False,
           input_type: str = "float") -> dict:
    """Export, verify and write atomically; returns what was written and the measured difference."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}: choose one of {', '.join(TARGETS)}")
    check_input(input_type)
    if fmt == "onnx":
        check_opset(opset)
    model, meta = load_checkpoint(checkpoint)
    pre, raw_input = meta.preprocess, input_type == "uint8"
    images = sample_images(meta)
    x = normalize(images, pre.mean, pre.std)
    raw = as_rgb_nhwc(images) if raw_input else None
    fed = raw if raw_input else x
    example = fed if dynamic_batch else fed[:1]
    if fmt == "onnx":
        data = onnx_bytes(model, example, opset, dynamic_batch, meta, raw_input)
        diff = verify_onnx(data, model, x, raw)
        out = Path(out) if out else default_out(checkpoint, ".onnx")
        with atomic_path(out) as tmp:
            tmp.write_bytes(data)
    else:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wrapped = raw_wrapper(model, meta) if raw_input else fold_batchnorm(model)
            traced = torch.jit.freeze(torch.jit.trace(wrapped, example))
            f = io.BytesIO()
            torch.jit.save(traced, f, _extra_files={EXTRA_FILE: json.dumps(metadata(meta, raw_input))})
            f.seek(0)
            reloaded = torch.jit.load(f)
            diff = _compare(reloaded(fed).numpy(), model(x).numpy(), "TorchScript")
        out = Path(out) if out else default_out(checkpoint, ".pt")
        with atomic_path(out) as tmp:
            tmp.write_bytes(f.getvalue())
    return {"format": fmt, "out": str(out), "bytes": out.stat().st_size, "max_abs_diff": diff,
            "opset": opset if fmt == "onnx" else None, "dynamic_batch": dynamic_batch,
            "input": input_type, "checked_on": len(x)}


def default_out(checkpoint, suffix: str) -> Path:
    """``run/best.safetensors`` -> ``run/best.onnx``; a run directory means its best checkpoint."""
    path = Path(checkpoint)
    return (path / "best.safetensors" if path.is_dir() else path).with_suffix(suffix)
