"""Step 2 at full speed: whole batches of scale + zoom fits inside compiled code.

For each motif the work that does not depend on the data is done once: its pairs are
gathered from the parent's pair tables (O(motif pairs), not O(parent pairs)), and its
G(r) at zoom 1 is computed on an *extended* copy of the data's r grid. Each frame's fit
then runs in two rounds:

1. Zoom search on a model: an expansion by ``zoom`` moves a peak at r_ij to zoom·r_ij,
   so G_z(r) ≈ G_b(r·z_b/z) up to a constant factor (which the closed-form scale absorbs)
   and second-order changes of the peak widths, of f(Q) and of the Q window. Reading
   G_b at r·z_b/z is a 4-point cubic interpolation on the extended grid, a few
   nanoseconds per point, so Brent's bounded search costs no PDF evaluation at all.
2. The exact G(r) at the zoom found is computed, and the search is repeated around it
   with that G as the new base; the second-order error is now of order |z − z_b|, i.e.
   negligible. The reported Rw and scale are those of the exact G(r) at the final zoom.

So a fit costs three exact PDF evaluations (zoom 1, first and final zoom) instead of
the ~20 of a search on exact PDFs, and nothing of it runs in Python.

Time series (``zoom_search="shared"``): with many frames per motif the exact G at each
frame's own zoom would dominate (one Debye sum per frame). Instead every motif gets exact
G(r) at *anchor* zooms, a fixed grid of step about :data:`ANCHOR_STEP` over the zoom
range, computed lazily where some frame needs them and shared by all frames. The model at
a zoom between two anchors blends the two, each read at r·z_k/z; the blend cancels the
first-order error of a single rescaled anchor, leaving a few 1e-6 in Rw (measured on
the Fe2O3 model; tests hold it to 2e-5). A frame then costs a coarse scan on the zoom-1
G, a scan of the blended models on a fine zoom grid (:data:`FINE_PER_ANCHOR` points per
anchor step, built once per motif and shared) and a parabola through the best three
points: dot products only, no PDF. Each frame's result depends on that frame's data
alone, so a frame fitted with "shared" alone or among 150 others gives the same bits.

Only ``fit.refine: [scale]`` and ``[scale, zoom]`` take this path; freeing Uiso or
delta2 takes :mod:`.refining`, which reuses its zoom searches.

The compiled loops read their tables as named tuples (:class:`Parent`, :class:`Kernel`,
:class:`Rescale`, :class:`ZoomSearch`, :class:`Frame`, :class:`Results`), built once per
fitter, so that no kernel takes a long argument list.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np

from ..pdf.calculator import DebyeCalculator, PDFCalculator, RealSpaceCalculator
from ..pdf.debye import debye_fq
from ..pdf.grids import PEAK_HALF_BOUND
from ..pdf.realspace import gaussian_peaks
from .fitter import STATUS_NO_PAIRS, STATUS_NOT_CONVERGED, STATUS_OK, FitSettings

#: Calculator kinds understood by the compiled batch loop.
_DEBYE, _REALSPACE = 0, 1
_GOLDEN = 0.5 * (3.0 - math.sqrt(5.0))
_SQRT_EPS = math.sqrt(np.finfo(float).eps)
#: Evaluations allowed to one Brent search before a fit is marked not converged.
_MAXITER = 200
#: A second exact PDF is computed only when it would lower Rw by more than this.
_RW_GAIN = 1e-7
#: Half-width of the second search round, as a fraction of the zoom range.
_NEAR = 0.05
#: Zooms scanned across the range in round 1 before the slope's zero is found.
_SCAN = 9
#: Half-width of round 2's slope search around the first zoom, in zoom.
_ROOT_NEAR = 3e-4
#: Cubic interpolation needs two grid points on each side of the point it reads.
_MARGIN = 3
#: Target spacing of the anchor zooms of the shared (time-series) search.
ANCHOR_STEP = 0.002
#: Fine zoom-grid points per anchor step in the shared search.
FINE_PER_ANCHOR = 4
ZOOM_SEARCHES = ("exact", "shared")


# -- the tables the compiled loops read, by name ----------------------------------------


class Parent(NamedTuple):
    """The parent model's pair tables, from which each motif's pairs are gathered."""

    dmat: np.ndarray  # (n, n) pair distances (Å)
    tmat: np.ndarray  # (n, n) pair type
    atom_type: np.ndarray  # element index of each atom
    type_a: np.ndarray  # the two elements of each pair type
    type_b: np.ndarray
    nel: int  # elements


class Pairs(NamedTuple):
    """One motif's pairs: distances grouped by pair type, the groups' offsets ``seg``, and
    its atoms per element."""

    dist: np.ndarray
    seg: np.ndarray
    counts: np.ndarray


class Kernel(NamedTuple):
    """What the exact F(Q) needs besides the pairs (see :func:`_exact_fq`)."""

    kind: int  # _DEBYE or _REALSPACE
    pair_w: np.ndarray  # 2 f_a f_b per type, on Q (Debye) or at Q = 0 (real space)
    el_w: np.ndarray  # f per element, likewise
    to_q: np.ndarray  # real space: the peak grid's transform onto Q
    scalars: tuple  # Debye: q0, dq, kstart, pair_rmin, pair_rmax; real space: dr, m_lo, m_hi, ...
    qbroad: float


class Rescale(NamedTuple):
    """The extended r grid on which a model G(r) is read at r·z_b/z, and the data on it."""

    to_r: np.ndarray  # (extended points, nq): F(Q) to G(r), no envelope
    j0: int  # where the data's first point lies on the extended grid
    x0: float  # the extended grid's first r (Å)
    step: float  # its step (Å)
    r0: float  # the data's first r (Å)
    env: np.ndarray  # the qdamp envelope on the data points


class ZoomSearch(NamedTuple):
    """The zoom's bounds, whether it is refined, and the tolerance on it."""

    zlo: float
    zhi: float
    refine: bool
    xatol: float


