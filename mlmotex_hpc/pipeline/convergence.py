"""``mlmotex-hpc convergence``: how many motifs ML-MotEx needs, from an exhaustive run.

Every rank calls :func:`convergence`. Rank 0 reads the table's Rw, the exact Shapley
values and the global best; the trials (catalogue size × seed) are dealt over the ranks,
largest first, each trial on its rank's cores; rank 0 gathers them, writes
``/convergence`` into the run's file, ``convergence.csv`` and ``convergence.png``, and
draws the run's outputs again so that the report holds the table. A trial depends only
on its size and seed, so the results are the same for any number of ranks.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.folders import make_folder
from ..learn.convergence import FIELDS, AdaptiveSettings, Trial, adaptive_rows, trial
from ..parallel.comm import bcast_array, cores_per_rank, gather_to_root, get_comm, my_tasks
from ..parallel.exits import abort_on_error, root_then_bcast
from ..parallel.log import Log
from ..store import RunFile
from .exact import learning_rows
from .run import learn_settings

#: Catalogue sizes tried by default (those beyond the table are left out).
SIZES = (100, 1_000, 10_000, 100_000)
#: Adaptive catalogues are tried up to this size (each round trains a model).
ADAPTIVE_MAX = 20_000


def _read(path: Path, frame: int, out_dir: Path) -> tuple:
    """Rank 0: what every trial needs from the finished exhaustive run; the places the
    results go checked writable before any trial."""
    if path.is_file() and not os.access(path, os.W_OK):
        raise InputError(f"{path} is not writable: convergence records its table in it")
    with RunFile.read(path) as run:
        if not run.exhaustive:
            raise InputError(f"{path} is not an exhaustive run: convergence needs every motif "
                             "fitted (catalogue.size: all)")
        if not run.has_exact():
            raise InputError(f"{path} holds no exact Shapley values yet: finish the run "
                             f"(or run `mlmotex-hpc learn {path}`) first")
        if not 0 <= frame < run.n_frames:
            raise InputError(f"--frame {frame}: {path} holds frames 0 to {run.n_frames - 1}")
        config = run.config()
        make_folder(out_dir)
        return (config, run.n_table, run.atoms("shapley", frame),
                float(run.best()["rw"][frame, 0]), run.fits("rw", frame, every=True))


def convergence(path: Path, sizes: tuple[int, ...] = SIZES, seeds: int = 3, frame: int = 0,
                out_dir: Path | None = None, comm=None, quiet: bool = False,
                adaptive: bool = True) -> list[Trial]:
    """Run the trials; rank 0 returns them (sorted by size and seed), the others []."""
    comm = get_comm(comm)
    log = Log(comm, quiet=quiet)
    held: dict = {}

    def read():
        *small, held["rw"] = _read(path, frame, Path(out_dir or path.parent))
        return small

    config, n_rows, shapley, global_rw = root_then_bcast(read, comm)
    rw = bcast_array(held.get("rw"), comm)
    n = shapley.size
    wanted = sorted({min(s, n_rows) for s in sizes if s >= 10})
    if not wanted:
        raise InputError("--sizes: every catalogue needs at least 10 motifs")
    tasks = [(strategy, size, seed) for size in sorted(wanted, reverse=True)
             for strategy in ("random", "adaptive")
             if strategy == "random" or (adaptive and size <= ADAPTIVE_MAX)
             for seed in range(seeds)]
    cat = config.catalogue
    how = AdaptiveSettings(cat.first_round, cat.round_size, cat.explore, cat.stable_rounds,
                           config.extract.label_z)
    settings = learn_settings(config, comm)
    log(f"convergence: {len(tasks)} catalogues ({', '.join(f'{s:,}' for s in wanted)} motifs "
        f"× {seeds} seeds, random" + (f" and adaptive up to {ADAPTIVE_MAX:,}" if adaptive
                                     else "") + f") from the {n_rows:,} motifs of {path}, "
        f"frame {frame}, on "
        f"{comm.size} rank(s) with {cores_per_rank(comm)} core(s) each")
    mine = []
    t0 = time.perf_counter()
    with abort_on_error(comm):
        for k in my_tasks(len(tasks), comm):
            strategy, size, seed = tasks[k]
            # catalogues of one size: seeds 0, 1, ... as a user would draw them
            uniform, rounds = None, 1
            if strategy == "random":
                rows = learning_rows(n, size, seed)
            else:
                rows, uniform, rounds = adaptive_rows(n, size, seed, rw, how, settings.n_jobs)
                order = np.argsort(rows)
                rows, uniform = rows[order], uniform[order]
            result = trial(rows, rw, shapley, global_rw, size, seed,
                           _with_seed(settings, seed), uniform, rounds, strategy)
            mine.append(result)
            print(f"  {strategy:>8} {size:>9,} motifs, seed {seed}: ACV signs "
                  f"{100 * result.sign_agreement:5.1f} % right, Spearman "
                  f"{result.spearman:.3f}, best Rw {result.best_rw:.4f} (global "
                  f"{global_rw:.4f}), {result.seconds:.1f} s", flush=True)
        gathered = gather_to_root(mine, comm)
    if gathered is None:  # not rank 0
        return []
    trials = sorted(gathered, key=lambda t: (t.strategy, t.size, t.seed))
    out_dir = Path(out_dir or path.parent)
    write_results(path, out_dir, trials, frame, log)
    log(f"convergence: {len(trials)} catalogues in {time.perf_counter() - t0:.1f} s")
    return trials


def _with_seed(settings, seed: int):
    import dataclasses

    return dataclasses.replace(settings, seed=seed)


def write_results(path: Path, out_dir: Path, trials: list[Trial], frame: int,
                  log: Callable) -> None:
    """Rank 0: ``/convergence`` in the file, the CSV and the figure, the outputs again."""
    from ..output.plots import convergence_figure
    from ..output.summary import redraw

    table = np.array([t.row() for t in trials], dtype=float)
    with RunFile.read(path, "r+") as run:
        run.write_convergence(table, FIELDS, frame)
    make_folder(out_dir)
    with open(out_dir / "convergence.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(FIELDS)
        for t in trials:
            writer.writerow([f"{v:.6g}" if isinstance(v, float) else int(v) for v in t.row()])
    convergence_figure(out_dir / "convergence.png", table, FIELDS)
    log(f"wrote {out_dir / 'convergence.csv'} and {out_dir / 'convergence.png'}")
    redraw(path, None, out_dir, log=lambda m: None)
    log(f"wrote the run's outputs again (report.html holds the table) in {out_dir}")
