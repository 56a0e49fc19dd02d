"""The run configuration: a frozen, validated dataclass tree built from YAML.

Rank 0 builds it with :func:`load_config`; the driver broadcasts it. Every error is an
:class:`~mlmotex_hpc.errors.InputError` that names the key, the value and what is allowed.
Relative paths resolve against the folder of the config file.

Example
-------
.. code-block:: yaml

    structure: 109725.xyz
    data: DanMAX_AlphaKeggin.gr
    permute: [W]
    bond_threshold: 2.6
    catalogue: {size: 2000, seed: 0}
    pdf: {calculator: debye, qmin: 0.7, qmax: 20, qdamp: 0.04, uiso: {W: 0.005, O: 0.005}}
    fit: {rmin: 1.6, rmax: 10, refine: [scale, zoom], zoom_bounds: [0.99, 1.01]}
    learn: {test_fraction: 0.2, cv_folds: 3, search_iterations: 12, search: fast, seed: 0}
    output: {dir: out}

A time series names many data files (``data: frames/run_*.gr``, ordered naturally) and
may give their times (``frames: {time: {file: times.csv, column: t}}``).
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import InputError
from .pdf.settings import uiso_from_biso

REFINABLE = ("scale", "zoom", "uiso", "delta2")
#: ``fit.zoom_search: auto`` shares anchor zooms among the frames from this many frames.
SHARED_MIN_FRAMES = 4
#: Zooms beyond these are not an expansion of the same structure (and their r tables
#: would not fit in memory).
ZOOM_LIMITS = (0.5, 2.0)
#: The widest bounds accepted for freed Uiso and delta2 (Å²), and the defaults.
UISO_LIMITS = (0.0, 0.1)
DELTA2_LIMITS = (0.0, 25.0)
UISO_BOUNDS = (1e-4, 0.05)
DELTA2_BOUNDS = (0.0, 2.5)
#: Seeds go to NumPy, XGBoost and scikit-optimize; the last two take 32 bits.
MAX_SEED = 2**32 - 1
#: ``catalogue.size: all``: every non-empty motif (an exhaustive run).
ALL_MOTIFS = 2**62


#: Crystal files: sites closer than this (fractional) merge (see io.structure).
CIF_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Cut:
    """How a finite cluster is cut from a crystal (or from a larger cluster).

    Attributes
    ----------
    shape : {"sphere", "box", "cells"}
        ``sphere``: atoms within ``size[0]`` Å of the centre. ``box``: a parallelepiped
        of the cell's shape, edges ``size`` Å along a, b and c, centred on the centre.
        ``cells``: ``size`` whole cells from the origin, atoms on the far faces included
        (a classic supercell).
    size : tuple of float
    centre : (float, float, float), optional
        Fractional for a crystal, Å for a cluster; default the cell's centre (a cluster's
        centroid).
    centre_atom : str or int, optional
        Centre on this atom instead: a site label as diffpy.structure names the atoms of
        the cell (``W1``, ``W1_2``, ...), or its 0-based index among them.
    elements : tuple of str
        Keep only these elements (empty: all).
    """

    shape: str
    size: tuple[float, ...]
    centre: tuple[float, float, float] | None = None
    centre_atom: str | int | None = None
    elements: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.shape == "sphere":
            text = f"a sphere of {self.size[0]:g} Å"
        elif self.shape == "box":
            text = "a box of " + " × ".join(f"{v:g}" for v in self.size) + " Å"
        else:
            text = " × ".join(f"{v:g}" for v in self.size) + " cells"
        if self.centre_atom is not None:
            text += f" around atom {self.centre_atom}"
        elif self.centre is not None and self.shape != "cells":
            text += " around (" + ", ".join(f"{v:g}" for v in self.centre) + ")"
        if self.elements:
            text += ", only " + ",".join(self.elements)
        return text


@dataclass(frozen=True)
class StructureSpec:
    """What ``structure:`` asks of its file besides its path: a cut, what to do with
    partially occupied sites, the crystal's site-merging tolerance."""

    cut: Cut | None = None
    partial: str = "refuse"
    tolerance: float = CIF_TOLERANCE


