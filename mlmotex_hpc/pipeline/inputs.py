"""The inputs stage (rank 0): read and check every input, preflight, the resume decision.

Every problem found here is an :class:`InputError` that names the key or the file, before
any work is done: the model and the data, the permutable elements, the memory the run
needs on rank 0's node and the disk its results need, the catalogue, and whether an
existing ``motex.h5`` is resumed, finished already, or must be refused.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import store
from ..catalogue import MotifSpace, build_catalogue
from ..config import ALL_MOTIFS, CatalogueConfig, Config, exhaustive, extract_reserve
from ..errors import InputError
from ..fit.batch import Frame, Inputs
from ..io.digests import changed_inputs, input_digests
from ..io.folders import folder_problem
from ..io.pdfdata import read_pdf_data
from ..io.structure import load_model

#: Python, numpy, numba, SciPy, h5py and MPI loaded, before any data (bytes).
RUNTIME_BYTES = 300 * 2**20


def load_inputs(config: Config, local_ranks: int = 1) -> Inputs:
    """Read and check every input (rank 0 only): errors are :class:`InputError`.

    ``local_ranks``: the ranks that share rank 0's node and its memory. The output folder
    and an existing run in it are checked by :func:`preflight`.
    """
    structure = load_model(config.structure, config.model)
    partial = [(site, el) for site, _, _, el in structure.partial_sites()
               if el not in config.permute]
    if partial:
        site, el = partial[0]
        raise InputError(
            f"config key 'permute' = {list(config.permute)}: the partially occupied site "
            f"{site} of {config.structure.name} is {el}, which is not permuted; a partial "
            f"site is a candidate the catalogue switches on and off: add {el} to permute")
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
    if config.fits is not None:
        return _table_inputs(config, structure)
    frames = []
    for path in config.data:
        frames.append(read_frame(path, config.fit))
    space = MotifSpace.from_structure(structure, config.permute, config.bond_threshold)
    check_calculators(config, structure, frames)
    check_learning(config)
    n_points = max(len(f.r) for f in frames)
    check_motif_count(space.size, config)
    size = catalogue_size(config.catalogue.size, space.size)
    reserve = extract_reserve(config, space.size)
    if config.catalogue.masks_file is None and reserve:
        if size - reserve < 10:
            raise InputError(
                f"config key 'extract.polish_fits' = {reserve}: it leaves {size - reserve} of "
                f"catalogue.size = {config.catalogue.size} fits for the catalogue; at least 10 "
                "are needed to learn from (lower it or raise catalogue.size)")
        size -= reserve
    every = exhaustive(config, space.size)
    if every and config.catalogue.strategy == "adaptive":
        raise InputError(
            f"config key 'catalogue.strategy' = adaptive: catalogue.size = "
            f"{_size_text(config.catalogue.size)} fits every one of the 2^{space.size} - 1 "
            "motifs, so there is nothing to choose; use strategy: random (an exhaustive run) "
            "or a smaller budget")
    learned = min(size, config.learn.sample) if every else size
    if config.catalogue.masks_file is None:
        check_memory(
            memory_estimate(size, space.size, len(structure.elements), len(frames), n_points,
                            learned=learned, streamed=every, config=config,
                            elements=tuple(structure.elements), grids=[f.r for f in frames]),
            local_ranks, node_memory(),
        )
    if every:
        return Inputs(structure, space, frames, np.zeros((0, (space.size + 7) // 8), np.uint8),
                      space.size, input_digests(config), exhaustive=True)
    if config.catalogue.strategy == "adaptive":
        size = round_sizes(config.catalogue, size)[0]  # round 0; the others as it goes
    masks = build_catalogue(space, size, config.catalogue.seed, config.catalogue.masks_file)
    if len(masks) < 10:
        raise InputError(
            f"the catalogue holds only {len(masks)} motifs (N = {space.size} permutable "
            "atoms): at least 10 are needed to learn from"
        )
    return Inputs(structure, space, frames, np.packbits(masks, axis=1), space.size,
                  input_digests(config))


def _table_inputs(config: Config, structure) -> Inputs:
    """The inputs of a run on a fits table (``config.fits``): its motifs and Rw, one
    frame named after the table and holding no data."""
    from ..io.fitstable import read_fits_table
    from ..io.structure import site_labels

    space = MotifSpace.from_structure(structure, config.permute, config.bond_threshold)
    labels = site_labels(structure.elements)
    table = read_fits_table(config.fits, [labels[k] for k in space.permutable],
                            None if structure.sites is None
                            else [structure.sites[k] for k in space.permutable])
    if len(table) < 10:
        raise InputError(f"fits table {config.fits} holds {len(table)} motifs: at least 10 "
                         "are needed to learn from")
    if np.isfinite(table.rw).sum() < 10:
        raise InputError(f"fits table {config.fits}: only {int(np.isfinite(table.rw).sum())}"
                         " finite Rw values; at least 10 are needed to learn from")
    check_learning(config)
    empty = np.zeros(0)
    frame = Frame(config.fits.name, empty, empty, None)
    return Inputs(structure, space, [frame], np.packbits(table.masks, axis=1), space.size,
                  input_digests(config), table_rw=table.rw)


# -- checks that need more than the config ---------------------------------------------------

#: A fit range's largest |G| must lie within these (Å⁻²): beyond them the sums of squares
#: behind scale and Rw overflow or underflow in float64.
G_LIMITS = (1e-30, 1e30)
#: Fitting every motif is refused above this many permutable atoms (2^32 motifs: a
#: 240 GB file; the disk and memory checks refuse smaller ones that would not fit).
MAX_ENUMERATED = 32


def read_frame(path: Path, fit) -> Frame:
    """One data file restricted to the fit range (``fit``: the config's ``fit`` section),
    its weights when ``fit.weights`` is dG, checked (:func:`check_frame`)."""
    data = read_pdf_data(path)
    try:
        sl = data.fit_range(fit.rmin, fit.rmax)
    except InputError as exc:
        raise InputError(f"config keys 'fit.rmin'/'fit.rmax': {exc}") from None
    weights = data.weights(sl) if fit.weights == "dG" else None
    frame = Frame(path.name, data.r[sl].copy(), data.g[sl].copy(), weights)
    check_frame(frame, path)
    return frame


def check_frame(frame: Frame, path: Path) -> None:
    """Refuse data that the fit's arithmetic cannot hold, naming the file (the weights
    are checked where they are made, :meth:`~mlmotex_hpc.io.pdfdata.PDFData.weights`)."""
    peak = float(np.max(np.abs(frame.g)))
    if peak == 0.0:
        raise InputError(f"{path}: G is zero at every point of the fit range "
                         f"(r {frame.r[0]:g}-{frame.r[-1]:g} Å): nothing to fit")
    if not G_LIMITS[0] <= peak <= G_LIMITS[1]:
        raise InputError(
            f"{path}: the largest |G| in the fit range is {peak:.3g}, outside "
            f"{G_LIMITS[0]:g}-{G_LIMITS[1]:g}: is the column in other units? Rescale the data "
            "(Rw does not depend on the scale of G)")


def check_calculators(config: Config, structure, frames: list[Frame]) -> None:
    """Build the PDF calculator of each distinct r grid once, so that settings it refuses
    (an element without form factors, Uiso 0 for the real-space method, Q beyond the
    tables) are refused before any file is written."""
    from ..config import pdf_settings
    from ..fit.batch import fit_settings
    from ..fit.refining import check_delta2_bounds
    from ..pdf import make_calculator

    settings = pdf_settings(config)
    fsettings = fit_settings(config, structure)
    for r in {f.r.tobytes(): f.r for f in frames}.values():
        calc = make_calculator(structure.elements, structure.xyz, settings, r)
        check_delta2_bounds(calc, fsettings)


#: Motifs (with a finite Rw) the model needs to learn from.
MIN_MOTIFS = 10


def check_motif_count(n_permutable: int, config: Config) -> None:
    """Refuse a model with too few permutable atoms to make :data:`MIN_MOTIFS` distinct
    motifs (N atoms make 2^N - 1), before any fit is made."""
    if n_permutable < 63 and 2**n_permutable - 1 < MIN_MOTIFS:
        raise InputError(
            f"config key 'permute' = {list(config.permute)}: {config.structure.name} has "
            f"N = {n_permutable} permutable atom(s), which make only {2**n_permutable - 1} "
            f"distinct motif(s); at least {MIN_MOTIFS} are needed to learn from (permute "
            "more elements, or cut a larger cluster: N ≥ 4)")


def check_learning(config: Config) -> None:
    """Refuse fixed ``learn.params`` that XGBoost would reject, before any fit is done."""
    if not config.learn.params:
        return
    from ..learn.model import LearnSettings, check_params, xgb_params

    settings = LearnSettings(seed=config.learn.seed, params=config.learn.params)
    try:
        check_params(xgb_params({}, settings))
    except ValueError as exc:
        raise InputError(f"config key 'learn.params' = {dict(config.learn.params)}: {exc}") \
            from None


def catalogue_rows(config: Config, n_permutable: int) -> int:
    """Rows of the catalogue: ``catalogue.size`` (or every motif) less the fits kept for
    the extract stage; an adaptive catalogue's budget."""
    size = catalogue_size(config.catalogue.size, n_permutable)
    if config.catalogue.masks_file is None:
        size -= extract_reserve(config, n_permutable)
    return size


