"""The model file of the C engine (``engine/sqz.h``): one description of a model, read by the C
engine natively, by the page's WebAssembly build of it, and (densely) by PyTorch.

A 128-byte header (input size, preprocessing, the arena's plan), one 160-byte record per layer
(shapes, arena offsets, where its weights are), then 16-byte-aligned sections: weights in fp32,
int8 per output channel, or Deep Compression's form (a bitmask of the surviving weights, their
codes, a codebook per layer), biases, the class names and the checkpoint's metadata (JSON).
``squeezenet compress`` writes one (a ``.sqz`` file), so a compressed model is a checkpoint like
any other; ``export --format c|web`` write others (``lowering.py`` builds them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import SqueezeNetError
from .runs import RunMeta

MAGIC, VERSION, BLOCK, ALIGN = 0x315A5153, 1, 8, 16
STEM, CONV, POOL, HEAD = 1, 2, 3, 4
W_F32, W_I8, W_CODEBOOK, W_I8F = 0, 1, 2, 3  # W_I8F: int8 weights, fp32 math
RELU, ACCUM, POOLED = 1, 2, 4
F32, I8 = 0, 1
# int8: int8 weights and activations; int8w: int8 weights dequantized to fp32 (a 4x smaller file, fp32 math)
PRECISIONS = {"fp32": F32, "int8": I8, "int8w": F32}

_u, _f = "<u4", "<f4"
HEADER = np.dtype([(n, _u) for n in (
    "magic", "version", "file_bytes", "n_layers", "image_size", "in_channels", "num_classes", "precision",
    "arena_bytes", "input_off", "logits_off", "zeros_off", "scratch_off", "decode_bytes", "names_off", "meta_off",
    "meta_bytes", "resize_size", "zeros_bytes", "scratch_bytes")] + [("pixel_scale", _f, 3), ("pixel_shift", _f, 3),
                                                                     ("reserved", _u, 6)])
LAYER = np.dtype([(n, _u) for n in (
    "op", "flags", "k", "stride", "pad", "h", "w", "cin", "oh", "ow", "cout", "in_off", "out_off", "out_channels",
    "out_first", "form", "weights_off", "bias_off", "mult_off", "codebook_off", "bits", "codes_off", "blocks_off",
    "decoded_off")] + [("in_scale", _f), ("in_zero", "<i4"), ("out_scale", _f), ("out_zero", "<i4"),
                       ("res_scale", _f), ("res_zero", "<i4")] + [(n, _u) for n in (
                           "ring_off", "pool_oh", "pool_ow", "name_off")] + [("reserved", _u, 6)])
assert HEADER.itemsize == 128 and LAYER.itemsize == 160  # sqz.h's structs


def blocks(channels: int) -> int:
    return -(-channels // BLOCK)


def round4(n: int) -> int:
    return -(-n // 4) * 4


class Sections:
    """The file's body: appended byte strings, each at a 16-byte-aligned offset."""

    def __init__(self, start: int):
        self.parts: list[bytes] = []
        self.size = start

    def add(self, data: bytes | np.ndarray) -> int:
        data = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
        pad = -self.size % ALIGN
        self.parts.append(b"\0" * pad)
        offset = self.size + pad
        self.parts.append(data)
        self.size = offset + len(data)
        return offset


def pack_f32(weight: np.ndarray) -> np.ndarray:
    """(cout, cin, k, k) -> [block][ky][kx][cin][BLOCK]: a block's row for each input value."""
    cout, cin, k, _ = weight.shape
    w = np.zeros((blocks(cout) * BLOCK, cin, k, k), np.float32)
    w[:cout] = weight
    return np.ascontiguousarray(w.reshape(-1, BLOCK, cin, k, k).transpose(0, 3, 4, 2, 1))