def make_cut(key: str, raw: Any) -> Cut:
    """A :class:`Cut` from its config mapping (or the ``cut`` command's options):
    exactly one of ``sphere: R``, ``box: [A, B, C]``, ``cells: [NA, NB, NC]``; at most one
    of ``centre: [x, y, z]`` and ``centre_atom: LABEL|INDEX``; ``elements: [El, ...]``."""
    allowed = ("sphere", "box", "cells", "centre", "centre_atom", "elements")
    if not isinstance(raw, dict):
        raise _fail(key, raw, "expected a mapping, e.g. {sphere: 6.0, centre: [0, 0, 0.5]}")
    unknown = [k for k in raw if k not in allowed]
    if unknown:
        raise InputError(f"unknown config key '{key}.{unknown[0]}': allowed keys are "
                         f"{', '.join(allowed)}")
    shapes = [k for k in ("sphere", "box", "cells") if raw.get(k) is not None]
    if len(shapes) != 1:
        raise _fail(key, raw, "give exactly one of sphere: R (Å), box: [A, B, C] (Å) or "
                    "cells: [NA, NB, NC]")
    shape = shapes[0]
    value = raw[shape]
    if shape == "sphere":
        size = (_number(f"{key}.sphere", value, {"doc": "sphere radius (Å)",
                                                  "exclusive_min": 0.0}, False),)
    else:
        if not isinstance(value, list | tuple) or len(value) != 3:
            raise _fail(f"{key}.{shape}", value, "expected three numbers, e.g. [2, 2, 2]")
        doc = ({"doc": "box edge (Å)", "exclusive_min": 0.0} if shape == "box"
               else {"doc": "cells along a, b, c", "minimum": 1})
        size = tuple(_number(f"{key}.{shape}", v, doc, shape == "cells") for v in value)
    centre, atom = raw.get("centre"), raw.get("centre_atom")
    if centre is not None and atom is not None:
        raise _fail(key, raw, "give centre or centre_atom, not both")
    if (centre is not None or atom is not None) and shape == "cells":
        raise _fail(key, raw, "cells start at the origin: a centre belongs to a sphere or "
                    "a box")
    if centre is not None:
        if not isinstance(centre, list | tuple) or len(centre) != 3:
            raise _fail(f"{key}.centre", centre, "expected [x, y, z] (fractional)")
        centre = tuple(float(_number(f"{key}.centre", v, {"doc": "a coordinate"}, False))
                       for v in centre)
    if atom is not None and (isinstance(atom, bool) or not isinstance(atom, int | str)):
        raise _fail(f"{key}.centre_atom", atom, "expected a site label (W1) or a 0-based "
                    "atom index")
    if isinstance(atom, int) and atom < 0:
        raise _fail(f"{key}.centre_atom", atom, "an atom index is 0-based, ≥ 0")
    elements = raw.get("elements") or ()
    if isinstance(elements, str):
        elements = [e for e in elements.split(",") if e.strip()]
    if not isinstance(elements, list | tuple) or not all(isinstance(e, str) for e in elements):
        raise _fail(f"{key}.elements", elements, "expected a list of element symbols")
    return Cut(shape, size, centre, atom,
               tuple(dict.fromkeys(e.strip().capitalize() for e in elements)))


def _structure_spec(key: str, value: Any, base: Path) -> tuple[Path, StructureSpec]:
    """``structure: FILE`` or ``structure: {file: FILE, cut: {...}, partial: keep,
    tolerance: 1e-3}``."""
    if not isinstance(value, dict):
        return _readable_file(key, value, base), StructureSpec()
    allowed = ("file", "cut", "partial", "tolerance")
    unknown = [k for k in value if k not in allowed]
    if unknown:
        raise InputError(f"unknown config key '{key}.{unknown[0]}': allowed keys are "
                         f"{', '.join(allowed)}")
    if "file" not in value:
        raise InputError(f"config key '{key}.file' is missing: the structure file (.xyz, "
                         ".cif, .stru, .pdb)")
    path = _readable_file(f"{key}.file", value["file"], base)
    cut = None if value.get("cut") is None else make_cut(f"{key}.cut", value["cut"])
    partial = value.get("partial", "refuse")
    if partial not in ("refuse", "keep"):
        raise _fail(f"{key}.partial", partial, "expected refuse or keep (partially occupied "
                    "sites kept as atoms the catalogue switches on and off)")
    tolerance = _number(f"{key}.tolerance", value.get("tolerance", CIF_TOLERANCE),
                        {"doc": "fractional distance under which a crystal's sites merge",
                         "exclusive_min": 0.0, "maximum": 0.05}, False)
    return path, StructureSpec(cut, partial, tolerance)


def _spec(kind: str, doc: str, **limits: Any) -> dict[str, Any]:
    """Field metadata: the value's kind, a one-line description and its limits."""
    return {"kind": kind, "doc": doc, **limits}


@dataclass(frozen=True)
class CatalogueConfig:
    """Step 1: how candidate motifs are drawn."""

    size: int = field(default=2000, metadata=_spec(
        "size", "number of motifs to fit, or all (every one of the 2^N - 1: an exhaustive "
        "run, exact Shapley values)", minimum=1))
    seed: int = field(default=0, metadata=_spec("int", "random seed", minimum=0,
                                                 maximum=MAX_SEED))
    masks_file: Path | None = field(
        default=None, metadata=_spec("file", "text file of 0/1 rows: fit exactly these motifs")
    )
    batch_size: int = field(
        default=64, metadata=_spec("int", "motifs per work unit handed to a rank", minimum=1)
    )
    strategy: str = field(
        default="random",
        metadata=_spec("choice", "random: one uniform sample (ML-MotEx); adaptive: rounds that "
                       "learn from the fits so far and draw where they help (size is then "
                       "the fit budget)", choices=("random", "adaptive")))
    first_round: float = field(
        default=0.3,
        metadata=_spec("float", "adaptive: fraction of the budget in the uniform round 0",
                       exclusive_min=0.0, maximum=1.0))
    round_size: int | None = field(
        default=None,
        metadata=_spec("int?", "adaptive: motifs per later round (empty: a tenth of the "
                       "budget), rounded up to whole batches", minimum=1))
    explore: float = field(
        default=0.25,
        metadata=_spec("float", "adaptive: fraction of each later round drawn uniformly",
                       minimum=0.0, maximum=1.0))
    stable_rounds: int = field(
        default=2,
        metadata=_spec("int", "adaptive: stop when the atom labels have not changed for this "
                       "many rounds (0: never stop early)", minimum=0))


