"""The adaptive catalogue's rounds: learn from the fits so far, draw where it helps.

Round 0 is a uniform sample (the original ML-MotEx's). Every later round:

1. trains one early-stopped XGBoost model (the fast search's warm start, no search) on
   every motif fitted so far;
2. reads the atom contributions from SHAP values of the *uniform* motifs only (a
   sample of them), so that they keep the meaning of a uniform catalogue's, and labels
   the atoms (:func:`~mlmotex_hpc.extract.confidence_labels`);
3. draws the round's motifs: a share ``explore`` uniformly (as round 0 did, so that an
   early mistake can still be seen), the rest from a pool of mutants of the best motifs
   fitted so far and of the labelled motif, the atoms labelled ``uncertain`` mutated
   most often, taking those the model predicts lowest while keeping them at least two
   atoms apart.

Arrays in, arrays out; seeded by the catalogue seed and the round number, so a round's
motifs depend on the fits before it and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xgboost as xgb

from ..extract import LABEL_CODES, confidence_labels
from .explain import atom_contributions, contribution_sums, shap_values
from .model import FINAL_STOP, MAX_TREES, WARM_START, LearnSettings, features, fit_final, xgb_params

#: Uniform motifs whose SHAP values a round reads (a seeded sample of them).
ROUND_SHAP_ROWS = 2048
#: Mutants drawn per motif of the round's exploitation share (the pool predicted).
POOL_FACTOR = 40
#: Best fitted motifs the mutants start from.
ELITES = 16
#: How much more often an uncertain atom is flipped than a labelled one.
UNCERTAIN_WEIGHT = 4.0


@dataclass(frozen=True)
class RoundView:
    """What a round learned: the atom contributions of the uniform motifs and labels."""

    contribution: np.ndarray
    contribution_se: np.ndarray
    labels: np.ndarray
    predicted_best: float


def round_model(masks: np.ndarray, rw: np.ndarray, seed: int, n_jobs: int = 1) -> xgb.Booster:
    """The round's model of Rw: the warm-start parameters, trees by early stopping."""
    settings = LearnSettings(seed=seed, n_jobs=n_jobs)
    params = xgb_params({**WARM_START, "n_estimators": MAX_TREES}, settings)
    booster, _ = fit_final(features(masks), rw.astype(np.float32), params, seed,
                           stop=FINAL_STOP)
    return booster


def round_view(booster: xgb.Booster, masks: np.ndarray, uniform: np.ndarray, seed: int,
               z: float, n_jobs: int = 1) -> RoundView:
    """Atom contributions from SHAP values of (a sample of) the uniform motifs."""
    rows = np.flatnonzero(uniform)
    if rows.size > ROUND_SHAP_ROWS:
        rng = np.random.default_rng([seed, 7])
        rows = np.sort(rng.choice(rows, ROUND_SHAP_ROWS, replace=False))
    phi = shap_values(booster, features(masks[rows]), n_jobs=n_jobs)
    contrib = atom_contributions(contribution_sums(masks[rows], phi))
    labels = confidence_labels(contrib.contribution, contrib.contribution_se,
                               contrib.confidence, z)
    pred = booster.inplace_predict(features(masks).astype(np.float32))
    return RoundView(contrib.contribution, contrib.contribution_se, labels,
                     float(np.min(pred)))


def uniform_draws(n_permutable: int, count: int, rng: np.random.Generator,
                  seen: set[bytes]) -> np.ndarray:
    """``count`` new motifs drawn as round 0 draws them (k uniform in 1..N, then k atoms),
    none in ``seen`` (which grows)."""
    out = []
    tries = 0
    while len(out) < count and tries < 50 * count + 1000:
        tries += 1
        k = rng.integers(1, n_permutable + 1)
        mask = np.zeros(n_permutable, dtype=bool)
        mask[rng.choice(n_permutable, k, replace=False)] = True
        key = np.packbits(mask).tobytes()
        if key not in seen:
            seen.add(key)
            out.append(mask)
    return np.array(out, dtype=bool).reshape(-1, n_permutable)


