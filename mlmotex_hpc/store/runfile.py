"""``motex.h5``, the one file of a run: its only writer and its only reader.

Every other module calls :class:`RunFile`; no other module names a dataset of the file.
The layout (every dataset and attribute, with its shape, type and meaning) is data, in
:mod:`.run_layout`, from which ``docs/motex-h5.md`` is generated; the tests check finished
runs of every kind against it. A file of a later layout version than
:data:`~.run_layout.LAYOUT_VERSION` is refused with a message that names both versions;
version 1 (no ``layout_version`` attribute) is the same layout, read as it is.

Parallel or serial HDF5 (:mod:`.hdf5` chooses): with parallel HDF5 the file is open on
every rank with ``driver="mpio"``; every rank makes the same metadata calls (methods
named ``collective``) and each rank writes its own slices. Otherwise (one rank, or the
serial-HDF5 fallback) only rank 0 holds the file (:attr:`RunFile.holds`) and the other
ranks' calls do nothing. A value every rank needs is read on rank 0 and handed to all
(:meth:`RunFile.shared`). The communicator is used through its methods only, so this
module loads no MPI library itself.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml

from .. import __version__
from ..config import Config, parse_config, select_frames
from ..errors import InputError
from ..io.defaults import with_file_defaults
from ..io.digests import check_unchanged
from ..io.structure import Structure
from .hdf5 import (
    _broadcast,
    _parallel,
    _replace,
    _text,
    creating_path,
    disk_errors,
)
from .probe import _finished_stage, config_hash, fits_hash
from .run_layout import (
    ATOM_DATASETS,
    ATOMS_DEFINITION,
    BEST_DEFINITION,
    CONVERGENCE_DEFINITION,
    EXACT_DEFINITION,
    FIT_FIELDS,
    LABEL_DEFINITION,
    LAYOUT_VERSION,
    ORIGIN_CODES,
    POLISH_DEFINITION,
    PREDICTED_DEFINITION,
    SHAP_DEFINITION,
    STAGES,
    STATUS_CODES,
)

# -- the file ---------------------------------------------------------------------------------


def _reader(method):
    """A reader of :class:`RunFile`: a dataset that is missing or cannot be read becomes
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


