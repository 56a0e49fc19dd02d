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
from typing import NamedTuple

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
    Frame,
    Kernel,
    Pairs,
    Parent,
    Rescale,
    ZoomSearch,
    _add_scaled,
    _approx_rw2,
    _exact,
    _exact_fq,
    _frame_sums,
    _matvec_rows,
    _motif_pairs,
    _scan_then_root,
    _score,
    _slope_root,
    _zoom_near,
    uniform_step,
)
from .fitter import (
    STATUS_AT_BOUND,
    STATUS_NO_PAIRS,
    STATUS_NOT_CONVERGED,
    STATUS_OK,
    FitSettings,
)
from .moments import Expansion, Groups, Moments, assemble, group_pairs, take_moments, terms_needed

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


# -- the tables the compiled loops read, by name ----------------------------------------


class Displacements(NamedTuple):
    """The displacement parameters x = (Uiso per element[, delta2]): start, which are
    freed, bounds per parameter."""

    u0: np.ndarray  # starting Uiso per element (Å²)
    free_u: np.ndarray  # whether the config frees each element's Uiso
    lo: np.ndarray  # bounds of each parameter
    hi: np.ndarray
    d2_0: float  # starting (or fixed) delta2 (Å²)
    refine_d2: bool
    nel: int


class QModel(NamedTuple):
    """The moments' side of the fit: how pairs are expanded, over which groups, in how
    many terms at most, and f(Q) per element for the motif's normalisation."""

    expansion: Expansion
    groups: Groups
    edges: np.ndarray  # distance-shell edges of each pair type (Å)
    nm_max: int  # most moments of one group
    el_f: np.ndarray  # (elements, nq)


class Tables(NamedTuple):
    """Everything a batch of refining fits reads and never changes."""

    parent: Parent
    kernel: Kernel
    q: QModel
    disp: Displacements
    grid: Rescale
    search: ZoomSearch
    anchors: np.ndarray  # the shared search's anchor zooms (empty: every frame exact)
    near: float  # zooms closer than this are one basin


class Motif(NamedTuple):
    """One motif's pairs, regrouped by shell, its normalisation, its freed parameters and
    (shared search) its moments at the anchor zooms taken so far."""

    pairs: Pairs
    gdist: np.ndarray
    gseg: np.ndarray
    norm: np.ndarray
    free: np.ndarray
    at_anchors: Moments  # each array with a leading anchor axis
    have_anchor: np.ndarray


class Objective(NamedTuple):
    """Rw² in Q space of one motif against one frame, a function of the displacement
    parameters: Rw² = 1 − (b·F)² / (Σ w g² · F·M·F)."""

    moments: Moments
    groups: Groups
    expansion: Expansion
    norm: np.ndarray
    shift: np.ndarray  # added to the moments' F(Q) (real space's correction; else zeros)
    bq: np.ndarray  # b = Kᵀ W g
    mq: np.ndarray  # M = Kᵀ W K
    gg: float


class Scratch(NamedTuple):
    """Work arrays of a batch, allocated once."""

    base1: np.ndarray  # exact G at zoom 1, extended grid
    base: np.ndarray  # G of the refined parameters, extended grid
    gc: np.ndarray  # a model on the data points
    fq: np.ndarray
    jac: np.ndarray
    hess: np.ndarray
    shift: np.ndarray
    x_best: np.ndarray
    g_lo: np.ndarray  # the two anchors around a zoom (shared search)
    g_hi: np.ndarray


