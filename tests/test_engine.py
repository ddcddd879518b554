"""The C engine (engine/sqz.c) against PyTorch: every architecture a checkpoint can hold, fp32,
int8 and codebook weights, its buffer plan, its builds (vectorised, scalar, WebAssembly), damaged
files, and `export --format c` end to end."""

import json
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from squeezenet import cengine
from squeezenet.cengine import NativeEngine
from squeezenet.export import RawImageInput, fold_batchnorm
from squeezenet.lowering import describe, lifetimes, lower
from squeezenet.modelfile import ModelFile
from squeezenet.runs import Preprocess, RunMeta
from squeezenet.zoo import create_model

REPO = Path(__file__).resolve().parents[1]
needs_wasm = pytest.mark.skipif(not all(shutil.which(t) for t in ("node", "clang", "wasm-ld")),
                                reason="needs node, clang and lld (.ci/run installs them)")


def model_and_meta(arch="squeezenet1_1", size=32, channels=3, classes=10, seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs = dict(num_classes=classes, in_channels=channels, **kwargs)
    model = create_model(arch, **kwargs).eval()
    for m in model.modules():  # BatchNorm that does something, so that folding it is tested
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.2, 0.2)
    mean, std = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) if channels == 3 else ((0.5,), (0.25,))
    meta = RunMeta(arch=arch, model_kwargs=kwargs, class_names=[f"c{i}" for i in range(classes)],
                   preprocess=Preprocess(size, channels, mean, std))
    return model, meta


def pytorch_logits(model, meta, images):
    with torch.no_grad():
        return RawImageInput(fold_batchnorm(model), meta.preprocess.mean, meta.preprocess.std)(images).numpy()


