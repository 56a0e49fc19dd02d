"""The MPI driver: one :func:`run` serves 1 rank and 256.

1. Rank 0 validates every input and builds the catalogue; the result is broadcast.
2. Motif batches go to ranks on demand through a one-sided MPI counter; each rank fits
   its batches and writes them into ``motex.h5``.
3-4. On a copy of the file: frames are learned side by side by groups of ranks; within
   a group the search and TreeSHAP are spread over its ranks. Rank 0 then writes the
   CSV, the motifs, the plots and the summary.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from mpi4py import MPI
from mpi4py.util.sync import Counter

from ..catalogue import MotifSpace, build_catalogue
from ..config import SHARED_MIN_FRAMES, Config, pdf_settings
from ..errors import InputError
from ..fit.fast import BatchFitter, supports
from ..fit.fitter import FitSettings, fit_motif
from ..io.pdfdata import read_pdf_data
from ..io.structure import Structure, read_xyz
from ..pdf import PDFSettings, make_calculator
from .comm import (
    abort_on_error,
    get_comm,
    inject_fault,
    pause_for_tests,
    root_then_bcast,
    wait_idle,
)
from .store import (
    ResultsStore,
    announce_fallback,
    config_hash,
    finishing_path,
    open_results,
    parallel_hdf5_available,
)

STAGES = ("fit", "learn", "explain")
PROGRESS_INTERVAL = 10.0  # seconds between progress lines


@dataclass(frozen=True, eq=False)
class Frame:
    """One measured PDF restricted to the fit range."""

    name: str
    r: np.ndarray
    g: np.ndarray
    weights: np.ndarray | None


@dataclass(frozen=True, eq=False)
class Inputs:
    """Everything rank 0 validated, as broadcast to every rank."""

    structure: Structure
    space: MotifSpace
    frames: list[Frame]
    packed_masks: np.ndarray
    n_permutable: int

    @property
    def n_motifs(self) -> int:
        return int(self.packed_masks.shape[0])

    def masks(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Motif masks ``start:stop`` (bool, N columns). Ranks keep the catalogue packed,
        8 motif atoms a byte, and unpack one batch at a time."""
        return np.unpackbits(
            self.packed_masks[start:stop], axis=1, count=self.n_permutable
        ).astype(bool)


def fit_settings(config: Config, structure: Structure) -> FitSettings:
    return FitSettings(
        refine=config.fit.refine,
        zoom_bounds=config.fit.zoom_bounds,
        uiso_elements=tuple(dict.fromkeys(structure.elements)),
    )


def refined_extra(config: Config, structure: Structure) -> tuple[str, ...]:
    """Names of the extra ``/fits`` datasets for freed Uiso and delta2."""
    extra: tuple[str, ...] = ()
    if "uiso" in config.fit.refine:
        extra += tuple(f"uiso_{el}" for el in dict.fromkeys(structure.elements))
    if "delta2" in config.fit.refine:
        extra += ("delta2",)
    return extra


def prepare_output_dir(out_dir: Path) -> None:
    """Create the output folder and check that it is writable."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".mlmotex-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise InputError(
            f"config key 'output.dir' = {out_dir}: the folder is not writable ({exc.strerror})"
        ) from None


#: Python, numpy, numba, SciPy, h5py and mpi4py loaded, before any data (bytes).
RUNTIME_BYTES = 300 * 2**20


def node_memory() -> int:
    """Memory available on this node (bytes): MemAvailable, else physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_estimate(n_motifs: int, n_perm: int, n_atoms: int, n_frames: int,
                    n_points: int) -> dict[str, int]:
    """Peak bytes of one fitting rank and of rank 0 while it learns.

    Every rank: the runtime, the bit-packed catalogue, the data and the parent's pair
    tables. Rank 0 also builds the catalogue unpacked and, while learning one frame at a
    time, holds the features (float32), XGBoost's copies of them, all fits and one
    frame's SHAP values (float64 from XGBoost, float32 for the file).
    """
    packed = n_motifs * math.ceil(n_perm / 8)
    fit_rank = (RUNTIME_BYTES + packed + 3 * 8 * n_frames * n_points
                + 12 * n_atoms**2 + 8 * 1024 * n_points)
    learn = (n_motifs * n_perm * (1 + 4 * 3) + 8 * 3 * n_frames * n_motifs
             + n_motifs * (n_perm + 1) * (8 + 4))
    return {"fit_rank": fit_rank, "rank0": fit_rank + learn}


