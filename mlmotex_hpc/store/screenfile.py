"""``screen.h5``, the results file of a screen: its only writer and its only reader.

The layout is data in :mod:`.screen_layout`. A screen's rows are small (a few numbers and
one packed mask per candidate), so the file is written by one process: the screen's rank 0
receives each candidate's score as it is made and writes it at once
(:meth:`ScreenFile.write_score`, flushed). A killed screen loses only the candidates in
flight; a resume (:meth:`ScreenFile.read` with ``"r+"``, the same config) scores the
candidates not ``done``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .. import __version__
from ..errors import InputError
from .h5file import StoreFile, _reader
from .hdf5 import _text
from .probe import config_hash
from .screen_layout import SCREEN_LAYOUT_VERSION

_STR = h5py.string_dtype()


class ScreenFile(StoreFile):
    """``screen.h5`` open in this process (the screen's rank 0)."""

    @classmethod
    def create(cls, path: Path, *, config_text: str, frame_names: Sequence[str],
               candidates: Sequence[dict[str, Any]], skipped: Sequence[tuple[str, str]],
               max_permuted: int) -> ScreenFile:
        """A new screen's file: its candidates (``CANDIDATE_FIELDS`` each), the skipped
        templates ``(template, reason)``, every score not yet made (NaN, not done)."""
        path = Path(path)
        file = h5py.File(path, "w")
        file.attrs.update(kind="screen", config=config_text,
                          config_hash=config_hash(config_text), version=__version__,
                          layout_version=SCREEN_LAYOUT_VERSION, complete=False)
        n, f = len(candidates), len(frame_names)
        file.create_dataset("frames/names", data=np.array(list(frame_names), dtype=object),
                            dtype=_STR)
        grp = file.create_group("candidates")
        for name, dtype in (("template", _STR), ("centre", _STR), ("formula", _STR),
                            ("copies", _STR)):
            values = [json.dumps(c[name]) if name == "copies" else str(c[name])
                      for c in candidates]
            grp.create_dataset(name, data=np.array(values, dtype=object), dtype=dtype)
        grp.create_dataset("radius", data=np.array([c["radius"] for c in candidates], float))
        for name in ("atoms", "permuted"):
            grp.create_dataset(name, data=np.array([c[name] for c in candidates], np.int64))
        scores = file.create_group("scores")
        scores.create_dataset("done", data=np.zeros(n, np.uint8))
        for name in ("rw_whole", "rw_best"):
            scores.create_dataset(name, data=np.full((f, n), np.nan))
        scores.create_dataset("best_size", data=np.zeros((f, n), np.int64))
        scores.create_dataset("best_mask", data=np.zeros((f, n, max(1, -(-max_permuted // 8))),
                                                         np.uint8))
        scores.create_dataset("fits", data=np.zeros(n, np.int64))
        skip = file.create_group("skipped")
        for k, name in enumerate(("template", "reason")):
            skip.create_dataset(name, data=np.array([str(s[k]) for s in skipped],
                                                    dtype=object), dtype=_STR)
        file.flush()
        return cls(path, file)

    @classmethod
    def read(cls, path: str | Path, mode: str = "r") -> ScreenFile:
        """An existing screen's file, checked to be one of a layout this version reads."""
        screen = cls.open_checked(Path(path), mode, "a screen's screen.h5")
        if _text(screen._attr("kind", "")) != "screen":
            screen.close()
            raise InputError(f"{path} is not the screen.h5 of an mlmotex-hpc screen")
        version = int(screen._attr("layout_version", 0))
        if version > SCREEN_LAYOUT_VERSION:
            screen.close()
            raise InputError(f"{path} has screen.h5 layout version {version}, written by a "
                             f"newer mlmotex-hpc; this version ({__version__}) reads layouts "
                             f"up to {SCREEN_LAYOUT_VERSION}: upgrade mlmotex-hpc to read it")
        return screen

    # -- writing ----------------------------------------------------------------------------
    def write_score(self, index: int, *, rw_whole: np.ndarray, rw_best: np.ndarray,
                    best_mask: np.ndarray, fits: int) -> None:
        """Candidate ``index``'s probe (arrays over the frames; ``best_mask`` F × N bool),
        marked done and flushed."""
        scores = self.file["scores"]
        best_mask = np.atleast_2d(np.asarray(best_mask, bool))
        packed = np.packbits(best_mask, axis=1)
        width = scores["best_mask"].shape[2]
        row = np.zeros((best_mask.shape[0], width), np.uint8)
        row[:, :packed.shape[1]] = packed
        scores["rw_whole"][:, index] = rw_whole
        scores["rw_best"][:, index] = rw_best
        scores["best_size"][:, index] = best_mask.sum(axis=1)
        scores["best_mask"][:, index, :] = row
        scores["fits"][index] = int(fits)
        scores["done"][index] = 1
        self.file.flush()

    def mark_complete(self) -> None:
        self.file.attrs["complete"] = True
        self.file.flush()

    # -- reading ----------------------------------------------------------------------------
    @property
    def config_text(self) -> str:
        return _text(self._attr("config", ""))

    @property
    def config_hash(self) -> str:
        return _text(self._attr("config_hash", ""))

    @property
    def complete(self) -> bool:
        return bool(self._attr("complete", False))

    @_reader
    def done(self) -> np.ndarray:
        return self.file["scores/done"][:].astype(bool)

    @_reader
    def candidates(self) -> dict[str, np.ndarray]:
        """``/candidates`` as columns (text decoded; ``copies`` as lists)."""
        grp = self.file["candidates"]
        out: dict[str, Any] = {}
        for name in ("template", "centre", "formula"):
            out[name] = np.array([_text(v) for v in grp[name][:]], dtype=object)
        out["copies"] = [json.loads(_text(v)) for v in grp["copies"][:]]
        out["radius"] = grp["radius"][:]
        out["atoms"] = grp["atoms"][:]
        out["permuted"] = grp["permuted"][:]
        return out

    @_reader
    def scores(self) -> dict[str, np.ndarray]:
        """``/scores``: done (C,), rw_whole, rw_best, best_size (F × C), best_mask
        (F × C × N bool, N of each row's candidate: the rest False), fits (C,)."""
        grp = self.file["scores"]
        width = grp["best_mask"].shape[2]
        return {"done": grp["done"][:].astype(bool), "rw_whole": grp["rw_whole"][:],
                "rw_best": grp["rw_best"][:], "best_size": grp["best_size"][:],
                "best_mask": np.unpackbits(grp["best_mask"][:], axis=2,
                                           count=8 * width).astype(bool),
                "fits": grp["fits"][:]}

    @_reader
    def skipped(self) -> list[tuple[str, str]]:
        grp = self.file["skipped"]
        return [(_text(t), _text(r)) for t, r in zip(grp["template"][:], grp["reason"][:],
                                                     strict=True)]

    @_reader
    def frame_names(self) -> list[str]:
        return [_text(v) for v in self.file["frames/names"][:]]
