"""Screening's first parts (issue 29): candidates cut from a folder of crystals, the radius
read from the data, and each candidate's probe. Checked against the shipped database's
known answers: the α-Keggin data picks a Keggin salt, and the late Fe₂O₃ frame picks an iron
oxide."""

from __future__ import annotations

import dataclasses
import math

import h5py
import numpy as np
import pytest

from mlmotex_hpc.candidates import (
    Candidate,
    Recutter,
    auto_radii,
    auto_radius,
    centre_sites,
    grown,
    heaviest_element,
    template_candidates,
    template_files,
    unique_candidates,
)
from mlmotex_hpc.catalogue import MotifSpace
from mlmotex_hpc.config import Cut, load_config, pdf_settings
from mlmotex_hpc.errors import InputError
from mlmotex_hpc.fit.batch import Frame, fit_plan
from mlmotex_hpc.fit.fast import BatchFitter
from mlmotex_hpc.fit.fitter import fit_motif
from mlmotex_hpc.fit.screening import ProbePlan, score_candidate
from mlmotex_hpc.io.pdfdata import read_pdf_data
from mlmotex_hpc.io.structure import cut_crystal, read_crystal
from mlmotex_hpc.pdf import make_calculator

from .conftest import EXAMPLES, KEGGIN_GR, KEGGIN_XYZ, ROOT

CIF = EXAMPLES / "cif"
KEGGIN_SALTS = {"ICSD_109725.cif", "ICSD_110294.cif", "ICSD_166876.cif", "ICSD_710064.cif"}
FE2O3_150 = EXAMPLES / "fe2o3_insitu" / "frames" / "Fe2O3_3204M_150.gr"


def test_template_files_take_files_globs_and_folders(tmp_path):
    folder = template_files([CIF])
    assert len(folder) == 24 and folder == sorted(folder)
    assert template_files(["ICSD_26*.cif", "ICSD_26410.cif"], base=CIF) == [
        (CIF / "ICSD_26410.cif").resolve()]
    both = template_files([KEGGIN_XYZ, CIF / "ICSD_15840.cif"])  # sorted by path
    assert [p.name for p in both] == ["ICSD_15840.cif", "109725.xyz"]
    for spec in ("nothing_here/*.cif", str(tmp_path)):
        with pytest.raises(InputError, match="names no structure file"):
            template_files([spec])


def test_centres_are_the_distinct_sites_of_permuted_and_heavy_elements():
    salt = read_crystal(CIF / "ICSD_110294.cif").cell
    centres = centre_sites(salt, ("W",))
    assert centres[:6] == ["W1", "W2", "W3", "W4", "W5", "W6"] and "V1" in centres
    assert not any("_" in c for c in centres)  # symmetry copies are not centres again
    assert not {"O1", "C1", "N1", "H1"} & set(centres)  # light atoms are not centres
    hematite = read_crystal(CIF / "ICSD_15840.cif").cell
    assert centre_sites(hematite, ("Fe",)) == ["Fe1"]
    assert heaviest_element(salt.elements) == "W"


def test_every_template_of_the_database_gives_candidates_or_a_reason():
    """All 24 shipped CIFs are read (the three magnetites of origin choice 2 too); the two
    Keggin salts with split or coinciding sites are skipped, each with its reason."""
    made, skipped = {}, {}
    for path in template_files([CIF]):
        cands, skip = template_candidates(path, [6.0], None, 1e-3)
        if skip is not None:
            skipped[path.name] = skip.reason
        else:
            made[path.name] = cands
    assert set(skipped) == {"ICSD_166876.cif", "ICSD_710064.cif"}, skipped
    assert "0.242 Å apart" in skipped["ICSD_710064.cif"]
    for code in ("26410", "49549", "50567"):
        assert [c.centre for c in made[f"ICSD_{code}.cif"]] == ["Fe1", "Fe2"]
    salt = {c.centre: c for c in made["ICSD_110294.cif"]}
    cage = salt["V1"].structure  # one W12O40 around its V, H left out
    assert (cage.elements.count("W"), cage.elements.count("V"), "H" in cage.elements) == \
        (12, 1, False)
    assert salt["V1"].formula.startswith("W12VO40")
    # a cluster template is one candidate as it is
    (cluster,), none = template_candidates(KEGGIN_XYZ, [6.0], None, 1e-3)
    assert none is None and math.isnan(cluster.radius) and len(cluster.structure) == 104
    # no permuted element: skipped with its reason
    _, skip = template_candidates(CIF / "ICSD_15840.cif", [6.0], ("W",), 1e-3)
    assert "holds none of the permuted elements W" in skip.reason


