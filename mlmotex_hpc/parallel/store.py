"""The one HDF5 file of a run, ``motex.h5``.

Layout (F frames, M motifs, N permutable atoms, n atoms in the model)::

    /                       attrs: config (YAML text), config_hash, version, created, hdf5_mode
    /model/elements (n)     /model/xyz (n, 3) Å
    /frames/names (F)       /frames/time (F, attr unit; only with frames.time)
    /data/<frame>/r, /data/<frame>/g   the fit range of each frame (5-digit frame number)
    /catalogue/mask (M, N) uint8        /catalogue/size (M)     /catalogue/permutable (N)
    /fits/rw, scale, zoom (F, M) float64   /fits/status (F, M) int8
    /fits/batch_done (B, FB) uint8      work units done: motif batch × frame block
    /atoms/contribution, uncertainty, confidence, kept_mean, removed_mean (F, N)
    /atoms/in_motif (F, N)  /atoms/index (N)
    /shap/values (F, M, N + 1) float32   /shap/base_value (F, M) float32
    /ml                     attrs: test metrics and hyperparameters (arrays over frames)
    /timings                attrs: catalogue, fit, learn, explain, total (s), ranks, fits_per_second

With an MPI-enabled h5py every rank opens the file with ``driver="mpio"``, every rank
makes the same metadata calls, and each rank writes the slices of its own batches.
Without one (serial-HDF5 fallback) only rank 0 opens the file and the others send it
their results.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml
from mpi4py import MPI

from .. import __version__

FIT_FIELDS = ("rw", "scale", "zoom")

_fallback_announced = False


def parallel_hdf5_available() -> bool:
    """True when h5py was built against an MPI-enabled HDF5.

    ``MLMOTEX_SERIAL_HDF5=1`` forces the serial fallback (to test it, or to avoid a
    broken MPI-IO layer on some file system).
    """
    if os.environ.get("MLMOTEX_SERIAL_HDF5", "0") not in ("", "0"):
        return False
    return bool(h5py.get_config().mpi)


def config_hash(text: str) -> str:
    """Hash of a config's content: comments, spacing and key order do not count."""
    try:
        canonical = yaml.safe_dump(yaml.safe_load(text), sort_keys=True)
    except yaml.YAMLError:
        canonical = text
    return hashlib.sha256(canonical.encode()).hexdigest()


def creating_path(path: Path) -> Path:
    """Where a new ``motex.h5`` is built before it takes its final name."""
    return path.with_name(path.name + ".creating")


def finishing_path(path: Path) -> Path:
    """Where steps 3-4 write, on a copy, before it replaces ``motex.h5``."""
    return path.with_name(path.name + ".finishing")


def announce_fallback(comm: MPI.Comm) -> None:
    """Say once, on rank 0, that results travel to rank 0 for writing."""
    global _fallback_announced
    if comm.size > 1 and not parallel_hdf5_available() and not _fallback_announced:
        _fallback_announced = True
        if comm.rank == 0:
            print(
                "mlmotex-hpc: h5py has no MPI support: serial-HDF5 fallback "
                "(rank 0 writes every result)",
                file=sys.stderr,
                flush=True,
            )