class RefineResults(NamedTuple):
    """Where a batch's results go, each (frames, motifs[, ...])."""

    rw: np.ndarray
    scale: np.ndarray
    zoom: np.ndarray
    status: np.ndarray
    u: np.ndarray  # (F, M, elements)
    d2: np.ndarray
    work: np.ndarray  # (F, M, 2): moment passes, Rw evaluations


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
        q0, dq, kstart, pmin, pmax = self._qgrid
        expansion = Expansion(float(q0), float(dq), int(kstart), int(self._ff.shape[1]),
                              float(pmin), float(pmax), self._mode, self.d2_0,
                              float(s.qbroad), self._lam_max,
                              self.d2_hi if self.refine_delta2 else 0.0)
        groups = Groups(self._group_a, self._group_b, self._group_ff)
        lo, hi = self.u_lo, self.u_hi
        if self.refine_delta2:
            lo, hi = np.append(lo, self.d2_lo), np.append(hi, self.d2_hi)
        zlo, zhi = self.zoom_bounds
        self.tables = Tables(
            self.parent, self.kernel,
            QModel(expansion, groups, self._edges, int(self._n1 * self._n2), self._el_f),
            Displacements(self.u0, self.free_u, lo, hi, self.d2_0, self.refine_delta2, nel),
            self.grid, self.search, self.anchors if self.shared else np.empty(0),
            max(20.0 * self.xatol, _NEAR * (zhi - zlo)),
        )

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
        _refine_batch(masks, self.tables, self.g_obs, self.weights, self._b, self._m,
                      RefineResults(out["rw"], out["scale"], out["zoom"], out["status"],
                                    out_u, out_d2, work))
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
def _objective(x, ob, order, fq, jac, hq, grad, hess):
    """Rw² of the parameters x = (U per element[, delta2]) in Q space (the
    :class:`Objective` ``ob``), the scale in closed form, for F(Q) from the moments plus
    ``ob.shift``; with ``order`` 2 its exact gradient and Hessian as well."""
    ex = ob.expansion
    refine_d2 = ex.mode == 1
    nel = x.size - (1 if refine_d2 else 0)
    d2 = x[nel] if refine_d2 else ex.delta2
    assemble(ob.moments, ob.groups, ex, x[:nel], d2, ob.norm, order, fq, jac, hq)
    fq += ob.shift
    bq, mq, gg = ob.bq, ob.mq, ob.gg
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
def _lm(x, free, lo, hi, ob):
    """Bounded, damped Newton search (exact Hessian, Levenberg–Marquardt damping, active
    set on the bounds) on Rw²(x) of the :class:`Objective` ``ob``, the freed parameters
    ``free`` within [lo, hi]; returns (Rw², converged, evaluations) and updates ``x``."""
    npar = x.size
    nq = ob.expansion.nq
    fq = np.empty(nq)
    jac = np.empty((npar, nq))
    hq = np.empty((npar, npar, nq))
    grad = np.empty(npar)
    hess = np.empty((npar, npar))
    g2 = np.empty(npar)
    h2 = np.empty((npar, npar))
    phi = _objective(x, ob, 2, fq, jac, hq, grad, hess)
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
        phin = _objective(xn, ob, 2, fq, jac, hq, g2, h2)
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
def _delta2_of(x, disp):
    """delta2 of the parameters x: refined (the last one) or the fixed value."""
    return x[disp.nel] if disp.refine_d2 else disp.d2_0


@numba.njit(cache=True)
def _model_g(x, ob, add_shift, to_r, s, out):
    """G(r) (no envelope) on the rows of ``to_r`` of the moments' F(Q) at the parameters
    x (plus ``ob.shift`` when ``add_shift``), into ``out``."""
    ex = ob.expansion
    nel = x.size - (1 if ex.mode == 1 else 0)
    d2 = x[nel] if ex.mode == 1 else ex.delta2
    assemble(ob.moments, ob.groups, ex, x[:nel], d2, ob.norm, 0, s.fq, s.jac, s.hess)
    fq = s.fq
    if add_shift:
        fq += ob.shift
    _matvec_rows(to_r, fq, 0, to_r.shape[0], out)


@numba.njit(cache=True)
def _defect(x, zoom, t, motif, ob, s):
    """Real space: the moments give the Debye form of its peaks, which the peak grid's
    ends cut; ``ob.shift`` = exact F(Q) − the moments' F(Q) at x and ``zoom``."""
    d = t.disp
    nel = d.nel
    d2 = _delta2_of(x, d)
    fx = _exact_fq(t.kernel, motif.pairs, x[:nel][t.parent.type_a] + x[:nel][t.parent.type_b],
                   d2, zoom)
    assemble(ob.moments, ob.groups, ob.expansion, x[:nel], d2, ob.norm, 0, s.fq, s.jac,
             s.hess)
    for k in range(s.fq.size):
        ob.shift[k] = fx[k] - s.fq[k]


