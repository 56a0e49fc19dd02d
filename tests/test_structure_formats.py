""".stru, .pdb and the other diffpy.structure formats, and the hostile structure files (issue 27).

A model written by diffpy.structure itself (``Structure.write``) or by hand reads back as
the same atoms; the keyword arguments given to a format's parser are decided in one place
(``eps`` only where the parser takes it); a malformed file, a degenerate cell, a value that
is not a finite number, a directory, a missing or unreadable file each end with one line
naming the file, through ``read_structure`` and through ``cut``, ``pdf`` and ``run``.
"""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from diffpy.structure import Atom, loadStructure
from diffpy.structure import Structure as DiffpyStructure
from scipy.spatial import cKDTree

from mlmotex_hpc.config import CIF_TOLERANCE, Cut
from mlmotex_hpc.errors import InputError
from mlmotex_hpc.io import structure as structure_io
from mlmotex_hpc.io.structure import FORMATS, read_structure, read_xyz

from .conftest import EXAMPLES, KEGGIN_XYZ, keggin_config, run_cli

CIF = EXAMPLES / "cif"
HEMATITE = CIF / "ICSD_15840.cif"  # R-3c, 30 atoms in the cell
FE2O3_FRAME = EXAMPLES / "fe2o3_insitu" / "frames" / "Fe2O3_3204M_0.gr"


@pytest.fixture(scope="module")
def keggin():
    return read_xyz(KEGGIN_XYZ)


def _diffpy_cluster(structure) -> DiffpyStructure:
    return DiffpyStructure([Atom(el, xyz=xyz) for el, xyz in
                            zip(structure.elements, structure.xyz, strict=True)])


def _one_line(message: str) -> str:
    assert "\n" not in message and message.strip() == message, message
    return message


def _refused(path, *words: str, cut: Cut | None = None, **kw) -> str:
    with pytest.raises(InputError) as err:
        read_structure(path, cut, **kw)
    message = _one_line(str(err.value))
    assert str(path) in message, message
    assert "eps" not in message and "None" not in message, message
    for word in words:
        assert word in message, message
    return message


def _same_atoms(a, b, tolerance: float) -> None:
    """The same atoms in any order: each of ``a`` within ``tolerance`` Å of one of ``b``
    of the same element, one to one."""
    assert len(a) == len(b)
    distance, match = cKDTree(b.xyz).query(a.xyz)
    assert distance.max() < tolerance, distance.max()
    assert len(set(match.tolist())) == len(b)
    assert [b.elements[k] for k in match] == list(a.elements)


# -- what each parser is given ------------------------------------------------------------------

def test_parser_options_are_decided_in_one_place():
    """Every format read through diffpy.structure gets a parser; only the CIF parser, the one
    that expands a space group, gets the tolerance (``eps``)."""
    from diffpy.structure.parsers import getParser

    for fmt in set(FORMATS.values()):
        options = structure_io._parser_options(fmt, 2e-3)
        assert options == ({"eps": 2e-3} if fmt == "cif" else {}), fmt
        getParser(fmt, **options)  # accepted
    assert getParser("cif", **structure_io._parser_options("cif", 2e-3)).eps == 2e-3


# -- written by diffpy.structure: the same atoms back -------------------------------------------

#: format, suffix, Å the written coordinates may differ by (the format's precision).
WRITTEN = [("pdffit", ".stru", 1e-6), ("pdb", ".pdb", 6e-4), ("discus", ".res", 1e-6),
           ("rawxyz", ".rawxyz", 1e-4)]


@pytest.mark.parametrize("fmt, suffix, tolerance", WRITTEN)
def test_a_cluster_written_by_diffpy_reads_back(tmp_path, keggin, fmt, suffix, tolerance):
    path = tmp_path / f"keggin{suffix}"
    _diffpy_cluster(keggin).write(str(path), fmt)
    model = read_structure(path)
    assert model.elements == keggin.elements
    np.testing.assert_allclose(model.xyz, keggin.xyz, rtol=0, atol=tolerance)
    # a cluster (no cell): a cut selects from the atoms as written
    sphere = read_structure(path, Cut("sphere", (5.0,)))
    assert len(sphere) == len(read_structure(KEGGIN_XYZ, Cut("sphere", (5.0,))))


