"""Step 2 on every rank: work units handed out on demand, results into ``motex.h5``.

A work unit is a motif batch × a frame block (``frames.block``): unit u is batch
u // FB, block u % FB. A one-sided MPI counter (``mpi4py.util.sync.Counter``) hands out
the next unit to whichever rank asks, so the schedule adapts to motif cost without rank 0
taking part. Each motif's result depends only on the motif, so every number is the same
for any rank count.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ..fit.batch import FitGroup, FitPlan, Inputs, fit_batch, frame_blocks, make_fit_groups
from ..store import RunFile
from .comm import inject_fault, pause_for_tests
from .exits import leave_together
from .log import Progress

if TYPE_CHECKING:
    from mpi4py import MPI

_RESULTS_TAG = 17  # serial fallback: a batch's results on their way to rank 0


class FitCount(NamedTuple):
    """What :func:`run_fits` did: the fits (all ranks), and the seconds spent before the
    first, compiling the kernels or loading them from numba's cache."""

    fits: int
    warm_up: float


def run_fits(inputs: Inputs, plan: FitPlan, run: RunFile, comm: MPI.Comm, log: Callable,
             pending: np.ndarray) -> FitCount:
    """Fit the ``pending`` work units on every rank; the fits done (all ranks) and the
    warm-up's seconds, so that a rate leaves out the compiling.

    With parallel HDF5 each rank writes its own batches; in the serial fallback the
    other ranks send each batch to rank 0 as soon as it is fitted, and rank 0 writes
    them between its own, so a killed job loses only the batches in flight either way.
    An error on any rank stops every rank after its unit in hand, and all of them raise
    it together (:func:`~mlmotex_hpc.parallel.exits.leave_together`).
    """
    from mpi4py import MPI
    from mpi4py.util.sync import Counter

    blocks = frame_blocks(len(inputs.frames), plan.frame_block)
    groups_of: dict[int, list[FitGroup]] = {}  # per frame block, built when first needed

    def groups_for(fb: int) -> list[FitGroup]:
        if fb not in groups_of:
            groups_of[fb] = make_fit_groups(inputs, plan.pdf, plan.fit, blocks[fb],
                                            plan.zoom_search)
        return groups_of[fb]

    n_motifs = inputs.n_motifs
    direct = run.parallel or comm.size == 1
    sends = []
    done_msgs = 0

    def drain(block: bool) -> None:
        """Rank 0 (serial fallback): write what the other ranks have sent."""
        nonlocal done_msgs
        while True:
            if block:
                if done_msgs == comm.size - 1:
                    return
            elif not comm.iprobe(source=MPI.ANY_SOURCE, tag=_RESULTS_TAG):
                return
            item = comm.recv(source=MPI.ANY_SOURCE, tag=_RESULTS_TAG)
            if item is None:  # that rank has no more batches
                done_msgs += 1
                continue
            batch, fb, start, results = item
            run.write_batch(start, results, batch, _as_slice(blocks[fb]), fb)

    warm_seconds = warm_up(inputs, plan, blocks, groups_for, pending, comm, log)
    counter = Counter(comm=comm)
    progress = Progress()
    done_here = 0
    error = None
    try:
        while (k := counter.next()) < pending.size:
            inject_fault("fit", comm)
            batch, fb = divmod(int(pending[k]), len(blocks))
            start = batch * plan.batch_size
            stop = min(n_motifs, start + plan.batch_size)
            results = fit_batch(
                inputs.masks(start, stop), inputs.space, groups_for(fb), inputs.frames,
                plan.fit, plan.base_uiso, plan.extra, blocks[fb],
            )
            pause_for_tests("fit")
            done_here += (stop - start) * len(blocks[fb])
            if direct or comm.rank == 0:
                run.write_batch(start, results, batch, _as_slice(blocks[fb]), fb)
            else:
                sends.append(comm.isend((batch, fb, start, results), dest=0,
                                        tag=_RESULTS_TAG))
            if comm.rank == 0 and not direct:
                drain(block=False)
            if comm.rank == 0 and (state := progress(k + 1, pending.size)) is not None:
                frac, elapsed, eta = state
                rate = comm.size * done_here / elapsed  # this rank's rate × ranks
                log(f"  fit: {100 * frac:5.1f} % of {pending.size} work units, "
                    f"{rate:,.0f} fits/s, ETA {eta:,.0f} s")
    except Exception as exc:  # noqa: BLE001 - it must reach the other ranks
        if comm.size == 1:
            raise
        # An error on some ranks only (a calculator that fails to build, a crash): run
        # the counter past the end, so the others stop after their unit in hand, and
        # leave together below. The unit that failed is not marked done.
        error = exc
        counter.next(pending.size)
    finally:
        counter.free()
    if not direct:
        if comm.rank == 0:
            drain(block=True)
        else:
            MPI.Request.waitall(sends)
            comm.send(None, dest=0, tag=_RESULTS_TAG)
    leave_together(comm, error)
    return FitCount(comm.allreduce(done_here), warm_seconds)


