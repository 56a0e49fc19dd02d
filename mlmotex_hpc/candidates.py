"""Screening's candidates: the clusters a folder of structure files offers as starting models.

ML-MotEx answers only from a starting model that holds the motif. A screen (issue 29) fits
many candidate clusters to the data and extracts the motif from the best. This module makes
the candidates; it reads files and returns clusters, and it fits nothing and opens no
communicator.

* **Templates** (:func:`template_files`): files, glob patterns or folders of structure
  files (``.cif``, ``.xyz``, ``.stru``, ``.pdb``, ...), each file once, in sorted order.
* **Centres** (:func:`centre_sites`): the symmetry-distinct sites of a crystal (its
  asymmetric unit: the labels without a ``_N`` copy suffix) whose element is permuted or is
  another heavy atom (Z > 10, so that a Keggin cage can be centred on its Si, P, V or Ge).
* **Clusters** (:func:`template_candidates`): a sphere of each radius around each centre,
  every site kept (the catalogue decides which are filled). In a screen a cluster keeps
  only the atoms that can be in a motif: the permuted atoms and the others within the bond
  threshold of one. A motif never holds the rest (a counter-ion, solvent, a Keggin cage's
  heteroatom), so they change no fit, and a disordered cation must not refuse the cage
  beside it. An ``.xyz`` template, or a file without a cell, is one candidate as it is.
* **The same cluster once** (:func:`unique_candidates`): two clusters with the same
  elements and the same sorted distances from their centroid and between their atoms
  (within :data:`SAME_WITHIN` Å) are the same up to symmetry or translation. The first is
  kept, and the others are recorded as its copies.
* **A template that cannot be used** (:class:`Skipped`) is recorded with its reason and
  never ends a screen: unreadable, no permuted element, or no cut that can be used. A
  cut that cannot (too many atoms, atoms on one another, a partial site of an element not
  permuted, no permuted atom) is left out alone, and the template's record counts them
  and gives the first reason.
* **The model an extraction starts from** (:func:`grown`): the candidate's sphere grown by
  a margin, so that a motif the sphere cut off is whole again.
* **The radius from the data** (:func:`auto_radius`): half the r at which the measured
  G(r) stops rising above its own noise. See the function for how.
"""

from __future__ import annotations

import glob
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import periodictable

from .config import Cut
from .errors import InputError
from .io.structure import FORMATS, Crystal, Structure, cut_crystal, read_crystal

#: Two clusters whose sorted distances agree within this (Å) are one candidate.
SAME_WITHIN = 1e-3
#: Elements heavier than this atomic number are centres besides the permuted ones.
HEAVY_Z = 10
#: A candidate with more atoms than this is skipped (its pair table would not fit a rank).
MAX_ATOMS = 2000


@dataclass(frozen=True, eq=False)
class Candidate:
    """One cluster to fit: from ``template``, around site ``centre`` (``""`` for a
    cluster template) within ``radius`` Å (NaN: the whole file)."""

    template: Path
    centre: str
    radius: float
    structure: Structure | None  # None: a reference, cut again where probed (Recutter)
    copies: list[str] = field(default_factory=list)  # the same cluster from elsewhere
    permute: tuple[str, ...] = ()  # its permuted elements

    def reference(self) -> Candidate:
        """This candidate without its cluster: what the ranks are sent."""
        return Candidate(self.template, self.centre, self.radius, None, self.copies,
                         self.permute)

    @property
    def name(self) -> str:
        if not self.centre:
            return self.template.name
        return f"{self.template.name}:{self.centre}:{self.radius:g}"

    @property
    def formula(self) -> str:
        return formula(self.structure.elements)


def formula(elements: Iterable[str]) -> str:
    """A cluster's formula, its elements in the order met: ``W12VO40``."""
    counts: dict[str, int] = {}
    for el in elements:
        counts[el] = counts.get(el, 0) + 1
    return "".join(f"{el}{n if n > 1 else ''}" for el, n in counts.items())


@dataclass(frozen=True)
class Skipped:
    """A template a screen cannot use, or the cuts of it that it cannot, and why."""

    template: Path
    reason: str


