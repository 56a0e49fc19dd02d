"""Step 5a on every rank: the answer of each frame, from its atom contributions.

1. Confidence labels (``in``, ``out``, ``uncertain``) from each ACV and its standard
   error (:func:`~mlmotex_hpc.extract.confidence_labels`).
2. Connected pieces (``extract.connected``): the ACV < 0 set and the best catalogue
   motifs are cut into the pieces of the bond graph; the piece with the lowest real Rw
   is kept.
3. Polishing (``extract.polish``): steepest descent on real fits from those starts
   (:class:`~mlmotex_hpc.extract.Polisher`).

Every motif this stage fits is appended to ``/catalogue`` and ``/fits`` (origin
``extract``) of the learning copy; a motif fitted before, by the catalogue or an earlier
stage, is looked up instead. The fits come out of ``catalogue.size``
(:func:`~mlmotex_hpc.config.extract_reserve`). Every rank takes the same decisions from
the same data, so the answer is the same on any number of ranks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..catalogue import mask_rows
from ..config import Config, ExtractConfig, extract_reserve
from ..extract import (
    LABEL_CODES,
    Descent,
    Polisher,
    best_of,
    confidence_labels,
    dangling,
    link_graph,
    pieces,
)
from ..fit.batch import FitGroup, FitPlan, Inputs, fit_plan, make_fit_groups
from ..parallel.comm import pause_for_tests
from ..parallel.fitting import fit_masks
from ..store import RunFile


@dataclass(frozen=True)
class ExtractPlan:
    """What the extract stage uses of the config, read from it once (as
    :class:`~mlmotex_hpc.fit.batch.FitPlan` is for fitting)."""

    #: The config's ``extract:`` section.
    extract: ExtractConfig
    #: ``bond_threshold`` (Å): the default link distance.
    bond_threshold: float
    #: The fits table's file name ("" without one: then there is no data to fit).
    table: str
    #: Fits kept for this stage (:func:`~mlmotex_hpc.config.extract_reserve`).
    reserve: int
    #: How a motif is fitted.
    fit: FitPlan


def extract_plan(config: Config, inputs: Inputs) -> ExtractPlan:
    """The extract stage's settings of ``config`` for the run of ``inputs``."""
    return ExtractPlan(config.extract, config.bond_threshold,
                       config.fits.name if config.fits is not None else "",
                       extract_reserve(config, inputs.space.size),
                       fit_plan(config, inputs.structure))


#: Pieces of a motif that are fitted to choose among them (the largest first).
MAX_PIECES = 4


