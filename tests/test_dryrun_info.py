"""``run --dry-run`` and ``info``: what they promise, from one rank only."""

from __future__ import annotations

import pytest
import yaml

from .conftest import keggin_config, run_cli


@pytest.mark.mpi
def test_dry_run_reports_and_fits_nothing(tmp_path):
    config = keggin_config(tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = run_cli("run", str(path), "--dry-run", "--ranks", "64", ranks=2, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.count("catalogue ") == 1  # printed by rank 0 only
    # 400 fits: 80 kept for the extract stage (min(10 N, size / 5)), 320 in the catalogue
    assert "320 distinct motifs over N = 24 permutable atoms" in out
    assert "up to 80 fits of catalogue.size kept for connected pieces and polishing" in out
    assert "fits per core-second" in out and "on 64 rank(s)" in out
    assert "pairs per motif" in out and "GiB per rank" in out and "new run" in out
    rate = float(out.split("fit speed")[1].split("fits per")[0].replace(",", ""))
    assert rate > 0
    # steps 3-4 estimated too: fixed hyperparameters, so no search; SHAP on a sample
    line = next(ln for ln in out.splitlines() if ln.startswith("steps 3-4"))
    assert "search 0.0 s" in line and "SHAP" in line and "about 320 motifs a frame" in line
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_dry_run_checks_inputs_like_a_run(tmp_path):
    config = keggin_config(tmp_path, fit={"rmin": 1.6, "rmax": 80.0})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = run_cli("run", str(path), "--dry-run")
    assert proc.returncode == 2
    assert proc.stderr.startswith("mlmotex-hpc: error: config keys 'fit.rmin'/'fit.rmax'")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_dry_run_rejects_zero_ranks(tmp_path):
    proc = run_cli("run", str(tmp_path / "x.yaml"), "--dry-run", "--ranks", "0")
    assert proc.returncode == 2 and "not a positive number of ranks" in proc.stderr


def test_info_names_the_stack():
    full = run_cli("info")
    assert full.returncode == 0, full.stderr
    for key in ("MPI library", "HDF5", "numba threading", "numba cache", "CPU", "xgboost",
                "shap", "diffpy.srfit", "scikit-optimize", "periodictable"):
        assert key in full.stdout, key
    short = run_cli("info", "--short")
    assert short.returncode == 0
    assert "MPI library" in short.stdout and "xgboost" not in short.stdout
    assert len(short.stdout.splitlines()) < len(full.stdout.splitlines())
    # printable text: Open MPI's version string ends in a NUL byte, which would make every
    # job log that prints it a binary file to grep
    assert "\0" not in full.stdout and "\0" not in short.stdout
