"""The stage order of a run: inputs -> fit -> learn -> explain -> outputs.

:func:`run` serves 1 rank and 256; every rank of the communicator calls it.

1. Inputs (rank 0): every input checked, the catalogue built, memory and disk checked,
   the resume decision made; the result is broadcast (:mod:`.inputs`).
2. Fit: work units on demand over the ranks, results into ``motex.h5``
   (:mod:`mlmotex_hpc.parallel.fitting`).
3-4. Learn and explain, on a copy of the file that replaces it when they are done
   (:func:`mlmotex_hpc.store.finish_on_copy`), frames side by side on groups of
   ranks (:mod:`mlmotex_hpc.parallel.learning`); then the answer of each frame:
   labels, connected pieces, polishing by real fits (:mod:`.extract`). An exhaustive
   run first computes the exact attributions from every fit and learns from a sample
   of its motifs (:mod:`.exact`).
5. Outputs (rank 0, the finished file): CSV, motifs, structure files, figures, report
   (:mod:`mlmotex_hpc.output.summary`).

:func:`learn` is steps 3-5 again on the finished fits of a run. Each stage is a function
of its own, so that later work can call them in another order (fit, learn, sample more,
fit again).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..config import Config
from ..errors import InputError
from ..fit.batch import Inputs, fit_plan, frame_blocks
from ..learn.model import LearnSettings
from ..parallel.comm import cores_per_rank, get_comm, inject_fault, root_node_ranks, wait_idle
from ..parallel.exits import abort_on_error, agreed, root_then_bcast
from ..parallel.fitting import run_fits
from ..parallel.learning import learn_and_explain
from ..parallel.log import Log
from ..store import RunFile, RunLock, announce_fallback, finish_on_copy
from .adaptive import adaptive_rounds
from .exact import choose_learning_rows, exact_stage
from .extract import extract_plan, extract_stage
from .inputs import Previous, catalogue_rows, preflight, round_sizes


def run(
    config: Config,
    comm=None,
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
    comm : MPI communicator, optional
        ``COMM_WORLD`` when None.
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
        On rank 0 the summary (see :func:`mlmotex_hpc.output.summary.write_outputs`);
        None on the other ranks, and when the run was complete already.
    """
    comm = get_comm(comm)
    out_dir = Path(out_dir or config.output.dir)
    path = out_dir / "motex.h5"
    log = Log(comm, quiet=quiet)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    local_ranks = root_node_ranks(comm)
    lock = RunLock(path)  # taken by rank 0, for the job's whole life

    def check_inputs() -> tuple[Inputs, Previous | None]:
        inject_fault("inputs")
        return preflight(config, out_dir, local_ranks=local_ranks, until=until,
                         resume=resume, overwrite=overwrite, frame_range=frame_range,
                         lock=lock)

    try:
        inputs, previous = root_then_bcast(check_inputs, comm)
        for note in config.notes:  # after the inputs passed: a bad input's error stands alone
            log.warning(note)
        timings["catalogue"] = time.perf_counter() - t0
        log(f"mlmotex-hpc: {inputs.n_motifs} motifs over N = {inputs.space.size} "
            f"permutable atoms, {len(inputs.frames)} frame(s), {comm.size} rank(s)")
        if previous is not None and previous.complete:
            log(f"{path} is complete for this config: nothing to do (--overwrite runs it "
                "again; `mlmotex-hpc learn` learns again with other settings)")
            return None
        if previous is not None and previous.stage is not None and not previous.complete \
                and not previous.learn_changed:
            log(f"{path} was finished up to stage {previous.stage}: its fits are kept and "
                f"the run goes on to {until}")
        if previous is not None and previous.learn_changed:
            log(f"{path}: only the learn settings changed: its fits are kept and learning "
                "is done again")
        announce_fallback(comm)

        with abort_on_error(comm):
            fit_stage(config, inputs, previous, path, comm, log, timings, frame_range)
            summary = finish_on_copy(
                path, comm,
                lambda run_file: learn_stage(run_file, config, until, timings, log, comm,
                                             inputs),
                lambda run_file, metrics: output_stage(
                    run_file, config, inputs, out_dir, until, timings, comm.size, t0, log,
                    metrics),
                stage=until,
            )
            wait_idle(comm)
        return summary
    finally:
        lock.release()


