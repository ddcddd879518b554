"""``lowering``: a PyTorch SqueezeNet as the C engine's model file (``modelfile``).

The layers are read off the PyTorch modules themselves (conv1, BatchNorm, pools, Fire modules
with their shortcuts, conv10), so the engine cannot drift from the model: each Fire becomes its
convolutions writing into one tensor (the concat is free), a shortcut is added in the expand
convolutions' last step (in place over the Fire's input for an identity shortcut), conv1 and the
pool after it run row by row through a ring of three rows, conv10 and the global average are one
step. Every activation gets its place in one arena, planned here (``plan``). Weights are fp32
(BatchNorm folded), int8 per output channel with int8 activations calibrated on training images
(``calibrate``), or Deep Compression's codebooks as ``compress`` shares them (BatchNorm kept as a
per-channel scale, so the shared values stay shared).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .errors import SqueezeNetError
from .export import bn_affine, fold_batchnorm
from .model import Fire
from .modelfile import (
    ACCUM,
    BLOCK,
    CONV,
    HEAD,
    HEADER,
    I8,
    LAYER,
    MAGIC,
    POOL,
    POOLED,
    PRECISIONS,
    RELU,
    STEM,
    VERSION,
    W_CODEBOOK,
    W_F32,
    W_I8,
    W_I8F,
    Sections,
    blocks,
    pack_codebook,
    pack_f32,
    pack_i8,
    round4,
)
from .runs import RunMeta

MAX_STEM = 7  # sqz.h's SQZ_MAX_STEM


@dataclass(eq=False)
class Value:
    """An activation as the engine holds it: its shape, its storage (several values may share
    one: a Fire's output over its input), and for int8 real = scale x (code - zero)."""

    h: int
    w: int
    c: int
    storage: int
    nonneg: bool  # after a ReLU: int8 codes 0..255 from 0 up, so padding with 0 is exact
    probe: str | None = None  # the module whose output it is, for calibration
    scale: float = 1.0
    zero: int = 0


@dataclass
class Conv:
    name: str
    weight: torch.Tensor  # (cout, cin, k, k), before BatchNorm
    scale: torch.Tensor  # per output channel: BatchNorm's, or ones
    bias: torch.Tensor  # BatchNorm folded in

    def folded(self) -> torch.Tensor:
        return self.weight * self.scale.view(-1, 1, 1, 1)


@dataclass(eq=False)
class Layer:
    op: int
    name: str
    conv: Conv | None = None
    inp: Value | None = None
    out: Value | None = None
    flags: int = 0
    k: int = 1
    stride: int = 1
    pad: int = 0
    out_first: int = 0
    residual: Value | None = None
    ring: int | None = None  # the stem's ring of rows (a storage)


@dataclass
class Graph:
    layers: list[Layer]
    storages: list[int] = field(default_factory=list)  # elements of each


def conv_params(conv: nn.Conv2d, bn=None, part: slice = slice(None)) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        w = conv.weight.detach().float().clone()
        b = conv.bias.detach().float() if conv.bias is not None else torch.zeros(conv.out_channels)
        if isinstance(bn, nn.BatchNorm2d):
            scale, shift = (t.detach().float()[part] for t in bn_affine(bn))
            return w, scale, b * scale + shift
    return w, torch.ones(conv.out_channels), b


def describe(model: nn.Module, size: int) -> Graph:
    """The engine's layers for ``model`` (a SqueezeNet) at ``size`` x ``size`` px."""
    graph = Graph([])

    def value(h, w, c, nonneg, probe=None, storage=None):
        if storage is None:
            graph.storages.append(h * w * c)
            storage = len(graph.storages) - 1
        return Value(h, w, c, storage, nonneg, probe)

    feats = list(model.features)
    conv1, i = feats[0], 1
    bn = feats[1] if isinstance(feats[1], nn.BatchNorm2d) else None
    i += bn is not None
    relu_at, i = i, i + 1
    k, s, p = conv1.kernel_size[0], conv1.stride[0], conv1.padding[0]
    if k > MAX_STEM or s > 2 or model.in_channels not in (1, 3):
        raise SqueezeNetError(f"the C engine runs stems of at most {MAX_STEM}x{MAX_STEM}, stride 1 or 2, on 1 or 3 "
                              f"channels; this model's conv1 is {k}x{k}/{s} on {model.in_channels} channels")
    oh = (size + 2 * p - k) // s + 1
    pooled = i < len(feats) and isinstance(feats[i], nn.MaxPool2d) and oh >= 2
    side = oh // 2 if pooled else oh
    x = value(side, side, conv1.out_channels, True, f"features.{relu_at}")
    stem = Layer(STEM, "features.0", Conv("features.0", *conv_params(conv1, bn)), None, x, RELU | (POOLED * pooled),
                 k, s, p)
    if pooled:
        graph.storages.append(3 * oh * conv1.out_channels)
        stem.ring, i = len(graph.storages) - 1, i + 1
    graph.layers.append(stem)
    for j in range(i, len(feats)):
        m, name = feats[j], f"features.{j}"
        if isinstance(m, nn.MaxPool2d):
            if x.h < 2:
                raise SqueezeNetError(f"the input is too small for this model: {x.h} px before {name}")
            y = value(x.h // 2, x.w // 2, x.c, x.nonneg)
            graph.layers.append(Layer(POOL, name, inp=x, out=y, k=3, stride=2))  # keeps its input's int8 codes
            x = y
        elif isinstance(m, Fire):
            x = _fire(graph, m, name, x, value)
        elif not isinstance(m, (nn.ReLU, nn.Identity)):
            raise SqueezeNetError(f"the C engine cannot express {name} ({type(m).__name__})")
    conv10 = model.classifier[1]
    relu = RELU if isinstance(model.classifier[2], nn.ReLU) else 0
    graph.layers.append(Layer(HEAD, "classifier.1", Conv("classifier.1", *conv_params(conv10)), x, None, relu))
    return graph


def _fire(graph: Graph, m: Fire, name: str, x: Value, value) -> Value:
    """A Fire module's convolutions: [shortcut], squeeze, expand 1x1 and 3x3 into one tensor."""
    e1, e3 = m.expand1x1.out_channels, m.expand3x3.out_channels
    sq = value(x.h, x.w, m.squeeze.out_channels, True, f"{name}.squeeze_activation")
    residual, flags = None, RELU
    if isinstance(m.shortcut, nn.Conv2d):
        residual = value(x.h, x.w, e1 + e3, False, f"{name}.shortcut")
        y = value(x.h, x.w, e1 + e3, False, name, storage=residual.storage)
        graph.layers.append(Layer(CONV, f"{name}.shortcut", Conv(f"{name}.shortcut", *conv_params(m.shortcut)),
                                  x, residual))
    elif m.shortcut is not None:  # identity: the output overwrites the input in place, each value once read
        residual, y = x, value(x.h, x.w, e1 + e3, x.nonneg, name, storage=x.storage)
    else:
        y = value(x.h, x.w, e1 + e3, True, name)
    flags |= ACCUM if residual is not None else 0
    graph.layers.append(Layer(CONV, f"{name}.squeeze", Conv(f"{name}.squeeze", *conv_params(m.squeeze, m.squeeze_bn)),
                              x, sq, RELU))
    for conv, first, part in ((m.expand1x1, 0, slice(0, e1)), (m.expand3x3, e1, slice(e1, e1 + e3))):
        full, k = f"{name}.{'expand1x1' if conv is m.expand1x1 else 'expand3x3'}", conv.kernel_size[0]
        graph.layers.append(Layer(CONV, full, Conv(full, *conv_params(conv, m.expand_bn, part)), sq, y, flags, k, 1,
                                  k // 2, first, residual))
    return y


# ----------------------------------------------------------------------------- int8 calibration

def qparams(lo: float, hi: float, nonneg: bool) -> tuple[float, int]:
    """(scale, zero) mapping [lo, hi] (0 included) onto the codes 0..255."""
    if nonneg:
        return max(hi, 1e-8) / 255.0, 0
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-8) / 255.0
    return scale, int(np.clip(round(-lo / scale), 0, 255))


def calibrate(model: nn.Module, graph: Graph, images: torch.Tensor, batch: int = 64) -> None:
    """Each value's int8 scale and zero point from the ranges the float model's activations take
    on ``images`` (normalised NCHW, training images: never the evaluation split)."""
    folded = fold_batchnorm(model)
    modules = dict(folded.named_modules())
    values = [v for layer in graph.layers for v in (layer.out, layer.residual) if v is not None and v.probe]
    ranges: dict[str, list[float]] = {}

    def hook(name):
        def record(_, __, out):
            lo, hi = ranges.setdefault(name, [np.inf, -np.inf])
            ranges[name] = [min(lo, float(out.min())), max(hi, float(out.max()))]
        return record
    handles = [modules[n].register_forward_hook(hook(n)) for n in {v.probe for v in values}]
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch):
                folded(images[start:start + batch])
    finally:
        for h in handles:
            h.remove()
    for v in values:
        v.scale, v.zero = qparams(*ranges[v.probe], v.nonneg)
    for layer in graph.layers:  # pools keep their input's codes, in order
        if layer.op == POOL:
            layer.out.scale, layer.out.zero = layer.inp.scale, layer.inp.zero


# ----------------------------------------------------------------------------- the arena's plan

def lifetimes(graph: Graph) -> list[tuple[int, int]]:
    """(first, last) layer index each storage is used at."""
    span = [(len(graph.layers), -1)] * len(graph.storages)
    for i, layer in enumerate(graph.layers):
        used = [v.storage for v in (layer.inp, layer.out, layer.residual) if v is not None]
        used += [layer.ring] if layer.ring is not None else []
        for s in used:
            span[s] = (min(span[s][0], i), max(span[s][1], i))
    return span


def place(sizes: list[int], spans: list[tuple[int, int]], align: int = 16) -> tuple[list[int], int]:
    """Offsets in one arena for buffers of ``sizes`` bytes live over ``spans`` (layer ranges):
    the largest first, each at the lowest offset clear of the buffers alive at the same time
    (TensorFlow Lite Micro's greedy planner). Returns (offsets, arena bytes)."""
    offsets: list[int | None] = [None] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        busy = sorted((offsets[j], offsets[j] + sizes[j]) for j in range(len(sizes)) if offsets[j] is not None
                      and spans[j][0] <= spans[i][1] and spans[i][0] <= spans[j][1])
        at = 0
        for start, end in busy:
            if at + sizes[i] <= start:
                break
            at = max(at, -(-end // align) * align)
        offsets[i] = at
    top = max((o + s for o, s in zip(offsets, sizes)), default=0)
    return offsets, -(-top // align) * align + align  # + slack: int8 reads run up to 3 bytes past a tensor


# ----------------------------------------------------------------------------- the file

def lower(model: nn.Module, meta: RunMeta, precision: str = "fp32", calib: torch.Tensor | None = None,
          codebooks: dict | None = None, size: int | None = None) -> bytes:
    """The model file for ``model`` at ``size`` px (default: the checkpoint's). ``precision`` fp32
    or int8 (``calib``: normalised training images); ``codebooks``: {conv weight name: (codebook,
    codes of the nonzero weights in PyTorch's order)} as ``compress`` shares them (fp32 only)."""
    if precision not in PRECISIONS:
        raise SqueezeNetError(f"unknown precision {precision!r}: choose {', '.join(PRECISIONS)}")
    size = size or meta.preprocess.image_size
    graph = describe(model.eval(), size)
    i8 = precision == "int8"
    if i8:
        if calib is None:
            raise ValueError("int8 needs calibration images")
        calibrate(model, graph, calib)
    elem = 1 if i8 else 4
    books = {} if precision != "fp32" else (codebooks or {})
    sizes = [n * elem for n in graph.storages]
    spans = lifetimes(graph)
    last = len(graph.layers) - 1
    convs = [layer for layer in graph.layers if layer.op == CONV]
    zeros = max([round4(layer.inp.c) if i8 else 4 * layer.inp.c for layer in convs], default=16)
    coded = [layer for layer in graph.layers if layer.conv and (f"{layer.conv.name}.weight" in books or
                                                                (precision == "int8w"))]
    scratch = max([4 * BLOCK * layer.conv.weight[0].numel() for layer in coded], default=0)
    extra = {"input": (3 * size * size, (0, 0)), "zeros": (zeros, (0, last)), "scratch": (scratch, (0, last)),
             "logits": (8 * meta.num_classes, (0, last))}
    offsets, arena = place(sizes + [n for n, _ in extra.values()], spans + [s for _, s in extra.values()])
    where = dict(zip(extra, offsets[len(sizes):]))
    return _write(graph, meta, size, precision, books, offsets, arena, where, zeros, scratch)


def _layer_record(rec, layer: Layer, offsets: list[int], i8: bool) -> None:
    for key in ("op", "flags", "k", "stride", "pad"):
        rec[key] = getattr(layer, key)
    src = layer.inp
    if layer.op == STEM:
        w = layer.conv.weight
        rec["cin"], rec["cout"] = w.shape[1], w.shape[0]
    else:
        rec["h"], rec["w"], rec["cin"], rec["in_off"] = src.h, src.w, src.c, offsets[src.storage]
        rec["in_scale"], rec["in_zero"] = src.scale, src.zero
        rec["cout"] = layer.conv.weight.shape[0] if layer.conv is not None else src.c
    out = layer.out
    if layer.op == HEAD:
        rec["oh"], rec["ow"] = src.h, src.w
    else:
        rec["out_off"], rec["out_channels"], rec["out_first"] = offsets[out.storage], out.c, layer.out_first
        rec["out_scale"], rec["out_zero"] = out.scale, out.zero
        rec["oh"], rec["ow"] = out.h, out.w
    if layer.residual is not None:
        rec["res_scale"], rec["res_zero"] = layer.residual.scale, layer.residual.zero


# int8 math: 7-bit weights, so x86's u8 x s8 pair sums (vpmaddubsw) cannot saturate 16 bits and
# every target computes the same integers; int8 weights for fp32 math use all 8 bits.
WEIGHT_MAX = {"int8": 63, "int8w": 127}


def quantize_weights(w: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8 codes in [-top, top] and their scales."""
    scale = np.abs(w).reshape(len(w), -1).max(1) / top
    scale[scale == 0] = 1.0
    return np.clip(np.round(w / scale[:, None, None, None]), -top, top).astype(np.int8), scale


def _weights(sec: Sections, rec, layer: Layer, form: str, books: dict, decoded: list[int]) -> None:
    """The layer's packed weights, bias and multipliers, added to the file's sections."""
    conv = layer.conv
    cout = conv.weight.shape[0]
    nb = blocks(cout)
    pad = np.zeros(nb * BLOCK - cout, np.float32)
    bias = conv.bias.numpy().astype(np.float32)
    key = f"{conv.name}.weight"
    if form == "int8" and layer.op != STEM:
        q, wscale = quantize_weights(conv.folded().numpy(), WEIGHT_MAX[form])
        mult = (layer.inp.scale * wscale).astype(np.float32)
        bias = bias - mult * layer.inp.zero * q.reshape(cout, -1).sum(1, dtype=np.int64)  # the input's zero point
        rec["form"], rec["weights_off"] = W_I8, sec.add(pack_i8(q))
        rec["mult_off"] = sec.add(np.concatenate([mult, pad]))
    elif form == "int8w":
        q, wscale = quantize_weights(conv.folded().numpy(), WEIGHT_MAX[form])
        rec["form"], rec["weights_off"] = W_I8F, sec.add(pack_f32(q.astype(np.float32)).astype(np.int8))
        rec["mult_off"] = sec.add(np.concatenate([wscale.astype(np.float32), pad]))
        rec["decoded_off"] = decoded[0]
        decoded[0] += nb * BLOCK * conv.weight[0].numel()
    elif key in books:
        book, codes = books[key]
        book = np.asarray(book, np.float32)
        codes = np.zeros(0, np.int64) if codes is None else np.asarray(codes, np.int64)
        bits = max(1, int(np.ceil(np.log2(max(len(book), 2)))))
        dense, kept = np.full(conv.weight.shape, -1, np.int64), conv.weight.numpy() != 0
        if kept.sum() != len(codes):
            raise SqueezeNetError(f"{conv.name}: {len(codes)} codes for {int(kept.sum())} nonzero weights")
        dense[kept] = codes
        dense[conv.scale.numpy() == 0] = -1  # channels BatchNorm zeroes: their weights compute nothing
        mask, packed, first = pack_codebook(dense, bits)
        rec["form"], rec["bits"] = W_CODEBOOK, bits
        rec["weights_off"], rec["codes_off"], rec["blocks_off"] = sec.add(mask), sec.add(packed), sec.add(first)
        rec["codebook_off"] = sec.add(np.concatenate([book.astype(np.float32),
                                                      np.zeros((1 << bits) - len(book), np.float32)]))
        rec["mult_off"] = sec.add(np.concatenate([conv.scale.numpy().astype(np.float32), pad]))
        rec["decoded_off"] = decoded[0]
        decoded[0] += nb * BLOCK * conv.weight[0].numel()
    else:
        rec["form"], rec["weights_off"] = W_F32, sec.add(pack_f32(conv.folded().numpy().astype(np.float32)))
    rec["bias_off"] = sec.add(np.concatenate([bias.astype(np.float32), pad]))


def _write(graph: Graph, meta: RunMeta, size: int, precision: str, books: dict, offsets: list[int], arena: int,
           where: dict, zeros: int, scratch: int) -> bytes:
    i8 = precision == "int8"
    n = len(graph.layers)
    sec = Sections(HEADER.itemsize + n * LAYER.itemsize)
    records = np.zeros(n, LAYER)
    decoded = [0]
    for rec, layer in zip(records, graph.layers):
        _layer_record(rec, layer, offsets, i8)
        if layer.op == STEM:
            rec["h"] = rec["w"] = size
            rec["out_off"], rec["out_channels"] = offsets[layer.out.storage], rec["cout"]
            rec["oh"] = rec["ow"] = (size + 2 * layer.pad - layer.k) // layer.stride + 1
            if layer.ring is not None:
                rec["ring_off"], rec["pool_oh"] = offsets[layer.ring], layer.out.h
                rec["pool_ow"] = layer.out.w
        if layer.conv is not None:
            _weights(sec, rec, layer, precision, books, decoded)
        rec["name_off"] = sec.add(layer.name.encode() + b"\0")
    pre = meta.preprocess
    header = np.zeros((), HEADER)
    names_off = sec.add(b"\0".join(n.encode() for n in meta.class_names) + b"\0")
    meta_json = json.dumps(meta.to_dict()).encode()
    meta_off = sec.add(meta_json)
    sec.add(b"")  # the file ends aligned
    scale = [1.0 / (255.0 * s) for s in pre.std] + [0.0] * (3 - len(pre.std))
    shift = [-m / s for m, s in zip(pre.mean, pre.std)] + [0.0] * (3 - len(pre.std))
    values = dict(magic=MAGIC, version=VERSION, file_bytes=sec.size, n_layers=n, image_size=size,
                  in_channels=pre.in_channels, num_classes=meta.num_classes, precision=I8 if i8 else 0,
                  arena_bytes=arena, input_off=where["input"], logits_off=where["logits"], zeros_off=where["zeros"],
                  scratch_off=where["scratch"], decode_bytes=4 * decoded[0], names_off=names_off, meta_off=meta_off,
                  meta_bytes=len(meta_json), resize_size=round((pre.resize_size or pre.image_size) * size /
                                                               pre.image_size),
                  zeros_bytes=zeros, scratch_bytes=scratch, pixel_scale=scale, pixel_shift=shift)
    for k, v in values.items():
        header[k] = v
    body = header.tobytes() + records.tobytes() + b"".join(sec.parts)
    assert len(body) == sec.size
    return body