class Frame(NamedTuple):
    """One frame's data, weights and Σ w g² (all points and every other point)."""

    g: np.ndarray
    w: np.ndarray
    gg: float
    gg_half: float


class Results(NamedTuple):
    """Where a batch's results go, each (frames, motifs)."""

    rw: np.ndarray
    scale: np.ndarray
    zoom: np.ndarray
    status: np.ndarray


def uniform_step(r: np.ndarray) -> float | None:
    """The step of a uniform grid, or None when the points are not evenly spaced."""
    if r.size < 2:
        return None
    h = (r[-1] - r[0]) / (r.size - 1)
    if h <= 0.0 or np.max(np.abs(np.diff(r) - h)) > 1e-6 * h:
        return None
    return float(h)


def supports(calc: PDFCalculator, settings: FitSettings) -> bool:
    """Whether :class:`BatchFitter` can fit with this calculator and these settings."""
    free = set(settings.refine) - {"scale", "zoom"}
    return (
        not free
        and isinstance(calc, (DebyeCalculator, RealSpaceCalculator))
        and uniform_step(calc.r) is not None
    )


class BatchFitter:
    """Scale + zoom fits of many motifs to the frames that share one r grid.

    Parameters
    ----------
    calc : DebyeCalculator or RealSpaceCalculator
        Built on the frames' r grid (uniform).
    settings : FitSettings
        ``refine`` drawn from scale and zoom only (see :func:`supports`).
    g_obs : ndarray, shape (F, n)
        Measured G(r) of each frame on ``calc.r``.
    weights : ndarray, shape (F, n), optional
        Per-point weights (1/dG²); unit weights when omitted.
    xatol : float
        Absolute tolerance on zoom.
    zoom_search : {"exact", "shared"}
        "exact": every frame's reported G is exact at its zoom (best for few frames);
        "shared": anchor zooms shared by the frames (time series, see the module
        notes). A config's ``auto`` is resolved by :func:`mlmotex_hpc.config.zoom_search`.
    """

    #: Whether this class fits these settings with this calculator.
    accepts = staticmethod(supports)

    def __init__(
        self,
        calc: PDFCalculator,
        settings: FitSettings,
        g_obs: np.ndarray,
        weights: np.ndarray | None = None,
        xatol: float = 1e-7,
        zoom_search: str = "exact",
    ) -> None:
        if not self.accepts(calc, settings):
            raise ValueError(f"{type(self).__name__} cannot fit {settings.refine} with {calc!r}")
        if zoom_search not in ZOOM_SEARCHES:
            raise ValueError(f"zoom_search must be one of {ZOOM_SEARCHES}, not {zoom_search!r}")
        self.calc = calc
        r = calc.r
        h = uniform_step(r)
        self.g_obs = np.ascontiguousarray(np.atleast_2d(g_obs), dtype=float)
        if weights is None:
            weights = np.ones_like(self.g_obs)
        self.weights = np.ascontiguousarray(np.broadcast_to(weights, self.g_obs.shape), dtype=float)
        self.refine_zoom = "zoom" in settings.refine
        self.zoom_bounds = (float(settings.zoom_bounds[0]), float(settings.zoom_bounds[1]))
        if not self.refine_zoom:
            self.zoom_bounds = (1.0, 1.0)
        self.xatol = float(xatol)
        zlo, zhi = self.zoom_bounds
        self.shared = self.refine_zoom and zoom_search == "shared"
        n_cells = max(1, math.ceil((zhi - zlo) / ANCHOR_STEP - 1e-9))
        self.anchors = np.linspace(zlo, zhi, n_cells + 1)
        # extended grid: the data points plus enough on each side to read G(r·z_b/z)
        below = max(0, math.ceil((r[0] - r[0] * zlo / zhi) / h)) + _MARGIN
        above = max(0, math.ceil((r[-1] * zhi / zlo - r[-1]) / h)) + _MARGIN
        self.j0 = below
        self.r_ext = r[0] + h * np.arange(-below, r.size + above)
        self.step = h
        self.envelope = np.ascontiguousarray(calc._envelope)
        # the transform onto the extended grid, without the qdamp envelope (which acts on
        # the observed r and is applied after the rescaling)
        q = calc.q
        self._to_r = np.ascontiguousarray(
            (2.0 / math.pi) * calc.qstep * np.sin(np.outer(self.r_ext, q))
        )
        dmat, tmat = calc.pair_matrices()
        self.parent = Parent(dmat, tmat, calc._atom_type, calc._type_a, calc._type_b,
                             len(calc.elements))
        g = calc.grid
        if isinstance(calc, DebyeCalculator):
            self.kernel = Kernel(_DEBYE, calc._ff, calc._f, np.zeros((1, 1)),  # no peak grid
                                 (g.q0, g.dq, float(g.kstart), g.pair_rmin, g.pair_rmax),
                                 float(calc.settings.qbroad))
        else:
            self.kernel = Kernel(
                _REALSPACE, np.ascontiguousarray(calc._weight)[:, None].copy(),
                np.ascontiguousarray(calc._f0)[:, None].copy(), calc._to_q,
                (g.dr, float(g.m_lo), float(g.m_hi), g.pair_rmin, g.pair_rmax),
                float(calc.settings.qbroad))
        self.grid = Rescale(self._to_r, int(self.j0), float(self.r_ext[0]), float(self.step),
                            float(r[0]), self.envelope)
        self.search = ZoomSearch(zlo, zhi, self.refine_zoom, self.xatol)

    @property
    def n_frames(self) -> int:
        return self.g_obs.shape[0]

    def memory_bytes(self) -> int:
        """Bytes held by this fitter's tables (parent pair tables included)."""
        k = self.kernel
        arrays = (self._to_r, self.parent.dmat, self.parent.tmat, self.g_obs, self.weights,
                  k.pair_w, k.el_w, k.to_q)
        return int(sum(a.nbytes for a in arrays))

    def fit(self, atom_masks: np.ndarray) -> dict[str, np.ndarray]:
        """Fit every motif to every frame.

        Parameters
        ----------
        atom_masks : ndarray of bool, shape (M, n_atoms)
            Kept atoms of each motif.

        Returns
        -------
        dict
            ``rw``, ``scale``, ``zoom`` (float64) and ``status`` (int8), each (F, M).
        """
        calc = self.calc
        masks = np.ascontiguousarray(atom_masks, dtype=np.bool_)
        m = masks.shape[0]
        out = {
            "rw": np.empty((self.n_frames, m)),
            "scale": np.empty((self.n_frames, m)),
            "zoom": np.empty((self.n_frames, m)),
            "status": np.empty((self.n_frames, m), dtype=np.int8),
        }
        results = Results(out["rw"], out["scale"], out["zoom"], out["status"])
        delta2 = float(calc.settings.delta2)
        if self.shared:
            _fit_batch_shared(masks, self.parent, self.kernel, calc._u_type_default, delta2,
                              self.grid, self.anchors, FINE_PER_ANCHOR, self.g_obs,
                              self.weights, results)
            return out
        _fit_batch(masks, self.parent, self.kernel, calc._u_type_default, delta2, self.grid,
                   self.search, self.g_obs, self.weights, results)
        return out

    def model(self, atom_mask: np.ndarray, zoom: float) -> np.ndarray:
        """The exact G(r) on the data grid that this fitter scores (for checks)."""
        masks = np.ascontiguousarray(np.atleast_2d(atom_mask), dtype=np.bool_)
        pairs = _motif_pairs(masks[0], self.parent)
        g = np.empty(self.r_ext.size)
        _exact(self.kernel, pairs, self.calc._u_type_default, float(self.calc.settings.delta2),
               self._to_r, float(zoom), g)
        return g[self.j0:self.j0 + self.calc.r.size] * self.envelope