@numba.njit(cache=True)
def _zoom_again(zoom, zb, base, near, grid, search, frame):
    """Round 2 of the zoom on ``base`` (exact at zb, at the refined displacement
    parameters): the zero of the slope of Rw² near ``zoom`` (:func:`.fast._zoom_near`),
    and a scan of the whole range as well, because freeing Uiso or delta2 can move the
    best zoom into another basin; the lower of the two."""
    zlo, zhi, xatol = search.zlo, search.zhi, search.xatol
    x0, step, r0, env = grid.x0, grid.step, grid.r0, grid.env
    g, w, gg = frame.g, frame.w, frame.gg
    z_near, ok = _zoom_near(zoom, zb, base, grid, search, frame)
    z_all, ok_all = _scan_then_root(zlo, zhi, xatol, zb, base, x0, step, r0, env, g, w,
                                    frame.gg_half, 2)
    if abs(z_all - z_near) > near:
        a = max(zlo, z_all - _ROOT_NEAR)
        b = min(zhi, z_all + _ROOT_NEAR)
        z_all, ok_all = _slope_root(a, b, xatol, zb, base, x0, step, r0, env, g, w, gg, 1)
        if _approx_rw2(z_all, zb, base, x0, step, r0, env, g, w, gg, 1) \
                < _approx_rw2(z_near, zb, base, x0, step, r0, env, g, w, gg, 1):
            return z_all, ok_all
    return z_near, ok


@numba.njit(cache=True)
def _exact_rw2(z, x, t, pairs, to_rows, frame, gc):
    """Rw² of the exact G(r) at zoom z and the displacement parameters x."""
    nel = t.disp.nel
    _exact(t.kernel, pairs, x[:nel][t.parent.type_a] + x[:nel][t.parent.type_b],
           _delta2_of(x, t.disp), to_rows, z, gc)
    env = t.grid.env
    for k in range(gc.size):
        gc[k] *= env[k]
    return _score(gc, frame.g, frame.w, frame.gg)[1] ** 2


@numba.njit(cache=True)
def _zoom_parabola(zoom, x, t, pairs, to_rows, frame, gc):
    """The vertex of the parabola through the exact Rw² at zoom − h, zoom, zoom + h (kept
    within the bounds and 2h of zoom), or zoom when it lowers nothing."""
    zlo, zhi = t.search.zlo, t.search.zhi
    h = _POLISH_STEP
    a = max(zlo, zoom - h)
    b = min(zhi, zoom + h)
    fa = _exact_rw2(a, x, t, pairs, to_rows, frame, gc)
    f0 = _exact_rw2(zoom, x, t, pairs, to_rows, frame, gc)
    fb = _exact_rw2(b, x, t, pairs, to_rows, frame, gc)
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
            fz = _exact_rw2(z, x, t, pairs, to_rows, frame, gc)
            if fz < fbest:
                best = z
    return best


@numba.njit(cache=True)
def _other_basin(zoom, zb, base, near, grid, search, frame, limit):
    """A zoom far from ``zoom`` (beyond 2·near) where the rescaled ``base`` (exact at
    ``zb``) reaches Rw below ``limit`` on a scan of the range, or −1."""
    zlo, zhi = search.zlo, search.zhi
    best = -1.0
    best_rw = limit
    for i in range(_ALT_SCAN):
        z = zlo + (zhi - zlo) * i / (_ALT_SCAN - 1)
        if abs(z - zoom) <= 2.0 * near:
            continue
        rw = math.sqrt(_approx_rw2(z, zb, base, grid.x0, grid.step, grid.r0, grid.env,
                                   frame.g, frame.w, frame.gg_half, 2))
        if rw < best_rw:
            best_rw = rw
            best = z
    return best


@numba.njit(cache=True)
def _store(f, m, gc, frame, zoom, converged, x, free, disp, out):
    """Score the model ``gc`` against frame f and store motif m's results: status 1 when a
    search did not converge, else 3 when a freed parameter ends on its bound."""
    lo, hi = disp.lo, disp.hi
    scale, rw = _score(gc, frame.g, frame.w, frame.gg)
    status = STATUS_OK if converged else STATUS_NOT_CONVERGED
    if status == STATUS_OK:
        for i in range(x.size):
            span = 1e-6 * (hi[i] - lo[i])
            if free[i] and (x[i] <= lo[i] + span or x[i] >= hi[i] - span):
                status = STATUS_AT_BOUND
    out.rw[f, m] = rw
    out.scale[f, m] = scale
    out.zoom[f, m] = zoom
    out.status[f, m] = status
    out.u[f, m, :] = x[:disp.nel]
    out.d2[f, m] = _delta2_of(x, disp)


