"""The typed readers of ``motex.h5``: its attributes as properties, each dataset as a
method that returns NumPy arrays or plain values, and the run's config read back.

A mixin of :class:`~.runfile.RunFile`: it reads the file that :class:`~.h5file.StoreFile`
holds. A reader wrapped by :func:`~.h5file._reader` turns a missing or unreadable dataset
into one :class:`InputError` naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..config import Config, parse_config, select_frames
from ..errors import InputError
from ..io.defaults import with_file_defaults
from ..io.digests import check_unchanged
from ..io.structure import Structure
from .h5file import _reader
from .hdf5 import _text


class RunReads:
    """Every typed reader of ``motex.h5`` (a mixin of :class:`~.runfile.RunFile`); any rank
    that holds the file may call them."""

    @property
    def layout_version(self) -> int:
        return int(self._attr("layout_version", 1))

    @property
    def config_text(self) -> str:
        return _text(self._attr("config", ""))

    @property
    def config_dir(self) -> Path | None:
        value = self._attr("config_dir")
        return Path(_text(value)) if value is not None and _text(value) else None

    @property
    def config_hash(self) -> str | None:
        value = self._attr("config_hash")
        return None if value is None else _text(value)

    @property
    def complete(self) -> bool:
        return bool(self._attr("complete", False))

    @property
    def frame_range(self) -> tuple[int, int] | None:
        value = self._attr("frame_range")
        return None if value is None else tuple(int(v) for v in value)

    @property
    def n_frames(self) -> int:
        if "frames/names" in self.file:
            return int(self.file["frames/names"].shape[0])
        return int(self.file["fits/rw"].shape[0])

    @property
    def n_motifs(self) -> int:
        """Motifs of the catalogue: the rows the model learns from and explains."""
        view = self.view
        if view is not None:
            return int(view.size)
        return self.n_table

    @property
    def n_table(self) -> int:
        """Rows of the catalogue proper (every motif of an exhaustive run)."""
        return int(self.file["catalogue"].attrs.get("n_catalogue", self.n_rows))

    @property
    def fits_table(self) -> str:
        """The name of the fits table the Rw came from ("" when this run fitted them)."""
        return _text(self._attr("fits_table", ""))

    @property
    def measured(self) -> bool:
        """Whether the file holds measured data to fit (a fits table's run does not)."""
        return not self.fits_table

    @property
    def exhaustive(self) -> bool:
        """Whether the run fitted every motif (row r: the motif of binary code r + 1)."""
        return bool(self.file["catalogue"].attrs.get("exhaustive", 0))

    @property
    def view(self) -> np.ndarray | None:
        """The rows steps 3-4 learn from (``/catalogue/learn_rows``, sorted), or None: the
        whole catalogue. Readers of "the catalogue" (masks, sizes, fits, SHAP) read these."""
        if self._view is False:
            ds = self.file.get("catalogue/learn_rows") if self.file is not None else None
            self._view = None if ds is None else ds[:]
        return self._view

    def table_rows(self, positions) -> np.ndarray:
        """Rows of the file of catalogue positions (the same without a view)."""
        view = self.view
        positions = np.asarray(positions, dtype=np.int64)
        return positions if view is None else view[positions]

    def _columns(self):
        """The catalogue's columns of the fit and catalogue datasets."""
        view = self.view
        return slice(0, self.n_table) if view is None else view

    @property
    def n_rows(self) -> int:
        """Every fitted motif: the catalogue, then those the extract stage added."""
        return int(self.file["catalogue/mask"].shape[0])

    @_reader
    def frame_names(self) -> list[str]:
        if "frames/names" not in self.file:
            return []
        return [_text(n) for n in self.file["frames/names"][:]]

    @_reader
    def times(self) -> tuple[np.ndarray, str] | None:
        """The frames' times and their unit, when the config gave them."""
        if "frames/time" not in self.file:
            return None
        ds = self.file["frames/time"]
        return ds[:], _text(ds.attrs.get("unit", "s"))

    @_reader
    def data(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """r and G of a frame, in the fit range."""
        return self.file[f"data/{frame:05d}/r"][:], self.file[f"data/{frame:05d}/g"][:]

    @_reader
    def elements(self) -> tuple[str, ...]:
        return tuple(_text(e) for e in self.file["model/elements"][:])

    def structure(self) -> Structure:
        sites = (tuple(_text(s) for s in self.file["model/sites"][:])
                 if "model/sites" in self.file else None)
        return Structure(self.elements(), self.file["model/xyz"][:], f"model of {self.path}",
                         sites)

    @_reader
    def permutable(self) -> np.ndarray:
        return self.file["catalogue/permutable"][:].astype(np.int64)

    @_reader
    def masks(self, rows=None) -> np.ndarray:
        """Catalogue masks (bool, M × N), or the rows of the file asked for (any fitted
        row)."""
        rows = self._columns() if rows is None else rows
        return self.file["catalogue/mask"][rows, :].astype(bool)

    @_reader
    def sizes(self) -> np.ndarray:
        return self.file["catalogue/size"][self._columns()]

    @_reader
    def catalogue_origin(self) -> np.ndarray:
        """:meth:`origin` of the catalogue's rows."""
        if "catalogue/origin" not in self.file:
            return np.zeros(self.n_motifs, dtype=np.uint8)
        return self.file["catalogue/origin"][self._columns()]

    @_reader
    def origin(self) -> np.ndarray:
        """Where each fitted row came from (:data:`ORIGIN_CODES`), every row."""
        if "catalogue/origin" not in self.file:
            return np.zeros(self.n_rows, dtype=np.uint8)
        return self.file["catalogue/origin"][:]

    def has_fits(self) -> bool:
        return "fits/rw" in self.file

    @_reader
    def fits(self, name: str = "rw", frame: int | None = None, every: bool = False
             ) -> np.ndarray:
        """A fit result (F × M, or one frame's M) of the catalogue's motifs; ``every``:
        of every fitted row, the extract stage's too."""
        ds = self.file[f"fits/{name}"]
        cols = slice(None) if every else self._columns()
        return ds[:, cols] if frame is None else ds[frame, cols]

    @_reader
    def fit_rows(self, name: str, rows) -> np.ndarray:
        """A fit result (F × rows) of rows of the file (a slice, or sorted indices)."""
        return self.file[f"fits/{name}"][:, rows]

    @_reader
    def batch_done(self) -> np.ndarray:
        return self.file["fits/batch_done"][:].astype(bool)

    def has_learning(self) -> bool:
        return "ml" in self.file

    @_reader
    def ml(self) -> dict[str, Any]:
        """The ``/ml`` attributes: metrics (scalars or arrays over frames), ``params`` and
        ``history`` (JSON text), ``settings``."""
        return dict(self.file["ml"].attrs) if "ml" in self.file else {}

    def has_test_predicted(self) -> bool:
        return "ml/test_predicted" in self.file

    @_reader
    def test_predicted(self, frame: int) -> np.ndarray:
        return self.file["ml/test_predicted"][frame]

    def has_atoms(self) -> bool:
        return "atoms/contribution" in self.file

    @_reader
    def atoms(self, name: str, frame: int | None = None) -> np.ndarray:
        """A per-atom result (F × N, or one frame's N); ``in_motif`` is bool;
        ``contribution_se`` is NaN in files written before it was."""
        if name == "contribution_se" and "atoms/contribution_se" not in self.file:
            return np.full_like(self.atoms("contribution", frame), np.nan)
        if name == "acv_negative" and "atoms/acv_negative" not in self.file:
            return self.atoms("contribution", frame) < 0  # before the extract stage
        ds = self.file[f"atoms/{name}"]
        values = ds[:] if frame is None else ds[frame]
        return values.astype(bool) if name in ("in_motif", "acv_negative") else values

    def has_labels(self) -> bool:
        return "atoms/label" in self.file

    def has_polish(self) -> bool:
        return "polish/mask" in self.file

    @_reader
    def polish(self) -> dict[str, Any]:
        """``/polish``: mask (F × N bool), rw (F), start_mask, start_rw, path (per frame,
        a list of starts, each a list of steps), fits, budget."""
        grp = self.file["polish"]
        out = {key: grp[key][:] for key in ("mask", "rw", "start_mask", "start_rw")}
        out["mask"] = out["mask"].astype(bool)
        out["start_mask"] = out["start_mask"].astype(bool)
        out["path"] = json.loads(_text(grp.attrs["path"]))
        out["fits"], out["budget"] = int(grp.attrs["fits"]), int(grp.attrs["budget"])
        return out

    def has_shap(self) -> bool:
        return "shap/values" in self.file

    @_reader
    def explained(self, frame: int) -> np.ndarray:
        """Rows of a frame's motifs that have SHAP values (all, in older files)."""
        if "shap/explained" not in self.file:
            return self.table_rows(np.arange(self.n_motifs))
        return self.table_rows(np.flatnonzero(self.file["shap/explained"][frame]))

    @_reader
    def shap(self, frame: int, rows) -> tuple[np.ndarray, np.ndarray]:
        """SHAP values (rows × features) and base values of a frame's motifs ``rows``
        (rows of the file, as :meth:`explained` gives them)."""
        view = self.view
        if view is not None:
            rows = np.searchsorted(view, np.asarray(rows, dtype=np.int64))
        return (self.file["shap/values"][frame, rows, :],
                self.file["shap/base_value"][frame, rows])

    @_reader
    def timings(self) -> dict[str, Any]:
        return dict(self.file["timings"].attrs) if "timings" in self.file else {}

    def rounds(self) -> dict[str, Any]:
        """The adaptive catalogue's record: rounds drawn, each row's round, the labels
        after each round, why it stopped ("" while it goes on)."""
        cat = self.file["catalogue"]
        n = self.n_motifs
        rows = cat["round"][:n] if "round" in cat else np.zeros(n, dtype=np.int16)
        labels = cat["round_labels"][()] if "round_labels" in cat else np.zeros((0, 0))
        labels = [row.tolist() for row in labels if row.size and row[0] >= 0]
        rounds = int(cat.attrs.get("rounds", 1))
        stopped = _text(cat.attrs.get("stopped", b"")).strip()
        if not stopped:  # the labels after round k are kept once round k + 1 is drawn (a
            labels = labels[: rounds - 1]  # job killed in between learns them again)
        return {"rounds": rounds, "round": rows, "labels": labels, "stopped": stopped}

    def resizable(self) -> bool:
        """True when rows can be appended (files written before the extract stage: no)."""
        return self.file is None or self.file["catalogue/mask"].maxshape[0] is None

    def has_convergence(self) -> bool:
        return "convergence" in self.file

    @_reader
    def convergence(self) -> dict[str, np.ndarray]:
        """``/convergence`` as columns by name (plus ``frame``)."""
        ds = self.file["convergence"]
        table = ds[:]
        out = {name: table[:, k] for k, name in enumerate(_text(ds.attrs["columns"]).split(","))}
        out["frame"] = int(ds.attrs["frame"])
        return out

    def has_exact(self) -> bool:
        return "atoms/shapley" in self.file

    @_reader
    def best(self) -> dict[str, Any]:
        """``/best``: row, rw (F × K), mask (F × K × N bool), info (dict)."""
        grp = self.file["best"]
        return {"row": grp["row"][:], "rw": grp["rw"][:], "mask": grp["mask"][:].astype(bool),
                "info": json.loads(_text(grp.attrs["info"]))}

    def config(self, check_inputs: bool = True) -> Config:
        """The run's config, its relative paths resolved against the config's folder
        (root attribute ``config_dir``); a job-array task's file: its frames only.

        ``check_inputs``: refuse (:class:`InputError`) when an input file named by the
        config is no longer the one the run used (:func:`check_unchanged`)."""
        base = self.config_dir
        text = self.config_text
        key = (text, base, self.frame_range, check_inputs)
        if self._config_read is not None and self._config_read[0] == key:
            return self._config_read[1]  # read, and its inputs checked, once per open file
        config = self._read_config(text, base, check_inputs)
        self._config_read = (key, config)
        return config

    def _read_config(self, text: str, base: Path | None, check_inputs: bool) -> Config:
        if base is None:
            relative = _relative_paths(text)
            if relative:
                raise InputError(
                    f"{self.path} does not record the folder of the run's config file (root "
                    f"attribute 'config_dir'), so its relative path {relative[0]!r} "
                    "cannot be found; re-run with absolute paths in the config"
                )
            base = Path.cwd()  # every path is absolute: the base is never used
        try:
            config = with_file_defaults(parse_config(text, base, f"stored in {self.path}"))
            if self.frame_range is not None:  # one task of a job array: its frames only
                config, _ = select_frames(config, "{}:{}".format(*self.frame_range))
        except InputError as exc:
            raise InputError(f"the run's config (stored in {self.path}, paths from {base}): "
                             f"{exc}") from None
        if check_inputs:  # what is read again must be what the run used
            check_unchanged(self.path, config, self.input_digests())
        return config

    def input_digests(self) -> dict[str, str] | None:
        """The content hash of each input file when the run began (None: a file from
        before inputs were hashed)."""
        value = self._attr("input_digests")
        return None if value is None else json.loads(_text(value))

    def series_length(self) -> int:
        """Frames in the config's whole series (a job-array task's config lists them all)."""
        return len(parse_config(self.config_text, self.config_dir or Path.cwd()).data)


def _relative_paths(text: str) -> list[str]:
    """The config's file paths that are relative (they need the config's folder)."""
    raw = yaml.safe_load(text) or {}
    values = [raw.get("structure")]
    data = raw.get("data")
    values += data if isinstance(data, list) else [data]
    catalogue = raw.get("catalogue")
    if isinstance(catalogue, dict):
        values.append(catalogue.get("masks_file"))
    return [v for v in values if isinstance(v, str) and not Path(v).expanduser().is_absolute()]
