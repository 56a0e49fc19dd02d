"""What a person opens after a run: structure files and figures of one frame.

:func:`frame_products` writes, for one frame of a finished ``motex.h5`` (rank 0, file
open for reading):

* ``model_contributions.vesta`` / ``.cmtx``: the starting model, permutable atoms
  coloured by their contribution (blue: in the motif; red: against it; grey: not
  permuted), for VESTA 3 and CrystalMaker;
* ``motif.vesta``: the extracted motif (``motif.xyz`` is written with the CSV);
* ``shap_summary.png``, ``atom_contributions.png``, ``parity.png``, ``best_fit.png``,
  ``rw_vs_size.png`` (see :mod:`mlmotex_hpc.output.plots`);
* ``best_fit.fgr`` (the refitted curve of lowest Rw) and ``motif_fit.fgr`` (the answer
  motif's) in PDFgui's fit format, for PDFgui or any plotting program.

``best_fit.png`` refits the catalogue's best motif and the extracted motif with the run's
own fitter and settings (the extracted motif is usually not in the catalogue, so it has
no fitted Rw of its own until then). Series put each frame's files in ``frame_NNNNN/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..extract import LABEL_CODES, confidence_labels
from ..fit.batch import FitPlan, fit_plan
from ..io.structure import Structure, site_labels
from ..store import RunFile
from . import plots
from .structure_files import contribution_colours, write_cmtx, write_vesta

#: Files of one frame, in the order they are written and shown in the report.
FIGURES = ("atom_contributions.png", "shap_summary.png", "parity.png", "best_fit.png",
           "rw_vs_size.png")
#: Fitted curves as text, in PDFgui's fit format.
FIT_FILES = ("best_fit.fgr", "motif_fit.fgr")


@dataclass(frozen=True)
class OutputPlan:
    """What the outputs read of a run's config: how step 2 fitted (to fit a chosen motif
    again the same way), where its weights came from, and the model's name for headers."""

    fit: FitPlan
    model_name: str
    data: tuple[Path, ...]  # each frame's data file (read again for dG weights)
    weights: str  # "unit" or "dG"
    rmin: float | None
    rmax: float | None


def output_plan(config, structure: Structure) -> OutputPlan:
    """The :class:`OutputPlan` of a run's config for its model."""
    return OutputPlan(fit=fit_plan(config, structure), model_name=config.structure.name,
                      data=tuple(config.data), weights=config.fit.weights,
                      rmin=config.fit.rmin, rmax=config.fit.rmax)


@dataclass
class MotifFit:
    """One motif refitted to a frame with the run's fitter."""

    label: str
    atom_mask: np.ndarray  # over all atoms of the model
    rw: float
    scale: float
    zoom: float
    g_calc: np.ndarray
    size: int  # permutable atoms kept
    uiso: dict[str, float] = field(default_factory=dict)  # refined Uiso (fit.refine)
    delta2: float | None = None  # refined delta2


@dataclass
class FrameProducts:
    """What :func:`frame_products` wrote and found, for the report."""

    frame: int
    folder: Path
    files: list[Path] = field(default_factory=list)
    fits: list[MotifFit] = field(default_factory=list)


def frame_folder(out_dir: Path, frame: int, n_frames: int) -> Path:
    """Where a frame's files go: the output folder itself for a single frame."""
    return out_dir if n_frames == 1 else out_dir / f"frame_{frame:05d}"


def frame_data(run: RunFile, plan: OutputPlan, frame: int) -> tuple[np.ndarray, np.ndarray,
                                                                    np.ndarray | None]:
    """r, G and the fit weights (None: unit) of a frame, as the run fitted them."""
    r, g = run.data(frame)
    weights = None
    if plan.weights == "dG":  # the weights are not stored: read the data again
        from ..io.pdfdata import read_pdf_data

        data = read_pdf_data(plan.data[frame])
        weights = data.weights(data.fit_range(plan.rmin, plan.rmax))
    return r, g, weights


def refit(run: RunFile, plan: OutputPlan, structure: Structure, space, frame: int,
          motifs: list[tuple[str, np.ndarray]]) -> list[MotifFit]:
    """Fit each ``(label, permutable-atom mask)`` to the frame as step 2 does."""
    from ..fit.fitter import fit_motif
    from ..pdf import make_calculator

    r, g, weights = frame_data(run, plan, frame)
    calc = make_calculator(structure.elements, structure.xyz, plan.fit.pdf, r)
    out = []
    for label, mask in motifs:
        atom_mask = space.atom_masks(mask[None, :])[0]
        motif = calc.prepare(atom_mask)
        res = fit_motif(calc, motif, g, plan.fit.fit, weights, plan.fit.base_uiso)
        g_calc = res.scale * calc.gr(motif, zoom=res.zoom, uiso=res.uiso or None,
                                     delta2=res.delta2)
        out.append(MotifFit(label, atom_mask, res.rw, res.scale, res.zoom, g_calc,
                            int(mask.sum()), dict(res.uiso or {}), res.delta2))
    return out


def answer_labels(run: RunFile) -> np.ndarray:
    """``/atoms/label`` (F × N); for a file written before the extract stage, the labels
    by the default thresholds."""
    if run.has_labels():
        return run.atoms("label")
    from ..config import ExtractConfig

    ex = ExtractConfig()
    return confidence_labels(run.atoms("contribution"), run.atoms("contribution_se"),
                             run.atoms("confidence"), ex.label_z, ex.label_min_cf)


