"""A screen's report page (issue 29): the best motifs' curves fitted again as the probe
fitted them, and report.html written from a real small screen of the Keggin data (a Keggin
salt, hematite and a template that is skipped), without MPI."""

from __future__ import annotations

import html
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from mlmotex_hpc.candidates import heaviest_element, template_candidates, unique_candidates
from mlmotex_hpc.config import load_config
from mlmotex_hpc.fit.batch import Frame, fit_plan
from mlmotex_hpc.fit.fitter import rw as rw_of
from mlmotex_hpc.fit.screening import ProbePlan, best_curve, score_candidate
from mlmotex_hpc.io.pdfdata import read_pdf_data
from mlmotex_hpc.output.screen_report import (
    MAX_TEMPLATES,
    RW_CHART,
    TOP_FITS,
    TOP_ROWS,
    template_best,
    write_screen_report,
)
from mlmotex_hpc.store import ScreenFile

from .conftest import EXAMPLES, KEGGIN_GR, ROOT

CIF = EXAMPLES / "cif"
TEMPLATES = ("ICSD_110294.cif", "ICSD_15840.cif", "ICSD_710064.cif")  # the last is skipped
#: A skipped template whose name and reason need escaping.
ODD = ("/data/odd <x> & 'y'.cif", 'holds none of the permuted elements W (it has "<Fe>" & O)')
CONFIG_TEXT = "templates: [cif/*.cif]  # <all> & more\nscreen: {radii: [6.0]}\n"


class _Page(HTMLParser):
    """The tables (rows of cell texts, entities decoded) and the links of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.links: list[str] = []
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "a":
            self.links.append(dict(attrs)["href"])

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def table(self, first_header: str) -> list[list[str]]:
        (found,) = [t for t in self.tables if t and t[0] and t[0][0] == first_header]
        return found


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    """The screen, scored and stored in screen.h5 as the pipeline stores it: the folder,
    the candidates, the scores in the probe's own hands, the frame and the config."""
    out = tmp_path_factory.mktemp("screen")
    config = load_config(ROOT / "configs" / "keggin.yaml")
    data = read_pdf_data(KEGGIN_GR)
    sl = data.fit_range(config.fit.rmin, config.fit.rmax)
    frame = Frame(KEGGIN_GR.name, data.r[sl], data.g[sl], None)
    cands, skipped = [], []
    for name in TEMPLATES:
        made, skip = template_candidates(CIF / name, [6.0], None, 1e-3)
        cands += made
        skipped += [(str(skip.template), skip.reason)] if skip else []
    skipped.append(ODD)
    cands = unique_candidates(cands)
    rows, scores = [], []
    for cand in cands:
        permute = (heaviest_element(cand.structure.elements),)
        scores.append(score_candidate(cand.structure, [frame], fit_plan(config, cand.structure),
                                      permute, config.bond_threshold,
                                      ProbePlan(random=20, starts=1, steps=2)))
        rows.append({"template": str(cand.template), "centre": cand.centre,
                     "radius": cand.radius, "atoms": len(cand.structure),
                     "formula": cand.formula, "copies": cand.copies,
                     "permuted": scores[-1].n_permutable})
    with ScreenFile.create(out / "screen.h5", config_text=CONFIG_TEXT,
                           frame_names=[frame.name], candidates=rows, skipped=skipped,
                           max_permuted=max(r["permuted"] for r in rows)) as file:
        for i, score in enumerate(scores):
            file.write_score(i, rw_whole=score.rw_whole, rw_best=score.rw_best,
                             best_mask=score.best_mask, fits=score.fits)
        file.mark_complete()
    return out, cands, scores, frame, config


def _ranked(rw_best: np.ndarray) -> np.ndarray:
    """Best first by the frame-mean Rw, ties by candidate order (as pipeline.screen)."""
    key = np.nanmean(rw_best, axis=0)
    return np.lexsort((np.arange(key.size), np.where(np.isfinite(key), key, np.inf)))