# -- compiled parts ----------------------------------------------------------------------


@numba.njit(cache=True)
def _motif_pairs(mask, parent):
    """The :class:`Pairs` of a motif: distances of its pairs i < j grouped by pair type,
    offsets, atoms per element.

    The pairs per type follow from the atoms per element (n_a·n_b, or n_a(n_a − 1)/2 for
    a = b), so one pass over the kept pairs fills them."""
    dmat, tmat, atom_type = parent.dmat, parent.tmat, parent.atom_type
    ntypes, nel = parent.type_a.size, parent.nel
    kept = np.flatnonzero(mask)
    k = kept.size
    counts = np.zeros(nel, dtype=np.int64)
    for i in kept:
        counts[atom_type[i]] += 1
    per_type = np.zeros(ntypes, dtype=np.int64)
    for a in range(nel):
        for b in range(a, nel):
            # the type of (a, b): read it from an atom of each, when both are present
            if counts[a] == 0 or counts[b] == 0:
                continue
            ia = ib = -1
            for i in kept:
                if atom_type[i] == a and ia < 0:
                    ia = i
                if atom_type[i] == b and ib < 0 and (a != b or i != ia):
                    ib = i
            if a == b:
                if counts[a] > 1:
                    per_type[tmat[ia, ib]] += counts[a] * (counts[a] - 1) // 2
            else:
                per_type[tmat[ia, ib]] += counts[a] * counts[b]
    seg = np.zeros(ntypes + 1, dtype=np.int64)
    for t in range(ntypes):
        seg[t + 1] = seg[t] + per_type[t]
    fill = seg[:-1].copy()
    dist = np.empty(seg[ntypes])
    for a in range(k):
        row = kept[a]
        for b in range(a + 1, k):
            col = kept[b]
            t = tmat[row, col]
            dist[fill[t]] = dmat[row, col]
            fill[t] += 1
    return Pairs(dist, seg, counts)


