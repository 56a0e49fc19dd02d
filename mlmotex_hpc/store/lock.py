"""One job per output folder: the run lock beside ``motex.h5``."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import sys
import time
from pathlib import Path

from ..errors import InputError


def lock_path(path: Path) -> Path:
    """The lock file beside ``motex.h5`` (it stays; only its lock comes and goes)."""
    return path.with_name("." + path.name + ".lock")


class RunLock:
    """An exclusive advisory lock (``flock``) on a run's ``motex.h5``, held by rank 0 for
    a job's whole life: the file, its ``.creating`` and its ``.finishing`` copy.

    A second job on the same output folder is refused with one line and touches
    nothing. The kernel drops the lock when the holder dies, so a killed job never
    leaves a stale one. On file systems without ``flock`` (some Lustre or NFS mounts)
    the run goes on unlocked, and says so.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock (errors are :class:`InputError`)."""
        where = lock_path(self.path)
        try:
            fd = os.open(where, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InputError(f"cannot create the lock file {where} "
                             f"({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another job"
            os.close(fd)
            raise InputError(
                f"{self.path} belongs to a job that is still running ({holder}): one job "
                "per output folder; wait for it, or use another output.dir (--out)") from None
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise InputError(f"cannot lock {where} ({exc.strerror or exc})") from None
            print(f"mlmotex-hpc: {where.parent} does not support file locks: running "
                  "without one (do not start a second job on this folder)", file=sys.stderr,
                  flush=True)
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        self.fd = fd

    def check_free(self) -> None:
        """Refuse, as :meth:`acquire` would, when another job holds the lock; take
        nothing and create nothing (a dry run)."""
        where = lock_path(self.path)
        try:
            fd = os.open(where, os.O_RDONLY)
        except OSError:
            return  # no lock file: nobody holds it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another job"
            raise InputError(
                f"{self.path} belongs to a job that is still running ({holder}): one job "
                "per output folder; wait for it, or use another output.dir (--out)") from None
        except OSError:
            pass  # no flock here: acquire runs unlocked and says so
        finally:
            os.close(fd)

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


