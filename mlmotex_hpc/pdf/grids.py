"""DiffPy-CMI's r-range extensions and Q grids, re-derived so that our numbers match it.

DiffPy (libdiffpy 1.4) never computes a PDF on exactly the requested r range:

* Both calculators extend the range by the *termination ripples* of Qmax,
  6 · 2π / Qmax (Å), so that peaks just outside the range still ripple into it.
* They also extend it by the *peak tails*: the half-width at which the widest possible
  Gaussian peak (msd = 2 · max Uiso, widened by qbroad at the range ends) falls to the
  peak precision 3.33e-6 of its maximum, i.e. 2.13 FWHM.
* Pairs farther apart than ``rmax + extension`` (rounded up to the r step) are left out.
* DebyePDFCalculator samples F(Q) with Δq = π / (extended rmax) from Q = 0 and zeroes
  F below Qmin; PDFCalculator transforms on an FFT grid of 2^n r steps, so its
  Δq = π / (2^n · rstep).

The r grid a user asks for is turned into DiffPy's (rmin, rmax, rstep) the way
diffpy.srfit's PDF generator does: rstep = (r[-1] − r[0]) / (n − 1), rmin = r[0],
rmax = r[-1] + rstep / 2 (so that r[-1] itself is included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .settings import MAX_Q_POINTS

#: DiffPy's number of termination ripples kept beyond rmax.
NRIPPLES = 6
#: DiffPy's default peak precision (PDFCalculator and the Debye peak-tail extension).
PEAK_PRECISION = 3.33e-6
#: Half-width of a cropped Gaussian, in FWHM, at PEAK_PRECISION.
PEAK_HALF_BOUND = math.sqrt(-math.log(PEAK_PRECISION) / (4.0 * math.log(2.0)))
#: FWHM of a Gaussian of unit standard deviation.
GAUSS_SIGMA_TO_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))
#: DiffPy's cap on the total r extension (Å).
MAX_EXTENSION = 10.0
#: The finest r step needed to sample Gaussian peaks (Å); coarser data grids are refined.
MAX_RSTEP = 0.01
#: libdiffpy's tolerance for "equal" grid positions.
_EPS = math.sqrt(np.finfo(float).eps)
#: Most entries (float64) of one of the calculators' r × Q sine tables: 2^28, 2 GiB.
#: A fit to 300 Å at 0.01 Å with Qmax 50 Å⁻¹ needs 1.5·10⁸; the data's finest sensible
#: step is far coarser than the 10⁻⁴ Å grids that would otherwise ask for tens of GiB.
#: (:func:`mlmotex_hpc.pipeline.inputs.memory_estimate` counts the tables a run holds.)
MAX_TABLE_ENTRIES = 2**28


def check_table(n_r: int, n_q: int, what: str) -> None:
    """Refuse an r × Q table of more than :data:`MAX_TABLE_ENTRIES` entries, before it
    is allocated (``what`` describes the grid in the message)."""
    if n_r * n_q > MAX_TABLE_ENTRIES:
        raise InputError(
            f"the PDF calculation needs a table of {n_r:,} r x {n_q:,} Q points "
            f"({n_r * n_q * 8 / 2**30:.1f} GiB; {what}), more than the "
            f"{MAX_TABLE_ENTRIES * 8 / 2**30:.0f} GiB allowed: narrow the r range (a run's "
            "fit.rmin/fit.rmax, pdf's --rmin/--rmax), coarsen its step (resample the data; "
            "pdf's --rstep) or lower qmax"
        )


def check_q_points(kmax: int, qmax: float, dq: float) -> None:
    """Refuse a Q grid of more than :data:`MAX_Q_POINTS` steps from Q = 0 to ``qmax``."""
    if kmax > MAX_Q_POINTS:
        raise InputError(
            f"the PDF calculation's Q grid has {kmax:,} steps of {dq:.3g} Å⁻¹ from 0 to "
            f"qmax = {qmax:g} Å⁻¹ (the step is π over the r range's extended end), more "
            f"than the {MAX_Q_POINTS:,} allowed: narrow the r range (a run's fit.rmax, pdf's "
            "--rmax) or lower qmax"
        )


@dataclass(frozen=True)
class RRange:
    """DiffPy's description of an r grid: points ``k·rstep`` with rmin <= r < rmax (Å)."""

    rmin: float
    rmax: float
    rstep: float