def check_memory(estimate: dict[str, int], local_ranks: int, available: int) -> None:
    """Refuse a run whose ranks on one node would need more memory than it has."""
    need = estimate["rank0"] + (local_ranks - 1) * estimate["fit_rank"]
    if need > available:
        gib = 2**30
        raise InputError(
            f"this run needs about {need / gib:.1f} GiB on the node of rank 0 "
            f"({local_ranks} rank(s): {estimate['fit_rank'] / gib:.2f} GiB each while "
            f"fitting, rank 0 {estimate['rank0'] / gib:.1f} GiB while learning) but "
            f"{available / gib:.1f} GiB are available: use fewer motifs (catalogue.size), "
            "fewer ranks on that node, or a node with more memory"
        )


def file_estimate(n_motifs: int, n_perm: int, n_frames: int, n_points: int) -> int:
    """Bytes of a finished ``motex.h5`` (catalogue, fits, data, SHAP values, atoms)."""
    return (n_motifs * (n_perm + 4) + n_frames * n_motifs * (3 * 8 + 1 + 4 * (n_perm + 2))
            + 16 * n_frames * n_points + 6 * 8 * n_frames * n_perm + 2**20)


def check_disk(out_dir: Path, n_bytes: int) -> None:
    """Refuse a run whose results would not fit on the output folder's file system.

    Learning works on a copy of the fit results, so about twice the file is needed.
    """
    free = shutil.disk_usage(out_dir).free
    need = 2 * n_bytes
    if need > free:
        gib = 2**30
        raise InputError(
            f"config key 'output.dir' = {out_dir}: the results need about {need / gib:.1f} GiB "
            f"(motex.h5 of about {n_bytes / gib:.1f} GiB and its copy while learning) but "
            f"{free / gib:.1f} GiB are free there"
        )


def load_inputs(config: Config, out_dir: Path | None, local_ranks: int = 1) -> Inputs:
    """Read and check every input (rank 0 only): errors are :class:`InputError`.

    ``out_dir`` None skips creating (and checking) the output folder, for a dry run.
    """
    structure = read_xyz(config.structure)
    missing = [el for el in config.permute if el not in structure.elements]
    if missing:
        present = ", ".join(dict.fromkeys(structure.elements))
        raise InputError(
            f"config key 'permute' = {list(config.permute)}: element {missing[0]} is not in "
            f"{config.structure.name} (it has {present})"
        )
    unknown_uiso = [el for el, _ in config.pdf.uiso if el not in structure.elements]
    if unknown_uiso:
        raise InputError(
            f"config key 'pdf.uiso' names {unknown_uiso[0]}, which is not in "
            f"{config.structure.name}"
        )
    frames = []
    for path in config.data:
        data = read_pdf_data(path)
        try:
            sl = data.fit_range(config.fit.rmin, config.fit.rmax)
        except InputError as exc:
            raise InputError(f"config keys 'fit.rmin'/'fit.rmax': {exc}") from None
        weights = data.weights(sl) if config.fit.weights == "dG" else None
        frames.append(Frame(path.name, data.r[sl].copy(), data.g[sl].copy(), weights))
    space = MotifSpace.from_structure(structure, config.permute, config.bond_threshold)
    n_points = max(len(f.r) for f in frames)
    if config.catalogue.masks_file is None:
        check_memory(
            memory_estimate(config.catalogue.size, space.size, len(structure.elements),
                            len(frames), n_points),
            local_ranks, node_memory(),
        )
    if out_dir is not None:
        prepare_output_dir(out_dir)
        check_disk(out_dir, file_estimate(config.catalogue.size, space.size, len(frames),
                                          n_points))
    masks = build_catalogue(
        space, config.catalogue.size, config.catalogue.seed, config.catalogue.masks_file
    )
    if len(masks) < 10:
        raise InputError(
            f"the catalogue holds only {len(masks)} motifs (N = {space.size} permutable "
            "atoms): at least 10 are needed to learn from"
        )
    return Inputs(structure, space, frames, np.packbits(masks, axis=1), space.size)


