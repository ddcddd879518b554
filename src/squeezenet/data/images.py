"""Image files: decoding any mode to uint8 arrays, and finding the images of a class-folder tree."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image, ImageOps

from ..errors import SqueezeNetError

try:  # libjpeg-turbo without PIL's per-file Python parsing; PIL decodes JPEGs where it is absent
    import simplejpeg
except ImportError:
    simplejpeg = None

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
# Decompression-bomb guard: refuse images over 64 megapixels (PIL's own default warns at 89 M).
MAX_IMAGE_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
# Folders that photo tools and file systems add beside the images: never classes, never images.
SKIPPED_FOLDERS = {"@eaDir", "__MACOSX", ".AppleDouble", ".thumbnails", "#recycle", "lost+found"}
DECODER_VERSION = 3  # bump when decoding changes, so that cached pixels are rebuilt
JPEG_START = b"\xff\xd8"
RESIZE_REDUCING_GAP = 3.0  # PIL's: a shrink of 2x this or more first reduce()s by whole factors


def decoders() -> str:
    """The decoders' versions: cached pixels are theirs."""
    return f"pillow {PIL.__version__}, simplejpeg {getattr(simplejpeg, '__version__', None)}"


def shown(path: str | Path) -> str:
    """A path safe to print: undecodable bytes of a file name (os.fsdecode's surrogates) as escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def open_rgb(path: Path, channels: int = 3, draft: int | None = None) -> Image.Image:
    """The image upright (EXIF orientation applied), in RGB or L, transparency over white.

    Any mode (palette, RGBA, 16-bit, CMYK) converts. ``draft``: let JPEG decode at a reduced scale
    that still covers ``draft`` px on the shorter side."""
    with Image.open(path) as im:
        # PIL only warns between MAX_IMAGE_PIXELS and twice that; refuse before decoding anything.
        if im.width * im.height > MAX_IMAGE_PIXELS:
            raise Image.DecompressionBombError(f"{im.width}x{im.height} pixels is over the limit of "
                                               f"{MAX_IMAGE_PIXELS:,} (a decompression bomb?)")
        if min(im.size) < 1:
            raise ValueError(f"empty image ({im.width}x{im.height})")
        if draft:
            im.draft("RGB" if channels == 3 else "L", (draft, draft))
        im.load()
        ImageOps.exif_transpose(im, in_place=True)  # phone photos: stored sideways, shown upright
        if im.mode in ("I", "F") or im.mode.startswith("I;16"):
            # 16/32-bit greyscale: PIL's convert would clip at 255 (mostly white); scale 16 -> 8 bit.
            im = Image.fromarray((np.asarray(im, dtype=np.float64) / 257).clip(0, 255).astype(np.uint8))
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
        mode = "RGB" if channels == 3 else "L"
        return im if im.mode == mode else im.convert(mode)  # convert() copies even to the same mode


def resized(w: int, h: int, size: int) -> tuple[int, int]:
    """(width, height) of a w x h image with its shorter side resized to ``size``."""
    s = size / min(w, h)
    return max(size, round(w * s)), max(size, round(h * s))


def resize_crop(arr: np.ndarray, size: int) -> np.ndarray:
    """(H, W[, C]) uint8 pixels: the shorter side resized to ``size`` (bilinear, antialiased), then
    the centre ``size`` x ``size`` square. By PyTorch's uint8 kernel where PIL's resize would not
    first ``reduce()`` (a shrink under 6x): PIL's filter in 2-3x less time, within 2 levels of its
    pixels (benchmarks/RESULTS.md#serving); PIL otherwise."""
    h, w = arr.shape[:2]
    if (w, h) == (size, size):
        return arr
    nw, nh = resized(w, h, size)
    left, top = (nw - size) // 2, (nh - size) // 2
    if max(w / nw, h / nh) >= 2 * RESIZE_REDUCING_GAP:
        im = Image.fromarray(arr).resize((nw, nh), Image.BILINEAR, reducing_gap=RESIZE_REDUCING_GAP)
        return np.asarray(im.crop((left, top, left + size, top + size)))
    if not (arr.flags.writeable and arr.flags.c_contiguous):  # PIL's arrays are read-only views
        arr = np.array(arr)
    x = torch.from_numpy(arr).view(h, w, -1).permute(2, 0, 1)[None]  # channels last
    with torch.inference_mode():
        y = torch.nn.functional.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True)
    y = y[0, :, top:top + size, left:left + size].permute(1, 2, 0).numpy()
    return y[..., 0] if arr.ndim == 2 else y