def check_r(r: np.ndarray) -> np.ndarray:
    """The r grid as a float64 array, or an InputError when it is not usable."""
    r = np.ascontiguousarray(np.asarray(r, dtype=float).ravel())
    if r.size == 0:
        raise InputError("the r grid is empty")
    if not np.all(np.isfinite(r)) or r[0] < 0.0:
        raise InputError("the r grid must hold finite, non-negative values (Å)")
    if r.size > 1 and np.any(np.diff(r) <= 0.0):
        raise InputError("the r grid must be strictly increasing")
    return r


def r_range(r: np.ndarray) -> RRange:
    """DiffPy's (rmin, rmax, rstep) for an output grid, as diffpy.srfit sets them.

    The step is capped at :data:`MAX_RSTEP` so that Gaussian peaks stay resolved when
    the data are coarser (e.g. Nyquist-sampled).
    """
    lo, hi = float(r[0]), float(r[-1])
    rstep = (hi - lo) / (r.size - 1) if r.size > 1 else MAX_RSTEP
    rstep = min(rstep, MAX_RSTEP)
    return RRange(lo, hi + 0.5 * rstep, rstep)


def rmin_steps(rmin: float, step: float) -> int:
    """Index of the first grid point k·step >= rmin (libdiffpy's rounding)."""
    n = int(math.ceil(rmin / step))
    if abs(rmin - (n - 1) * step) <= _EPS:
        n -= 1
    return n


def rmax_steps(rmax: float, step: float) -> int:
    """One past the index of the last grid point k·step < rmax."""
    return int(math.ceil(rmax / step))


def msd_sharpening(r: float, delta2: float, qbroad: float) -> float:
    """DiffPy's Jeong factor on σ²: 1 − delta2/r² + (qbroad·r)² (0 at r = 0)."""
    if r < np.finfo(float).eps:
        return 0.0
    return 1.0 - delta2 / (r * r) + (qbroad * r) ** 2


def peak_tail_extension(max_uiso: float, rr: RRange, delta2: float, qbroad: float) -> float:
    """Half-width (Å) of the widest cropped Gaussian peak DiffPy expects in the range."""
    maxmsd = 2.0 * max_uiso
    if maxmsd <= 0.0:
        return 0.0
    sharp = max(msd_sharpening(rr.rmin, delta2, qbroad), msd_sharpening(rr.rmax, delta2, qbroad))
    maxfwhm = GAUSS_SIGMA_TO_FWHM * math.sqrt(maxmsd) * math.sqrt(max(1.0, sharp))
    return PEAK_HALF_BOUND * maxfwhm


@dataclass(frozen=True)
class DebyeGrid:
    """Q grid and pair-distance window of the Debye calculator.

    Attributes
    ----------
    q0, dq : float
        First Q and Q step (Å⁻¹); Q_k = q0 + k·dq, k = 0 … nq − 1.
    nq : int
        Number of Q points.
    kstart : int
        q0 / dq when that is a whole number (then q0 = kstart·dq exactly), else −1.
    pair_rmin, pair_rmax : float
        Pairs (after zoom) outside [pair_rmin, pair_rmax] are left out (Å).
    extended_rmax : float
        DiffPy's ``extendedrmax`` (Å); NaN for a user-given qstep.
    """

    q0: float
    dq: float
    nq: int
    kstart: int
    pair_rmin: float
    pair_rmax: float
    extended_rmax: float

    @property
    def q(self) -> np.ndarray:
        """The Q values (Å⁻¹)."""
        return self.q0 + self.dq * np.arange(self.nq)


