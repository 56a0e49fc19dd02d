"""``mlmotex-hpc plot OUT/motex.h5 [--frame N ...] [-o DIR]``: the figures, structure files
and report of a finished run, again (after ``learn``, for other frames of a series, or
into another folder). A serial program (see :func:`mlmotex_hpc.output.summary.redraw`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import launcher_rank

HELP = "write the figures, structure files and report.html of a finished run again"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", help="the run's motex.h5")
    parser.add_argument("--frame", type=int, action="append", metavar="N",
                        help="a frame of a series to draw (0-based; repeat for more); "
                             "default: frame 0 of a single-frame run, none of a series")
    parser.add_argument("-o", "--out", help="output folder (default: the folder of motex.h5)")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")


def main(args: argparse.Namespace) -> int:
    if launcher_rank() != 0:  # a serial program: extra ranks have nothing to do
        return 0
    from ..output.summary import redraw

    path = Path(args.results).resolve()
    out = Path(args.out).resolve() if args.out else path.parent
    log = (lambda m: None) if args.quiet else (lambda m: print(m, flush=True))
    files = redraw(path, args.frame, out, log)
    log("files written:")
    for f in files:
        log(f"  {f}")
    return 0
