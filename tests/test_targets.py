"""Deployment targets, each run the way its users run it: the uint8 (preprocessing inside) export,
the runtimes and `auto`, the web page in headless Chromium, the HTTP service as a real process,
ExecuTorch's own runtime; and one clear message for each kind of bad input."""

import base64
import hashlib
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import write_image_folder
from test_deploy import make_checkpoint

from squeezenet import runtime
from squeezenet.checkpoint import save_checkpoint
from squeezenet.zoo import create_model

REPO = Path(__file__).resolve().parents[1]
WEB = REPO / "web"
ORT_WEB = WEB / "node_modules" / "onnxruntime-web" / "dist"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
needs_browser = pytest.mark.skipif(
    shutil.which("node") is None or not Path(CHROMIUM).exists() or not ORT_WEB.is_dir()
    or not (WEB / "node_modules" / "playwright-core").is_dir(),
    reason="needs node, Debian's chromium and `npm ci` in web/ (.ci/run installs them)")
needs_ort_web = pytest.mark.skipif(not ORT_WEB.is_dir(), reason="needs `npm ci` in web/ (onnxruntime-web)")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("targets")
    write_image_folder(root / "images" / "test", per_class=8, seed=1)
    return make_checkpoint(root / "best.safetensors", write_image_folder(root / "images" / "train", per_class=8).parent)


@pytest.fixture(scope="module")
def pixels(tmp_path_factory):
    """PNGs at the model's size (32 px), so every target sees exactly the pixels `predict` decodes."""
    root = write_image_folder(tmp_path_factory.mktemp("px"), per_class=3, size=32, seed=5)
    return sorted(root.rglob("*.png"))


@pytest.fixture(scope="module")
def python_predictions(ckpt, pixels):
    """`predict --runtime torch` on ``pixels``: the reference every target is held to."""
    from squeezenet.predict import predict_files

    results, _ = predict_files(ckpt, pixels, top_k=2, runtime="torch")
    return {r["image"]: r["top"] for r in results}


def probabilities(top):
    return {t["label"]: t["probability"] for t in top}


def agree(top_a, top_b, tol):
    assert top_a[0]["label"] == top_b[0]["label"]
    pa, pb = probabilities(top_a), probabilities(top_b)
    assert all(abs(pa[k] - pb[k]) <= tol for k in pa.keys() & pb.keys()), (pa, pb)


def softmax(logits):
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def rgb(paths):
    from PIL import Image

    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


# ----------------------------------------------------------------------------- uint8 input

