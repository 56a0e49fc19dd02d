"""Step 2 for ``catalogue.strategy: adaptive``: fit a round, learn from it, draw the next.

The file holds the whole budget's rows from the start (no dataset grows while fits are
written); ``/catalogue`` attribute ``n_catalogue`` says how many are drawn. Each round:
every rank fits the round's work units (:func:`~mlmotex_hpc.parallel.fitting.run_fits`);
rank 0 trains the round's model on every fit so far and draws the next round
(:mod:`mlmotex_hpc.learn.adaptive`), which every rank writes
(:meth:`~mlmotex_hpc.store.RunFile.collective_write_round`) and fits. A killed job
resumes where the file stands: the drawn rows' missing units first, then the next round,
drawn from the same fits, so the same motifs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from functools import partial

import numpy as np

from ..config import CatalogueConfig
from ..fit.batch import FitPlan, Inputs
from ..parallel.comm import cores_per_rank
from ..parallel.exits import root_then_bcast
from ..parallel.fitting import run_fits
from ..store import RunFile
from .inputs import round_sizes


def adaptive_rounds(cat: CatalogueConfig, label_z: float, inputs: Inputs, plan: FitPlan,
                    run: RunFile, comm, log: Callable, batch_done: np.ndarray | None
                    ) -> tuple[int, Inputs]:
    """Fit and draw rounds until the budget is spent or the labels settle (every rank);
    the fits done and the inputs holding every drawn motif. ``cat``: the config's
    catalogue section; ``label_z``: ``extract.label_z``, the labels' threshold."""
    n_jobs = cores_per_rank(comm)  # collective: every rank asks
    capacity = run.shared(lambda r: r.n_rows)
    state = run.shared(lambda r: r.rounds()) if batch_done is not None else None
    n_drawn = run.shared(lambda r: r.n_motifs)
    if batch_done is not None and n_drawn != inputs.n_motifs:  # resuming after round 0
        packed = run.shared(lambda r: np.packbits(r.masks(), axis=1))
        inputs = dataclasses.replace(inputs, packed_masks=packed)
    labels: list[list[int]] = state["labels"] if state else []
    round_ = state["rounds"] - 1 if state else 0
    stopped = state["stopped"] if state else ""
    _, later = round_sizes(cat, capacity)
    n_blocks = batch_done.shape[1] if batch_done is not None else -(-len(inputs.frames) // (
        plan.frame_block or len(inputs.frames)))
    done = (np.zeros((math.ceil(capacity / plan.batch_size), n_blocks), dtype=bool)
            if batch_done is None else batch_done.copy())
    n_fits = 0
    while True:
        drawn_batches = math.ceil(n_drawn / plan.batch_size)
        pending = np.flatnonzero(~done[:drawn_batches].ravel())
        if pending.size:
            log(f"  round {round_}: fitting {pending.size} work unit(s) of "
                f"{plan.batch_size} motifs ({n_drawn:,} of {capacity:,} drawn)")
            n_fits += run_fits(inputs, plan, run, comm, log, pending).fits
            done[:drawn_batches] = True
        if stopped or n_drawn >= capacity:
            if not stopped:
                stopped = f"budget of {capacity:,} catalogue fits spent"
                run.collective_end_rounds(stopped, labels)
            log(f"  adaptive catalogue: {round_ + 1} round(s), {n_drawn:,} motifs: {stopped}")
            return n_fits, inputs
        run.collective_flush()  # the other ranks' fits on disk before rank 0 reads them
        decision = root_then_bcast(  # the other ranks sleep while rank 0 learns
            partial(_next_round, cat, label_z, run, n_drawn, inputs, labels, round_ + 1,
                    min(later, capacity - n_drawn), n_jobs), comm, idle=True)
        labels.append(decision["labels"])
        log(decision["line"])
        if decision["stop"]:
            stopped = decision["stop"]
            run.collective_end_rounds(stopped, labels)
            continue
        new, uniform = decision["masks"], decision["uniform"]
        round_ += 1
        run.collective_write_round(n_drawn, new, uniform, round_, labels)
        inputs = dataclasses.replace(
            inputs, packed_masks=np.concatenate([inputs.packed_masks,
                                                 np.packbits(new, axis=1)]))
        n_drawn += len(new)


def _next_round(cat: CatalogueConfig, label_z: float, run: RunFile, n_drawn: int,
                inputs: Inputs, labels: list[list[int]], round_: int, size: int,
                n_jobs: int) -> dict:
    """Rank 0: the round's model, the labels, and the next motifs or the reason to stop
    (:func:`~mlmotex_hpc.learn.adaptive.next_round` on the fits in the file)."""
    from ..learn.adaptive import next_round

    return next_round(inputs.masks(), run.fits("rw", 0)[:n_drawn],
                      run.origin()[:n_drawn] == 0, labels, round_, size, seed=cat.seed,
                      explore=cat.explore, stable_rounds=cat.stable_rounds,
                      z=label_z, n_jobs=n_jobs)
