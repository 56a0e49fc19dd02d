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
from typing import NamedTuple

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


class Expansion(NamedTuple):
    """How a motif's pairs are expanded into moments: fixed for one fitter."""

    q0: float  # first Q point (Å⁻¹)
    dq: float  # Q step
    kstart: int  # q0 / dq when q0 is a whole number of steps, else −1
    nq: int  # Q points
    pair_rmin: float  # pairs outside [pair_rmin, pair_rmax] (Å, zoomed) are left out
    pair_rmax: float
    mode: int  # 0: delta2 fixed inside the coordinate; 1: delta2 refined
    delta2: float  # the fixed delta2 (Å², mode 0)
    qbroad: float
    lam_max: float  # the largest λ = U_t Q²/2 the search can reach
    delta2_max: float  # upper bound on delta2 (mode 1; 0 in mode 0)


class Groups(NamedTuple):
    """The pair groups moments are taken over (a pair type, or a type's distance shell):
    the elements of each and 2 f_a(Q) f_b(Q)."""

    type_a: np.ndarray
    type_b: np.ndarray
    ff: np.ndarray  # (groups, nq)


class Moments(NamedTuple):
    """A motif's moments at one zoom: ``mom[g, i·n2[g] + j, k]``, each group's coordinate
    ``ranges`` (lo1, hi1, lo2, hi2) and its terms ``n1``, ``n2``."""

    mom: np.ndarray
    ranges: np.ndarray
    n1: np.ndarray
    n2: np.ndarray


@numba.njit(cache=True)
def _miller_start(n, a):
    """Where the downward ratio recurrence starts so that r_1 … r_n are exact to double
    precision: the error left at order n shrinks by (a/2j)² for every order j added above
    max(n, a)."""
    j = max(n, int(a) + 1)
    prod = 1.0
    while prod > 1e-34:
        j += 1
        prod *= (0.5 * a / j) ** 2
    return j + 2


@numba.njit(cache=True)
def scaled_bessel(a, nmax, out):
    """out[d] = I_d(a)·exp(−a) for d = 0 … nmax (a >= 0), by Miller's algorithm in ratio
    form (as :func:`_coefficient_rows`, for one argument)."""
    start = _miller_start(nmax, a)
    r = 0.0
    horner = 0.0
    for d in range(start, 0, -1):
        r = a / (2.0 * d + a * r)
        horner = r * (1.0 + horner)
        if d <= nmax:
            out[d] = r
    out[0] = 1.0 / (1.0 + 2.0 * horner)
    for d in range(1, nmax + 1):
        out[d] *= out[d - 1]


def terms_needed(a_max: float, tolerance: float = TOLERANCE) -> int:
    """Chebyshev terms that keep exp(a·t), |t| <= 1, within ``tolerance`` of its maximum
    for every a in [0, a_max] (the tail 2 Σ_{d>D} I_d(a)e^{−a} grows with a)."""
    return int(_terms(float(a_max), tolerance))


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
def group_pairs(dist, seg, edges):
    """The pairs regrouped by (type, distance shell): group t·S + s holds the pairs of
    type t with edges[s] <= r < edges[s + 1] (S = edges.size − 1; the last shell is
    closed). Returns the regrouped distances and the group offsets."""
    ntypes = seg.size - 1
    n_sh = edges.size - 1
    count = np.zeros(ntypes * n_sh, dtype=np.int64)
    shell = np.empty(dist.size, dtype=np.int64)
    for t in range(ntypes):
        for p in range(seg[t], seg[t + 1]):
            s = 0
            while s < n_sh - 1 and dist[p] >= edges[s + 1]:
                s += 1
            shell[p] = t * n_sh + s
            count[t * n_sh + s] += 1
    gseg = np.zeros(ntypes * n_sh + 1, dtype=np.int64)
    for g in range(ntypes * n_sh):
        gseg[g + 1] = gseg[g] + count[g]
    fill = gseg[:-1].copy()
    gdist = np.empty(dist.size)
    for p in range(dist.size):
        g = shell[p]
        gdist[fill[g]] = dist[p]
        fill[g] += 1
    return gdist, gseg


