"""``motex.h5``, the one file of a run: :class:`RunFile`, its only writer and its only reader.

Every other module calls :class:`RunFile`; no other module names a dataset of the file.
The layout (every dataset and attribute, with its shape, type and meaning) is data, in
:mod:`.run_layout`, from which ``docs/motex-h5.md`` is generated; the tests check finished
runs of every kind against it. A file of a later layout version than
:data:`~.run_layout.LAYOUT_VERSION` is refused with a message that names both versions;
version 1 (no ``layout_version`` attribute) is the same layout, read as it is.

:class:`RunFile` is built from three parts, each in its own module:

- :mod:`.h5file` (:class:`~.h5file.StoreFile`): the file open serially or on every rank
  (parallel or serial HDF5), a value read on rank 0 for every rank (``shared``), a rank's
  share of rows to read (``read_share``), closing;
- :mod:`.run_writes` (:class:`~.run_writes.RunWrites`): every writer (``create``,
  ``collective_*``, ``write_*``, ``mark_complete``);
- :mod:`.run_reads` (:class:`~.run_reads.RunReads`): every typed reader.

This module adds what is the file's own: opening an existing ``motex.h5`` checked to be
one (:meth:`RunFile.read`) and its view of the catalogue.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from .. import __version__
from ..errors import InputError
from .h5file import StoreFile
from .run_layout import LAYOUT_VERSION
from .run_reads import RunReads
from .run_writes import RunWrites


class RunFile(StoreFile, RunReads, RunWrites):
    """``motex.h5`` open on one rank (serial) or on every rank (parallel HDF5).

    Open a new run's file with :meth:`create`, an existing one with :meth:`open` (every
    rank of ``comm`` calls both), or a finished one for reading with :meth:`read`.
    Methods whose name starts with ``collective_`` must be called by every rank with
    the same arguments; the others by the ranks that write (``write_batch``,
    ``write_shap``) or by any holder (the readers).
    """

    def __init__(self, path: Path, file: h5py.File | None, comm=None, parallel: bool = False):
        super().__init__(path, file, comm, parallel)
        self._view: np.ndarray | None | bool = False  # not read yet
        self._config_read: tuple | None = None  # (what it was read from, the Config)

    @classmethod
    def read(cls, path: str | Path, mode: str = "r") -> RunFile:
        """A finished or unfinished run's file, checked to be one (serial).

        Raises
        ------
        InputError
            When the file is missing, not HDF5, not written by ``mlmotex-hpc run``, or
            of a layout newer than this version reads.
        """
        path = Path(path)
        run = cls.open_checked(path, mode, "a run's motex.h5")
        file = run.file
        missing = [name for name in ("model/elements", "model/xyz", "catalogue/mask",
                                     "catalogue/permutable") if name not in file]
        if "config" not in file.attrs or missing:
            file.close()
            what = missing[0] if missing else "the root attribute 'config'"
            raise InputError(f"{path} is not the motex.h5 of an mlmotex-hpc run (it lacks {what})")
        version = run.layout_version
        if version > LAYOUT_VERSION:
            file.close()
            raise InputError(
                f"{path} has motex.h5 layout version {version}, written by a newer "
                f"mlmotex-hpc; this version ({__version__}) reads layouts up to "
                f"{LAYOUT_VERSION}: upgrade mlmotex-hpc to read it")
        return run
