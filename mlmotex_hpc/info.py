"""What the software stack is: for bug reports and for checking a cluster install."""

from __future__ import annotations

import importlib.metadata as md
import platform

PACKAGES = ("mlmotex-hpc", "numpy", "numba", "mpi4py", "h5py", "diffpy.srfit", "periodictable",
            "xgboost", "shap", "scikit-optimize", "scikit-learn", "scipy", "pyyaml", "matplotlib")


def software_stack() -> list[tuple[str, str]]:
    """(name, description) pairs: Python, MPI, HDF5 and every dependency's version."""
    rows = [("python", f"{platform.python_version()} ({platform.machine()})")]
    try:
        from mpi4py import MPI

        library = MPI.Get_library_version().splitlines()[0].strip()
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

        rows.append(("numba threading", str(numba.config.THREADING_LAYER)))
    except Exception as exc:  # noqa: BLE001
        rows.append(("numba threading", f"unavailable ({exc})"))
    for name in PACKAGES:
        try:
            rows.append((name, md.version(name)))
        except md.PackageNotFoundError:
            rows.append((name, "not installed"))
    return rows
