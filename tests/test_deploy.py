"""export, quantize, compress, bench and predict's runtime choice, on tiny models (fast)."""

import json

import numpy as np
import onnx
import pytest
import torch
from conftest import write_image_folder

from squeezenet.checkpoint import save_checkpoint
from squeezenet.zoo import create_model


def make_checkpoint(path, data_dir, **meta_overrides):
    """A checkpoint for a 2-class image folder (random weights, BatchNorm with non-trivial
    statistics). A folder keeps the evaluation and calibration sets tiny, so the tests are fast."""
    kwargs = dict(num_classes=2, small_input=True, batch_norm=True, bypass="simple", final_relu=False)
    torch.manual_seed(0)
    model = create_model("squeezenet1_1", **kwargs)
    for m in model.modules():  # BatchNorm folding is only tested when BN does something
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 1.5)
    meta = {"arch": "squeezenet1_1", "model_kwargs": kwargs, "class_names": ["cat", "dog"],
            "preprocess": {"image_size": 32, "in_channels": 3, "mean": [0.5] * 3, "std": [0.29] * 3},
            "dataset": "folder", "data_dir": str(data_dir), "seed": 0, "val_fraction": 0.25,
            "train_size": None, "tta": False, **meta_overrides}
    save_checkpoint(path, model, meta)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    write_image_folder(root / "images" / "test", per_class=8, seed=1)  # held out: eval's test split
    return make_checkpoint(root / "best.safetensors", write_image_folder(root / "images" / "train", per_class=8).parent)


def test_export_onnx_matches_pytorch_and_carries_metadata(cli, ckpt, tmp_path):
    out = tmp_path / "m.onnx"
    code, stdout, err = cli("export", ckpt, "--format", "onnx", "--out", out, "--dynamic-batch",
                            "--json", tmp_path / "r.json")
    assert code == 0, err
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["max_abs_diff"] <= 1e-4 and r["checked_on"] == 8
    proto = onnx.load(out)
    onnx.checker.check_model(proto)
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["class_names"]) == ["cat", "dog"]
    assert json.loads(props["mean"]) == [0.5] * 3 and props["image_size"] == "32"
    assert "BatchNormalization" not in {n.op_type for n in proto.graph.node}  # folded


def test_ceil_mode_pooling_exports_correctly(tmp_path):
    """At 225 px the 3x3/2 pools differ between ceil and floor mode (112 -> 56, not 55)."""
    import onnxruntime as ort

    from squeezenet.export import onnx_bytes

    model = create_model("squeezenet1_1", num_classes=5).eval()
    x = torch.randn(2, 3, 225, 225)
    proto = onnx.load_from_string(onnx_bytes(model, x[:1]))
    pools = [n for n in proto.graph.node if n.op_type == "MaxPool"]
    assert pools and all(a.i == 1 for n in pools for a in n.attribute if a.name == "ceil_mode")
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        assert np.abs(session.run(None, {"images": x.numpy()})[0] - model(x).numpy()).max() <= 1e-4


def test_export_torchscript_standalone(cli, ckpt, tmp_path):
    out = tmp_path / "m.pt"
    code, _, err = cli("export", ckpt, "--format", "torchscript", "--out", out)
    assert code == 0, err
    extra = {"squeezenet.json": ""}
    loaded = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(json.loads(extra["squeezenet.json"])["class_names"])[1] == "dog"
    assert loaded(torch.randn(3, 3, 32, 32)).shape == (3, 2)


@pytest.mark.parametrize("args, code, message", [
    (["--format", "coreml"], 2, "unknown format 'coreml'"),
    (["--format", "onnx", "--opset", "7"], 2, "unsupported --opset 7"),
    (["--format", "onnx", "--opset", "99"], 2, "unsupported --opset 99"),
])
def test_export_bad_flags(cli, ckpt, tmp_path, args, code, message):
    out = tmp_path / "m.onnx"
    rc, _, err = cli("export", ckpt, "--out", out, *args)
    assert rc == code and message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing half-written


@pytest.mark.parametrize("command", ["export", "quantize", "compress"])
def test_missing_and_foreign_checkpoints(cli, tmp_path, command):
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(foreign))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    before = sorted(tmp_path.iterdir())
    for path, message in [(tmp_path / "nope.safetensors", "does not exist"),
                          (foreign, "not a checkpoint written by"), (junk, "not a safetensors")]:
        extra = ["--format", "onnx"] if command == "export" else []
        rc, _, err = cli(command, path, *extra, "--out", tmp_path / "out.bin")
        assert rc == 1 and message in err and "Traceback" not in err, err
    assert sorted(tmp_path.iterdir()) == before


