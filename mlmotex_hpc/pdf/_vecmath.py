"""A sine/cosine that the compiler can vectorise, for the per-pair setup of the kernels.

libm's ``sin``/``cos`` are opaque calls (10–20 ns each here, no SIMD), and the kernels
need one sine and one cosine per pair: for a motif of ~1,300 pairs that alone cost more
than the whole pair sum. This version is plain arithmetic, so loops that call it are
vectorised: reduction to |r| <= π/4 with π/2 split in two (the product n·P1 is exact for
|x| < 2^20), then Taylor series of sin and cos to degree 17/18, whose truncation error on
|r| <= π/4 is below 1e-19. Accuracy: a few units in the last place for |x| < 1e5.

It is compiled without ``reassoc`` so that the two-step reduction keeps its precision
even when inlined into kernels compiled with ``fastmath=True``.
"""

from __future__ import annotations

import math

import numba

# π/2 = _P1 + _P2 with _P1 holding only the leading 33 bits, so n·_P1 is exact.
_P1 = 1.57079632673412561417e00
_P2 = 6.07710050650619224932e-11
_TWO_OVER_PI = 2.0 / math.pi

# Taylor coefficients (-1)^k / (2k+1)! and (-1)^k / (2k)!
_S = tuple((-1.0) ** k / math.factorial(2 * k + 1) for k in range(1, 9))
_C = tuple((-1.0) ** k / math.factorial(2 * k) for k in range(1, 10))
_S1, _S2, _S3, _S4, _S5, _S6, _S7, _S8 = _S
_C1, _C2, _C3, _C4, _C5, _C6, _C7, _C8, _C9 = _C

_PRECISE = {"nnan", "ninf", "nsz", "contract"}


@numba.njit(cache=True, fastmath=_PRECISE)
def sincos(x: float) -> tuple[float, float]:
    """(sin x, cos x) for a float64 ``x`` (radians)."""
    n = math.floor(x * _TWO_OVER_PI + 0.5)
    r = (x - n * _P1) - n * _P2
    z = r * r
    sr = r + r * z * (
        _S1 + z * (_S2 + z * (_S3 + z * (_S4 + z * (_S5 + z * (_S6 + z * (_S7 + z * _S8))))))
    )
    cr = 1.0 + z * (
        _C1 + z * (_C2 + z * (_C3 + z * (_C4 + z * (_C5 + z * (_C6 + z * (_C7 + z * (
            _C8 + z * _C9))))))))
    k = int(n) & 3
    if k & 1:
        s, c = cr, sr
    else:
        s, c = sr, cr
    if k & 2:
        s = -s
    if (k + 1) & 2:
        c = -c
    return s, c


# Taylor coefficients 1/k! of exp, k = 2..11
_E = tuple(1.0 / math.factorial(k) for k in range(2, 12))
_E2, _E3, _E4, _E5, _E6, _E7, _E8, _E9, _E10, _E11 = _E


@numba.njit(cache=True, fastmath=_PRECISE)
def vexp(x: float) -> float:
    """exp(x) for moderate |x| (< 100), as plain arithmetic that the compiler vectorises.

    exp(x) = exp(x / 256)^256: a degree-11 Taylor series on |x / 256| < 0.4 (truncation
    below 1e-17 relative) then eight squarings, which multiply the rounding error by
    about 256: a relative error of a few 1e-14, ample for Debye-Waller factors.
    """
    y = x * (1.0 / 256.0)
    p = 1.0 + y * (1.0 + y * (_E2 + y * (_E3 + y * (_E4 + y * (_E5 + y * (_E6 + y * (
        _E7 + y * (_E8 + y * (_E9 + y * (_E10 + y * _E11))))))))))
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    return p * p
