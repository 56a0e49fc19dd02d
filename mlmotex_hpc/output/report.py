"""``report.html``: one self-contained page about a run, to read or send to a colleague.

Inputs and settings, timings, the model's test metrics, every figure (PNG embedded as
data URIs: the page needs no other file and loads nothing from the network), the table
of atom contributions and the extracted motif. Written by ``run``, ``learn``, ``merge``
and ``plot`` from the finished ``motex.h5`` (rank 0, file open for reading).
"""

from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import InputError
from ..extract import LABEL_CODES, LABEL_NAMES
from ..io.structure import Structure, site_labels
from ..store import RunFile
from .plots import frame_metric
from .products import FIGURES, FrameProducts, answer_labels
from .structure_files import contribution_colours

CAPTIONS = {
    "atom_contributions.png": "Atom contribution values (ACV) with ± σ. Blue atoms lower Rw: "
                              "they make up the motif. Pale bars: |ACV| < σ.",
    "shap_summary.png": "SHAP values of the features: how keeping (red) or removing (blue) an "
                        "atom moves the predicted Rw.",
    "parity.png": "The model's predicted Rw against the fitted Rw of test motifs it never saw.",
    "best_fit.png": "The data with the best catalogue motif's and the extracted motif's fits "
                    "(refitted) and their difference curves.",
    "rw_vs_size.png": "Fitted Rw of every motif against its size.",
    "contributions_vs_frame.png": "Atom contributions of every frame (blue: in the motif).",
    "series_summary.png": "Best Rw, size of the best motifs and the model's test R² over the "
                          "series.",
}

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1100px;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;
margin-top:1.8em}table{border-collapse:collapse;margin:.6em 0}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right;font-size:.9em}
th{background:#f3f3f3}td.l,th.l{text-align:left}figure{margin:1.2em 0}
figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#555}pre{background:#f7f7f7;padding:.8em;overflow-x:auto;
font-size:.85em}.warn{background:#fff3cd;border:1px solid #e0c36c;padding:.6em 1em}
.sub{color:#666}.swatch{display:inline-block;width:1em;height:1em;border:1px solid #999;
vertical-align:middle}
"""


def esc(value) -> str:
    """``value`` as text, HTML-escaped (quotes included)."""
    return html.escape(str(value))


def table(header: list[str] | None, rows: list[list], left: int = 1) -> str:
    """An HTML table (no header row when ``header`` is None); the first ``left`` columns
    left-aligned. Header names are escaped here; cells are HTML as given (escape what
    comes from files with :func:`esc`)."""
    width = len(header) if header else len(rows[0])
    cls = [' class="l"' if i < left else "" for i in range(width)]
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th{c}>{esc(h)}</th>"
                                    for c, h in zip(cls, header, strict=True)) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td{c}>{cell}</td>"
                                    for c, cell in zip(cls, row, strict=True)) + "</tr>")
    return "".join(out) + "</table>"


def figure(path: Path, caption: str | None = None) -> str:
    """A PNG embedded as a data URI, with its name and ``caption`` (by default its entry
    in :data:`CAPTIONS`) below it."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = CAPTIONS.get(path.name, "") if caption is None else caption
    return (f'<figure><img alt="{esc(path.name)}" src="data:image/png;base64,{data}">'
            f"<figcaption><b>{esc(path.name)}</b>: {esc(caption)}</figcaption></figure>")


def num(value, fmt: str = ".4f") -> str:
    """A number in ``fmt``; "–" for NaN or infinity."""
    value = float(value)
    return "–" if not np.isfinite(value) else format(value, fmt)


def _fitted(run: RunFile, n_motifs: int, n_frames: int) -> str:
    """The summary's "motifs fitted" entry."""
    if run.exhaustive:
        n = run.permutable().size
        return (f"every motif: {run.n_table:,} = 2^{n} − 1 × {n_frames} frame(s); steps 3-4 "
                f"on a random catalogue of {n_motifs:,} of them (learn.sample)")
    return (f"{int(np.isfinite(run.fits('rw', every=True)).sum()):,} ({n_motifs:,} catalogue "
            f"motifs × {n_frames} frame(s)"
            + (f", {run.n_rows - n_motifs:,} more by the extract stage"
               if run.n_rows > n_motifs else "") + ")")


def _exact_section(run: RunFile, structure: Structure, permutable: np.ndarray,
                   frame: int) -> str:
    """Exhaustive runs: the global best motifs and each atom's exact Shapley value beside
    its ACV."""
    best = run.best()
    shapley = run.atoms("shapley", frame)
    main = run.atoms("main_effect", frame)

    def listed(mask):
        return " ".join(site_labels(structure.elements)[i] for i in permutable[mask])

    rows = [[str(k + 1), str(int(best["row"][frame, k])), num(best["rw"][frame, k]),
             str(int(best["mask"][frame, k].sum())), esc(listed(best["mask"][frame, k]))]
            for k in range(min(5, best["row"].shape[1])) if best["row"][frame, k] >= 0]
    out = ["<h2>Exact answer (every motif fitted)</h2>",
           f"<p>The {best['row'].shape[1]} lowest Rw of all {run.n_table:,} motifs are in "
           "/best; the five best:</p>",
           table(["rank", "motif", "Rw", "atoms", "kept"], rows)]
    if run.has_atoms():
        acv = run.atoms("contribution", frame)
        order = np.argsort(shapley, kind="stable")
        agree = np.sign(acv) == np.sign(shapley)
        rows = [[esc(site_labels(structure.elements)[permutable[i]]),
                 num(shapley[i], ".5f"), num(main[i], ".5f"), num(acv[i], ".5f"),
                 "yes" if agree[i] else "<b>no</b>"] for i in order]
        out.append(f"<p>Exact Shapley values of the game v(S) = Rw (v(∅) = 1) and main "
                   f"effects, from every fit, beside the ACVs that ML-MotEx learned from "
                   f"{run.n_motifs:,} of the motifs: {int(agree.sum())} of {agree.size} signs "
                   "agree.</p>")
        out.append(table(["atom", "Shapley", "main effect", "ACV", "same sign"], rows))
    return "\n".join(out)


def _convergence_section(run: RunFile) -> str:
    """``mlmotex-hpc convergence``: the trials by catalogue size, means over the seeds."""
    col = run.convergence()
    rows = []
    for strategy, name in ((0, "random"), (1, "adaptive")):
        for size in np.unique(col["size"][col["strategy"] == strategy]):
            at = (col["size"] == size) & (col["strategy"] == strategy)
            agree = 100 * col["sign_agreement"][at]
            rows.append([name, f"{int(size):,}", str(int(at.sum())),
                         f"{np.mean(agree):.1f} % ({np.min(agree):.1f}–{np.max(agree):.1f})",
                         num(np.mean(col["spearman"][at]), ".3f"),
                         num(np.mean(col["answer_errors"][at]), ".1f"),
                         f"{100 * np.mean(col['mean_sign_agreement'][at]):.1f} %",
                         num(np.mean(col["best_rw"][at] - col["global_rw"][at]), ".4f"),
                         f"{int(col['best_is_global'][at].sum())} of {int(at.sum())}"])
    return "\n".join([
        "<h2>How many motifs are enough</h2>",
        f"<p>Catalogues drawn from the exhaustive table (frame {col['frame']}; Rw looked up, "
        "not refitted), steps 3-4 on each, against the exact Shapley values; ranges over "
        "the seeds; convergence.png draws it. Main-effect signs: the catalogue's own mean "
        "Rw keeping minus removing each atom, without a model.</p>",
        table(["catalogue", "motifs", "seeds", "ACV signs right", "Spearman",
               "atoms misassigned", "main-effect signs right", "best Rw − global",
               "global best found"], rows)])


def _sources_section(run: RunFile, structure: Structure) -> str:
    """Where qmin, qmax, the radiation and each element's Uiso came from: the config, the
    data header, the structure file or the defaults."""
    from ..io.defaults import setting_sources

    try:
        config = run.config()
    except InputError as exc:  # the inputs moved since: the settings are in the config
        return f"<p class=\"sub\">Where the settings came from: not known ({esc(exc)})</p>"
    rows = [[esc(key), esc(value), esc(source)]
            for key, value, source in setting_sources(config, structure.elements)]
    return ("<h2>Where the settings came from</h2>"
            + table(["setting", "value", "from"], rows, left=3))


def write_report(path: Path, run: RunFile, structure: Structure, files: list[Path],
                 products: FrameProducts | None = None,
                 series_figures: list[Path] = ()) -> Path:
    """Write ``report.html`` for ``run`` (see the module notes)."""
    names = run.frame_names()
    n_frames = len(names)
    frame = products.frame if products is not None else 0
    ml = run.ml()
    timings = run.timings()
    config_text = run.config_text
    permutable = run.permutable()
    n_motifs = run.n_motifs
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>mlmotex-hpc report: {esc(path.parent.name)}</title>"
             f"<style>{STYLE}</style></head><body>"]
    parts.append(f"<h1>mlmotex-hpc report</h1><p class=\"sub\">{esc(path.parent)} — "
                 f"mlmotex-hpc {esc(__version__)}, written {time.strftime('%Y-%m-%d %H:%M')}"
                 "</p>")

    # -- summary
    parts.append("<h2>Summary</h2>")
    rows = [["starting model", esc(f"{len(structure)} atoms, {len(permutable)} permutable "
                                   f"({', '.join(sorted(set(structure.elements)))})")],
            ["data", esc(f"fits table {run.fits_table} (no data fitted: steps 3-4 on its Rw)"
                         if run.fits_table else names[0] if n_frames == 1 else
                         f"{n_frames} frames: {names[0]} … {names[-1]}")],
            ["motifs fitted", _fitted(run, n_motifs, n_frames)]]

    def listed(mask):
        return " ".join(site_labels(structure.elements)[i] for i in permutable[mask])

    polish = run.polish() if run.has_polish() else None
    if run.has_atoms():
        in_motif = run.atoms("in_motif", frame)
        acv_negative = run.atoms("acv_negative", frame)
        frame_note = "" if n_frames == 1 else f" (frame {frame})"
        how = "polished, connected" if polish is not None else "the answer"
        rows.append([f"extracted motif{frame_note}",
                     esc(f"{int(in_motif.sum())} permutable atoms: {listed(in_motif)} "
                         f"({how})")])
        if not np.array_equal(in_motif, acv_negative):
            added, removed = in_motif & ~acv_negative, acv_negative & ~in_motif
            rows.append(["ACV < 0 set", esc(
                f"{int(acv_negative.sum())} atoms; the answer adds {listed(added) or 'none'}"
                f" and removes {listed(removed) or 'none'}")])
        labels = answer_labels(run)[frame]
        counts = [f"{int((labels == LABEL_CODES[name]).sum())} {name}"
                  for name in ("in", "out", "uncertain")]
        rows.append(["confidence labels", esc(", ".join(counts))])
    if products is not None:
        for fit in products.fits:
            rows.append([esc(f"{fit.label}, refitted"), f"Rw {fit.rw:.4f} (scale {fit.scale:.4g}, "
                                         f"zoom {fit.zoom:.5f}, {int(fit.atom_mask.sum())} "
                                         "atoms)"])
    parts.append(table(None, rows, left=2))
    parts.append(_sources_section(run, structure))

    # -- polishing
    if polish is not None:
        parts.append("<h2>Polishing by real fits</h2>")
        parts.append(f"<p>{polish['fits']:,} motifs fitted by the extract stage (budget "
                     f"{polish['budget']:,}); each start moves one atom at a time while the "
                     "objective (Rw plus the penalty for broken polyhedra) falls. "
                     f"Polished Rw {polish['rw'][frame]:.4f} from {polish['start_rw'][frame]:.4f}"
                     ".</p>")
        rows = []
        for start in polish["path"][frame]:
            for step in start["steps"]:
                atom_names = site_labels(structure.elements)
                moved = " ".join([f"+{atom_names[permutable[i]]}" for i in step["added"]]
                                 + [f"−{atom_names[permutable[i]]}" for i in step["removed"]])
                rows.append([esc(start["origin"]), str(step["step"]), esc(moved or "start"),
                             str(step["n_atoms"]), num(step["rw"], ".4f"),
                             num(step.get("score", np.nan), ".4f"),
                             esc(start["stop"]) if step is start["steps"][-1] else ""])
        parts.append(table(["start", "step", "move", "atoms", "Rw", "objective", "end"],
                           rows))

    # -- exhaustive runs: the exact answer, and how many motifs ML-MotEx needs
    if run.has_exact():
        parts.append(_exact_section(run, structure, permutable, frame))
    if run.has_convergence():
        parts.append(_convergence_section(run))

    # -- model
    if ml:
        parts.append("<h2>Model of Rw</h2>")
        header = ["frame", "test MAE", "test RMSE", "test R²", "baseline MAE", "CV RMSE",
                  "train", "test"]
        shown = range(n_frames) if n_frames <= 40 else sorted({0, frame, n_frames - 1})
        rows = [[esc(names[f]), *(num(frame_metric(ml, k, f)) for k in
                 ("test_mae", "test_rmse", "test_r2", "baseline_mae", "cv_score")),
                 *(num(frame_metric(ml, k, f), ".0f") for k in ("n_train", "n_test"))]
                for f in shown]
        parts.append(table(header, rows))
        r2 = np.atleast_1d(ml["test_r2"])
        low = [names[f] for f in range(n_frames) if r2[f if r2.size > 1 else 0] < 0.5]
        if low:
            parts.append(f"<p class=\"warn\">Test R² below 0.5 for {len(low)} frame(s) "
                         f"({esc(', '.join(low[:10]))}{' …' if len(low) > 10 else ''}): the "
                         "model did not learn Rw well there, and those atom contributions are "
                         "not to be trusted.</p>")
        params = ml.get("params")
        if params is not None:
            chosen = json.loads(params)
            chosen = chosen[frame] if isinstance(chosen, list) else chosen
            described = ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                              for k, v in chosen.items())
            parts.append("<p>Hyperparameters" + ("" if n_frames == 1 else f" (frame {frame})")
                         + f": {esc(described)}</p>")

    # -- timings
    if timings:
        parts.append("<h2>Timings</h2>")
        keys = [k for k in ("catalogue", "fit", "learn", "explain", "extract", "outputs",
                            "total") if k in timings]
        rows = [[k, f"{float(timings[k]):.1f} s"] for k in keys]
        if "fits_per_second" in timings and float(timings["fits_per_second"]) > 0:
            rows.append(["fits per second", f"{float(timings['fits_per_second']):,.0f}"])
        if "ranks" in timings:
            rows.append(["MPI ranks", str(int(timings["ranks"]))])
        if "note" in timings:
            rows.append(["note", esc(timings["note"])])
        parts.append(table(["stage", ""], rows))

    # -- figures
    if series_figures:
        parts.append("<h2>The series</h2>")
        parts.extend(figure(p) for p in series_figures)
    if products is not None:
        title = "Figures" if n_frames == 1 else f"Frame {frame} ({esc(names[frame])})"
        parts.append(f"<h2>{title}</h2>")
        parts.extend(figure(products.folder / name) for name in FIGURES
                     if (products.folder / name).exists())
        if run.has_convergence() and (products.folder / "convergence.png").exists():
            parts.append(figure(products.folder / "convergence.png"))

    # -- atoms
    if run.has_atoms():
        parts.append("<h2>Atom contributions</h2>")
        acv = run.atoms("contribution", frame)
        sigma = run.atoms("uncertainty", frame)
        conf = run.atoms("confidence", frame)
        se = run.atoms("contribution_se", frame)
        labels = answer_labels(run)[frame]
        in_motif = run.atoms("in_motif", frame)
        colours = contribution_colours(acv, len(structure), permutable,
                                       pale=labels == LABEL_CODES["uncertain"])
        order = np.argsort(acv, kind="stable")
        rows = []
        atom_names = site_labels(structure.elements)
        for k in order:
            i = int(permutable[k])
            rgb = "#" + "".join(f"{int(round(255 * c)):02x}" for c in colours[i])
            x, y, z = structure.xyz[i]
            rows.append([f'<span class="swatch" style="background:{rgb}"></span> '
                         f"{esc(atom_names[i])}", f"{x:.3f}", f"{y:.3f}",
                         f"{z:.3f}", num(acv[k], ".5f"), num(se[k], ".5f"),
                         num(sigma[k], ".5f"),
                         num(conf[k], ".2f"), LABEL_NAMES[int(labels[k])],
                         "yes" if in_motif[k] else ""])
        n_explained = run.explained(frame).size
        sample = ("" if n_explained == run.n_motifs else
                  f" SHAP values of {n_explained:,} of the {run.n_motifs:,} motifs, drawn at "
                  "random, until every SE was small enough (learn.shap: all explains all).")
        parts.append("<p>Sorted by ACV: the motif first. ACV = mean SHAP value over motifs "
                     "keeping the atom minus the mean over motifs removing it; SE its "
                     "standard error; σ its uncertainty (the spread of the SHAP values); "
                     f"CF = |ACV| / σ.{sample}</p>")
        parts.append("<p>Label: <i>in</i> when the ACV is below −z SE, <i>out</i> when above "
                     "+z SE, <i>uncertain</i> (drawn pale) otherwise; <i>in motif</i>: the "
                     "answer, after connected pieces and polishing.</p>")
        parts.append(table(["atom", "x (Å)", "y (Å)", "z (Å)", "ACV", "SE", "σ", "CF",
                            "label", "in motif"], rows))
        motif_xyz = (products.folder if products is not None else path.parent) / "motif.xyz"
        if n_frames > 1:
            motif_xyz = path.parent / "motifs" / f"motif_{frame:05d}.xyz"
        if motif_xyz.exists():
            parts.append(f"<h2>Extracted motif</h2><p>{esc(motif_xyz.name)}:</p>"
                         f"<pre>{esc(motif_xyz.read_text())}</pre>")

    # -- inputs
    parts.append("<h2>Config</h2>")
    parts.append(f"<pre>{esc(config_text)}</pre>")
    parts.append("<h2>Files</h2><ul>")
    parts.extend(f"<li>{esc(p)}</li>" for p in files)
    parts.append(f"<li>{esc(path)}</li></ul></body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