class FitTable:
    """Every fitted motif of the run, on every rank: Rw by mask, and new fits within a
    budget, appended to the file."""

    def __init__(self, packed: np.ndarray, rw: np.ndarray, n_permutable: int, budget: int,
                 fit: Callable[[np.ndarray], dict], append: Callable[[np.ndarray, dict], None],
                 n_catalogue: int | None = None):
        self.n = n_permutable
        #: the catalogue's rows (the others: fitted by this stage before)
        self.n_catalogue = len(packed) if n_catalogue is None else n_catalogue
        self.rw = [rw]  # F × rows, then one block per call that fitted
        self.width = packed.shape[1]
        keys = self._keys(packed)
        self.order = np.argsort(keys, kind="stable")
        self.sorted = keys[self.order]
        self.added: dict[bytes, int] = {}
        self.packed = packed
        self.n_rows = len(packed)
        self.budget = budget
        self.fitted = 0
        self._fit, self._append = fit, append

    def mask(self, row: int) -> np.ndarray:
        """The mask of a row of the file's catalogue."""
        return np.unpackbits(self.packed[row], count=self.n).astype(bool)

    def _keys(self, packed: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(packed).view(f"V{self.width}").ravel()

    def rows(self, masks: np.ndarray) -> np.ndarray:
        """Row of each mask in the table, -1 where it was never fitted."""
        packed = np.packbits(masks, axis=1)
        keys = self._keys(packed)
        rows = np.full(len(masks), -1, dtype=np.int64)
        if self.sorted.size:
            at = np.minimum(np.searchsorted(self.sorted, keys), self.sorted.size - 1)
            hit = self.sorted[at] == keys
            rows[hit] = self.order[at[hit]]
        for k in np.flatnonzero(rows < 0):
            rows[k] = self.added.get(packed[k].tobytes(), -1)
        return rows

    def evaluate(self, masks: np.ndarray) -> np.ndarray:
        """Rw of each mask for every frame (F × K): looked up, or fitted while the budget
        lasts (in the order given), NaN beyond it."""
        masks = np.asarray(masks, dtype=bool)
        rows = self.rows(masks)
        new: dict[bytes, int] = {}
        for k in np.flatnonzero(rows < 0):
            key = np.packbits(masks[k]).tobytes()
            if key not in new and len(new) < self.budget:
                new[key] = k
        if new:
            picked = masks[list(new.values())]
            results = self._fit(picked)
            self._append(picked, results)
            for i, key in enumerate(new):
                self.added[key] = self.n_rows + i
            self.rw.append(results["rw"])
            self.n_rows += len(picked)
            self.budget -= len(picked)
            self.fitted += len(picked)
            rows = self.rows(masks)
        table = np.concatenate(self.rw, axis=1) if len(self.rw) > 1 else self.rw[0]
        self.rw = [table]
        out = np.full((table.shape[0], len(masks)), np.nan)
        known = rows >= 0
        out[:, known] = table[:, rows[known]]
        return out


def extract_stage(run: RunFile, plan: ExtractPlan, inputs: Inputs, comm, log: Callable,
                  timings: dict) -> None:
    """Labels, connected pieces and polishing for every frame (every rank calls it, the
    learning copy open); writes ``/atoms/label``, ``acv_negative``, ``in_motif`` (the
    answer) and ``/polish``."""
    t0 = time.perf_counter()
    ex = plan.extract
    acv = run.shared(lambda r: r.atoms("contribution"))
    se = run.shared(lambda r: r.atoms("contribution_se"))
    cf = run.shared(lambda r: r.atoms("confidence"))
    every = run.shared(lambda r: r.exhaustive)
    n_frames, n = acv.shape
    labels = confidence_labels(acv, se, cf, ex.label_z, ex.label_min_cf)
    acv_negative = acv < 0
    counts = {name: int((labels == code).sum()) for name, code in LABEL_CODES.items()}
    log(f"step 5: labels ({ex.label_z:g} standard errors): {counts['in']} in, "
        f"{counts['out']} out, {counts['uncertain']} uncertain"
        + (f" (over {n_frames} frames)" if n_frames > 1 else ""))
    # from the config, which every rank has: an attribute read by rank 0 alone left the
    # ranks' metadata caches apart, and the next collective attribute write hung (3 ranks)
    table = plan.table
    if table and (ex.polish or ex.connected):
        log(f"  the fits came from {table}: no data to fit, so no connected pieces and no "
            "polishing; the answer is the ACV < 0 set")
    if table or not (ex.polish or ex.connected):
        run.collective_write_extract(labels=labels, acv_negative=acv_negative,
                                     in_motif=acv_negative, polish=None,
                                     settings=_settings(ex, "the ACV < 0 set"))
        timings["extract"] = time.perf_counter() - t0
        return

    if every:  # every motif is fitted: look them up, fit none
        table, best = ExhaustiveTable(run), _best_of_table(run, ex.polish_starts)
        budget = 0
    else:
        table, budget = _fit_table(run, plan, inputs, comm, log, n)
        best = _best_of_catalogue(table, ex.polish_starts if ex.polish else 0)
    links = None
    if ex.connected:
        xyz = inputs.structure.xyz[inputs.space.permutable]
        distance = link_distance(plan, xyz, inputs.space.others.size)
        links = link_graph(inputs.space.bonded, xyz, distance)
        log(f"  connected motifs: atoms linked through a shared bonded atom or within "
            f"{distance:.2f} Å")
    penalty = None
    if ex.dangling_penalty > 0:
        bonded = inputs.space.bonded

        def penalty(masks: np.ndarray) -> np.ndarray:
            return ex.dangling_penalty * dangling(masks, bonded)

    descents = _starts(acv_negative, best if ex.polish else [[] for _ in range(n_frames)],
                       links, table, penalty)
    if ex.polish:
        spent = "every motif fitted already" if every else f"budget {budget:,} fits"
        log(f"  polishing by real fits from {len(descents)} start(s)"
            f" ({spent}, Rw must fall by > {ex.polish_tolerance:g})")
        polisher = Polisher(links, ex.polish_tolerance, use_swaps=ex.swaps, penalty=penalty)
        steps = [0]

        def evaluate(masks: np.ndarray) -> np.ndarray:
            before = table.fitted
            out = table.evaluate(masks)
            steps[0] += 1
            log(f"  polish step {steps[0]}: {len(masks)} neighbours, "
                f"{table.fitted - before} fitted ({table.fitted:,} of {budget:,} so far)")
            pause_for_tests("extract")
            return out

        polisher.run(descents, evaluate)
    in_motif = acv_negative.copy()
    polish = None
    answered = sorted({d.frame for d in descents})
    if descents:
        best = {f: answer_of(descents, f, ex.answer) for f in answered}
        for f, d in best.items():
            in_motif[f] = d.mask
        if ex.polish:
            polish = _polish_record(descents, best, acv_negative, n_frames, n, table, budget)
    what = "the polished motif" if ex.polish else "the best connected piece of the ACV < 0 set"
    run.collective_write_extract(labels=labels, acv_negative=acv_negative, in_motif=in_motif,
                                 polish=polish, settings=_settings(ex, what))
    for f in answered[:1]:
        d = best[f]
        log(f"  answer{'' if n_frames == 1 else f' (frame {f})'}: {int(d.mask.sum())} "
            f"permutable atoms, Rw {d.rw:.4f} ({d.origin} start"
            + (f", {len(d.path) - 1} move(s), {d.stop}" if ex.polish else "") + ")")
        lower = best_of(descents, f)
        if lower is not d:
            log(f"  the {lower.origin} start ended lower: {int(lower.mask.sum())} atoms, Rw "
                f"{lower.rw:.4f} (extract.answer: lowest takes it; real Rw alone often "
                "prefers a fragment: docs/method.md, polishing)")
    timings["extract"] = time.perf_counter() - t0
    log(f"  extract stage: {table.fitted:,} fits in {timings['extract']:.1f} s")


#: With every atom permutable (C60, a metal cluster), atoms are linked within this many
#: times the median nearest-neighbour distance.
NEIGHBOUR_FACTOR = 1.2


def link_distance(plan: ExtractPlan, xyz: np.ndarray, n_others: int) -> float:
    """``extract.link_distance``, or by default ``bond_threshold``; when the model has no
    non-permutable atoms to link through, at least :data:`NEIGHBOUR_FACTOR` × the median
    nearest-neighbour distance of the permutable atoms (C-C 1.45 Å in C60: 1.7 Å)."""
    if plan.extract.link_distance is not None:
        return plan.extract.link_distance
    if n_others or len(xyz) < 2:
        return plan.bond_threshold
    diff = xyz[:, None, :] - xyz[None, :, :]
    d = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
    np.fill_diagonal(d, np.inf)
    return max(plan.bond_threshold, NEIGHBOUR_FACTOR * float(np.median(d.min(axis=1))))


def answer_of(descents: list[Descent], frame: int, rule: str) -> Descent:
    """The frame's answer: where the ACV < 0 start ended (``extracted``; when the frame
    has one), or the start that ended lowest in the objective (``lowest``)."""
    if rule == "extracted":
        mine = [d for d in descents if d.frame == frame and d.origin == "extracted"]
        if mine:
            return mine[0]
    return best_of(descents, frame)


def _fit_table(run: RunFile, extract: ExtractPlan, inputs: Inputs, comm, log: Callable, n: int
               ) -> tuple[FitTable, int]:
    """Every fitted motif of a sampled catalogue on every rank, and the fits left for
    the stage."""
    packed = run.shared(lambda r: np.packbits(r.masks(slice(None)), axis=1))
    rw_all = run.shared(lambda r: r.fits("rw", every=True))
    n_catalogue, resizable = run.shared(lambda r: (r.n_motifs, r.resizable()))
    budget = n_catalogue + extract.reserve - packed.shape[0] if resizable else 0
    budget = max(0, budget)
    if not resizable:
        log(f"  {run.path.name} was written before motifs could be added to it: the extract "
            "stage uses the motifs fitted already")
    plan = extract.fit
    groups: list[FitGroup] = []

    def fit(masks: np.ndarray) -> dict:
        if not groups:
            groups.extend(make_fit_groups(inputs, plan.pdf, plan.fit, None, plan.zoom_search))
        return fit_masks(inputs, plan, groups, masks, comm)

    table = FitTable(packed, rw_all, n, budget, fit,
                     lambda masks, results: run.collective_append_rows(masks, results),
                     n_catalogue)
    return table, budget


class ExhaustiveTable:
    """An exhaustive run's table: every motif fitted, Rw looked up by row (rank 0 reads
    the rows asked for and broadcasts them); nothing is fitted."""

    fitted = 0

    def __init__(self, run: RunFile):
        self.run = run

    def evaluate(self, masks: np.ndarray) -> np.ndarray:
        """Rw of each mask for every frame (F × K); NaN for the empty motif."""
        rows = mask_rows(masks)

        def read(run: RunFile) -> np.ndarray:
            wanted = np.unique(rows[rows >= 0])
            out = np.full((run.n_frames, len(rows)), np.nan)
            if wanted.size:
                at = rows >= 0
                out[:, at] = run.fit_rows("rw", wanted)[:, np.searchsorted(wanted, rows[at])]
            return out

        return self.run.shared(read)


def _best_of_catalogue(table: FitTable, n_best: int) -> list[list[tuple[str, np.ndarray]]]:
    """Each frame's ``n_best`` lowest-Rw catalogue motifs, as (label, mask)."""
    rw_cat = table.rw[0][:, :table.n_catalogue]
    out = []
    for f in range(rw_cat.shape[0]):
        finite = np.flatnonzero(np.isfinite(rw_cat[f]))
        rows = finite[np.argsort(rw_cat[f, finite], kind="stable")][:n_best]
        out.append([(f"catalogue #{k + 1} (motif {row})", table.mask(int(row)))
                    for k, row in enumerate(rows)])
    return out


def _best_of_table(run: RunFile, n_best: int) -> list[list[tuple[str, np.ndarray]]]:
    """Each frame's ``n_best`` best motifs of an exhaustive table (``/best``)."""
    best = run.shared(lambda r: r.best())
    return [[(f"global #{k + 1} (motif {row})", best["mask"][f, k])
             for k, row in enumerate(best["row"][f, :n_best]) if row >= 0]
            for f in range(best["row"].shape[0])]


def _starts(acv_negative: np.ndarray, best: list[list[tuple[str, np.ndarray]]],
            links: np.ndarray | None, table, penalty=None) -> list[Descent]:
    """Each frame's starts: the ACV < 0 set, then its ``best`` motifs (label, mask),
    each cut to its best connected piece (with ``links``); duplicates dropped."""
    wanted: list[tuple[int, str, list[np.ndarray]]] = []
    for f in range(acv_negative.shape[0]):
        if acv_negative[f].any():
            wanted.append((f, "extracted", _candidates(acv_negative[f], links)))
        for label, mask in best[f]:
            wanted.append((f, label, _candidates(mask, links)))
    flat = [m for _, _, ms in wanted for m in ms]
    if not flat:
        return []
    flat = np.array(flat)
    rw = table.evaluate(flat)
    scores = rw if penalty is None else rw + penalty(flat)
    descents, seen, k = [], set(), 0
    for f, origin, ms in wanted:
        mine = scores[f, k:k + len(ms)]
        k += len(ms)
        if np.all(np.isnan(mine)):
            continue
        best = int(np.nanargmin(mine))
        key = (f, np.packbits(ms[best]).tobytes())
        if key in seen:
            continue
        seen.add(key)
        descents.append(Descent(f, origin, ms[best].copy(), float(rw[f, k - len(ms) + best]),
                                score=float(mine[best])))
    return descents


def _candidates(mask: np.ndarray, links: np.ndarray | None) -> list[np.ndarray]:
    """The motif itself (without links), or its largest pieces as masks."""
    if links is None:
        return [mask]
    out = []
    for piece in pieces(mask, links)[:MAX_PIECES]:
        m = np.zeros_like(mask)
        m[piece] = True
        out.append(m)
    return out


def _polish_record(descents: list[Descent], best: dict[int, Descent], acv_negative,
                   n_frames: int, n: int, table, budget: int) -> dict:
    mask = acv_negative.copy()
    rw = np.full(n_frames, np.nan)
    start_mask = np.zeros((n_frames, n), dtype=bool)
    start_rw = np.full(n_frames, np.nan)
    for f, d in best.items():
        mask[f], rw[f] = d.mask, d.rw
        start_mask[f] = d.start
        start_rw[f] = d.path[0]["rw"]
    path: list[list[dict]] = [[] for _ in range(n_frames)]
    for d in descents:
        path[d.frame].append({"origin": d.origin, "start": np.flatnonzero(d.start).tolist(),
                              "stop": d.stop, "steps": d.path})
    return {"mask": mask, "rw": rw, "start_mask": start_mask, "start_rw": start_rw,
            "path": path, "fits": table.fitted, "budget": budget}


def _settings(ex: ExtractConfig, answer: str) -> dict:
    return {"answer": answer, "answer_rule": ex.answer, "polish": ex.polish,
            "connected": ex.connected,
            "polish_tolerance": ex.polish_tolerance, "polish_starts": ex.polish_starts,
            "swaps": ex.swaps, "dangling_penalty": ex.dangling_penalty,
            "link_distance": ex.link_distance,
            "label_z": ex.label_z, "label_min_cf": ex.label_min_cf}
