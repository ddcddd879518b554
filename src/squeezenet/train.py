"""The trainer: one loop a newcomer can read top to bottom (``train``), configured by plain values.

data -> model -> loop -> artifacts in ``out``: config.json, metrics.jsonl/.csv, loss.png,
accuracy.png, confusion.png, best/last.safetensors, last.state.pt (for ``--resume``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from . import distributed as dist
from .checkpoint import crash_point, load_state, save_checkpoint, save_state, write_text_atomic
from .data import DATASETS, Loader, load_dataset, train_val_split
from .errors import SqueezeNetError, UsageError
from .evaluate import MAX_TTA_SHIFT
from .model import FIRES, whiten_stem_
from .optim import DEFAULT_NS_STEPS, MuonSGD, muon_filters
from .plots import plot_confusion, plot_curves
from .recipes import RECIPES
from .zoo import create_model, list_models, load_torchvision_weights, load_weights

OPTIMIZERS = ("sgd", "adam", "adamw", "muon")
SCHEDULES = ("onecycle", "cosine", "step", "constant")
AUGMENTS = ("auto", "none", "flip", "crop", "crop-noflip", "rrc")
DEFAULT_AUGMENT = {"shapes": "flip", "noise": "none", "fashion-mnist": "crop", "cifar10": "crop",
                   "folder": "rrc"}


@dataclass
class TrainConfig:
    recipe: str | None = None
    arch: str = "squeezenet1_1"
    dataset: str = "shapes"
    data_dir: str | None = None
    image_size: int | None = None  # None: the data set's own size
    val_fraction: float = 0.1  # 0: the final fit on every training image, no validation split
    epochs: int = 10
    # Seconds of training (eval excluded): the schedule runs on elapsed time instead of steps and the
    # run stops when the budget is spent (TimeBudget); --epochs then sets only the warm-up's share.
    time_budget: float | None = None
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # --optimizer muon: Muon on the Fire modules' filters (optim.MuonSGD) at this peak lr,
    # momentum and number of Newton-Schulz iterations; --lr, --momentum and --weight-decay drive
    # SGD on the rest (conv1, conv10, biases, BatchNorm). airbench94_muon's lr 0.24 is for batches
    # of 2,000; with ours 0.05 won on both data sets (Fashion-MNIST and CIFAR-10 validation,
    # recipes.py). Momentum 0.6 is airbench's; iterations PyTorch's default, 5 (airbench runs 3).
    muon_lr: float = 0.05
    muon_momentum: float = 0.6
    muon_ns_steps: int = DEFAULT_NS_STEPS
    schedule: str = "onecycle"
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    ema: float = 0.0  # EMA decay of the weights per step; 0 = off
    lookahead: int = 0  # Lookahead's k: every k steps move halfway back toward the slow weights; 0 = off
    augment: str = "auto"
    erase: float = 0.0  # random-erasing probability per training image (data.random_erase); 0 = off
    alternate_flip: bool = False  # mirror each image in every other epoch instead of at random
    crop_pad: int | None = None  # pad-and-crop shift in pixels for crop augmentations (None: 1/8 of the size)
    # Progressive resizing (fast.ai; MosaicML Composer's ProgressiveResizing): training images start
    # at this fraction of their side and grow linearly to full size, which they keep for the last
    # resize_finetune of training. 1 = off. Eval always sees full-size images.
    progressive_resize: float = 1.0
    resize_finetune: float = 0.2
    tta: bool = False  # evaluate with horizontal-flip test-time augmentation
    # With tta, `squeezenet eval` also averages views shifted by this many pixels (evaluate.tta_views);
    # the per-epoch validation uses the flip alone, which costs a third as much.
    tta_shift: int = 0
    # model options
    bypass: str = "none"
    batch_norm: bool = False
    small_input: bool = False
    final_relu: bool = True
    zero_init_residual: bool = True  # bypassed Fire modules start as the identity (with BN)
    whiten: bool = False  # conv1 starts as a patch-whitening transform of the training data
    dropout: float = 0.5
    squeeze_ratio: float | None = None  # the paper's SR (0.125 in v1.0/v1.1): squeeze width / expand width
    pool_after: str | None = None  # comma-separated layers the max-pools follow (None: the version's)
    stem_channels: int | None = None  # conv1 filters (None: the version's, 64 in v1.1)
    weights: str | None = None  # initial weights (.pth/.safetensors, or "torchvision") for fine-tuning
    # machinery
    device: str = "auto"
    amp: str = "auto"  # auto (bf16 where the GPU/CPU has it natively), bf16, fp16, off
    channels_last: bool = True
    seed: int = 0
    # which images are train and which val (and --train-size's subset); None: --seed. Fixing it
    # while varying --seed compares runs on one validation split, init and order noise only.
    split_seed: int | None = None
    out: str | None = None
    resume: str | None = None
    stop_after: int | None = None  # end this invocation after N epochs (resume later)
    strict: bool = False  # unreadable images are errors instead of skips
    train_size: int | None = None  # use only the first N training images (quick runs, tests)
    progress: bool | None = None  # None: a bar on terminals, plain lines otherwise

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.time_budget is None or (self.time_budget > 0 and math.isfinite(self.time_budget)),
             f"--time-budget must be a positive duration, got {self.time_budget}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"--lr must be a positive number, got {self.lr}"),
            (self.muon_lr > 0 and math.isfinite(self.muon_lr),
             f"--muon-lr must be a positive number, got {self.muon_lr}"),
            (0 <= self.muon_momentum < 1, f"--muon-momentum must be in [0, 1), got {self.muon_momentum}"),
            (self.muon_ns_steps >= 1, f"--muon-ns-steps must be at least 1, got {self.muon_ns_steps}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.val_fraction < 1, f"--val-fraction must be in [0, 1), got {self.val_fraction}"),
            (0 <= self.label_smoothing < 1, "--label-smoothing must be in [0, 1)"),
            (0 <= self.ema < 1, f"--ema must be a decay in [0, 1), got {self.ema}"),
            (self.lookahead >= 0, f"--lookahead must be a number of steps >= 0, got {self.lookahead}"),
            (self.crop_pad is None or self.crop_pad >= 1,
             f"--crop-pad must be at least 1 pixel (use --augment flip for none), got {self.crop_pad}"),
            (0 <= self.erase <= 1, f"--erase must be a probability in [0, 1], got {self.erase}"),
            (0 < self.progressive_resize <= 1,
             f"--progressive-resize must be a starting scale in (0, 1], got {self.progressive_resize}"),
            (0 <= self.resize_finetune <= 1,
             f"--resize-finetune must be a fraction in [0, 1], got {self.resize_finetune}"),
            (self.warmup_epochs >= 0, "--warmup-epochs must be >= 0"),
            (self.squeeze_ratio is None or 0 < self.squeeze_ratio <= 1,
             f"--squeeze-ratio must be in (0, 1], got {self.squeeze_ratio}"),
            (0 <= self.tta_shift <= MAX_TTA_SHIFT,
             f"--tta-shift must be 0 to {MAX_TTA_SHIFT} pixels, got {self.tta_shift}"),
            (self.pool_after is None or set(pool_layers(self.pool_after)) <= POOLABLE,
             f"--pool-after names layers from conv1, fire2 ... fire9 (e.g. conv1,fire3,fire7), "
             f"got {self.pool_after!r}"),
            (self.stem_channels is None or self.stem_channels >= 1,
             f"--stem-channels must be at least 1, got {self.stem_channels}"),
            (self.image_size is None or self.image_size >= 1, "--image-size must be positive"),
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}"),
            (self.augment in AUGMENTS, f"--augment must be one of {', '.join(AUGMENTS)}"),
            (self.dataset in DATASETS, f"--dataset must be one of {', '.join(DATASETS)}"),
            (self.arch in list_models(), f"unknown architecture {self.arch!r}: choose one of "
                                          f"{', '.join(list_models())}"),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
             "--device must be auto, cpu or cuda"),
            (self.amp in ("auto", "bf16", "fp16", "off"), "--amp must be auto, bf16, fp16 or off"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)


POOLABLE = {"conv1", *(name for name, *_ in FIRES)}  # every architecture names its layers as v1.0 does


def pool_layers(text: str) -> list[str]:
    """``--pool-after conv1,fire3,fire7`` -> ["conv1", "fire3", "fire7"]; "" or "none": no pools."""
    return [] if text.strip().lower() in ("", "none") else [n.strip() for n in text.split(",")]


def make_config(overrides: dict) -> TrainConfig:
    """Defaults <- recipe (named, or the data set's) <- saved config (resume) <- explicit values."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    base: dict = {}
    if overrides.get("resume"):
        path = Path(overrides["resume"]) / "config.json"
        if not path.is_file():
            raise SqueezeNetError(f"cannot resume: {path} not found (pass the --out of an earlier run)")
        base = json.loads(path.read_text())
        base.pop("resume", None), base.pop("stop_after", None)
    else:
        recipe = overrides.get("recipe") or overrides.get("dataset") or "shapes"
        if recipe not in RECIPES:
            kind = "recipe" if overrides.get("recipe") else "dataset"
            raise UsageError(f"unknown {kind} {recipe!r}: choose one of {', '.join(RECIPES)}")
        base = {"recipe": recipe, **RECIPES[recipe]}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in {**base, **overrides}.items() if k in known})
    cfg.validate()
    return cfg


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SqueezeNetError("--device cuda asked for, but PyTorch sees no CUDA GPU: use --device cpu")
    return torch.device(name)


