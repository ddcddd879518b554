"""Muon for SqueezeNet's hidden convolutions, SGD with Nesterov momentum for everything else.

Muon (Jordan et al., 2024; the optimizer of the airbench CIFAR-10 speed records) replaces each
hidden weight matrix's momentum update by its nearest semi-orthogonal matrix, computed with a few
Newton-Schulz iterations. ``torch.optim.Muon`` implements it for 2-D parameters only and rejects
4-D conv filters; this module exists to apply it to filters viewed as (out, in x kh x kw)
matrices, as airbench94_muon does. Its Newton-Schulz routine is PyTorch's, op for op (a test
holds the two optimizers equal to the bit), because PyTorch's is private.
"""
from __future__ import annotations

import math

import torch
from torch.optim.sgd import sgd as sgd_step

from .device import native_bf16
from .model import Fire

# Keller Jordan's quintic (https://kellerjordan.github.io/posts/muon/), as torch.optim.Muon uses it.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
DEFAULT_NS_STEPS = 5
EPS = 1e-7


def orthogonalize(g: torch.Tensor, coefficients=NS_COEFFICIENTS, steps: int = DEFAULT_NS_STEPS,
                  eps: float = EPS, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """About the nearest semi-orthogonal matrix to ``g`` (2-D): ``steps`` Newton-Schulz iterations
    in ``dtype``, which leave its singular values near 1 (in about [0.5, 1.5], which does not hurt)."""
    a, b, c = coefficients
    x = g.to(dtype)
    if g.size(0) > g.size(1):
        x = x.T
    x.div_(x.norm().clamp(min=eps))  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if g.size(0) > g.size(1) else x


def muon_filters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The Fire modules' squeeze and expand filters: the hidden layers. conv1 (a handful of input
    channels) and conv10 (the classifier) stay on SGD, as Muon's authors advise for input and
    output layers; so does complex bypass's 1x1 shortcut, which no BatchNorm follows, so that
    renormalising it would change what the network computes."""
    return [conv.weight for m in model.modules() if isinstance(m, Fire)
            for conv in (m.squeeze, m.expand1x1, m.expand3x3)]


class MuonSGD(torch.optim.Optimizer):
    """One optimizer, two update rules, chosen per parameter group by its ``muon`` flag.

    ``muon=True`` groups (4-D conv filters): Nesterov momentum ``B = mu B + g``, update
    ``orthogonalize(g + mu B)`` scaled by ``sqrt(max(1, rows / cols))`` so that every filter
    moves by the same relative amount (Keller Jordan's scaling). With ``normalize=True`` each
    filter tensor is first rescaled to norm ``sqrt(out_channels)``, as in airbench94_muon: a
    filter followed by BatchNorm is scale-invariant, so this pins the step's relative size to the
    learning rate and replaces weight decay; ``weight_decay`` is then ignored for the group.
    Without it, weight decay is decoupled (``p -= lr * wd * p``), as in ``torch.optim.Muon``.

    ``muon=False`` groups: ``torch.optim.SGD``'s own functional step (``torch.optim.sgd.sgd``, its
    foreach path), Nesterov momentum and L2 weight decay. Both rules start the momentum buffer at
    the first gradient.

    One optimizer rather than two, so that the LR scheduler, GradScaler and the
    checkpoint's single optimizer state serve it unchanged.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 muon: bool = False, normalize: bool = True, ns_steps: int = DEFAULT_NS_STEPS,
                 ns_dtype: torch.dtype | None = None):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, muon=muon,
                        normalize=normalize, ns_steps=ns_steps)
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype  # None: bf16 where the device computes it natively, else fp32
        for group in self.param_groups:
            if group["muon"] and any(p.ndim < 2 for p in group["params"]):
                raise ValueError("Muon groups take weight matrices or conv filters (2-D or more)")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            bufs = [self.state[p].get("momentum_buffer") for p in params]
            if group["muon"]:
                self._muon_step(group, params, bufs, self.ns_dtype)
            else:
                sgd_step(params, [p.grad for p in params], bufs, weight_decay=group["weight_decay"],
                         momentum=group["momentum"], lr=group["lr"], dampening=0.0,
                         nesterov=group["momentum"] > 0, maximize=False)
            for p, buf in zip(params, bufs):
                if buf is not None:  # sgd() creates the first step's buffers in the list
                    self.state[p]["momentum_buffer"] = buf
        return loss

    @staticmethod
    def _muon_step(group: dict, params: list, bufs: list, ns_dtype: torch.dtype | None) -> None:
        lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
        for i, p in enumerate(params):
            g = p.grad
            if bufs[i] is None:
                bufs[i] = g.clone()
            else:
                bufs[i].mul_(mu).add_(g)
            g = g.add(bufs[i], alpha=mu)  # Nesterov
            if group["normalize"]:
                p.mul_(math.sqrt(p.shape[0]) / p.norm().clamp(min=EPS))
            elif wd:
                p.mul_(1 - lr * wd)
            matrix = g.reshape(p.shape[0], -1)
            # Newton-Schulz in bf16 as Muon's authors run it, but only where bf16 is native: a CPU
            # without it emulates bf16 matmuls ~30x slower than fp32 (benchmarks/RESULTS.md#muon-dtype)
            dtype = ns_dtype or (torch.bfloat16 if native_bf16(p.device) else torch.float32)
            update = orthogonalize(matrix, NS_COEFFICIENTS, group["ns_steps"], EPS, dtype)
            scale = math.sqrt(max(1.0, matrix.shape[0] / matrix.shape[1]))
            p.add_(update.view_as(p).to(p.dtype), alpha=-lr * scale)


def create_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer ``cfg`` (a TrainConfig) names. No weight decay on biases and BatchNorm
    (standard: it only hurts them); with ``muon``, the Fire filters on Muon and the rest on SGD."""
    hidden = muon_filters(model) if cfg.optimizer == "muon" else []
    on_muon = {id(p) for p in hidden}
    decay = [p for p in model.parameters() if p.ndim > 1 and id(p) not in on_muon and p.requires_grad]
    no_decay = [p for p in model.parameters() if p.ndim <= 1 and p.requires_grad]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "muon":  # the SGD groups first: the progress bar shows group 0's lr
        groups.append({"params": [p for p in hidden if p.requires_grad], "muon": True, "lr": cfg.muon_lr,
                       "momentum": cfg.muon_momentum, "weight_decay": cfg.weight_decay,
                       "normalize": cfg.batch_norm, "ns_steps": cfg.muon_ns_steps})
        return MuonSGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)