def round_sizes(cat: CatalogueConfig, capacity: int) -> tuple[int, int]:
    """An adaptive catalogue's round 0 and later rounds (whole batches, at least 10
    motifs in round 0)."""
    batch = cat.batch_size
    # rounds begin on batch boundaries: a work unit never spans two rounds
    first = math.ceil(max(10, cat.first_round * capacity) / batch) * batch
    later = cat.round_size or max(1, capacity // 10)
    later = math.ceil(later / batch) * batch
    return min(first, capacity), later


def catalogue_size(size: int, n_permutable: int) -> int:
    """Motifs the catalogue will hold: ``size``, or every subset when it asks for as many
    (errors are InputError)."""
    if size >= ALL_MOTIFS or (n_permutable < 63 and size >= 2**n_permutable - 1):
        if n_permutable > MAX_ENUMERATED:
            raise InputError(
                f"config key 'catalogue.size' = {_size_text(size)} asks for every one of the "
                f"2^{n_permutable} - 1 motifs of N = {n_permutable} permutable atoms; "
                f"fitting every motif is limited to N ≤ {MAX_ENUMERATED}: sample fewer motifs")
        return 2**n_permutable - 1
    return size


def _size_text(size: int) -> str:
    return "all" if size >= ALL_MOTIFS else str(size)


# -- preflight ---------------------------------------------------------------------------------


def preflight(config: Config, out_dir: Path, *, local_ranks: int = 1, until: str = "explain",
              resume: bool = False, overwrite: bool = False,
              frame_range: tuple[int, int] | None = None, lock: store.RunLock | None = None,
              dry: bool = False) -> tuple[Inputs, Previous | None]:
    """Every check a run makes before it writes anything (rank 0; errors are
    :class:`InputError`): the inputs, the output folder and its disk, the run lock and an
    existing ``motex.h5`` (resume, complete, or refused).

    The run and ``--dry-run`` both call it, so that the dry run's verdict is the run's.
    A run (``dry`` False) creates the output folder and takes ``lock``; a dry run creates
    nothing and only checks that no other job holds the lock.
    """
    inputs = load_inputs(config, local_ranks)
    check_output_dir(out_dir, create=not dry)
    check_disk(out_dir, run_file_estimate(config, inputs))
    path = out_dir / "motex.h5"
    if lock is not None:
        lock.acquire()  # before motex.h5 is even looked at
    elif dry:
        store.RunLock(path).check_free()
    previous = previous_run(path, config, resume, overwrite, frame_range, inputs.digests,
                            until=until, announce=not dry)
    return inputs, previous


def run_file_estimate(config: Config, inputs: Inputs) -> int:
    """Bytes of the finished ``motex.h5`` of ``config`` (see :func:`file_estimate`)."""
    n = inputs.space.size
    if inputs.table_rw is not None:
        return file_estimate(inputs.n_motifs, n, 1, 0, learned=inputs.n_motifs)
    size = (inputs.n_motifs if config.catalogue.masks_file is not None
            else catalogue_size(config.catalogue.size, n))
    learned = min(size, config.learn.sample) if inputs.exhaustive else size
    n_points = max(len(f.r) for f in inputs.frames)
    return file_estimate(size, n, len(inputs.frames), n_points, learned=learned)


def _existing_parent(path: Path) -> Path:
    """``path``, or its nearest ancestor that exists."""
    for folder in (path, *path.parents):
        if folder.exists():
            return folder
    return Path("/")


def check_output_dir(out_dir: Path, create: bool = True) -> None:
    """The output folder: created and checked writable (``create``), or, for a dry run,
    checked that it could be (its nearest existing ancestor is a writable folder)."""
    where = _existing_parent(out_dir)
    if not where.is_dir():
        raise InputError(f"config key 'output.dir' = {out_dir}: {where} is a file, not a "
                         "folder")
    if not create:
        if not os.access(where, os.W_OK | os.X_OK):
            raise InputError(f"config key 'output.dir' = {out_dir}: the folder is not "
                             f"writable ({where} does not allow it)")
        return
    problem = folder_problem(out_dir)
    if problem is not None:
        raise InputError(f"config key 'output.dir' = {out_dir}: the folder is not writable "
                         f"({problem})")


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
                    n_points: int, learned: int | None = None,
                    streamed: bool = False, *, config: Config | None = None,
                    elements: tuple[str, ...] = (),
                    grids: list[np.ndarray] | None = None) -> dict[str, int]:
    """Peak bytes of one fitting rank and of rank 0 (reading the data, then learning).

    Every rank: the runtime, the bit-packed catalogue (none when ``streamed``: an
    exhaustive run makes each batch's masks from its row numbers), the data, the
    parent's pair tables, and the r × Q tables of the PDF calculator and its fitter on
    each distinct r grid (``grids``, the frames' fit ranges; their sizes from
    :func:`~mlmotex_hpc.pdf.calculator.table_sizes` and ``config``). Rank 0 first reads
    the data files one at a time (:func:`~mlmotex_hpc.io.pdfdata.reading_bytes` of the
    largest); it also builds the catalogue unpacked and, while learning one frame at a
    time on ``learned`` motifs (default all), holds the features (float32), XGBoost's
    copies of them, all fits and one frame's SHAP values (float64 from XGBoost, float32
    for the file).

    Without ``config`` the tables are guessed as 8 kB per data point and reading is not
    counted.
    """
    learned = n_motifs if learned is None else learned
    packed = 0 if streamed else n_motifs * math.ceil(n_perm / 8)
    if config is None:
        tables, reading = 8 * 1024 * n_points, 0
    else:
        from ..config import pdf_settings, zoom_search
        from ..io.pdfdata import reading_bytes
        from ..pdf.calculator import table_sizes

        reading = max((reading_bytes(p) for p in config.data), default=0)
        # The r x Q tables, for each distinct r grid (built one after the other, all
        # kept): the calculator's (Debye: n_r x n_Q; real space: also n_Q x n_peak); the
        # compiled fitter's transform onto the data grid extended by the zoom range,
        # n_ext x n_Q, built through one temporary of its size; a refining fitter's
        # n_Q x n_Q normal matrix per frame and its n_r x n_Q weighted kernel while it
        # builds them; the shared zoom search's anchor and fine-zoom curves.
        settings = pdf_settings(config)
        free = set(config.fit.refine)
        fitted = free <= {"scale", "zoom", "uiso", "delta2"}  # a compiled fitter applies
        refining = bool(free & {"uiso", "delta2"})
        zlo, zhi = (float(z) for z in config.fit.zoom_bounds) if "zoom" in free else (1., 1.)
        by_grid: dict[bytes, list[np.ndarray]] = {}
        for r in grids or []:
            by_grid.setdefault(r.tobytes(), []).append(r)
        held, transient = 0, 0
        for same in by_grid.values():
            r = same[0]
            sizes = table_sizes(elements, settings, r)
            held += 8 * sizes.entries
            if not fitted or r.size < 2:
                continue
            h = (r[-1] - r[0]) / (r.size - 1)
            n_ext = (r.size + math.ceil((r[-1] * zhi / zlo - r[-1]) / h)
                     + math.ceil((r[0] - r[0] * zlo / zhi) / h) + 6)
            held += 8 * n_ext * sizes.n_q
            if refining:
                held += 8 * sizes.n_q**2 * len(same)
            if zoom_search(config) == "shared" and zhi > zlo:
                held += 8 * n_ext * 5 * (math.ceil((zhi - zlo) / 0.002 - 1e-9) + 1)
            transient = max(transient, 8 * n_ext * sizes.n_q,
                            8 * r.size * sizes.n_q if refining else 0)
        tables = held + transient
    fit_rank = (RUNTIME_BYTES + packed + 3 * 8 * n_frames * n_points
                + 12 * n_atoms**2 + tables)
    learn = (learned * n_perm * (1 + 4 * 3) + 8 * 3 * n_frames * learned
             + learned * (n_perm + 1) * (8 + 4))
    if streamed:  # the exact attributions: one block of rows and one frame's K best
        learn = max(learn, 8 * 2**16 * (n_perm + 2) * max(1, n_frames))
    rank0 = max(RUNTIME_BYTES + reading, fit_rank + learn)
    return {"fit_rank": fit_rank, "rank0": rank0}


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