@numba.njit(cache=True, fastmath=True)
def _matvec_rows(mat, vec, row0, nrows, out):
    """out[i] = mat[row0 + i] · vec for i < nrows."""
    n = vec.size
    for i in range(nrows):
        acc = 0.0
        for k in range(n):
            acc += mat[row0 + i, k] * vec[k]
        out[i] = acc


@numba.njit(cache=True)
def _exact_fq(kernel, pairs, u_type, delta2, zoom):
    """Exact F(Q) on the calculator's Q points.

    Debye: ``pair_w`` = 2 f_a(Q) f_b(Q) per type, ``el_w`` = f(Q) per element; real
    space: the same at Q = 0 (one column) and ``to_q`` the transform of the peak grid.
    """
    kind, pair_w, el_w, to_q, scalars, qbroad = kernel
    dist, seg, counts = pairs
    total = counts.astype(np.float64) @ el_w  # N <f>, per Q (Debye) or at 0 (real space)
    n = counts.sum()
    norm = np.zeros(total.size)
    for k in range(total.size):
        if total[k] != 0.0:
            norm[k] = n / (total[k] * total[k])
    if kind == _DEBYE:
        q0, dq, kstart, pair_rmin, pair_rmax = scalars
        return debye_fq(dist, seg, pair_w, u_type, norm, q0, dq, int(kstart), zoom, delta2,
                        qbroad, pair_rmin, pair_rmax)
    dr, m_lo, m_hi, pair_rmin, pair_rmax = scalars
    g0 = gaussian_peaks(dist, seg, pair_w[:, 0], u_type, norm[0], zoom, delta2, qbroad,
                        dr, int(m_lo), int(m_hi), pair_rmin, pair_rmax, PEAK_HALF_BOUND)
    fq = np.empty(to_q.shape[0])
    _matvec_rows(to_q, g0, 0, to_q.shape[0], fq)
    return fq


@numba.njit(cache=True)
def _exact(kernel, pairs, u_type, delta2, to_r, zoom, out):
    """Exact G(r) without envelope on the rows of ``to_r``, into ``out``; False if no pairs
    (the tables as :func:`_exact_fq`)."""
    fq = _exact_fq(kernel, pairs, u_type, delta2, zoom)
    any_pair = False
    for k in range(fq.size):
        if fq[k] != 0.0:
            any_pair = True
            break
    _matvec_rows(to_r, fq, 0, out.size, out)
    return any_pair


@numba.njit(cache=True, inline="always")
def _cubic(base, u):
    """Cubic (4-point Lagrange) interpolation of ``base`` at fractional index ``u``."""
    i = int(u)
    t = u - i
    tm1 = t - 1.0
    tm2 = t - 2.0
    tp1 = t + 1.0
    return (
        -t * tm1 * tm2 * (1.0 / 6.0) * base[i - 1]
        + tp1 * tm1 * tm2 * 0.5 * base[i]
        - tp1 * t * tm2 * 0.5 * base[i + 1]
        + tp1 * t * tm1 * (1.0 / 6.0) * base[i + 2]
    )


@numba.njit(cache=True, fastmath=True)
def _approx_rw2(z, zb, base, x0, step, r0, env, g, w, gg, stride):
    """Rw² at zoom z, with G read from ``base`` (exact at zoom zb) at r·zb/z.

    Only every ``stride``-th data point is used (``gg`` must match).
    """
    rho = zb / z
    u = (r0 * rho - x0) / step
    sgc = 0.0
    scc = 0.0
    for k in range(0, g.size, stride):
        val = _cubic(base, u) * env[k]
        sgc += w[k] * g[k] * val
        scc += w[k] * val * val
        u += stride * rho
    if scc <= 0.0:
        return 1.0
    return max(1.0 - sgc * sgc / (gg * scc), 0.0)