def debye_grid(
    rr: RRange, qmin: float, qmax: float, qstep: float | None, max_uiso: float,
    delta2: float, qbroad: float,
) -> DebyeGrid:
    """The Debye calculator's Q grid: DiffPy's when ``qstep`` is None, else qmin + k·qstep."""
    if qstep is not None:
        check_q_points(int(math.ceil(qmax / qstep)), qmax, qstep)  # PDFSettings checked it
        nq = max(int(math.ceil((qmax - qmin) / qstep)), 0)
        k = round(qmin / qstep)
        kstart = k if abs(qmin - k * qstep) <= 1e-12 * max(qmin, 1.0) else -1
        return DebyeGrid(qmin, qstep, nq, kstart, 0.0, math.inf, math.nan)
    ext = min(
        MAX_EXTENSION,
        NRIPPLES * 2.0 * math.pi / qmax + peak_tail_extension(max_uiso, rr, delta2, qbroad),
    )
    lo = max(0, rmin_steps(rr.rmin - ext, rr.rstep)) * rr.rstep
    hi = rmax_steps(rr.rmax + ext, rr.rstep) * rr.rstep
    dq = math.pi / hi if qmax * hi / math.pi > 4 else qmax / 4.0
    kmin = rmin_steps(qmin, dq)
    kmax = rmax_steps(qmax, dq)
    check_q_points(kmax, qmax, dq)
    return DebyeGrid(kmin * dq, dq, max(kmax - kmin, 0), kmin, lo, hi, hi)


@dataclass(frozen=True)
class RealSpaceGrid:
    """Grids of the real-space calculator (DiffPy PDFCalculator).

    Attributes
    ----------
    dr : float
        r step of the peak grid (Å).
    m_lo, m_hi : int
        The peaks are sampled at r_m = m·dr, m_lo <= m < m_hi (the ripple-extended range
        that DiffPy transforms to Q).
    pair_rmin, pair_rmax : float
        Pairs (after zoom) outside [pair_rmin, pair_rmax] are left out (Å).
    dq : float
        Q step of the transform, π / (2^n dr) (Å⁻¹).
    kmin, kmax : int
        Q points kept in the window: Q_k = k·dq, kmin <= k < kmax.
    """

    dr: float
    m_lo: int
    m_hi: int
    pair_rmin: float
    pair_rmax: float
    dq: float
    kmin: int
    kmax: int

    @property
    def q(self) -> np.ndarray:
        """The Q values inside the window (Å⁻¹)."""
        return self.dq * np.arange(self.kmin, self.kmax)

    @property
    def extended_rmax(self) -> float:
        """DiffPy's ``extendedrmax`` (Å)."""
        return self.m_hi * self.dr


def realspace_grid(
    rr: RRange, qmin: float, qmax: float, max_uiso: float, delta2: float, qbroad: float
) -> RealSpaceGrid:
    """PDFCalculator's peak grid, pair window and FFT Q grid for an output range."""
    dr = rr.rstep
    nyquist = math.pi / dr
    qmax_eff = min(qmax, nyquist)
    ripples = NRIPPLES * 2.0 * math.pi / qmax_eff if 0.0 < qmax_eff < nyquist - _EPS else 0.0
    tails = peak_tail_extension(max_uiso, rr, delta2, qbroad)
    total = ripples + tails
    if total > MAX_EXTENSION:
        ripples *= MAX_EXTENSION / total
        total = MAX_EXTENSION
    m_lo = max(0, rmin_steps(rr.rmin - ripples, dr))
    m_hi = rmax_steps(rr.rmax + ripples, dr)
    pair_lo = max(0, rmin_steps(rr.rmin - total, dr)) * dr
    pair_hi = rmax_steps(rr.rmax + total, dr) * dr
    npad = 1 << int(math.ceil(math.log2(max(m_hi, 1))))
    dq = math.pi / (npad * dr)
    kmin = rmin_steps(qmin, dq)
    kmax = min(rmax_steps(qmax_eff, dq), npad)
    return RealSpaceGrid(dr, m_lo, m_hi, pair_lo, pair_hi, dq, kmin, max(kmax, kmin))
