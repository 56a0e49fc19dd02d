"""``mlmotex-hpc run CONFIG --dry-run``: what a run would cost, measured, before it runs.

Reads and checks every input exactly as a run does, builds the catalogue, then fits a
short sample of its motifs with the real compiled kernels (which also fills the numba
cache for the job to come) and prints the catalogue size, the pairs per motif, the fits
per core-second, the memory estimate and the fit stage's walltime on ``--ranks`` ranks.
Steps 3-4 are estimated from a measured XGBoost training and TreeSHAP pass on the
catalogue's own mask features, scaled by the settings (a rough guide: the trees a model
needs depend on the fits, which a dry run does not make).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np

from ..config import Config, extract_reserve
from ..fit.batch import fit_plan, make_fit_groups
from ..fit.fitter import fit_motif
from .inputs import (
    Previous,
    catalogue_rows,
    memory_estimate,
    node_memory,
    preflight,
    run_file_estimate,
)

SAMPLE = 200
#: Trees assumed per early-stopped model when estimating steps 3-4 (the shipped cases
#: need 60-400).
ASSUMED_TREES = 200


def _sample_rate(inputs, config: Config, sample: np.ndarray) -> tuple[float, list[int]]:
    """Fits per core-second on ``sample`` (motif indices), and each motif's pair count."""
    plan = fit_plan(config, inputs.structure)
    fsettings = plan.fit
    groups = make_fit_groups(inputs, plan.pdf, fsettings)
    masks = inputs.space.atom_masks(np.concatenate([inputs.masks(i, i + 1) for i in sample]))
    pairs = [groups[0].calc.prepare(m).n_pairs for m in masks]
    cpu, fits = 0.0, 0
    for group in groups:
        if group.fast is not None:
            group.fast.fit(masks[:2])  # compile, or load the numba cache
            start = time.process_time()
            group.fast.fit(masks)
            fits += len(masks) * len(group.frames)
        else:
            few = masks[: max(2, len(masks) // 10)]
            start = time.process_time()
            for mask in few:
                motif = group.calc.prepare(mask)
                for f in group.frames:
                    frame = inputs.frames[f]
                    fit_motif(group.calc, motif, frame.g, fsettings, frame.weights, config.uiso)
            fits += len(few) * len(group.frames)
        cpu += time.process_time() - start
    return fits / max(cpu, 1e-9), pairs


def dry_run(config: Config, ranks: int, out_dir: Path | None = None, *,
            until: str = "explain", resume: bool = False, overwrite: bool = False,
            frame_range: tuple[int, int] | None = None) -> str:
    """The dry-run report (rank 0): the run's own preflight (:func:`preflight`, so a run
    refuses nothing the dry run passed), then the costs measured on a sample."""
    out_dir = Path(out_dir or config.output.dir)
    inputs, previous = preflight(config, out_dir, local_ranks=_ranks_here(ranks),
                                 until=until, resume=resume, overwrite=overwrite,
                                 frame_range=frame_range, dry=True)
    state = _state(out_dir / "motex.h5", previous, overwrite)
    n_motifs, n_frames = inputs.n_motifs, len(inputs.frames)
    if inputs.table_rw is not None:
        return _table_dry_run(config, inputs, ranks, out_dir, state)
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(n_motifs, size=min(SAMPLE, n_motifs), replace=False))
    rate, pairs = _sample_rate(inputs, config, sample)
    fits = n_motifs * n_frames
    wall = fits / (rate * ranks)
    every = inputs.exhaustive
    learned = min(n_motifs, config.learn.sample) if every else None
    n_points = max(len(f.r) for f in inputs.frames)
    mem = memory_estimate(n_motifs, inputs.space.size, len(inputs.structure.elements),
                          n_frames, n_points, learned=learned, streamed=every, config=config,
                          elements=tuple(inputs.structure.elements),
                          grids=[f.r for f in inputs.frames])
    size = run_file_estimate(config, inputs)
    batch = fit_plan(config, inputs.structure).batch_size
    gib = 2**30
    reserve = extract_reserve(config, inputs.space.size)
    adaptive = config.catalogue.strategy == "adaptive"
    if adaptive:
        capacity = catalogue_rows(config, inputs.space.size)
        head = (f"catalogue       adaptive: up to {capacity:,} motifs over N = "
                f"{inputs.space.size} permutable atoms, round 0 {n_motifs:,} uniform "
                f"({len(inputs.structure.elements)} atoms in the model)")
        n_motifs = capacity  # the estimates below: the whole budget
        fits = n_motifs * n_frames
        wall = fits / (rate * ranks)
    elif every:
        head = (f"catalogue       every motif: all {n_motifs:,} = 2^{inputs.space.size} - 1 "
                f"over N = {inputs.space.size} permutable atoms, streamed "
                f"({len(inputs.structure.elements)} atoms in the model); steps 3-4 on a "
                f"random catalogue of {learned:,} of them (learn.sample), exact Shapley "
                "values from all")
    else:
        head = (f"catalogue       {n_motifs} distinct motifs over N = {inputs.space.size} "
                f"permutable atoms ({len(inputs.structure.elements)} atoms in the model)")
    lines = [
        head,
        f"extract stage   up to {reserve:,} fits of catalogue.size kept for connected pieces "
        "and polishing" if reserve else
        "extract stage   no fits (every motif is fitted: polishing looks them up)" if every
        else "extract stage   no fits (nothing to polish)",
        f"frames          {n_frames}, so {fits:,} fits",
        f"pairs per motif min {min(pairs):,}, mean {np.mean(pairs):,.0f}, max {max(pairs):,} "
        f"(sample of {len(sample)})",
        f"fit speed       {rate:,.0f} fits per core-second ({config.pdf.calculator}, "
        f"refine {', '.join(config.fit.refine)}; measured on the sample)",
        f"fit walltime    {_duration(wall)} on {ranks} rank(s) "
        f"(batches of {batch}: {math.ceil(n_motifs / batch):,} batches)",
        f"memory          {mem['fit_rank'] / gib:.2f} GiB per rank while fitting, "
        f"{mem['rank0'] / gib:.2f} GiB on rank 0 while learning "
        f"({node_memory() / gib:.1f} GiB available here)",
        f"output          {out_dir / 'motex.h5'}: {state}; "
        f"about {_bytes(size)} when finished (twice that while learning, on its copy)",
    ]
    learning, line = _learning(config, inputs, ranks, learned)
    lines += [line, walltime_line(wall + learning)]
    return "\n".join(lines)


def _table_dry_run(config: Config, inputs, ranks: int, out_dir: Path, state: str) -> str:
    """The dry run of a config that names ``fits:``: nothing to fit, steps 3-4 to do."""
    rw = np.asarray(inputs.table_rw, dtype=float)
    finite = rw[np.isfinite(rw)]
    rw_range = (f"Rw {finite.min():.4f} to {finite.max():.4f}" if finite.size
                else "no finite Rw")
    size = run_file_estimate(config, inputs)
    return "\n".join([
        f"fits table      {config.fits}: {inputs.n_motifs:,} motifs over N = "
        f"{inputs.space.size} permutable atoms of {len(inputs.structure.elements)} "
        f"({rw_range}); no fits are made",
        f"output          {out_dir / 'motex.h5'}: {state}; "
        f"about {_bytes(size)} when finished",
        *_learning_with_advice(config, inputs, ranks),
    ])


def _learning_with_advice(config: Config, inputs, ranks: int) -> list[str]:
    seconds, line = _learning(config, inputs, ranks)
    return [line, walltime_line(seconds)]


def _bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def _learning(config: Config, inputs, ranks: int, learned: int | None = None
              ) -> tuple[float, str]:
    """Steps 3-4's walltime on ``ranks`` ranks (seconds, and the report's line):
    XGBoost's cost per tree and row and TreeSHAP's per tree and motif, measured here on
    the catalogue's features, times the trainings and motifs the settings ask for, at
    :data:`ASSUMED_TREES` trees a model."""
    import xgboost as xgb

    from ..learn.explain import FIRST_CHECK, shap_values
    from ..learn.model import BASE_PARAMS, WARM_START, features

    lc = config.learn
    n_motifs, n_frames = learned or inputs.n_motifs, len(inputs.frames)
    rows = min(n_motifs, 4000)
    X = features(inputs.masks(0, rows))
    rng = np.random.default_rng(0)
    y = X[:, :-1] @ rng.normal(0.0, 0.01, X.shape[1] - 1) + rng.normal(0.0, 0.002, rows)
    trees = 50
    params = {**BASE_PARAMS, **WARM_START, "nthread": 1, "seed": 0}
    start = time.perf_counter()
    booster = xgb.train(params, xgb.QuantileDMatrix(X, label=y, nthread=1), trees)
    per_tree_row = (time.perf_counter() - start) / (trees * rows)
    start = time.perf_counter()
    shap_values(booster, X[:1000], n_jobs=1)
    per_tree_motif = (time.perf_counter() - start) / (trees * min(rows, 1000))
    n_train = 0.8 * n_motifs
    searching = not lc.params and lc.search_iterations > 0
    searches = 0 if not searching else (
        1 if n_frames > 1 and lc.series_search == "shared" else n_frames)
    frames_searched = min(lc.search_frames, n_frames) if searches == 1 and n_frames > 1 else 1
    folds = lc.cv_folds
    search = (searches * lc.search_iterations * folds * frames_searched
              * n_train * (folds - 1) / folds * ASSUMED_TREES * per_tree_row / ranks)
    final = n_frames * n_train * ASSUMED_TREES * per_tree_row / min(ranks, n_frames)
    explained = n_motifs if lc.shap == "all" else min(
        n_motifs, 4 * FIRST_CHECK)
    explain = n_frames * explained * ASSUMED_TREES * per_tree_motif / ranks
    shap_note = "every motif" if lc.shap == "all" else f"about {explained:,} motifs a frame"
    total = search + final + explain
    return total, (f"steps 3-4       about {_duration(total)} on {ranks} rank(s) "
                   f"(search {_duration(search)}, final models {_duration(final)}, SHAP "
                   f"{_duration(explain)} on {shap_note}; rough: measured per tree here, "
                   f"{ASSUMED_TREES} trees a model assumed)")


#: The walltime to ask for: the estimates times this, plus :data:`WALLTIME_MARGIN` s.
WALLTIME_FACTOR = 1.5
WALLTIME_MARGIN = 600.0


def time_limit(seconds: float) -> str:
    """A job's time limit in the form SLURM's ``--time`` (and PBS's ``walltime``) take,
    whole minutes rounded up: ``H:MM:00``, or ``D-HH:MM:00`` from a day on."""
    minutes = max(1, math.ceil(seconds / 60))
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    return f"{days}-{hours:02d}:{minutes:02d}:00" if days else f"{hours}:{minutes:02d}:00"


def walltime_line(estimate: float) -> str:
    """The dry run's advice: the time limit to ask the scheduler for."""
    limit = time_limit(WALLTIME_FACTOR * estimate + WALLTIME_MARGIN)
    return (f"ask for         --time={limit} (sbatch; qsub: -l walltime={limit}): the "
            f"estimates × {WALLTIME_FACTOR:g}, plus {WALLTIME_MARGIN / 60:.0f} min for "
            "start-up, compiling the kernels and the outputs")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _ranks_here(ranks: int) -> int:
    """The ranks a run on ``ranks`` ranks would put on one node, for the memory check:
    as many as this machine has cores, at most."""
    return max(1, min(ranks, os.cpu_count() or 1))


def _state(path: Path, previous: Previous | None, overwrite: bool) -> str:
    """What the run would do with ``path``, as the preflight decided."""
    if previous is None:
        return "exists, replaced (--overwrite)" if overwrite and path.exists() else "new run"
    if previous.complete:
        return "complete (a run would do nothing; --overwrite redoes it)"
    if previous.learn_changed:
        return "its fits are kept; only the learn settings changed, so a run learns again"
    if previous.stage is not None:
        return f"finished up to stage {previous.stage}; a run keeps its fits and goes on"
    done = previous.batch_done
    return f"exists, {int(done.sum())} of {done.size} batches done (a run resumes it)"
