"""Exact attributions from a full table of fits: every motif's Rw is known.

The game is v(S) = Rw of motif S over the N permutable atoms, with v(∅) = 1 (the Rw of
a zero model, which is also what a motif without pairs scores). The Shapley value of
atom i is

    φ_i = Σ_{S ∌ i} w(|S|) [v(S ∪ {i}) - v(S)],   w(s) = s! (N - s - 1)! / N!,

and regrouping the sum by motif instead of by pair makes it one pass over the rows in
any order: a motif S adds w(|S| - 1) v(S) to φ_i for each atom i it keeps and subtracts
w(|S|) v(S) for each atom it removes. So the table is summed in fixed blocks of
:data:`BLOCK` rows, each block on whichever rank holds it, and the blocks' sums are added
in block order: the same bits for any number of ranks.

The main effect of atom i is the mean Rw of the motifs keeping it minus the mean of the
(non-empty) motifs removing it: ML-MotEx's ACV computed on the fits themselves instead
of on a model's SHAP values.
"""

from __future__ import annotations

import math

import numba
import numpy as np

#: Rows summed together; part of the summation order (changing it changes last bits).
BLOCK = 2**16
#: Rows of a block's sums: Shapley terms of kept and removed atoms, Rw sums and counts
#: of motifs keeping and removing each atom.
_SUMS = 6


def shapley_weights(n: int) -> np.ndarray:
    """w(s) = s! (n - s - 1)! / n! = 1 / (n C(n - 1, s)) for s = 0 .. n - 1."""
    return np.array([1.0 / (n * math.comb(n - 1, s)) for s in range(n)])


@numba.njit(cache=True)
def _block_sums(masks, values, w, out, bad):  # pragma: no cover - compiled
    """Add one block's rows to ``out`` (F × 6 × N) in row order; rows whose value is not
    finite are counted in ``bad`` (F) and left out."""
    n_frames, n_rows = values.shape
    n = masks.shape[1]
    for r in range(n_rows):
        size = 0
        for i in range(n):
            size += masks[r, i]
        if size == 0:
            continue
        for f in range(n_frames):
            v = values[f, r]
            if not np.isfinite(v):
                bad[f] += 1
                continue
            kept = w[size - 1] * v
            removed = w[size] * v if size < n else 0.0
            for i in range(n):
                if masks[r, i]:
                    out[f, 0, i] += kept
                    out[f, 2, i] += v
                    out[f, 4, i] += 1.0
                else:
                    out[f, 1, i] += removed
                    out[f, 3, i] += v
                    out[f, 5, i] += 1.0


def block_sums(masks: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sums of one block of motifs (masks B × N, values F × B): an array F × 6 × N and
    the count of non-finite values per frame."""
    masks = np.ascontiguousarray(masks, dtype=np.uint8)
    values = np.ascontiguousarray(np.atleast_2d(values), dtype=np.float64)
    n = masks.shape[1]
    out = np.zeros((values.shape[0], _SUMS, n))
    bad = np.zeros(values.shape[0], dtype=np.int64)
    _block_sums(masks, values, shapley_weights(n), out, bad)
    return out, bad


def attributions(sums: np.ndarray, bad: np.ndarray) -> dict[str, np.ndarray]:
    """Shapley values and main effects (F × N) from the blocks' sums added in order.

    The empty motif (v = 1) removes every atom: it adds -w(0) to each φ_i. A frame with
    any non-finite Rw has no exact Shapley values (NaN); its main effects are over the
    finite ones."""
    n = sums.shape[2]
    w0 = shapley_weights(n)[0]
    shapley = sums[:, 0] - sums[:, 1] - w0
    shapley[bad > 0] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        main = sums[:, 2] / sums[:, 4] - sums[:, 3] / sums[:, 5]
    return {"shapley": shapley, "main_effect": main}


def lowest(values: np.ndarray, first_row: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` lowest finite values of each frame (values F × B of rows first_row ...):
    rows and values, F × k each, lowest first, ties by row; -1 and NaN pad a short
    block."""
    values = np.atleast_2d(values)
    n_frames, n_rows = values.shape
    rows = np.full((n_frames, k), -1, dtype=np.int64)
    out = np.full((n_frames, k), np.nan)
    for f in range(n_frames):
        finite = np.flatnonzero(np.isfinite(values[f]))
        order = finite[np.argsort(values[f, finite], kind="stable")][:k]
        rows[f, :order.size] = first_row + order
        out[f, :order.size] = values[f, order]
    return rows, out


def merge_lowest(parts: list[tuple[np.ndarray, np.ndarray]], k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` lowest of several :func:`lowest` results (rows, values), ties by row."""
    rows = np.concatenate([p[0] for p in parts], axis=1)
    values = np.concatenate([p[1] for p in parts], axis=1)
    n_frames = rows.shape[0]
    out_rows = np.full((n_frames, k), -1, dtype=np.int64)
    out_values = np.full((n_frames, k), np.nan)
    for f in range(n_frames):
        ok = np.flatnonzero(rows[f] >= 0)
        order = ok[np.lexsort((rows[f, ok], values[f, ok]))][:k]
        out_rows[f, :order.size] = rows[f, order]
        out_values[f, :order.size] = values[f, order]
    return out_rows, out_values
