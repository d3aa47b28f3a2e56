"""Data-parallel training under ``torchrun``: which process this is, and the few collectives the
training loop and the pipeline need.

One process per device (or per CPU socket), started by ``torchrun --nproc-per-node N`` (or
``--nnodes`` with a rendezvous for several machines). ``torchrun`` sets ``RANK``,
``WORLD_SIZE`` and ``MASTER_ADDR``/``MASTER_PORT``; without them everything here is a no-op and
training runs as one process. The backend is NCCL when the process has a GPU, gloo on CPU.

Every rank holds the whole model (DDP: gradients are averaged after each backward); rank 0
alone writes checkpoints, reports and progress, and runs the stages that are not training
(pruning, quantization, evaluation) while the others wait for it.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

# Collectives wait this long for the slowest rank: rank 0 alone quantizes, prunes and
# evaluates while the others wait at a barrier, which on a large model takes hours.
TIMEOUT = datetime.timedelta(seconds=float(os.environ.get("SLIMRANK_DIST_TIMEOUT_S", 6 * 3600)))


# True while rank 0 runs something alone (``on_main``): collectives are then no-ops there, so
# a stage that trains inside it (gradual pruning) trains as one process.
_alone = False


def active() -> bool:
    """Whether collectives run: in a process group, and not inside ``on_main``."""
    return dist.is_initialized() and not _alone


def world_size() -> int:
    """Processes that train together now (1 outside a process group or inside ``on_main``)."""
    return dist.get_world_size() if active() else 1


def rank() -> int:
    if dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Whether this process writes files and shows progress (rank 0, or the only process)."""
    return rank() == 0


def init() -> bool:
    """Joins the process group when started by ``torchrun`` with more than one process;
    returns whether training is distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
    return True


def barrier() -> None:
    if active():
        dist.barrier()


def finish() -> None:
    """Leaves the process group together: every rank waits for the others, then closes its
    connections. A rank that exits while another still holds its gloo connections can abort
    that one (``terminate called without an active exception``) after all the work is done."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def mean(value: float) -> float:
    """The mean of ``value`` over the ranks (the value itself when not distributed)."""
    if not active():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def on_main(fn: Callable[[], Any]) -> Any:
    """Runs ``fn`` on rank 0 while the others wait; every rank gets rank 0's (picklable) result,
    or rank 0's exception re-raised as ``RuntimeError`` so no rank waits forever. Nested calls
    run ``fn`` directly."""
    global _alone
    if not active():
        return fn()
    box: list[Any] = [None]
    if is_main():
        _alone = True
        try:
            box[0] = ("ok", fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised below, on every rank
            box[0] = ("error", f"{type(exc).__name__}: {exc}")
            _alone = False
            dist.broadcast_object_list(box, src=0)
            raise
        finally:
            _alone = False
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise RuntimeError(f"rank 0 failed: {value}")
    return value


def shard(batch: list, rank_: int | None = None, size: int | None = None) -> list:
    """This rank's part of a global minibatch: every ``size``-th example from ``rank_``."""
    r = rank() if rank_ is None else rank_
    n = world_size() if size is None else size
    return batch[r::n]
