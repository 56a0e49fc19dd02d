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
from ..io.runfile import RunFile
from ..learn.explain import (
    ATOM_FIELDS,
    add_blocks,
    atom_contributions,
    block_share,
    block_sums,
    shap_values,
)
from ..learn.model import METRICS, LearnSettings, Workers, features, train_rw_model
from .comm import bcast_array, cores_owned, inject_fault, pause_for_tests, wait_idle
from .exits import leave_together
from .log import progress_lines

#: Fewest fitted motifs the learning stage accepts.
MIN_FITS = 10

T = TypeVar("T")


class GroupWorkers(Workers):
    """The ranks of ``comm`` as the workers of :func:`train_rw_model`.

    Every rank runs the same optimiser; rank 0's candidates are the ones evaluated (a
    round holds one per rank, each rank cross-validates its own) and rank 0's choices
    are the ones kept, so every rank ends with the same model.
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
        if n_ok < MIN_FITS:
            label = f" in frame {f}" + (f" ({names[f]})" if names else "") if n_frames > 1 else ""
            raise InputError(
                f"only {n_ok} of {n_motifs} motifs have a finite Rw{label}: at least "
                f"{MIN_FITS} are needed to learn from (check the data file and "
                "fit.rmin/fit.rmax against the motifs' pair distances, and /fits/status in "
                "motex.h5)"
            )


def _learn_frame(X, masks, y, settings, until, log, sub, label) -> dict:
    """Steps 3-4 for one frame on the ranks of ``sub``: model, metrics, atoms, and this
    rank's SHAP share (float32, N + 2 columns: features, then the base value)."""
    ok = np.isfinite(y)
    n_motifs, n_perm = masks.shape
    t = time.perf_counter()
    log(f"step 3: learning Rw from {int(ok.sum())} motifs{label}")
    pause_for_tests("learn")
    model = train_rw_model(X[ok], y[ok], settings, log=lambda m: log(f"  {m}"),
                           workers=GroupWorkers(sub))
    test = np.flatnonzero(ok)[model.test_index]  # motif indices of the test set
    out = {"metrics": {k: model.metrics.get(k, np.nan) for k in METRICS},
           "params": model.params, "history": model.history,
           "test": (test, model.predict(X[test]).astype(np.float32)),
           "learn": time.perf_counter() - t, "explain": 0.0}
    if until != "explain":
        return out
    t = time.perf_counter()
    inject_fault("explain", sub)
    lo, hi = block_share(n_motifs, sub.rank, sub.size)
    log(f"step 4: SHAP values for {n_motifs} motifs{label} on {sub.size} rank(s)")
    phi = shap_values(model, X[lo:hi], progress=progress_lines(log, "  SHAP"))
    shares = sub.allgather(block_sums(masks, phi, ok, lo))
    contrib = atom_contributions(add_blocks(shares, n_perm))
    out["atoms"] = {key: getattr(contrib, key) for key in ATOM_FIELDS}
    out["shap"] = (lo, hi, np.ascontiguousarray(phi, dtype=np.float32))
    out["explain"] = time.perf_counter() - t
    return out


def learn_and_explain(run: RunFile, settings: LearnSettings, until: str, log: Callable,
                      comm: MPI.Comm) -> dict:
    """Steps 3-4 for every frame; every rank of ``comm`` calls it.

    ``run`` is the learning copy, open on every rank (parallel HDF5) or on rank 0 only.
    With parallel HDF5 each rank writes its SHAP rows itself; otherwise rank 0 receives
    and writes them, one round of frames at a time. Returns per-frame metrics and
    hyperparameters, and the stage timings (slowest rank).
    """
    root = comm.rank == 0
    parallel = run.parallel
    if parallel:  # every rank reads what it needs
        masks = run.masks()
        rw_all = run.fits("rw")
    else:
        masks = bcast_array(run.masks() if root else None, comm)
        rw_all = bcast_array(run.fits("rw") if root else None, comm)
    n_frames, n_motifs = rw_all.shape
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
    try:
        for first in range(0, n_frames, n_groups):  # one round: a frame per group
            f = first + color
            if f < n_frames:
                # The data every group needs were checked on all ranks (check_fits); an
                # error in here is one rank's, and abort_on_error ends the job with it.
                label = f" (frame {f})" if n_frames > 1 else ""
                res = _learn_frame(X, masks, rw_all[f], settings, until, log, sub, label)
                t_learn += res["learn"]
                t_explain += res["explain"]
                shap = res.pop("shap", None)
                if sub.rank == 0:
                    done[f] = res
                if shap is not None and run.holds:
                    lo, hi, values = shap
                    run.write_shap(f, lo, hi, values)
                elif shap is not None:
                    comm.Send(shap[2], dest=0, tag=f)
            if until == "explain" and not parallel and comm.size > 1 and root:
                # serial HDF5: rank 0 writes this round's SHAP rows of the other ranks
                for g in range(n_groups):
                    if first + g >= n_frames:
                        continue
                    for i, rank in enumerate(members[g]):
                        if rank == 0:
                            continue
                        lo, hi = block_share(n_motifs, i, len(members[g]))
                        part = np.empty((hi - lo, X.shape[1] + 1), dtype=np.float32)
                        comm.Recv(part, source=rank, tag=first + g)
                        run.write_shap(first + g, lo, hi, part)
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
    atoms = None
    if until == "explain":
        atoms = {k: np.stack([done[f]["atoms"][k] for f in range(n_frames)])
                 for k in ATOM_FIELDS}
    described = {k: v for k, v in vars(settings).items() if k != "params"}
    described["params"] = dict(settings.params)
    described = comm.bcast(json.dumps(described, default=str))  # rank 0's n_jobs
    predicted = np.full((n_frames, n_motifs), np.nan, dtype=np.float32)
    for f in range(n_frames):
        index, values = done[f]["test"]
        predicted[f, index] = values
    run.collective_write_learning(settings=described, metrics=metrics, params=params,
                                  histories=histories, predicted=predicted, atoms=atoms)
    return {"metrics": metrics, "params": params,
            "learn": comm.allreduce(t_learn, op=MPI.MAX),
            "explain": comm.allreduce(t_explain, op=MPI.MAX)}
