"""Step 4: TreeSHAP values and the per-atom contributions read from them.

For permutable atom i, with φ_{m,i} the SHAP value of feature i (atom i's mask bit) for
motif m:

* K_i, s_K: mean and population standard deviation of φ_{m,i} over motifs keeping i;
* R_i, s_R: the same over motifs removing i;
* contribution ACV_i = K_i − R_i (negative: keeping the atom lowers Rw);
* uncertainty σ_i = sqrt((s_K² + s_R²) / 2);
* confidence CF_i = |ACV_i| / σ_i;
* standard error of ACV_i, SE_i = sqrt(s_K² / n_K + s_R² / n_R): how far the catalogue's
  ACV may lie from that of all motifs (two independent sample means).

They are computed from counts, sums and sums of squares (:class:`ContributionSums`), which
add over any partition of the motifs: ranks can each sum their share and ``Allreduce``
:meth:`ContributionSums.as_array`.

Explaining a sample (``shap: auto``): the motifs are taken in a seeded random order
(:func:`explain_order`), block by block, and the standard errors are looked at when
:func:`checkpoints` says (256 motifs, then twice as many each time); the first
checkpoint at which :func:`settled` holds ends step 4. The blocks are added in order, so
the answer does not depend on how many ranks computed them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import xgboost as xgb

from .model import TrainedModel

#: Rows per block when computing SHAP values or sums, bounding temporary memory.
BLOCK_ROWS = 8192
#: Motifs per block of the ACV sums: blocks are added in order, however the motifs are
#: shared out, so the sums are the same bits for any number of workers.
SUM_BLOCK = 256
#: The stored per-atom results, fields of :class:`AtomContributions`.
ATOM_FIELDS = ("contribution", "uncertainty", "confidence", "kept_mean", "removed_mean",
               "contribution_se")
#: Motifs per block of a sample's sums (``shap: auto``): smaller than :data:`SUM_BLOCK`
#: so that the first checkpoints still give every rank a share.
SAMPLE_BLOCK = 64
#: Motifs explained before the standard errors are first looked at; each later
#: checkpoint doubles the motifs explained.
FIRST_CHECK = 256


def _as_booster(booster_or_model: xgb.Booster | TrainedModel | bytes | bytearray,
                n_jobs: int | None) -> xgb.Booster:
    if isinstance(booster_or_model, TrainedModel):
        booster = booster_or_model.booster()
    elif isinstance(booster_or_model, bytes | bytearray):
        booster = xgb.Booster(model_file=bytearray(booster_or_model))
    elif isinstance(booster_or_model, xgb.Booster):
        booster = booster_or_model
    else:
        raise TypeError(f"expected an xgboost Booster or a TrainedModel, "
                        f"got {type(booster_or_model).__name__}")
    if n_jobs is not None:
        booster.set_param("nthread", n_jobs)
    return booster


def shap_values(
    booster_or_model: xgb.Booster | TrainedModel | bytes | bytearray,
    X: np.ndarray,
    n_jobs: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Exact TreeSHAP values of every feature for every row of ``X``.

    Uses XGBoost's own exact TreeSHAP (``predict(pred_contribs=True)``), multithreaded.
    ``shap.TreeExplainer`` given an XGBoost booster calls this very function (identical
    output) with some conversion overhead on top; shap's own C++ TreeSHAP is ~1.5× faster
    on one thread but single-threaded and reachable only through private attributes. The
    cost grows as trees × leaves × depth², so deep trees make this step slow. Rows are
    processed in blocks of :data:`BLOCK_ROWS` so the temporary memory stays bounded.

    Parameters
    ----------
    booster_or_model : xgboost.Booster, TrainedModel or bytes
        The model (``bytes``: ``Booster.save_raw`` output, as broadcast between ranks).
    X : ndarray, shape (M, n_features)
        Feature rows (:func:`mlmotex_hpc.learn.model.features`).
    n_jobs : int, optional
        Threads; by default the booster's own setting (a ``TrainedModel``'s ``n_jobs``).
    progress : callable, optional
        Called as ``progress(rows_done, rows)`` after each block.

    Returns
    -------
    ndarray of float32, shape (M, n_features + 1)
        One column per feature, then the bias (the expected value) last; each row sums
        to the model's prediction for that row (local accuracy), to float32 rounding.
    """
    booster = _as_booster(booster_or_model, n_jobs)
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D, got shape {X.shape}")
    out = np.empty((X.shape[0], X.shape[1] + 1), dtype=np.float32)
    for start in range(0, X.shape[0], BLOCK_ROWS):
        block = X[start:start + BLOCK_ROWS]
        out[start:start + len(block)] = booster.predict(xgb.DMatrix(block), pred_contribs=True)
        if progress is not None:
            progress(start + len(block), X.shape[0])
    return out


