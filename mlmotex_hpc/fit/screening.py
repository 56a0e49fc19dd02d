"""A screen's score of one candidate cluster: its Rw, and the best of its sub-motifs.

A template may hold the motif inside a larger cluster. Ranking it by the Rw of the whole
cluster would rank it down, so each candidate is probed as ClusterFinder does and then
some, on every frame given, with the run's own fitter and ``fit.refine``:

1. the whole cluster (every permutable atom kept);
2. leave-one-out: each permutable atom removed in turn;
3. a small random catalogue (``ProbePlan.random`` motifs, drawn as step 1 draws them);
4. a few polishing moves: steepest descent on real fits
   (:class:`~mlmotex_hpc.extract.Polisher`, toggles then swaps) from the
   ``ProbePlan.starts`` best motifs met so far, at most ``ProbePlan.steps`` steps.

The score is the lowest Rw found (mean over the frames when there are several). The
whole-cluster Rw and the best motif's mask and size are kept alongside it. Arrays in,
arrays out: no file and no communicator here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..catalogue import MotifSpace, sample_masks
from ..extract import Descent, Polisher, best_of
from ..io.structure import Structure
from .batch import FitPlan, Frame, Inputs, fit_batch, make_fit_groups


@dataclass(frozen=True)
class ProbePlan:
    """How hard each candidate is probed."""

    random: int = 200  # random motifs
    starts: int = 3  # polishing starts (the best motifs met)
    steps: int = 20  # polishing steps at most
    seed: int = 0
    tolerance: float = 1e-4  # a polishing move must lower Rw by more than this


@dataclass(frozen=True, eq=False)
class Score:
    """One candidate's probe, per frame (F)."""

    rw_whole: np.ndarray  # (F,)
    rw_best: np.ndarray  # (F,)
    best_mask: np.ndarray  # (F, N permutable) bool
    fits: int  # motif × frame fits made
    n_permutable: int

    @property
    def rank_rw(self) -> float:
        """What the ranking sorts by: the best Rw, averaged over the frames."""
        return float(np.mean(self.rw_best))

    @property
    def best_size(self) -> np.ndarray:
        return self.best_mask.sum(axis=1)


class _Evaluator:
    """Rw of motifs on every frame, each motif fitted once."""

    def __init__(self, structure: Structure, space: MotifSpace, frames: list[Frame],
                 plan: FitPlan):
        inputs = Inputs(structure, space, frames, np.empty((0, 0), np.uint8), space.size)
        self.groups = make_fit_groups(inputs, plan.pdf, plan.fit, search="exact")
        self.space, self.frames, self.plan = space, frames, plan
        self.known: dict[bytes, np.ndarray] = {}
        self.fits = 0

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks, dtype=bool)
        keys = [np.packbits(m).tobytes() for m in masks]
        new = [k for k in dict.fromkeys(keys) if k not in self.known]
        if new:
            todo = np.unpackbits(np.frombuffer(b"".join(new), np.uint8).reshape(len(new), -1),
                                 axis=1, count=self.space.size).astype(bool)
            rw = fit_batch(todo, self.space, self.groups, self.frames, self.plan.fit,
                           self.plan.base_uiso, self.plan.extra)["rw"]
            self.fits += rw.size
            for j, key in enumerate(new):
                self.known[key] = rw[:, j]
        return np.stack([self.known[k] for k in keys], axis=1)


def score_candidate(structure: Structure, frames: list[Frame], plan: FitPlan,
                    permute: tuple[str, ...], bond_threshold: float,
                    probe: ProbePlan = ProbePlan()) -> Score:
    """Probe one candidate cluster (see the module notes)."""
    space = MotifSpace.from_structure(structure, permute, bond_threshold)
    n = space.size
    evaluate = _Evaluator(structure, space, frames, plan)
    whole = np.ones((1, n), dtype=bool)
    masks = [whole]
    if n > 1:
        masks.append(~np.eye(n, dtype=bool))  # leave one out
    if probe.random and n > 1:
        masks.append(sample_masks(n, probe.random, probe.seed))
    masks = np.concatenate(masks)
    rw = evaluate(masks)  # (F, K)
    rw_whole = rw[:, 0].copy()
    descents = []
    for f in range(len(frames)):
        finite = np.where(np.isfinite(rw[f]), rw[f], np.inf)
        for k in np.argsort(finite, kind="stable")[:probe.starts]:
            descents.append(Descent(f, f"probe #{k}", masks[k].copy(), float(rw[f, k])))
    if probe.steps and n > 1:
        Polisher(None, probe.tolerance, max_steps=probe.steps).run(descents, evaluate)
    best = [best_of(descents, f) for f in range(len(frames))]
    return Score(rw_whole=rw_whole, rw_best=np.array([d.rw for d in best]),
                 best_mask=np.stack([d.mask for d in best]), fits=evaluate.fits,
                 n_permutable=n)
