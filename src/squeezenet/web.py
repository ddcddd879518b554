"""``export --format web``: a static folder that classifies images in the browser, offline.

The folder holds ``index.html``, ``app.js``, ``model-info.json`` (class names, sizes) and a
runtime, so any static host (or ``python -m http.server``) serves it with no network:
- ``engine`` (the default): squeezenet's C engine as WebAssembly (``engine.wasm``, built from
  ``engine/sqz.c`` and shipped in the package) and the model file (``model.sqz``, gzip-compressed:
  fp32, int8 weights, or a ``compress`` file's codebooks as they are);
- ``ort-web``: onnxruntime-web running the uint8-input ONNX model. onnxruntime-web comes from
  ``--ort-web DIR``, else ``./node_modules/onnxruntime-web/dist``, else the cache, else the npm
  registry at the pinned version, checked against the lockfile's sha512 before anything is kept.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from .checkpoint import load_checkpoint
from .data import normalize
from .errors import SqueezeNetError, UsageError
from .export import as_rgb_nhwc, onnx_bytes, sample_images, verify_onnx
from .files import cache_dir, mkdir, replace_folder

# Pinned as in web/package-lock.json (a test holds the two equal).
ORT_WEB_VERSION = "1.30.0"
ORT_WEB_INTEGRITY = "sha512-q0y+JrrtukXSzsBWEMccVfqX25LRmosXHF+CaRJmg8pZClzcV7svNc4rKY3jL02Vb7QmRMDs1SigqR4CXAfKYQ=="
ORT_WEB_URL = f"https://registry.npmjs.org/onnxruntime-web/-/onnxruntime-web-{ORT_WEB_VERSION}.tgz"
# The WebAssembly CPU build only: the bundle (JS API + its loader) and the SIMD/threads binary.
ORT_WEB_FILES = ("ort.wasm.bundle.min.mjs", "ort-wasm-simd-threaded.wasm")
PRECISIONS = ("fp32", "int8")
RUNTIMES = ("engine", "ort-web")
ASSETS = Path(__file__).parent / "webpage"
PAGE = ("index.html", "app.js")


def _has_files(folder: Path) -> bool:
    return all((folder / f).is_file() for f in ORT_WEB_FILES)


def ort_web_dir(given=None, download: bool = True) -> Path:
    """A folder holding ``ORT_WEB_FILES``: ``given`` (its ``dist`` or itself), ``./node_modules``
    (or this repository's ``web/node_modules``), the cache, or the registry (verified, then cached)."""
    if given is not None:
        for folder in (Path(given), Path(given) / "dist", Path(given) / "onnxruntime-web" / "dist"):
            if _has_files(folder):
                return folder
        raise UsageError(f"--ort-web {given}: holds no {' and '.join(ORT_WEB_FILES)}; pass onnxruntime-web's "
                         f"dist folder (`npm install onnxruntime-web@{ORT_WEB_VERSION}` puts it in "
                         f"node_modules/onnxruntime-web/dist)")
    local = [Path.cwd() / sub / "node_modules" / "onnxruntime-web" / "dist" for sub in (".", "web")]
    cached = cache_dir() / "onnxruntime-web" / ORT_WEB_VERSION
    for folder in (*local, cached):
        if _has_files(folder):
            return folder
    if not download:
        raise SqueezeNetError(f"onnxruntime-web {ORT_WEB_VERSION} is not on this machine: pass --ort-web DIR")
    return fetch_ort_web(cached)


def fetch_ort_web(dest: Path, url: str = ORT_WEB_URL, integrity: str = ORT_WEB_INTEGRITY, opener=None) -> Path:
    """Download the pinned npm tarball, check its sha512 against the lockfile's, keep ``ORT_WEB_FILES``."""
    opener = opener or (lambda u: urllib.request.urlopen(u, timeout=60).read())
    try:
        data = opener(url)
    except OSError as e:
        raise SqueezeNetError(f"cannot download onnxruntime-web {ORT_WEB_VERSION} from {url} ({e}): offline, "
                              f"run `npm install onnxruntime-web@{ORT_WEB_VERSION}` where there is a network "
                              f"and pass --ort-web node_modules/onnxruntime-web/dist") from None
    got = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if got != integrity:
        raise SqueezeNetError(f"the onnxruntime-web download from {url} does not match the pinned sha512 "
                              f"(got {got[:30]}..., expected {integrity[:30]}...): not using it")
    mkdir(dest.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for name in ORT_WEB_FILES:
                member = tar.extractfile(f"package/dist/{name}")
                if member is None:
                    raise SqueezeNetError(f"the onnxruntime-web package lacks dist/{name}")
                (tmp / name).write_bytes(member.read())
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def site_model(checkpoint, precision: str = "fp32", calib_data=None, data_dir=None) -> tuple[bytes, dict]:
    """(uint8-input ONNX model, its check): fp32 verified against PyTorch on the checkpoint's own
    images, int8 quantized on its training images with top-1 before and after measured."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown --precision {precision!r} for the web: choose fp32 or int8")
    model, meta = load_checkpoint(checkpoint)
    if meta.preprocess.in_channels not in (1, 3):
        raise SqueezeNetError(f"the web page feeds RGB images, and this model takes {meta.preprocess.in_channels} "
                              f"channels: only 1- and 3-channel models run in the browser")
    if precision == "int8":
        from .quantize import quantize

        with tempfile.TemporaryDirectory() as tmp:
            r = quantize(checkpoint, calib_data, Path(tmp) / "model.int8.onnx", bench_seconds=0.2, input_type="uint8",
                         data_dir=data_dir)
            data = Path(r["out"]).read_bytes()
        return data, {"top1_fp32": r["top1_fp32"], "top1_int8": r["top1_int8"], "eval_count": r["eval_count"]}
    pre = meta.preprocess
    images = sample_images(meta)
    data = onnx_bytes(model, as_rgb_nhwc(images[:1]), dynamic_batch=True, meta=meta, raw_input=True)
    diff = verify_onnx(data, model, normalize(images, pre.mean, pre.std), as_rgb_nhwc(images))
    return data, {"max_abs_diff": diff, "checked_on": len(images)}


def engine_model(checkpoint, precision: str = "fp32", calib_data=None, data_dir=None) -> tuple[bytes, dict]:
    """(gzip-compressed model file, its check) for the engine's page: fp32 checked against PyTorch
    on the checkpoint's own images; int8 as int8 weights dequantized at load (a quarter of the
    download, fp32 math), its top-1 measured on the evaluation split against PyTorch's; a
    ``compress`` file as it is."""
    from .cengine import NativeEngine, check_images, compare, model_file_for, reference_logits
    from .checkpoint import resolve_checkpoint

    if precision not in PRECISIONS:
        raise UsageError(f"unknown --precision {precision!r} for the web: choose fp32 or int8")
    path = resolve_checkpoint(checkpoint)
    model, meta = load_checkpoint(path)
    size = meta.preprocess.image_size
    data = model_file_for(path, model, meta, "int8w" if precision == "int8" else "fp32", size, calib_data)
    images, labels, source = check_images(meta, data_dir, limit=None if precision == "int8" else 8)
    engine = NativeEngine(data)
    engine.decode()
    check = compare(engine(images.numpy()), reference_logits(model, meta, images), labels, precision == "fp32")
    return gzip.compress(data, 9, mtime=0), {"check": {"source": source, **check}, "bytes_model_raw": len(data)}


def info(meta, precision: str, top_k: int, model: str = "model.onnx", runtime: str = "ort-web") -> dict:
    """``model-info.json``: what the page needs to feed the model and label its output."""
    pre = meta.preprocess
    return {"arch": meta.arch, "class_names": meta.class_names, "image_size": pre.image_size,
            "resize_size": getattr(pre, "resize_size", None) or pre.image_size, "precision": precision,
            "top_k": min(top_k, meta.num_classes), "input": "uint8 NHWC RGB", "model": model, "runtime": runtime,
            **({"ort_web": ORT_WEB_VERSION} if runtime == "ort-web" else {})}


def export_web(checkpoint, out=None, precision: str = "fp32", ort_web=None, top_k: int = 5,
               calib_data=None, runtime: str = "engine", data_dir=None) -> dict:
    """Write the site folder into a temporary folder beside ``out``, then rename it into place."""
    from .cengine import packaged_wasm
    from .checkpoint import read_metadata, resolve_checkpoint

    if runtime not in RUNTIMES:
        raise UsageError(f"unknown --runtime {runtime!r} for the web: choose {' or '.join(RUNTIMES)}")
    meta = read_metadata(checkpoint)
    out = Path(out) if out else resolve_checkpoint(checkpoint).parent / "site"
    if out.exists() and not (out / "model-info.json").is_file():
        raise UsageError(f"--out {out} exists and is not a site this command wrote: choose a new folder")
    if runtime == "engine":
        wasm = packaged_wasm()
        data, check = engine_model(checkpoint, precision, calib_data, data_dir)
        files = {"engine.wasm": wasm.read_bytes(), "model.sqz": data,
                 "runtime.js": (ASSETS / "runtime-engine.js").read_bytes()}
        model_name = "model.sqz"
    else:
        folder = ort_web_dir(ort_web)  # before the work: a missing runtime fails fast
        data, check = site_model(checkpoint, precision, calib_data, data_dir)
        files = {f"ort/{name}": (folder / name).read_bytes() for name in ORT_WEB_FILES}
        files |= {"model.onnx": data, "runtime.js": (ASSETS / "runtime-ort.js").read_bytes()}
        model_name = "model.onnx"
    files |= {name: (ASSETS / name).read_bytes() for name in PAGE}
    files["model-info.json"] = (json.dumps(info(meta, precision, top_k, model_name, runtime), indent=1) + "\n").encode()
    write_site(out, files)
    sizes = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    runtime_files = [k for k in sizes if k.startswith("ort/") or k == "engine.wasm"]
    gz = {k: len(v) if k == "model.sqz" else len(gzip.compress(v, 9, mtime=0)) for k, v in files.items()}
    return {"format": "web", "runtime": runtime, "out": str(out), "precision": precision, "files": sizes,
            "bytes_model": sizes[model_name], "bytes_runtime": sum(sizes[k] for k in runtime_files),
            "bytes_total": sum(sizes.values()), "bytes_gzip": sum(gz.values()), "files_gzip": gz,
            **({"ort_web": ORT_WEB_VERSION} if runtime == "ort-web" else {}), **check}


def write_site(out: Path, files: dict[str, bytes]) -> None:
    """The files in a temporary folder beside ``out``, renamed into place: nothing half-written."""
    mkdir(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".squeezenet-tmp", dir=out.parent))
    try:
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
