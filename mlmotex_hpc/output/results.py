"""Steps 3-4 on finished fits, and the files a user opens afterwards.

Runs on one rank with ``motex.h5`` open: trains the model of Rw for every frame, computes
SHAP values and atom contributions, stores them, and writes ``atom_contributions.csv``,
``motif.xyz`` and the printed summary.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
from mpi4py import MPI

from ..errors import InputError
from ..io.structure import Structure, write_xyz
from ..learn.explain import (
    ContributionSums,
    atom_contributions,
    contribution_sums,
    shap_values,
)
from ..learn.model import LearnSettings, features, train_rw_model
from ..parallel.comm import bcast_array, chunk, get_comm, inject_fault, pause_for_tests

METRICS = ("test_mae", "test_rmse", "test_r2", "baseline_mae", "cv_score", "n_train", "n_test")
ATOM_FIELDS = ("contribution", "uncertainty", "confidence", "kept_mean", "removed_mean")


#: Fewest fitted motifs the learning stage accepts.
MIN_FITS = 10


def learn_settings(config, n_jobs: int | None = None, comm=None) -> LearnSettings:
    """The config's learning settings; XGBoost gets the cores this rank owns (its
    affinity, shared evenly among the ranks on its node)."""
    lc = config.learn
    if n_jobs is None:
        n_jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        if comm is not None and comm.size > 1:
            node = comm.Split_type(MPI.COMM_TYPE_SHARED)
            n_jobs = max(1, n_jobs // node.size)
            node.Free()
    return LearnSettings(
        test_fraction=lc.test_fraction, cv_folds=lc.cv_folds,
        search_iterations=lc.search_iterations, seed=lc.seed, params=lc.params, n_jobs=n_jobs,
    )


def motif_structure(structure: Structure, atom_mask: np.ndarray, name: str) -> Structure:
    sub = structure.subset(atom_mask)
    return Structure(sub.elements, sub.xyz, f"{name}: extracted motif, {len(sub)} atoms")


def _replace(group: h5py.Group, name: str, data: np.ndarray, **kw) -> h5py.Dataset:
    if name in group:
        del group[name]
    return group.create_dataset(name, data=data, **kw)


#: Motifs per block of the ACV sums: blocks are summed in order, whatever the ranks.
SUM_BLOCK = 256


def _share(n: int, rank: int, size: int) -> tuple[int, int]:
    """Rank ``rank`` of ``size``: its contiguous share ``lo:hi`` of n rows, in whole
    :data:`SUM_BLOCK` s."""
    first, count = chunk(-(-n // SUM_BLOCK), rank, size)
    return min(n, first * SUM_BLOCK), min(n, (first + count) * SUM_BLOCK)


def _progress_lines(log: Callable, label: str) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` that logs rate and ETA at most every progress interval
    (``MLMOTEX_PROGRESS_INTERVAL``, as the fits); the log prints on rank 0 only, so the
    numbers are rank 0's share."""
    from ..parallel.driver import _progress_interval

    t0 = last = time.perf_counter()
    interval = _progress_interval()

    def progress(done: int, total: int) -> None:
        nonlocal last
        now = time.perf_counter()
        if done < total and now - last >= interval:
            last = now
            rate = done / (now - t0)
            log(f"{label}: {100 * done / total:5.1f} % of this rank's {total:,} motifs, "
                f"{rate:,.0f} motifs/s, ETA {(total - done) / rate:.0f} s")

    return progress


def frame_groups(n_frames: int, size: int) -> int:
    """How many groups of ranks learn frames side by side: one per frame, at most one
    per rank. World rank r belongs to group r % G, which takes frames g, g + G, ..."""
    return max(1, min(n_frames, size))