def test_the_same_cluster_is_fitted_once():
    """Two centres whose spheres hold the same cluster up to symmetry or translation give
    one candidate; the other is listed as its copy. A translated or rotated copy of a
    cluster is the same; a strained one is not."""
    path = CIF / "ICSD_35000.cif"
    cands, _ = template_candidates(path, [5.5], None, 1e-3)
    unique = unique_candidates(cands)
    assert len(unique) == len(cands) - 1
    (kept,) = [c for c in unique if c.copies]
    assert (kept.centre, kept.copies) == ("Fe5", ["ICSD_35000.cif:Fe6:5.5"])
    base = cands[0]
    theta = 0.7
    rot = np.array([[math.cos(theta), -math.sin(theta), 0], [math.sin(theta),
                    math.cos(theta), 0], [0, 0, 1]])
    moved = dataclasses.replace(base.structure, xyz=base.structure.xyz @ rot.T + 3.0)
    strained = dataclasses.replace(base.structure, xyz=base.structure.xyz * 1.01)
    others = [Candidate(path, "moved", 5.5, moved), Candidate(path, "strained", 5.5, strained)]
    assert [c.centre for c in unique_candidates([base] + others)] == [base.centre, "strained"]


@pytest.mark.parametrize("radius", [4.0, 6.0, 8.0])
def test_auto_radius_finds_the_size_of_a_computed_cluster(radius):
    """G(r) of a sphere of a crystal (hematite, computed here on 0-30 Å, 1 % noise):
    the signal's end errs small (a sphere's few pairs near its diameter sink below the
    noise first: 6.4 Å for 8 Å), and the three radii of ``auto`` bracket the true one."""
    sphere = cut_crystal(read_crystal(CIF / "ICSD_15840.cif"),
                         Cut("sphere", (radius,), centre_atom="Fe1"))
    config = load_config(ROOT / "configs" / "keggin.yaml")
    r = np.arange(0.5, 30.0, 0.01)
    calc = make_calculator(sphere.elements, sphere.xyz, pdf_settings(config), r)
    g = calc.gr(calc.prepare(np.ones(len(sphere), bool)))
    g = g + np.random.default_rng(0).normal(0.0, 0.01 * np.abs(g).max(), g.size)
    found, how = auto_radius(r, g)
    assert 0.75 * radius <= found <= radius + 0.3, how
    radii, how = auto_radii(r, g)
    assert radii[0] == round(found, 2) and len(radii) == 3 and "radii" in how
    assert radii[0] <= radius + 0.3 and radii[-1] >= radius, (radius, radii)


def test_auto_radius_of_the_keggin_data_is_a_keggin_cage():
    """α-Keggin in solution: the W12O40 cage is about 10 Å across (O to O)."""
    data = read_pdf_data(KEGGIN_GR)
    radius, how = auto_radius(data.r, data.g)
    assert 4.0 <= radius <= 5.5, how


