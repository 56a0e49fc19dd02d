"""The whole program under ``mpirun`` as a subprocess, asserting on the HDF5 content."""

import csv
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from mlmotex_hpc.io.structure import read_xyz
from mlmotex_hpc.output.structure_files import read_vesta

from .conftest import EXAMPLES, KEGGIN_MOTIF_W, KEGGIN_XYZ, keggin_config, run_cli

pytestmark = pytest.mark.mpi


def test_two_ranks_write_every_result(keggin_run):
    out, proc = keggin_run
    with h5py.File(out / "motex.h5") as h5:
        masks = h5["catalogue/mask"][:]
        # catalogue.size 400: min(10 N, 400 / 5) = 80 fits kept for the extract stage
        n_cat = int(h5["catalogue"].attrs["n_catalogue"])
        n_extract = int(h5["polish"].attrs["fits"])
        assert n_cat == 320 and 0 < n_extract <= 80
        assert masks.shape == (n_cat + n_extract, 24)
        assert np.all(h5["catalogue/size"][:] == masks.sum(axis=1))
        origin = h5["catalogue/origin"][:]
        assert (origin[:n_cat] == 0).all() and (origin[n_cat:] == 2).all()
        assert len({m.tobytes() for m in masks}) == len(masks)  # no motif fitted twice
        for name in ("rw", "scale", "zoom", "status"):
            assert h5[f"fits/{name}"].shape == (1, n_cat + n_extract)
        rw = h5["fits/rw"][0]
        assert np.all(np.isfinite(rw)) and np.all((rw > 0) & (rw <= 1))
        assert np.all(h5["fits/status"][0] == 0)
        zoom = h5["fits/zoom"][0]
        assert np.all((zoom >= 0.99) & (zoom <= 1.01))
        assert np.all(h5["fits/batch_done"][:] == 1)
        for name in ("contribution", "uncertainty", "confidence"):
            assert h5[f"atoms/{name}"].shape == (1, 24)
            assert np.all(np.isfinite(h5[f"atoms/{name}"][:]))
        for key in ("test_mae", "test_rmse", "test_r2", "baseline_mae", "params"):
            assert key in h5["ml"].attrs
        assert h5["ml"].attrs["test_mae"] < h5["ml"].attrs["baseline_mae"]
        for key in ("catalogue", "fit", "learn", "explain", "total", "ranks", "fits_per_second"):
            assert key in h5["timings"].attrs
        assert h5["timings"].attrs["ranks"] == 2
        assert "permute" in h5.attrs["config"] and h5.attrs["version"]
        assert h5["shap/values"].shape == (1, n_cat, 25)  # the catalogue's motifs
        assert h5["polish/mask"].shape == (1, 24) and h5["polish/rw"].shape == (1,)
        # the polished motif's Rw is a real fit of it, stored among the rows
        polished = h5["polish/mask"][0].astype(np.uint8)
        row = np.flatnonzero((masks == polished).all(axis=1))
        assert row.size == 1 and h5["fits/rw"][0, row[0]] == h5["polish/rw"][0]


def test_keggin_answer(keggin_run):
    out, proc = keggin_run
    with h5py.File(out / "motex.h5") as h5:
        acv = h5["atoms/contribution"][0]
    in_motif = np.zeros(24, bool)
    in_motif[list(KEGGIN_MOTIF_W)] = True
    assert np.all(acv[in_motif] < 0), acv
    assert np.all(acv[~in_motif] > 0), acv


def test_csv_and_motif_files(keggin_run):
    out, proc = keggin_run
    rows = list(csv.DictReader(open(out / "atom_contributions.csv")))
    assert list(rows[0]) == ["frame", "frame_name", "time", "index", "label", "site",
                             "element", "x", "y", "z", "contribution", "uncertainty",
                             "confidence", "in_motif", "contribution_se", "verdict",
                             "acv_negative"]
    vesta = read_vesta(out / "model_contributions.vesta")["sites"]
    for row in rows:  # a standard error of means over ~200 motifs each: far below σ
        se, sigma = float(row["contribution_se"]), float(row["uncertainty"])
        assert 0 < se < 0.25 * sigma
    assert {(row["frame"], row["frame_name"], row["time"]) for row in rows} == {
        ("0", "DanMAX_AlphaKeggin.gr", "")}
    assert len(rows) == 24
    model = read_xyz(KEGGIN_XYZ)
    for row in rows:
        i = int(row["index"])
        assert row["element"] == model.elements[i] == "W"
        assert np.allclose([float(row[c]) for c in "xyz"], model.xyz[i], atol=1e-6)
        assert row["acv_negative"] == str(int(float(row["contribution"]) < 0))
        assert row["in_motif"] == str(int(i in KEGGIN_MOTIF_W))  # the answer
        assert row["verdict"] == ("in" if i in KEGGIN_MOTIF_W else "out")
        assert row["label"] == vesta[i][1] == f"W{i + 1}"  # the .vesta's name of the atom
        assert row["site"] == ""  # an .xyz model has no crystal sites
    motif = read_xyz(out / "motif.xyz")
    assert motif.elements.count("W") == 12 and motif.elements.count("O") == 40
    expected_w = model.xyz[list(KEGGIN_MOTIF_W)]
    motif_w = [x for e, x in zip(motif.elements, motif.xyz, strict=True) if e == "W"]
    assert np.allclose(np.array(motif_w), expected_w, atol=1e-6)
    # The printed summary names the motif's atoms.
    assert "extracted motif" in proc.stdout
    assert " ".join(f"W{i + 1}" for i in KEGGIN_MOTIF_W) in proc.stdout  # 1-based labels


