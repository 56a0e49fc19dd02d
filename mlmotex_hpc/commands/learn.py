"""``mlmotex-hpc learn OUT/motex.h5``: steps 3-4 again on finished fits, on any ranks.

New learning settings (``--search``, ``--search-iterations``, ``--cv-folds``, ``--seed``,
``--series-search``, ``--shap``, ``--shap-target``), no refitting.
The run's config (stored in the file) supplies the structure and the motif definition;
the new settings are recorded in ``/ml`` (attribute ``settings``), while the file's
``config`` attribute stays the run's, so ``mlmotex-hpc run`` still recognises it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "rerun steps 3-4 on the finished fits of a run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", help="motex.h5 of a run whose fits are finished")
    parser.add_argument("--search-iterations", type=int, metavar="K",
                        help="hyperparameter search evaluations (0: XGBoost defaults)")
    parser.add_argument("--cv-folds", type=int, metavar="K", help="cross-validation folds")
    parser.add_argument("--seed", type=int, help="seed of the split, folds and search")
    parser.add_argument("--search", choices=("fast", "full"),
                        help="fast: trees by early stopping, poor candidates stop early; "
                             "full: ML-MotEx's search (trees searched, every fold)")
    parser.add_argument("--series-search", choices=("shared", "per_frame"),
                        help="a series: one search for all frames, or one per frame")
    parser.add_argument("--shap", choices=("auto", "all"),
                        help="SHAP on a sample until the ACVs are known well enough (auto), "
                             "or on every motif (all)")
    parser.add_argument("--shap-target", type=float, metavar="F",
                        help="largest ACV standard error, as a fraction of the largest |ACV|")
    parser.add_argument("--until", choices=("learn", "explain"), default="explain",
                        help="last stage to run (default: explain)")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")


def _prepare(path: Path, args: argparse.Namespace):
    """The run's config with the new learning settings, its inputs and its fit rate
    (rank 0; errors are InputError)."""
    import dataclasses

    import numpy as np

    from ..errors import InputError
    from ..pipeline.inputs import load_inputs
    from ..store import RunFile

    with RunFile.read(path) as run:
        config = run.config()
        done = run.batch_done()
        fits_per_second = float(run.timings().get("fits_per_second", np.nan))
    if not done.all():
        raise InputError(
            f"{path}: {int((~done).sum())} of {done.size} fit batches are not "
            "finished; run 'mlmotex-hpc run' with its config to finish them first"
        )
    keys = ("search_iterations", "cv_folds", "seed", "search", "series_search", "shap",
            "shap_target")
    changes = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    for key, value in changes.items():
        if isinstance(value, str):
            continue
        if value < 0 or (key == "cv_folds" and value < 2) or (
                key == "shap_target" and not 0 < value <= 1):
            raise InputError(f"--{key.replace('_', '-')} = {value}: out of range")
    config = dataclasses.replace(config, learn=dataclasses.replace(config.learn, **changes))
    inputs = load_inputs(config)  # structure, motif space, data: as the run had
    return config, inputs, fits_per_second


def main(args: argparse.Namespace) -> int:
    from ..parallel.comm import get_comm
    from ..parallel.exits import root_then_bcast
    from ..pipeline.run import learn
    from ..store import RunLock

    comm = get_comm()
    path = Path(args.results).resolve()
    lock = RunLock(path)  # rank 0: no other job may write this run meanwhile

    def prepare():
        lock.acquire()
        return _prepare(path, args)

    try:
        config, inputs, fits_per_second = root_then_bcast(prepare, comm)
        learn(path, config, inputs, comm, until=args.until, fits_per_second=fits_per_second,
              quiet=args.quiet)
    finally:
        lock.release()
    return 0
