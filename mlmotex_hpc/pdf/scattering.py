"""Per-element scattering weights: X-ray form factors and neutron scattering lengths.

Both come from the ``periodictable`` package rather than a hand-copied table:

* X-ray: the Waasmaier–Kirfel (1995) nine-parameter fits of the free-atom form factor,
  ``periodictable.cromermann.fxrayatq`` (the same table DiffPy-CMI and DebyeCalculator
  use; f_W(0) = 73.963574 electrons). No anomalous (f', f'') terms.
* Neutron: the bound coherent scattering length ``b_c`` (fm) of the natural element,
  independent of Q.

Only ratios of weights enter the normalised PDF, so the units (electrons, fm) cancel.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np
import periodictable
from periodictable import cromermann

from ..errors import InputError

RADIATIONS = ("xray", "neutron")


def _element(symbol: str) -> periodictable.core.Element:
    """The ``periodictable`` element for ``symbol``, or an InputError."""
    element = getattr(periodictable, str(symbol), None)
    if not isinstance(element, periodictable.core.Element) or element.number == 0:
        raise InputError(f"unknown element {symbol!r}: expected a symbol such as 'W' or 'Fe'")
    return element


@cache
def _check_xray(symbol: str) -> None:
    _element(symbol)
    try:
        cromermann.fxrayatq(symbol, 0.0)
    except KeyError:
        raise InputError(
            f"element {symbol!r} has no Waasmaier-Kirfel X-ray form factor "
            "(the table covers H to Cf); use radiation: neutron or another model"
        ) from None


def xray_form_factor(symbol: str, q: np.ndarray | float) -> np.ndarray:
    """Waasmaier–Kirfel X-ray form factor of a neutral atom.

    Parameters
    ----------
    symbol : str
        Element symbol, ``periodictable`` capitalisation (``"W"``, ``"Fe"``).
    q : float or ndarray
        Scattering vector magnitude Q = 4π sin θ / λ (Å⁻¹).

    Returns
    -------
    ndarray
        f(Q) in electrons, the shape of ``q``.

    Raises
    ------
    InputError
        When the element is unknown or outside the Waasmaier–Kirfel table.
    """
    _check_xray(symbol)
    q = np.asarray(q, dtype=float)
    limit = xray_qmax(symbol)
    if q.size and float(np.max(q)) > limit:
        raise InputError(
            f"X-ray form factors of {symbol} (Waasmaier-Kirfel) are tabulated up to "
            f"Q = {limit:.1f} Å⁻¹ (sin θ/λ ≤ {limit / (4 * np.pi):g} Å⁻¹), but Q reaches "
            f"{float(np.max(q)):g} Å⁻¹: lower qmax to at most {limit:.1f} Å⁻¹ or use "
            "neutron radiation")
    return np.asarray(cromermann.fxrayatq(symbol, q), dtype=float)


@cache
def xray_qmax(symbol: str) -> float:
    """The largest Q (Å⁻¹) at which the element's X-ray form factor is tabulated."""
    return float(4 * np.pi * cromermann.getCMformula(symbol).stollimit)


def neutron_length(symbol: str) -> float:
    """Bound coherent neutron scattering length b_c (fm) of the natural element.

    Raises
    ------
    InputError
        When the element is unknown or ``periodictable`` has no coherent length for it.
    """
    element = _element(symbol)
    neutron = getattr(element, "neutron", None)
    b_c = None if neutron is None else neutron.b_c
    if b_c is None or not np.isfinite(b_c):
        raise InputError(
            f"element {symbol!r} has no tabulated coherent neutron scattering length; "
            "use radiation: xray"
        )
    return float(b_c)


def check_radiation(radiation: str) -> str:
    """Return ``radiation`` when it is ``"xray"`` or ``"neutron"``, else raise InputError."""
    if radiation not in RADIATIONS:
        raise InputError(f"radiation must be one of {', '.join(RADIATIONS)}, got {radiation!r}")
    return radiation


def scattering_weights(
    elements: Sequence[str], q: np.ndarray, radiation: str = "xray"
) -> np.ndarray:
    """Scattering weight of each element at each Q.

    Parameters
    ----------
    elements : sequence of str
        Distinct element symbols.
    q : ndarray, shape (nq,)
        Q values (Å⁻¹).
    radiation : {"xray", "neutron"}
        X-ray form factors (electrons) or neutron coherent lengths (fm, constant in Q).

    Returns
    -------
    ndarray, shape (len(elements), nq)
    """
    check_radiation(radiation)
    q = np.atleast_1d(np.asarray(q, dtype=float))
    out = np.empty((len(elements), q.size))
    for a, symbol in enumerate(elements):
        if radiation == "xray":
            out[a] = xray_form_factor(symbol, q)
        else:
            out[a] = neutron_length(symbol)
    return out


def forward_weight(symbol: str, radiation: str = "xray") -> float:
    """Weight at Q = 0: f(0) for X-rays (electrons), b_c for neutrons (fm)."""
    return float(scattering_weights([symbol], np.zeros(1), radiation)[0, 0])
