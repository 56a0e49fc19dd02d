"""What a run's results were computed from: the content hash of every input file.

A run records :func:`input_digests` in its ``motex.h5``. Whatever reads the run's
inputs again (a resume, ``learn``, ``refine``, ``plot``, ``merge``) compares them with
the files as they are now (:func:`check_unchanged`), so that a data file replaced after
the run is never used beside results fitted to the old one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..config import Config
from ..errors import InputError

#: What to do about a changed input, for a command that only reads a finished run.
REREAD_ADVICE = ("restore the file the run used, or run the config again (--overwrite) "
                 "to fit the new one")
#: ... and for a run that would resume it.
RESUME_ADVICE = ("results of two inputs are never mixed: restore it, use another "
                 "output.dir, or --overwrite to start again")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise InputError(f"cannot read {path} ({exc.strerror or exc})") from None
    return digest.hexdigest()


def input_digests(config: Config) -> dict[str, str]:
    """The content hash of every input file (and of the frames' times), by role."""
    digests = {"structure": _sha256_file(config.structure)}
    for k, path in enumerate(config.data):
        key = f"data {path.name}"
        if key in digests:  # another folder's file of the same name: keep both
            key = f"data {path.name} (frame {k})"
        digests[key] = _sha256_file(path)
    if config.fits is not None:
        digests["fits"] = _sha256_file(config.fits)
    if config.catalogue.masks_file is not None:
        digests["catalogue.masks_file"] = _sha256_file(config.catalogue.masks_file)
    if config.frames.time is not None:
        digests["frames.time"] = times_digest(config.frames.time)
    return digests


def times_digest(times) -> str:
    """The hash of a series' frame times (as the config gives them)."""
    return hashlib.sha256(repr(tuple(float(t) for t in times)).encode()).hexdigest()


def changed_inputs(path: Path, config: Config, stored: dict[str, str],
                   now: dict[str, str], advice: str = RESUME_ADVICE) -> str:
    """The one line that says which input of the run in ``path`` has changed."""
    files = {"structure": str(config.structure), "fits": str(config.fits),
             "catalogue.masks_file": str(config.catalogue.masks_file),
             "frames.time": "the frames' times"}
    for key in [*stored, *now]:
        if stored.get(key) == now.get(key):
            continue
        name = files.get(key) or key.removeprefix("data ")
        if key not in now:
            what = f"data file {name} is no longer among the config's data"
        elif key not in stored:
            what = f"data file {name} was not among the data when the run began"
        else:
            what = f"{name} has changed since the run began"
        return f"{path} was fitted to other inputs: {what}; {advice}"
    return f"{path} was fitted to other inputs; {advice}"


def check_unchanged(path: Path, config: Config, stored: dict[str, str] | None) -> None:
    """Refuse, in one line, inputs that differ from those the run in ``path`` recorded
    (``stored`` None: a file from before inputs were hashed, nothing to compare)."""
    if stored is None:
        return
    now = input_digests(config)
    if now != stored:
        raise InputError(changed_inputs(path, config, stored, now, REREAD_ADVICE))
