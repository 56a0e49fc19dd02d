"""The inputs users have: crystal files cut to clusters, data headers, Biso, fits tables.

Checked against the shipped CIFs and data: the maghemite CIF's 2×2×2 cells are the shipped
456-atom Fe₂O₃ model, a sphere around a Keggin salt's V is one W12O40 cage, a cut of a
triclinic cell equals a brute-force expansion, and a table of fits written from a run
gives that run's ACV when learned from again.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from diffpy.structure import loadStructure
from scipy.spatial import cKDTree

from mlmotex_hpc.config import CIF_TOLERANCE, Cut, parse_config
from mlmotex_hpc.errors import InputError
from mlmotex_hpc.io.defaults import with_file_defaults
from mlmotex_hpc.io.fitstable import write_fits_table
from mlmotex_hpc.io.structure import read_structure, read_xyz

from .conftest import EXAMPLES, KEGGIN_GR, KEGGIN_XYZ, ROOT, keggin_config, run_cli

CIF = EXAMPLES / "cif"
SHIPPED_FE2O3 = EXAMPLES / "fe2o3_insitu" / "35643-ICSD_222unitcell.xyz"
FE2O3_FRAME = EXAMPLES / "fe2o3_insitu" / "frames" / "Fe2O3_3204M_0.gr"


def _config(mapping: dict, base: Path):
    return parse_config(yaml.safe_dump(mapping), base)


# -- crystals and cuts -------------------------------------------------------------------------

def test_maghemite_supercell_is_the_shipped_model():
    cut = read_structure(CIF / "ICSD_35643.cif", Cut("cells", (2, 2, 2)), partial="keep")
    shipped = read_xyz(SHIPPED_FE2O3)
    assert len(cut) == len(shipped) == 456
    distance, match = cKDTree(shipped.xyz).query(cut.xyz)
    assert distance.max() < 1e-5  # the .xyz is written to 6 decimals
    assert len(set(match.tolist())) == len(shipped)  # one to one
    assert [shipped.elements[k] for k in match] == list(cut.elements)


def test_partial_occupancy_is_refused_with_the_way_out():
    with pytest.raises(InputError) as err:
        read_structure(CIF / "ICSD_35643.cif", Cut("cells", (1, 1, 1)))
    message = str(err.value)
    assert "\n" not in message and "Fe4" in message and "partial: keep" in message
    kept = read_structure(CIF / "ICSD_35643.cif", Cut("cells", (1, 1, 1)), partial="keep")
    sites = kept.partial_sites()
    assert [(s[0], s[3]) for s in sites] == [("Fe4", "Fe")]
    assert math.isclose(sites[0][1], 0.333)


@pytest.mark.parametrize("centre", ["atom", "fractional"])
def test_keggin_salt_sphere_is_one_cage(centre):
    from diffpy.structure import loadStructure

    crystal = loadStructure(str(CIF / "ICSD_110294.cif"), eps=CIF_TOLERANCE)
    v1 = next(a for a in crystal if a.label == "V1")
    cut = (Cut("sphere", (6.0,), centre_atom="V1", elements=("W", "O")) if centre == "atom"
           else Cut("sphere", (6.0,), centre=tuple(v1.xyz), elements=("W", "O")))
    cage = read_structure(CIF / "ICSD_110294.cif", cut)
    assert sorted(cage.elements) == sorted(["W"] * 12 + ["O"] * 40)
    # a Keggin cage: every W has O neighbours at ~1.7-2.4 Å and the 12 W sit ~3.5 Å from V
    w = cage.xyz[np.array(cage.elements) == "W"]
    centre_xyz = crystal.lattice.cartesian(v1.xyz)
    assert np.allclose(np.linalg.norm(w - centre_xyz, axis=1), 3.5, atol=0.15)


def _brute_force(path: Path, radius: float, centre_label: str, elements, reach: int = 3):
    """Every image, within ``reach`` cells, of every atom of the cell of ``elements``;
    then those within ``radius`` Å of the centre atom."""
    from diffpy.structure import loadStructure

    crystal = loadStructure(str(path), eps=CIF_TOLERANCE)
    base = np.array(crystal.lattice.base)
    keep = np.array([a.element.rstrip("+-0123456789") in elements for a in crystal])
    frac = np.array(crystal.xyz)[keep] % 1.0
    c = np.array(next(a for a in crystal if a.label == centre_label).xyz) @ base
    span = range(-reach, reach + 1)
    shifts = np.array([(i, j, k) for i in span for j in span for k in span])
    xyz = ((frac[None, :, :] + shifts[:, None, :]).reshape(-1, 3)) @ base
    return xyz[np.linalg.norm(xyz - c, axis=1) <= radius]


@pytest.mark.parametrize("radius", [5.0, 9.0])
def test_sphere_cut_of_a_triclinic_cell_equals_brute_force(radius):
    path = CIF / "ICSD_166876.cif"  # P-1, no angle 90°
    # 9 Å reaches past the cell's faces; C and N of the disordered cations are left out
    elements = ("P", "W", "O")
    cut = read_structure(path, Cut("sphere", (radius,), centre_atom="P1", elements=elements))
    expected = _brute_force(path, radius, "P1", elements)
    assert len(cut) == len(expected)
    distance, match = cKDTree(expected).query(cut.xyz)
    assert distance.max() < 1e-9 and len(set(match.tolist())) == len(expected)


def test_box_of_whole_cells_equals_cells():
    box = read_structure(CIF / "ICSD_15840.cif", Cut("cells", (2, 1, 1)))
    from diffpy.structure import loadStructure

    lattice = loadStructure(str(CIF / "ICSD_15840.cif")).lattice
    edges = (2 * lattice.a, lattice.b, lattice.c)
    centre = (1.0, 0.5, 0.5)
    other = read_structure(CIF / "ICSD_15840.cif", Cut("box", edges, centre=centre))
    assert len(box) == len(other)
    assert cKDTree(box.xyz).query(other.xyz)[0].max() < 1e-9


def test_hematite_cell_keeps_its_stoichiometry():
    """The default tolerance merges rounded copies of a site but no real sites."""
    cell = read_structure(CIF / "ICSD_15840.cif")
    assert (cell.elements.count("Fe"), cell.elements.count("O")) == (12, 18)


@pytest.mark.parametrize("code", ["26410", "49549", "50567"])
def test_magnetite_in_origin_choice_2_is_read_by_its_own_operators(code):
    """diffpy.structure 3.3.1 expands these Fd-3m (origin choice 2) CIFs as if they were
    origin choice 1 (two O 0.12 Å apart). Expanded by the operators the file lists
    (io/cif.py), the cell is spinel's: Fe24O32, every tetrahedral Fe with 4 O at the
    tetrahedral distance and every octahedral Fe with 6 at the octahedral one (a = 8.39 Å,
    u(O) = 0.255: 1.89 and 2.06 Å), no two O closer than 2.8 Å."""
    from scipy.spatial import cKDTree

    cell = read_structure(CIF / f"ICSD_{code}.cif")
    assert (cell.elements.count("Fe"), cell.elements.count("O")) == (24, 32)
    fe = np.array([e == "Fe" for e in cell.elements])
    lattice = np.array(loadStructure(str(CIF / f"ICSD_{code}.cif")).lattice.base)
    shifts = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)])
    oxygens = (cell.xyz[~fe][None] + (shifts @ lattice)[:, None]).reshape(-1, 3)
    tree = cKDTree(oxygens)
    counts = sorted(len(tree.query_ball_point(x, 2.2)) for x in cell.xyz[fe])
    assert counts == [4] * 8 + [6] * 16  # 8 tetrahedral and 16 octahedral Fe
    first = np.sort(tree.query(cell.xyz[fe], k=1)[0])
    assert 1.87 < first[0] <= first[7] < 1.91 and 2.04 < first[8] <= first[-1] < 2.08
    assert tree.query(cell.xyz[~fe], k=2)[0][:, 1].min() > 2.8


def test_a_cif_without_operators_is_expanded_by_its_symbol_or_read_as_p1(tmp_path):
    """No symmetry-operator loop: the space group's operators from its H-M symbol give the
    same cell (the same atoms; their order follows the operators); no symbol either: the
    sites as listed (P1)."""
    text = (CIF / "ICSD_15840.cif").read_text()
    loop = text.index("loop_\n_space_group_symop_id")
    end = text.index("loop_", loop + 5)
    no_ops = tmp_path / "no_ops.cif"
    no_ops.write_text(text[:loop] + text[end:])
    full = read_structure(CIF / "ICSD_15840.cif")
    by_symbol = read_structure(no_ops)
    assert sorted(by_symbol.elements) == sorted(full.elements)
    assert np.max(cKDTree(full.xyz).query(by_symbol.xyz)[0]) < 1e-6
    p1 = tmp_path / "p1.cif"
    p1.write_text((text[:loop] + text[end:]).replace("_space_group_name_H-M_alt 'R -3 c H'",
                                                     "").replace("_space_group_IT_number 167",
                                                                 ""))
    assert read_structure(p1, Cut("sphere", (30.0,))).elements.count("Fe") > 0
    assert len(read_structure(p1)) == 2  # Fe1 and O1 as listed


def test_a_cif_reads_as_diffpy_structure_reads_it_where_that_is_right():
    """Where diffpy.structure expands a CIF right, the gemmi reading (the file's own
    operators) gives the same atoms, in the same order, with the same labels and Uiso."""
    import warnings

    for code in ("15840", "35643", "109725", "110294", "35000", "40089"):
        path = CIF / f"ICSD_{code}.cif"
        ours = read_structure(path, partial="keep")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = loadStructure(str(path), eps=CIF_TOLERANCE)
        assert np.allclose(ours.xyz, theirs.xyz_cartn, atol=1e-9), code
        assert ours.sites == tuple(a.label for a in theirs), code
        u = np.array([a.Uisoequiv for a in theirs])
        assert np.allclose(np.nan_to_num(ours.uiso), u, atol=1e-12), code


def test_split_sites_are_refused_naming_them():
    with pytest.raises(InputError) as err:
        read_structure(CIF / "ICSD_710064.cif", Cut("sphere", (6.0,), centre_atom="Ge1"))
    assert "W1" in str(err.value) and "Å apart" in str(err.value)


def test_a_crystal_file_without_atoms_is_refused(tmp_path):
    empty = tmp_path / "empty.cif"
    empty.write_text("data_nothing\n_cell_length_a 5\n")
    with pytest.raises(InputError, match="empty.cif: no atoms in it"):
        read_structure(empty)


def test_cut_command_end_to_end(tmp_path):
    out = tmp_path / "k.xyz"
    proc = run_cli("cut", str(CIF / "ICSD_110294.cif"), "-o", str(out), "--sphere", "6",
                   "--centre", "0.4653,0.25,0.262", "--elements", "W,O")
    assert proc.returncode == 0, proc.stderr
    cage = read_xyz(out)
    assert sorted(cage.elements) == sorted(["W"] * 12 + ["O"] * 40)
    bad = run_cli("cut", str(CIF / "ICSD_110294.cif"), "-o", str(out), "--sphere", "6",
                  "--centre-atom", "Q7")
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    assert "Q7" in bad.stderr


# -- what the files say ----------------------------------------------------------------------

def test_header_gives_q_range_and_radiation(tmp_path):
    bare = {"structure": str(KEGGIN_XYZ), "data": str(KEGGIN_GR), "permute": ["W"]}
    config = with_file_defaults(_config(bare, tmp_path))
    assert config.pdf.qmin == 0.7 and config.pdf.qmax == 19.9989799422
    assert config.pdf.radiation == "xray"
    assert dict(config.origins)["pdf.qmax"] == f"header of {KEGGIN_GR.name}"
    assert config.notes == ()
    frame = with_file_defaults(_config({**bare, "data": str(FE2O3_FRAME)}, tmp_path))
    assert (frame.pdf.qmin, frame.pdf.qmax) == (1.0, 17.0)
    # a config that contradicts its header: its value, one warning line
    told = with_file_defaults(_config({**bare, "pdf": {"qmax": 18.0}}, tmp_path))
    assert told.pdf.qmax == 18.0
    assert len(told.notes) == 1 and "19.99" in told.notes[0] and "pdf.qmax" in told.notes[0]
    # nominal agreement is no contradiction
    assert with_file_defaults(_config({**bare, "pdf": {"qmax": 20.0}}, tmp_path)).notes == ()


@pytest.mark.slow
@pytest.mark.mpi
def test_header_warning_is_printed_by_the_dry_run(tmp_path):
    config = keggin_config(tmp_path, pdf={"qmax": 18.0}, catalogue={"size": 50})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = run_cli("run", str(path), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("warning:") == 1 and "19.99" in proc.stderr
    proc = run_cli("run", str(path), "--until", "fit", ranks=2)  # once, by rank 0
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("warning:") == 1 and "19.99" in proc.stderr


def test_uiso_from_the_crystal_file_and_biso(tmp_path):
    structure = {"file": str(CIF / "ICSD_35643.cif"), "cut": {"cells": [1, 1, 1]},
                 "partial": "keep"}
    base = {"structure": structure, "data": str(FE2O3_FRAME), "permute": ["Fe"]}
    config = with_file_defaults(_config(base, tmp_path))
    u = 0.1 / (8 * math.pi**2)  # the CIF's B_iso 0.1 Å²
    assert dict(config.pdf.uiso) == pytest.approx({"Fe": u, "O": u}, rel=1e-12)
    assert dict(config.origins)["pdf.uiso.O"] == "structure file ICSD_35643.cif"
    given = with_file_defaults(_config({**base, "pdf": {"uiso": {"O": 0.008}}}, tmp_path))
    assert dict(given.pdf.uiso) == pytest.approx({"O": 0.008, "Fe": u}, rel=1e-12)
    biso = _config({**base, "pdf": {"biso": {"Fe": 0.4, "O": 0.8}}}, tmp_path)
    assert dict(biso.pdf.uiso) == pytest.approx(
        {"Fe": 0.4 / (8 * math.pi**2), "O": 0.8 / (8 * math.pi**2)}, rel=1e-15)
    with pytest.raises(InputError, match="not both"):
        _config({**base, "pdf": {"biso": {"Fe": 0.4}, "uiso": {"O": 0.01}}}, tmp_path)


def test_partial_site_of_an_element_not_permuted_is_refused(tmp_path):
    config = keggin_config(tmp_path)
    config.update(structure={"file": str(CIF / "ICSD_35643.cif"), "cut": {"cells": [1, 1, 1]},
                             "partial": "keep"}, data=str(FE2O3_FRAME), permute=["O"])
    del config["pdf"]  # the Keggin Q range would contradict this frame's header
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = run_cli("run", str(path), "--dry-run")
    assert proc.returncode == 2
    assert "Fe4" in proc.stderr and "add Fe to permute" in proc.stderr
    assert proc.stderr.count("\n") == 1


# -- fits tables (the reader's own tests: test_fitstable.py) --------------------------------

def _table_rows(rng, n_rows: int, n: int):
    masks = rng.random((n_rows, n)) < 0.5
    rw = rng.random(n_rows).tolist()
    return np.arange(n_rows) + 7, rw, masks


@pytest.mark.slow
@pytest.mark.mpi
def test_fits_table_reproduces_the_run_that_made_it(keggin_run, tmp_path):
    """Steps 3-4 on a run's own (ID, Rw, mask) table, on 3 ranks, give its ACV."""
    out, _ = keggin_run
    with h5py.File(out / "motex.h5", "r") as f:
        rows = np.flatnonzero(f["catalogue/origin"][:] == 0)  # the catalogue, not polishing
        table = write_fits_table(tmp_path / "fits.txt", rows, f["fits/rw"][0][rows],
                                 f["catalogue/mask"][:][rows])
        acv = f["atoms/contribution"][:]
        se = f["atoms/contribution_se"][:]
    config = keggin_config(tmp_path)
    del config["data"]
    config["fits"] = str(table)
    path = tmp_path / "fits.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = run_cli("run", str(path), ranks=3)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fits read from fits.txt (none made)" in proc.stdout
    with h5py.File(tmp_path / "out" / "motex.h5", "r") as f:
        assert f.attrs["fits_table"] == "fits.txt"
        np.testing.assert_allclose(f["atoms/contribution"][:], acv, rtol=0, atol=1e-9)
        np.testing.assert_allclose(f["atoms/contribution_se"][:], se, rtol=0, atol=1e-9)
    csv = (tmp_path / "out" / "atom_contributions.csv").read_text()
    assert csv.count("\n") == acv.shape[1] + 1
    assert not (tmp_path / "out" / "best_fit.png").exists()  # no data to draw