@numba.njit(cache=True, fastmath=True)
def _slope_rw2(z, zb, base, x0, step, r0, env, g, w, gg, stride):
    """d(Rw²)/dz of :func:`_approx_rw2` (the cubic interpolant differentiated)."""
    rho = zb / z
    u = (r0 * rho - x0) / step
    sgc = 0.0
    scc = 0.0
    dgc = 0.0
    dcc = 0.0
    for k in range(0, g.size, stride):
        i = int(u)
        t = u - i
        pm, p0, p1, p2 = base[i - 1], base[i], base[i + 1], base[i + 2]
        tm1 = t - 1.0
        tm2 = t - 2.0
        tp1 = t + 1.0
        val = (-t * tm1 * tm2 * (1.0 / 6.0) * pm + tp1 * tm1 * tm2 * 0.5 * p0
               - tp1 * t * tm2 * 0.5 * p1 + tp1 * t * tm1 * (1.0 / 6.0) * p2) * env[k]
        tt = t * t
        der = (-(3.0 * tt - 6.0 * t + 2.0) * (1.0 / 6.0) * pm
               + (3.0 * tt - 4.0 * t - 1.0) * 0.5 * p0
               - (3.0 * tt - 2.0 * t - 2.0) * 0.5 * p1
               + (3.0 * tt - 1.0) * (1.0 / 6.0) * p2) * env[k]
        # du/dz = −(r_k / step)·ρ/z
        der *= -((r0 + k * step) / step) * rho / z
        wg = w[k] * g[k]
        sgc += wg * val
        scc += w[k] * val * val
        dgc += wg * der
        dcc += 2.0 * w[k] * val * der
        u += stride * rho
    if scc <= 0.0:
        return 0.0
    return -(2.0 * sgc * dgc * scc - sgc * sgc * dcc) / (gg * scc * scc)


@numba.njit(cache=True)
def _slope_root(a, b, xatol, zb, base, x0, step, r0, env, g, w, gg, stride):
    """The zoom in [a, b] where Rw² of the rescaled ``base`` has zero slope, by the
    Illinois variant of regula falsi; an end when the slope does not change sign there
    (then it is that end's side that is lower). Returns (zoom, converged)."""
    fa = _slope_rw2(a, zb, base, x0, step, r0, env, g, w, gg, stride)
    if fa >= 0.0:
        return a, True
    fb = _slope_rw2(b, zb, base, x0, step, r0, env, g, w, gg, stride)
    if fb <= 0.0:
        return b, True
    side = 0
    z = 0.5 * (a + b)
    for _ in range(_MAXITER):
        z = (a * fb - b * fa) / (fb - fa)
        fz = _slope_rw2(z, zb, base, x0, step, r0, env, g, w, gg, stride)
        if fz < 0.0:
            a, fa = z, fz
            if side == -1:
                fb *= 0.5
            side = -1
        elif fz > 0.0:
            b, fb = z, fz
            if side == 1:
                fa *= 0.5
            side = 1
        else:
            return z, True
        if b - a < xatol:
            return z, True
    return z, False


@numba.njit(cache=True)
def _scan_then_root(zlo, zhi, xatol, zb, base, x0, step, r0, env, g, w, gg, stride):
    """Round 1 of the zoom: Rw² of the rescaled ``base`` on :data:`_SCAN` zooms across
    [zlo, zhi] (every other point used), then the zero of its slope between the best
    one's neighbours."""
    best = 0
    best_f = np.inf
    h = (zhi - zlo) / (_SCAN - 1)
    for j in range(_SCAN):
        f = _approx_rw2(zlo + j * h, zb, base, x0, step, r0, env, g, w, gg, stride)
        if f < best_f:
            best, best_f = j, f
    zbest = zlo + best * h
    slope = _slope_rw2(zbest, zb, base, x0, step, r0, env, g, w, gg, stride)
    if slope < 0.0 and best < _SCAN - 1:
        a, b = zbest, zbest + h
    elif slope > 0.0 and best > 0:
        a, b = zbest - h, zbest
    else:
        return zbest, True  # on a bound, going out of the range
    z, ok = _slope_root(a, b, xatol, zb, base, x0, step, r0, env, g, w, gg, stride)
    if (z == a or z == b) and z != zbest:
        return zbest, ok  # no zero between them after all (a rough Rw): the scanned best
    return z, ok


