"""The C engine (``engine/sqz.c``) built and run from Python: natively through ctypes (to check an
export against PyTorch and to measure it), and as WebAssembly for the page.

Builds need a C compiler (``cc``, ``gcc`` or ``clang``; for wasm, Debian's ``clang`` and ``lld``)
and are kept in the cache, keyed by the sources and the command that built them.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from .errors import SqueezeNetError
from .files import atomic_path, cache_dir, replace_folder
from .modelfile import ModelFile

ENGINE = Path(__file__).parent / "engine"
SOURCES = ("sqz.h", "sqz.c")
NATIVE_FLAGS = ("-std=c11", "-O3", "-march=native", "-ffp-contract=fast", "-fno-strict-aliasing", "-fPIC", "-shared")
WASM_FLAGS = ("--target=wasm32", "-std=c11", "-O3", "-msimd128", "-mbulk-memory", "-mnontrapping-fptoint",
              "-fno-strict-aliasing", "-nostdlib", "-Wl,--no-entry", "-Wl,--strip-all")
WASM_EXPORTS = ("sqz_init", "sqz_arena_bytes", "sqz_input", "sqz_run", "sqz_logits", "sqz_decode_bytes", "sqz_decode",
                "sqz_model_size", "__heap_base")
STATUS = {0: "ok", -1: "not a squeezenet model file", -2: "a model file of another version", -3: "truncated",
          -4: "damaged (a layer or offset out of range)", -5: "the arena is too small", -6: "misaligned buffers",
          -7: "the decode cache is too small"}


def compiler(names=("cc", "gcc", "clang")) -> str:
    """``$CC``, else the first C compiler found; one clear message where there is none."""
    for name in ([os.environ["CC"]] if os.environ.get("CC") else []) + list(names):
        path = shutil.which(name)
        if path:
            return path
    raise SqueezeNetError("no C compiler found (cc, gcc or clang): install one, e.g. `apt-get install gcc` on "
                          "Debian or Ubuntu, or set CC")


def wasm_toolchain() -> str:
    clang, lld = shutil.which("clang"), shutil.which("wasm-ld") or shutil.which("wasm-ld-14")
    if clang is None or lld is None:
        raise SqueezeNetError("building the WebAssembly engine needs clang and its wasm linker: "
                              "`apt-get install clang lld` on Debian or Ubuntu")
    return clang


def source_digest(*extra: str) -> str:
    h = hashlib.sha256()
    for name in SOURCES:
        h.update((ENGINE / name).read_bytes())
    for e in extra:
        h.update(e.encode())
    return h.hexdigest()[:20]


def _build(command: list[str], out: Path) -> Path:
    if out.is_file():
        return out
    with atomic_path(out) as tmp:
        r = subprocess.run([*command, "-o", str(tmp)], capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise SqueezeNetError(f"the C engine did not compile ({' '.join(command[:1])}):\n{r.stderr.strip()[:2000]}")
    return out


def native_library(flags: tuple[str, ...] = NATIVE_FLAGS) -> Path:
    """The engine as a shared library for this machine, built once."""
    cc = compiler()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    out = cache_dir() / "engine" / f"sqz-{source_digest(cc, version, *flags)}.so"
    return _build([cc, *flags, str(ENGINE / "sqz.c")], out)


def build_wasm(out: Path | None = None) -> Path:
    """engine.wasm: the engine for wasm32 with SIMD128, no libc, exporting ``WASM_EXPORTS``."""
    clang = wasm_toolchain()
    exports = [f"-Wl,--export={name}" for name in WASM_EXPORTS]
    out = out or cache_dir() / "engine" / f"sqz-{source_digest(*WASM_FLAGS)}.wasm"
    return _build([clang, *WASM_FLAGS, *exports, str(ENGINE / "sqz.c")], out)


PACKAGED_WASM = ENGINE / "engine.wasm"  # shipped in the package: exporting a page needs no toolchain


def packaged_wasm() -> Path:
    """The packaged engine.wasm, once checked to be built from these sources (its record beside it)."""
    record = PACKAGED_WASM.with_suffix(".json")
    try:
        built_from = json.loads(record.read_text())["sources"]
    except (OSError, ValueError, KeyError):
        built_from = None
    if not PACKAGED_WASM.is_file() or built_from != source_digest(*WASM_FLAGS):
        raise SqueezeNetError(f"{PACKAGED_WASM} is missing or was built from other sources: rebuild it with "
                              f"`python -m squeezenet.cengine` (needs `apt-get install clang lld`)")
    return PACKAGED_WASM


def aligned(n: int, align: int = 64) -> np.ndarray:
    """A zeroed uint8 array of ``n`` bytes at an ``align``-byte boundary."""
    raw = np.zeros(n + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + n]


class NativeEngine:
    """A model file run by the native engine: ``engine(images)`` with images uint8 (N, S, S, 3)
    RGB at the model's size gives (N, classes) logits. Single-threaded, as on a device."""

    def __init__(self, data: bytes, library: Path | None = None, canary: bool = False):
        self.info = ModelFile.read(data)
        self.lib = lib = ctypes.CDLL(str(library or native_library()))
        lib.sqz_init.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t]
        lib.sqz_run.argtypes = [ctypes.c_void_p]
        lib.sqz_run.restype = ctypes.c_void_p
        for fn in (lib.sqz_arena_bytes, lib.sqz_model_size, lib.sqz_decode_bytes, lib.sqz_arena_high_water):
            fn.restype = ctypes.c_size_t
        lib.sqz_arena_bytes.argtypes = [ctypes.c_void_p]
        lib.sqz_decode_bytes.argtypes = lib.sqz_arena_high_water.argtypes = [ctypes.c_void_p]
        lib.sqz_decode.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        self.file = aligned(len(data))
        self.file[:] = np.frombuffer(data, np.uint8)
        h = self.info.header
        self.arena = aligned(int(h["arena_bytes"]))
        if canary:
            self.arena[:] = 0xA5
        self.model = ctypes.create_string_buffer(lib.sqz_model_size())
        status = lib.sqz_init(self.model, self.file.ctypes.data, len(data), self.arena.ctypes.data, len(self.arena))
        if status != 0:
            raise SqueezeNetError(f"the C engine refused the model file: {STATUS.get(status, status)}")
        size, n = int(h["image_size"]), int(h["num_classes"])
        start = int(h["input_off"])
        self.input = self.arena[start:start + size * size * 3].reshape(size, size, 3)
        self.logits = self.arena[int(h["logits_off"]):int(h["logits_off"]) + 4 * n].view(np.float32)
        self.probabilities = self.arena[int(h["logits_off"]) + 4 * n:int(h["logits_off"]) + 8 * n].view(np.float32)
        self.cache = None

    def decode(self) -> None:
        """Codebook weights decoded once (faster calls, more memory)."""
        n = self.lib.sqz_decode_bytes(self.model)
        if n:
            self.cache = aligned(n)
            self.lib.sqz_decode(self.model, self.cache.ctypes.data, n)

    def run(self, image: np.ndarray) -> np.ndarray:
        self.input[...] = image
        self.lib.sqz_run(self.model)
        return self.logits.copy()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.stack([self.run(im) for im in images])

    @property
    def high_water(self) -> int:
        """The highest arena byte written since a ``canary`` start."""
        return self.lib.sqz_arena_high_water(self.model)


