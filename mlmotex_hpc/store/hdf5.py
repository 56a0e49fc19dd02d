"""How ``motex.h5`` (and any file of the store) is opened: parallel HDF5
(``driver="mpio"``) when h5py has MPI and the job more than one rank, else serially on
rank 0; the choice is made here and nowhere else. And the small helpers every writer and
reader shares.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np


def parallel_hdf5_available() -> bool:
    """True when h5py was built against an MPI-enabled HDF5.

    ``MLMOTEX_SERIAL_HDF5=1`` forces the serial fallback (to test it, or to avoid a
    broken MPI-IO layer on some file system).
    """
    if os.environ.get("MLMOTEX_SERIAL_HDF5", "0") not in ("", "0"):
        return False
    return bool(h5py.get_config().mpi)


def _parallel(comm) -> bool:
    return comm is not None and comm.size > 1 and parallel_hdf5_available()


def announce_fallback(comm) -> None:
    """Say once, on rank 0, that results travel to rank 0 for writing."""
    global _fallback_announced
    if comm.size > 1 and not parallel_hdf5_available() and not _fallback_announced:
        _fallback_announced = True
        if comm.rank == 0:
            print("mlmotex-hpc: h5py has no MPI support: serial-HDF5 fallback "
                  "(rank 0 writes every result)", file=sys.stderr, flush=True)


def creating_path(path: Path) -> Path:
    """Where a new ``motex.h5`` is built before it takes its final name."""
    return path.with_name(path.name + ".creating")


def finishing_path(path: Path) -> Path:
    """Where steps 3-4 write, on a copy, before it replaces ``motex.h5``."""
    return path.with_name(path.name + ".finishing")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _replace(group: h5py.Group, name: str, data: np.ndarray) -> h5py.Dataset:
    if name in group:
        del group[name]
    return group.create_dataset(name, data=data)


def _per_frame(value, n: int) -> list:
    """An ``/ml`` value as one entry per frame (single-frame files store scalars)."""
    if isinstance(value, str | bytes):
        loaded = json.loads(value)
        return loaded if n > 1 else [loaded]
    return list(np.atleast_1d(value))


def _broadcast(value: Any, comm) -> Any:
    """Rank 0's ``value`` on every rank of ``comm`` (through its methods: this module loads
    no MPI library)."""
    array = isinstance(value, np.ndarray) and value.dtype.kind in "biuf"
    meta = comm.bcast((value.shape, value.dtype.str) if array else None)
    if meta is None:
        return comm.bcast(value)
    buffer = (np.ascontiguousarray(value) if comm.rank == 0
              else np.empty(meta[0], dtype=np.dtype(meta[1])))
    comm.Bcast(buffer)
    return buffer



_fallback_announced = False


#: A write that fails with less than this free beside the file failed for want of space.
NEARLY_FULL = 2**20


@contextlib.contextmanager
def disk_errors(path: Path):
    """Name a full disk as such: parallel HDF5 reports a failed write without the
    system's errno ("Can't write data (file write failed)"), so a write error with the
    file system of ``path`` (nearly) full becomes an ``ENOSPC`` OSError, which the exit
    policy reports in one line."""
    try:
        yield
    except (OSError, ValueError, RuntimeError) as exc:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        if not isinstance(exc, OSError) and "failed" not in str(exc):
            raise  # h5py says "Unable to create dataset (file write failed)" as ValueError
        try:
            free = shutil.disk_usage(path.parent).free
        except OSError:
            raise exc from None
        if free < NEARLY_FULL:
            raise OSError(errno.ENOSPC, f"No space left on device: {free} bytes free "
                          f"beside {path.name} ({exc})") from exc
        raise
