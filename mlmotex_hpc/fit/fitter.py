"""Step 2: fit a motif's PDF to the measured G(r).

The model is ``G_calc(r) = scale * G(r; zoom, Uiso, delta2)``. The scale has a closed form
given the rest, so only the other refined parameters need a search: a bounded 1-D search
for zoom alone (the default), L-BFGS-B when Uiso or delta2 are freed as well.
Fit quality is DiffPy-CMI's ``Rw = sqrt(sum w (Gobs - Gcalc)^2 / sum w Gobs^2)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize

from ..config import DELTA2_BOUNDS, UISO_BOUNDS

#: ``/fits/status`` codes.
STATUS_OK = 0
STATUS_NOT_CONVERGED = 1
STATUS_NO_PAIRS = 2
STATUS_AT_BOUND = 3
STATUS_NAMES = {STATUS_OK: "ok", STATUS_NOT_CONVERGED: "not converged", STATUS_NO_PAIRS: "no pairs",
                STATUS_AT_BOUND: "Uiso or delta2 at a bound"}



@dataclass(frozen=True)
class FitSettings:
    """What is refined and within which bounds.

    Attributes
    ----------
    refine : tuple of str
        Drawn from ``scale``, ``zoom``, ``uiso``, ``delta2``; scale is always refined.
    zoom_bounds : (float, float)
        Allowed isotropic expansion, e.g. (0.99, 1.01).
    uiso_elements : tuple of str
        Elements whose Uiso is freed when ``uiso`` is refined.
    xatol : float
        Tolerance on zoom for the 1-D search.
    uiso_bounds, delta2_bounds : (float, float)
        Bounds of freed Uiso (Å², every element) and delta2 (Å²).
    """

    refine: tuple[str, ...] = ("scale", "zoom")
    zoom_bounds: tuple[float, float] = (0.99, 1.01)
    uiso_elements: tuple[str, ...] = ()
    xatol: float = 1e-6
    uiso_bounds: tuple[float, float] = UISO_BOUNDS
    delta2_bounds: tuple[float, float] = DELTA2_BOUNDS


@dataclass(frozen=True)
class FitResult:
    """The outcome of one motif's fit to one data set."""

    rw: float
    scale: float
    zoom: float
    status: int
    uiso: Mapping[str, float] = field(default_factory=dict)
    delta2: float | None = None
    evaluations: int = 0


def scale_and_rw(
    g_obs: np.ndarray, g_calc: np.ndarray, weights: np.ndarray | None = None
) -> tuple[float, float]:
    """Best scale (closed form) and the resulting Rw.

    Parameters
    ----------
    g_obs, g_calc : ndarray
        Observed and calculated G(r) on the same points (Å⁻²).
    weights : ndarray, optional
        Per-point weights w (1/dG²); unit weights when omitted.

    Returns
    -------
    scale, rw : float
        ``scale = sum w Gobs Gcalc / sum w Gcalc^2`` (0 when Gcalc vanishes) and
        ``Rw = sqrt(sum w (Gobs - scale Gcalc)^2 / sum w Gobs^2)``.
    """
    w = 1.0 if weights is None else weights
    norm = float(np.sum(w * g_obs * g_obs))
    gg = float(np.sum(w * g_calc * g_calc))
    if gg <= 0.0 or norm <= 0.0:
        return 0.0, 1.0
    scale = float(np.sum(w * g_obs * g_calc)) / gg
    # Expanded form of the residual: avoids a temporary array per evaluation.
    resid = norm - scale * scale * gg
    return scale, float(np.sqrt(max(resid, 0.0) / norm))


def rw(g_obs: np.ndarray, g_calc: np.ndarray, weights: np.ndarray | None = None) -> float:
    """DiffPy-CMI's Rw of ``g_calc`` against ``g_obs`` (no scale applied)."""
    w = 1.0 if weights is None else weights
    return float(np.sqrt(np.sum(w * (g_obs - g_calc) ** 2) / np.sum(w * g_obs**2)))