@dataclass
class ContributionSums:
    """Per-atom sufficient statistics of the SHAP values, additive over motif subsets.

    ``a + b`` for the sums of two disjoint sets of motifs equals the sums of their union,
    so ranks may each sum their own motifs and ``Allreduce`` :meth:`as_array` (SUM).
    All arrays are float64 of shape (N,).

    Attributes
    ----------
    n_keep, sum_keep, sumsq_keep : ndarray
        Count, Σ φ and Σ φ² over motifs keeping the atom.
    n_remove, sum_remove, sumsq_remove : ndarray
        The same over motifs removing it.
    """

    n_keep: np.ndarray
    sum_keep: np.ndarray
    sumsq_keep: np.ndarray
    n_remove: np.ndarray
    sum_remove: np.ndarray
    sumsq_remove: np.ndarray

    FIELDS = ("n_keep", "sum_keep", "sumsq_keep", "n_remove", "sum_remove", "sumsq_remove")

    def __add__(self, other: ContributionSums) -> ContributionSums:
        if not isinstance(other, ContributionSums):
            return NotImplemented
        return ContributionSums.from_array(self.as_array() + other.as_array())

    def as_array(self) -> np.ndarray:
        """The six statistics stacked, shape (6, N), float64 (for ``Allreduce``)."""
        return np.stack([np.asarray(getattr(self, f), dtype=np.float64) for f in self.FIELDS])

    @classmethod
    def from_array(cls, arr: np.ndarray) -> ContributionSums:
        """Inverse of :meth:`as_array`."""
        arr = np.asarray(arr, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[0] != 6:
            raise ValueError(f"expected an array of shape (6, N), got {arr.shape}")
        return cls(*(arr[j].copy() for j in range(6)))

    @classmethod
    def zeros(cls, n: int) -> ContributionSums:
        """Sums over no motifs (the identity of ``+``)."""
        return cls.from_array(np.zeros((6, n)))


def contribution_sums(masks: np.ndarray, phi: np.ndarray) -> ContributionSums:
    """Kept/removed counts, sums and sums of squares of each atom's SHAP values.

    Parameters
    ----------
    masks : ndarray of bool, shape (M, N)
        Which permutable atoms each motif keeps.
    phi : ndarray, shape (M, ≥ N)
        SHAP values; only the first N columns (the mask-bit features) are used.

    Returns
    -------
    ContributionSums
        Accumulated in float64, block by block.
    """
    masks = np.asarray(masks)
    phi = np.asarray(phi)
    if masks.ndim != 2 or phi.ndim != 2 or phi.shape[0] != masks.shape[0] \
            or phi.shape[1] < masks.shape[1]:
        raise ValueError(f"masks of shape {masks.shape} and SHAP values of shape {phi.shape} "
                         "do not match: need (M, N) and (M, >= N)")
    n = masks.shape[1]
    acc = np.zeros((6, n))
    for start in range(0, masks.shape[0], BLOCK_ROWS):
        keep = masks[start:start + BLOCK_ROWS].astype(bool, copy=False)
        p = phi[start:start + BLOCK_ROWS, :n].astype(np.float64)
        p_keep = np.where(keep, p, 0.0)
        p_remove = p - p_keep
        acc[0] += keep.sum(axis=0)
        acc[1] += p_keep.sum(axis=0)
        acc[2] += (p_keep * p_keep).sum(axis=0)
        acc[3] += len(keep) - keep.sum(axis=0)
        acc[4] += p_remove.sum(axis=0)
        acc[5] += (p_remove * p_remove).sum(axis=0)
    return ContributionSums.from_array(acc)


@dataclass
class AtomContributions:
    """Per-atom contributions, each an (N,) float64 array.

    NaN meanings: ``kept_mean``/``kept_std`` are NaN for an atom no motif keeps,
    ``removed_mean``/``removed_std`` for an atom no motif removes. ``contribution``,
    ``uncertainty`` and ``confidence`` are NaN for either kind of atom: the catalogue never
    shows it both present and absent, so the data say nothing about it (and it is not
    counted as in the motif, as ``NaN < 0`` is false). ``confidence`` is +inf when
    σ = 0 and ACV ≠ 0, NaN when both are 0.

    Attributes
    ----------
    contribution : ndarray
        ACV = K − R; negative means keeping the atom lowers Rw.
    uncertainty : ndarray
        σ = sqrt((s_K² + s_R²) / 2), from population (ddof = 0) standard deviations.
    confidence : ndarray
        CF = |ACV| / σ.
    kept_mean, removed_mean : ndarray
        K and R.
    kept_std, removed_std : ndarray
        s_K and s_R (ddof = 0).
    contribution_se : ndarray
        Standard error of ACV, sqrt(s_K² / n_K + s_R² / n_R) (NaN as ``contribution``).
    """

    contribution: np.ndarray
    uncertainty: np.ndarray
    confidence: np.ndarray
    kept_mean: np.ndarray
    removed_mean: np.ndarray
    kept_std: np.ndarray
    removed_std: np.ndarray
    contribution_se: np.ndarray


def _mean_std(n: np.ndarray, s: np.ndarray, ss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std from count, sum and sum of squares (NaN where n = 0)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, s / n, np.nan)
        # E[φ²] − E[φ]² loses digits when |mean| ≫ std; in float64 with SHAP-sized values
        # the loss is far below the 1e-9 we need, but rounding can leave a tiny negative.
        var = np.where(n > 0, ss / n - mean * mean, np.nan)
    return mean, np.sqrt(np.clip(var, 0.0, None))


def atom_contributions(sums: ContributionSums) -> AtomContributions:
    """ACV, σ and CF of every permutable atom from (possibly reduced) sums.

    Parameters
    ----------
    sums : ContributionSums
        From :func:`contribution_sums`, possibly added over ranks or blocks.

    Returns
    -------
    AtomContributions
    """
    k_mean, k_std = _mean_std(sums.n_keep, sums.sum_keep, sums.sumsq_keep)
    r_mean, r_std = _mean_std(sums.n_remove, sums.sum_remove, sums.sumsq_remove)
    acv = k_mean - r_mean
    sigma = np.sqrt((k_std**2 + r_std**2) / 2.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cf = np.abs(acv) / sigma
        se = np.sqrt(k_std**2 / sums.n_keep + r_std**2 / sums.n_remove)
    return AtomContributions(
        contribution=acv,
        uncertainty=sigma,
        confidence=cf,
        kept_mean=k_mean,
        removed_mean=r_mean,
        kept_std=k_std,
        removed_std=r_std,
        contribution_se=se,
    )


def explain_order(ok: np.ndarray, seed: int) -> np.ndarray:
    """The motifs with a finite Rw (``ok``, shape (M,)) in the seeded random order in which
    a sample is explained: any leading part of it is a uniform random sample, whatever
    order the catalogue holds its motifs in."""
    index = np.flatnonzero(np.asarray(ok, dtype=bool))
    return index[np.random.default_rng([seed, 4]).permutation(index.size)]


def checkpoints(n: int) -> list[int]:
    """Motifs explained (of ``n`` in :func:`explain_order`) at which the standard errors
    are looked at: :data:`FIRST_CHECK`, doubling, and all ``n`` last."""
    marks = []
    count = FIRST_CHECK
    while count < n:
        marks.append(count)
        count *= 2
    return marks + [n]


def largest_relative_se(contrib: AtomContributions) -> float:
    """The largest ACV standard error as a fraction of the largest |ACV| (atoms with a
    defined ACV only); +inf when nothing is defined or every ACV is 0."""
    acv = contrib.contribution
    defined = np.isfinite(acv)
    if not defined.any():
        return float("inf")
    scale = float(np.max(np.abs(acv[defined])))
    if scale == 0.0:
        return float("inf")
    return float(np.max(contrib.contribution_se[defined])) / scale


def settled(contrib: AtomContributions, target: float) -> bool:
    """Whether every atom's ACV standard error is at most ``target`` × the largest |ACV|."""
    return largest_relative_se(contrib) <= target


def block_share(n: int, worker: int, workers: int, block: int = SUM_BLOCK) -> tuple[int, int]:
    """Worker ``worker`` of ``workers``: its contiguous share ``lo:hi`` of n motifs, in
    whole blocks of ``block`` motifs (the first ``n_blocks % workers`` get one more)."""
    n_blocks = -(-n // block)
    count = n_blocks // workers + (n_blocks % workers > worker)
    first = worker * (n_blocks // workers) + min(worker, n_blocks % workers)
    return min(n, first * block), min(n, (first + count) * block)


def block_sums(masks: np.ndarray, phi: np.ndarray, ok: np.ndarray, lo: int) -> list[np.ndarray]:
    """The :class:`ContributionSums` (as arrays) of each :data:`SUM_BLOCK` of motifs
    ``lo:lo + len(phi)``, counting only those with ``ok`` (a finite Rw).

    ``masks`` and ``ok`` cover all motifs, ``phi`` this share's rows; ``lo`` is a
    multiple of :data:`SUM_BLOCK`.
    """
    blocks = []
    for b in range(lo, lo + len(phi), SUM_BLOCK):
        keep = ok[b:b + SUM_BLOCK]
        rows = phi[b - lo:b - lo + SUM_BLOCK]
        blocks.append(contribution_sums(masks[b:b + SUM_BLOCK][keep], rows[keep]).as_array())
    return blocks


def add_blocks(shares: list[list[np.ndarray]], n_atoms: int) -> ContributionSums:
    """The sums of every block, added in block order (``shares`` in worker order)."""
    total = np.zeros((6, n_atoms))
    for share in shares:
        for block in share:
            total += block
    return ContributionSums.from_array(total)
