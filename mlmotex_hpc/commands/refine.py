"""``mlmotex-hpc refine OUT/motex.h5 [--motif extracted|best|INDEX] [--frame N] [-o DIR]``:
check one motif of a finished run with diffpy.srfit (see
:mod:`mlmotex_hpc.output.refinement`). A serial program.
"""

from __future__ import annotations

import argparse

HELP = "refine a run's motif with diffpy.srfit, plot the fit"

#: Output file names, inside the output folder (as :mod:`~mlmotex_hpc.output.refinement`).
FILES = "refine_fit.png, refine_motif.xyz and refine_results.txt"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", metavar="OUT/motex.h5", help="a run's results file")
    parser.add_argument("--motif", default="extracted", metavar="extracted|best|INDEX",
                        help="the run's extracted motif (default), the catalogue motif with "
                             "the lowest Rw, or a catalogue index (0-based)")
    parser.add_argument("--frame", type=int, default=0, metavar="N",
                        help="data set of a series, 0-based (default 0)")
    parser.add_argument("-o", "--out", metavar="DIR",
                        help=f"folder for {FILES} (default: the folder of motex.h5)")


def main(args: argparse.Namespace) -> int:
    from ..output.refinement import refine

    refine(args.results, motif=args.motif, frame=args.frame, out_dir=args.out)
    return 0
