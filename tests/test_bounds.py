"""Bounds on everything that sizes an allocation or a loop (issue 27).

A data header's ``qmax = 1e6``, a config's neutron Qmax of 10⁴, the ``pdf`` command's
``--qmax 1e5`` or ``--qstep 1e-9``, r×Q tables of tens of GiB and data files of 10⁷
points each end in one line (exit 2) before any work, in ``run``, ``run --dry-run`` and
``pdf`` alike; header values that make no sense are refused when the config relies on
them and a warning when it overrides them; the dry run's memory line is the measured
peak of the run within a factor 1.5.
"""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import yaml

from mlmotex_hpc.errors import InputError
from mlmotex_hpc.io import pdfdata
from mlmotex_hpc.io.defaults import header_problems, header_settings
from mlmotex_hpc.io.pdfdata import MAX_DATA_POINTS, MAX_OTHER_LINES, read_pdf_data
from mlmotex_hpc.pdf.calculator import make_calculator, table_sizes
from mlmotex_hpc.pdf.scattering import xray_qmax
from mlmotex_hpc.pdf.settings import QMAX_LIMITS, PDFSettings

from .conftest import CLI, KEGGIN_GR, KEGGIN_XYZ, keggin_config, mpi_env, run_cli

pytestmark = pytest.mark.mpi

HEADER = KEGGIN_GR.read_text()


def _one_line(proc, code: int, *words: str, kind: str = "error") -> str:
    """The one ``mlmotex-hpc:`` line of ``proc`` (exit ``code``), holding ``words``."""
    ours = [ln for ln in proc.stderr.splitlines() if ln.startswith("mlmotex-hpc:")]
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert len(ours) == 1, proc.stderr
    assert ours[0].startswith(f"mlmotex-hpc: {kind}: "), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in ours[0], ours[0]
    return ours[0]


def _edited_gr(path, **header) -> str:
    """The Keggin data with header lines ``key = value`` replaced."""
    text = HEADER
    for key, value in header.items():
        text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
        assert n == 1, key
    path.write_text(text)
    return str(path)


def _config(tmp_path, name="c.yaml", pdf=None, **overrides) -> str:
    """A small Keggin config; ``pdf``: the whole pdf section (None: none, so that the
    data header gives qmin, qmax and the radiation)."""
    overrides["catalogue"] = {"size": 20, "seed": 1, "batch_size": 8,
                              **overrides.get("catalogue", {})}
    raw = keggin_config(tmp_path, **overrides)
    if pdf is None:
        del raw["pdf"]
    else:
        raw["pdf"] = pdf
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _both(config: str, *words: str) -> None:
    """The dry run and a 2-rank run refuse ``config`` with the same one line."""
    dry = _one_line(run_cli("run", config, "--dry-run", timeout=60), 2, *words)
    run = _one_line(run_cli("run", config, ranks=2, timeout=60), 2, *words)
    assert dry == run


# -- the Q range -------------------------------------------------------------------------------

def test_qmax_limits_are_the_form_factor_tables_and_a_neutron_bound():
    assert QMAX_LIMITS["xray"] == pytest.approx(xray_qmax("W"))
    assert all(xray_qmax(el) >= QMAX_LIMITS["xray"] for el in ("H", "O", "Fe", "W", "U"))
    assert QMAX_LIMITS["neutron"] == 100.0
    PDFSettings(radiation="neutron", qmax=60.0)  # a spallation source's Qmax is fine
    with pytest.raises(InputError, match="--qmax = 101"):
        PDFSettings(radiation="neutron", qmax=101.0, sources={"qmax": "--qmax"})
    with pytest.raises(InputError, match="pdf.qstep = 1e-09"):
        PDFSettings(qstep=1e-9)


@pytest.mark.slow
def test_header_qmax_of_a_neutron_file_is_refused_naming_the_file(tmp_path):
    gr = _edited_gr(tmp_path / "neutron.gr", mode="neutron", qmax="1e6")
    _both(_config(tmp_path, data=gr), "qmax", "header of neutron.gr", "100.0", "neutron")


@pytest.mark.slow
def test_config_neutron_qmax_is_refused_naming_the_key(tmp_path):
    config = _config(tmp_path, pdf={"radiation": "neutron", "qmax": 10000.0})
    _both(config, "config key 'pdf.qmax'", "10000", "100.0")


@pytest.mark.parametrize("args, words", [
    (["--radiation", "neutron", "--qmax", "1e5"], ["--qmax", "100.0"]),
    (["--qmax", "80"], ["--qmax", "75.4"]),
    (["--qstep", "1e-9"], ["--qstep", "100,000"]),
    (["--rmax", "9000", "--radiation", "neutron", "--qmax", "90"], ["Q grid", "100,000"]),
    (["--rmax", "3000", "--calculator", "realspace"], ["table", "GiB"]),
    (["--rmax", "100", "--rstep", "1e-4", "--calculator", "realspace"], ["peak grid"]),
], ids=["neutron-qmax", "xray-qmax", "qstep", "q-points", "realspace-table", "fine-peaks"])
def test_pdf_command_is_bounded(args, words, tmp_path):
    proc = run_cli("pdf", str(KEGGIN_XYZ), "-o", str(tmp_path / "x.gr"), *args, timeout=60)
    _one_line(proc, 2, *words)
    assert not (tmp_path / "x.gr").exists()


def test_table_sizes_are_the_calculators_own():
    """The memory estimate's sizes are those of the tables a calculator builds."""
    from mlmotex_hpc.io.structure import read_xyz

    model = read_xyz(KEGGIN_XYZ)
    r = np.arange(1.6, 12.0, 0.003)
    for calculator in ("debye", "realspace"):
        s = PDFSettings(calculator=calculator, radiation="neutron", qmax=40.0)
        calc = make_calculator(model.elements, model.xyz, s, r)
        sizes = table_sizes(model.elements, s, r)
        if calculator == "debye":
            assert calc._kernel.shape == (sizes.n_r, sizes.n_q)
        else:
            assert calc._to_r.shape == (sizes.n_r, sizes.n_q)
            assert calc._to_q.shape == (sizes.n_q, sizes.n_peak)


