"""Steps 3-4 spread over ranks: frame groups, the search, TreeSHAP shares, ordered sums.

Frames are learned side by side: the ranks split into :func:`frame_groups` groups and
each group takes its frames in turn, each frame with its own model, metrics and SHAP
values. Within a group the hyperparameter search asks one candidate per rank each
round and every rank cross-validates its own (:class:`GroupWorkers`, handed to
:func:`~mlmotex_hpc.learn.model.train_rw_model`); rank 0 of the group trains the final
model on the group's cores and broadcasts it; every rank computes TreeSHAP for its share
of the motifs. The per-atom sums behind ACV, σ and CF are summed per block of motifs,
gathered and added in block order, so they are bit-identical for any number of ranks
(an ``Allreduce`` would add them in an order that depends on it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from mpi4py import MPI

from ..errors import InputError
from ..learn.explain import (
    ATOM_FIELDS,
    SAMPLE_BLOCK,
    ContributionSums,
    add_blocks,
    atom_contributions,
    block_share,
    block_sums,
    checkpoints,
    contribution_sums,
    explain_order,
    largest_relative_se,
    shap_values,
)
from ..learn.model import (
    METRICS,
    LearnSettings,
    Workers,
    features,
    run_search,
    search_frames_of,
    search_problem,
    task_order,
    train_rw_model,
)
from ..store import RunFile
from .comm import bcast_array, cores_owned, inject_fault, pause_for_tests, wait_idle
from .exits import leave_together
from .log import progress_lines

#: Fewest fitted motifs the learning stage accepts.
MIN_FITS = 10

T = TypeVar("T")


class GroupWorkers(Workers):
    """The ranks of ``comm`` as the workers of :func:`train_rw_model`.

    Every rank runs the same optimiser; rank 0's candidates are the ones evaluated (a
    round's candidates dealt out over the ranks, each rank cross-validating its own) and
    rank 0's choices are the ones kept, so every rank ends with the same model, and the
    same model for any number of ranks.
    """

    def __init__(self, comm: MPI.Comm):
        self.comm = comm
        self.size = comm.size

    def evaluate(self, score: Callable[[dict[str, Any]], float],
                 points: list[dict[str, Any]]) -> list[float]:
        if self.size == 1:
            return super().evaluate(score, points)
        points = self.comm.bcast(points)  # rank 0's optimiser decides
        mine = {i: score(points[i]) for i in range(self.comm.rank, len(points), self.size)}
        scores: dict[int, float] = {}
        for part in self.comm.allgather(mine):
            scores.update(part)
        return [scores[i] for i in range(len(points))]

    def agree(self, value: T) -> T:
        return value if self.size == 1 else self.comm.bcast(value)

    def train_once(self, train: Callable[[int], tuple[bytes, int]],
                   n_jobs: int) -> tuple[bytes, int]:
        """Rank 0 trains on the group's cores while the others sleep (``hist`` grows the
        same trees for any thread count), then broadcasts the model."""
        result = None
        if self.comm.rank == 0:
            # the cores of this group's ranks (they wait), within what this rank may use
            result = train(max(1, min(cores_owned(), n_jobs * self.size)))
        wait_idle(self.comm)
        return self.comm.bcast(result)


def frame_groups(n_frames: int, size: int) -> int:
    """How many groups of ranks learn frames side by side: one per frame, at most one
    per rank. World rank r belongs to group r % G, which takes frames g, g + G, ..."""
    return max(1, min(n_frames, size))


def check_fits(rw: np.ndarray, names: list[str] | None = None) -> None:
    """Refuse frames with too few finite fits to learn from (every rank holds ``rw``,
    F × M, and raises alike, before any group starts)."""
    n_frames, n_motifs = rw.shape
    for f in range(n_frames):
        n_ok = int(np.isfinite(rw[f]).sum())
        if n_motifs < MIN_FITS:  # the preflight refuses this; a file made otherwise
            raise InputError(f"the run holds {n_motifs} motifs: at least {MIN_FITS} are "
                             "needed to learn from")
        if n_ok < MIN_FITS:
            label = f" in frame {f}" + (f" ({names[f]})" if names else "") if n_frames > 1 else ""
            raise InputError(
                f"only {n_ok} of {n_motifs} motifs have a finite Rw{label}: at least "
                f"{MIN_FITS} are needed to learn from (check the data file and "
                "fit.rmin/fit.rmax against the motifs' pair distances, and /fits/status in "
                "motex.h5)"
            )


def _explain_all(model, X, masks, ok, sub, log) -> tuple:
    """Step 4 on every motif: this rank's contiguous share, block sums added in order."""
    lo, hi = block_share(masks.shape[0], sub.rank, sub.size)
    phi = shap_values(model, X[lo:hi], progress=progress_lines(log, "  SHAP"))
    shares = sub.allgather(block_sums(masks, phi, ok, lo))
    return atom_contributions(add_blocks(shares, masks.shape[1])), np.arange(lo, hi), phi