@dataclass(frozen=True)
class Previous:
    """What an existing ``motex.h5`` of the same config has done already."""

    batch_done: np.ndarray
    complete: bool


def previous_run(path: Path, config: Config, resume: bool, overwrite: bool,
                 frame_range: tuple[int, int] | None = None) -> Previous | None:
    """Decide between a new run and resuming one (rank 0; errors are InputError).

    An existing file of the same config is resumed (with or without ``--resume``); one of
    another config is never mixed with this one; ``overwrite`` starts afresh regardless.
    """
    if overwrite:
        return None
    if not path.exists():
        if resume:  # a requeued job's first start: nothing to resume yet
            print(f"mlmotex-hpc: --resume: no {path} yet, starting a new run", flush=True)
        return None
    try:
        with h5py.File(path, "r") as h5:
            stored = h5.attrs.get("config_hash")
            done = h5["fits/batch_done"][:] if "fits/batch_done" in h5 else None
            complete = bool(h5.attrs.get("complete", False))
            stored_range = h5.attrs.get("frame_range")
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
    if done is None or stored is None:
        raise InputError(f"{path} is not the motex.h5 of an mlmotex-hpc run; use --overwrite "
                         "or another output.dir")
    if stored != config_hash(config.source):
        raise InputError(
            f"{path} holds a run of a different config: results of two configs are never "
            "mixed; use another output.dir, or --overwrite to discard that run"
        )
    same_range = (stored_range is None and frame_range is None) or (
        stored_range is not None and frame_range is not None
        and tuple(int(v) for v in stored_range) == tuple(frame_range))
    if not same_range:
        held = "all frames" if stored_range is None else "frames {}:{}".format(*stored_range)
        raise InputError(f"{path} holds {held} of this config's series, not the frames "
                         "asked for; use another output folder (--out) or --overwrite")
    return Previous(done.astype(bool), complete)


class Log:
    """Messages from rank 0 only, flushed at once (cluster logs are files)."""

    def __init__(self, comm: MPI.Comm, stream=None, quiet: bool = False):
        self.enabled = comm.rank == 0 and not quiet
        self.stream = stream or sys.stdout

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(message, file=self.stream, flush=True)


@dataclass(frozen=True, eq=False)
class FitGroup:
    """The frames that share one r grid, their calculator and (when it applies) the
    compiled batch fitter that fits scale and zoom to all of them at once."""

    calc: object
    frames: list[int]
    fast: BatchFitter | None


def zoom_search(config: Config) -> str:
    """The zoom search of the batch fitter: "auto" is decided by the run's frame count
    (not a block's), so a frame's fit does not depend on how frames are blocked."""
    search = config.fit.zoom_search
    if search == "auto":
        search = "shared" if len(config.data) >= SHARED_MIN_FRAMES else "exact"
    return search


def make_fit_groups(inputs: Inputs, settings: PDFSettings, fsettings: FitSettings,
                    frames: range | None = None, search: str = "exact") -> list:
    """One calculator per distinct r grid among ``frames`` (all by default), with a
    compiled fitter where it applies."""
    by_grid: dict[bytes, list[int]] = {}
    for f in frames if frames is not None else range(len(inputs.frames)):
        by_grid.setdefault(inputs.frames[f].r.tobytes(), []).append(f)
    groups = []
    for indices in by_grid.values():
        frames = [inputs.frames[f] for f in indices]
        calc = make_calculator(
            inputs.structure.elements, inputs.structure.xyz, settings, frames[0].r
        )
        fast = None
        if supports(calc, fsettings):
            g_obs = np.stack([frame.g for frame in frames])
            weights = np.stack(
                [np.ones_like(frame.g) if frame.weights is None else frame.weights
                 for frame in frames]
            )
            fast = BatchFitter(calc, fsettings, g_obs, weights, zoom_search=search)
        groups.append(FitGroup(calc, indices, fast))
    return groups


def frame_blocks(n_frames: int, block: int) -> list[range]:
    """The frame blocks of the work units (``frames.block``; 0: one block of all)."""
    block = block or n_frames
    return [range(f, min(n_frames, f + block)) for f in range(0, n_frames, block)]


