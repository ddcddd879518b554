"""Checkpoints: weights in safetensors (no pickles) with everything needed to use them in the
metadata (architecture, options, class names, preprocessing); trainer state via ``weights_only``.

Every write is atomic (temporary file, fsync, rename), so a crash never leaves a half-written
file that a resume or an ``eval`` would read.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import SqueezeNetError
from .model import SqueezeNet
from .zoo import create_model, load_weights

FORMAT = "squeezenet-checkpoint/1"
STATE_KEYS = ("epoch", "model", "optimizer", "scheduler", "history")


def crash_point(name: str) -> None:
    """Test hook proving crash safety: ``SQUEEZENET_KILL_AT=NAME`` SIGKILLs this process when it
    reaches the point NAME (e.g. ``epoch2-step3``, ``before-rename:last.state.pt``)."""
    if os.environ.get("SQUEEZENET_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        crash_point(f"before-rename:{path.name}")
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
        crash_point(f"after-rename:{path.name}")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_checkpoint(path: str | Path, model: SqueezeNet, meta: dict) -> None:
    """``meta`` holds at least ``arch``, ``model_kwargs``, ``class_names`` and ``preprocess``."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, **{k: json.dumps(v) for k, v in meta.items()}}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def resolve_checkpoint(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / "best.safetensors"
    if not path.is_file():
        raise SqueezeNetError(f"checkpoint {path} does not exist: pass a .safetensors file written "
                              f"by `squeezenet train`, or its run directory")
    return path


def read_metadata(path: str | Path) -> dict:
    path = resolve_checkpoint(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise SqueezeNetError(f"{path} is not a safetensors checkpoint ({e})") from None
    if raw.get("format") != FORMAT:
        raise SqueezeNetError(f"{path} is not a checkpoint written by `squeezenet train` (no "
                              f"{FORMAT} metadata); load plain weights with create_model(weights=...)")
    try:
        return {k: json.loads(v) for k, v in raw.items() if k != "format"}
    except json.JSONDecodeError as e:
        raise SqueezeNetError(f"{path} has corrupt metadata ({e})") from None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[SqueezeNet, dict]:
    """The model (eval mode) and the metadata of a checkpoint or run directory."""
    path = resolve_checkpoint(path)
    meta = read_metadata(path)
    model = create_model(meta["arch"], **meta["model_kwargs"])
    load_weights(model, path)
    return model.to(device).eval(), meta


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
