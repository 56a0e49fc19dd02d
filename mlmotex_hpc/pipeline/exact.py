"""An exhaustive run's ground truth (every rank): exact Shapley values, main effects and
the K best motifs, from the whole table of fits; and the rows steps 3-4 learn from.

The table is read in blocks of :data:`~mlmotex_hpc.learn.exact.BLOCK` rows, each rank a
contiguous share of the blocks (with the serial-HDF5 fallback, rank 0 all of them: only
it holds the file); the blocks' sums are gathered and added in block order, so every
number is the same for any number of ranks. No rank holds more than one block of the
table at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from ..catalogue import mask_rows, row_masks, sample_masks
from ..fit.fitter import STATUS_NO_PAIRS
from ..learn.exact import BLOCK, attributions, block_sums, lowest, merge_lowest
from ..parallel.comm import from_root, gather_everywhere, inject_fault
from ..store import RunFile


def learning_rows(n_permutable: int, size: int, seed: int) -> np.ndarray:
    """Rows of the exhaustive table that steps 3-4 learn from: the motifs of an ML-MotEx
    random catalogue (:func:`~mlmotex_hpc.catalogue.sample_masks`) of ``size`` motifs,
    sorted."""
    n_all = 2**n_permutable - 1
    if size >= n_all:
        return np.arange(n_all, dtype=np.int64)
    return np.sort(mask_rows(sample_masks(n_permutable, size, seed)))


def table_values(rw: np.ndarray, status: np.ndarray) -> np.ndarray:
    """The game's values: Rw, and 1 for a motif without pairs (a zero model's Rw)."""
    return np.where(status == STATUS_NO_PAIRS, 1.0, rw)


def exact_stage(run: RunFile, best: int, comm, log: Callable, timings: dict) -> None:
    """Exact attributions and the ``best`` lowest-Rw motifs (``exact.best``) of every
    frame (every rank calls it, the learning copy open); writes ``/atoms/shapley``,
    ``/atoms/main_effect`` and ``/best``."""
    t0 = time.perf_counter()
    inject_fault("exact", comm)
    n_rows, n = run.shared(lambda r: (r.n_table, r.permutable().size))
    k = min(best, n_rows)
    log(f"step 3a: exact Shapley values and the {k} best motifs from all {n_rows:,} fits "
        f"on {run.readers} rank(s)")
    mine: list[tuple[int, np.ndarray, np.ndarray, tuple]] = []
    lo, hi = run.read_share(n_rows, BLOCK)  # parallel HDF5: each rank its share of blocks
    for start in range(lo, hi, BLOCK):
        stop = min(hi, start + BLOCK)
        masks = run.masks(slice(start, stop))
        rows = slice(start, stop)
        values = table_values(run.fit_rows("rw", rows), run.fit_rows("status", rows))
        sums, bad = block_sums(masks, values)
        mine.append((start // BLOCK, sums, bad, lowest(values, start, k)))
    parts = gather_everywhere(mine, comm)
    parts.sort(key=lambda p: p[0])
    total = np.zeros_like(parts[0][1])
    bad = np.zeros_like(parts[0][2])
    for _, sums, b, _ in parts:  # block order: the same bits for any rank count
        total += sums
        bad += b
    result = attributions(total, bad)
    best_rows, best_rw = merge_lowest([p[3] for p in parts], k)
    best_masks = np.stack([row_masks(rows, n) & (rows >= 0)[:, None] for rows in best_rows])
    for f in np.flatnonzero(bad):
        log(f"  WARNING: frame {f}: {int(bad[f]):,} motifs have no finite Rw: no exact "
            "Shapley values for it (main effects over the others)")
    info = {"rows": n_rows, "blocks": len(parts), "block": BLOCK, "failed": bad.tolist(),
            "seconds": time.perf_counter() - t0}
    # rank 0's: each rank's own time would write a different string into one collective
    # attribute, which corrupted it (CI, 3 ranks: unreadable JSON in /best's info)
    info = from_root(info, comm)
    run.collective_write_exact(shapley=result["shapley"], main_effect=result["main_effect"],
                               best_rows=best_rows, best_rw=best_rw, best_masks=best_masks,
                               info=info)
    timings["exact"] = time.perf_counter() - t0
    best = best_rows[0, 0]
    log(f"  global best (frame 0): motif {best} with {int(best_masks[0, 0].sum())} of {n} "
        f"atoms, Rw {best_rw[0, 0]:.4f}; {timings['exact']:.1f} s")


def choose_learning_rows(run: RunFile, sample: int, seed: int, log: Callable) -> None:
    """Steps 3-4 of an exhaustive run learn from ``sample`` of its motifs
    (``learn.sample``, drawn with ``learn.seed``): recorded as the learning copy's view
    (every rank)."""
    n_rows, n = run.shared(lambda r: (r.n_table, r.permutable().size))
    rows = learning_rows(n, sample, seed)
    run.collective_set_view(rows)
    log(f"steps 3-4 on an ML-MotEx random catalogue of {rows.size:,} of the {n_rows:,} "
        f"motifs (learn.sample, seed {seed}); the exact values use them all")
