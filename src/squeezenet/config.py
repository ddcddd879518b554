"""Training options: one table (``TrainConfig``'s fields) from which the ``train`` parser, its
help, its checks and the README's usage block are made, and how a run's values are chosen:
defaults <- recipe <- config file <- flags (``make_config``)."""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .data import AUGMENTS, DATASETS
from .errors import SqueezeNetError, UsageError
from .model import BYPASS_MODES, FIRES
from .optim import DEFAULT_NS_STEPS
from .recipes import RECIPES
from .zoo import list_models

GROUPS = {"data": "data", "model": "model", "optimizer": "optimizer", "schedule": "schedule",
          "augmentation": "augmentation and regularisation", "evaluation": "evaluation",
          "system": "system"}
OPTIMIZERS = ("sgd", "adam", "adamw", "muon")
SCHEDULES = ("onecycle", "cosine", "step", "constant")
POOLABLE = {"conv1", *(name for name, *_ in FIRES)}  # every architecture names its layers as v1.0 does
MAX_TTA_SHIFT = 4  # pixels: larger shifts move small images' content out of view
# Settings a resumed run may change: how long and where it runs, not what it trains.
RESUMABLE = {"epochs", "time_budget", "stop_after", "device", "progress", "tensorboard", "resume", "amp"}
# Options of earlier versions, measured and removed (benchmarks/RESULTS.md#ingredients): a saved
# config may hold them at their off values only.
REMOVED = {"lookahead": 0, "whiten": False, "progressive_resize": 1.0, "resize_finetune": 0.2,
           "alternate_flip": False}


def opt(default, group: str, help: str, *, check=None, choices=None, metavar: str | None = None,
        parse=None, cli: bool = True):
    """A field of ``TrainConfig`` with what the parser, help and checks need.

    ``check``: (predicate, text); a failing value reads "--flag <text>, got <value>". ``parse``:
    the argparse type (default: the default's type). ``choices``: a tuple, or a function giving one."""
    return field(default=default, metadata={"group": group, "help": help, "check": check, "choices": choices,
                                            "metavar": metavar, "parse": parse, "cli": cli})


def at_least(n):
    return (lambda v: v is None or v >= n), f"must be at least {n}"


POSITIVE = (lambda v: v > 0 and math.isfinite(v)), "must be a positive number"


def in_unit(lo_open=False, hi_open=True, what="in"):
    lo, hi = "(" if lo_open else "[", ")" if hi_open else "]"
    ok = (lambda v: (0 < v if lo_open else 0 <= v) and (v < 1 if hi_open else v <= 1))
    return ok, f"must be {what} {lo}0, 1{hi}"


def whole(text: str) -> int:
    import argparse

    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def duration(text: str):
    """Seconds from '2700', '2700s', '45m' or '1.5h'; 'off' or 'none': no budget."""
    import argparse

    if text.strip().lower() in ("off", "none"):
        return "off"
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], units[text[-1]]) if text[-1:] in units else (text, 1)
    try:
        return float(number) * unit
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration like 45m, 900s or 1.5h, got {text!r}") from None


def pool_layers(text: str) -> list[str]:
    """``--pool-after conv1,fire3,fire7`` -> ["conv1", "fire3", "fire7"]; "" or "none": no pools."""
    return [] if text.strip().lower() in ("", "none") else [n.strip() for n in text.split(",")]


