"""The SLURM scripts of ``jobs/`` submitted with a real ``sbatch`` to a real SLURM.

A private one-node cluster (:mod:`tests.slurm_cluster`: Debian's SLURM 22.05 and munge,
in a folder of its own) runs each script the way its header tells a user to, on the
Keggin example (240 motifs) or a four-frame Fe₂O₃ series:

* ``slurm_single_node.sh``: mpirun under SLURM; this run is the reference the others
  must reproduce bit for bit;
* ``slurm_multi_node.sh`` on one node: srun starting Open MPI through PMIx
  (``SLURM_MPI_TYPE=pmix``);
* ``slurm_array.sh``: an array task per half of the series, then ``--merge`` held by
  ``--dependency=afterok``; equal to one run of the series;
* ``slurm_requeue.sh``: its warning signal sent mid-fit (``scancel --signal=USR1
  --batch``), so that it requeues itself; the restarted job resumes and finishes with the
  reference's results; with ``MLMOTEX_MAX_REQUEUES=1`` a second signal is not obeyed;
* ``scancel`` mid-fit, then a new ``sbatch`` of the same config resumes;
* the scripts' ``#SBATCH`` lines and the dry run's ``--time`` advice, accepted by this
  SLURM (``sbatch --test-only``).

Required as root on Debian (``make test`` installs the packages and sets
``MLMOTEX_REQUIRE_SLURM=1``, as CI does); elsewhere skipped with the reason. The cluster's
daemons are stopped when the module ends, and the fixture then checks that they are gone.

SLURM holds a requeued batch job for two minutes (its ``BeginTime``) before it may start
again; the requeue test releases it at once (``scontrol update StartTime=now``) instead of
waiting.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from .conftest import CLI, ROOT, keggin_config, mpi_env, run_cli
from .slurm_cluster import Cluster, missing
from .test_resume import RESULT_DATASETS, assert_same
from .test_series import COMPARED, assert_same_file, read, series_config

pytestmark = [pytest.mark.mpi, pytest.mark.slurm, pytest.mark.slow]

JOBS = ROOT / "jobs"
VENV = Path(sys.executable).parents[1]
REQUIRED = os.environ.get("MLMOTEX_REQUIRE_SLURM") == "1"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    problem = missing()
    if problem:
        if REQUIRED:
            pytest.fail(f"MLMOTEX_REQUIRE_SLURM=1, but no private SLURM here: {problem}")
        pytest.skip(f"no private SLURM here: {problem}")
    cluster = Cluster(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    started = {name: proc.pid for name, proc in cluster.processes.items()}
    yield cluster
    cluster.stop()
    alive = [f"{name} ({pid})" for name, pid in started.items() if _running(pid)]
    assert not alive, f"still running after the tests: {', '.join(alive)}"


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.fixture(scope="module")
def job_env(tmp_path_factory):
    """What a user exports before sbatch: no modules (Debian's MPI), the venv, the PMI
    srun needs for Open MPI; numba's cache shared by every job (warmed first: freshly
    compiled and cache-loaded kernels may differ in the last bit)."""
    cache = os.environ.get("NUMBA_CACHE_DIR") or str(tmp_path_factory.mktemp("numba"))
    env = {key: value for key, value in mpi_env().items()
           if key.startswith(("OMPI_", "OMP_", "PYTHON"))}
    env.update(MLMOTEX_MODULES="", MLMOTEX_VENV=str(VENV), SLURM_MPI_TYPE="pmix",
               NUMBA_CACHE_DIR=cache, MLMOTEX_PROGRESS_INTERVAL="0")
    warm = tmp_path_factory.mktemp("warm")
    for config in (_keggin(warm, "keggin"), series_config(warm / "series")):
        proc = run_cli("run", str(config), "--until", "fit", "--quiet", ranks=1,
                       env={"NUMBA_CACHE_DIR": cache})
        assert proc.returncode == 0, proc.stderr
    return env


def _keggin(folder: Path, name: str) -> Path:
    """The Keggin example, 240 motifs drawn (192 in the catalogue, in 24 batches; the
    rest kept for the extract stage): a job's config."""
    folder.mkdir(parents=True, exist_ok=True)
    config = keggin_config(folder, catalogue={"size": 240, "seed": 3, "batch_size": 8},
                           output={"dir": str(folder / name)})
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _submit(slurm: Cluster, job_env: dict, folder: Path, script: str, *args: str,
            env: dict | None = None, options: tuple[str, ...] = ()) -> int:
    """``sbatch [options] jobs/SCRIPT ARGS`` from ``folder``, as a user would."""
    return slurm.sbatch(*options, str(JOBS / script), *args, cwd=folder,
                        env={**job_env, **(env or {})})


