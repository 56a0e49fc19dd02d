"""``mlmotex-hpc screen CONFIG``: rank a folder of structure files against measured PDFs.

Every template (crystal or cluster file) is cut into candidate clusters, each candidate is
fitted whole and probed for its best sub-motif, and ``screen.csv`` ranks them
(:mod:`mlmotex_hpc.pipeline.screen`). Runs on any number of ranks; a killed screen resumes
where it stopped. Issue 29 is in progress: ``screen.extract`` (the motif extracted from the
best candidates in the same job), the report and ``--dry-run`` are still to come.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "rank structure files (crystals, clusters) against measured PDFs: candidate clusters"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the screen's YAML config (templates:, data:, screen:)")
    parser.add_argument("-o", "--out", help="output folder (default: output.dir)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing screen.h5 of another config")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")


def main(args: argparse.Namespace) -> int:
    from ..config import load_screen_config
    from ..parallel.comm import get_comm
    from ..parallel.exits import root_then_bcast
    from ..pipeline.screen import screen

    comm = get_comm()
    config = root_then_bcast(lambda: load_screen_config(args.config), comm)
    screen(config, comm, out_dir=Path(args.out).resolve() if args.out else None,
           overwrite=args.overwrite, quiet=args.quiet)
    return 0
