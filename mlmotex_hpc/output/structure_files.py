"""Structure files a chemist opens: VESTA (``.vesta``) and CrystalMaker (``.cmtx``).

Atoms are drawn with per-atom colours so a motif can be seen at a glance.

Colour convention
-----------------
:func:`contribution_colours` turns atom contribution values into colours with a diverging
map (matplotlib's ``RdBu_r``) centred on zero and scaled symmetrically by the largest
``|value|``, so a value of 0 is exactly the map's neutral middle (near white, #f7f7f7):

* **negative** values are **blue**: removing the atom raises Rw, so its presence lowers
  Rw: the atom belongs to the motif;
* **positive** values are **red**: the fit is better without the atom;
* atoms that were not permuted, and atoms whose value is NaN, are a neutral grey
  (:data:`NEUTRAL_GREY`), distinct from the near-white of a zero value;
* atoms labelled ``uncertain`` (the ACV within ``extract.label_z`` standard errors of
  zero) are drawn pale: their colour :data:`PALE` of the way to white.

Colour scales differ by file format, and each file uses one scale throughout: ``.vesta``
files hold integers 0–255 in every colour field, ``.cmtx`` files hold fractions 0–1.

Element styles
--------------
Radii (Å) and element colours come from ``bonding.txt`` beside this module, the element
table of the original ML-MotEx (A. S. Anker, E. T. S. Kjær et al., Apache-2.0; see
``mlmotex_hpc/examples/NOTICE.md``). Elements missing from it (Md, No, Lr and everything
heavier) get periodictable's covalent radius when it has one, else
:data:`FALLBACK_RADIUS`, and the grey :data:`FALLBACK_RGB`.

Both writers describe a finite cluster, not a crystal; see :func:`write_vesta` and
:func:`write_cmtx` for the layout of each file. :func:`read_vesta` and :func:`read_cmtx`
read back what the writers produce, for round-trip checks; they are not general readers
of either format.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import periodictable

from ..io.structure import Structure, site_labels

__all__ = [
    "BOND_FACTOR",
    "FALLBACK_RADIUS",
    "FALLBACK_RGB",
    "NEUTRAL_GREY",
    "PALE",
    "bond_table",
    "contribution_colours",
    "element_style",
    "read_cmtx",
    "read_vesta",
    "write_cmtx",
    "write_vesta",
]

#: Colour (RGB, 0–1) of atoms without a contribution value: not permuted, or NaN.
NEUTRAL_GREY = (0.75, 0.75, 0.75)
#: Radius (Å) of an element that neither bonding.txt nor periodictable gives one for.
FALLBACK_RADIUS = 1.5
#: Colour (RGB, 0–1) of an element missing from bonding.txt.
FALLBACK_RGB = (0.5, 0.5, 0.5)
#: Default bond search: two atoms are bonded up to BOND_FACTOR × (radius_A + radius_B).
BOND_FACTOR = 1.15

#: How far toward white an uncertain atom's colour is drawn (0: not at all, 1: white).
PALE = 0.6
#: Diverging colour map of :func:`contribution_colours` (low = blue, high = red).
_CMAP = "RdBu_r"
#: Odd number of samples, so t = 0.5 lands on the map's exact middle colour.
_CMAP_SAMPLES = 1025

#: Non-metals and metalloids. A default bond needs at least one of these, so metal–metal
#: contacts (Keggin W–W at 3.3–3.7 Å is under 1.15 × 2 × 1.62 Å) are not drawn as bonds.
_NON_METALS = frozenset(
    "H He B C N O F Ne Si P S Cl Ar Ge As Se Br Kr Sb Te I Xe At Rn D".split()
)

#: Every float written goes through these formats; the leading space keeps a wide or
#: negative number from gluing onto the field before it (the original tool's bug).
_COORD = " {:12.6f}"
_FRAC01 = " {:8.6f}"


# --------------------------------------------------------------------------- elements


def _normalise_symbol(symbol: str) -> str:
    symbol = str(symbol).strip()
    return symbol[:1].upper() + symbol[1:].lower()


@functools.lru_cache(maxsize=1)
def _bonding_table() -> dict[str, tuple[float, tuple[float, float, float]]]:
    """bonding.txt as ``{symbol: (radius_Å, (r, g, b))}``."""
    text = resources.files(__package__).joinpath("bonding.txt").read_text()
    table = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 5:
            continue
        symbol, radius, r, g, b = fields
        table[symbol] = (float(radius), (float(r), float(g), float(b)))
    return table


def element_style(symbol: str) -> tuple[float, tuple[float, float, float]]:
    """Drawing radius and colour of an element.

    Parameters
    ----------
    symbol : str
        Element symbol, any capitalisation (``"W"``, ``"fe"``); ``"D"`` for deuterium.

    Returns
    -------
    radius : float
        Radius in Å (the covalent radius bonding.txt lists).
    rgb : tuple of float
        Colour, each channel in 0–1.

    Raises
    ------
    ValueError
        When ``symbol`` is not an element periodictable knows.

    Notes
    -----
    Elements missing from bonding.txt get periodictable's ``covalent_radius`` when it
    has one, else :data:`FALLBACK_RADIUS`, and the colour :data:`FALLBACK_RGB`.
    """
    name = _normalise_symbol(symbol)
    table = _bonding_table()
    if name in table:
        return table[name]
    element = getattr(periodictable, name, None) if name.isalpha() else None
    if not isinstance(element, periodictable.core.Element) or element.number < 1:
        raise ValueError(f"unknown element symbol {symbol!r}")
    radius = getattr(element, "covalent_radius", None)
    if radius is None or not math.isfinite(radius) or radius <= 0:
        radius = FALLBACK_RADIUS
    return float(radius), FALLBACK_RGB


def bond_table(
    elements: Sequence[str],
    bond_pairs: Mapping[tuple[str, str], float] | None = None,
) -> list[tuple[str, str, float]]:
    """The bond search written to the files: element pairs and their maximum length.

    Parameters
    ----------
    elements : sequence of str
        Element symbols of the structure (repeats are fine).
    bond_pairs : mapping, optional
        ``{(A, B): max_length_Å}``. When given, exactly these pairs are used (the order
        within a pair does not matter). When None, every pair of elements present with
        at least one non-metal or metalloid is bonded up to
        ``BOND_FACTOR * (radius_A + radius_B)`` (radii from :func:`element_style`);
        metal–metal pairs are left out.

    Returns
    -------
    list of (str, str, float)
        ``(A, B, max_length_Å)`` with ``A <= B``, sorted.

    Raises
    ------
    ValueError
        On an unknown element or a maximum length that is not a positive number.
    """
    table: dict[tuple[str, str], float] = {}
    if bond_pairs is None:
        present = sorted({_normalise_symbol(e) for e in elements})
        for i, a in enumerate(present):
            for b in present[i:]:
                if a in _NON_METALS or b in _NON_METALS:
                    table[(a, b)] = BOND_FACTOR * (element_style(a)[0] + element_style(b)[0])
    else:
        for pair, length in bond_pairs.items():
            a, b = sorted(_normalise_symbol(s) for s in pair)
            for symbol in (a, b):
                element_style(symbol)  # raises on an unknown symbol
            length = float(length)
            if not math.isfinite(length) or length <= 0:
                raise ValueError(f"bond length for {a}-{b} must be positive (Å), got {length}")
            table[(a, b)] = length
    return [(a, b, table[(a, b)]) for a, b in sorted(table)]


# ---------------------------------------------------------------------------- colours


def contribution_colours(
    values: Sequence[float] | np.ndarray,
    n_atoms: int,
    permutable_indices: Sequence[int] | np.ndarray,
    pale: Sequence[bool] | np.ndarray | None = None,
) -> np.ndarray:
    """Per-atom colours from atom contribution values (see the module docstring).

    Parameters
    ----------
    values : array_like, shape (k,)
        Contribution value of each permutable atom (change of Rw); ``values[j]`` belongs
        to atom ``permutable_indices[j]``. NaN marks an atom without a value.
    n_atoms : int
        Number of atoms in the structure.
    permutable_indices : array_like of int, shape (k,)
        0-based indices of the permutable atoms, unique, each in ``[0, n_atoms)``.
    pale : array_like of bool, shape (k,), optional
        Atoms drawn pale (their colour :data:`PALE` of the way to white): the atoms
        labelled ``uncertain``.

    Returns
    -------
    ndarray, shape (n_atoms, 3)
        RGB in 0–1. Permutable atoms: ``RdBu_r`` at ``0.5 + 0.5 * value / max|value|``
        (negative blue, zero the near-white middle, positive red); others and NaN: grey.

    Raises
    ------
    ValueError
        When the lengths differ or an index is out of range or repeated.
    """
    import matplotlib

    values = np.asarray(values, dtype=float).reshape(-1)
    indices = np.asarray(permutable_indices).reshape(-1)
    if values.size != indices.size:
        raise ValueError(
            f"{values.size} contribution values for {indices.size} permutable atoms"
        )
    if indices.size and not np.issubdtype(indices.dtype, np.integer):
        raise ValueError("permutable_indices must be integers")
    if indices.size and (indices.min() < 0 or indices.max() >= n_atoms):
        raise ValueError(f"permutable_indices must lie in [0, {n_atoms})")
    if np.unique(indices).size != indices.size:
        raise ValueError("permutable_indices has repeated atoms")

    colours = np.tile(np.asarray(NEUTRAL_GREY, dtype=float), (n_atoms, 1))
    finite = np.isfinite(values)
    if not finite.any():
        return colours
    scale = np.max(np.abs(values[finite]))
    # Symmetric scaling: -v and +v sit at mirror positions around the middle.
    t = 0.5 + 0.5 * values[finite] / scale if scale > 0 else np.full(finite.sum(), 0.5)
    cmap = matplotlib.colormaps[_CMAP].resampled(_CMAP_SAMPLES)
    colours[indices[finite]] = cmap(t)[:, :3]
    if pale is not None:
        pale = np.asarray(pale, dtype=bool).reshape(-1)
        if pale.size != indices.size:
            raise ValueError(f"{pale.size} pale flags for {indices.size} permutable atoms")
        rows = indices[pale & finite]
        colours[rows] += PALE * (1.0 - colours[rows])
    return colours


def _atom_colours(structure: Structure, colours) -> np.ndarray:
    """Validated (n, 3) colours in 0–1; None or NaN rows take the element colour."""
    n = len(structure)
    element_rgb = np.array([element_style(e)[1] for e in structure.elements], dtype=float)
    if colours is None:
        return element_rgb.reshape(n, 3)
    colours = np.array(colours, dtype=float)
    if colours.shape != (n, 3):
        raise ValueError(f"colours must have shape ({n}, 3), got {colours.shape}")
    missing = np.isnan(colours).any(axis=1)
    colours[missing] = element_rgb[missing]
    if not np.all((colours >= 0) & (colours <= 1)):
        raise ValueError("colours must be RGB fractions in 0–1")
    return colours


def _to_255(rgb: np.ndarray) -> list[int]:
    return [int(v) for v in np.clip(np.rint(np.asarray(rgb) * 255), 0, 255)]


def _one_line(text: str, default: str) -> str:
    text = " ".join(str(text).split())
    return text or default


def _check_structure(structure: Structure) -> None:
    if len(structure) == 0:
        raise ValueError("cannot write a structure without atoms")
    xyz = np.asarray(structure.xyz, dtype=float)
    if xyz.shape != (len(structure), 3) or not np.all(np.isfinite(xyz)):
        raise ValueError("structure.xyz must be finite (n, 3) Cartesian coordinates (Å)")


# ------------------------------------------------------------------------------ VESTA

#: A VESTA "cell" of 1 Å edges: fractional coordinates equal Cartesian ones in Å.
_VESTA_UNIT_CELL = (1.0, 1.0, 1.0, 90.0, 90.0, 90.0)

_VESTA_IDENTITY_4 = [
    " 1.000000  0.000000  0.000000  0.000000",
    " 0.000000  1.000000  0.000000  0.000000",
    " 0.000000  0.000000  1.000000  0.000000",
    " 0.000000  0.000000  0.000000  1.000000",
]


def _vesta_light(name: str, on: bool) -> list[str]:
    colours = (
        ["  26  26  26 255", " 179 179 179 255", " 255 255 255 255"]
        if on
        else ["   0   0   0   0"] * 3
    )
    return [
        name,
        *_VESTA_IDENTITY_4,
        " 0.000000  0.000000 20.000000  0.000000",
        " 0.000000  0.000000 -1.000000",
        *colours,
    ]


def write_vesta(
    path: str | Path,
    structure: Structure,
    colours: np.ndarray | None = None,
    title: str = "",
    bond_pairs: Mapping[tuple[str, str], float] | None = None,
) -> Path:
    """Write a finite cluster as a VESTA 3 file (format version 3.5.4).

    Parameters
    ----------
    path : str or Path
        Output file, conventionally ``*.vesta``.
    structure : Structure
        Elements and Cartesian coordinates (Å).
    colours : array_like, shape (n, 3), optional
        Per-atom RGB in 0–1, e.g. from :func:`contribution_colours`. Rows of NaN, or
        None for all atoms, take the element colour of bonding.txt.
    title : str
        One-line title (newlines are folded); defaults to the structure's comment.
    bond_pairs : mapping, optional
        ``{(A, B): max_length_Å}`` bond search; default as in :func:`bond_table`.

    Returns
    -------
    Path
        The file written.

    Notes
    -----
    The file is a ``MOLECULE`` phase, the kind VESTA makes of an ``.xyz`` file: space
    group P 1 and a placeholder "cell" with 1 Å edges and 90° angles, so the STRUC
    coordinates are the Cartesian coordinates in Å, unchanged (no offset, no box). That
    reads the same whether or not VESTA applies the cell to molecule coordinates.

    Every section VESTA writes is present, in VESTA's order, with VESTA's defaults where
    this module has nothing to say. Atom ``i`` (0-based) is site ``i + 1`` with the
    unique label element + ``i + 1`` (``W1``, ``O2``, …); its colour and radius are set
    per site in SITET, so each atom keeps its own colour. ATOMT holds the element
    defaults. All colour fields are integers 0–255 (``round(255 × fraction)``). Bonds are
    SBOND element-pair searches from 0 Å to the pair's maximum length. U_iso, which the
    model does not have, is written as a 0.05 Å² placeholder (only used for ellipsoids).
    """
    _check_structure(structure)
    path = Path(path)
    rgb = _atom_colours(structure, colours)
    labels = site_labels(structure.elements)
    xyz = np.asarray(structure.xyz, dtype=float)
    species = list(dict.fromkeys(structure.elements))

    out = ["#VESTA_FORMAT_VERSION 3.5.4", "", "", "MOLECULE", ""]
    out += ["TITLE", _one_line(title or structure.comment, "New structure"), ""]
    out += [
        "GROUP",
        "1 1 P 1",
        "SYMOP",
        " 0.000000  0.000000  0.000000  1  0  0   0  1  0   0  0  1   1",
        " -1.0 -1.0 -1.0  0 0 0  0 0 0  0 0 0",
        "TRANM 0",
        " 0.000000  0.000000  0.000000  1  0  0   0  1  0   0  0  1",
        "LTRANSL",
        " -1",
        " 0.000000  0.000000  0.000000  0.000000  0.000000  0.000000",
        "LORIENT",
        " -1   0   0   0   0",
        " 1.000000  0.000000  0.000000  1.000000  0.000000  0.000000",
        " 0.000000  0.000000  1.000000  0.000000  0.000000  1.000000",
        "LMATRIX",
        *_VESTA_IDENTITY_4,
        " 0.000000  0.000000  0.000000",
        "CELLP",
        "".join(f" {v:10.6f}" for v in _VESTA_UNIT_CELL),
        " 0.000000" * 6,
    ]

    out.append("STRUC")
    atoms = zip(structure.elements, labels, xyz, strict=True)
    for i, (el, label, (x, y, z)) in enumerate(atoms, 1):
        coords = (_COORD * 3).format(x, y, z)
        out.append(f"{i:4d} {el:<2s} {label:>8s}  1.0000{coords}    1a       1")
        out.append((_COORD * 3).format(0.0, 0.0, 0.0) + "  0.00")
    out.append("  0 0 0 0 0 0 0")

    out.append("THERI 1")
    out += [f"{i:4d} {label:>8s}  0.050000" for i, label in enumerate(labels, 1)]
    out.append("  0 0 0")
    out += ["SHAPE", "  0       0       0       0   0.000000  0   192   192   192   192"]
    out += ["BOUND", "       0        1         0        1         0        1"]
    out.append("  0   0   0   0  0")

    # SBOND fields: index A1 A2 min max search(0: A2 bonded to A1) boundary(1: VESTA's
    # default) polyhedra(0) by-label(0) style(1: bicolour cylinder) radius width R G B.
    out.append("SBOND")
    for i, (a, b, length) in enumerate(bond_table(structure.elements, bond_pairs), 1):
        out.append(
            f"{i:4d} {a:>4s} {b:>4s} {0.0:10.5f} {length:10.5f}"
            "  0  1  0  0  1  0.250  2.000 127 127 127"
        )
    out.append("  0 0 0 0")

    out.append("SITET")
    for i, (el, label, colour) in enumerate(zip(structure.elements, labels, rgb, strict=True), 1):
        r, g, b = _to_255(colour)
        radius = element_style(el)[0]
        out.append(
            f"{i:4d} {label:>8s} {radius:7.4f} {r:3d} {g:3d} {b:3d} {r:3d} {g:3d} {b:3d} 204  0"
        )
    out.append("  0 0 0 0 0 0")

    out += ["VECTR", " 0 0 0 0 0", "VECTT", " 0 0 0 0 0", "SPLAN", "  0   0   0   0"]
    out += ["LBLAT", " -1", "LBLSP", " -1", "DLATM", " -1", "DLBND", " -1", "DLPLY", " -1"]
    out += ["PLN2D", "  0   0   0   0"]

    out.append("ATOMT")
    for i, el in enumerate(species, 1):
        radius, colour = element_style(el)
        r, g, b = _to_255(colour)
        out.append(
            f"{i:4d} {el:>8s} {radius:7.4f} {r:3d} {g:3d} {b:3d} {r:3d} {g:3d} {b:3d} 204"
        )
    out.append("  0 0 0 0 0 0")

    out += [
        "SCENE",
        " 0.000000  1.000000  0.000000  0.000000",
        " 0.000000  0.000000  1.000000  0.000000",
        " 1.000000  0.000000  0.000000  0.000000",
        " 0.000000  0.000000  0.000000  1.000000",
        "  0.000   0.000",
        "  0.000",
        "  1.000",
        "HBOND 0 2",
        "",
        "STYLE",
        "DISPF 37753794",
        "MODEL   0  1  0",  # ball-and-stick
        "SURFS   0  1  1",
        "SECTS  32  1",
        "FORMS   0  1",
        "ATOMS   0  0  1",
        "BONDS   1",
        "POLYS   1",
        "VECTS 1.000000",
        "FORMP",
        "  1  1.0   0   0   0",
        "ATOMP",
        " 24  24   0  50  2.0   0",
        "BONDP",
        "  1  16  0.250  2.000 127 127 127",
        "POLYP",
        " 204 1  1.000 180 180 180",
        "ISURF",
        "  0   0   0   0",
        "TEX3P",
        "  1  0.00000E+00  1.00000E+00",
        "SECTP",
        "  1  0.00000E+00  1.00000E+00  0.00000E+00  0.00000E+00  0.00000E+00  0.00000E+00",
        "CONTR",
        " 0.1 -1 1 1 10 -1 2 5",
        " 2 1 2 1",
        *["   0   0   0"] * 4,
        "HKLPP",
        " 192 1  1.000 255   0 255",
        "UCOLP",
        "   0   0  1.000   0   0   0",  # hide the placeholder cell's edges
        "COMPS 1",
        "LABEL 1    12  1.000 0",
        "PROJT 0  0.962",
        "BKGRC",
        " 255 255 255",
        "DPTHQ 1 -0.5000  3.5000",
        *_vesta_light("LIGHT0 1", on=True),
        *_vesta_light("LIGHT1", on=False),
        *_vesta_light("LIGHT2", on=False),
        *_vesta_light("LIGHT3", on=False),
        "SECCL 0",
        "",
        "TEXCL 0",
        "",
        "ATOMM",
        " 204 204 204 255",
        "  25.600",
    ]
    for material, colour in (
        ("BONDM", " 255 255 255 255"),
        ("POLYM", " 255 255 255 255"),
        ("SURFM", "   0   0   0 255"),
        ("FORMM", " 255 255 255 255"),
        ("HKLPM", " 255 255 255 255"),
    ):
        out += [material, colour, " 128.000"]
    path.write_text("\n".join(out) + "\n")
    return path


def _cell_matrix(cell: Sequence[float]) -> np.ndarray:
    """Rows a, b, c (Å) of a cell given as a, b, c (Å), α, β, γ (degrees)."""
    a, b, c = cell[:3]
    alpha, beta, gamma = np.radians(cell[3:6])
    cx = c * np.cos(beta)
    cy = c * (np.cos(alpha) - np.cos(beta) * np.cos(gamma)) / np.sin(gamma)
    return np.array(
        [
            [a, 0.0, 0.0],
            [b * np.cos(gamma), b * np.sin(gamma), 0.0],
            [cx, cy, np.sqrt(max(c * c - cx * cx - cy * cy, 0.0))],
        ]
    )


def _is_vesta_keyword(token: str) -> bool:
    return token.isupper() and token[:1].isalpha() and token.replace("_", "").isalnum()


def read_vesta(path: str | Path) -> dict:
    """Read back a file written by :func:`write_vesta` (for round-trip checks).

    Parameters
    ----------
    path : str or Path
        A ``.vesta`` file.

    Returns
    -------
    dict
        ``version`` (str); ``phase`` (``"MOLECULE"`` or ``"CRYSTAL"``); ``title``;
        ``sections``: section keywords in file order; ``cell``: (a, b, c in Å, α, β, γ in
        degrees); ``sites``: list of (element, label, x, y, z) with coordinates as
        written (fractions of ``cell``); ``xyz``: (n, 3) Cartesian Å; ``site_colours``
        ``{label: (R, G, B)}`` and ``element_colours`` ``{element: (R, G, B)}`` as
        integers 0–255; ``site_radii`` and ``element_radii`` (Å); ``bonds``: list of
        (A1, A2, min_Å, max_Å).

    Raises
    ------
    ValueError
        Naming the line when a field is missing or is not a number of the right kind
        (colours must be integers in 0–255).
    """
    path = Path(path)
    lines = path.read_text().splitlines()
    if not lines or not lines[0].startswith("#VESTA_FORMAT_VERSION"):
        raise ValueError(f"{path}: not a VESTA file (no #VESTA_FORMAT_VERSION line)")
    result: dict = {
        "version": lines[0].split()[1] if len(lines[0].split()) > 1 else "",
        "phase": None,
        "title": "",
        "sections": [],
        "cell": None,
        "sites": [],
        "site_colours": {},
        "site_radii": {},
        "element_colours": {},
        "element_radii": {},
        "bonds": [],
    }
    body: dict[str, list[tuple[int, list[str]]]] = {}
    current = None
    k = 1
    while k < len(lines):
        fields = lines[k].split()
        if fields and _is_vesta_keyword(fields[0]):
            current = fields[0]
            result["sections"].append(current)
            body.setdefault(current, [])
            if current in ("MOLECULE", "CRYSTAL"):
                result["phase"] = current
            if current == "TITLE" and k + 1 < len(lines):
                result["title"] = lines[k + 1].strip()
                k += 1  # the title line is free text, never a keyword
        elif fields and current is not None:
            body[current].append((k + 1, fields))
        k += 1

    def number(kind, token, lineno):
        try:
            return kind(token)
        except ValueError:
            raise ValueError(f"{path}, line {lineno}: expected {kind.__name__}, found "
                             f"{token!r}") from None

    def colour(tokens, lineno):
        rgb = tuple(number(int, t, lineno) for t in tokens)
        if not all(0 <= v <= 255 for v in rgb):
            raise ValueError(f"{path}, line {lineno}: colour {rgb} outside 0–255")
        return rgb

    if body.get("CELLP"):
        lineno, fields = body["CELLP"][0]
        result["cell"] = tuple(number(float, t, lineno) for t in fields[:6])
    struc = body.get("STRUC", [])
    for j in range(0, len(struc), 2):
        lineno, fields = struc[j]
        if all(t == "0" for t in fields):
            break  # terminator
        if len(fields) < 7:
            raise ValueError(f"{path}, line {lineno}: STRUC line has {len(fields)} fields")
        x, y, z = (number(float, t, lineno) for t in fields[4:7])
        result["sites"].append((fields[1], fields[2], x, y, z))
    for lineno, fields in body.get("SITET", []):
        if all(t == "0" for t in fields):
            break
        result["site_radii"][fields[1]] = number(float, fields[2], lineno)
        result["site_colours"][fields[1]] = colour(fields[3:6], lineno)
    for lineno, fields in body.get("ATOMT", []):
        if all(t == "0" for t in fields):
            break
        result["element_radii"][fields[1]] = number(float, fields[2], lineno)
        result["element_colours"][fields[1]] = colour(fields[3:6], lineno)
    for lineno, fields in body.get("SBOND", []):
        if all(t == "0" for t in fields):
            break
        low, high = (number(float, t, lineno) for t in fields[3:5])
        result["bonds"].append((fields[1], fields[2], low, high))

    frac = np.array([s[2:] for s in result["sites"]], dtype=float).reshape(-1, 3)
    cell = result["cell"] or _VESTA_UNIT_CELL
    result["xyz"] = frac @ _cell_matrix(cell)
    return result


# ------------------------------------------------------------------------ CrystalMaker

_CMTX_KEYWORDS = frozenset(
    "MOLE TITL CELL LATC SYMM SPGR SPGP XYZR MODL BKCL DCUE TYPE ATOM BMIN BMAX".split()
)


def write_cmtx(
    path: str | Path,
    structure: Structure,
    colours: np.ndarray | None = None,
    title: str = "",
    bond_pairs: Mapping[tuple[str, str], float] | None = None,
) -> Path:
    """Write a finite cluster as a CrystalMaker text file (``.cmtx``), molecule format.

    Parameters
    ----------
    path : str or Path
        Output file, conventionally ``*.cmtx``.
    structure : Structure
        Elements and Cartesian coordinates (Å).
    colours : array_like, shape (n, 3), optional
        Per-atom RGB in 0–1. Rows of NaN, or None for all atoms, take the element colour.
    title : str
        One-line title; defaults to the structure's comment.
    bond_pairs : mapping, optional
        ``{(A, B): max_length_Å}``; default as in :func:`bond_table`.

    Returns
    -------
    Path
        The file written.

    Notes
    -----
    Layout: a ``MOLE`` line (CrystalMaker's molecule format, no unit cell, the form the
    original ML-MotEx wrote), ``TITL``, ``MODL 1`` (ball-and-stick), ``BKCL`` (white
    background), a ``TYPE`` block, ``BMAX A B length_Å`` bond searches between elements,
    and an ``ATOM`` block of ``element label x y z`` with Cartesian coordinates in Å.
    Every atom has its own type, named by its unique label (element + 1-based index:
    ``W1``, ``O2``, …), so every atom keeps its own colour. ``TYPE`` rows are
    ``label radius_Å R G B``; ALL colours in the file, background included, are
    fractions 0–1. Lines starting with ``!`` are comments.
    """
    _check_structure(structure)
    path = Path(path)
    rgb = _atom_colours(structure, colours)
    labels = site_labels(structure.elements)
    xyz = np.asarray(structure.xyz, dtype=float)

    out = [
        "MOLE  CrystalMaker molecule format",
        f"TITL  {_one_line(title or structure.comment, 'Molecule')}",
        "",
        "! Written by mlmotex-hpc. Colours are RGB fractions 0-1, lengths in Angstrom.",
        "MODL  1",
        "BKCL" + (_FRAC01 * 3).format(1.0, 1.0, 1.0),
        "",
        "! Atom types: label, radius, R G B",
        "TYPE",
    ]
    for el, label, colour in zip(structure.elements, labels, rgb, strict=True):
        radius = element_style(el)[0]
        out.append(f"{label:<8s} {radius:8.4f}" + (_FRAC01 * 3).format(*colour))
    out += ["", "! Bond search: element pair, maximum length"]
    for a, b, length in bond_table(structure.elements, bond_pairs):
        out.append(f"BMAX  {a:<2s} {b:<2s} {length:9.5f}")
    out += ["", "! Atoms: element, label, Cartesian x y z", "ATOM"]
    for el, label, (x, y, z) in zip(structure.elements, labels, xyz, strict=True):
        out.append(f"{el:<2s} {label:<8s}" + (_COORD * 3).format(x, y, z))
    path.write_text("\n".join(out) + "\n")
    return path


def read_cmtx(path: str | Path) -> dict:
    """Read back a file written by :func:`write_cmtx` (for round-trip checks).

    Parameters
    ----------
    path : str or Path
        A CrystalMaker text file.

    Returns
    -------
    dict
        ``molecule`` (True for a ``MOLE`` file); ``title``; ``keywords``: keywords in
        file order; ``cell``: (a, b, c in Å, α, β, γ in degrees) or None when the file
        has no ``CELL`` line; ``model`` (int or None); ``background`` (r, g, b) or None;
        ``type_colours`` ``{label: (r, g, b)}`` in 0–1; ``type_radii`` ``{label: Å}``;
        ``bonds``: list of (A, B, max_Å); ``atoms``: list of (element, label, x, y, z)
        as written; ``xyz``: (n, 3) Cartesian Å (fractions times the cell when there is
        a cell, the coordinates themselves otherwise).

    Raises
    ------
    ValueError
        Naming the line when a field is missing, not a number, or a colour outside 0–1.
    """
    path = Path(path)
    result: dict = {
        "molecule": False,
        "title": "",
        "keywords": [],
        "cell": None,
        "model": None,
        "background": None,
        "type_colours": {},
        "type_radii": {},
        "bonds": [],
        "atoms": [],
    }

    def floats(tokens, lineno, count):
        if len(tokens) < count:
            raise ValueError(f"{path}, line {lineno}: expected {count} numbers")
        try:
            return tuple(float(t) for t in tokens[:count])
        except ValueError:
            raise ValueError(f"{path}, line {lineno}: expected numbers, found {tokens}") from None

    def fraction_rgb(tokens, lineno):
        rgb = floats(tokens, lineno, 3)
        if not all(0.0 <= v <= 1.0 for v in rgb):
            raise ValueError(f"{path}, line {lineno}: colour {rgb} outside 0–1")
        return rgb

    block = None
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("!"):
            continue
        keyword = fields[0]
        if keyword in _CMTX_KEYWORDS:
            result["keywords"].append(keyword)
            block = keyword if keyword in ("TYPE", "ATOM") else None
            if keyword == "MOLE":
                result["molecule"] = True
            elif keyword == "TITL":
                result["title"] = line.strip()[4:].strip()
            elif keyword == "CELL":
                result["cell"] = floats(fields[1:], lineno, 6)
            elif keyword == "MODL":
                result["model"] = int(floats(fields[1:], lineno, 1)[0])
            elif keyword == "BKCL":
                result["background"] = fraction_rgb(fields[1:], lineno)
            elif keyword == "BMAX":
                if len(fields) < 4:
                    raise ValueError(f"{path}, line {lineno}: BMAX needs A B length")
                result["bonds"].append((fields[1], fields[2], floats(fields[3:], lineno, 1)[0]))
        elif block == "TYPE":
            result["type_radii"][keyword] = floats(fields[1:], lineno, 1)[0]
            result["type_colours"][keyword] = fraction_rgb(fields[2:], lineno)
        elif block == "ATOM":
            if len(fields) < 5:
                raise ValueError(f"{path}, line {lineno}: ATOM row needs element label x y z")
            result["atoms"].append((fields[0], fields[1], *floats(fields[2:], lineno, 3)))
        else:
            raise ValueError(f"{path}, line {lineno}: unexpected line {line.strip()!r}")

    coords = np.array([a[2:] for a in result["atoms"]], dtype=float).reshape(-1, 3)
    result["xyz"] = coords @ _cell_matrix(result["cell"]) if result["cell"] else coords
    return result