def fit_stage(config: Config, inputs: Inputs, previous: Previous | None, path: Path, comm,
              log: Callable, timings: dict, frame_range: tuple[int, int] | None = None) -> int:
    """Step 2 (every rank): create or reopen ``motex.h5`` and fit its pending work units;
    the number of fits done. Fills ``timings`` (fit, fits_per_second)."""
    plan = fit_plan(config, inputs.structure)
    n_frames = len(inputs.frames)
    adaptive = config.catalogue.strategy == "adaptive"
    # an adaptive catalogue's file holds its whole budget; round 0 is drawn
    capacity = catalogue_rows(config, inputs.space.size) if adaptive else inputs.n_motifs
    n_batches = math.ceil(capacity / plan.batch_size)
    max_rounds = 1
    if adaptive:
        first, later = round_sizes(config.catalogue, capacity)
        max_rounds = 1 + math.ceil(max(0, capacity - first) / later)
    n_fblocks = len(frame_blocks(n_frames, plan.frame_block))
    if previous is None:
        run_file = None
        try:
            with agreed(comm):
                try:
                    run_file = RunFile.create(
                        path, comm, config_text=config.source, config_dir=str(config.base),
                        n_frames=n_frames, n_motifs=capacity, n_drawn=inputs.n_motifs,
                        n_permutable=inputs.space.size, n_batches=n_batches,
                        batch_size=plan.batch_size, frame_block=plan.frame_block or n_frames,
                        refined_extra=plan.extra, frame_range=frame_range,
                        input_digests=inputs.digests,
                        max_rounds=max_rounds, exhaustive=inputs.exhaustive,
                        fits_table="" if config.fits is None else config.fits.name,
                    )
                    run_file.collective_write_inputs(
                        elements=inputs.structure.elements, xyz=inputs.structure.xyz,
                        permutable=inputs.space.permutable,
                        frame_names=[f.name for f in inputs.frames],
                        frames=[(f.r, f.g) for f in inputs.frames],
                        masks=lambda: _mask_blocks(inputs),  # made by the rank that writes
                        times=config.frames.time, time_unit=config.frames.time_unit,
                        sites=inputs.structure.sites,
                    )
                except (OSError, RuntimeError, ValueError) as exc:  # a full disk, a quota
                    raise InputError(
                        f"cannot create {path} ({getattr(exc, 'strerror', None) or exc}); "
                        "nothing was fitted: free some space (or raise the quota) and run "
                        "again") from None
        except Exception:
            if run_file is not None:
                run_file.close_quietly()
            raise
        run_file.collective_publish()
        pending = np.arange(n_batches * n_fblocks)
    else:
        run_file = RunFile.open(path, "r+", comm)
        pending = np.flatnonzero(~previous.batch_done.ravel())
        n_units = n_batches * n_fblocks
        log(f"resuming {path}: {n_units - pending.size} of {n_units} work units done")
    if adaptive:
        log(f"step 2: an adaptive catalogue of up to {capacity:,} motifs "
            f"({config.pdf.calculator}), round 0 uniform")
    elif pending.size and inputs.table_rw is None:
        log(f"step 2: fitting {inputs.n_motifs * n_frames} motif PDFs "
            f"({config.pdf.calculator})")
    t_fit = time.perf_counter()
    if inputs.table_rw is not None:
        run_file.collective_write_table_fits(inputs.table_rw)
        run_file.close()
        wait_idle(comm)
        log(f"step 2: {inputs.n_motifs} fits read from {config.fits.name} (none made)")
        timings["fit"] = time.perf_counter() - t_fit
        timings["fits_per_second"] = float("nan")
        return 0
    compiling = 0.0
    try:
        if adaptive:
            n_fits, _ = adaptive_rounds(config.catalogue, config.extract.label_z, inputs,
                                        plan, run_file, comm, log,
                                        None if previous is None else previous.batch_done)
        else:
            n_fits, compiling = run_fits(inputs, plan, run_file, comm, log, pending)
    finally:  # every rank: run_fits returns, or raises, on all of them together
        run_file.close()
    timings["fit"] = time.perf_counter() - t_fit
    # the rate leaves out the kernels' compiling (or loading), so that a first run on a
    # fresh machine reports what a warm one does; the compiling is said on its own
    fitting = max(timings["fit"] - compiling, 1e-9)
    timings["fits_per_second"] = n_fits / fitting
    log(f"  {n_fits} fits in {fitting:.1f} s "
        f"({timings['fits_per_second']:,.0f} fits/s on {comm.size} rank(s))"
        + (f", after {compiling:.0f} s preparing the kernels" if compiling >= 0.5 else ""))
    return n_fits


