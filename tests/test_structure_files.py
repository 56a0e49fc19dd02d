"""VESTA and CrystalMaker files: element styles, contribution colours, round trips."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import periodictable
import pytest

from mlmotex_hpc.io.structure import Structure, read_xyz
from mlmotex_hpc.output import structure_files as sf
from mlmotex_hpc.output.structure_files import (
    NEUTRAL_GREY,
    contribution_colours,
    element_style,
    read_cmtx,
    read_vesta,
    write_cmtx,
    write_vesta,
)

from .conftest import KEGGIN_MOTIF_W, KEGGIN_XYZ, ROOT

SHIPPED_TABLE = ROOT / "mlmotex_hpc" / "output" / "bonding.txt"

#: Section order of a file VESTA 3.5.4 itself saved (CRYSTAL there, MOLECULE here).
VESTA_ORDER = [
    "MOLECULE", "TITLE", "GROUP", "SYMOP", "TRANM", "LTRANSL", "LORIENT", "LMATRIX",
    "CELLP", "STRUC", "THERI", "SHAPE", "BOUND", "SBOND", "SITET", "VECTR", "VECTT",
    "SPLAN", "LBLAT", "LBLSP", "DLATM", "DLBND", "DLPLY", "PLN2D", "ATOMT", "SCENE",
    "HBOND", "STYLE", "DISPF", "MODEL", "SURFS", "SECTS", "FORMS", "ATOMS", "BONDS",
    "POLYS", "VECTS", "FORMP", "ATOMP", "BONDP", "POLYP", "ISURF", "TEX3P", "SECTP",
    "CONTR", "HKLPP", "UCOLP", "COMPS", "LABEL", "PROJT", "BKGRC", "DPTHQ", "LIGHT0",
    "LIGHT1", "LIGHT2", "LIGHT3", "SECCL", "TEXCL", "ATOMM", "BONDM", "POLYM", "SURFM",
    "FORMM", "HKLPM",
]


@pytest.fixture(scope="module")
def keggin() -> Structure:
    return read_xyz(KEGGIN_XYZ)


def w_indices(structure: Structure) -> list[int]:
    return [i for i, el in enumerate(structure.elements) if el == "W"]


@pytest.fixture(scope="module")
def keggin_values(keggin) -> tuple[np.ndarray, list[int]]:
    """Contribution values for every W: motif W negative, the other W positive."""
    rng = np.random.default_rng(7)
    permutable = w_indices(keggin)
    values = np.array([
        -rng.uniform(0.2, 1.0) if i in KEGGIN_MOTIF_W else rng.uniform(0.2, 1.0)
        for i in permutable
    ])
    return values, permutable


def parse_table(path: Path) -> dict[str, tuple[float, tuple[float, float, float]]]:
    table = {}
    for line in path.read_text().splitlines():
        el, radius, r, g, b = line.split()
        table[el] = (float(radius), (float(r), float(g), float(b)))
    return table


def section_rows(path: Path, name: str) -> list[list[str]]:
    """Whitespace-split data rows of one VESTA section, terminator excluded."""
    rows, inside = [], False
    for line in path.read_text().splitlines():
        fields = line.split()
        if fields and fields[0] == name:
            inside = True
            continue
        if inside:
            if not fields or (fields[0].isalpha() and fields[0].isupper()):
                break
            if all(f == "0" for f in fields):
                break
            rows.append(fields)
    return rows


# ------------------------------------------------------------------- element styles


def test_element_style_covers_every_element_to_lawrencium():
    table = parse_table(SHIPPED_TABLE)
    for element in periodictable.elements:
        if not 1 <= element.number <= 103:
            continue
        radius, rgb = element_style(element.symbol)
        assert math.isfinite(radius) and radius > 0, element.symbol
        assert len(rgb) == 3 and all(0.0 <= c <= 1.0 for c in rgb), element.symbol
        if element.symbol not in table:  # Md, No, Lr: the documented fallback
            expected = element.covalent_radius or sf.FALLBACK_RADIUS
            assert radius == pytest.approx(expected)
            assert rgb == sf.FALLBACK_RGB
    # Heavier elements fall back too, rather than failing.
    assert element_style("Og")[0] > 0


def test_element_style_is_the_table_for_w_and_o():
    table = parse_table(SHIPPED_TABLE)
    for symbol in ("W", "O"):
        assert element_style(symbol) == table[symbol]
    assert element_style("w") == element_style("W")
    assert element_style("W")[0] == pytest.approx(1.62)
    with pytest.raises(ValueError, match="unknown element"):
        element_style("Xx")


# -------------------------------------------------------------------------- colours


def rdbu_r(t: float) -> np.ndarray:
    """matplotlib's RdBu_r at t, sampled finely enough to stand for the continuous map."""
    import matplotlib

    return np.asarray(matplotlib.colormaps["RdBu_r"].resampled(2**16 + 1)(t))[:3]


