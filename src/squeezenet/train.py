"""The trainer, shaped as torchvision's reference script: build the data, the model and the
loaders, then ``train_one_epoch`` and ``evaluate`` per epoch, with ``RunDir`` owning every file.

data -> model -> loop -> artifacts in ``--out``: config.json, metrics.jsonl/.csv, loss.png,
accuracy.png, confusion.png, best/last.safetensors, last.state.pt (for ``--resume``).
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from . import distributed as dist
from .config import TrainConfig, pool_layers
from .data import DEFAULT_AUGMENT, ImageSet, Loader, load_dataset, train_val_split
from .device import autocast, pick_device
from .errors import SqueezeNetError
from .files import crash_point
from .optim import create_optimizer
from .rundir import Progress, RunDir, diverged_message
from .runs import Preprocess, RunMeta
from .schedule import TimeBudget, ema_with_warmup, lr_factor
from .zoo import create_model, load_torchvision_weights, load_weights

log = logging.getLogger("squeezenet")


class Interrupted(SqueezeNetError):
    """SIGTERM or SIGINT stopped training after a step; the state to resume from is saved."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Data:
    train: ImageSet
    val: ImageSet | None
    classes: list[str]
    channels: int
    image_size: int
    mean: tuple
    std: tuple
    resize_size: int | None = None  # folders stored larger than the input (--crop-pct)


def build_data(cfg: TrainConfig) -> Data:
    """Train/val carved from the training split (stratified, seeded); the test split is eval's alone."""
    split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    resize = None
    if cfg.dataset == "folder" and cfg.crop_pct < 1:
        resize = round((cfg.image_size or 224) / cfg.crop_pct)
    full = load_dataset(cfg.dataset, "train", cfg.data_dir, cfg.image_size, seed=split_seed,
                        strict=cfg.strict, size=cfg.train_size, resize_size=resize)
    train_set, val_set = train_val_split(full, cfg.val_fraction, split_seed)
    return Data(train_set, val_set, full.classes, full.channels, full.image_size, full.mean, full.std, resize)


def model_options(cfg: TrainConfig, data: Data) -> dict:
    kwargs = dict(num_classes=len(data.classes), in_channels=data.channels, dropout=cfg.dropout,
                  bypass=cfg.bypass, batch_norm=cfg.batch_norm, small_input=cfg.small_input,
                  final_relu=cfg.final_relu, zero_init_residual=cfg.zero_init_residual)
    optional = {"squeeze_ratio": cfg.squeeze_ratio, "stem_channels": cfg.stem_channels,
                "pool_after": None if cfg.pool_after is None else pool_layers(cfg.pool_after)}
    return {**kwargs, **{k: v for k, v in optional.items() if v is not None}}  # as older checkpoints


def build_model(cfg: TrainConfig, data: Data) -> torch.nn.Module:
    model = create_model(cfg.arch, **model_options(cfg, data))
    if cfg.weights:
        report = (load_torchvision_weights(model, cfg.arch) if cfg.weights == "torchvision"
                  else load_weights(model, cfg.weights))
        for note in report.notes():
            log.info("weights: %s", note)
    if data.image_size < model.min_input_size:
        raise SqueezeNetError(f"{cfg.arch} needs images of at least {model.min_input_size} px, the "
                              f"data is {data.image_size} px: pass --image-size "
                              f"{model.min_input_size} or more, or --small-input")
    if cfg.crop_pad is not None and cfg.crop_pad >= data.image_size:  # reflection padding needs pad < size
        raise SqueezeNetError(f"--crop-pad {cfg.crop_pad} must be smaller than the {data.image_size} px images")
    return model


def build_loaders(cfg: TrainConfig, data: Data, ddp, device) -> tuple[Loader, Loader | None]:
    batch = ddp.local_batch(cfg.batch_size)
    augment = DEFAULT_AUGMENT[cfg.dataset] if cfg.augment == "auto" else cfg.augment
    # Training crops from the stored images (larger than the input with --crop-pct); on a GPU the
    # uint8 set lives there and batches are made there, when it fits in a quarter of its memory.
    resident = device.type == "cuda" and _fits_on(device, data.train)
    train_loader = Loader(data.train.cropped(None), batch, shuffle=True, augment=augment, seed=cfg.seed,
                          drop_last=len(data.train) >= 2 * cfg.batch_size,
                          sampler=ddp.sampler(data.train, shuffle=True, seed=cfg.seed),
                          channels_last=cfg.channels_last, device=device, erase=cfg.erase, crop_pad=cfg.crop_pad,
                          size=data.image_size, rrc_scale=(cfg.rrc_scale, 1.0), resident=resident)
    if len(train_loader) == 0:
        raise SqueezeNetError(f"{len(data.train)} training images are fewer than one batch")
    val_loader = None if data.val is None else Loader(
        data.val, batch * 2, channels_last=cfg.channels_last, device=device, sampler=ddp.eval_sampler(data.val))
    return train_loader, val_loader


