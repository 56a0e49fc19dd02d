"""Shared fixtures: paths to the shipped data and a runner for ``mpirun`` subprocesses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
EXAMPLES = ROOT / "mlmotex_hpc" / "examples"
KEGGIN_XYZ = EXAMPLES / "keggin" / "109725.xyz"
KEGGIN_GR = EXAMPLES / "keggin" / "DanMAX_AlphaKeggin.gr"
#: 0-based indices of the 12 W of the α-Keggin motif in 109725.xyz (the known answer).
KEGGIN_MOTIF_W = tuple(range(0, 24, 2))

MPIRUN = shutil.which("mpirun")
CLI = Path(sys.executable).with_name("mlmotex-hpc")


def mpi_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        OMPI_MCA_rmaps_base_oversubscribe="1",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run_cli(*args: str, ranks: int | None = None, timeout: float = 600, env=None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``mlmotex-hpc ARGS`` (under ``mpirun -n RANKS`` when ranks is given)."""
    command = [str(CLI), *args]
    if ranks is not None:
        assert MPIRUN, "mpirun not found: install Open MPI (make setup does)"
        command = [MPIRUN, "--bind-to", "none", "-n", str(ranks), *command]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout,
        env=mpi_env(**(env or {})), cwd=cwd or ROOT,
    )


@pytest.fixture
def write_config(tmp_path):
    """Write a YAML config in tmp_path from a mapping, return its path."""
    import yaml

    def _write(mapping: dict, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(mapping, sort_keys=False))
        return path

    return _write


def keggin_config(tmp_path: Path, **overrides) -> dict:
    """A small, fast Keggin run (the shipped example data)."""
    config = {
        "structure": str(KEGGIN_XYZ),
        "data": str(KEGGIN_GR),
        "permute": ["W"],
        "bond_threshold": 2.6,
        "catalogue": {"size": 400, "seed": 1, "batch_size": 16},
        "pdf": {"calculator": "debye", "qmin": 0.7, "qmax": 20.0, "qdamp": 0.05,
                "qbroad": 0.01, "uiso": {"W": 0.00507, "O": 0.00507}},
        "fit": {"rmin": 1.6, "rmax": 10.0},
        "learn": {"cv_folds": 3, "search_iterations": 0, "seed": 0,
                  "params": {"learning_rate": 0.1, "max_depth": 3, "n_estimators": 200}},
        "output": {"dir": str(tmp_path / "out")},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


@pytest.fixture(scope="session")
def keggin_run(tmp_path_factory):
    """One full 2-rank Keggin run (``keggin_config``), shared by the tests that read it:
    its output folder and the finished process."""
    import yaml

    tmp = tmp_path_factory.mktemp("keggin2")
    config = tmp / "keggin.yaml"
    config.write_text(yaml.safe_dump(keggin_config(tmp)))
    proc = run_cli("run", str(config), ranks=2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tmp / "out", proc


#: Runs the command line in a fresh interpreter, then says whether MPI was loaded or
#: started: the serial commands must do neither (MPI_Init fails or hangs on login nodes).
_NO_MPI_PROBE = """
import sys
from mlmotex_hpc.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
loaded = "mpi4py.MPI" in sys.modules
started = loaded and sys.modules["mpi4py.MPI"].Is_initialized()
print(f"MPI-PROBE loaded={loaded} started={started}")
sys.exit(code)
"""


def run_serial(*args: str, timeout: float = 600) -> tuple[subprocess.CompletedProcess, dict]:
    """Run ``mlmotex-hpc ARGS`` without a launcher; the process and what it did with MPI
    (``{"loaded": bool, "started": bool}``)."""
    proc = subprocess.run([sys.executable, "-c", _NO_MPI_PROBE, *args], capture_output=True,
                          text=True, timeout=timeout, env=mpi_env(), cwd=ROOT)
    line = [x for x in proc.stdout.splitlines() if x.startswith("MPI-PROBE")]
    assert line, proc.stdout + proc.stderr
    state = dict(item.split("=") for item in line[-1].split()[1:])
    return proc, {k: v == "True" for k, v in state.items()}
