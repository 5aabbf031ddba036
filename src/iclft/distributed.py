"""Data parallelism across processes started by ``accelerate launch`` (torch.distributed).

One process per device runs the same command; :func:`current` tells each which share is its.
Work is split where the result cannot depend on the split:

* **evaluation**: every process plans the whole call exactly as one process would (the plan is a
  pure function of the prompts and the batch caps) and runs a contiguous run of the planned
  batches (:meth:`Shard.assign`, balanced by tokens). So each prompt runs in the very batch, with
  the very neighbours and padding, it would run in alone: predictions are identical item by item
  at any process count. Contiguous runs keep the prefix caches of nested shot counts on one
  process. The outputs are then gathered (``all_gather_object``), so every process holds the
  whole result and rank 0 writes it;
* **fine-tuning**: one DDP job through the Trainer (accelerate);
* **analysis**: whole stages (one task's circuits or similarity) per process.

Nothing here runs when there is one process: :func:`current` is ``None`` and every caller takes
its single-process path unchanged.

The process group is torch.distributed's, described by the launcher's environment (gloo on CPU,
NCCL on GPUs), so the launchers accelerate supports (``accelerate launch``, torchrun, Slurm's
``srun`` with ``accelerate launch`` per node) all work; nothing here schedules processes itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

#: environment variable torch.distributed launchers set to the number of processes
WORLD_ENV = "WORLD_SIZE"


def launched_processes() -> int:
    """How many processes the launcher started (1 when not launched)."""
    try:
        return max(1, int(os.environ.get(WORLD_ENV, "1")))
    except ValueError:
        return 1


def rank() -> int:
    """This process's rank (0 when not launched)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def is_main() -> bool:
    return rank() == 0


@dataclass
class Shard:
    """This process's place among ``world`` processes, and the collectives they share."""

    rank: int
    world: int
    device: str = "cpu"
    _calls: int = field(default=0, repr=False)

    # ----- splitting ----------------------------------------------------------------------
    def assign(self, costs: Sequence[float]) -> list[int]:
        """The owner rank of each of ``len(costs)`` work units taken in order: contiguous runs
        of about equal total cost, none empty while there are at least ``world`` units."""
        n = len(costs)
        total = float(sum(costs)) or 1.0
        bounds = [0]
        acc, j = 0.0, 0
        for r in range(1, self.world):
            while j < n and acc + costs[j] / 2 < total * r / self.world:
                acc += costs[j]
                j += 1
            bounds.append(j)
        bounds.append(n)
        if n >= self.world:  # every rank gets at least one unit
            for r in range(1, self.world):
                bounds[r] = max(bounds[r], bounds[r - 1] + 1)
            for r in range(self.world - 1, 0, -1):
                bounds[r] = min(bounds[r], bounds[r + 1] - 1)
        owners = [0] * n
        for r in range(self.world):
            for i in range(bounds[r], bounds[r + 1]):
                owners[i] = r
        return owners

    def round_robin(self, n: int) -> list[int]:
        """The owner rank of each of ``n`` independent whole units (analysis stages)."""
        return [i % self.world for i in range(n)]

    # ----- collectives --------------------------------------------------------------------
    def gather(self, obj: T) -> list[T]:
        """Every process's ``obj``, in rank order, on every process."""
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every process."""
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and give every process its result; an exception there is
        raised on every process (so no process waits forever on one that failed)."""
        from iclft.errors import UserError

        result: Any = None
        error: BaseException | None = None
        if self.rank == 0:
            try:
                result = fn()
            except Exception as exc:  # noqa: BLE001 - re-raised on every rank below
                error = exc
        ok, value, message, kind = self.broadcast(
            (error is None, result if error is None else None, str(error), type(error).__name__)
        )
        if error is not None:
            raise error
        if not ok:
            cls = UserError if kind in ("UserError", "UnknownNameError", "DirectoryBusy") else None
            if cls is not None:
                raise cls(message)
            raise RuntimeError(f"rank 0 failed ({kind}): {message}")
        return value

    # ----- progress -----------------------------------------------------------------------
    def progress(self, callback: Callable[[int], None] | None, total: int):
        """A progress callback for one engine call that counts the whole job: every process
        adds what it did to a shared counter (the process group's key-value store) and rank 0
        shows the sum. Returns ``(advance, finish)``; ``finish()`` (after the results are
        gathered) brings rank 0's display to ``total``."""
        self._calls += 1
        key = f"iclft/progress/{self._calls}"
        store = _store()
        shown = 0

        def advance(n: int) -> None:
            nonlocal shown
            if store is None:
                if self.rank == 0 and callback:
                    callback(n)
                    shown += n
                return
            done = store.add(key, int(n))
            if self.rank == 0 and callback and done > shown:
                callback(min(done, total) - shown)
                shown = min(done, total)

        def finish() -> None:
            nonlocal shown
            if self.rank == 0 and callback and total > shown:
                callback(total - shown)
                shown = total

        return advance, finish


def _store():
    """The process group's key-value store, if torch exposes it (else progress is local)."""
    try:
        from torch.distributed import distributed_c10d

        return distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - a private API: without it, each rank counts its own
        return None


_CURRENT: Shard | None = None


def current() -> Shard | None:
    """This process's :class:`Shard` when launched with more than one process, else ``None``.

    The first call joins the process group the launcher describes (``env://``: NCCL when there
    are GPUs, gloo otherwise), unless accelerate or the Trainer already did; each process takes
    the GPU of its ``LOCAL_RANK``."""
    global _CURRENT
    if _CURRENT is not None or launched_processes() == 1:
        return _CURRENT
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    _CURRENT = Shard(dist.get_rank(), dist.get_world_size(), f"cuda:{local}" if cuda else "cpu")
    return _CURRENT