@numba.njit(cache=True)
def _terms(a, tolerance):
    """Chebyshev terms that keep exp(a·t), |t| <= 1, within ``tolerance`` of its maximum
    (numba version of :func:`terms_needed`)."""
    if a <= 0.0:
        return 1
    out = np.empty(MAX_TERMS + 2)
    scaled_bessel(a, MAX_TERMS + 1, out)
    tail = 0.0
    for d in range(MAX_TERMS + 1, 0, -1):
        tail += 2.0 * out[d]
        if tail >= tolerance:
            return min(d + 1, MAX_TERMS + 1)
    return 1


@numba.njit(cache=True)
def group_terms(ranges, ex, n1, n2):
    """Terms per group for the largest λ (and, mode 1, λ·δ2) the search can reach."""
    mode, lam_max, delta2_max = ex.mode, ex.lam_max, ex.delta2_max
    for g in range(ranges.shape[0]):
        n1[g] = _terms(lam_max * 0.5 * (ranges[g, 1] - ranges[g, 0]), TOLERANCE)
        if mode == 1:
            n2[g] = _terms(lam_max * delta2_max * 0.5 * (ranges[g, 3] - ranges[g, 2]),
                           TOLERANCE)
        else:
            n2[g] = 1


@numba.njit(cache=True)
def coordinate_ranges(dist, seg, zoom, ex, ranges):
    """ranges[t] = (lo1, hi1, lo2, hi2) of the pair coordinates of each type (pairs inside
    the window only); (0, 0, 0, 0) for a type without pairs."""
    pair_rmin, pair_rmax, mode, delta2, qbroad = (ex.pair_rmin, ex.pair_rmax, ex.mode,
                                                  ex.delta2, ex.qbroad)
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
def _tile_product(w, table, nm, acc):
    """acc[:nm] (moments × Q) += w[:nm] (moments × pairs) · tableᵀ (pairs × Q), nm and
    the Q count multiples of 4, in 4 × 4 tiles of register accumulators (vectorised over
    pairs)."""
    nb = w.shape[1]
    nq = table.shape[0]
    for k in range(0, nq, 4):
        for j in range(0, nm, 4):
            a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = 0.0
            a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = 0.0
            for i in range(nb):
                w0 = w[j, i]
                w1 = w[j + 1, i]
                w2 = w[j + 2, i]
                w3 = w[j + 3, i]
                s0 = table[k, i]
                s1 = table[k + 1, i]
                s2 = table[k + 2, i]
                s3 = table[k + 3, i]
                a00 += w0 * s0
                a01 += w0 * s1
                a02 += w0 * s2
                a03 += w0 * s3
                a10 += w1 * s0
                a11 += w1 * s1
                a12 += w1 * s2
                a13 += w1 * s3
                a20 += w2 * s0
                a21 += w2 * s1
                a22 += w2 * s2
                a23 += w2 * s3
                a30 += w3 * s0
                a31 += w3 * s1
                a32 += w3 * s2
                a33 += w3 * s3
            acc[j, k] += a00
            acc[j, k + 1] += a01
            acc[j, k + 2] += a02
            acc[j, k + 3] += a03
            acc[j + 1, k] += a10
            acc[j + 1, k + 1] += a11
            acc[j + 1, k + 2] += a12
            acc[j + 1, k + 3] += a13
            acc[j + 2, k] += a20
            acc[j + 2, k + 1] += a21
            acc[j + 2, k + 2] += a22
            acc[j + 2, k + 3] += a23
            acc[j + 3, k] += a30
            acc[j + 3, k + 1] += a31
            acc[j + 3, k + 2] += a32
            acc[j + 3, k + 3] += a33