#: Rows of an exhaustive catalogue written at a time when the file is made.
MASK_BLOCK = 2**16


def _mask_blocks(inputs: Inputs):
    """The catalogue for the file: all at once, or an exhaustive one block by block."""
    if not inputs.exhaustive:
        return inputs.masks()
    return ((start, inputs.masks(start, start + MASK_BLOCK))
            for start in range(0, inputs.n_motifs, MASK_BLOCK))


def learn_settings(config: Config, comm) -> LearnSettings:
    """The config's learning settings; XGBoost gets this rank's share of its node's cores."""
    lc = config.learn
    return LearnSettings(
        test_fraction=lc.test_fraction, cv_folds=lc.cv_folds,
        search_iterations=lc.search_iterations, search=lc.search, seed=lc.seed,
        params=lc.params, n_jobs=cores_per_rank(comm), series_search=lc.series_search,
        search_frames=lc.search_frames, shap=lc.shap, shap_target=lc.shap_target,
    )


def learn_stage(run_file: RunFile, config: Config, until: str, timings: dict, log: Callable,
                comm, inputs: Inputs | None = None) -> dict:
    """Steps 3-4 and the extract stage (every rank, on the learning copy): fills
    ``timings`` (learn, explain, extract) and returns the first frame's test metrics for
    the summary. Without ``inputs`` the extract stage is skipped."""
    run_file.collective_trim()  # an adaptive catalogue's rows never drawn
    run_file.collective_set_config(config.source)  # the learn settings used
    if until == "fit":
        return {}
    if run_file.shared(lambda run: run.exhaustive):
        exact_stage(run_file, config.exact.best, comm, log, timings)
        choose_learning_rows(run_file, config.learn.sample, config.learn.seed, log)
    inject_fault("learn", comm)
    result = learn_and_explain(run_file, learn_settings(config, comm), until, log, comm)
    timings["learn"] = result["learn"]
    timings["explain"] = result["explain"]
    if until == "explain" and inputs is not None:
        inject_fault("extract", comm)
        extract_stage(run_file, extract_plan(config, inputs), inputs, comm, log, timings)
    return {"test_mae": float(np.atleast_1d(result["metrics"]["test_mae"])[0]),
            "test_r2": float(np.atleast_1d(result["metrics"]["test_r2"])[0])}


def output_stage(run_file: RunFile, config: Config, inputs: Inputs, out_dir: Path, until: str,
                 timings: dict, n_ranks: int, t_start: float, log: Callable,
                 metrics: dict | None = None) -> dict:
    """Step 5 (rank 0, the finished copy open): every output file; the summary."""
    from ..output.products import output_plan  # matplotlib and shap: rank 0 only
    from ..output.summary import write_outputs

    inject_fault("outputs")

    return write_outputs(run_file, output_plan(config, inputs.structure), inputs.structure,
                         inputs.space, out_dir,
                         until=until, timings=timings, n_ranks=n_ranks, t_start=t_start,
                         log=log, metrics=metrics)


def learn(path: Path, config: Config, inputs: Inputs, comm=None, *, until: str = "explain",
          fits_per_second: float = float("nan"), quiet: bool = False) -> dict | None:
    """Steps 3-5 again on the finished fits in ``path``, with ``config``'s learning
    settings (every rank calls it; ``inputs`` as :func:`load_inputs` gave them)."""
    comm = get_comm(comm)
    log = Log(comm, quiet=quiet)
    t0 = time.perf_counter()
    log(f"mlmotex-hpc learn: {inputs.n_motifs} motifs of {path}, {comm.size} rank(s)")
    timings = {"fits_per_second": fits_per_second, "fit": 0.0}
    with abort_on_error(comm):
        summary = finish_on_copy(
            path, comm,
            lambda run_file: learn_stage(run_file, config, until, timings, log, comm,
                                         inputs),
            lambda run_file, metrics: output_stage(
                run_file, config, inputs, path.parent, until, timings, comm.size, t0, log,
                metrics),
            stage=until,
        )
        wait_idle(comm)
    return summary
