"""``motex.h5``, the one file of a run: its layout, its only writer and its only reader.

Every other module calls :class:`RunFile`; no other module names a dataset of the file.

The layout (every dataset and attribute, with its shape, type and meaning) is data, in
:mod:`.run_layout`, from which ``docs/motex-h5.md`` is generated; the tests check finished
runs of every kind against it. A file of a later layout version than
:data:`~.run_layout.LAYOUT_VERSION` is refused with a message that names both versions;
version 1 (no ``layout_version`` attribute) is the same layout, read as it is.

Parallel or serial HDF5: a :class:`RunFile` opened with a communicator of more than one
rank, when h5py was built against an MPI-enabled HDF5, is open on every rank with
``driver="mpio"``; every rank makes the same metadata calls (methods named
``collective``) and each rank writes its own slices. Otherwise (one rank, or the
serial-HDF5 fallback) only rank 0 holds the file (:attr:`RunFile.holds`) and the other
ranks' calls do nothing. That choice is made here and nowhere else. The communicator is
used through its methods only, so this module loads no MPI library itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import functools
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml

from .. import __version__
from ..config import Config, parse_config, select_frames
from ..errors import AgreedError, InputError, JobFailed
from .defaults import with_file_defaults
from .digests import check_unchanged, times_digest
from .run_layout import LAYOUT_VERSION
from .structure import Structure

#: Fit results every run has (plus ``status``, and the freed parameters' datasets).
FIT_FIELDS = ("rw", "scale", "zoom")
#: The stages a run goes through, in order (``run --until``).
STAGES = ("fit", "learn", "explain")
#: Per-atom results of the explain stage, one (F, N) dataset each.
ATOM_DATASETS = ("contribution", "uncertainty", "confidence", "kept_mean", "removed_mean",
                 "contribution_se")
#: Datasets with a leading frame axis: ``merge`` joins them along it.
FRAME_DATASETS = ("fits/rw", "fits/scale", "fits/zoom", "fits/status",
                  "atoms/contribution", "atoms/uncertainty", "atoms/confidence",
                  "atoms/kept_mean", "atoms/removed_mean", "atoms/in_motif",
                  "atoms/contribution_se", "atoms/label", "atoms/acv_negative",
                  "shap/values", "shap/base_value", "shap/explained", "ml/test_predicted",
                  "polish/mask", "polish/rw", "polish/start_mask", "polish/start_rw")
#: Datasets every part of a job array holds identically: ``merge`` copies the first's.
SHARED_DATASETS = ("model", "catalogue", "atoms/index")

#: Where a fitted motif came from (``/catalogue/origin``).
ORIGIN_CODES = {"catalogue": 0, "adaptive": 1, "extract": 2}
EXACT_DEFINITION = (
    "shapley: the exact Shapley value of each permutable atom in the game v(S) = Rw of "
    "motif S over every motif (v of the empty motif and of a motif without pairs = 1, the "
    "Rw of a zero model); negative: the atom lowers Rw. main_effect: mean Rw of the motifs "
    "keeping the atom - mean Rw of the (non-empty) motifs removing it. NaN in a frame with "
    "a motif whose fit failed")
CONVERGENCE_DEFINITION = (
    "mlmotex-hpc convergence: one row per ML-MotEx random catalogue drawn from the "
    "exhaustive table (size, seed), steps 3-4 run on it, compared with the exact answer: "
    "sign_agreement and spearman of its ACVs against /atoms/shapley, answer_errors (atoms "
    "in one of the ACV < 0 and Shapley < 0 sets only), mean_sign_agreement (the sample's "
    "own main effects, no model), best_rw in it against global_rw")
BEST_DEFINITION = (
    "the K lowest Rw of every motif of the exhaustive table, per frame, lowest first "
    "(ties: the lower row); row r is the motif of binary code r + 1")
#: What the extract stage writes per frame and atom (F, N).
EXTRACT_DATASETS = ("label", "acv_negative")
LABEL_DEFINITION = (
    "confidence label: 1 in (ACV <= -z SE), 0 out (ACV >= z SE), 2 uncertain (or CF below "
    "the minimum); z and the minimum are extract.label_z and extract.label_min_cf")
STATUS_CODES = "0 ok, 1 not converged, 2 no pairs, 3 Uiso or delta2 at a bound, -1 not fitted"
ATOMS_DEFINITION = (
    "contribution = mean SHAP over motifs keeping the atom - mean over motifs removing it "
    "(negative: the atom lowers Rw, it belongs to the motif); uncertainty = "
    "sqrt((sK^2 + sR^2)/2), population standard deviations; confidence = |ACV|/sigma; "
    "contribution_se = sqrt(sK^2/nK + sR^2/nR), the standard error of the contribution"
)
SHAP_DEFINITION = (
    "TreeSHAP values of the motifs in explained (1); NaN for the others. learn.shap: all "
    "explains every motif, auto a seeded random sample of those with a finite Rw, grown "
    "until every ACV's standard error is below learn.shap_target x the largest |ACV|")
POLISH_DEFINITION = (
    "mask, rw: each frame's polished motif and its fitted Rw; start_mask, start_rw: the "
    "start it came from; path (JSON, per frame, per start): each accepted move (added, "
    "removed: 0-based permutable atoms) and the Rw after it; fits: motifs fitted by the "
    "extract stage (rows of /catalogue with origin 2)")
PREDICTED_DEFINITION = (
    "Rw predicted by the frame's model for its test motifs (NaN: not in the test set)")

_fallback_announced = False


# -- names and small helpers -----------------------------------------------------------------


def parallel_hdf5_available() -> bool:
    """True when h5py was built against an MPI-enabled HDF5.

    ``MLMOTEX_SERIAL_HDF5=1`` forces the serial fallback (to test it, or to avoid a
    broken MPI-IO layer on some file system).
    """
    if os.environ.get("MLMOTEX_SERIAL_HDF5", "0") not in ("", "0"):
        return False
    return bool(h5py.get_config().mpi)


def _parallel(comm) -> bool:
    return comm is not None and comm.size > 1 and parallel_hdf5_available()


def announce_fallback(comm) -> None:
    """Say once, on rank 0, that results travel to rank 0 for writing."""
    global _fallback_announced
    if comm.size > 1 and not parallel_hdf5_available() and not _fallback_announced:
        _fallback_announced = True
        if comm.rank == 0:
            print("mlmotex-hpc: h5py has no MPI support: serial-HDF5 fallback "
                  "(rank 0 writes every result)", file=sys.stderr, flush=True)


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


def creating_path(path: Path) -> Path:
    """Where a new ``motex.h5`` is built before it takes its final name."""
    return path.with_name(path.name + ".creating")


def finishing_path(path: Path) -> Path:
    """Where steps 3-4 write, on a copy, before it replaces ``motex.h5``."""
    return path.with_name(path.name + ".finishing")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _replace(group: h5py.Group, name: str, data: np.ndarray) -> h5py.Dataset:
    if name in group:
        del group[name]
    return group.create_dataset(name, data=data)


def _per_frame(value, n: int) -> list:
    """An ``/ml`` value as one entry per frame (single-frame files store scalars)."""
    if isinstance(value, str | bytes):
        loaded = json.loads(value)
        return loaded if n > 1 else [loaded]
    return list(np.atleast_1d(value))


def _broadcast(value: Any, comm) -> Any:
    """Rank 0's ``value`` on every rank of ``comm`` (through its methods: this module loads
    no MPI library)."""
    array = isinstance(value, np.ndarray) and value.dtype.kind in "biuf"
    meta = comm.bcast((value.shape, value.dtype.str) if array else None)
    if meta is None:
        return comm.bcast(value)
    buffer = (np.ascontiguousarray(value) if comm.rank == 0
              else np.empty(meta[0], dtype=np.dtype(meta[1])))
    comm.Bcast(buffer)
    return buffer


def make_folder(folder: Path) -> Path:
    """Create an output folder (and its parents) and check that files can be written in
    it, before any work whose results go there; errors are :class:`InputError`."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".mlmotex-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:  # a file of that name, no permission, a read-only mount
        what = "create" if not folder.is_dir() else "write in"
        raise InputError(f"cannot {what} the output folder {folder} "
                         f"({exc.strerror or exc})") from None
    return folder