@dataclass(frozen=True)
class PDFConfig:
    """Step 2: how each motif's PDF is computed."""

    calculator: str = field(
        default="debye", metadata=_spec("choice", "PDF calculator", choices=("debye", "realspace"))
    )
    radiation: str = field(
        default="xray", metadata=_spec("choice", "radiation", choices=("xray", "neutron"))
    )
    qmin: float = field(default=0.7, metadata=_spec("float", "Qmin (Å⁻¹)", minimum=0.0))
    qmax: float = field(default=20.0, metadata=_spec("float", "Qmax (Å⁻¹)", exclusive_min=0.0))
    qdamp: float = field(default=0.04, metadata=_spec("float", "qdamp (Å⁻¹)", minimum=0.0))
    qbroad: float = field(default=0.0, metadata=_spec("float", "qbroad (Å⁻¹)", minimum=0.0))
    uiso: tuple[tuple[str, float], ...] = field(
        default=(), metadata=_spec("uiso", "isotropic displacement per element (Å²); "
                                   "elements not given take the structure file's, if any")
    )
    biso: tuple[tuple[str, float], ...] = field(
        default=(), metadata=_spec("uiso", "instead of uiso: Biso per element (Å², "
                                   "Uiso = Biso / 8π² as DiffPy converts)")
    )
    default_uiso: float = field(
        default=0.005, metadata=_spec("float", "Uiso of elements not in uiso (Å²)", minimum=0.0)
    )
    delta2: float = field(default=0.0, metadata=_spec("float", "delta2 (Å²)", minimum=0.0))
    qstep: float | None = field(
        default=None,
        metadata=_spec("float?", "Q step (Å⁻¹); empty: DiffPy's grid", minimum=1e-3),
    )


@dataclass(frozen=True)
class FitConfig:
    """Step 2: the fit of each motif's PDF to the data."""

    rmin: float = field(default=1.6, metadata=_spec("float", "fit range start (Å)", minimum=0.0))
    rmax: float = field(default=10.0, metadata=_spec("float", "fit range end (Å)", minimum=0.0))
    refine: tuple[str, ...] = field(
        default=("scale", "zoom"), metadata=_spec("names", "refined parameters", choices=REFINABLE)
    )
    zoom_bounds: tuple[float, float] = field(
        default=(0.99, 1.01), metadata=_spec("bounds", "zoom range (isotropic expansion)")
    )
    uiso_bounds: tuple[float, float] = field(
        default=UISO_BOUNDS,
        metadata=_spec("range", "bounds of freed Uiso, every element (Å²)", limits=UISO_LIMITS),
    )
    delta2_bounds: tuple[float, float] = field(
        default=DELTA2_BOUNDS,
        metadata=_spec("range", "bounds of freed delta2 (Å²)", limits=DELTA2_LIMITS),
    )
    weights: str = field(
        default="unit", metadata=_spec("choice", "fit weights", choices=("unit", "dG"))
    )
    zoom_search: str = field(
        default="auto",
        metadata=_spec("choice", "zoom search: exact G at each frame's zoom, or anchor zooms "
                       "shared by the frames (auto: shared from 4 frames)",
                       choices=("auto", "exact", "shared")),
    )


@dataclass(frozen=True)
class LearnConfig:
    """Steps 3-4: the XGBoost model of Rw and its SHAP explanation."""

    test_fraction: float = field(
        default=0.2,
        metadata=_spec("float", "held-out test fraction", exclusive_min=0.0, maximum=0.5),
    )
    cv_folds: int = field(default=3, metadata=_spec("int", "cross-validation folds", minimum=2))
    search_iterations: int = field(
        default=12, metadata=_spec("int", "Bayesian-search evaluations", minimum=0)
    )
    search: str = field(
        default="fast",
        metadata=_spec("choice", "fast: trees by early stopping, poor candidates stop early; "
                       "full: ML-MotEx's search (trees searched, every fold)",
                       choices=("fast", "full")),
    )
    series_search: str = field(
        default="shared",
        metadata=_spec("choice", "a series: one search on a few frames for all (shared) or "
                       "one per frame", choices=("shared", "per_frame")),
    )
    search_frames: int = field(
        default=3, metadata=_spec("int", "frames the shared search looks at", minimum=1)
    )
    shap: str = field(
        default="auto",
        metadata=_spec("choice", "SHAP on motifs until every ACV's standard error is below "
                       "shap_target (auto), or on every motif (all)", choices=("auto", "all")),
    )
    shap_target: float = field(
        default=0.01,
        metadata=_spec("float", "largest ACV standard error, as a fraction of the largest "
                       "|ACV|", exclusive_min=0.0, maximum=1.0),
    )
    seed: int = field(default=0, metadata=_spec("int", "random seed", minimum=0,
                                                 maximum=MAX_SEED))
    params: tuple[tuple[str, Any], ...] = field(
        default=(), metadata=_spec("params", "fixed XGBoost parameters (skip the search)")
    )
    sample: int = field(
        default=10_000,
        metadata=_spec("int", "exhaustive runs: steps 3-4 on an ML-MotEx random catalogue of "
                       "this many motifs drawn from the full table (seed learn.seed)",
                       minimum=10))


@dataclass(frozen=True)
class ExactConfig:
    """Exhaustive runs: exact attributions from the full table of fits."""

    best: int = field(
        default=100,
        metadata=_spec("int", "motifs kept in /best (the lowest Rw of every motif)", minimum=1))