def _log(folder: Path, job_id: int, pattern: str = "mlmotex-{id}.log") -> str:
    path = folder / pattern.format(id=job_id)
    return path.read_text(errors="replace") if path.exists() else ""


def _wait_for(folder: Path, job_id: int, text: str, count: int = 1,
              timeout: float = 300.0) -> None:
    end = time.monotonic() + timeout
    while _log(folder, job_id).count(text) < count:
        if time.monotonic() > end:
            raise TimeoutError(f"{text!r} not in the log:\n{_log(folder, job_id)}")
        time.sleep(0.1)


def _completed(slurm: Cluster, folder: Path, job_id: int, timeout: float = 600.0) -> str:
    states = slurm.wait(job_id, timeout)
    log = _log(folder, job_id)
    assert states == ["COMPLETED"], f"{states}\n{log}\n{slurm.logs()}"
    return log


@pytest.fixture(scope="module")
def reference(slurm, job_env, tmp_path_factory):
    """``sbatch --ntasks-per-node=2 jobs/slurm_single_node.sh keggin.yaml``: its log and
    results, the reference every other Keggin job must reproduce."""
    folder = tmp_path_factory.mktemp("single")
    job = _submit(slurm, job_env, folder, "slurm_single_node.sh", "keggin.yaml",
                  options=("--ntasks-per-node=2",))
    _keggin(folder, "keggin")
    log = _completed(slurm, folder, job)
    with h5py.File(folder / "keggin" / "motex.h5") as f:
        return log, {name: f[name][()] for name in RESULT_DATASETS}


def test_the_single_node_script_runs_mpirun_under_slurm(reference):
    log, results = reference
    assert "MPI library            Open MPI" in log
    assert re.search(r"\d+ motifs over N = 24 permutable atoms, 1 frame\(s\), 2 rank\(s\)", log)
    assert "extracted motif    12 permutable atoms" in log
    assert np.isfinite(results["fits/rw"]).all()


def test_the_multi_node_script_starts_open_mpi_through_pmix(slurm, job_env, reference,
                                                            tmp_path):
    job = _submit(slurm, job_env, tmp_path, "slurm_multi_node.sh", "keggin.yaml",
                  options=("--nodes=1", "--ntasks-per-node=2"))
    _keggin(tmp_path, "keggin")
    log = _completed(slurm, tmp_path, job)
    assert "1 frame(s), 2 rank(s)" in log  # srun's two tasks are one MPI job of 2 ranks
    assert_same(tmp_path / "keggin" / "motex.h5", reference[1])


def test_an_array_of_frames_then_merge_equals_one_run(slurm, job_env, tmp_path):
    """The header's two commands: an array task per half of the series, then ``--merge``
    held until both succeeded; the merged file equals one run of the series."""
    config = series_config(tmp_path)
    array = _submit(slurm, job_env, tmp_path, "slurm_array.sh", config.name,
                    options=("--array=0-1", "--ntasks-per-node=1"))
    header = (JOBS / "slurm_array.sh").read_text()
    assert "sbatch --dependency=afterok:$jid --ntasks=1 --ntasks-per-node=1 " in header
    merge = _submit(slurm, job_env, tmp_path, "slurm_array.sh", "--merge", config.name,
                    options=(f"--dependency=afterok:{array}", "--ntasks=1",
                             "--ntasks-per-node=1"))
    assert slurm.job(merge).get("Reason") in ("Dependency", "None")
    states = slurm.wait(array, 600)
    assert states == ["COMPLETED", "COMPLETED"], states
    assert slurm.wait(merge, 300) == ["COMPLETED"], slurm.logs()
    merged = tmp_path / "out" / "motex.h5"
    merge_log = "".join(p.read_text() for p in tmp_path.glob(f"mlmotex-{merge}_*.log"))
    assert merged.exists() and "mlmotex-hpc merge: 2 parts, frames 0:4" in merge_log, merge_log
    for task in (0, 1):
        log = _log(tmp_path, array, f"mlmotex-{{id}}_{task}.log")
        assert f"mlmotex array task {task} of 2" in log, log
    ends = [slurm.job(f"{array}_{task}").get("EndTime") for task in (0, 1)]
    assert slurm.job(merge)["StartTime"] >= max(ends)  # afterok held it
    proc = run_cli("run", str(config), "--out", str(tmp_path / "single"), "--quiet",
                   ranks=1, env={"NUMBA_CACHE_DIR": job_env["NUMBA_CACHE_DIR"]})
    assert proc.returncode == 0, proc.stderr
    with h5py.File(merged) as f, h5py.File(tmp_path / "single" / "motex.h5") as ref:
        assert_same_file(f, ref)
    got = read(merged)
    assert set(got) == set(COMPARED)


