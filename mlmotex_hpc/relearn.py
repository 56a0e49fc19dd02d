"""``mlmotex-hpc learn OUT/motex.h5``: steps 3-4 again on finished fits, on any ranks.

New learning settings (``--search-iterations``, ``--cv-folds``, ``--seed``), no refitting.
The run's config (stored in the file) supplies the structure and the motif definition;
the new settings are recorded in ``/ml`` (attribute ``settings``), while the file's
``config`` attribute stays the run's, so ``mlmotex-hpc run`` still recognises it.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import h5py
import numpy as np

from .config import Config
from .errors import InputError
from .refine import read_run, run_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", help="motex.h5 of a run whose fits are finished")
    parser.add_argument("--search-iterations", type=int, metavar="K",
                        help="hyperparameter search evaluations (0: XGBoost defaults)")
    parser.add_argument("--cv-folds", type=int, metavar="K", help="cross-validation folds")
    parser.add_argument("--seed", type=int, help="seed of the split, folds and search")
    parser.add_argument("--until", choices=("learn", "explain"), default="explain",
                        help="last stage to run (default: explain)")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")


def _check(config: Config, path: Path, args: argparse.Namespace) -> tuple[Config, float]:
    """The run's config with the new learning settings, and its fit rate (rank 0)."""
    with h5py.File(path, "r") as h5:
        done = h5["fits/batch_done"][:]
        fits_per_second = float(h5["timings"].attrs.get("fits_per_second", np.nan)) \
            if "timings" in h5 else np.nan
    if not done.all():
        raise InputError(
            f"{path}: {int((~done.astype(bool)).sum())} of {done.size} fit batches are not "
            "finished; run 'mlmotex-hpc run' with its config to finish them first"
        )
    changes = {k: getattr(args, k) for k in ("search_iterations", "cv_folds", "seed")
               if getattr(args, k) is not None}
    for key, value in changes.items():
        if value < 0 or (key == "cv_folds" and value < 2):
            raise InputError(f"--{key.replace('_', '-')} = {value}: out of range")
    learn = dataclasses.replace(config.learn, **changes)
    return dataclasses.replace(config, learn=learn), fits_per_second


def main(args: argparse.Namespace) -> int:
    from .output.results import learn_stage, write_outputs
    from .parallel.comm import abort_on_error, get_comm, root_then_bcast, wait_idle
    from .parallel.driver import Log, finish_on_copy, load_inputs

    comm = get_comm()
    path = Path(args.results).resolve()
    log = Log(comm, quiet=args.quiet)
    t0 = time.perf_counter()

    def prepare():
        run = read_run(path)
        config, fits_per_second = _check(run_config(run), path, args)
        inputs = load_inputs(config, None)  # structure, motif space, data: as the run had
        return config, inputs, fits_per_second

    config, inputs, fits_per_second = root_then_bcast(prepare, comm)
    log(f"mlmotex-hpc learn: {inputs.n_motifs} motifs of {path}, {comm.size} rank(s)")
    with abort_on_error(comm):
        timings = {"fits_per_second": fits_per_second, "fit": 0.0}
        finish_on_copy(
            path,
            lambda h5: learn_stage(h5, config, args.until, timings, log, comm),
            lambda h5, metrics: write_outputs(
                h5, inputs, path.parent, until=args.until, timings=timings,
                n_ranks=comm.size, t_start=t0, log=log, metrics=metrics, config=config,
            ),
            comm,
        )
        wait_idle(comm)
    return 0