class ResultsStore:
    """``motex.h5`` opened by one rank (serial) or by every rank (parallel HDF5).

    Use :meth:`create` for a new run; every rank of ``comm`` must call it. Methods whose
    name starts with ``collective_`` must be called by every rank with the same
    arguments when the store is parallel.
    """

    def __init__(self, path: Path, comm: MPI.Comm, file: h5py.File | None, parallel: bool):
        self.path = Path(path)
        self.comm = comm
        self.file = file
        self.parallel = parallel

    @property
    def writer(self) -> bool:
        """Whether this rank holds the file open."""
        return self.file is not None

    # -- creation ---------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: Path,
        comm: MPI.Comm,
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
    ) -> ResultsStore:
        """Create the file under a temporary name and preallocate every fit dataset.

        :meth:`collective_publish` gives it its final name once the inputs are written, so
        a job killed while creating it never leaves a half-made ``motex.h5``.
        """
        parallel = comm.size > 1 and parallel_hdf5_available()
        tmp = creating_path(Path(path))
        if parallel:
            file = h5py.File(tmp, "w", driver="mpio", comm=comm)
        elif comm.rank == 0:
            file = h5py.File(tmp, "w")
        else:
            file = None
        store = cls(path, comm, file, parallel)
        if file is None:
            return store
        file.attrs["config"] = config_text
        file.attrs["config_hash"] = config_hash(config_text)
        # relative paths in the config are relative to this folder
        file.attrs["config_dir"] = config_dir
        file.attrs["version"] = __version__
        file.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        file.attrs["hdf5_mode"] = "parallel (mpio)" if parallel else "serial"
        shape = (n_frames, n_motifs)
        # Chunks of whole batches along motifs: a rank's write touches few chunks, and the
        # learning stage reads a frame's row in large contiguous pieces.
        fit_chunk = (1, max(1, min(n_motifs, batch_size * max(1, 8192 // batch_size))))
        fits = file.create_group("fits")
        for name in FIT_FIELDS + refined_extra:
            fits.create_dataset(name, shape, dtype="f8", chunks=fit_chunk, fillvalue=np.nan)
        fits.create_dataset("status", shape, dtype="i1", chunks=fit_chunk, fillvalue=-1)
        frame_block = frame_block or n_frames
        n_fblocks = -(-n_frames // frame_block)
        fits.create_dataset("batch_done", (n_batches, n_fblocks), dtype="u1", fillvalue=0)
        fits.attrs["batch_size"] = batch_size
        fits.attrs["frame_block"] = frame_block
        fits.attrs["status_codes"] = "0 ok, 1 not converged, 2 no pairs, -1 not fitted"
        cat = file.create_group("catalogue")
        mask_chunk = (max(1, min(n_motifs, 8192)), n_permutable)
        cat.create_dataset("mask", (n_motifs, n_permutable), dtype="u1", chunks=mask_chunk)
        cat.create_dataset("size", (n_motifs,), dtype="i4")
        if not parallel:
            # Serial HDF5 allocates chunks on first write, which changes metadata: write the
            # fill values now, so that fitting only ever overwrites raw data (a job killed
            # mid-write cannot damage the file's structure). Parallel HDF5 allocates early.
            for name in FIT_FIELDS + refined_extra + ("status",):
                ds = fits[name]
                for row in range(n_frames):
                    ds[row] = np.full(n_motifs, ds.fillvalue, dtype=ds.dtype)
        return store

    @classmethod
    def open_existing(cls, path: Path, comm: MPI.Comm) -> ResultsStore:
        """Reopen a run's file to finish its remaining batches (every rank calls it)."""
        parallel = comm.size > 1 and parallel_hdf5_available()
        if parallel:
            file = h5py.File(path, "r+", driver="mpio", comm=comm)
        elif comm.rank == 0:
            file = h5py.File(path, "r+")
        else:
            file = None
        return cls(path, comm, file, parallel)

    def collective_publish(self) -> None:
        """Flush the new file and give it its final name (after the inputs are written)."""
        if self.file is not None:
            self.file.flush()
        self.comm.Barrier()
        if self.comm.rank == 0:
            os.replace(creating_path(self.path), self.path)
        self.comm.Barrier()

    # -- writing ---------------------------------------------------------------------------
    def collective_write_inputs(
        self,
        *,
        elements: tuple[str, ...],
        xyz: np.ndarray,
        permutable: np.ndarray,
        frame_names: list[str],
        frames: list[tuple[np.ndarray, np.ndarray]],
        masks: np.ndarray | None,
        times: tuple[float, ...] | None = None,
        time_unit: str = "s",
    ) -> None:
        """The model, the data in the fit range, and the catalogue (data from rank 0)."""
        if self.file is None:
            return
        f = self.file
        root = self.comm.rank == 0 or not self.parallel
        model = f.create_group("model")
        # Fixed-length ASCII: parallel HDF5 cannot write variable-length strings.
        el_bytes = np.array([e.encode() for e in elements], dtype="S3")
        name_bytes = np.array([n.encode() for n in frame_names])
        ds_el = model.create_dataset("elements", el_bytes.shape, dtype=el_bytes.dtype)
        ds_xyz = model.create_dataset("xyz", xyz.shape, dtype="f8")
        ds_xyz.attrs["units"] = "Å"
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
            names[:] = name_bytes
            if times_ds is not None:
                times_ds[:] = np.asarray(times, dtype=float)
            for (ds_r, ds_g), (r, g) in zip(frame_ds, frames, strict=True):
                ds_r[:] = r
                ds_g[:] = g
            perm[:] = permutable
            cat["mask"][:] = masks.astype(np.uint8)
            cat["size"][:] = masks.sum(axis=1)

    def write_batch(self, start: int, results: Mapping[str, np.ndarray], batch: int,
                    frames: slice = slice(None), fblock: int = 0) -> None:
        """Write one work unit's fit results (arrays frames × count) and mark it done.

        Independent I/O: only the rank that fitted the unit calls it.
        """
        fits = self.file["fits"]
        stop = start + next(iter(results.values())).shape[1]
        for name, values in results.items():
            fits[name][frames, start:stop] = values
        if not self.parallel:
            # serial HDF5 caches chunks: the results must be on disk before the batch is
            # marked done (parallel HDF5 writes through at once)
            self.file.flush()
        fits["batch_done"][batch, fblock] = 1
        if not self.parallel:
            self.file.flush()

    def collective_set_attrs(self, group: str, attrs: Mapping[str, Any]) -> None:
        """Set attributes of ``group`` (created if missing) identically on every rank."""
        if self.file is None:
            return
        grp = self.file.require_group(group)
        for key, value in attrs.items():
            grp.attrs[key] = value

    def close_quietly(self) -> None:
        """Close after a failed write, and remove the unfinished file."""
        try:
            self.close()
        except OSError:
            self.file = None
        if self.comm.rank == 0:
            creating_path(self.path).unlink(missing_ok=True)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def open_results(path: Path, mode: str = "r") -> h5py.File:
    """Open a finished ``motex.h5`` serially (rank 0 after the fit stage, or a reader)."""
    return h5py.File(path, mode)
