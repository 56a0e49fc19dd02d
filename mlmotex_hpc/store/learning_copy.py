"""Steps 3-4 on a copy of ``motex.h5`` that replaces it only when they are done, and a full
disk named as such.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ..errors import AgreedError, JobFailed
from .hdf5 import disk_errors, finishing_path
from .runfile import RunFile


def finish_on_copy(path: Path, comm, learn: Callable, outputs: Callable,
                   stage: str = "explain"):
    """Steps 3-4 on a copy of ``motex.h5`` that replaces it only when they are done.

    Every rank calls it. Rank 0 makes the copy; ``learn(run)`` runs on every rank with
    the copy open on every rank (parallel HDF5) or on rank 0 only (a :class:`RunFile`
    that holds nothing elsewhere); then rank 0 reopens it serially for
    ``outputs(run, learned)``, whose result it returns (None on the other ranks). HDF5
    cannot survive a kill while it adds groups and datasets, and the fits it would put
    at risk took the whole machine to compute. Working on a copy keeps them safe: a job
    killed while learning leaves ``motex.h5`` as the fit stage left it, and a rerun
    (resume) only learns again.
    """
    tmp = finishing_path(path)
    error = None
    if comm.rank == 0:
        try:
            shutil.copyfile(path, tmp)
        except OSError as exc:  # a full disk, a quota
            tmp.unlink(missing_ok=True)
            error = (f"writing the learning results next to {path} failed "
                     f"({exc.strerror or exc}); the fits in it are intact: free some space "
                     "and run again to learn")
    error = comm.bcast(error)
    if error is not None:
        raise AgreedError(error)
    run = None
    done = False
    try:
        run = RunFile.open(tmp, "r+", comm)
        try:
            with disk_errors(tmp):
                learned = learn(run)
        except (AgreedError, JobFailed):
            raise  # every rank is here: the file is closed together below
        except BaseException:
            # one rank's error: the others may be inside a collective, and closing a
            # parallel file is one; leave it open for the abort that follows
            if run.parallel:
                run = None
            raise
        run.close()
        summary = None
        if comm.rank == 0:
            run = RunFile.open(tmp, "r+")
            with disk_errors(tmp):
                summary = outputs(run, learned)
            run.mark_complete(stage)
        done = True
    finally:
        if run is not None:
            run.close()
        if comm.rank == 0:
            if done:
                os.replace(tmp, path)
            else:
                tmp.unlink(missing_ok=True)
    return summary


