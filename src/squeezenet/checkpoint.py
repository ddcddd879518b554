"""Checkpoints: weights in safetensors (no pickles) with the run's ``RunMeta`` in the metadata,
and the trainer's state for ``--resume`` through ``weights_only`` loading. Every write is atomic
(``files.atomic_path``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import SqueezeNetError
from .files import atomic_path
from .model import SqueezeNet
from .modelfile import ModelFile, is_model_file
from .runs import RunMeta
from .zoo import create_model, list_models, load_weights

FORMAT = "squeezenet-checkpoint/1"
STATE_KEYS = ("epoch", "model", "optimizer", "scheduler", "history")


def save_checkpoint(path: str | Path, model: torch.nn.Module, meta: RunMeta | dict) -> None:
    """``meta``: a RunMeta, or its dict (at least arch, model_kwargs, class_names, preprocess)."""
    meta = meta if isinstance(meta, RunMeta) else RunMeta.parse(meta)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, **meta.to_metadata()})


def resolve_checkpoint(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / "best.safetensors"
    if not path.is_file():
        raise SqueezeNetError(f"checkpoint {path} does not exist: pass a .safetensors file written "
                              f"by `squeezenet train`, or its run directory")
    return path


def _header(path: Path) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """(raw metadata, tensor name -> shape), read from the file's header alone."""
    with open(path, "rb") as f:
        if f.read(4) == b"SQZC":
            raise SqueezeNetError(f"{path} was written by an earlier `squeezenet compress` (an LZMA format this "
                                  f"version does not read): compress the original checkpoint again")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}, {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise SqueezeNetError(f"{path} is not a safetensors checkpoint ({e})") from None


def read_metadata(path: str | Path) -> RunMeta:
    """The RunMeta of a checkpoint or run directory. Checkpoints written before ``augment`` and
    ``crop_pad`` joined the metadata take them from their run's config.json."""
    path = resolve_checkpoint(path)
    if is_model_file(path):
        return read_model_file(path).meta
    raw, _ = _header(path)
    return _parse(path, raw)


def _parse(path: Path, raw: dict) -> RunMeta:
    if raw.get("format") != FORMAT:
        raise SqueezeNetError(f"{path} is not a checkpoint written by `squeezenet train` (no "
                              f"{FORMAT} metadata); load plain weights with create_model(weights=...)")
    try:
        meta = RunMeta.from_metadata(raw)
    except SqueezeNetError as e:
        raise SqueezeNetError(f"{path}: {e}") from None
    config = path.parent / "config.json"
    missing = {"augment", "crop_pad"} - {k for k in raw}
    if missing and config.is_file():
        try:
            saved = json.loads(config.read_text())
        except (OSError, ValueError):
            saved = {}
        meta = meta.replace(**{k: saved[k] for k in missing if saved.get(k) not in (None, "auto")})
    return meta


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[SqueezeNet, RunMeta]:
    """The model (eval mode) and RunMeta of a checkpoint or run directory. The architecture the
    metadata describes is checked against the file's tensor shapes before any weight is built."""
    path = resolve_checkpoint(path)
    if is_model_file(path):
        return load_model_file(path)[0].to(device), read_model_file(path).meta
    raw, shapes = _header(path)
    meta = _parse(path, raw)
    model = build_checked(meta, shapes, str(path))
    load_weights(model, path)
    return model.to(device).eval(), meta


def read_model_file(path: Path) -> ModelFile:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SqueezeNetError(f"cannot read {path}: {e.strerror or e}") from None
    return ModelFile.read(data, str(path))


def load_model_file(path: Path) -> tuple[SqueezeNet, ModelFile]:
    """The PyTorch model of a C-engine model file (``compress`` writes one): its weights decoded,
    each folded bias put back where the checkpoint had it (the conv's bias, or its BatchNorm's
    shift with the BatchNorm made the identity)."""
    mf = read_model_file(path)
    convs = mf.convolutions()
    with torch.device("meta"):
        skeleton = create_model(mf.meta.arch, **mf.meta.model_kwargs)
    expected = {n for n, m in skeleton.named_modules() if isinstance(m, torch.nn.Conv2d)}
    shapes = {n: tuple(skeleton.get_submodule(n).weight.shape) for n in expected}
    wrong = sorted(expected ^ set(convs)) + [n for n in expected & set(convs) if convs[n][0].shape != shapes[n]]
    if wrong:
        raise SqueezeNetError(f"{path}: its layers do not match its metadata ({', '.join(wrong[:3])}): the file "
                              f"is damaged or was edited")
    model = create_model(mf.meta.arch, **mf.meta.model_kwargs).eval()
    with torch.no_grad():
        for name, (weight, bias) in convs.items():
            conv = model.get_submodule(name)
            conv.weight.copy_(torch.from_numpy(weight))
            bias, after = torch.from_numpy(bias), model.batchnorm_after(name)
            if conv.bias is not None:
                conv.bias.copy_(bias)
            elif after is not None:
                bn, part = after
                bn.weight[part], bn.bias[part], bn.running_mean[part] = 1.0, bias, 0.0
                bn.running_var[part] = 1.0 - bn.eps
            elif bias.abs().max() > 0:
                raise SqueezeNetError(f"{path}: {name} has a bias its metadata gives no place to")
    return model, mf


def build_checked(meta: RunMeta, shapes: dict[str, tuple[int, ...]], source: str) -> SqueezeNet:
    """``meta``'s model, after its shapes (from a model on the meta device: no memory) match ``shapes``."""
    if meta.arch not in list_models():
        raise SqueezeNetError(f"{source}: unknown architecture {meta.arch!r} in its metadata "
                              f"(this version builds {', '.join(list_models())})")
    with torch.device("meta"):
        skeleton = create_model(meta.arch, **meta.model_kwargs)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    wrong = [f"{k}: file {shapes.get(k)}, metadata {v}" for k, v in expected.items()
             if shapes.get(k) != v and not k.endswith("num_batches_tracked")]
    if wrong:
        raise SqueezeNetError(f"{source}: its metadata does not describe its weights ({'; '.join(wrong[:3])}"
                              f"{'; ...' if len(wrong) > 3 else ''}): the file is damaged or was edited")
    return create_model(meta.arch, **meta.model_kwargs)


def save_state(path: str | Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: str | Path) -> dict:
    """Trainer state for ``--resume``; ``weights_only`` refuses any pickled object but tensors and
    plain containers, so a planted payload is rejected before it can run."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SqueezeNetError(f"trainer state {path} does not exist: nothing to resume") from None
    except Exception as e:  # UnpicklingError for foreign payloads, RuntimeError/BadZipFile for corrupt files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SqueezeNetError(f"refusing to load trainer state {path}: {first}") from None
    if not isinstance(state, dict) or any(k not in state for k in STATE_KEYS):
        raise SqueezeNetError(f"{path} is not a trainer state written by `squeezenet train` (expected "
                              f"the keys {', '.join(STATE_KEYS)})")
    return state