@numba.njit(cache=True)
def _nearest(anchors, z):
    k = 0
    for j in range(anchors.size):
        if abs(anchors[j] - z) < abs(anchors[k] - z):
            k = j
    return k


@numba.njit(cache=True)
def _at_anchor(motif, anchors, ka, ex, work_row):
    """The motif's moments at anchor zoom ``ka``, taken the first time a frame needs
    them."""
    a = motif.at_anchors
    here = Moments(a.mom[ka], a.ranges[ka], a.n1[ka], a.n2[ka])
    if not motif.have_anchor[ka]:
        take_moments(motif.gdist, motif.gseg, anchors[ka], ex, here)
        motif.have_anchor[ka] = True
        work_row[0] += 1
    return here


@numba.njit(cache=True)
def _search(x, zoom, converged, t, motif, frame, ob, s, work_row):
    """The displacement parameters on the moments at the zoom, then the zoom on G(r) of
    those parameters (round 2), up to :data:`ROUNDS` times; then the same from another
    basin of the zoom when one looks nearly as good. Returns (zoom, converged) and leaves
    the best parameters in ``x``."""
    d = t.disp
    search = t.search
    x0, step, r0, env = t.grid.x0, t.grid.step, t.grid.r0, t.grid.env
    g, w, gg = frame.g, frame.w, frame.gg
    best_phi = np.inf
    s.x_best[:] = x
    z_best = zoom
    ok_best = converged
    for start in range(2 if search.refine else 1):
        if start == 1:
            # another basin of the zoom, seen on the refined G(r)? fit it too
            z_alt = _other_basin(zoom, zoom, s.base, t.near, t.grid, search, frame,
                                 math.sqrt(best_phi) + _ALT_MARGIN)
            if z_alt < 0.0:
                break
            zoom = z_alt
            x[:] = s.x_best
        phi = 1.0
        for _ in range(ROUNDS):
            take_moments(motif.gdist, motif.gseg, zoom, ob.expansion, ob.moments)
            work_row[0] += 1
            phi, ok, evals = _lm(x, motif.free, d.lo, d.hi, ob)
            work_row[1] += evals
            converged = converged and ok
            if not search.refine:
                break
            # round 2: the zoom near the current one, on G(r) of the refined parameters
            _model_g(x, ob, False, t.grid.to_r, s, s.base)
            znew, ok = _zoom_again(zoom, zoom, s.base, t.near, t.grid, search, frame)
            converged = converged and ok
            gain = math.sqrt(_approx_rw2(zoom, zoom, s.base, x0, step, r0, env, g, w, gg, 1)) \
                - math.sqrt(_approx_rw2(znew, zoom, s.base, x0, step, r0, env, g, w, gg, 1))
            if gain < _RW_GAIN:
                break
            zoom = znew
        if phi < best_phi:
            best_phi = phi
            s.x_best[:] = x
            z_best = zoom
            ok_best = converged
    x[:] = s.x_best
    return z_best, ok_best


@numba.njit(cache=True)
def _correct(x, zoom, converged, t, motif, frame, ob, s, work_row):
    """Real space: the search corrected by the exact F(Q) where it stands,
    :data:`DEFECT_ROUNDS` times. Returns (zoom, converged)."""
    d = t.disp
    for _ in range(DEFECT_ROUNDS):
        take_moments(motif.gdist, motif.gseg, zoom, ob.expansion, ob.moments)
        work_row[0] += 1
        _defect(x, zoom, t, motif, ob, s)
        phi, ok, evals = _lm(x, motif.free, d.lo, d.hi, ob)
        work_row[1] += evals
        converged = converged and ok
        if not t.search.refine:
            continue
        _model_g(x, ob, True, t.grid.to_r, s, s.base)
        zoom, ok = _zoom_again(zoom, zoom, s.base, t.near, t.grid, t.search, frame)
        converged = converged and ok
    ob.shift[:] = 0.0
    return zoom, converged


