"""Hostile and broken input: pickle payloads are refused and never run; truncated, corrupt and odd
files give one clear SqueezeNetError or a named skip, never a raw traceback; and property-based
fuzzing of every reader finds no input that raises anything but SqueezeNetError."""

import dataclasses
import gzip
import io
import json
import pickle
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from conftest import write_image_folder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save as safetensors_bytes

from squeezenet import SqueezeNetError
from squeezenet.checkpoint import load_state
from squeezenet.config import make_config
from squeezenet.data import load_dataset, load_folder, load_image_files, read_cifar_batch, read_idx
from squeezenet.runs import RunMeta
from squeezenet.splits import eval_data
from squeezenet.zoo import read_state_dict


class Payload:
    """Unpickling this creates ``marker``: if the file exists afterwards, the payload ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ----------------------------------------------------------------------------- pickle payloads

def test_trainer_state_with_a_payload_is_refused_and_never_runs(tmp_path, cli):
    marker, run = tmp_path / "pwned", tmp_path / "run"
    run.mkdir()
    cfg = make_config({"train_size": 64, "out": str(run), "progress": False})
    (run / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    torch.save({"epoch": 1, "model": {}, "optimizer": {}, "scheduler": {},
                "history": [Payload(marker)]}, run / "last.state.pt")
    code, _, err = cli("train", "--resume", run)
    assert code == 1 and "refusing to load trainer state" in err and "Traceback" not in err
    assert not marker.exists()


def test_cifar_batch_with_a_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i in range(1, 6):
        (root / f"data_batch_{i}").write_bytes(pickle.dumps({b"data": Payload(marker), b"labels": [0]}))
    with pytest.raises(SqueezeNetError, match="not a valid CIFAR-10 batch.*forbidden global"):
        load_dataset("cifar10", "train", tmp_path)
    assert not marker.exists()


def test_state_that_is_not_a_trainer_state_is_refused(tmp_path):
    path = tmp_path / "last.state.pt"
    torch.save({"features.0.weight": torch.zeros(1)}, path)  # plain weights, not a trainer state
    with pytest.raises(SqueezeNetError, match="not a trainer state written by"):
        load_state(path)


# ----------------------------------------------------------------------------- IDX files

def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


IDX_IMAGES = idx_bytes(np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256)
IDX_LABELS = idx_bytes(np.array([3, 7]))


@pytest.mark.parametrize("content, message", [
    (b"", "bad magic number"),
    (IDX_IMAGES[:-100], "truncated or corrupt"),
    (IDX_IMAGES[:10], "header incomplete"),
    (gzip.compress(IDX_IMAGES)[:-20], "not a readable IDX file"),
    (b"\x1f\x8b" + b"\x08\x00" + b"\x00" * 6 + b"\xff" * 40, "not a readable IDX file"),  # bad deflate data
    (b"\x00\x00\x0d\x03" + IDX_IMAGES[4:], "unsigned bytes"),  # float IDX
    (bytes([0, 0, 8, 4]) + b"\xff" * 16, "header says"),  # 2^128 elements claimed
])
def test_broken_idx_files(tmp_path, cli, content, message):
    for name, data in [("train-images-idx3-ubyte.gz", content), ("train-labels-idx1-ubyte.gz", IDX_LABELS)]:
        (tmp_path / name).write_bytes(data)
    with pytest.raises(SqueezeNetError, match=message):
        read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    code, _, err = cli("train", "--dataset", "fashion-mnist", "--data-dir", tmp_path, "--epochs", "1")
    assert code == 1 and "Traceback" not in err and message in err


def test_idx_files_that_disagree(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(IDX_IMAGES))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(idx_bytes(np.array([3, 7, 1])))
    with pytest.raises(SqueezeNetError, match="do not match"):
        load_dataset("fashion-mnist", "train", tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(idx_bytes(np.array([3, 70])))
    with pytest.raises(SqueezeNetError, match="labels .* go up to 70"):
        load_dataset("fashion-mnist", "train", tmp_path)


# ----------------------------------------------------------------------------- CIFAR batches

CIFAR_BATCH = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2]}, protocol=2)


@pytest.mark.parametrize("content, message", [
    (b"", "not a valid CIFAR-10 batch"),
    (CIFAR_BATCH[: len(CIFAR_BATCH) // 2], "not a valid CIFAR-10 batch"),
    (pickle.dumps({b"labels": [1]}), "not a valid CIFAR-10 batch"),
    (pickle.dumps([1, 2, 3]), "not a valid CIFAR-10 batch"),
    (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [1, 2]}), "not a valid CIFAR-10 batch"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 12]}), "is corrupt"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}), "is corrupt"),
])
def test_broken_cifar_batches(tmp_path, content, message):
    (tmp_path / "test_batch").write_bytes(content)
    with pytest.raises(SqueezeNetError, match=message):
        load_dataset("cifar10", "test", tmp_path)


def test_valid_cifar_batch_reads(tmp_path):
    (tmp_path / "test_batch").write_bytes(CIFAR_BATCH)
    data = load_dataset("cifar10", "test", tmp_path)
    assert data.images.shape == (2, 3, 32, 32) and data.labels.tolist() == [1, 2]


# ----------------------------------------------------------------------------- images

def png_header(width: int, height: int) -> bytes:
    """A PNG that only claims its size: no real pixels are ever made (a decompression bomb's header)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        chunk(b"IEND", b"")


def jpeg_bytes(size=40) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


BROKEN_IMAGES = {
    "empty.png": b"",
    "truncated.jpg": jpeg_bytes()[:300],
    "bomb.png": png_header(20000, 20000),  # 400 megapixels claimed in 100 bytes
    "bomb-under-pil-limit.png": png_header(10000, 10000),  # 100 M: PIL alone would only warn
    "text.jpg": b"this is not an image\n",
}


@pytest.mark.parametrize("name", sorted(BROKEN_IMAGES))
def test_broken_images_are_named_skips_or_clear_errors(tmp_path, name):
    root = write_image_folder(tmp_path / "images", per_class=2, size=24)
    bad = root / "cat" / name
    bad.write_bytes(BROKEN_IMAGES[name])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_folder(root, image_size=24)
    assert len(data) == 4 and len(data.skipped) == 1 and data.skipped[0].startswith(str(bad))
    assert any(f"skipped unreadable image {bad}" in str(w.message) for w in caught)
    if name.startswith("bomb"):
        assert "DecompressionBombError" in data.skipped[0]
    with pytest.raises(SqueezeNetError, match="1 unreadable image"):
        load_folder(root, image_size=24, strict=True, cache=False)
    with pytest.raises(SqueezeNetError, match=f"cannot read image {bad}"):
        load_image_files([bad], 24, 3)


def _save(im: Image.Image, path, **kw):
    im.save(path, **kw)
    return path


def test_unexpected_image_modes_decode_sensibly(tmp_path):
    s = 16
    half = np.zeros((s, s), np.uint8)
    half[:, s // 2:] = 255
    palette = Image.fromarray(half // 255, mode="L").convert("P")
    palette.putpalette([255, 0, 0] + [0, 0, 255] + [0] * 762)
    files = {
        "cmyk": _save(Image.new("CMYK", (s, s), (0, 255, 255, 0)), tmp_path / "cmyk.jpg"),  # red
        "i16": _save(Image.fromarray(np.full((s, s), 32896, np.uint16)), tmp_path / "i16.png"),  # mid grey
        "palette-transparent": _save(palette, tmp_path / "p.png", transparency=1),  # left red, right clear
        "la": _save(Image.fromarray(np.stack([np.zeros((s, s), np.uint8), half], -1), mode="LA"),
                    tmp_path / "la.png"),  # left transparent, right opaque black
    }
    assert Image.open(files["i16"]).mode.startswith("I")
    images, _ = load_image_files(list(files.values()), s, 3)
    cmyk, i16, pal, la = (im.numpy().astype(int) for im in images)
    assert cmyk[0].min() > 200 and cmyk[1].max() < 60 and cmyk[2].max() < 60
    assert abs(i16 - 128).max() <= 1  # scaled 16 -> 8 bit, not clipped to white
    assert (pal[:, :, : s // 2 - 1] == np.array([255, 0, 0])[:, None, None]).all()
    assert (pal[:, :, s // 2 + 1:] == 255).all()  # transparent over white
    assert (la[:, :, : s // 2 - 1] == 255).all() and (la[:, :, s // 2 + 1:] == 0).all()
    gray, _ = load_image_files(list(files.values()), s, 1)
    assert gray.shape == (4, 1, s, s)


# ----------------------------------------------------------------------------- mislabelled folders

def test_images_directly_in_the_data_dir(tmp_path, cli):
    write_image_folder(tmp_path / "x", per_class=1, size=24)
    (tmp_path / "flat").mkdir()
    for p in (tmp_path / "x").rglob("*.png"):
        p.rename(tmp_path / "flat" / f"{p.parent.name}-{p.name}")
    code, _, err = cli("train", "--dataset", "folder", "--data-dir", tmp_path / "flat", "--epochs", "1")
    assert code == 1 and "has no class folders" in err and "Traceback" not in err


def test_class_folder_without_images(tmp_path):
    root = write_image_folder(tmp_path / "images", per_class=2, size=24)
    (root / "bird").mkdir()
    (root / "bird" / "notes.txt").write_text("labels go here")
    with pytest.raises(SqueezeNetError, match="class folder .*bird has no images"):
        load_folder(root, image_size=24)


def test_eval_on_folders_with_other_class_names(tmp_path):
    root = write_image_folder(tmp_path / "images", classes=("cat", "dog"), per_class=2, size=24)
    (root / "test").mkdir()
    write_image_folder(root / "test", classes=("cat", "fox"), per_class=2, size=24)
    meta = RunMeta.parse({"arch": "squeezenet1_1", "model_kwargs": {}, "dataset": "folder", "data_dir": str(root),
                          "class_names": ["cat", "dog"],
                          "preprocess": {"image_size": 24, "in_channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3}})
    with pytest.raises(SqueezeNetError, match=r"class folders \['cat', 'fox'\] differ"):
        eval_data(meta, split="test")


# ----------------------------------------------------------------------------- fuzzing every reader

def _flip(seed: bytes, edits) -> bytes:
    b = bytearray(seed)
    for pos, value in edits:
        b[pos % len(b)] = value
    return bytes(b)


def mutations(seed: bytes):
    """Random bytes, truncations and byte edits of a valid file: most hit deep parser paths."""
    return st.one_of(
        st.binary(max_size=200),
        st.integers(0, len(seed)).map(lambda n: seed[:n]),
        st.lists(st.tuples(st.integers(0, len(seed) - 1), st.integers(0, 255)), min_size=1, max_size=6)
        .map(lambda edits: _flip(seed, edits)),
        st.lists(st.tuples(st.integers(0, len(seed) - 1), st.integers(0, 255)), min_size=1, max_size=3)
        .flatmap(lambda edits: st.integers(1, len(seed)).map(lambda n: _flip(seed, edits)[:n])),
    )


FUZZ = settings(max_examples=100, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _check(reader, path, content):
    path.write_bytes(content)
    try:
        reader(path)
    except SqueezeNetError:
        pass  # anything else escaping fails the test, with the input that caused it


def _image_seeds():
    small = Image.fromarray(np.random.default_rng(1).integers(0, 255, (8, 8, 3), dtype=np.uint8))
    out = {}
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF"):
        buf = io.BytesIO()
        small.save(buf, fmt)
        out[fmt] = buf.getvalue()
    return out


IMAGE_SEEDS = _image_seeds()
STATE_SEED = io.BytesIO()
torch.save({"epoch": 1, "model": {"w": torch.ones(2)}, "optimizer": {}, "scheduler": {}, "history": []},
           STATE_SEED)
WEIGHTS_SEED = io.BytesIO()
torch.save({"features.0.weight": torch.ones(2, 2)}, WEIGHTS_SEED)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(content=st.one_of(mutations(IDX_IMAGES[:4 + 12 + 64]), mutations(gzip.compress(IDX_LABELS))))
def test_fuzz_read_idx(fuzz_dir, content):
    _check(read_idx, fuzz_dir / "f.idx", content)


@FUZZ
@given(content=mutations(CIFAR_BATCH))
def test_fuzz_read_cifar_batch(fuzz_dir, content):
    _check(read_cifar_batch, fuzz_dir / "batch", content)


@FUZZ
@given(content=st.one_of(*[mutations(seed) for seed in IMAGE_SEEDS.values()]))
def test_fuzz_image_decode(fuzz_dir, content):
    _check(lambda p: load_image_files([p], 16, 3), fuzz_dir / "image.png", content)


@FUZZ
@given(content=mutations(WEIGHTS_SEED.getvalue()))
def test_fuzz_read_state_dict_pth(fuzz_dir, content):
    _check(read_state_dict, fuzz_dir / "w.pth", content)


@FUZZ
@given(content=mutations(safetensors_bytes({"features.0.weight": torch.ones(2, 2)}, {"format": "pt"})))
def test_fuzz_read_state_dict_safetensors(fuzz_dir, content):
    _check(read_state_dict, fuzz_dir / "w.safetensors", content)


@FUZZ
@given(content=mutations(STATE_SEED.getvalue()))
def test_fuzz_load_state(fuzz_dir, content):
    _check(load_state, fuzz_dir / "last.state.pt", content)