def _learn_frame(f, X, masks, y, settings, until, log, sub, label) -> dict:
    """Steps 3-4 for one frame on the ranks of ``sub``: model, metrics, atoms, and this
    rank's SHAP share (float32, N + 2 columns: features, then the base value)."""
    ok = np.isfinite(y)
    n_motifs, n_perm = masks.shape
    if ok.sum() < MIN_FITS:  # every rank of the group sees the same fits: all raise
        raise InputError(
            f"only {int(ok.sum())} of {n_motifs} motifs have a finite Rw{label}: at least "
            f"{MIN_FITS} are needed to learn from (check fit.rmin/fit.rmax against the "
            "motifs' pair distances, and /fits/status in motex.h5)"
        )
    t = time.perf_counter()
    log(f"step 3: learning Rw from {int(ok.sum())} motifs{label}")
    pause_for_tests("learn")
    model = train_rw_model(X[ok], y[ok], settings, log=lambda m: log(f"  {m}"), comm=sub)
    test = np.flatnonzero(ok)[model.test_index]  # motif indices of the test set
    out = {"metrics": {k: model.metrics.get(k, np.nan) for k in METRICS},
           "params": model.params, "history": model.history,
           "test": (test, model.predict(X[test]).astype(np.float32)),
           "learn": time.perf_counter() - t, "explain": 0.0}
    if until != "explain":
        return out
    t = time.perf_counter()
    lo, hi = _share(n_motifs, sub.rank, sub.size)
    log(f"step 4: SHAP values for {n_motifs} motifs{label} on {sub.size} rank(s)")
    phi = shap_values(model, X[lo:hi], progress=_progress_lines(log, "  SHAP"))
    # Per-block sums, added in block order on every rank: the same bits for any number
    # of ranks (an Allreduce would add them in an order that depends on it).
    blocks = []
    for b in range(lo, hi, SUM_BLOCK):
        keep = ok[b:b + SUM_BLOCK]
        rows = phi[b - lo:b - lo + SUM_BLOCK]
        blocks.append(contribution_sums(masks[b:b + SUM_BLOCK][keep], rows[keep]).as_array())
    total = np.zeros((6, n_perm))
    for part in sub.allgather(blocks):
        for block in part:
            total += block
    contrib = atom_contributions(ContributionSums.from_array(total))
    out["atoms"] = {key: getattr(contrib, key) for key in ATOM_FIELDS}
    out["shap"] = (lo, hi, np.ascontiguousarray(phi, dtype=np.float32))
    out["explain"] = time.perf_counter() - t
    return out


def learn_and_explain(h5: h5py.File | None, settings: LearnSettings, until: str,
                      log: Callable, comm=None) -> dict:
    """Steps 3-4 for every frame; every rank of ``comm`` calls it.

    ``h5`` is the file open on every rank (parallel HDF5, ``driver="mpio"``) or on rank
    0 only (None elsewhere). Frames are learned side by side: the ranks split into
    :func:`frame_groups` groups and each group takes its frames in turn, each frame
    with its own model, metrics and SHAP values. Within a group the hyperparameter
    search spreads each round's candidates over the group's ranks (see
    :func:`train_rw_model`) and every rank computes TreeSHAP for its share of the motifs.
    The per-atom sums behind ACV, σ and CF are summed per block of motifs, gathered and
    added in block order, so they are bit-identical for any number of ranks. With
    parallel HDF5 each rank writes its SHAP rows into ``/shap/values`` itself;
    otherwise rank 0 receives and writes them, one round of frames at a time.
    Returns per-frame metrics and the stage timings (slowest rank).
    """
    comm = get_comm(comm)
    root = comm.rank == 0
    parallel = h5 is not None and comm.size > 1 and h5.driver == "mpio"
    if parallel:  # every rank reads what it needs
        masks = h5["catalogue/mask"][:].astype(bool)
        rw_all = h5["fits/rw"][:]
    else:
        masks = bcast_array(h5["catalogue/mask"][:] if root else None, comm).astype(bool)
        rw_all = bcast_array(h5["fits/rw"][:] if root else None, comm)
    n_frames, n_motifs = rw_all.shape
    n_perm = masks.shape[1]
    X = features(masks)
    shap_ds = base_ds = None
    if until == "explain" and (parallel or root):  # collective in parallel HDF5
        grp = h5.require_group("shap")
        for name in ("values", "base_value"):
            if name in grp:
                del grp[name]
        chunks = (1, min(n_motifs, 4096), X.shape[1])
        shap_ds = grp.create_dataset("values", (n_frames, n_motifs, X.shape[1]), "f4",
                                     chunks=chunks)
        base_ds = grp.create_dataset("base_value", (n_frames, n_motifs), "f4")
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
                label = f" (frame {f})" if n_frames > 1 else ""
                res = _learn_frame(f, X, masks, rw_all[f], settings, until, log, sub, label)
                t_learn += res["learn"]
                t_explain += res["explain"]
                shap = res.pop("shap", None)
                if sub.rank == 0:
                    done[f] = res
                if shap is not None and (parallel or root):
                    lo, hi, values = shap
                    shap_ds[f, lo:hi] = values[:, :-1]
                    base_ds[f, lo:hi] = values[:, -1]
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
                        lo, hi = _share(n_motifs, i, len(members[g]))
                        part = np.empty((hi - lo, X.shape[1] + 1), dtype=np.float32)
                        comm.Recv(part, source=rank, tag=first + g)
                        shap_ds[first + g, lo:hi] = part[:, :-1]
                        base_ds[first + g, lo:hi] = part[:, -1]
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
    atoms = {k: np.full((n_frames, n_perm), np.nan) for k in ATOM_FIELDS}
    if until == "explain":
        for key in ATOM_FIELDS:
            atoms[key] = np.stack([done[f]["atoms"][key] for f in range(n_frames)])
    described = {k: v for k, v in vars(settings).items() if k != "params"}
    described["params"] = dict(settings.params)
    described = comm.bcast(json.dumps(described, default=str))  # rank 0's n_jobs
    predicted = np.full((n_frames, n_motifs), np.nan, dtype=np.float32)
    for f in range(n_frames):
        index, values = done[f]["test"]
        predicted[f, index] = values
    if parallel or root:
        _store_learning(h5, described, until, metrics, params, histories, atoms, n_frames)
        _replace(h5["ml"], "test_predicted", predicted)
        h5["ml/test_predicted"].attrs["definition"] = (
            "Rw predicted by the frame's model for its test motifs (NaN: not in the test set)")
    return {"metrics": metrics, "params": params,
            "learn": comm.allreduce(t_learn, op=MPI.MAX),
            "explain": comm.allreduce(t_explain, op=MPI.MAX)}