def test_contribution_colours_diverge_around_zero():
    # Atoms 0..5; atom 5 is not permutable, atom 4 has no value.
    values = [-2.0, 0.0, 1.0, 2.0, np.nan]
    colours = contribution_colours(values, 6, [0, 1, 2, 3, 4])
    assert colours.shape == (6, 3)
    assert np.all((colours >= 0) & (colours <= 1))
    negative, zero, positive = colours[0], colours[1], colours[3]
    assert negative[2] > negative[0]  # blue family
    assert positive[0] > positive[2]  # red family
    # Zero is the map's neutral middle: a near-white grey with r = g = b.
    assert zero == pytest.approx(rdbu_r(0.5), abs=1e-6)
    assert np.ptp(zero) < 1e-9 and zero.min() > 0.9
    assert np.allclose(colours[4], NEUTRAL_GREY) and np.allclose(colours[5], NEUTRAL_GREY)
    assert not np.allclose(zero, NEUTRAL_GREY)


def test_contribution_colours_scale_symmetrically():
    # Largest |value| is 4 on the negative side: -4 and +4 sit at the ends, +1 is 1/8 of
    # the way from the middle to red, and -1 mirrors it on the blue side.
    colours = contribution_colours([-4.0, -1.0, 1.0, 4.0], 4, [0, 1, 2, 3])
    for colour, t in zip(colours, (0.0, 0.375, 0.625, 1.0), strict=True):
        assert colour == pytest.approx(rdbu_r(t), abs=2e-3)
    only_small_positive = contribution_colours([-4.0, 1.0], 2, [0, 1])[1]
    assert only_small_positive == pytest.approx(rdbu_r(0.625), abs=2e-3)  # not saturated


def test_contribution_colours_reject_bad_input():
    with pytest.raises(ValueError, match="2 contribution values for 3"):
        contribution_colours([1.0, 2.0], 5, [0, 1, 2])
    with pytest.raises(ValueError, match="lie in"):
        contribution_colours([1.0], 5, [5])
    with pytest.raises(ValueError, match="repeated"):
        contribution_colours([1.0, 2.0], 5, [1, 1])
    assert np.allclose(contribution_colours([np.nan], 2, [0]), NEUTRAL_GREY)


# ---------------------------------------------------------------------------- VESTA


def test_vesta_round_trip(tmp_path, keggin, keggin_values):
    values, permutable = keggin_values
    colours = contribution_colours(values, len(keggin), permutable)
    path = write_vesta(tmp_path / "keggin.vesta", keggin, colours, title="alpha-Keggin")
    data = read_vesta(path)

    assert path.read_text().startswith("#VESTA_FORMAT_VERSION 3.5.4\n")
    assert data["sections"] == VESTA_ORDER
    assert data["phase"] == "MOLECULE" and data["title"] == "alpha-Keggin"
    assert len(data["sites"]) == len(keggin)
    assert np.abs(data["xyz"] - keggin.xyz).max() < 1e-5

    labels = [site[1] for site in data["sites"]]
    assert len(set(labels)) == len(labels)
    assert [site[0] for site in data["sites"]] == list(keggin.elements)
    for i, label in enumerate(labels):
        expected = tuple(int(v) for v in np.rint(255 * colours[i]))
        assert data["site_colours"][label] == expected, label
        assert data["site_radii"][label] == pytest.approx(element_style(keggin.elements[i])[0])
    for element in ("W", "O"):
        radius, rgb = element_style(element)
        expected = tuple(int(v) for v in np.rint(255 * np.array(rgb)))
        assert data["element_colours"][element] == expected
        assert data["element_radii"][element] == pytest.approx(radius)


def test_vesta_colour_fields_are_integers_0_to_255(tmp_path, keggin, keggin_values):
    values, permutable = keggin_values
    path = write_vesta(tmp_path / "k.vesta", keggin,
                       contribution_colours(values, len(keggin), permutable))
    sitet, atomt = section_rows(path, "SITET"), section_rows(path, "ATOMT")
    assert len(sitet) == len(keggin) and len(atomt) == 2
    for fields in sitet + atomt:
        colour_fields = fields[3:9] + fields[9:10]  # two RGB triples and the 204 field
        assert all(f.isdigit() and 0 <= int(f) <= 255 for f in colour_fields), fields
    for fields in section_rows(path, "SBOND"):
        assert all(f.isdigit() and 0 <= int(f) <= 255 for f in fields[-3:]), fields


def test_vesta_struc_lines_have_fixed_field_counts(tmp_path, keggin):
    # The original tool glued z onto the next field; fixed-width fields with a leading
    # space cannot, even for large negative coordinates.
    shifted = Structure(keggin.elements, keggin.xyz - np.array([1000.0, 12345.678, 99999.5]))
    path = write_vesta(tmp_path / "shifted.vesta", shifted)
    rows = section_rows(path, "STRUC")
    assert len(rows) == 2 * len(shifted)
    assert all(len(row) == 9 for row in rows[0::2])  # index El label occ x y z Wyckoff 1
    assert all(len(row) == 4 for row in rows[1::2])  # s.u. of x y z, charge
    data = read_vesta(path)
    assert np.abs(data["xyz"] - shifted.xyz).max() < 1e-5


