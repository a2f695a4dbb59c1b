"""Which process does which shard jobs, and the one lock per build job.

Under accelerate/torchrun the launcher sets ranks (`PartialState`); independent processes (a job array)
give them with --rank/--world-size. Job *i* goes to rank *i mod world*. Rank 0 takes the output's
lock and tells every rank whether it got it; independent ranks each lock their own slot.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from fakeforge.config import ConfigError
from fakeforge.locking import LOCK_FILE, FolderLockedError, output_lock
from fakeforge.shards.store import Store


@dataclass
class Ranks:
    """Which shard jobs this process takes: job i goes to rank i mod world. `independent`: ranks given
    with --rank/--world-size (separate jobs, no collective calls between them)."""

    rank: int
    world: int
    independent: bool = False


def process_state():
    """accelerate's PartialState; on a machine without CUDA, several launched processes use gloo on CPU."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def _broadcast_from_main(state, value):
    """`value` as rank 0 has it, on every rank (a no-op with one process)."""
    import torch.distributed as dist

    if state.num_processes == 1 or not dist.is_available() or not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextmanager
def build_lock(store: Store, state, ranks: Ranks):
    """One build job per output: rank 0 takes the lock and tells every rank whether it got it, so every
    rank of a second job exits with the holder named. Independent ranks (--rank) each lock their slot."""
    name = LOCK_FILE if not ranks.independent else f".fakeforge.rank-{ranks.rank}-of-{ranks.world}.lock"
    lock = output_lock(store, "build" if not ranks.independent else f"build rank {ranks.rank}/{ranks.world}", name)
    error = None
    if state.is_main_process:
        try:
            lock.acquire()
        except FolderLockedError as exc:
            error = str(exc)
        except OSError as exc:
            error = f"output '{store}' cannot be created or locked: {exc.strerror or exc}"
    error = _broadcast_from_main(state, error)
    if error:
        raise FolderLockedError(error)
    try:
        yield lock
    finally:
        lock.release()


def resolve_ranks(state, rank: int | None, world_size: int | None) -> Ranks:
    """This process's rank: from the launcher (accelerate/torchrun), or from --rank/--world-size."""
    if rank is None and world_size is None:
        return Ranks(state.process_index, state.num_processes)
    if rank is None or world_size is None:
        raise ConfigError("--rank and --world-size go together (e.g. --rank $SLURM_ARRAY_TASK_ID --world-size "
                          "$SLURM_ARRAY_TASK_COUNT)")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"--rank {rank} --world-size {world_size}: need 0 <= rank < world-size")
    if state.num_processes > 1:
        raise ConfigError(f"--rank {rank} --world-size {world_size} are for independent processes (a job array); "
                          f"this one was launched with {state.num_processes} processes by accelerate/torchrun, "
                          "which sets the ranks itself")
    return Ranks(rank, world_size, independent=True)