# ----------------------------------------------------------------------------- export --format c

C_PRECISIONS = ("fp32", "int8")
ACCURACY_BOUND = 1.0  # top-1 points an int8 or codebook file may lose against PyTorch fp32
TOLERANCE = 1e-4  # fp32: max |engine - PyTorch| / max(1, max |PyTorch|) over the logits
EXAMPLE = ("sqz.h", "sqz.c", "main.c", "Makefile")
MCU_FLAGS = ("--target=thumbv7em-none-eabi", "-mcpu=cortex-m4", "-mfloat-abi=hard", "-Os", "-std=c11",
             "-DSQZ_SCALAR", "-ffunction-sections", "-fstack-usage")


def parse_size(text: str | int | None) -> int | None:
    """``--max-ram``: bytes, or with K/M (x 1024)."""
    if text is None or isinstance(text, int):
        return text
    t = str(text).strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1024, "M": 1024 ** 2}.get(t[-1:], 1)
    try:
        value = int(float(t[:-1] if mult > 1 else t) * mult)
    except ValueError:
        value = -1
    if value <= 0:
        from .errors import UsageError
        raise UsageError(f"--max-ram {text!r}: give bytes, e.g. 163840 or 160K")
    return value


def c_array(data: bytes, name: str) -> str:
    """The bytes as a C array definition, 16-byte aligned, 40 per line."""
    a = np.frombuffer(data, np.uint8)
    rows = [",".join(map(str, a[i:i + 40].tolist())) for i in range(0, len(a), 40)]
    return (f"_Alignas(16) const unsigned char {name}[{len(a)}] = {{\n" + ",\n".join(rows) + "\n};\n"
            f"const unsigned int {name}_bytes = {len(a)}u;\n")