def _explain_sample(model, X, masks, ok, settings, sub, log) -> tuple:
    """Step 4 on a growing random sample of the motifs with a finite Rw, until every
    atom's ACV standard error is below ``settings.shap_target`` × the largest |ACV|.

    The motifs come in :func:`explain_order`; at each of the :func:`checkpoints` the new
    motifs are shared out over the ranks in whole blocks and the blocks' sums are added
    in order: the same bits, and the same stopping point, for any number of ranks.
    """
    order = explain_order(ok, settings.seed)
    total = np.zeros((6, masks.shape[1]))
    rows_mine, phi_mine = [], []
    start = 0
    t0 = time.perf_counter()
    for stop in checkpoints(order.size):
        lo, hi = block_share(stop - start, sub.rank, sub.size, SAMPLE_BLOCK)
        rows = order[start + lo:start + hi]
        phi = shap_values(model, X[rows])
        blocks = [contribution_sums(masks[rows[b:b + SAMPLE_BLOCK]], phi[b:b + SAMPLE_BLOCK])
                  .as_array() for b in range(0, rows.size, SAMPLE_BLOCK)]
        for share in sub.allgather(blocks):
            for block in share:
                total += block
        rows_mine.append(rows)
        phi_mine.append(phi)
        start = stop
        contrib = atom_contributions(ContributionSums.from_array(total))
        worst = largest_relative_se(contrib)
        rate = start / max(time.perf_counter() - t0, 1e-9)
        log(f"  SHAP: {start:,} of {order.size:,} motifs, largest ACV standard error "
            f"{100 * worst:.2f} % of the largest |ACV| (target {100 * settings.shap_target:g}"
            f" %), {rate:,.0f} motifs/s")
        if worst <= settings.shap_target:
            break
    if start < order.size:
        log(f"  SHAP: stopped at {start:,} of {order.size:,} motifs: every ACV is known well "
            "enough (learn.shap: all explains every motif)")
    width = X.shape[1] + 1
    rows = np.concatenate(rows_mine) if rows_mine else np.arange(0)
    phi = np.concatenate(phi_mine) if phi_mine else np.zeros((0, width), np.float32)
    return contrib, rows, phi, start


def _learn_frame(X, masks, y, settings, until, log, sub, label, chosen=None,
                 uniform=None) -> dict:
    """Steps 3-4 for one frame on the ranks of ``sub``: model, metrics, atoms, and this
    rank's SHAP rows (motif indices; float32 values, N + 2 columns: features, then the
    base value). The model learns from every motif; the contributions are read from the
    ``uniform`` ones only (all by default): an adaptive catalogue's other motifs crowd
    near the optimum, and averages over them would mean something else."""
    ok = np.isfinite(y)
    told = ok if uniform is None else ok & uniform
    t = time.perf_counter()
    log(f"step 3: learning Rw from {int(ok.sum())} motifs{label}")
    pause_for_tests("learn")
    model = train_rw_model(X[ok], y[ok], settings, log=lambda m: log(f"  {m}"),
                           workers=GroupWorkers(sub), chosen=chosen)
    test = np.flatnonzero(ok)[model.test_index]  # motif indices of the test set
    out = {"metrics": {k: model.metrics.get(k, np.nan) for k in METRICS},
           "params": model.params, "history": model.history,
           "test": (test, model.predict(X[test]).astype(np.float32)),
           "learn": time.perf_counter() - t, "explain": 0.0}
    if until != "explain":
        return out
    t = time.perf_counter()
    inject_fault("explain", sub)
    if settings.shap == "all":
        log(f"step 4: SHAP values for {masks.shape[0]} motifs{label} on {sub.size} rank(s)")
        contrib, rows, phi = _explain_all(model, X, masks, told, sub, log)
        out["explained"] = masks.shape[0]
    else:
        log(f"step 4: SHAP values{label} on {sub.size} rank(s), until every ACV's standard "
            f"error is below {100 * settings.shap_target:g} % of the largest |ACV|")
        contrib, rows, phi, out["explained"] = _explain_sample(model, X, masks, told,
                                                               settings, sub, log)
    out["atoms"] = {key: getattr(contrib, key) for key in ATOM_FIELDS}
    out["shap"] = (rows, np.ascontiguousarray(phi, dtype=np.float32))
    out["explain"] = time.perf_counter() - t
    return out