def test_xcfg_reads_back_the_cluster_in_its_box(tmp_path, keggin):
    """xcfg has a periodic box: diffpy.structure writes the cluster shifted into it."""
    path = tmp_path / "keggin.xcfg"
    _diffpy_cluster(keggin).write(str(path), "xcfg")
    model = read_structure(path)
    assert model.elements == keggin.elements
    shift = model.xyz - keggin.xyz
    np.testing.assert_allclose(shift, shift[:1].repeat(len(shift), 0), atol=1e-6)


@pytest.mark.parametrize("fmt, suffix, tolerance", [("pdffit", ".stru", 1e-6),
                                                    ("pdb", ".pdb", 2e-3)])
def test_a_crystal_written_by_diffpy_reads_as_the_cif(tmp_path, fmt, suffix, tolerance):
    """The hematite cell (expanded from its CIF) as .stru and .pdb: the same cell atoms,
    and the same sphere cut, as the CIF (a .pdb's CRYST1 record is its cell)."""
    crystal = loadStructure(str(HEMATITE), eps=CIF_TOLERANCE)
    path = tmp_path / f"hematite{suffix}"
    if fmt == "pdb":  # PDB's atom names have 4 columns: Fe1_2, ... would shift the record
        for atom in crystal:
            atom.label = atom.label.replace("_", "")[-4:]
    crystal.write(str(path), fmt)
    _same_atoms(read_structure(path), read_structure(HEMATITE), tolerance)
    cut = Cut("sphere", (6.2,), centre_atom=0)
    _same_atoms(read_structure(path, cut), read_structure(HEMATITE, cut), 5 * tolerance)


def test_a_pdb_with_shifted_columns_is_refused(tmp_path):
    """diffpy.structure writes a CIF's site copies (Fe1_2, ...) into PDB's 4-column atom
    name, shifting the rest of the record: read by its columns, that would be other
    coordinates and, from columns 77-78, fluorine for Fe."""
    crystal = loadStructure(str(HEMATITE), eps=CIF_TOLERANCE)
    path = tmp_path / "shifted.pdb"
    crystal.write(str(path), "pdb")
    _refused(path, "line 3", "columns 31-54", "shifted")


# -- written by hand ---------------------------------------------------------------------------

STRU_FCC = """\
title  Cu, fcc, written by hand
format pdffit
scale   1.000000
sharp   0.000000,  0.000000,  1.000000,  0.000000
spcgr   Fm-3m
cell    3.615000,  3.615000,  3.615000, 90.000000, 90.000000, 90.000000
dcell   0.000000,  0.000000,  0.000000,  0.000000,  0.000000,  0.000000
ncell          1,         1,         1,         {n}
atoms
{atoms}"""


def _stru_atom(el: str, x: float, y: float, z: float, occ: float = 1.0) -> str:
    zeros = "  0.0  0.0  0.0\n"
    return (f"{el:2s}  {x:.8f}  {y:.8f}  {z:.8f}  {occ:.4f}\n  0.0  0.0  0.0  0.0\n"
            + "  0.008  0.008  0.008\n" + zeros * 3)


FCC = [(0, 0, 0), (0, 0.5, 0.5), (0.5, 0, 0.5), (0.5, 0.5, 0)]


def test_a_hand_written_stru_is_read_as_written(tmp_path):
    """A .stru lists every atom of its cell: spcgr Fm-3m is a label, not expanded, so the
    4 atoms of the fcc cell are 4 atoms (as PDFfit2 reads them); Uiso comes from the file."""
    path = tmp_path / "cu.stru"
    path.write_text(STRU_FCC.format(n=4, atoms="".join(_stru_atom("CU", *p) for p in FCC)))
    cell = read_structure(path)
    assert cell.elements == ("Cu",) * 4
    np.testing.assert_allclose(cell.xyz, 3.615 * np.array(FCC), atol=1e-9)
    assert cell.element_uiso() == pytest.approx({"Cu": 0.008})
    cube = read_structure(path, Cut("cells", (2, 2, 2)))
    assert len(cube) == 63  # 4·8 plus the atoms on the far faces, edges and corner
    assert np.linalg.norm(cube.xyz[:, None] - cube.xyz[None], axis=-1)[
        ~np.eye(63, dtype=bool)].min() == pytest.approx(3.615 / np.sqrt(2))


