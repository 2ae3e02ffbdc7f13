"""`gnl fit` on several processes: data parallel training under torchrun.

    torchrun --standalone --nproc_per_node N -m gnl fit --data DIR --out OUT ...

(With Debian's PyTorch, built without libuv: `python3 -m gnl.torchrun ...`,
torchrun itself with its rendezvous store told not to use libuv.)

torchrun starts N copies of `gnl fit` and tells each its rank (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); `World.start` joins them into one
process group: NCCL between GPUs (one per process, cuda:LOCAL_RANK), gloo on
the CPU. Without torchrun (WORLD_SIZE unset) it is a world of one and every
call below does nothing, so a plain `gnl fit` is unchanged.

How the work is shared (what PyTorch's DistributedDataParallel does, written
out because gnl's model is called through several entry points, teacher,
features and the map, not one forward):
- every process builds the same model from the same seed, and rank 0's
  weights and buffers are broadcast once, so that all start equal (a
  resumed checkpoint too);
- every process draws the whole batch, indices and augmented views, from
  the same seeded generators, so that the draws and the generators' states
  are those of a single process; each then runs the networks on its share
  of the batch (rank r takes items r, r+N, ...);
- after backward, the gradients are averaged over the processes before
  the optimiser's step, so every process takes the same step; BatchNorm's
  running statistics are rank 0's, broadcast after each step (DDP's
  broadcast_buffers). Batch statistics are each share's own, as in DDP
  without SyncBatchNorm: results match one process within the spread of
  seeds, not bit for bit (models/RESULTS.md, "Training on several
  processes");
- decisions that depend on the clock (--max-minutes) are rank 0's;
- after the two training stages only rank 0 goes on: the memory, the
  threshold, the report, the checkpoint and the bundle are its alone; the
  others leave. Rank 0 writes every checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist
from torch import nn


class NoLibuvStore(dist.TCPStore):
    """TCPStore that does not ask for libuv unless told to. PyTorch asks for
    it by default, and several of its rendezvous paths ignore USE_LIBUV=0,
    so a PyTorch built without libuv (Debian's) cannot start a process group
    through them (gnl/torchrun.py installs this in the launcher)."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 (TCPStore's own signature)
        kwargs.setdefault("use_libuv", os.environ.get("USE_LIBUV", "0") == "1")
        super().__init__(*args, **kwargs)


def without_libuv() -> None:
    """Make torch.distributed's rendezvous create NoLibuvStore, for a PyTorch
    built without libuv; nothing where it has libuv."""
    import importlib

    from torch.distributed.elastic.rendezvous import c10d_rendezvous_backend, static_tcp_rendezvous

    # the module, not the function torch.distributed.rendezvous it shadows
    rdzv = importlib.import_module("torch.distributed.rendezvous")

    if _has_libuv():
        return
    os.environ.setdefault("USE_LIBUV", "0")
    dist.TCPStore = NoLibuvStore  # the dynamic (c10d, --standalone) rendezvous looks it up here
    for module in (rdzv, c10d_rendezvous_backend, static_tcp_rendezvous):
        module.TCPStore = NoLibuvStore  # type: ignore[attr-defined]


def _has_libuv() -> bool:
    """Whether this PyTorch's TCPStore can use libuv."""
    try:
        dist.TCPStore("127.0.0.1", 0, 1, True, use_libuv=True).libuvBackend  # noqa: B018 (probing)
        return True
    except (RuntimeError, ValueError):
        return False


class World:
    """This process's place among the processes that train together."""

    def __init__(self, rank: int = 0, size: int = 1, local_rank: int = 0, comm: str = "cpu") -> None:
        self.rank, self.size, self.local_rank = rank, size, local_rank
        self.comm = torch.device(comm)  # where the small tensors of collectives live (NCCL: the GPU)

    @classmethod
    def start(cls, device: torch.device) -> World:
        """Join torchrun's process group, if started by torchrun."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        backend = "nccl" if device.type == "cuda" else "gloo"
        without_libuv()  # Debian's PyTorch (see NoLibuvStore)
        if device.type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend)
        return cls(rank, size, local, f"cuda:{local}" if backend == "nccl" else "cpu")

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files and says when to stop."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1

    def device(self, device: torch.device) -> torch.device:
        """The device this rank trains on: its own GPU, or the CPU."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.parallel else device

    def share(self, n: int) -> list[int]:
        """The positions of a batch of n that this rank runs."""
        return list(range(self.rank, n, self.size))

    def sync_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers into every rank's `module`."""
        if not self.parallel:
            return
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, 0)

    def sync_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm's running statistics) into every rank's."""
        if not self.parallel:
            return
        for b in module.buffers():
            dist.broadcast(b.data, 0)

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Each gradient replaced by its mean over the ranks (one all-reduce
        of all of them flattened together)."""
        if not self.parallel:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.size
        i = 0
        for g in grads:
            g.copy_(flat[i:i + g.numel()].view_as(g))
            i += g.numel()

    def mean(self, values: Sequence[float]) -> list[float]:
        """Values (losses, for the log) averaged over the ranks."""
        if not self.parallel:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.float64, device=self.comm)
        dist.all_reduce(t)
        return (t / self.size).tolist()

    def agree(self, flag: bool) -> bool:
        """Rank 0's flag, on every rank (a clock-based decision)."""
        if not self.parallel:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=self.comm)
        dist.broadcast(t, 0)
        return bool(t.item())

    def barrier(self) -> None:
        if self.parallel:
            dist.barrier()

    def close(self) -> None:
        if self.parallel and dist.is_initialized():
            dist.destroy_process_group()