def test_a_best_motif_fitted_again_gives_the_probes_rw(screen):
    """best_curve refits the stored best motif (the stored row, padded to whole bytes) with
    the probe's own fitter: the Rw of the curve it returns is the Rw the probe stored, and
    the curve is on the frame's r grid. The same with Uiso free (MoOx, RefiningFitter)."""
    out, cands, _, frame, config = screen
    with ScreenFile.read(out / "screen.h5") as file:
        stored = file.scores()
    for i, cand in enumerate(cands):
        permute = (heaviest_element(cand.structure.elements),)
        g_calc, rw = best_curve(cand.structure, frame, fit_plan(config, cand.structure),
                                permute, config.bond_threshold, stored["best_mask"][0, i])
        assert g_calc.shape == frame.r.shape and np.any(g_calc)
        assert abs(rw - stored["rw_best"][0, i]) < 1e-9, cand.name
        assert rw == pytest.approx(rw_of(frame.g, g_calc))
    with pytest.raises(ValueError, match="permutable atoms"):
        mask = np.zeros(stored["best_mask"].shape[2], bool)
        mask[-1] = True  # beyond the candidate's permutable atoms
        best_curve(cands[0].structure, frame, fit_plan(config, cands[0].structure), ("W",),
                   config.bond_threshold, mask)

    moox = load_config(ROOT / "configs" / "moox.yaml")
    assert "uiso" in moox.fit.refine
    data = read_pdf_data(moox.data[0])
    sl = data.fit_range(moox.fit.rmin, moox.fit.rmax)
    moox_frame = Frame("moox", data.r[sl], data.g[sl], None)
    (cand,), _ = template_candidates(EXAMPLES / "moox" / "candidates" / "decamolybdate.xyz",
                                     [0.0], ("Mo",), 1e-3)
    plan = fit_plan(moox, cand.structure)
    score = score_candidate(cand.structure, [moox_frame], plan, ("Mo",), moox.bond_threshold,
                            ProbePlan(random=20, starts=1, steps=2))
    _, rw = best_curve(cand.structure, moox_frame, plan, ("Mo",), moox.bond_threshold,
                       score.best_mask[0])
    assert abs(rw - score.rw_best[0]) < 1e-9


