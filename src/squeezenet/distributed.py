"""torch.distributed glue for ``torchrun -m squeezenet train``: one object the trainer asks.

Without torchrun (WORLD_SIZE unset or 1) every method is the single-process no-op, so the
trainer reads the same either way. gloo on CPU, nccl on GPU.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as td
from torch.utils.data import DistributedSampler

from .errors import SqueezeNetError
from .evaluate import evaluate_raw, summarize_confusion


class ShardSampler:
    """Evaluation shards without padding (DistributedSampler repeats samples to even out the
    ranks, which would count them twice in the metrics): rank r takes r, r+W, r+2W, ..."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class Context:
    enabled: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_batch(self, global_batch: int) -> int:
        if global_batch % self.world_size:
            raise SqueezeNetError(f"--batch-size {global_batch} is the global batch and must divide "
                                  f"evenly among {self.world_size} processes")
        return global_batch // self.world_size

    def sampler(self, dataset, shuffle: bool, seed: int):
        if not self.enabled:
            return None
        return DistributedSampler(dataset, self.world_size, self.rank, shuffle=shuffle, seed=seed)

    def eval_sampler(self, dataset):
        return ShardSampler(len(dataset), self.rank, self.world_size) if self.enabled else None

    def wrap(self, model):
        if not self.enabled:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def reduce_train(self, loss_sum, correct, seen: int) -> tuple[float, float, int]:
        seen_t = torch.tensor(seen, dtype=torch.float64, device=loss_sum.device)
        packed = torch.stack([loss_sum.double(), correct.double(), seen_t])
        if self.enabled:
            td.all_reduce(packed)
        loss, corr, n = packed.tolist()
        return loss / max(n, 1), 100.0 * corr / max(n, 1), int(n)

    def evaluate(self, model, loader, num_classes: int, tta: bool = False, autocast=None) -> dict:
        confusion, loss_sum, top5 = evaluate_raw(model, loader, num_classes, tta, autocast)
        if self.enabled:
            for t in (confusion, loss_sum, top5):
                td.all_reduce(t)
        return summarize_confusion(confusion, loss_sum, top5)

    def broadcast_float(self, value: float) -> float:
        """Rank 0's value on every rank (so decisions made from a clock agree)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        td.broadcast(t, src=0)
        return float(t.item())

    def barrier(self) -> None:
        if self.enabled:
            td.barrier()

    @contextmanager
    def main_first(self):
        """Rank 0 runs the block first (e.g. decoding data into the shared cache) while the others
        wait, then they run it (finding the cache ready)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (e.g. a stop signal reached one rank)."""
        if not self.enabled:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        td.all_reduce(t, op=td.ReduceOp.MAX)
        return bool(t.item())

    def cleanup(self) -> None:
        if self.enabled and td.is_initialized():
            td.destroy_process_group()


def setup(device_pref: str = "auto") -> Context:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Context()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_pref != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not td.is_initialized():
        td.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Context(True, rank, world_size, local_rank, device)
