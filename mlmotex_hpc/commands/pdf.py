r"""``mlmotex-hpc pdf``: write the model PDF of a structure file.

The defaults reproduce DiffPy-CMI's DebyePDFCalculator for a cluster with the settings
of the reference files in ``tests/data/reference``: X-ray, Qmin 0.7 Å⁻¹, Qmax 20 Å⁻¹,
qdamp 0.04 Å⁻¹, Uiso 0.005 Å² for every element, r from 1 to 20 Å in steps of 0.01 Å
(both ends included), DiffPy's Q grid.

The model may be any structure file ``run`` reads (.xyz, .cif, .stru, .pdb): a crystal's
atoms are those of its unit cell, as a cluster (cut a larger one with ``mlmotex-hpc
cut``), and the Uiso it gives are the defaults. The output is a PDFgetX3-style file: the
settings as ``# key = value`` header lines, then ``#### start data``, ``#S 1`` and
``#L r($\AA$) G($\AA^{-2}$)`` before the two columns (``run`` and PDFgui read it).

Example::

    mlmotex-hpc pdf 109725.xyz -o model.gr --calculator realspace --uiso W=0.003 O=0.008
    mlmotex-hpc pdf 109725.xyz -o model.gr --biso W=0.24 O=0.63
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from .. import __version__
from ..errors import InputError
from ..pdf.settings import (
    BISO_PER_UISO,
    CALCULATORS,
    MAX_Q_POINTS,
    QMAX_LIMITS,
    RADIATIONS,
    PDFSettings,
    uiso_from_biso,
)

HELP = "compute a structure model's G(r)"

_DEFAULTS = PDFSettings()
#: Most r points the command computes (10^6: 10,000 Å at 0.01 Å).
MAX_POINTS = 10**6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``pdf`` subcommand's arguments to ``parser``."""
    parser.add_argument("structure", metavar="MODEL",
                        help="structure model (.xyz in Å, or .cif, .stru, .pdb)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.gr",
                        help="output file: a header, then two columns r (Å) and G(r) (Å⁻²)")
    parser.add_argument("--calculator", choices=CALCULATORS, default=_DEFAULTS.calculator,
                        help="debye: Debye sum in Q (default); realspace: DiffPy's "
                             "PDFCalculator, as the original ML-MotEx")
    parser.add_argument("--radiation", choices=RADIATIONS, default=_DEFAULTS.radiation,
                        help="X-ray form factors or neutron coherent lengths (default xray)")
    parser.add_argument("--qmin", type=float, default=_DEFAULTS.qmin,
                        help=f"Qmin in Å⁻¹ (default {_DEFAULTS.qmin})")
    parser.add_argument("--qmax", type=float, default=_DEFAULTS.qmax,
                        help=f"Qmax in Å⁻¹ (default {_DEFAULTS.qmax}; at most "
                             f"{QMAX_LIMITS['xray']:.1f} for X-rays, "
                             f"{QMAX_LIMITS['neutron']:g} for neutrons)")
    parser.add_argument("--qdamp", type=float, default=_DEFAULTS.qdamp,
                        help=f"Q resolution damping in Å⁻¹ (default {_DEFAULTS.qdamp})")
    parser.add_argument("--qbroad", type=float, default=_DEFAULTS.qbroad,
                        help=f"Q broadening in Å⁻¹ (default {_DEFAULTS.qbroad})")
    thermal = parser.add_mutually_exclusive_group()
    thermal.add_argument("--uiso", nargs="+", action="extend", default=[], metavar="El=U",
                         help="Uiso in Å² per element (W=0.003 O=0.008); a bare number sets "
                              "every other element (default: the crystal file's, else "
                              f"{_DEFAULTS.default_uiso})")
    thermal.add_argument("--biso", nargs="+", action="extend", default=[], metavar="El=B",
                         help="the same as Biso = 8π² Uiso (Å²), as DiffPy converts")
    parser.add_argument("--delta2", type=float, default=_DEFAULTS.delta2,
                        help=f"correlated-motion sharpening in Å² (default {_DEFAULTS.delta2})")
    parser.add_argument("--rmin", type=float, default=1.0, help="first r in Å (default 1)")
    parser.add_argument("--rmax", type=float, default=20.0,
                        help="last r in Å, included (default 20)")
    parser.add_argument("--rstep", type=float, default=0.01, help="r step in Å (default 0.01)")
    parser.add_argument("--qstep", type=float, default=None,
                        help="Debye calculator only: sum F(Q) on Qmin, Qmin+qstep, ... < Qmax "
                             "(DebyeCalculator's rectangle rule) instead of DiffPy's grid; "
                             f"at most {MAX_Q_POINTS:,} steps from 0 to Qmax")


