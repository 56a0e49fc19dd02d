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


def _share(n: int, comm) -> tuple[int, int]:
    """This rank's contiguous share ``lo:hi`` of n rows, in whole :data:`SUM_BLOCK` s."""
    first, count = chunk(-(-n // SUM_BLOCK), comm.rank, comm.size)
    return min(n, first * SUM_BLOCK), min(n, (first + count) * SUM_BLOCK)


def learn_and_explain(h5: h5py.File | None, settings: LearnSettings, until: str,
                      log: Callable, comm=None) -> dict:
    """Steps 3-4 for every frame; every rank of ``comm`` calls it, rank 0 with the file.

    The catalogue and the fits are broadcast. The hyperparameter search spreads each
    round's candidates over the ranks (see :func:`train_rw_model`); every rank then holds
    the same model and computes TreeSHAP for its share of the motifs. The per-atom sums
    behind ACV, σ and CF are summed per block of motifs and the blocks gathered (one
    ``allgather``) and added in block order, so they are bit-identical for any number of
    ranks; rank 0 stores every rank's SHAP
    values in ``/shap/values``. Returns per-frame metrics and timings.
    """
    comm = get_comm(comm)
    root = comm.rank == 0
    masks = bcast_array(h5["catalogue/mask"][:] if root else None, comm).astype(bool)
    rw_all = bcast_array(h5["fits/rw"][:] if root else None, comm)
    n_frames, n_motifs = rw_all.shape
    n_perm = masks.shape[1]
    X = features(masks)
    metrics = {k: np.full(n_frames, np.nan) for k in METRICS}
    params, histories = [], []
    atoms = {k: np.full((n_frames, n_perm), np.nan) for k in ATOM_FIELDS}
    shap_ds = base_ds = None
    t_learn = t_explain = 0.0
    if until == "explain" and root:
        grp = h5.require_group("shap")
        for name in ("values", "base_value"):
            if name in grp:
                del grp[name]
        chunk = (1, min(n_motifs, 4096), X.shape[1])
        shap_ds = grp.create_dataset("values", (n_frames, n_motifs, X.shape[1]), "f4",
                                     chunks=chunk)
        base_ds = grp.create_dataset("base_value", (n_frames, n_motifs), "f4")
    lo, hi = _share(n_motifs, comm)
    shares = comm.allgather((lo, hi))
    for f in range(n_frames):
        y = rw_all[f]
        ok = np.isfinite(y)
        t = time.perf_counter()
        label = f" (frame {f})" if n_frames > 1 else ""
        if ok.sum() < MIN_FITS:  # every rank sees the same fits: all raise
            raise InputError(
                f"only {int(ok.sum())} of {n_motifs} motifs have a finite Rw{label}: at least "
                f"{MIN_FITS} are needed to learn from (check fit.rmin/fit.rmax against the "
                "motifs' pair distances, and /fits/status in motex.h5)"
            )
        log(f"step 3: learning Rw from {int(ok.sum())} motifs{label}")
        pause_for_tests("learn")
        model = train_rw_model(X[ok], y[ok], settings, log=lambda m: log(f"  {m}"), comm=comm)
        t_learn += time.perf_counter() - t
        for key in METRICS:
            metrics[key][f] = model.metrics.get(key, np.nan)
        params.append(model.params)
        histories.append(model.history)
        if until != "explain":
            continue
        t = time.perf_counter()
        log(f"step 4: SHAP values for {n_motifs} motifs{label} on {comm.size} rank(s)")
        phi = shap_values(model, X[lo:hi])
        # Per-block sums, added in block order on every rank: the same bits for any
        # number of ranks (an Allreduce would add them in an order that depends on it).
        blocks = []
        for b in range(lo, hi, SUM_BLOCK):
            keep = ok[b:b + SUM_BLOCK]
            rows = phi[b - lo:b - lo + SUM_BLOCK]
            blocks.append(contribution_sums(masks[b:b + SUM_BLOCK][keep], rows[keep]).as_array())
        total = np.zeros((6, n_perm))
        for part in comm.allgather(blocks):
            for block in part:
                total += block
        contrib = atom_contributions(ContributionSums.from_array(total))
        for key in ATOM_FIELDS:
            atoms[key][f] = getattr(contrib, key)
        values = np.ascontiguousarray(phi, dtype=np.float32)
        if root:
            shap_ds[f, lo:hi] = values[:, :-1]
            base_ds[f, lo:hi] = values[:, -1]
            for rank in range(1, comm.size):
                r_lo, r_hi = shares[rank]
                part = np.empty((r_hi - r_lo, X.shape[1] + 1), dtype=np.float32)
                comm.Recv(part, source=rank, tag=f)
                shap_ds[f, r_lo:r_hi] = part[:, :-1]
                base_ds[f, r_lo:r_hi] = part[:, -1]
        else:
            comm.Send(values, dest=0, tag=f)
        t_explain += time.perf_counter() - t
    if root:
        _store_learning(h5, settings, until, metrics, params, histories, atoms, n_frames)
    return {"metrics": metrics, "params": params, "learn": t_learn, "explain": t_explain}


def _store_learning(h5, settings, until, metrics, params, histories, atoms, n_frames) -> None:
    ml = h5.require_group("ml")
    for key, values in metrics.items():
        ml.attrs[key] = values if n_frames > 1 else values[0]
    ml.attrs["params"] = json.dumps(params if n_frames > 1 else params[0], default=str)
    ml.attrs["history"] = json.dumps(histories if n_frames > 1 else histories[0], default=str)
    described = {k: v for k, v in vars(settings).items() if k != "params"}
    described["params"] = dict(settings.params)
    ml.attrs["settings"] = json.dumps(described, default=str)
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
    path: Path, structure: Structure, permutable: np.ndarray, atoms: dict[str, np.ndarray]
) -> None:
    """``atom_contributions.csv``: one row per frame and permutable atom."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["frame", "index", "element", "x", "y", "z",
                         "contribution", "uncertainty", "confidence", "in_motif"])
        for f in range(atoms["contribution"].shape[0]):
            for i, idx in enumerate(permutable):
                x, y, z = structure.xyz[idx]
                acv = atoms["contribution"][f, i]
                writer.writerow([
                    f, int(idx), structure.elements[idx], f"{x:.6f}", f"{y:.6f}", f"{z:.6f}",
                    f"{acv:.8g}", f"{atoms['uncertainty'][f, i]:.8g}",
                    f"{atoms['confidence'][f, i]:.8g}", int(bool(acv < 0)),
                ])


def finish_outputs(
    h5: h5py.File | None,
    inputs,
    config,
    out_dir: Path,
    *,
    until: str,
    timings: dict[str, float],
    n_ranks: int,
    t_start: float,
    log: Callable,
    comm=None,
) -> dict | None:
    """Steps 3-4 (every rank of ``comm``) and every output file (rank 0, which alone has
    the file open); returns the summary on rank 0, None elsewhere."""
    comm = get_comm(comm)
    summary: dict = {}
    if until != "fit":
        inject_fault("learn", comm)
        result = learn_and_explain(h5, learn_settings(config, comm=comm), until, log, comm)
        timings["learn"] = result["learn"]
        timings["explain"] = result["explain"]
        summary["test_mae"] = float(np.atleast_1d(result["metrics"]["test_mae"])[0])
        summary["test_r2"] = float(np.atleast_1d(result["metrics"]["test_r2"])[0])
    if comm.rank != 0:
        return None
    files = [out_dir / "motex.h5"]
    summary.update(fits=int(np.isfinite(h5["fits/rw"][:]).sum()),
                   fits_per_second=timings["fits_per_second"])
    if until == "explain":
        atoms = {k: h5[f"atoms/{k}"][:] for k in ATOM_FIELDS}
        permutable = h5["catalogue/permutable"][:]
        csv_path = out_dir / "atom_contributions.csv"
        write_contributions_csv(csv_path, inputs.structure, permutable, atoms)
        files.append(csv_path)
        n_frames = atoms["contribution"].shape[0]
        motifs = []
        for f in range(n_frames):
            in_motif = atoms["contribution"][f] < 0
            atom_mask = inputs.space.atom_masks(in_motif[None, :])[0]
            name = "motif.xyz" if n_frames == 1 else f"motif_{f:05d}.xyz"
            write_xyz(out_dir / name, motif_structure(inputs.structure, atom_mask, name))
            files.append(out_dir / name)
            motifs.append(permutable[in_motif])
        summary["motif"] = [int(i) for i in motifs[0]]
        summary["motif_atoms"] = int(inputs.space.atom_masks(
            (atoms["contribution"][0] < 0)[None, :])[0].sum())
        summary["contributions"] = atoms["contribution"][0]
        summary["permutable"] = permutable
    timings["total"] = time.perf_counter() - t_start
    h5.require_group("timings").attrs.update(
        {**{k: float(v) for k, v in timings.items()}, "ranks": n_ranks}
    )
    summary["files"] = [str(p) for p in files]
    print_summary(summary, inputs.structure, log)
    return summary


def print_summary(summary: dict, structure: Structure, log: Callable) -> None:
    log("")
    log(f"fits done          {summary['fits']}")
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
