"""What a run is: ``RunMeta``, the typed, versioned record every checkpoint carries.

Built once by the trainer, parsed once when a checkpoint is read (``RunMeta.parse``), and then
used as attributes everywhere: the architecture and its options, class names, preprocessing, and
how the run's data was split, so ``eval``, ``export``, ``quantize`` and ``compress`` need no
flags. Checkpoints written before this record was versioned (version 1) parse to the same
values they were trained with.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

from .errors import SqueezeNetError

VERSION = 2
MAX_CLASSES = 100_000  # a guard against hostile metadata, far above any real classifier here
MODEL_OPTIONS = {"num_classes", "in_channels", "dropout", "bypass", "batch_norm", "small_input", "final_relu",
                 "zero_init_residual", "squeeze_ratio", "pool_after", "stem_channels"}


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input: resize the shorter side to ``resize_size`` (None:
    ``image_size``), take the centre ``image_size`` square, scale to [0, 1], subtract ``mean``
    and divide by ``std`` per channel."""

    image_size: int
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str = "shorter side to resize_size (or image_size), centre crop image_size"
    resize_size: int | None = None


@dataclass(frozen=True)
class RunMeta:
    arch: str
    model_kwargs: dict
    class_names: list[str]
    preprocess: Preprocess
    dataset: str | None = None
    data_dir: str | None = None
    seed: int = 0
    split_seed: int = 0
    val_fraction: float = 0.1
    train_size: int | None = None
    stratified: bool = True  # version 1 carved its validation split at random
    tta: bool = False
    tta_shift: int = 0
    augment: str | None = None
    crop_pad: int | None = None
    epoch: int | None = None
    val_acc: float | None = None
    version: int = VERSION
    extra: dict = field(default_factory=dict)  # keys a newer version wrote, kept for round trips

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def replace(self, **changes) -> RunMeta:
        return dataclasses.replace(self, **changes)

    def at_size(self, size: int) -> RunMeta:
        """The same preprocessing at another input size (the same centre-crop fraction)."""
        pre = self.preprocess
        resize = None if pre.resize_size is None else round(pre.resize_size * size / pre.image_size)
        return self.replace(preprocess=dataclasses.replace(pre, image_size=size, resize_size=resize))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["preprocess"] = {**d["preprocess"], "mean": list(self.preprocess.mean), "std": list(self.preprocess.std)}
        extra = d.pop("extra")
        return {**extra, **d}

    def to_metadata(self) -> dict[str, str]:
        """safetensors metadata: one JSON value per key."""
        return {k: json.dumps(v) for k, v in self.to_dict().items()}

    @classmethod
    def from_metadata(cls, raw: dict[str, str]) -> RunMeta:
        try:
            return cls.parse({k: json.loads(v) for k, v in raw.items() if k != "format"})
        except json.JSONDecodeError as e:
            raise SqueezeNetError(f"corrupt checkpoint metadata ({e})") from None

    @classmethod
    def parse(cls, d: dict) -> RunMeta:
        """A RunMeta from its dict (any version), every field checked, so hostile or damaged
        metadata fails here with a message instead of later with a traceback."""
        if not isinstance(d, dict):
            raise SqueezeNetError("checkpoint metadata is not a mapping")
        missing = [k for k in ("arch", "model_kwargs", "class_names", "preprocess") if k not in d]
        if missing:
            raise SqueezeNetError(f"checkpoint metadata lacks {', '.join(missing)}: not a complete "
                                  f"`squeezenet train` checkpoint")
        version = d.get("version", 1)
        pre = d["preprocess"]
        _check(isinstance(pre, dict) and {"image_size", "in_channels", "mean", "std"} <= pre.keys(),
               "preprocess must give image_size, in_channels, mean and std")
        channels, size = pre["in_channels"], pre["image_size"]
        _check(_int(channels) and 1 <= channels <= 16, f"in_channels {channels!r} is not 1..16")
        _check(_int(size) and 1 <= size <= 8192, f"image_size {size!r} is not 1..8192")
        for key in ("mean", "std"):
            v = pre[key]
            _check(isinstance(v, list) and len(v) == channels and all(_num(x) for x in v),
                   f"preprocess {key} must be {channels} numbers")
        _check(all(s > 0 for s in pre["std"]), "preprocess std must be positive")
        resize_size = pre.get("resize_size")
        _check(resize_size is None or (_int(resize_size) and size <= resize_size <= 8192),
               f"resize_size {resize_size!r} is not image_size..8192")
        names = d["class_names"]
        _check(isinstance(names, list) and 1 <= len(names) <= MAX_CLASSES and all(isinstance(n, str) for n in names),
               f"class_names must be 1..{MAX_CLASSES:,} strings")
        kwargs = d["model_kwargs"]
        _check(isinstance(kwargs, dict) and set(kwargs) <= MODEL_OPTIONS,
               f"model_kwargs may only hold {', '.join(sorted(MODEL_OPTIONS))}")
        _check(kwargs.get("num_classes", len(names)) == len(names),
               f"model_kwargs num_classes {kwargs.get('num_classes')!r} differs from the {len(names)} class names")
        _check(kwargs.get("in_channels", channels) == channels, "model_kwargs in_channels differs from preprocess")
        _check(isinstance(d["arch"], str), "arch must be a name")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "preprocess"}
        values = {k: d[k] for k in known if k in d}
        if version < 2:  # version 1: the split seed defaulted to --seed, the split was not stratified
            values["split_seed"] = d.get("split_seed", d.get("seed", 0))
            values["stratified"] = False
        values["version"] = max(version, 1)
        return cls(preprocess=Preprocess(size, channels, tuple(pre["mean"]), tuple(pre["std"]),
                                         pre.get("resize", Preprocess.resize), resize_size),
                   extra={k: v for k, v in d.items() if k not in known and k != "preprocess"}, **values)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check(ok: bool, problem: str) -> None:
    if not ok:
        raise SqueezeNetError(f"checkpoint metadata is invalid: {problem}")
