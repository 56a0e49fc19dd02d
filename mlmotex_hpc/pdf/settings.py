"""The parameters of a PDF calculation, shared by both calculators."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import InitVar, dataclass

from ..errors import InputError

CALCULATORS = ("debye", "realspace")
RADIATIONS = ("xray", "neutron")


#: The largest Qmax (Å⁻¹) of each radiation. Every array and loop of a calculation grows
#: with Qmax (Q points, the r × Q sine tables), so an absurd value (a header's 1e6) would
#: exhaust memory or never finish; these bounds stop it with one line first.
#:
#: * X-ray: 4π · 6 Å⁻¹ = 75.4 Å⁻¹, where the Waasmaier–Kirfel form-factor fits end
#:   (sin θ/λ ≤ 6 Å⁻¹ for every element, :func:`.scattering.xray_qmax`); measured
#:   X-ray PDFs stop at 30-45 Å⁻¹ (100 keV photons, 2θ up to about 50°).
#: * Neutron: 100 Å⁻¹. Spallation-source diffractometers (NOMAD, GEM, NIMROD) measure
#:   to 50-100 Å⁻¹; beyond, even a stiff pair's Debye–Waller factor exp(−σ²Q²/2) with
#:   σ² = 0.002 Å² is below 5·10⁻⁵ at 100 Å⁻¹, so higher Q adds nothing but cost.
QMAX_LIMITS = {"xray": 4.0 * math.pi * 6.0, "neutron": 100.0}
_QMAX_WHY = {
    "xray": "the Waasmaier-Kirfel X-ray form factors end at sin θ/λ = 6 Å⁻¹",
    "neutron": "measured neutron PDFs reach 50-100 Å⁻¹; beyond, thermal motion has "
               "damped every pair",
}
#: Most Q points of a calculation, counted from Q = 0 to Qmax: Qmax 100 Å⁻¹ at the
#: config's smallest qstep, 0.001 Å⁻¹ (DiffPy's own grid, π / extended rmax, reaches it
#: only for an r range beyond 3000 Å at Qmax 100 Å⁻¹).
MAX_Q_POINTS = 100_000


#: Biso = 8π² Uiso, as DiffPy converts.
BISO_PER_UISO = 8.0 * math.pi**2


def uiso_from_biso(biso: float) -> float:
    """Isotropic displacement U (Å²) from a Debye–Waller B (Å²): U = B / (8π²)."""
    return float(biso) / BISO_PER_UISO


def _number(name: str, value, *, minimum: float | None = None, positive: bool = False,
            label: str | None = None) -> float:
    label = label or f"pdf.{name}"
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{label} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise InputError(f"{label} must be finite, got {value!r}")
    if positive and x <= 0.0:
        raise InputError(f"{label} must be > 0, got {x}")
    if minimum is not None and x < minimum:
        raise InputError(f"{label} must be >= {minimum}, got {x}")
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
    sources : mapping of str to str, optional (init only)
        How error messages name a setting, by field name, e.g. ``{"qmax": "--qmax"}`` or
        ``{"qmax": "qmax in the header of data.gr"}``; ``pdf.<name>`` otherwise.

    Raises
    ------
    InputError
        For a value out of range, a Qmax beyond :data:`QMAX_LIMITS` or a qstep that
        makes more than :data:`MAX_Q_POINTS` Q points.
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
    sources: InitVar[Mapping[str, str] | None] = None

    def __post_init__(self, sources: Mapping[str, str] | None = None) -> None:
        names = dict(sources or {})

        def label(name: str) -> str:
            return names.get(name, f"pdf.{name}")

        if self.calculator not in CALCULATORS:
            raise InputError(
                f"{label('calculator')} must be one of {', '.join(CALCULATORS)}, got "
                f"{self.calculator!r}"
            )
        if self.radiation not in RADIATIONS:
            raise InputError(
                f"{label('radiation')} must be one of {', '.join(RADIATIONS)}, got "
                f"{self.radiation!r}"
            )
        set_ = object.__setattr__  # frozen: normalise fields once, here
        set_(self, "qmin", _number("qmin", self.qmin, minimum=0.0, label=label("qmin")))
        set_(self, "qmax", _number("qmax", self.qmax, positive=True, label=label("qmax")))
        limit = QMAX_LIMITS[self.radiation]
        if self.qmax > limit:
            raise InputError(
                f"{label('qmax')} = {self.qmax:g} Å⁻¹ is above {limit:.1f} Å⁻¹, the largest "
                f"Qmax for {self.radiation} radiation ({_QMAX_WHY[self.radiation]})"
            )
        if self.qmax <= self.qmin:
            raise InputError(f"{label('qmax')} ({self.qmax}) must be larger than "
                             f"{label('qmin')} ({self.qmin})")
        for name in ("qdamp", "qbroad", "default_uiso", "delta2"):
            set_(self, name, _number(name, getattr(self, name), minimum=0.0, label=label(name)))
        if self.qstep is not None:
            set_(self, "qstep", _number("qstep", self.qstep, positive=True,
                                        label=label("qstep")))
            # the Debye kernel runs its recurrences from Q = 0 to Qmax
            points = self.qmax / self.qstep
            if points > MAX_Q_POINTS:
                raise InputError(
                    f"{label('qstep')} = {self.qstep:g} Å⁻¹ makes {points:,.0f} Q steps up to "
                    f"qmax = {self.qmax:g} Å⁻¹; at most {MAX_Q_POINTS:,} are computed: use "
                    f"qstep >= {self.qmax / MAX_Q_POINTS:.3g} Å⁻¹"
                )
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
