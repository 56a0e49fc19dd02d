"""``mlmotex-hpc run CONFIG.yaml``: the four ML-MotEx steps, on any number of ranks.

``--dry-run`` checks the inputs and measures what the run would cost, on one process,
without starting MPI.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import launcher_rank

HELP = "run the four ML-MotEx steps from a YAML config"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of ranks")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "example:\n"
        "  mlmotex-hpc init --structure model.xyz --data data.gr   # write config.yaml\n"
        "  mlmotex-hpc run config.yaml --dry-run --ranks 64        # check it, estimate the cost\n"
        "  mpirun -n 64 mlmotex-hpc run config.yaml                # the run, into out/\n"
        "  mlmotex-hpc plot out/motex.h5                           # the figures and report again\n"
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("config", help="YAML config file")
    parser.add_argument("--out", help="output folder (default: the config's output.dir)")
    parser.add_argument("--until", choices=("fit", "learn", "explain"), default="explain",
                        help="last stage to run (default: explain)")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    parser.add_argument("--frames", metavar="START:STOP|I/N",
                        help="only frames START to STOP-1 of the series, or block I of N "
                             "near-equal blocks (a job-array task); output in "
                             "output.dir/frames_START-STOP unless --out")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the inputs, measure fits per core-second on a sample and "
                             "print the catalogue size, memory and walltime; fit nothing")
    parser.add_argument("--ranks", type=_positive_int, default=1, metavar="N",
                        help="ranks to estimate the walltime of --dry-run for (default 1)")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="finish the run in the output folder, or start one if there is "
                            "none (an unfinished run of the same config is resumed even "
                            "without it)")
    again.add_argument("--overwrite", action="store_true",
                       help="discard an existing motex.h5 in the output folder and start "
                            "again")


def warn(notes) -> None:
    """The warning lines of the config's notes (a header it contradicts), on stderr."""
    for note in notes:
        print(f"mlmotex-hpc: warning: {note}", file=sys.stderr, flush=True)


def settings(args: argparse.Namespace):
    """The config (with its data files' header defaults), the frames a ``--frames`` task
    holds and the output folder: the same for the run and its dry run (rank 0)."""
    from ..config import load_config, select_frames
    from ..io.defaults import with_file_defaults

    config = with_file_defaults(load_config(args.config))
    out = Path(args.out).resolve() if args.out else None
    if args.frames is None:
        return config, None, out
    config, frames = select_frames(config, args.frames)
    folder = out or config.output.dir / f"frames_{frames[0]:05d}-{frames[1]:05d}"
    return config, frames, folder


def main(args: argparse.Namespace) -> int:
    if args.dry_run:  # serial: no MPI
        if launcher_rank() != 0:
            return 0
        from ..pipeline.dryrun import dry_run

        config, frames, out = settings(args)
        report = dry_run(config, args.ranks, out, until=args.until, resume=args.resume,
                         overwrite=args.overwrite, frame_range=frames)  # bad input: one line
        warn(config.notes)
        print(report, flush=True)
        return 0
    from ..parallel.comm import get_comm
    from ..parallel.exits import root_then_bcast
    from ..pipeline.run import run

    comm = get_comm()
    config, frames, out = root_then_bcast(lambda: settings(args), comm)
    run(config, comm, out_dir=out, until=args.until, quiet=args.quiet, resume=args.resume,
        overwrite=args.overwrite, frame_range=frames)
    return 0
