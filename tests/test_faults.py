"""Hostile input, faults and second jobs (issue 14): the job always ends, with one
exit code, one line (or one traceback), and nothing computed lost."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest
import yaml

from mlmotex_hpc.io.pdfdata import read_pdf_data

from .conftest import CLI, KEGGIN_GR, KEGGIN_XYZ, MPIRUN, keggin_config, mpi_env, run_cli
from .test_resume import errors

pytestmark = pytest.mark.mpi


def _config(tmp_path, **overrides):
    overrides["catalogue"] = {"size": 64, "seed": 1, "batch_size": 8,
                              **overrides.get("catalogue", {})}
    raw = keggin_config(tmp_path, **overrides)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _expect_one_line(proc, code: int, *words: str) -> None:
    ours = errors(proc)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert len(ours) == 1, proc.stderr
    assert ours[0].startswith("mlmotex-hpc: error: "), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in ours[0], ours[0]


#: (stage, ranks where it runs): inputs and outputs are rank 0's work.
STAGES = [("inputs", [0]), ("fit", None), ("learn", None), ("explain", None),
          ("outputs", [0])]


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [2, 3])
def test_an_input_error_on_any_rank_in_any_stage_ends_the_job(ranks, tmp_path):
    """MLMOTEX_FAULT=stage:rank:input raises an InputError on that rank alone, as bad data
    met on one rank would: every rank ends, exit code 2, one line, no traceback."""
    cfg = _config(tmp_path)
    for stage, where in STAGES:
        for rank in where or range(ranks):
            spec = f"{stage}:{rank}:input"
            proc = run_cli("run", str(cfg), "--overwrite", "--quiet", ranks=ranks, timeout=90,
                           env={"MLMOTEX_FAULT": spec})
            _expect_one_line(proc, 2, f"MLMOTEX_FAULT={spec}")


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["fit", "learn", "explain"])
def test_a_crash_on_the_last_rank_ends_the_job_with_its_traceback(stage, tmp_path):
    cfg = _config(tmp_path)
    proc = run_cli("run", str(cfg), "--quiet", ranks=3, timeout=90,
                   env={"MLMOTEX_FAULT": f"{stage}:2"})
    assert proc.returncode not in (0, 2), proc.stderr
    assert proc.stderr.count("Traceback") == 1, proc.stderr
    assert "rank 2 of 3 failed" in proc.stderr
    assert f"injected fault in stage '{stage}'" in proc.stderr


@pytest.mark.slow
def test_fits_done_before_a_fault_are_kept_and_resumed(tmp_path):
    cfg = _config(tmp_path, catalogue={"size": 400, "seed": 1, "batch_size": 8})
    proc = run_cli("run", str(cfg), "--quiet", ranks=2, timeout=90,
                   env={"MLMOTEX_FAULT": "learn:1:input"})
    assert proc.returncode == 2
    h5 = tmp_path / "out" / "motex.h5"
    with h5py.File(h5) as f:
        assert f["fits/batch_done"][()].all() and "complete" not in f.attrs
    # an aborted job may leave its learning copy; the next run replaces it
    again = run_cli("run", str(cfg), "--quiet", ranks=2)
    assert again.returncode == 0, again.stderr
    with h5py.File(h5) as f:
        assert f.attrs["complete"]
    assert not (tmp_path / "out" / "motex.h5.finishing").exists()


def _keggin_frame(path, factor=1.0, dg=None):
    data = read_pdf_data(KEGGIN_GR)
    rows = [f"{r} {g * factor}" + ("" if dg is None else f" {dg}")
            for r, g in zip(data.r, data.g, strict=True)]
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def _model_with(tmp_path, edit) -> str:
    lines = KEGGIN_XYZ.read_text().splitlines()
    lines = edit(lines)
    path = tmp_path / "model.xyz"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _rename_first_w(lines):
    for i, line in enumerate(lines[2:], 2):
        if line.split()[0] == "W":
            lines[i] = line.replace("W", "Es", 1)
            break
    return lines


#: Inputs refused before any work: (name, config overrides (tmp_path -> dict), words of
#: the one line). Each was a hang, a traceback or a late error before.
REFUSED = [
    ("realspace Uiso 0", lambda t: {"catalogue": {"size": 10}, "pdf": {
        "calculator": "realspace", "qdamp": 0.0, "uiso": {"W": 0.0, "O": 0.0}}},
     ["Uiso > 0"]),
    ("no form factor", lambda t: {"structure": _model_with(t, _rename_first_w),
                                  "catalogue": {"size": 10}}, ["'Es'", "form factor"]),
    ("huge bond threshold", lambda t: {"bond_threshold": 1e200}, ["bond_threshold"]),
    ("frame of zeros", lambda t: {"data": _keggin_frame(t / "z.gr", 0.0)}, ["z.gr", "zero"]),
    ("G x 1e-300", lambda t: {"data": _keggin_frame(t / "s.gr", 1e-300)}, ["s.gr", "Rescale"]),
    ("G x 1e200", lambda t: {"data": _keggin_frame(t / "b.gr", 1e200)}, ["b.gr", "Rescale"]),
    ("dG 1e-200", lambda t: {"data": _keggin_frame(t / "d.gr", 1.0, 1e-200),
                             "fit": {"weights": "dG"}}, ["d.gr", "too small"]),
    ("X-ray qmax 80", lambda t: {"pdf": {"qmax": 80.0}}, ["75.4"]),
    ("qstep 1e-5", lambda t: {"pdf": {"qstep": 1e-5}}, ["pdf.qstep"]),
    ("zoom bounds", lambda t: {"fit": {"zoom_bounds": [1e-6, 1000]}}, ["fit.zoom_bounds"]),
    ("max_depth -3", lambda t: {"learn": {"params": {"max_depth": -3}}}, ["learn.params"]),
    ("unknown param", lambda t: {"learn": {"params": {"max_dept": 3}}}, ["max_dept"]),
    ("float trees", lambda t: {"learn": {"params": {"n_estimators": 50.0}}},
     ["n_estimators"]),
    ("seed 2^33", lambda t: {"learn": {"seed": 2**33}}, ["learn.seed"]),
    ("more atom lines than the count", lambda t: {"structure": _model_with(
        t, lambda ls: ls + [ls[2].replace(ls[2].split()[1], "30.0", 1)])}, ["announces 104"]),
    ("two atoms at one place", lambda t: {"structure": _model_with(
        t, lambda ls: [str(int(ls[0]) + 1), ls[1]] + ls[2:] + [ls[3]])}, ["lines 4 and 107"]),
    ("an atom 1e6 Å away", lambda t: {"structure": _model_with(
        t, lambda ls: [str(int(ls[0]) + 1), ls[1]] + ls[2:] + ["W 1e6 0 0"])},
     ["line 107", "nearest neighbour"]),
    ("enumerate 2^33", lambda t: {"permute": ["W", "O"], "structure": _model_with(
        t, lambda ls: ["33", ""] + [ls[2 + i] for i in range(33)]),
        "catalogue": {"size": "all"}}, ["2^33", "N ≤ 32"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, overrides, words", REFUSED, ids=[r[0] for r in REFUSED])
def test_bad_inputs_are_refused_before_any_file_is_written(name, overrides, words, tmp_path):
    raw = keggin_config(tmp_path, catalogue={"size": 300, "seed": 1, "batch_size": 16})
    for key, value in overrides(tmp_path).items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and key in raw \
            and isinstance(raw[key], dict) else value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = run_cli("run", str(path), ranks=2, timeout=60)
    _expect_one_line(proc, 2, *words)
    assert not (tmp_path / "out" / "motex.h5").exists()


@pytest.mark.slow
def test_unreadable_config_and_masks_files(tmp_path):
    nested = tmp_path / "nested.yaml"
    nested.write_text("structure: " + "[" * 5000 + "]" * 5000 + "\n")
    _expect_one_line(run_cli("run", str(nested), ranks=2, timeout=60), 2, "nested too deeply")
    masks = tmp_path / "m.txt"
    masks.write_text("\n".join("0" * i + "1" * (24 - i) for i in range(12)), encoding="utf-16")
    path = _config(tmp_path, catalogue={"masks_file": str(masks)})
    _expect_one_line(run_cli("run", str(path), ranks=2, timeout=60), 2, "not UTF-8")
    # a byte-order mark and tabs are read; a repeated motif is refused, naming both lines
    rows = ["\t".join("1" if j >= i else "0" for j in range(24)) for i in range(12)]
    masks.write_text("\ufeff" + "\n".join(rows) + "\n", encoding="utf-8")
    proc = run_cli("run", str(path), "--until", "fit", "--quiet", ranks=2, timeout=120)
    assert proc.returncode == 0, proc.stderr
    masks.write_text("\n".join(rows + rows[3:4]) + "\n")
    _expect_one_line(run_cli("run", str(path), "--overwrite", ranks=2, timeout=60), 2,
                     "line 13", "line 4")


@pytest.mark.slow
def test_learn_on_a_truncated_file(keggin_run, tmp_path):
    out, _ = keggin_run
    h5 = tmp_path / "motex.h5"
    data = (out / "motex.h5").read_bytes()
    h5.write_bytes(data[: len(data) // 2])
    for args in (["learn", str(h5)], ["plot", str(h5)], ["refine", str(h5)]):
        proc = run_cli(*args, ranks=2 if args[0] == "learn" else None, timeout=60)
        _expect_one_line(proc, 2, str(h5))


@pytest.mark.slow
def test_resume_refuses_changed_or_added_data(tmp_path):
    frame = _keggin_frame(tmp_path / "a.gr")
    cfg = _config(tmp_path, data=str(tmp_path / "*.gr"))
    proc = run_cli("run", str(cfg), "--until", "fit", "--quiet", ranks=2)
    assert proc.returncode == 0, proc.stderr
    h5 = tmp_path / "out" / "motex.h5"
    with h5py.File(h5, "r+") as f:  # as if killed: one work unit left to do
        f["fits/batch_done"][0, 0] = 0
    before = h5.read_bytes()
    _keggin_frame(tmp_path / "a.gr", 1.5)
    _expect_one_line(run_cli("run", str(cfg), ranks=2), 2, "a.gr has changed")
    _keggin_frame(tmp_path / "a.gr")  # restored: the glob now gains a file
    shutil.copy(frame, tmp_path / "b.gr")
    _expect_one_line(run_cli("run", str(cfg), ranks=2), 2, "b.gr was not among the data")
    assert h5.read_bytes() == before  # touched neither time
    (tmp_path / "b.gr").unlink()
    proc = run_cli("run", str(cfg), "--quiet", ranks=2)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_a_second_job_is_refused_and_the_first_loses_nothing(tmp_path):
    cfg = _config(tmp_path, catalogue={"size": 300, "seed": 1, "batch_size": 16})
    command = [MPIRUN, "--bind-to", "none", "-n", "2", str(CLI), "run", str(cfg)]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=mpi_env(MLMOTEX_TEST_PAUSE="learn:8"), start_new_session=True)
    try:
        finishing = tmp_path / "out" / "motex.h5.finishing"
        deadline = time.monotonic() + 60
        while not finishing.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert finishing.exists(), "the first job never reached learning"
        second = run_cli("run", str(cfg), "--overwrite", ranks=2, timeout=60)
        _expect_one_line(second, 2, "still running", "one job per output folder")
        relearn = run_cli("learn", str(tmp_path / "out" / "motex.h5"), ranks=1, timeout=60)
        _expect_one_line(relearn, 2, "still running")
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 0, err
    with h5py.File(tmp_path / "out" / "motex.h5") as f:
        assert f.attrs["complete"] and np.isfinite(f["atoms/contribution"][()]).all()


@pytest.mark.slow
def test_a_run_whose_learn_settings_changed_reuses_its_fits(tmp_path):
    cfg = _config(tmp_path)
    proc = run_cli("run", str(cfg), "--until", "fit", "--quiet", ranks=2)
    assert proc.returncode == 0, proc.stderr
    again = run_cli("run", str(cfg), ranks=2)  # --until fit stopped it: this finishes it
    assert again.returncode == 0 and "finished up to stage fit" in again.stdout, again.stderr
    h5 = tmp_path / "out" / "motex.h5"
    with h5py.File(h5) as f:  # the catalogue's fits (the extract stage's rows follow)
        rw = f["fits/rw"][:, : f["catalogue"].attrs["n_catalogue"]]
    raw = yaml.safe_load(cfg.read_text())
    raw["learn"]["params"] = {"learning_rate": 0.2, "max_depth": 2, "n_estimators": 50}
    cfg.write_text(yaml.safe_dump(raw))
    proc = run_cli("run", str(cfg), ranks=2)
    assert proc.returncode == 0, proc.stderr
    assert "only the learn settings changed" in proc.stdout
    assert "step 2: fitting" not in proc.stdout
    with h5py.File(h5) as f:  # the catalogue's fits kept; the extract stage's follow
        np.testing.assert_array_equal(f["fits/rw"][:, : rw.shape[1]], rw)
        assert (f["catalogue/origin"][rw.shape[1]:] == 2).all()
        assert '"max_depth": 2' in f["ml"].attrs["params"]
        assert "max_depth: 2" in f.attrs["config"]
    assert "nothing to do" in run_cli("run", str(cfg), ranks=1).stdout


def test_serial_commands_refuse_impossible_outputs(keggin_run, tmp_path):
    out, _ = keggin_run
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    _expect_one_line(run_cli("plot", str(out / "motex.h5"), "-o", str(a_file)), 2,
                     "cannot create the output folder")
    _expect_one_line(run_cli("pdf", str(KEGGIN_XYZ), "-o", str(tmp_path / "g.gr"), "--rmax",
                             "1e9"), 2, "at most 1,000,000")
    assert not (tmp_path / "g.gr").exists()


@pytest.mark.slow
def test_a_file_damaged_inside_gives_one_line(keggin_run, tmp_path):
    """A motex.h5 that opens but lacks a dataset (a damaged or foreign file)."""
    out, _ = keggin_run
    h5 = tmp_path / "motex.h5"
    shutil.copy(out / "motex.h5", h5)
    with h5py.File(h5, "r+") as f:
        del f["catalogue/size"]
    proc = run_cli("plot", str(h5), "-o", str(tmp_path / "plot"), "--quiet")
    _expect_one_line(proc, 2, str(h5), "sizes", "damaged")
