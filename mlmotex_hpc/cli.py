"""The ``mlmotex-hpc`` command line. It only parses; each command lives in ``commands/``.

    mlmotex-hpc init [--structure MODEL.xyz] [--data DATA.gr] [-o CONFIG.yaml] [--force]
    mlmotex-hpc run CONFIG.yaml [--out DIR] [--until fit|learn|explain] [--frames A:B|I/N]
                                [--resume | --overwrite] [--dry-run [--ranks N]]
    mlmotex-hpc pdf MODEL.xyz -o OUT.gr [options]
    mlmotex-hpc refine OUT/motex.h5 [--motif extracted|best|INDEX] [--frame N] [-o DIR]
    mlmotex-hpc learn OUT/motex.h5 [--search-iterations K] [--cv-folds K] [--seed S]
    mlmotex-hpc convergence OUT/motex.h5 [--sizes 100,1000,...] [--seeds K] [-o DIR]
    mlmotex-hpc merge OUT/frames_*/motex.h5 | CONFIG.yaml [-o DIR]
    mlmotex-hpc plot OUT/motex.h5 [--frame N ...] [-o DIR]
    mlmotex-hpc info [--short]

Bad input ends with ``mlmotex-hpc: error: <one line>`` on rank 0 and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

from . import __version__
from .commands import COMMANDS, launcher_rank
from .errors import InputError, JobFailed


def report_error(message: str) -> None:
    if launcher_rank() == 0:
        print(f"mlmotex-hpc: error: {message}", file=sys.stderr, flush=True)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line from one rank, exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        report_error(f"{message} (see '{self.prog} --help')")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mlmotex-hpc",
        description="Structural motif extraction from PDF data with explainable ML, on MPI.",
    )
    parser.add_argument("--version", action="version", version=f"mlmotex-hpc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        module = import_module(f".commands.{name}", __package__)
        command = sub.add_parser(name, help=module.HELP)
        module.add_arguments(command)
        command.set_defaults(func=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InputError as exc:
        report_error(str(exc))
        return InputError.exit_code
    except JobFailed:  # the traceback was printed where it happened
        return JobFailed.exit_code
    except KeyboardInterrupt:
        report_error("interrupted")
        return 130
    except OSError as exc:  # a serial command's disk filled while it wrote
        from .parallel.exits import disk_full, disk_full_message

        if not disk_full(exc):
            raise
        report_error(disk_full_message(exc))
        return InputError.exit_code


if __name__ == "__main__":
    sys.exit(main())