@dataclass
class TrainConfig:
    recipe: str | None = opt(None, "data", "named recipe (shapes, noise, fashion-mnist, cifar10, folder); "
                             "flags override it", metavar="NAME", choices=tuple(RECIPES), parse=str)
    # ---- data
    dataset: str = opt("shapes", "data", "shapes (default), noise, fashion-mnist, cifar10 or folder",
                       choices=DATASETS)
    data_dir: str | None = opt(None, "data", "where the data set lives (folder: DIR/<class>/<images>, or "
                               "DIR/train and DIR/test)", metavar="DIR", parse=str)
    image_size: int | None = opt(None, "data", "the model's input: N x N images (default: the data set's own size)",
                                 check=at_least(1), parse=whole)
    crop_pct: float = opt(1.0, "data", "folders: store images with the shorter side at image-size / F; training "
                          "crops from them, evaluation takes the centre crop (torchvision's 224 of 256: 0.875)",
                          check=in_unit(lo_open=True, hi_open=False), metavar="F")
    val_fraction: float = opt(0.1, "data", "fraction of the training data held out for validation; 0 "
                              "trains on all of it (a final fit: the last epoch is best)",
                              check=in_unit(), metavar="F")
    train_size: int | None = opt(None, "data", "use a seeded random subset of N training images",
                                 check=at_least(1), parse=whole)
    split_seed: int | None = opt(None, "data", "seed of the train/val split alone (default: --seed)", parse=int)
    strict: bool = opt(False, "data", "unreadable images are an error instead of a skipped warning")
    # ---- model
    arch: str = opt("squeezenet1_1", "model", "architecture (squeezenet1_0, squeezenet1_1, squeezenet_meta)",
                    choices=list_models)
    bypass: str = opt("none", "model", "none, simple or complex (paper section 6)", choices=BYPASS_MODES)
    batch_norm: bool = opt(False, "model", "BatchNorm after every conv (off in the paper)")
    small_input: bool = opt(False, "model", "3x3 stride-1 stem for 28-32 px images")
    final_relu: bool = opt(True, "model", "ReLU after conv10, as in the paper")
    zero_init_residual: bool = opt(True, "model", "with BN, bypassed Fire modules start as the identity")
    dropout: float = opt(0.5, "model", "dropout before conv10", check=in_unit(hi_open=True), metavar="P")
    squeeze_ratio: float | None = opt(None, "model", "the paper's SR: squeeze / expand channels (0.125 in "
                                      "v1.0 and v1.1)", check=((lambda v: v is None or 0 < v <= 1),
                                                               "must be in (0, 1]"), metavar="SR", parse=float)
    pool_after: str | None = opt(None, "model", "layers the 3x3/2 max-pools follow, e.g. conv1,fire3,fire7 "
                                 "(default: the version's)",
                                 check=((lambda v: v is None or set(pool_layers(v)) <= POOLABLE),
                                        "names layers from conv1, fire2 ... fire9 (e.g. conv1,fire3,fire7)"),
                                 metavar="LAYERS", parse=str)
    stem_channels: int | None = opt(None, "model", "conv1's filters (default: the version's, 64 in v1.1)",
                                    check=at_least(1), parse=int)
    weights: str | None = opt(None, "model", "initial weights: a .pth/.safetensors file, or 'torchvision' "
                              "(download)", metavar="FILE", parse=str)
    freeze_features: bool = opt(False, "model", "train the classifier (conv10) only; the features keep their "
                                "weights and BatchNorm statistics")
    unfreeze_after: int | None = opt(None, "model", "with --freeze-features: train everything from epoch N+1 on",
                                     check=at_least(1), parse=whole)
    # ---- optimizer
    optimizer: str = opt("sgd", "optimizer", "sgd (Nesterov), adam, adamw, or muon (Muon on the Fire "
                         "filters, SGD on the rest)", choices=OPTIMIZERS)
    batch_size: int = opt(128, "optimizer", "global batch size", check=at_least(1), parse=whole)
    lr: float = opt(0.1, "optimizer", "peak learning rate", check=POSITIVE)
    momentum: float = opt(0.9, "optimizer", "SGD momentum", check=in_unit())
    weight_decay: float = opt(5e-4, "optimizer", "weight decay (not on biases and BatchNorm)",
                              check=((lambda v: v >= 0), "must be >= 0"))
    muon_lr: float = opt(0.05, "optimizer", "with --optimizer muon: the Fire filters' peak lr, a relative "
                         "step size", check=POSITIVE)
    muon_momentum: float = opt(0.6, "optimizer", "with --optimizer muon: the Fire filters' Nesterov momentum",
                               check=in_unit())
    muon_ns_steps: int = opt(DEFAULT_NS_STEPS, "optimizer", "with --optimizer muon: Newton-Schulz iterations per step",
                             check=at_least(1))
    grad_clip: float = opt(0.0, "optimizer", "clip the gradient norm to this value (0 = off)",
                           check=((lambda v: v >= 0), "must be >= 0"))
    # ---- schedule
    epochs: int = opt(10, "schedule", "number of epochs (total, also when resuming)", check=at_least(1),
                      parse=whole)
    time_budget: float | None = opt(None, "schedule", "train for this long (45m, 900s, 1.5h; off) instead of "
                                    "--epochs: the schedule runs on elapsed training time",
                                    check=((lambda v: v is None or (v > 0 and math.isfinite(v))),
                                           "must be a positive duration"), metavar="TIME", parse=duration)
    schedule: str = opt("onecycle", "schedule", "onecycle, cosine, step or constant (after linear warm-up)",
                        choices=SCHEDULES)
    warmup_epochs: float = opt(1.0, "schedule", "epochs of linear learning-rate warm-up",
                               check=((lambda v: v >= 0), "must be >= 0"))
    # ---- augmentation and regularisation
    augment: str = opt("auto", "augmentation", "auto, none, flip, crop, crop-noflip or rrc (random-resized crop)",
                       choices=("auto", *AUGMENTS))
    crop_pad: int | None = opt(None, "augmentation", "pad-and-crop shift in pixels for --augment crop "
                               "(default: 1/8 of the image)",
                               check=((lambda v: v is None or v >= 1),
                                      "must be at least 1 pixel (use --augment flip for none)"), parse=int)
    erase: float = opt(0.0, "augmentation", "random erasing: probability per image of noise over a "
                       "random rectangle", check=in_unit(hi_open=False, what="a probability in"), metavar="P")
    rrc_scale: float = opt(0.25, "augmentation", "--augment rrc: the smallest crop, as a fraction of the image's area",
                           check=in_unit(lo_open=True, hi_open=False), metavar="F")
    label_smoothing: float = opt(0.0, "augmentation", "label smoothing", check=in_unit())
    ema: float = opt(0.0, "augmentation", "keep an exponential moving average of the weights with this "
                     "decay (0 = off)", check=in_unit(what="a decay in"), metavar="DECAY")
    # ---- evaluation
    tta: bool = opt(False, "evaluation", "evaluate with horizontal-flip test-time augmentation")
    tta_shift: int = opt(0, "evaluation", "with --tta, eval also averages views shifted by N pixels",
                         check=((lambda v: 0 <= v <= MAX_TTA_SHIFT), f"must be 0 to {MAX_TTA_SHIFT} pixels"),
                         parse=whole)
    # ---- system
    device: str = opt("auto", "system", "auto, cpu or cuda",
                      check=((lambda v: v in ("auto", "cpu", "cuda") or v.startswith("cuda:")),
                             "must be auto, cpu or cuda"), metavar="DEVICE")
    amp: str = opt("auto", "system", "mixed precision: auto (bf16 where native), bf16, fp16 or off",
                   choices=("auto", "bf16", "fp16", "off"))
    channels_last: bool = opt(True, "system", "NHWC memory format (faster on CPU)")
    seed: int = opt(0, "system", "random seed: init, order, augmentation, and the split unless --split-seed")
    out: str | None = opt(None, "system", "output directory (default runs/<timestamp>)", metavar="DIR", parse=str)
    resume: str | None = opt(None, "system", "continue the run in this directory", metavar="DIR", parse=str)
    stop_after: int | None = opt(None, "system", "end this invocation after N epochs (continue with --resume)",
                                 check=at_least(1), parse=whole)
    tensorboard: bool = opt(False, "system", "also log to TensorBoard in OUT/tensorboard")
    progress: bool | None = opt(None, "system", "progress bar (default: on terminals only)", parse=bool)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            value, spec = getattr(self, f.name), f.metadata
            choices = spec["choices"]() if callable(spec["choices"]) else spec["choices"]
            if choices and value is not None and value not in choices:
                if f.name == "arch":
                    raise UsageError(f"unknown architecture {value!r}: choose one of {', '.join(choices)}")
                raise UsageError(f"{flag(f.name)} must be one of {', '.join(choices)}, got {value!r}")
            if spec["check"] and value is not None and not spec["check"][0](value):
                raise UsageError(f"{flag(f.name)} {spec['check'][1]}, got {value}")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def option_fields():
    return [f for f in dataclasses.fields(TrainConfig) if f.metadata.get("cli", True)]