def fit_batch(
    masks: np.ndarray,
    space: MotifSpace,
    groups: list[FitGroup],
    frames: list[Frame],
    settings: FitSettings,
    base_uiso: dict[str, float],
    extra: tuple[str, ...],
    block: range | None = None,
) -> dict[str, np.ndarray]:
    """Fit every motif of a batch to the frames of ``block`` (all by default): arrays
    of shape (frames in the block, batch). ``groups`` cover exactly those frames."""
    block = block if block is not None else range(len(frames))
    n_frames, count = len(block), len(masks)
    out = {name: np.empty((n_frames, count)) for name in ("rw", "scale", "zoom") + extra}
    out["status"] = np.empty((n_frames, count), dtype=np.int8)
    atom_masks = space.atom_masks(masks)
    for group in groups:
        if group.fast is not None:
            results = group.fast.fit(atom_masks)
            rows = [f - block.start for f in group.frames]
            for name, values in results.items():
                out[name][rows] = values
            continue
        for j, atom_mask in enumerate(atom_masks):
            motif = group.calc.prepare(atom_mask)  # reused by every frame of the group
            for f in group.frames:
                frame, row = frames[f], f - block.start
                res = fit_motif(group.calc, motif, frame.g, settings, frame.weights, base_uiso)
                out["rw"][row, j], out["scale"][row, j], out["zoom"][row, j] = (
                    res.rw, res.scale, res.zoom
                )
                out["status"][row, j] = res.status
                for name in extra:
                    if name == "delta2":
                        out[name][row, j] = np.nan if res.delta2 is None else res.delta2
                    else:
                        out[name][row, j] = res.uiso.get(name[5:], np.nan)
    return out


_RESULTS_TAG = 17  # serial fallback: a batch's results on their way to rank 0


def _progress_interval() -> float:
    """Seconds between progress lines (``MLMOTEX_PROGRESS_INTERVAL`` overrides)."""
    try:
        return float(os.environ.get("MLMOTEX_PROGRESS_INTERVAL", PROGRESS_INTERVAL))
    except ValueError:
        return PROGRESS_INTERVAL


def run_fits(
    inputs: Inputs,
    config: Config,
    store: ResultsStore,
    comm: MPI.Comm,
    log: Callable,
    pending: np.ndarray,
) -> int:
    """Step 2 on every rank: the ``pending`` work units on demand, results into the store.

    A work unit is a motif batch × a frame block (``frames.block``); unit u is batch
    u // FB, block u % FB. Returns the number of fits done (all ranks). With parallel
    HDF5 each rank writes its own batches; in the serial fallback the other ranks send
    each batch to rank 0 as soon as it is fitted, and rank 0 writes them between its own,
    so a killed job loses only the batches in flight either way.
    """
    fsettings = fit_settings(config, inputs.structure)
    blocks = frame_blocks(len(inputs.frames), config.frames.block)
    search = zoom_search(config)
    groups_of: dict[int, list] = {}  # per frame block, built when first needed

    def groups_for(fb: int) -> list:
        if fb not in groups_of:
            groups_of[fb] = make_fit_groups(inputs, pdf_settings(config), fsettings,
                                            blocks[fb], search)
        return groups_of[fb]

    extra = refined_extra(config, inputs.structure)
    n_motifs, batch_size = inputs.n_motifs, config.catalogue.batch_size
    direct = store.parallel or comm.size == 1
    interval = _progress_interval()
    sends = []
    done_msgs = 0

    def drain(block: bool) -> None:
        """Rank 0 (serial fallback): write what the other ranks have sent."""
        nonlocal done_msgs
        while True:
            if block:
                if done_msgs == comm.size - 1:
                    return
            elif not comm.iprobe(source=MPI.ANY_SOURCE, tag=_RESULTS_TAG):
                return
            item = comm.recv(source=MPI.ANY_SOURCE, tag=_RESULTS_TAG)
            if item is None:  # that rank has no more batches
                done_msgs += 1
                continue
            batch, fb, start, results = item
            store.write_batch(start, results, batch, _as_slice(blocks[fb]), fb)

    counter = Counter(comm=comm)
    started = last = time.perf_counter()
    done_here = 0
    try:
        while (k := counter.next()) < pending.size:
            inject_fault("fit", comm)
            batch, fb = divmod(int(pending[k]), len(blocks))
            start = batch * batch_size
            stop = min(n_motifs, start + batch_size)
            results = fit_batch(
                inputs.masks(start, stop), inputs.space, groups_for(fb), inputs.frames,
                fsettings, config.uiso, extra, blocks[fb],
            )
            pause_for_tests("fit")
            done_here += (stop - start) * len(blocks[fb])
            if direct or comm.rank == 0:
                store.write_batch(start, results, batch, _as_slice(blocks[fb]), fb)
            else:
                sends.append(comm.isend((batch, fb, start, results), dest=0,
                                        tag=_RESULTS_TAG))
            if comm.rank == 0 and not direct:
                drain(block=False)
            now = time.perf_counter()
            if comm.rank == 0 and now - last >= interval:
                last = now
                frac = min(1.0, (k + 1) / pending.size)
                rate = comm.size * done_here / (now - started)  # this rank's rate × ranks
                eta = (now - started) * (1 - frac) / max(frac, 1e-9)
                log(f"  fit: {100 * frac:5.1f} % of {pending.size} work units, "
                    f"{rate:,.0f} fits/s, ETA {eta:,.0f} s")
    finally:
        counter.free()
    if not direct:
        if comm.rank == 0:
            drain(block=True)
        else:
            MPI.Request.waitall(sends)
            comm.send(None, dest=0, tag=_RESULTS_TAG)
    return comm.allreduce(done_here)