def decode(source, image_size: int, channels: int = 3, resize_size: int | None = None) -> np.ndarray:
    """One image (a path, or its bytes) as a (C, size, size) uint8 array: upright, shorter side
    resized to ``resize_size`` (default ``image_size``), then the centre ``image_size`` square."""
    resize_size = resize_size or image_size
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        with open(source, "rb") as f:
            data = JPEG_START + f.read() if f.read(2) == JPEG_START else None
    arr = _decode_jpeg(data, channels, resize_size) if data and data[:2] == JPEG_START else None
    if arr is None:
        arr = np.asarray(open_rgb(io.BytesIO(data) if data is not None else source, channels, draft=resize_size))
    arr = resize_crop(arr, resize_size)
    if resize_size != image_size:
        left = (resize_size - image_size) // 2
        arr = arr[left:left + image_size, left:left + image_size]
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _decode_jpeg(data: bytes, channels: int, draft: int) -> np.ndarray | None:
    """A JPEG's pixels, (H, W[, 3]), by libjpeg-turbo without PIL's Python parsing of the file
    (the same pixels, at the scale ``open_rgb``'s draft picks, in much less time on a small image:
    benchmarks/RESULTS.md#serving); None where ``open_rgb`` must decide: an EXIF orientation,
    CMYK, a bomb, damage."""
    if simplejpeg is None or not _upright(data):
        return None
    try:
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in ("YCbCr", "Gray") or not 0 < w * h <= MAX_IMAGE_PIXELS:
            return None
        s = next(s for s in (8, 4, 2, 1) if min(w // draft, h // draft) >= s or s == 1)  # PIL's draft
        arr = simplejpeg.decode_jpeg(data, "rgb" if channels == 3 else "gray", min_width=-(-w // s),
                                     min_height=-(-h // s))
    except ValueError:  # damaged or unusual: PIL says what is wrong, or decodes what it can
        return None
    return arr[..., 0] if channels == 1 else arr


def _upright(data: bytes) -> bool:
    """Whether a JPEG is stored upright: no EXIF orientation but 1, none in XMP (which PIL's
    ``exif_transpose`` also reads). Only the markers before the image data are walked."""
    if b"\xff\xe1" not in data:  # no APP1 segment (the coded data never holds this pair: 0xFF is stuffed)
        return True
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xDA:  # start of scan: no more metadata
            return True
        segment = data[i + 4:i + 2 + length]
        if marker == 0xE1 and segment.startswith(b"Exif\x00\x00"):
            try:
                exif = Image.Exif()
                exif.load(segment)
                if exif.get(0x0112, 1) != 1:
                    return False
            except Exception:  # unreadable EXIF: PIL decides
                return False
        elif marker == 0xE1 and b"Orientation" in segment:
            return False
        i += 2 + length
    return False  # no image data where it should be: PIL says what is wrong


def _walk_images(folder: Path, notes: dict) -> list[Path]:
    """Image files under ``folder``, sorted. Hidden and thumbnail folders are skipped; symbolic
    links to files are read, links to folders are not followed (they can loop or leave the tree)."""
    found = []
    for top, dirs, files in os.walk(folder, followlinks=False):
        for d in list(dirs):
            p = Path(top) / d
            if d.startswith(".") or d in SKIPPED_FOLDERS:
                notes["hidden"].append(p)
                dirs.remove(d)
            elif p.is_symlink():
                notes["linked folders"].append(p)
        for f in files:
            p = Path(top) / f
            if f.startswith(".") or f == "Thumbs.db":
                continue
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                notes["not images"].append(p)
            elif p.is_symlink() and not p.exists():
                notes["broken links"].append(p)
            else:
                found.append(p)
    return sorted(found, key=os.fsencode)


def scan_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class folders -> (classes, [(file, label)]). What was left out is said in one warning."""
    if not root.is_dir():
        raise SqueezeNetError(f"data directory {shown(root)} does not exist: pass --data-dir DIR with one "
                              f"sub-folder of images per class (DIR/cat/1.jpg, DIR/dog/2.png, ...)")
    classes = sorted(d.name for d in root.iterdir()
                     if d.is_dir() and not d.name.startswith(".") and d.name not in SKIPPED_FOLDERS)
    if not classes:
        raise SqueezeNetError(f"{shown(root)} has no class folders: expected DIR/<class name>/<image files>")
    notes: dict[str, list[Path]] = {"hidden": [], "linked folders": [], "not images": [], "broken links": []}
    samples = []
    for label, name in enumerate(classes):
        images = _walk_images(root / name, notes)
        if not images:
            raise SqueezeNetError(f"class folder {shown(root / name)} has no images "
                                  f"({', '.join(sorted(IMAGE_EXTENSIONS))}): add some or remove it")
        samples += [(p, label) for p in images]
    left_out = [f"{len(v)} {k} (e.g. {shown(v[0])})" for k, v in notes.items() if v]
    if left_out:
        warnings.warn(f"{shown(root)}: left out {', '.join(left_out)}", stacklevel=3)
    return classes, samples


def load_image_files(paths, image_size: int, channels: int, resize_size: int | None = None):
    """(uint8 tensor, names) of images for ``predict``, decoded as training data is; an unreadable
    one raises, naming it."""
    arrays, paths = [], [Path(p) for p in paths]
    for p in paths:
        if not p.is_file():
            hint = " (a folder: pass its image files, e.g. DIR/*.jpg)" if p.is_dir() else ""
            raise SqueezeNetError(f"image {shown(p)} does not exist{hint}")
        try:
            arrays.append(decode(p, image_size, channels, resize_size))
        except Exception as e:  # PIL's decoders raise many types on hostile bytes
            raise SqueezeNetError(f"cannot read image {shown(p)}: {type(e).__name__}: {e}") from None
    return torch.from_numpy(np.stack(arrays)), [shown(p) for p in paths]