def add_train_arguments(parser, groups=tuple(GROUPS), only=None) -> None:
    """TrainConfig fields as flags, in their groups (``only``: these names); switches take --x / --no-x."""
    import argparse

    sections = {key: parser.add_argument_group(GROUPS[key]) for key in groups}
    for f in option_fields():
        spec, kind = f.metadata, type(f.default)
        if spec["group"] not in sections or (only is not None and f.name not in only):
            continue
        group = sections[spec["group"]]
        if kind is bool or spec["parse"] is bool:
            group.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, default=None, help=spec["help"])
        else:
            parse = spec["parse"] or kind
            metavar = spec["metavar"] or {int: "N", whole: "N", float: "X"}.get(parse, f.name.upper())
            group.add_argument(flag(f.name), type=parse, default=None, metavar=metavar, help=spec["help"])


def usage() -> str:
    """The ``train`` synopsis for the README, from the table."""
    lines, line = [], "squeezenet train [--config FILE]"
    for f in option_fields():
        spec = f.metadata
        if type(f.default) is bool or spec["parse"] is bool:
            part = f"[--{'no-' if f.default is True else ''}{f.name.replace('_', '-')}]"
        else:
            choices = spec["choices"]() if callable(spec["choices"]) else spec["choices"]
            metavar = "|".join(choices) if choices and len(choices) <= 6 else \
                (spec["metavar"] or {int: "N", whole: "N", float: "X"}.get(spec["parse"] or type(f.default), "VALUE"))
            part = f"[{flag(f.name)} {metavar}]"
        if len(line) + len(part) + 1 > 100:
            lines.append(line)
            line = " " * 17 + part
        else:
            line += " " + part
    return "\n".join(lines + [line])


