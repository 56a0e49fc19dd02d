"""The PDF calculators against DiffPy-CMI and DebyeCalculator, and against themselves.

Every PDF file in ``tests/data/reference`` is checked with the parameters written in its
header (see NOTICE.md there). The remaining tests pin down properties the fitter relies
on: zoom is an isotropic expansion, a masked motif is the subset structure, the compiled
kernels equal a plain NumPy transcription of the same formulas.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import numpy as np
import pytest
from periodictable import cromermann

from mlmotex_hpc.commands import pdf as pdf_command
from mlmotex_hpc.errors import InputError
from mlmotex_hpc.io.structure import read_xyz
from mlmotex_hpc.pdf import PDFSettings, make_calculator, uiso_from_biso
from mlmotex_hpc.pdf._vecmath import sincos
from mlmotex_hpc.pdf.grids import GAUSS_SIGMA_TO_FWHM, PEAK_HALF_BOUND
from mlmotex_hpc.pdf.scattering import forward_weight, scattering_weights

REF = Path(__file__).resolve().parent / "data" / "reference"
FULL_XYZ = REF / "diffpy_full_109725_W24O80.xyz"
MOTIF_XYZ = REF / "diffpy_keggin_W12O40_motif.xyz"
NOT_PDFS = {FULL_XYZ.name, MOTIF_XYZ.name, "LICENSE-Apache-2.0.txt", "NOTICE.md"}
DIFFPY = sorted(p.name for p in REF.glob("diffpy_*.gr"))
DEBYECALC_GR = sorted(p.name for p in REF.glob("debyecalculator_*_Gr.dat"))
DEBYECALC_FQ = sorted(p.name for p in REF.glob("debyecalculator_*_Fq.dat"))


# -- reading the reference files ---------------------------------------------------------


def _header(path: Path) -> tuple[dict[str, str], str]:
    """``key = value`` pairs and the whole text of the leading ``#`` block."""
    pairs, text = {}, []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text.append(line)
        m = re.match(r"#\s*([A-Za-z][\w ()^]*?)\s*=\s*(.*)$", line)
        if m:
            pairs[m.group(1)] = m.group(2)
    return pairs, "\n".join(text)


def _structure_for(name: str, natoms: int):
    stru = read_xyz(FULL_XYZ if "_full" in name else MOTIF_XYZ)
    assert len(stru) == natoms, f"{name}: header says {natoms} atoms"
    return stru


def _diffpy_case(name: str):
    """Structure, settings and data of a ``diffpy_*.gr`` file, all from its header."""
    path = REF / name
    head, text = _header(path)
    natoms = int(re.search(r"natoms = (\d+)", text).group(1))
    uiso_text = head["Uiso (A^2)"]
    if "for all atoms" in uiso_text:
        uiso, default = (), float(uiso_text.split()[0])
    else:
        pairs = re.findall(r"(\w+)=([\d.]+)", uiso_text.split("(")[0])
        uiso, default = tuple((el, float(v)) for el, v in pairs), 0.0
    calculator = "debye" if head["calculator"].startswith("DebyePDFCalculator") else "realspace"
    assert head["scatteringfactortable"] == "xray"
    settings = PDFSettings(
        calculator=calculator, radiation="xray", qmin=float(head["qmin"]),
        qmax=float(head["qmax"]), qdamp=float(head["qdamp"]), qbroad=float(head["qbroad"]),
        uiso=uiso, default_uiso=default, delta2=float(head["delta2"]),
    )
    assert float(head["delta1"]) == 0.0 and float(head["scale"]) == 1.0
    data = np.loadtxt(path)
    return _structure_for(name, natoms), settings, data, head


def _debyecalc_case(name: str):
    """Structure, settings and data of a ``debyecalculator_*`` file."""
    path = REF / name
    _, text = _header(path)
    natoms = int(re.search(r"N_atoms=(\d+)", text).group(1))
    num = {k: float(v) for k, v in re.findall(r"\b(qmin|qmax|qdamp|biso|rmax|rstep)=([\d.]+)",
                                               text)}
    assert "radiation=xray" in text and "lorch_mod=False" in text
    settings = PDFSettings(
        calculator="debye", radiation="xray", qmin=num["qmin"], qmax=num["qmax"],
        qdamp=num["qdamp"], default_uiso=uiso_from_biso(num["biso"]),
        qstep=math.pi / (num["rmax"] + num["rstep"]),
    )
    return _structure_for(name, natoms), settings, np.loadtxt(path)