@numba.njit(cache=True)
def _brent(a, b, xatol, zb, base, x0, step, r0, env, g, w, gg, stride):
    """Brent's bounded minimisation of :func:`_approx_rw2` on [a, b], the ends included
    (a bounded Brent search never evaluates them, and a fit often ends on a bound).

    Returns the minimiser and whether it converged within the evaluation budget.
    """
    x, ok = _brent_inside(a, b, xatol, zb, base, x0, step, r0, env, g, w, gg, stride)
    near = 4.0 * (_SQRT_EPS * abs(x) + xatol)
    for edge in (a, b):
        if abs(x - edge) < near and _approx_rw2(edge, zb, base, x0, step, r0, env, g, w, gg,
                                                stride) <= _approx_rw2(
                x, zb, base, x0, step, r0, env, g, w, gg, stride):
            x = edge
    return x, ok


@numba.njit(cache=True)
def _brent_inside(a, b, xatol, zb, base, x0, step, r0, env, g, w, gg, stride):
    """Brent's bounded search proper (the ends of [a, b] excluded)."""
    x = v = wx = a + _GOLDEN * (b - a)
    fx = fv = fw = _approx_rw2(x, zb, base, x0, step, r0, env, g, w, gg, stride)
    d = 0.0
    e = 0.0
    for _ in range(_MAXITER):
        mid = 0.5 * (a + b)
        tol1 = _SQRT_EPS * abs(x) + xatol / 3.0
        tol2 = 2.0 * tol1
        if abs(x - mid) <= tol2 - 0.5 * (b - a):
            return x, True
        golden = True
        if abs(e) > tol1:
            # parabola through (x, fx), (wx, fw), (v, fv)
            r = (x - wx) * (fx - fv)
            q = (x - v) * (fx - fw)
            p = (x - v) * q - (x - wx) * r
            q = 2.0 * (q - r)
            if q > 0.0:
                p = -p
            q = abs(q)
            e_prev = e
            e = d
            if abs(p) < abs(0.5 * q * e_prev) and q * (a - x) < p < q * (b - x):
                d = p / q
                golden = False
                if (x + d - a) < tol2 or (b - x - d) < tol2:
                    d = tol1 if x < mid else -tol1
        if golden:
            e = (b - x) if x < mid else (a - x)
            d = _GOLDEN * e
        u = x + d if abs(d) >= tol1 else (x + tol1 if d > 0.0 else x - tol1)
        fu = _approx_rw2(u, zb, base, x0, step, r0, env, g, w, gg, stride)
        if fu <= fx:
            if u < x:
                b = x
            else:
                a = x
            v, fv = wx, fw
            wx, fw = x, fx
            x, fx = u, fu
        else:
            if u < x:
                a = u
            else:
                b = u
            if fu <= fw or wx == x:
                v, fv = wx, fw
                wx, fw = u, fu
            elif fu <= fv or v == x or v == wx:
                v, fv = u, fu
    return x, False


@numba.njit(cache=True, fastmath=True)
def _score(gc, g, w, gg):
    """Closed-form scale and Rw of ``gc`` against ``g``."""
    sgc = 0.0
    scc = 0.0
    for k in range(g.size):
        sgc += w[k] * g[k] * gc[k]
        scc += w[k] * gc[k] * gc[k]
    if scc <= 0.0 or gg <= 0.0:
        return 0.0, 1.0
    scale = sgc / scc
    return scale, math.sqrt(max(1.0 - sgc * sgc / (gg * scc), 0.0))


@numba.njit(cache=True)
def _frame_sums(g_obs, weights):
    """Σ w g² of each frame over all its points and over every other point."""
    n_frames, n = g_obs.shape
    gg = np.empty(n_frames)
    gg_half = np.zeros(n_frames)
    for f in range(n_frames):
        acc = 0.0
        for k in range(n):
            v = weights[f, k] * g_obs[f, k] * g_obs[f, k]
            acc += v
            if k % 2 == 0:
                gg_half[f] += v
        gg[f] = acc
    return gg, gg_half


@numba.njit(cache=True)
def _zoom_near(zoom, zb, base, grid, search, frame):
    """Round 2 of the zoom on ``base`` (exact at zb), all points: the slope's zero within
    :data:`_ROOT_NEAR` of ``zoom``, or Brent over the whole range when the minimum lies
    beyond. Returns (zoom, converged)."""
    zlo, zhi, xatol = search.zlo, search.zhi, search.xatol
    x0, step, r0, env = grid.x0, grid.step, grid.r0, grid.env
    g, w, gg = frame.g, frame.w, frame.gg
    a = max(zlo, zoom - _ROOT_NEAR)
    b = min(zhi, zoom + _ROOT_NEAR)
    z, ok = _slope_root(a, b, xatol, zb, base, x0, step, r0, env, g, w, gg, 1)
    if (z == a and a > zlo) or (z == b and b < zhi):
        z, ok = _brent(zlo, zhi, xatol, zb, base, x0, step, r0, env, g, w, gg, 1)
    return z, ok