def _fits_on(device, data) -> bool:
    if not hasattr(data, "images"):
        return False
    return data.images.numel() < 0.25 * torch.cuda.get_device_properties(device).total_memory


def run_meta(cfg: TrainConfig, data: Data, model_kwargs: dict, augment: str) -> RunMeta:
    return RunMeta(cfg.arch, model_kwargs, list(data.classes),
                   Preprocess(data.image_size, data.channels, tuple(data.mean), tuple(data.std),
                              resize_size=data.resize_size),
                   dataset=cfg.dataset, data_dir=cfg.data_dir, seed=cfg.seed,
                   split_seed=cfg.seed if cfg.split_seed is None else cfg.split_seed,
                   val_fraction=cfg.val_fraction, train_size=cfg.train_size, tta=cfg.tta,
                   tta_shift=cfg.tta_shift, augment=augment, crop_pad=cfg.crop_pad)


class Diverged(Exception):
    def __init__(self, step: int, loss: float):
        self.step, self.loss = step, loss


def train_one_epoch(model, loader, optimizer, *, net=None, scheduler=None, scaler=None, amp=None,
                    label_smoothing: float = 0.0, grad_clip: float = 0.0, ema=None, budget=None, ddp=None,
                    max_steps: int | None = None, after_step=None, should_stop=None, sums: dict | None = None,
                    first_step: int = 0, epoch: int | None = None, of: str = "", progress: bool = False,
                    frozen=()) -> dict:
    """Optimizer steps over ``loader`` (until ``max_steps``, the budget, or ``should_stop()``).
    ``net`` is the module to call (a DDP wrapper of ``model``); ``after_step`` runs after each
    step (e.g. compress's projection onto the pruned weights); ``frozen`` modules stay in eval
    mode. Returns the epoch's running sums (``loss_sum``, ``correct``, ``seen``, ``seconds``, the
    first step's ``lr``), ``steps`` done and whether it ``stopped``. ``sums`` and ``first_step``
    continue an interrupted epoch."""
    net = net if net is not None else model
    net.train()
    for m in frozen:
        m.eval()
    device = next(model.parameters()).device
    # The host waits for the device only every `every` steps (loss check, clock, logging): on a
    # GPU a sync per step would leave it idle; on a CPU it costs nothing and stops a NaN at once.
    every = 1 if device.type == "cpu" else 50
    sums = sums or {}
    loss_sum = torch.tensor(sums.get("loss_sum", 0.0), dtype=torch.float64, device=device)
    correct = torch.tensor(sums.get("correct", 0), dtype=torch.long, device=device)
    bad = torch.zeros((), dtype=torch.bool, device=device)
    seen, before = int(sums.get("seen", 0)), float(sums.get("seconds", 0.0))
    lr = sums.get("lr", optimizer.param_groups[0]["lr"])
    spent_before = budget.spent if budget else 0.0
    amp = amp or autocast("off", device)
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    t0, step, stopped = time.perf_counter(), first_step, False
    bar = tqdm(loader, desc="" if epoch is None else f"epoch {epoch + 1}{of}", leave=False, unit="batch",
               disable=not progress, dynamic_ncols=True, initial=first_step,
               total=len(loader) if hasattr(loader, "__len__") else None)
    for step, (x, y) in enumerate(bar, start=first_step):
        with amp():
            logits = net(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        bad |= ~torch.isfinite(loss)
        synced = (step + 1) % every == 0
        if (synced or every == 1) and bad.item():  # stop before a NaN/inf step poisons the weights
            raise Diverged(step, loss.item())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        if budget and (synced or ddp is None or not ddp.enabled):
            # every rank takes rank 0's clock, so all change lr and stop at the same step
            budget.spent = _clock(ddp, device, spent_before, t0)
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        if after_step is not None:
            after_step()
        loss_sum += loss.detach().double() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        if progress and step % max(10, every) == 0:
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.3g}")
        if epoch is not None:
            crash_point(f"epoch{epoch + 1}-step{step + 1}")
        if (budget and budget.done) or (max_steps and step + 1 - first_step >= max_steps):
            break
        if should_stop is not None and (synced or every == 1) and should_stop():
            stopped = True
            break
    if bad.item():
        raise Diverged(step, float("nan"))
    seconds = before + time.perf_counter() - t0
    if budget:  # the epoch's own time, so that spent == the history's sum of seconds
        budget.spent = _clock(ddp, device, spent_before, t0)
    return {"loss_sum": loss_sum, "correct": correct, "seen": seen, "seconds": seconds, "lr": lr,
            "steps": step + 1, "stopped": stopped}