def _rel_dev(g: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(g - ref)) / np.max(np.abs(ref)))


def test_every_reference_file_is_checked():
    names = {p.name for p in REF.iterdir()}
    checked = set(DIFFPY) | set(DEBYECALC_GR) | set(DEBYECALC_FQ)
    assert names - NOT_PDFS == checked
    assert len(DIFFPY) == 8 and len(DEBYECALC_GR) == 4 and len(DEBYECALC_FQ) == 4


# -- DiffPy-CMI ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", DIFFPY)
def test_diffpy_reference(name):
    """≤ 1 % of max|G| over r 1–20 Å, on DiffPy's own Q grid and r extension."""
    stru, settings, data, head = _diffpy_case(name)
    calc = make_calculator(stru.elements, stru.xyz, settings, data[:, 0])
    assert calc.qstep == pytest.approx(float(head["qstep"]), rel=1e-12)
    assert calc.extended_rmax == pytest.approx(float(head["extendedrmax"]), rel=1e-12)
    g = calc.compute()
    assert data[0, 0] == 1.0 and data[-1, 0] == 20.0
    assert _rel_dev(g, data[:, 1]) <= 0.01


@pytest.mark.parametrize("name", [n for n in DIFFPY if "_realspace_" in n])
def test_diffpy_realspace_is_exact(name):
    """The real-space calculator repeats DiffPy's arithmetic, not only its physics."""
    stru, settings, data, _ = _diffpy_case(name)
    g = make_calculator(stru.elements, stru.xyz, settings, data[:, 0]).compute()
    assert _rel_dev(g, data[:, 1]) < 1e-8


@pytest.mark.parametrize("name", [n for n in DIFFPY if "_debye_" in n])
def test_diffpy_debye_is_exact_up_to_its_interpolation(name):
    """DiffPy evaluates G on an FFT grid of ~0.0055 Å and interpolates linearly to r;
    doing the same with our F(Q) gives its numbers to 1e-8 (we sum at r exactly, which
    differs from DiffPy by at most ~0.05 % of max|G|)."""
    stru, settings, data, _ = _diffpy_case(name)
    calc = make_calculator(stru.elements, stru.xyz, settings, data[:, 0])
    fq = calc.fq(calc.prepare())
    dq = calc.qstep
    kmin = round(calc.q[0] / dq)
    nfromdr = math.ceil(math.pi / 0.01 / dq)
    npad = 1 << math.ceil(math.log2(max(nfromdr, kmin + fq.size)))
    rpad = math.pi / (npad * dq) * np.arange(npad)
    gpad = (2.0 / math.pi) * dq * np.sin(np.outer(rpad, calc.q)) @ fq
    r = data[:, 0]
    g = np.interp(r, rpad, gpad) * np.exp(-0.5 * (settings.qdamp * r) ** 2)
    assert _rel_dev(g, data[:, 1]) < 1e-8


# -- DebyeCalculator -----------------------------------------------------------------------


@pytest.mark.parametrize("name", DEBYECALC_GR)
def test_debyecalculator_gr(name):
    """≤ 0.5 % with its Q grid, one Biso and its factor ½ (float32 grids: ~1e-6 here)."""
    stru, settings, data = _debyecalc_case(name)
    calc = make_calculator(stru.elements, stru.xyz, settings, data[:, 0])
    assert calc.q.size == 123
    assert _rel_dev(calc.compute(), 2.0 * data[:, 1]) <= 0.005


@pytest.mark.parametrize("name", DEBYECALC_FQ)
def test_debyecalculator_fq(name):
    stru, settings, data = _debyecalc_case(name)
    calc = make_calculator(stru.elements, stru.xyz, settings, np.arange(1.0, 20.0, 0.01))
    np.testing.assert_allclose(calc.q, data[:, 0], atol=1e-5)  # theirs is float32
    assert _rel_dev(calc.fq(calc.prepare()), 2.0 * data[:, 1]) <= 0.005


# -- scattering factors --------------------------------------------------------------------


def test_form_factors_are_diffpys():
    assert forward_weight("W") == pytest.approx(73.963574, abs=1e-9)
    assert forward_weight("O") == pytest.approx(7.999706, abs=1e-9)
    q = np.linspace(0.0, 25.0, 11)
    np.testing.assert_allclose(scattering_weights(["Fe"], q)[0], cromermann.fxrayatq("Fe", q))
    assert forward_weight("O", "neutron") == pytest.approx(5.803, abs=1e-3)