# -- one job per output folder ---------------------------------------------------------------


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


# -- what an existing file says about itself -------------------------------------------------


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
        for name, values in results.items():
            fits[name][frames, start:stop] = values
        if not self.parallel:
            # serial HDF5 caches chunks: the results must be on disk before the batch is
            # marked done (parallel HDF5 writes through at once)
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


# -- the learning copy ------------------------------------------------------------------------


#: A write that fails with less than this free beside the file failed for want of space.
NEARLY_FULL = 2**20


@contextlib.contextmanager
def _disk_errors(path: Path):
    """Name a full disk as such: parallel HDF5 reports a failed write without the
    system's errno ("Can't write data (file write failed)"), so a write error with the
    file system of ``path`` (nearly) full becomes an ``ENOSPC`` OSError, which the exit
    policy reports in one line."""
    try:
        yield
    except (OSError, ValueError, RuntimeError) as exc:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        if not isinstance(exc, OSError) and "failed" not in str(exc):
            raise  # h5py says "Unable to create dataset (file write failed)" as ValueError
        try:
            free = shutil.disk_usage(path.parent).free
        except OSError:
            raise exc from None
        if free < NEARLY_FULL:
            raise OSError(errno.ENOSPC, f"No space left on device: {free} bytes free "
                          f"beside {path.name} ({exc})") from exc
        raise


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
            with _disk_errors(tmp):
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
            with _disk_errors(tmp):
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


