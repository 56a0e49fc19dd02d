"""Checking one motif of a finished run with diffpy.srfit (the ``refine`` command).

Reads the run's config text and starting model from ``motex.h5``, re-reads the measured
PDF the config names, and refines the chosen motif with a diffpy.srfit ``FitRecipe``
(:mod:`mlmotex_hpc.fit.srfit`) with scale, zoom, Uiso per element and delta2 free. Prints
srfit's FitResults and writes, into ``DIR`` (default: the folder of ``motex.h5``):

* ``refine_fit.png``: data, fit and difference curve (offset below), with Rw;
* ``refine_fit.fgr``: the same curves in PDFgui's fit format, the refined values in its
  ``# metadata`` block;
* ``refine_motif.xyz``: the motif's atoms, coordinates multiplied by the refined zoom;
* ``refine_results.txt``: srfit's FitResults as printed.

Motifs: ``extracted`` is the run's answer (``/atoms/in_motif``), ``best`` the catalogue
motif with the lowest fitted Rw, an integer the catalogue index (row of
``/catalogue/mask``). Non-permuted atoms follow their bonded permuted atoms as in the run.

Relative paths in the stored config resolve against the config file's folder, which a
run records as the root attribute ``config_dir``; runs without it work when the config's
paths are absolute.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..catalogue import MotifSpace
from ..config import pdf_settings
from ..errors import InputError
from ..io.folders import make_folder
from ..io.structure import Structure, site_labels
from ..store import RunFile

#: Everything ``refine`` frees.
REFINED = ("scale", "zoom", "uiso", "delta2")
#: Output file names, inside the output folder.
PLOT_NAME = "refine_fit.png"
FGR_NAME = "refine_fit.fgr"
XYZ_NAME = "refine_motif.xyz"
RESULTS_NAME = "refine_results.txt"


def choose_motif(run: RunFile, which: str, frame: int) -> tuple[np.ndarray, str, float | None]:
    """Mask over permutable atoms, a label, and the run's fitted Rw (None if not fitted).

    Every fitted motif counts: the catalogue's and those the extract stage added after it
    (rows ``n_motifs`` on), so ``best`` may be a polished motif."""
    n_motifs = run.n_rows
    rw = run.fits("rw", frame, every=True) if run.has_fits() else None
    if which == "extracted":
        if not run.has_atoms():
            raise InputError(
                f"{run.path} holds no extracted motif (the run stopped before the explain "
                "stage); use --motif best or the index of a fitted motif"
            )
        mask = run.atoms("in_motif", frame)
        if not mask.any():
            raise InputError(f"the extracted motif of frame {frame} in {run.path} is empty")
        # the extracted motif is usually not a catalogue row: no fitted Rw to compare
        rows = np.flatnonzero(np.all(run.masks(slice(None)) == mask, axis=1))
        fitted = _fitted_rw(rw, int(rows[0])) if rows.size else None
        return mask, "extracted motif", fitted
    if which == "best":
        if rw is None or not np.any(np.isfinite(rw)):
            raise InputError(
                f"{run.path} holds no finished fits (the run stopped before fitting); "
                "--motif best needs them"
            )
        index = int(np.nanargmin(rw))
        return run.masks(index), f"motif {index} (best fit)", float(rw[index])
    try:
        index = int(which)
    except ValueError:
        raise InputError(
            f"--motif {which!r}: expected extracted, best or the index of a fitted motif "
            f"(0 to {n_motifs - 1})"
        ) from None
    if not 0 <= index < n_motifs:
        raise InputError(
            f"--motif {index}: {run.path} holds fitted motifs 0 to {n_motifs - 1}"
        )
    return run.masks(index), f"motif {index}", _fitted_rw(rw, index)


def _fitted_rw(rw: np.ndarray | None, index: int) -> float | None:
    if rw is None or not np.isfinite(rw[index]):
        return None
    return float(rw[index])


def plot_fit(path: Path, r, g_obs, g_calc, rw: float, title: str) -> None:
    """Data, fit and their difference (offset below the curves), Rw in the title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    diff = g_obs - g_calc
    low = min(np.min(g_obs), np.min(g_calc))
    span = max(np.max(g_obs), np.max(g_calc)) - low
    offset = low - 0.1 * span - np.max(diff)
    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(r, g_obs, "o", ms=2.5, mfc="none", color="tab:blue", label="data")
    ax.plot(r, g_calc, "-", color="tab:red", lw=1.2, label=f"fit (Rw = {rw:.4f})")
    ax.plot(r, diff + offset, "-", color="tab:green", lw=1.0, label="difference")
    ax.axhline(offset, color="0.6", lw=0.6)
    ax.set_xlabel("r (Å)")
    ax.set_ylabel("G(r) (Å⁻²)")
    ax.set_title(f"{title}: Rw = {rw:.4f} (diffpy.srfit)", fontsize=10)
    ax.legend(frameon=False, fontsize=9)
    fig.savefig(path, dpi=150)