@dataclass(frozen=True)
class ExtractConfig:
    """Step 5: from atom contributions to the answer (labels, connected motif, polishing)."""

    polish: bool = field(
        default=True,
        metadata=_spec("bool", "polish the extracted motif by real fits (toggle one atom at a "
                       "time, keep what lowers Rw)"))
    polish_fits: int | None = field(
        default=None,
        metadata=_spec("int?", "fits the extract stage may use, taken out of catalogue.size "
                       "(empty: min(10 N, size / 5))", minimum=0))
    polish_tolerance: float = field(
        default=0.002,
        metadata=_spec("float", "the Rw a polishing move must gain", minimum=0.0))
    answer: str = field(
        default="extracted",
        metadata=_spec("choice", "the answer: the polished ACV < 0 motif (extracted), or the "
                       "start that polished lowest (lowest)", choices=("extracted", "lowest")))
    polish_starts: int = field(
        default=2,
        metadata=_spec("int", "best catalogue motifs polished besides the extracted one",
                       minimum=0))
    swaps: bool = field(
        default=True,
        metadata=_spec("bool", "when no toggle helps, try moving an atom to a linked site"))
    dangling_penalty: float = field(
        default=0.004,
        metadata=_spec("float", "added to Rw in polishing for each kept non-permutable atom "
                       "that lost a bonded partner (a broken polyhedron); 0: Rw alone",
                       minimum=0.0))
    connected: bool = field(
        default=True,
        metadata=_spec("bool", "the answer is one connected piece of the bond graph"))
    link_distance: float | None = field(
        default=None,
        metadata=_spec("float?", "permutable atoms closer than this (Å) are linked, besides "
                       "those sharing a bonded atom (empty: bond_threshold, or 1.2 × the "
                       "median nearest-neighbour distance when every atom is permuted)",
                       minimum=0.0))
    label_z: float = field(
        default=2.0,
        metadata=_spec("float", "standard errors the ACV must clear for an in/out label",
                       minimum=0.0))
    label_min_cf: float = field(
        default=0.0,
        metadata=_spec("float", "confidence factor below which an atom is uncertain",
                       minimum=0.0))


@dataclass(frozen=True)
class FramesConfig:
    """Time series: what each frame of ``data`` is and how frames are shared out."""

    time: tuple[float, ...] | None = field(
        default=None,
        metadata=_spec("times", "time of each frame: a list, or {file: CSV, column: name}"),
    )
    time_unit: str = field(default="s", metadata=_spec("str", "unit of frames.time"))
    block: int = field(
        default=0, metadata=_spec("int", "frames per work unit (0: all frames)", minimum=0)
    )


@dataclass(frozen=True)
class OutputConfig:
    """Where results go."""

    dir: Path = field(default=Path("out"),
                      metadata=_spec("dir", "output folder (relative to the config's folder)"))


@dataclass(frozen=True)
class ScreenSection:
    """How a screen cuts its templates into candidates and probes each one."""

    radii: tuple[float, ...] | None = field(default=None, metadata=_spec(
        "radii", "sphere radii (Å) around each centre, or auto: from where the data's "
                 "signal ends"))
    elements: tuple[str, ...] | None = field(default=None, metadata=_spec(
        "elements?", "elements a candidate keeps (default: all but H)"))
    random: int = field(default=200, metadata=_spec(
        "int", "random motifs probed per candidate", minimum=0, maximum=10**6))
    starts: int = field(default=3, metadata=_spec(
        "int", "polishing starts per candidate (its best motifs)", minimum=0, maximum=100))
    steps: int = field(default=20, metadata=_spec(
        "int", "polishing steps at most per start", minimum=0, maximum=10**4))
    seed: int = field(default=0, metadata=_spec("int", "random seed", minimum=0,
                                                maximum=2**32 - 1))
    tolerance: float = field(default=CIF_TOLERANCE, metadata=_spec(
        "float", "fractional distance under which a crystal's sites merge", exclusive_min=0.0,
        maximum=0.1))
    extract: int = field(default=0, metadata=_spec(
        "int", "best candidates to extract the motif from (0: rank only)", minimum=0,
        maximum=1000))
    grow: float | None = field(default=None, metadata=_spec(
        "margin", "Å added to a crystal candidate's radius for its extraction's model (auto: "
                  "the radius read from the data; 0: the candidate as probed)"))


@dataclass(frozen=True)
class ScreenConfig:
    """A screen: templates (structure files) ranked against measured PDFs."""

    templates: tuple[str, ...] = field(metadata=_spec(
        "templates", "structure files, glob patterns or folders to screen"))
    data: tuple[Path, ...] = field(metadata=_spec(
        "files", "measured PDF file(s): a path, a glob pattern or a list"))
    permute: tuple[str, ...] | None = field(default=None, metadata=_spec(
        "elements?", "permutable elements (default: each template's heaviest)"))
    bond_threshold: float = field(default=2.6, metadata=_spec(
        "float", "metal-ligand bond distance (Å)", exclusive_min=0.0, maximum=10.0))
    catalogue: CatalogueConfig = CatalogueConfig()
    pdf: PDFConfig = PDFConfig()
    fit: FitConfig = FitConfig()
    learn: LearnConfig = LearnConfig()
    extract: ExtractConfig = ExtractConfig()
    screen: ScreenSection = ScreenSection()
    output: OutputConfig = OutputConfig()
    source: str = field(default="", compare=False, metadata={"internal": True})
    base: Path | None = field(default=None, compare=False, metadata={"internal": True})