def read_config_file(path: str | Path) -> dict:
    """Values from a TOML file or a run's config.json (keys with - or _); unknown keys refused."""
    path = Path(path)
    try:
        text = path.read_text()
        values = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except FileNotFoundError:
        raise UsageError(f"--config {path} does not exist") from None
    except (OSError, ValueError) as e:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise UsageError(f"--config {path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {e}") from None
    values = {k.replace("-", "_"): v for k, v in values.items()}
    if path.suffix == ".json":  # a run's record: where it was written is not a setting to copy
        for k in ("out", "resume", "stop_after"):
            values.pop(k, None)
    _drop_removed(values, f"--config {path}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UsageError(f"--config {path}: unknown setting(s) {', '.join(unknown)}")
    return values


def _drop_removed(values: dict, source: str) -> None:
    for key, off in REMOVED.items():
        if key in values and values.pop(key) not in (off, None):
            raise UsageError(f"{source} uses {flag(key)}, which was measured, did not pay and was removed "
                             f"(benchmarks/RESULTS.md#ingredients)")


def make_config(flags: dict, config_file: str | Path | None = None) -> TrainConfig:
    """Defaults <- recipe (named, or the data set's) <- config file <- flags; a resumed run's own
    config.json instead, where only ``RESUMABLE`` settings may change. An explicit length in
    epochs drops the recipe's time budget."""
    flags = {k: v for k, v in flags.items() if v is not None}
    if flags.get("resume"):
        return _resumed(flags)
    chosen = {**(read_config_file(config_file) if config_file else {}), **flags}
    recipe = chosen.get("recipe") or chosen.get("dataset") or "shapes"
    if recipe not in RECIPES:
        kind = "recipe" if chosen.get("recipe") else "dataset"
        raise UsageError(f"unknown {kind} {recipe!r}: choose one of {', '.join(RECIPES)}")
    values = {"recipe": recipe, **RECIPES[recipe], **chosen}
    if "epochs" in chosen and "time_budget" not in chosen:
        values["time_budget"] = None
    if values.get("time_budget") == "off":
        values["time_budget"] = None
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg


def _resumed(flags: dict) -> TrainConfig:
    path = Path(flags["resume"]) / "config.json"
    if not path.is_file():
        raise SqueezeNetError(f"cannot resume: {path} not found (pass the --out of an earlier run)")
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SqueezeNetError(f"cannot resume: {path} is not readable JSON ({e})") from None
    _drop_removed(saved, f"the run in {flags['resume']}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    saved = {k: v for k, v in saved.items() if k in known}
    changed = [f"{flag(k)} {v!r} (the run has {saved.get(k)!r})" for k, v in flags.items()
               if k not in RESUMABLE and k != "out" and saved.get(k) != v]
    if flags.get("out") and Path(flags["out"]).resolve() != Path(flags["resume"]).resolve():
        changed.append(f"--out {flags['out']} (resume writes into {flags['resume']})")
    if changed:
        raise UsageError(f"cannot resume {flags['resume']} with other settings: {'; '.join(changed)}. "
                         f"A resumed run may change only {', '.join(flag(k) for k in sorted(RESUMABLE - {'resume'}))}; "
                         f"start a new run (--out) for the rest")
    saved.pop("stop_after", None)  # an invocation's own limit, not the run's
    values = {**saved, **flags}
    if values.get("time_budget") == "off":
        values["time_budget"] = None
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg
