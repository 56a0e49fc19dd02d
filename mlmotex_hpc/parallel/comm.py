"""The small communication facade every MPI-aware part of mlmotex-hpc uses.

Everything takes a communicator (``comm=None`` means ``MPI.COMM_WORLD``); nothing else
in the package imports mpi4py.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import numpy as np
from mpi4py import MPI

from ..errors import InputError

T = TypeVar("T")


def get_comm(comm: MPI.Comm | None = None) -> MPI.Comm:
    """``comm``, or ``MPI.COMM_WORLD`` when None."""
    return MPI.COMM_WORLD if comm is None else comm


def chunk(n: int, rank: int, size: int) -> tuple[int, int]:
    """Static block split of ``n`` items: ``(offset, count)`` owned by ``rank``.

    The first ``n % size`` ranks get one item more; needs no messages.
    """
    count = n // size + (n % size > rank)
    offset = rank * (n // size) + min(rank, n % size)
    return offset, count


def root_then_bcast(func: Callable[[], T], comm: MPI.Comm, root: int = 0) -> T:
    """Run ``func`` on ``root`` only and broadcast its result to every rank.

    An :class:`InputError` raised on ``root`` is re-raised on *every* rank (so they all
    exit cleanly with code 2); only the root's message is printed by the CLI.
    """
    result, error = None, None
    if comm.rank == root:
        try:
            result = func()
        except InputError as exc:
            error = str(exc)
    result, error = comm.bcast((result, error), root=root)
    if error is not None:
        raise InputError(error)
    return result


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


@contextmanager
def abort_on_error(comm: MPI.Comm | None = None) -> Iterator[None]:
    """End the whole job when this rank raises anything but an :class:`InputError`.

    The traceback is printed to stderr with the rank that failed, then ``Abort`` brings
    every other rank down instead of leaving them hanging in a collective.
    """
    comm = get_comm(comm)
    try:
        yield
    except (InputError, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - the whole point is to catch everything
        if comm.size == 1:
            raise
        detail = "".join(traceback.format_exception(exc))
        sys.stderr.write(f"mlmotex-hpc: rank {comm.rank} of {comm.size} failed:\n{detail}")
        sys.stderr.flush()
        comm.Abort(1)


def inject_fault(stage: str, comm: MPI.Comm) -> None:
    """Test hook: raise on one rank when ``MLMOTEX_FAULT=stage:rank`` is set."""
    spec = os.environ.get("MLMOTEX_FAULT")
    if not spec:
        return
    where, _, rank = spec.partition(":")
    if where == stage and int(rank or 0) == comm.rank:
        raise RuntimeError(f"injected fault in stage '{stage}' (MLMOTEX_FAULT={spec})")


def pause_for_tests(stage: str) -> None:
    """Test hook: sleep when ``MLMOTEX_TEST_PAUSE=stage:seconds`` names this stage.

    Lets the tests kill a job at a chosen point (during fitting, during learning).
    """
    spec = os.environ.get("MLMOTEX_TEST_PAUSE")
    if spec:
        where, _, seconds = spec.partition(":")
        if where == stage:
            time.sleep(float(seconds or 1))


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