@dataclass(frozen=True)
class Config:
    """A complete, validated run configuration."""

    structure: Path = field(metadata=_spec(
        "structure", "starting model: a file (.xyz, .cif, .stru, .pdb), or {file: F, cut: "
        "{sphere: R | box: [A, B, C] | cells: [NA, NB, NC], centre: [x, y, z] | "
        "centre_atom: LABEL, elements: [El, ...]}, partial: refuse|keep, tolerance: 1e-3}"))
    permute: tuple[str, ...] = field(metadata=_spec("elements", "permutable elements"))
    data: tuple[Path, ...] = field(
        default=(), metadata=_spec("files", "measured PDF file(s) or a glob (or give fits)"))
    fits: Path | None = field(
        default=None,
        metadata=_spec("file", "instead of data: a table of fits made elsewhere (ML-MotEx's "
                       "'index Rw mask bits' rows, or a CSV with a header); steps 3-4 only"))
    bond_threshold: float = field(
        default=2.6, metadata=_spec("float", "bond length (Å) keeping non-permuted atoms",
                                    exclusive_min=0.0, maximum=10.0)
    )
    catalogue: CatalogueConfig = CatalogueConfig()
    pdf: PDFConfig = PDFConfig()
    fit: FitConfig = FitConfig()
    learn: LearnConfig = LearnConfig()
    extract: ExtractConfig = ExtractConfig()
    exact: ExactConfig = ExactConfig()
    frames: FramesConfig = FramesConfig()
    output: OutputConfig = OutputConfig()
    source: str = field(default="", compare=False, metadata={"internal": True})
    #: The folder that relative paths of ``source`` resolve against (the config file's).
    base: Path | None = field(default=None, compare=False, metadata={"internal": True})
    #: ``structure:`` beyond its file: the cut, partial occupancy, tolerance.
    model: StructureSpec = field(default=StructureSpec(), metadata={"internal": True})
    #: The keys the YAML gave (dotted: ``pdf.qmax``); the others are defaults, or come
    #: from the files (:func:`mlmotex_hpc.io.defaults.with_file_defaults`).
    given: frozenset = field(default=frozenset(), compare=False, metadata={"internal": True})
    #: Where the values that did not come from the YAML came from: (key, source) pairs;
    #: and the warnings that resolving them raised (a config that contradicts a header).
    origins: tuple = field(default=(), compare=False, metadata={"internal": True})
    notes: tuple = field(default=(), compare=False, metadata={"internal": True})

    @property
    def uiso(self) -> dict[str, float]:
        return dict(self.pdf.uiso)


_SECTIONS = {
    "catalogue": CatalogueConfig,
    "pdf": PDFConfig,
    "fit": FitConfig,
    "learn": LearnConfig,
    "extract": ExtractConfig,
    "exact": ExactConfig,
    "frames": FramesConfig,
    "output": OutputConfig,
    "screen": ScreenSection,
}


def _fail(key: str, value: Any, allowed: str) -> InputError:
    shown = repr(value) if not isinstance(value, Path) else str(value)
    return InputError(f"config key '{key}' = {shown}: {allowed}")


#: A number in exponent form without a decimal point (``1e6``): YAML 1.2 and every user
#: read it as a number, PyYAML (YAML 1.1) as a string.
_EXPONENT_FORM = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)[eE][+-]?\d+$")


def _number(key: str, value: Any, meta: dict[str, Any], integer: bool) -> float | int:
    kind = "an integer" if integer else "a number"
    if isinstance(value, str) and _EXPONENT_FORM.match(value.strip()):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(key, value, f"expected {kind} ({meta['doc']})")
    if integer and not (isinstance(value, int) or float(value).is_integer()):
        raise _fail(key, value, f"expected {kind} ({meta['doc']})")
    if not math.isfinite(value):
        raise _fail(key, value, f"expected a finite number ({meta['doc']})")
    if "minimum" in meta and value < meta["minimum"]:
        raise _fail(key, value, f"must be ≥ {meta['minimum']} ({meta['doc']})")
    if "exclusive_min" in meta and value <= meta["exclusive_min"]:
        raise _fail(key, value, f"must be > {meta['exclusive_min']} ({meta['doc']})")
    if "maximum" in meta and value > meta["maximum"]:
        raise _fail(key, value, f"must be ≤ {meta['maximum']} ({meta['doc']})")
    return int(value) if integer else float(value)