@pytest.mark.parametrize(
    ("element", "radiation"), [("Es", "xray"), ("Po", "neutron"), ("Xx", "xray")]
)
def test_missing_scattering_data_is_a_clear_error(element, radiation):
    with pytest.raises(InputError, match=element):
        make_calculator([element, element], np.eye(3)[:2] * 2.0,
                        PDFSettings(radiation=radiation), np.arange(1.0, 5.0, 0.1))


# -- properties the fitter relies on -------------------------------------------------------

KEGGIN_R = np.round(np.arange(1.6, 10.0 + 1e-9, 0.01), 2)
HARD = {"uiso": (("W", 0.004), ("O", 0.009)), "qbroad": 0.01, "delta2": 1.5, "qdamp": 0.05}


def _full():
    return read_xyz(FULL_XYZ)


def _keggin_mask(stru) -> np.ndarray:
    comment = MOTIF_XYZ.read_text().splitlines()[1]
    idx = [int(i) for i in comment.split("source indices:")[1].split()]
    mask = np.zeros(len(stru), dtype=bool)
    mask[idx] = True
    return mask


# qstep (an explicit Q grid) exists for the Debye calculator only.
@pytest.mark.parametrize(
    "calculator, extra",
    [("debye", {}), ("debye", HARD), ("debye", {"qstep": 0.1}),
     ("realspace", {}), ("realspace", HARD)],
    ids=["debye-plain", "debye-hard", "debye-qstep", "realspace-plain", "realspace-hard"],
)
def test_zoom_is_an_isotropic_expansion(calculator, extra):
    stru = _full()
    settings = PDFSettings(calculator=calculator, **extra)
    calc = make_calculator(stru.elements, stru.xyz, settings, KEGGIN_R)
    scaled = make_calculator(stru.elements, 1.01 * stru.xyz, settings, KEGGIN_R)
    mask = _keggin_mask(stru)
    g_zoom = calc.gr(calc.prepare(mask), zoom=1.01)
    g_scaled = scaled.compute(mask)
    assert _rel_dev(g_zoom, g_scaled) < 1e-9
    assert _rel_dev(g_zoom, calc.compute(mask)) > 1e-3  # zoom did something


@pytest.mark.parametrize("calculator", ["debye", "realspace"])
@pytest.mark.parametrize("extra", [{}, HARD], ids=["plain", "hard"])
def test_masked_motif_equals_subset_structure(calculator, extra):
    stru = _full()
    settings = PDFSettings(calculator=calculator, **extra)
    calc = make_calculator(stru.elements, stru.xyz, settings, KEGGIN_R)
    sub = read_xyz(MOTIF_XYZ)
    np.testing.assert_array_equal(stru.xyz[_keggin_mask(stru)], sub.xyz)
    alone = make_calculator(sub.elements, sub.xyz, settings, KEGGIN_R).compute()
    motif = calc.prepare(_keggin_mask(stru))
    assert motif.n_atoms == 52 and motif.n_pairs == 52 * 51 // 2
    assert _rel_dev(calc.gr(motif), alone) < 1e-12
    # prepare() is repeatable and gr() has no state
    assert _rel_dev(calc.gr(calc.prepare(_keggin_mask(stru))), alone) < 1e-12


@pytest.mark.parametrize("calculator", ["debye", "realspace"])
def test_neutron_runs_and_differs(calculator):
    stru = _full()
    xray = make_calculator(stru.elements, stru.xyz, PDFSettings(calculator=calculator),
                           KEGGIN_R).compute()
    neutron = make_calculator(stru.elements, stru.xyz,
                              PDFSettings(calculator=calculator, radiation="neutron"),
                              KEGGIN_R).compute()
    assert np.all(np.isfinite(neutron)) and np.max(np.abs(neutron)) > 0.1
    assert _rel_dev(neutron, xray) > 0.05


def test_uiso_and_delta2_overrides():
    stru = _full()
    r = KEGGIN_R
    base = PDFSettings(qbroad=0.01)
    calc = make_calculator(stru.elements, stru.xyz, base, r)
    motif = calc.prepare(_keggin_mask(stru))
    other = PDFSettings(qbroad=0.01, uiso=(("W", 0.004), ("O", 0.009)), delta2=1.0)
    # same Q grid as ``calc`` (the grid is fixed when the calculator is built)
    expected = make_calculator(stru.elements, stru.xyz, other, r)
    assert expected.qstep != calc.qstep
    g = calc.gr(motif, uiso={"W": 0.004, "O": 0.009}, delta2=1.0)
    ref = _numpy_debye(stru, _keggin_mask(stru), other, calc, zoom=1.0)
    assert _rel_dev(g, ref) < 1e-9
    with pytest.raises(InputError, match="Mo"):
        calc.gr(motif, uiso={"Mo": 0.01})


