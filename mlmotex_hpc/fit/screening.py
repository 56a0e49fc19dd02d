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
whole-cluster Rw and the best motif's mask and size are kept alongside it.
:func:`best_curve` fits one such motif again to one frame, with the same fitter, for the
curve a report draws. Arrays in, arrays out: no file and no communicator here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..catalogue import MotifSpace, sample_masks
from ..extract import Descent, Polisher, best_of
from ..io.structure import Structure
from .batch import FitPlan, Frame, Inputs, fit_batch, make_fit_groups
from .fitter import rw as rw_of


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


def best_curve(structure: Structure, frame: Frame, plan: FitPlan, permute: tuple[str, ...],
               bond_threshold: float, mask: np.ndarray) -> tuple[np.ndarray, float]:
    """One motif of a candidate fitted again to one frame: its G_calc on ``frame.r``
    (Å⁻², scale applied) and the Rw of that curve.

    ``mask`` is over the candidate's permutable atoms, as ``Score.best_mask[f]``; a row of
    ``ScreenFile.scores()["best_mask"]``, padded with False to whole bytes, is taken as
    it is.

    The fit is the probe's own (:func:`~.batch.make_fit_groups` with the exact zoom
    search, then :func:`~.batch.fit_batch`), so the Rw is the one the probe stored for
    this motif and frame: the curve is computed again with the calculator (``calc.gr`` at
    the fitted scale, zoom, Uiso and delta2) rather than inside the compiled fitter, which
    changes only the last bits (measured: 2e-15). :func:`~.fitter.fit_motif` alone gives
    another Rw, most often lower by 1e-5 to 1.5e-4 (measured on the Keggin data): the
    compiled fitter finds its zoom on a G(r) computed at a nearby zoom and read at
    r·z_b/z, whose slope in zoom is not the exact one (peak widths and the Q window do not
    scale with the zoom), so on a flat Rw(zoom) its zoom can lie 1e-3 from the exact
    minimum. The curve drawn is the one the ranking used.
    """
    space = MotifSpace.from_structure(structure, permute, bond_threshold)
    mask = np.asarray(mask, dtype=bool).ravel()
    if mask.size < space.size or mask[space.size:].any():
        raise ValueError(f"a motif mask of {mask.size} entries ({int(mask.sum())} kept) is "
                         f"not one over this candidate's {space.size} permutable atoms")
    mask = mask[:space.size]
    inputs = Inputs(structure, space, [frame], np.empty((0, 0), np.uint8), space.size)
    (group,) = make_fit_groups(inputs, plan.pdf, plan.fit, search="exact")
    fitted = fit_batch(mask[None], space, [group], [frame], plan.fit, plan.base_uiso,
                       plan.extra)
    freed = {name[5:]: float(fitted[name][0, 0]) for name in plan.extra
             if name.startswith("uiso_")}
    motif = group.calc.prepare(space.atom_masks(mask[None])[0])
    g_calc = float(fitted["scale"][0, 0]) * group.calc.gr(
        motif, zoom=float(fitted["zoom"][0, 0]),
        uiso=freed or None,  # the others are the calculator's own, as in the fit
        delta2=float(fitted["delta2"][0, 0]) if "delta2" in fitted else None)
    return g_calc, rw_of(frame.g, g_calc, frame.weights)