@numba.njit(cache=True, fastmath=True)
def pair_moments(dist, seg, zoom, ex, ranges, n1, n2, out):
    """out[g, i·n2[g] + j, k] = Σ_p T_i(ĉ1_p) T_j(ĉ2_p) sin(Q_k d_p)/d_p over the pairs of
    group g (``dist[seg[g]:seg[g + 1]]``) inside the window, d_p = zoom·dist[p],
    Q_k = q0 + k·dq, ĉ the coordinates mapped onto [−1, 1] by ``ranges`` (from
    :func:`coordinate_ranges`), i < n1[g], j < n2[g].

    Per block of pairs: the polynomial values into a (moment, pair) table, the sines by
    their recurrence into a (Q, pair) table, and the product of the two in register
    tiles (:func:`_tile_product`); rows are padded to multiples of 4 with zeros.
    """
    q0, dq, kstart, nq = ex.q0, ex.dq, ex.kstart, ex.nq
    pair_rmin, pair_rmax, mode, delta2, qbroad = (ex.pair_rmin, ex.pair_rmax, ex.mode,
                                                  ex.delta2, ex.qbroad)
    ntypes = seg.size - 1
    nm_max = 0
    n1_max = 1
    n2_max = 1
    for t in range(ntypes):
        nm_max = max(nm_max, n1[t] * n2[t])
        n1_max = max(n1_max, n1[t])
        n2_max = max(n2_max, n2[t])
    nm_max4 = (nm_max + 3) // 4 * 4
    nq4 = (nq + 3) // 4 * 4
    s_prev = np.empty(_BLOCK)
    s_cur = np.empty(_BLOCK)
    c2 = np.empty(_BLOCK)
    rr = np.empty(_BLOCK)
    table = np.empty((nq4, _BLOCK))
    w = np.zeros((nm_max4, _BLOCK))
    acc = np.empty((nm_max4, nq4))
    t1 = np.empty(n1_max)
    t2 = np.empty(n2_max)
    for t in range(ntypes):
        nt1 = n1[t]
        nt2 = n2[t]
        nm = nt1 * nt2
        nm4 = (nm + 3) // 4 * 4
        w[nm:nm4, :] = 0.0
        lo1, hi1, lo2, hi2 = ranges[t, 0], ranges[t, 1], ranges[t, 2], ranges[t, 3]
        h1 = 0.5 * (hi1 - lo1)
        h2 = 0.5 * (hi2 - lo2)
        acc[:, :] = 0.0
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
                if nt1 > 1:
                    t1[1] = x1
                for a in range(2, nt1):
                    t1[a] = 2.0 * x1 * t1[a - 1] - t1[a - 2]
                t2[0] = 1.0
                if nt2 > 1:
                    t2[1] = x2
                for b in range(2, nt2):
                    t2[b] = 2.0 * x2 * t2[b - 1] - t2[b - 2]
                for a in range(nt1):
                    for b in range(nt2):
                        w[a * nt2 + b, i] = t1[a] * t2[b]
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
            for k in range(nq4):
                for i in range(_BLOCK):
                    sc = s_cur[i]
                    table[k, i] = sc
                    s_cur[i] = c2[i] * sc - s_prev[i]
                    s_prev[i] = sc
            _tile_product(w, table, nm4, acc)
        for j in range(nm):
            for k in range(nq):
                out[t, j, k] = acc[j, k]


@numba.njit(cache=True)
def take_moments(dist, seg, zoom, ex, into):
    """A motif's moments at ``zoom`` into the :class:`Moments` ``into``: the coordinate
    ranges of its groups, the terms they need, then one pass over the pairs."""
    coordinate_ranges(dist, seg, zoom, ex, into.ranges)
    group_terms(into.ranges, ex, into.n1, into.n2)
    pair_moments(dist, seg, zoom, ex, into.ranges, into.n1, into.n2, into.mom)


#: Series coefficients 1/(j! (d + j)!) of I_d(a) = (a/2)^d Σ_j (a²/4)^j / (j! (d + j)!).
_SERIES_J = 80
_SERIES = np.array([[math.exp(-math.lgamma(j + 1) - math.lgamma(d + j + 1))
                     for j in range(_SERIES_J)] for d in range(MAX_TERMS + 3)])


