"""``mlmotex-hpc screen CONFIG``: rank a folder of structure files against measured PDFs.

Every template (crystal or cluster file) is cut into candidate clusters, each candidate is
fitted whole and probed for its best sub-motif, and ``screen.csv`` ranks them
(:mod:`mlmotex_hpc.pipeline.screen`). Runs on any number of ranks; a killed screen resumes
where it stopped. ``--extract K`` (or ``screen.extract``) then runs the whole pipeline on
the K best candidates in the same job. ``--dry-run`` measures what the screen would cost,
on one process, and writes nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "rank structure files (crystals, clusters) against measured PDFs: candidate clusters"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the screen's YAML config (templates:, data:, screen:)")
    parser.add_argument("-o", "--out", help="output folder (default: output.dir)")
    parser.add_argument("--extract", type=int, metavar="K",
                        help="extract the motif from the K best candidates (the whole "
                             "pipeline in extract_1, ..., extract_K; default screen.extract)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing screen.h5 of another config")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    parser.add_argument("--dry-run", action="store_true",
                        help="read and cut every template, probe a sample of candidates, and "
                             "print the cost on --ranks ranks (and for 10^5 templates on "
                             "256); writes nothing")
    parser.add_argument("--ranks", type=int, default=1, metavar="N",
                        help="ranks to estimate the walltime of --dry-run for (default 1)")


def _config(args: argparse.Namespace):
    import dataclasses

    from ..config import load_screen_config
    from ..errors import InputError

    config = load_screen_config(args.config)
    if args.extract is not None:
        if args.extract < 0:
            raise InputError(f"--extract {args.extract}: the number of best candidates to "
                             "extract from, 0 or more")
        config = dataclasses.replace(config, screen=dataclasses.replace(
            config.screen, extract=args.extract))
    return config


def main(args: argparse.Namespace) -> int:
    if args.dry_run:  # serial: no MPI
        from . import launcher_rank

        if launcher_rank() != 0:
            return 0
        from ..errors import InputError
        from ..pipeline.screen_dryrun import screen_dry_run

        if args.ranks < 1:
            raise InputError(f"--ranks {args.ranks}: the ranks to estimate for, 1 or more")
        print(screen_dry_run(_config(args), args.ranks,
                             Path(args.out).resolve() if args.out else None,
                             overwrite=args.overwrite), flush=True)
        return 0
    from ..parallel.comm import get_comm
    from ..parallel.exits import root_then_bcast
    from ..pipeline.screen import screen

    comm = get_comm()
    config = root_then_bcast(lambda: _config(args), comm)
    screen(config, comm, out_dir=Path(args.out).resolve() if args.out else None,
           overwrite=args.overwrite, quiet=args.quiet)
    return 0