@pytest.mark.slow
def test_results_do_not_depend_on_rank_count(tmp_path, write_config):
    """Same catalogue and bit-identical fits on 1, 2 and 5 (oversubscribed) ranks."""
    config = write_config(keggin_config(tmp_path, catalogue={"size": 150, "batch_size": 7}))
    names = ("catalogue/mask", "fits/rw", "fits/scale", "fits/zoom", "fits/status")
    results = {}
    for ranks in (1, 2, 5):
        out = tmp_path / f"out{ranks}"
        proc = run_cli("run", str(config), "--until", "fit", "--out", str(out), ranks=ranks)
        assert proc.returncode == 0, proc.stderr
        with h5py.File(out / "motex.h5") as h5:
            results[ranks] = {name: h5[name][:] for name in names}
    for ranks in (2, 5):
        for name in names:
            np.testing.assert_array_equal(results[1][name], results[ranks][name], err_msg=name)


def test_a_run_that_would_not_fit_in_memory_is_refused(tmp_path, write_config):
    """10^9 motifs of the C60 supercell: the estimate refuses before any work."""
    raw = keggin_config(tmp_path, catalogue={"size": 10**9, "seed": 0})
    raw.update(structure=str(EXAMPLES / "c60" / "C60_111_supercell.xyz"),
               data=str(EXAMPLES / "c60" / "C60_simulated.gr"), permute=["C"],
               pdf={"calculator": "debye", "qmin": 0.5, "qmax": 24.0, "uiso": {"C": 0.005}})
    proc = run_cli("run", str(write_config(raw)), ranks=2, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("mlmotex-hpc:")]
    assert len(lines) == 1 and "this run needs about" in lines[0], proc.stderr
    assert "GiB are available" in lines[0]
    assert not (tmp_path / "out" / "motex.h5").exists()


@pytest.mark.slow
def test_serial_hdf5_fallback_gives_the_same_file(tmp_path, write_config):
    config = write_config(keggin_config(tmp_path, catalogue={"size": 120, "batch_size": 8}))
    contents = {}
    for mode, env in (("parallel", {}), ("serial", {"MLMOTEX_SERIAL_HDF5": "1"})):
        out = tmp_path / mode
        proc = run_cli("run", str(config), "--until", "fit", "--out", str(out), ranks=2, env=env)
        assert proc.returncode == 0, proc.stderr
        with h5py.File(out / "motex.h5") as h5:
            assert h5.attrs["hdf5_mode"].startswith(mode)
            contents[mode] = {name: h5[name][:] for name in (
                "catalogue/mask", "catalogue/size", "fits/rw", "fits/scale", "fits/zoom",
                "fits/status", "fits/batch_done", "model/xyz", "data/00000/g")}
        announced = "serial-HDF5 fallback" in proc.stderr
        assert announced == (mode == "serial")
    for name, value in contents["parallel"].items():
        np.testing.assert_array_equal(value, contents["serial"][name], err_msg=name)


@pytest.mark.slow
def test_fault_on_one_rank_ends_the_job(tmp_path, write_config):
    config = write_config(keggin_config(tmp_path, catalogue={"size": 2000, "batch_size": 4}))
    # A hang would end in subprocess.TimeoutExpired: the job must come down by itself.
    proc = run_cli("run", str(config), ranks=3, timeout=90, env={"MLMOTEX_FAULT": "fit:1"})
    assert proc.returncode != 0
    assert "rank 1 of 3 failed" in proc.stderr
    assert "injected fault in stage 'fit'" in proc.stderr


def test_single_rank_without_mpirun(tmp_path, write_config):
    config = write_config(keggin_config(tmp_path, catalogue={"size": 60}))
    proc = run_cli("run", str(config), "--until", "learn")
    assert proc.returncode == 0, proc.stderr
    with h5py.File(tmp_path / "out" / "motex.h5") as h5:
        assert h5["fits/rw"].shape == (1, 48)  # 12 of 60 kept for the extract stage
        assert "test_mae" in h5["ml"].attrs
        assert "atoms" not in h5