def _clock(ddp, device, spent_before: float, t0: float) -> float:
    """Seconds of training so far, once the device has caught up; rank 0's under DDP."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = spent_before + time.perf_counter() - t0
    return ddp.broadcast_float(seconds) if ddp is not None else seconds


@contextmanager
def stop_signals():
    """SIGTERM (Slurm, Kubernetes) and SIGINT (Ctrl-C) ask training to stop after the current
    step instead of killing it; yields the list the handler appends the signal number to."""
    caught: list[int] = []
    handler = lambda signum, _frame: caught.append(signum)  # noqa: E731
    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield caught
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def train(cfg: TrainConfig) -> dict:
    """Train per ``cfg``; returns the final epoch's metrics plus ``out``."""
    cfg.validate()
    ddp = dist.setup(cfg.device)
    device = ddp.device if ddp.enabled else pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    with ddp.main_first():  # rank 0 decodes into the cache; the others then map it
        data = build_data(cfg)
    model = build_model(cfg, data)
    train_loader, val_loader = build_loaders(cfg, data, ddp, device)
    if ddp.enabled and cfg.freeze_features:
        raise SqueezeNetError("--freeze-features is not supported under torchrun: fine-tune in one process")
    run = RunDir.open(cfg, writer=ddp.is_main, barrier=ddp.barrier)
    try:
        return _fit(cfg, ddp, device, data, model, train_loader, val_loader, run)
    finally:
        run.close()
        ddp.cleanup()


def _fit(cfg, ddp, device, data, model, train_loader, val_loader, run: RunDir) -> dict:
    model = model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    if ddp.enabled and device.type == "cuda" and cfg.batch_norm:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = ddp.wrap(model)
    ema = AveragedModel(model, multi_avg_fn=ema_with_warmup(cfg.ema), use_buffers=True) if cfg.ema else None
    optimizer = create_optimizer(cfg, model)
    budget = None if cfg.time_budget is None else TimeBudget(cfg.time_budget, cfg.schedule,
                                                            cfg.warmup_epochs / cfg.epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, budget.factor if budget else lr_factor(
        cfg.schedule, cfg.epochs, cfg.warmup_epochs, len(train_loader)))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    objects = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler, "ema": ema}
    run.check_training_images(data.train, resumed=bool(cfg.resume))
    progress = run.resume(objects, budget) if cfg.resume else Progress()
    meta = run_meta(cfg, data, model_options(cfg, data), train_loader.augment)
    end = _announce(cfg, ddp, device, data, model, progress, budget, run)
    say = log.info if ddp.is_main else log.debug
    of = "" if budget else f"/{cfg.epochs}"
    with stop_signals() as caught:
        for epoch in range(progress.epoch, end):
            if progress.step == 0:  # every draw of an epoch is fixed by (seed, epoch): resume is exact
                torch.manual_seed(cfg.seed * 1_000_003 + epoch)
            train_loader.set_epoch(epoch, start=progress.step)
            frozen = _freeze(cfg, model, epoch)
            try:
                stats = train_one_epoch(
                    model, train_loader, optimizer, net=net, scheduler=scheduler, scaler=scaler,
                    amp=autocast(cfg.amp, device), label_smoothing=cfg.label_smoothing, grad_clip=cfg.grad_clip,
                    ema=ema, budget=budget, ddp=ddp, sums=progress.partial, first_step=progress.step,
                    should_stop=lambda: ddp.any(bool(caught)), epoch=epoch, of=of, frozen=frozen,
                    progress=ddp.is_main and _progress_enabled(cfg))
            except Diverged as d:
                raise SqueezeNetError(diverged_message(cfg, run.path, epoch, d.step, d.loss)) from None
            if stats["stopped"]:
                _stop(cfg, run, progress, objects, budget, epoch, stats, caught[0] if caught else signal.SIGTERM)
            record, val = _epoch_record(cfg, ddp, ema or model, val_loader, data, epoch, stats)
            say(_epoch_line(record, val, of))
            progress.step, progress.partial = 0, {}
            run.end_epoch(progress, record, val, (ema.module if ema else model), meta)
            progress.epoch = epoch + 1
            run.save_state(progress, objects, budget)
            ddp.barrier()
            if budget and budget.done:
                break
    if progress.history and ddp.is_main:
        say(run.finish(progress, f"{cfg.arch} on {cfg.dataset}", data.classes))
    return {**(progress.history[-1] if progress.history else {}), "out": str(run.path)}


