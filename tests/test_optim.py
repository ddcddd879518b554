import math

import pytest
import torch
from safetensors.torch import load_file

from squeezenet.config import make_config
from squeezenet.optim import MuonSGD, create_optimizer, muon_filters
from squeezenet.train import train
from squeezenet.zoo import create_model

QUIET = lambda *a, **k: None  # noqa: E731


def _steps(opt, params, grads):
    for g in grads:
        for p, gp in zip(params, g):
            p.grad = gp.clone()
        opt.step()


def test_sgd_groups_follow_torch_sgd_with_nesterov_and_weight_decay():
    torch.manual_seed(0)
    start = torch.randn(5, 3)
    ours, ref = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    grads = [[torch.randn(5, 3)] for _ in range(4)]
    _steps(MuonSGD([ours], lr=0.1, momentum=0.9, weight_decay=1e-2), [ours], grads)
    _steps(torch.optim.SGD([ref], lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2), [ref], grads)
    assert torch.allclose(ours, ref, atol=1e-6)


@pytest.mark.parametrize("shape", [(8, 24), (24, 8)])
def test_muon_groups_without_normalisation_follow_torch_muon(shape):
    # torch.optim.Muon keeps an EMA momentum buffer, ours a sum: they differ by powers of
    # (1 - momentum), which Newton-Schulz divides out. With momentum 0.5 that factor is a power of
    # two, exact in its bf16 arithmetic too, so the two optimizers agree to the bit.
    torch.manual_seed(0)
    start = torch.randn(shape)
    ours, ref = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    grads = [[torch.randn(shape)] for _ in range(3)]
    _steps(MuonSGD([ours], lr=0.02, momentum=0.5, weight_decay=0.1, muon=True, normalize=False,
                   ns_dtype=torch.bfloat16), [ours], grads)
    _steps(torch.optim.Muon([ref], lr=0.02, momentum=0.5, weight_decay=0.1, nesterov=True,
                            adjust_lr_fn="original"), [ref], grads)
    assert (ours - start).abs().max() > 0.01  # three steps of 0.02 x a semi-orthogonal matrix
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("native", [False, True])
def test_newton_schulz_runs_in_bf16_only_where_it_is_native(monkeypatch, native):
    # Emulated bf16 matmuls on a CPU without AVX512-BF16 or AMX cost ~30x fp32's: Muon would
    # spend most of a training step orthogonalising.
    import squeezenet.optim as optim

    monkeypatch.setattr(optim, "native_bf16", lambda device: native)
    torch.manual_seed(0)
    start, grad = torch.randn(16, 8, 3, 3), torch.randn(16, 8, 3, 3)
    after = {}
    for dtype in (None, torch.float32, torch.bfloat16):
        w = torch.nn.Parameter(start.clone())
        w.grad = grad.clone()
        MuonSGD([w], lr=0.1, momentum=0.0, muon=True, ns_dtype=dtype).step()
        after[dtype] = w.detach()
    assert torch.equal(after[None], after[torch.bfloat16 if native else torch.float32])
    assert not torch.equal(after[torch.float32], after[torch.bfloat16])
    assert torch.allclose(after[torch.float32], after[torch.bfloat16], atol=0.02)


def test_muon_step_on_conv_filters_is_orthogonalised_and_normalised():
    torch.manual_seed(0)
    start = 10 * torch.randn(16, 8, 3, 3)
    w = torch.nn.Parameter(start.clone())
    w.grad = torch.randn_like(w)
    MuonSGD([w], lr=0.1, momentum=0.0, muon=True, normalize=True).step()
    # The filters are first rescaled to norm sqrt(16) = 4, then moved by 0.1 x an approximately
    # semi-orthogonal (16, 72) matrix: Newton-Schulz's quintic leaves its singular values in
    # about [0.5, 1.5] rather than exactly 1.
    step = (w.detach() - start * (4 / start.norm())).reshape(16, -1) / -0.1
    s = torch.linalg.svdvals(step)
    assert s.min() > 0.4 and s.max() < 1.6, s
    assert math.isclose(w.detach().norm().item(), 4.0, rel_tol=0.1)


def test_muon_refuses_vectors():
    with pytest.raises(ValueError, match="2-D or more"):
        MuonSGD([torch.nn.Parameter(torch.zeros(4))], lr=0.1, muon=True)


def test_make_optimizer_puts_only_fire_filters_on_muon():
    model = create_model("squeezenet1_1", num_classes=10, in_channels=1, batch_norm=True, small_input=True)
    opt = create_optimizer(make_config({"optimizer": "muon", "batch_norm": True}), model)
    muon = [g for g in opt.param_groups if g.get("muon")]
    assert len(muon) == 1 and muon[0]["lr"] == 0.05 and muon[0]["momentum"] == 0.6
    assert muon[0]["ns_steps"] == 5
    three = create_optimizer(make_config({"optimizer": "muon", "muon_ns_steps": 3}), model)
    assert [g["ns_steps"] for g in three.param_groups if g.get("muon")] == [3]
    hidden = {id(p) for p in muon[0]["params"]}
    assert hidden == {id(p) for p in muon_filters(model)} and len(hidden) == 24  # 8 Fires x 3 convs
    assert id(model.features[0].weight) not in hidden  # conv1
    assert id(model.classifier[1].weight) not in hidden  # conv10
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    complex_ = create_model("squeezenet1_1", num_classes=10, bypass="complex", batch_norm=True)
    shortcuts = {id(m.shortcut.weight) for m in complex_.modules()
                 if isinstance(getattr(m, "shortcut", None), torch.nn.Conv2d)}
    assert shortcuts and not shortcuts & {id(p) for p in muon_filters(complex_)}  # no BN after them


def test_muon_trains_and_resumes_exactly(tmp_path):
    base = {"epochs": 3, "train_size": 200, "batch_size": 45, "progress": False, "optimizer": "muon",
            "batch_norm": True}
    a = train(make_config({**base, "out": str(tmp_path / "straight")}))
    train(make_config({**base, "out": str(tmp_path / "split"), "stop_after": 1}))
    b = train(make_config({"resume": str(tmp_path / "split"), "progress": False}))
    assert a["val_acc"] == b["val_acc"]
    x, y = load_file(tmp_path / "straight" / "last.safetensors"), load_file(tmp_path / "split" / "last.safetensors")
    assert all(torch.equal(x[k], y[k]) for k in x)
