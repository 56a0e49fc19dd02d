"""Straightforward implementations of both calculators and of the scale + zoom fit.

Plain NumPy, one formula per line, no recurrences, no pair grouping, no caching: slow
and easy to check by eye against METHOD.md. They exist to check the fast code (the
test suite and ``benchmarks/`` compare against them) and share with it only the inputs
a calculator is built from: the Q grid, the pair window, the peak grid and the
scattering factors.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize

from .calculator import DebyeCalculator, PDFCalculator
from .grids import GAUSS_SIGMA_TO_FWHM, PEAK_HALF_BOUND


def _pairs(calc: PDFCalculator, xyz: np.ndarray, mask: np.ndarray, zoom: float, uiso=None):
    """Zoomed distances, U_i + U_j and f-table rows (i, j) of the kept pairs i < j
    (``uiso``: Uiso per element overriding the calculator's)."""
    atoms = np.flatnonzero(mask)
    i, j = np.triu_indices(atoms.size, 1)
    i, j = atoms[i], atoms[j]
    d = zoom * np.linalg.norm(xyz[i] - xyz[j], axis=1)
    u_el = np.array([(uiso or {}).get(el, u) for el, u in zip(calc.elements, calc._u_el,
                                                               strict=True)])
    u = u_el[calc._atom_type]
    keep = (d >= calc.grid.pair_rmin) & (d <= calc.grid.pair_rmax) & (d > 0.0)
    i, j, d = i[keep], j[keep], d[keep]
    return d, u[i] + u[j], calc._atom_type[i], calc._atom_type[j], atoms


def _sigma2(calc: PDFCalculator, d: np.ndarray, u: np.ndarray, delta2=None) -> np.ndarray:
    s = calc.settings
    delta2 = s.delta2 if delta2 is None else delta2
    return np.maximum(u * (1.0 - delta2 / d**2 + (s.qbroad * d) ** 2), 0.0)


def reference_gr(calc: PDFCalculator, xyz: np.ndarray, mask: np.ndarray, zoom: float = 1.0,
                 uiso=None, delta2=None):
    """G(r) on ``calc.r`` of the atoms in ``mask`` of the parent ``xyz``, expanded by zoom;
    ``uiso`` (per element) and ``delta2`` override the calculator's, on its grids."""
    mask = np.asarray(mask, dtype=bool)
    d, u, ta, tb, atoms = _pairs(calc, np.asarray(xyz, dtype=float), mask, zoom, uiso)
    q = calc.q
    envelope = np.exp(-0.5 * (calc.settings.qdamp * calc.r) ** 2)
    to_r = (2.0 / math.pi) * calc.qstep * np.sin(np.outer(calc.r, q)) * envelope[:, None]
    s2 = _sigma2(calc, d, u, delta2)
    if isinstance(calc, DebyeCalculator):
        f = calc._f  # f(Q) per element
        n_f = f[calc._atom_type[atoms]].sum(axis=0)  # N <f(Q)>
        terms = (
            2.0 * f[ta] * f[tb] * np.exp(-0.5 * np.outer(s2, q**2))
            * np.sin(np.outer(d, q)) / d[:, None]
        )
        fq = terms.sum(axis=0) * atoms.size / n_f**2
        return to_r @ fq
    # real space: cropped Gaussians with f(0) weights on the peak grid
    g = calc.grid
    f0 = calc._f0
    r_peak = g.dr * np.arange(g.m_lo, g.m_hi)
    g0 = np.zeros(r_peak.size)
    norm = atoms.size / f0[calc._atom_type[atoms]].sum() ** 2
    for dist, var, a, b in zip(d, s2, ta, tb, strict=True):
        if var <= 0.0:
            continue
        sigma = math.sqrt(var)
        bound = PEAK_HALF_BOUND * GAUSS_SIGMA_TO_FWHM * sigma
        lo = max(g.m_lo, math.floor((dist - bound) / g.dr))
        hi = min(g.m_hi - 1, math.floor((dist + bound) / g.dr))
        m = np.arange(lo, hi + 1)
        x = m * g.dr - dist
        g0[m - g.m_lo] += (
            norm * 2.0 * f0[a] * f0[b] / (dist * sigma * math.sqrt(2.0 * math.pi))
            * np.exp(-0.5 * x**2 / var)
        )
    fq = g.dr * np.sin(np.outer(q, r_peak)) @ g0
    return to_r @ fq


def reference_fit(
    calc: PDFCalculator,
    xyz: np.ndarray,
    mask: np.ndarray,
    g_obs: np.ndarray,
    zoom_bounds: tuple[float, float],
    weights: np.ndarray | None = None,
    xatol: float = 1e-7,
) -> tuple[float, float, float]:
    """(Rw, scale, zoom) of a bounded search over zoom on :func:`reference_gr`."""
    w = np.ones_like(g_obs) if weights is None else weights

    def score(zoom: float) -> tuple[float, float]:
        gc = reference_gr(calc, xyz, mask, zoom)
        scale = np.sum(w * g_obs * gc) / np.sum(w * gc * gc)
        rw = math.sqrt(np.sum(w * (g_obs - scale * gc) ** 2) / np.sum(w * g_obs**2))
        return rw, scale

    res = optimize.minimize_scalar(
        lambda z: score(z)[0], bounds=zoom_bounds, method="bounded",
        options={"xatol": xatol, "maxiter": 500},
    )
    rw, scale = score(float(res.x))
    return rw, scale, float(res.x)
