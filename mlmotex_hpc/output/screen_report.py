"""``report.html`` of a screen: which templates fit the data, and how well, on one page.

``screen.csv`` lists every candidate, but a person first asks whether the best fit is good
at all, whether one template wins clearly, and which templates were not used and why.
:func:`write_screen_report` writes the answer from a finished ``screen.h5`` (rank 0, file
open for reading), in the run report's look (:mod:`.report`'s style and helpers):

* a header: the data (its frames) and the lines the pipeline passes as ``notes`` (the
  radii and how they were found, the growth margin, counts, time, ranks);
* the ranking: the best :data:`TOP_ROWS` candidates, with a link to ``screen.csv`` for
  all of them;
* ``screen_rw_per_template.png``: the best Rw of each template, one bar per template, best
  first (the best :data:`MAX_TEMPLATES` when there are more, and the page says so);
* ``screen_top_fits.png``: the data and the best motif of each top candidate fitted to the
  first frame, with their difference curves (the curves come fitted, from
  :func:`mlmotex_hpc.fit.screening.best_curve`);
* the templates skipped, each with its reason;
* the extractions: a link to each ``extract_k/report.html``, or "not made".

Rw values are means over the frames (NaN ignored), as in ``screen.csv``; a best motif's
size is the first frame's, as there. The figures are written beside the page and
embedded in it, so the page needs only the extraction folders and ``screen.csv`` beside
it for its links. Everything read from files is HTML-escaped. Nothing here fits, and
nothing talks MPI.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np

from .. import __version__
from . import plots
from .report import STYLE, esc, figure, num, table

#: Candidates shown in the ranking table (``screen.csv`` holds all).
TOP_ROWS = 30
#: Templates drawn in the per-template chart at most (the best ones).
MAX_TEMPLATES = 60
#: The files this module writes, in ``out_dir``.
REPORT = "report.html"
RW_CHART = "screen_rw_per_template.png"
TOP_FITS = "screen_top_fits.png"
#: The ranking in full, as ``mlmotex_hpc.pipeline.screen`` names it (linked, not read).
SCREEN_CSV = "screen.csv"
SCREEN_H5 = "screen.h5"

#: One top candidate's curve: (label, r (Å), G_obs, G_calc (Å⁻²), Rw).
Curve = tuple[str, np.ndarray, np.ndarray, np.ndarray, float]


def template_best(templates: Sequence[str], rw_best: np.ndarray) -> list[tuple[str, float, int]]:
    """Each template's best candidate: ``(template, Rw, candidate index)``, best first
    (ties by the templates' order). ``rw_best`` is F × C (``ScreenFile.scores()``); a
    candidate's Rw is its mean over the frames. Templates none of whose candidates has a
    finite Rw (not scored) are left out."""
    rw = _frame_mean(rw_best)
    best: dict[str, tuple[float, int]] = {}
    for i, template in enumerate(templates):
        if np.isfinite(rw[i]) and (template not in best or rw[i] < best[template][0]):
            best[template] = (float(rw[i]), i)
    ranked = sorted(best.items(), key=lambda item: item[1][0])  # stable: ties keep order
    return [(template, value, index) for template, (value, index) in ranked]


def rw_per_template_chart(path: Path, best: Sequence[tuple[str, float]]) -> Path:
    """``screen_rw_per_template.png``: one horizontal bar per ``(label, Rw)`` of ``best``
    (best first, as :func:`template_best` gives them), the first :data:`MAX_TEMPLATES`
    drawn, the best at the top."""
    plt = plots._pyplot()
    shown = list(best[:MAX_TEMPLATES])
    labels = [label for label, _ in shown]
    values = np.array([value for _, value in shown], float)
    y = np.arange(len(shown))
    fig, ax = plt.subplots(figsize=(8.0, max(2.4, 1.3 + 0.22 * len(shown))),
                           constrained_layout=True)
    colours = ["C3" if k == 0 else "C0" for k in range(len(shown))]
    ax.barh(y, values, height=0.7, color=colours)
    for k, value in enumerate(values):
        ax.text(value, k, f" {value:.3f}", va="center", fontsize=7)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_ylim(len(shown) - 0.5, -0.5)  # the best at the top
    ax.set_xlim(0.0, 1.15 * float(values.max()) if values.size and values.max() > 0 else 1.0)
    ax.set_xlabel("best Rw of the template's candidates (lower is better)")
    what = (f"all {len(best)} templates" if len(best) <= MAX_TEMPLATES else
            f"the best {len(shown)} of {len(best)} templates")
    ax.set_title(f"Best Rw per template: {what}", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def top_fits_figure(path: Path, curves: Sequence[Curve], frame_name: str) -> Path:
    """``screen_top_fits.png``: the data and each curve, with its difference curve below
    (:func:`.plots.best_fit`). Every curve must be on the same r grid: the first frame's."""
    _, r, g_obs, _, _ = curves[0]
    for label, r_k, g_k, _, _ in curves[1:]:
        if not (np.array_equal(r_k, r) and np.array_equal(g_k, g_obs)):
            raise ValueError(f"the curve of {label} is not on the data of the first curve: "
                             "the top fits are drawn against one frame")
    return plots.best_fit(path, r, g_obs, [(label, g_calc, rw) for label, _, _, g_calc, rw
                                           in curves],
                          title=f"The best motifs of the top {len(curves)} candidates, fitted "
                                f"to {frame_name}")


def write_screen_report(out_dir: Path, screen_file, order: np.ndarray,
                        curves: list[Curve], extractions: list[Path],
                        notes: list[str]) -> Path:
    """Write ``out_dir/report.html`` and its two figures (see the module notes).

    Parameters
    ----------
    out_dir : Path
        The screen's output folder (``screen.csv`` and the extraction folders in it).
    screen_file : ScreenFile
        The finished ``screen.h5``, open for reading.
    order : ndarray of int
        Candidate indices, best first (``pipeline.screen.ranking``).
    curves : list of (label, r, G_obs, G_calc, Rw)
        The best motifs of the top candidates fitted to the first frame, best first.
    extractions : list of Path
        The ``extract_k`` folders, k = 1, 2, ...: the extraction of the k-th candidate of
        ``order``; each is linked to its ``report.html`` when it exists.
    notes : list of str
        Lines for the header, as text (escaped here).
    """
    out_dir = Path(out_dir)
    path = out_dir / REPORT
    cands = screen_file.candidates()
    scores = screen_file.scores()
    skipped = screen_file.skipped()
    names = screen_file.frame_names()
    order = np.asarray(order, dtype=np.int64)
    rw_best, rw_whole = _frame_mean(scores["rw_best"]), _frame_mean(scores["rw_whole"])
    labels = _template_labels(cands["template"])

    parts = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
             f"<title>mlmotex-hpc screen: {esc(out_dir.name)}</title>"
             f"<style>{STYLE}</style></head><body>",
             f'<h1>mlmotex-hpc screen</h1><p class="sub">{esc(out_dir)} — mlmotex-hpc '
             f"{esc(__version__)}, written {time.strftime('%Y-%m-%d %H:%M')}</p>",
             "<h2>Summary</h2>",
             _summary(cands, scores, skipped, names, order, rw_best, rw_whole, labels)]
    if notes:
        parts.append("<ul>" + "".join(f"<li>{esc(line)}</li>" for line in notes) + "</ul>")

    parts.append("<h2>Ranking</h2>")
    parts.append(_ranking(cands, scores, order, rw_best, rw_whole, len(names), labels))

    parts.append("<h2>Best Rw per template</h2>")
    best = template_best(cands["template"], scores["rw_best"])
    n_templates = len(dict.fromkeys(cands["template"]))
    if best:
        chart = rw_per_template_chart(out_dir / RW_CHART,
                                      [(labels[t], value) for t, value, _ in best])
        cut = (f" The best {MAX_TEMPLATES} of {len(best)} templates are drawn; screen.csv "
               "holds the others." if len(best) > MAX_TEMPLATES else "")
        unscored = n_templates - len(best)
        parts.append(figure(chart, "The lowest Rw among each template's candidates, best "
                                   "first (red: the best)." + cut
                            + (f" {unscored} template(s) with candidates not yet scored are "
                               "not drawn." if unscored else "")))
    else:
        parts.append("<p>No candidate has been scored: there is nothing to draw.</p>")

    parts.append("<h2>The top fits</h2>")
    if curves:
        fits = top_fits_figure(out_dir / TOP_FITS, curves, names[0] if names else "the data")
        parts.append(figure(fits, f"The data ({names[0] if names else ''}) and the best motif "
                                  "of each top candidate, fitted again with the screen's "
                                  "fitter, with the difference curves below."))
    else:
        parts.append("<p>No curve was computed.</p>")

    parts.append("<h2>Templates skipped, or cuts of them left out</h2>")
    if skipped:
        whole = _skipped_whole(skipped, cands)
        parts.append(f"<p>{whole} template(s) gave no candidate; "
                     f"{len(skipped) - whole} gave candidates with some cuts left out:</p>")
        parts.append(table(["template", "reason"],
                           [[_named(template, Path(template).name), esc(reason)]
                            for template, reason in skipped], left=2))
    else:
        parts.append("<p>None: every template gave candidates, from every cut.</p>")

    parts.append("<h2>Extractions</h2>")
    parts.append(_extractions(out_dir, extractions, cands, order, rw_best, labels))

    parts.append("<h2>Config</h2>")
    parts.append(f"<pre>{esc(screen_file.config_text)}</pre>")
    parts.append("<h2>Files</h2><ul>")
    parts.extend(f'<li><a href="{esc(quote(name))}">{esc(name)}</a></li>'
                 for name in (SCREEN_CSV, SCREEN_H5, RW_CHART, TOP_FITS)
                 if (out_dir / name).exists())
    parts.append("</ul></body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _skipped_whole(skipped, cands) -> int:
    """Of the templates listed as skipped, those that gave no candidate at all (the others
    had only some of their cuts left out)."""
    used = set(cands["template"])
    return sum(1 for template, _ in skipped if template not in used)


def _summary(cands, scores, skipped, names, order, rw_best, rw_whole, labels) -> str:
    n_cands = len(cands["template"])
    n_templates = len(dict.fromkeys(cands["template"]))
    copies = sum(len(c) for c in cands["copies"])
    whole = _skipped_whole(skipped, cands)
    data = (", ".join(names) if len(names) <= 6 else
            f"{len(names)} frames: {names[0]} … {names[-1]}")
    counted = (f"{n_cands} distinct clusters from {n_templates} template(s)"
               + (f" ({copies} more cuts gave a cluster already listed)" if copies else "")
               + f"; {whole} template(s) skipped, {len(skipped) - whole} with cuts left out")
    not_done = int((~scores["done"]).sum())
    if not_done:
        counted += f"; {not_done} candidate(s) not scored"
    rows = [["data", esc(data)], ["candidates", esc(counted)],
            ["fits", esc(f"{int(scores['fits'].sum()):,} (motif × frame)")]]
    if order.size and np.isfinite(rw_best[order[0]]):
        i = int(order[0])
        rows.append(["best", esc(
            f"{labels[cands['template'][i]]} {_where(cands, i)} ({cands['formula'][i]}): "
            f"Rw {rw_best[i]:.4f} with {int(scores['best_size'][0, i])} of "
            f"{int(cands['permuted'][i])} permuted atoms; the whole cluster "
            f"{num(rw_whole[i])}")])
    return table(None, rows, left=2)


def _ranking(cands, scores, order, rw_best, rw_whole, n_frames, labels) -> str:
    shown = order[:TOP_ROWS]
    rows = []
    for rank, i in enumerate(shown, start=1):
        radius = cands["radius"][i]
        rows.append([str(rank), _named(cands["template"][i], labels[cands["template"][i]]),
                     esc(cands["centre"][i] or "whole file"),
                     num(radius, "g"), str(int(cands["atoms"][i])), esc(cands["formula"][i]),
                     num(rw_whole[i]), num(rw_best[i]),
                     f"{int(scores['best_size'][0, i])} / {int(cands['permuted'][i])}"])
    means = "" if n_frames == 1 else f", means over the {n_frames} frames"
    size = "" if n_frames == 1 else " (its size on the first frame)"
    which = (f"All {order.size} candidates" if len(shown) == order.size else
             f"The {len(shown)} best of {order.size} candidates")
    return (f"<p>{which}, by the lowest Rw their probe found (Rw best{means}); Rw whole: "
            f"the whole cluster's; best motif{size}: "
            "its permutable atoms kept / the candidate's. Every candidate and the skipped "
            f'templates: <a href="{esc(quote(SCREEN_CSV))}">{esc(SCREEN_CSV)}</a>.</p>'
            + table(["rank", "template", "centre", "radius (Å)", "atoms", "formula",
                     "Rw whole", "Rw best", "best motif"], rows, left=3))


def _extractions(out_dir: Path, extractions: Sequence[Path], cands, order, rw_best,
                 labels) -> str:
    if not extractions:
        return "<p>None asked for (screen.extract: 0).</p>"
    rows = []
    for k, folder in enumerate(extractions, start=1):
        folder = Path(folder)
        report = folder / REPORT
        if report.exists():
            href = quote(Path(os.path.relpath(report, out_dir)).as_posix())
            link = f'<a href="{esc(href)}">{esc(folder.name)}/{REPORT}</a>'
        else:
            link = f"{esc(folder.name)}: not made"
        what = ""
        if k <= order.size:
            i = int(order[k - 1])
            what = esc(f"#{k}: {labels[cands['template'][i]]} {_where(cands, i)}, Rw best "
                       f"{num(rw_best[i])}")
        rows.append([esc(folder.name), what, link])
    return ("<p>The whole pipeline on each of the best candidates, grown by the margin "
            "(see the notes), in its own folder:</p>"
            + table(["folder", "candidate", "report"], rows, left=3))


def _where(cands, i: int) -> str:
    """A candidate's centre and radius, as text."""
    if not cands["centre"][i]:
        return "(whole file)"
    return f"{cands['centre'][i]}, {cands['radius'][i]:g} Å"


def _named(template: str, shown: str) -> str:
    """A template's short name, its full path on hover."""
    return f'<span title="{esc(template)}">{esc(shown)}</span>'


def _template_labels(templates: Sequence[str]) -> dict[str, str]:
    """Each template's file name; with its folder's name where two folders hold a file of
    the same name."""
    paths = {t: Path(t) for t in dict.fromkeys(templates)}
    counts: dict[str, int] = {}
    for p in paths.values():
        counts[p.name] = counts.get(p.name, 0) + 1
    return {t: p.name if counts[p.name] == 1 else f"{p.parent.name}/{p.name}"
            for t, p in paths.items()}


def _frame_mean(values: np.ndarray) -> np.ndarray:
    """Each candidate's mean over the frames (axis 0), NaN ignored: NaN when it has no
    finite value (not scored)."""
    values = np.atleast_2d(np.asarray(values, float))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice": meant
        return np.nanmean(values, axis=0)
