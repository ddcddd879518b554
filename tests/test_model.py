import pytest
import torch
import torch.nn.functional as F

import squeezenet
from squeezenet import SqueezeNetError, create_model, list_models, load_weights
from squeezenet.model import FIRES, metaparameter_fires

# torchvision's published layout (ANCHORS.md): features.N for the convs/Fire modules, classifier.1.
V10_FIRE_INDICES = [3, 4, 5, 7, 8, 9, 10, 12]
V11_FIRE_INDICES = [3, 4, 6, 7, 9, 10, 11, 12]


def torchvision_keys(fire_indices):
    keys = ["features.0.weight", "features.0.bias"]
    for n in fire_indices:
        for conv in ("squeeze", "expand1x1", "expand3x3"):
            keys += [f"features.{n}.{conv}.weight", f"features.{n}.{conv}.bias"]
    return keys + ["classifier.1.weight", "classifier.1.bias"]


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("arch, classes, expected", [
    ("squeezenet1_0", 1000, 1_248_424), ("squeezenet1_1", 1000, 1_235_496),
    ("squeezenet1_0", 10, 740_554), ("squeezenet1_1", 10, 727_626)])
def test_parameter_counts(arch, classes, expected):
    assert n_params(create_model(arch, num_classes=classes)) == expected


@pytest.mark.parametrize("arch, indices", [("squeezenet1_0", V10_FIRE_INDICES),
                                           ("squeezenet1_1", V11_FIRE_INDICES)])
def test_state_dict_keys_match_torchvision(arch, indices):
    assert list(create_model(arch).state_dict()) == torchvision_keys(indices)


def test_torchvision_layout_loads_strict():
    """A state dict in torchvision's layout (keys and shapes) loads with strict=True."""
    src = create_model("squeezenet1_1")
    dst = create_model("squeezenet1_1")
    dst.load_state_dict(src.state_dict(), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))


def test_initialisation_matches_torchvision():
    torch.manual_seed(0)
    m = create_model("squeezenet1_0")
    final = m.classifier[1].weight
    assert abs(final.std().item() - 0.01) < 0.001  # normal(0, 0.01) on conv10
    conv1 = m.features[0].weight  # kaiming_uniform: bound sqrt(6 / fan_in)
    bound = (6 / (3 * 7 * 7)) ** 0.5
    assert conv1.abs().max().item() <= bound and conv1.abs().max().item() > 0.9 * bound
    assert all(mod.bias.abs().sum() == 0 for mod in m.modules() if isinstance(mod, torch.nn.Conv2d))


@pytest.mark.parametrize("arch, minimum", [("squeezenet1_0", 21), ("squeezenet1_1", 17)])
def test_output_shapes_down_to_minimum(arch, minimum):
    m = create_model(arch, num_classes=7).eval()
    assert m.min_input_size == minimum
    with torch.no_grad():
        for size in (224, 227, 113, 64, minimum):
            assert m(torch.zeros(2, 3, size, size)).shape == (2, 7)
        assert m(torch.zeros(1, 3, 100, 60)).shape == (1, 7)
    with pytest.raises(SqueezeNetError, match=f"minimum input size {minimum}x{minimum}"):
        m(torch.zeros(1, 3, minimum - 1, minimum - 1))


def test_wrong_channel_count_is_a_clear_error():
    m = create_model("squeezenet1_1", in_channels=1)
    with pytest.raises(SqueezeNetError, match=r"expected input of shape \(N, 1, H, W\)"):
        m(torch.zeros(1, 3, 64, 64))


VARIANTS = [
    dict(bypass="simple"), dict(bypass="complex"), dict(batch_norm=True),
    dict(small_input=True), dict(in_channels=1), dict(final_relu=False),
    dict(small_input=True, batch_norm=True, bypass="simple", in_channels=1),
]