def test_empty_motif_and_bad_masks():
    stru = _full()
    calc = make_calculator(stru.elements, stru.xyz, PDFSettings(), KEGGIN_R)
    one = np.zeros(len(stru), dtype=bool)
    one[0] = True
    for mask in (np.zeros(len(stru), dtype=bool), one):
        g = calc.gr(calc.prepare(mask))
        assert g.shape == KEGGIN_R.shape and not np.any(g)
    with pytest.raises(InputError, match="mask"):
        calc.prepare(np.ones(3, dtype=bool))
    with pytest.raises(InputError, match="zoom"):
        calc.gr(calc.prepare(), zoom=0.0)


@pytest.mark.parametrize(
    "kwargs",
    [{"qmin": 5.0, "qmax": 4.0}, {"calculator": "fourier"}, {"radiation": "electron"},
     {"default_uiso": -0.1}, {"qstep": 0.0}, {"uiso": (("W", "x"),)}],
)
def test_bad_settings(kwargs):
    with pytest.raises(InputError):
        PDFSettings(**kwargs)


def test_settings_accept_a_mapping():
    s = PDFSettings(uiso={"W": 0.003, "O": 0.008})
    assert s.uiso == (("W", 0.003), ("O", 0.008))
    assert s.uiso_of("W") == 0.003 and s.uiso_of("Fe") == s.default_uiso


# -- compiled kernels against a plain NumPy transcription -----------------------------------


def _u_of(stru, settings):
    return np.array([settings.uiso_of(el) for el in stru.elements])


def _pairs(stru, mask, zoom):
    idx = np.flatnonzero(mask)
    i, j = np.triu_indices(idx.size, 1)
    i, j = idx[i], idx[j]
    return i, j, zoom * np.linalg.norm(stru.xyz[i] - stru.xyz[j], axis=1)


def _sigma2(u, i, j, d, settings):
    s2 = (u[i] + u[j]) * (1.0 - settings.delta2 / d**2 + (settings.qbroad * d) ** 2)
    return np.maximum(s2, 0.0)


def _numpy_debye(stru, mask, settings, calc, zoom):
    """METHOD.md's Debye formula, term by term, on ``calc``'s Q grid and pair window."""
    q = calc.q
    f = {el: cromermann.fxrayatq(el, q) for el in set(stru.elements)}
    fi = np.array([f[el] for el in stru.elements])
    u = _u_of(stru, settings)
    i, j, d = _pairs(stru, mask, zoom)
    keep = (d >= calc.grid.pair_rmin) & (d <= calc.grid.pair_rmax)
    i, j, d = i[keep], j[keep], d[keep]
    s2 = _sigma2(u, i, j, d, settings)
    terms = fi[i] * fi[j] * np.exp(-0.5 * np.outer(s2, q**2)) * np.sin(np.outer(d, q))
    fbar = fi[mask].mean(axis=0)
    fq = 2.0 * np.sum(terms / d[:, None], axis=0) / (mask.sum() * fbar**2)
    r = calc.r
    g = (2.0 / math.pi) * calc.qstep * np.sin(np.outer(r, q)) @ fq
    return g * np.exp(-0.5 * (settings.qdamp * r) ** 2)