def template_files(specs: Sequence[str | Path], base: Path = Path(".")) -> list[Path]:
    """Every structure file ``specs`` names (files, glob patterns, folders: their structure
    files, not recursively), relative ones against ``base``; each once, sorted. A spec that
    names nothing is refused in one line."""
    found: dict[Path, None] = {}
    for spec in specs:
        path = Path(spec)
        path = path if path.is_absolute() else base / path
        if path.is_dir():
            files = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in FORMATS)
        elif any(ch in str(spec) for ch in "*?["):
            files = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file())
        else:
            files = [path] if path.is_file() else []
        if not files:
            raise InputError(f"config key 'templates': {spec} names no structure file "
                             f"(known: {', '.join(sorted(FORMATS))})")
        found.update(dict.fromkeys(p.resolve() for p in files))
    return sorted(found)


def heaviest_element(elements: Iterable[str]) -> str:
    """The element of largest atomic number: a template's default permuted element."""
    return max(set(elements), key=lambda el: periodictable.elements.symbol(el).number)


def centre_sites(cell: Structure, permute: Sequence[str]) -> list[str]:
    """The labels of the symmetry-distinct sites to centre on: permuted elements first,
    then the other heavy atoms (Z > :data:`HEAVY_Z`), each in the file's order."""
    labels = cell.sites or ()
    first = [k for k, lab in enumerate(labels) if not re.search(r"_\d+$", lab)]
    heavy = [k for k in first if cell.elements[k] not in permute
             and periodictable.elements.symbol(cell.elements[k]).number > HEAVY_Z]
    return [labels[k] for k in first if cell.elements[k] in permute] + [labels[k] for k in heavy]


#: Elements a candidate leaves out unless ``elements`` names them: hydrogen scatters X-rays
#: too weakly to see, and its sites are the ones CIFs leave partial or idealised.
LEFT_OUT = ("H", "D")


def template_candidates(path: Path, radii: Sequence[float], permute: Sequence[str] | None,
                        tolerance: float, elements: Sequence[str] | None = None,
                        bond_threshold: float | None = None
                        ) -> tuple[list[Candidate], Skipped | None]:
    """The candidates of one template, or why there are none. ``permute`` None: the
    template's heaviest element. ``elements``: the elements a cluster keeps (None: all
    but :data:`LEFT_OUT`). ``bond_threshold``: a crystal's clusters keep only the atoms
    that can be in a motif, the permuted ones and the others within this of one
    (:func:`~mlmotex_hpc.io.structure.cut_crystal`'s ``near``); None keeps every atom."""
    try:
        crystal = _template(path, tolerance, elements)
    except InputError as exc:
        return [], Skipped(path, str(exc))
    elements = crystal.cell.elements
    chosen = [heaviest_element(elements)] if permute is None else list(permute)
    if not set(chosen) & set(elements):
        return [], Skipped(path, f"holds none of the permuted elements {', '.join(chosen)} "
                                 f"(it has {', '.join(dict.fromkeys(elements))})")
    if not crystal.periodic:
        return _whole(crystal, chosen)
    out, problems, tried = [], [], 0
    for label in centre_sites(crystal.cell, chosen):
        for radius in radii:
            tried += 1
            try:
                cluster = cut_crystal(crystal, Cut("sphere", (float(radius),),
                                                   centre_atom=label), partial="keep",
                                      near=_near(chosen, bond_threshold))
                problem = _unusable(cluster, chosen)
            except InputError as exc:
                problem = _after_path(exc, path)
            if problem:
                problems.append(f"{label}, {radius:g} Å: {problem}")
            else:
                out.append(Candidate(path, label, float(radius), cluster,
                                     permute=tuple(chosen)))
    if not problems:
        return out, None
    if not out:
        more = f" (and {len(problems) - 1} other cuts)" if len(problems) > 1 else ""
        return [], Skipped(path, problems[0] + more)
    return out, Skipped(path, f"{len(problems)} of {tried} cuts left out, the first: "
                              f"{problems[0]}")


def _near(permute: Sequence[str], bond_threshold: float | None):
    return None if bond_threshold is None else (tuple(permute), float(bond_threshold))


def _template(path: Path, tolerance: float, elements: Sequence[str] | None) -> Crystal:
    """A template read, holding only the elements a candidate keeps."""
    crystal = read_crystal(path, tolerance=tolerance)
    elements_here = tuple(dict.fromkeys(crystal.cell.elements))
    keep = tuple(el for el in elements_here
                 if (el not in LEFT_OUT if elements is None else el in elements))
    if len(keep) < len(elements_here):
        crystal = Crystal(crystal.path, crystal.cell.subset(
            np.isin(crystal.cell.elements, keep)), crystal.base)
    return crystal


