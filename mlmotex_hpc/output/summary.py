"""Step 5: every file a user opens after a run, and the printed summary.

Rank 0, with the finished ``motex.h5`` open (a :class:`~mlmotex_hpc.store.RunFile`).
:func:`write_outputs` is what ``run``, ``learn`` and ``merge`` end with;
:func:`redraw` is the ``plot`` command: the same files again, for other frames or into
another folder.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..catalogue import MotifSpace
from ..errors import InputError
from ..extract import LABEL_NAMES
from ..io.folders import make_folder
from ..io.structure import Structure, site_labels, write_xyz
from ..store import ATOM_DATASETS, RunFile

if TYPE_CHECKING:  # products loads matplotlib: imported where it is used
    from .products import OutputPlan


def motif_structure(structure: Structure, atom_mask: np.ndarray, name: str) -> Structure:
    sub = structure.subset(atom_mask)
    return Structure(sub.elements, sub.xyz, f"{name}: extracted motif, {len(sub)} atoms")


def write_contributions_csv(
    path: Path, structure: Structure, permutable: np.ndarray, atoms: dict[str, np.ndarray],
    frame_names: list[str] | None = None, times: np.ndarray | None = None,
) -> None:
    """``atom_contributions.csv`` in long format: one row per frame and permutable atom
    (``time`` is empty without ``frames.time``). ``index`` is the atom's 0-based index in
    the model and ``label`` its name in the .vesta and .cmtx files and the figures (``W1``:
    element, 1-based index); ``site`` its crystal site (CIF label; empty for an .xyz
    model). ``in_motif`` is the answer (polished, connected), ``acv_negative`` the plain
    ACV < 0 set, ``verdict`` in/out/uncertain."""
    n_frames = atoms["contribution"].shape[0]
    frame_names = frame_names or [str(f) for f in range(n_frames)]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["frame", "frame_name", "time", "index", "label", "site", "element",
                         "x", "y", "z", "contribution", "uncertainty", "confidence",
                         "in_motif", "contribution_se", "verdict", "acv_negative"])
        labels = site_labels(structure.elements)
        sites = structure.sites or ("",) * len(structure)
        for f in range(n_frames):
            time_text = "" if times is None else f"{times[f]:.10g}"
            for i, idx in enumerate(permutable):
                x, y, z = structure.xyz[idx]
                acv = atoms["contribution"][f, i]
                writer.writerow([
                    f, frame_names[f], time_text, int(idx), labels[idx], sites[idx],
                    structure.elements[idx],
                    f"{x:.6f}", f"{y:.6f}", f"{z:.6f}",
                    f"{acv:.8g}", f"{atoms['uncertainty'][f, i]:.8g}",
                    f"{atoms['confidence'][f, i]:.8g}", int(atoms["in_motif"][f, i]),
                    f"{atoms['contribution_se'][f, i]:.8g}",
                    LABEL_NAMES[int(atoms["label"][f, i])], int(bool(acv < 0)),
                ])


def write_outputs(
    run: RunFile,
    plan: OutputPlan,
    structure: Structure,
    space: MotifSpace,
    out_dir: Path,
    *,
    until: str,
    timings: dict[str, float],
    n_ranks: int,
    t_start: float,
    log: Callable,
    metrics: dict | None = None,
) -> dict:
    """Every output file of a finished run, its timings into the file; the summary."""
    from .products import answer_labels, frame_products

    t_outputs = time.perf_counter()
    summary: dict = dict(metrics or {})
    files = [out_dir / "motex.h5"]
    summary.update(fits=int(np.isfinite(run.fits("rw", every=True)).sum()),
                   fits_per_second=timings["fits_per_second"], fits_table=run.fits_table)
    names = run.frame_names()
    times = run.times()
    times = None if times is None else times[0]
    n_frames = len(names)
    if until == "explain":
        atoms = {k: run.atoms(k) for k in ATOM_DATASETS + ("in_motif", "acv_negative")}
        atoms["label"] = answer_labels(run)
        permutable = run.permutable()
        csv_path = out_dir / "atom_contributions.csv"
        write_contributions_csv(csv_path, structure, permutable, atoms, names, times)
        files.append(csv_path)
        if n_frames > 1:  # one motif a frame, in a folder of their own
            (out_dir / "motifs").mkdir(exist_ok=True)
        kinds = [("motif", "in_motif", "answer")]
        if not np.array_equal(atoms["acv_negative"], atoms["in_motif"]):
            kinds.append(("acv_motif", "acv_negative", "the ACV < 0 set"))
        if run.has_polish():
            kinds.append(("polished_motif", "in_motif", "polished by real fits"))
        for stem, key, what in kinds:
            for f in range(n_frames):
                atom_mask = space.atom_masks(atoms[key][f][None, :])[0]
                name = f"{stem}.xyz" if n_frames == 1 else f"motifs/{stem}_{f:05d}.xyz"
                title = f"{name} ({what})" if n_frames == 1 else \
                    f"frame {f} ({names[f]}), {what}"
                write_xyz(out_dir / name, motif_structure(structure, atom_mask, title))
            files.append(out_dir / (f"{stem}.xyz" if n_frames == 1 else
                                    f"motifs/{stem}_NNNNN.xyz ({n_frames} files, one a frame)"))
        in_motif = atoms["in_motif"][0]
        summary["motif"] = [int(i) for i in permutable[in_motif]]
        summary["motif_atoms"] = int(space.atom_masks(in_motif[None, :])[0].sum())
        summary["acv_motif"] = [int(i) for i in permutable[atoms["acv_negative"][0]]]
        summary["contributions"] = atoms["contribution"][0]
        summary["permutable"] = permutable
        if run.has_polish():
            polish = run.polish()
            summary["polished_rw"] = float(polish["rw"][0])
            summary["extract_fits"] = polish["fits"]
    products, series_figures = None, []
    if until == "explain" and n_frames == 1:
        products = frame_products(run, plan, structure, space, out_dir, 0, log)
        files.extend(products.files)
    elif until == "explain":
        log("writing the series plots")
        series_figures = _series_figures(run, out_dir)
        files.extend(series_figures)
    timings["outputs"] = time.perf_counter() - t_outputs
    log(f"outputs written in {timings['outputs']:.1f} s")
    timings["total"] = time.perf_counter() - t_start
    run.write_timings(timings, n_ranks)
    if until == "explain":
        from .report import write_report

        files.append(write_report(out_dir / "report.html", run, structure, files,
                                  products, series_figures))
    summary["n_frames"] = n_frames
    summary["files"] = [str(p) for p in files]
    print_summary(summary, structure, log)
    return summary


def _series_figures(run: RunFile, out_dir: Path) -> list[Path]:
    from .plots import contributions_vs_frame, series_summary

    return [contributions_vs_frame(run, out_dir / "contributions_vs_frame.png"),
            series_summary(run, out_dir / "series_summary.png")]


def redraw(path: Path, frames: list[int] | None, out_dir: Path, log=print) -> list[Path]:
    """The ``plot`` command: write the outputs of the finished run in ``path`` again.

    A single-frame run gets what ``run`` writes: the VESTA and CrystalMaker files, the
    five figures and ``report.html``. A series gets the series figures and the report,
    and each frame of ``frames`` its own files in ``frame_NNNNN/``. Returns the files.
    """
    from .products import frame_products, output_plan
    from .report import write_report

    with RunFile.read(path) as run:
        config = run.config()
        structure = run.structure()
        space = MotifSpace.from_structure(structure, config.permute, config.bond_threshold)
        plan = output_plan(config, structure)
        if not run.has_atoms() or not run.has_shap():
            raise InputError(f"{path} holds no atom contributions yet (the run stopped before "
                             f"the explain stage): run `mlmotex-hpc learn {path}` first")
        n_frames = run.n_frames
        frames = frames if frames is not None else ([0] if n_frames == 1 else [])
        for f in frames:
            if not 0 <= f < n_frames:
                raise InputError(f"--frame {f}: {path} holds frames 0 to {n_frames - 1}")
        make_folder(out_dir)
        files: list[Path] = []
        series = []
        if n_frames > 1:
            log("drawing the series figures")
            series = _series_figures(run, out_dir)
            files.extend(series)
        products = [frame_products(run, plan, structure, space, out_dir, f, log)
                    for f in dict.fromkeys(frames)]
        for done in products:
            files.extend(done.files)
        files.append(write_report(out_dir / "report.html", run, structure, files,
                                  products[0] if products else None, series))
    return files


def print_summary(summary: dict, structure: Structure, log: Callable) -> None:
    log("")
    if summary.get("fits_table"):
        log(f"fits read          {summary['fits']} (from {summary['fits_table']})")
    else:
        log(f"fits done          {summary['fits']}")
    if summary.get("n_frames", 1) > 1:
        log(f"frames             {summary['n_frames']} (below: frame 0; every frame in "
            "the CSV and the plots)")
    rate = summary["fits_per_second"]
    if summary.get("fits_table"):
        log(f"fits per second    - (steps 3-4 on the fits table {summary['fits_table']}: "
            "no fits made)")
    else:
        log("fits per second    " + (f"{rate:,.0f}" if rate > 0 else
                                     "- (no fit in this job: the fits were done before)"))
    if "test_mae" in summary:
        log(f"test MAE (Rw)      {summary['test_mae']:.4f}   (R² {summary['test_r2']:.3f})")
    if "motif" in summary:
        names = site_labels(structure.elements)
        atoms = " ".join(names[i] for i in summary["motif"])
        how = (f", polished Rw {summary['polished_rw']:.4f}" if "polished_rw" in summary
               else "")
        log(f"extracted motif    {len(summary['motif'])} permutable atoms "
            f"({summary['motif_atoms']} with bonded atoms{how}): {atoms}")
        if summary.get("acv_motif") != summary["motif"]:
            extra = sorted(set(summary["motif"]) - set(summary["acv_motif"]))
            dropped = sorted(set(summary["acv_motif"]) - set(summary["motif"]))
            log(f"  against ACV < 0  ({len(summary['acv_motif'])} atoms): added "
                f"{' '.join(names[i] for i in extra) or 'none'}, "
                f"removed {' '.join(names[i] for i in dropped) or 'none'}")
    log("files written:")
    for path in summary["files"]:
        log(f"  {path}")
