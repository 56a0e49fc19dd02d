"""What an existing ``motex.h5`` says about itself, for a resume: its config's hashes, the
work units done, whether it is complete and to which stage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import yaml

from ..errors import InputError
from .hdf5 import _text
from .run_layout import STAGES


def config_hash(text: str, without: tuple[str, ...] = ()) -> str:
    """Hash of a config's content: comments, spacing and key order do not count, nor the
    top-level sections named in ``without``."""
    try:
        raw = yaml.safe_load(text)
        if isinstance(raw, dict):
            raw = {k: v for k, v in raw.items() if k not in without}
        canonical = yaml.safe_dump(raw, sort_keys=True)
    except yaml.YAMLError:
        canonical = text
    return hashlib.sha256(canonical.encode()).hexdigest()


#: Keys of ``extract`` that decide how many catalogue motifs are fitted (the fits
#: kept for the extract stage come out of ``catalogue.size``).
EXTRACT_FIT_KEYS = ("polish", "connected", "polish_fits")


#: Sections that never change a fit: a run whose only changes are there keeps its fits.
FIT_FREE_SECTIONS = ("learn", "exact")


def fits_hash(text: str) -> str:
    """Hash of what the fits depend on: the config without its ``learn`` section and
    the ``extract`` keys that do not change the catalogue, so a run whose learning or
    extraction settings changed reuses its fits."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        return config_hash(text, without=FIT_FREE_SECTIONS)
    if isinstance(raw, dict) and isinstance(raw.get("extract"), dict):
        kept = {k: v for k, v in raw["extract"].items() if k in EXTRACT_FIT_KEYS}
        raw = {**raw, "extract": kept} if kept else {k: v for k, v in raw.items()
                                                     if k != "extract"}
        text = yaml.safe_dump(raw, sort_keys=True)
    return config_hash(text, without=FIT_FREE_SECTIONS)




@dataclasses.dataclass(frozen=True)
class Probe:
    """What ``run`` needs to know of an existing ``motex.h5`` to resume or refuse it."""

    config_hash: str | None
    fits_hash: str | None  # None: written before the fits had a hash of their own
    batch_done: np.ndarray | None
    complete: bool
    frame_range: tuple[int, int] | None
    digests: dict[str, str] | None = None  # None: written before inputs were hashed
    #: The last stage a complete file went through (:data:`STAGES`); None: not complete.
    stage: str | None = None

    def finished(self, until: str) -> bool:
        """Whether the file is complete up to stage ``until`` (a run to it has nothing to
        do)."""
        return self.complete and self.stage is not None and \
            STAGES.index(self.stage) >= STAGES.index(until)


def _finished_stage(h5: h5py.File) -> str:
    """The stage a complete file went through: recorded (``finished_stage``), or for a
    file written before the attribute, read from what it holds."""
    if "finished_stage" in h5.attrs:
        return _text(h5.attrs["finished_stage"])
    if "atoms/contribution" in h5:
        return "explain"
    return "learn" if "ml" in h5 and len(h5["ml"].attrs) else "fit"


def probe(path: Path) -> Probe:
    """Read the resume state of ``path`` (errors are :class:`InputError`)."""
    try:
        with h5py.File(path, "r") as h5:
            stored = h5.attrs.get("config_hash")
            fits = h5.attrs.get("fits_hash")
            done = h5["fits/batch_done"][:] if "fits/batch_done" in h5 else None
            frame_range = h5.attrs.get("frame_range")
            digests = h5.attrs.get("input_digests")
            complete = bool(h5.attrs.get("complete", False))
            return Probe(
                config_hash=None if stored is None else _text(stored),
                fits_hash=None if fits is None else _text(fits),
                batch_done=done,
                complete=complete,
                frame_range=None if frame_range is None else tuple(int(v) for v in frame_range),
                digests=None if digests is None else json.loads(_text(digests)),
                stage=_finished_stage(h5) if complete else None,
            )
    except BlockingIOError:
        raise InputError(
            f"{path} is open in another process: is another job writing to this "
            "output.dir? (if not, HDF5_USE_FILE_LOCKING=FALSE lifts a stale lock)"
        ) from None
    except OSError as exc:
        raise InputError(
            f"{path} exists but is not a readable HDF5 file ({exc}); use --overwrite to "
            "start again"
        ) from None


