"""The job scripts in ``jobs/``: syntax, scheduler directives, and the commands they run.

Each script is run for real with stub ``mpirun``, ``srun``, ``mpiexec``, ``scontrol``,
``module`` and ``mlmotex-hpc`` first on PATH. A stub only appends its name, working folder,
thread settings and arguments to a log, so the tests see exactly which commands a job would
run, under which launcher and with how many ranks, without a scheduler or MPI.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import ROOT

BASH = shutil.which("bash")
JOBS = ROOT / "jobs"
SCRIPTS = sorted(path.name for path in JOBS.glob("*.sh"))
STUBS = ("mpirun", "srun", "mpiexec", "scontrol", "module", "mlmotex-hpc")

# One log line per stub call: name, working folder, three environment variables, arguments.
STUB = r"""#!/bin/bash
{
    printf '%s' "${0##*/}"
    printf '\t%s' "$PWD" "${OMP_NUM_THREADS-}" "${NUMBA_NUM_THREADS-}" "${NUMBA_CACHE_DIR-}" "$@"
    printf '\n'
} >> "$STUB_LOG"
# STUB_SLEEP: a launched run lasts that long (for the requeue trap), detached from the
# job's output so that the test need not wait for it.
if [ -n "${STUB_SLEEP-}" ] && [[ " $* " == *" run "* ]]; then
    exec sleep "$STUB_SLEEP" </dev/null >/dev/null 2>&1