def fit_motif(
    calc,
    motif,
    g_obs: np.ndarray,
    settings: FitSettings,
    weights: np.ndarray | None = None,
    base_uiso: Mapping[str, float] | None = None,
    base_delta2: float = 0.0,
) -> FitResult:
    """Fit one prepared motif to one data set.

    Parameters
    ----------
    calc
        A PDF calculator from :func:`mlmotex_hpc.pdf.make_calculator` whose r grid is the
        data's fit range.
    motif
        ``calc.prepare(mask)`` for the motif.
    g_obs : ndarray
        Measured G(r) on ``calc.r``.
    settings : FitSettings
        Refined parameters and bounds.
    weights : ndarray, optional
        Per-point weights; unit weights when omitted.
    base_uiso : mapping, optional
        Starting Uiso per element (Å²) when Uiso is refined.
    base_delta2 : float
        Starting delta2 (Å²) when delta2 is refined.
    """
    refine_zoom = "zoom" in settings.refine
    refine_uiso = "uiso" in settings.refine and settings.uiso_elements
    refine_delta2 = "delta2" in settings.refine
    evaluations = 0

    def model(zoom: float, uiso=None, delta2=None) -> np.ndarray:
        nonlocal evaluations
        evaluations += 1
        return calc.gr(motif, zoom=zoom, uiso=uiso, delta2=delta2)

    g1 = model(1.0)
    if not np.any(g1):
        return FitResult(1.0, 0.0, 1.0, STATUS_NO_PAIRS, evaluations=evaluations)

    if not (refine_uiso or refine_delta2):
        if not refine_zoom:
            scale, best = scale_and_rw(g_obs, g1, weights)
            return FitResult(best, scale, 1.0, STATUS_OK, evaluations=evaluations)
        res = optimize.minimize_scalar(
            lambda z: scale_and_rw(g_obs, model(z), weights)[1],
            bounds=settings.zoom_bounds,
            method="bounded",
            options={"xatol": settings.xatol, "maxiter": 200},
        )
        zoom = float(res.x)
        scale, best = scale_and_rw(g_obs, model(zoom), weights)
        status = STATUS_OK if res.success else STATUS_NOT_CONVERGED
        return FitResult(best, scale, zoom, status, evaluations=evaluations)

    # General case: zoom, per-element Uiso and delta2 by L-BFGS-B, scale in closed form.
    base_uiso = dict(base_uiso or {})
    elements: Sequence[str] = settings.uiso_elements if refine_uiso else ()
    x0, bounds = [], []
    if refine_zoom:
        x0.append(1.0)
        bounds.append(settings.zoom_bounds)
    for el in elements:
        x0.append(float(np.clip(base_uiso.get(el, 0.005), *settings.uiso_bounds)))
        bounds.append(settings.uiso_bounds)
    if refine_delta2:
        x0.append(float(np.clip(base_delta2, *settings.delta2_bounds)))
        bounds.append(settings.delta2_bounds)

    def unpack(x: np.ndarray) -> tuple[float, dict[str, float] | None, float | None]:
        i = 0
        zoom = 1.0
        if refine_zoom:
            zoom, i = float(x[0]), 1
        uiso = None
        if elements:
            uiso = {**base_uiso, **{el: float(v) for el, v in zip(elements, x[i:], strict=False)}}
            i += len(elements)
        delta2 = float(x[i]) if refine_delta2 else None
        return zoom, uiso, delta2

    def objective(x: np.ndarray) -> float:
        zoom, uiso, delta2 = unpack(x)
        return scale_and_rw(g_obs, model(zoom, uiso, delta2), weights)[1] ** 2

    res = optimize.minimize(
        objective, np.array(x0), method="L-BFGS-B", bounds=bounds,
        options={"maxiter": 200, "ftol": 1e-12},
    )
    zoom, uiso, delta2 = unpack(res.x)
    scale, best = scale_and_rw(g_obs, model(zoom, uiso, delta2), weights)
    status = STATUS_OK if res.success else STATUS_NOT_CONVERGED
    return FitResult(best, scale, zoom, status, uiso or {}, delta2, evaluations)
