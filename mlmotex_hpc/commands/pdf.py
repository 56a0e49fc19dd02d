"""``mlmotex-hpc pdf``: write the model PDF of a structure file.

The defaults reproduce DiffPy-CMI's DebyePDFCalculator for a cluster with the settings
of the reference files in ``tests/data/reference``: X-ray, Qmin 0.7 Å⁻¹, Qmax 20 Å⁻¹,
qdamp 0.04 Å⁻¹, Uiso 0.005 Å² for every element, r from 1 to 20 Å in steps of 0.01 Å
(both ends included), DiffPy's Q grid.

Example::

    mlmotex-hpc pdf 109725.xyz -o model.gr --calculator realspace --uiso W=0.003 O=0.008
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from .. import __version__
from ..errors import InputError
from ..pdf.settings import CALCULATORS, RADIATIONS, PDFSettings

HELP = "compute a structure model's G(r)"

_DEFAULTS = PDFSettings()
#: Most r points the command computes (10^6: 10,000 Å at 0.01 Å).
MAX_POINTS = 10**6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``pdf`` subcommand's arguments to ``parser``."""
    parser.add_argument("structure", metavar="MODEL.xyz", help="structure model (.xyz, Å)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.gr",
                        help="output file: two columns r (Å) and G(r) (Å⁻²)")
    parser.add_argument("--calculator", choices=CALCULATORS, default=_DEFAULTS.calculator,
                        help="debye: Debye sum in Q (default); realspace: DiffPy's "
                             "PDFCalculator, as the original ML-MotEx")
    parser.add_argument("--radiation", choices=RADIATIONS, default=_DEFAULTS.radiation,
                        help="X-ray form factors or neutron coherent lengths (default xray)")
    parser.add_argument("--qmin", type=float, default=_DEFAULTS.qmin,
                        help=f"Qmin in Å⁻¹ (default {_DEFAULTS.qmin})")
    parser.add_argument("--qmax", type=float, default=_DEFAULTS.qmax,
                        help=f"Qmax in Å⁻¹ (default {_DEFAULTS.qmax})")
    parser.add_argument("--qdamp", type=float, default=_DEFAULTS.qdamp,
                        help=f"Q resolution damping in Å⁻¹ (default {_DEFAULTS.qdamp})")
    parser.add_argument("--qbroad", type=float, default=_DEFAULTS.qbroad,
                        help=f"Q broadening in Å⁻¹ (default {_DEFAULTS.qbroad})")
    parser.add_argument("--uiso", nargs="+", action="extend", default=[], metavar="El=U",
                        help="Uiso in Å² per element (W=0.003 O=0.008); a bare number sets "
                             f"every other element (default {_DEFAULTS.default_uiso})")
    parser.add_argument("--delta2", type=float, default=_DEFAULTS.delta2,
                        help=f"correlated-motion sharpening in Å² (default {_DEFAULTS.delta2})")
    parser.add_argument("--rmin", type=float, default=1.0, help="first r in Å (default 1)")
    parser.add_argument("--rmax", type=float, default=20.0,
                        help="last r in Å, included (default 20)")
    parser.add_argument("--rstep", type=float, default=0.01, help="r step in Å (default 0.01)")
    parser.add_argument("--qstep", type=float, default=None,
                        help="Debye calculator only: sum F(Q) on Qmin, Qmin+qstep, ... < Qmax "
                             "(DebyeCalculator's rectangle rule) instead of DiffPy's grid")


def _parse_uiso(tokens: list[str], elements: tuple[str, ...]) -> tuple[dict[str, float], float]:
    """Per-element Uiso and the default from ``El=U`` and bare-number tokens."""
    per_element: dict[str, float] = {}
    default = _DEFAULTS.default_uiso
    for token in tokens:
        name, sep, value = token.partition("=")
        try:
            number = float(value if sep else name)
        except ValueError:
            raise InputError(
                f"--uiso expects El=U (Å²) or a number, got {token!r}"
            ) from None
        if not sep:
            default = number
        elif name not in elements:
            raise InputError(
                f"--uiso {token}: element {name!r} is not in the structure "
                f"({', '.join(elements)})"
            )
        else:
            per_element[name] = number
    return per_element, default