fi
"""
ACTIVATE = """printf 'activate\\t%s\\n' "${BASH_SOURCE[0]}" >> "$STUB_LOG"\n"""

#: sbatch options the scripts may use: name -> pattern of the value (None: a flag).
SBATCH_OPTIONS = {
    "job-name": r"[\w.-]+",
    "nodes": r"[1-9]\d*",
    "ntasks": r"[1-9]\d*",
    "ntasks-per-node": r"[1-9]\d*",
    "cpus-per-task": r"[1-9]\d*",
    "time": r"(\d+-)?\d{1,2}:\d{2}:\d{2}",
    "output": r"[\w.%/-]+",
    "error": r"[\w.%/-]+",
    "open-mode": r"append|truncate",
    "signal": r"(B:)?(USR1|USR2|TERM|INT)@\d+",
    "partition": r"[\w,-]+",
    "account": r"[\w-]+",
    "mem": r"\d+[KMGT]?",
    "exclusive": None,
    "requeue": None,
}
#: qsub options the scripts may use: option -> pattern of the value.
PBS_OPTIONS = {
    "-N": r"[A-Za-z][\w-]{0,14}",
    "-j": r"oe|eo|n",
    "-o": r"[\w.%/-]+",
    "-l": r"select=\d+:ncpus=\d+:mpiprocs=\d+|nodes=\d+:ppn=\d+|walltime=\d+:\d{2}:\d{2}",
}


@dataclass
class Case:
    """How to run one script and what it must launch."""

    launcher: str
    ranks: int
    env: dict[str, str] = field(default_factory=dict)
    run_args: tuple[str, ...] = ()  # what the script adds after the config
    nodefile_lines: int = 0  # > 0: write a PBS node file with that many lines


SLURM = {"SLURM_JOB_ID": "4242", "SLURM_SUBMIT_DIR": "", "SLURM_CPUS_ON_NODE": "64"}
CASES = {
    "slurm_single_node.sh": Case("mpirun", 32, {**SLURM, "SLURM_NTASKS": "32",
                                                "SLURM_NNODES": "1"}),
    "slurm_multi_node.sh": Case("srun", 256, {**SLURM, "SLURM_NTASKS": "256",
                                              "SLURM_NNODES": "4"}),
    "slurm_requeue.sh": Case("srun", 128, {**SLURM, "SLURM_NTASKS": "128",
                                           "SLURM_NNODES": "2"}, run_args=("--resume",)),
    # array task 5 of --array=3-10: the 3rd (0-based 2) of 8 blocks of frames
    "slurm_array.sh": Case("srun", 64, {**SLURM, "SLURM_NTASKS": "64", "SLURM_NNODES": "1",
                                        "SLURM_ARRAY_JOB_ID": "4240", "SLURM_ARRAY_TASK_ID": "5",
                                        "SLURM_ARRAY_TASK_MIN": "3",
                                        "SLURM_ARRAY_TASK_COUNT": "8"},
                           run_args=("--frames", "2/8", "--resume")),
    "pbs.sh": Case("mpiexec", 6, {"PBS_JOBID": "77.server"}, nodefile_lines=6),
    "template_header.sh": Case("mpirun", 3, {"MLMOTEX_RANKS": "3"}),
}


@dataclass
class Call:
    name: str
    cwd: str
    omp: str
    numba: str
    numba_cache: str
    args: list[str]

    @property
    def program(self) -> list[str]:
        """``mlmotex-hpc`` and its arguments, whether called directly or via a launcher."""
        full = [self.name, *self.args]
        return full[full.index("mlmotex-hpc"):] if "mlmotex-hpc" in full else []


@dataclass
class Job:
    returncode: int
    stdout: str
    stderr: str
    lines: list[list[str]]

    @property
    def calls(self) -> list[Call]:
        return [Call(f[0], f[1], f[2], f[3], f[4], f[5:]) for f in self.lines
                if f[0] != "activate"]

    def runs(self) -> list[Call]:
        return [c for c in self.calls if c.program[1:2] == ["run"]]


class Sandbox:
    """Stub commands, a fake venv and a scheduler-free environment in a temp folder."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.bin = tmp / "bin"
        self.bin.mkdir()
        for name in STUBS:
            stub = self.bin / name
            stub.write_text(STUB)
            stub.chmod(0o755)
        self.venv = tmp / "venv"
        (self.venv / "bin").mkdir(parents=True)
        (self.venv / "bin" / "activate").write_text(ACTIVATE)
        self.log = tmp / "stub.log"
        self.workdir = tmp / "submit dir"  # a space, to catch missing quotes
        self.workdir.mkdir()
        self.config = self.workdir / "my config.yaml"
        self.config.write_text("structure: x.xyz\n")

    def env(self, case: Case | None = None, **extra: str) -> dict[str, str]:
        env = {
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "HOME": str(self.tmp),
            "LC_ALL": "C",
            "STUB_LOG": str(self.log),
            "MLMOTEX_VENV": str(self.venv),
        }
        if case is not None:
            env.update(case.env)
            if "SLURM_SUBMIT_DIR" in env:
                env["SLURM_SUBMIT_DIR"] = str(self.workdir)
            if case.nodefile_lines:
                nodefile = self.tmp / "nodefile"
                nodes = [f"node{i // 3:02d}" for i in range(case.nodefile_lines)]
                nodefile.write_text("\n".join(nodes) + "\n")
                env.update(PBS_O_WORKDIR=str(self.workdir), PBS_NODEFILE=str(nodefile))
        env.update(extra)
        return env

    def popen(self, script: str, *args: str, env: dict[str, str]) -> subprocess.Popen:
        # Started from elsewhere: PBS scripts must cd to $PBS_O_WORKDIR themselves.
        cwd = self.tmp if "PBS_O_WORKDIR" in env else self.workdir
        return subprocess.Popen(
            [BASH, str(JOBS / script), *args], env=env, cwd=cwd, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )

    def run(self, script: str, *args: str, env: dict[str, str]) -> Job:
        proc = self.popen(script, *args, env=env)
        stdout, stderr = proc.communicate(timeout=20)
        return Job(proc.returncode, stdout, stderr, self.lines())

    def lines(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [line.split("\t") for line in self.log.read_text().splitlines()]


@pytest.fixture
def sandbox(tmp_path) -> Sandbox:
    return Sandbox(tmp_path)


def rank_count(launcher_args: list[str]) -> int | None:
    """The rank count given to mpirun/mpiexec (-n, -np) or srun (--ntasks, -n)."""
    for i, arg in enumerate(launcher_args):
        if arg in ("-n", "-np", "--np", "--ntasks") and i + 1 < len(launcher_args):
            return int(launcher_args[i + 1])
        if arg.startswith("--ntasks="):
            return int(arg.split("=", 1)[1])
    return None


def header_and_body(script: str) -> tuple[list[str], list[str]]:
    """Lines before the first command (shebang, comments, directives), and the rest."""
    lines = (JOBS / script).read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith("#"):
            return lines[:i], lines[i:]
    return lines, []


# ---- every script ------------------------------------------------------------------------


def test_every_script_has_a_case():
    assert set(CASES) <= set(SCRIPTS), f"missing job scripts: {set(CASES) - set(SCRIPTS)}"
    assert set(SCRIPTS) <= set(CASES), f"add a Case for {set(SCRIPTS) - set(CASES)}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_bash_syntax(script):
    proc = subprocess.run([BASH, "-n", str(JOBS / script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_shebang_and_strict_mode_first(script):
    header, body = header_and_body(script)
    assert header[0] == "#!/bin/bash"
    assert body and body[0] == "set -euo pipefail", "set -euo pipefail must be the first command"


@pytest.mark.parametrize("script", SCRIPTS)
def test_directives_well_formed_and_in_the_header(script):
    header, body = header_and_body(script)
    late = [line for line in body if re.match(r"\s*#(SBATCH|PBS)\b", line)]
    assert not late, f"directives after the first command are ignored: {late}"
    sbatch = [line for line in header if line.startswith("#SBATCH")]
    pbs = [line for line in header if line.startswith("#PBS")]
    if script.startswith("slurm_"):
        assert sbatch and not pbs
    elif script.startswith("pbs"):
        assert pbs and not sbatch
    for line in sbatch:
        match = re.fullmatch(r"#SBATCH --([a-z-]+)(?:=(\S+))?", line)
        assert match, f"not '#SBATCH --key=value' (no trailing comment): {line!r}"
        name, value = match.groups()
        assert name in SBATCH_OPTIONS, f"unknown sbatch option --{name}"
        pattern = SBATCH_OPTIONS[name]
        if pattern is None:
            assert value is None, f"--{name} takes no value"
        else:
            assert value is not None and re.fullmatch(pattern, value), line
    for line in pbs:
        match = re.fullmatch(r"#PBS (-[A-Za-z]) (\S+)", line)
        assert match, f"not '#PBS -x value': {line!r}"
        option, value = match.groups()
        assert option in PBS_OPTIONS, f"unknown qsub option {option}"
        assert re.fullmatch(PBS_OPTIONS[option], value), line


def test_slurm_directives_match_each_script():
    def options(script):
        return dict(re.fullmatch(r"#SBATCH --([a-z-]+)(?:=(\S+))?", line).groups()
                    for line in header_and_body(script)[0] if line.startswith("#SBATCH"))

    assert options("slurm_single_node.sh")["nodes"] == "1"
    assert int(options("slurm_multi_node.sh")["nodes"]) > 1
    requeue = options("slurm_requeue.sh")
    assert "requeue" in requeue and requeue["open-mode"] == "append"
    assert re.fullmatch(r"B:USR1@\d+", requeue["signal"])  # to the batch shell, whose trap
    for script in ("slurm_single_node.sh", "slurm_multi_node.sh", "slurm_requeue.sh",
                   "slurm_array.sh"):
        assert options(script)["cpus-per-task"] == "1"


@pytest.mark.parametrize("script", SCRIPTS)
def test_without_config_prints_usage(sandbox, script):
    job = sandbox.run(script, env=sandbox.env())
    assert job.returncode != 0
    assert "usage:" in job.stderr
    assert job.lines == [], "nothing may run without a config"


@pytest.mark.parametrize("script", SCRIPTS)
def test_runs_info_then_the_run_under_its_launcher(sandbox, script):
    case = CASES[script]
    env = sandbox.env(case)
    job = sandbox.run(script, str(sandbox.config), env=env)
    assert job.returncode == 0, job.stderr
    names = [fields[0] for fields in job.lines]

    assert names[0] == "module" and job.lines[0][5:] == ["load", "openmpi", "hdf5/parallel"]
    assert names[1] == "activate" and job.lines[1][1] == str(sandbox.venv / "bin" / "activate")

    infos = [c for c in job.calls if c.program[1:2] == ["info"]]
    assert len(infos) == 1 and infos[0].program == ["mlmotex-hpc", "info", "--short"]
    runs = job.runs()
    assert len(runs) == 1, [c.args for c in job.calls]
    run = runs[0]
    assert job.calls.index(infos[0]) < job.calls.index(run), "info first, for the log"

    assert run.name == case.launcher
    launcher_args = run.args[: run.args.index("mlmotex-hpc")]
    assert rank_count(launcher_args) == case.ranks
    if case.launcher in ("mpirun", "mpiexec"):
        assert "--bind-to" in launcher_args  # rank 0 must reach every core for XGBoost
    else:
        assert "--cpu-bind=none" in launcher_args
    if case.nodefile_lines:
        assert launcher_args[launcher_args.index("--hostfile") + 1] == env["PBS_NODEFILE"]
    expected = ["mlmotex-hpc", "run", str(sandbox.config), *case.run_args]
    assert run.program == expected

    assert run.cwd == str(sandbox.workdir)  # pbs.sh: cd $PBS_O_WORKDIR
    assert (run.omp, run.numba) == ("1", "1")
    assert run.numba_cache == str(sandbox.venv / "numba-cache")


@pytest.mark.parametrize("script", SCRIPTS)
def test_passes_extra_arguments_and_mlmotex_args(sandbox, script):
    case = CASES[script]
    env = sandbox.env(case, MLMOTEX_ARGS="--quiet --until fit", MLMOTEX_MODULES="",
                      NUMBA_CACHE_DIR="/shared/numba")
    job = sandbox.run(script, str(sandbox.config), "--out", "/scratch/a b", env=env)
    assert job.returncode == 0, job.stderr
    assert "module" not in [c.name for c in job.calls], 'MLMOTEX_MODULES="" loads none'
    (run,) = job.runs()
    assert run.program == ["mlmotex-hpc", "run", str(sandbox.config), *case.run_args,
                           "--out", "/scratch/a b", "--quiet", "--until", "fit"]
    assert run.numba_cache == "/shared/numba"


def test_pbs_takes_the_config_from_qsub_v(sandbox):
    env = sandbox.env(CASES["pbs.sh"], MLMOTEX_CONFIG="relative.yaml")
    job = sandbox.run("pbs.sh", env=env)
    assert job.returncode == 0, job.stderr
    (run,) = job.runs()
    assert run.program == ["mlmotex-hpc", "run", "relative.yaml"]
    assert run.cwd == str(sandbox.workdir)  # where relative.yaml is looked for


# ---- the requeue trap ------------------------------------------------------------------


def _signal_during_run(sandbox: Sandbox, env: dict[str, str]) -> Job:
    """Start slurm_requeue.sh, send USR1 (as sbatch --signal=B:USR1 does) while it runs."""
    proc = sandbox.popen("slurm_requeue.sh", str(sandbox.config), env=env)
    try:
        deadline = time.monotonic() + 10
        while not any("run" in fields for fields in sandbox.lines()):
            assert proc.poll() is None and time.monotonic() < deadline, "the run never started"
            time.sleep(0.01)
        time.sleep(0.2)  # let bash reach `wait`
        proc.send_signal(signal.SIGUSR1)
        stdout, stderr = proc.communicate(timeout=10)
    finally:
        try:  # the stub run still sleeping in the background
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return Job(proc.returncode, stdout, stderr, sandbox.lines())


def test_requeue_trap_requeues_the_job(sandbox):
    env = sandbox.env(CASES["slurm_requeue.sh"], STUB_SLEEP="5")
    job = _signal_during_run(sandbox, env)
    requeues = [c.args for c in job.calls if c.name == "scontrol"]
    assert requeues == [["requeue", "4242"]]
    assert "requeueing" in job.stdout
    # At once, not when the run ends: the run is in the background and `wait` was cut short.
    assert job.returncode == 128 + signal.SIGUSR1


def test_requeue_stops_after_max_requeues(sandbox):
    env = sandbox.env(CASES["slurm_requeue.sh"], STUB_SLEEP="0.5",
                      SLURM_RESTART_COUNT="3", MLMOTEX_MAX_REQUEUES="3")
    job = _signal_during_run(sandbox, env)
    assert job.returncode == 0, job.stderr  # the signal is ignored, the run goes on
    assert "scontrol" not in [c.name for c in job.calls]
    assert "last attempt" in job.stderr


# ---- the job array ---------------------------------------------------------------------


def test_array_merge_step_runs_merge_on_the_config_once(sandbox):
    env = sandbox.env(CASES["slurm_array.sh"], MLMOTEX_MODULES="")
    job = sandbox.run("slurm_array.sh", "--merge", str(sandbox.config), "--quiet", env=env)
    assert job.returncode == 0, job.stderr
    # serial, no launcher: one process reads the tasks' files and writes the merged one
    assert [(c.name, c.args) for c in job.calls] == [
        ("mlmotex-hpc", ["merge", str(sandbox.config), "--quiet"])]


def test_array_script_outside_an_array_says_how_to_submit(sandbox):
    case = CASES["slurm_array.sh"]
    env = sandbox.env(case)
    del env["SLURM_ARRAY_TASK_ID"]
    job = sandbox.run("slurm_array.sh", str(sandbox.config), env=env)
    assert job.returncode == 2
    assert "--array" in job.stderr
    assert job.runs() == []