def propose(masks: np.ndarray, rw: np.ndarray, view: RoundView, booster: xgb.Booster,
            count: int, explore: float, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray]:
    """The next round's ``count`` motifs and whether each was drawn uniformly.

    ``masks``/``rw``: every motif fitted so far (finite Rw); none of them is drawn again.
    """
    n = masks.shape[1]
    seen = {np.packbits(m).tobytes() for m in masks}
    n_uniform = int(round(explore * count))
    explored = uniform_draws(n, n_uniform, rng, seen)
    want = count - len(explored)
    if want <= 0:
        return explored, np.ones(len(explored), dtype=bool)
    # elites: the best fitted motifs, the labelled motif, and it with the uncertain atoms
    order = np.argsort(rw, kind="stable")[:ELITES]
    elites = [masks[i] for i in order]
    inside = view.labels == LABEL_CODES["in"]
    unsure = view.labels == LABEL_CODES["uncertain"]
    for extra in (inside, inside | unsure):
        if extra.any():
            elites.append(extra)
    weights = np.where(unsure, UNCERTAIN_WEIGHT, 1.0)
    weights = weights / weights.sum()
    pool, keys = [], set()
    for _ in range(POOL_FACTOR * want):
        base = elites[int(rng.integers(len(elites)))]
        flips = 1 + min(int(rng.geometric(0.5)) - 1, 3)  # 1..4 atoms, mostly 1-2
        mutant = base.copy()
        mutant[rng.choice(n, min(flips, n), replace=False, p=weights)] ^= True
        if not mutant.any():
            continue
        key = np.packbits(mutant).tobytes()
        if key in seen or key in keys:
            continue
        keys.add(key)
        pool.append(mutant)
    chosen: list[np.ndarray] = []
    if pool:
        pool_arr = np.array(pool)
        pred = booster.inplace_predict(features(pool_arr).astype(np.float32))
        for i in np.argsort(pred, kind="stable"):
            cand = pool_arr[i]
            if chosen and np.min(np.sum(np.array(chosen) != cand, axis=1)) < 2:
                continue  # keep the round's motifs apart: one-atom neighbours teach little
            chosen.append(cand)
            seen.add(np.packbits(cand).tobytes())
            if len(chosen) == want:
                break
    short = want - len(chosen)
    fill = uniform_draws(n, short, rng, seen) if short > 0 else np.zeros((0, n), bool)
    exploit = np.array(chosen, dtype=bool).reshape(-1, n)
    new = np.concatenate([explored, exploit, fill])
    is_uniform = np.concatenate([np.ones(len(explored), bool), np.zeros(len(exploit), bool),
                                 np.ones(len(fill), bool)])
    return new, is_uniform


def next_round(masks: np.ndarray, rw: np.ndarray, uniform: np.ndarray,
               labels: list[list[int]], round_: int, size: int, *, seed: int, explore: float,
               stable_rounds: int, z: float, n_jobs: int = 1) -> dict:
    """Learn from every motif fitted so far (``masks``, ``rw``; ``uniform``: drawn
    uniformly) and decide round ``round_``: a dict with the atom ``labels``, the log
    ``line``, and either ``stop`` (why; the labels held ``stable_rounds`` rounds) or the
    next ``size`` motifs (``masks``, ``uniform``). Seeded by ``seed`` and the round."""
    ok = np.isfinite(rw)
    booster = round_model(masks[ok], rw[ok], seed=seed + round_, n_jobs=n_jobs)
    view = round_view(booster, masks[ok], uniform[ok], seed + round_, z, n_jobs)
    now = [int(v) for v in view.labels]
    counts = {name: sum(v == code for v in now) for name, code in LABEL_CODES.items()}
    line = (f"  round {round_ - 1} learned: {counts['in']} in, {counts['out']} out, "
            f"{counts['uncertain']} uncertain; best Rw fitted {np.nanmin(rw):.4f}, "
            f"predicted {view.predicted_best:.4f}")
    history = labels + [now]
    k = stable_rounds
    if k and len(history) > k and all(h == now for h in history[-k - 1:]):
        return {"labels": now, "line": line, "stop": (
            f"the labels have not changed for {k} round(s); stopped early with "
            f"{len(rw):,} of the budget's fits")}
    rng = np.random.default_rng([seed, round_])
    new, is_uniform = propose(masks, np.where(ok, rw, np.inf), view, booster, size,
                              explore, rng)
    return {"labels": now, "line": line, "stop": "", "masks": new, "uniform": is_uniform}