def images(n, size, seed=0):
    return torch.randint(0, 256, (n, size, size, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


CIFAR = dict(small_input=True, batch_norm=True, bypass="simple", final_relu=False, squeeze_ratio=0.25,
             pool_after=("conv1", "fire3", "fire7"), dropout=0.0)
ARCHITECTURES = {
    "v1.0 (7x7 stem), 99 px": ("squeezenet1_0", 99, 3, {}),
    "v1.1, 67 px (ceil-mode pools cut windows)": ("squeezenet1_1", 67, 3, {}),
    "the CIFAR-10 recipe (small stem, BN, simple bypass, late pools)": ("squeezenet1_1", 32, 3, CIFAR),
    "complex bypass, BN": ("squeezenet1_1", 48, 3, dict(batch_norm=True, bypass="complex", final_relu=False)),
    "grey input": ("squeezenet1_1", 28, 1, dict(small_input=True, batch_norm=True, bypass="simple")),
    "odd widths, no pool after conv1": ("squeezenet1_1", 40, 3, dict(squeeze_ratio=0.3, stem_channels=20,
                                                                      pool_after=("fire3",))),
}


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_fp32_engine_computes_what_pytorch_computes(name):
    """Directly, and by Winograd's F(2x2, 3x3) for the 3x3 convolutions (the page's build)."""
    arch, size, channels, kwargs = ARCHITECTURES[name]
    model, meta = model_and_meta(arch, size, channels, **kwargs)
    x = images(3, size)
    expected, data = pytorch_logits(model, meta, x), lower(model, meta)
    winograd = NativeEngine(data, library=cengine.native_library((*cengine.NATIVE_FLAGS, "-DSQZ_WINOGRAD=1")))
    winograd.decode()
    for got in (NativeEngine(data)(x.numpy()), winograd(x.numpy())):
        assert np.abs(got - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())


def test_int8_engine_keeps_a_trained_models_accuracy(trained_run):
    from squeezenet.cengine import check_images, compare, reference_logits
    from squeezenet.checkpoint import load_checkpoint
    from squeezenet.quantize import training_images

    model, meta = load_checkpoint(trained_run)
    data = lower(model, meta, "int8", training_images(meta, n=128))
    x, labels, source = check_images(meta, limit=400)
    assert source == "the evaluation split"
    r = compare(NativeEngine(data)(x.numpy()), reference_logits(model, meta, x), labels, exact=False)
    assert r["agreement"] >= 95 and r["top1_pytorch"] - r["top1_engine"] <= 1.0, r
    info = ModelFile.read(data)
    assert int(info.header["precision"]) == 1 and len(data) < 0.3 * len(lower(model, meta))


def test_codebook_and_int8_weights_run_as_pytorch_loads_them(tmp_path):
    """A compressed file runs in the engine from its codebooks (decoded per block, or once into a
    cache) and loads into PyTorch with the same weights; int8 weights for fp32 math likewise."""
    from squeezenet.checkpoint import load_checkpoint
    from squeezenet.compress import conv_weights, encode, kmeans_1d

    model, meta = model_and_meta(size=32, **CIFAR)
    with torch.no_grad():
        for w in conv_weights(model).values():
            w.mul_(w.abs() > w.abs().flatten().kthvalue(int(0.6 * w.numel())).values)
            book, codes = kmeans_1d(w[w != 0], 4)
            w[w != 0] = book[codes.long()]
    x = images(3, 32)
    for data in (encode(model, meta, 4), lower(model, meta, "int8w")):
        path = tmp_path / "m.sqz"
        path.write_bytes(data)
        loaded, _ = load_checkpoint(path)
        expected = pytorch_logits(loaded, meta, x)
        engine = NativeEngine(data)
        per_block = engine(x.numpy())
        engine.decode()
        assert np.abs(per_block - expected).max() <= 1e-4 and np.abs(engine(x.numpy()) - expected).max() <= 1e-4
    assert np.abs(expected - pytorch_logits(model, meta, x)).max() < 0.05 * np.abs(expected).max()  # int8 close


def test_the_plan_keeps_live_buffers_apart_and_fits_v11_in_160kb_at_128px():
    model, meta = model_and_meta(size=128)
    graph = describe(model, 128)
    spans = lifetimes(graph)
    data = lower(model, meta, "int8", torch.randn(8, 3, 128, 128))
    info = ModelFile.read(data)
    assert int(info.header["arena_bytes"]) <= 160_000  # the input image and every activation, int8
    offsets = {}
    for rec, layer in zip(info.layers, graph.layers):
        if layer.out is not None:
            offsets[layer.out.storage] = int(rec["out_off"])
        if layer.inp is not None:
            offsets[layer.inp.storage] = int(rec["in_off"])
    for a in offsets:
        for b in offsets:
            if a < b and spans[a][0] <= spans[b][1] and spans[b][0] <= spans[a][1]:
                size_a, size_b = graph.storages[a], graph.storages[b]
                assert offsets[a] + size_a <= offsets[b] or offsets[b] + size_b <= offsets[a], (a, b)
    engine = NativeEngine(data, canary=True)
    engine(images(1, 128).numpy())
    assert engine.high_water <= int(info.header["arena_bytes"])  # the plan holds when it runs


def test_scalar_build_computes_what_the_vectorised_build_does(tmp_path):
    model, meta = model_and_meta(size=32, **CIFAR)
    x = images(2, 32)
    scalar = cengine.native_library((*cengine.NATIVE_FLAGS, "-DSQZ_SCALAR"))
    for precision, calib in (("fp32", None), ("int8", torch.randn(16, 3, 32, 32))):
        data = lower(model, meta, precision, calib)
        a, b = NativeEngine(data)(x.numpy()), NativeEngine(data, library=scalar)(x.numpy())
        assert np.abs(a - b).max() <= 1e-4 * max(1.0, np.abs(a).max()), precision


def test_damaged_model_files_never_crash_the_engine(tmp_path):
    """Random bytes changed in the header and layer records, and truncations: the engine, built
    with AddressSanitizer and UBSan, refuses the file or runs it, and never touches memory
    outside the file and the arena."""
    cc = shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("needs gcc or clang")
    driver = tmp_path / "driver"
    sources = [str(REPO / "tests" / "engine_driver.c"), str(cengine.ENGINE / "sqz.c")]
    r = subprocess.run([cc, "-std=c11", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                        "-I", str(cengine.ENGINE), *sources, "-o", str(driver)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    model, meta = model_and_meta(size=24, classes=3, **CIFAR)
    good = lower(model, meta, "int8", torch.randn(8, 3, 24, 24))
    rng = random.Random(0)
    records = 128 + 160 * int(ModelFile.read(good).header["n_layers"])
    cases = [good, good[:len(good) // 3], good[:100]]
    for _ in range(150):
        bad = bytearray(good)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(4, records)
            bad[at] = rng.choice([0, 1, 2, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        cases.append(bytes(bad))
    refused = 0
    for i, data in enumerate(cases):
        path = tmp_path / f"{i}.sqz"
        path.write_bytes(data)
        r = subprocess.run([str(driver), str(path)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "ERROR" not in r.stderr and "runtime error" not in r.stderr, (i, r.stderr[-2000:])
        refused += not r.stdout.startswith("0")
    assert cases[0] == good and refused >= 2


@needs_wasm
def test_webassembly_build_computes_what_the_native_build_does(tmp_path):
    model, meta = model_and_meta(size=32, **CIFAR)
    x = images(1, 32)
    wasm = cengine.build_wasm(tmp_path / "engine.wasm")
    for precision in ("fp32", "int8"):
        data = lower(model, meta, precision, torch.randn(16, 3, 32, 32) if precision == "int8" else None)
        (tmp_path / "m.sqz").write_bytes(data)
        (tmp_path / "x.rgb").write_bytes(x.numpy().tobytes())
        r = subprocess.run(["node", str(REPO / "benchmarks" / "engine_speed.mjs"), str(wasm), str(tmp_path / "m.sqz"),
                            "1", str(tmp_path / "x.rgb")], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        got = np.array(json.loads(r.stdout)["logits"], np.float32)
        native = NativeEngine(data)(x.numpy())[0]
        assert np.abs(got - native).max() <= 1e-4 * max(1.0, np.abs(native).max()), precision


def test_the_packaged_webassembly_is_built_from_these_sources(tmp_path):
    packaged = cengine.packaged_wasm()  # its record names these sources and flags
    record = json.loads(packaged.with_suffix(".json").read_text())
    clang = shutil.which("clang")
    if clang and shutil.which("wasm-ld"):
        version = subprocess.run([clang, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
        if version == record["clang"]:  # the same compiler builds the same bytes
            assert cengine.build_wasm(tmp_path / "e.wasm").read_bytes() == packaged.read_bytes()


# ----------------------------------------------------------------------------- export --format c

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from conftest import write_image_folder
    from test_deploy import make_checkpoint

    root = tmp_path_factory.mktemp("engine")
    write_image_folder(root / "images" / "test", per_class=8, size=32, seed=1)
    return make_checkpoint(root / "best.safetensors", write_image_folder(root / "images" / "train", per_class=8).parent)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_export_c_compiles_runs_and_states_its_flash_and_ram(cli, ckpt, tmp_path, precision, monkeypatch):
    monkeypatch.chdir(tmp_path)  # --out relative to the working directory
    out = tmp_path / "c"
    code, stdout, err = cli("export", ckpt, "--format", "c", "--precision", precision, "--out", "c",
                            "--json", tmp_path / "r.json")
    assert code == 0, err
    r = json.loads((tmp_path / "r.json").read_text())
    assert sorted(r["files"]) == ["Makefile", "main.c", "model.c", "model.h", "sqz.c", "sqz.h"]
    assert r["input_size"] == 32 and r["precision"] == precision
    assert r["flash_bytes"] == r["model_bytes"] + r["code_bytes"] and r["code_bytes"] < 40_000
    assert r["ram_bytes"] >= r["arena_bytes"] >= r["ram_high_water"] > 0.9 * r["arena_bytes"]
    assert r["check"]["images"] == 16 and r["check"]["source"] == "the evaluation split"
    if precision == "fp32":
        assert r["check"]["max_rel_diff"] <= 1e-4 and r["check"]["agreement"] == 100
    assert f"RAM {r['ram_bytes']:,} bytes" in stdout
    # a user's build: the Makefile, then the example on a PPM (and refusals of what is not one)
    assert subprocess.run(["make", "-s", "-C", str(out)], capture_output=True).returncode == 0
    from PIL import Image

    Image.fromarray(images(1, 32).numpy()[0]).save(tmp_path / "a.ppm")
    Image.fromarray(images(1, 40).numpy()[0]).save(tmp_path / "big.ppm")
    (tmp_path / "junk.ppm").write_bytes(b"P3 nope")
    run = subprocess.run([str(out / "sqz-classify"), str(tmp_path / "a.ppm"), str(tmp_path / "big.ppm"),
                          str(tmp_path / "junk.ppm")], capture_output=True, text=True)
    assert run.returncode == 1 and run.stdout.startswith(f"{tmp_path / 'a.ppm'}\t")
    assert run.stdout.split("\t")[1] in ("cat", "dog") and 0 < float(run.stdout.split("\t")[2]) <= 1
    assert "not at the model's input size" in run.stderr and "not a binary PPM" in run.stderr


def test_export_c_bad_input(cli, ckpt, tmp_path, monkeypatch):
    code, _, err = cli("export", ckpt, "--format", "c", "--out", tmp_path / "c", "--max-ram", "10K")
    assert code == 1 and "over --max-ram 10,240" in err and "--precision int8" in err
    assert cli("export", ckpt, "--format", "c", "--out", tmp_path / "c", "--max-ram", "lots")[0] == 2
    assert cli("export", ckpt, "--format", "c", "--out", tmp_path / "c", "--input", "float")[0] == 2
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    monkeypatch.delenv("CC", raising=False)
    code, _, err = cli("export", ckpt, "--format", "c", "--out", tmp_path / "c")
    assert code == 1 and "no C compiler found" in err and "apt-get install gcc" in err
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_a_page_without_its_engine_build_says_how_to_make_it(cli, ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(cengine, "PACKAGED_WASM", tmp_path / "missing" / "engine.wasm")
    code, _, err = cli("export", ckpt, "--format", "web", "--out", tmp_path / "site")
    assert code == 1 and "python -m squeezenet.cengine" in err and "apt-get install clang lld" in err
    assert not (tmp_path / "site").exists()


@pytest.mark.parametrize("target", ["native gcc", "native clang", "aarch64 (NEON)", "Cortex-M4", "Cortex-M4 scalar",
                                    "RISC-V 32"])
def test_the_engine_compiles_warning_free_for_every_kind_of_target(target, tmp_path):
    m4 = ["--target=thumbv7em-none-eabi", "-mcpu=cortex-m4", "-mfloat-abi=hard"]
    flags = {"aarch64 (NEON)": ["--target=aarch64-none-elf"], "Cortex-M4": m4,
             "Cortex-M4 scalar": [*m4, "-DSQZ_SCALAR"],
             "RISC-V 32": ["--target=riscv32-unknown-elf", "-march=rv32imfc", "-mabi=ilp32f"]}.get(target, [])
    cc = shutil.which("gcc" if target == "native gcc" else "clang")
    if cc is None:
        pytest.skip(f"needs {'gcc' if target == 'native gcc' else 'clang'}")
    freestanding = ["-ffreestanding"] if flags else []
    r = subprocess.run([cc, *flags, *freestanding, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-c",
                        str(cengine.ENGINE / "sqz.c"), "-o", str(tmp_path / "sqz.o")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
