"""Step 2 with Uiso (per element) and delta2 free, whole batches inside compiled code.

Each motif × frame fit runs the rounds of :mod:`.fast` with the displacement parameters
added, and never calls Python:

1. The exact G(r) at zoom 1 and the starting Uiso and delta2 (the config's) is computed
   once per motif on the extended r grid; Brent's search on its rescaled copies finds a
   first zoom z1 (:mod:`.fast`, round 1).
2. One pass over the motif's pairs at z1 gives its *moments* (:mod:`.moments`): F(Q) for
   any Uiso and delta2 within their bounds is then a Bessel-weighted sum of them. The
   displacement parameters are refined on those, by a bounded Levenberg–Marquardt search
   with analytic derivatives, and Rw is evaluated in Q space as
   Rw² = 1 − (b·F)² / (Σ w g² · F·M·F), with b = Kᵀ W g and M = Kᵀ W K for the transform K
   onto the data's r points: one small quadratic form per trial, no transform, no pair.
3. The G(r) of those parameters is rescaled to search the zoom near z1 again (round 2);
   when it moves, the moments are taken again at the new zoom and step 2 repeats (at most
   :data:`ROUNDS` times).
4. The reported Rw and scale are those of the exact G(r) (the ordinary Debye kernel) at
   the reported zoom, Uiso and delta2.

A fit ends with status 3 ("at a bound") when a freed Uiso or delta2 ends on its bound,
1 when a search did not converge within its budget.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ..errors import InputError
from ..pdf.calculator import DebyeCalculator, PDFCalculator, RealSpaceCalculator
from .fast import (
    _DEBYE,
    _NEAR,
    _ROOT_NEAR,
    _RW_GAIN,
    BatchFitter,
    _add_scaled,
    _approx_rw2,
    _brent,
    _exact,
    _exact_fq,
    _matvec_rows,
    _motif_pairs,
    _scan_then_root,
    _score,
    _slope_root,
    uniform_step,
)
from .fitter import (
    STATUS_AT_BOUND,
    STATUS_NO_PAIRS,
    STATUS_NOT_CONVERGED,
    STATUS_OK,
    FitSettings,
)
from .moments import (
    assemble,
    coordinate_ranges,
    group_pairs,
    group_terms,
    pair_moments,
    terms_needed,
)

#: Moment passes (and round-2 zoom searches) allowed to one fit.
ROUNDS = 3
#: Distance shells per pair type when delta2 is refined.
SHELLS = 4
#: Real space: searches corrected by the exact F(Q) at the point reached.
DEFECT_ROUNDS = 2
#: Zoom polish on exact Rw (delta2 free, or real space): rounds and step.
POLISH_ROUNDS = 2
_POLISH_STEP = 3e-4
#: Zooms scanned for another basin after a fit, and how much worse in Rw (on the refined
#: G(r), rescaled) a basin may look and still be fitted as well.
_ALT_SCAN = 17
_ALT_MARGIN = 0.002
#: Iterations allowed to one Levenberg–Marquardt search.
_LM_ITER = 80
#: A Levenberg–Marquardt search stops when a step lowers Rw² by less than this.
_LM_FTOL = 1e-14


def pair_span(calc: PDFCalculator, zoom_bounds) -> tuple[float, float]:
    """Shortest and longest parent pair distance (Å) inside the calculator's pair window
    at the lowest and highest zoom."""
    g = calc.grid
    zlo, zhi = zoom_bounds
    d = calc._dist[(calc._dist * zlo >= g.pair_rmin) & (calc._dist * zhi <= g.pair_rmax)]
    if not d.size:
        return 1.0, 1.0
    return float(d.min() * zlo), float(d.max() * zhi)


def check_delta2_bounds(calc: PDFCalculator, settings: FitSettings) -> None:
    """Refuse a delta2 bound that reaches d² of the shortest pair, where DiffPy's peak
    width 1 − δ2/d² + (qbroad d)² stops being a smooth function of delta2."""
    if "delta2" not in settings.refine:
        return
    zoom = settings.zoom_bounds if "zoom" in settings.refine else (1.0, 1.0)
    d_lo, _ = pair_span(calc, zoom)
    lo, hi = settings.delta2_bounds
    if hi >= d_lo * d_lo:
        raise InputError(
            f"config key 'fit.delta2_bounds' = [{lo:g}, {hi:g}]: delta2 must stay below d² "
            f"of the shortest pair ({d_lo:.3f} Å at the lowest zoom, {d_lo * d_lo:.3f} Å²), "
            f"where the peak would lose its width; use an upper bound below "
            f"{math.floor(100 * d_lo * d_lo) / 100:.2f}"
        )


def supports_refinement(calc: PDFCalculator, settings: FitSettings) -> bool:
    """Whether :class:`RefiningFitter` fits these settings with this calculator."""
    free = set(settings.refine)
    return (
        bool(free & {"uiso", "delta2"})
        and free <= {"scale", "zoom", "uiso", "delta2"}
        and isinstance(calc, (DebyeCalculator, RealSpaceCalculator))
        and uniform_step(calc.r) is not None
    )


class RefiningFitter(BatchFitter):
    """Scale, zoom, Uiso per element and delta2 of many motifs against the frames that
    share one r grid (Debye calculator).

    Parameters are those of :class:`.fast.BatchFitter`; ``settings`` must free Uiso or
    delta2 (or both). Uiso starts from the calculator's settings, delta2 from
    ``settings.delta2`` clipped into its bounds.
    """

    accepts = staticmethod(supports_refinement)

    def __init__(self, calc, settings: FitSettings, g_obs, weights=None, xatol=1e-7,
                 zoom_search="exact") -> None:
        super().__init__(calc, settings, g_obs, weights, xatol, zoom_search)
        if not isinstance(calc, DebyeCalculator):
            self.shared = False  # real space: every frame's search is corrected exactly
        s = calc.settings
        g = calc.grid
        self.elements = calc.elements
        nel = len(self.elements)
        self.refine_delta2 = "delta2" in settings.refine
        refine_u = "uiso" in settings.refine
        self.free_u = np.array(
            [refine_u and el in settings.uiso_elements for el in self.elements], dtype=np.bool_
        )
        self.u_lo = np.full(nel, float(settings.uiso_bounds[0]))
        self.u_hi = np.full(nel, float(settings.uiso_bounds[1]))
        self.u0 = np.array(calc._u_el, dtype=float)
        self.u0[self.free_u] = np.clip(self.u0[self.free_u], self.u_lo[0], self.u_hi[0])
        self.d2_lo, self.d2_hi = (float(v) for v in settings.delta2_bounds)
        self.d2_0 = float(np.clip(s.delta2, self.d2_lo, self.d2_hi)) if self.refine_delta2 \
            else float(s.delta2)
        self._type_a = calc._type_a
        self._type_b = calc._type_b
        # the largest λ = U_t Q²/2 the search can reach, for the number of moment terms
        u_t_max = np.max(np.where(self.free_u, self.u_hi, self.u0)[self._type_a]
                         + np.where(self.free_u, self.u_hi, self.u0)[self._type_b])
        qmax = float(calc.q[-1]) if calc.q.size else 0.0
        lam_max = 0.5 * u_t_max * qmax * qmax
        d_lo, d_hi = pair_span(calc, self.zoom_bounds)
        qb = s.qbroad
        if self.refine_delta2:
            self._mode = 1
            check_delta2_bounds(calc, settings)
            h1 = 0.5 * qb * qb * (d_hi * d_hi - d_lo * d_lo)
            h2 = 0.5 * (1.0 / (d_lo * d_lo) - 1.0 / (d_hi * d_hi))
            self._n1 = terms_needed(lam_max * h1)
            self._n2 = terms_needed(lam_max * self.d2_hi * h2)
        else:
            self._mode = 0
            # c(d) = max(1 − δ2/d² + (qbroad d)², 0) grows with d
            c = np.clip(1.0 - s.delta2 / np.array([d_lo, d_hi]) ** 2
                        + (qb * np.array([d_lo, d_hi])) ** 2, 0.0, None)
            spread = 0.5 * (c[1] - c[0])
            self._n1 = terms_needed(lam_max * spread)
            self._n2 = 1
        self._lam_max = float(lam_max)
        # delta2: the pairs of each type in SHELLS distance shells (geometric), whose
        # narrower 1/d² ranges need far fewer terms than the whole range
        n_sh = SHELLS if self.refine_delta2 else 1
        edges = np.geomspace(d_lo, d_hi, n_sh + 1) if d_hi > d_lo else np.array([d_lo, d_hi])
        edges[0], edges[-1] = 0.0, np.inf
        self._edges = edges
        self._group_a = np.repeat(calc._type_a, edges.size - 1)
        self._group_b = np.repeat(calc._type_b, edges.size - 1)
        self._group_ff = None  # set with the Q tables below
        # Q-space Rw: b = Kᵀ W g and M = Kᵀ W K per frame, K the transform onto the data
        if isinstance(calc, DebyeCalculator):
            q0, dq, kstart, nq = g.q0, g.dq, g.kstart, g.nq
            kern = calc._kernel  # (n, nq), envelope included
            self._ff, self._el_f = calc._ff, calc._f
        else:
            # real space: the search runs on the Debye form of its Gaussian peaks (their
            # sine transform, f(0) weights, on its Q window); the reported Rw is its own
            q0, dq, kstart, nq = g.kmin * g.dq, g.dq, g.kmin, g.kmax - g.kmin
            kern = calc._to_r
            self._ff = np.ascontiguousarray(np.repeat(calc._weight[:, None], nq, axis=1))
            self._el_f = np.ascontiguousarray(np.repeat(calc._f0[:, None], nq, axis=1))
        # frame by frame, so that a frame's numbers do not depend on the others
        self._b = np.stack([(w * g) @ kern for w, g in zip(self.weights, self.g_obs,
                                                           strict=True)])
        self._m = np.stack([np.ascontiguousarray(kern.T @ (w[:, None] * kern))
                            for w in self.weights])
        if isinstance(calc, DebyeCalculator):
            self._qgrid = (q0, dq, float(kstart), g.pair_rmin, g.pair_rmax)
        else:  # the pairs whose peaks lie on the peak grid that is transformed
            self._qgrid = (q0, dq, float(kstart), g.m_lo * g.dr, (g.m_hi - 1) * g.dr)
        self._group_ff = np.ascontiguousarray(np.repeat(self._ff, self._edges.size - 1, axis=0))

    #: Per fit of the last :meth:`fit`: moment passes and Rw evaluations (for benchmarks).
    last_work: np.ndarray | None = None

    def memory_bytes(self) -> int:
        return super().memory_bytes() + int(self._b.nbytes + self._m.nbytes)

    def fit(self, atom_masks: np.ndarray) -> dict[str, np.ndarray]:
        """Fit every motif to every frame: ``rw``, ``scale``, ``zoom``, ``status``, one
        ``uiso_<element>`` per element (when Uiso is freed) and ``delta2`` (when freed),
        each (F, M)."""
        masks = np.ascontiguousarray(atom_masks, dtype=np.bool_)
        nf, m = self.n_frames, masks.shape[0]
        nel = len(self.elements)
        out_u = np.empty((nf, m, nel))
        out_d2 = np.empty((nf, m))
        work = np.zeros((nf, m, 2), dtype=np.int64)  # moment passes, Rw evaluations
        out = {
            "rw": np.empty((nf, m)), "scale": np.empty((nf, m)), "zoom": np.empty((nf, m)),
            "status": np.empty((nf, m), dtype=np.int8),
        }
        q0, dq, kstart, pmin, pmax = self._qgrid
        s = self.calc.settings
        _refine_batch(
            masks, self._dmat, self._tmat, self.calc._atom_type, self._type_a, self._type_b,
            self._kind, self._tables[0], self._tables[1], self._tables[2],
            self._ff, self._el_f, self._scalars, q0, dq, int(kstart), pmin, pmax, s.qbroad,
            self._mode, self._n1 * self._n2, self._edges, self._group_a, self._group_b,
            self._group_ff, self._lam_max, self.u0, self.free_u, self.u_lo, self.u_hi, self.d2_0,
            self.refine_delta2, self.d2_lo, self.d2_hi, self._to_r, self.j0, self.envelope,
            self.g_obs, self.weights, self._b, self._m, self.zoom_bounds[0],
            self.zoom_bounds[1], self.refine_zoom, self.xatol, self.r_ext[0], self.step,
            self.calc.r[0], self.anchors if self.shared else np.empty(0), out["rw"],
            out["scale"], out["zoom"], out["status"], out_u, out_d2, work,
        )
        self.last_work = work
        if self.free_u.any():
            for e, el in enumerate(self.elements):
                if self.free_u[e]:
                    out[f"uiso_{el}"] = out_u[:, :, e]
        if self.refine_delta2:
            out["delta2"] = out_d2
        return out


# -- compiled parts ----------------------------------------------------------------------


@numba.njit(cache=True)
def _motif_norm(counts, el_f):
    """1/(N⟨f(Q)⟩²) of a motif on the Q grid."""
    total = counts.astype(np.float64) @ el_f
    n = counts.sum()
    norm = np.zeros(total.size)
    for k in range(total.size):
        if total[k] != 0.0:
            norm[k] = n / (total[k] * total[k])
    return norm


@numba.njit(cache=True, fastmath=True)
def _quad(mq, x, y):
    """x · M y for a symmetric M."""
    n = x.size
    acc = 0.0
    for k in range(n):
        row = 0.0
        for j in range(n):
            row += mq[k, j] * y[j]
        acc += x[k] * row
    return acc


@numba.njit(cache=True)
def _solve(a, b):
    """Solution of the small dense system a x = b (Gaussian elimination, partial pivoting);
    None-like zeros when singular."""
    n = b.size
    a = a.copy()
    x = b.copy()
    for c in range(n):
        p = c
        for r in range(c + 1, n):
            if abs(a[r, c]) > abs(a[p, c]):
                p = r
        if a[p, c] == 0.0:
            return np.zeros(n)
        if p != c:
            for j in range(n):
                a[c, j], a[p, j] = a[p, j], a[c, j]
            x[c], x[p] = x[p], x[c]
        for r in range(c + 1, n):
            f = a[r, c] / a[c, c]
            for j in range(c, n):
                a[r, j] -= f * a[c, j]
            x[r] -= f * x[c]
    for c in range(n - 1, -1, -1):
        acc = x[c]
        for j in range(c + 1, n):
            acc -= a[c, j] * x[j]
        x[c] = acc / a[c, c]
    return x


@numba.njit(cache=True)
def _objective(x, nel, mom, ranges, n1, n2, type_a, type_b, d2_fixed, refine_d2, ff, norm,
               q0, dq, shift, bq, mq, gg, order, fq, jac, hq, grad, hess):
    """Rw² of the parameters x = (U per element[, delta2]) in Q space, the scale in closed
    form, for F(Q) from the moments plus ``shift``; with ``order`` 2 its exact gradient and
    Hessian as well."""
    d2 = x[nel] if refine_d2 else d2_fixed
    assemble(mom, ranges, n1, n2, x[:nel], type_a, type_b, d2, refine_d2, ff, norm, q0, dq,
             order, fq, jac, hq)
    fq += shift
    nq = fq.size
    mfq = mq @ fq
    p = 0.0
    q = 0.0
    for k in range(nq):
        p += bq[k] * fq[k]
        q += fq[k] * mfq[k]
    if q <= 0.0 or gg <= 0.0:
        if order:
            grad[:] = 0.0
            hess[:, :] = 0.0
        return 1.0
    phi = max(1.0 - p * p / (gg * q), 0.0)
    if not order:
        return phi
    npar = x.size
    mj = jac @ mq  # rows M·J_i (M symmetric)
    pi = np.empty(npar)
    qi = np.empty(npar)
    for i in range(npar):
        a = 0.0
        c = 0.0
        for k in range(nq):
            a += bq[k] * jac[i, k]
            c += mfq[k] * jac[i, k]
        pi[i] = a
        qi[i] = 2.0 * c
    for i in range(npar):
        grad[i] = -(2.0 * p * pi[i] / q - p * p * qi[i] / (q * q)) / gg
        for j in range(i + 1):
            pij = 0.0
            fmfij = 0.0
            jmj = 0.0
            for k in range(nq):
                pij += bq[k] * hq[i, j, k]
                fmfij += mfq[k] * hq[i, j, k]
                jmj += mj[i, k] * jac[j, k]
            qij = 2.0 * jmj + 2.0 * fmfij
            psi = (2.0 * pi[i] * pi[j] / q + 2.0 * p * pij / q
                   - 2.0 * p * (pi[i] * qi[j] + pi[j] * qi[i]) / (q * q)
                   - p * p * qij / (q * q) + 2.0 * p * p * qi[i] * qi[j] / (q * q * q))
            hess[i, j] = -psi / gg
            hess[j, i] = -psi / gg
    return phi


@numba.njit(cache=True)
def _lm(x, free, lo, hi, nel, mom, ranges, n1, n2, type_a, type_b, d2_fixed, refine_d2, ff,
        norm, q0, dq, shift, bq, mq, gg):
    """Bounded, damped Newton search (exact Hessian, Levenberg–Marquardt damping, active
    set on the bounds) on Rw²(x); returns (Rw², converged, evaluations) and updates
    ``x``."""
    npar = x.size
    nq = ff.shape[1]
    fq = np.empty(nq)
    jac = np.empty((npar, nq))
    hq = np.empty((npar, npar, nq))
    grad = np.empty(npar)
    hess = np.empty((npar, npar))
    g2 = np.empty(npar)
    h2 = np.empty((npar, npar))
    phi = _objective(x, nel, mom, ranges, n1, n2, type_a, type_b, d2_fixed, refine_d2, ff,
                     norm, q0, dq, shift, bq, mq, gg, 2, fq, jac, hq, grad, hess)
    evals = 1
    mu = 1e-4
    xn = x.copy()
    idx = np.empty(npar, dtype=np.int64)
    for _ in range(_LM_ITER):
        n_act = 0
        for i in range(npar):
            if not free[i] or (hess[i, i] == 0.0 and grad[i] == 0.0):
                continue
            if (x[i] <= lo[i] and grad[i] > 0.0) or (x[i] >= hi[i] and grad[i] < 0.0):
                continue
            idx[n_act] = i
            n_act += 1
        if n_act == 0:
            return phi, True, evals
        a = np.empty((n_act, n_act))
        b = np.empty(n_act)
        scale = 0.0
        for r in range(n_act):
            scale = max(scale, abs(hess[idx[r], idx[r]]))
        for r in range(n_act):
            b[r] = -grad[idx[r]]
            for c in range(n_act):
                a[r, c] = hess[idx[r], idx[c]]
            a[r, r] += mu * max(abs(hess[idx[r], idx[r]]), 1e-12 * scale)
        step = _solve(a, b)
        slope = 0.0
        curv = 0.0
        for r in range(n_act):
            slope += step[r] * b[r]
            for c in range(n_act):
                curv += step[r] * hess[idx[r], idx[c]] * step[c]
        if slope > 0.0 and slope - 0.5 * curv < _LM_FTOL:
            return phi, True, evals  # the quadratic model promises nothing more
        if not slope > 0.0:  # not a descent direction: damp harder
            mu = max(mu * 10.0, 1e-3)
            if mu > 1e10:
                return phi, True, evals
            continue
        xn[:] = x
        for r in range(n_act):
            i = idx[r]
            xn[i] = min(hi[i], max(lo[i], x[i] + step[r]))
        phin = _objective(xn, nel, mom, ranges, n1, n2, type_a, type_b, d2_fixed, refine_d2,
                          ff, norm, q0, dq, shift, bq, mq, gg, 2, fq, jac, hq, g2, h2)
        evals += 1
        if phin < phi:
            gain = phi - phin
            x[:] = xn
            phi = phin
            grad[:] = g2
            hess[:, :] = h2
            mu = max(mu / 10.0, 1e-12)
            if gain < _LM_FTOL:
                return phi, True, evals
        else:
            if phin - phi < _LM_FTOL:
                return phi, True, evals  # at a minimum to rounding
            mu = max(mu * 10.0, 1e-3)
            if mu > 1e10:
                return phi, True, evals  # no step lowers Rw²: a minimum to this precision
    return phi, False, evals


@numba.njit(cache=True)
def _zoom_again(zoom, zb, base, near, zlo, zhi, xatol, x0, step, r0, env, g, w, gg, gg_half):
    """Round 2 of the zoom on ``base`` (exact at zb, at the refined displacement
    parameters): the zero of the slope of Rw² near ``zoom`` (Brent over the whole range
    when the minimum lies beyond), and a scan of the whole range as well, because freeing
    Uiso or delta2 can move the best zoom into another basin; the lower of the two."""
    a = max(zlo, zoom - _ROOT_NEAR)
    b = min(zhi, zoom + _ROOT_NEAR)
    z_near, ok = _slope_root(a, b, xatol, zb, base, x0, step, r0, env, g, w, gg, 1)
    if (z_near == a and a > zlo) or (z_near == b and b < zhi):
        z_near, ok = _brent(zlo, zhi, xatol, zb, base, x0, step, r0, env, g, w, gg, 1)
    z_all, ok_all = _scan_then_root(zlo, zhi, xatol, zb, base, x0, step, r0, env, g, w,
                                    gg_half, 2)
    if abs(z_all - z_near) > near:
        a = max(zlo, z_all - _ROOT_NEAR)
        b = min(zhi, z_all + _ROOT_NEAR)
        z_all, ok_all = _slope_root(a, b, xatol, zb, base, x0, step, r0, env, g, w, gg, 1)
        if _approx_rw2(z_all, zb, base, x0, step, r0, env, g, w, gg, 1) \
                < _approx_rw2(z_near, zb, base, x0, step, r0, env, g, w, gg, 1):
            return z_all, ok_all
    return z_near, ok


@numba.njit(cache=True)
def _exact_rw2(z, x, nel, refine_d2, d2_fixed, kind, dist, seg, counts, type_a, type_b, pair_w,
               el_w, to_q, scalars, qbroad, to_rows, env, g, w, gg, gc):
    """Rw² of the exact G(r) at zoom z and the displacement parameters x."""
    d2 = x[nel] if refine_d2 else d2_fixed
    _exact(kind, dist, seg, counts, x[:nel][type_a] + x[:nel][type_b], pair_w, el_w, to_q,
           scalars, d2, qbroad, to_rows, z, gc)
    for k in range(gc.size):
        gc[k] *= env[k]
    return _score(gc, g, w, gg)[1] ** 2


@numba.njit(cache=True)
def _zoom_parabola(zoom, x, nel, refine_d2, d2_fixed, kind, dist, seg, counts, type_a, type_b,
                   pair_w, el_w, to_q, scalars, qbroad, to_rows, env, g, w, gg, zlo, zhi, gc):
    """The vertex of the parabola through the exact Rw² at zoom − h, zoom, zoom + h (kept
    within the bounds and 2h of zoom), or zoom when it lowers nothing."""
    h = _POLISH_STEP
    a = max(zlo, zoom - h)
    b = min(zhi, zoom + h)
    fa = _exact_rw2(a, x, nel, refine_d2, d2_fixed, kind, dist, seg, counts, type_a, type_b,
                    pair_w, el_w, to_q, scalars, qbroad, to_rows, env, g, w, gg, gc)
    f0 = _exact_rw2(zoom, x, nel, refine_d2, d2_fixed, kind, dist, seg, counts, type_a,
                    type_b, pair_w, el_w, to_q, scalars, qbroad, to_rows, env, g, w, gg, gc)
    fb = _exact_rw2(b, x, nel, refine_d2, d2_fixed, kind, dist, seg, counts, type_a, type_b,
                    pair_w, el_w, to_q, scalars, qbroad, to_rows, env, g, w, gg, gc)
    best, fbest = zoom, f0
    if fa < fbest:
        best, fbest = a, fa
    if fb < fbest:
        best, fbest = b, fb
    if b > zoom > a:
        # parabola through (a, fa), (zoom, f0), (b, fb)
        da, db = a - zoom, b - zoom
        num = da * da * (fb - f0) - db * db * (fa - f0)
        den = 2.0 * (da * (fb - f0) - db * (fa - f0))
        if den != 0.0:
            z = zoom - num / den
            z = min(zhi, max(zlo, min(zoom + 2 * h, max(zoom - 2 * h, z))))
            fz = _exact_rw2(z, x, nel, refine_d2, d2_fixed, kind, dist, seg, counts, type_a,
                            type_b, pair_w, el_w, to_q, scalars, qbroad, to_rows, env, g, w,
                            gg, gc)
            if fz < fbest:
                best = z
    return best


@numba.njit(cache=True)
def _other_basin(zoom, zb, base, near, zlo, zhi, x0, step, r0, env, g, w, gg_half, limit):
    """A zoom far from ``zoom`` (beyond 2·near) where the rescaled ``base`` (exact at
    ``zb``) reaches Rw below ``limit`` on a scan of the range, or −1."""
    best = -1.0
    best_rw = limit
    for i in range(_ALT_SCAN):
        z = zlo + (zhi - zlo) * i / (_ALT_SCAN - 1)
        if abs(z - zoom) <= 2.0 * near:
            continue
        rw = math.sqrt(_approx_rw2(z, zb, base, x0, step, r0, env, g, w, gg_half, 2))
        if rw < best_rw:
            best_rw = rw
            best = z
    return best


@numba.njit(cache=True)
def _store(f, m, gc, g, w, gg, zoom, converged, x, free, lo, hi, nel, d2, out_rw, out_scale,
           out_zoom, out_status, out_u, out_d2):
    """Score the model ``gc`` against frame f and store motif m's results: status 1 when a
    search did not converge, else 3 when a freed parameter ends on its bound."""
    scale, rw = _score(gc, g, w, gg)
    status = STATUS_OK if converged else STATUS_NOT_CONVERGED
    if status == STATUS_OK:
        for i in range(x.size):
            span = 1e-6 * (hi[i] - lo[i])
            if free[i] and (x[i] <= lo[i] + span or x[i] >= hi[i] - span):
                status = STATUS_AT_BOUND
    out_rw[f, m] = rw
    out_scale[f, m] = scale
    out_zoom[f, m] = zoom
    out_status[f, m] = status
    out_u[f, m, :] = x[:nel]
    out_d2[f, m] = d2


@numba.njit(cache=True)
def _anchor(ka, anchors, have_a, mom_a, ranges_a, n1_a, n2_a, gdist, gseg, q0, dq, kstart, nq,
            pair_rmin, pair_rmax, mode, d2_fixed, qbroad, lam_max, d2_max, work_row):
    """The motif's moments at anchor zoom ``ka``, taken the first time a frame needs them."""
    if have_a[ka]:
        return
    coordinate_ranges(gdist, gseg, anchors[ka], pair_rmin, pair_rmax, mode, d2_fixed, qbroad,
                      ranges_a[ka])
    group_terms(ranges_a[ka], mode, lam_max, d2_max, n1_a[ka], n2_a[ka])
    pair_moments(gdist, gseg, anchors[ka], q0, dq, kstart, nq, pair_rmin, pair_rmax, mode,
                 d2_fixed, qbroad, ranges_a[ka], n1_a[ka], n2_a[ka], mom_a[ka])
    have_a[ka] = True
    work_row[0] += 1


