"""The small communication facade every MPI-aware part of mlmotex-hpc uses.

Everything takes a communicator (``comm=None`` means ``MPI.COMM_WORLD``).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:
    from mpi4py import MPI


def get_comm(comm: MPI.Comm | None = None) -> MPI.Comm:
    """``comm``, or ``MPI.COMM_WORLD`` when None (MPI starts here, not on import)."""
    if comm is not None:
        return comm
    from mpi4py import MPI

    return MPI.COMM_WORLD


class SoloComm:
    """One process as a communicator of one rank, with no MPI library behind it: the
    calls the pipeline makes, done locally. ``merge`` (a serial command, which must not
    start MPI on a login node) runs the extract stage with it."""

    rank = 0
    size = 1

    def bcast(self, obj, root: int = 0):
        return obj

    def Bcast(self, buf, root: int = 0) -> None:  # noqa: N802 - mpi4py's name
        return None

    def allgather(self, obj) -> list:
        return [obj]

    def gather(self, obj, root: int = 0) -> list:
        return [obj]

    def allreduce(self, obj, op=None):
        return obj

    def Barrier(self) -> None:  # noqa: N802 - mpi4py's name
        return None

    def Abort(self, code: int = 1) -> None:  # noqa: N802 - mpi4py's name
        raise SystemExit(code)


def chunk(n: int, rank: int, size: int) -> tuple[int, int]:
    """Static block split of ``n`` items: ``(offset, count)`` owned by ``rank``.

    The first ``n % size`` ranks get one item more; needs no messages.
    """
    count = n // size + (n % size > rank)
    offset = rank * (n // size) + min(rank, n % size)
    return offset, count


def wait_idle(comm: MPI.Comm, poll: float = 0.02) -> None:
    """A barrier that sleeps while it waits.

    Open MPI's blocking barrier spins a core at 100 %; ranks that wait for rank 0 (e.g.
    while it trains the model) would steal the cores XGBoost runs on.
    """
    if comm.size == 1:
        return
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(poll)


def bcast_array(array: np.ndarray | None, comm: MPI.Comm, root: int = 0) -> np.ndarray:
    """Broadcast a NumPy array from ``root`` as a raw buffer (no pickling of the data)."""
    if comm.size == 1:
        return array
    meta = comm.bcast(None if comm.rank != root else (array.shape, array.dtype.str), root)
    if comm.rank == root:
        array = np.ascontiguousarray(array)
    else:
        array = np.empty(meta[0], dtype=np.dtype(meta[1]))
    comm.Bcast(array, root)
    return array


def from_root(value, comm: MPI.Comm, root: int = 0):
    """``root``'s ``value`` on every rank (a small, picklable value; arrays:
    :func:`bcast_array`)."""
    return value if comm.size == 1 else comm.bcast(value if comm.rank == root else None, root)


def on_root(func, comm: MPI.Comm, root: int = 0):
    """``func()`` on ``root`` alone (what only it holds: a file it writes); None on the
    other ranks. Not collective."""
    return func() if comm.rank == root else None


def gather_everywhere(items: list, comm: MPI.Comm) -> list:
    """Every rank's ``items``, joined in rank order, on every rank."""
    if comm.size == 1:
        return list(items)
    return [item for share in comm.allgather(items) for item in share]


def my_tasks(n_tasks: int, comm: MPI.Comm) -> range:
    """The tasks of ``n_tasks`` this rank takes, dealt round-robin (task k to rank
    k mod size): a list sorted from the largest spreads its cost evenly."""
    return range(comm.rank, n_tasks, comm.size)


def gather_to_root(items: list, comm: MPI.Comm, root: int = 0) -> list | None:
    """Every rank's ``items`` joined in rank order on ``root``; None on the others."""
    if comm.size == 1:
        return list(items)
    shares = comm.gather(items, root=root)
    return None if shares is None else [item for share in shares for item in share]


def root_node_ranks(comm: MPI.Comm) -> int:
    """How many ranks share rank 0's node (and its memory), on every rank (collective)."""
    return from_root(ranks_on_node(comm), comm)


def ranks_on_node(comm: MPI.Comm) -> int:
    """How many ranks of ``comm`` share this rank's node (and its memory); collective."""
    if comm.size == 1:
        return 1
    from mpi4py import MPI

    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    size = node.size
    node.Free()
    return size


def cores_owned() -> int:
    """The cores this process may run on (its affinity)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1


def cores_per_rank(comm: MPI.Comm) -> int:
    """This rank's share of its cores: the ones it owns, shared evenly among the ranks on
    its node (collective when ``comm`` has more than one rank)."""
    n = cores_owned()
    if comm.size > 1:
        n = max(1, n // ranks_on_node(comm))
    return n


def inject_fault(stage: str, comm: MPI.Comm | None = None) -> None:
    """Test hook: raise on one rank when ``MLMOTEX_FAULT=stage:rank[:input]`` is set
    (``input``: an :class:`InputError`, as bad data met on that rank alone would raise;
    else a ``RuntimeError``, a crash). ``rank`` is the rank in ``comm`` (0 without one)."""
    spec = os.environ.get("MLMOTEX_FAULT")
    if not spec:
        return
    where, _, rest = spec.partition(":")
    rank, _, kind = rest.partition(":")
    if where == stage and int(rank or 0) == (comm.rank if comm is not None else 0):
        message = f"injected fault in stage '{stage}' (MLMOTEX_FAULT={spec})"
        if kind == "input":
            raise InputError(message)
        raise RuntimeError(message)


def pause_for_tests(stage: str) -> None:
    """Test hook: sleep when ``MLMOTEX_TEST_PAUSE=stage:seconds`` names this stage.

    Lets the tests kill a job at a chosen point (during fitting, during learning).
    """
    spec = os.environ.get("MLMOTEX_TEST_PAUSE")
    if spec:
        where, _, seconds = spec.partition(":")
        if where == stage:
            time.sleep(float(seconds or 1))
