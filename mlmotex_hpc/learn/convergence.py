"""How many motifs ML-MotEx needs, measured on an exhaustive table without refitting.

Each trial draws an ML-MotEx random catalogue (:func:`~mlmotex_hpc.catalogue.sample_masks`)
of some size from the table, looks its Rw up, runs steps 3-4 on it (the run's learning
settings) and compares the result with the exact answer: the signs and the ranking of
the ACVs against the exact Shapley values, the ACV < 0 set against the Shapley < 0 set,
and the best motif the catalogue holds against the global optimum. The sample's own main
effects (mean Rw keeping an atom minus mean removing it, no model) are compared too: what
the machine learning adds over plain averages.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import spearmanr

from ..catalogue import mask_rows, row_masks, sample_masks
from .explain import atom_contributions, contribution_sums, explain_order, shap_values
from .model import LearnSettings, features, train_rw_model

#: Motifs explained per trial, at most (a seeded random sample of the catalogue).
EXPLAINED = 10_000
#: ``strategy`` column: how the trial's catalogue was drawn.
STRATEGIES = {"random": 0, "adaptive": 1}
#: Columns of a trial's result, in order.
FIELDS = ("strategy", "size", "seed", "rounds", "sign_agreement", "spearman", "answer_errors",
          "mean_sign_agreement", "best_rw", "global_rw", "best_is_global", "test_r2",
          "seconds")


@dataclass(frozen=True)
class Trial:
    """One catalogue's verdict against the exact answer."""

    strategy: int  # STRATEGIES
    size: int
    seed: int
    rounds: int  # adaptive rounds (1: one uniform sample)
    sign_agreement: float  # fraction of atoms whose ACV has the exact Shapley value's sign
    spearman: float  # rank correlation of the ACVs with the exact Shapley values
    answer_errors: int  # atoms in one of the ACV < 0 and Shapley < 0 sets, not the other
    mean_sign_agreement: float  # the same as sign_agreement for the sample's main effects
    best_rw: float  # the lowest Rw in the catalogue
    global_rw: float  # the lowest Rw of every motif
    best_is_global: bool
    test_r2: float
    seconds: float

    def row(self) -> list:
        return [asdict(self)[k] for k in FIELDS]


def sample_main_effect(masks: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean Rw of the catalogue's motifs keeping each atom minus the mean removing it."""
    keep = masks.astype(float)
    n_keep = keep.sum(axis=0)
    n_remove = len(y) - n_keep
    with np.errstate(invalid="ignore", divide="ignore"):
        return (y @ keep) / n_keep - (y @ (1.0 - keep)) / n_remove


@dataclass(frozen=True)
class AdaptiveSettings:
    """An adaptive catalogue's settings (``catalogue`` and ``extract.label_z``)."""

    first_round: float = 0.3
    round_size: int | None = None
    explore: float = 0.25
    stable_rounds: int = 2
    label_z: float = 2.0


def adaptive_rows(n: int, budget: int, seed: int, rw_table: np.ndarray,
                  how: AdaptiveSettings, n_jobs: int = 1) -> tuple[np.ndarray, np.ndarray, int]:
    """The rows an adaptive catalogue of ``budget`` motifs fits, its Rw looked up in the
    table instead of fitted: rows, whether each was drawn uniformly, rounds. Rounds are
    sized as the run sizes them, without rounding them to whole work units."""
    from .adaptive import next_round

    first = min(budget, max(10, math.ceil(how.first_round * budget)))
    later = how.round_size or max(1, budget // 10)
    masks = sample_masks(n, first, seed)
    uniform = np.ones(len(masks), dtype=bool)
    labels: list[list[int]] = []
    rounds = 1
    while len(masks) < budget:
        decision = next_round(masks, rw_table[mask_rows(masks)], uniform, labels, rounds,
                              min(later, budget - len(masks)), seed=seed,
                              explore=how.explore, stable_rounds=how.stable_rounds,
                              z=how.label_z, n_jobs=n_jobs)
        labels.append(decision["labels"])
        if decision["stop"] or not len(decision["masks"]):
            break
        masks = np.concatenate([masks, decision["masks"]])
        uniform = np.concatenate([uniform, decision["uniform"]])
        rounds += 1
    return mask_rows(masks), uniform, rounds


def trial(rows: np.ndarray, rw_table: np.ndarray, shapley: np.ndarray, global_rw: float,
          size: int, seed: int, settings: LearnSettings, uniform: np.ndarray | None = None,
          rounds: int = 1, strategy: str = "random") -> Trial:
    """Steps 3-4 on the catalogue of table ``rows`` (one frame's Rw ``rw_table``): the
    model learns from every motif, the ACVs are read from the ``uniform`` ones (all by
    default), as a run reads them."""
    t0 = time.perf_counter()
    n = shapley.size
    masks = row_masks(rows, n)
    y = rw_table[rows]
    ok = np.isfinite(y)
    uniform = np.ones(len(rows), dtype=bool) if uniform is None else uniform
    masks, y, uniform = masks[ok], y[ok], uniform[ok]
    X = features(masks)
    model = train_rw_model(X, y, settings)
    explained = explain_order(uniform, settings.seed)[:EXPLAINED]
    phi = shap_values(model, X[explained], n_jobs=settings.n_jobs)
    acv = atom_contributions(contribution_sums(masks[explained], phi)).contribution
    ranked = spearmanr(acv, shapley).statistic if n > 1 else np.nan
    best_rw = float(np.min(y)) if y.size else np.nan
    return Trial(
        strategy=STRATEGIES[strategy],
        size=size, seed=seed, rounds=rounds,
        sign_agreement=float(np.mean(np.sign(acv) == np.sign(shapley))),
        spearman=float(ranked),
        answer_errors=int(np.sum((acv < 0) != (shapley < 0))),
        mean_sign_agreement=float(np.mean(np.sign(sample_main_effect(masks[uniform],
                                                                     y[uniform]))
                                          == np.sign(shapley))),
        best_rw=best_rw, global_rw=float(global_rw),
        best_is_global=bool(best_rw <= global_rw),
        test_r2=float(model.metrics.get("test_r2", np.nan)),
        seconds=time.perf_counter() - t0)