def test_a_stru_with_partial_occupancy_is_refused_or_kept(tmp_path):
    path = tmp_path / "cu_half.stru"
    atoms = [_stru_atom("Cu", *p, occ=0.5 if k == 3 else 1.0) for k, p in enumerate(FCC)]
    path.write_text(STRU_FCC.format(n=4, atoms="".join(atoms)))
    _refused(path, "partially occupied", "0.5", "partial: keep")
    kept = read_structure(path, partial="keep")
    assert [s[1] for s in kept.partial_sites()] == [0.5]


PDB_CLUSTER = """\
HETATM    1  W   WO4 A   1       1.000   2.000   3.000  1.00  0.40           W
HETATM    2  O   WO4 A   1       2.750   2.000   3.000  1.00  0.80           O
HETATM    3  O   WO4 A   1       1.000   3.750   3.000  1.00  0.80           O
END
"""


def test_a_hand_written_pdb_without_cryst1_is_a_cluster(tmp_path):
    """Only HETATM records and no CRYST1: a cluster, its atoms in Cartesian Å as written
    (B to Uiso), which cannot be expanded into cells."""
    path = tmp_path / "wo.pdb"
    path.write_text(PDB_CLUSTER)
    model = read_structure(path)
    assert model.elements == ("W", "O", "O")
    np.testing.assert_allclose(model.xyz, [[1, 2, 3], [2.75, 2, 3], [1, 3.75, 3]])
    assert model.element_uiso()["W"] == pytest.approx(0.4 / (8 * np.pi ** 2))
    _refused(path, "has no unit cell", cut=Cut("cells", (1, 1, 1)))
    # with a CRYST1 record the same atoms are one cell of a crystal
    path.write_text("CRYST1    6.000    6.000    6.000  90.00  90.00  90.00 P 1\n"
                    + PDB_CLUSTER)
    np.testing.assert_allclose(read_structure(path).xyz, model.xyz, atol=1e-12)
    assert len(read_structure(path, Cut("cells", (1, 1, 1)))) == 3


# -- malformed files: their real problem, in one line ------------------------------------------

_HEADER = "title\nformat pdffit\ncell 5, 5, 5, 90, 90, 90\nncell 1, 1, 1, 2\natoms\n"
MALFORMED = [
    ("garbage.stru", "hello world\nthis is no structure\n", ["line 2", "not in PDFfit format"]),
    ("no_occupancy.stru", _HEADER + "W 0.1 0.1 0.1\n", ["line 6", "not in PDFfit format"]),
    ("truncated.stru", _HEADER + "W 0.1 0.1 0.1 1.0\n 0 0 0 0\n", ["ends inside an atom"]),
    ("count.stru", _HEADER.replace("1, 1, 1, 2", "1, 1, 1, 3")
     + _stru_atom("W", 0.1, 0.1, 0.1) + _stru_atom("W", 0.5, 0.5, 0.5),
     ["expected 3 atoms, read 2"]),
    ("garbage.pdb", "hello world\n", ["line 1", "invalid record name"]),
    ("number.pdb", "ATOM      1 W            1       1.0x0   1.000   1.000  1.00  0.00"
     "           W\n", ["line 1", "'1.0x0   1.000   1.000", "columns 31-54"]),
    ("record.pdb", "CRYST1    6.000    6.000    six  90.00  90.00  90.00\n" + PDB_CLUSTER,
     ["line 1", "invalid PDB record"]),
    ("sigatm.pdb", "SIGATM    1  W   WO4 A   1       0.001   0.001   0.001  0.00  0.00\n",
     ["not a readable PDB file"]),
    ("element.pdb", PDB_CLUSTER.replace("           W\n", "           Q\n"),
     ["unknown element 'Q'"]),
    ("element.stru", _HEADER + _stru_atom("Qq", 0.1, 0.1, 0.1) + _stru_atom("W", .5, .5, .5),
     ["unknown element 'Qq'"]),
    ("empty.stru", "", ["is empty"]),
    ("blank.pdb", "\n   \n\n", ["is empty"]),
    ("atoms.cif", "data_x\n_cell_length_a 5\n", ["no atoms in it"]),
]