def _decay(schedule: str, t: float) -> float:
    """The schedule after the warm-up, at fraction ``t`` of the way through it."""
    t = min(max(t, 0.0), 1.0)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "onecycle":  # linear decay to zero after the warm-up peak
        return 1 - t
    if schedule == "step":  # /10 at 50% and 75%
        return 0.1 ** ((t >= 0.5) + (t >= 0.75))
    return 1.0


def lr_factor(cfg: TrainConfig, steps_per_epoch: int):
    """LR multiplier per optimizer step: linear warm-up, then the schedule."""
    total = cfg.epochs * steps_per_epoch
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return _decay(cfg.schedule, (step - warmup) / max(1, total - warmup))

    return factor


class TimeBudget:
    """``--time-budget``: the learning-rate schedule runs on seconds of training, not steps.

    Budgeted training (Li, Yumer and Ramanan, ICLR 2020): a schedule that reaches zero exactly when
    the budget ends beats a fixed-epoch schedule cut short, and on machines whose speed drifts (these
    shared 2-core CPUs ran the same recipe 1.6x faster one day than another) a fixed number of
    epochs either overruns the budget or leaves part of it unused. Progress is spent / seconds; the
    warm-up keeps the recipe's share (warmup_epochs / epochs) of it. The price: the step at which
    each learning rate is used depends on the machine's speed, so two runs are not bit-identical
    (resume continues the spent time).
    """

    def __init__(self, seconds: float, cfg: TrainConfig):
        self.seconds, self.spent = seconds, 0.0
        self.schedule = cfg.schedule
        self.warmup = min(cfg.warmup_epochs / cfg.epochs, 0.5)

    @property
    def done(self) -> bool:
        return self.spent >= self.seconds

    def factor(self, _step: int = 0) -> float:
        p = self.spent / self.seconds
        if p < self.warmup:
            return max(p / self.warmup, 0.01)  # never an all-zero first step
        return _decay(self.schedule, (p - self.warmup) / (1 - self.warmup))


