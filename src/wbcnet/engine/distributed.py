"""Data-parallel training with PyTorch's own engine: `torchrun ... -m wbcnet train ...`.

torchrun starts K processes and tells each its place through environment variables (RANK,
WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT). `Dist.from_env()` reads them and
joins the process group (gloo on CPUs, NCCL on GPUs); without them it is the one-process
no-op, so `fit()` has one code path. The rest of training stays as it is:

- every rank draws the same epoch order (balanced sampler included) from the shared seed and
  takes every K-th image of it, so the ranks see disjoint shards of one epoch;
- DistributedDataParallel averages the gradients, so every rank holds the same weights and the
  same EMA; rank 0 alone validates, writes the run folder and checkpoints, and sends the
  validation scores to the others so that all of them stop early at the same epoch;
- rank 0 splits and decodes first; the others then read its split.csv and map its decode cache
  (on a filesystem they share) instead of decoding again.

Only small numbers and strings travel between ranks, as tensors: nothing is pickled.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..core.errors import WbcnetError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str) -> "Dist":
        """The context torchrun set up, with the process group joined; one process without it."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        d = cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")),
                int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))
        if not dist.is_initialized():
            gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
            if gpu:
                if not torch.cuda.is_available():
                    raise WbcnetError(f"device {device}: no CUDA GPU is visible to rank {d.rank}")
                torch.cuda.set_device(d.local_rank)
            dist.init_process_group("nccl" if gpu else "gloo")
        return d

    def device(self, name: str) -> str:
        """Each rank on a GPU takes its own: cuda -> cuda:LOCAL_RANK."""
        return f"cuda:{self.local_rank}" if self.active and name in ("cuda", "auto") and torch.cuda.is_available() \
            else name

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over the ranks (identity for one process)."""
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return t.cpu().tolist()

    def from_main(self, values: list[float]) -> list[float]:
        """Rank 0's values on every rank."""
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.broadcast(t, 0)
        return t.cpu().tolist()

    def text_from_main(self, text: str) -> str:
        """Rank 0's string (e.g. the run folder it made) on every rank, as bytes in a tensor."""
        if not self.active:
            return text
        data = text.encode() if self.main else b""
        n = int(self.from_main([len(data)])[0])
        buf = torch.zeros(n, dtype=torch.uint8, device=self._comm_device())
        if self.main:
            buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        dist.broadcast(buf, 0)
        return bytes(buf.cpu().tolist()).decode()

    def close(self) -> None:
        if self.active and dist.is_initialized():
            # Every rank reaches this point before any tears gloo down: a rank that destroyed its group
            # while the other still had a collective's connection open aborted at exit ("terminate called
            # without an active exception", 2 of 5 CI runs of test_distributed at 9c0be66).
            dist.barrier()
            dist.destroy_process_group()

    def _comm_device(self) -> torch.device:
        # NCCL only moves CUDA tensors; gloo moves CPU ones.
        return torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")
