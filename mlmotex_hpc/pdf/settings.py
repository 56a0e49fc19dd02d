"""The parameters of a PDF calculation, shared by both calculators."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import InputError

CALCULATORS = ("debye", "realspace")
RADIATIONS = ("xray", "neutron")


#: Biso = 8π² Uiso, as DiffPy converts.
BISO_PER_UISO = 8.0 * math.pi**2


def uiso_from_biso(biso: float) -> float:
    """Isotropic displacement U (Å²) from a Debye–Waller B (Å²): U = B / (8π²)."""
    return float(biso) / BISO_PER_UISO


def _number(name: str, value, *, minimum: float | None = None, positive: bool = False) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InputError(f"pdf.{name} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise InputError(f"pdf.{name} must be finite, got {value!r}")
    if positive and x <= 0.0:
        raise InputError(f"pdf.{name} must be > 0, got {x}")
    if minimum is not None and x < minimum:
        raise InputError(f"pdf.{name} must be >= {minimum}, got {x}")
    return x


@dataclass(frozen=True)
class PDFSettings:
    """Everything that defines a model PDF except the structure and the r grid.

    Attributes
    ----------
    calculator : {"debye", "realspace"}
        ``debye``: Debye sum in Q, then a sine transform to r (METHOD.md).
        ``realspace``: DiffPy PDFCalculator's Gaussian peaks in r with f(0) weights, the
        Qmin/Qmax window applied by a sine-transform round trip (the original ML-MotEx).
    radiation : {"xray", "neutron"}
        Waasmaier–Kirfel form factors or coherent neutron lengths (``periodictable``).
    qmin, qmax : float
        Q window (Å⁻¹).
    qdamp : float
        Instrumental Q resolution (Å⁻¹): G is multiplied by exp(−(qdamp·r)²/2).
    qbroad : float
        Q-dependent peak broadening (Å⁻¹): σ² gains a factor (1 + (qbroad·r)²), as in DiffPy.
    uiso : tuple of (str, float)
        Per-element isotropic displacement (Å²); a mapping is accepted and converted.
    default_uiso : float
        Uiso (Å²) of elements not listed in ``uiso``.
    delta2 : float
        Correlated-motion sharpening (Å²): σ² is multiplied by (1 − delta2/r²).
    qstep : float or None
        None: DiffPy's Q grid (Δq = π / extended rmax, from Q = 0, F zeroed below qmin).
        A number: Q = qmin, qmin + qstep, … < qmax (DebyeCalculator's rectangle rule).
        Only the Debye calculator uses it.
    """

    calculator: str = "debye"
    radiation: str = "xray"
    qmin: float = 0.7
    qmax: float = 20.0
    qdamp: float = 0.04
    qbroad: float = 0.0
    uiso: tuple[tuple[str, float], ...] = ()
    default_uiso: float = 0.005
    delta2: float = 0.0
    qstep: float | None = None

    def __post_init__(self) -> None:
        if self.calculator not in CALCULATORS:
            raise InputError(
                f"pdf.calculator must be one of {', '.join(CALCULATORS)}, got {self.calculator!r}"
            )
        if self.radiation not in RADIATIONS:
            raise InputError(
                f"pdf.radiation must be one of {', '.join(RADIATIONS)}, got {self.radiation!r}"
            )
        set_ = object.__setattr__  # frozen: normalise fields once, here
        set_(self, "qmin", _number("qmin", self.qmin, minimum=0.0))
        set_(self, "qmax", _number("qmax", self.qmax, positive=True))
        if self.qmax <= self.qmin:
            raise InputError(f"pdf.qmax ({self.qmax}) must be larger than pdf.qmin ({self.qmin})")
        set_(self, "qdamp", _number("qdamp", self.qdamp, minimum=0.0))
        set_(self, "qbroad", _number("qbroad", self.qbroad, minimum=0.0))
        set_(self, "default_uiso", _number("default_uiso", self.default_uiso, minimum=0.0))
        set_(self, "delta2", _number("delta2", self.delta2, minimum=0.0))
        if self.qstep is not None:
            set_(self, "qstep", _number("qstep", self.qstep, positive=True))
        items = self.uiso.items() if isinstance(self.uiso, Mapping) else self.uiso
        uiso = []
        try:
            for element, value in items:
                uiso.append((str(element), _number(f"uiso.{element}", value, minimum=0.0)))
        except (TypeError, ValueError):
            raise InputError(
                f"pdf.uiso must map element symbols to Uiso in Å², got {self.uiso!r}"
            ) from None
        set_(self, "uiso", tuple(uiso))

    def uiso_of(self, element: str) -> float:
        """Uiso (Å²) of ``element``: its entry in ``uiso``, else ``default_uiso``."""
        for name, value in self.uiso:
            if name == element:
                return value
        return self.default_uiso
