"""The store: every HDF5 file the program writes, and only here.

``run_layout``    the layout of ``motex.h5`` as data (datasets, shapes, types, attributes,
                  ``LAYOUT_VERSION``), the names writer and readers share, the generated
                  reference (``docs/motex-h5.md``)
``hdf5``          parallel HDF5 or serial: the one place that chooses; shared helpers
``h5file``        :class:`StoreFile`: a file of the store open serially or on every rank,
                  ``shared`` (a value read on rank 0 for every rank), ``read_share``
``runfile``       :class:`RunFile`: ``motex.h5``, checked when opened for reading (a
                  ``StoreFile`` with the two parts below)
``run_writes``    every writer of ``motex.h5`` (``create``, ``collective_*``, ``write_*``)
``run_reads``     every typed reader of ``motex.h5``
``layout``        a file layout as data (:class:`~.layout.Entry`), checked against real files
                  and rendered as a reference, for every file kind
``screen_layout`` the layout of ``screen.h5`` (``docs/screen-h5.md``)
``screenfile``    :class:`ScreenFile`: ``screen.h5``, a screen's candidates and scores
``lock``          one job per output folder (:class:`RunLock`)
``probe``         what an existing file says about itself, for a resume
``learning_copy`` steps 3-4 on a copy that replaces the file when done
``merge``         a job array's parts joined

Only this package imports h5py. It uses a communicator through its methods and loads no
MPI library itself.
"""

from .hdf5 import announce_fallback, creating_path, finishing_path, parallel_hdf5_available
from .learning_copy import finish_on_copy
from .lock import RunLock, lock_path
from .merge import Part, merge_parts, read_part
from .probe import Probe, config_hash, fits_hash, probe
from .run_layout import (
    ATOM_DATASETS,
    FIT_FIELDS,
    LAYOUT_VERSION,
    ORIGIN_CODES,
    STAGES,
)
from .runfile import RunFile
from .screenfile import ScreenFile

__all__ = ["ATOM_DATASETS", "FIT_FIELDS", "LAYOUT_VERSION", "ORIGIN_CODES", "STAGES",
           "Part", "Probe", "RunFile", "RunLock", "ScreenFile", "announce_fallback", "config_hash",
           "creating_path", "finish_on_copy", "finishing_path", "fits_hash", "lock_path",
           "merge_parts", "parallel_hdf5_available", "probe", "read_part"]