def _freeze(cfg, model, epoch: int) -> tuple:
    """--freeze-features: the features take no gradient (and keep their BatchNorm statistics)
    until --unfreeze-after's epoch; returns the modules to keep in eval mode."""
    frozen = cfg.freeze_features and (cfg.unfreeze_after is None or epoch < cfg.unfreeze_after)
    model.features.requires_grad_(not frozen)
    return (model.features,) if frozen else ()


def _announce(cfg, ddp, device, data, model, progress: Progress, budget, run: RunDir) -> int:
    """Log what is about to train; returns the epoch to stop before."""
    say = log.info if ddp.is_main else log.debug
    if progress.epoch == 0 and progress.step == 0:
        params = sum(p.numel() for p in model.parameters())
        say(f"{cfg.arch}: {params:,} parameters | {cfg.dataset}: {len(data.train):,} train / "
            f"{len(data.val) if data.val is not None else 0:,} val images of {data.channels}x"
            f"{data.image_size}x{data.image_size}, {len(data.classes)} classes | {device} "
            f"x{ddp.world_size} | out {run.path}")
        if data.val is None:
            say("--val-fraction 0: no validation split, so nothing picks a best epoch; best.safetensors "
                "is the last epoch's weights. Measure it with `squeezenet eval --split test`")
    if budget is not None and budget.done:
        say(f"{run.path} already spent its {cfg.time_budget:g} s budget: nothing to do "
            f"(pass a larger --time-budget to train longer)")
        return progress.epoch
    if budget is None and progress.epoch >= cfg.epochs:
        say(f"{run.path} already finished {progress.epoch} of {cfg.epochs} epochs: nothing to do "
            f"(pass a larger --epochs to train longer)")
    end = cfg.epochs if budget is None else sys.maxsize  # a budget, not a count, ends the run
    return end if cfg.stop_after is None else min(end, progress.epoch + cfg.stop_after)


def _epoch_record(cfg, ddp, eval_model, val_loader, data, epoch: int, stats: dict):
    train_loss, train_acc, seen = ddp.reduce_train(stats["loss_sum"], stats["correct"], stats["seen"])
    module = eval_model.module if isinstance(eval_model, AveragedModel) else eval_model
    # fp32, as `squeezenet eval` scores: the same checkpoint gives the same number in both
    val = None if val_loader is None else ddp.evaluate(module, val_loader, len(data.classes), tta=cfg.tta)
    seconds, lr = stats["seconds"], stats["lr"]
    record = {"epoch": epoch + 1, "train_loss": round(train_loss, 6), "train_acc": round(train_acc, 4),
              **({"val_loss": round(val["loss"], 6), "val_acc": round(val["top1"], 4),
                  "val_top5": round(val["top5"], 4), "val_count": val["count"]} if val
                 else dict.fromkeys(("val_loss", "val_acc", "val_top5", "val_count"))),
              "lr": lr, "images_per_s": round(seen / seconds, 2), "seconds": round(seconds, 3)}
    return record, val


def _epoch_line(record: dict, val, of: str) -> str:
    val_text = (f"val loss {val['loss']:.4f} top-1 {val['top1']:6.2f}% top-5 {val['top5']:6.2f}%"
                if val else "no val split")
    return (f"epoch {record['epoch']:>3}{of}  train loss {record['train_loss']:.4f} acc {record['train_acc']:6.2f}%  "
            f"{val_text}  lr {record['lr']:.3g}  {record['images_per_s']:,.0f} img/s  {record['seconds']:.1f}s")


def _stop(cfg, run, progress: Progress, objects, budget, epoch: int, stats: dict, signum: int):
    """Save the interrupted epoch's state (the batch order is deterministic: the step count is
    enough), say how to resume, and end with 143 (SIGTERM) or 130 (SIGINT)."""
    progress.step = stats["steps"]
    progress.partial = {"loss_sum": float(stats["loss_sum"]), "correct": int(stats["correct"]),
                        "seen": stats["seen"], "seconds": stats["seconds"], "lr": stats["lr"]}
    run.save_state(progress, objects, budget, mid_epoch=True)
    name = signal.Signals(signum).name
    raise Interrupted(f"stopped by {name} at epoch {epoch + 1}, step {progress.step}; the state is saved. "
                      f"Continue with: squeezenet train --resume {run.path}", 128 + signum)


def _progress_enabled(cfg: TrainConfig) -> bool:
    return sys.stderr.isatty() if cfg.progress is None else cfg.progress
