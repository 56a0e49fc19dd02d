"""Output folders: created, and checked writable before the work whose files go there."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError


def folder_problem(folder: Path) -> str | None:
    """Create ``folder`` (and its parents) and write a probe file in it: None when that
    works, else why not (a file of that name, no permission, a read-only mount)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".mlmotex-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return str(exc.strerror or exc)
    return None


def make_folder(folder: Path) -> Path:
    """Create an output folder (and its parents) and check that files can be written in
    it, before any work whose results go there; errors are :class:`InputError`."""
    folder = Path(folder)
    problem = folder_problem(folder)
    if problem is not None:
        what = "create" if not folder.is_dir() else "write in"
        raise InputError(f"cannot {what} the output folder {folder} ({problem})")
    return folder