def refine(
    h5_path: str | Path,
    motif: str = "extracted",
    frame: int = 0,
    out_dir: str | Path | None = None,
    stream=None,
) -> dict:
    """Refine one motif of a run with diffpy.srfit and write the plot and the motif.

    Parameters
    ----------
    h5_path : str or Path
        The run's ``motex.h5``.
    motif : str
        ``extracted``, ``best`` or a catalogue index.
    frame : int
        Which data set of a series (0-based).
    out_dir : str or Path, optional
        Output folder; the folder of ``motex.h5`` when omitted.
    stream : file, optional
        Where the report goes (stdout).

    Returns
    -------
    dict
        ``rw`` (srfit), ``fitted_rw`` (the run's, or None), ``values`` (refined
        variables), ``n_atoms`` and the written ``files``.
    """
    stream = stream or sys.stdout
    with RunFile.read(h5_path) as run:
        return _refine(run, motif, frame, out_dir, stream)


def _refine(run: RunFile, motif: str, frame: int, out_dir, stream) -> dict:
    from ..fit.srfit import CONTRIBUTION_NAME, motif_recipe, refine_recipe
    from ..io.pdfdata import read_pdf_data
    from ..io.pdfout import write_fgr
    from ..io.structure import write_xyz
    from ..pdf import make_calculator

    config = run.config()
    if config.fits is not None:
        raise InputError(f"{run.path} learned from the fits table {config.fits.name}: the run "
                         "has no data to refine a motif against (name the data in a config "
                         "and run it, or refine the motif with your own tools)")
    frame_names = tuple(run.frame_names())
    structure = run.structure()
    n_frames = len(frame_names) or len(config.data)
    if not 0 <= frame < n_frames:
        frames = "a single frame, 0" if n_frames == 1 else f"frames 0 to {n_frames - 1}"
        raise InputError(f"--frame {frame}: the run has {frames}")
    found = tuple(p.name for p in config.data)
    if frame_names and found != frame_names:
        raise InputError(
            f"the run's config now finds the data files {', '.join(found[:3])}"
            f"{', ...' if len(found) > 3 else ''}, not the {n_frames} file(s) of the run "
            f"({', '.join(frame_names[:3])}{', ...' if n_frames > 3 else ''})"
        )
    data_path = config.data[frame]
    out = Path(out_dir) if out_dir is not None else run.path.parent
    xyz_path, png_path, txt_path = out / XYZ_NAME, out / PLOT_NAME, out / RESULTS_NAME
    if xyz_path.resolve() == config.structure.resolve():
        raise InputError(f"refusing to overwrite the starting model {config.structure}")
    space = MotifSpace.from_structure(structure, config.permute, config.bond_threshold)
    if not np.array_equal(space.permutable, run.permutable()):
        raise InputError(
            f"the permutable atoms of {run.path} do not match its config's 'permute'"
        )
    mask, label, fitted_rw = choose_motif(run, motif, frame)
    atom_mask = space.atom_masks(mask[None, :])[0]
    make_folder(out)  # before the refinement: a folder that cannot be written says so now

    data = read_pdf_data(data_path)
    try:
        sl = data.fit_range(config.fit.rmin, config.fit.rmax)
    except InputError as exc:
        raise InputError(f"config keys 'fit.rmin'/'fit.rmax': {exc}") from None
    dg = None
    if config.fit.weights == "dG":
        data.weights(sl)  # refuses missing or non-positive dG with a clear message
        dg = data.dg
    calc = make_calculator(structure.elements, structure.xyz, pdf_settings(config),
                           data.r[sl])
    prepared = calc.prepare(atom_mask)
    if prepared.n_pairs == 0:
        raise InputError(f"{label} has a single atom: there is no PDF to refine")

    recipe = motif_recipe(calc, prepared, data.r, data.g, dg, refine=REFINED,
                          zoom_bounds=config.fit.zoom_bounds)
    result = refine_recipe(recipe)

    n_perm = int(mask.sum())
    names = site_labels(structure.elements)
    atoms = " ".join(names[i] for i in run.permutable()[mask])
    print(f"refining {label} of {run.path} against {data_path.name} "
          f"(r {calc.r[0]:g}-{calc.r[-1]:g} Å, {config.pdf.calculator} calculator, "
          f"{config.fit.weights} weights)", file=stream)
    print(f"  {n_perm} permuted atoms ({prepared.n_atoms} with bonded atoms): {atoms}",
          file=stream)
    if fitted_rw is not None:
        print(f"  the run's fit ({', '.join(config.fit.refine)} free): Rw = {fitted_rw:.6f}",
              file=stream)
    starts = ", ".join(f"{z:g}" for z, _, _ in result.starts)
    header = (f"diffpy.srfit refinement of {label} (scale, zoom, Uiso, delta2 free; "
              f"least_squares from zoom {starts}, best kept)")
    report = result.results.formatResults(header=header)
    print(report, file=stream, flush=True)
    if result.at_bound:
        print(f"note: {', '.join(result.at_bound)} ended on a bound and "
              f"{'is' if len(result.at_bound) == 1 else 'are'} listed as fixed there "
              "(no uncertainty on a bound)", file=stream)

    zoom = result.values["zoom"]
    profile = recipe.get(CONTRIBUTION_NAME).profile
    sub = structure.subset(atom_mask)
    try:
        plot_fit(png_path, profile.x, profile.y, profile.ycalc, result.rw,
                 f"{label}, {data_path.name}")
        write_xyz(xyz_path, Structure(sub.elements, sub.xyz * zoom),
                  f"{label} of {run.path.name} refined with diffpy.srfit: "
                  f"Rw = {result.rw:.6f}, coordinates x zoom {zoom:.6f}")
        txt_path.write_text(report + "\n")
    except OSError as exc:
        raise InputError(f"cannot write into {out}: {exc.strerror or exc}") from None
    meta = [("motif", label), ("rw", f"{result.rw:.6f}"), ("data", data_path.name),
            ("frame", frame), ("natoms", prepared.n_atoms), ("permuted_atoms_kept", n_perm),
            ("atoms", " ".join(site_labels(structure.elements)[i]
                               for i in np.flatnonzero(atom_mask))),
            ("refined_by", "diffpy.srfit"), ("calculator", config.pdf.calculator),
            ("qmin", config.pdf.qmin)]
    meta += [(name, f"{value:.6g}") for name, value in result.values.items()
             if name != "scale"]
    fgr_path = write_fgr(out / FGR_NAME, profile.x, profile.y, profile.ycalc,
                         radiation=config.pdf.radiation, qmax=config.pdf.qmax,
                         qdamp=config.pdf.qdamp, qbroad=config.pdf.qbroad,
                         scale=result.values["scale"], metadata=meta)
    for path in (png_path, fgr_path, xyz_path, txt_path):
        print(f"wrote {path}", file=stream)
    return {
        "rw": result.rw, "fitted_rw": fitted_rw, "values": result.values,
        "n_atoms": prepared.n_atoms, "files": [png_path, fgr_path, xyz_path, txt_path],
    }