def test_the_screen_report_ranks_draws_explains_and_links(screen):
    out, cands, scores, frame, config = screen
    extract_1, extract_2 = out / "extract_1", out / "extract_2"
    extract_1.mkdir(exist_ok=True)
    extract_2.mkdir(exist_ok=True)
    (extract_1 / "report.html").write_text("<html></html>")  # extract_2 made no report
    with ScreenFile.read(out / "screen.h5") as file:
        stored = file.scores()
        order = _ranked(stored["rw_best"])
        curves = []
        for i in order[:3]:
            cand = cands[i]
            g_calc, rw = best_curve(cand.structure, frame, fit_plan(config, cand.structure),
                                    (heaviest_element(cand.structure.elements),),
                                    config.bond_threshold, stored["best_mask"][0, i])
            curves.append((cand.name, frame.r, frame.g, g_calc, rw))
        notes = ["radii 6 Å (given)", "grown by 4.5 Å <margin>"]
        path = write_screen_report(out, file, order, curves, [extract_1, extract_2], notes)
    text = path.read_text(encoding="utf-8")
    page = _Page(text)
    assert path == out / "report.html" and "<h1>mlmotex-hpc screen</h1>" in text
    assert frame.name in text and html.escape(notes[1]) in text and "<margin>" not in text
    assert html.escape(CONFIG_TEXT) in text

    # the ranking: the best candidate first, its Rw as stored
    ranking = page.table("rank")
    header, first = ranking[0], ranking[1]
    assert len(ranking) - 1 == min(TOP_ROWS, len(cands))
    best = cands[order[0]]
    assert first[header.index("template")] == best.template.name
    assert first[header.index("centre")] == best.centre
    assert abs(float(first[header.index("Rw best")]) - stored["rw_best"][0, order[0]]) <= 5e-5
    assert first[header.index("best motif")] == \
        f"{stored['best_size'][0, order[0]]} / {scores[order[0]].n_permutable}"
    assert [row[0] for row in ranking[1:]] == [str(k) for k in range(1, len(ranking))]
    assert "screen.csv" in page.links
    # the Keggin data: the Keggin salt's best cluster beats every hematite cluster
    assert best.template.name == "ICSD_110294.cif"

    # the figures, beside the page and in it
    for name in (RW_CHART, TOP_FITS):
        png = (out / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 1000
        assert f'alt="{name}" src="data:image/png;base64,' in text

    # the skipped templates, every reason escaped
    with ScreenFile.read(out / "screen.h5") as file:
        reasons = file.skipped()
    assert [Path(t).name for t, _ in reasons] == ["ICSD_710064.cif", Path(ODD[0]).name]
    skipped = page.table("template")
    for template, reason in reasons:
        assert html.escape(reason) in text
        assert [Path(template).name, reason] in skipped[1:]
    assert '"<Fe>"' not in text and "odd <x>" not in text

    # the extractions: a link where a report was made, "not made" where not
    assert "extract_1/report.html" in page.links
    assert not any("extract_2" in link for link in page.links)
    extractions = page.table("folder")
    assert extractions[2][0] == "extract_2" and "not made" in extractions[2][2]
    assert extractions[1][1].startswith(f"#1: {best.template.name} {best.centre}")


def test_a_large_screen_charts_its_best_60_templates_and_says_so(tmp_path):
    """75 templates (two of them with the same file name in two folders), one frame: the
    chart draws the best 60, the page says so, the ranking shows 30 rows, and each
    template's best is its lowest Rw."""
    rng = np.random.default_rng(1)
    n = 75
    templates = [f"/db/b/t{k:02d}.cif" for k in range(n)]
    templates[0] = "/db/a/t01.cif"  # two folders, one file name
    rows = [{"template": t, "centre": "W1", "radius": 6.0, "atoms": 40, "formula": "W12O28",
             "copies": [], "permuted": 12} for t in templates]
    rows.append(dict(rows[5], centre="W2"))  # a second candidate of template 5
    rw = rng.uniform(0.3, 0.9, len(rows))
    rw[[0, 1, -1]] = 0.15, 0.16, 0.1  # template 5's second candidate is the best of all
    with ScreenFile.create(tmp_path / "screen.h5", config_text="x: 1\n", frame_names=["d.gr"],
                           candidates=rows, skipped=[], max_permuted=12) as file:
        for i, value in enumerate(rw):
            file.write_score(i, rw_whole=np.array([value + 0.1]), rw_best=np.array([value]),
                             best_mask=np.ones((1, 12), bool), fits=1)
    best = template_best([r["template"] for r in rows], rw[None])
    assert len(best) == n and best[0] == (templates[5], 0.1, len(rows) - 1)
    assert [b[1] for b in best] == sorted(b[1] for b in best)
    with ScreenFile.read(tmp_path / "screen.h5") as file:
        path = write_screen_report(tmp_path, file, _ranked(rw[None]), [], [], [])
    text = path.read_text(encoding="utf-8")
    page = _Page(text)
    assert f"The best {MAX_TEMPLATES} of {n} templates are drawn" in text
    assert (tmp_path / RW_CHART).stat().st_size > 0 and not (tmp_path / TOP_FITS).exists()
    ranking = page.table("rank")
    assert len(ranking) - 1 == TOP_ROWS
    assert [row[1] for row in ranking[1:4]] == ["t05.cif", "a/t01.cif", "b/t01.cif"]
    assert "None asked for" in text and "None: every template gave candidates" in text