def test_the_requeue_script_requeues_itself_mid_fit_and_resumes(slurm, job_env, reference,
                                                                tmp_path):
    """USR1 mid-fit: the script requeues the job; SLURM restarts it and it resumes, with
    the reference's results bit for bit. MLMOTEX_MAX_REQUEUES=1: the restarted job does
    not obey a second USR1 and finishes."""
    config = _keggin(tmp_path, "keggin")
    job = _submit(slurm, job_env, tmp_path, "slurm_requeue.sh", config.name,
                  options=("--nodes=1", "--ntasks-per-node=2"),
                  env={"MLMOTEX_TEST_PAUSE": "fit:0.3", "MLMOTEX_MAX_REQUEUES": "1"})
    _wait_for(tmp_path, job, "  fit:", count=4)  # a few batches written
    slurm.signal_batch(job, "USR1")
    _wait_for(tmp_path, job, f"requeueing job {job}")
    end = time.monotonic() + 60
    while slurm.job(job).get("JobState") != "PENDING":  # requeued, held for 2 min
        assert time.monotonic() < end, slurm.job(job)
        time.sleep(0.2)
    assert slurm.job(job)["Restarts"] == "1"
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"],
                   env=slurm.env(), check=True, capture_output=True)
    _wait_for(tmp_path, job, "resuming")
    _wait_for(tmp_path, job, "  fit:", count=_log(tmp_path, job).count("  fit:") + 2)
    slurm.signal_batch(job, "USR1")  # the last attempt: not obeyed
    log = _completed(slurm, tmp_path, job)
    assert slurm.job(job)["Restarts"] == "1"
    done = re.search(r"resuming \S+: (\d+) of (\d+) work units done", log)
    assert done and 0 < int(done[1]) < int(done[2]), log
    assert log.count("requeueing job") == 1
    assert "restarted 1 times (MLMOTEX_MAX_REQUEUES), last attempt" in log
    assert_same(tmp_path / "keggin" / "motex.h5", reference[1])


def test_scancel_mid_fit_then_a_new_sbatch_resumes(slurm, job_env, reference, tmp_path):
    config = _keggin(tmp_path, "keggin")
    first = _submit(slurm, job_env, tmp_path, "slurm_single_node.sh", config.name,
                    options=("--ntasks-per-node=2",), env={"MLMOTEX_TEST_PAUSE": "fit:0.3"})
    _wait_for(tmp_path, first, "  fit:", count=4)
    slurm.cancel(first)
    assert slurm.wait(first, 120) == ["CANCELLED"]
    again = _submit(slurm, job_env, tmp_path, "slurm_single_node.sh", config.name,
                    options=("--ntasks-per-node=2",))
    log = _completed(slurm, tmp_path, again)
    done = re.search(r"resuming \S+: (\d+) of (\d+) work units done", log)
    assert done and 0 < int(done[1]) < int(done[2]), log
    assert_same(tmp_path / "keggin" / "motex.h5", reference[1])


@pytest.mark.parametrize("script", ["slurm_single_node.sh", "slurm_multi_node.sh",
                                    "slurm_array.sh", "slurm_requeue.sh"])
def test_the_scripts_directives_are_accepted(slurm, job_env, tmp_path, script):
    """Each script's #SBATCH lines as written (time, signal, requeue, output, ...),
    accepted by this SLURM; only the size is brought down to this one node."""
    options = ["--test-only", "--nodes=1", f"--ntasks-per-node={slurm.cpus}"]
    if script == "slurm_array.sh":
        options.append("--array=0-3")
    proc = subprocess.run(["sbatch", *options, str(JOBS / script), "config.yaml"],
                          cwd=tmp_path, env=slurm.env(**job_env), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "to start at" in proc.stderr, proc.stderr


def test_the_dry_runs_time_advice_is_a_time_sbatch_accepts(slurm, job_env, tmp_path):
    config = _keggin(tmp_path, "keggin")
    proc = subprocess.run([str(CLI), "run", str(config), "--dry-run", "--ranks", "2"],
                          env=mpi_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    limit = re.search(r"^ask for         --time=(\S+) ", proc.stdout, re.M)[1]
    sub = subprocess.run(["sbatch", "--test-only", f"--time={limit}",
                          "--ntasks-per-node=2",
                          str(JOBS / "slurm_single_node.sh"), str(config)], cwd=tmp_path,
                         env=slurm.env(**job_env), capture_output=True, text=True,
                         timeout=60)
    assert sub.returncode == 0 and "to start at" in sub.stderr, sub.stderr
    job = slurm.sbatch(f"--time={limit}", "--hold", "--wrap", "true", cwd=tmp_path)
    minutes = int(slurm.job(job)["TimeLimit"].split(":")[-2]) + 60 * int(
        slurm.job(job)["TimeLimit"].split(":")[-3].split("-")[-1])
    assert f"{minutes // 60}:{minutes % 60:02d}:00" == limit  # SLURM reads what we meant
    slurm.cancel(job)