@numba.njit(cache=True)
def _fit_batch(masks, parent, kernel, u_type, delta2, grid, search, g_obs, weights, out):
    """The scale and zoom of every motif × frame, each frame's G exact at its zoom."""
    n_frames, n = g_obs.shape
    to_r, j0, x0, step, r0, env = grid
    zlo, zhi, xatol = search.zlo, search.zhi, search.xatol
    base1 = np.empty(to_r.shape[0])
    base = np.empty(to_r.shape[0])
    gc = np.empty(n)
    gg, gg_half = _frame_sums(g_obs, weights)
    for m in range(masks.shape[0]):
        pairs = _motif_pairs(masks[m], parent)
        has_pairs = _exact(kernel, pairs, u_type, delta2, to_r, 1.0, base1)
        for f in range(n_frames):
            frame = Frame(g_obs[f], weights[f], gg[f], gg_half[f])
            g = frame.g
            w = frame.w
            status = STATUS_OK
            zoom = 1.0
            if not has_pairs:
                out.rw[f, m], out.scale[f, m], out.zoom[f, m] = 1.0, 0.0, 1.0
                out.status[f, m] = STATUS_NO_PAIRS
                continue
            if search.refine:
                # round 1: the whole zoom range scanned, then the slope's zero, on every
                # other data point
                z1, ok1 = _scan_then_root(zlo, zhi, xatol, 1.0, base1, x0, step, r0, env, g,
                                          w, gg_half[f], 2)
                _exact(kernel, pairs, u_type, delta2, to_r, z1, base)
                zoom, ok2 = _zoom_near(z1, z1, base, grid, search, frame)
                if not (ok1 and ok2):
                    status = STATUS_NOT_CONVERGED
                # keep z1, whose exact G is at hand, unless moving on gains anything
                gain = math.sqrt(_approx_rw2(z1, z1, base, x0, step, r0, env, g, w, gg[f], 1)) \
                    - math.sqrt(_approx_rw2(zoom, z1, base, x0, step, r0, env, g, w, gg[f], 1))
                if gain < _RW_GAIN:
                    zoom = z1
                if zoom == z1:
                    for k in range(n):
                        gc[k] = base[j0 + k] * env[k]
                else:
                    _exact(kernel, pairs, u_type, delta2, to_r[j0:j0 + n], zoom, gc)
                    for k in range(n):
                        gc[k] *= env[k]
            else:
                for k in range(n):
                    gc[k] = base1[j0 + k] * env[k]
            scale, rw = _score(gc, g, w, gg[f])
            out.rw[f, m] = rw
            out.scale[f, m] = scale
            out.zoom[f, m] = zoom
            out.status[f, m] = status


# -- shared anchors (time series) ----------------------------------------------------------


# No fastmath in the shared search: numba's freshly compiled and cache-loaded code
# differed in the last bits with it (measured), and a frame's fit must not depend on
# whether this process compiled the kernel.
@numba.njit(cache=True)
def _add_scaled(base, zb, z, x0, step, r0, env, stride, wt, out):
    """out[i] += wt · base(r_k·zb/z) · env[k] for the i-th point k = i·stride (cubic read)."""
    rho = zb / z
    u = (r0 * rho - x0) / step
    i_out = 0
    for k in range(0, env.size, stride):
        out[i_out] += wt * _cubic(base, u) * env[k]
        i_out += 1
        u += stride * rho


@numba.njit(cache=True)
def _rw2(c, g, w, gg, stride):
    """Rw² of the model ``c`` (given at every ``stride``-th point of ``g``)."""
    sgc = 0.0
    scc = 0.0
    for i in range(c.size):
        k = i * stride
        wc = w[k] * c[i]
        sgc += wc * g[k]
        scc += wc * c[i]
    if scc <= 0.0 or gg <= 0.0:
        return 1.0
    return max(1.0 - sgc * sgc / (gg * scc), 0.0)