@numba.njit(cache=True)
def _polish(x, zoom, converged, t, motif, frame, ob, s, work_row):
    """Large delta2 (or real space's fixed peak grid) makes the widths depend on the zoom,
    which the rescaled G(r) of the zoom search ignores: a parabola through exact Rw at
    three zooms, then the displacements again there (:data:`POLISH_ROUNDS` times).
    Returns (zoom, converged)."""
    d = t.disp
    n = frame.g.size
    j0 = t.grid.j0
    for _ in range(POLISH_ROUNDS):
        z_new = _zoom_parabola(zoom, x, t, motif.pairs, t.grid.to_r[j0:j0 + n], frame, s.gc)
        if abs(z_new - zoom) < 1e-7:
            break
        zoom = z_new
        take_moments(motif.gdist, motif.gseg, zoom, ob.expansion, ob.moments)
        work_row[0] += 1
        if t.kernel.kind != _DEBYE:
            _defect(x, zoom, t, motif, ob, s)
        phi, ok, evals = _lm(x, motif.free, d.lo, d.hi, ob)
        work_row[1] += evals
        converged = converged and ok
    ob.shift[:] = 0.0
    return zoom, converged


@numba.njit(cache=True)
def _fit_shared(f, m, x, zoom, converged, t, motif, frame, bq, mq, s, out):
    """One frame of the shared search: the displacement parameters on the moments of the
    anchor nearest its zoom, the zoom on that anchor's G(r); the reported Rw from the two
    anchors around the zoom, blended (as the shared search of :mod:`.fast`)."""
    d = t.disp
    anchors = t.anchors
    ex = t.q.expansion
    x0, step, r0, env = t.grid.x0, t.grid.step, t.grid.r0, t.grid.env
    work_row = out.work[f, m]
    x_best = x.copy()
    z_best = zoom
    ok_best = converged
    rw_best = np.inf
    ok_all = converged
    ka = _nearest(anchors, zoom)
    for start in range(2):
        if start == 1:
            # another basin of the zoom, seen on the refined G(r)? fit it too
            z_alt = _other_basin(zoom, anchors[ka], s.base, t.near, t.grid, t.search, frame,
                                 rw_best + _ALT_MARGIN)
            if z_alt < 0.0:
                break
            zoom = z_alt
            x[:] = x_best
        converged = ok_all
        ka = _nearest(anchors, zoom)
        for _ in range(ROUNDS):
            ob = Objective(_at_anchor(motif, anchors, ka, ex, work_row), t.q.groups, ex,
                           motif.norm, s.shift, bq, mq, frame.gg)
            phi, ok, evals = _lm(x, motif.free, d.lo, d.hi, ob)
            work_row[1] += evals
            converged = converged and ok
            _model_g(x, ob, False, t.grid.to_r, s, s.base)
            znew, ok = _zoom_again(zoom, anchors[ka], s.base, t.near, t.grid, t.search, frame)
            converged = converged and ok
            zoom = znew
            kn = _nearest(anchors, zoom)
            if kn == ka:
                break
            ka = kn
        rw = math.sqrt(_approx_rw2(zoom, anchors[ka], s.base, x0, step, r0, env, frame.g,
                                   frame.w, frame.gg, 1))
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
    for j, gk in ((k, s.g_lo), (k + 1, s.g_hi)):
        ob = Objective(_at_anchor(motif, anchors, j, ex, work_row), t.q.groups, ex,
                       motif.norm, s.shift, bq, mq, frame.gg)
        _model_g(x, ob, False, t.grid.to_r, s, gk)
    w = (zoom - anchors[k]) / (anchors[k + 1] - anchors[k])
    s.gc[:] = 0.0
    _add_scaled(s.g_lo, anchors[k], zoom, x0, step, r0, env, 1, 1.0 - w, s.gc)
    _add_scaled(s.g_hi, anchors[k + 1], zoom, x0, step, r0, env, 1, w, s.gc)
    _store(f, m, s.gc, frame, zoom, converged, x, motif.free, d, out)


@numba.njit(cache=True)
def _moment_space(n_sets, ngroups, nm_max, nq):
    """Room for the moments at ``n_sets`` zooms."""
    return Moments(np.empty((n_sets, ngroups, nm_max, nq)), np.empty((n_sets, ngroups, 4)),
                   np.empty((n_sets, ngroups), dtype=np.int64),
                   np.empty((n_sets, ngroups), dtype=np.int64))