class Recutter:
    """Clusters cut again from their templates, where they are probed.

    A database screen has 10⁶ candidates: the ranks are sent references
    (:meth:`Candidate.reference`), not clusters, and each cuts the ones it probes, as
    :func:`template_candidates` cut them (the same file, sites and radius give the same
    cluster, atom for atom). The last :data:`KEEP` templates read are kept, since the
    candidates of a template are handed out together."""

    KEEP = 4

    def __init__(self, tolerance: float, elements: Sequence[str] | None = None,
                 bond_threshold: float | None = None):
        self.tolerance, self.elements = tolerance, elements
        self.bond_threshold = bond_threshold
        self._read: dict[Path, Crystal] = {}

    def __call__(self, cand: Candidate) -> Structure:
        if cand.structure is not None:
            return cand.structure
        crystal = self._read.pop(cand.template, None)
        if crystal is None:
            crystal = _template(cand.template, self.tolerance, self.elements)
        self._read[cand.template] = crystal  # the most recent last
        while len(self._read) > self.KEEP:
            del self._read[next(iter(self._read))]
        if not cand.centre:
            return crystal.cell
        return cut_crystal(crystal, Cut("sphere", (cand.radius,), centre_atom=cand.centre),
                           partial="keep", near=_near(cand.permute, self.bond_threshold))


def grown(cand: Candidate, margin: float, permute: Sequence[str], tolerance: float,
          elements: Sequence[str] | None = None, bond_threshold: float | None = None
          ) -> tuple[Structure, str]:
    """The model an extraction starts from: ``cand``'s template cut around the same centre
    at ``cand.radius + margin``, and a line that says what it is.

    A candidate's sphere is sized to the motif, so a probe finds its best piece, but the
    sphere can cut the motif off, and ML-MotEx reads an atom's importance from the contrast
    between motifs with and without it: the paper's starting models hold more than the
    motif. A motif of radius ``margin`` centred anywhere inside the candidate lies wholly
    inside the grown sphere. A cluster template (``.xyz``), a zero margin, or a grown
    cluster a screen could not use (too many atoms, partial sites) gives the candidate as
    probed, and the line says why."""
    as_probed = cand.structure
    if not cand.centre or margin <= 0:
        return as_probed, f"{cand.name} as probed"
    radius = cand.radius + margin
    try:
        crystal = _template(cand.template, tolerance, elements)
        cluster = cut_crystal(crystal, Cut("sphere", (radius,), centre_atom=cand.centre),
                              partial="keep", near=_near(permute, bond_threshold))
    except InputError as exc:
        return as_probed, f"{cand.name} as probed (grown to {radius:g} Å: {exc})"
    problem = _unusable(cluster, permute)
    if problem:
        return as_probed, f"{cand.name} as probed (grown to {radius:g} Å: {problem})"
    return cluster, (f"{cand.name} grown by {margin:g} Å: a {radius:g} Å sphere around "
                     f"{cand.centre}, {len(cluster)} atoms")


def _whole(crystal: Crystal, chosen: Sequence[str]) -> tuple[list[Candidate], Skipped | None]:
    cluster = crystal.cell
    problem = _unusable(cluster, chosen)
    if problem:
        return [], Skipped(crystal.path, problem)
    return [Candidate(crystal.path, "", math.nan, cluster, permute=tuple(chosen))], None


def _unusable(cluster: Structure, chosen: Sequence[str]) -> str | None:
    """Why a cluster cannot be a starting model, or None."""
    if not np.isin(cluster.elements, list(chosen)).any():
        return f"no atom of {', '.join(chosen)}"
    if len(cluster) > MAX_ATOMS:
        return f"{len(cluster)} atoms, more than {MAX_ATOMS}"
    partial = [(label, el) for label, _, _, el in cluster.partial_sites() if el not in chosen]
    if partial:
        return (f"site {partial[0][0]} is partially occupied and {partial[0][1]} is not "
                "permuted (a screen keeps partial sites only of permuted elements)")
    return None


def _after_path(exc: InputError, path: Path) -> str:
    text = str(exc)
    return text.split(f"{path}: ", 1)[-1]


