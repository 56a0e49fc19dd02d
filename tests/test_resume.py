"""Checkpoint and resume: real SIGKILLs of whole ``mpirun`` jobs, then ``--resume``."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest
import yaml

from .conftest import CLI, MPIRUN, keggin_config, mpi_env, run_cli

pytestmark = pytest.mark.mpi

FIT_DATASETS = ("fits/rw", "fits/scale", "fits/zoom", "fits/status", "fits/batch_done")
RESULT_DATASETS = FIT_DATASETS + ("atoms/contribution", "atoms/uncertainty", "shap/values")


def _config(tmp_path, name="config.yaml", **overrides):
    config = keggin_config(tmp_path, catalogue={"size": 240, "seed": 3, "batch_size": 8},
                           **overrides)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path, tmp_path / "out" / "motex.h5"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The same run, never interrupted: what every resumed run must reproduce."""
    tmp = tmp_path_factory.mktemp("reference")
    cfg, h5 = _config(tmp)
    proc = run_cli("run", str(cfg), "--quiet", ranks=2)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(h5) as f:
        return {name: f[name][()] for name in RESULT_DATASETS}


def _session_members(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def kill_session(sid: int) -> None:
    """SIGKILL mpirun and every rank at once. Open MPI puts each rank in a process group
    of its own, but they all stay in mpirun's session."""
    for pid in _session_members(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        alive = [pid for pid in _session_members(sid) if _state(pid) not in ("Z", None)]
        if not alive:
            return
        time.sleep(0.05)
    raise AssertionError(f"processes of the killed job still alive: {alive}")


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def wait_unlocked(path, timeout: float = 20.0) -> None:
    """Wait until no process holds HDF5's lock on ``path`` (the kernel releases the
    locks of killed processes as they are reaped, which can lag under load)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with h5py.File(path, "r"):
                return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def kill_when(cfg, marker: str, ranks: int, pause: str, count: int = 1, env=None) -> str:
    """Start ``mpirun -n RANKS mlmotex-hpc run CFG``, SIGKILL every process of the job
    once ``marker`` has appeared ``count`` times in its output; return that output."""
    command = [MPIRUN, "--bind-to", "none", "-n", str(ranks), str(CLI), "run", str(cfg)]
    environment = mpi_env(MLMOTEX_TEST_PAUSE=pause, MLMOTEX_PROGRESS_INTERVAL="0",
                          **(env or {}))
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=environment, start_new_session=True)
    seen, lines = 0, []
    deadline = time.monotonic() + 120
    try:
        for line in proc.stdout:
            lines.append(line)
            seen += marker in line
            if seen >= count or time.monotonic() > deadline:
                break
    finally:
        kill_session(proc.pid)
        proc.wait(timeout=30)
    h5 = cfg.parent / "out" / "motex.h5"
    if h5.exists():
        wait_unlocked(h5)
    output = "".join(lines)
    assert seen >= count, f"never saw {marker!r}:\n{output}"
    return output


def errors(proc) -> list[str]:
    """Our error lines (mpirun adds its own banner when a rank exits non-zero)."""
    return [ln for ln in proc.stderr.splitlines() if ln.startswith("mlmotex-hpc:")]


def assert_same(h5, reference, names=RESULT_DATASETS):
    with h5py.File(h5) as f:
        assert f.attrs["complete"]
        for name in names:
            np.testing.assert_array_equal(f[name][()], reference[name], err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("hdf5", ["parallel", "serial"])
def test_kill_during_fitting_then_resume(tmp_path, uninterrupted, hdf5):
    cfg, h5 = _config(tmp_path)
    env = {"MLMOTEX_SERIAL_HDF5": "1"} if hdf5 == "serial" else {}
    kill_when(cfg, "fit:", ranks=2, pause="fit:0.1", count=4, env=env)
    with h5py.File(h5) as f:  # the file survived the kill and is part-way through
        done = f["fits/batch_done"][()]
        assert 0 < done.sum() < done.size
        assert "complete" not in f.attrs
        finished = np.repeat(done.astype(bool), 8)[: f["fits/rw"].shape[1]]
        # every batch marked done holds its results
        assert np.all(f["fits/status"][0, finished] >= 0)
    proc = run_cli("run", str(cfg), "--resume", ranks=2, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "resuming" in proc.stdout
    assert_same(h5, uninterrupted)


@pytest.mark.slow
def test_kill_during_learning_then_resume_without_flag(tmp_path, uninterrupted):
    cfg, h5 = _config(tmp_path)
    kill_when(cfg, "step 3", ranks=2, pause="learn:30")
    with h5py.File(h5) as f:
        assert f["fits/batch_done"][()].all() and "complete" not in f.attrs
    # an unfinished run of the same config resumes without being asked to
    proc = run_cli("run", str(cfg), ranks=3)
    assert proc.returncode == 0, proc.stderr
    assert "24 of 24 work units done" in proc.stdout  # 240 - 48 for the extract stage
    assert_same(h5, uninterrupted)


@pytest.mark.slow
def test_kill_right_after_start_then_resume(tmp_path, uninterrupted):
    cfg, h5 = _config(tmp_path)
    kill_when(cfg, "step 2", ranks=2, pause="fit:0.2")
    proc = run_cli("run", str(cfg), ranks=2)
    assert proc.returncode == 0, proc.stderr
    assert_same(h5, uninterrupted)


@pytest.mark.slow
def test_finished_run_is_left_alone_and_overwrite_redoes_it(tmp_path, uninterrupted):
    cfg, h5 = _config(tmp_path)
    assert run_cli("run", str(cfg), "--quiet", ranks=2).returncode == 0
    stamp = h5.stat().st_mtime_ns
    proc = run_cli("run", str(cfg), ranks=2)
    assert proc.returncode == 0 and "nothing to do" in proc.stdout
    assert h5.stat().st_mtime_ns == stamp
    proc = run_cli("run", str(cfg), "--overwrite", "--quiet", ranks=2)
    assert proc.returncode == 0, proc.stderr
    assert_same(h5, uninterrupted)


@pytest.mark.slow
def test_a_different_config_is_refused(tmp_path):
    cfg, h5 = _config(tmp_path)
    kill_when(cfg, "fit:", ranks=2, pause="fit:0.1", count=2)
    before = h5.read_bytes()
    other, _ = _config(tmp_path, name="other.yaml", fit={"rmin": 1.8, "rmax": 10.0})
    for extra in ((), ("--resume",)):
        proc = run_cli("run", str(other), *extra, ranks=2)
        assert proc.returncode == 2
        lines = errors(proc)
        assert len(lines) == 1 and "holds a run of a different config" in lines[0], proc.stderr
    assert h5.read_bytes() == before  # nothing lost
    # comments and key order are not a different config
    text = cfg.read_text()
    cfg.write_text("# a comment\n" + text)
    assert run_cli("run", str(cfg), "--quiet", ranks=1).returncode == 0


@pytest.mark.slow
def test_resume_without_a_run_starts_one(tmp_path, uninterrupted):
    """Requeue-safe job scripts always pass --resume, their first start included."""
    cfg, h5 = _config(tmp_path)
    proc = run_cli("run", str(cfg), "--resume", ranks=2)
    assert proc.returncode == 0, proc.stderr
    assert "no " in proc.stdout and "starting a new run" in proc.stdout
    assert_same(h5, uninterrupted)


@pytest.mark.slow
def test_one_killed_rank_ends_the_whole_job(tmp_path):
    """A rank that dies (the OOM killer, a node failure) takes the job down, no hang."""
    cfg, h5 = _config(tmp_path)
    command = [MPIRUN, "--bind-to", "none", "-n", "3", str(CLI), "run", str(cfg)]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=mpi_env(MLMOTEX_TEST_PAUSE="fit:0.1", MLMOTEX_PROGRESS_INTERVAL="0"),
        start_new_session=True,
    )
    try:
        for line in proc.stdout:
            if "fit:" in line:
                break
        ranks = [pid for pid in _session_members(proc.pid) if pid != proc.pid
                 and "mlmotex-hpc" in open(f"/proc/{pid}/cmdline").read()]
        assert len(ranks) == 3
        killed_at = time.monotonic()
        os.kill(max(ranks), signal.SIGKILL)  # one rank, not rank 0's process necessarily
        code = proc.wait(timeout=30)
        elapsed = time.monotonic() - killed_at
    finally:
        kill_session(proc.pid)
    assert code != 0
    assert elapsed < 10
    # what was fitted before the kill is kept, and the run resumes
    resumed = run_cli("run", str(cfg), "--resume", "--quiet", ranks=2)
    assert resumed.returncode == 0, resumed.stderr
    with h5py.File(h5) as f:
        assert f["fits/batch_done"][()].all() and f.attrs["complete"]


@pytest.mark.slow
def test_an_output_in_use_by_another_job_is_refused(tmp_path):
    cfg, h5 = _config(tmp_path)
    kill_when(cfg, "fit:", ranks=2, pause="fit:0.1", count=2)
    with h5py.File(h5, "r+"):  # another job writing it
        proc = run_cli("run", str(cfg), ranks=2)
    assert proc.returncode == 2
    assert len(errors(proc)) == 1 and "is open in another process" in errors(proc)[0]
