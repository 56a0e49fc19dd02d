"""A screen's probes on every rank: candidates handed out on demand, rows to rank 0.

The one-sided counter of step 2 (``mpi4py.util.sync.Counter``) hands the next pending
candidate to whichever rank asks, so a rank on a large cluster does not hold the others
back. A candidate's row is small, so every rank sends it to rank 0, which writes it into
``screen.h5`` at once (rank 0 writes its own rows as it makes them). A kill loses only the
candidates in flight. Each candidate's score depends on that candidate alone, so the
numbers are the same for any number of ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .comm import inject_fault, pause_for_tests
from .exits import leave_together
from .log import Progress

if TYPE_CHECKING:
    from mpi4py import MPI

    from ..fit.screening import Score

_ROWS_TAG = 23  # a candidate's row on its way to rank 0


def score_everywhere(pending: Sequence[int], score: Callable[[int], Score],
                     write: Callable[[int, Score], None] | None, comm: MPI.Comm,
                     log: Callable) -> int:
    """Score the ``pending`` candidates on every rank (``score(index)``); rank 0 writes
    each row (``write(index, score)``, None on the other ranks). Returns the fits made (all
    ranks). An error on any rank stops every rank after its candidate in hand, and all of
    them raise it together."""
    from mpi4py import MPI
    from mpi4py.util.sync import Counter

    root = comm.rank == 0
    n = len(pending)
    sends, finished = [], 0
    fits, error = 0, None

    def keep(index: int, result: Score) -> None:
        """Rank 0: write a row; after a failed write (a full disk) keep receiving the
        others' rows without writing, so that every rank still reaches the end."""
        nonlocal error
        if error is None:
            try:
                write(index, result)
            except Exception as exc:  # noqa: BLE001 - raised on every rank below
                error = exc

    def drain(block: bool) -> None:
        nonlocal finished
        while True:
            if block:
                if finished == comm.size - 1:
                    return
            elif not comm.iprobe(source=MPI.ANY_SOURCE, tag=_ROWS_TAG):
                return
            item = comm.recv(source=MPI.ANY_SOURCE, tag=_ROWS_TAG)
            if item is None:  # that rank has no more candidates
                finished += 1
                continue
            keep(*item)

    counter = Counter(comm=comm)
    progress = Progress()
    try:
        while (k := counter.next()) < n:
            inject_fault("screen", comm)
            index = int(pending[k])
            result = score(index)
            pause_for_tests("screen")
            fits += result.fits
            if root:
                keep(index, result)
                if error is not None:
                    raise error
                drain(block=False)
                if (state := progress(k + 1, n)) is not None:
                    frac, elapsed, eta = state
                    log(f"  screen: {100 * frac:5.1f} % of {n} candidates, "
                        f"{comm.size * fits / elapsed:,.0f} fits/s, ETA {eta:,.0f} s")
            else:
                sends.append(comm.isend((index, result), dest=0, tag=_ROWS_TAG))
    except Exception as exc:  # noqa: BLE001 - it must reach the other ranks
        if comm.size == 1:
            raise
        error = error or exc
        counter.next(n)  # the others stop after the candidate in hand
    finally:
        counter.free()
    if root:
        drain(block=True)
    else:
        MPI.Request.waitall(sends)
        comm.send(None, dest=0, tag=_ROWS_TAG)
    leave_together(comm, error)
    return int(comm.allreduce(fits))