def _as_slice(block: range) -> slice:
    return slice(block.start, block.stop)


def finish_on_copy(path: Path, learn: Callable, outputs: Callable, comm: MPI.Comm):
    """Steps 3-4 on a copy of ``motex.h5`` that replaces it only when they are done.

    Every rank calls it. Rank 0 makes the copy; ``learn(h5)`` runs on every rank with the
    copy open on every rank (parallel HDF5) or on rank 0 only (None elsewhere); then
    rank 0 reopens it serially for ``outputs(h5)``, whose result it returns (None on
    the other ranks). HDF5 cannot survive a kill while it adds groups and datasets, and
    the fits it would put at risk took the whole machine to compute. Working on a copy
    keeps them safe: a job killed while learning leaves ``motex.h5`` as the fit stage
    left it, and a rerun (resume) only learns again.
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
        raise InputError(error)
    parallel = comm.size > 1 and parallel_hdf5_available()
    h5 = None
    done = False
    try:
        if parallel:
            h5 = h5py.File(tmp, "r+", driver="mpio", comm=comm)
        elif comm.rank == 0:
            h5 = open_results(tmp, "r+")
        extra = learn(h5)
        if h5 is not None:
            h5.close()
            h5 = None
        summary = None
        if comm.rank == 0:
            h5 = open_results(tmp, "r+")
            summary = outputs(h5, extra)
            h5.attrs["complete"] = True
        done = True
    finally:
        if h5 is not None:
            h5.close()
        if comm.rank == 0:
            if done:
                os.replace(tmp, path)
            else:
                tmp.unlink(missing_ok=True)
    return summary


def run(
    config: Config,
    comm: MPI.Comm | None = None,
    *,
    out_dir: Path | None = None,
    until: str = "explain",
    quiet: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    frame_range: tuple[int, int] | None = None,
) -> dict | None:
    """Run the ML-MotEx pipeline; every rank of ``comm`` must call it.

    Parameters
    ----------
    config : Config
        The validated configuration (identical on every rank).
    comm : MPI.Comm, optional
        Communicator; ``MPI.COMM_WORLD`` when None.
    out_dir : Path, optional
        Output folder; ``config.output.dir`` when None.
    until : {"fit", "learn", "explain"}
        Last stage to run.
    quiet : bool
        Suppress progress messages.
    resume : bool
        Say so when there is nothing to resume. An unfinished ``motex.h5`` of this config
        is resumed with or without it (so requeued jobs can always pass it); one of
        another config is refused either way.
    overwrite : bool
        Start afresh even when ``motex.h5`` exists.
    frame_range : (start, stop), optional
        ``config`` holds only these frames of its series (see
        :func:`~mlmotex_hpc.config.select_frames`); recorded in the file for ``merge``.

    Returns
    -------
    dict or None
        On rank 0 the summary (see :func:`mlmotex_hpc.output.summary.summarise`);
        None on the other ranks.
    """
    from ..output.results import learn_stage, write_outputs  # heavy imports

    comm = get_comm(comm)
    out_dir = Path(out_dir or config.output.dir)
    log = Log(comm, quiet=quiet)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    path = out_dir / "motex.h5"

    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    local_ranks = comm.bcast(node.size)  # ranks sharing rank 0's node and its memory
    node.Free()

    def check_inputs():
        inputs = load_inputs(config, out_dir, local_ranks)
        return inputs, previous_run(path, config, resume, overwrite, frame_range)

    inputs, previous = root_then_bcast(check_inputs, comm)
    timings["catalogue"] = time.perf_counter() - t0
    n_motifs = inputs.n_motifs
    n_frames = len(inputs.frames)
    n_batches = math.ceil(n_motifs / config.catalogue.batch_size)
    n_fblocks = len(frame_blocks(n_frames, config.frames.block))
    log(f"mlmotex-hpc: {n_motifs} motifs over N = {inputs.space.size} permutable atoms, "
        f"{n_frames} frame(s), {comm.size} rank(s)")
    if previous is not None and previous.complete:
        log(f"{path} is complete for this config: nothing to do (--overwrite runs it again)")
        return None
    announce_fallback(comm)

    with abort_on_error(comm):
        if previous is None:
            store, error = None, None
            try:
                store = ResultsStore.create(
                    path, comm, config_text=config.source,
                    config_dir=str(config.base), n_frames=n_frames, n_motifs=n_motifs,
                    n_permutable=inputs.space.size, n_batches=n_batches,
                    batch_size=config.catalogue.batch_size,
                    frame_block=config.frames.block or n_frames,
                    refined_extra=refined_extra(config, inputs.structure),
                )
                if frame_range is not None:
                    store.collective_set_attrs("/", {"frame_range": np.array(frame_range)})
                store.collective_write_inputs(
                    elements=inputs.structure.elements, xyz=inputs.structure.xyz,
                    permutable=inputs.space.permutable,
                    frame_names=[f.name for f in inputs.frames],
                    frames=[(f.r, f.g) for f in inputs.frames],
                    masks=inputs.masks() if comm.rank == 0 else None,
                    times=config.frames.time, time_unit=config.frames.time_unit,
                )
            except (OSError, RuntimeError, ValueError) as exc:  # HDF5: a full disk, a quota
                error = (f"cannot create {path} ({exc.strerror or exc}); nothing was fitted: "
                         "free some space (or raise the quota) and run again")
            errors = [e for e in comm.allgather(error) if e]
            if errors:
                if store is not None:
                    store.close_quietly()
                raise InputError(errors[0])
            store.collective_publish()
            pending = np.arange(n_batches * n_fblocks)
        else:
            store = ResultsStore.open_existing(path, comm)
            pending = np.flatnonzero(~previous.batch_done.ravel())
            n_units = n_batches * n_fblocks
            log(f"resuming {path}: {n_units - pending.size} of {n_units} work units done")
        if pending.size:
            log(f"step 2: fitting {n_motifs * n_frames} motif PDFs ({config.pdf.calculator})")
        t_fit = time.perf_counter()
        n_fits = run_fits(inputs, config, store, comm, log, pending)
        timings["fit"] = time.perf_counter() - t_fit
        timings["fits_per_second"] = n_fits / max(timings["fit"], 1e-9)
        store.close()

        log(f"  {n_fits} fits in {timings['fit']:.1f} s "
            f"({timings['fits_per_second']:,.0f} fits/s on {comm.size} rank(s))")
        summary = finish_on_copy(
            path,
            lambda h5: learn_stage(h5, config, until, timings, log, comm),
            lambda h5, metrics: write_outputs(
                h5, inputs, out_dir, until=until, timings=timings, n_ranks=comm.size,
                t_start=t0, log=log, metrics=metrics, config=config,
            ),
            comm,
        )
        wait_idle(comm)
    return summary