def _shared_search(X, masks, rw_all, settings, log, comm) -> tuple[dict, dict]:
    """One hyperparameter search for a whole series, on :func:`search_frames_of` frames,
    spread over every rank. Returns the chosen point (with its trees) and what the file
    records of it: the frames searched, the history, each searched frame's CV RMSE."""
    frames = search_frames_of(rw_all.shape[0], settings.search_frames)
    log(f"step 3: one hyperparameter search for all {rw_all.shape[0]} frames, on frames "
        f"{', '.join(map(str, frames))}")
    problems = []
    for f in frames:
        ok = np.isfinite(rw_all[f])
        problems.append(search_problem(X[ok], rw_all[f][ok], settings, shared=True))
    result = run_search(problems, settings, GroupWorkers(comm), log=lambda m: log(f"  {m}"))
    entry = next(h for h in result.history
                 if all(h[n] == v for n, v in result.best.items()))
    per_frame: dict[int, list[float]] = {}
    for (i, _), score in zip(task_order(problems), entry["fold_rmse"], strict=True):
        per_frame.setdefault(i, []).append(score * problems[i].scale)
    cv = {frames[i]: float(np.mean(v)) for i, v in per_frame.items()}
    log(f"  shared search: chosen {result.best} ({result.trees} trees per fold)")
    return ({**result.best, "n_estimators": result.trees},
            {"frames": frames, "history": result.history, "cv": cv})