def test_dry_run_of_a_fits_table_config(tmp_path):
    rng = np.random.default_rng(3)
    ids, rw, masks = _table_rows(rng, 40, 24)
    table = write_fits_table(tmp_path / "fits.txt", ids, rw, masks)
    config = keggin_config(tmp_path)
    del config["data"]
    config["fits"] = str(table)
    path = tmp_path / "fits.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = run_cli("run", str(path), "--dry-run", "--ranks", "4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"fits table      {table}: 40 motifs over N = 24 permutable")
    assert f"Rw {min(rw):.4f} to {max(rw):.4f}" in lines[0] and "no fits are made" in lines[0]
    assert any(line.startswith("steps 3-4 ") and "on 4 rank(s)" in line for line in lines)
    assert "fit speed" not in proc.stdout


# -- the shipped CIF examples, end to end ----------------------------------------------------

def _example(name: str, tmp_path: Path, **overrides) -> Path:
    config = yaml.safe_load((ROOT / "configs" / name).read_text())
    structure = dict(config["structure"])
    structure["file"] = str((ROOT / "configs" / structure["file"]).resolve())
    config["structure"] = structure
    config["data"] = str((ROOT / "configs" / config["data"]).resolve())
    config["output"] = {"dir": str(tmp_path / "out")}
    for key, value in overrides.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