def file_estimate(n_motifs: int, n_perm: int, n_frames: int, n_points: int,
                  learned: int | None = None) -> int:
    """Bytes of a finished ``motex.h5``: the catalogue (mask, size, origin, round), the
    fits (rw, scale, zoom, status), the data, the SHAP values of the ``learned`` motifs
    (default all) and the per-atom results."""
    learned = n_motifs if learned is None else learned
    return (n_motifs * (n_perm + 4 + 1 + 2) + n_frames * n_motifs * (3 * 8 + 1)
            + n_frames * learned * 4 * (n_perm + 3)
            + 16 * n_frames * n_points + 8 * 8 * n_frames * n_perm + 2**20)


def check_disk(out_dir: Path, n_bytes: int) -> None:
    """Refuse a run whose results would not fit on the output folder's file system.

    Learning works on a copy of the fit results, so about twice the file is needed.
    """
    free = shutil.disk_usage(_existing_parent(out_dir)).free
    need = 2 * n_bytes
    if need > free:
        raise InputError(
            f"config key 'output.dir' = {out_dir}: the results need about {size_text(need)} "
            f"(motex.h5 of about {size_text(n_bytes)} and its copy while learning) but "
            f"{size_text(free)} are free there"
        )


def size_text(n_bytes: float) -> str:
    """A size in the unit that shows it (``512 B``, ``3.4 MiB``, ``1.2 GiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n_bytes) < 1024 or unit == "TiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    raise AssertionError


# -- resume -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Previous:
    """What an existing ``motex.h5`` of the same config has done already."""

    batch_done: np.ndarray
    complete: bool
    #: The fits were made with other learning settings: they are kept, learning is redone.
    learn_changed: bool = False
    #: The stage a complete file went through (None: not complete).
    stage: str | None = None


def previous_run(path: Path, config: Config, resume: bool, overwrite: bool,
                 frame_range: tuple[int, int] | None = None,
                 digests: dict[str, str] | None = None, *, until: str = "explain",
                 announce: bool = True) -> Previous | None:
    """Decide between a new run and resuming one (rank 0; errors are InputError).

    An existing file of the same config is resumed (with or without ``--resume``); one of
    another config is never mixed with this one; ``overwrite`` starts afresh regardless.
    A file complete up to an earlier stage than ``until`` (``run --until fit``) is
    resumed: its fits are kept and the later stages run.
    """
    if path.exists() and not path.is_file():
        raise InputError(f"{path} is a {'folder' if path.is_dir() else 'special file'}, not "
                         "a results file: remove it, or use another output.dir (--out)")
    if overwrite:
        return None
    if not path.exists():
        if resume and announce:  # a requeued job's first start: nothing to resume yet
            print(f"mlmotex-hpc: --resume: no {path} yet, starting a new run", flush=True)
        return None
    found = store.probe(path)
    if found.batch_done is None or found.config_hash is None:
        raise InputError(f"{path} is not the motex.h5 of an mlmotex-hpc run; use --overwrite "
                         "or another output.dir")
    learn_changed = False
    if found.config_hash != store.config_hash(config.source):
        learn_changed = found.fits_hash == store.fits_hash(config.source)
    if found.config_hash != store.config_hash(config.source) and not learn_changed:
        raise InputError(
            f"{path} holds a run of a different config: results of two configs are never "
            "mixed; use another output.dir, or --overwrite to discard that run"
        )
    if found.frame_range != (None if frame_range is None else tuple(frame_range)):
        held = ("all frames" if found.frame_range is None
                else "frames {}:{}".format(*found.frame_range))
        raise InputError(f"{path} holds {held} of this config's series, not the frames "
                         "asked for; use another output folder (--out) or --overwrite")
    if found.digests is not None and digests is not None and found.digests != digests:
        raise InputError(changed_inputs(path, config, found.digests, digests))
    return Previous(found.batch_done.astype(bool), found.finished(until) and not learn_changed,
                    learn_changed, stage=found.stage)