def fingerprint(structure: Structure) -> tuple:
    """What makes two clusters the same up to symmetry and translation: the elements
    and the sorted distances from the centroid and between atoms (rounded to
    :data:`SAME_WITHIN`)."""
    xyz = structure.xyz - structure.xyz.mean(axis=0)
    radial = np.sort(np.linalg.norm(xyz, axis=1))
    diff = xyz[:, None, :] - xyz[None, :, :]
    pairs = np.sort(np.linalg.norm(diff, axis=2)[np.triu_indices(len(xyz), 1)])
    counts = tuple(sorted((el, structure.elements.count(el))
                          for el in set(structure.elements)))
    q = SAME_WITHIN
    return counts, tuple(np.round(radial / q).astype(np.int64)), \
        tuple(np.round(pairs / q).astype(np.int64))


def unique_candidates(candidates: Sequence[Candidate],
                      keys: Sequence[tuple] | None = None) -> list[Candidate]:
    """Each distinct cluster once (the first met); the others are listed in its
    ``copies``. ``keys``: the candidates' :func:`fingerprint`, when made already (by the
    ranks that cut them)."""
    kept: dict[tuple, Candidate] = {}
    if keys is None:
        keys = [fingerprint(cand.structure) for cand in candidates]
    for cand, key in zip(candidates, keys, strict=True):
        if key in kept:
            kept[key].copies.append(cand.name)
        else:
            kept[key] = cand
    return list(kept.values())


#: ``auto`` gives three radii: half the signal's end, then that plus one and two steps of
#: max(1 Å, 15 % of it). The probe of sub-motifs finds a motif inside a cluster that is too
#: large, but nothing finds one cut off by a small one, and the signal's end errs small: a
#: particle's few pairs near its diameter sink below the noise first (a homogeneous
#: sphere's pair count falls to 5 % of its peak at 0.81 of its diameter).
AUTO_STEPS = 3


def auto_radii(r: np.ndarray, g: np.ndarray) -> tuple[list[float], str]:
    """The radii of ``radii: auto`` (Å) and how they were found (:func:`auto_radius`)."""
    radius, how = auto_radius(r, g)
    step = max(1.0, 0.15 * radius)
    radii = [round(radius + k * step, 2) for k in range(AUTO_STEPS)]
    return radii, f"{how}; radii {', '.join(f'{x:g}' for x in radii)} Å"


def auto_radius(r: np.ndarray, g: np.ndarray, window: float = 1.0,
                tail: float = 0.2) -> tuple[float, str]:
    """Half the r at which the measured PDF's signal ends: an estimate of the cluster's
    radius from its diameter, and a line that says how it was found.

    The envelope of ``|G|`` (its running maximum over ``window`` Å) is compared with the
    noise level. The noise level is the median envelope over the last ``tail`` of the r
    range, where a finite cluster has no pairs left. The signal ends at the last r whose
    envelope exceeds 3 times that level and 5 % of the largest ``|G|``. When the signal
    reaches the end of the data, the data's rmax is the diameter, and the line says so:
    the cluster may be larger than the data can show.
    """
    r = np.asarray(r, float)
    g = np.abs(np.asarray(g, float))
    step = float(np.median(np.diff(r))) if r.size > 1 else 0.01
    half = max(1, int(round(0.5 * window / step)))
    padded = np.pad(g, half, mode="edge")
    envelope = np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1).max(axis=1)
    tail_start = r[0] + (1.0 - tail) * (r[-1] - r[0])
    noise = float(np.median(envelope[r >= tail_start]))
    level = max(3.0 * noise, 0.05 * float(g.max()))
    above = np.flatnonzero(envelope > level)
    end = float(r[above[-1]]) if above.size else float(r[-1])
    if end >= tail_start:
        return 0.5 * float(r[-1]), (
            f"the signal reaches the end of the data ({r[-1]:g} Å; above {level:.3g} up to "
            f"{end:.3g} Å): radius {0.5 * r[-1]:.3g} Å, half the data's r range (the "
            "clusters may be larger than the data shows)")
    return 0.5 * end, (f"|G| stays below {level:.3g} (3 × its noise {noise:.3g}, or 5 % "
                       f"of its largest) beyond {end:.3g} Å: diameter {end:.3g} Å, "
                       f"radius {0.5 * end:.3g} Å")
