"""The writers of ``motex.h5``: the new file (:meth:`RunWrites.create`) and everything each
stage writes into it (``collective_*``, ``write_*``, :meth:`RunWrites.mark_complete`).

A mixin of :class:`~.runfile.RunFile`: it writes through the file that
:class:`~.h5file.StoreFile` holds, and reads what it needs with :class:`~.run_reads.RunReads`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np

from .. import __version__
from .hdf5 import _replace, creating_path, disk_errors
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


class RunWrites:
    """Every writer of ``motex.h5`` (a mixin of :class:`~.runfile.RunFile`).

    Methods whose name starts with ``collective_`` must be called by every rank with the
    same arguments; the others by the ranks that write (``write_batch``, ``write_shap``)
    or by the rank that holds the file.
    """

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
    ) -> Self:
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