def _numpy_realspace(stru, mask, settings, calc, zoom):
    """DiffPy's real-space recipe, point by point: cropped Gaussians, window, back to r."""
    grid = calc.grid
    f0 = np.array([forward_weight(el) for el in stru.elements])
    u = _u_of(stru, settings)
    i, j, d = _pairs(stru, mask, zoom)
    keep = (d >= grid.pair_rmin) & (d <= grid.pair_rmax)
    i, j, d = i[keep], j[keep], d[keep]
    s2 = _sigma2(u, i, j, d, settings)
    rm = grid.dr * np.arange(grid.m_lo, grid.m_hi)
    g0 = np.zeros_like(rm)
    norm = mask.sum() * f0[mask].mean() ** 2
    for a, b, dist, var in zip(i, j, d, s2, strict=True):
        bound = PEAK_HALF_BOUND * GAUSS_SIGMA_TO_FWHM * math.sqrt(var)
        lo, hi = math.floor((dist - bound) / grid.dr), math.floor((dist + bound) / grid.dr)
        sel = (np.arange(grid.m_lo, grid.m_hi) >= lo) & (np.arange(grid.m_lo, grid.m_hi) <= hi)
        gauss = np.exp(-0.5 * (rm[sel] - dist) ** 2 / var) / math.sqrt(2 * math.pi * var)
        g0[sel] += 2.0 * f0[a] * f0[b] * gauss / dist / norm
    q = grid.q
    fq = grid.dr * np.sin(np.outer(q, rm)) @ g0
    r = calc.r
    g = (2.0 / math.pi) * grid.dq * np.sin(np.outer(r, q)) @ fq
    return g * np.exp(-0.5 * (settings.qdamp * r) ** 2)


@pytest.mark.parametrize(
    "calculator, extra",
    [("debye", {}), ("debye", HARD), ("debye", {"qstep": 0.157, "qmin": 0.7}),
     ("debye", {"qstep": 0.1, "qmin": 0.8}), ("realspace", {}), ("realspace", HARD)],
    ids=["debye-plain", "debye-hard", "debye-qstep-offset", "debye-qstep-aligned",
         "realspace-plain", "realspace-hard"],
)
def test_kernels_equal_numpy(calculator, extra):
    stru = _full()
    settings = PDFSettings(calculator=calculator, **extra)
    calc = make_calculator(stru.elements, stru.xyz, settings, KEGGIN_R)
    rng = np.random.default_rng(7)
    reference = _numpy_debye if calculator == "debye" else _numpy_realspace
    for zoom in (1.0, 0.993):
        mask = rng.random(len(stru)) < 0.5
        g = calc.gr(calc.prepare(mask), zoom=zoom)
        assert _rel_dev(g, reference(stru, mask, settings, calc, zoom)) < 1e-9


def test_vectorisable_sincos():
    x = np.concatenate([np.linspace(-500.0, 500.0, 20001), np.arange(-40, 41) * math.pi / 4])
    got = np.array([sincos(v) for v in x])
    np.testing.assert_allclose(got[:, 0], np.sin(x), rtol=0, atol=4e-16)
    np.testing.assert_allclose(got[:, 1], np.cos(x), rtol=0, atol=4e-16)


# -- the command line -------------------------------------------------------------------------


def _run_pdf(argv):
    parser = argparse.ArgumentParser()
    pdf_command.add_arguments(parser)
    return pdf_command.main(parser.parse_args(argv))


@pytest.mark.parametrize(
    ("reference", "options"),
    [
        ("diffpy_keggin_W12O40_debye_xray.gr", []),
        ("diffpy_keggin_W12O40_UisoW0.003_O0.008_realspace_xray.gr",
         ["--calculator", "realspace", "--uiso", "W=0.003", "O=0.008"]),
    ],
)
def test_command_reproduces_diffpy(tmp_path, reference, options):
    out = tmp_path / "model.gr"
    assert _run_pdf([str(MOTIF_XYZ), "-o", str(out), *options]) == 0
    head, _ = _header(out)
    for key in ("calculator", "radiation", "qmin", "qmax", "qdamp", "qbroad", "delta2",
                "qstep", "extendedrmax", "rmin", "rmax", "rstep", "uiso", "biso", "uiso_from"):
        assert key in head, key
    got = np.loadtxt(out)
    ref = np.loadtxt(REF / reference)
    np.testing.assert_allclose(got[:, 0], ref[:, 0], atol=1e-9)
    assert _rel_dev(got[:, 1], ref[:, 1]) <= 0.01


@pytest.mark.parametrize(
    ("options", "message"),
    [(["--uiso", "Mo=0.01"], "Mo"), (["--uiso", "W=abc"], "El=U"),
     (["--rstep", "0"], "rstep"), (["--qmax", "0.5"], "qmax"),
     (["--calculator", "realspace", "--qstep", "0.1"], "qstep")],
)
def test_command_errors(tmp_path, options, message):
    with pytest.raises(InputError, match=message):
        _run_pdf([str(MOTIF_XYZ), "-o", str(tmp_path / "x.gr"), *options])