# -- a job array's parts, joined ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Part:
    """What merging needs to know of one task's file."""

    path: Path
    config_hash: str
    frame_range: tuple[int, int]
    masks: np.ndarray
    has_shap: bool


def read_part(path: Path) -> Part:
    """One task's finished file (errors are :class:`InputError`)."""
    if not path.is_file():
        raise InputError(f"no such file: {path} (expected a task's motex.h5)")
    try:
        with h5py.File(path, "r") as h5:
            if "config_hash" not in h5.attrs or "fits/rw" not in h5:
                raise InputError(f"{path} is not the motex.h5 of an mlmotex-hpc run")
            if not h5.attrs.get("complete", False) or "atoms/contribution" not in h5:
                raise InputError(f"{path} is not finished (no learned contributions yet): "
                                 "let its task finish, or rerun it with --resume")
            frame_range = h5.attrs.get("frame_range")
            if frame_range is None:
                frame_range = (0, h5["fits/rw"].shape[0])
            n_cat = int(h5["catalogue"].attrs.get("n_catalogue", h5["catalogue/mask"].shape[0]))
            return Part(path, _text(h5.attrs["config_hash"]),
                        tuple(int(v) for v in frame_range), h5["catalogue/mask"][:n_cat],
                        "shap/values" in h5)
    except OSError as exc:
        raise InputError(f"cannot read {path} as HDF5 ({exc})") from None


