"""``mlmotex-hpc cut``: a finite starting model cut from a crystal, cookie-cutter style.

The paper built its Bi38O45 starting model this way from β-Bi2O3. The cell is expanded
as far as the cut needs, for any cell shape::

    mlmotex-hpc cut ICSD_110294.cif -o keggin.xyz --sphere 6 --centre-atom V1 --elements W,O
    mlmotex-hpc cut ICSD_35643.cif -o fe2o3_222.xyz --cells 2,2,2 --partial keep

The same cut in a config: ``structure: {file: F.cif, cut: {sphere: 6, centre_atom: V1}}``.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

HELP = "cut a finite cluster (.xyz) from a crystal (.cif, .stru, ...)"


def _numbers(count: int, integer: bool = False):
    def parse(text: str):
        try:
            values = [int(v) if integer else float(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {count} comma-separated "
                                             "numbers") from None
        if len(values) != count:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {count} numbers, got "
                                             f"{len(values)}")
        return values
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("structure", metavar="MODEL", help="crystal (.cif, .stru, .pdb) or "
                        "cluster (.xyz) file")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.xyz",
                        help="the cluster, Cartesian Å")
    shape = parser.add_mutually_exclusive_group(required=True)
    shape.add_argument("--sphere", type=float, metavar="R", help="atoms within R Å of the "
                       "centre")
    shape.add_argument("--box", type=_numbers(3), metavar="A,B,C",
                       help="a box of the cell's shape, edges A, B, C Å along a, b, c, "
                            "centred on the centre")
    shape.add_argument("--cells", type=_numbers(3, integer=True), metavar="NA,NB,NC",
                       help="a supercell of whole cells from the origin (atoms on the far "
                            "faces included)")
    centre = parser.add_mutually_exclusive_group()
    centre.add_argument("--centre", type=_numbers(3), metavar="X,Y,Z",
                        help="centre, fractional (Å for a cluster); default the cell's "
                             "centre")
    centre.add_argument("--centre-atom", metavar="LABEL|INDEX",
                        help="centre on this atom: a site label (V1; copies W1_2, ...) or "
                             "its 0-based index in the cell")
    parser.add_argument("--elements", metavar="El,...", help="keep only these elements")
    parser.add_argument("--partial", choices=("refuse", "keep"), default="refuse",
                        help="partially occupied sites: refuse (default), or keep each as "
                             "an atom")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="fractional distance under which a crystal's sites merge "
                             "(default 1e-3)")


def main(args: argparse.Namespace) -> int:
    from ..config import CIF_TOLERANCE, make_cut
    from ..errors import InputError
    from ..io.structure import read_structure, write_xyz
    from . import launcher_rank

    if launcher_rank() != 0:
        return 0
    raw = {"sphere": args.sphere, "box": args.box, "cells": args.cells,
           "centre": args.centre, "elements": args.elements}
    if args.centre_atom is not None:
        text = args.centre_atom.strip()
        raw["centre_atom"] = int(text) if text.isdigit() else text
    cut = make_cut("cut", {k: v for k, v in raw.items() if v is not None})
    out = Path(args.output)
    if out.suffix.lower() != ".xyz":
        raise InputError(f"-o {out}: the cut is written as .xyz (name it OUT.xyz)")
    tolerance = CIF_TOLERANCE if args.tolerance is None else args.tolerance
    if not 0 < tolerance <= 0.05:
        raise InputError(f"--tolerance {tolerance}: expected 0 < tolerance ≤ 0.05")
    cluster = read_structure(args.structure, cut, partial=args.partial, tolerance=tolerance)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_xyz(out, cluster)
    except OSError as exc:
        raise InputError(f"cannot write {out}: {exc.strerror or type(exc).__name__}") from None
    counts = Counter(cluster.elements)
    formula = " ".join(f"{el}{n}" for el, n in counts.items())
    print(f"{out}: {len(cluster)} atoms ({formula}), {cut.describe()} of "
          f"{Path(args.structure).name}")
    partial = cluster.partial_sites()
    if partial:
        print("  kept partially occupied: " + ", ".join(
            f"{site} ({occ:.3g}, {n} atoms)" for site, occ, n, _ in partial))
    return 0