def pack_i8(weight_q: np.ndarray) -> np.ndarray:
    """int8 (cout, cin, k, k) -> [block][ky][kx][cin/4][BLOCK][4], cin padded to a multiple of 4:
    four input channels side by side per output channel, as the engine's int8 dot products take them."""
    cout, cin, k, _ = weight_q.shape
    w = np.zeros((blocks(cout) * BLOCK, round4(cin), k, k), np.int8)
    w[:cout, :cin] = weight_q
    w = w.reshape(-1, BLOCK, round4(cin) // 4, 4, k, k)  # block, c, quad, e, ky, kx
    return np.ascontiguousarray(w.transpose(0, 4, 5, 2, 1, 3))


def unpack_f32(packed: np.ndarray, cout: int, cin: int, k: int) -> np.ndarray:
    w = packed.reshape(-1, k, k, cin, BLOCK).transpose(0, 4, 3, 1, 2).reshape(-1, cin, k, k)
    return w[:cout]


def unpack_i8(packed: np.ndarray, cout: int, cin: int, k: int) -> np.ndarray:
    w = packed.reshape(-1, k, k, round4(cin) // 4, BLOCK, 4).transpose(0, 4, 3, 5, 1, 2)
    return w.reshape(-1, round4(cin), k, k)[:cout, :cin]


def pack_codebook(codes: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes per weight (cout, cin, k, k; -1 where pruned) -> (mask bits, codes bit-packed LSB
    first in the packed order, the index of each block's first code)."""
    cout, cin, k, _ = codes.shape
    c = np.full((blocks(cout) * BLOCK, cin, k, k), -1, np.int64)
    c[:cout] = codes
    order = c.reshape(-1, BLOCK, cin, k, k).transpose(0, 3, 4, 2, 1).reshape(blocks(cout), -1)
    kept = order >= 0
    first = np.concatenate([[0], np.cumsum(kept.sum(1))]).astype(np.uint32)
    values = order[kept].astype(np.uint64)
    bitstream = ((values[:, None] >> np.arange(bits, dtype=np.uint64)) & 1).astype(np.uint8).reshape(-1)
    packed = np.packbits(bitstream, bitorder="little")
    return np.packbits(kept.reshape(-1), bitorder="little"), np.concatenate([packed, np.zeros(2, np.uint8)]), first


def unpack_codebook(mask: np.ndarray, codes: np.ndarray, count: int, bits: int, n: int) -> np.ndarray:
    """The inverse of ``pack_codebook``'s first two: a code (or -1) per packed weight, n of them."""
    kept = np.unpackbits(mask, bitorder="little")[:n].astype(bool)
    stream = np.unpackbits(codes, bitorder="little")[:count * bits].reshape(count, bits).astype(np.int64)
    out = np.full(n, -1, np.int64)
    out[kept] = (stream << np.arange(bits)).sum(1)
    return out


@dataclass
class ModelFile:
    """A model file, read: its header and layers (numpy records), names, metadata and bytes."""

    data: bytes
    header: np.void
    layers: np.ndarray
    meta: RunMeta
    names: list[str]
    source: str = "the model file"

    @classmethod
    def read(cls, data: bytes, source: str = "the model file") -> ModelFile:
        if len(data) < HEADER.itemsize or int(np.frombuffer(data[:4], "<u4")[0]) != MAGIC:
            raise SqueezeNetError(f"{source} is not a squeezenet model file (no SQZ1 header)")
        header = np.frombuffer(data[:HEADER.itemsize], HEADER)[0]
        if int(header["version"]) != VERSION:
            raise SqueezeNetError(f"{source} is a model file of version {int(header['version'])}; this squeezenet "
                                  f"reads version {VERSION}: export or compress it again")
        n = int(header["n_layers"])
        end = HEADER.itemsize + n * LAYER.itemsize
        if int(header["file_bytes"]) != len(data) or end > len(data) or n > 4096:
            raise SqueezeNetError(f"{source} is truncated or damaged (its header says {int(header['file_bytes']):,} "
                                  f"bytes, the file has {len(data):,})")
        layers = np.frombuffer(data[HEADER.itemsize:end], LAYER)
        try:
            meta_off, meta_bytes = int(header["meta_off"]), int(header["meta_bytes"])
            meta = RunMeta.parse(json.loads(data[meta_off:meta_off + meta_bytes]))
            names = data[int(header["names_off"]):].split(b"\0")[:int(header["num_classes"])]
            names = [s.decode() for s in names]
        except (ValueError, UnicodeDecodeError) as e:
            raise SqueezeNetError(f"{source} is damaged: its metadata cannot be read ({e})") from None
        if names != meta.class_names:
            raise SqueezeNetError(f"{source} is damaged: its class names disagree with its metadata")
        return cls(data, header, layers, meta, names, source)

    def array(self, offset: int, dtype, count: int) -> np.ndarray:
        offset, size = int(offset), np.dtype(dtype).itemsize * count
        if offset + size > len(self.data):
            raise SqueezeNetError(f"{self.source} is damaged: a section runs past its end")
        return np.frombuffer(self.data, dtype, count, offset)

    def name(self, layer) -> str:
        start = int(layer["name_off"])
        end = self.data.find(b"\0", start)
        if not 0 < start < end:
            raise SqueezeNetError(f"{self.source} is damaged: a layer's name is outside it")
        return self.data[start:end].decode(errors="replace")

    def weights(self, layer) -> tuple[np.ndarray, np.ndarray]:
        """One layer's (weight (cout, cin, k, k), bias (cout,)) in float32, as PyTorch holds them
        once BatchNorm is folded: int8 dequantized, codebooks decoded."""
        cout, cin, k = int(layer["cout"]), int(layer["cin"]), int(layer["k"])
        nb = blocks(cout)
        bias = self.array(layer["bias_off"], "<f4", nb * BLOCK)[:cout].copy()
        form = int(layer["form"])
        if form == W_F32:
            return unpack_f32(self.array(layer["weights_off"], "<f4", nb * BLOCK * cin * k * k), cout, cin, k), bias
        mult = self.array(layer["mult_off"], "<f4", nb * BLOCK)[:cout]
        if form == W_I8F:
            q = unpack_f32(self.array(layer["weights_off"], "i1", nb * BLOCK * cin * k * k), cout, cin, k)
            return q.astype(np.float32) * mult[:, None, None, None], bias
        if form == W_I8:
            q = unpack_i8(self.array(layer["weights_off"], "i1", nb * BLOCK * round4(cin) * k * k), cout, cin, k)
            scale = mult / float(layer["in_scale"])  # mult = input scale x weight scale
            bias += mult * float(layer["in_zero"]) * q.reshape(cout, -1).sum(1)  # the zero-point term folded in
            return q.astype(np.float32) * scale[:, None, None, None], bias
        bits, n = int(layer["bits"]), nb * BLOCK * cin * k * k
        first = self.array(layer["blocks_off"], "<u4", nb + 1)
        mask = self.array(layer["weights_off"], "u1", -(-n // 8))
        codes_bytes = -(-int(first[-1]) * bits // 8)
        codes = unpack_codebook(mask, self.array(layer["codes_off"], "u1", codes_bytes), int(first[-1]), bits, n)
        book = np.concatenate([self.array(layer["codebook_off"], "<f4", 1 << bits), [0.0]]).astype(np.float32)
        dense = book[codes].reshape(nb, k, k, cin, BLOCK)  # code -1 takes the appended 0
        scale = np.concatenate([mult, np.zeros(nb * BLOCK - cout, np.float32)])
        dense = (dense * scale.reshape(nb, 1, 1, 1, BLOCK)).astype(np.float32)
        return unpack_f32(dense.reshape(-1), cout, cin, k), bias

    def convolutions(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Every convolution's (weight, bias), BatchNorm folded in, by its PyTorch module name."""
        return {self.name(layer): self.weights(layer) for layer in self.layers if int(layer["op"]) != POOL}


def is_model_file(path: str | Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC.to_bytes(4, "little")
    except OSError:
        return False