@pytest.mark.parametrize("name, text, words", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_file_gives_its_real_problem(tmp_path, name, text, words):
    path = tmp_path / name
    path.write_text(text)
    _refused(path, *words)


@pytest.mark.parametrize("name", ["binary.cif", "binary.stru", "binary.pdb", "binary.xyz"])
def test_a_binary_file_is_not_a_structure(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(bytes(range(256)) * 8)
    _refused(path, "is not a text", "binary")


# -- files that are not there -------------------------------------------------------------------

@pytest.mark.parametrize("name", ["model.cif", "model.xyz", "model.stru", "MODEL"])
def test_a_directory_or_a_missing_file(tmp_path, name):
    folder = tmp_path / name
    folder.mkdir()
    _refused(folder, "is a directory, not a file")
    _refused(tmp_path / "nowhere" / name, "does not exist")
    if name.endswith(".xyz"):
        with pytest.raises(InputError, match="is a directory, not a file"):
            read_xyz(folder)


@pytest.mark.parametrize("name", ["model.cif", "model.xyz", "model.stru"])
def test_an_unreadable_file(tmp_path, monkeypatch, name):
    """Permission denied (faked: the tests may run as root, who reads every file)."""
    path = tmp_path / name
    path.write_text("x\n")

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    _refused(path, "cannot read structure file", "Permission denied")


def test_cut_of_a_directory_on_the_command_line(tmp_path):
    proc = run_cli("cut", str(tmp_path), "-o", str(tmp_path / "x.xyz"), "--sphere", "5")
    _expect_one_line(proc, f"structure file {tmp_path} is a directory, not a file")


# -- degenerate cells, values that are not numbers ---------------------------------------------

def _edit_cif(tmp_path: Path, name: str, key: str, value: str, source: Path = HEMATITE) -> Path:
    text, count = re.subn(rf"^{key} .*$", f"{key} {value}", source.read_text(), flags=re.M)
    assert count == 1
    path = tmp_path / name
    path.write_text(text)
    return path


DEGENERATE = [
    ("gamma0.cif", "_cell_angle_gamma", "0", "gamma = 0°"),
    ("gamma180.cif", "_cell_angle_gamma", "180", "gamma = 180°"),
    ("gamma_almost180.cif", "_cell_angle_gamma", "179.9999999999", "enclose no volume"),
    ("alpha10.cif", "_cell_angle_alpha", "10", "enclose no volume"),
    ("a0.cif", "_cell_length_a", "0", "a = 0 Å"),
    ("a_negative.cif", "_cell_length_a", "-5.038", "a = -5.038 Å"),
    ("a_nan.cif", "_cell_length_a", "nan", "a = nan Å"),
    ("c_inf.cif", "_cell_length_c", "inf", "c = inf Å"),
    ("gamma_nan.cif", "_cell_angle_gamma", "NaN", "gamma = nan°"),
]


@pytest.mark.parametrize("name, key, value, named", DEGENERATE, ids=[d[0] for d in DEGENERATE])
def test_a_degenerate_cell_is_refused_naming_it(tmp_path, name, key, value, named):
    path = _edit_cif(tmp_path, name, key, value)
    for cut in (None, Cut("sphere", (5.0,)), Cut("cells", (1, 1, 1))):
        _refused(path, "its cell is degenerate", named, cut=cut)


@pytest.mark.parametrize("text, named", [
    ("cell 5, 5, 5, 90, 90, 180", "gamma = 180°"),
    ("cell 0, 5, 5, 90, 90, 90", "a = 0 Å"),
    ("cell 5, 5, 5, 0, 90, 90", "alpha = 0°"),
])
def test_a_degenerate_stru_cell_is_refused(tmp_path, text, named):
    path = tmp_path / "flat.stru"
    path.write_text(_HEADER.replace("cell 5, 5, 5, 90, 90, 90", text)
                    + _stru_atom("W", 0.1, 0.1, 0.1) + _stru_atom("W", 0.5, 0.5, 0.5))
    _refused(path, "its cell is degenerate", named)


@pytest.mark.parametrize("cryst1, named", [
    ("CRYST1    0.000    6.000    6.000  90.00  90.00  90.00", "a = 0 Å"),
    ("CRYST1    6.000    6.000    6.000  90.00  90.00 180.00", "gamma = 180°"),
])
def test_a_degenerate_pdb_cell_is_refused(tmp_path, cryst1, named):
    path = tmp_path / "flat.pdb"
    path.write_text(cryst1 + "\n" + PDB_CLUSTER)
    _refused(path, "its cell is degenerate", named)


def test_a_singular_xcfg_box_is_refused(tmp_path):
    rows = [f"H0({i},{j}) = {1 if i == j and i > 1 else 0} A" for i in (1, 2, 3)
            for j in (1, 2, 3)]
    path = tmp_path / "flat.cfg"
    path.write_text("Number of particles = 2\nA = 5 Angstrom\n" + "\n".join(rows)
                    + "\n.NO_VELOCITY.\nentry_count = 3\n183.84\nW\n0.1 0.1 0.1\n0.5 0.5 0.5\n")
    _refused(path, "its cell is degenerate")


@pytest.mark.parametrize("old, new, words", [
    ("Fe1 Fe3+ 12 c 0 0", "Fe1 Fe3+ 12 c nan 0", ["not a finite number"]),
    ("Fe1 Fe3+ 12 c 0 0", "Fe1 Fe3+ 12 c inf 0", ["not a finite number"]),
    ("0.35530(1) . 1.", "0.35530(1) . nan", ["Fe1", "occupancy is not a finite number"]),
])
def test_values_that_are_not_numbers_in_a_cif(tmp_path, old, new, words):
    path = tmp_path / "nan.cif"
    text = HEMATITE.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    _refused(path, *words)


def test_a_pdb_coordinate_that_is_not_a_number(tmp_path):
    path = tmp_path / "nan.pdb"
    path.write_text(PDB_CLUSTER.replace("       1.000   2.000", "         nan   2.000"))
    _refused(path, "atom 0 (W)", "coordinates are not finite numbers")


def test_a_cell_that_puts_every_atom_on_one_point(tmp_path):
    path = tmp_path / "point.cif"
    text = HEMATITE.read_text()
    for key in ("_cell_length_a", "_cell_length_b", "_cell_length_c"):
        text = re.sub(rf"^{key} .*$", f"{key} 1e-4", text, flags=re.M)
    path.write_text(text)
    _refused(path, "Å apart", "closer than")


# -- the commands, end to end -------------------------------------------------------------------

def _expect_one_line(proc, *words: str) -> None:
    ours = [ln for ln in proc.stderr.splitlines() if ln.startswith("mlmotex-hpc:")]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(ours) == 1 and proc.stderr.strip() == ours[0], proc.stderr
    assert ours[0].startswith("mlmotex-hpc: error: "), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in ours[0], ours[0]


@pytest.mark.parametrize("key, value, named", [
    ("_cell_angle_gamma", "0", "gamma = 0°"),
    ("_cell_angle_gamma", "180", "gamma = 180°"),
    ("_cell_length_a", "0", "a = 0 Å"),
])
def test_cut_pdf_and_run_refuse_a_degenerate_cell(tmp_path, key, value, named):
    path = _edit_cif(tmp_path, "flat.cif", key, value)
    config = tmp_path / "flat.yaml"
    config.write_text(yaml.safe_dump({
        "structure": {"file": str(path), "cut": {"sphere": 6.0}},
        "data": str(FE2O3_FRAME), "permute": ["Fe"],
        "output": {"dir": str(tmp_path / "out")}}))
    for args in (("cut", str(path), "-o", str(tmp_path / "x.xyz"), "--sphere", "5"),
                 ("pdf", str(path), "-o", str(tmp_path / "x.gr")),
                 ("run", str(config), "--dry-run")):
        _expect_one_line(run_cli(*args), str(path), "its cell is degenerate", named)


@pytest.fixture(scope="module")
def keggin_files(tmp_path_factory, keggin):
    """The Keggin model as .stru and .pdb, written by diffpy.structure."""
    folder = tmp_path_factory.mktemp("keggin_formats")
    files = {}
    for fmt, suffix in (("pdffit", ".stru"), ("pdb", ".pdb")):
        files[suffix] = folder / f"109725{suffix}"
        _diffpy_cluster(keggin).write(str(files[suffix]), fmt)
    return files


def _gr(path: Path) -> np.ndarray:
    return np.loadtxt(path, comments="#")


@pytest.mark.slow
@pytest.mark.parametrize("suffix, tolerance", [(".stru", 1e-6), (".pdb", 1e-2)])
def test_pdf_and_cut_commands_on_stru_and_pdb(tmp_path, keggin_files, suffix, tolerance):
    """The model PDF of the .stru (.pdb) agrees with the .xyz's (to the format's precision:
    G(r) within ``tolerance`` of its largest value); a cut of it is the .xyz's cut."""
    model = keggin_files[suffix]
    reference = tmp_path / "xyz.gr"
    assert run_cli("pdf", str(KEGGIN_XYZ), "-o", str(reference)).returncode == 0
    proc = run_cli("pdf", str(model), "-o", str(tmp_path / "model.gr"))
    assert proc.returncode == 0, proc.stderr
    g, g0 = _gr(tmp_path / "model.gr"), _gr(reference)
    assert g.shape == g0.shape
    assert np.abs(g[:, 1] - g0[:, 1]).max() < tolerance * np.abs(g0[:, 1]).max()
    cut = ("--sphere", "5")
    proc = run_cli("cut", str(model), "-o", str(tmp_path / "cut.xyz"), *cut)
    assert proc.returncode == 0, proc.stderr
    assert run_cli("cut", str(KEGGIN_XYZ), "-o", str(tmp_path / "ref.xyz"),
                   *cut).returncode == 0
    _same_atoms(read_xyz(tmp_path / "cut.xyz"), read_xyz(tmp_path / "ref.xyz"),
                1e-5 if suffix == ".stru" else 1e-3)


@pytest.mark.slow
@pytest.mark.mpi
def test_run_on_stru_and_pdb_agrees_with_xyz(tmp_path, keggin_files):
    """A short 2-rank run on the .stru and on the .pdb: exit 0, the fits' Rw as the .xyz
    run's (every one the same for .stru; the catalogue's, to the .pdb's 3 decimals), the
    same extracted motif."""
    results = {}
    for name, model in (("xyz", KEGGIN_XYZ), ("stru", keggin_files[".stru"]),
                        ("pdb", keggin_files[".pdb"])):
        folder = tmp_path / name
        folder.mkdir()
        config = folder / "config.yaml"
        config.write_text(yaml.safe_dump(keggin_config(folder, structure=str(model),
                                                       catalogue={"size": 200})))
        proc = run_cli("run", str(config), ranks=2)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        with h5py.File(folder / "out" / "motex.h5") as h5:
            rw = h5["fits/rw"][()]
        motif = [ln for ln in proc.stdout.splitlines() if ln.startswith("extracted motif")]
        assert len(motif) == 1, proc.stdout
        results[name] = rw, motif[0]
    rw, motif = results["xyz"]
    np.testing.assert_allclose(results["stru"][0], rw, rtol=0, atol=1e-9)
    assert results["stru"][1] == motif
    # the catalogue's fits (the first 160; the extract stage's 40 follow the learned model)
    np.testing.assert_allclose(results["pdb"][0][:, :160], rw[:, :160], rtol=0, atol=5e-3)
    assert results["pdb"][1].split(":")[-1] == motif.split(":")[-1]  # the same atoms