def _parse_uiso(tokens: list[str], elements: tuple[str, ...], option: str = "--uiso",
                per: float = 1.0) -> tuple[dict[str, float], float | None]:
    """Per-element Uiso and the default (None: not given) from ``El=U`` and bare-number
    tokens; ``per``: what one unit of the option is in Uiso (1 / 8π² for ``--biso``)."""
    per_element: dict[str, float] = {}
    default = None
    unit = "B" if option == "--biso" else "U"
    for token in tokens:
        name, sep, value = token.partition("=")
        try:
            number = float(value if sep else name)
        except ValueError:
            raise InputError(
                f"{option} expects El={unit} (Å²) or a number, got {token!r}"
            ) from None
        if not (math.isfinite(number) and number >= 0):
            raise InputError(f"{option} {token}: expected a finite value >= 0 (Å²)")
        if not sep:
            default = number * per
        elif name not in elements:
            raise InputError(
                f"{option} {token}: element {name!r} is not in the structure "
                f"({', '.join(elements)})"
            )
        else:
            per_element[name] = number * per
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
    from ..io.pdfout import write_gr
    from ..io.structure import read_structure
    from ..pdf import make_calculator

    structure = read_structure(args.structure)
    species = tuple(dict.fromkeys(structure.elements))
    if args.biso:
        uiso, default_uiso = _parse_uiso(list(args.biso), species, "--biso",
                                         uiso_from_biso(1.0))
    else:
        uiso, default_uiso = _parse_uiso(list(args.uiso or []), species)
    option = "--biso" if args.biso else "--uiso"
    source = dict.fromkeys(uiso, option)
    if default_uiso is None:  # the file's Uiso for the elements the options leave out
        from_file = {el: u for el, u in structure.element_uiso().items() if el not in uiso}
        uiso.update(from_file)
        source.update(dict.fromkeys(from_file, "structure file"))
        default_uiso, rest = _DEFAULTS.default_uiso, "default"
    else:
        rest = f"{option}, every other element"
    settings = PDFSettings(
        calculator=args.calculator, radiation=args.radiation, qmin=args.qmin, qmax=args.qmax,
        qdamp=args.qdamp, qbroad=args.qbroad, uiso=tuple(sorted(uiso.items())),
        default_uiso=default_uiso, delta2=args.delta2, qstep=args.qstep,
        sources={name: f"--{name}" for name in ("qmin", "qmax", "qstep", "qdamp", "qbroad",
                                               "delta2")},
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
    sources = ", ".join(f"{el}: {source.get(el, rest)}" for el in species)
    header = [
        ("structure", args.structure), ("natoms", len(structure)),
        ("composition", composition), ("calculator", settings.calculator),
        ("radiation", settings.radiation), ("qmin", settings.qmin), ("qmax", settings.qmax),
        ("qdamp", settings.qdamp), ("qbroad", settings.qbroad), ("delta2", settings.delta2),
        ("uiso", ", ".join(f"{el}={settings.uiso_of(el):.6g}" for el in species)),
        ("biso", ", ".join(f"{el}={settings.uiso_of(el) * BISO_PER_UISO:.6g}"
                           for el in species)),
        ("uiso_from", sources),
        ("qstep", f"{calc.qstep!r} ({grid})"), ("extendedrmax", repr(calc.extended_rmax)),
        ("rmin", args.rmin), ("rmax", args.rmax), ("rstep", args.rstep),
        ("npoints", r.size),
    ]
    write_gr(output, r, g, header,
             f"mlmotex-hpc {__version__} pdf: model G(r) of a non-periodic cluster")
    return 0