def _screen(data_path, config_name, radii):
    probe = ProbePlan(random=50, steps=5)
    config = load_config(ROOT / "configs" / config_name)
    data = read_pdf_data(data_path)
    sl = data.fit_range(config.fit.rmin, config.fit.rmax)
    frames = [Frame(data_path.name, data.r[sl], data.g[sl], None)]
    cands = []
    for path in template_files([CIF]):
        cands += template_candidates(path, radii, None, 1e-3)[0]
    rows = []
    for cand in unique_candidates(cands):
        permute = (heaviest_element(cand.structure.elements),)
        score = score_candidate(cand.structure, frames, fit_plan(config, cand.structure),
                                permute, config.bond_threshold, probe)
        rows.append((score.rank_rw, cand.template.name, cand, score))
    return sorted(rows, key=lambda row: row[0])


def _cage_w(structure, centre):
    """The W of the Keggin cage around ``centre`` (the W within 4 Å of it)."""
    w = np.array([x for x, el in zip(structure.xyz, structure.elements, strict=True)
                  if el == "W"])
    return w[np.linalg.norm(w - centre, axis=1) < 4.0]


def test_an_extraction_model_holds_the_motif_its_candidate_cut_off():
    """A sphere of 6.5 Å around W5 of ICSD 110294 holds 11 of its cage's 12 W: the probe
    can rank it first, but an extraction from it cannot answer the whole cage. Grown by the
    data's radius (4.5 Å), the model holds the whole cage and more; a margin of 0, or a
    cluster template, gives the candidate as probed."""
    path = CIF / "ICSD_110294.cif"
    cands, skipped = template_candidates(path, [6.5], ["W"], 1e-3)
    assert skipped is None
    cand = next(c for c in cands if c.centre == "W5")
    vanadium = [x for x, el in zip(cand.structure.xyz, cand.structure.elements, strict=True)
                if el == "V"]
    assert len(vanadium) == 1
    assert len(_cage_w(cand.structure, vanadium[0])) == 11
    model, what = grown(cand, 4.5, ["W"], 1e-3)
    assert len(_cage_w(model, vanadium[0])) == 12
    assert model.elements.count("W") > 12
    assert "grown by 4.5 Å: a 11 Å sphere around W5" in what
    # every atom of the candidate is in the grown model, at the same place
    nearest = np.min(np.linalg.norm(cand.structure.xyz[:, None] - model.xyz[None], axis=2),
                     axis=1)
    assert nearest.max() < 1e-6
    assert grown(cand, 0.0, ["W"], 1e-3)[0] is cand.structure
    assert "too many atoms" not in what
    huge, why = grown(cand, 40.0, ["W"], 1e-3)
    assert huge is cand.structure and "as probed" in why and "atoms, more than" in why
    xyz, = template_candidates(KEGGIN_XYZ, [6.5], ["W"], 1e-3)[0]
    assert grown(xyz, 4.5, ["W"], 1e-3)[0] is xyz.structure


def test_a_cluster_keeps_only_the_atoms_a_motif_can_hold():
    """With the bond threshold, a crystal's cluster keeps the permuted atoms and the atoms
    bonded to one; the rest (cations, water, the cage's heteroatom) are in no motif, so
    every fit is the same without them. A Keggin salt with disordered cations far from
    its cage (ICSD 166876) is then screened, not skipped."""
    cif = CIF / "ICSD_110294.cif"
    every = template_candidates(cif, [6.5], ["W"], 1e-3)[0]
    trimmed = template_candidates(cif, [6.5], ["W"], 1e-3, bond_threshold=2.6)[0]
    assert [c.name for c in every] == [c.name for c in trimmed]
    base = load_config(ROOT / "configs" / "keggin.yaml")
    data = read_pdf_data(KEGGIN_GR)
    sl = data.fit_range(base.fit.rmin, base.fit.rmax)
    frames = [Frame("keggin", data.r[sl], data.g[sl], None)]
    probe = ProbePlan(random=30, starts=1, steps=3)
    for full, kept in list(zip(every, trimmed, strict=True))[:3]:
        assert set(full.structure.elements) > set(kept.structure.elements) == {"W", "O"}
        w = kept.structure.xyz[[el == "W" for el in kept.structure.elements]]
        for x, el in zip(kept.structure.xyz, kept.structure.elements, strict=True):
            assert el == "W" or np.linalg.norm(w - x, axis=1).min() <= 2.6
        a, b = (score_candidate(c.structure, frames, fit_plan(base, c.structure), ("W",), 2.6,
                                probe) for c in (full, kept))
        assert np.array_equal(a.best_mask, b.best_mask)
        np.testing.assert_allclose(b.rw_whole, a.rw_whole, rtol=1e-9)
        np.testing.assert_allclose(b.rw_best, a.rw_best, rtol=1e-9)
    cands, skipped = template_candidates(CIF / "ICSD_166876.cif", [6.5], ["W"], 1e-3,
                                         bond_threshold=2.6)
    assert cands and all(set(c.structure.elements) == {"W", "O"} for c in cands)
    assert skipped is None or "cuts left out, the first" in skipped.reason
    assert template_candidates(CIF / "ICSD_166876.cif", [6.5], ["W"], 1e-3)[0] == []