def _natural_key(path: Path) -> list[Any]:
    """Sort key that orders frame_2 before frame_10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _readable_file(key: str, value: Any, base: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise _fail(key, value, "expected a file path")
    path = (base / value).expanduser().resolve()
    if not path.is_file():
        raise _fail(key, value, f"no such file ({path})")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise _fail(key, value, f"cannot read the file ({exc.strerror})") from None
    return path


def _convert(key: str, value: Any, meta: dict[str, Any], base: Path) -> Any:
    """Check one value against its field's metadata and convert it."""
    kind = meta["kind"]
    if kind in ("int", "float"):
        return _number(key, value, meta, integer=kind == "int")
    if kind == "float?":
        return None if value is None else _number(key, value, meta, integer=False)
    if kind == "int?":
        return None if value is None else _number(key, value, meta, integer=True)
    if kind == "size":
        if isinstance(value, str) and value.strip().lower() == "all":
            return ALL_MOTIFS
        return _number(key, value, {**meta, "doc": meta["doc"]}, integer=True)
    if kind == "bool":
        if not isinstance(value, bool):
            raise _fail(key, value, f"expected true or false ({meta['doc']})")
        return value
    if kind == "choice":
        if value not in meta["choices"]:
            raise _fail(key, value, f"expected one of {', '.join(meta['choices'])}")
        return value
    if kind == "file":
        return None if value is None else _readable_file(key, value, base)
    if kind == "files":
        items = value if isinstance(value, list) else [value]
        paths: list[Path] = []
        for item in items:
            if isinstance(item, str) and any(ch in item for ch in "*?["):
                matches = sorted((Path(p) for p in glob.glob(str(base / item))), key=_natural_key)
                if not matches:
                    raise _fail(key, item, "the pattern matches no file")
                paths += [_readable_file(key, str(p), base) for p in matches]
            else:
                paths.append(_readable_file(key, item, base))
        if not paths:
            raise _fail(key, value, "expected at least one data file")
        seen: dict[Path, int] = {}
        for k, p in enumerate(paths):
            if p in seen:
                raise _fail(key, value, f"names {p.name} twice (frames {seen[p]} and {k}): "
                                        "each data file is one frame")
            seen[p] = k
        return tuple(paths)
    if kind == "str":
        if not isinstance(value, str) or not value.strip():
            raise _fail(key, value, f"expected a text ({meta['doc']})")
        return value.strip()
    if kind == "times":
        return _frame_times(key, value, base)
    if kind == "dir":
        if not isinstance(value, str) or not value.strip():
            raise _fail(key, value, "expected a folder path")
        return (base / value).expanduser().resolve()
    if kind == "elements?" and value is None:
        return None
    if kind == "radii":
        if isinstance(value, str) and value.strip().lower() == "auto":
            return None
        items = [value] if isinstance(value, int | float) and not isinstance(value, bool) \
            else value
        if (not isinstance(items, list) or not items
                or not all(isinstance(v, int | float) and not isinstance(v, bool)
                           and 0 < v <= 100 for v in items)):
            raise _fail(key, value, "expected auto, or radii in Å (0 < r <= 100), e.g. "
                                    "[5.5, 6.5]")
        return tuple(sorted({float(v) for v in items}))
    if kind == "margin":
        if isinstance(value, str) and value.strip().lower() == "auto":
            return None
        if not (isinstance(value, int | float) and not isinstance(value, bool)
                and 0 <= value <= 100):
            raise _fail(key, value, "expected auto, or a margin in Å (0 <= m <= 100)")
        return float(value)
    if kind == "templates":
        items = [value] if isinstance(value, str) else value
        if (not isinstance(items, list) or not items
                or not all(isinstance(v, str) and v.strip() for v in items)):
            raise _fail(key, value, "expected a structure file, a glob pattern or a folder, "
                                    "or a list of them")
        return tuple(v.strip() for v in items)
    if kind in ("elements", "elements?"):
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items or not all(isinstance(e, str) for e in items):
            raise _fail(key, value, "expected a list of element symbols, e.g. [W]")
        return tuple(dict.fromkeys(e.strip().capitalize() for e in items))
    if kind == "names":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or any(v not in meta["choices"] for v in items):
            raise _fail(key, value, f"expected a list drawn from {', '.join(meta['choices'])}")
        if "scale" not in items:
            raise _fail(key, value, "the scale factor is always refined: include 'scale'")
        return tuple(dict.fromkeys(items))
    if kind == "bounds":
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
            or not ZOOM_LIMITS[0] <= value[0] <= 1 <= value[1] <= ZOOM_LIMITS[1]
        ):
            raise _fail(
                key, value, f"expected [low, high] with {ZOOM_LIMITS[0]} ≤ low ≤ 1 ≤ high ≤ "
                f"{ZOOM_LIMITS[1]}, e.g. [0.99, 1.01] (a zoom expands the whole motif)"
            )
        return (float(value[0]), float(value[1]))
    if kind == "range":
        lo, hi = meta["limits"]
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
            or not lo <= value[0] < value[1] <= hi
        ):
            raise _fail(key, value, f"expected [low, high] with {lo} ≤ low < high ≤ {hi} "
                        f"({meta['doc']})")
        return (float(value[0]), float(value[1]))
    if kind == "uiso":
        if not isinstance(value, dict):
            raise _fail(key, value, "expected a mapping element: Uiso in Å², e.g. {W: 0.005}")
        out = []
        for element, u in value.items():
            limits = {"doc": f"Uiso of {element} (Å²)", "minimum": 0.0}
            out.append((str(element).capitalize(), _number(f"{key}.{element}", u, limits, False)))
        return tuple(out)
    if kind == "params":
        if not isinstance(value, dict):
            raise _fail(key, value, "expected a mapping of XGBoost parameters, e.g. {max_depth: 4}")
        return tuple(sorted(value.items()))
    raise AssertionError(f"unknown field kind {kind}")


def _frame_times(key: str, value: Any, base: Path) -> tuple[float, ...] | None:
    """``frames.time``: a list of numbers, or a column of a CSV file with a header row."""
    if value is None:
        return None
    if isinstance(value, dict):
        unknown = [k for k in value if k not in ("file", "column")]
        if unknown or "file" not in value or "column" not in value:
            raise _fail(key, value, "expected {file: times.csv, column: <header name or "
                        "0-based index>}")
        path = _readable_file(f"{key}.file", value["file"], base)
        column = value["column"]
        try:  # utf-8-sig: a byte-order mark is not part of the first column's name
            text = path.read_text(encoding="utf-8-sig")
            first = text.splitlines()[0] if text.strip() else ""
            delimiter = next((d for d in (",", "\t", ";") if d in first), ",")
            rows = [row for row in csv.reader(text.splitlines(), delimiter=delimiter)
                    if row and any(c.strip() for c in row)]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise _fail(f"{key}.file", value["file"], f"cannot read it as CSV ({exc})") from None
        if not rows:
            raise _fail(f"{key}.file", value["file"], "the file is empty")
        header = [c.strip() for c in rows[0]]
        if isinstance(column, int) and not isinstance(column, bool):
            index = column
            if not 0 <= index < len(header):
                raise _fail(f"{key}.column", column,
                            f"{path.name} has {len(header)} columns (0-based index)")
        elif isinstance(column, str) and column.strip() in header:
            index = header.index(column.strip())
        else:
            raise _fail(f"{key}.column", column, f"no such column in {path.name} "
                        f"(its header: {', '.join(header)})")
        items = []
        for line, row in enumerate(rows[1:], start=2):
            try:
                items.append(float(row[index]))
            except (IndexError, ValueError):
                raise _fail(f"{key}.file", value["file"],
                            f"line {line} has no number in column {column!r}") from None
    elif isinstance(value, list):
        items = value
    else:
        raise _fail(key, value, "expected a list of times, or {file: times.csv, column: t}")
    limits = {"doc": "a frame's time"}
    return tuple(float(_number(f"{key}[{i}]", v, limits, False)) for i, v in enumerate(items))


