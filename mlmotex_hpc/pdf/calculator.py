"""PDF calculators over the motifs (atom subsets) of one parent structure.

:func:`make_calculator` does all structure- and grid-dependent work once: every pair
distance i < j of the parent, each pair's element-pair type, the scattering-factor
tables on the Q grid, and the sine-transform matrices onto the output r grid (with the
qdamp envelope folded in). :meth:`PDFCalculator.prepare` then selects the pairs whose
two atoms a motif keeps and its normalisation 1/(N⟨f⟩²); :meth:`PDFCalculator.gr` runs
only the compiled pair kernel and one or two matrix-vector products, so a fit can call
it for many zoom values without repeating any Python-level setup.

Zoom is an isotropic expansion of the structure: every r_ij becomes zoom·r_ij.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numba
import numpy as np

from ..errors import InputError
from .debye import debye_fq
from .grids import (
    PEAK_HALF_BOUND,
    DebyeGrid,
    RealSpaceGrid,
    RRange,
    check_r,
    check_table,
    debye_grid,
    r_range,
    realspace_grid,
)
from .realspace import gaussian_peaks
from .scattering import scattering_weights
from .settings import PDFSettings


@dataclass(frozen=True, eq=False)
class Motif:
    """The data-independent part of one motif's PDF, from :meth:`PDFCalculator.prepare`.

    Attributes
    ----------
    mask : ndarray of bool, shape (n,)
        Kept atoms of the parent structure.
    n_atoms : int
        Number of kept atoms N.
    counts : ndarray of int, shape (n_elements,)
        Kept atoms per element of ``calc.elements``.
    dist : ndarray, shape (npairs,)
        Distances (Å) of the kept pairs i < j, grouped by element-pair type.
    seg : ndarray of int64, shape (ntypes + 1,)
        Pairs of type t are ``dist[seg[t]:seg[t + 1]]``.
    norm : ndarray
        1/(N⟨f(Q)⟩²) on the calculator's Q grid (Debye) or 1/(N⟨f(0)⟩²) (real space).
    """

    mask: np.ndarray
    n_atoms: int
    counts: np.ndarray
    dist: np.ndarray
    seg: np.ndarray
    norm: np.ndarray

    @property
    def n_pairs(self) -> int:
        """Number of kept pairs i < j."""
        return int(self.dist.size)


@numba.njit(cache=True)
def _select_pairs(pi, pj, dist, seg, mask):
    """Distances of the pairs whose two atoms are kept, and their type offsets."""
    ntypes = seg.size - 1
    out = np.empty(dist.size)
    oseg = np.zeros(ntypes + 1, dtype=np.int64)
    n = 0
    for t in range(ntypes):
        for p in range(seg[t], seg[t + 1]):
            if mask[pi[p]] and mask[pj[p]]:
                out[n] = dist[p]
                n += 1
        oseg[t + 1] = n
    return out[:n].copy(), oseg


class PDFCalculator:
    """Common part of the two calculators; use :func:`make_calculator` to build one.

    Attributes
    ----------
    r : ndarray
        The output r grid (Å).
    settings : PDFSettings
        The parameters it was built with.
    elements : tuple of str
        Distinct elements of the parent, in order of first appearance.
    n_atoms : int
        Atoms in the parent structure.

    Notes
    -----
    The Q grid, DiffPy's r extension and the pair-distance window are fixed when the
    calculator is built, from the r grid and the settings' Uiso (the largest over the
    parent's elements). DiffPy would re-derive them from the Uiso of each structure it
    evaluates; the two agree whenever a motif holds the element with the largest Uiso
    and Uiso is not overridden. Keeping them fixed makes G a smooth function of Uiso
    while it is refined (DiffPy's Q step jumps with the rounded extension).
    """

    def __init__(
        self, elements: Sequence[str], xyz: np.ndarray, settings: PDFSettings, r: np.ndarray
    ) -> None:
        xyz = np.asarray(xyz, dtype=float)
        if xyz.ndim != 2 or xyz.shape[1] != 3:
            raise InputError(f"coordinates must have shape (n, 3), got {xyz.shape}")
        if len(elements) != xyz.shape[0]:
            raise InputError(
                f"{len(elements)} element symbols for {xyz.shape[0]} atoms: they must match"
            )
        if xyz.shape[0] == 0 or not np.all(np.isfinite(xyz)):
            raise InputError("the structure needs at least one atom with finite coordinates")
        self.settings = settings
        self.r = check_r(r)
        self.n_atoms = int(xyz.shape[0])
        species: dict[str, int] = {}
        for el in elements:
            species.setdefault(str(el), len(species))
        self.elements = tuple(species)
        self._index = species
        self._atom_type = np.array([species[str(el)] for el in elements], dtype=np.int64)
        nel = len(self.elements)
        self._u_el = np.array([settings.uiso_of(el) for el in self.elements])
        # element-pair type of (a, b), a <= b
        self._tindex = np.zeros((nel, nel), dtype=np.int64)
        pairs_ab = []
        for a in range(nel):
            for b in range(a, nel):
                self._tindex[a, b] = self._tindex[b, a] = len(pairs_ab)
                pairs_ab.append((a, b))
        self._type_a = np.array([a for a, _ in pairs_ab], dtype=np.int64)
        self._type_b = np.array([b for _, b in pairs_ab], dtype=np.int64)
        # every pair i < j of the parent, sorted (stably) by type so that any motif's
        # subset is grouped by type as well
        pi, pj = np.triu_indices(self.n_atoms, 1)
        ptype = self._tindex[self._atom_type[pi], self._atom_type[pj]]
        order = np.argsort(ptype, kind="stable")
        self._pi = np.ascontiguousarray(pi[order], dtype=np.int64)
        self._pj = np.ascontiguousarray(pj[order], dtype=np.int64)
        diff = xyz[self._pi] - xyz[self._pj]
        self._dist = np.sqrt(np.einsum("ij,ij->i", diff, diff))
        self._seg = np.zeros(len(pairs_ab) + 1, dtype=np.int64)
        self._seg[1:] = np.cumsum(np.bincount(ptype, minlength=len(pairs_ab)))
        self._u_type_default = self._u_el[self._type_a] + self._u_el[self._type_b]
        self._rrange = r_range(self.r)
        self._max_uiso = float(self._u_el.max())
        if settings.qdamp > 0.0:
            self._envelope = np.exp(-0.5 * (settings.qdamp * self.r) ** 2)
        else:
            self._envelope = np.ones_like(self.r)

    # -- public interface ---------------------------------------------------------------

    def pair_matrices(self) -> tuple[np.ndarray, np.ndarray]:
        """Distance (Å) and element-pair type of every atom pair, as (n, n) matrices.

        The distances are the very values the calculator sums over, so that a motif's
        pairs read from these matrices give bit-identical PDFs.
        """
        dmat = np.zeros((self.n_atoms, self.n_atoms))
        dmat[self._pi, self._pj] = self._dist
        dmat[self._pj, self._pi] = self._dist
        tmat = self._tindex[self._atom_type[:, None], self._atom_type[None, :]].astype(np.int32)
        return dmat, tmat

    def prepare(self, mask: np.ndarray | None = None) -> Motif:
        """Select a motif's pairs and normalisation.

        Parameters
        ----------
        mask : ndarray of bool, shape (n,), optional
            Kept atoms of the parent; all atoms when omitted.

        Returns
        -------
        Motif
        """
        if mask is None:
            mask = np.ones(self.n_atoms, dtype=bool)
        else:
            mask = np.asarray(mask)
            if mask.shape != (self.n_atoms,):
                raise InputError(
                    f"mask must have one entry per atom ({self.n_atoms}), got shape {mask.shape}"
                )
            if mask.dtype != np.bool_:
                mask = mask.astype(bool)
        dist, seg = _select_pairs(self._pi, self._pj, self._dist, self._seg, mask)
        counts = np.bincount(self._atom_type[mask], minlength=len(self.elements))
        n = int(counts.sum())
        return Motif(mask.copy(), n, counts, dist, seg, self._norm(counts, n))

    def gr(
        self,
        motif: Motif,
        zoom: float = 1.0,
        uiso: Mapping[str, float] | None = None,
        delta2: float | None = None,
    ) -> np.ndarray:
        """G(r) of a prepared motif on :attr:`r`.

        Parameters
        ----------
        motif : Motif
            From :meth:`prepare`.
        zoom : float
            Isotropic expansion factor (1 = as built).
        uiso : mapping of str to float, optional
            Uiso (Å²) per element overriding the settings (e.g. while refining).
        delta2 : float, optional
            delta2 (Å²) overriding the settings.

        Returns
        -------
        ndarray
            G(r) (Å⁻²), a new array shaped like :attr:`r`; zeros for a motif without pairs.
        """
        raise NotImplementedError

    def fq(
        self,
        motif: Motif,
        zoom: float = 1.0,
        uiso: Mapping[str, float] | None = None,
        delta2: float | None = None,
    ) -> np.ndarray:
        """F(Q) = Q[S(Q) − 1] (Å⁻¹) of a prepared motif on :attr:`q`, inside the Q window."""
        raise NotImplementedError

    def compute(
        self,
        mask: np.ndarray | None = None,
        zoom: float = 1.0,
        uiso: Mapping[str, float] | None = None,
        delta2: float | None = None,
    ) -> np.ndarray:
        """:meth:`prepare` then :meth:`gr`: G(r) (Å⁻²) of the atoms in ``mask`` (all if None)."""
        return self.gr(self.prepare(mask), zoom=zoom, uiso=uiso, delta2=delta2)

    @property
    def q(self) -> np.ndarray:
        """Q values (Å⁻¹) where F(Q) is summed."""
        raise NotImplementedError

    @property
    def qstep(self) -> float:
        """Q step (Å⁻¹) of the transform."""
        raise NotImplementedError

    @property
    def extended_rmax(self) -> float:
        """DiffPy's ``extendedrmax`` (Å); NaN when a user-given qstep replaces DiffPy's grid."""
        raise NotImplementedError

    # -- helpers --------------------------------------------------------------------------

    def _norm(self, counts: np.ndarray, n: int) -> np.ndarray:
        raise NotImplementedError

    def _params(
        self, zoom: float, uiso: Mapping[str, float] | None, delta2: float | None
    ) -> tuple[float, np.ndarray, float]:
        """Checked zoom, per-type U_a + U_b and delta2 for one evaluation."""
        zoom = float(zoom)
        if not zoom > 0.0:
            raise InputError(f"zoom must be > 0, got {zoom}")
        if uiso:
            u_el = self._u_el.copy()
            for el, value in uiso.items():
                a = self._index.get(el)
                if a is None:
                    raise InputError(
                        f"uiso given for {el!r}, which is not in the structure "
                        f"({', '.join(self.elements)})"
                    )
                u_el[a] = value
            u_type = u_el[self._type_a] + u_el[self._type_b]
        else:
            u_type = self._u_type_default
        d2 = self.settings.delta2 if delta2 is None else float(delta2)
        return zoom, u_type, d2


class DebyeCalculator(PDFCalculator):
    """Debye-equation PDF (METHOD.md): F(Q) by the pair sum, G(r) by a sine sum over Q.

    G(r) = (2/π) Σ_k F(Q_k) sin(Q_k r) ΔQ · exp(−(qdamp·r)²/2), on DiffPy's Q grid by
    default (see :mod:`mlmotex_hpc.pdf.grids`) or on qmin + k·qstep.
    """

    def __init__(self, elements, xyz, settings, r) -> None:
        super().__init__(elements, xyz, settings, r)
        s = settings
        self.grid: DebyeGrid = _debye_grid(self._rrange, s, self._max_uiso)
        check_table(self.r.size, self.grid.nq, _describe(self.r, self.grid.q, s))
        q = self.grid.q
        self._f = scattering_weights(self.elements, q, s.radiation)
        self._ff = np.ascontiguousarray(2.0 * self._f[self._type_a] * self._f[self._type_b])
        self._kernel = _sine_table(self.r, q, (2.0 / math.pi) * self.grid.dq, self._envelope)

    @property
    def q(self) -> np.ndarray:
        return self.grid.q

    @property
    def qstep(self) -> float:
        return self.grid.dq

    @property
    def extended_rmax(self) -> float:
        return self.grid.extended_rmax

    def _norm(self, counts, n):
        total = counts.astype(float) @ self._f  # N ⟨f(Q)⟩
        with np.errstate(divide="ignore"):
            norm = np.where(total != 0.0, n / np.where(total != 0.0, total, 1.0) ** 2, 0.0)
        return np.ascontiguousarray(norm)

    def fq(self, motif, zoom=1.0, uiso=None, delta2=None):
        zoom, u_type, d2 = self._params(zoom, uiso, delta2)
        g = self.grid
        return debye_fq(
            motif.dist, motif.seg, self._ff, u_type, motif.norm, g.q0, g.dq, g.kstart, zoom, d2,
            self.settings.qbroad, g.pair_rmin, g.pair_rmax,
        )

    def gr(self, motif, zoom=1.0, uiso=None, delta2=None):
        return self._kernel @ self.fq(motif, zoom, uiso, delta2)


class RealSpaceCalculator(PDFCalculator):
    """DiffPy PDFCalculator's real-space PDF for a cluster (the original ML-MotEx's).

    Gaussian peaks with f(0) weights on a uniform r grid (:func:`.realspace.gaussian_peaks`),
    the sine transform to Q on DiffPy's FFT grid, F zeroed outside [Qmin, Qmax), the
    transform back to the output r, then the qdamp envelope.
    """

    def __init__(self, elements, xyz, settings, r) -> None:
        super().__init__(elements, xyz, settings, r)
        if np.any(self._u_el <= 0.0):
            zero = [el for el, u in zip(self.elements, self._u_el, strict=True) if u <= 0.0]
            raise InputError(
                f"the realspace calculator needs Uiso > 0 for every element (got 0 for "
                f"{', '.join(zero)}): DiffPy drops zero-width peaks"
            )
        s = settings
        self.grid: RealSpaceGrid = _realspace_grid(self._rrange, s, self._max_uiso)
        g = self.grid
        q = g.q
        _check_realspace(self.r, g, s)
        f0 = scattering_weights(self.elements, np.zeros(1), s.radiation)[:, 0]
        self._f0 = f0
        self._weight = 2.0 * f0[self._type_a] * f0[self._type_b]
        r_peak = g.dr * np.arange(g.m_lo, g.m_hi)
        self._to_q = _sine_table(q, r_peak, g.dr)
        self._to_r = _sine_table(self.r, q, (2.0 / math.pi) * g.dq, self._envelope)

    @property
    def q(self) -> np.ndarray:
        return self.grid.q

    @property
    def qstep(self) -> float:
        return self.grid.dq

    @property
    def extended_rmax(self) -> float:
        return self.grid.extended_rmax

    def _norm(self, counts, n):
        total = float(counts @ self._f0)
        return np.array([n / total**2 if total != 0.0 else 0.0])

    def g0(self, motif: Motif, zoom=1.0, uiso=None, delta2=None) -> np.ndarray:
        """Unwindowed G₀ (Å⁻²) on the peak grid r_m = m·dr, m_lo <= m < m_hi."""
        zoom, u_type, d2 = self._params(zoom, uiso, delta2)
        g = self.grid
        return gaussian_peaks(
            motif.dist, motif.seg, self._weight, u_type, float(motif.norm[0]), zoom, d2,
            self.settings.qbroad, g.dr, g.m_lo, g.m_hi, g.pair_rmin, g.pair_rmax,
            PEAK_HALF_BOUND,
        )

    def fq(self, motif, zoom=1.0, uiso=None, delta2=None):
        return self._to_q @ self.g0(motif, zoom, uiso, delta2)

    def gr(self, motif, zoom=1.0, uiso=None, delta2=None):
        return self._to_r @ self.fq(motif, zoom, uiso, delta2)


def _sine_table(a: np.ndarray, b: np.ndarray, factor: float,
                envelope: np.ndarray | None = None) -> np.ndarray:
    """factor · sin(a ⊗ b) (· envelope per row), built in place: one table in memory at a
    time, the same numbers as ``factor * np.sin(np.outer(a, b)) * envelope[:, None]``."""
    table = np.outer(a, b)
    np.sin(table, out=table)
    table *= factor
    if envelope is not None:
        table *= envelope[:, None]
    return table


def _describe(r: np.ndarray, q: np.ndarray, s: PDFSettings) -> str:
    """The r and Q grids of a table, for messages."""
    dq = float(q[1] - q[0]) if q.size > 1 else 0.0
    return (f"r {r[0]:g}-{r[-1]:g} Å in {r.size:,} points, Q up to qmax = {s.qmax:g} Å⁻¹ "
            f"in steps of {dq:.3g} Å⁻¹")


def _check_realspace(r: np.ndarray, g: RealSpaceGrid, s: PDFSettings) -> None:
    """The real-space calculator's two tables: onto Q from the peak grid, onto r."""
    what = _describe(r, g.q, s)
    check_table(max(g.m_hi - g.m_lo, 1), max(g.kmax - g.kmin, 1),
                f"peak grid of step {g.dr:g} Å to {g.extended_rmax:g} Å, {what}")
    check_table(r.size, g.kmax - g.kmin, what)