def test_a_reference_is_cut_again_atom_for_atom():
    """The ranks are sent references, not clusters: each cluster cut again from its
    template (a crystal at any centre and radius, a cluster file whole) is the one first
    cut, atom for atom, whichever order the references come in."""
    cands = []
    for name in ("ICSD_110294.cif", "ICSD_26410.cif", "ICSD_15840.cif", "ICSD_35643.cif",
                 "ICSD_166876.cif"):
        cands += template_candidates(CIF / name, [4.5, 6.5], None, 1e-3,
                                     bond_threshold=2.6)[0]
    cands += template_candidates(KEGGIN_XYZ, [4.5], None, 1e-3)[0]
    assert len({c.template for c in cands}) > Recutter.KEEP  # the cache is cycled
    recut = Recutter(1e-3, bond_threshold=2.6)
    for cand in cands[::-1] + cands:
        ref = cand.reference()
        assert ref.structure is None and ref.permute == cand.permute
        again = recut(ref)
        assert again.elements == cand.structure.elements
        assert np.array_equal(again.xyz, cand.structure.xyz)


@pytest.mark.slow
def test_the_keggin_data_picks_a_keggin_salt():
    """The database's first known answer: for the α-Keggin data, clusters cut from the
    Keggin salts fit far better than any iron-oxide cluster."""
    rows = _screen(KEGGIN_GR, "keggin.yaml", [6.5])
    top = [name for _, name, _, _ in rows[:5]]
    assert all(name in KEGGIN_SALTS for name in top), top
    best_oxide = min(rw for rw, name, _, _ in rows if name not in KEGGIN_SALTS)
    assert rows[0][0] < best_oxide - 0.2, (rows[0][0], best_oxide)
    rw, _, cand, score = rows[0]
    assert rw < 0.42 and score.rw_best[0] <= score.rw_whole[0]
    assert cand.structure.elements.count("W") >= 11


@pytest.mark.slow
def test_the_late_fe2o3_frame_picks_an_iron_oxide():
    """The second known answer: frame 150 of the Fe₂O₃ series is a spinel-type iron oxide,
    so iron oxides lead and no tungstate is near the top."""
    rows = _screen(FE2O3_150, "fe2o3_insitu.yaml", [6.0])
    top = [name for _, name, _, _ in rows[:10]]
    assert not set(top) & KEGGIN_SALTS, top
    spinels = {f"ICSD_{c}.cif" for c in ("26410", "49549", "50567", "50271", "50272",
                                         "50273", "35643", "27189", "27190", "27247",
                                         "35000", "35001", "35002", "35003")}
    assert rows[0][1] in spinels, top