def _build(cls: type, raw: Any, prefix: str, base: Path) -> Any:
    """Build the dataclass ``cls`` from the mapping ``raw``, checking every key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _fail(prefix.rstrip("."), raw, "expected a mapping of keys")
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = [k for k in raw if k not in fields]
    if unknown:
        allowed = ", ".join(fields)
        raise InputError(f"unknown config key '{prefix}{unknown[0]}': allowed keys are {allowed}")
    values = {}
    for name, f in fields.items():
        key = prefix + name
        if name in _SECTIONS and prefix == "":
            values[name] = _build(_SECTIONS[name], raw.get(name), f"{name}.", base)
        elif name == "structure" and prefix == "" and name in raw:
            values["structure"], values["model"] = _structure_spec(key, raw[name], base)
        elif name in raw:
            values[name] = _convert(key, raw[name], f.metadata, base)
        elif f.default is dataclasses.MISSING:
            raise InputError(f"config key '{key}' is missing: {f.metadata['doc']}")
    return cls(**values)


def _check_consistency(config: Config) -> None:
    """Relations between keys that single-key checks cannot see."""
    if bool(config.data) == (config.fits is not None):
        raise InputError("config: give either 'data' (PDF files to fit) or 'fits' (a table "
                         "of fits made elsewhere)" + (", not both" if config.data else ""))
    if config.fits is not None:
        if config.catalogue.strategy == "adaptive":
            raise _fail("catalogue.strategy", "adaptive", "needs data to fit; a fits table "
                        "is learned from as it is (use strategy: random)")
        if config.catalogue.masks_file is not None:
            raise _fail("catalogue.masks_file", str(config.catalogue.masks_file),
                        "a fits table lists its own motifs: remove masks_file")
    if config.pdf.uiso and config.pdf.biso:
        raise _fail("pdf.biso", dict(config.pdf.biso), "give Uiso (pdf.uiso) or Biso "
                    "(pdf.biso), not both")
    if config.pdf.qmax <= config.pdf.qmin:
        raise _fail("pdf.qmax", config.pdf.qmax, f"must exceed pdf.qmin = {config.pdf.qmin}")
    if config.fit.rmax <= config.fit.rmin:
        raise _fail("fit.rmax", config.fit.rmax, f"must exceed fit.rmin = {config.fit.rmin}")
    times = config.frames.time
    if times is not None and len(times) != len(config.data):
        raise _fail("frames.time", f"{len(times)} times",
                    f"expected one time per data file ({len(config.data)} frames)")
    if config.catalogue.strategy == "adaptive":
        if config.catalogue.masks_file is not None:
            raise _fail("catalogue.strategy", "adaptive", "cannot be combined with "
                        "catalogue.masks_file (that file lists every motif to fit)")
        if len(config.data) > 1:
            raise _fail("catalogue.strategy", "adaptive", f"is for one data set; this config "
                        f"has {len(config.data)} frames (use strategy: random for a series)")
    if (config.catalogue.masks_file is None and config.fits is None
            and config.catalogue.size < 10):
        raise _fail("catalogue.size", config.catalogue.size,
                    "need at least 10 motifs to learn from")


def parse_config(text: str, base: Path, name: str = "<config>") -> Config:
    """Build a :class:`Config` from YAML text; relative paths resolve against ``base``."""
    try:
        raw = yaml.safe_load(text)
    except RecursionError:
        raise InputError(f"config {name}: nested too deeply to be a config") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise InputError(f"config {name}{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise InputError(f"config {name}: expected a mapping of keys at the top level")
    config = _build(Config, raw, "", base)
    given = frozenset(
        [k for k in raw if k not in _SECTIONS]
        + [f"{k}.{sub}" for k in _SECTIONS if isinstance(raw.get(k), dict) for sub in raw[k]])
    config = dataclasses.replace(config, source=text, base=Path(base).resolve(), given=given)
    _check_consistency(config)
    if "output.dir" not in given:  # the default too is relative to the config's folder
        config = dataclasses.replace(config, output=dataclasses.replace(
            config.output, dir=(config.base / config.output.dir).resolve()))
    if config.pdf.biso:  # one representation downstream: Uiso
        pdf = dataclasses.replace(config.pdf, uiso=tuple(
            (el, uiso_from_biso(b)) for el, b in config.pdf.biso))
        config = dataclasses.replace(config, pdf=pdf)
    return config


def parse_screen_config(text: str, base: Path, name: str = "<config>") -> ScreenConfig:
    """Build a :class:`ScreenConfig` from YAML text; relative paths resolve against
    ``base`` (the templates are found later, by
    :func:`mlmotex_hpc.candidates.template_files`)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"config {name}{where}: "
                         f"{getattr(exc, 'problem', None) or 'not valid YAML'}") from None
    if not isinstance(raw, dict):
        raise InputError(f"config {name}: expected a mapping of keys at the top level")
    if "structure" in raw:
        raise InputError(f"config {name}: a screen ranks 'templates', it has no 'structure' "
                         "(give the files, globs or folders to screen as templates)")
    sc = _build(ScreenConfig, raw, "", base)
    if sc.pdf.qmax <= sc.pdf.qmin:
        raise _fail("pdf.qmax", sc.pdf.qmax, f"must exceed pdf.qmin = {sc.pdf.qmin}")
    if sc.fit.rmax <= sc.fit.rmin:
        raise _fail("fit.rmax", sc.fit.rmax, f"must exceed fit.rmin = {sc.fit.rmin}")
    if sc.pdf.uiso and sc.pdf.biso:
        raise _fail("pdf.biso", dict(sc.pdf.biso), "give Uiso (pdf.uiso) or Biso "
                    "(pdf.biso), not both")
    base = Path(base).resolve()
    output = sc.output if "output" in raw and isinstance(raw["output"], dict) \
        and "dir" in raw["output"] else dataclasses.replace(
            sc.output, dir=(base / sc.output.dir).resolve())
    pdf = sc.pdf
    if pdf.biso:
        pdf = dataclasses.replace(pdf, uiso=tuple((el, uiso_from_biso(b)) for el, b in pdf.biso))
    return dataclasses.replace(sc, source=text, base=base, output=output, pdf=pdf)