def progressive_size(full: int, progress: float, scale: float, finetune: float, smallest: int = 1) -> int:
    """Side of the training images at ``progress`` (0..1) of training: ``scale * full`` at the start,
    growing linearly to ``full`` by ``1 - finetune``, then full. Even sizes only, so a run meets a
    handful of shapes (each one builds its own oneDNN/cuDNN kernels), never below ``smallest``."""
    if scale >= 1:
        return full
    ramp = 1.0 if finetune >= 1 else min(max(progress, 0.0) / (1 - finetune), 1.0)
    size = 2 * round(full * (scale + (1 - scale) * ramp) / 2)
    return min(full, max(size, smallest))


def ema_with_warmup(decay: float):
    """``AveragedModel``'s update for an EMA whose decay ramps up as min(decay, (1 + n) / (10 + n))
    over its n updates so far (the warm-up of timm's ModelEmaV2/V3). PyTorch's own
    ``get_ema_multi_avg_fn`` uses ``decay`` from the first step, so after n steps the average still
    holds decay**n of the first step's near-random weights: 6% after a 13-epoch Fashion-MNIST run
    at 0.999 (2,743 steps), the likely cause of that run's 9-point loss in the ablation."""

    @torch.no_grad()
    def update(ema_params: list, params: list, n_averaged: torch.Tensor) -> None:
        n = int(n_averaged)  # AveragedModel groups tensors by dtype; every call of one step sees n
        d = min(decay, (1 + n) / (10 + n))
        if ema_params[0].is_floating_point():
            torch._foreach_lerp_(ema_params, params, 1 - d)
        else:  # BatchNorm's num_batches_tracked: take the model's count
            for e, p in zip(ema_params, params):
                e.copy_(p)

    return update


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    # No weight decay on biases and BatchNorm parameters (standard; it only hurts them).
    hidden = muon_filters(model) if cfg.optimizer == "muon" else []
    on_muon = {id(p) for p in hidden}
    decay = [p for p in model.parameters() if p.ndim > 1 and id(p) not in on_muon]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "muon":  # the SGD groups first: the progress bar shows group 0's lr
        groups.append({"params": hidden, "muon": True, "lr": cfg.muon_lr, "momentum": cfg.muon_momentum,
                       "weight_decay": cfg.weight_decay, "normalize": cfg.batch_norm,
                       "ns_steps": cfg.muon_ns_steps})
        return MuonSGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def native_bf16(device: torch.device) -> bool:
    """bf16 autocast where the hardware computes it natively: measured 1.6x the fp32 training step
    on the 2-core AVX512-BF16 CPU (cifar10 recipe model, batch 256); on older CPUs it is slower."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    return bool(cpu and (cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported()))


def autocast_for(cfg: TrainConfig, device: torch.device):
    mode = cfg.amp
    if mode == "auto":
        mode = "bf16" if native_bf16(device) else "off"
    if mode == "off":
        return None
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def _progress_enabled(cfg: TrainConfig) -> bool:
    return sys.stderr.isatty() if cfg.progress is None else cfg.progress


def resize_batch(x: torch.Tensor, size: int, memory_format) -> torch.Tensor:
    """Square batches shrunk to ``size`` px with antialiased bilinear resampling (PIL's quality)."""
    if size == x.shape[-1]:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False).contiguous(memory_format=memory_format)


