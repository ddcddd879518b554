"""Per-layer table for ``squeezenet info``: output shape, parameters, multiply-adds."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .model import Fire, SqueezeNet

# AlexNet (torchvision): the paper's point of comparison.
ALEXNET = {"params": 61_100_840, "macs": 0.714e9, "mb": 233.1}


@dataclass
class Row:
    name: str
    shape: tuple[int, ...]
    params: int
    macs: int


def _conv_macs(m: nn.Conv2d, out: torch.Tensor) -> int:
    k = m.kernel_size[0] * m.kernel_size[1]
    return out.shape[1] * out.shape[2] * out.shape[3] * (m.in_channels // m.groups) * k


def _layer_names(model: SqueezeNet) -> list[tuple[str, nn.Module]]:
    names, pools, fires = [], 0, iter(model.fire_names)
    for m in model.features:
        if isinstance(m, Fire):
            names.append((next(fires), m))
        elif isinstance(m, nn.MaxPool2d):
            pools += 1
            names.append((f"maxpool{pools}", m))
        elif isinstance(m, nn.Conv2d):
            names.append(("conv1", m))
        elif isinstance(m, nn.BatchNorm2d):
            names.append(("conv1_bn", m))
    names += [("conv10", model.classifier[1]), ("avgpool", model.classifier[3])]
    return names


def summarize(model: SqueezeNet, input_size: int = 224) -> list[Row]:
    rows: list[Row] = []
    layers = _layer_names(model)
    macs: dict[int, int] = {}

    def count(m, _inp, out):
        macs[id(m)] = macs.get(id(m), 0) + _conv_macs(m, out)

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d)]
    outputs = {}
    hooks += [m.register_forward_hook(lambda m, i, o, n=n: outputs.__setitem__(n, o.shape))
              for n, m in layers]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, model.in_channels, input_size, input_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    for name, m in layers:
        convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
        rows.append(Row(name, tuple(outputs[name][1:]), sum(p.numel() for p in m.parameters()),
                        sum(macs.get(id(c), 0) for c in convs)))
    return rows


def format_info(arch: str, model: SqueezeNet, input_size: int) -> tuple[str, dict]:
    rows = summarize(model, input_size)
    params = sum(p.numel() for p in model.parameters())
    macs = sum(r.macs for r in rows)
    mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
    lines = [f"{arch}  input {model.in_channels}x{input_size}x{input_size}  "
             f"minimum input {model.min_input_size}x{model.min_input_size}",
             f"{'layer':<10} {'output':>16} {'params':>11} {'mult-adds':>14}"]
    for r in rows:
        lines.append(f"{r.name:<10} {'x'.join(map(str, r.shape)):>16} {r.params:>11,} {r.macs:>14,}")
    lines.append(f"{'total':<10} {'':>16} {params:>11,} {macs:>14,}")
    lines.append(f"parameters {params:,} ({params / 1e6:.3f} M); multiply-adds {macs / 1e9:.3f} G; "
                 f"fp32 size {mb:.2f} MB")
    lines.append(f"vs AlexNet (61.1 M params, 0.71 G mult-adds at 224, 233 MB): "
                 f"{ALEXNET['params'] / params:.0f}x fewer parameters, "
                 f"{ALEXNET['mb'] / mb:.0f}x smaller")
    summary = {"arch": arch, "input_size": input_size, "params": params, "macs": macs,
               "size_mb": round(mb, 3), "min_input_size": model.min_input_size,
               "layers": [r.__dict__ for r in rows]}
    return "\n".join(lines), summary