def test_quantize_reports_accuracy_size_and_speed(cli, ckpt, tmp_path):
    out = tmp_path / "m.int8.onnx"
    code, stdout, err = cli("quantize", ckpt, "--out", out, "--calib-images", "8", "--seconds", "0.1",
                            "--json", tmp_path / "q.json")
    assert code == 0, err
    r = json.loads((tmp_path / "q.json").read_text())
    assert r["bytes_int8"] == out.stat().st_size < 0.4 * r["bytes_fp32"]
    assert r["eval_count"] == 16 and r["calibration_images"] == 8
    assert abs(r["top1_drop"]) <= 5 and r["images_per_s_int8"] > 0
    graph = onnx.load(out).graph
    assert {n.op_type for n in graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    assert "top-1" in stdout
    # every Fire module's Concat reads its inputs at its output's scale (a plain copy in onnxruntime)
    producer = {o: n for n in graph.node for o in n.output}
    concats = [n for n in graph.node if n.op_type == "Concat"]
    assert len(concats) == 8
    for c in concats:
        q_out = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == c.output[0])
        assert all(producer[i].op_type == "DequantizeLinear" and producer[i].input[1:] == q_out.input[1:]
                   for i in c.input)
    # 7-bit weights: a u8 x s8 pair sums to at most 2 x 255 x 64, inside the 16-bit sums of CPUs
    # without VNNI, so the file computes the same on every x86 CPU
    filters = [onnx.numpy_helper.to_array(t) for t in graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert len(filters) == 26 and all(-64 <= w.min() and w.max() <= 64 for w in filters)
    assert max(int(w.max()) - int(w.min()) for w in filters) > 64  # the 7 bits are used


def test_quantize_from_a_calibration_folder(cli, ckpt, image_folder, tmp_path):
    code, _, err = cli("quantize", ckpt, "--calib-data", image_folder, "--out", tmp_path / "q.onnx",
                       "--seconds", "0.1")
    assert code == 0, err


def test_quantize_without_calibration_data(cli, tmp_path):
    ckpt = make_checkpoint(tmp_path / "c.safetensors", tmp_path / "gone")
    rc, _, err = cli("quantize", ckpt, "--out", tmp_path / "q.onnx")
    assert rc == 1 and "no calibration data" in err and "--calib-data" in err
    rc, _, err = cli("quantize", ckpt, "--calib-data", tmp_path / "empty", "--out", tmp_path / "q.onnx")
    assert rc == 1 and "no calibration data" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]


def test_quantize_on_held_out_images_that_are_not_there(cli, ckpt, tmp_path):
    rc, _, err = cli("quantize", ckpt, "--data-dir", tmp_path / "missing", "--out", tmp_path / "q.onnx")
    assert rc == 1 and "missing" in err and "Traceback" not in err
    assert not list(tmp_path.glob("q*"))  # nothing half-written


def test_compress_roundtrip_and_honest_size(cli, ckpt, tmp_path):
    """The compressed file is the C engine's model file with every conv as a codebook: a checkpoint
    like any other for PyTorch, and the engine runs it as it is."""
    from squeezenet.checkpoint import load_checkpoint
    from squeezenet.compress import conv_weights
    from squeezenet.modelfile import W_CODEBOOK, ModelFile

    out = tmp_path / "m.sqz"
    code, stdout, err = cli("compress", ckpt, "--sparsity", "0.7", "--steps", "2", "--out", out,
                            "--json", tmp_path / "c.json")
    assert code == 0, err
    r = json.loads((tmp_path / "c.json").read_text())
    assert r["bytes_compressed"] == out.stat().st_size and r["size_ratio"] < 0.1
    assert r["bytes_gzip"] < r["bytes_compressed"]
    info = ModelFile.read(out.read_bytes())
    convs_in_file = [layer for layer in info.layers if int(layer["op"]) != 3]
    assert all(int(layer["form"]) == W_CODEBOOK and int(layer["bits"]) <= 4 for layer in convs_in_file)
    model, meta = load_checkpoint(out)
    convs = list(conv_weights(model).values())
    weights = torch.cat([w.flatten() for w in convs])
    assert float((weights == 0).float().mean()) == pytest.approx(r["sparsity"])
    inner = torch.cat([w.flatten() for w in convs[1:-1]])  # the first and last conv stay dense
    assert float((inner == 0).float().mean()) == pytest.approx(0.7, abs=0.01)
    assert float((convs[0] == 0).float().mean()) < 0.05 and float((convs[-1] == 0).float().mean()) < 0.05
    assert meta.class_names == ["cat", "dog"]
    code, stdout, err = cli("eval", out, "--json", tmp_path / "e.json")  # a checkpoint like any other
    assert code == 0, err
    assert json.loads((tmp_path / "e.json").read_text())["top1"] == pytest.approx(r["top1_after"])


