import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from squeezenet import SqueezeNetError
from squeezenet.data import (
    Loader,
    augment_batch,
    load_cifar10,
    load_dataset,
    load_fashion_mnist,
    load_folder,
    make_shapes,
    random_erase,
    read_idx,
    train_val_split,
)
from squeezenet.data.augment import random_crop_flip, random_resized_crop_flip


def write_idx(path, array, gz=True):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


@pytest.fixture
def fashion_dir(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 50), ("t10k", 20)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    return tmp_path


def test_fashion_mnist_reader(fashion_dir):
    train = load_fashion_mnist(fashion_dir, "train", download=False)
    test = load_fashion_mnist(fashion_dir, "test", download=False)
    assert train.images.shape == (50, 1, 28, 28) and train.images.dtype == torch.uint8
    assert len(test) == 20 and train.classes[0] == "T-shirt/top"


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path):
    with pytest.raises(SqueezeNetError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "nothing", "train", download=False)


def test_idx_truncated_and_bad_magic(tmp_path):
    p = tmp_path / "x.idx"
    write_idx(p, np.zeros((4, 28, 28)), gz=False)
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(SqueezeNetError, match="truncated or corrupt"):
        read_idx(p)
    p.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(SqueezeNetError, match="bad magic"):
        read_idx(p)


