"""Photos at real resolution: upright (EXIF), stored a little larger than the model's input and
memory-mapped from the decode cache, split by class, cropped alike by eval and predict."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_image_folder
from PIL import Image, ImageFilter

from squeezenet.data import Loader, load_dataset, load_folder, load_image_files, train_val_split

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _two_colour(w=20, h=40):
    """Left half red, right half blue: which way up it is shows in the pixels."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2, 0] = 255
    arr[:, w // 2:, 2] = 255
    return Image.fromarray(arr)


def test_exif_orientation_is_applied_everywhere(tmp_path):
    upright = _two_colour()
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # as a phone stores it: sideways ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... with "rotate 90 clockwise to view"
    (tmp_path / "f" / "a").mkdir(parents=True)
    (tmp_path / "f" / "b").mkdir()
    stored.save(tmp_path / "f" / "a" / "phone.jpg", exif=exif, quality=95)
    upright.save(tmp_path / "f" / "b" / "plain.png")
    images, _ = load_image_files([tmp_path / "f" / "a" / "phone.jpg"], 20, 3)  # predict's reader
    folder = load_folder(tmp_path / "f", 20)  # training's and eval's
    for x in (images[0], folder.uint8(torch.tensor([0]))[0]):
        left, right = x[:, :, :8].float().mean((1, 2)), x[:, :, 12:].float().mean((1, 2))
        assert left[0] > 200 and left[2] < 60 and right[2] > 200 and right[0] < 60  # red left, blue right


def _mapped_from(t: torch.Tensor, name: str) -> bool:
    """Whether tensor ``t``'s memory is a mapping of a file called ``name`` (/proc/self/maps)."""
    ptr = t.untyped_storage().data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        lo, hi = (int(v, 16) for v in fields[0].split("-"))
        if lo <= ptr < hi:
            return len(fields) > 5 and fields[5].endswith(name)
    return False


def test_memory_mapped_store_equals_decoding_in_memory_batch_for_batch(tmp_path):
    root = write_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=10, size=40)
    mapped = load_folder(root, 32)
    in_ram = load_folder(root, 32, cache=False)
    assert _mapped_from(mapped.images, "images.u8")  # the cache file itself, not a copy in memory
    assert not _mapped_from(in_ram.images, "images.u8")
    for data in (mapped, in_ram):
        data.batches = [b for b in Loader(train_val_split(data, 0.2, 0)[0], 8, shuffle=True, augment="rrc", seed=3)]
    for (xa, ya), (xb, yb) in zip(mapped.batches, in_ram.batches):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_the_device_path_makes_the_cpu_paths_batches(tmp_path):
    data = load_dataset("shapes", size=96)
    for augment in ("crop", "rrc", "flip"):
        kw = dict(batch_size=16, shuffle=True, augment=augment, seed=1, erase=0.5)
        host = list(Loader(data, **kw))
        device = list(Loader(data, resident=True, device="cpu", **kw))
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(host, device))


def test_split_is_stratified(tmp_path):
    data = load_dataset("shapes", size=1000)
    data.labels = torch.cat([torch.zeros(900, dtype=torch.long), torch.ones(90), torch.full((10,), 2)]).long()
    train, val = train_val_split(data, 0.1, seed=0)
    counts = torch.bincount(val.labels, minlength=3).tolist()
    assert counts == [90, 9, 1] and len(train) == 900
    assert not set(val.index.tolist()) & set(train.index.tolist())


def test_stored_larger_and_cropped_alike_by_eval_and_predict(tmp_path, cli):
    write_image_folder(tmp_path / "photos" / "train", per_class=8, size=50)
    write_image_folder(tmp_path / "photos" / "test", per_class=4, size=50, seed=5)
    code, _, err = cli("train", "--dataset", "folder", "--data-dir", tmp_path / "photos", "--image-size", "28",
                       "--crop-pct", "0.875", "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.25",
                       "--out", tmp_path / "run", "--no-progress")
    assert code == 0, err
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["crop_pct"] == 0.875
    from squeezenet.checkpoint import read_metadata
    from squeezenet.splits import eval_data

    pre = read_metadata(tmp_path / "run").preprocess
    assert (pre.image_size, pre.resize_size) == (28, 32)
    test = eval_data(read_metadata(tmp_path / "run"), split="test")
    assert test.image_size == 28 and test.stored_size == 32
    first = sorted((tmp_path / "photos" / "test" / "cat").iterdir())[0]
    images, _ = load_image_files([first], 28, 3, 32)
    assert torch.equal(images[0], test.uint8(torch.tensor([0]))[0])  # the same pixels either way
    code, out, err = cli("eval", tmp_path / "run", "--json", tmp_path / "e.json")
    assert code == 0 and json.loads((tmp_path / "e.json").read_text())["count"] == 8, err
    larger = eval_data(read_metadata(tmp_path / "run").at_size(36), split="test")  # eval --image-size 36
    assert (larger.image_size, larger.stored_size) == (36, 41)
    code, out, err = cli("eval", tmp_path / "run", "--image-size", "36")
    assert code == 0 and "top-1" in out, err
    code, _, err = cli("eval", tmp_path / "run", "--image-size", "8")
    assert code == 2 and "below the model's minimum" in err


