"""The ``mlmotex-hpc`` command line. It only parses; the work lives in the stages.

    mlmotex-hpc run CONFIG.yaml [--out DIR] [--until fit|learn|explain] [--frames A:B|I/N]
                                [--resume | --overwrite] [--dry-run [--ranks N]]
    mlmotex-hpc pdf MODEL.xyz -o OUT.gr [options]
    mlmotex-hpc refine OUT/motex.h5 [--motif extracted|best|INDEX] [--frame N] [-o DIR]
    mlmotex-hpc learn OUT/motex.h5 [--search-iterations K] [--cv-folds K] [--seed S]
    mlmotex-hpc merge OUT/frames_*/motex.h5 | CONFIG.yaml [-o DIR]
    mlmotex-hpc plot OUT/motex.h5 [--frame N ...] [-o DIR]
    mlmotex-hpc info [--short]

Bad input ends with ``mlmotex-hpc: error: <one line>`` on rank 0 and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__
from .errors import InputError

_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID")


def launcher_rank() -> int:
    """This process's rank as the MPI launcher announced it (0 outside MPI).

    Read from the environment so that argument errors, found before MPI starts, are
    still printed by one rank only.
    """
    for name in _RANK_VARIABLES:
        value = os.environ.get(name)
        if value is not None and value.isdigit():
            return int(value)
    return 0


def report_error(message: str) -> None:
    if launcher_rank() == 0:
        print(f"mlmotex-hpc: error: {message}", file=sys.stderr, flush=True)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line from one rank, exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        report_error(f"{message} (see '{self.prog} --help')")
        raise SystemExit(2)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of ranks")
    return value


def cmd_run(args: argparse.Namespace) -> int:
    from .config import load_config, select_frames
    from .parallel.comm import get_comm, root_then_bcast
    from .parallel.driver import run

    out = Path(args.out).resolve() if args.out else None
    if args.dry_run:
        if launcher_rank() != 0:
            return 0
        from .dryrun import dry_run

        print(dry_run(load_config(args.config), args.ranks, out), flush=True)
        return 0
    comm = get_comm()

    def prepare():
        config = load_config(args.config)
        if args.frames is None:
            return config, None, out
        config, frames = select_frames(config, args.frames)
        folder = out or config.output.dir / f"frames_{frames[0]:05d}-{frames[1]:05d}"
        return config, frames, folder

    config, frames, out = root_then_bcast(prepare, comm)
    run(config, comm, out_dir=out, until=args.until, quiet=args.quiet, resume=args.resume,
        overwrite=args.overwrite, frame_range=frames)
    return 0


def cmd_pdf(args: argparse.Namespace) -> int:
    from .pdf import command

    return command.main(args)


def cmd_refine(args: argparse.Namespace) -> int:
    from . import refine

    return refine.main(args)


def cmd_learn(args: argparse.Namespace) -> int:
    from . import relearn

    return relearn.main(args)


def cmd_merge(args: argparse.Namespace) -> int:
    from . import merge

    if launcher_rank() != 0:  # a serial program: extra ranks have nothing to do
        return 0
    return merge.main(args)


def cmd_plot(args: argparse.Namespace) -> int:
    from . import plot

    if launcher_rank() != 0:  # a serial program: extra ranks have nothing to do
        return 0
    return plot.main(args)


def cmd_info(args: argparse.Namespace) -> int:
    from .info import software_stack

    for name, value in software_stack(short=args.short):
        if launcher_rank() == 0:
            print(f"{name:22s} {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mlmotex-hpc",
        description="Structural motif extraction from PDF data with explainable ML, on MPI.",
    )
    parser.add_argument("--version", action="version", version=f"mlmotex-hpc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run the four ML-MotEx steps from a YAML config")
    run.add_argument("config", help="YAML config file")
    run.add_argument("--out", help="output folder (default: the config's output.dir)")
    run.add_argument("--until", choices=("fit", "learn", "explain"), default="explain",
                     help="last stage to run (default: explain)")
    run.add_argument("--quiet", action="store_true", help="no progress messages")
    run.add_argument("--frames", metavar="START:STOP|I/N",
                     help="only frames START to STOP-1 of the series, or block I of N "
                          "near-equal blocks (a job-array task); output in "
                          "output.dir/frames_START-STOP unless --out")
    run.add_argument("--dry-run", action="store_true",
                     help="check the inputs, measure fits per core-second on a sample and "
                          "print the catalogue size, memory and walltime; fit nothing")
    run.add_argument("--ranks", type=_positive_int, default=1, metavar="N",
                     help="ranks to estimate the walltime of --dry-run for (default 1)")
    again = run.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="finish the run in the output folder, or start one if there is none "
                            "(an unfinished run of the same config is resumed even without it)")
    again.add_argument("--overwrite", action="store_true",
                       help="discard an existing motex.h5 in the output folder and start again")
    run.set_defaults(func=cmd_run)

    pdf = sub.add_parser("pdf", help="compute a structure model's G(r)")
    from .pdf import command

    command.add_arguments(pdf)
    pdf.set_defaults(func=cmd_pdf)

    refine = sub.add_parser("refine", help="refine a run's motif with diffpy.srfit, plot the fit")
    from . import refine as refine_command

    refine_command.add_arguments(refine)
    refine.set_defaults(func=cmd_refine)

    learn = sub.add_parser("learn", help="rerun steps 3-4 on the finished fits of a run")
    from . import relearn

    relearn.add_arguments(learn)
    learn.set_defaults(func=cmd_learn)

    merge = sub.add_parser("merge", help="join the motex.h5 files of a job array's tasks "
                           "(run ... --frames START:STOP) into one")
    from . import merge as merge_module

    merge_module.add_arguments(merge)
    merge.set_defaults(func=cmd_merge)

    plot = sub.add_parser("plot", help="write the figures, structure files and report.html "
                          "of a finished run again")
    from . import plot as plot_module

    plot_module.add_arguments(plot)
    plot.set_defaults(func=cmd_plot)

    info = sub.add_parser("info", help="print the software stack")
    info.add_argument("--short", action="store_true", help="one line per key component")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InputError as exc:
        report_error(str(exc))
        return InputError.exit_code
    except KeyboardInterrupt:
        report_error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
