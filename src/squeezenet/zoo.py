"""One front door to every variant: ``create_model(name, **kwargs)``, ``list_models()``, weights."""

from __future__ import annotations

import fnmatch
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import SqueezeNetError
from .model import VERSIONS, SqueezeNet, squeezenet1_0, squeezenet1_1, squeezenet_meta

_MODELS = {
    "squeezenet1_0": squeezenet1_0,
    "squeezenet1_1": squeezenet1_1,
    "squeezenet_meta": squeezenet_meta,
}

# torchvision's published ImageNet weights (download only when asked; tests never need them).
TORCHVISION_URL = "https://download.pytorch.org/models/{file}"


def list_models(pattern: str = "*") -> list[str]:
    """Architecture names matching a shell-style ``pattern`` (timm's ``list_models``)."""
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))


def create_model(name: str, weights: str | Path | None = None, **kwargs) -> SqueezeNet:
    """Build ``name`` with ``kwargs`` (num_classes, in_channels, dropout, bypass, batch_norm,
    small_input, ...). ``weights`` is a local ``.pth``/``.safetensors`` file, or ``"torchvision"``
    to download the published ImageNet weights for v1.0/v1.1."""
    if name not in _MODELS:
        raise SqueezeNetError(f"unknown architecture {name!r}: choose one of {', '.join(list_models())}")
    try:
        model = _MODELS[name](**kwargs)
    except TypeError as e:  # an unknown keyword
        raise SqueezeNetError(f"cannot build {name}: {e}") from None
    if weights == "torchvision":
        load_torchvision_weights(model, name)
    elif weights is not None:
        load_weights(model, weights)
    return model


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)

    def notes(self) -> list[str]:
        out = []
        if self.reinitialised:
            out.append(f"classifier re-initialised for the new class count ({', '.join(self.reinitialised)})")
        if self.adapted:
            out.append(f"input conv adapted to the new channel count ({', '.join(self.adapted)})")
        return out


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` file or a ``.pth`` state dict. Never executes a pickle:
    safetensors holds no code, and ``weights_only=True`` refuses anything but tensors."""
    path = Path(path)
    if not path.is_file():
        raise SqueezeNetError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise SqueezeNetError(f"{path} is not a valid safetensors file ({e})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise SqueezeNetError(
            f"refusing to load {path}: it holds Python objects other than tensors, which could run "
            f"code ({first}). Use a safetensors file or a plain state_dict") from None
    except Exception as e:  # corrupt archives raise RuntimeError, BadZipFile, EOFError, KeyError, ...
        raise SqueezeNetError(f"{path} is not a readable PyTorch weights file "
                              f"({type(e).__name__}: {e})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in obj.items()):
        raise SqueezeNetError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_weights(model: nn.Module, source: str | Path | dict) -> LoadReport:
    """Load weights into ``model``: exact where shapes agree; a classifier of another class count
    is left freshly initialised (fine-tuning); RGB conv1 weights are summed for grayscale input.
    Anything else that does not fit raises, naming the keys and shapes."""
    state = source if isinstance(source, dict) else read_state_dict(source)
    own = model.state_dict()
    report = LoadReport()
    keep, problems = {}, []
    for key, value in state.items():
        if key not in own:
            problems.append(f"unexpected key {key} {tuple(value.shape)}")
        elif value.shape == own[key].shape:
            keep[key] = value
        elif key.startswith("classifier.") and value.shape[1:] == own[key].shape[1:]:
            report.reinitialised.append(key)
        elif key == "features.0.weight" and value.shape[0] == own[key].shape[0] \
                and value.shape[2:] == own[key].shape[2:] and own[key].shape[1] == 1:
            # timm's adapt_input_conv: a grayscale image is R=G=B, so summing RGB filters is exact.
            keep[key] = value.sum(dim=1, keepdim=True)
            report.adapted.append(key)
        else:
            problems.append(f"{key}: file has {tuple(value.shape)}, model has {tuple(own[key].shape)}")
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    problems += [f"missing key {k} {tuple(own[k].shape)}" for k in missing]
    if problems:
        shown = "; ".join(problems[:10]) + (f"; ... ({len(problems) - 10} more)" if len(problems) > 10 else "")
        raise SqueezeNetError(f"weights do not fit this architecture: {shown}. Check --arch and its "
                              f"options (bypass, batch norm, small input) against the file's")
    model.load_state_dict(keep, strict=False)
    report.loaded = sorted(keep)
    return report


def load_torchvision_weights(model: nn.Module, name: str) -> LoadReport:
    if name not in VERSIONS:
        raise SqueezeNetError(f"torchvision publishes weights for {', '.join(VERSIONS)} only")
    url = TORCHVISION_URL.format(file=VERSIONS[name].torchvision_file)
    try:
        state = torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True)
    except Exception as e:  # network errors come in many types
        raise SqueezeNetError(f"could not download {url} ({e}); download it by hand and pass the "
                              f"file path as weights") from None
    return load_weights(model, state)