@pytest.mark.mpi
def test_keggin_cif_example_finds_the_cage(tmp_path):
    path = _example("keggin_cif.yaml", tmp_path)  # as shipped: 1,000 motifs
    proc = run_cli("run", str(path), ranks=2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with h5py.File(tmp_path / "out" / "motex.h5", "r") as f:
        elements = [e.decode() for e in f["model/elements"][:]]
        assert sorted(elements) == sorted(["W"] * 12 + ["O"] * 40)
        # the measured PDF is of α-Keggin: the whole cage is the motif
        assert f["atoms/in_motif"][0].all()
        sites = [s.decode() for s in f["model/sites"][:]]
    out = tmp_path / "out"
    rows = list(csv.DictReader(open(out / "atom_contributions.csv")))
    assert len(rows) == 12
    for row in rows:  # the CIF's site of each W, and its name in the .vesta
        i = int(row["index"])
        assert row["site"] == sites[i] and re.fullmatch(r"W\d+(_\d+)?", row["site"])
        assert row["label"] == f"W{i + 1}"
    report = (out / "report.html").read_text()
    assert "Where the settings came from" in report
    cell = r"<td[^>]*>([^<]*)</td>"
    sources = {key: source for key, _, source in
               re.findall(rf"<tr>{cell}{cell}{cell}</tr>", report) if key.startswith("pdf.")}
    assert sources["pdf.qmax"] == "header of DanMAX_AlphaKeggin.gr"
    assert sources["pdf.radiation"] == "header of DanMAX_AlphaKeggin.gr"
    assert sources["pdf.uiso.W"] == "config (pdf.biso)"
    assert (out / "best_fit.fgr").is_file() and (out / "motif_fit.fgr").is_file()


@pytest.mark.slow
@pytest.mark.mpi
def test_fe2o3_cif_example_runs_on_two_frames(tmp_path):
    frames = sorted((EXAMPLES / "fe2o3_insitu" / "frames").glob("*_1?.gr"))[:2]
    path = _example("fe2o3_cif.yaml", tmp_path, catalogue={"size": 60},
                    learn={"search_iterations": 0,
                           "params": {"learning_rate": 0.1, "max_depth": 3,
                                      "n_estimators": 50}},
                    extract={"polish": False})
    config = yaml.safe_load(path.read_text())
    config["data"] = [str(p) for p in frames]
    path.write_text(yaml.safe_dump(config))
    proc = run_cli("run", str(path), ranks=2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with h5py.File(tmp_path / "out" / "motex.h5", "r") as f:
        assert f["model/xyz"].shape == (456, 3)
        assert f["atoms/contribution"].shape == (2, 200)
        assert np.isfinite(f["atoms/contribution"][:]).all()