@numba.njit(cache=True)
def _fit_batch_shared(masks, parent, kernel, u_type, delta2, grid, anchors, per, g_obs, weights,
                      out):
    """The shared-anchor search of every motif × frame (see the module notes)."""
    n_frames, n = g_obs.shape
    to_r, _, x0, step, r0, env = grid
    n_ext = to_r.shape[0]
    n_anchor = anchors.size
    n_fine = (n_anchor - 1) * per + 1
    n_half = (n + 1) // 2
    zf = np.empty(n_fine)
    for j in range(n_fine):
        k = j // per
        if k == n_anchor - 1:
            zf[j] = anchors[k]
        else:
            zf[j] = anchors[k] + (j - k * per) * (anchors[k + 1] - anchors[k]) / per
    gg, gg_half = _frame_sums(g_obs, weights)
    base1 = np.empty(n_ext)
    anchor_g = np.empty((n_anchor, n_ext))
    have_anchor = np.zeros(n_anchor, dtype=np.bool_)
    fine = np.empty((n_fine, n))
    have_fine = np.zeros(n_fine, dtype=np.bool_)
    coarse = np.empty((n_anchor, n_half))
    rw2f = np.empty(n_fine)
    seen = np.zeros(n_fine, dtype=np.bool_)
    gc = np.empty(n)
    for m in range(masks.shape[0]):
        pairs = _motif_pairs(masks[m], parent)
        has_pairs = _exact(kernel, pairs, u_type, delta2, to_r, 1.0, base1)
        if not has_pairs:
            for f in range(n_frames):
                out.rw[f, m], out.scale[f, m], out.zoom[f, m] = 1.0, 0.0, 1.0
                out.status[f, m] = STATUS_NO_PAIRS
            continue
        have_anchor[:] = False
        have_fine[:] = False
        # frame-independent coarse models: the zoom-1 G read at each anchor zoom
        for k in range(n_anchor):
            coarse[k, :] = 0.0
            _add_scaled(base1, 1.0, anchors[k], x0, step, r0, env, 2, 1.0, coarse[k])
        for f in range(n_frames):
            g = g_obs[f]
            w = weights[f]
            kb = 0
            best = np.inf
            for k in range(n_anchor):
                v = _rw2(coarse[k], g, w, gg_half[f], 2)
                if v < best:
                    best = v
                    kb = k
            # fine scan of the blended exact anchors, one anchor step each side of kb,
            # moved on while the best point sits on the window's edge
            seen[:] = False
            lo = max(0, (kb - 1) * per)
            hi = min(n_fine - 1, (kb + 1) * per)
            jb = lo
            for _ in range(n_fine):
                for j in range(lo, hi + 1):
                    if seen[j]:
                        continue
                    if not have_fine[j]:
                        k = j // per
                        if k == n_anchor - 1:
                            k -= 1
                        t = (zf[j] - anchors[k]) / (anchors[k + 1] - anchors[k])
                        for a in (k, k + 1):
                            if not have_anchor[a] and (a == k or t > 0.0):
                                _exact(kernel, pairs, u_type, delta2, to_r, anchors[a],
                                       anchor_g[a])
                                have_anchor[a] = True
                        fine[j, :] = 0.0
                        _add_scaled(anchor_g[k], anchors[k], zf[j], x0, step, r0, env, 1,
                                    1.0 - t, fine[j])
                        if t > 0.0:
                            _add_scaled(anchor_g[k + 1], anchors[k + 1], zf[j], x0, step, r0,
                                        env, 1, t, fine[j])
                        have_fine[j] = True
                    rw2f[j] = _rw2(fine[j], g, w, gg[f], 1)
                    seen[j] = True
                jb = lo
                for j in range(lo, hi + 1):
                    if rw2f[j] < rw2f[jb]:
                        jb = j
                if (jb == lo and lo > 0) or (jb == hi and hi < n_fine - 1):
                    lo = max(0, jb - per)
                    hi = min(n_fine - 1, jb + per)
                else:
                    break
            # the parabola through the best fine point and its neighbours
            zoom = zf[jb]
            d = 0.0
            if 0 < jb < n_fine - 1 and seen[jb - 1] and seen[jb + 1]:
                fm, f0, fp = rw2f[jb - 1], rw2f[jb], rw2f[jb + 1]
                den = fm - 2.0 * f0 + fp
                if den > 0.0:
                    d = min(0.5, max(-0.5, 0.5 * (fm - fp) / den))
            use_fine = True
            if d != 0.0:
                j = jb if d > 0.0 else jb - 1  # the fine interval holding the vertex
                k = min(j // per, n_anchor - 2)
                zoom = zf[jb] + d * (zf[jb + 1] - zf[jb] if d > 0.0 else zf[jb] - zf[jb - 1])
                t = (zoom - anchors[k]) / (anchors[k + 1] - anchors[k])
                gc[:] = 0.0
                _add_scaled(anchor_g[k], anchors[k], zoom, x0, step, r0, env, 1, 1.0 - t, gc)
                _add_scaled(anchor_g[k + 1], anchors[k + 1], zoom, x0, step, r0, env, 1, t, gc)
                use_fine = _rw2(gc, g, w, gg[f], 1) > rw2f[jb]
            if use_fine:
                zoom = zf[jb]
                gc[:] = fine[jb]
            scale, rw = _score(gc, g, w, gg[f])
            out.rw[f, m] = rw
            out.scale[f, m] = scale
            out.zoom[f, m] = zoom
            out.status[f, m] = STATUS_OK
