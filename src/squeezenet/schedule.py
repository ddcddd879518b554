"""Learning-rate schedules (per step, or per second of a time budget) and the weights' EMA."""

from __future__ import annotations

import math

import torch


def decay(schedule: str, t: float) -> float:
    """The schedule after the warm-up, at fraction ``t`` of the way through it."""
    t = min(max(t, 0.0), 1.0)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "onecycle":  # linear decay to zero after the warm-up peak
        return 1 - t
    if schedule == "step":  # /10 at 50% and 75%
        return 0.1 ** ((t >= 0.5) + (t >= 0.75))
    return 1.0


def lr_factor(schedule: str, epochs: int, warmup_epochs: float, steps_per_epoch: int):
    """LR multiplier per optimizer step: linear warm-up, then the schedule."""
    total = epochs * steps_per_epoch
    warmup = min(int(warmup_epochs * steps_per_epoch), total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return decay(schedule, (step - warmup) / max(1, total - warmup))

    return factor


class TimeBudget:
    """``--time-budget``: the learning-rate schedule runs on seconds of training, not steps.

    Budgeted training (Li, Yumer and Ramanan, ICLR 2020): a schedule that reaches zero exactly when
    the budget ends beats a fixed-epoch schedule cut short, and on a machine whose speed drifts a
    fixed number of epochs either overruns the budget or leaves part of it unused. Progress is
    spent / seconds; the warm-up keeps the recipe's share (warmup_epochs / epochs) of it. The
    price: the step at which each learning rate is used depends on the machine's speed, so two
    runs are not bit-identical (resume continues the spent time).
    """

    def __init__(self, seconds: float, schedule: str, warmup_share: float):
        self.seconds, self.spent = seconds, 0.0
        self.schedule = schedule
        self.warmup = min(warmup_share, 0.5)

    @property
    def done(self) -> bool:
        return self.spent >= self.seconds

    def factor(self, _step: int = 0) -> float:
        p = self.spent / self.seconds
        if p < self.warmup:
            return max(p / self.warmup, 0.01)  # never an all-zero first step
        return decay(self.schedule, (p - self.warmup) / (1 - self.warmup))


def ema_with_warmup(decay: float):
    """``AveragedModel``'s update for an EMA whose decay ramps up as min(decay, (1 + n) / (10 + n))
    over its n updates so far (the warm-up of timm's ModelEmaV2/V3). PyTorch's own
    ``get_ema_multi_avg_fn`` uses ``decay`` from the first step, so after n steps the average
    still holds decay**n of the first step's near-random weights."""

    @torch.no_grad()
    def update(ema_params: list, params: list, n_averaged: torch.Tensor) -> None:
        n = int(n_averaged)  # AveragedModel groups tensors by dtype; every call of one step sees n
        d = min(decay, (1 + n) / (10 + n))
        for e, p in zip(ema_params, params):
            if e.is_floating_point():
                e.lerp_(p, 1 - d)
            else:  # BatchNorm's num_batches_tracked: take the model's count
                e.copy_(p)

    return update