def _store_learning(h5, described, until, metrics, params, histories, atoms, n_frames) -> None:
    """``/ml`` and ``/atoms`` (collective with parallel HDF5: identical data on every rank)."""
    ml = h5.require_group("ml")
    for key, values in metrics.items():
        ml.attrs[key] = values if n_frames > 1 else values[0]
    ml.attrs["params"] = json.dumps(params if n_frames > 1 else params[0], default=str)
    ml.attrs["history"] = json.dumps(histories if n_frames > 1 else histories[0], default=str)
    ml.attrs["settings"] = described
    if until == "explain":
        grp = h5.require_group("atoms")
        for key, values in atoms.items():
            _replace(grp, key, values)
        _replace(grp, "in_motif", atoms["contribution"] < 0)
        _replace(grp, "index", h5["catalogue/permutable"][:])
        grp.attrs["definition"] = (
            "contribution = mean SHAP over motifs keeping the atom - mean over motifs removing it "
            "(negative: the atom lowers Rw, it belongs to the motif); uncertainty = "
            "sqrt((sK^2 + sR^2)/2), population standard deviations; confidence = |ACV|/sigma"
        )


def write_contributions_csv(
    path: Path, structure: Structure, permutable: np.ndarray, atoms: dict[str, np.ndarray],
    frame_names: list[str] | None = None, times: np.ndarray | None = None,
) -> None:
    """``atom_contributions.csv`` in long format: one row per frame and permutable atom
    (``time`` is empty without ``frames.time``)."""
    n_frames = atoms["contribution"].shape[0]
    frame_names = frame_names or [str(f) for f in range(n_frames)]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["frame", "frame_name", "time", "index", "element", "x", "y", "z",
                         "contribution", "uncertainty", "confidence", "in_motif"])
        for f in range(n_frames):
            time_text = "" if times is None else f"{times[f]:.10g}"
            for i, idx in enumerate(permutable):
                x, y, z = structure.xyz[idx]
                acv = atoms["contribution"][f, i]
                writer.writerow([
                    f, frame_names[f], time_text, int(idx), structure.elements[idx],
                    f"{x:.6f}", f"{y:.6f}", f"{z:.6f}",
                    f"{acv:.8g}", f"{atoms['uncertainty'][f, i]:.8g}",
                    f"{atoms['confidence'][f, i]:.8g}", int(bool(acv < 0)),
                ])


def learn_stage(h5: h5py.File | None, config, until: str, timings: dict, log: Callable,
                comm=None) -> dict:
    """Steps 3-4 (every rank; ``h5`` as for :func:`learn_and_explain`): fills
    ``timings`` and returns the first frame's test metrics for the summary."""
    comm = get_comm(comm)
    if until == "fit":
        return {}
    inject_fault("learn", comm)
    result = learn_and_explain(h5, learn_settings(config, comm=comm), until, log, comm)
    timings["learn"] = result["learn"]
    timings["explain"] = result["explain"]
    return {"test_mae": float(np.atleast_1d(result["metrics"]["test_mae"])[0]),
            "test_r2": float(np.atleast_1d(result["metrics"]["test_r2"])[0])}