def train(cfg: TrainConfig, log=print) -> dict:
    """Train per ``cfg``; returns the final epoch's metrics plus ``out``."""
    cfg.validate()
    ddp = dist.setup(cfg.device)
    device = ddp.device if ddp.enabled else pick_device(cfg.device)
    main = ddp.is_main
    say = log if main else (lambda *a, **k: None)
    torch.manual_seed(cfg.seed)

    # ---- data: train/val carved from the training split; the test split is eval's alone
    data_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    full = load_dataset(cfg.dataset, "train", cfg.data_dir, cfg.image_size, seed=data_seed,
                        strict=cfg.strict, size=cfg.train_size)
    train_set, val_set = train_val_split(full, cfg.val_fraction, data_seed)
    classes = full.classes
    augment = DEFAULT_AUGMENT[cfg.dataset] if cfg.augment == "auto" else cfg.augment
    per_rank_batch = ddp.local_batch(cfg.batch_size)
    train_loader = Loader(train_set, per_rank_batch, shuffle=True, augment=augment, seed=cfg.seed,
                          drop_last=len(train_set) >= 2 * cfg.batch_size,
                          sampler=ddp.sampler(train_set, shuffle=True, seed=cfg.seed),
                          channels_last=cfg.channels_last, device=device, erase=cfg.erase,
                          alternate_flip=cfg.alternate_flip, crop_pad=cfg.crop_pad)
    val_loader = None if val_set is None else Loader(
        val_set, per_rank_batch * 2, channels_last=cfg.channels_last, device=device,
        sampler=ddp.eval_sampler(val_set))
    if len(train_loader) == 0:
        raise SqueezeNetError(f"{len(train_set)} training images are fewer than one batch")

    # ---- model
    model_kwargs = dict(num_classes=len(classes), in_channels=full.channels, dropout=cfg.dropout,
                        bypass=cfg.bypass, batch_norm=cfg.batch_norm, small_input=cfg.small_input,
                        final_relu=cfg.final_relu, zero_init_residual=cfg.zero_init_residual)
    if cfg.squeeze_ratio is not None:  # absent from older checkpoints' metadata: they load as before
        model_kwargs["squeeze_ratio"] = cfg.squeeze_ratio
    if cfg.pool_after is not None:
        model_kwargs["pool_after"] = pool_layers(cfg.pool_after)
    if cfg.stem_channels is not None:
        model_kwargs["stem_channels"] = cfg.stem_channels
    model = create_model(cfg.arch, **model_kwargs)
    if cfg.weights:
        report = (load_torchvision_weights(model, cfg.arch) if cfg.weights == "torchvision"
                  else load_weights(model, cfg.weights))
        for note in report.notes():
            say(f"weights: {note}")
    if train_set.image_size < model.min_input_size:
        raise SqueezeNetError(f"{cfg.arch} needs images of at least {model.min_input_size} px, the "
                              f"data is {train_set.image_size} px: pass --image-size "
                              f"{model.min_input_size} or more, or --small-input")
    if cfg.crop_pad is not None and cfg.crop_pad >= train_set.image_size:  # reflection padding needs pad < size
        raise SqueezeNetError(f"--crop-pad {cfg.crop_pad} must be smaller than the {train_set.image_size} px images")
    if cfg.whiten:
        # 5,000 images (airbench's count) estimate the 27x27 patch covariance well; every rank
        # draws the same ones, so the replicas start equal. A resumed run's checkpoint replaces it.
        pick = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(cfg.seed))[:5000]
        set_filters = whiten_stem_(model, train_set.batch(pick))
        say(f"whiten: conv1 starts as {set_filters} patch-whitening filters")
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    if ddp.enabled and device.type == "cuda" and cfg.batch_norm:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = ddp.wrap(model)
    ema = (AveragedModel(model, multi_avg_fn=ema_with_warmup(cfg.ema), use_buffers=True)
           if cfg.ema else None)
    optimizer = make_optimizer(cfg, model)
    budget = None if cfg.time_budget is None else TimeBudget(cfg.time_budget, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, budget.factor if budget else lr_factor(cfg, len(train_loader)))
    autocast = autocast_for(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")

    # ---- artifacts directory and resume
    out = Path(cfg.resume or cfg.out or time.strftime("runs/%Y%m%d-%H%M%S"))
    history: list[dict] = []
    start_epoch, best_acc = 0, -1.0
    if cfg.resume and not (out / "last.state.pt").exists():
        say(f"{out} has no checkpoint yet (it stopped during epoch 1): starting it over")
    elif cfg.resume:
        state = load_state(out / "last.state.pt")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None and "ema" in state:
            ema.load_state_dict(state["ema"])
        scaler.load_state_dict(state.get("scaler", scaler.state_dict()))
        history, start_epoch = list(state["history"]), int(state["epoch"])
        best_acc = max((h["val_acc"] for h in history if h["val_acc"] is not None), default=-1.0)
        if budget:
            budget.spent = float(state.get("spent", sum(h["seconds"] for h in history)))
            if budget.done:
                say(f"{out} already spent its {cfg.time_budget:g} s budget: nothing to do "
                    f"(pass a larger --time-budget to train longer)")
        elif start_epoch >= cfg.epochs:
            say(f"{out} already finished {start_epoch} of {cfg.epochs} epochs: nothing to do "
                f"(pass a larger --epochs to train longer)")
    elif (out / "last.state.pt").exists():  # every rank checks, so all stop together
        raise SqueezeNetError(f"{out} already holds a run: pass --resume {out} to continue it, or "
                              f"choose another --out")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(".*.tmp"):  # left by a crash mid-write (atomic_path); never read
            stale.unlink()
        write_text_atomic(out / "config.json", json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    ddp.barrier()

    meta = {"arch": cfg.arch, "model_kwargs": model_kwargs, "class_names": classes,
            "preprocess": {"image_size": train_set.image_size, "in_channels": full.channels,
                           "mean": list(full.mean), "std": list(full.std),
                           "resize": "shorter side to image_size, centre crop"},
            "dataset": cfg.dataset, "data_dir": cfg.data_dir, "seed": cfg.seed,
            "split_seed": data_seed, "val_fraction": cfg.val_fraction, "train_size": cfg.train_size,
            "tta": cfg.tta, "tta_shift": cfg.tta_shift,
            "augment": augment, "crop_pad": cfg.crop_pad}
    params = sum(p.numel() for p in model.parameters())
    if start_epoch == 0:
        say(f"{cfg.arch}: {params:,} parameters | {cfg.dataset}: {len(train_set):,} train / "
            f"{len(val_set) if val_set is not None else 0:,} val images of {full.channels}x"
            f"{train_set.image_size}x{train_set.image_size}, {len(classes)} classes | {device} "
            f"x{ddp.world_size} | out {out}")
        if val_set is None:
            say("--val-fraction 0: no validation split, so nothing picks a best epoch; best.safetensors "
                "is the last epoch's weights. Measure it with `squeezenet eval --split test`")

    # With a time budget, epochs run until it is spent; --epochs sets only the warm-up's share.
    end_epoch = cfg.epochs if budget is None else (start_epoch if budget.done else sys.maxsize)
    last_epoch = end_epoch if cfg.stop_after is None else min(end_epoch, start_epoch + cfg.stop_after)
    of_epochs = "" if budget else f"/{cfg.epochs}"
    for epoch in range(start_epoch, last_epoch):
        # Every random draw of an epoch comes from seeds fixed by (seed, epoch): resume is exact.
        torch.manual_seed(cfg.seed * 1_000_003 + epoch)
        train_loader.set_epoch(epoch)
        # Each epoch ends synced (fast == slow), so a fresh Lookahead per epoch also serves resume.
        lookahead = Lookahead(model, cfg.lookahead) if cfg.lookahead else None
        net.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        seen = 0
        lr = optimizer.param_groups[0]["lr"]
        spent_before = budget.spent if budget else 0.0
        t0 = time.perf_counter()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}{of_epochs}", leave=False, unit="batch",
                   disable=not (main and _progress_enabled(cfg)), dynamic_ncols=True)
        for step, (x, y) in enumerate(bar):
            if cfg.progressive_resize < 1:
                progress = (budget.spent / budget.seconds if budget
                            else (epoch * len(train_loader) + step) / (cfg.epochs * len(train_loader)))
                x = resize_batch(x, progressive_size(x.shape[-1], progress, cfg.progressive_resize,
                                                     cfg.resize_finetune, model.min_input_size),
                                 memory_format)
            with autocast() if autocast else contextlib.nullcontext():
                logits = net(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):  # stop before a NaN/inf step poisons the weights
                raise SqueezeNetError(diverged_message(cfg, out, epoch, step, loss.item()))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if budget:  # every rank takes rank 0's clock, so all change lr and stop at the same step
                budget.spent = ddp.broadcast_float(spent_before + time.perf_counter() - t0)
            scheduler.step()
            if lookahead is not None:
                lookahead.step()
            if ema is not None:
                ema.update_parameters(model)
            loss_sum += loss.detach().double() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            if bar.disable is False and step % 10 == 0:
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", lr=f"{lr:.3g}")
            crash_point(f"epoch{epoch + 1}-step{step + 1}")
            if budget and budget.done:
                break
        if lookahead is not None:  # evaluate and checkpoint the slow weights; resume starts from them
            lookahead.sync()
        seconds = time.perf_counter() - t0
        if budget:  # the epoch's own time, so that spent == the history's sum of seconds
            budget.spent = ddp.broadcast_float(spent_before + seconds)
        train_loss, train_acc, seen = ddp.reduce_train(loss_sum, correct, seen)
        eval_model = ema.module if ema is not None else model
        val = None if val_loader is None else ddp.evaluate(eval_model, val_loader, len(classes),
                                                           tta=cfg.tta, autocast=autocast)
        record = {"epoch": epoch + 1, "train_loss": round(train_loss, 6), "train_acc": round(train_acc, 4),
                  **({"val_loss": round(val["loss"], 6), "val_acc": round(val["top1"], 4),
                      "val_top5": round(val["top5"], 4), "val_count": val["count"]} if val
                     else dict.fromkeys(("val_loss", "val_acc", "val_top5", "val_count"))),
                  "lr": lr, "images_per_s": round(seen / seconds, 2), "seconds": round(seconds, 3)}
        history.append(record)
        val_text = (f"val loss {val['loss']:.4f} top-1 {val['top1']:6.2f}% top-5 {val['top5']:6.2f}%"
                    if val else "no val split")
        say(f"epoch {epoch + 1:>3}{of_epochs}  train loss {train_loss:.4f} acc {train_acc:6.2f}%  "
            f"{val_text}  lr {lr:.3g}  {seen / seconds:,.0f} img/s  {seconds:.1f}s")
        if main:
            meta_now = {**meta, "epoch": epoch + 1, "val_acc": val["top1"] if val else None}
            save_checkpoint(out / "last.safetensors", eval_model, meta_now)
            # val_acc is rounded, as in the history a resume reads it from
            improved = val is not None and record["val_acc"] > best_acc
            if improved or val is None:  # the final fit (no val split) ships its newest weights
                save_checkpoint(out / "best.safetensors", eval_model, meta_now)
            if improved:
                best_acc = record["val_acc"]
                write_text_atomic(out / "best_val.json", json.dumps(
                    {"epoch": epoch + 1, **{k: val[k] for k in ("top1", "top5", "loss", "count")},
                     "per_class": val["per_class"], "confusion": val["confusion"]}) + "\n")
            write_metrics(history, out)
            plot_curves(history, out)
            # Written last: it is the commit point. A crash before it re-runs this epoch on resume,
            # which rewrites every file above with the same values.
            state = {"epoch": epoch + 1, "model": model.state_dict(),
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "scaler": scaler.state_dict(), "history": history}
            if budget:
                state["spent"] = budget.spent
            if ema is not None:
                state["ema"] = ema.state_dict()
            save_state(out / "last.state.pt", state)
        ddp.barrier()
        if budget and budget.done:
            break

    if main and history:
        total = sum(h["seconds"] for h in history)
        if val_loader is None:
            say(f"done: {len(history)} epochs on all {len(train_set):,} training images, training time "
                f"{total:.0f}s -> {out}")
        else:
            best = json.loads((out / "best_val.json").read_text())
            plot_confusion(best["confusion"], classes, out / "confusion.png",
                           f"{cfg.arch} on {cfg.dataset} validation (epoch {best['epoch']}, "
                           f"top-1 {best['top1']:.2f}%)")
            say(f"done: best val top-1 {best['top1']:.2f}% (epoch {best['epoch']}), last "
                f"{history[-1]['val_acc']:.2f}%, training time {total:.0f}s -> {out}")
    ddp.cleanup()
    return {**(history[-1] if history else {}), "out": str(out)}


