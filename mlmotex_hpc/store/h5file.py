"""A file of the store open serially or on every MPI rank: opening, holding, sharing a
value among ranks, closing. The files themselves (``motex.h5``: :mod:`.runfile`) build on it.

Parallel or serial HDF5 (:mod:`.hdf5` chooses): with parallel HDF5 the file is open on
every rank with ``driver="mpio"``; every rank makes the same metadata calls (methods
named ``collective``) and each rank writes its own slices. Otherwise (one rank, or the
serial-HDF5 fallback) only rank 0 holds the file (:attr:`StoreFile.holds`) and the other
ranks' calls do nothing. A value every rank needs is read on rank 0 and handed to all
(:meth:`StoreFile.shared`). The communicator is used through its methods only, so this
module loads no MPI library itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import h5py

from ..errors import InputError
from .hdf5 import _broadcast, _parallel, creating_path


def _reader(method):
    """A reader of a :class:`StoreFile`: a dataset that is missing or cannot be read becomes
    one :class:`InputError` naming the file, not a traceback."""

    @functools.wraps(method)
    def read(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (OSError, KeyError) as exc:
            detail = exc.args[0] if exc.args else exc
            raise InputError(f"{self.path} cannot be read ({method.__name__}: {detail}): the "
                             "file is damaged, or was written by an unfinished run") from None

    return read


class StoreFile:
    """A file of the store open on one rank (serial) or on every rank (parallel HDF5).

    Open one with :meth:`open` (every rank of ``comm`` calls it), or an existing one,
    checked, in this process with :meth:`open_checked`. Methods whose name starts with
    ``collective_`` must be called by every rank with the same arguments.
    """

    def __init__(self, path: Path, file: h5py.File | None, comm=None, parallel: bool = False):
        self.path = Path(path)
        self.file = file
        self.comm = comm
        self.parallel = parallel

    # -- opening and closing --------------------------------------------------------------
    @property
    def holds(self) -> bool:
        """Whether this rank holds the file open."""
        return self.file is not None

    # -- reading for every rank -----------------------------------------------------------
    def shared(self, read: Callable[[Self], Any]) -> Any:
        """``read(self)`` on rank 0, which holds the file in every mode, and its value on
        every rank: the one way a stage reads what all ranks need (every rank calls it).
        A numeric NumPy array travels as a raw buffer; another value is pickled."""
        comm = self.comm
        if comm is None or comm.size == 1:
            return read(self)
        value = read(self) if comm.rank == 0 else None
        return _broadcast(value, comm)

    @property
    def readers(self) -> int:
        """Ranks that read the file side by side: all with parallel HDF5, else rank 0."""
        return self.comm.size if self.parallel else 1

    def read_share(self, n_rows: int, block: int) -> tuple[int, int]:
        """This rank's contiguous share ``lo:hi`` of ``n_rows`` rows, in whole blocks of
        ``block``, to read itself: with parallel HDF5 each rank a share (the first
        ``n_blocks % ranks`` one block more), else rank 0 all of them and the others none."""
        if not self.holds:
            return 0, 0
        worker = self.comm.rank if self.parallel else 0
        workers = self.readers
        n_blocks = -(-n_rows // block)
        count = n_blocks // workers + (n_blocks % workers > worker)
        first = worker * (n_blocks // workers) + min(worker, n_blocks % workers)
        return min(n_rows, first * block), min(n_rows, (first + count) * block)

    def collective_flush(self) -> None:
        """Every rank's writes on disk before any rank reads them (flush, then wait)."""
        if self.file is not None:
            self.file.flush()
        if self.comm is not None and self.comm.size > 1:
            self.comm.Barrier()

    @classmethod
    def open(cls, path: Path, mode: str = "r", comm=None) -> Self:
        """Open ``path``: on every rank of ``comm`` with parallel HDF5, else on rank 0 only
        (no ``comm``: in this process, serially)."""
        parallel = _parallel(comm)
        if parallel:
            file = h5py.File(path, mode, driver="mpio", comm=comm)
        elif comm is None or comm.rank == 0:
            file = h5py.File(path, mode)
        else:
            file = None
        return cls(path, file, comm, parallel)

    @classmethod
    def open_checked(cls, path: str | Path, mode: str, expected: str) -> Self:
        """``path`` open in this process (serial), checked to be an HDF5 file that no other
        process holds; ``expected`` says what it should be (in the messages). The file's
        kind checks its own contents after.

        Raises
        ------
        InputError
            When the file is missing, not HDF5, open in another process, or unreadable.
        """
        path = Path(path)
        if not path.is_file():
            raise InputError(f"no such file: {path} (expected {expected})")
        try:
            is_hdf5 = h5py.is_hdf5(path)
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc}") from None
        if not is_hdf5:
            raise InputError(f"{path} is not an HDF5 file (expected {expected})")
        try:
            file = h5py.File(path, mode)
        except BlockingIOError:
            raise InputError(f"{path} is open in another process (is a job still writing "
                             "it?)") from None
        except OSError as exc:
            raise InputError(f"cannot read {path} as HDF5 ({exc})") from None
        return cls(path, file)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def close_quietly(self) -> None:
        """Close after a failed write, and remove the unfinished new file."""
        try:
            self.close()
        except OSError:
            self.file = None
        if self.comm is None or self.comm.rank == 0:
            creating_path(self.path).unlink(missing_ok=True)

    # -- reading -------------------------------------------------------------------------------
    def _attr(self, name: str, default=None):
        return self.file.attrs.get(name, default)
