"""The house itself: data flows one way, MPI stays in parallel/, one module owns motex.h5,
and the serial commands never start MPI."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from mlmotex_hpc.store import LAYOUT_VERSION
from mlmotex_hpc.store.run_layout import LAYOUT, reference, undescribed

from .conftest import KEGGIN_XYZ, ROOT, keggin_config, run_serial

PACKAGE = ROOT / "mlmotex_hpc"

#: Floors of the house, top down: a module may import its own floor's modules and any
#: floor below, never one above (cli -> commands -> pipeline -> parallel, output -> fit,
#: learn -> catalogue -> io -> config -> pdf -> errors).
FLOORS = [
    {"cli", "__main__"},
    {"commands"},
    {"pipeline"},
    {"parallel", "output"},
    {"store"},
    {"fit", "learn"},
    {"catalogue", "extract", "candidates"},
    {"io"},
    {"config"},
    {"pdf"},
    {"errors", "__init__"},
]


def _room(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imports(path: Path) -> set[str]:
    """The package's rooms that ``path`` imports (relative or absolute), anywhere in it."""
    tree = ast.parse(path.read_text())
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = (*base, *(node.module.split(".") if node.module else ()))
                names = [(*target, alias.name) for alias in node.names]
            elif node.module and node.module.startswith("mlmotex_hpc"):
                target = tuple(node.module.split("."))
                names = [(*target, alias.name) for alias in node.names]
            else:
                continue
            for name in [target, *names]:
                if len(name) > 1 and name[0] == "mlmotex_hpc":
                    # a name defined in the package's __init__ (its version) is that room
                    found.add(name[1] if name[1] in _rooms() else "__init__")
                    break
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "mlmotex_hpc" and len(parts) > 1:
                    found.add(parts[1])
    return found


def _rooms() -> set[str]:
    return {p.relative_to(PACKAGE).with_suffix("").parts[0] for p in _modules()}


def _floor(room: str) -> int:
    return next(i for i, floor in enumerate(FLOORS) if room in floor)


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "examples" not in p.parts)


def test_every_import_runs_down_the_house():
    assert _rooms() == set().union(*FLOORS), "a new room: give it its floor"
    upward = []
    for path in _modules():
        room = _room(path)
        for target in _imports(path) - {room}:
            if _floor(target) < _floor(room):
                upward.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not upward, upward


#: Calls that decide who reads, who broadcasts and who waits: only ``parallel/`` and the
#: store (``store/``) make them; the pipeline calls functions that do.
RANK_LOGIC = {"rank", "bcast", "Bcast", "allgather", "Allgather", "gather", "Gather",
              "Barrier", "Ibarrier", "Send", "Recv", "send", "recv", "Isend", "Irecv",
              "allreduce", "Allreduce", "scatter", "Scatter"}
RANK_ROOMS = ("parallel/", "store/")