@numba.njit(cache=True, fastmath=True)
def _coefficient_rows(lam, h, c, n, sign, scale, order, val, d1, d2, bes):
    """Rows val[d, k] (and d1, d2: first and second λ-derivatives when ``order``) of the
    Chebyshev coefficients of exp(sign·λ_k·x) on [c − h, c + h], d < n, for every Q
    point k, each multiplied by scale[k] / e^{sign·λ_k·c}: the caller passes
    scale[k] = e^{sign·λ_k·c} times any common factor.

    Vectorised over k: I_d(λ_k h) by its power series (positive terms, no cancellation;
    Horner's rule in (a/2)², as many terms as the largest a needs), then scaled. No
    exponential is evaluated here. ``bes``: scratch (n + 2, nq).
    """
    nq = lam.size
    a_max = 0.0
    for k in range(nq):
        a_max = max(a_max, lam[k] * h)
    # terms: (a²/4)^J / (J!)² below 1e-17 of the sum's first term
    q_max = 0.25 * a_max * a_max
    nj = 1
    t = 1.0
    while nj < _SERIES_J - 1 and t > 1e-17:
        t *= q_max / (nj * nj)
        nj += 1
    for d in range(n + 2):
        for k in range(nq):
            a = lam[k] * h
            qq = 0.25 * a * a
            acc = _SERIES[d, nj - 1]
            for j in range(nj - 2, -1, -1):
                acc = acc * qq + _SERIES[d, j]
            bes[d, k] = acc
    for k in range(nq):
        pw = scale[k]
        half = 0.5 * lam[k] * h
        for d in range(n + 2):
            bes[d, k] *= pw
            pw *= half
    for d in range(n):
        eps = 1.0 if d == 0 else 2.0
        sg = eps if (sign > 0 or d % 2 == 0) else -eps
        if order == 0:
            for k in range(nq):
                val[d, k] = sg * bes[d, k]
            continue
        dm = abs(d - 1)
        dm2 = abs(d - 2)
        for k in range(nq):
            i0 = bes[d, k]
            di = 0.5 * (bes[dm, k] + bes[d + 1, k])  # I_d'
            ip2 = bes[d + 2, k] if d + 2 <= n + 1 else 0.0
            ddi = 0.25 * (bes[dm2, k] + 2.0 * i0 + ip2)  # I_d''
            val[d, k] = sg * i0
            d1[d, k] = sg * (sign * c * i0 + h * di)
            d2[d, k] = sg * (c * c * i0 + 2.0 * sign * c * h * di + h * h * ddi)


@numba.njit(cache=True, fastmath=True)
def _contract(mom, t, n1, n2, a, b, order, out, scratch):
    """The sums over the moments of group t for every Q point (vectorised over Q): first
    over the second coordinate's terms (p0, p1, p2: with b, b', b''), then the first's.

    ``a``, ``b``: the coefficient rows (value, first, second derivative) of the two
    coordinates; ``out`` = (f, f_λ, f_κ, f_λλ, f_λκ, f_κκ); ``scratch`` = (p0, p1, p2).
    """
    av, a1, a2 = a
    bv, b1, b2 = b
    f, f_l, f_k, f_ll, f_lk, f_kk = out
    p0, p1, p2 = scratch
    nq = f.size
    f[:] = 0.0
    if order >= 1:
        f_l[:] = 0.0
        f_k[:] = 0.0
    if order >= 2:
        f_ll[:] = 0.0
        f_lk[:] = 0.0
        f_kk[:] = 0.0
    for i in range(n1):
        p0[:] = 0.0
        if order >= 1:
            p1[:] = 0.0
        if order >= 2:
            p2[:] = 0.0
        for j in range(n2):
            row = mom[t, i * n2 + j]
            for k in range(nq):
                m = row[k]
                p0[k] += bv[j, k] * m
                if order >= 1:
                    p1[k] += b1[j, k] * m
                if order >= 2:
                    p2[k] += b2[j, k] * m
        for k in range(nq):
            f[k] += av[i, k] * p0[k]
            if order >= 1:
                f_l[k] += a1[i, k] * p0[k]
                f_k[k] += av[i, k] * p1[k]
            if order >= 2:
                f_ll[k] += a2[i, k] * p0[k]
                f_lk[k] += a1[i, k] * p1[k]
                f_kk[k] += av[i, k] * p2[k]