def write_outputs(
    h5: h5py.File,
    inputs,
    out_dir: Path,
    *,
    until: str,
    timings: dict[str, float],
    n_ranks: int,
    t_start: float,
    log: Callable,
    metrics: dict | None = None,
    config=None,
) -> dict:
    """Every output file (rank 0, with the finished file open serially); the summary.

    ``config`` (the run's) is needed for the structure files and figures of a
    single-frame run; without it only the CSV and the motif are written."""
    summary: dict = dict(metrics or {})
    files = [out_dir / "motex.h5"]
    summary.update(fits=int(np.isfinite(h5["fits/rw"][:]).sum()),
                   fits_per_second=timings["fits_per_second"])
    names = [n.decode() for n in h5["frames/names"][:]]
    times = h5["frames/time"][:] if "frames/time" in h5 else None
    if until == "explain":
        atoms = {k: h5[f"atoms/{k}"][:] for k in ATOM_FIELDS}
        permutable = h5["catalogue/permutable"][:]
        csv_path = out_dir / "atom_contributions.csv"
        write_contributions_csv(csv_path, inputs.structure, permutable, atoms, names, times)
        files.append(csv_path)
        n_frames = atoms["contribution"].shape[0]
        motifs = []
        if n_frames > 1:  # one motif a frame, in a folder of their own
            (out_dir / "motifs").mkdir(exist_ok=True)
        for f in range(n_frames):
            in_motif = atoms["contribution"][f] < 0
            atom_mask = inputs.space.atom_masks(in_motif[None, :])[0]
            name = "motif.xyz" if n_frames == 1 else f"motifs/motif_{f:05d}.xyz"
            title = name if n_frames == 1 else f"frame {f} ({names[f]})"
            write_xyz(out_dir / name, motif_structure(inputs.structure, atom_mask, title))
            motifs.append(permutable[in_motif])
        files.append(out_dir / ("motif.xyz" if n_frames == 1 else
                                f"motifs/motif_NNNNN.xyz ({n_frames} files, one a frame)"))
        summary["motif"] = [int(i) for i in motifs[0]]
        summary["motif_atoms"] = int(inputs.space.atom_masks(
            (atoms["contribution"][0] < 0)[None, :])[0].sum())
        summary["contributions"] = atoms["contribution"][0]
        summary["permutable"] = permutable
    products, series_figures = None, []
    if until == "explain" and n_frames == 1 and config is not None:
        from .products import frame_products

        products = frame_products(h5, config, inputs.structure, inputs.space, out_dir, 0, log)
        files.extend(products.files)
    elif until == "explain":
        from .plots import contributions_vs_frame, series_summary

        log("writing the series plots")
        series_figures = [contributions_vs_frame(h5, out_dir / "contributions_vs_frame.png"),
                          series_summary(h5, out_dir / "series_summary.png")]
        files.extend(series_figures)
    timings["total"] = time.perf_counter() - t_start
    h5.require_group("timings").attrs.update(
        {**{k: float(v) for k, v in timings.items()}, "ranks": n_ranks}
    )
    if until == "explain":
        from .report import write_report

        files.append(write_report(out_dir / "report.html", h5, inputs.structure, files,
                                  products, series_figures))
    summary["n_frames"] = len(names)
    summary["files"] = [str(p) for p in files]
    print_summary(summary, inputs.structure, log)
    return summary


def print_summary(summary: dict, structure: Structure, log: Callable) -> None:
    log("")
    log(f"fits done          {summary['fits']}")
    if summary.get("n_frames", 1) > 1:
        log(f"frames             {summary['n_frames']} (below: frame 0; every frame in "
            "the CSV and the plots)")
    log(f"fits per second    {summary['fits_per_second']:,.0f}")
    if "test_mae" in summary:
        log(f"test MAE (Rw)      {summary['test_mae']:.4f}   (R² {summary['test_r2']:.3f})")
    if "motif" in summary:
        atoms = " ".join(f"{structure.elements[i]}{i}" for i in summary["motif"])
        log(f"extracted motif    {len(summary['motif'])} permutable atoms "
            f"({summary['motif_atoms']} with bonded atoms): {atoms}")
    log("files written:")
    for path in summary["files"]:
        log(f"  {path}")