def candidate_config(sc: ScreenConfig, structure: Path, permute: tuple[str, ...]) -> Config:
    """The run config of one candidate of a screen: its structure file and permuted
    elements with the screen's data and sections (what scoring and extraction use)."""
    return Config(structure=Path(structure), permute=tuple(permute), data=sc.data,
                  bond_threshold=sc.bond_threshold, catalogue=sc.catalogue, pdf=sc.pdf,
                  fit=sc.fit, learn=sc.learn, extract=sc.extract, output=sc.output,
                  base=sc.base)


def _config_text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise InputError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read config file {path}: {exc}") from None


def load_screen_config(path: str | Path) -> ScreenConfig:
    """Read and validate a screen's YAML config file."""
    path = Path(path)
    return parse_screen_config(_config_text(path), path.resolve().parent, str(path))


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file."""
    path = Path(path)
    return parse_config(_config_text(path), path.resolve().parent, str(path))


def exhaustive(config: Config, n_permutable: int) -> bool:
    """Whether the run fits every non-empty motif: ``catalogue.size`` reaches 2^N - 1
    (or is ``all``) and no masks file lists the motifs."""
    return (config.catalogue.masks_file is None and n_permutable < 63
            and config.catalogue.size >= 2**n_permutable - 1)


def extract_reserve(config: Config, n_permutable: int) -> int:
    """Fits of ``catalogue.size`` kept for the extract stage (connected pieces and
    polishing): ``extract.polish_fits``, by default min(10 N, size / 5); none when the
    stage needs no fit (neither polishing nor connected pieces) or the catalogue lists
    every motif (each one the stage could ask for is fitted already)."""
    ex = config.extract
    if not (ex.polish or ex.connected):
        return 0
    size = config.catalogue.size
    if exhaustive(config, n_permutable):
        return 0
    if ex.polish_fits is not None:
        return ex.polish_fits
    return min(10 * n_permutable, size // 5)


def pdf_settings(config: Config):
    """The calculator settings (:class:`~mlmotex_hpc.pdf.PDFSettings`) of a config.

    The ``pdf`` section and ``PDFSettings`` share their field names, so every field of
    the settings is read by name: a renamed field fails here rather than silently.
    """
    from .pdf.settings import PDFSettings

    return PDFSettings(
        **{f.name: getattr(config.pdf, f.name) for f in dataclasses.fields(PDFSettings)}
    )


def zoom_search(config: Config) -> str:
    """The zoom search of the batch fitter, ``exact`` or ``shared``: the one place that
    resolves ``fit.zoom_search: auto``, by the run's frame count (not a work unit's), so
    a frame's fit does not depend on how the frames are blocked."""
    search = config.fit.zoom_search
    if search == "auto":
        search = "shared" if len(config.data) >= SHARED_MIN_FRAMES else "exact"
    return search


def select_frames(config: Config, spec: str) -> tuple[Config, tuple[int, int]]:
    """The config restricted to some frames of its series, for one task of a job array;
    and the range ``(start, stop)`` selected.

    ``spec`` is ``START:STOP`` (0-based, STOP excluded, either may be omitted) or ``I/N``:
    the I-th (0-based) of N contiguous blocks of near-equal size, as a job array's task I
    of N takes them without knowing how many frames the series has.
    """
    n = len(config.data)
    text = (spec or "").strip()
    if match := re.fullmatch(r"(\d+)\s*/\s*(\d+)", text):
        task, tasks = int(match[1]), int(match[2])
        if tasks == 0 or task >= tasks:
            raise InputError(f"--frames {spec!r}: block I/N needs 0 <= I < N")
        if tasks > n:
            raise InputError(f"--frames {spec!r}: {tasks} blocks of a series of {n} frames; "
                             f"use at most {n} tasks")
        start, stop = task * n // tasks, (task + 1) * n // tasks
    elif match := re.fullmatch(r"(\d*)\s*:\s*(\d*)", text):
        start = int(match[1]) if match[1] else 0
        stop = min(n, int(match[2])) if match[2] else n
    else:
        raise InputError(f"--frames {spec!r}: expected START:STOP (0-based, STOP excluded, "
                         "e.g. 0:50) or I/N (block I of N, e.g. 3/8)")
    if start >= stop:
        raise InputError(f"--frames {spec!r}: selects no frame (the series has {n} frames, "
                         f"0 to {n - 1})")
    times = config.frames.time
    frames = dataclasses.replace(
        config.frames, time=None if times is None else times[start:stop]
    )
    # "auto" is decided by the whole series, as a full run would decide it
    fit = dataclasses.replace(config.fit, zoom_search=zoom_search(config))
    notes = config.notes
    lc = config.learn
    if stop - start < n and lc.series_search == "shared" and not lc.params \
            and lc.search_iterations > 0:
        notes += (f"--frames {spec}: the series' one hyperparameter search runs in each "
                  "task on the task's own frames, so after merge the learning of some "
                  "frames differs from a single run's; for a merge identical to one run, "
                  "fix the hyperparameters (learn.params)",)
    return dataclasses.replace(config, data=config.data[start:stop], frames=frames,
                               fit=fit, notes=notes), (start, stop)