def frame_products(run: RunFile, plan: OutputPlan, structure: Structure, space, out_dir: Path,
                   frame: int = 0, log: Callable = print) -> FrameProducts:
    """Write one frame's structure files and figures (see the module notes)."""
    n_frames = run.n_frames
    folder = frame_folder(out_dir, frame, n_frames)
    folder.mkdir(parents=True, exist_ok=True)
    done = FrameProducts(frame, folder)
    label = "" if n_frames == 1 else f" of frame {frame}"
    permutable = run.permutable()
    acv = run.atoms("contribution", frame)
    in_motif = run.atoms("in_motif", frame)
    acv_negative = run.atoms("acv_negative", frame)
    uncertain = answer_labels(run)[frame] == LABEL_CODES["uncertain"]
    colours = contribution_colours(acv, len(structure), permutable, pale=uncertain)
    title = f"{plan.model_name}: atom contributions{label}"

    log(f"writing the structure files{label}")
    done.files.append(write_vesta(folder / "model_contributions.vesta", structure, colours,
                                  title=title))
    done.files.append(write_cmtx(folder / "model_contributions.cmtx", structure, colours,
                                 title=title))
    motif_atoms = space.atom_masks(in_motif[None, :])[0]
    if motif_atoms.any():
        done.files.append(write_vesta(folder / "motif.vesta", structure.subset(motif_atoms),
                                      colours[motif_atoms], title=f"extracted motif{label}"))

    if not run.measured:  # a fits table's run: no data to refit or draw
        done.files.append(plots.atom_contributions(run, folder / "atom_contributions.png",
                                                   frame))
        done.files.append(plots.shap_summary(run, folder / "shap_summary.png", frame))
        done.files.append(plots.parity(run, folder / "parity.png", frame))
        done.files.append(plots.rw_vs_size(run, folder / "rw_vs_size.png", frame))
        return done

    log(f"refitting the best and the extracted motif{label}")
    motifs = []
    if run.has_exact():  # an exhaustive run: the best of every motif
        best = int(run.best()["row"][frame, 0])
        if best >= 0:
            motifs.append((f"global best motif ({best})", run.masks(best)))
    elif np.isfinite(rw := run.fits("rw", frame)).any():
        best = int(run.table_rows(int(np.nanargmin(rw))))
        motifs.append((f"best catalogue motif ({best})", run.masks(best)))
    if acv_negative.any() and not np.array_equal(acv_negative, in_motif):
        motifs.append(("ACV < 0 set", acv_negative))
    if in_motif.any():
        motifs.append(("polished motif" if run.has_polish() else "extracted motif",
                       in_motif))
    done.fits = refit(run, plan, structure, space, frame, motifs)

    log(f"drawing the figures{label}")
    r, g, _ = frame_data(run, plan, frame)
    done.files.append(plots.atom_contributions(run, folder / "atom_contributions.png", frame))
    done.files.append(plots.shap_summary(run, folder / "shap_summary.png", frame))
    if run.has_test_predicted():
        done.files.append(plots.parity(run, folder / "parity.png", frame))
    else:  # files of mlmotex-hpc before 0.2 kept no test predictions
        log("  no parity.png: the file holds no test-set predictions (rerun "
            "`mlmotex-hpc learn` on it to store them)")
    done.files.append(plots.best_fit(
        folder / "best_fit.png", r, g, [(f.label, f.g_calc, f.rw) for f in done.fits],
        title=f"Best catalogue motif and the answer{label}, refitted"))
    done.files.append(plots.rw_vs_size(
        run, folder / "rw_vs_size.png", frame,
        marks=[(f"{f.label}: Rw {f.rw:.4f}", f.size, f.rw) for f in done.fits]))
    answer = done.fits[-1] if in_motif.any() else None
    done.files += write_fit_files(folder, run, plan, structure, frame, r, g, done.fits,
                                  answer)
    return done


def write_fit_files(folder: Path, run: RunFile, plan: OutputPlan, structure: Structure,
                    frame: int,
                    r: np.ndarray, g: np.ndarray, fits: list[MotifFit],
                    answer: MotifFit | None) -> list[Path]:
    """``best_fit.fgr`` (the fit of lowest Rw) and ``motif_fit.fgr`` (``answer``, the
    polished or extracted motif)."""
    from ..io.pdfout import write_fgr

    finite = [f for f in fits if np.isfinite(f.rw)]
    chosen = []
    if finite:
        chosen.append((FIT_FILES[0], min(finite, key=lambda f: f.rw)))
    if answer is not None:
        chosen.append((FIT_FILES[1], answer))
    names = run.frame_names()
    data = names[frame] if frame < len(names) else ""
    labels = site_labels(structure.elements)
    pdf = plan.fit.pdf
    written = []
    for name, fit in chosen:
        kept = np.flatnonzero(fit.atom_mask)
        meta = [("motif", fit.label), ("rw", f"{fit.rw:.6f}"), ("zoom", f"{fit.zoom:.6f}"),
                ("natoms", int(kept.size)), ("permuted_atoms_kept", fit.size),
                ("atoms", " ".join(labels[i] for i in kept)),
                ("model", plan.model_name), ("data", data), ("frame", frame),
                ("refined", ",".join(plan.fit.fit.refine)),
                ("calculator", pdf.calculator), ("qmin", pdf.qmin)]
        meta += [(f"uiso_{el}", f"{u:.6g}") for el, u in sorted(fit.uiso.items())]
        if fit.delta2 is not None:
            meta.append(("delta2", f"{fit.delta2:.6g}"))
        written.append(write_fgr(
            folder / name, r, g, fit.g_calc, radiation=pdf.radiation,
            qmax=pdf.qmax, qdamp=pdf.qdamp, qbroad=pdf.qbroad,
            scale=fit.scale, metadata=meta))
    return written
