"""``mlmotex-hpc convergence OUT/motex.h5``: how many motifs ML-MotEx needs, measured.

From an exhaustive run (``catalogue.size: all``), without refitting: random catalogues of
several sizes and seeds are drawn from the table, steps 3-4 run on each, and their ACVs
and best motifs are compared with the exact Shapley values and the global optimum
(:mod:`mlmotex_hpc.pipeline.convergence`). Runs on any number of ranks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "from an exhaustive run: how many motifs ML-MotEx needs (ACV vs exact Shapley)"


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(float(t)) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected sizes like 100,1000,1e4, not {text!r}") from None
    if not sizes or min(sizes) < 10:
        raise argparse.ArgumentTypeError("every catalogue needs at least 10 motifs")
    return sizes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", help="motex.h5 of a finished exhaustive run")
    parser.add_argument("--sizes", type=_sizes, default=(100, 1000, 10_000, 100_000),
                        metavar="M,M,...",
                        help="catalogue sizes (default 100,1000,10000,100000)")
    parser.add_argument("--seeds", type=int, default=3, metavar="K",
                        help="catalogues drawn per size, seeds 0 .. K-1 (default 3)")
    parser.add_argument("--no-adaptive", action="store_true",
                        help="random catalogues only (by default adaptive catalogues of up "
                             "to 20,000 motifs are tried too, Rw looked up in the table)")
    parser.add_argument("--frame", type=int, default=0, metavar="N",
                        help="the frame compared (default 0)")
    parser.add_argument("-o", "--out", help="output folder (default: the folder of motex.h5)")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")


def main(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..parallel.comm import get_comm
    from ..parallel.exits import root_then_bcast
    from ..pipeline.convergence import convergence
    from ..store import RunLock

    if args.seeds < 1:
        raise InputError(f"--seeds {args.seeds}: at least one catalogue per size")
    comm = get_comm()
    path = Path(args.results).resolve()
    lock = RunLock(path)
    try:
        root_then_bcast(lock.acquire, comm)
        convergence(path, args.sizes, args.seeds, args.frame,
                    Path(args.out).resolve() if args.out else None, comm, args.quiet,
                    adaptive=not args.no_adaptive)
    finally:
        lock.release()
    return 0