def test_freeze_features_trains_the_classifier_alone(tmp_path, cli):
    from safetensors.torch import load_file

    from squeezenet import create_model

    torch.save(create_model("squeezenet1_1").state_dict(), tmp_path / "tv.pth")  # torchvision's layout
    root = write_image_folder(tmp_path / "imgs", per_class=8, size=40)
    args = ["train", "--recipe", "finetune", "--data-dir", root, "--image-size", "32", "--weights", tmp_path / "tv.pth",
            "--batch-size", "4", "--val-fraction", "0.25", "--epochs", "2", "--no-progress"]
    code, out, err = cli(*args, "--freeze-features", "--out", tmp_path / "frozen")
    assert code == 0 and "classifier re-initialised" in out, err
    start = torch.load(tmp_path / "tv.pth")
    after = load_file(str(tmp_path / "frozen" / "last.safetensors"))
    assert all(torch.equal(after[k], start[k]) for k in start if k.startswith("features."))
    code, _, err = cli(*args, "--freeze-features", "--unfreeze-after", "1", "--out", tmp_path / "thawed")
    assert code == 0, err
    thawed = load_file(str(tmp_path / "thawed" / "last.safetensors"))
    assert not torch.equal(thawed["features.0.weight"], start["features.0.weight"])  # epoch 2 trained them


@pytest.mark.slow
def test_two_ranks_decode_the_folder_once(tmp_path):
    root = write_image_folder(tmp_path / "imgs", classes=("a", "b", "c", "d"), per_class=8, size=40)
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "SQUEEZENET_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "squeezenet",
           "--verbose", "train", "--dataset", "folder", "--data-dir", str(root), "--image-size", "32", "--epochs", "1",
           "--batch-size", "8", "--out", str(tmp_path / "run"), "--no-progress"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (r.stdout + r.stderr).count("decoded 32 images into the cache") == 1  # rank 0 only
    stores = list((tmp_path / "cache" / "decoded").iterdir())
    assert len(stores) == 1 and not stores[0].name.startswith(".")


def _jpeg(im: Image.Image, **kw) -> bytes:
    import io

    buf = io.BytesIO()
    im.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def test_the_fast_jpeg_path_gives_pils_pixels_and_leaves_it_the_rest(monkeypatch):
    """libjpeg-turbo straight from the bytes (simplejpeg) must decode what PIL decodes, pixel for
    pixel, at every draft scale; EXIF/XMP-rotated, CMYK and damaged files go to PIL."""
    import squeezenet.data.images as images

    assert images.simplejpeg is not None  # installed with the package: the path is taken
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (300, 437, 3), np.uint8)).filter(ImageFilter.GaussianBlur(2))
    rotated = Image.Exif()
    rotated[0x0112] = 6
    upright = Image.Exif()
    upright[0x0112] = 1
    variants = {"420": _jpeg(photo, quality=90), "444": _jpeg(photo, quality=95, subsampling=0),
                "422": _jpeg(photo, subsampling=1), "progressive": _jpeg(photo, progressive=True),
                "grey": _jpeg(photo.convert("L")), "exif upright": _jpeg(photo, exif=upright),
                "small": _jpeg(photo.resize((32, 32)))}
    fallback = {"exif rotated": _jpeg(photo, exif=rotated), "cmyk": _jpeg(photo.convert("CMYK")),
                "xmp rotated": _jpeg(photo, xmp=b'<x:xmpmeta><rdf:Description tiff:Orientation="8"/></x:xmpmeta>')}
    for name, data in {**variants, **fallback}.items():
        for size, resize, channels in ((32, None, 3), (64, 73, 3), (140, None, 3), (224, 256, 3), (28, None, 1)):
            fast = images.decode(data, size, channels, resize)
            monkeypatch.setattr(images, "simplejpeg", None)
            slow = images.decode(data, size, channels, resize)
            monkeypatch.undo()
            assert fast.shape == slow.shape == (channels, size, size) and np.array_equal(fast, slow), (name, size)
        assert (images._decode_jpeg(data, 3, 32) is None) == (name in fallback), name
    damaged = variants["420"][:2000]
    assert images._decode_jpeg(damaged, 3, 32) is None
    with pytest.raises(OSError):  # PIL's own error, as before
        images.decode(damaged, 32)


def test_resizing_is_pils_filter_within_two_levels_and_pils_own_past_a_6x_shrink():
    """PyTorch's uint8 antialiased bilinear kernel stands in for PIL's resize (faster) where PIL
    would not first reduce() the image; past that, PIL's own resize, pixel for pixel."""
    import squeezenet.data.images as images

    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 256, (200, 267, 3), np.uint8)).filter(ImageFilter.GaussianBlur(1.5))

    def pil(im, size):
        w, h = im.size
        s = size / min(w, h)
        nw, nh = max(size, round(w * s)), max(size, round(h * s))
        left, top = (nw - size) // 2, (nh - size) // 2
        return np.asarray(im.resize((nw, nh), Image.BILINEAR, reducing_gap=3.0).crop((left, top, left + size,
                                                                                          top + size)))
    for im in (photo, photo.convert("L")):
        for size in (24, 32, 100, 160, 224, 256):
            ours, theirs = images.resize_crop(np.asarray(im), size), pil(im, size)
            assert ours.shape == theirs.shape == (size, size, *((3,) if im.mode == "RGB" else ()))
            diff = np.abs(ours.astype(int) - theirs)
            if 200 / size >= 6:
                assert diff.max() == 0, (im.mode, size)
            else:
                assert diff.max() <= 2 and (diff > 0).mean() < 0.05, (im.mode, size, diff.max())
