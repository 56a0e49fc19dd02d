"""The measured-PDF reader: real beamline files, plain tables and every bad file's error.

Real files in ``tests/data/pdfdata/`` are byte-identical copies of the ML-MotEx example data
(Apache-2.0, see the NOTICE.md there); ``good/`` and ``bad/`` hold small synthetic files,
each bad one with a comment saying where it goes wrong.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from mlmotex_hpc.errors import InputError
from mlmotex_hpc.io.pdfdata import MIN_FIT_POINTS, PDFData, read_pdf_data

from .conftest import DATA

PDFDIR = DATA / "pdfdata"
GOOD = PDFDIR / "good"
BAD = PDFDIR / "bad"


def raises_input_error(path, *fragments: str) -> str:
    """Read ``path``, expect an InputError of one line holding the file name and fragments."""
    with pytest.raises(InputError) as info:
        read_pdf_data(path)
    message = str(info.value)
    assert "\n" not in message
    assert path.name in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---------------------------------------------------------------- real files


@pytest.mark.parametrize(
    ("name", "npoints", "rmin", "rmax", "step"),
    [
        ("DanMAX_AlphaKeggin.gr", 3001, 0.0, 30.0, 0.01),  # xPDFsuite, CRLF
        ("Fe2O3_3204M_0.gr", 3001, 0.0, 30.0, 0.01),  # PDFgetX3, CRLF
        ("DanMAX_AlphaKeggin_nyquist.gr", 301, 0.0, 30.0, 0.1),  # plain, %.18e
        ("Al-Mo15-rsub_dioptas.gr", 6001, 0.0, 60.0, 0.01),  # Dioptas, tabs, no final newline
    ],
)
def test_real_files_parse_on_their_grid(name, npoints, rmin, rmax, step):
    data = read_pdf_data(PDFDIR / name)
    assert isinstance(data, PDFData)
    assert data.path == PDFDIR / name
    assert len(data) == len(data.r) == len(data.g) == npoints
    assert data.r[0] == pytest.approx(rmin)
    assert data.r[-1] == pytest.approx(rmax)
    assert data.rstep == pytest.approx(step)
    np.testing.assert_allclose(np.diff(data.r), step, rtol=1e-6)
    assert data.dg is None
    assert data.r.dtype == data.g.dtype == np.float64
    assert np.all(np.isfinite(data.g))


def test_xpdfsuite_header_and_values():
    path = PDFDIR / "DanMAX_AlphaKeggin.gr"
    assert b"\r\n" in path.read_bytes()  # the original Windows line endings
    data = read_pdf_data(path)
    meta = data.metadata
    assert meta["wavelength"] == "0.1"
    assert meta["qmin"] == "0.7"
    assert meta["qmax"] == "19.9989799422"
    assert meta["composition"] == "W12O40"
    assert meta["rstep"] == "0.01"
    assert meta["inputdir"] == "C:/Users/Nanostructure/Documents/DanMAX/Alpha_Keggin"
    # data lines: "0 0" (line 27), "0.01 1.15625e-05" (line 28) ... "30 0.0255095" (3027)
    assert data.g[1] == pytest.approx(1.15625e-05)
    assert data.g[-1] == pytest.approx(0.0255095)
    assert data.line_numbers[0] == 27
    assert data.line_numbers[-1] == 3027


def test_pdfgetx3_header():
    data = read_pdf_data(PDFDIR / "Fe2O3_3204M_0.gr")
    assert data.metadata["version"] == "pdfgetx3-1.0-r2152-20130314"
    assert data.metadata["composition"] == "Fe2O3"
    assert data.metadata["qmin"] == "1"
    assert data.metadata["qmax"] == "17"
    assert data.metadata["backgroundfile"] == ""
    assert data.g[1] == pytest.approx(0.00758642)


def test_nyquist_file_matches_every_tenth_point_of_the_full_one():
    full = read_pdf_data(PDFDIR / "DanMAX_AlphaKeggin.gr")
    nyquist = read_pdf_data(PDFDIR / "DanMAX_AlphaKeggin_nyquist.gr")
    np.testing.assert_allclose(nyquist.r, full.r[::10], atol=1e-12)
    np.testing.assert_allclose(nyquist.g, full.g[::10], rtol=1e-12)
    assert nyquist.metadata == {}


def test_dioptas_file_without_final_newline():
    path = PDFDIR / "Al-Mo15-rsub_dioptas.gr"
    assert not path.read_bytes().endswith(b"\n")
    data = read_pdf_data(path)
    assert data.g[-1] == pytest.approx(0.0062676310471325636)


# ---------------------------------------------------------------- good synthetic files


def test_four_columns_give_dg_and_weights():
    data = read_pdf_data(GOOD / "four_columns.gr")
    assert len(data) == 20
    assert data.dg is not None
    np.testing.assert_allclose(data.dg, 0.01 * np.arange(1, 21))
    sl = data.fit_range(1.0, 2.9)
    np.testing.assert_allclose(data.weights(sl), 1.0 / data.dg**2)


def test_three_comma_separated_columns_are_r_g_dg():
    data = read_pdf_data(GOOD / "three_columns.csv")
    assert len(data) == 20
    np.testing.assert_allclose(data.dg, 0.02)
    assert data.rstep == pytest.approx(0.1)


def test_column_names_of_the_l_line_choose_the_columns():
    data = read_pdf_data(GOOD / "named_columns.gr")  # "#L r dr G dG"
    plain = read_pdf_data(GOOD / "four_columns.gr")  # r G dr dG, the same r and G
    np.testing.assert_allclose(data.r, plain.r)
    np.testing.assert_allclose(data.g, plain.g)
    np.testing.assert_allclose(data.dg, plain.dg)
    assert data.metadata["composition"] == "W12O40"
    assert data.metadata["inputdir"] == "C:/data"


@pytest.mark.parametrize("name", ["comments_only.gr", "no_header.gr", "trailing_blank_lines.gr"])
def test_plain_two_columns(name):
    data = read_pdf_data(GOOD / name)
    assert len(data) == 20
    assert data.r[0] == pytest.approx(1.0)
    assert data.r[-1] == pytest.approx(2.9)
    assert data.dg is None


def test_comment_header_key_value_pairs_become_metadata():
    data = read_pdf_data(GOOD / "comments_only.gr")
    assert data.metadata == {"qmin": "0.7", "qmax": "20"}


def test_all_zero_dg_means_no_uncertainties():
    data = read_pdf_data(GOOD / "zero_dg.gr")
    assert data.dg is None
    with pytest.raises(InputError, match="zero_dg.gr has no dG column"):
        data.weights(data.fit_range(1.0, 2.9))


def test_non_positive_dg_refused_only_as_weights_in_the_range():
    path = GOOD / "nonpositive_dg.gr"  # dG = 0 at r = 2.5 and 2.6 (lines 17, 18)
    data = read_pdf_data(path)
    assert data.dg is not None
    clean = data.fit_range(1.0, 2.4)
    np.testing.assert_allclose(data.weights(clean), 1.0 / 0.01**2)
    with pytest.raises(InputError) as info:
        data.weights(data.fit_range(1.0, 3.4))
    message = str(info.value)
    assert path.name in message and "line 17" in message and "r = 2.5" in message
    assert "2 points" in message


def test_no_dg_column_refused_as_weights():
    data = read_pdf_data(PDFDIR / "DanMAX_AlphaKeggin.gr")
    with pytest.raises(InputError, match="DanMAX_AlphaKeggin.gr has no dG column"):
        data.weights(data.fit_range(1.6, 10.0))


@pytest.mark.parametrize("newline", ["\r\n", "\r", "\n"])
def test_line_endings(tmp_path, newline):
    source = (GOOD / "named_columns.gr").read_text()
    path = tmp_path / "endings.gr"
    path.write_bytes(source.replace("\n", newline).encode())
    data = read_pdf_data(path)
    reference = read_pdf_data(GOOD / "named_columns.gr")
    np.testing.assert_array_equal(data.r, reference.r)
    np.testing.assert_array_equal(data.g, reference.g)
    assert data.metadata == reference.metadata
    np.testing.assert_array_equal(data.line_numbers, reference.line_numbers)


def test_crlf_error_names_the_same_line(tmp_path):
    path = tmp_path / "nan_crlf.gr"
    path.write_bytes((BAD / "nan.gr").read_bytes().replace(b"\n", b"\r\n"))
    raises_input_error(path, "line 8")


def test_utf8_bom_and_latin1_header(tmp_path):
    body = (GOOD / "comments_only.gr").read_text()
    bom = tmp_path / "bom.gr"
    bom.write_bytes(b"\xef\xbb\xbf" + body.encode())
    latin = tmp_path / "latin1.gr"
    latin.write_bytes(("# measured at 25 \u00b0C\n" + body).encode("latin-1"))
    for path in (bom, latin):
        assert len(read_pdf_data(path)) == 20


def test_trailing_comment_on_a_data_line(tmp_path):
    lines = (GOOD / "no_header.gr").read_text().splitlines()
    lines[3] += "  # a note"
    path = tmp_path / "note.gr"
    path.write_text("\n".join(lines))
    assert len(read_pdf_data(path)) == 20


# ---------------------------------------------------------------- fit range


@pytest.fixture(scope="module")
def keggin() -> PDFData:
    return read_pdf_data(PDFDIR / "DanMAX_AlphaKeggin.gr")


def test_fit_range_includes_both_ends(keggin):
    sl = keggin.fit_range(1.6, 10.0)
    r = keggin.r[sl]
    assert r[0] == pytest.approx(1.6)
    assert r[-1] == pytest.approx(10.0)
    assert len(r) == 841
    assert np.all((r >= 1.6 - 1e-9) & (r <= 10.0 + 1e-9))


def test_fit_range_tolerates_float_rounding(keggin):
    assert keggin.fit_range(1.6 + 1e-10, 10.0 - 1e-10) == keggin.fit_range(1.6, 10.0)
    assert keggin.fit_range(0.0, 30.0) == slice(0, 3001)


def test_fit_range_between_grid_points(keggin):
    r = keggin.r[keggin.fit_range(1.605, 1.755)]
    assert r[0] == pytest.approx(1.61)
    assert r[-1] == pytest.approx(1.75)


@pytest.mark.parametrize("rmin, rmax", [(1.6, 40.0), (-1.0, 10.0), (31.0, 35.0)])
def test_fit_range_outside_the_data(keggin, rmin, rmax):
    with pytest.raises(InputError) as info:
        keggin.fit_range(rmin, rmax)
    message = str(info.value)
    assert "DanMAX_AlphaKeggin.gr" in message
    assert f"{rmin:g}–{rmax:g} Å" in message
    assert "outside" in message and "r 0–30 Å" in message


def test_fit_range_with_too_few_points(keggin):
    with pytest.raises(InputError) as info:
        keggin.fit_range(1.6, 1.68)  # 9 points
    message = str(info.value)
    assert "DanMAX_AlphaKeggin.gr" in message and "1.6–1.68 Å" in message
    assert "9 points" in message and f"at least {MIN_FIT_POINTS}" in message
    assert "r 0–30 Å" in message
    assert len(keggin.r[keggin.fit_range(1.6, 1.69)]) == MIN_FIT_POINTS


@pytest.mark.parametrize("rmin, rmax", [(10.0, 1.6), (5.0, 5.0), (float("nan"), 10.0)])
def test_fit_range_empty(keggin, rmin, rmax):
    with pytest.raises(InputError) as info:
        keggin.fit_range(rmin, rmax)
    message = str(info.value)
    assert "is empty" in message and "rmin < rmax" in message
    assert "DanMAX_AlphaKeggin.gr" in message and "r 0–30 Å" in message


def test_fit_range_on_a_small_file():
    data = read_pdf_data(GOOD / "no_header.gr")  # 20 points, r 1.0–2.9
    with pytest.raises(InputError, match="holds 6 points"):
        data.fit_range(1.0, 1.5)


# ---------------------------------------------------------------- bad files


@pytest.mark.parametrize(
    ("name", "fragments"),
    [
        ("empty.gr", ["is empty"]),
        ("header_only.gr", ["no numeric data", "line 11"]),
        ("text_only.txt", ["no numeric data"]),
        ("descending.gr", ["line 3", "descending"]),
        ("non_monotonic.gr", ["line 13", "r = 2 Å after r = 2.1 Å", "not monotonic"]),
        ("duplicate_r.gr", ["line 10", "duplicate r = 1.7", "line 9"]),
        ("missing_point.gr", ["line 14", "r step 0.2 Å", "uniform"]),
        ("non_uniform.gr", ["line 3", "uniform"]),
        ("nan.gr", ["line 8", "'nan' is not a finite number"]),
        ("inf.gr", ["line 13", "'-inf' is not a finite number"]),
        ("text_in_data.gr", ["line 6", "expected numbers", "'1.40 0.1x'"]),
        ("section_in_data.gr", ["line 19", "expected numbers", "'[PDF]'"]),
        ("inconsistent_columns.gr", ["line 11", "3 columns", "began with 4 at line 2"]),
        ("one_column.gr", ["line 2", "1 column(s)"]),
        ("five_columns.gr", ["line 2", "5 column(s)"]),
        ("single_point.gr", ["line 2", "only one data point"]),
    ],
)
def test_bad_file_gives_one_clear_error(name, fragments):
    raises_input_error(BAD / name, *fragments)


def test_missing_file(tmp_path):
    raises_input_error(tmp_path / "absent.gr", "cannot read", "No such file")


def test_directory_instead_of_file(tmp_path):
    folder = tmp_path / "frames.gr"
    folder.mkdir()
    raises_input_error(folder, "cannot read")


def test_binary_file(tmp_path):
    path = tmp_path / "data.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n\x00\x00\x00\x00")
    raises_input_error(path, "not a text file")


def test_unreadable_file(tmp_path):
    path = tmp_path / "locked.gr"
    path.write_text((GOOD / "no_header.gr").read_text())
    path.chmod(0)
    try:
        try:
            path.read_bytes()
        except PermissionError:
            raises_input_error(path, "cannot read", "Permission denied")
        else:
            # root reads anything: check in a child without the capabilities that let it
            # (setpriv is in util-linux, on every Debian system)
            setpriv = shutil.which("setpriv")
            assert setpriv, "running as root: setpriv (util-linux) is needed for this test"
            script = (
                "import sys\n"
                "from mlmotex_hpc.errors import InputError\n"
                "from mlmotex_hpc.io.pdfdata import read_pdf_data\n"
                "try:\n"
                "    read_pdf_data(sys.argv[1])\n"
                "except InputError as exc:\n"
                "    print(exc)\n"
                "    sys.exit(2)\n"
            )
            proc = subprocess.run(
                [setpriv, "--bounding-set=-dac_override,-dac_read_search", sys.executable,
                 "-c", script, str(path)],
                capture_output=True, text=True, timeout=60,
            )
            assert proc.returncode == 2, proc.stderr
            message = proc.stdout.strip()
            assert "\n" not in message and path.name in message
            assert "cannot read" in message and "Permission denied" in message, message
    finally:
        path.chmod(0o644)