def test_a_probe_reports_real_fits():
    """The whole cluster's Rw is the run's fitter's for the whole cluster, and the best
    motif's Rw is what a fit of that motif gives."""
    cage = cut_crystal(read_crystal(CIF / "ICSD_110294.cif"),
                       Cut("sphere", (6.0,), centre_atom="V1", elements=("W", "O", "V")))
    config = load_config(ROOT / "configs" / "keggin.yaml")
    data = read_pdf_data(KEGGIN_GR)
    sl = data.fit_range(config.fit.rmin, config.fit.rmax)
    frames = [Frame("keggin", data.r[sl], data.g[sl], None)]
    plan = fit_plan(config, cage)
    score = score_candidate(cage, frames, plan, ("W",), config.bond_threshold,
                            ProbePlan(random=40, steps=5))
    assert score.n_permutable == 12 and score.fits > 12
    calc = make_calculator(cage.elements, cage.xyz, plan.pdf, data.r[sl])
    space = MotifSpace.from_structure(cage, ("W",), config.bond_threshold)
    whole_and_best = space.atom_masks(np.vstack([np.ones((1, 12), bool), score.best_mask]))
    rw = BatchFitter(calc, plan.fit, data.g[sl][None]).fit(whole_and_best)["rw"][0]
    assert rw[0] == score.rw_whole[0] and rw[1] == score.rw_best[0]
    assert score.rw_best[0] < score.rw_whole[0]
    # the general fitter (SciPy from a few start zooms) agrees or finds a worse minimum
    general = fit_motif(calc, calc.prepare(whole_and_best[1]), data.g[sl], plan.fit, None,
                        plan.base_uiso)
    assert general.rw >= score.rw_best[0] - 1e-4


@pytest.mark.slow
def test_the_moox_data_picks_the_decamolybdate_and_its_seven_mo():
    """MoOx (the paper's settings, Uiso free) against the four molybdate models: the shipped
    Mo36 model's best sub-motifs stay above Rw 0.5, and the decamolybdate ranks first with
    a motif of 5-7 Mo at Rw <= 0.49. The exhaustive run over its 10 Mo finds 7 Mo at Rw
    0.485 (examples/NOTICE.md); the paper reports 5-7 Mo at about 0.45."""
    config = load_config(ROOT / "configs" / "moox.yaml")
    assert "uiso" in config.fit.refine
    data = read_pdf_data(config.data[0])
    sl = data.fit_range(config.fit.rmin, config.fit.rmax)
    frames = [Frame("moox", data.r[sl], data.g[sl], None)]
    moox = EXAMPLES / "moox"
    rows = []
    for path in template_files([moox / "Mo36_Krebs_newest.xyz", moox / "candidates"]):
        (cand,), _ = template_candidates(path, [0.0], ("Mo",), 1e-3)
        score = score_candidate(cand.structure, frames, fit_plan(config, cand.structure),
                                ("Mo",), config.bond_threshold,
                                ProbePlan(random=300, starts=4, steps=40))
        rows.append((score.rank_rw, path.name, int(score.best_size[0])))
    rows.sort()
    assert rows[0][1] == "decamolybdate.xyz", rows
    assert rows[0][0] <= 0.49 and 5 <= rows[0][2] <= 7, rows
    assert dict((name, rw) for rw, name, _ in rows)["Mo36_Krebs_newest.xyz"] > 0.5, rows


