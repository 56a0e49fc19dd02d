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

from ._vecmath import sincos

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
            for i in range(m):
                d = zoom * dist[p0 + i]
                ok = d >= pair_rmin and d <= pair_rmax and d > 0.0
                dd = d if ok else 1.0
                w = 1.0 / dd if ok else 0.0  # excluded pairs run the recurrence on zeros
                sn, cs = sincos(dq * dd)
                c2[i] = 2.0 * cs
                # sin(Q r)/r is itself a solution of the linear recurrence
                if kstart >= 0:
                    s_cur[i] = 0.0
                    s_prev[i] = -sn * w
                else:
                    s0, c0 = sincos(q0 * dd)
                    s_cur[i] = s0 * w
                    s_prev[i] = (s0 * cs - c0 * sn) * w
                if not uniform:
                    s2 = u * (1.0 - delta2 / (dd * dd) + (qbroad * dd) ** 2)
                    beta = 0.5 * (max(s2, 0.0) - u)  # DiffPy: no damping once s2 <= 0
                    e1 = math.exp(-beta * dq * dq)
                    cc[i] = e1 * e1
                    if kstart >= 0:
                        g[i] = 1.0
                        h[i] = e1
                    else:
                        g[i] = math.exp(-beta * q0 * q0)
                        h[i] = math.exp(-beta * (2.0 * q0 * dq + dq * dq))
            for _ in range(max(kstart, 0)):  # advance from Q = 0 to q0
                for i in range(m):
                    sc = s_cur[i]
                    s_cur[i] = c2[i] * sc - s_prev[i]
                    s_prev[i] = sc
                    g[i] *= h[i]
                    h[i] *= cc[i]
            for k in range(nq):
                acc = 0.0
                if uniform:
                    for i in range(m):
                        sc = s_cur[i]
                        acc += sc
                        s_cur[i] = c2[i] * sc - s_prev[i]
                        s_prev[i] = sc
                else:
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