@pytest.mark.skipif(not __import__("os").path.exists("/usr/share/datasets/fashion-mnist"),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist():
    train = load_fashion_mnist(None, "train", download=False)
    assert train.images.shape == (60000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10


def write_cifar_batch(path, n=30, seed=0):
    rng = np.random.default_rng(seed)
    d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist()}
    path.write_bytes(pickle.dumps(d))


def test_cifar_pickle_batches(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i in range(1, 6):
        write_cifar_batch(root / f"data_batch_{i}", seed=i)
    write_cifar_batch(root / "test_batch", n=12)
    train = load_cifar10(tmp_path, "train", download=False)
    test = load_cifar10(tmp_path, "test", download=False)
    assert train.images.shape == (150, 3, 32, 32) and len(test) == 12
    assert train.classes[0] == "airplane"


def test_cifar_hostile_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    (root / "test_batch").write_bytes(pickle.dumps({b"data": Payload(), b"labels": []}))
    with pytest.raises(SqueezeNetError, match="forbidden global"):
        load_cifar10(tmp_path, "test", download=False)
    assert not marker.exists()


def test_cifar_image_folder_layout(tmp_path):
    from conftest import write_image_folder

    write_image_folder(tmp_path / "cifar" / "train", classes=("airplane", "automobile"), size=32)
    data = load_cifar10(tmp_path / "cifar", "train", download=False)
    assert data.images.shape == (12, 3, 32, 32)


def test_cifar_missing_is_clear(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SqueezeNetError, match="CIFAR-10 train split not found"):
        load_cifar10(tmp_path / "empty", "train", download=False)


def test_folder_modes_and_sizes(tmp_path):
    root = tmp_path / "f"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    Image.new("RGBA", (50, 30), (255, 0, 0, 0)).save(root / "a" / "rgba.png")
    Image.new("P", (64, 64), 3).save(root / "a" / "palette.gif")
    Image.new("L", (20, 80), 128).save(root / "b" / "gray.png")
    Image.new("I;16", (40, 40), 1000).save(root / "b" / "sixteen.png")
    Image.new("CMYK", (33, 33), (0, 0, 0, 0)).save(root / "b" / "cmyk.jpg")
    data = load_folder(root, image_size=24)
    assert data.images.shape == (5, 3, 24, 24)
    assert data.classes == ["a", "b"] and data.labels.tolist() == [0, 0, 1, 1, 1]
    # transparent pixels are composited on white, not left black
    assert data.images[1].float().mean() > 250
    gray = load_folder(root, image_size=16, channels=1)
    assert gray.images.shape == (5, 1, 16, 16)


def test_folder_corrupt_images_skipped_or_strict(tmp_path, image_folder):
    (image_folder / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (image_folder / "cat" / "empty.png").write_bytes(b"")
    (image_folder / "dog" / "notes.txt").write_text("hello")
    with pytest.warns(UserWarning) as record:
        data = load_folder(image_folder, image_size=32)
    messages = " ".join(str(w.message) for w in record)
    assert "broken.jpg" in messages and "empty.png" in messages and "notes.txt" in messages
    assert len(data) == 12 and len(data.skipped) == 2
    with pytest.raises(SqueezeNetError, match="unreadable image"):
        load_folder(image_folder, image_size=32, strict=True, cache=False)


def test_folder_cache_decodes_once(tmp_path, image_folder, monkeypatch):
    first = load_folder(image_folder, image_size=32)
    import squeezenet.data.store as store

    monkeypatch.setattr(store, "decode", lambda *a: (_ for _ in ()).throw(AssertionError("decoded again")))
    second = load_folder(image_folder, image_size=32)
    assert torch.equal(first.images, second.images)


def test_folder_errors(tmp_path):
    with pytest.raises(SqueezeNetError, match="does not exist"):
        load_folder(tmp_path / "missing")
    (tmp_path / "x" / "cat").mkdir(parents=True)
    (tmp_path / "x" / "dog").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "x" / "cat" / "1.png")
    with pytest.raises(SqueezeNetError, match=r"class folder .*dog has no images"):
        load_folder(tmp_path / "x")


def test_shapes_deterministic_and_balanced():
    a, b = make_shapes(500, 32, seed=1), make_shapes(500, 32, seed=1)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, make_shapes(500, 32, seed=2).images)
    assert torch.bincount(a.labels, minlength=10).min() > 30


def test_split_is_seeded_and_disjoint():
    data = make_shapes(200, 16)
    tr, va = train_val_split(data, 0.25, seed=3)
    assert len(tr) == 150 and len(va) == 50
    tr2, va2 = train_val_split(data, 0.25, seed=3)
    assert torch.equal(va.uint8(torch.arange(50)), va2.uint8(torch.arange(50)))


def test_augmentations_keep_shape_and_content():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    y = random_crop_flip(x, 2, g)
    assert y.shape == x.shape
    # an unpadded, unflipped crop returns the input itself
    assert torch.equal(random_crop_flip(x, 0, g, flip=False), x)
    z = random_resized_crop_flip(torch.rand(4, 3, 32, 32), g)
    assert z.shape == (4, 3, 32, 32) and torch.isfinite(z).all()


def test_random_erase_replaces_one_rectangle_per_chosen_image():
    g = torch.Generator().manual_seed(0)
    x = torch.full((400, 3, 20, 20), 7.0)
    assert torch.equal(random_erase(x, 0.0, g), x)
    y = random_erase(x, 1.0, g)
    erased = y[:, 0] != 7.0  # noise never hits 7.0 exactly
    assert torch.equal(erased, (y != 7.0).all(1))  # the same rectangle in every channel
    area = erased.float().mean((1, 2))
    assert area.min() > 0 and area.max() <= 0.5 and 0.1 < area.mean() < 0.3  # 2-40% of the image
    rows, cols = erased.any(2), erased.any(1)  # a rectangle: its bounding box is all erased
    assert torch.equal(erased.sum((1, 2)), rows.sum(1) * cols.sum(1))
    half = (random_erase(x, 0.5, g) != 7.0).flatten(1).any(1).float().mean()
    assert 0.4 < half < 0.6


def test_loader_erases_only_when_asked():
    data = make_shapes(64, 16)
    plain = next(iter(Loader(data, 64, seed=0)))[0]
    erased = next(iter(Loader(data, 64, seed=0, erase=1.0)))[0]
    changed = (erased != plain).flatten(1).any(1)
    assert changed.all() and not torch.equal(erased, plain)
    assert torch.equal(next(iter(Loader(data, 64, seed=0, erase=0.0)))[0], plain)


def test_crop_pad_bounds_the_shift():
    x = torch.arange(16 * 16, dtype=torch.float32).view(1, 1, 16, 16).expand(64, 1, 16, 16).clone()
    g = torch.Generator().manual_seed(0)
    out = augment_batch(x, "crop-noflip", g, crop_pad=1)
    # A shift of at most 1 px moves each pixel value by at most 1 row (16) plus 1 column.
    assert (out[:, :, 1:-1, 1:-1] - x[:, :, 1:-1, 1:-1]).abs().max() <= 17
    assert (augment_batch(x, "crop-noflip", g) - x)[:, :, 4:-4, 4:-4].abs().max() > 17  # default: 2 px at 16


def test_loader_normalises_and_batches():
    data = make_shapes(100, 16)
    loader = Loader(data, 32, shuffle=True, augment="crop", seed=0)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [32, 32, 32, 4]
    x = torch.cat([b[0] for b in Loader(data, 100)])
    expected = (data.images.float() / 255 - 0.5) / 0.29
    assert torch.allclose(x, expected, atol=1e-5)
    loader.set_epoch(1)
    again = list(loader)
    assert not torch.equal(batches[0][1], again[0][1])  # another epoch, another order


def test_noise_dataset_matches_the_outline():
    noise = load_dataset("noise", "train")
    assert len(noise) == 1000
    x = noise.batch(torch.arange(4), torch.Generator().manual_seed(0))
    assert x.shape == (4, 3, 224, 224) and abs(x.std().item() - 1) < 0.05


def test_cifar_class_folders_directly(tmp_path):
    from conftest import write_image_folder

    from squeezenet.data import CIFAR_CLASSES

    write_image_folder(tmp_path / "c", classes=CIFAR_CLASSES, per_class=1, size=32)
    data = load_cifar10(tmp_path / "c", "test", download=False)
    assert len(data) == 10 and data.classes == CIFAR_CLASSES