def test_command_output_is_a_pdfgetx3_style_file(tmp_path):
    from mlmotex_hpc.io.defaults import header_settings
    from mlmotex_hpc.io.pdfdata import read_header, read_pdf_data

    out = tmp_path / "model.gr"
    assert _run_pdf([str(MOTIF_XYZ), "-o", str(out), "--qmax", "22", "--qmin", "0.8",
                     "--radiation", "neutron"]) == 0
    lines = out.read_text().splitlines()
    start = lines.index("#### start data")
    assert lines[start + 1:start + 3] == ["#S 1", "#L r($\\AA$)  G($\\AA^{-2}$)"]
    columns = np.loadtxt(lines[start + 3:])
    data = read_pdf_data(out)  # what run reads as data, and its header
    assert np.array_equal(data.r, columns[:, 0]) and np.array_equal(data.g, columns[:, 1])
    assert header_settings(read_header(out)) == {"qmin": 0.8, "qmax": 22.0,
                                                 "radiation": "neutron"}


def test_biso_is_uiso_times_8_pi_squared(tmp_path):
    from mlmotex_hpc.pdf.settings import BISO_PER_UISO

    by_u, by_b = tmp_path / "u.gr", tmp_path / "b.gr"
    assert _run_pdf([str(MOTIF_XYZ), "-o", str(by_u), "--uiso", "W=0.003", "O=0.008"]) == 0
    assert _run_pdf([str(MOTIF_XYZ), "-o", str(by_b), "--biso",
                     f"W={0.003 * BISO_PER_UISO!r}", f"O={0.008 * BISO_PER_UISO!r}"]) == 0
    assert abs(8 * math.pi**2 - BISO_PER_UISO) < 1e-12
    assert np.allclose(np.loadtxt(by_b), np.loadtxt(by_u), rtol=1e-9, atol=0)
    default = tmp_path / "d.gr"
    assert _run_pdf([str(MOTIF_XYZ), "-o", str(default)]) == 0
    assert not np.allclose(np.loadtxt(default)[:, 1], np.loadtxt(by_u)[:, 1], rtol=1e-3)
    head, _ = _header(by_b)
    assert head["uiso_from"] == "W: --biso, O: --biso"


def test_uiso_and_biso_together_are_refused(tmp_path):
    from .conftest import run_cli

    proc = run_cli("pdf", str(MOTIF_XYZ), "-o", str(tmp_path / "x.gr"), "--uiso", "0.01",
                   "--biso", "0.5")
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "x.gr").exists()


def test_command_reads_a_crystal_file_and_its_uiso(tmp_path):
    """The W12O40 motif written as a P1 CIF in a big cell, with Uiso per site: its PDF
    is the .xyz motif's with those Uiso given on the command line."""
    from diffpy.structure import Atom, Lattice
    from diffpy.structure import Structure as Crystal

    motif = read_xyz(MOTIF_XYZ)
    edge = 40.0
    centre = motif.xyz.mean(axis=0)
    crystal = Crystal(lattice=Lattice(edge, edge, edge, 90, 90, 90))
    for k, (el, xyz) in enumerate(zip(motif.elements, motif.xyz, strict=True)):
        atom = Atom(el, (xyz - centre) / edge + 0.5, label=f"{el}{k + 1}")
        atom.Uisoequiv = 0.003 if el == "W" else 0.008
        crystal.addNewAtom(atom)
    cif = tmp_path / "motif.cif"
    crystal.write(str(cif), "cif")
    from_cif, from_xyz = tmp_path / "cif.gr", tmp_path / "xyz.gr"
    assert _run_pdf([str(cif), "-o", str(from_cif)]) == 0
    assert _run_pdf([str(MOTIF_XYZ), "-o", str(from_xyz), "--uiso", "W=0.003",
                     "O=0.008"]) == 0
    head, _ = _header(from_cif)
    assert head["natoms"] == "52"
    assert head["uiso_from"] == "W: structure file, O: structure file"
    ref = np.loadtxt(from_xyz)
    # diffpy.structure writes 6 decimals of fractional coordinates: 2e-5 Å in a 40 Å cell
    from mlmotex_hpc.io.structure import read_structure

    assert np.abs(read_structure(cif).xyz - (motif.xyz - centre + edge / 2)).max() < 2.1e-5
    assert _rel_dev(np.loadtxt(from_cif)[:, 1], ref[:, 1]) < 1e-3
    override = tmp_path / "override.gr"
    assert _run_pdf([str(cif), "-o", str(override), "--uiso", "O=0.02"]) == 0
    assert _header(override)[0]["uiso_from"] == "W: structure file, O: --uiso"