def learn_and_explain(run: RunFile, settings: LearnSettings, until: str, log: Callable,
                      comm: MPI.Comm) -> dict:
    """Steps 3-4 for every frame; every rank of ``comm`` calls it.

    ``run`` is the learning copy, open on every rank (parallel HDF5) or on rank 0 only.
    With parallel HDF5 each rank writes its SHAP rows itself; otherwise rank 0 receives
    and writes them, one round of frames at a time. Returns per-frame metrics and
    hyperparameters, and the stage timings (slowest rank).

    BLAS (numpy, the search's Gaussian process) gets this rank's cores only: left to
    itself every rank starts a thread per core of the node, and on 2 ranks of a 2-core
    node that alone made the search twice as slow (measured).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=settings.n_jobs, user_api="blas"):
        return _learn_and_explain(run, settings, until, log, comm)


def _learn_and_explain(run: RunFile, settings: LearnSettings, until: str, log: Callable,
                       comm: MPI.Comm) -> dict:
    root = comm.rank == 0
    parallel = run.parallel
    if parallel:  # every rank reads what it needs
        masks = run.masks()
        rw_all = run.fits("rw")
    else:
        masks = bcast_array(run.masks() if root else None, comm)
        rw_all = bcast_array(run.fits("rw") if root else None, comm)
    n_frames, n_motifs = rw_all.shape
    if parallel:
        origin = run.catalogue_origin()
    else:
        origin = bcast_array(run.catalogue_origin() if root else None, comm)
    uniform = None if np.all(origin == 0) else origin == 0
    if uniform is not None:
        log(f"  contributions from the {int(uniform.sum()):,} uniformly drawn motifs of "
            f"{n_motifs:,} (the adaptive rounds' others teach the model only)")
    error = None
    try:  # every rank holds the fits and meets the same verdict
        check_fits(rw_all, run.frame_names() if run.holds else None)
    except InputError as exc:
        error = exc
    leave_together(comm, error)
    X = features(masks)
    if until == "explain":
        run.collective_create_shap(n_frames, n_motifs, X.shape[1])
    n_groups = frame_groups(n_frames, comm.size)
    color = comm.rank % n_groups
    sub = comm.Split(color, comm.rank)
    members = [[r for r in range(comm.size) if r % n_groups == g] for g in range(n_groups)]
    if n_groups > 1:
        log(f"steps 3-4: {n_frames} frames on {n_groups} groups of ranks side by side")
    done: dict[int, dict] = {}
    t_learn = t_explain = 0.0
    chosen, shared = None, None
    if n_frames > 1 and settings.series_search == "shared" and settings.searching:
        t = time.perf_counter()
        chosen, shared = _shared_search(X, masks, rw_all, settings, log, comm)
        t_learn += time.perf_counter() - t
    try:
        for first in range(0, n_frames, n_groups):  # one round: a frame per group
            f = first + color
            if f < n_frames:
                # The data every group needs were checked on all ranks (check_fits); an
                # error in here is one rank's, and abort_on_error ends the job with it.
                label = f" (frame {f})" if n_frames > 1 else ""
                res = _learn_frame(X, masks, rw_all[f], settings, until, log, sub, label,
                                   chosen, uniform)
                t_learn += res["learn"]
                t_explain += res["explain"]
                shap = res.pop("shap", None)
                if sub.rank == 0:
                    done[f] = res
                if shap is not None and run.holds:
                    run.write_shap(f, *shap)
                elif shap is not None:
                    comm.send(shap, dest=0, tag=f)
            if until == "explain" and not parallel and comm.size > 1 and root:
                # serial HDF5: rank 0 writes this round's SHAP rows of the other ranks
                for g in range(n_groups):
                    if first + g >= n_frames:
                        continue
                    for rank in members[g]:
                        if rank != 0:
                            run.write_shap(first + g, *comm.recv(source=rank, tag=first + g))
    finally:
        sub.Free()
    for part in comm.allgather(done):
        done.update(part)
    metrics = {k: np.array([done[f]["metrics"][k] for f in range(n_frames)]) for k in METRICS}
    low = np.flatnonzero(metrics["test_r2"] < 0.5)
    if n_groups > 1 and low.size:  # the other groups' warnings were not printed
        listed = ", ".join(str(f) for f in low[:20]) + (" ..." if low.size > 20 else "")
        log(f"  WARNING: test R² below 0.5 in {low.size} of {n_frames} frames ({listed}): "
            "their atom contributions are not to be trusted")
    params = [done[f]["params"] for f in range(n_frames)]
    histories = [done[f]["history"] for f in range(n_frames)]
    searched = None
    if shared is not None:  # the series' one search: its history where it looked
        searched = shared["frames"]
        for f in searched:
            histories[f] = shared["history"]
            metrics["cv_score"][f] = shared["cv"][f]
    atoms = explained = None
    if until == "explain":
        atoms = {k: np.stack([done[f]["atoms"][k] for f in range(n_frames)])
                 for k in ATOM_FIELDS}
        explained = np.array([done[f]["explained"] for f in range(n_frames)])
    described = {k: v for k, v in vars(settings).items() if k != "params"}
    described["params"] = dict(settings.params)
    described = comm.bcast(json.dumps(described, default=str))  # rank 0's n_jobs
    predicted = np.full((n_frames, n_motifs), np.nan, dtype=np.float32)
    for f in range(n_frames):
        index, values = done[f]["test"]
        predicted[f, index] = values
    run.collective_write_learning(settings=described, metrics=metrics, params=params,
                                  histories=histories, predicted=predicted, atoms=atoms,
                                  searched_frames=searched, explained=explained)
    return {"metrics": metrics, "params": params,
            "learn": comm.allreduce(t_learn, op=MPI.MAX),
            "explain": comm.allreduce(t_explain, op=MPI.MAX)}
