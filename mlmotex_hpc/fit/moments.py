"""Pair moments: the Debye sum with its Debye–Waller factors expanded, so that Uiso and
delta2 can change without another pass over the pairs.

A pair p of type t (elements a, b) at distance d contributes to F(Q) through
sin(Q d)/d · exp(−λ_t c_p), with λ_t = (U_a + U_b) Q²/2 and DiffPy's width factor
c_p = 1 − δ2/d² + (qbroad·d)² (no damping once c_p <= 0). Uiso enters only through
λ_t, delta2 only through c_p. Over the pairs of one type c_p spans a short interval
[lo, hi]; on it exp(−λ c) has the Chebyshev expansion

    exp(−λ c) = exp(−λ c̄) Σ_d ε_d (−1)^d I_d(λ h) T_d((c − c̄)/h),   c̄ ± h = [lo, hi],

(ε_0 = 1, ε_d = 2; I_d the modified Bessel functions), whose coefficients depend on λ
alone and whose polynomials T_d depend on the pair alone. One pass over the pairs
therefore yields the *moments* M[t, d, k] = Σ_p T_d(ĉ_p) sin(Q_k d_p)/d_p, and F(Q) for
any Uiso is a sum over d of Bessel-weighted moments: no pair is visited again.

When delta2 is refined as well, c_p = α_p − δ2·y_p with α_p = 1 + (qbroad·d)² and
y_p = 1/d², and exp(−λ α_p + κ y_p) (κ = λ δ2) is expanded in both pair coordinates: the
moments carry two indices (i for α, j for y; one index when qbroad is 0). Refining
delta2 requires every pair to keep c_p > 0 within the bounds (δ2 < d² for the shortest
pair), which the fitter checks, because DiffPy's clamp at c_p = 0 is not smooth.

The number of terms is chosen from the bounds on Uiso and delta2 so that the truncation
error of each pair's factor stays below :data:`TOLERANCE` of the largest one: the
expansion is exact for the search and the reported Rw always comes from the ordinary
Debye kernel at the reported parameters.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ..pdf._vecmath import sincos

#: Truncation error allowed on a pair's Debye–Waller factor, relative to its largest
#: value over the bounds.
TOLERANCE = 1e-7
#: The most terms used on one coordinate.
MAX_TERMS = 40
#: Pairs per block of the moment pass.
_BLOCK = 128


@numba.njit(cache=True)
def scaled_bessel(a, nmax, out):
    """out[d] = I_d(a)·exp(−a) for d = 0 … nmax (a >= 0): the power series for the two
    highest orders, then the (stable) downward recurrence I_{d−1} = I_{d+1} + (2d/a) I_d."""
    if a <= 0.0:
        out[: nmax + 1] = 0.0
        out[0] = 1.0
        return
    # (a/2)^top / top! · e^{−a} by a product; orders whose value would underflow are 0
    half = 0.5 * a
    pre = math.exp(-a)
    top = nmax + 1
    for d in range(1, nmax + 2):
        if pre * half / d < 1e-280:
            top = max(d - 1, 1)
            break
        pre *= half / d
    out[: nmax + 1] = 0.0
    quarter = half * half
    s1 = 1.0  # series of I_top / pre
    s0 = 1.0  # series of I_{top-1} / (pre · top / half)
    t1 = 1.0
    t0 = 1.0
    j = 1
    while True:
        t1 *= quarter / (j * (top + j))
        t0 *= quarter / (j * (top - 1 + j))
        s1 += t1
        s0 += t0
        if t0 < 1e-17 * s0 and t1 < 1e-17 * s1:
            break
        j += 1
    i_top = pre * s1
    i_below = pre * (top / half) * s0
    inv = 1.0 / a
    nxt = i_top
    cur = i_below
    out[top - 1] = cur
    for d in range(top - 1, 0, -1):
        prev = nxt + 2.0 * d * inv * cur
        nxt = cur
        cur = prev
        out[d - 1] = cur
    if top < out.size:
        out[top] = i_top


def terms_needed(a_max: float, tolerance: float = TOLERANCE) -> int:
    """Chebyshev terms that keep exp(a·t), |t| <= 1, within ``tolerance`` of its maximum
    for every a in [0, a_max] (the tail 2 Σ_{d>D} I_d(a)e^{−a} grows with a)."""
    if a_max <= 0.0:
        return 1
    out = np.empty(MAX_TERMS + 2)
    scaled_bessel(float(a_max), MAX_TERMS + 1, out)
    tail = 2.0 * np.cumsum(out[::-1])[::-1]  # tail[d] = 2 Σ_{j>=d} i_j (within the table)
    for d in range(1, MAX_TERMS + 1):
        if tail[d] < tolerance:
            return d
    return MAX_TERMS + 1


@numba.njit(cache=True)
def pair_coordinates(d, mode, delta2, qbroad):
    """The pair's expansion coordinates (c1, c2) at distance d.

    mode 0 (delta2 fixed): c1 = max(1 − δ2/d² + (qbroad d)², 0), c2 = 0;
    mode 1 (delta2 refined): c1 = 1 + (qbroad d)², c2 = 1/d².
    """
    if mode == 0:
        c = 1.0 - delta2 / (d * d) + (qbroad * d) ** 2
        return max(c, 0.0), 0.0
    return 1.0 + (qbroad * d) ** 2, 1.0 / (d * d)


@numba.njit(cache=True)
def coordinate_ranges(dist, seg, zoom, pair_rmin, pair_rmax, mode, delta2, qbroad, ranges):
    """ranges[t] = (lo1, hi1, lo2, hi2) of the pair coordinates of each type (pairs inside
    the window only); (0, 0, 0, 0) for a type without pairs."""
    ntypes = seg.size - 1
    for t in range(ntypes):
        lo1 = lo2 = np.inf
        hi1 = hi2 = -np.inf
        for p in range(seg[t], seg[t + 1]):
            d = zoom * dist[p]
            if d < pair_rmin or d > pair_rmax or d <= 0.0:
                continue
            c1, c2 = pair_coordinates(d, mode, delta2, qbroad)
            lo1 = min(lo1, c1)
            hi1 = max(hi1, c1)
            lo2 = min(lo2, c2)
            hi2 = max(hi2, c2)
        if lo1 == np.inf:
            ranges[t, :] = 0.0
        else:
            ranges[t, 0], ranges[t, 1], ranges[t, 2], ranges[t, 3] = lo1, hi1, lo2, hi2


@numba.njit(cache=True, fastmath=True)
def pair_moments(dist, seg, zoom, q0, dq, kstart, nq, pair_rmin, pair_rmax, mode, delta2,
                 qbroad, ranges, n1, n2, out):
    """out[t, i·n2 + j, k] = Σ_p T_i(ĉ1_p) T_j(ĉ2_p) sin(Q_k d_p)/d_p over the pairs of type
    t inside the window, d_p = zoom·dist[p], Q_k = q0 + k·dq, ĉ the coordinates mapped
    onto [−1, 1] by ``ranges`` (from :func:`coordinate_ranges`).

    Per block of pairs: the polynomial values into a (moment, pair) table, then four Q
    steps at a time the sines by their recurrence and the sums of their products.
    """
    ntypes = seg.size - 1
    nm = n1 * n2
    out[:] = 0.0
    s_prev = np.empty(_BLOCK)
    s_cur = np.empty(_BLOCK)
    c2 = np.empty(_BLOCK)
    rr = np.empty(_BLOCK)
    table = np.empty((4, _BLOCK))
    w = np.empty((nm, _BLOCK))
    t1 = np.empty(n1)
    t2 = np.empty(n2)
    for t in range(ntypes):
        lo1, hi1, lo2, hi2 = ranges[t, 0], ranges[t, 1], ranges[t, 2], ranges[t, 3]
        h1 = 0.5 * (hi1 - lo1)
        h2 = 0.5 * (hi2 - lo2)
        for p0 in range(seg[t], seg[t + 1], _BLOCK):
            m = min(_BLOCK, seg[t + 1] - p0)
            for i in range(_BLOCK):
                d = zoom * dist[p0 + i] if i < m else 0.0
                if d < pair_rmin or d > pair_rmax or d <= 0.0:
                    rr[i] = 0.0
                    for j in range(nm):
                        w[j, i] = 0.0
                    continue
                rr[i] = d
                v1, v2 = pair_coordinates(d, mode, delta2, qbroad)
                x1 = (v1 - lo1) / h1 - 1.0 if h1 > 0.0 else 0.0
                x2 = (v2 - lo2) / h2 - 1.0 if h2 > 0.0 else 0.0
                t1[0] = 1.0
                if n1 > 1:
                    t1[1] = x1
                for a in range(2, n1):
                    t1[a] = 2.0 * x1 * t1[a - 1] - t1[a - 2]
                t2[0] = 1.0
                if n2 > 1:
                    t2[1] = x2
                for b in range(2, n2):
                    t2[b] = 2.0 * x2 * t2[b - 1] - t2[b - 2]
                for a in range(n1):
                    for b in range(n2):
                        w[a * n2 + b, i] = t1[a] * t2[b]
            # sin(Q d)/d by its recurrence, started at Q = 0 when q0 is a whole number of
            # steps (one vectorised sine and cosine per pair)
            for i in range(_BLOCK):
                ok = rr[i] > 0.0
                d = rr[i] if ok else 1.0
                inv = 1.0 / d if ok else 0.0  # excluded pairs recur on zeros
                sn, cs = sincos(dq * d)
                c2[i] = 2.0 * cs
                if kstart >= 0:
                    s_cur[i] = 0.0
                    s_prev[i] = -sn * inv
                else:
                    s0, c0 = sincos(q0 * d)
                    s_cur[i] = s0 * inv
                    s_prev[i] = (s0 * cs - c0 * sn) * inv
            for _ in range(max(kstart, 0)):
                for i in range(_BLOCK):
                    sc = s_cur[i]
                    s_cur[i] = c2[i] * sc - s_prev[i]
                    s_prev[i] = sc
            # four Q steps at a time: their sines into a small table, then every
            # moment's four sums over the block (register-blocked, vectorised over pairs)
            for k0 in range(0, nq, 4):
                kn = min(4, nq - k0)
                for kk in range(4):
                    for i in range(_BLOCK):
                        sc = s_cur[i]
                        table[kk, i] = sc
                        s_cur[i] = c2[i] * sc - s_prev[i]
                        s_prev[i] = sc
                for j in range(nm):
                    a0 = 0.0
                    a1 = 0.0
                    a2 = 0.0
                    a3 = 0.0
                    for i in range(_BLOCK):
                        wi = w[j, i]
                        a0 += wi * table[0, i]
                        a1 += wi * table[1, i]
                        a2 += wi * table[2, i]
                        a3 += wi * table[3, i]
                    out[t, j, k0] += a0
                    if kn > 1:
                        out[t, j, k0 + 1] += a1
                    if kn > 2:
                        out[t, j, k0 + 2] += a2
                    if kn > 3:
                        out[t, j, k0 + 3] += a3


#: 1/d for the series and recurrences of :func:`_bessel_row`.
_INV = np.concatenate((np.zeros(1), 1.0 / np.arange(1, 4 * MAX_TERMS + 64)))


@numba.njit(cache=True)
def _bessel_row(a, n, scale, out):
    """out[d] = scale·I_d(a) for d = 0 … n + 1 (a >= 0): the series for the two highest
    orders, the downward recurrence for the rest; no exponential is evaluated."""
    top = n + 1
    out[: top + 1] = 0.0
    if a <= 0.0:
        out[0] = scale
        return
    half = 0.5 * a
    pre = scale
    last = top
    for d in range(1, top + 1):
        nxt = pre * half * _INV[d]
        if nxt < 1e-290:
            last = d - 1
            break
        pre = nxt
    if last < 1:
        out[0] = scale  # a so small that I_0 = 1 and the rest underflow
        return
    quarter = half * half
    s1 = 1.0
    s0 = 1.0
    t1 = 1.0
    t0 = 1.0
    for j in range(1, 200):
        t1 *= quarter * _INV[j] * _INV[last + j]
        t0 *= quarter * _INV[j] * _INV[last - 1 + j]
        s1 += t1
        s0 += t0
        if t0 < 1e-17 * s0:
            break
    nxt = pre * s1  # I_last
    cur = pre * (last / half) * s0  # I_{last-1}
    out[last] = nxt
    out[last - 1] = cur
    inv = 1.0 / a
    for d in range(last - 1, 0, -1):
        prev = nxt + 2.0 * d * inv * cur
        nxt = cur
        cur = prev
        out[d - 1] = cur


@numba.njit(cache=True)
def _coefficients(bes, n, c, h, sign, val, d1, d2):
    """Chebyshev coefficients of exp(sign·λ·x) on [c − h, c + h] and their first two
    derivatives in λ, from ``bes`` = e^{sign·λ·c}·I_d(λh) (d = 0 … n + 1)."""
    for d in range(n):
        eps = 1.0 if d == 0 else 2.0
        sg = eps if (sign > 0 or d % 2 == 0) else -eps
        i0 = bes[d]
        im1 = bes[abs(d - 1)]
        ip1 = bes[d + 1]
        im2 = bes[abs(d - 2)]
        ip2 = bes[d + 2] if d + 2 <= n + 1 else 0.0
        di = 0.5 * (im1 + ip1)  # I_d'
        ddi = 0.25 * (im2 + 2.0 * i0 + ip2)  # I_d''
        val[d] = sg * i0
        d1[d] = sg * (sign * c * i0 + h * di)
        d2[d] = sg * (c * c * i0 + 2.0 * sign * c * h * di + h * h * ddi)


@numba.njit(cache=True)
def assemble(mom, ranges, n1, n2, u_el, type_a, type_b, delta2, refine_delta2, ff, norm,
             q0, dq, order, fq, jac, hess):
    """F(Q) of a motif from its moments at the Uiso ``u_el`` (per element) and ``delta2``;
    with ``order`` >= 1 its derivatives ``jac[e]`` = dF/dU_e (and, when delta2 is refined,
    ``jac[n_el]`` = dF/dδ2); with ``order`` 2 the second derivatives ``hess[i, j]``.

    ``refine_delta2`` tells which coordinates the moments were taken in (mode 1: delta2
    is a parameter; mode 0: it is fixed inside the coordinate). ``ff`` = 2 f_a f_b per
    type, ``norm`` = 1/(N⟨f⟩²), both on the Q grid.
    """
    ntypes = type_a.size
    nq = fq.size
    nel = u_el.size
    npar = nel + (1 if refine_delta2 else 0)
    fq[:] = 0.0
    if order >= 1:
        jac[:npar, :] = 0.0
    if order >= 2:
        hess[:npar, :npar, :] = 0.0
    nb = max(n1, n2) + 3
    bes = np.empty(nb)
    av = np.empty(n1)
    a1 = np.empty(n1)
    a2 = np.empty(n1)
    bv = np.ones(n2)
    b1 = np.zeros(n2)
    b2 = np.zeros(n2)
    mult = np.zeros(nel)
    for t in range(ntypes):
        if ranges[t, 1] == 0.0 and ranges[t, 0] == 0.0:
            continue  # no pairs of this type
        ea, eb = type_a[t], type_b[t]
        mult[:] = 0.0
        mult[ea] += 1.0
        mult[eb] += 1.0
        u_t = u_el[ea] + u_el[eb]
        c1 = 0.5 * (ranges[t, 0] + ranges[t, 1])
        h1 = 0.5 * (ranges[t, 1] - ranges[t, 0])
        c2 = 0.5 * (ranges[t, 2] + ranges[t, 3])
        h2 = 0.5 * (ranges[t, 3] - ranges[t, 2])
        for k in range(nq):
            q = q0 + k * dq
            lam = 0.5 * u_t * q * q
            kap = lam * delta2
            if refine_delta2:
                # one exponential for both factors: e^{−λ c1 + κ c2}
                _bessel_row(lam * h1, n1, math.exp(-lam * c1 + kap * c2), bes)
                _coefficients(bes, n1, c1, h1, -1, av, a1, a2)
                _bessel_row(kap * h2, n2, 1.0, bes)
                _coefficients(bes, n2, c2, h2, 1, bv, b1, b2)
            else:
                _bessel_row(lam * h1, n1, math.exp(-lam * c1), bes)
                _coefficients(bes, n1, c1, h1, -1, av, a1, a2)
            f = 0.0
            f_l = 0.0
            f_k = 0.0
            f_ll = 0.0
            f_lk = 0.0
            f_kk = 0.0
            for i in range(n1):
                for j in range(n2):
                    mm = mom[t, i * n2 + j, k]
                    f += av[i] * bv[j] * mm
                    if order >= 1:
                        f_l += a1[i] * bv[j] * mm
                        f_k += av[i] * b1[j] * mm
                    if order >= 2:
                        f_ll += a2[i] * bv[j] * mm
                        f_lk += a1[i] * b1[j] * mm
                        f_kk += av[i] * b2[j] * mm
            w = ff[t, k] * norm[k]
            fq[k] += w * f
            if order == 0:
                continue
            mu = 0.5 * q * q  # dλ/dU_e per occurrence of e in the pair
            dl = f_l + delta2 * f_k  # dF_t/dλ at fixed delta2
            for e in range(nel):
                if mult[e] > 0.0:
                    jac[e, k] += w * mult[e] * mu * dl
            if refine_delta2:
                jac[nel, k] += w * lam * f_k
            if order < 2:
                continue
            dll = f_ll + 2.0 * delta2 * f_lk + delta2 * delta2 * f_kk
            dld = f_k + lam * (f_lk + delta2 * f_kk)
            for e in range(nel):
                if mult[e] == 0.0:
                    continue
                for e2 in range(nel):
                    if mult[e2] > 0.0:
                        hess[e, e2, k] += w * mult[e] * mult[e2] * mu * mu * dll
                if refine_delta2:
                    v = w * mult[e] * mu * dld
                    hess[e, nel, k] += v
                    hess[nel, e, k] += v
            if refine_delta2:
                hess[nel, nel, k] += w * lam * lam * f_kk