def test_compress_retrains_shared_weights_and_reencodes_exactly(ckpt):
    """After weight sharing each layer holds at most 2**bits values, and encoding the result again
    keeps every weight exactly (the codebook is those values, not a fresh k-means)."""
    from squeezenet.checkpoint import load_checkpoint
    from squeezenet.compress import conv_weights, encode, finetune
    from squeezenet.export import fold_batchnorm

    model, meta = load_checkpoint(ckpt)
    shared = finetune(model, meta, sparsity=0.5, bits=3, steps=8)
    for name, w in conv_weights(model).items():
        codebook, codes = shared[name]
        assert len(w[w != 0].unique()) <= 8 and torch.equal(w[w != 0], codebook[codes.long()])
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.sqz"
        path.write_bytes(encode(model, meta, 3))  # no codebooks given: re-derived from the weights
        restored, _ = load_checkpoint(path)
    # the file holds the shared weights and BatchNorm's per-channel scale apart: the same folded weights
    for (name, a), b in zip(conv_weights(fold_batchnorm(model)).items(), conv_weights(restored).values()):
        assert torch.equal(a, b), name


def test_compress_finetunes_with_the_checkpoints_augmentation(ckpt, monkeypatch):
    from squeezenet import compress
    from squeezenet.checkpoint import load_checkpoint

    seen, real = {}, compress.Loader
    monkeypatch.setattr(compress, "Loader", lambda *a, **k: seen.update(k) or real(*a, **k))
    _, meta = load_checkpoint(ckpt)
    next(compress.training_batches(meta.replace(augment="crop", crop_pad=1), batch_size=4))
    assert seen["augment"] == "crop" and seen["crop_pad"] == 1


def test_compress_bad_sparsity(cli, ckpt, tmp_path):
    rc, _, err = cli("compress", ckpt, "--sparsity", "1.5", "--out", tmp_path / "m.sqz")
    assert rc == 2 and "--sparsity" in err and not (tmp_path / "m.sqz").exists()


def test_bench_records(cli, tmp_path):
    code, stdout, err = cli("bench", "squeezenet1_1", "--input-size", "32", "--batch-sizes", "1,2",
                            "--runtimes", "eager,channels_last,onnxruntime,onnxruntime-int8",
                            "--seconds", "0.05", "--json", tmp_path / "b.json")
    assert code == 0, err
    records = json.loads((tmp_path / "b.json").read_text())["records"]
    keys = {(r["runtime"], r["batch_size"]) for r in records}
    assert ("onnxruntime-int8", 2) in keys and ("eager", 1) in keys and ("train-step", 2) in keys
    assert all(r["images_per_s"] > 0 and r["p95_ms"] >= r["p50_ms"] > 0 for r in records)
    assert "onnxruntime" in stdout


def test_bench_bad_input(cli):
    assert cli("bench", "resnet50")[0] == 2
    assert cli("bench", "--batch-sizes", "1,x")[0] == 2
    assert cli("bench", "--runtimes", "tensorrt")[0] == 2


def test_predict_uses_the_measured_fastest_runtime_by_default_and_agrees_with_torch(cli, ckpt, image_folder,
                                                                                   tmp_path):
    images = sorted(str(p) for p in image_folder.rglob("*.png"))[:3]
    code, _, err = cli("predict", ckpt, *images, "--json", tmp_path / "ort.json")
    measured = json.loads((tmp_path / "ort.json").read_text())["runtime_images_per_s"]
    assert "onnxruntime fp32" in measured["1"] and "torch fp32" in measured["1"]  # measured, not assumed
    fastest = max(measured["1"], key=measured["1"].get)  # 3 images: the batch-1 choice
    assert code == 0 and f"runtime: {fastest}" in err and "fastest here, measured" in err
    code, _, err = cli("predict", ckpt, *images, "--runtime", "torch", "--json", tmp_path / "pt.json")
    assert code == 0 and "runtime: torch" in err
    ort_r, pt_r = (json.loads((tmp_path / f).read_text())["predictions"] for f in ("ort.json", "pt.json"))
    for a, b in zip(ort_r, pt_r):
        assert a["top"][0]["label"] == b["top"][0]["label"]
        assert a["top"][0]["probability"] == pytest.approx(b["top"][0]["probability"], abs=1e-4)


def test_compress_retrains_at_every_stage(ckpt):
    """Every stage trains on its own steps: a stage that stopped early once closed the shared stream
    of batches (tqdm's `yield from` passes the close on), and each later stage trained on nothing."""
    from squeezenet.checkpoint import load_checkpoint
    from squeezenet.compress import sgd_stage, training_batches

    model, meta = load_checkpoint(ckpt)
    batches = training_batches(meta, batch_size=4)
    for _ in range(3):
        before = model.features[0].weight.detach().clone()
        sgd_stage(model, batches, 2, 0.01, lambda: None)
        assert not torch.equal(before, model.features[0].weight)