def _rank_logic(path: Path) -> list[str]:
    """``path``'s attribute uses named in :data:`RANK_LOGIC` (``comm.rank``, ``x.bcast``)."""
    tree = ast.parse(path.read_text())
    return [f"{path.relative_to(PACKAGE)}:{node.lineno} .{node.attr}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr in RANK_LOGIC]


def test_no_rank_logic_outside_parallel_and_the_store():
    found = [hit for p in _modules()
             if not str(p.relative_to(PACKAGE)).startswith(RANK_ROOMS)
             for hit in _rank_logic(p)]
    assert not found, found
    # the walk sees what it looks for
    assert any(".rank" in hit for hit in _rank_logic(PACKAGE / "parallel" / "comm.py"))
    assert any(".bcast" in hit for hit in _rank_logic(PACKAGE / "store" / "hdf5.py"))


#: The most parameters a function of the fitting kernels may take: their tables travel as
#: named tuples (fit/fast.py, fit/moments.py, fit/refining.py), not as long argument lists.
MAX_KERNEL_PARAMETERS = 15


def _parameter_counts(path: Path) -> dict[str, int]:
    tree = ast.parse(path.read_text())
    return {f"{path.name}:{node.name}": len(node.args.posonlyargs) + len(node.args.args)
            + len(node.args.kwonlyargs)
            for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}


def test_no_fitting_function_takes_a_long_argument_list():
    counts = {name: n for p in sorted((PACKAGE / "fit").glob("*.py"))
              for name, n in _parameter_counts(p).items()}
    assert "refining.py:_refine_batch" in counts  # the walk sees the kernels
    long = {name: n for name, n in counts.items() if n > MAX_KERNEL_PARAMETERS}
    assert not long, long


def test_mpi4py_is_imported_only_in_parallel_and_info():
    users = sorted(str(p.relative_to(PACKAGE)) for p in _modules() if "mpi4py" in p.read_text())
    assert all(u.startswith("parallel/") or u == "commands/info.py" for u in users), users
    assert "parallel/comm.py" in users  # the check can see an import


def test_only_the_store_names_the_datasets_of_motex_h5():
    groups = ("fits/", "atoms/", "shap/", "catalogue/", "frames/", "model/", "ml/", "data/")
    owners = set()
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and node.value.startswith(groups) and " " not in node.value:
                owners.add(str(path.relative_to(PACKAGE)))
    assert owners and all(o.startswith("store/") for o in owners), owners


def test_help_loads_neither_numba_nor_h5py_nor_mpi():
    probe = (
        "import sys\n"
        "from mlmotex_hpc.cli import build_parser\n"
        "parser = build_parser()\n"
        "for args in (['run', 'c.yaml'], ['pdf', 'm.xyz', '-o', 'g.gr'], ['refine', 'x.h5'],\n"
        "             ['learn', 'x.h5'], ['merge', 'c.yaml'], ['plot', 'x.h5'], ['info']):\n"
        "    parser.parse_args(args)\n"
        "heavy = {m.split('.')[0] for m in sys.modules}\n"
        "print(sorted(heavy & {'numba', 'h5py', 'mpi4py', 'xgboost', 'matplotlib', 'scipy'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
    help_text = subprocess.run([sys.executable, "-m", "mlmotex_hpc", "run", "--help"],
                               capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert help_text.returncode == 0 and "--dry-run" in help_text.stdout


@pytest.mark.slow
def test_serial_commands_start_no_mpi(keggin_run, tmp_path, write_config):
    out, _ = keggin_run
    h5 = out / "motex.h5"
    commands = {
        "plot": ["plot", str(h5), "-o", str(tmp_path / "plot"), "--quiet"],
        "refine": ["refine", str(h5), "--motif", "best", "-o", str(tmp_path / "refine")],
        "pdf": ["pdf", str(KEGGIN_XYZ), "-o", str(tmp_path / "model.gr")],
        "dry-run": ["run", str(write_config(keggin_config(tmp_path))), "--dry-run"],
        "info": ["info", "--short"],
    }
    for name, args in commands.items():
        proc, mpi = run_serial(*args)
        assert proc.returncode == 0, (name, proc.stdout + proc.stderr)
        assert not mpi["started"], name
        if name != "info":  # info reads the MPI library's version, without MPI_Init
            assert not mpi["loaded"], name
    assert (tmp_path / "plot" / "report.html").exists()
    assert (tmp_path / "refine" / "refine_results.txt").exists()
    assert "MPI library            Open MPI" in run_serial("info")[0].stdout


@pytest.mark.slow
def test_layout_version_recorded_read_and_refused_when_newer(keggin_run, tmp_path):
    out, _ = keggin_run
    with h5py.File(out / "motex.h5") as f:
        assert f.attrs["layout_version"] == LAYOUT_VERSION
    old = tmp_path / "old" / "motex.h5"  # a file from before the attribute: version 1
    old.parent.mkdir()
    shutil.copy(out / "motex.h5", old)
    with h5py.File(old, "r+") as f:
        del f.attrs["layout_version"]
    proc, _ = run_serial("plot", str(old), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert (old.parent / "report.html").exists()
    newer = tmp_path / "newer" / "motex.h5"
    newer.parent.mkdir()
    shutil.copy(out / "motex.h5", newer)
    with h5py.File(newer, "r+") as f:
        f.attrs["layout_version"] = LAYOUT_VERSION + 1
    for args in (["plot", str(newer)], ["refine", str(newer)]):
        proc, _ = run_serial(*args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert f"layout version {LAYOUT_VERSION + 1}" in lines[0]
        assert f"reads layouts up to {LAYOUT_VERSION}" in lines[0]
        assert "Traceback" not in proc.stderr
    assert not (newer.parent / "report.html").exists()


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2, 3])
@pytest.mark.mpi
def test_exit_policy_every_rank_leaves_together(ranks, tmp_path):
    """The three kinds of region of parallel/exits.py, with a fault on each rank in turn:
    the job always ends (no hang) with one exit code, and the message is printed once."""
    from .conftest import MPIRUN, mpi_env

    script = tmp_path / "policy.py"
    script.write_text(
        "import sys\n"
        "from mlmotex_hpc.cli import report_error\n"
        "from mlmotex_hpc.errors import InputError, JobFailed\n"
        "from mlmotex_hpc.parallel.comm import get_comm\n"
        "from mlmotex_hpc.parallel.exits import abort_on_error, agreed, root_then_bcast\n"
        "kind, where = sys.argv[1], int(sys.argv[2])\n"
        "comm = get_comm()\n"
        "def fail(exc):\n"
        "    if comm.rank == where: raise exc\n"
        "    return 'ok'\n"
        "try:\n"
        "    if kind == 'root-input':\n"
        "        root_then_bcast(lambda: fail(InputError('bad key on root')), comm)\n"
        "    elif kind == 'root-crash':\n"
        "        root_then_bcast(lambda: fail(OverflowError('boom')), comm)\n"
        "    elif kind == 'agreed-input':\n"
        "        with agreed(comm):\n"
        "            fail(InputError(f'bad value on rank {comm.rank}'))\n"
        "    elif kind == 'abort':\n"
        "        with abort_on_error(comm):\n"
        "            fail(RuntimeError('crash'))\n"
        "            comm.allreduce(1)\n"
        "    comm.Barrier()\n"
        "    print(f'rank {comm.rank} finished', flush=True)\n"
        "except InputError as exc:\n"
        "    report_error(str(exc)); sys.exit(2)\n"
        "except JobFailed:\n"
        "    sys.exit(1)\n"
    )
    cases = [("root-input", 0, 2, "bad key on root"), ("root-crash", 0, 1, "OverflowError: boom")]
    cases += [("agreed-input", r, 2, f"bad value on rank {r}") for r in range(ranks)]
    if ranks > 1:
        cases += [("abort", r, None, "RuntimeError: crash") for r in range(ranks)]
    for kind, where, code, text in cases:
        proc = subprocess.run(
            [MPIRUN, "--bind-to", "none", "-n", str(ranks), sys.executable, str(script), kind,
             str(where)], capture_output=True, text=True, timeout=120, env=mpi_env(), cwd=ROOT)
        label = (kind, where, ranks, proc.stdout, proc.stderr)
        if code is None:  # aborted: the job ends, non-zero, the traceback once
            assert proc.returncode != 0, label
        else:
            assert proc.returncode == code, label
        assert proc.stderr.count(text) == 1, label
        if kind.endswith("input"):
            assert "Traceback" not in proc.stderr, label
            ours = [ln for ln in proc.stderr.splitlines() if ln.startswith("mlmotex-hpc:")]
            assert ours == [f"mlmotex-hpc: error: {text}"], label  # mpirun adds a banner
        assert "finished" not in proc.stdout, label


def test_the_layout_describes_every_dataset_of_a_finished_run(keggin_run, tmp_path):
    """The layout is data (store/run_layout.py): a finished Keggin run holds nothing it does
    not describe, and everything it says every run has. (Exhaustive, adaptive, series
    and merged files are checked where those runs are made.)"""
    out, _ = keggin_run
    with h5py.File(out / "motex.h5") as f:
        assert not undescribed(f)
        for entry in LAYOUT:
            if entry.when == "always" and "<" not in entry.path:
                assert entry.path in f, entry.path
    shutil.copy(out / "motex.h5", tmp_path / "motex.h5")
    with h5py.File(tmp_path / "motex.h5", "r+") as f:  # the check can fail
        f.attrs["not_in_the_layout"] = 1
        f["fits/rw_again"] = f["fits/rw"][()]
        assert undescribed(f) == ["/: attribute not_in_the_layout not in the layout",
                                  "/fits/rw_again: not in the layout"]


def test_the_file_format_reference_is_generated_from_the_layout():
    """docs/motex-h5.md is `python -m mlmotex_hpc.store.run_layout`'s output, not prose."""
    assert (ROOT / "docs" / "motex-h5.md").read_text() == reference()


def test_h5py_is_imported_only_in_the_store_and_info():
    users = sorted(str(p.relative_to(PACKAGE)) for p in _modules()
                   if "import h5py" in p.read_text() or "from h5py" in p.read_text())
    assert all(u.startswith("store/") or u == "commands/info.py" for u in users), users
    assert "store/hdf5.py" in users  # the check can see an import


def _launches_mpirun(fn: ast.FunctionDef) -> bool:
    """Whether a test or fixture starts an mpirun job: ``run_cli(..., ranks=N)``, the
    ``MPIRUN`` launcher, or the kill helpers of tests/test_resume.py."""
    for node in ast.walk(fn):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            if name == "run_cli" and any(
                    k.arg == "ranks" and not (isinstance(k.value, ast.Constant)
                                              and k.value.value is None)
                    for k in node.keywords):
                return True
            if name in ("kill_when", "kill_session"):
                return True
        if isinstance(node, ast.Name) and node.id == "MPIRUN":
            return True
    return False


def _marks(nodes) -> set[str]:
    found = set()
    for node in nodes:
        for text in re.findall(r"pytest\.mark\.(\w+)", ast.unparse(node)):
            found.add(text)
    return found


def test_every_test_that_starts_mpirun_is_marked_mpi():
    """The ``mpi`` marker is applied consistently: every test that starts mpirun, itself
    or through a fixture of its module, carries it (on the test or the module)."""
    unmarked = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text())
        module = _marks(n.value for n in tree.body if isinstance(n, ast.Assign)
                        and any(getattr(t, "id", "") == "pytestmark" for t in n.targets))
        functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
        fixtures = {n.name for n in functions
                    if not n.name.startswith("test_") and _launches_mpirun(n)}
        for fn in functions:
            if not fn.name.startswith("test_"):
                continue
            uses = {a.arg for a in fn.args.args} & fixtures
            if (_launches_mpirun(fn) or uses) and "mpi" not in module | _marks(
                    fn.decorator_list):
                unmarked.append(f"{path.name}::{fn.name}")
    assert not unmarked, unmarked