def test_a_screen_config_is_read_and_each_candidate_gets_a_run_config(tmp_path):
    from mlmotex_hpc.config import candidate_config, parse_screen_config

    text = (f"templates: [{CIF}, {KEGGIN_XYZ}]\n"
            f"data: {KEGGIN_GR}\n"
            "pdf: {qmin: 0.7, qmax: 20.0, qdamp: 0.05, qbroad: 0.01, uiso: {W: 0.00507}}\n"
            "fit: {rmin: 1.6, rmax: 10.0}\n"
            "screen: {radii: [6.5, 5.5], random: 50, extract: 1}\n")
    sc = parse_screen_config(text, tmp_path)
    assert sc.templates == (str(CIF), str(KEGGIN_XYZ)) and sc.data == (KEGGIN_GR,)
    assert sc.screen.radii == (5.5, 6.5) and sc.screen.extract == 1 and sc.permute is None
    assert sc.output.dir == (tmp_path / "out").resolve()
    auto = parse_screen_config(text.replace("[6.5, 5.5]", "auto"), tmp_path)
    assert auto.screen.radii is None and auto.screen.grow is None
    assert parse_screen_config(text.replace("extract: 1", "extract: 1, grow: 2"),
                               tmp_path).screen.grow == 2.0
    cage = cut_crystal(read_crystal(CIF / "ICSD_110294.cif"),
                       Cut("sphere", (6.0,), centre_atom="V1", elements=("W", "O", "V")))
    config = candidate_config(sc, KEGGIN_XYZ, ("W",))
    plan = fit_plan(config, cage)
    assert plan.pdf.qmax == 20.0 and plan.fit.refine == ("scale", "zoom")
    for bad, words in [("screen: {radii: [6.5, 5.5]", "screen: {radii: [-1]"),
                       ("templates: [", "structure: x.xyz\ntemplates: ["),
                       ("screen: {", "screen: {sizes: 3, "),
                       ("extract: 1", "extract: 1, grow: -1"),
                       ("extract: 1", "extract: 1, grow: big")]:
        with pytest.raises(InputError) as err:
            parse_screen_config(text.replace(bad, words), tmp_path)
        assert "\n" not in str(err.value)


def test_the_screen_file_holds_candidates_scores_and_skipped_templates(tmp_path):
    """screen.h5 (store/screenfile.py): written as candidates are scored, reopened for a
    resume with the done ones marked, every dataset described by its layout, and the
    generated reference is docs/screen-h5.md."""
    from mlmotex_hpc.store import ScreenFile
    from mlmotex_hpc.store.screen_layout import reference, undescribed

    cands, skipped = [], []
    for path in (CIF / "ICSD_110294.cif", CIF / "ICSD_15840.cif", CIF / "ICSD_710064.cif"):
        made, skip = template_candidates(path, [6.0], None, 1e-3)
        cands += made
        skipped += [(str(skip.template), skip.reason)] if skip else []
    cands = unique_candidates(cands)
    rows = [{"template": str(c.template), "centre": c.centre, "radius": c.radius,
             "atoms": len(c.structure), "formula": c.formula, "copies": c.copies,
             "permuted": c.structure.elements.count(heaviest_element(c.structure.elements))}
            for c in cands]
    path = tmp_path / "screen.h5"
    screen = ScreenFile.create(path, config_text="templates: x\n", frame_names=["a.gr"],
                               candidates=rows, skipped=skipped,
                               max_permuted=max(r["permuted"] for r in rows))
    mask = np.zeros(rows[1]["permuted"], bool)
    mask[[0, 3, 4]] = True
    screen.write_score(1, rw_whole=np.array([0.5]), rw_best=np.array([0.4]),
                       best_mask=mask[None], fits=123)
    screen.close()
    with ScreenFile.read(path, "r+") as again:
        done = again.done()
        assert done.tolist() == [False, True] + [False] * (len(rows) - 2)
        scores = again.scores()
        assert scores["rw_best"][0, 1] == 0.4 and np.isnan(scores["rw_best"][0, 0])
        assert scores["best_size"][0, 1] == 3 and scores["fits"][1] == 123
        assert np.flatnonzero(scores["best_mask"][0, 1]).tolist() == [0, 3, 4]
        assert again.candidates()["centre"][0] == rows[0]["centre"]
        assert again.skipped()[0][0].endswith("ICSD_710064.cif")
        assert again.frame_names() == ["a.gr"] and not again.complete
        assert undescribed(again.file) == []
    assert (ROOT / "docs" / "screen-h5.md").read_text() == reference()
    with h5py.File(tmp_path / "other.h5", "w") as f:  # an HDF5 file that is no screen
        f.attrs["kind"] = "run"
    with pytest.raises(InputError, match="is not the screen.h5"):
        ScreenFile.read(tmp_path / "other.h5")