class Lookahead:
    """Lookahead (Zhang et al., 2019) around any optimizer: every ``k`` steps the slow weights move
    ``alpha`` of the way toward the optimizer's (fast) weights, and the fast weights restart from
    them. Written here because PyTorch has none; ``sync`` at each epoch's end makes fast == slow,
    so checkpoints hold the slow weights and resume needs no extra state."""

    def __init__(self, model: torch.nn.Module, k: int, alpha: float = 0.5):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.slow = [p.detach().clone() for p in self.params]
        self.k, self.alpha, self.count = k, alpha, 0

    @torch.no_grad()
    def step(self) -> None:
        self.count += 1
        if self.count % self.k == 0:
            self.sync()

    @torch.no_grad()
    def sync(self) -> None:
        torch._foreach_lerp_(self.slow, [p.detach() for p in self.params], self.alpha)
        for p, slow in zip(self.params, self.slow):
            p.copy_(slow)
        self.count = 0


def diverged_message(cfg: TrainConfig, out: Path, epoch: int, step: int, loss: float) -> str:
    kept = f"the last good checkpoint (epoch {epoch}) is kept in {out}" if epoch else "no checkpoint yet"
    return (f"training diverged at epoch {epoch + 1}, step {step + 1}: the loss is {loss}; {kept}. "
            f"Lower --lr (now {cfg.lr}) or add --grad-clip 1")


def write_metrics(history: list[dict], out: Path) -> None:
    keys = list(history[0])
    write_text_atomic(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    rows = [",".join(keys)] + [",".join("" if h.get(k) is None else str(h[k]) for k in keys)
                               for h in history]
    write_text_atomic(out / "metrics.csv", "\n".join(rows) + "\n")


def num_threads_default() -> None:
    """Use every core for intra-op parallelism unless the user set OMP_NUM_THREADS."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(os.cpu_count() or 1)