def model_header(info: ModelFile, flash: dict, ram: dict, source: str) -> str:
    h, meta = info.header, info.meta
    return f"""/* {meta.arch}, {meta.num_classes} classes, {int(h['image_size'])} px RGB in, \
{'int8' if int(h['precision']) else 'fp32'} activations: the model file of
 * {source}, written by `squeezenet export --format c`.
 * Flash: {flash['model_bytes']:,} bytes of model + {flash['code_bytes']:,} of engine code ({flash['code_target']}).
 * RAM: the arena, {ram['arena_bytes']:,} bytes (the input image and every activation), + about
 * {ram['stack_bytes']:,} bytes of stack. */
#ifndef SQZ_MODEL_H
#define SQZ_MODEL_H
#define SQZ_MODEL_ARENA_BYTES {int(h['arena_bytes'])}u
#define SQZ_MODEL_IMAGE_SIZE {int(h['image_size'])}
#define SQZ_MODEL_CLASSES {meta.num_classes}
extern const unsigned char sqz_model_file[];
extern const unsigned int sqz_model_file_bytes;
#endif
"""


def code_size(tmp: Path) -> tuple[int, int, str]:
    """(code bytes, stack bound, target) of the engine compiled for a Cortex-M4 by clang (-Os,
    scalar), else for this machine: .text and .rodata, and the sum of its functions' frames."""
    clang = shutil.which("clang")
    if clang:
        cmd, target = [clang, *MCU_FLAGS], "Cortex-M4, clang -Os"
    else:
        cmd, target = [compiler(), "-Os", "-std=c11", "-fstack-usage"], "this machine, -Os"
    obj = tmp / "sqz.o"
    r = subprocess.run([*cmd, "-c", str(ENGINE / "sqz.c"), "-o", str(obj)], capture_output=True, text=True,
                       cwd=tmp, timeout=300)
    if r.returncode != 0:
        raise SqueezeNetError(f"the C engine did not compile for its size: {r.stderr.strip()[:1000]}")
    stack = 0
    for su in tmp.glob("*.su"):
        for line in su.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and parts[1].isdigit() and not any(s in parts[0] for s in ("init", "decode", "status")):
                stack += int(parts[1])
    return elf_code_bytes(obj.read_bytes()), stack, target


def elf_code_bytes(elf: bytes) -> int:
    """The bytes an ELF object puts in flash: its allocated sections that are not zero-filled."""
    is64, little = elf[4] == 2, elf[5] == 1
    e = "<" if little else ">"
    import struct
    if is64:
        shoff, = struct.unpack_from(e + "Q", elf, 0x28)
        shentsize, shnum = struct.unpack_from(e + "HH", elf, 0x3A)
    else:
        shoff, = struct.unpack_from(e + "I", elf, 0x20)
        shentsize, shnum = struct.unpack_from(e + "HH", elf, 0x2E)
    total = 0
    for i in range(shnum):
        off = shoff + i * shentsize
        if is64:
            sh_type, flags = struct.unpack_from(e + "IQ", elf, off + 4)
            size, = struct.unpack_from(e + "Q", elf, off + 0x20)
        else:
            sh_type, flags = struct.unpack_from(e + "II", elf, off + 4)
            size, = struct.unpack_from(e + "I", elf, off + 0x14)
        if flags & 0x2 and sh_type != 8:  # SHF_ALLOC, not SHT_NOBITS
            total += size
    return total


def check_images(meta, data_dir=None, limit: int | None = None):
    """(uint8 NHWC RGB images, labels or None, where they came from) to check an export on: the
    run's evaluation split or ``data_dir``; else its training images (said), else random ones."""
    import torch

    from .export import as_rgb_nhwc
    from .splits import eval_data, run_splits

    try:
        data, source = eval_data(meta, data_dir=data_dir, split="test"), str(data_dir or "the evaluation split")
    except SqueezeNetError as e:
        if data_dir is not None:
            raise
        try:
            data, _ = run_splits(meta)
            source = f"training images: no held-out images here ({e}); pass --data-dir"
            limit = limit or 2000  # enough to compare with PyTorch; they say nothing of accuracy
        except SqueezeNetError:
            pre = meta.preprocess
            g = torch.Generator().manual_seed(0)
            images = torch.randint(0, 256, (limit or 64, pre.image_size, pre.image_size, 3), generator=g,
                                   dtype=torch.uint8)
            return images, None, "random images: the run's data is not on this machine"
    n = len(data) if limit is None else min(limit, len(data))
    idx = torch.arange(n)
    return as_rgb_nhwc(data.uint8(idx)), data.labels[idx], source