@pytest.mark.parametrize("arch", ["squeezenet1_0", "squeezenet1_1"])
@pytest.mark.parametrize("kwargs", VARIANTS, ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()))
def test_every_variant_trains_a_step(arch, kwargs):
    torch.manual_seed(0)
    m = create_model(arch, num_classes=5, **kwargs)
    size = 32 if kwargs.get("small_input") else 64
    x = torch.randn(4, kwargs.get("in_channels", 3), size, size)
    y = torch.tensor([0, 1, 2, 3])
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    before = [p.detach().clone() for p in m.parameters()]
    loss = F.cross_entropy(m(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    changed = sum(not torch.equal(a, p) for a, p in zip(before, m.parameters()))
    assert changed > len(before) // 2


def test_bypass_places_shortcuts_as_in_the_paper():
    simple = create_model("squeezenet1_0", bypass="simple")
    complex_ = create_model("squeezenet1_0", bypass="complex")
    fires = lambda m: [f for f in m.features if isinstance(f, squeezenet.Fire)]
    kinds = lambda m: [type(f.shortcut).__name__ if f.shortcut is not None else None
                       for f in fires(m)]
    assert kinds(simple) == [None, "Identity", None, "Identity", None, "Identity", None, "Identity"]
    assert kinds(complex_) == ["Conv2d", "Identity"] * 4
    assert n_params(simple) == n_params(create_model("squeezenet1_0"))


def test_metaparameter_defaults_equal_v10():
    assert metaparameter_fires() == FIRES
    meta = create_model("squeezenet_meta")
    v10 = create_model("squeezenet1_0")
    assert n_params(meta) == n_params(v10)
    assert list(meta.state_dict()) == list(v10.state_dict())
    # another point in the design space: SR=0.25 doubles every squeeze layer
    assert [s for _, s, _, _ in metaparameter_fires(squeeze_ratio=0.25)] == [32, 32, 64, 64, 96, 96, 128, 128]


def test_squeeze_ratio_resizes_only_the_squeeze_layers():
    squeezes = lambda m: [f.squeeze.out_channels for f in m.features if hasattr(f, "squeeze")]  # noqa: E731
    assert squeezes(create_model("squeezenet1_1", squeeze_ratio=0.125)) == [s for _, s, _, _ in FIRES]
    wide = create_model("squeezenet1_1", num_classes=10, in_channels=1, small_input=True, batch_norm=True,
                        bypass="simple", squeeze_ratio=1 / 6)
    assert squeezes(wide) == [21, 21, 43, 43, 64, 64, 85, 85]
    assert n_params(wide) == 967_390  # the Fashion-MNIST budget is 1M
    assert wide(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(SqueezeNetError, match="squeeze_ratio must be in"):
        create_model("squeezenet1_1", squeeze_ratio=0)


def test_pool_after_moves_the_downsampling_and_keeps_the_weights():
    late = create_model("squeezenet1_1", num_classes=10, in_channels=1, small_input=True, batch_norm=True,
                        bypass="simple", pool_after=("conv1", "fire3", "fire7"))
    base = create_model("squeezenet1_1", num_classes=10, in_channels=1, small_input=True, batch_norm=True,
                        bypass="simple")
    assert n_params(late) == n_params(base)  # pools have no weights: checkpoints stay interchangeable
    sizes, x = {}, torch.randn(1, 1, 28, 28)
    for m in late.features:
        x = m(x)
        if hasattr(m, "squeeze"):
            sizes[len(sizes) + 2] = x.shape[-1]
    assert sizes == {2: 14, 3: 14, 4: 7, 5: 7, 6: 7, 7: 7, 8: 3, 9: 3}  # fire6-7 at 7x7, not 3x3
    assert late(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(SqueezeNetError, match="cannot pool after fire10"):
        create_model("squeezenet1_1", pool_after=("conv1", "fire10"))


def test_stem_channels_resize_conv1_and_fire2_input_only():
    kw = dict(num_classes=10, in_channels=1, small_input=True, batch_norm=True, bypass="simple")
    base, thin = create_model("squeezenet1_1", **kw), create_model("squeezenet1_1", stem_channels=32, **kw)
    assert base.features[0].out_channels == 64 and thin.features[0].out_channels == 32
    assert thin.features[1].num_features == 32 and thin.features[4].squeeze.in_channels == 32
    # conv1 (9 weights per filter, 1 channel), its BN (2) and fire2's squeeze (16 per channel)
    assert n_params(base) - n_params(thin) == 32 * (9 + 2 + 16)
    assert thin(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert create_model("squeezenet1_0", stem_channels=48).features[0].out_channels == 48
    with pytest.raises(SqueezeNetError, match="stem_channels must be at least 1"):
        create_model("squeezenet1_1", stem_channels=0)


def test_registry():
    assert {"squeezenet1_0", "squeezenet1_1", "squeezenet_meta"} <= set(list_models())
    with pytest.raises(SqueezeNetError, match="squeezenet1_0, squeezenet1_1"):
        create_model("squeezenet2_0")


def test_finetune_weights_with_other_class_count(tmp_path):
    src = create_model("squeezenet1_1")  # 1000 classes, like torchvision's file
    path = tmp_path / "squeezenet1_1-b8a52dc0.pth"
    torch.save(src.state_dict(), path)
    m = create_model("squeezenet1_1", num_classes=10)
    report = load_weights(m, path)
    assert report.reinitialised == ["classifier.1.weight", "classifier.1.bias"]
    assert "classifier re-initialised" in report.notes()[0]
    assert torch.equal(m.features[3].squeeze.weight, src.features[3].squeeze.weight)


def test_grayscale_adapts_rgb_weights(tmp_path):
    src = create_model("squeezenet1_1")
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    m = create_model("squeezenet1_1", in_channels=1, weights=path)
    assert torch.allclose(m.features[0].weight, src.features[0].weight.sum(1, keepdim=True))
    gray = torch.rand(1, 1, 64, 64)
    with torch.no_grad():  # a gray image through the adapted net == the RGB image through the original
        assert torch.allclose(m.eval()(gray), src.eval()(gray.expand(1, 3, 64, 64)), atol=1e-5)


def test_incompatible_weights_name_keys_and_shapes(tmp_path):
    path = tmp_path / "v10.pth"
    torch.save(create_model("squeezenet1_0").state_dict(), path)
    with pytest.raises(SqueezeNetError) as e:
        create_model("squeezenet1_1", weights=path)
    msg = str(e.value)
    assert "features.0.weight: file has (96, 3, 7, 7), model has (64, 3, 3, 3)" in msg
    assert "unexpected key" in msg or "missing key" in msg


def test_safetensors_weights_round_trip(tmp_path):
    from safetensors.torch import save_file

    src = create_model("squeezenet1_0", num_classes=3, bypass="complex")
    save_file(src.state_dict(), tmp_path / "w.safetensors")
    m = create_model("squeezenet1_0", num_classes=3, bypass="complex", weights=tmp_path / "w.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), m.state_dict().values()))


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"features.0.weight": torch.zeros(1), "x": _Payload(str(marker))}, path)
    with pytest.raises(SqueezeNetError, match="refusing to load"):
        create_model("squeezenet1_1", weights=path)
    assert not marker.exists()


def test_corrupt_weights_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(SqueezeNetError, match="not a valid safetensors file"):
        create_model("squeezenet1_1", weights=bad)
    with pytest.raises(SqueezeNetError, match="does not exist"):
        create_model("squeezenet1_1", weights=tmp_path / "missing.pth")


def test_zero_init_residual_makes_bypassed_fires_start_as_identity():
    fire3 = lambda m: [f for f in m.features if isinstance(f, squeezenet.Fire)][1]  # noqa: E731
    m = create_model("squeezenet1_1", batch_norm=True, bypass="simple")
    assert fire3(m).shortcut is not None
    x = torch.rand(2, 128, 8, 8)
    assert torch.equal(fire3(m)(x), x)
    plain = create_model("squeezenet1_1", batch_norm=True, bypass="simple", zero_init_residual=False)
    assert not torch.equal(fire3(plain)(x), x)


def test_tta_views_are_the_mirror_and_reflect_padded_shifts():
    from squeezenet.evaluate import predict_logits, tta_views

    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    assert len(tta_views(x)) == 1 and len(tta_views(x, tta=True)) == 2
    views = tta_views(x, tta=True, shift=1)
    assert len(views) == 6 and all(v.shape == x.shape for v in views)
    assert torch.equal(views[1], x.flip(3))
    # (-1, -1): the content moves down-right by one pixel; row/column 0 mirror row/column 1
    assert torch.equal(views[2][..., 1:, 1:], x[..., :-1, :-1])
    assert torch.equal(views[2][..., 0, 1:], x[..., 1, :-1])
    assert torch.equal(views[4][..., :-1, :-1], x[..., 1:, 1:])  # (+1, +1): up-left
    assert torch.equal(views[5], views[4].flip(3))
    model = lambda v: v.flatten(1)[:, :4]  # noqa: E731  logits = the first pixels
    expected = sum(v.flatten(1)[:, :4] for v in views) / 6
    assert torch.allclose(predict_logits(model, x, tta=True, shift=1), expected)




def test_timm_style_features_head_and_new_classifier():
    model = create_model("squeezenet1_1", num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    features = model.forward_features(x)
    assert features.shape == (2, 512, 3, 3)
    assert torch.allclose(model.forward_head(features), model(x))
    assert model.forward_head(features, pre_logits=True).shape == (2, 512)
    before = model.features[0].weight.clone()
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.num_classes == 3
    assert torch.equal(model.features[0].weight, before)  # only conv10 is new
    assert abs(model.classifier[1].weight.std().item() - 0.01) < 0.005
    with pytest.raises(SqueezeNetError, match="num_classes must be at least 1"):
        model.reset_classifier(0)


def test_list_models_takes_a_pattern():
    assert list_models("squeezenet1_*") == ["squeezenet1_0", "squeezenet1_1"]
    assert list_models("*meta") == ["squeezenet_meta"] and list_models("resnet*") == []


def test_bf16_check_falls_back_when_torchs_private_check_is_gone(monkeypatch):
    from squeezenet import device

    flags = device._cpu_flags()
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert device.native_bf16(torch.device("cpu")) == bool(flags & {"avx512_bf16", "amx_bf16"})


def test_a_version_1_checkpoint_still_loads(tmp_path):
    """Metadata as the trainer wrote it before RunMeta was versioned: no version, no stratified flag."""
    import json

    from safetensors.torch import save_file

    from squeezenet.checkpoint import FORMAT, load_checkpoint
    from squeezenet.zoo import create_model

    model = create_model("squeezenet1_1", num_classes=3, small_input=True)
    old = {"arch": "squeezenet1_1", "model_kwargs": {"num_classes": 3, "small_input": True},
           "class_names": ["a", "b", "c"],
           "preprocess": {"image_size": 32, "in_channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3,
                          "resize": "shorter side to image_size, centre crop"},
           "dataset": "folder", "data_dir": "photos", "seed": 7, "val_fraction": 0.1, "train_size": None,
           "tta": True, "tta_shift": 0, "augment": "flip", "crop_pad": 4}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "best.safetensors"),
              metadata={"format": FORMAT, **{k: json.dumps(v) for k, v in old.items()}})
    loaded, meta = load_checkpoint(tmp_path / "best.safetensors")
    assert meta.version == 1 and meta.split_seed == 7 and meta.stratified is False  # the split it was trained with
    assert meta.class_names == ["a", "b", "c"] and meta.preprocess.image_size == 32 and meta.augment == "flip"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