def r_grid(rmin: float, rmax: float, rstep: float):
    """r = rmin, rmin + rstep, …, up to and including rmax (within 1e-9 of a step)."""
    if not (math.isfinite(rmin) and math.isfinite(rmax) and math.isfinite(rstep)):
        raise InputError("--rmin, --rmax and --rstep must be finite numbers")
    if rstep <= 0.0 or rmin < 0.0 or rmax <= rmin:
        raise InputError(
            f"need 0 <= rmin < rmax and rstep > 0, got rmin {rmin}, rmax {rmax}, rstep {rstep}"
        )
    import numpy as np

    n = int(math.floor((rmax - rmin) / rstep + 1e-9)) + 1
    if n > MAX_POINTS:
        raise InputError(f"--rmin {rmin:g} --rmax {rmax:g} --rstep {rstep:g} make {n:,} points; "
                         f"at most {MAX_POINTS:,} are written (widen --rstep)")
    return rmin + rstep * np.arange(n)


def main(args: argparse.Namespace) -> int:
    """Compute the structure's G(r) and write it with a header of every parameter."""
    from ..io.structure import read_xyz
    from ..pdf import make_calculator

    structure = read_xyz(args.structure)
    species = tuple(dict.fromkeys(structure.elements))
    uiso, default_uiso = _parse_uiso(list(args.uiso or []), species)
    settings = PDFSettings(
        calculator=args.calculator, radiation=args.radiation, qmin=args.qmin, qmax=args.qmax,
        qdamp=args.qdamp, qbroad=args.qbroad, uiso=tuple(sorted(uiso.items())),
        default_uiso=default_uiso, delta2=args.delta2, qstep=args.qstep,
    )
    if args.qstep is not None and settings.calculator == "realspace":
        raise InputError("--qstep applies to the debye calculator only")
    r = r_grid(args.rmin, args.rmax, args.rstep)
    calc = make_calculator(structure.elements, structure.xyz, settings, r)
    g = calc.compute()

    output = Path(args.output)
    if not output.parent.is_dir():
        raise InputError(f"cannot write {output}: folder {output.parent} does not exist")
    composition = "".join(
        f"{el}{structure.elements.count(el)}" for el in species
    )
    grid = ("DiffPy's: pi / extended rmax from Q = 0, F zeroed below qmin"
            if settings.calculator == "debye" and settings.qstep is None else
            "qmin + k*qstep < qmax" if settings.calculator == "debye" else
            "DiffPy PDFCalculator's FFT grid, F zeroed outside [qmin, qmax)")
    lines = [
        f"# mlmotex-hpc {__version__} pdf: model G(r) of a non-periodic cluster",
        f"# structure = {args.structure}  (natoms = {len(structure)}, composition = "
        f"{composition})",
        f"# calculator = {settings.calculator}",
        f"# radiation = {settings.radiation}",
        f"# qmin = {settings.qmin}",
        f"# qmax = {settings.qmax}",
        f"# qdamp = {settings.qdamp}",
        f"# qbroad = {settings.qbroad}",
        f"# delta2 = {settings.delta2}",
        "# uiso (A^2) = " + ", ".join(f"{el}={settings.uiso_of(el)}" for el in species),
        f"# qstep = {calc.qstep!r}  ({grid})",
        f"# extendedrmax = {calc.extended_rmax!r}",
        f"# rmin = {args.rmin}",
        f"# rmax = {args.rmax}",
        f"# rstep = {args.rstep}",
        f"# r grid: {r[0]:g} .. {r[-1]:g} step {args.rstep:g} ({r.size} points)",
        "# columns: r (A)  G(r) (A^-2)",
    ]
    body = [f"{ri:.6f} {gi:.10e}" for ri, gi in zip(r, g, strict=True)]
    try:
        output.write_text("\n".join(lines + body) + "\n")
    except OSError as exc:
        raise InputError(f"cannot write {output}: {exc.strerror}") from None
    return 0