def test_vesta_bonds(tmp_path, keggin):
    data = read_vesta(write_vesta(tmp_path / "a.vesta", keggin))
    bonds = {(a, b): high for a, b, low, high in data["bonds"]}
    w, o = element_style("W")[0], element_style("O")[0]
    assert bonds[("O", "W")] == pytest.approx(sf.BOND_FACTOR * (w + o), abs=1e-5)
    assert ("W", "W") not in bonds  # metal–metal contacts are not bonds by default
    assert all(low == 0.0 for _, _, low, _ in data["bonds"])
    custom = read_vesta(write_vesta(tmp_path / "b.vesta", keggin, bond_pairs={("W", "O"): 2.6}))
    assert custom["bonds"] == [("O", "W", 0.0, 2.6)]
    with pytest.raises(ValueError, match="positive"):
        write_vesta(tmp_path / "c.vesta", keggin, bond_pairs={("W", "O"): -1.0})


def test_vesta_element_colours_when_none_given(tmp_path, keggin):
    colours = np.full((len(keggin), 3), np.nan)
    colours[0] = (0.0, 0.0, 1.0)
    data = read_vesta(write_vesta(tmp_path / "k.vesta", keggin, colours))
    assert data["site_colours"]["W1"] == (0, 0, 255)
    w_rgb = tuple(int(v) for v in np.rint(255 * np.array(element_style("W")[1])))
    assert data["site_colours"]["W3"] == w_rgb
    assert read_vesta(write_vesta(tmp_path / "n.vesta", keggin))["site_colours"]["W1"] == w_rgb
    with pytest.raises(ValueError, match="shape"):
        write_vesta(tmp_path / "bad.vesta", keggin, colours[:3])
    with pytest.raises(ValueError, match="0–1"):
        write_vesta(tmp_path / "bad.vesta", keggin, np.full((len(keggin), 3), 255.0))


def test_keggin_motif_is_blue_and_the_rest_red(tmp_path, keggin, keggin_values):
    values, permutable = keggin_values
    colours = contribution_colours(values, len(keggin), permutable)
    data = read_vesta(write_vesta(tmp_path / "keggin.vesta", keggin, colours))
    grey = tuple(int(v) for v in np.rint(255 * np.array(NEUTRAL_GREY)))
    n_blue = n_red = 0
    for element, label, *_ in data["sites"]:
        r, _, b = data["site_colours"][label]
        index = int(label[len(element):]) - 1
        if element == "O":
            assert data["site_colours"][label] == grey, label
        elif index in KEGGIN_MOTIF_W:
            assert b > r, label
            n_blue += 1
        else:
            assert r > b, label
            n_red += 1
    assert (n_blue, n_red) == (12, 12)


# --------------------------------------------------------------------- CrystalMaker


def test_cmtx_round_trip(tmp_path, keggin, keggin_values):
    values, permutable = keggin_values
    colours = contribution_colours(values, len(keggin), permutable)
    path = write_cmtx(tmp_path / "keggin.cmtx", keggin, colours, title="alpha-Keggin")
    data = read_cmtx(path)

    assert data["molecule"] and data["cell"] is None and data["model"] == 1
    assert data["title"] == "alpha-Keggin"
    assert data["keywords"][:5] == ["MOLE", "TITL", "MODL", "BKCL", "TYPE"]
    assert data["keywords"][-1] == "ATOM"
    assert len(data["atoms"]) == len(keggin)
    assert np.abs(data["xyz"] - keggin.xyz).max() < 1e-5

    labels = [atom[1] for atom in data["atoms"]]
    assert len(set(labels)) == len(labels)
    assert [atom[0] for atom in data["atoms"]] == list(keggin.elements)
    assert set(data["type_colours"]) == set(labels)
    for i, label in enumerate(labels):
        assert data["type_colours"][label] == pytest.approx(tuple(colours[i]), abs=1e-6)
        assert data["type_radii"][label] == pytest.approx(element_style(keggin.elements[i])[0])
    # One colour scale in the whole file: fractions 0–1, background included.
    assert data["background"] == (1.0, 1.0, 1.0)
    for rgb in data["type_colours"].values():
        assert all(0.0 <= c <= 1.0 for c in rgb)
    motif = [data["type_colours"][f"W{i + 1}"] for i in KEGGIN_MOTIF_W]
    assert all(b > r for r, _, b in motif)

    bonds = {(a, b): length for a, b, length in data["bonds"]}
    assert ("W", "W") not in bonds and ("O", "W") in bonds


def test_cmtx_large_negative_coordinates(tmp_path, keggin):
    shifted = Structure(keggin.elements, keggin.xyz - np.array([1000.0, 12345.678, 99999.5]))
    path = write_cmtx(tmp_path / "shifted.cmtx", shifted)
    atom_rows = path.read_text().split("\nATOM\n")[1].splitlines()
    assert len(atom_rows) == len(shifted)
    assert all(len(row.split()) == 5 for row in atom_rows)  # element label x y z
    data = read_cmtx(path)
    assert np.abs(data["xyz"] - shifted.xyz).max() < 1e-5
    w_rgb = element_style("W")[1]
    assert data["type_colours"]["W1"] == pytest.approx(w_rgb, abs=1e-6)
