"""Where and how tensors compute: the device, mixed precision, CPU threads."""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import torch

from .errors import SqueezeNetError


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SqueezeNetError("--device cuda asked for, but PyTorch sees no CUDA GPU: use --device cpu")
    return torch.device(name)


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((x for x in text.splitlines() if x.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def native_bf16(device: torch.device) -> bool:
    """bf16 math only where the hardware computes it natively (AVX512-BF16, AMX, a GPU);
    elsewhere it is slower than fp32. ``torch.cpu``'s checks are private, so they are guarded and
    /proc/cpuinfo is the fallback."""
    return _native_bf16(device.type, device.index)


@functools.cache  # asked on every optimizer step
def _native_bf16(kind: str, index: int | None) -> bool:
    if kind == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def autocast(amp: str, device: torch.device):
    """A context-manager factory for ``amp`` (auto, bf16, fp16, off); ``nullcontext`` when off."""
    if amp == "auto":
        amp = "bf16" if native_bf16(device) else "off"
    if amp == "off":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def use_all_cores() -> None:
    """Intra-op threads on every core unless the user set OMP_NUM_THREADS."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(os.cpu_count() or 1)


def cpu_name() -> str:
    """The CPU's model as the kernel names it (platform.processor() is empty on Linux)."""
    try:
        return next(x.partition(":")[2].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                    if x.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or platform.machine()