@numba.njit(cache=True)
def _nearest(anchors, z):
    k = 0
    for j in range(anchors.size):
        if abs(anchors[j] - z) < abs(anchors[k] - z):
            k = j
    return k


@numba.njit(cache=True)
def _fit_shared(f, m, x, free, lo, hi, nel, zoom, anchors, have_a, mom_a, ranges_a, n1_a, n2_a,
                gdist, gseg, q0, dq, kstart, nq, pair_rmin, pair_rmax, mode, d2_fixed, qbroad,
                lam_max, refine_d2, group_a, group_b, group_ff, norm, bq, mq, gg, to_r, base,
                g_lo, g_hi, gc, fq, dummy_j, dummy_h, near, zlo, zhi, xatol, x0, step, r0, env,
                g, w, gg_half, converged, out_rw, out_scale, out_zoom, out_status, out_u, out_d2,
                work):
    """One frame of the shared search: the displacement parameters on the moments of the
    anchor nearest its zoom, the zoom on that anchor's G(r); the reported Rw from the two
    anchors around the zoom, blended (as the shared search of :mod:`.fast`)."""
    n_ext = to_r.shape[0]
    npar = x.size
    d2_max = hi[npar - 1] if refine_d2 else 0.0
    no_shift = np.zeros(fq.size)
    x_best = x.copy()
    z_best = zoom
    ok_best = converged
    rw_best = np.inf
    ok_all = converged
    ka = _nearest(anchors, zoom)
    for start in range(2):
        if start == 1:
            # another basin of the zoom, seen on the refined G(r)? fit it too
            z_alt = _other_basin(zoom, anchors[ka], base, near, zlo, zhi, x0, step, r0, env, g,
                                 w, gg_half, rw_best + _ALT_MARGIN)
            if z_alt < 0.0:
                break
            zoom = z_alt
            x[:] = x_best
        converged = ok_all
        ka = _nearest(anchors, zoom)
        for _ in range(ROUNDS):
            _anchor(ka, anchors, have_a, mom_a, ranges_a, n1_a, n2_a, gdist, gseg, q0, dq,
                    kstart, nq, pair_rmin, pair_rmax, mode, d2_fixed, qbroad, lam_max, d2_max,
                    work[f, m])
            phi, ok, evals = _lm(x, free, lo, hi, nel, mom_a[ka], ranges_a[ka], n1_a[ka],
                                 n2_a[ka], group_a, group_b, d2_fixed, refine_d2, group_ff,
                                 norm, q0, dq, no_shift, bq, mq, gg)
            work[f, m, 1] += evals
            converged = converged and ok
            assemble(mom_a[ka], ranges_a[ka], n1_a[ka], n2_a[ka], x[:nel], group_a, group_b,
                     x[nel] if refine_d2 else d2_fixed, refine_d2, group_ff, norm, q0, dq, 0,
                     fq, dummy_j, dummy_h)
            _matvec_rows(to_r, fq, 0, n_ext, base)
            znew, ok = _zoom_again(zoom, anchors[ka], base, near, zlo, zhi, xatol, x0, step,
                                   r0, env, g, w, gg, gg_half)
            converged = converged and ok
            zoom = znew
            kn = _nearest(anchors, zoom)
            if kn == ka:
                break
            ka = kn
        rw = math.sqrt(_approx_rw2(zoom, anchors[ka], base, x0, step, r0, env, g, w, gg, 1))
        if rw < rw_best:
            rw_best = rw
            x_best[:] = x
            z_best = zoom
            ok_best = converged
    x[:] = x_best
    zoom = z_best
    converged = ok_best
    # the reported model: the anchors k and k + 1 around the zoom, each read at r·z_k/z
    k = 0
    while k < anchors.size - 2 and anchors[k + 1] < zoom:
        k += 1
    for j, gk in ((k, g_lo), (k + 1, g_hi)):
        _anchor(j, anchors, have_a, mom_a, ranges_a, n1_a, n2_a, gdist, gseg, q0, dq, kstart,
                nq, pair_rmin, pair_rmax, mode, d2_fixed, qbroad, lam_max, d2_max, work[f, m])
        assemble(mom_a[j], ranges_a[j], n1_a[j], n2_a[j], x[:nel], group_a, group_b,
                 x[nel] if refine_d2 else d2_fixed, refine_d2, group_ff, norm, q0, dq, 0, fq,
                 dummy_j, dummy_h)
        _matvec_rows(to_r, fq, 0, n_ext, gk)
    t = (zoom - anchors[k]) / (anchors[k + 1] - anchors[k])
    gc[:] = 0.0
    _add_scaled(g_lo, anchors[k], zoom, x0, step, r0, env, 1, 1.0 - t, gc)
    _add_scaled(g_hi, anchors[k + 1], zoom, x0, step, r0, env, 1, t, gc)
    _store(f, m, gc, g, w, gg, zoom, converged, x, free, lo, hi, nel,
           x[nel] if refine_d2 else d2_fixed, out_rw, out_scale, out_zoom, out_status, out_u,
           out_d2)


