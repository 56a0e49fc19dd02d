"""PDF calculators: the Debye equation (default) and DiffPy's real-space method.

>>> calc = make_calculator(elements, xyz, PDFSettings(), r)   # doctest: +SKIP
>>> motif = calc.prepare(mask)                                # doctest: +SKIP
>>> g = calc.gr(motif, zoom=1.005)                            # doctest: +SKIP
"""

from .calculator import (
    DebyeCalculator,
    Motif,
    PDFCalculator,
    RealSpaceCalculator,
    make_calculator,
)
from .settings import PDFSettings, uiso_from_biso

__all__ = [
    "DebyeCalculator",
    "Motif",
    "PDFCalculator",
    "PDFSettings",
    "RealSpaceCalculator",
    "make_calculator",
    "uiso_from_biso",
]