def merge_parts(target: Path, parts: Sequence[Part], n_series: int,
                finish: Callable[[Path], None] | None = None) -> None:
    """Write ``target`` holding the frames of ``parts`` (in frame order, consecutive,
    checked by the caller) as one run of those frames would have written it.

    The parts' catalogue, fits and learning are joined; the rows each part's extract
    stage appended are not (a single run's extract stage shares one budget over every
    frame and fits each motif to all of them): ``finish(path)`` runs that stage again on
    the joined file. ``n_series`` is the length of the config's whole series: a merge
    that covers it records no ``frame_range``. Built under a temporary name, renamed
    when complete (``finish`` included).
    """
    tmp = target.with_name(target.name + ".merging")
    sources = [h5py.File(p.path, "r") for p in parts]
    try:
        try:
            with h5py.File(tmp, "w") as out:
                _merge_into(out, sources, parts, n_series)
        finally:
            for src in sources:
                src.close()
        if finish is not None:
            finish(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(target)


def _merge_into(out: h5py.File, sources: list[h5py.File], parts: Sequence[Part],
                n_series: int) -> None:
    first = sources[0]
    start, stop = parts[0].frame_range[0], parts[-1].frame_range[1]
    n_frames = stop - start
    for key, value in first.attrs.items():
        if key not in ("frame_range", "complete"):
            out.attrs[key] = value
    if (start, stop) != (0, n_series):
        out.attrs["frame_range"] = np.array([start, stop])
    out.attrs["merged_from"] = json.dumps([str(p.path) for p in parts])
    if all("input_digests" in src.attrs for src in sources):  # every part's data files
        digests: dict[str, str] = {}
        for src in sources:
            digests.update(json.loads(_text(src.attrs["input_digests"])))
        if "frames.time" in digests:  # each part hashed its own times: hash the series'
            series = parse_config(_text(first.attrs["config"]),
                                  Path(_text(first.attrs.get("config_dir", "."))))
            digests["frames.time"] = times_digest(series.frames.time[start:stop])
        out.attrs["input_digests"] = json.dumps(digests, sort_keys=True)
    n_cat = int(first["catalogue"].attrs.get("n_catalogue", first["catalogue/mask"].shape[0]))
    for name in SHARED_DATASETS:
        if name in first and name != "catalogue":
            first.copy(first[name], out, name=name)
    # each part's extract stage added its own rows: the merged file keeps the catalogue's
    # (the parts' polished motifs and Rw are kept per frame in /polish)
    cat = out.create_group("catalogue")
    cat.attrs.update(first["catalogue"].attrs)
    for key, ds in first["catalogue"].items():
        rows = ds.ndim and key not in ("permutable", "round_labels")
        if rows:  # resizable as a run's: the extract stage appends its rows
            copied = cat.create_dataset(key, data=ds[:n_cat], maxshape=ds.maxshape,
                                        chunks=ds.chunks, fillvalue=ds.fillvalue)
        else:
            copied = cat.create_dataset(key, data=ds[()])
        copied.attrs.update(ds.attrs)
    # frames: names, times, data renumbered
    names = np.concatenate([src["frames/names"][:] for src in sources])
    out.create_dataset("frames/names", data=names.astype(f"S{max(len(n) for n in names)}"))
    if "frames/time" in first:
        times = out.create_dataset("frames/time",
                                   data=np.concatenate([s["frames/time"][:] for s in sources]))
        times.attrs["unit"] = first["frames/time"].attrs.get("unit", "s")
    k = 0
    for src in sources:
        for f in range(src["frames/names"].shape[0]):
            src.copy(src[f"data/{f:05d}"], out, name=f"data/{k:05d}")
            k += 1
    # per-frame datasets, one part's rows at a time
    freed = [f"fits/{k}" for k in first["fits"] if k not in ("batch_done", *FIT_FIELDS,
                                                              "status")]
    for name in (*FRAME_DATASETS, *freed):  # freed: uiso_<El>, delta2 (fit.refine)
        if name not in first:
            continue
        ds0 = first[name]
        shape = (n_frames, *ds0.shape[1:])
        cols = slice(None)
        maxshape = None
        if name.startswith("fits/"):
            shape, cols = (n_frames, n_cat), slice(0, n_cat)
            maxshape = (None if ds0.maxshape[0] is None else n_frames, *ds0.maxshape[1:])
        ds = out.create_dataset(name, shape, dtype=ds0.dtype, maxshape=maxshape,
                                chunks=ds0.chunks, fillvalue=ds0.fillvalue)
        for key, value in ds0.attrs.items():
            ds.attrs[key] = value
        row = 0
        for src in sources:
            for f in range(src[name].shape[0]):
                ds[row] = src[name][f, cols] if cols != slice(None) else src[name][f]
                row += 1
    for group in ("fits", "atoms", "shap", "polish"):
        for key, value in (first[group].attrs.items() if group in first else ()):
            out[group].attrs[key] = value
    if "shap" in first and "n_explained" in first["shap"].attrs:
        out["shap"].attrs["n_explained"] = np.concatenate(
            [np.atleast_1d(s["shap"].attrs["n_explained"]) for s in sources])
    batches = first["fits/batch_done"].shape[0]
    out.create_dataset("fits/batch_done", data=np.ones((batches, 1), dtype="u1"))
    out["fits"].attrs["frame_block"] = n_frames
    # learning: per-frame attributes joined in frame order
    ml = out.require_group("ml")
    for key in first["ml"].attrs:
        if key == "searched_frames":  # each part's own search, in merged frame numbers
            ml.attrs[key] = np.concatenate(
                [np.asarray(s["ml"].attrs[key]) + p.frame_range[0] - start
                 for s, p in zip(sources, parts, strict=True) if key in s["ml"].attrs])
            continue
        values = []
        for src in sources:
            values += _per_frame(src["ml"].attrs[key], src["frames/names"].shape[0])
        if key in ("params", "history"):
            ml.attrs[key] = json.dumps(values if n_frames > 1 else values[0], default=str)
        elif key == "settings":
            ml.attrs[key] = first["ml"].attrs[key]
        else:
            ml.attrs[key] = np.array(values) if n_frames > 1 else values[0]
    timings = out.create_group("timings")
    for key in ("catalogue", "fit", "learn", "explain", "extract", "outputs", "total"):
        timings.attrs[key] = float(sum(s["timings"].attrs.get(key, 0.0) for s in sources))
    fits = sum(s["timings"].attrs.get("fits_per_second", 0.0) * s["timings"].attrs.get("fit", 0.0)
               for s in sources)
    timings.attrs["fits_per_second"] = fits / max(timings.attrs["fit"], 1e-9)
    timings.attrs["ranks"] = int(max(s["timings"].attrs.get("ranks", 1) for s in sources))
    timings.attrs["note"] = "summed over the merged parts (they ran as separate jobs)"
    out.attrs["complete"] = True


