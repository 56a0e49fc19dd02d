"""``mlmotex-hpc info [--short]``: the software stack, for bug reports and for checking a
cluster install. It reads the MPI library's version without initialising MPI (which
fails or hangs on some login nodes)."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import platform

from . import launcher_rank

HELP = "print the software stack"

PACKAGES = ("mlmotex-hpc", "numpy", "numba", "mpi4py", "h5py", "diffpy.srfit", "periodictable",
            "xgboost", "shap", "scikit-optimize", "scikit-learn", "scipy", "pyyaml", "matplotlib")


#: What ``info --short`` keeps: enough for a job log.
SHORT = ("python", "MPI library", "HDF5", "mlmotex-hpc", "numpy", "numba", "mpi4py", "h5py")


def software_stack(short: bool = False) -> list[tuple[str, str]]:
    """(name, description) pairs: Python, MPI, HDF5, numba and every dependency's version.

    ``short`` keeps the rows of :data:`SHORT`.
    """
    rows = [("python", f"{platform.python_version()} ({platform.machine()})")]
    try:
        import mpi4py

        mpi4py.rc.initialize = False  # the version is readable before MPI_Init
        mpi4py.rc.finalize = False
        from mpi4py import MPI

        # Open MPI's string ends in a NUL byte, which would make every job log a binary
        # file to grep
        library = MPI.Get_library_version().replace("\0", "").splitlines()[0].strip()
        rows.append(("MPI library", f"{library} (MPI {'.'.join(map(str, MPI.Get_version()))})"))
    except Exception as exc:  # noqa: BLE001 - report, don't fail
        rows.append(("MPI library", f"unavailable ({exc})"))
    try:
        import h5py

        mode = "parallel (MPI)" if h5py.get_config().mpi else "serial only: fallback in use"
        rows.append(("HDF5", f"{h5py.version.hdf5_version}, h5py {mode}"))
    except Exception as exc:  # noqa: BLE001
        rows.append(("HDF5", f"unavailable ({exc})"))
    try:
        import numba

        rows.append(("numba threading", f"{numba.config.THREADING_LAYER} layer, "
                     f"{numba.config.NUMBA_NUM_THREADS} threads"))
        rows.append(("numba cache", str(numba.config.CACHE_DIR or "beside the sources")))
        from llvmlite import binding

        cpu = numba.config.CPU_NAME or binding.get_host_cpu_name()
        rows.append(("CPU", f"{cpu}, {os.cpu_count()} cores"))
    except Exception as exc:  # noqa: BLE001
        rows.append(("numba threading", f"unavailable ({exc})"))
    for name in PACKAGES:
        try:
            rows.append((name, md.version(name)))
        except md.PackageNotFoundError:
            rows.append((name, "not installed"))
    if short:
        rows = [row for row in rows if row[0] in SHORT]
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--short", action="store_true", help="one line per key component")


def main(args: argparse.Namespace) -> int:
    for name, value in software_stack(short=args.short):
        if launcher_rank() == 0:
            print(f"{name:22s} {value}")
    return 0