def reference_logits(model, meta, images) -> np.ndarray:
    """PyTorch's logits for uint8 NHWC images, normalised as the model was trained."""
    import torch

    from .export import raw_wrapper

    wrapped = raw_wrapper(model, meta)
    with torch.no_grad():
        return np.concatenate([wrapped(images[i:i + 256]).numpy() for i in range(0, len(images), 256)])


def compare(got: np.ndarray, expected: np.ndarray, labels, exact: bool) -> dict:
    """The engine against PyTorch: fp32 math must give the same top-1 and logits within
    ``TOLERANCE`` (relative); int8 may lose at most ``ACCURACY_BOUND`` points of top-1."""
    diff = float(np.abs(got - expected).max() / max(1.0, float(np.abs(expected).max())))
    top = np.sort(expected, 1)
    near_tie = (top[:, -1] - top[:, -2]) <= 2 * TOLERANCE * max(1.0, float(np.abs(expected).max()))
    same = got.argmax(1) == expected.argmax(1)
    r = {"images": len(got), "max_rel_diff": diff, "agreement": float(same.mean() * 100),
         "differing_top1": int((~same).sum()), "near_ties": int((~same & near_tie).sum())}
    if labels is not None:
        labels = np.asarray(labels)
        r["top1_engine"] = float((got.argmax(1) == labels).mean() * 100)
        r["top1_pytorch"] = float((expected.argmax(1) == labels).mean() * 100)
    if exact and (diff > TOLERANCE or r["differing_top1"] > r["near_ties"]):
        raise SqueezeNetError(f"the C engine disagrees with PyTorch: logits {diff:.2e} apart (bound {TOLERANCE}), "
                              f"top-1 differs on {r['differing_top1']} of {len(got)} images: nothing was written")
    if not exact and labels is not None and r["top1_pytorch"] - r["top1_engine"] > ACCURACY_BOUND:
        raise SqueezeNetError(f"int8 loses {r['top1_pytorch'] - r['top1_engine']:.2f} points of top-1 "
                              f"({r['top1_engine']:.2f}% vs {r['top1_pytorch']:.2f}%), over the bound of "
                              f"{ACCURACY_BOUND}: nothing was written; export fp32 instead")
    return r


def model_file_for(path: Path, model, meta, precision: str, size: int, calib_data=None) -> bytes:
    """The model file an export ships: a compressed (``.sqz``) checkpoint as it is in fp32 (its
    codebooks run directly), else lowered from the PyTorch model (int8 calibrated on training images)."""
    from .lowering import lower
    from .modelfile import is_model_file
    from .quantize import training_images

    if is_model_file(path):
        info = ModelFile.read(path.read_bytes(), str(path))
        if size != int(info.header["image_size"]):
            raise SqueezeNetError(f"{path} is a model file for {int(info.header['image_size'])} px: --input-size "
                                  f"applies to .safetensors checkpoints")
        if precision == "fp32" and int(info.header["precision"]) == 0:
            return info.data
    calib = training_images(meta, calib_data) if precision == "int8" else None
    return lower(model, meta, precision, calib, size=size)