@numba.njit(cache=True)
def _refine_batch(masks, dmat, tmat, atom_type, type_a, type_b, kind, pair_w, el_w, to_q,
                  ff, el_f, scalars, q0, dq,
                  kstart, pair_rmin, pair_rmax, qbroad, mode, nm_max, edges, group_a, group_b,
                  group_ff, lam_max, u0, free_u, u_lo, u_hi, d2_0,
                  refine_d2, d2_lo, d2_hi, to_r, j0, env, g_obs, weights, bq, mq, zlo, zhi,
                  refine_zoom, xatol, x0, step, r0, anchors, out_rw, out_scale, out_zoom,
                  out_status, out_u, out_d2, work):
    n_frames, n = g_obs.shape
    n_ext = to_r.shape[0]
    ntypes = type_a.size
    nel = el_f.shape[0]
    nq = ff.shape[1]
    npar = nel + (1 if refine_d2 else 0)
    lo = np.empty(npar)
    hi = np.empty(npar)
    lo[:nel] = u_lo
    hi[:nel] = u_hi
    if refine_d2:
        lo[nel] = d2_lo
        hi[nel] = d2_hi
    d2_fixed = d2_0
    base1 = np.empty(n_ext)
    base = np.empty(n_ext)
    gc = np.empty(n)
    fq = np.empty(nq)
    dummy_j = np.empty((npar, nq))
    dummy_h = np.empty((npar, npar, nq))
    ngroups = group_a.size
    mom = np.empty((ngroups, nm_max, nq))
    ranges = np.empty((ngroups, 4))
    n1 = np.empty(ngroups, dtype=np.int64)
    n2 = np.empty(ngroups, dtype=np.int64)
    # shared search (time series): moments at anchor zooms, taken where a frame needs them
    n_anchor = anchors.size
    shared = n_anchor > 0 and refine_zoom
    mom_a = np.empty((n_anchor, ngroups, nm_max, nq))
    ranges_a = np.empty((n_anchor, ngroups, 4))
    n1_a = np.empty((n_anchor, ngroups), dtype=np.int64)
    n2_a = np.empty((n_anchor, ngroups), dtype=np.int64)
    have_a = np.zeros(n_anchor, dtype=np.bool_)
    g_lo = np.empty(n_ext)
    g_hi = np.empty(n_ext)
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
    near = max(20.0 * xatol, _NEAR * (zhi - zlo))
    x = np.empty(npar)
    x_best = np.empty(npar)
    shift = np.zeros(nq)
    free = np.zeros(npar, dtype=np.bool_)
    u_type0 = u0[type_a] + u0[type_b]
    for m in range(masks.shape[0]):
        dist, seg, counts = _motif_pairs(masks[m], dmat, tmat, atom_type, ntypes, nel)
        gdist, gseg = group_pairs(dist, seg, edges)
        norm = _motif_norm(counts, el_f)
        have_a[:] = False
        has_pairs = _exact(kind, dist, seg, counts, u_type0, pair_w, el_w, to_q, scalars,
                           d2_0, qbroad, to_r, 1.0, base1)
        for e in range(nel):
            free[e] = free_u[e] and counts[e] > 0
        if refine_d2:
            free[npar - 1] = True
        for f in range(n_frames):
            x[:nel] = u0
            if refine_d2:
                x[nel] = d2_0
            if not has_pairs:
                out_rw[f, m], out_scale[f, m], out_zoom[f, m] = 1.0, 0.0, 1.0
                out_status[f, m] = STATUS_NO_PAIRS
                out_u[f, m, :] = u0
                out_d2[f, m] = d2_0
                continue
            g = g_obs[f]
            w = weights[f]
            converged = True
            zoom = 1.0
            if refine_zoom:
                zoom, ok = _scan_then_root(zlo, zhi, xatol, 1.0, base1, x0, step, r0, env, g,
                                           w, gg_half[f], 2)
                converged = converged and ok
            if shared:
                _fit_shared(f, m, x, free, lo, hi, nel, zoom, anchors, have_a, mom_a, ranges_a,
                            n1_a, n2_a, gdist, gseg, q0, dq, kstart, nq, pair_rmin, pair_rmax,
                            mode, d2_fixed, qbroad, lam_max, refine_d2, group_a, group_b,
                            group_ff, norm, bq[f], mq[f], gg[f], to_r, base, g_lo, g_hi, gc, fq,
                            dummy_j, dummy_h, near, zlo, zhi, xatol, x0, step, r0, env, g, w,
                            gg_half[f], converged, out_rw, out_scale, out_zoom, out_status,
                            out_u, out_d2,
                            work)
                continue
            best_phi = np.inf
            for start in range(2 if refine_zoom else 1):
                if start == 1:
                    # another basin of the zoom, seen on the refined G(r)? fit it too
                    z_alt = _other_basin(zoom, zoom, base, near, zlo, zhi, x0, step, r0, env, g,
                                         w, gg_half[f], math.sqrt(best_phi) + _ALT_MARGIN)
                    if z_alt < 0.0:
                        break
                    zoom = z_alt
                    x[:] = x_best
                for _ in range(ROUNDS):
                    coordinate_ranges(gdist, gseg, zoom, pair_rmin, pair_rmax, mode, d2_fixed,
                                      qbroad, ranges)
                    group_terms(ranges, mode, lam_max, hi[npar - 1] if refine_d2 else 0.0, n1, n2)
                    pair_moments(gdist, gseg, zoom, q0, dq, kstart, nq, pair_rmin, pair_rmax, mode,
                                 d2_fixed, qbroad, ranges, n1, n2, mom)
                    work[f, m, 0] += 1
                    phi, ok, evals = _lm(x, free, lo, hi, nel, mom, ranges, n1, n2, group_a,
                                         group_b, d2_fixed, refine_d2, group_ff, norm, q0, dq,
                                         shift, bq[f], mq[f], gg[f])
                    work[f, m, 1] += evals
                    converged = converged and ok
                    if not refine_zoom:
                        break
                    # round 2: the zoom near the current one, on G(r) of the refined parameters
                    assemble(mom, ranges, n1, n2, x[:nel], group_a, group_b,
                             x[nel] if refine_d2 else d2_fixed, refine_d2, group_ff, norm, q0, dq,
                             0, fq, dummy_j, dummy_h)
                    _matvec_rows(to_r, fq, 0, n_ext, base)
                    znew, ok = _zoom_again(zoom, zoom, base, near, zlo, zhi, xatol, x0, step, r0,
                                           env, g, w, gg[f], gg_half[f])
                    converged = converged and ok
                    gain = math.sqrt(_approx_rw2(zoom, zoom, base, x0, step, r0, env, g, w, gg[f],
                                                 1)) \
                        - math.sqrt(_approx_rw2(znew, zoom, base, x0, step, r0, env, g, w, gg[f],
                                                1))
                    if gain < _RW_GAIN:
                        break
                    zoom = znew
                if phi < best_phi:
                    best_phi = phi
                    x_best[:] = x
                    z_best = zoom
                    ok_best = converged
            x[:] = x_best
            zoom = z_best
            converged = ok_best
            if kind != _DEBYE:
                # real space: the moments give the Debye form of its peaks, which the peak
                # grid's ends cut; correct the search by the exact F(Q) where it stands
                for _ in range(DEFECT_ROUNDS):
                    coordinate_ranges(gdist, gseg, zoom, pair_rmin, pair_rmax, mode, d2_fixed,
                                      qbroad, ranges)
                    group_terms(ranges, mode, lam_max, hi[npar - 1] if refine_d2 else 0.0, n1,
                                n2)
                    pair_moments(gdist, gseg, zoom, q0, dq, kstart, nq, pair_rmin, pair_rmax,
                                 mode, d2_fixed, qbroad, ranges, n1, n2, mom)
                    work[f, m, 0] += 1
                    d2 = x[nel] if refine_d2 else d2_fixed
                    fx = _exact_fq(kind, dist, seg, counts, x[:nel][type_a] + x[:nel][type_b],
                                   pair_w, el_w, to_q, scalars, d2, qbroad, zoom)
                    assemble(mom, ranges, n1, n2, x[:nel], group_a, group_b, d2, refine_d2,
                             group_ff, norm, q0, dq, 0, fq, dummy_j, dummy_h)
                    for k in range(nq):
                        shift[k] = fx[k] - fq[k]
                    phi, ok, evals = _lm(x, free, lo, hi, nel, mom, ranges, n1, n2, group_a,
                                         group_b, d2_fixed, refine_d2, group_ff, norm, q0, dq,
                                         shift, bq[f], mq[f], gg[f])
                    work[f, m, 1] += evals
                    converged = converged and ok
                    if not refine_zoom:
                        continue
                    assemble(mom, ranges, n1, n2, x[:nel], group_a, group_b,
                             x[nel] if refine_d2 else d2_fixed, refine_d2, group_ff, norm, q0,
                             dq, 0, fq, dummy_j, dummy_h)
                    fq += shift
                    _matvec_rows(to_r, fq, 0, n_ext, base)
                    zoom, ok = _zoom_again(zoom, zoom, base, near, zlo, zhi, xatol, x0, step,
                                           r0, env, g, w, gg[f], gg_half[f])
                    converged = converged and ok
                shift[:] = 0.0
            if refine_zoom and (refine_d2 or kind != _DEBYE):
                # large delta2 (or real space's fixed peak grid) makes the widths depend on
                # the zoom, which the rescaled G(r) of the zoom search ignores: a parabola
                # through exact Rw at three zooms, then the displacements again there
                for _ in range(POLISH_ROUNDS):
                    z_new = _zoom_parabola(zoom, x, nel, refine_d2, d2_fixed, kind, dist, seg,
                                           counts, type_a, type_b, pair_w, el_w, to_q, scalars,
                                           qbroad, to_r[j0:j0 + n], env, g, w, gg[f], zlo, zhi,
                                           gc)
                    if abs(z_new - zoom) < 1e-7:
                        break
                    zoom = z_new
                    coordinate_ranges(gdist, gseg, zoom, pair_rmin, pair_rmax, mode, d2_fixed,
                                      qbroad, ranges)
                    group_terms(ranges, mode, lam_max, hi[npar - 1] if refine_d2 else 0.0, n1,
                                n2)
                    pair_moments(gdist, gseg, zoom, q0, dq, kstart, nq, pair_rmin, pair_rmax,
                                 mode, d2_fixed, qbroad, ranges, n1, n2, mom)
                    work[f, m, 0] += 1
                    if kind != _DEBYE:
                        d2 = x[nel] if refine_d2 else d2_fixed
                        fx = _exact_fq(kind, dist, seg, counts,
                                       x[:nel][type_a] + x[:nel][type_b], pair_w, el_w, to_q,
                                       scalars, d2, qbroad, zoom)
                        assemble(mom, ranges, n1, n2, x[:nel], group_a, group_b, d2,
                                 refine_d2, group_ff, norm, q0, dq, 0, fq, dummy_j, dummy_h)
                        for k in range(nq):
                            shift[k] = fx[k] - fq[k]
                    phi, ok, evals = _lm(x, free, lo, hi, nel, mom, ranges, n1, n2, group_a,
                                         group_b, d2_fixed, refine_d2, group_ff, norm, q0, dq,
                                         shift, bq[f], mq[f], gg[f])
                    work[f, m, 1] += evals
                    converged = converged and ok
                shift[:] = 0.0
            # the reported Rw: the exact G(r) at the reported parameters
            d2 = x[nel] if refine_d2 else d2_fixed
            u_type = x[:nel][type_a] + x[:nel][type_b]
            _exact(kind, dist, seg, counts, u_type, pair_w, el_w, to_q, scalars, d2,
                   qbroad, to_r[j0:j0 + n], zoom, gc)
            for k in range(n):
                gc[k] *= env[k]
            _store(f, m, gc, g, w, gg[f], zoom, converged, x, free, lo, hi, nel, d2, out_rw,
                   out_scale, out_zoom, out_status, out_u, out_d2)