def test_uint8_onnx_takes_rgb_pixels_and_agrees_with_predict(cli, ckpt, pixels, python_predictions, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "m.onnx"
    code, _, err = cli("export", ckpt, "--format", "onnx", "--input", "uint8", "--dynamic-batch", "--out", out)
    assert code == 0, err
    proto = onnx.load(out)
    inp = proto.graph.input[0].type.tensor_type
    assert inp.elem_type == onnx.TensorProto.UINT8 and [d.dim_value for d in inp.shape.dim][1:] == [32, 32, 3]
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["input_dtype"] == "uint8" and props["input_layout"].startswith("NHWC uint8 RGB")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    probs = softmax(session.run(None, {"images": rgb(pixels)})[0])
    for p, row in zip(pixels, probs):
        expected = python_predictions[str(p)]
        assert ["cat", "dog"][row.argmax()] == expected[0]["label"]
        assert abs(row[expected[0]["index"]] - expected[0]["probability"]) <= 1e-4


def test_uint8_grey_model_converts_as_pil_does():
    """A 1-channel model's uint8 input is RGB: the graph's luma equals PIL's convert("L") exactly."""
    from PIL import Image

    from squeezenet.data import normalize
    from squeezenet.export import RawImageInput

    arr = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    grey = torch.from_numpy(np.stack([np.asarray(Image.fromarray(a).convert("L")) for a in arr]))[:, None]
    identity = RawImageInput(torch.nn.Identity(), [0.0], [1 / 255])  # scale 1, shift 0: the luma itself
    assert torch.equal(identity(torch.from_numpy(arr)), grey.float())
    model = create_model("squeezenet1_1", num_classes=3, in_channels=1, small_input=True).eval()
    with torch.no_grad():
        got = RawImageInput(model, [0.3], [0.2])(torch.from_numpy(arr))
        assert torch.allclose(got, model(normalize(grey, [0.3], [0.2])), atol=1e-5)


def test_uint8_input_refuses_other_channel_counts(cli, tmp_path, image_folder):
    kwargs = dict(num_classes=2, in_channels=4, small_input=True)
    path = tmp_path / "c4.safetensors"
    save_checkpoint(path, create_model("squeezenet1_1", **kwargs), {
        "arch": "squeezenet1_1", "model_kwargs": kwargs, "class_names": ["a", "b"],
        "preprocess": {"image_size": 32, "in_channels": 4, "mean": [0.5] * 4, "std": [0.25] * 4}})
    before = sorted(tmp_path.iterdir())
    for args in (["--format", "onnx", "--input", "uint8", "--out", tmp_path / "x.onnx"],
                 ["--format", "web", "--out", tmp_path / "site", "--runtime", "ort-web", "--ort-web", tmp_path],
                 ["--format", "web", "--out", tmp_path / "site"], ["--format", "c", "--out", tmp_path / "c"]):
        code, _, err = cli("export", path, *args)
        assert code in (1, 2) and "Traceback" not in err
        assert "channels" in err or "--ort-web" in err, err
    code, _, err = cli("export", path, "--format", "onnx", "--input", "uint8", "--out", tmp_path / "x.onnx")
    assert code == 1 and "takes 4 channels" in err and "--input float" in err
    assert sorted(tmp_path.iterdir()) == before  # nothing half-written


# ----------------------------------------------------------------------------- runtimes

def test_openvino_runtime_agrees_with_torch(cli, ckpt, pixels, python_predictions, tmp_path):
    pytest.importorskip("openvino")
    code, _, err = cli("predict", ckpt, *pixels, "--runtime", "openvino", "--json", tmp_path / "ov.json")
    assert code == 0 and "runtime: openvino fp32" in err, err
    for r in json.loads((tmp_path / "ov.json").read_text())["predictions"]:
        agree(r["top"], python_predictions[r["image"]][:len(r["top"])], 1e-4)
    assert cli("predict", ckpt, *pixels, "--runtime", "onnxruntime", "--precision", "bf16")[0] == 2
    from squeezenet.export import openvino_bf16

    code, _, err = cli("predict", ckpt, *pixels, "--runtime", "openvino", "--precision", "bf16",
                       "--json", tmp_path / "bf16.json")
    if not openvino_bf16():  # a CPU without bf16 units: said, not emulated
        assert code == 1 and "no bf16 units" in err
        return
    assert code == 0 and "runtime: openvino bf16" in err, err
    for r in json.loads((tmp_path / "bf16.json").read_text())["predictions"]:
        agree(r["top"], python_predictions[r["image"]][:len(r["top"])], 2e-2)  # 8 bits of mantissa


def test_openvino_compiles_each_batch_size_and_a_service_never_waits_for_it(ckpt):
    pytest.importorskip("openvino")
    from squeezenet.checkpoint import load_checkpoint
    from squeezenet.export import onnx_bytes, openvino_model, sample_inputs

    model, meta = load_checkpoint(ckpt)
    x = sample_inputs(meta, 5)
    ov = openvino_model(onnx_bytes(model, x[:1], dynamic_batch=True), "fp32", threads=1)
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    for n in (3, 5, 3, 3):  # the dynamic-shape model the first time; compiled for 3 when met again
        assert np.abs(ov(x[:n].numpy()) - expected[:n]).max() < 1e-4
    assert sorted(ov.static) == [3] and ov.compiling == 0
    ov.background = True  # a service: the dynamic-shape model answers while a thread compiles
    compiled = threading.Event()
    real = ov._compile
    ov._compile = lambda shape: (compiled.wait(10), real(shape))
    assert np.abs(ov(x[:4].numpy()) - expected[:4]).max() < 1e-4  # a service: compiled from the first call
    assert ov.compiling == 1 and 4 not in ov.static
    compiled.set()
    deadline = time.time() + 30
    while ov.compiling and time.time() < deadline:
        time.sleep(0.05)
    assert 4 in ov.static and ov.compiling == 0
    assert np.abs(ov(x[:4].numpy()) - expected[:4]).max() < 1e-4


def test_precision_auto_takes_int8_only_when_measured_within_bound(cli, ckpt, tmp_path):
    from squeezenet.quantize import record_path

    int8 = runtime.find_int8(ckpt)
    assert int8.path is None and "squeezenet quantize" in int8.note
    assert ("onnxruntime", "int8") not in runtime.candidates("auto", "auto", int8)
    code, _, err = cli("predict", ckpt, str(ckpt.parent / "images" / "test" / "cat" / "0.png"),
                       "--precision", "int8")
    assert code == 1 and "squeezenet quantize" in err
    assert cli("predict", ckpt, "x.png", "--runtime", "torch", "--precision", "int8")[0] == 2

    out = ckpt.parent / "best.int8.onnx"  # where `quantize` writes by default, and `predict` looks
    try:
        code, _, err = cli("quantize", ckpt, "--calib-images", "8", "--seconds", "0.05")
        assert code == 0, err
        record = json.loads(record_path(out).read_text())
        assert record["int8_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
        for drop, allowed in ((0.0, True), (0.4, True), (1.5, False)):
            record_path(out).write_text(json.dumps({**record, "top1_int8": record["top1_fp32"] - drop,
                                                    "top1_int8_openvino": record["top1_fp32"] - drop}))
            found = runtime.find_int8(ckpt)
            assert found.allowed["onnxruntime"] is allowed and f"onnxruntime {drop:+.2f}" in found.note
            assert (("onnxruntime", "int8") in runtime.candidates("auto", "auto", found)) is allowed
            assert ("onnxruntime", "int8") in runtime.candidates("onnxruntime", "int8", found)  # asked for
        bf16_here = runtime.installed("openvino") and runtime.openvino_bf16()
        assert (record["top1_bf16_openvino"] is not None) is bf16_here  # quantize measured it where it runs
        for drop, allowed in ((0.3, True), (0.9, False)):
            record_path(out).write_text(json.dumps({**record, "top1_bf16_openvino": record["top1_fp32"] - drop}))
            found = runtime.find_int8(ckpt)
            assert found.bf16 is allowed and f"bf16 on openvino {drop:+.2f}" in found.note
            assert (("openvino", "bf16") in runtime.candidates("auto", "auto", found)) is (allowed and bf16_here)
            assert ("openvino", "bf16") not in runtime.candidates("auto", "fp32", found)
        record_path(out).write_text(json.dumps({**record, "checkpoint_sha256": "0" * 64}))
        assert runtime.find_int8(ckpt).path is None and "another checkpoint" in runtime.find_int8(ckpt).note
    finally:
        out.unlink(missing_ok=True)
        record_path(out).unlink(missing_ok=True)


def test_auto_measures_once_per_machine_and_model(ckpt, monkeypatch):
    from squeezenet.checkpoint import load_checkpoint

    calls = []
    real = runtime.measure_candidates
    monkeypatch.setattr(runtime, "measure_candidates", lambda *a, **k: calls.append(1) or real(*a, **k))
    model, meta = load_checkpoint(ckpt)
    first = runtime.make_engine(model, meta, "auto", "fp32", ckpt, seconds=0.05)
    second = runtime.make_engine(model, meta, "auto", "fp32", ckpt, seconds=0.05)
    assert len(calls) == 1 and "measured" in first.reason and "cached" in second.reason
    assert first.name == second.name and set(first.measured["1"]) >= {"torch fp32", "onnxruntime fp32"}
    best = {b: max(v, key=v.get) for b, v in first.measured.items()}
    assert first.runners[1][0] == best["1"] and first.runners[32][0] == best["32"]
    x = torch.randn(3, 3, 32, 32)
    assert np.abs(first(x) - model(x).detach().numpy()).max() <= 1e-4


def test_auto_times_the_close_candidates_again_over_more_calls(monkeypatch):
    passes = []

    def fake_measure(fns, x, seconds, **kwargs):
        passes.append((sorted(fns), kwargs.get("min_iters", 3)))
        first = {"a": 100.0, "b": 90.0, "c": 10.0}  # c is far behind: not timed again
        rates = first if len(passes) % 2 else {"a": 80.0, "b": 95.0}
        return {name: {"images_per_s": rates[name]} for name in fns}
    monkeypatch.setattr(runtime, "measure", fake_measure)
    fns = dict.fromkeys("abc", lambda x: x)
    measured = runtime.measure_candidates(fns, torch.zeros(1, 3, 8, 8))
    assert passes == [(["a", "b", "c"], 2), (["a", "b"], runtime.CLOSE_CALLS)] * len(runtime.CALIB_BATCHES)
    assert measured["32"] == {"a": 80.0, "b": 95.0, "c": 10.0}  # the longer pass decides


def test_missing_optional_packages_name_their_extra(cli, ckpt, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    gone = {"openvino", "executorch", "starlette"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in gone else real(name, *a))
    code, _, err = cli("predict", ckpt, "x.png", "--runtime", "openvino")
    assert code == 1 and "pip install 'squeezenet[openvino]'" in err
    code, _, err = cli("export", ckpt, "--format", "executorch", "--out", tmp_path / "m.pte")
    assert code == 1 and "pip install 'squeezenet[mobile]'" in err
    code, _, err = cli("serve", ckpt, "--port", "0")
    assert code == 1 and "pip install 'squeezenet[serve]'" in err
    assert list(tmp_path.iterdir()) == []


def test_bench_times_openvino(cli, tmp_path):
    pytest.importorskip("openvino")
    code, stdout, err = cli("bench", "squeezenet1_1", "--input-size", "32", "--batch-sizes", "2",
                            "--runtimes", "openvino,openvino-bf16,openvino-int8", "--seconds", "0.05",
                            "--no-train", "--json", tmp_path / "b.json")
    assert code == 0, err
    result = json.loads((tmp_path / "b.json").read_text())
    records = result["records"]
    from squeezenet.export import openvino_bf16

    if openvino_bf16():
        assert {r["runtime"] for r in records} == {"openvino", "openvino-bf16", "openvino-int8"}
    else:  # OpenVINO's default precision would be fp32 here: a second fp32 row, not a bf16 one
        assert {r["runtime"] for r in records} == {"openvino", "openvino-int8"}
        assert "no bf16 units" in result["skipped"]["openvino-bf16"]
    assert all(r["images_per_s"] > 0 for r in records)


# ----------------------------------------------------------------------------- the web page

def test_lockfile_pins_the_runtime_the_export_downloads():
    from squeezenet import web

    lock = json.loads((WEB / "package-lock.json").read_text())["packages"]["node_modules/onnxruntime-web"]
    assert lock["version"] == web.ORT_WEB_VERSION and lock["integrity"] == web.ORT_WEB_INTEGRITY
    assert json.loads((WEB / "package.json").read_text())["dependencies"]["onnxruntime-web"] == web.ORT_WEB_VERSION


def test_ort_web_download_is_verified_before_it_is_kept(tmp_path):
    from squeezenet import web
    from squeezenet.errors import SqueezeNetError

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in web.ORT_WEB_FILES:
            data = f"// {name}".encode()
            info = tarfile.TarInfo(f"package/dist/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tgz = buf.getvalue()
    good = "sha512-" + base64.b64encode(hashlib.sha512(tgz).digest()).decode()
    dest = tmp_path / "cache" / "onnxruntime-web" / web.ORT_WEB_VERSION
    with pytest.raises(SqueezeNetError, match="does not match the pinned sha512"):
        web.fetch_ort_web(dest, integrity="sha512-" + base64.b64encode(bytes(64)).decode(), opener=lambda url: tgz)
    assert not dest.parent.exists()  # nothing kept

    def offline(url):
        raise OSError("Network is unreachable")
    with pytest.raises(SqueezeNetError, match="--ort-web"):
        web.fetch_ort_web(dest, opener=offline)
    seen = []
    assert web.fetch_ort_web(dest, integrity=good, opener=lambda url: seen.append(url) or tgz) == dest
    assert seen == [web.ORT_WEB_URL] and sorted(p.name for p in dest.iterdir()) == sorted(web.ORT_WEB_FILES)


@needs_ort_web
def test_web_export_bad_input(cli, ckpt, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = cli("export", ckpt, "--format", "web", "--runtime", "ort-web", "--out", tmp_path / "site",
                       "--ort-web", empty)
    assert code == 2 and "holds no ort.wasm.bundle.min.mjs" in err
    taken = tmp_path / "taken"
    (taken / "mine.txt").parent.mkdir()
    (taken / "mine.txt").write_text("keep me")
    code, _, err = cli("export", ckpt, "--format", "web", "--out", taken, "--ort-web", ORT_WEB)
    assert code == 2 and "not a site this command wrote" in err and (taken / "mine.txt").read_text() == "keep me"
    assert cli("export", ckpt, "--format", "web", "--input", "float", "--out", tmp_path / "s")[0] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "taken"]


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def static_host():
    """Serves a folder on 127.0.0.1 (a free port) as any static host would."""
    servers = []

    def serve(folder):
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(folder)))
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}/"
    yield serve
    for s in servers:
        s.shutdown()
        s.server_close()


def run_page(url, spec, timeout=90):
    proc = subprocess.run(["node", str(WEB / "check_page.mjs"), url, json.dumps(spec)], capture_output=True,
                          text=True, timeout=timeout, cwd=WEB, env={**os.environ, "CHROMIUM": CHROMIUM})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "error" not in out, out
    return out


PAGE_FILES = {"engine": {"index.html", "app.js", "runtime.js", "model-info.json", "engine.wasm", "model.sqz"},
              "ort-web": {"index.html", "app.js", "runtime.js", "model-info.json", "model.onnx",
                          "ort/ort.wasm.bundle.min.mjs", "ort/ort-wasm-simd-threaded.wasm"}}


@needs_browser
@pytest.mark.parametrize("runtime", ["engine", "ort-web"])
def test_web_page_in_chromium_agrees_with_predict(cli, ckpt, pixels, python_predictions, tmp_path, static_host,
                                                  runtime):
    site = tmp_path / "site"
    code, stdout, err = cli("export", ckpt, "--format", "web", "--out", site, "--runtime", runtime,
                            "--ort-web", ORT_WEB, "--top-k", "2", "--json", tmp_path / "w.json")
    assert code == 0, err
    r = json.loads((tmp_path / "w.json").read_text())
    assert set(r["files"]) == PAGE_FILES[runtime] and r["runtime"] == runtime
    assert r["bytes_total"] == sum(r["files"].values()) and "MB" in stdout
    if runtime == "engine":  # the page loads the model's weights and at most 30 KB more (gzip)
        assert r["bytes_gzip"] - r["files_gzip"]["model.sqz"] <= 30_000
    for p in pixels:
        shutil.copyfile(p, site / f"{p.parent.name}-{p.name}")
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    url = static_host(site)
    out = run_page(url, {"urls": [f"{p.parent.name}-{p.name}" for p in pixels], "files": [str(junk), str(pixels[0])]})
    assert all(u.startswith(url) or u.startswith("data:") for u in out["requests"]), out["requests"]  # offline
    assert "ready" in out["status"]
    for p, got in zip(pixels, out["results"]):
        agree(got["top"], python_predictions[str(p)], 1e-3)
        assert got["ms"] > 0
    shown = "\n".join(out["shown"])
    assert "cannot decode junk.jpg" in shown and f"{pixels[0].name} (" in shown  # the good file still classified


@needs_browser
def test_web_page_runs_the_int8_model(cli, ckpt, pixels, tmp_path, static_host):
    import onnxruntime as ort

    site = tmp_path / "site8"
    code, _, err = cli("export", ckpt, "--format", "web", "--precision", "int8", "--out", site, "--ort-web", ORT_WEB,
                       "--runtime", "ort-web", "--json", tmp_path / "w.json")
    assert code == 0, err
    r = json.loads((tmp_path / "w.json").read_text())
    assert r["precision"] == "int8" and r["bytes_model"] < 0.4 * 2.9e6 and "top1_int8" in r
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(site / "model.onnx").graph.node}
    for p in pixels:
        shutil.copyfile(p, site / f"{p.parent.name}-{p.name}")
    out = run_page(static_host(site), {"urls": [f"{p.parent.name}-{p.name}" for p in pixels]})
    session = ort.InferenceSession(str(site / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = softmax(session.run(None, {"images": rgb(pixels)})[0])
    for got, row in zip(out["results"], expected):
        assert got["top"][0]["index"] == row.argmax() and abs(got["top"][0]["probability"] - row.max()) <= 1e-2


# ----------------------------------------------------------------------------- the service

def test_batches_run_on_several_streams_at_once_and_a_bad_upload_stays_out(ckpt, pixels):
    import asyncio

    from squeezenet.checkpoint import load_checkpoint
    from squeezenet.serve import BadUpload, Batcher

    _, meta = load_checkpoint(ckpt)
    lock, active, seen = threading.Lock(), [0, 0], []

    def engine(x):  # records how many batches run at once, and what each held
        with lock:
            active[0] += 1
            active[1] = max(active)
            seen.append(x.shape)
        time.sleep(0.1)
        with lock:
            active[0] -= 1
        return np.arange(len(x) * 2, dtype=np.float32).reshape(len(x), 2)

    async def main():
        batcher = Batcher(engine, meta, max_batch=4, max_wait_ms=0, streams=2)
        await batcher.start()
        uploads = [[(p.name, p.read_bytes())] for p in pixels[:6]] + [[("bad.png", b"\x89PNG broken")]]
        results = await asyncio.gather(*[batcher.infer(u, 2) for u in uploads], return_exceptions=True)
        await batcher.stop()
        return results, batcher
    results, batcher = asyncio.run(main())
    assert active[1] == 2  # two batches at once, never more
    assert isinstance(results[-1], BadUpload) and results[-1].status == 400
    assert all(len(r) == 1 and [t["index"] for t in r[0]] == [1, 0] for r in results[:-1])  # top-2, per image
    assert batcher.images == 6
    assert all(tuple(s[1:]) == (32, 32, 3) and s[0] <= 4 for s in seen)  # the pixels, as decoded


async def asgi_post(app, body: bytes, delay: float = 0.0):
    """POST /predict straight to the ASGI app: (status, headers, JSON body, seconds)."""
    import asyncio

    await asyncio.sleep(delay)
    sent, messages = [], [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
    scope = {"type": "http", "http_version": "1.1", "method": "POST", "scheme": "http", "path": "/predict",
             "raw_path": b"/predict", "root_path": "", "query_string": b"", "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80), "headers": [(b"content-type", b"image/png")]}
    t0 = time.monotonic()
    await app(scope, receive, send)
    return (sent[0]["status"], dict(sent[0]["headers"]), json.loads(b"".join(m.get("body", b"") for m in sent[1:])),
            time.monotonic() - t0)


def test_a_runtime_that_fails_gives_its_batch_a_json_500(ckpt, pixels):
    import asyncio

    from squeezenet.serve import create_app

    app = create_app(ckpt, runtime="onnxruntime", precision="fp32")

    def broken(x):
        raise RuntimeError("the runtime ran out of memory")
    app.state.batcher.engine = broken

    async def main():
        await app.state.batcher.start()
        try:
            return (await asgi_post(app, pixels[0].read_bytes()))[::2]
        finally:
            await app.state.batcher.stop()
    status, body = asyncio.run(main())
    assert status == 500 and body["error"] == "inference failed: RuntimeError: the runtime ran out of memory"


def test_a_full_queue_gets_503_at_once_and_a_timed_out_request_is_never_run(ckpt, pixels):
    """Two streams busy for 0.3 s, two requests queued (--max-queue 2): the next gets 503 with
    Retry-After at once; at --timeout-s 0.2 every waiting request gets 504, and those still queued
    are left out of the next batch rather than computed for nobody."""
    import asyncio

    from squeezenet.serve import create_app

    app = create_app(ckpt, runtime="onnxruntime", precision="fp32", streams=2, max_batch=1, max_queue=2,
                     timeout_s=0.2)
    batcher, ran = app.state.batcher, []

    def slow(x):  # the first two batches
        ran.append(len(x))
        time.sleep(0.3 if len(ran) <= 2 else 0)
        return np.zeros((len(x), 2), dtype=np.float32)
    batcher.engine = slow

    async def main():
        await batcher.start()
        try:
            body = pixels[0].read_bytes()
            first = await asyncio.gather(*[asgi_post(app, body, 0.01 * i) for i in range(5)])
            await asyncio.sleep(0.2)  # the streams finish the batches nobody waits for any more
            after = await asgi_post(app, body)
            app.state.predict.max_held = len(body) - 1  # the bound on bytes of bodies held at once
            return first, after, batcher.queued, await asgi_post(app, body), app.state.predict.held
        finally:
            await batcher.stop()
    first, after, queued, held, still_held = asyncio.run(main())
    assert held[0] == 503 and "MiB of uploads" in held[2]["error"] and held[1][b"retry-after"] == b"1"
    assert still_held == 0
    assert [r[0] for r in first] == [504, 504, 504, 504, 503]
    status, headers, body, seconds = first[4]
    assert headers[b"retry-after"] == b"1" and "at most 2" in body["error"] and seconds < 0.1
    assert all("no answer within 0.2 s" in r[2]["error"] and 0.2 <= r[3] < 0.35 for r in first[:4])
    assert ran == [1, 1, 1]  # the two that ran when they timed out, and the last: the two queued never ran
    assert after[0] == 200 and queued == 0


def test_a_worker_that_dies_stops_the_service_and_says_how(ckpt, tmp_path):
    """An abort in a worker (as OpenVINO's compiler thread caused at exit) is not an exit 0: the
    service stops its other worker, exits 1 and names the worker and the signal."""
    proc, port = start_server(ckpt, "--runtime", "onnxruntime", "--no-page", "--workers", "2", cache=tmp_path)
    timer = threading.Timer(60, proc.kill)
    try:
        timer.start()
        while "2 worker processes" not in proc.stdout.readline():  # both up
            pass
        timer.cancel()
        workers = worker_pids(proc)
        assert len(workers) == 2
        os.kill(workers[1], signal.SIGABRT)
        assert proc.wait(30) == 1
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
    log = proc.stdout.read()
    assert f"(pid {workers[1]}) was killed by SIGABRT" in log and "other workers were stopped" in log
    assert "Traceback" not in log


def test_serve_warns_when_it_listens_beyond_this_machine_without_a_key(cli, ckpt, monkeypatch):
    monkeypatch.delenv("SQUEEZENET_API_KEY", raising=False)
    with socket.socket() as s:  # the port taken: serve stops right after its warning
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        code, _, err = cli("serve", ckpt, "--host", "0.0.0.0", "--port", port, "--no-page")
        assert code == 1 and "with no API key: anyone who reaches it may use the service" in err
        for flags in (["--host", "127.0.0.1"], ["--host", "0.0.0.0", "--api-key", "k"]):
            assert "no API key" not in cli("serve", ckpt, *flags, "--port", port, "--no-page")[2]
        monkeypatch.setenv("SQUEEZENET_API_KEY", "k")
        assert "no API key" not in cli("serve", ckpt, "--host", "0.0.0.0", "--port", port, "--no-page")[2]
    code, out, _ = cli("serve", "--help")
    assert code == 0 and "warning" in out and "--api-key" in out and "--cors-origin" in out
    assert cli("serve", ckpt, "--api-key", "two words", "--no-page")[0] == 2
    assert cli("serve", ckpt, "--cors-origin", "*", "--no-page")[0] == 2
    assert cli("serve", ckpt, "--timeout-s", "0", "--no-page")[0] == 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_pids(proc) -> list[int]:
    """The service's worker processes (its children but multiprocessing's resource tracker)."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    return [int(p) for p in children if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]


def start_server(ckpt, *flags, cache):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "squeezenet", "serve", str(ckpt), "--port", str(port), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "SQUEEZENET_CACHE": str(cache)})
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited: {proc.stdout.read()}")
        try:
            if request(port, "GET", "/health")[0] == 200:
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("the server did not come up")


KEY = "test-key-0123"  # the served fixture's API key
AUTH = {"Authorization": f"Bearer {KEY}"}


def request(port, method, path, body=None, headers=None, timeout=60, auth=True):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={**(AUTH if auth else {}), **(headers or {})})
        r = conn.getresponse()
        data = r.read()
        kind = r.getheader("content-type", "")
        return r.status, json.loads(data) if kind.startswith("application/json") else data.decode(errors="replace")
    finally:
        conn.close()


def multipart(files):
    boundary = "squeezenet-test-boundary"
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"{name}\"\r\n"
             f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n" for name, data in files]
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), headers


ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def served(ckpt, tmp_path_factory):
    """One service for the tests below: its process and port. Short read timeouts and a low
    connection limit, so that the slow-client tests take seconds."""
    flags = ["--runtime", "onnxruntime", "--precision", "fp32", "--max-wait-ms", "30", "--api-key", KEY,
             "--cors-origin", ORIGIN, "--read-timeout-s", "2", "--max-connections", "300", "--workers", "2"]
    proc, port = start_server(ckpt, *flags, cache=tmp_path_factory.mktemp("servecache"))
    yield proc, port
    proc.terminate()
    assert proc.wait(30) == 0


@pytest.fixture(scope="module")
def server(served):
    return served[1]


def test_serve_predicts_one_or_many_images_as_predict_does(server, pixels, python_predictions):
    status, r = request(server, "POST", "/predict?top_k=2", pixels[0].read_bytes(), {"Content-Type": "image/png"})
    assert status == 200 and r["runtime"] == "onnxruntime fp32"
    agree(r["predictions"][0]["top"], python_predictions[str(pixels[0])], 1e-4)
    body, headers = multipart([(p.name, p.read_bytes()) for p in pixels])
    status, r = request(server, "POST", "/predict?top_k=2", body, headers)
    assert status == 200 and [p["image"] for p in r["predictions"]] == [p.name for p in pixels]
    for p, got in zip(pixels, r["predictions"]):
        agree(got["top"], python_predictions[str(p)], 1e-4)


def test_serve_health_model_and_page(server):
    assert request(server, "GET", "/health") == (200, {"status": "ok"})
    status, info = request(server, "GET", "/model")
    assert status == 200 and info["class_names"] == ["cat", "dog"] and info["image_size"] == 32
    assert info["runtime"] == "onnxruntime fp32" and info["max_bytes"] == 10 * 2**20 and info["api_key"] is True
    assert (info["max_queue"], info["timeout_s"], info["max_connections"]) == (256, 10.0, 300)
    assert request(server, "GET", "/predict")[0] == 405  # POST only, on the fast path as through Starlette
    # refusals of the other paths in JSON too; a body they take not left unread
    assert request(server, "GET", "/nowhere.txt" if info["page"] else "/nowhere")[1]["status"] == 404
    assert request(server, "POST", "/model", bytes(11_000_000))[1]["error"].startswith("POST /model: only POST")
    cores = len(os.sched_getaffinity(0))
    assert (info["workers"], info["streams"], info["threads_per_stream"]) == (2, 1, max(1, cores // 2))
    assert info["page"]  # on the engine: no onnxruntime-web needed
    status, page = request(server, "GET", "/")
    assert status == 200 and "<h1>SqueezeNet</h1>" in page
    assert request(server, "GET", "/model-info.json")[1]["runtime"] == "engine"
    assert request(server, "GET", "/engine.wasm")[0] == 200


def test_serve_batches_concurrent_requests_and_a_bad_upload_harms_none(server, pixels, python_predictions):
    calls_before = request(server, "GET", "/model")[1]["inference_calls"]
    results = {}

    def send(i, data):
        results[i] = request(server, "POST", "/predict?top_k=2", data, {"Content-Type": "image/png"})
    jobs = [(i, pixels[i % len(pixels)].read_bytes()) for i in range(12)] + [(99, b"\x89PNG\r\n\x1a\n broken")]
    threads = [threading.Thread(target=send, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    status, err = results.pop(99)
    assert status == 400 and "cannot decode image" in err["error"]
    for i, (status, r) in results.items():
        assert status == 200
        agree(r["predictions"][0]["top"], python_predictions[str(pixels[i % len(pixels)])], 1e-4)
    calls = request(server, "GET", "/model")[1]["inference_calls"] - calls_before
    assert 1 <= calls < 12  # batched: fewer inference calls than requests


def test_serve_a_client_gone_mid_upload_harms_no_other(server, pixels, python_predictions):
    body = pixels[0].read_bytes()
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server), timeout=30) as s:
            s.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:len(body) // 2])
    status, r = request(server, "POST", "/predict?top_k=2", body, {"Content-Type": "image/png"})
    assert status == 200
    agree(r["predictions"][0]["top"], python_predictions[str(pixels[0])], 1e-4)


@pytest.mark.parametrize("body, headers, path, status, message", [
    (b"hello", {"Content-Type": "text/plain"}, "/predict", 415, "unsupported Content-Type"),
    (b"{}", {"Content-Type": "application/json"}, "/predict", 415, "unsupported Content-Type"),
    (b"", {"Content-Type": "image/png"}, "/predict", 400, "no image in the request"),
    (b"GIF89a", {"Content-Type": "image/gif"}, "/predict", 400, "cannot decode image"),
    (b"x", {"Content-Type": "image/png"}, "/predict?top_k=0", 400, "top_k"),
    (b"x", {"Content-Type": "image/png"}, "/predict?top_k=two", 400, "got 'two'"),
])
def test_serve_bad_uploads_get_a_json_4xx(server, body, headers, path, status, message):
    got, r = request(server, "POST", path, body, headers)
    assert got == status and message in r["error"] and r["status"] == status


def raw_exchange(port, data: bytes, timeout=10) -> bytes:
    """Sends ``data`` on a new connection and reads until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    return reply


def json_reply(reply: bytes):
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head[9:12]), head.decode("latin-1").lower(), json.loads(body)


def test_serve_oversized_bodies_get_a_413_that_urllib_reads(server, pixels):
    """The rest of an oversized body is read and discarded before the 413, so that a client still
    sending reads it (closed with bytes unread, a connection is reset and the answer lost)."""
    import urllib.error
    import urllib.request

    for size in (11_000_000, 64_000_000):
        req = urllib.request.Request(f"http://127.0.0.1:{server}/predict", data=bytes(size),
                                     headers={"Content-Type": "image/jpeg", **AUTH})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=60)
        assert e.value.code == 413 and json.loads(e.value.read())["error"].startswith(f"the upload ({size:,} bytes)")
    # drained, the connection stays open for the next request
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=60)
    conn.request("POST", "/predict", body=bytes(11_000_000), headers={"Content-Type": "image/png", **AUTH})
    r = conn.getresponse()
    assert r.status == 413 and json.loads(r.read())["status"] == 413 and r.getheader("connection") is None
    conn.request("POST", "/predict", body=pixels[0].read_bytes(), headers={"Content-Type": "image/png", **AUTH})
    assert conn.getresponse().status == 200
    conn.close()
    head = f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: image/png\r\n"
    # Expect: 100-continue gets its 413 at once, with no "100 Continue" inviting the body
    reply = raw_exchange(server, (head + "Expect: 100-continue\r\nContent-Length: 11000000\r\n\r\n").encode())
    status, headers, body = json_reply(reply)
    assert status == 413 and b"100 Continue" not in reply and "connection: close" in headers
    # a body too big to drain: answered at once, the connection closed
    status, headers, body = json_reply(raw_exchange(server, (head + "Content-Length: 500000000\r\n\r\n").encode()))
    assert status == 413 and "connection: close" in headers and body["error"].startswith("the upload (500,000,000")
    # a chunked body with no length: refused once it passes the limit, drained, answered
    chunk = b"%x\r\n" % 2**20 + bytes(2**20) + b"\r\n"
    reply = raw_exchange(server, (head + "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
                         + chunk * 11 + b"0\r\n\r\n")
    assert json_reply(reply)[:1] == (413,)


def test_serve_api_key_cors_and_metrics(server, pixels):
    png = {"Content-Type": "image/png"}
    for path, method in (("/predict", "POST"), ("/model", "GET"), ("/metrics", "GET")):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            status, r = request(server, method, path, pixels[0].read_bytes(), {**png, **headers}, auth=False)
            assert status == 401 and r == {"error": "this service needs its API key: send the header "
                                                    "'Authorization: Bearer KEY'", "status": 401}, (path, headers)
    assert request(server, "GET", "/health", auth=False)[0] == 200  # open: for load balancers
    status, r = request(server, "POST", "/predict", pixels[0].read_bytes(), {**png, "Authorization": f"bearer {KEY}"},
                        auth=False)
    assert status == 200
    # CORS: the one origin allowed, its preflight answered; another's refused in JSON
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=30)
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    conn.request("OPTIONS", "/predict", headers={"Origin": ORIGIN, **preflight})
    r = conn.getresponse()
    r.read()
    assert r.status == 200 and r.getheader("access-control-allow-origin") == ORIGIN
    conn.request("OPTIONS", "/predict", headers={"Origin": "https://evil.example", **preflight})
    r = conn.getresponse()
    assert r.status == 400 and "Disallowed CORS origin" in json.loads(r.read())["error"]
    for origin, allowed in ((ORIGIN, ORIGIN), ("https://evil.example", None)):
        conn.request("POST", "/predict", body=pixels[0].read_bytes(), headers={**png, **AUTH, "Origin": origin})
        r = conn.getresponse()
        r.read()
        assert r.status == 200 and r.getheader("access-control-allow-origin") == allowed
    conn.close()
    # metrics: summed over both workers, in Prometheus' text format
    from prometheus_client.parser import text_string_to_metric_families

    before = {}
    for _ in range(2):
        status, text = request(server, "GET", "/metrics")
        assert status == 200
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        if not before:
            before = samples
            for i in range(6):  # new connections: both workers take some
                request(server, "POST", "/predict", pixels[i % len(pixels)].read_bytes(), png)
            request(server, "POST", "/predict", b"not an image", png)
            request(server, "POST", "/predict", pixels[0].read_bytes(), png, auth=False)

    def grew(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return samples.get(key, 0) - before.get(key, 0)
    assert grew("squeezenet_requests_total", code="200") == 6 and grew("squeezenet_requests_total", code="400") == 1
    assert grew("squeezenet_requests_total", code="401") == 1 and grew("squeezenet_images_total") == 6
    assert grew("squeezenet_request_seconds_count") == 8 and grew("squeezenet_batch_size_count") >= 1
    assert grew("squeezenet_batch_size_sum") == 6 and ("squeezenet_queue_images", ()) in samples


def test_serve_cuts_slow_clients_and_serves_others(server, pixels):
    """--read-timeout-s 2: headers trickled, a connection that says nothing, a body trickled, each
    cut within the timeout, while a normal request beside them is answered at once."""
    def slow(lines: list[bytes], pause: float):
        with socket.create_connection(("127.0.0.1", server), timeout=10) as s:
            t0, reply = time.monotonic(), b""
            try:
                for line in lines:
                    s.sendall(line)
                    time.sleep(pause)
            except OSError:  # closed while still sending: what it answered is still there to read
                pass
            try:
                while chunk := s.recv(65536):
                    reply += chunk
            except OSError:
                pass
            return time.monotonic() - t0, reply
    head = [b"POST /predict HTTP/1.1\r\n", *[b"X-Slow: %d\r\n" % i for i in range(20)]]
    body = [f"POST /predict HTTP/1.1\r\nAuthorization: Bearer {KEY}\r\nContent-Type: image/png\r\n"
            f"Content-Length: 100\r\n\r\n".encode(), *[b"x"] * 20]
    results = {}
    threads = [threading.Thread(target=lambda k=k, args=a: results.__setitem__(k, slow(*args)))
               for k, a in (("head", (head, 0.3)), ("silent", ([], 0)), ("body", (body, 0.3)))]
    for t in threads:
        t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    status, r = request(server, "POST", "/predict?top_k=2", pixels[0].read_bytes(), {"Content-Type": "image/png"})
    assert status == 200 and time.monotonic() - t0 < 1
    for t in threads:
        t.join(15)
    for kind, (seconds, _) in results.items():
        assert 1.5 < seconds < 4, (kind, seconds)
    assert results["silent"][1] == b""  # nothing said, closed without a word
    assert not results["head"][1] or json_reply(results["head"][1])[0] == 408
    status, _, err = json_reply(results["body"][1])
    assert status == 408 and "did not arrive within 2 s" in err["error"]
    # a head past 64 KiB: 431, in JSON
    status, _, err = json_reply(raw_exchange(server, b"GET /health HTTP/1.1\r\nX-Big: " + b"b" * 70_000 + b"\r\n\r\n"))
    assert status == 431 and err["status"] == 431


@pytest.fixture
def many_files():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4000:
        pytest.skip(f"the open-file limit ({hard}) is too low for 1,500 connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_serve_idle_connections_do_not_starve_others(server, pixels, many_files):
    """1,500 idle keep-alive connections against a limit of 300 per worker: the longest idle are
    closed to make room, and a new request is answered at once. 1,000 connections that say
    nothing fill the limit: a new one gets a 503 it can read, until the read timeout cuts them."""
    png = {"Content-Type": "image/png"}
    idle = []
    for _ in range(15):  # a hundred at a time, each answered, then idle
        more = [socket.create_connection(("127.0.0.1", server), timeout=10) for _ in range(100)]
        for s in more:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert all(s.recv(4096).startswith(b"HTTP/1.1 200") for s in more)
        idle += more
    t0 = time.monotonic()
    assert request(server, "POST", "/predict", pixels[0].read_bytes(), png)[0] == 200
    assert time.monotonic() - t0 < 1
    for s in idle:
        s.close()
    silent = [socket.create_connection(("127.0.0.1", server), timeout=10) for _ in range(1000)]
    try:
        t0 = time.monotonic()
        status, r = request(server, "POST", "/predict", pixels[0].read_bytes(), png)
        assert status == 503 and "limit of 300 connections" in r["error"] and time.monotonic() - t0 < 1
        time.sleep(2.5)  # --read-timeout-s 2: the silent ones are cut
        assert request(server, "POST", "/predict", pixels[0].read_bytes(), png)[0] == 200
    finally:
        for s in silent:
            s.close()
    _, text = request(server, "GET", "/metrics")
    for reason in ("idle_evicted", "connection_limit", "head_timeout"):
        assert f'squeezenet_connections_closed_total{{reason="{reason}"}}' in text


def bomb_png(width: int, height: int) -> bytes:
    """A PNG of a few hundred bytes whose header declares ``width`` x ``height`` pixels."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(1000))) + chunk(b"IEND", b""))


def jpeg_bytes(size=64) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def bomb_jpeg(width: int, height: int) -> bytes:
    data = bytearray(jpeg_bytes())
    at = data.find(b"\xff\xc0")  # start of frame: its height and width
    data[at + 5:at + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def worker_rss(served) -> int:
    """The resident bytes of the service's worker processes, together."""
    return sum(int(next(ln for ln in Path(f"/proc/{p}/status").read_text().splitlines()
                        if ln.startswith("VmRSS")).split()[1]) * 1024 for p in worker_pids(served[0]))


def test_serve_hostile_uploads_get_a_json_4xx_and_harm_none_beside_them(served, pixels, python_predictions):
    server = served[1]
    boundary = "b"
    many_parts = "".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"f{i}\"\r\n\r\nx\r\n"
                         for i in range(10_000)) + f"--{boundary}--\r\n"
    long_name = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{'n' * 2**20}\"; filename=\"a.png\"\r\n\r\n"
                 f"x\r\n--{boundary}--\r\n")
    form = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    text_as_jpeg, form_headers = multipart([("cat.jpg", b"this is a text file, not a JPEG" * 40)])
    jpeg = jpeg_bytes()
    hostile = {  # body, headers, status, what the message says
        "png bomb": (bomb_png(100_000, 100_000), {"Content-Type": "image/png"}, 400, "decompression bomb"),
        "png over the pixel limit": (bomb_png(9000, 9000), {"Content-Type": "image/png"}, 400, "over the limit of"),
        "jpeg bomb": (bomb_jpeg(65_000, 65_000), {"Content-Type": "image/jpeg"}, 400, "decompression bomb"),
        "truncated jpeg": (jpeg[:len(jpeg) // 2], {"Content-Type": "image/jpeg"}, 400, "truncated"),
        "10,000 parts": (many_parts.encode(), form, 413, "parts in one form"),
        "a part name of 1 MB": (long_name.encode(), form, 400, "bad multipart form"),  # its bound or ours
        "wrong content type": (jpeg, {"Content-Type": "text/html"}, 415, "unsupported Content-Type"),
        "text with a .jpg name": (text_as_jpeg, form_headers, 400, "cannot decode image 'cat.jpg'"),
        "no boundary": (b"--x--", {"Content-Type": "multipart/form-data"}, 400, "no boundary"),
    }
    rss = worker_rss(served)
    results = {}

    def send(key, body, headers):
        results[key] = request(server, "POST", "/predict?top_k=2", body, headers)
    jobs = [(name, body, headers) for name, (body, headers, _, _) in hostile.items()]
    jobs += [(i, pixels[i % len(pixels)].read_bytes(), {"Content-Type": "image/png"}) for i in range(12)]
    threads = [threading.Thread(target=send, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for name, (_, _, status, message) in hostile.items():
        got, r = results[name]
        assert got == status and r["status"] == status and message in r["error"], (name, r)
        assert name != "a part name of 1 MB" or "header" in r["error"].lower()
    for i in range(12):
        status, r = results[i]
        assert status == 200
        agree(r["predictions"][0]["top"], python_predictions[str(pixels[i % len(pixels)])], 1e-4)
    assert worker_rss(served) - rss < 100 * 2**20  # refused before anything big was decoded or held


def test_serve_port_in_use(cli, ckpt):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        code, _, err = cli("serve", ckpt, "--port", s.getsockname()[1], "--no-page")
    assert code == 1 and "is in use" in err and "--port" in err and "Traceback" not in err
    # a runtime that cannot run is said once, by the parent, before any worker starts
    code, out, err = cli("serve", ckpt, "--port", "0", "--no-page", "--runtime", "onnxruntime", "--precision", "bf16")
    assert code == 2 and err.count("runs on openvino only") == 1 and "worker" not in err + out
    assert cli("serve", ckpt, "--port", "0", "--workers", "0")[0] == 2


def test_a_worker_that_cannot_start_stops_the_service_with_its_reason(ckpt, tmp_path):
    (tmp_path / "afile").write_text("")
    r = subprocess.run([sys.executable, "-m", "squeezenet", "serve", str(ckpt), "--port", "0", "--no-page",
                        "--workers", "2"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "SQUEEZENET_CACHE": str(tmp_path / "afile" / "cache")})
    assert r.returncode == 1 and "a parent path is a file" in r.stderr and "worker exited while starting" in r.stderr
    assert "Traceback" not in r.stderr


def test_serve_drains_requests_in_flight_on_sigterm(ckpt, pixels, tmp_path):
    """Uploads half-sent when SIGTERM comes still finish with 200; then the process exits 0."""
    proc, port = start_server(ckpt, "--runtime", "torch", "--no-page", cache=tmp_path)
    body = pixels[0].read_bytes()
    conns = []
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:len(body) // 2])
        conns.append(s)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # shutting down, waiting for these three
    assert proc.poll() is None
    replies = []
    for s in conns:
        s.sendall(body[len(body) // 2:])
        reply = b""
        while chunk := s.recv(65536):  # the server closes each connection after its reply
            reply += chunk
        replies.append(reply.decode(errors="replace"))
        s.close()
    assert all(r.startswith("HTTP/1.1 200") and '"predictions"' in r for r in replies), replies
    assert proc.wait(30) == 0


# ----------------------------------------------------------------------------- ExecuTorch

@pytest.fixture
def executorch():
    return pytest.importorskip("executorch")


def test_executorch_pte_runs_in_executorch_and_agrees_with_predict(cli, executorch, ckpt, pixels,
                                                                   python_predictions, tmp_path):
    from squeezenet.mobile import pte_runner

    out = tmp_path / "m.pte"
    code, stdout, err = cli("export", ckpt, "--format", "executorch", "--out", out, "--json", tmp_path / "r.json")
    assert code == 0, err
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["input"] == "uint8" and r["max_abs_diff"] <= 1e-4 and "ExecuTorch" in stdout
    assert not any("conv" in op or "max_pool" in op for op in r["outside_delegate"])  # XNNPACK runs the net
    probs = softmax(pte_runner(out.read_bytes())(torch.from_numpy(rgb(pixels))))
    for p, row in zip(pixels, probs):
        expected = python_predictions[str(p)][0]
        assert row.argmax() == expected["index"] and abs(row[expected["index"]] - expected["probability"]) <= 1e-3


def test_executorch_lowers_ceil_mode_pools(executorch):
    """At 225 px the 3x3/2 pools differ between ceil and floor mode (112 -> 56, not 55)."""
    from squeezenet.export import fold_batchnorm
    from squeezenet.mobile import lower, pte_runner

    model = create_model("squeezenet1_1", num_classes=5).eval()
    x = torch.randn(1, 3, 225, 225)
    data, outside = lower(fold_batchnorm(model), x)
    assert outside == []  # every op, the ceil-mode pools included, runs in the XNNPACK delegate
    with torch.no_grad():
        assert np.abs(pte_runner(data)(x) - model(x).numpy()).max() <= 1e-4


def test_executorch_int8(cli, executorch, ckpt, tmp_path):
    out = tmp_path / "m.int8.pte"
    code, _, err = cli("export", ckpt, "--format", "executorch", "--precision", "int8", "--out", out,
                       "--json", tmp_path / "r.json")
    assert code == 0, err
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["bytes"] == out.stat().st_size and r["eval_count"] == 16 and abs(r["top1_drop"]) <= 25
    assert r["agreement_top1"] >= 0.75
    assert cli("export", ckpt, "--format", "executorch", "--precision", "bf16", "--out", out)[0] == 2


def test_engines_on_decoded_pixels_give_the_float_engines_logits(ckpt):
    """serve hands the runtime uint8 (N, H, W, C) pixels, normalised in its graph: the same logits
    as the normalised float batch."""
    from squeezenet import runtime
    from squeezenet.checkpoint import load_checkpoint
    from squeezenet.data import normalize
    from squeezenet.export import sample_images

    model, meta = load_checkpoint(ckpt)
    u8 = sample_images(meta, 4)
    x, pixels = normalize(u8, meta.preprocess.mean, meta.preprocess.std), u8.permute(0, 2, 3, 1).contiguous().numpy()
    for rt in ("torch", "onnxruntime", "openvino"):
        a = runtime.build(rt, "fp32", model, meta, ckpt)(x)
        b = runtime.build(rt, "fp32", model, meta, ckpt, pixels=True)(pixels)
        assert np.abs(a - b).max() < 1e-4 and (a.argmax(1) == b.argmax(1)).all(), rt
    engine = runtime.make_engine(model, meta, "onnxruntime", "fp32", ckpt, pixels=True)
    assert engine.pixels and engine(pixels).shape == (4, len(meta.class_names))


# ----------------------------------------------------------------------------- LiteRT

def test_tflite_runs_in_the_litert_interpreter_and_agrees_with_predict(cli, ckpt, pixels, python_predictions,
                                                                       tmp_path):
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_litert")
    from squeezenet.mobile import tflite_runner

    for precision in ("fp32", "int8"):
        out = tmp_path / f"m.{precision}.tflite"
        code, stdout, err = cli("export", ckpt, "--format", "tflite", "--precision", precision, "--out", out,
                                "--json", tmp_path / "r.json")
        assert code == 0, err
        r = json.loads((tmp_path / "r.json").read_text())
        assert r["bytes"] == out.stat().st_size and (tmp_path / f"m.{precision}.labels.txt").read_text() == "cat\ndog\n"
        probs = tflite_runner(out.read_bytes())(rgb(pixels))
        for p, row in zip(pixels, probs):
            expected = python_predictions[str(p)][0]
            tol = 1e-4 if precision == "fp32" else 0.1
            assert row.argmax() == expected["index"] or precision == "int8"
            assert abs(row[expected["index"]] - expected["probability"]) <= tol
        if precision == "int8":
            assert r["eval_count"] == 16 and abs(r["top1_drop"]) <= 25 and r["bytes"] < 0.5 * 2.9e6


def test_tflite_without_litert_says_what_to_install(cli, ckpt, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "litert_torch" else
                        real(name, *a))
    code, _, err = cli("export", ckpt, "--format", "tflite", "--out", tmp_path / "m.tflite")
    assert code == 1 and "litert_torch" in err and "squeezenet-kit[tflite]" in err
    assert not list(tmp_path.iterdir())