@pytest.mark.slow
def test_results_that_would_not_fit_on_disk_are_refused(tmp_path, write_config):
    """151 frames × 3·10^5 motifs of the 456-atom parent: ~38 GiB of results (SHAP values
    for every frame) and twice that while learning, on a small file system (/dev/shm)."""
    out = Path("/dev/shm") / f"mlmotex-test-{os.getpid()}"
    raw = keggin_config(tmp_path, catalogue={"size": 3 * 10**5, "seed": 0})
    raw.update(structure=str(EXAMPLES / "fe2o3_insitu" / "35643-ICSD_222unitcell.xyz"),
               data=str(EXAMPLES / "fe2o3_insitu" / "frames" / "*.gr"), permute=["Fe"],
               pdf={"calculator": "debye", "qmin": 1.0, "qmax": 17.0, "uiso": {"Fe": 0.005}},
               output={"dir": str(out)})
    try:
        proc = run_cli("run", str(write_config(raw)), ranks=2, timeout=120)
        assert proc.returncode == 2, proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("mlmotex-hpc:")]
        assert len(lines) == 1 and "the results need about" in lines[0], proc.stderr
        assert "GiB are free there" in lines[0]
        assert not (out / "motex.h5").exists()
    finally:
        shutil.rmtree(out, ignore_errors=True)


@pytest.mark.slow
def test_uiso_and_delta2_free_on_one_and_three_ranks(tmp_path, write_config):
    """``fit.refine: [scale, zoom, uiso, delta2]`` through the whole fit stage under mpirun:
    each freed parameter stored per motif within its bounds, statuses from the documented
    codes, bit-identical on 1 and 3 ranks; the dry run measures this refinement."""
    fit = {"rmin": 1.6, "rmax": 10.0, "refine": ["scale", "zoom", "uiso", "delta2"],
           "uiso_bounds": [0.001, 0.04], "delta2_bounds": [0.0, 2.0]}
    config = write_config(keggin_config(tmp_path, catalogue={"size": 60, "batch_size": 7},
                                        fit=fit))
    names = ("fits/rw", "fits/scale", "fits/zoom", "fits/status", "fits/uiso_W",
             "fits/uiso_O", "fits/delta2")
    # numba's freshly compiled and cache-loaded fastmath kernels may differ in the last
    # bit (see test_series): compile once, so that both runs below load the cache
    warm = run_cli("run", str(config), "--until", "fit", "--out", str(tmp_path / "warm"))
    assert warm.returncode == 0, warm.stderr
    results = {}
    for ranks in (1, 3):
        out = tmp_path / f"out{ranks}"
        proc = run_cli("run", str(config), "--until", "fit", "--out", str(out), ranks=ranks)
        assert proc.returncode == 0, proc.stderr
        with h5py.File(out / "motex.h5") as h5:
            results[ranks] = {name: h5[name][:] for name in names}
            assert "3 Uiso or delta2 at a bound" in h5["fits"].attrs["status_codes"]
    one = results[1]
    for el in ("W", "O"):
        assert np.all((one[f"fits/uiso_{el}"] >= 0.001) & (one[f"fits/uiso_{el}"] <= 0.04))
    assert np.all((one["fits/delta2"] >= 0.0) & (one["fits/delta2"] <= 2.0))
    assert set(np.unique(one["fits/status"])) <= {0, 1, 3}
    for name in names:
        np.testing.assert_array_equal(one[name], results[3][name], err_msg=name)
    proc = run_cli("run", str(config), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "refine scale, zoom, uiso, delta2" in proc.stdout


@pytest.mark.slow
def test_the_fit_rate_leaves_out_the_kernels_preparation(tmp_path, write_config):
    """A first run on a fresh machine compiles the kernels inside the fit stage: the rate
    it prints must be the fitting's alone, the preparation said on its own. A 3 s pause
    in the warm-up stands in for the compiling."""
    import re

    config = write_config(keggin_config(tmp_path, catalogue={"size": 200, "seed": 1}))
    proc = run_cli("run", str(config), "--until", "fit", ranks=2,
                   env={"MLMOTEX_TEST_PAUSE": "warm_up:3"})
    assert proc.returncode == 0, proc.stderr
    line = re.search(r"(\d+) fits in ([\d.]+) s \(([\d,]+) fits/s on 2 rank\(s\)\), after "
                     r"(\d+) s preparing the kernels", proc.stdout)
    assert line, proc.stdout
    fits, seconds, rate, prepared = (int(line[1]), float(line[2]),
                                     float(line[3].replace(",", "")), int(line[4]))
    assert prepared >= 3 and seconds < prepared  # 200 fits take well under the pause
    assert rate > 2 * fits / (seconds + prepared)  # the pause is not in the rate
