"""The exit policy: every rank leaves a region together, with one exit code.

An error on one rank must never leave the others waiting in a collective. Each region of
the program is one of three kinds, and says so by the helper it runs under:

* :func:`root_then_bcast`: work on rank 0 alone (reading and checking the inputs). What
  it raises reaches every rank: an :class:`InputError` as the same error (exit code 2,
  printed once, by rank 0); anything else prints its traceback on rank 0, and every
  rank raises :class:`JobFailed` (exit code 1).
* :func:`agreed` (and :func:`leave_together`, its core): the same work on every rank
  with no collective inside (creating a file, fitting work units, a round of frames).
  Leaving it, the ranks exchange their outcome; when any failed, every rank raises the
  failure of the lowest failing rank, so rank 0 prints the message of whichever rank
  failed, and the job ends with one exit code.
* :func:`abort_on_error`: work with collectives inside (fitting, learning). An error
  that the ranks have agreed on (:class:`~mlmotex_hpc.errors.AgreedError`, raised by
  the helpers above) passes; any other error ends the job at once (``MPI_Abort``; exit
  code 2 for an :class:`InputError`, printed as one line, 1 with a traceback for
  anything else): the other ranks may be inside a collective that the failing rank will
  never join.
"""

from __future__ import annotations

import errno
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from ..errors import AgreedError, InputError, JobFailed
from .comm import get_comm, wait_idle

if TYPE_CHECKING:
    from mpi4py import MPI

T = TypeVar("T")


def _print_failure(exc: BaseException, comm: MPI.Comm) -> None:
    detail = "".join(traceback.format_exception(exc))
    where = f"rank {comm.rank} of {comm.size}" if comm.size > 1 else "the program"
    sys.stderr.write(f"mlmotex-hpc: {where} failed:\n{detail}")
    sys.stderr.flush()


def _outcome(exc: BaseException, comm: MPI.Comm) -> tuple[str, str]:
    """How a failure travels to the other ranks: ("input", message) or ("failed", "")."""
    if isinstance(exc, InputError):
        return "input", str(exc)
    if disk_full(exc):
        return "input", disk_full_message(exc)
    if not isinstance(exc, JobFailed):
        _print_failure(exc, comm)
    return "failed", ""


def _raise(outcome: tuple[str, str]) -> None:
    kind, message = outcome
    if kind == "input":
        raise AgreedError(message)
    raise JobFailed()


def root_then_bcast(func: Callable[[], T], comm: MPI.Comm, root: int = 0,
                    idle: bool = False) -> T:
    """Run ``func`` on ``root`` only and broadcast its result (or its failure) to every rank.

    ``idle``: the other ranks sleep while they wait (:func:`~.comm.wait_idle`), leaving
    the node's cores to ``func`` (rank 0 training a model on all of them)."""
    result, outcome = None, None
    if comm.rank == root:
        try:
            result = func()
        except Exception as exc:  # noqa: BLE001 - every failure must reach every rank
            if comm.size == 1 and not isinstance(exc, InputError):
                raise
            outcome = _outcome(exc, comm)
    if idle:
        wait_idle(comm)
    if comm.size > 1:
        result, outcome = comm.bcast((result, outcome), root=root)
    if outcome is not None:
        _raise(outcome)
    return result


def leave_together(comm: MPI.Comm, error: BaseException | None) -> None:
    """Every rank calls it, with the exception it met (or None) in work that holds no
    collective: when any rank failed, every rank raises the failure of the lowest
    failing rank (an unexpected one's traceback printed by that rank alone)."""
    outcome = None if error is None else _outcome(error, comm)
    if comm.size > 1:
        outcome = next((o for o in comm.allgather(outcome) if o is not None), None)
    if outcome is not None:
        _raise(outcome)


@contextmanager
def agreed(comm: MPI.Comm | None = None) -> Iterator[None]:
    """Run the body on every rank; leave it together, failing together when any rank
    failed (the body must not call collectives)."""
    comm = get_comm(comm)
    error = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001
        if comm.size == 1 and not isinstance(exc, InputError):
            raise
        error = exc
    leave_together(comm, error)


@contextmanager
def abort_on_error(comm: MPI.Comm | None = None) -> Iterator[None]:
    """End the whole job when this rank meets an error the others have not agreed on.

    An :class:`~mlmotex_hpc.errors.AgreedError` (raised by every rank together) passes.
    Any other :class:`InputError` may be this rank's alone: its one line is printed,
    with the rank, and ``Abort(2)`` ends the job with exit code 2. Anything else prints
    its traceback with the rank and ``Abort(1)``: no rank is left waiting in a
    collective.
    """
    comm = get_comm(comm)
    try:
        yield
    except (AgreedError, JobFailed, SystemExit):
        raise
    except OSError as exc:
        if not disk_full(exc):
            _abort_on(exc, comm)
            raise
        message = disk_full_message(exc)
        if comm.size == 1:
            raise InputError(message) from None
        if comm.rank != 0:  # every rank meets the full disk: let rank 0 say it, once
            time.sleep(DISK_FULL_GRACE)
        sys.stderr.write(f"mlmotex-hpc: error: {message}\n")
        sys.stderr.flush()
        comm.Abort(InputError.exit_code)
    except InputError as exc:
        if comm.size == 1:
            raise
        where = f" (rank {comm.rank} of {comm.size})" if comm.rank else ""
        sys.stderr.write(f"mlmotex-hpc: error: {exc}{where}\n")
        sys.stderr.flush()
        comm.Abort(InputError.exit_code)
    except BaseException as exc:  # noqa: BLE001 - the whole point is to catch everything
        _abort_on(exc, comm)
        raise


def _abort_on(exc: BaseException, comm) -> None:
    """An unexpected failure on this rank: its traceback and ``Abort(1)`` (one rank: the
    caller re-raises it)."""
    if comm.size == 1:
        return
    _print_failure(exc, comm)
    comm.Abort(1)


#: Seconds a rank other than 0 waits, on a full disk, for rank 0 to report it and end
#: the job, before it does so itself.
DISK_FULL_GRACE = 3.0


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is a write that failed for want of space or quota (h5py reports
    HDF5's failure as an OSError whose text carries the system's errno)."""
    if not isinstance(exc, OSError):
        return False
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return any(s in text for s in ("No space left", "errno = 28", "Disk quota exceeded",
                                   "errno = 122"))


def disk_full_message(exc: BaseException) -> str:
    return (f"no space left on the disk of the output folder ({_first_line(exc)}); the "
            "fits already in motex.h5 are kept: free some space and run again to go on "
            "from them")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