# -- data files and memory -------------------------------------------------------------------

@pytest.mark.slow
def test_a_file_of_too_many_points_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    lines = MAX_DATA_POINTS + MAX_OTHER_LINES + 1
    big = tmp_path / "big.gr"
    big.write_text("# qmax = 20\n" + "0.5\n".join(map(str, range(lines))) + " 0.5\n")
    _both(_config(tmp_path, data=str(big)), "big.gr", f"{lines + 1:,} lines", "1,000,000")
    # a point more than allowed, but few enough lines: refused while parsing (shown with
    # a limit of 100 points)
    monkeypatch.setattr(pdfdata, "MAX_DATA_POINTS", 100)
    just = tmp_path / "just.gr"
    r = np.arange(101) * 1e-2
    np.savetxt(just, np.column_stack([r, np.sin(r)]))
    with pytest.raises(InputError, match="line 101.*at most 100 data points"):
        read_pdf_data(just)
    np.savetxt(just, np.column_stack([r[:100], np.sin(r[:100])]))
    assert len(read_pdf_data(just)) == 100


_PEAK = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=False, stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


@pytest.mark.parametrize("calculator, qmax, rmax", [("debye", 70.0, 40.0),
                                                    ("realspace", 20.0, 30.0)])
@pytest.mark.slow
def test_dry_run_memory_is_the_measured_peak(calculator, qmax, rmax, tmp_path):
    """A fine-grid file (r 0-200 Å, step 10⁻³ Å: 200,001 points), the tables of a wide
    fit range and a high Qmax: the dry run's rank-0 memory is the peak RSS of the run
    within a factor 1.5 (the old guess, 8 kB a data point, missed the Debye case's by
    1.8)."""
    r = np.arange(200_001) * 1e-3
    data = read_pdf_data(KEGGIN_GR)
    g = np.interp(r, data.r, data.g, right=0.0)
    fine = tmp_path / "fine.gr"
    with fine.open("w") as f:
        f.write(f"# qmin = 0.7\n# qmax = {qmax}\n# mode = xray\n")
        np.savetxt(f, np.column_stack([r, g]), fmt=("%.8g", "%.6g"))
    pdf = {"calculator": calculator, "qdamp": 0.05, "uiso": {"W": 0.00507, "O": 0.00507}}
    config = _config(tmp_path, pdf=pdf, data=str(fine), fit={"rmin": 1.6, "rmax": rmax},
                     catalogue={"size": 13, "seed": 1, "batch_size": 8})
    dry = run_cli("run", config, "--dry-run", timeout=120)
    assert dry.returncode == 0, dry.stderr
    line = next(ln for ln in dry.stdout.splitlines() if ln.startswith("memory"))
    estimate = float(re.search(r"([\d.]+) GiB on rank 0", line).group(1)) * 2**30
    proc = subprocess.run([sys.executable, "-c", _PEAK, str(CLI), "run", config, "--until",
                           "fit", "--quiet"], capture_output=True, text=True, timeout=120,
                          env=mpi_env())
    assert proc.returncode == 0, proc.stderr
    peak = int(proc.stdout.split()[-1]) * 1024  # ru_maxrss: KiB on Linux
    assert (tmp_path / "out" / "motex.h5").exists(), proc.stderr
    assert 1 / 1.5 < peak / estimate < 1.5, (line, peak / 2**30)


# -- header values that make no sense -------------------------------------------------------

BAD_HEADERS = [("qmax", "abc", "not a number"), ("qmax", "-5", "not a Q"),
               ("mode", "electron", "not a radiation")]


def test_header_problems_are_found():
    for key, value, why in BAD_HEADERS:
        meta = {"qmin": "0.7", "qmax": "20", "mode": "xray", key: value}
        problems = header_problems(meta)
        setting = "radiation" if key == "mode" else key
        assert list(problems) == [setting] and why in problems[setting][2]
        assert setting not in header_settings(meta)


@pytest.mark.slow
@pytest.mark.parametrize("key, value, why", BAD_HEADERS, ids=[b[1] for b in BAD_HEADERS])
def test_a_nonsense_header_value_is_refused_when_the_config_relies_on_it(key, value, why,
                                                                         tmp_path):
    gr = _edited_gr(tmp_path / "odd.gr", **{key: value})
    setting = "pdf.radiation" if key == "mode" else f"pdf.{key}"
    config = _config(tmp_path, data=gr)
    words = ("odd.gr", f"{key} = '{value}'", why, setting)
    if key == "mode":
        _both(config, *words)
    else:
        _one_line(run_cli("run", config, "--dry-run", timeout=60), 2, *words)


@pytest.mark.parametrize("key, value, why", BAD_HEADERS, ids=[b[1] for b in BAD_HEADERS])
def test_a_nonsense_header_value_is_a_warning_when_the_config_sets_the_key(key, value, why,
                                                                           tmp_path):
    gr = _edited_gr(tmp_path / "odd.gr", **{key: value})
    setting = "pdf.radiation" if key == "mode" else f"pdf.{key}"
    pdf = {"radiation": "xray", "qmin": 0.7, "qmax": 20.0}
    proc = run_cli("run", _config(tmp_path, pdf=pdf, data=gr), "--dry-run", timeout=60)
    _one_line(proc, 0, "odd.gr", f"{key} = '{value}'", why, setting, kind="warning")
    assert "memory" in proc.stdout