def fit_masks(inputs: Inputs, plan: FitPlan, groups: list[FitGroup], masks: np.ndarray,
              comm: MPI.Comm) -> dict[str, np.ndarray]:
    """Fit a few motifs (K × N masks, the same on every rank) to every frame, shared out
    in static blocks; the results (arrays F × K) on every rank. For the extract stage's
    handfuls of motifs, where a work unit's bookkeeping would cost more than the fits.
    A motif's result depends on the motif only, so the split does not change them."""
    from .comm import chunk

    offset, count = chunk(len(masks), comm.rank, comm.size)
    error, mine = None, None
    n_frames = len(inputs.frames)
    try:
        if count:
            mine = fit_batch(masks[offset:offset + count], inputs.space, groups,
                             inputs.frames, plan.fit, plan.base_uiso, plan.extra)
        else:
            mine = {name: np.empty((n_frames, 0)) for name in ("rw", "scale", "zoom")
                    + plan.extra}
            mine["status"] = np.empty((n_frames, 0), dtype=np.int8)
    except Exception as exc:  # noqa: BLE001 - it must reach the other ranks
        if comm.size == 1:
            raise
        error = exc
    leave_together(comm, error)
    parts = comm.allgather(mine) if comm.size > 1 else [mine]
    return {name: np.concatenate([p[name] for p in parts], axis=1) for name in parts[0]}


def warm_up(inputs: Inputs, plan: FitPlan, blocks: list[range], groups_for, pending,
            comm: MPI.Comm, log: Callable) -> float:
    """Every rank builds its first frame block's calculators and fits one motif, so that
    the kernels are compiled (first run) or loaded from numba's cache before the clock of
    the progress lines and of the fit rate starts, and so that a calculator that fails
    fails on every rank at once, before any work unit is handed out. The seconds it took
    (the slowest rank)."""
    from mpi4py import MPI

    if not pending.size:
        return 0.0
    t0 = time.perf_counter()
    log("  preparing the fit kernels (compiled on the first run only, then cached)")
    error = None
    try:
        pause_for_tests("warm_up")
        fb = int(pending[0]) % len(blocks)
        fit_batch(inputs.masks(0, 1), inputs.space, groups_for(fb), inputs.frames, plan.fit,
                  plan.base_uiso, plan.extra, blocks[fb])
    except Exception as exc:  # noqa: BLE001 - it must reach the other ranks
        if comm.size == 1:
            raise
        error = exc
    leave_together(comm, error)
    seconds = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
    if seconds > 5:
        log(f"  kernels ready in {seconds:.0f} s (compiled: later runs load them from the "
            "cache)")
    return float(seconds)


def _as_slice(block: range) -> slice:
    return slice(block.start, block.stop)