@numba.njit(cache=True)
def assemble(moments, groups, ex, u_el, delta2, norm, order, fq, jac, hess):
    """F(Q) of a motif from its :class:`Moments` (per pair group g of ``groups``: elements
    ``type_a[g]``, ``type_b[g]``, ``n1[g]`` × ``n2[g]`` terms) at the Uiso ``u_el`` (per
    element) and ``delta2``; with ``order`` >= 1 its derivatives ``jac[e]`` = dF/dU_e
    (and, when delta2 is refined, ``jac[n_el]`` = dF/dδ2); with ``order`` 2 the second
    derivatives ``hess[i, j]``.

    The expansion's mode tells which coordinates the moments were taken in (1: delta2 is
    a parameter; 0: it is fixed inside the coordinate). ``norm`` = 1/(N⟨f⟩²) on the Q
    grid.
    """
    mom, ranges, n1, n2 = moments
    type_a, type_b, ff = groups
    refine_delta2 = ex.mode == 1
    q0, dq = ex.q0, ex.dq
    ntypes = type_a.size
    nq = fq.size
    nel = u_el.size
    fq[:] = 0.0
    npar = nel + (1 if refine_delta2 else 0)
    if order >= 1:
        jac[:npar, :] = 0.0
    if order >= 2:
        hess[:npar, :npar, :] = 0.0
    n1_max = 1
    n2_max = 1
    for t in range(ntypes):
        n1_max = max(n1_max, n1[t])
        n2_max = max(n2_max, n2[t])
    bes = np.empty((max(n1_max, n2_max) + 2, nq))
    av = np.empty((n1_max, nq))
    a1 = np.empty((n1_max, nq))
    a2 = np.empty((n1_max, nq))
    bv = np.ones((n2_max, nq))
    b1 = np.zeros((n2_max, nq))
    b2 = np.zeros((n2_max, nq))
    q2h = np.empty(nq)
    lam = np.empty(nq)
    kap = np.empty(nq)
    scale = np.empty(nq)
    ones = np.ones(nq)
    f = np.empty(nq)
    f_l = np.empty(nq)
    f_k = np.empty(nq)
    f_ll = np.empty(nq)
    f_lk = np.empty(nq)
    f_kk = np.empty(nq)
    p0 = np.empty(nq)
    p1 = np.empty(nq)
    p2 = np.empty(nq)
    for k in range(nq):
        q = q0 + k * dq
        q2h[k] = 0.5 * q * q  # dλ/dU per occurrence of the element in the pair
    for t in range(ntypes):
        if ranges[t, 1] == 0.0 and ranges[t, 0] == 0.0:
            continue  # no pairs in this group
        ea, eb = type_a[t], type_b[t]
        nt1 = n1[t]
        nt2 = n2[t]
        u_t = u_el[ea] + u_el[eb]
        c1 = 0.5 * (ranges[t, 0] + ranges[t, 1])
        h1 = 0.5 * (ranges[t, 1] - ranges[t, 0])
        c2 = 0.5 * (ranges[t, 2] + ranges[t, 3])
        h2 = 0.5 * (ranges[t, 3] - ranges[t, 2])
        # both factors' e^{−λ c1 + κ c2} = e^{β Q²}, by its recurrence over the Q grid
        beta = 0.5 * u_t * (-c1 + (delta2 * c2 if refine_delta2 else 0.0))
        e = math.exp(beta * q0 * q0)
        ratio = math.exp(beta * (2.0 * q0 * dq + dq * dq))
        growth = math.exp(2.0 * beta * dq * dq)
        for k in range(nq):
            lam[k] = u_t * q2h[k]
            kap[k] = lam[k] * delta2
            scale[k] = e
            e *= ratio
            ratio *= growth
        _coefficient_rows(lam, h1, c1, nt1, -1, scale, order, av, a1, a2, bes)
        if refine_delta2:
            _coefficient_rows(kap, h2, c2, nt2, 1, ones, order, bv, b1, b2, bes)
        _contract(mom, t, nt1, nt2, (av, a1, a2), (bv, b1, b2), order,
                  (f, f_l, f_k, f_ll, f_lk, f_kk), (p0, p1, p2))
        for k in range(nq):
            w = ff[t, k] * norm[k]
            fq[k] += w * f[k]
            if order == 0:
                continue
            mu = q2h[k]
            dl = f_l[k] + delta2 * f_k[k]  # dF_t/dλ at fixed delta2
            jac[ea, k] += w * mu * dl
            jac[eb, k] += w * mu * dl
            if refine_delta2:
                jac[nel, k] += w * lam[k] * f_k[k]
            if order < 2:
                continue
            dll = w * mu * mu * (f_ll[k] + 2.0 * delta2 * f_lk[k] + delta2 * delta2 * f_kk[k])
            hess[ea, ea, k] += dll
            hess[ea, eb, k] += dll
            hess[eb, ea, k] += dll
            hess[eb, eb, k] += dll
            if refine_delta2:
                dld = w * mu * (f_k[k] + lam[k] * (f_lk[k] + delta2 * f_kk[k]))
                hess[ea, nel, k] += dld
                hess[eb, nel, k] += dld
                hess[nel, ea, k] += dld
                hess[nel, eb, k] += dld
                hess[nel, nel, k] += w * lam[k] * lam[k] * f_kk[k]