@numba.njit(cache=True)
def _refine_batch(masks, t, g_obs, weights, bq, mq, out):
    """Every motif × frame (see the module notes); the results into ``out``."""
    n_frames, n = g_obs.shape
    d = t.disp
    nel = d.nel
    npar = d.lo.size
    ex = t.q.expansion
    nq = ex.nq
    n_ext = t.grid.to_r.shape[0]
    j0 = t.grid.j0
    env = t.grid.env
    search = t.search
    ngroups = t.q.groups.type_a.size
    s = Scratch(np.empty(n_ext), np.empty(n_ext), np.empty(n), np.empty(nq),
                np.empty((npar, nq)), np.empty((npar, npar, nq)), np.zeros(nq),
                np.empty(npar), np.empty(n_ext), np.empty(n_ext))
    one = _moment_space(1, ngroups, t.q.nm_max, nq)
    here = Moments(one.mom[0], one.ranges[0], one.n1[0], one.n2[0])
    # shared search (time series): moments at anchor zooms, taken where a frame needs them
    n_anchor = t.anchors.size
    shared = n_anchor > 0 and search.refine
    at_anchors = _moment_space(n_anchor, ngroups, t.q.nm_max, nq)
    have_anchor = np.zeros(n_anchor, dtype=np.bool_)
    gg, gg_half = _frame_sums(g_obs, weights)
    x = np.empty(npar)
    free = np.zeros(npar, dtype=np.bool_)
    u_type0 = d.u0[t.parent.type_a] + d.u0[t.parent.type_b]
    for m in range(masks.shape[0]):
        pairs = _motif_pairs(masks[m], t.parent)
        gdist, gseg = group_pairs(pairs.dist, pairs.seg, t.q.edges)
        norm = _motif_norm(pairs.counts, t.q.el_f)
        have_anchor[:] = False
        has_pairs = _exact(t.kernel, pairs, u_type0, d.d2_0, t.grid.to_r, 1.0, s.base1)
        for e in range(nel):
            free[e] = d.free_u[e] and pairs.counts[e] > 0
        if d.refine_d2:
            free[npar - 1] = True
        motif = Motif(pairs, gdist, gseg, norm, free, at_anchors, have_anchor)
        for f in range(n_frames):
            x[:nel] = d.u0
            if d.refine_d2:
                x[nel] = d.d2_0
            if not has_pairs:
                out.rw[f, m], out.scale[f, m], out.zoom[f, m] = 1.0, 0.0, 1.0
                out.status[f, m] = STATUS_NO_PAIRS
                out.u[f, m, :] = d.u0
                out.d2[f, m] = d.d2_0
                continue
            frame = Frame(g_obs[f], weights[f], gg[f], gg_half[f])
            work_row = out.work[f, m]
            converged = True
            zoom = 1.0
            if search.refine:
                zoom, ok = _scan_then_root(search.zlo, search.zhi, search.xatol, 1.0, s.base1,
                                           t.grid.x0, t.grid.step, t.grid.r0, env, frame.g,
                                           frame.w, frame.gg_half, 2)
                converged = converged and ok
            if shared:
                _fit_shared(f, m, x, zoom, converged, t, motif, frame, bq[f], mq[f], s, out)
                continue
            ob = Objective(here, t.q.groups, ex, norm, s.shift, bq[f], mq[f], frame.gg)
            zoom, converged = _search(x, zoom, converged, t, motif, frame, ob, s, work_row)
            if t.kernel.kind != _DEBYE:
                zoom, converged = _correct(x, zoom, converged, t, motif, frame, ob, s,
                                           work_row)
            if search.refine and (d.refine_d2 or t.kernel.kind != _DEBYE):
                zoom, converged = _polish(x, zoom, converged, t, motif, frame, ob, s, work_row)
            # the reported Rw: the exact G(r) at the reported parameters
            _exact(t.kernel, pairs, x[:nel][t.parent.type_a] + x[:nel][t.parent.type_b],
                   _delta2_of(x, d), t.grid.to_r[j0:j0 + n], zoom, s.gc)
            for k in range(n):
                s.gc[k] *= env[k]
            _store(f, m, s.gc, frame, zoom, converged, x, free, d, out)
