"""``mlmotex-hpc merge PART.h5 ... | CONFIG.yaml [-o DIR]``: join a job array's files.

Given the config instead of the parts, it takes every ``output.dir/frames_*/motex.h5``
and requires them to cover the whole series. A serial program: run it without
``mpirun`` (under it, ranks other than 0 do nothing).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import launcher_rank

HELP = "join the motex.h5 files of a job array's tasks (run ... --frames START:STOP) into one"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("parts", nargs="+", metavar="PART.h5|CONFIG.yaml",
                        help="the tasks' motex.h5 files (any order); or the config alone: "
                             "every output.dir/frames_*/motex.h5, which must cover the "
                             "whole series")
    parser.add_argument("-o", "--out", help="folder of the merged motex.h5 and outputs "
                        "(default: the folder holding the parts' folders)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing merged motex.h5")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")


def main(args: argparse.Namespace) -> int:
    if launcher_rank() != 0:  # a serial program: extra ranks have nothing to do
        return 0
    from ..pipeline.merge import merge, parts_of_config

    paths = [Path(p).resolve() for p in args.parts]
    if len(paths) == 1 and paths[0].suffix in (".yaml", ".yml"):
        paths, out = parts_of_config(paths[0])
    else:
        out = paths[0].parent.parent
    if args.out:
        out = Path(args.out).resolve()
    merge(paths, out, overwrite=args.overwrite,
          log=(lambda m: None) if args.quiet else (lambda m: print(m, flush=True)))
    return 0
