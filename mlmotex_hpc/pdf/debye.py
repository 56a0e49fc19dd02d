"""Debye-equation kernel: the reduced structure function F(Q) of a set of atom pairs.

F(Q) = 1/(N ⟨f(Q)⟩²) · Σ_{i≠j} f_i(Q) f_j(Q) exp(−σ_ij² Q²/2) sin(Q r_ij) / r_ij, with
σ_ij² = (U_i + U_j)(1 − δ2/r_ij² + (qbroad·r_ij)²) (DiffPy's Jeong peak width) and the
sum over unordered pairs counted twice. Pairs are grouped by element-pair type, so the
form-factor product f_a f_b is a per-type table and the inner loop only runs two
recurrences per pair on a uniform grid Q_k = q0 + k·Δq:

* sine: sin(Q_{k+1} r) = 2 cos(Δq r) sin(Q_k r) − sin(Q_{k−1} r);
* Gaussian: g_{k+1} = g_k h_k, h_{k+1} = h_k exp(−σ² Δq²), with g_k = exp(−σ² Q_k²/2).

The loop over Q is outside the loop over pairs so that the compiler vectorises across
pairs (in blocks that keep the recurrence state in the L1 cache), and the per-pair
setup uses a vectorisable sine/cosine (:mod:`._vecmath`). On DiffPy's grid the first Q is
a whole number of steps, so the recurrences start at Q = 0 and each pair needs one
sine/cosine (and one exp with delta2 or qbroad). Pure arrays in, arrays out: no Python
objects, files or MPI.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ._vecmath import sincos, vexp

#: Pairs per block of the kernel: 6 state arrays of this length fit the L1 cache.
_BLOCK = 256


@numba.njit(cache=True, fastmath=True)
def debye_fq(
    dist: np.ndarray,
    seg: np.ndarray,
    ff: np.ndarray,
    u_type: np.ndarray,
    norm: np.ndarray,
    q0: float,
    dq: float,
    kstart: int,
    zoom: float,
    delta2: float,
    qbroad: float,
    pair_rmin: float,
    pair_rmax: float,
) -> np.ndarray:
    """F(Q) of a motif from its pair distances.

    Parameters
    ----------
    dist : ndarray, shape (npairs,)
        Pair distances of the unzoomed structure (Å), grouped by pair type.
    seg : ndarray of int64, shape (ntypes + 1,)
        Pairs of type t are ``dist[seg[t]:seg[t + 1]]``.
    ff : ndarray, shape (ntypes, nq)
        2 f_a(Q_k) f_b(Q_k) of each pair type (the 2 counts i<j pairs twice).
    u_type : ndarray, shape (ntypes,)
        U_a + U_b of each pair type (Å²).
    norm : ndarray, shape (nq,)
        1 / (N ⟨f(Q_k)⟩²) of the motif.
    q0, dq : float
        Q_k = q0 + k·dq (Å⁻¹).
    kstart : int
        q0 / dq when that is a whole number (the recurrences then start at Q = 0 and
        need one sine and cosine per pair), else −1.
    zoom : float
        Isotropic expansion: every distance is multiplied by it.
    delta2 : float
        Sharpening (Å²).
    qbroad : float
        Q broadening (Å⁻¹).
    pair_rmin, pair_rmax : float
        Only pairs with pair_rmin <= zoom·r <= pair_rmax contribute (Å).

    Returns
    -------
    ndarray, shape (nq,)
        F(Q_k) (Å⁻¹).
    """
    ntypes, nq = ff.shape
    fq = np.zeros(nq)
    if nq == 0:
        return fq
    # pairs are processed in blocks whose recurrence state stays in the L1 cache
    s_prev = np.empty(_BLOCK)
    s_cur = np.empty(_BLOCK)
    c2 = np.empty(_BLOCK)
    g = np.ones(_BLOCK)
    h = np.ones(_BLOCK)
    cc = np.ones(_BLOCK)
    part = np.empty(nq)
    rr = np.empty(_BLOCK)
    inv = np.empty(_BLOCK)
    beta = np.empty(_BLOCK)
    # exp(-U_t Q^2/2) is a per-type factor; only delta2 and qbroad make the Gaussian
    # depend on r, through exp(-beta_p Q^2) with beta_p = (sigma_p^2 - U_t)/2.
    uniform = delta2 == 0.0 and qbroad == 0.0
    for t in range(ntypes):
        if seg[t + 1] == seg[t]:
            continue
        u = u_type[t]
        part[:] = 0.0
        for p0 in range(seg[t], seg[t + 1], _BLOCK):
            m = min(_BLOCK, seg[t + 1] - p0)
            # per-pair set-up in branch-free loops that the compiler vectorises
            for i in range(m):
                d = zoom * dist[p0 + i]
                ok = (d >= pair_rmin) & (d <= pair_rmax) & (d > 0.0)
                dd = d if ok else 1.0
                rr[i] = dd
                inv[i] = 1.0 / dd if ok else 0.0  # excluded pairs recur on zeros
            if kstart >= 0:
                for i in range(m):
                    sn, cs = sincos(dq * rr[i])
                    c2[i] = 2.0 * cs
                    # sin(Q r)/r is itself a solution of the linear recurrence
                    s_cur[i] = 0.0
                    s_prev[i] = -sn * inv[i]
            else:
                for i in range(m):
                    sn, cs = sincos(dq * rr[i])
                    s0, c0 = sincos(q0 * rr[i])
                    c2[i] = 2.0 * cs
                    s_cur[i] = s0 * inv[i]
                    s_prev[i] = (s0 * cs - c0 * sn) * inv[i]
            if not uniform:
                # exp(-beta Q^2) with beta = (sigma^2 - U_t)/2, by its own recurrence
                for i in range(m):
                    dd = rr[i]
                    s2 = u * (1.0 - delta2 / (dd * dd) + (qbroad * dd) ** 2)
                    beta[i] = 0.5 * (max(s2, 0.0) - u)  # DiffPy: no damping once s2 <= 0
                    e1 = vexp(-beta[i] * dq * dq)
                    cc[i] = e1 * e1
                    h[i] = e1
                    g[i] = 1.0
                if kstart < 0:
                    for i in range(m):
                        g[i] = vexp(-beta[i] * q0 * q0)
                        h[i] = vexp(-beta[i] * (2.0 * q0 * dq + dq * dq))
            for _ in range(max(kstart, 0)):  # advance from Q = 0 to q0
                for i in range(m):
                    sc = s_cur[i]
                    s_cur[i] = c2[i] * sc - s_prev[i]
                    s_prev[i] = sc
                    g[i] *= h[i]
                    h[i] *= cc[i]
            # four Q steps per pass over the block: the recurrence state is loaded and
            # stored once per four steps instead of once per step
            nq4 = nq - nq % 4
            for k in range(0, nq4, 4):
                a0 = 0.0
                a1 = 0.0
                a2 = 0.0
                a3 = 0.0
                if uniform:
                    for i in range(m):
                        c = c2[i]
                        s0 = s_cur[i]
                        s1 = c * s0 - s_prev[i]
                        s2 = c * s1 - s0
                        s3 = c * s2 - s1
                        s_prev[i] = s3
                        s_cur[i] = c * s3 - s2
                        a0 += s0
                        a1 += s1
                        a2 += s2
                        a3 += s3
                else:
                    for i in range(m):
                        c = c2[i]
                        s0 = s_cur[i]
                        s1 = c * s0 - s_prev[i]
                        s2 = c * s1 - s0
                        s3 = c * s2 - s1
                        s_prev[i] = s3
                        s_cur[i] = c * s3 - s2
                        r = cc[i]
                        g0 = g[i]
                        h0 = h[i]
                        g1 = g0 * h0
                        h1 = h0 * r
                        g2 = g1 * h1
                        h2 = h1 * r
                        g3 = g2 * h2
                        h3 = h2 * r
                        g[i] = g3 * h3
                        h[i] = h3 * r
                        a0 += g0 * s0
                        a1 += g1 * s1
                        a2 += g2 * s2
                        a3 += g3 * s3
                part[k] += a0
                part[k + 1] += a1
                part[k + 2] += a2
                part[k + 3] += a3
            for k in range(nq4, nq):
                acc = 0.0
                for i in range(m):
                    sc = s_cur[i]
                    acc += g[i] * sc
                    s_cur[i] = c2[i] * sc - s_prev[i]
                    s_prev[i] = sc
                    g[i] *= h[i]
                    h[i] *= cc[i]
                part[k] += acc
        for k in range(nq):
            q = q0 + k * dq
            fq[k] += ff[t, k] * math.exp(-0.5 * u * q * q) * part[k]
    for k in range(nq):
        fq[k] *= norm[k]
    return fq

