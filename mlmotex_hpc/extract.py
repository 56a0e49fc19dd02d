"""From atom contributions to one answer: confidence labels, connected motifs, polishing.

Arrays in, arrays out; no file, no communicator. The pipeline's extract stage
(:mod:`mlmotex_hpc.pipeline.extract`) hands :class:`Polisher` real fits through an
``evaluate`` callable.

* **Confidence labels** (:func:`confidence_labels`): an atom is ``in`` when its ACV is
  negative by at least ``z`` standard errors, ``out`` when positive by as much, and
  ``uncertain`` otherwise (or when its confidence factor is below a minimum).
* **Links** (:func:`link_graph`): two permutable atoms are linked when a non-permutable
  atom is bonded to both (W-O-W) or when they lie within ``link_distance`` of each other
  (C-C); a motif is *connected* when its atoms form one piece of that graph.
* **Polishing** (:class:`Polisher`): steepest descent on the real fitted Rw. From each
  start, every motif one toggle away (an atom added next to the motif, or removed
  without cutting it in two) is fitted; the best is taken when it lowers Rw by more than
  ``tolerance``. When no toggle helps, swaps (an atom moved to an empty site next to
  the rest of the motif) are tried. A start ends at a local optimum, or when the fit
  budget is spent. The objective may add a penalty to Rw: :func:`dangling` counts the
  oxygens (any non-permutable atom) left with a broken bond.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

#: Codes of the confidence labels in ``/atoms/label``.
LABEL_CODES = {"out": 0, "in": 1, "uncertain": 2}
LABEL_NAMES = {code: name for name, code in LABEL_CODES.items()}


def confidence_labels(acv: np.ndarray, se: np.ndarray, cf: np.ndarray, z: float,
                      min_cf: float = 0.0) -> np.ndarray:
    """Label codes (:data:`LABEL_CODES`, int8, the shape of ``acv``).

    ``in``: ACV ≤ -z·SE; ``out``: ACV ≥ z·SE; ``uncertain`` otherwise, or when the
    confidence factor is below ``min_cf``. A NaN standard error (a file older than
    ``contribution_se``) counts as zero: the sign alone decides.
    """
    acv = np.asarray(acv, dtype=float)
    margin = z * np.nan_to_num(np.asarray(se, dtype=float), nan=0.0)
    labels = np.full(acv.shape, LABEL_CODES["uncertain"], dtype=np.int8)
    sure = np.nan_to_num(np.asarray(cf, dtype=float), nan=np.inf) >= min_cf
    labels[(acv < 0) & (-acv >= margin) & sure] = LABEL_CODES["in"]
    labels[(acv > 0) & (acv >= margin) & sure] = LABEL_CODES["out"]
    return labels


def dangling(masks: np.ndarray, bonded: np.ndarray) -> np.ndarray:
    """Kept non-permutable atoms that lost a bonded partner, per motif (K masks → K
    counts): an O is kept when any kept permutable atom bonds to it, and is *dangling*
    when some permutable atom it bonds to in the starting model is removed (a bridging O
    left with one metal, the mark of a broken polyhedron)."""
    masks = np.atleast_2d(np.asarray(masks, dtype=np.uint8))
    b = np.asarray(bonded, dtype=np.int64)
    if b.size == 0:
        return np.zeros(len(masks), dtype=np.int64)
    kept_partners = masks.astype(np.int64) @ b
    return ((kept_partners > 0) & (kept_partners < b.sum(axis=0))).sum(axis=1)


def link_graph(bonded: np.ndarray, xyz: np.ndarray, link_distance: float) -> np.ndarray:
    """Links between permutable atoms (N × N bool, no self links).

    ``bonded`` is :attr:`~mlmotex_hpc.catalogue.MotifSpace.bonded` (N × others), ``xyz``
    the permutable atoms' positions (N × 3, Å).
    """
    b = np.asarray(bonded, dtype=np.uint8)
    shared = (b @ b.T) > 0 if b.size else np.zeros((len(xyz), len(xyz)), dtype=bool)
    diff = xyz[:, None, :] - xyz[None, :, :]
    near = np.einsum("ijk,ijk->ij", diff, diff) <= link_distance**2
    links = shared | near
    np.fill_diagonal(links, False)
    return links


def pieces(mask: np.ndarray, links: np.ndarray) -> list[np.ndarray]:
    """The connected pieces of the atoms in ``mask``: index arrays, largest first (ties:
    the piece holding the lowest index first)."""
    todo = set(np.flatnonzero(mask).tolist())
    found = []
    while todo:
        seed = min(todo)
        piece, front = {seed}, [seed]
        while front:
            i = front.pop()
            for j in np.flatnonzero(links[i]):
                j = int(j)
                if j in todo and j not in piece:
                    piece.add(j)
                    front.append(j)
        todo -= piece
        found.append(np.array(sorted(piece)))
    found.sort(key=lambda p: (-len(p), p[0]))
    return found


def is_connected(mask: np.ndarray, links: np.ndarray) -> bool:
    """True when the atoms of ``mask`` form one piece (an empty mask is not a motif)."""
    return len(pieces(mask, links)) == 1


def toggles(mask: np.ndarray, links: np.ndarray | None) -> list[tuple[np.ndarray, tuple]]:
    """Motifs one atom away from ``mask``, in index order, as (mask, (added, removed)).

    With ``links`` (connected motifs) an atom is added only next to the motif and removed
    only when the rest stays in one piece; without, every single toggle but the empty motif.
    """
    mask = np.asarray(mask, dtype=bool)
    out = []
    near = None if links is None else links[mask].any(axis=0)
    for i in range(mask.size):
        new = mask.copy()
        new[i] = not mask[i]
        if not new.any():
            continue
        if links is not None:
            if not mask[i] and not near[i]:
                continue
            if mask[i] and not is_connected(new, links):
                continue
        out.append((new, ((i,), ()) if not mask[i] else ((), (i,))))
    return out


def swaps(mask: np.ndarray, links: np.ndarray) -> list[tuple[np.ndarray, tuple]]:
    """Motifs with one atom moved to an empty site next to the rest of the motif (the
    result connected), in index order, as (mask, (added, removed))."""
    mask = np.asarray(mask, dtype=bool)
    out = []
    for i in np.flatnonzero(mask):
        rest = mask.copy()
        rest[i] = False
        if not rest.any() or not is_connected(rest, links):
            continue
        near = links[rest].any(axis=0) & ~mask
        near[i] = False
        for j in np.flatnonzero(near):
            new = rest.copy()
            new[j] = True
            out.append((new, ((int(j),), (int(i),))))
    return out


@dataclass
class Descent:
    """One polishing start of one frame: where it stands and how it got there."""

    frame: int
    origin: str  # "extracted" or "catalogue #k"
    mask: np.ndarray
    rw: float
    path: list[dict] = field(default_factory=list)
    active: bool = True
    stop: str = ""
    score: float = float("nan")  # the objective: Rw + penalty
    start: np.ndarray = field(init=False)

    def __post_init__(self):
        self.start = self.mask.copy()


#: evaluate(masks K × N) -> Rw (F × K), NaN where the fit budget did not reach.
Evaluate = Callable[[np.ndarray], np.ndarray]


class Polisher:
    """Steepest descent on real fits from several starts and frames at once.

    Every step gathers the neighbours of all active starts, asks ``evaluate`` for their
    Rw in one call (motifs fitted before cost nothing there), then moves each start.
    Deterministic: the same inputs give the same path on any number of ranks.
    """

    def __init__(self, links: np.ndarray | None, tolerance: float, use_swaps: bool = True,
                 max_steps: int = 1000,
                 penalty: Callable[[np.ndarray], np.ndarray] | None = None):
        self.links = links
        self.tolerance = tolerance
        self.use_swaps = use_swaps
        self.max_steps = max_steps
        #: penalty(masks K × N) -> K values added to Rw in the objective (None: Rw alone)
        self.penalty = penalty

    def score(self, masks: np.ndarray, rw: np.ndarray) -> np.ndarray:
        """The objective: Rw plus the penalty of each mask."""
        return rw if self.penalty is None else rw + self.penalty(masks)

    def run(self, descents: list[Descent], evaluate: Evaluate) -> list[Descent]:
        for d in descents:
            d.score = float(self.score(d.mask[None, :], np.array([d.rw]))[0])
            d.path.append({"step": 0, "rw": d.rw, "score": d.score, "added": [],
                           "removed": [], "n_atoms": int(d.mask.sum())})
        swapping = {id(d): False for d in descents}
        for step in range(1, self.max_steps + 1):
            active = [d for d in descents if d.active]
            if not active:
                break
            moves = [self._moves(d, swapping[id(d)]) for d in active]
            flat = [m for ms in moves for m, _ in ms]
            if not flat:
                for d in active:
                    d.active = False
                    d.stop = "local optimum" if swapping[id(d)] else "no neighbour to try"
                break
            flat = np.array(flat)
            rw = evaluate(flat)
            scores = self.score(flat, rw)
            k = 0
            for d, ms in zip(active, moves, strict=True):
                mine = scores[d.frame, k:k + len(ms)]
                real = rw[d.frame, k:k + len(ms)]
                k += len(ms)
                if not ms:  # nothing to swap is a local optimum too
                    d.active = False
                    d.stop = "local optimum" if swapping[id(d)] else "no neighbour to try"
                    continue
                if np.isnan(mine).any():
                    d.active, d.stop = False, "fit budget spent"
                    if np.all(np.isnan(mine)):
                        continue
                best = int(np.nanargmin(mine))
                if mine[best] < d.score - self.tolerance:
                    new, (added, removed) = ms[best]
                    d.mask, d.rw, d.score = new, float(real[best]), float(mine[best])
                    d.path.append({"step": step, "rw": d.rw, "score": d.score,
                                   "added": list(added), "removed": list(removed),
                                   "n_atoms": int(new.sum())})
                    swapping[id(d)] = False
                elif d.active and self.use_swaps and self.links is not None \
                        and not swapping[id(d)]:
                    swapping[id(d)] = True  # no toggle helps: try moving an atom
                elif d.active:
                    d.active, d.stop = False, "local optimum"
            self._merge(descents)
        for d in descents:
            if d.active:
                d.active, d.stop = False, f"step limit ({self.max_steps})"
        return descents

    def _moves(self, d: Descent, swapping: bool) -> list[tuple[np.ndarray, tuple]]:
        if swapping:
            return swaps(d.mask, self.links)
        return toggles(d.mask, self.links)

    @staticmethod
    def _merge(descents: list[Descent]) -> None:
        """A start that reaches the motif of an earlier start of its frame ends there."""
        seen: dict[tuple[int, bytes], Descent] = {}
        for d in descents:
            key = (d.frame, np.packbits(d.mask).tobytes())
            if key in seen and d.active:
                d.active, d.stop = False, f"joined the {seen[key].origin} start"
            seen.setdefault(key, d)


def best_of(descents: list[Descent], frame: int) -> Descent:
    """The frame's descent that ended lowest in the objective (ties: the first)."""
    mine = [d for d in descents if d.frame == frame]
    return min(mine, key=lambda d: d.score if np.isfinite(d.score) else d.rw)