def export_c(checkpoint, out=None, precision: str = "fp32", data_dir=None, max_ram=None, input_size=None,
             check_limit: int | None = None, calib_data=None) -> dict:
    """``export --format c``: the model file as C arrays, the engine, an example program and its
    Makefile, in ``out``; compiled and checked against PyTorch before anything is written."""
    import tempfile

    from .checkpoint import load_checkpoint, resolve_checkpoint
    from .errors import UsageError

    if precision not in C_PRECISIONS:
        raise UsageError(f"--precision {precision} for --format c: choose {' or '.join(C_PRECISIONS)}")
    max_ram = parse_size(max_ram)
    path = resolve_checkpoint(checkpoint)
    out = Path(out) if out else path.parent / "c"
    if out.exists() and not (out / "model.h").is_file():
        raise UsageError(f"--out {out} exists and is not a folder this command wrote: choose a new folder")
    cc = compiler()  # before the work: no compiler, no export
    model, meta = load_checkpoint(path)
    size = input_size or meta.preprocess.image_size
    if size != meta.preprocess.image_size:
        meta = meta.at_size(size)
    data = model_file_for(path, model, meta, precision, size, calib_data)
    info = ModelFile.read(data)
    arena = int(info.header["arena_bytes"])
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        tmp = Path(tmp).resolve()
        code, stack, target = code_size(tmp)
        ram = {"arena_bytes": arena, "stack_bytes": stack, "ram_bytes": arena + stack + 20}  # + sqz_model (32-bit)
        if max_ram is not None and ram["ram_bytes"] > max_ram:
            raise SqueezeNetError(f"the model needs {ram['ram_bytes']:,} bytes of RAM at {size} px, over --max-ram "
                                  f"{max_ram:,}: try --precision int8 (a quarter of fp32's activations), a smaller "
                                  f"--input-size, or a narrower model; nothing was written")
        flash = {"model_bytes": len(data), "code_bytes": code, "code_target": target, "flash_bytes": len(data) + code}
        site = tmp / "c"
        site.mkdir()
        for name in EXAMPLE:
            shutil.copyfile(ENGINE / name, site / name)
        (site / "model.c").write_text('#include "model.h"\n\n' + c_array(data, "sqz_model_file"))
        (site / "model.h").write_text(model_header(info, flash, ram, path.name))
        check, example = _check_c(site, data, model, meta, precision, data_dir, check_limit, cc)
        (site / "sqz-classify").unlink()
        replace_folder(site, out)
    return {"format": "c", "out": str(out), "precision": precision, "input_size": size, **flash, **ram,
            "files": sorted(p.name for p in out.iterdir()), "check": check, **example}


def _check_c(site: Path, data: bytes, model, meta, precision: str, data_dir, limit, cc: str) -> tuple[dict, dict]:
    """Build the example with the exported Makefile, run the model file through the engine on the
    check images against PyTorch, and the example on a few of them (its top-1 and its arena's
    high-water mark)."""
    from PIL import Image

    r = subprocess.run(["make", "-s", f"CC={cc}"], cwd=site, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise SqueezeNetError(f"the exported C does not compile with {cc}:\n{(r.stderr or r.stdout).strip()[:2000]}")
    images, labels, source = check_images(meta, data_dir, limit)
    engine = NativeEngine(data)
    engine.decode()
    got = engine(images.numpy())
    check = {"source": source, **compare(got, reference_logits(model, meta, images), labels, precision == "fp32")}
    few = site / "check"
    few.mkdir()
    files = []
    for i, image in enumerate(images[:8].numpy()):
        files.append(str(few / f"{i}.ppm"))
        Image.fromarray(image).save(files[-1])
    r = subprocess.run(["./sqz-classify", "--logits", "--ram", *files], cwd=site, capture_output=True, text=True,
                       timeout=600)
    shutil.rmtree(few)
    lines = [line.split("\t") for line in r.stdout.splitlines()]
    if r.returncode != 0 or len(lines) != len(files) + 1:
        raise SqueezeNetError(f"the example program failed: {(r.stderr or r.stdout).strip()[:500]}")
    example = np.array([[float(v) for v in line[3:]] for line in lines[:-1]])
    if np.abs(example - got[:len(files)]).max() > TOLERANCE * max(1.0, float(np.abs(got).max())):
        raise SqueezeNetError("the example program's logits differ from the engine's: nothing was written")
    return check, {"ram_high_water": int(lines[-1][1]), "example_checked_on": len(files)}


def main() -> None:
    """Rebuild the packaged engine.wasm and its record (``python -m squeezenet.cengine``)."""
    tmp = build_wasm(cache_dir() / "engine" / "packaged.wasm.tmp")
    shutil.copyfile(tmp, PACKAGED_WASM)
    tmp.unlink()
    clang = subprocess.run([wasm_toolchain(), "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    PACKAGED_WASM.with_suffix(".json").write_text(json.dumps(
        {"sources": source_digest(*WASM_FLAGS), "flags": list(WASM_FLAGS), "clang": clang,
         "bytes": PACKAGED_WASM.stat().st_size}, indent=1) + "\n")
    print(f"wrote {PACKAGED_WASM} ({PACKAGED_WASM.stat().st_size:,} bytes, {clang})")


if __name__ == "__main__":
    main()