def _max_uiso(elements: Sequence[str], settings: PDFSettings) -> float:
    return max(settings.uiso_of(str(el)) for el in dict.fromkeys(elements))


def _debye_grid(rr: RRange, s: PDFSettings, max_uiso: float) -> DebyeGrid:
    return debye_grid(rr, s.qmin, s.qmax, s.qstep, max_uiso, s.delta2, s.qbroad)


def _realspace_grid(rr: RRange, s: PDFSettings, max_uiso: float) -> RealSpaceGrid:
    return realspace_grid(rr, s.qmin, s.qmax, max_uiso, s.delta2, s.qbroad)


@dataclass(frozen=True)
class TableSizes:
    """The grids that size a calculator's tables (see :func:`table_sizes`).

    Attributes
    ----------
    n_r : int
        Output r points (rows of the sine table onto r).
    n_q : int
        Q points (its columns).
    n_peak : int
        Real space: points of the peak grid (columns of the table onto Q, of ``n_q``
        rows); 0 for the Debye calculator, which has no such table.
    """

    n_r: int
    n_q: int
    n_peak: int

    @property
    def entries(self) -> int:
        """float64 entries of the calculator's own tables."""
        return self.n_r * self.n_q + self.n_q * self.n_peak


def table_sizes(elements: Sequence[str], settings: PDFSettings, r: np.ndarray) -> TableSizes:
    """The sizes of the tables :func:`make_calculator` would build, without building
    them (for the memory estimate); the same checks as the calculator (InputError)."""
    r = check_r(r)
    rr = r_range(r)
    u = _max_uiso(elements, settings)
    if settings.calculator == "debye":
        grid = _debye_grid(rr, settings, u)
        check_table(r.size, grid.nq, _describe(r, grid.q, settings))
        return TableSizes(r.size, grid.nq, 0)
    g = _realspace_grid(rr, settings, u)
    _check_realspace(r, g, settings)
    return TableSizes(r.size, g.kmax - g.kmin, g.m_hi - g.m_lo)


def make_calculator(
    elements: Sequence[str], xyz: np.ndarray, settings: PDFSettings, r: np.ndarray
) -> PDFCalculator:
    """Build the calculator ``settings.calculator`` for a parent structure and an r grid.

    Parameters
    ----------
    elements : sequence of str
        Element symbol of each atom (``periodictable`` capitalisation).
    xyz : ndarray, shape (n, 3)
        Cartesian coordinates (Å).
    settings : PDFSettings
        Calculator, radiation, Q window, Uiso, …
    r : ndarray
        Output r grid (Å), strictly increasing; uniform or not.

    Returns
    -------
    PDFCalculator
        A :class:`DebyeCalculator` or :class:`RealSpaceCalculator`.

    Raises
    ------
    InputError
        For mismatched or non-finite coordinates, an unusable r grid or an element
        without scattering data.
    """
    if not isinstance(settings, PDFSettings):
        raise TypeError("settings must be a PDFSettings")
    cls = DebyeCalculator if settings.calculator == "debye" else RealSpaceCalculator
    return cls(elements, xyz, settings, r)
