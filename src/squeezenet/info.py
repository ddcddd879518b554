"""``squeezenet info``: the per-layer table of any model the package builds, by architecture,
by recipe or from a checkpoint."""

from __future__ import annotations

from pathlib import Path

from .checkpoint import load_checkpoint
from .config import make_config, pool_layers
from .errors import UsageError
from .model import SqueezeNet
from .recipes import RECIPES
from .summary import format_info
from .zoo import create_model, list_models


def describe(target: str | None, recipe: str | None, input_size: int | None, num_classes: int | None,
             in_channels: int | None, options: dict) -> tuple[str, dict]:
    """``squeezenet info``: the table for an architecture (with options), a recipe's model, or a
    checkpoint (its architecture, options and input size, read from its metadata)."""
    is_file = target is not None and (Path(target).exists() or target.endswith(".safetensors"))
    if is_file and target not in list_models():
        model, meta = load_checkpoint(target)
        size = input_size or meta.preprocess.image_size
        title = f"{target}: {meta.arch} {_options(meta.model_kwargs)}"
        text, summary = format_info(title, model, _checked(model, size))
        trained = (f"trained on {meta.dataset} ({meta.num_classes} classes: {', '.join(meta.class_names[:5])}"
                   f"{', ...' if meta.num_classes > 5 else ''}), epoch {meta.epoch}"
                   + (f", val top-1 {meta.val_acc:.2f}%" if meta.val_acc is not None else ""))
        return f"{text}\n{trained}", {**summary, "checkpoint": meta.to_dict()}
    kwargs = {}
    if recipe is not None:
        if recipe not in RECIPES:
            raise UsageError(f"unknown recipe {recipe!r}: choose one of {', '.join(RECIPES)}")
        cfg = make_config({"recipe": recipe, **options})
        kwargs = {k: getattr(cfg, k) for k in ("bypass", "batch_norm", "small_input", "final_relu", "dropout",
                                               "zero_init_residual", "squeeze_ratio", "stem_channels")}
        kwargs["pool_after"] = None if cfg.pool_after is None else pool_layers(cfg.pool_after)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        target, input_size = target or cfg.arch, input_size or cfg.image_size
        num_classes = num_classes or (None if cfg.dataset == "folder" else 10)
        in_channels = in_channels or (1 if cfg.dataset == "fashion-mnist" else None)
    else:
        if options.get("pool_after") is not None:
            options = {**options, "pool_after": pool_layers(options["pool_after"])}
        kwargs = options
    target = target or "squeezenet1_1"
    if target not in list_models():
        raise UsageError(f"unknown architecture {target!r}: choose one of {', '.join(list_models())}, "
                         f"or pass a checkpoint")
    model = create_model(target, num_classes=num_classes or 1000, in_channels=in_channels or 3, **kwargs)
    title = f"{target} {_options(kwargs)}" + (f" (recipe {recipe})" if recipe else "")
    return format_info(title.strip(), model, _checked(model, input_size or 224))


def _checked(model: SqueezeNet, size: int) -> int:
    if size < model.min_input_size:
        raise UsageError(f"--input-size {size} is below this model's minimum input size {model.min_input_size}")
    return size


def _options(kwargs: dict) -> str:
    shown = {k: v for k, v in kwargs.items() if k not in ("num_classes", "in_channels")}
    return " ".join(f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in shown.items())