class RunFile:
    """``motex.h5`` open on one rank (serial) or on every rank (parallel HDF5).

    Open a new run's file with :meth:`create`, an existing one with :meth:`open` (every
    rank of ``comm`` calls both), or a finished one for reading with :meth:`read`.
    Methods whose name starts with ``collective_`` must be called by every rank with
    the same arguments; the others by the ranks that write (``write_batch``,
    ``write_shap``) or by any holder (the readers).
    """

    def __init__(self, path: Path, file: h5py.File | None, comm=None, parallel: bool = False):
        self.path = Path(path)
        self.file = file
        self.comm = comm
        self.parallel = parallel
        self._view: np.ndarray | None | bool = False  # not read yet

    # -- opening and closing --------------------------------------------------------------
    @property
    def holds(self) -> bool:
        """Whether this rank holds the file open."""
        return self.file is not None

    # -- reading for every rank -----------------------------------------------------------
    def shared(self, read: Callable[[RunFile], Any]) -> Any:
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
    def open(cls, path: Path, mode: str = "r", comm=None) -> RunFile:
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
    def read(cls, path: str | Path, mode: str = "r") -> RunFile:
        """A finished or unfinished run's file, checked to be one (serial).

        Raises
        ------
        InputError
            When the file is missing, not HDF5, not written by ``mlmotex-hpc run``, or
            of a layout newer than this version reads.
        """
        path = Path(path)
        if not path.is_file():
            raise InputError(f"no such file: {path} (expected a run's motex.h5)")
        try:
            is_hdf5 = h5py.is_hdf5(path)
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc}") from None
        if not is_hdf5:
            raise InputError(f"{path} is not an HDF5 file (expected a run's motex.h5)")
        try:
            file = h5py.File(path, mode)
        except BlockingIOError:
            raise InputError(f"{path} is open in another process (is a job still writing "
                             "it?)") from None
        except OSError as exc:
            raise InputError(f"cannot read {path} as HDF5 ({exc})") from None
        run = cls(path, file)
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

    def __enter__(self) -> RunFile:
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

    # -- a new run ---------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: Path,
        comm,
        *,
        config_text: str,
        config_dir: str = "",
        n_frames: int,
        n_motifs: int,
        n_permutable: int,
        n_batches: int,
        batch_size: int,
        frame_block: int | None = None,
        refined_extra: tuple[str, ...] = (),
        frame_range: tuple[int, int] | None = None,
        input_digests: Mapping[str, str] | None = None,
        n_drawn: int | None = None,
        max_rounds: int = 1,
        exhaustive: bool = False,
        fits_table: str = "",
    ) -> RunFile:
        """Create the file under a temporary name and preallocate every fit dataset.

        ``n_motifs`` rows are allocated; ``n_drawn`` (default all) hold motifs now: an
        adaptive catalogue draws the others round by round
        (:meth:`collective_write_round`).

        :meth:`collective_publish` gives it its final name once the inputs are written, so
        a job killed while creating it never leaves a half-made ``motex.h5``.
        """
        run = cls.open(creating_path(Path(path)), "w", comm)
        run.path = Path(path)
        file = run.file
        if file is None:
            return run
        file.attrs["config"] = config_text
        file.attrs["config_hash"] = config_hash(config_text)
        file.attrs["fits_hash"] = fits_hash(config_text)
        # relative paths in the config are relative to this folder
        file.attrs["config_dir"] = config_dir
        file.attrs["version"] = __version__
        file.attrs["layout_version"] = LAYOUT_VERSION
        file.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        file.attrs["hdf5_mode"] = "parallel (mpio)" if run.parallel else "serial"
        if frame_range is not None:
            file.attrs["frame_range"] = np.array(frame_range)
        if input_digests:
            file.attrs["input_digests"] = json.dumps(dict(input_digests), sort_keys=True)
        if fits_table:  # the Rw came from this table: there are no data to fit
            file.attrs["fits_table"] = fits_table
        shape = (n_frames, n_motifs)
        # Chunks of whole batches along motifs: a rank's write touches few chunks, and the
        # learning stage reads a frame's row in large contiguous pieces.
        fit_chunk = (1, max(1, min(n_motifs, batch_size * max(1, 8192 // batch_size))))
        grows = (n_frames, None)  # the extract stage appends its fits as motif rows
        fits = file.create_group("fits")
        for name in FIT_FIELDS + refined_extra:
            fits.create_dataset(name, shape, dtype="f8", chunks=fit_chunk, fillvalue=np.nan,
                                maxshape=grows)
        fits.create_dataset("status", shape, dtype="i1", chunks=fit_chunk, fillvalue=-1,
                            maxshape=grows)
        frame_block = frame_block or n_frames
        n_fblocks = -(-n_frames // frame_block)
        fits.create_dataset("batch_done", (n_batches, n_fblocks), dtype="u1", fillvalue=0)
        fits.attrs["batch_size"] = batch_size
        fits.attrs["frame_block"] = frame_block
        fits.attrs["status_codes"] = STATUS_CODES
        cat = file.create_group("catalogue")
        mask_chunk = (max(1, min(n_motifs, 8192)), n_permutable)
        cat.create_dataset("mask", (n_motifs, n_permutable), dtype="u1", chunks=mask_chunk,
                           maxshape=(None, n_permutable))
        cat.create_dataset("size", (n_motifs,), dtype="i4", chunks=mask_chunk[:1],
                           maxshape=(None,))
        cat.create_dataset("origin", (n_motifs,), dtype="u1", chunks=mask_chunk[:1],
                           maxshape=(None,), fillvalue=ORIGIN_CODES["catalogue"])
        cat.create_dataset("round", (n_motifs,), dtype="i2", chunks=mask_chunk[:1],
                           maxshape=(None,), fillvalue=-1)
        # each round's atom labels, as raw data: parallel HDF5 rewrites small attributes
        # only while their size stays the same
        cat.create_dataset("round_labels", (max_rounds, n_permutable), dtype="i1",
                           fillvalue=-1)
        cat.attrs["n_catalogue"] = n_motifs if n_drawn is None else n_drawn
        cat.attrs["exhaustive"] = int(exhaustive)
        cat.attrs["rounds"] = 1
        cat.attrs["stopped"] = np.bytes_(b" " * 200)
        cat.attrs["origin_codes"] = ", ".join(f"{v} {k}" for k, v in ORIGIN_CODES.items())
        if not run.parallel:
            # Serial HDF5 allocates chunks on first write, which changes metadata: write the
            # fill values now, so that fitting only ever overwrites raw data (a job killed
            # mid-write cannot damage the file's structure). Parallel HDF5 allocates early.
            for name in FIT_FIELDS + refined_extra + ("status",):
                ds = fits[name]
                for row in range(n_frames):
                    ds[row] = np.full(n_motifs, ds.fillvalue, dtype=ds.dtype)
        return run

    def collective_write_inputs(
        self,
        *,
        elements: tuple[str, ...],
        xyz: np.ndarray,
        permutable: np.ndarray,
        frame_names: list[str],
        frames: list[tuple[np.ndarray, np.ndarray]],
        masks: np.ndarray | Iterable[tuple[int, np.ndarray]] | Callable | None,
        times: tuple[float, ...] | None = None,
        time_unit: str = "s",
        sites: tuple[str, ...] | None = None,
    ) -> None:
        """The model (with its crystal ``sites`` when read from one), the data in the fit
        range, and the catalogue (data from rank 0):
        ``masks`` all at once, or as blocks (first row, masks) made one at a time, or a
        function that returns either, called on the rank that writes them only."""
        if self.file is None:
            return
        f = self.file
        root = self.comm is None or self.comm.rank == 0 or not self.parallel
        model = f.create_group("model")
        # Fixed-length ASCII: parallel HDF5 cannot write variable-length strings.
        el_bytes = np.array([e.encode() for e in elements], dtype="S3")
        name_bytes = np.array([n.encode() for n in frame_names])
        ds_el = model.create_dataset("elements", el_bytes.shape, dtype=el_bytes.dtype)
        ds_xyz = model.create_dataset("xyz", xyz.shape, dtype="f8")
        ds_xyz.attrs["units"] = "Å"
        ds_sites = site_bytes = None
        if sites:
            site_bytes = np.array([s.encode("ascii", "replace") for s in sites])
            ds_sites = model.create_dataset("sites", site_bytes.shape, dtype=site_bytes.dtype)
        frames_grp = f.create_group("frames")
        names = frames_grp.create_dataset("names", name_bytes.shape, dtype=name_bytes.dtype)
        times_ds = None
        if times is not None:
            times_ds = frames_grp.create_dataset("time", (len(times),), dtype="f8")
            times_ds.attrs["unit"] = time_unit
        data = f.create_group("data")
        frame_ds = []
        for k, (r, g) in enumerate(frames):
            grp = data.create_group(f"{k:05d}")
            frame_ds.append((grp.create_dataset("r", r.shape, "f8"),
                             grp.create_dataset("g", g.shape, "f8")))
        cat = f["catalogue"]
        perm = cat.create_dataset("permutable", permutable.shape, dtype="i8")
        if root:
            ds_el[:] = el_bytes
            ds_xyz[:] = xyz
            if ds_sites is not None:
                ds_sites[:] = site_bytes
            names[:] = name_bytes
            if times_ds is not None:
                times_ds[:] = np.asarray(times, dtype=float)
            for (ds_r, ds_g), (r, g) in zip(frame_ds, frames, strict=True):
                ds_r[:] = r
                ds_g[:] = g
            perm[:] = permutable
            if callable(masks):
                masks = masks()
            blocks = [(0, masks)] if isinstance(masks, np.ndarray) else masks
            for start, block in blocks:
                stop = start + len(block)
                cat["mask"][start:stop] = block.astype(np.uint8)
                cat["size"][start:stop] = block.sum(axis=1)
                cat["round"][start:stop] = 0

    def collective_publish(self) -> None:
        """Flush the new file and give it its final name (after the inputs are written)."""
        if self.file is not None:
            self.file.flush()
        self.comm.Barrier()
        if self.comm.rank == 0:
            os.replace(creating_path(self.path), self.path)
        self.comm.Barrier()

    # -- the fit stage -----------------------------------------------------------------------
    def write_batch(self, start: int, results: Mapping[str, np.ndarray], batch: int,
                    frames: slice = slice(None), fblock: int = 0) -> None:
        """Write one work unit's fit results (arrays frames × count) and mark it done.

        Independent I/O: only the rank that fitted the unit calls it.
        """
        fits = self.file["fits"]
        stop = start + next(iter(results.values())).shape[1]
        with disk_errors(self.path):  # a full disk said as such, on any rank
            for name, values in results.items():
                fits[name][frames, start:stop] = values
            if not self.parallel:
                # serial HDF5 caches chunks: the results must be on disk before the batch
                # is marked done (parallel HDF5 writes through at once)
                self.file.flush()
            fits["batch_done"][batch, fblock] = 1
            if not self.parallel:
                self.file.flush()

    def collective_write_table_fits(self, rw: np.ndarray) -> None:
        """A fits table's Rw as frame 0's fits, every work unit marked done (every rank
        calls it; rank 0, or the rank holding a serial file, writes; the flushes are
        collective under parallel HDF5). Not-a-number Rw stays "not fitted"."""
        if self.file is None:
            return
        writer = not self.parallel or self.comm is None or self.comm.rank == 0
        fits = self.file["fits"]
        if writer:
            fits["rw"][0, :] = rw
            fits["status"][0, :] = np.where(np.isfinite(rw), 0, -1)
        self.file.flush()
        if writer:
            fits["batch_done"][...] = 1
        self.file.flush()

    # -- the learning stage ------------------------------------------------------------------
    def collective_create_shap(self, n_frames: int, n_motifs: int, n_features: int) -> None:
        """(Re)create ``/shap``: values (F, M, n_features) and base values (F, M), float32,
        NaN where a motif was not explained; ``explained`` (F, M) uint8 says which were."""
        if self.file is None:
            return
        grp = self.file.require_group("shap")
        for name in ("values", "base_value", "explained"):
            if name in grp:
                del grp[name]
        chunks = (1, min(n_motifs, 4096), n_features)
        grp.create_dataset("values", (n_frames, n_motifs, n_features), "f4", chunks=chunks,
                           fillvalue=np.nan)
        grp.create_dataset("base_value", (n_frames, n_motifs), "f4", fillvalue=np.nan)
        grp.create_dataset("explained", (n_frames, n_motifs), "u1", fillvalue=0)
        grp.attrs["definition"] = SHAP_DEFINITION

    def write_shap(self, frame: int, rows: np.ndarray, values: np.ndarray) -> None:
        """SHAP values of a frame's motifs ``rows`` (any order): feature columns, then the
        base value last; the rows are marked explained."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return
        order = np.argsort(rows, kind="stable")
        rows, values = rows[order], values[order]
        grp = self.file["shap"]
        # one write per dataset: a slice for a rank's share of every motif, else the
        # rows as one selection (a slice per run of rows was 15× slower: measured 0.21 s
        # against 0.014 s a frame for 2,360 scattered rows of 10^4)
        sel = (slice(int(rows[0]), int(rows[-1]) + 1)
               if rows[-1] - rows[0] + 1 == rows.size else rows)
        grp["values"][frame, sel] = values[:, :-1]
        grp["base_value"][frame, sel] = values[:, -1]
        grp["explained"][frame, sel] = 1

    def collective_write_learning(
        self,
        *,
        settings: str,
        metrics: Mapping[str, np.ndarray],
        params: Sequence[dict],
        histories: Sequence[list],
        predicted: np.ndarray,
        atoms: Mapping[str, np.ndarray] | None,
        searched_frames: Sequence[int] | None = None,
        explained: np.ndarray | None = None,
    ) -> None:
        """``/ml`` (metrics, hyperparameters, search history, test predictions) and, after
        the explain stage, ``/atoms`` (identical data on every rank)."""
        if self.file is None:
            return
        h5 = self.file
        n_frames = len(params)
        ml = h5.require_group("ml")
        for key, values in metrics.items():
            ml.attrs[key] = values if n_frames > 1 else values[0]
        ml.attrs["params"] = json.dumps(params if n_frames > 1 else params[0], default=str)
        ml.attrs["history"] = json.dumps(histories if n_frames > 1 else histories[0],
                                         default=str)
        ml.attrs["settings"] = settings
        if "searched_frames" in ml.attrs:
            del ml.attrs["searched_frames"]
        if searched_frames is not None:
            ml.attrs["searched_frames"] = np.asarray(searched_frames, dtype=np.int64)
        if explained is not None:
            h5["shap"].attrs["n_explained"] = np.asarray(explained, dtype=np.int64)
        if atoms is not None:
            grp = h5.require_group("atoms")
            for key in ATOM_DATASETS:
                _replace(grp, key, atoms[key])
            _replace(grp, "in_motif", atoms["contribution"] < 0)
            _replace(grp, "index", h5["catalogue/permutable"][:])
            grp.attrs["definition"] = ATOMS_DEFINITION
        _replace(ml, "test_predicted", predicted)
        ml["test_predicted"].attrs["definition"] = PREDICTED_DEFINITION

    def collective_write_round(self, start: int, masks: np.ndarray, uniform: np.ndarray,
                               round_: int, labels: Sequence[Sequence[int]]) -> None:
        """An adaptive round's motifs into rows ``start:`` (every rank, the same data),
        then the count of rows drawn: a job killed before the count is written draws the
        same round again. ``labels``: each round's atom labels so far."""
        if self.file is None:
            return
        cat = self.file["catalogue"]
        stop = start + len(masks)
        if self.comm is None or self.comm.rank == 0 or not self.parallel:
            cat["mask"][start:stop] = masks.astype(np.uint8)
            cat["size"][start:stop] = masks.sum(axis=1)
            cat["round"][start:stop] = round_
            cat["origin"][start:stop] = np.where(uniform, ORIGIN_CODES["catalogue"],
                                                 ORIGIN_CODES["adaptive"])
            cat["round_labels"][: len(labels)] = np.asarray(labels, dtype=np.int8)
        self.file.flush()
        cat.attrs["rounds"] = round_ + 1
        cat.attrs["n_catalogue"] = stop
        self.file.flush()

    def collective_end_rounds(self, reason: str, labels: Sequence[Sequence[int]]) -> None:
        """Say why the adaptive catalogue stopped drawing."""
        if self.file is None:
            return
        cat = self.file["catalogue"]
        if labels and (self.comm is None or self.comm.rank == 0 or not self.parallel):
            cat["round_labels"][: len(labels)] = np.asarray(labels, dtype=np.int8)
        self.file.flush()
        # fixed length, the size the attribute was created with (see create)
        cat.attrs["stopped"] = np.bytes_(reason.encode()[:200].ljust(200))
        self.file.flush()

    def collective_trim(self) -> None:
        """Drop the rows an adaptive catalogue allocated and never drew (the learning
        copy, before anything reads or appends rows)."""
        if self.file is None or not self.resizable():
            return
        n = self.n_table
        cat, fits = self.file["catalogue"], self.file["fits"]
        if cat["mask"].shape[0] <= n:
            return
        for key in ("mask", "size", "origin", "round"):
            if key in cat:
                cat[key].resize(n, axis=0)
        for name in fits:
            if name != "batch_done":
                fits[name].resize(n, axis=1)

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

    def collective_append_rows(self, masks: np.ndarray, results: Mapping[str, np.ndarray],
                               origin: str = "extract") -> int:
        """Append motifs and their fits (arrays F × K) as new rows (every rank, the same
        data); the first new row's index."""
        start = self.n_rows if self.file is not None else -1
        if self.file is None or len(masks) == 0:
            return start
        stop = start + len(masks)
        cat, fits = self.file["catalogue"], self.file["fits"]
        names = [n for n in fits if n != "batch_done"]
        for ds in (cat["mask"], cat["size"], *(fits[n] for n in names)):
            ds.resize(stop, axis=0 if ds.ndim == 1 or ds.name.startswith("/catalogue") else 1)
        for key in ("origin", "round"):
            if key in cat:
                cat[key].resize(stop, axis=0)
        if self.comm is None or self.comm.rank == 0 or not self.parallel:
            cat["mask"][start:stop] = masks.astype(np.uint8)
            cat["size"][start:stop] = masks.sum(axis=1)
            if "origin" in cat:
                cat["origin"][start:stop] = ORIGIN_CODES[origin]
            if "round" in cat:
                cat["round"][start:stop] = -1
            for name in names:
                if name in results:
                    fits[name][:, start:stop] = results[name]
        return start

    def resizable(self) -> bool:
        """True when rows can be appended (files written before the extract stage: no)."""
        return self.file is None or self.file["catalogue/mask"].maxshape[0] is None

    def collective_write_extract(self, *, labels: np.ndarray, acv_negative: np.ndarray,
                                 in_motif: np.ndarray, polish: Mapping[str, Any] | None,
                                 settings: Mapping[str, Any]) -> None:
        """The extract stage's answer: ``/atoms`` label, acv_negative and in_motif (now
        the answer), and ``/polish`` (mask, rw, start_mask, start_rw; attrs path, fits,
        settings) when polishing ran."""
        if self.file is None:
            return
        atoms = self.file["atoms"]
        _replace(atoms, "label", labels.astype(np.int8)).attrs["definition"] = LABEL_DEFINITION
        _replace(atoms, "acv_negative", acv_negative.astype(bool))
        _replace(atoms, "in_motif", in_motif.astype(bool))
        # a dataset, not an attribute: a later learn may write settings of another length,
        # and parallel HDF5 failed (MPI_ERR_TRUNCATE) rewriting an attribute that only
        # rank 0 had read (seen with /catalogue's round labels)
        _replace(atoms, "answer", np.bytes_(json.dumps(dict(settings), default=str)))
        if "polish" in self.file:
            del self.file["polish"]
        if polish is None:
            return
        grp = self.file.create_group("polish")
        for key in ("mask", "rw", "start_mask", "start_rw"):
            grp.create_dataset(key, data=np.asarray(polish[key]))
        grp.attrs["path"] = json.dumps(polish["path"], default=str)
        grp.attrs["fits"] = int(polish["fits"])
        grp.attrs["budget"] = int(polish["budget"])
        grp.attrs["definition"] = POLISH_DEFINITION

    def collective_write_exact(self, *, shapley: np.ndarray, main_effect: np.ndarray,
                               best_rows: np.ndarray, best_rw: np.ndarray,
                               best_masks: np.ndarray, info: Mapping[str, Any]) -> None:
        """An exhaustive run's exact attributions (F × N) and its K best motifs (F × K,
        masks F × K × N), the same data on every rank: ``info`` too (a collective
        attribute written with different strings on different ranks is corrupt)."""
        if self.file is None:
            return
        atoms = self.file.require_group("atoms")
        _replace(atoms, "shapley", shapley).attrs["definition"] = EXACT_DEFINITION
        _replace(atoms, "main_effect", main_effect).attrs["definition"] = EXACT_DEFINITION
        if "best" in self.file:
            del self.file["best"]
        grp = self.file.create_group("best")
        grp.create_dataset("row", data=best_rows.astype(np.int64))
        grp.create_dataset("rw", data=best_rw.astype(np.float64))
        grp.create_dataset("mask", data=best_masks.astype(np.uint8))
        grp.attrs["definition"] = BEST_DEFINITION
        grp.attrs["info"] = json.dumps(dict(info), default=str)

    def write_convergence(self, table: np.ndarray, fields: Sequence[str], frame: int) -> None:
        """``/convergence``: one row per trial catalogue (columns ``fields``)."""
        if "convergence" in self.file:
            del self.file["convergence"]
        ds = self.file.create_dataset("convergence", data=np.asarray(table, dtype=float))
        ds.attrs["columns"] = ",".join(fields)
        ds.attrs["frame"] = int(frame)
        ds.attrs["definition"] = CONVERGENCE_DEFINITION

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

    def collective_set_config(self, text: str) -> None:
        """Record ``text`` as the run's config (its learning settings changed)."""
        if self.file is None:
            return
        self.file.attrs["config"] = text
        self.file.attrs["config_hash"] = config_hash(text)
        self.file.attrs["fits_hash"] = fits_hash(text)

    def write_timings(self, timings: Mapping[str, float], ranks: int) -> None:
        self.file.require_group("timings").attrs.update(
            {**{k: float(v) for k, v in timings.items()}, "ranks": ranks})

    def mark_complete(self, stage: str = "explain") -> None:
        """The file is finished up to ``stage`` (one of :data:`STAGES`), or the further
        stage it was finished to before (``learn --until learn`` on an explained run
        leaves its answer): a later run to a further stage goes on from here."""
        if self.file.attrs.get("complete", False):
            stage = max(stage, _finished_stage(self.file), key=STAGES.index)
        self.file.attrs["complete"] = True
        self.file.attrs["finished_stage"] = stage

    # -- reading -------------------------------------------------------------------------------
    def _attr(self, name: str, default=None):
        return self.file.attrs.get(name, default)

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

    def collective_set_view(self, rows: np.ndarray | None) -> None:
        """Learn from these rows (sorted, distinct) of an exhaustive table, or (None) from
        the whole catalogue."""
        self._view = None if rows is None else np.asarray(rows, dtype=np.int64)
        if self.file is None:
            return
        cat = self.file["catalogue"]
        if "learn_rows" in cat:
            del cat["learn_rows"]
        if rows is None:
            return
        ds = cat.create_dataset("learn_rows", (len(rows),), dtype="i8")
        if not self.parallel or self.comm.rank == 0:
            ds[:] = rows
        ds.attrs["definition"] = ("rows of the exhaustive table that steps 3-4 learn from "
                                  "and explain: an ML-MotEx random catalogue of "
                                  "learn.sample motifs (seed learn.seed)")

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

    def config(self, check_inputs: bool = True) -> Config:
        """The run's config, its relative paths resolved against the config's folder
        (root attribute ``config_dir``); a job-array task's file: its frames only.

        ``check_inputs``: refuse (:class:`InputError`) when an input file named by the
        config is no longer the one the run used (:func:`check_unchanged`)."""
        base = self.config_dir
        text = self.config_text
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


