"""Structure models: ``.xyz`` clusters, and crystals (``.cif``, ``.stru``, ...) cut to clusters.

An ``.xyz`` file is read here (Cartesian Å, with messages that name the line). A CIF is
read by gemmi, expanded by the file's own symmetry operators (:mod:`.cif`); the other
formats (``.stru``, ``.pdb``, ...) by diffpy.structure, the reader PDFgui and DiffPy-CMI
users already have. A tolerance merges the near-duplicate sites a CIF's rounded
coordinates make (:data:`CIF_TOLERANCE`). A crystal becomes a finite cluster by a
:class:`Cut`: a sphere or a box around a centre, or a supercell of whole cells, the cell
expanded as far as the cut needs for any cell shape (:func:`cut_crystal`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import periodictable

from ..config import CIF_TOLERANCE, Cut, StructureSpec
from ..errors import InputError
from .cif import CIF_SUFFIXES, read_cif


@dataclass(frozen=True, eq=False)
class Structure:
    """A finite cluster of atoms.

    Attributes
    ----------
    elements : tuple of str
        Element symbol of every atom, as written in the file but normalised to
        ``periodictable`` capitalisation (``"W"``, ``"Fe"``).
    xyz : ndarray, shape (n, 3)
        Cartesian coordinates in Å.
    comment : str
        The second line of the ``.xyz`` file.
    """

    elements: tuple[str, ...]
    xyz: np.ndarray
    comment: str = ""
    #: Per atom, from a crystal file: its site's label, Uiso (Å², NaN: none given) and
    #: occupancy. None for an ``.xyz`` file.
    sites: tuple[str, ...] | None = None
    uiso: np.ndarray | None = None
    occupancy: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.elements)

    def subset(self, keep: np.ndarray) -> Structure:
        """The atoms where the boolean ``keep`` is true, in their original order."""
        keep = np.asarray(keep, dtype=bool)
        elements = tuple(e for e, k in zip(self.elements, keep, strict=True) if k)
        sites = (None if self.sites is None
                 else tuple(s for s, k in zip(self.sites, keep, strict=True) if k))
        return Structure(elements, self.xyz[keep].copy(), self.comment, sites,
                         None if self.uiso is None else self.uiso[keep].copy(),
                         None if self.occupancy is None else self.occupancy[keep].copy())

    def element_uiso(self) -> dict[str, float]:
        """Each element's mean Uiso over its atoms that the file gives one (Å²); elements
        without a value (or with 0, which CIFs write for "not refined") are left out."""
        if self.uiso is None:
            return {}
        out = {}
        for el in dict.fromkeys(self.elements):
            u = self.uiso[np.array(self.elements) == el]
            u = u[np.isfinite(u) & (u > 0)]
            if u.size:
                out[el] = float(u.mean())
        return out

    def partial_sites(self) -> list[tuple[str, float]]:
        """``(site label, occupancy, atoms, element)`` of every partially occupied site of the file
        (the copies diffpy.structure labels ``W1_2``, ``W1_3``, ... count as site ``W1``)."""
        if self.occupancy is None:
            return []
        found: dict[str, list] = {}
        for k in np.flatnonzero(self.occupancy < 1 - OCCUPANCY_TOLERANCE):
            label = (re.sub(r"_\d+$", "", self.sites[k]) if self.sites
                     else f"{self.elements[k]}{k}")
            found.setdefault(label, [label, float(self.occupancy[k]), 0,
                                     self.elements[k]])[2] += 1
        return [tuple(v) for v in found.values()]


def site_labels(elements: tuple[str, ...] | list[str]) -> list[str]:
    """Every atom's unique label: element and 1-based index in the model (``W1``, ``O2``,
    ``W3``, ...), as the .vesta and .cmtx files, the CSV's ``label`` column, the figures
    and the report name atoms."""
    return [f"{el}{i}" for i, el in enumerate(elements, start=1)]


def _element_symbol(token: str) -> str | None:
    """``periodictable`` symbol for a token such as ``W``, ``w``, ``Fe1`` or ``O2-``."""
    letters = "".join(ch for ch in token if ch.isalpha())
    for candidate in (letters[:2], letters[:1]):
        symbol = candidate.capitalize()
        if symbol and hasattr(periodictable, symbol) and symbol != "D" and symbol != "T":
            element = getattr(periodictable, symbol)
            if isinstance(element, periodictable.core.Element):
                return symbol
    return None


def read_xyz(path: str | Path) -> Structure:
    """Read an ``.xyz`` file: atom count, a comment line, then ``El x y z`` rows (Å).

    Raises
    ------
    InputError
        Naming the file and line when the file is missing, the count disagrees with the
        rows, an element is unknown or a coordinate is not a finite number.
    """
    path = Path(path)
    lines = _read_text(path, ".xyz").splitlines()
    try:
        count = int(lines[0].split()[0])
    except (ValueError, IndexError):
        raise InputError(
            f"{path}, line 1: expected the number of atoms, found {lines[0]!r}"
        ) from None
    rows = [(i, line.split()) for i, line in enumerate(lines[2:], start=3) if line.strip()]
    if len(rows) != count:
        extra = (" (a trajectory of several frames? keep one)" if len(rows) > count else "")
        raise InputError(f"{path}: line 1 announces {count} atoms but the file has "
                         f"{len(rows)} atom lines{extra}")
    if count < 2:
        raise InputError(f"{path}: a structure needs at least 2 atoms, line 1 says {count}")
    elements, xyz = [], np.empty((count, 3))
    for k, (lineno, fields) in enumerate(rows[:count]):
        symbol = _element_symbol(fields[0]) if fields else None
        if symbol is None:
            raise InputError(f"{path}, line {lineno}: unknown element {fields[0]!r}")
        try:
            xyz[k] = [float(v) for v in fields[1:4]]
        except ValueError:
            raise InputError(
                f"{path}, line {lineno}: coordinates must be three numbers, found {fields[1:4]}"
            ) from None
        if len(fields) < 4 or not np.all(np.isfinite(xyz[k])):
            raise InputError(
                f"{path}, line {lineno}: coordinates must be three finite numbers (Å)"
            )
        elements.append(symbol)
    check_geometry(path, xyz, [lineno for lineno, _ in rows])
    comment = lines[1] if len(lines) > 1 else ""
    return Structure(tuple(elements), xyz, comment)


def _check_path(path: Path) -> None:
    """Refuse a structure file that does not exist, is a directory or cannot be looked at."""
    try:
        if path.is_dir():
            raise InputError(f"structure file {path} is a directory, not a file")
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(f"structure file {path} does not exist") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InputError(f"cannot read structure file {path}: {reason}") from None


def _read_text(path: Path, kind: str) -> str:
    """The text of a structure file, or one line saying why there is none: missing, a
    directory, not readable (permissions), binary, or empty."""
    _check_path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InputError(f"cannot read structure file {path}: {reason}") from None
    if b"\0" in data:
        raise InputError(f"structure file {path} is not a text {kind} file (binary content)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    if not text.strip():
        raise InputError(f"structure file {path} is empty")
    return text


#: No atom of a model lies farther than this from the origin (Å): 1 cm, far beyond any
#: cluster a PDF is computed for, and far below where the distance arithmetic overflows
#: (an atom merely far from the others is refused as isolated, with its nearest neighbour).
MAX_COORDINATE = 1e8
#: Two atoms closer than this (Å) are one atom written twice.
MIN_DISTANCE = 0.1
#: An atom whose nearest neighbour is farther than this (Å) belongs to no structure.
MAX_NEIGHBOUR_DISTANCE = 10.0


def check_geometry(path: Path, xyz: np.ndarray, linenos: list[int]) -> None:
    """Refuse atoms that sit on one another or far from every other atom, naming the
    lines: the first would both end in the motif, the second ends in it by chance."""
    from scipy.spatial import cKDTree

    far_out = np.flatnonzero(np.abs(xyz).max(axis=1) > MAX_COORDINATE)
    if far_out.size:
        k = int(far_out[0])
        raise InputError(f"{path}, line {linenos[k]}: a coordinate of "
                         f"{np.abs(xyz[k]).max():.3g} Å (more than {MAX_COORDINATE:g} Å from "
                         f"the origin: a cluster is not that large; other units?); "
                         f"{far_out.size} such atom(s)")
    tree = cKDTree(xyz)
    close = sorted(tree.query_pairs(MIN_DISTANCE))
    if close:
        i, j = close[0]
        raise InputError(
            f"{path}, lines {linenos[i]} and {linenos[j]}: two atoms "
            f"{np.linalg.norm(xyz[i] - xyz[j]):.3g} Å apart (closer than {MIN_DISTANCE} Å: "
            f"one atom written twice?); {len(close)} such pair(s)")
    distance, _ = tree.query(xyz, k=2)
    far = np.flatnonzero(distance[:, 1] > MAX_NEIGHBOUR_DISTANCE)
    if far.size:
        k = int(far[0])
        raise InputError(
            f"{path}, line {linenos[k]}: this atom's nearest neighbour is "
            f"{distance[k, 1]:.3g} Å away (more than {MAX_NEIGHBOUR_DISTANCE:g} Å): it belongs "
            f"to no structure; {far.size} such atom(s)")


def write_xyz(path: str | Path, structure: Structure, comment: str | None = None) -> None:
    """Write ``structure`` as an ``.xyz`` file (Å, 6 decimals, fields separated by spaces)."""
    text = [str(len(structure)), structure.comment if comment is None else comment]
    text += [
        f"{el:<2s} {x:12.6f} {y:12.6f} {z:12.6f}"
        for el, (x, y, z) in zip(structure.elements, structure.xyz, strict=True)
    ]
    Path(path).write_text("\n".join(text) + "\n")


# -- crystals and other structure files, through diffpy.structure ------------------------

# CIF_TOLERANCE (config.py): sites of a crystal file closer than this (fractional) are one
# site: CIFs round their coordinates, and diffpy.structure's own default (1e-5) keeps the
# rounded copies a symmetry operation makes of one site as separate atoms; 1e-2 merges
# real sites (Fe3O4's).
#: Atoms of a crystal's cut closer than this (Å) are refused: a site written twice, or the
#: alternative positions of a disordered atom (an O-H bond is 0.96 Å).
CIF_MIN_DISTANCE = 0.5
#: Occupancies within this of 1 are full.
OCCUPANCY_TOLERANCE = 1e-6
#: Most candidate atom images a cut may look at (the cell expanded as far as it needs).
MAX_IMAGES = 20_000_000
#: The formats read through diffpy.structure, by suffix (diffpy.structure's format names).
#: Only a CIF has a space group to expand, so only its parser takes the tolerance; every
#: other format lists every atom of the cell (or of the cluster) and is read as written.
FORMATS = {".cif": "cif", ".mcif": "cif", ".stru": "pdffit", ".pdb": "pdb", ".xyz": "xyz",
           ".xcfg": "xcfg", ".cfg": "xcfg", ".res": "discus", ".rawxyz": "rawxyz"}
#: Human names of the formats, for messages.
FORMAT_NAMES = {"cif": "CIF", "pdffit": "PDFfit .stru", "pdb": "PDB", "xyz": "xyz",
                "xcfg": "AtomEye .xcfg", "discus": "DISCUS", "rawxyz": "raw xyz"}
#: A cell whose volume is below this fraction of a·b·c is degenerate (flat or a line).
MIN_UNIT_VOLUME = 1e-6


def load_model(path: Path, spec: StructureSpec) -> Structure:
    """The starting model a config's ``structure:`` names (its file, cut as it asks)."""
    return read_structure(path, spec.cut, partial=spec.partial, tolerance=spec.tolerance)


def read_structure(path: str | Path, cut: Cut | None = None, *, partial: str = "refuse",
                   tolerance: float = CIF_TOLERANCE) -> Structure:
    """Read any structure file as a finite cluster, cut from it when ``cut`` is given.

    Parameters
    ----------
    path : path
        ``.xyz`` (read here), or ``.cif``, ``.stru``, ``.pdb``, ... (diffpy.structure).
    cut : Cut, optional
        Without one, the file's atoms are the cluster (a CIF: the atoms of one cell).
    partial : {"refuse", "keep"}
        Partially occupied sites: refused with a message that says how to keep them, or
        kept, each as an atom (the catalogue then decides which are filled).
    tolerance : float
        Fractional distance under which a crystal's sites merge (:data:`CIF_TOLERANCE`).

    Raises
    ------
    InputError
        One line naming the file: missing, a directory, unreadable, binary or empty, not
        in its format (the reader's own message), unknown element, a coordinate or
        occupancy that is not a finite number, a degenerate cell (a length ≤ 0, an angle
        of 0 or 180°, angles that enclose no volume: named by its parameters), atoms on
        one another, partial occupancy refused, a cut that holds fewer than 2 atoms.

    Notes
    -----
    The site-merging ``tolerance`` applies where diffpy.structure expands a space group:
    a CIF. A ``.stru`` (PDFfit) lists every atom of its cell and its ``spcgr`` is not
    applied (as PDFfit2 and PDFgui read it); a ``.pdb`` lists its atoms in Cartesian Å,
    a cell when it has a CRYST1 record, a cluster when not. See :func:`_load_diffpy`.
    """
    crystal = read_crystal(path, tolerance=tolerance)
    if cut is None:
        if crystal.base is None and crystal.cell.sites is None:  # an .xyz file as it is
            return crystal.cell
        return _finish(crystal.path, crystal.cell, partial,
                       f"{crystal.path.name}: the atoms of the file")
    return cut_crystal(crystal, cut, partial)


@dataclass(frozen=True, eq=False)
class Crystal:
    """A structure file read once, to be cut any number of times (:func:`cut_crystal`):
    its atoms (a crystal: one cell, every site's symmetry copies) and the cell's base
    vectors (rows, Å; None for a cluster: an ``.xyz``, or a file without a cell)."""

    path: Path
    cell: Structure
    base: np.ndarray | None

    @property
    def periodic(self) -> bool:
        return self.base is not None


def cut_crystal(crystal: Crystal, cut: Cut, partial: str = "refuse",
                near: tuple[Sequence[str], float] | None = None) -> Structure:
    """The finite cluster ``cut`` takes from ``crystal`` (see :func:`read_structure`).

    ``near = (elements, distance)`` keeps, of the atoms cut, only those of ``elements``
    and the others within ``distance`` Å of one of them: for a screen, the atoms that can
    be in a motif (the permuted ones and their bonded neighbours), so that a disordered
    counter-ion or solvent far from them neither refuses the cluster nor fills it."""
    return _cut(crystal.path, crystal.cell, crystal.base, cut, partial, near)


def read_crystal(path: str | Path, *, tolerance: float = CIF_TOLERANCE) -> Crystal:
    """Any structure file's atoms and cell, checked, not yet cut nor refused for partial
    occupancy or close atoms (:func:`read_structure` does those)."""
    path = Path(path)
    _check_path(path)
    suffix = path.suffix.lower()
    if suffix == ".xyz":
        return Crystal(path, read_xyz(path), None)
    if suffix not in FORMATS:
        raise InputError(f"structure file {path}: unknown format {path.suffix or '(none)'!r} "
                         f"(known: {', '.join(sorted(FORMATS))})")
    if suffix in CIF_SUFFIXES:  # gemmi, the file's own symmetry operators (io/cif.py)
        crystal = read_cif(path, _read_text(path, "CIF"), tolerance)
        elements = [_element_symbol(el) or el for el in crystal.elements]
        abc_angles = crystal.cell
        labels, uiso, occupancy = crystal.labels, crystal.uiso, crystal.occupancy
        frac = crystal.frac
        problem = cell_problem(path, *abc_angles)
        base = _lattice_base(abc_angles) if problem is None else np.eye(3)
        periodic = True
    else:
        crystal = _load_diffpy(path, FORMATS[suffix], tolerance)
        elements = []
        for k, atom in enumerate(crystal):
            symbol = _element_symbol(str(atom.element))
            if symbol is None:
                raise InputError(f"{path}: atom {k} ({atom.label or '?'}): unknown element "
                                 f"{atom.element!r}")
            elements.append(symbol)
        lattice = crystal.lattice
        abc_angles = tuple(float(v) for v in lattice.abcABG())
        problem = cell_problem(path, *abc_angles)
        base = np.array(lattice.base, dtype=float)
        periodic = not np.allclose(base, np.eye(3))
        labels = tuple(str(a.label) or f"{el}{k}" for k, (a, el) in enumerate(
            zip(crystal, elements, strict=True)))
        uiso = np.array([float(a.Uisoequiv) for a in crystal])
        occupancy = np.array([float(a.occupancy) for a in crystal])
        frac = np.array(crystal.xyz, dtype=float).reshape(-1, 3)
    if problem is None and not (np.all(np.isfinite(base)) and abs(np.linalg.det(base))
                                > MIN_UNIT_VOLUME * np.prod(np.linalg.norm(base, axis=1))):
        problem = (f"structure file {path}: its cell is degenerate (its base vectors "
                   f"span no volume): {_describe_cell(*abc_angles)}")
    if problem is not None:
        raise InputError(problem)
    for what, values in (("coordinates are not finite numbers", frac),
                         ("occupancy is not a finite number", occupancy)):
        bad = np.flatnonzero(~np.all(np.isfinite(values.reshape(len(elements), -1)), axis=1))
        if bad.size:
            k = int(bad[0])
            raise InputError(f"{path}: atom {k} ({labels[k]}): its {what} "
                             f"({np.array2string(values[k], separator=', ')}); {bad.size} "
                             "such atom(s)")
    cell = Structure(tuple(elements), frac @ base, f"{path.name}", labels, uiso, occupancy)
    return Crystal(path, cell, base if periodic else None)


def _parser_options(fmt: str, tolerance: float) -> dict:
    """The keyword arguments diffpy.structure's parser for ``fmt`` is given: the one place
    that decides them. What this module can say (the site-merging tolerance, as ``eps``)
    goes only to a parser whose ``getParser`` takes it: diffpy.structure's CIF parser
    does; its pdffit, pdb, xcfg, discus, xyz and rawxyz parsers take no argument at all."""
    import importlib
    import inspect

    from diffpy.structure.parsers import parser_index

    offered = {"eps": tolerance}
    module = importlib.import_module(
        f"diffpy.structure.parsers.{parser_index[fmt]['module']}")
    accepted = inspect.signature(module.getParser).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        return offered
    return {key: value for key, value in offered.items() if key in accepted}


def _lattice_base(cell: tuple[float, ...]) -> np.ndarray:
    """The cell's base vectors (rows, Å) in diffpy.structure's orientation, so that a
    crystal reads with the same Cartesian axes from any of its formats."""
    from diffpy.structure import Lattice

    return np.array(Lattice(*cell).base, dtype=float)


def _load_diffpy(path: Path, fmt: str, tolerance: float):
    """diffpy.structure's reading of ``path`` (format ``fmt``), or one line naming the
    file and what is wrong with it.

    A CIF's space group is expanded, sites closer than ``tolerance`` (fractional)
    merging. A PDFfit ``.stru`` file lists every atom of its cell, as PDFfit2 and PDFgui
    write and read it: its ``spcgr`` line is a label diffpy.structure keeps but does not
    apply, so the atoms are read as written (no expansion, no merging; a ``.stru`` holding
    only an asymmetric unit is read as that unit). Its ``ncell`` supercell is read as
    diffpy.structure reads it (one cell ``ncell`` times as large). A PDB file's atoms
    (ATOM and HETATM records) are Cartesian; with a CRYST1 record they are one cell of a
    crystal, without one a cluster (no cell).
    """
    import warnings

    from diffpy.structure.parsers import getParser
    from diffpy.structure.structureerrors import (
        LatticeError,
        StructureFormatError,
        SymmetryError,
    )

    name = FORMAT_NAMES.get(fmt, fmt)
    text = _read_text(path, name)  # missing, a directory, unreadable, binary, empty
    if fmt == "pdb":
        _check_pdb_columns(path, text)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PyCifRW's deprecation chatter
            parser = getParser(fmt, **_parser_options(fmt, tolerance))
            crystal = parser.parseFile(str(path))
    except OSError as exc:
        raise InputError(f"cannot read structure file {path}: "
                         f"{exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError:
        raise InputError(f"structure file {path}: not a text {name} file (it is not "
                         "UTF-8)") from None
    except (StructureFormatError, LatticeError, SymmetryError, ArithmeticError, ValueError,
            KeyError, IndexError, TypeError, AttributeError, NameError, StopIteration,
            NotImplementedError) as exc:
        raise InputError(_parse_failure(path, name, exc)) from None
    if crystal is None or len(crystal) == 0:  # a CIF block without atom sites
        raise InputError(f"structure file {path}: no atoms in it")
    return crystal


def _check_pdb_columns(path: Path, text: str) -> None:
    """Refuse an ATOM or HETATM record whose x, y, z are not three numbers in columns
    31-38, 39-46 and 47-54, as PDB's fixed columns require: diffpy.structure reads the
    columns, and a record shifted by a long atom name (diffpy.structure itself writes a
    CIF's site copies Fe1_2, Fe1_10, ... into the 4-column name) would be read with wrong
    coordinates and, from columns 77-78, a wrong element."""
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.startswith(("ATOM", "HETATM")):
            continue
        line = f"{line.rstrip():<80s}"
        fields = (line[30:38], line[38:46], line[46:54])
        try:
            [float(field) for field in fields]
        except ValueError:
            shifted = True
        else:
            shifted = line[53] != " " and line[54] not in " ."
        if shifted:
            raise InputError(
                f"structure file {path}, line {lineno}: x, y, z are not three numbers in "
                f"columns 31-54 (8 each), as PDB requires, but {line[30:60].strip()!r}: "
                "the record's columns are shifted (an atom name longer than 4 characters?)")


def _parse_failure(path: Path, name: str, exc: BaseException) -> str:
    """The line that says why diffpy.structure could not read ``path``: a degenerate
    cell named by its parameters, diffpy.structure's own message (its first line, its
    ``N:`` prefix as the line number) or, for an error of the parser itself, the
    format and the error."""
    from diffpy.structure.structureerrors import (
        LatticeError,
        StructureFormatError,
        SymmetryError,
    )

    cell = _failed_cell(exc)
    if cell is not None:
        return cell_problem(path, *cell) or (
            f"structure file {path}: its cell is degenerate "
            f"({_describe_cell(*cell)}): {_first_line(exc) or type(exc).__name__}")
    if isinstance(exc, LatticeError):
        return f"structure file {path}: its cell is degenerate ({_first_line(exc)})"
    if isinstance(exc, StopIteration):
        return f"structure file {path}: ends inside an atom's record (not a whole {name} file)"
    text = _first_line(exc)
    if re.search(r"float (NaN|infinity)", text):
        return (f"structure file {path}: an atom's coordinates or the cell hold a value that "
                f"is not a finite number (NaN or infinity; diffpy.structure: {text})")
    if isinstance(exc, (StructureFormatError, SymmetryError)) and text:
        numbered = re.match(r"(\d+):\s*(.*)", text)
        if numbered:
            return f"structure file {path}, line {numbered[1]}: {numbered[2]}"
        return f"structure file {path}: {text}"
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return f"structure file {path}: not a readable {name} file ({detail})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else ""


def _failed_cell(exc: BaseException) -> tuple[float, ...] | None:
    """The cell parameters (a, b, c, α, β, γ) diffpy.structure was setting when ``exc``
    (or the error it was raised from) arose, or None when it arose elsewhere."""
    from diffpy.structure import Lattice

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        tb = exc.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            lattice = frame.f_locals.get("self")
            if frame.f_code.co_name == "setLatPar" and isinstance(lattice, Lattice):
                try:
                    return tuple(float(v) for v in (lattice.a, lattice.b, lattice.c,
                                                    lattice.alpha, lattice.beta,
                                                    lattice.gamma))
                except (AttributeError, TypeError, ValueError):
                    return None
            tb = tb.tb_next
        exc = exc.__cause__ or exc.__context__
    return None


_CELL_NAMES = ("a", "b", "c", "alpha", "beta", "gamma")


def _describe_cell(*cell: float) -> str:
    return (", ".join(f"{n} = {v:.12g}" for n, v in zip(_CELL_NAMES[:3], cell[:3],
                                                         strict=True))
            + " Å, " + ", ".join(f"{n} = {v:.12g}°" for n, v in zip(_CELL_NAMES[3:], cell[3:],
                                                                     strict=True)))


#: The longest cell edge read (Å): protein crystals reach about 1,000 Å.
MAX_CELL_LENGTH = 1e4


def cell_problem(path: Path, a: float, b: float, c: float, alpha: float, beta: float,
                 gamma: float) -> str | None:
    """The line refusing a cell that has no volume, or None for a proper cell: a length
    that is not a positive number, an angle not strictly between 0 and 180°, or angles that
    close no cell (one larger than the sum of the others, or the three summing to 360°)."""
    cell = (a, b, c, alpha, beta, gamma)
    huge = [f"{n} = {v:.6g} Å" for n, v in zip(_CELL_NAMES[:3], cell[:3], strict=True)
            if math.isfinite(v) and v > MAX_CELL_LENGTH]
    if huge:
        return (f"structure file {path}: its cell is too large ({'; '.join(huge)}; a cell "
                f"length is at most {MAX_CELL_LENGTH:g} Å): are the lengths in other units?")
    bad = [f"{n} = {v:.12g} Å" for n, v in zip(_CELL_NAMES[:3], cell[:3], strict=True)
           if not (math.isfinite(v) and v > 0)]
    bad += [f"{n} = {v:.12g}°" for n, v in zip(_CELL_NAMES[3:], cell[3:], strict=True)
            if not (math.isfinite(v) and 0 < v < 180)]
    if not bad:
        ca, cb, cg = (math.cos(math.radians(v)) for v in cell[3:])
        factor = 1 + 2 * ca * cb * cg - ca * ca - cb * cb - cg * cg
        if not factor > MIN_UNIT_VOLUME ** 2:
            bad = [f"alpha, beta, gamma = {alpha:.12g}°, {beta:.12g}°, {gamma:.12g}° "
                   "enclose no volume"]
        elif not math.isfinite(a * b * c * math.sqrt(factor)):
            bad = ["its volume is not a finite number"]
    if not bad:
        return None
    return (f"structure file {path}: its cell is degenerate ({'; '.join(bad)}): "
            f"{_describe_cell(*cell)} (a cell needs lengths > 0 and angles strictly between "
            "0 and 180° that enclose a volume)")


def _centre(path: Path, structure: Structure, base: np.ndarray | None, cut: Cut) -> np.ndarray:
    """The cut's centre in Cartesian Å."""
    if cut.centre_atom is not None:
        key = cut.centre_atom
        if isinstance(key, int):
            if not 0 <= key < len(structure):
                raise InputError(f"{path}: centre atom {key} does not exist (the file has "
                                 f"{len(structure)} atoms, 0-based)")
            return structure.xyz[key]
        names = structure.sites or ()
        if key in names:
            return structure.xyz[names.index(key)]
        sites = list(dict.fromkeys(re.sub(r"_\d+$", "", n) for n in names))
        shown = ", ".join(sites[:12]) + (f", ... ({len(sites)} sites)" if len(sites) > 12
                                         else "") if sites else "none"
        raise InputError(f"{path}: no atom labelled {key!r} to centre on (site labels: "
                         f"{shown}; their copies are LABEL_2, LABEL_3, ...)")
    if base is None:
        return (np.asarray(cut.centre, float) if cut.centre is not None
                else structure.xyz.mean(axis=0))
    if cut.shape == "cells":
        return 0.5 * np.asarray(cut.size, float) @ base
    centre = (0.5, 0.5, 0.5) if cut.centre is None else cut.centre
    return np.asarray(centre, float) @ base


def _cut(path: Path, structure: Structure, base: np.ndarray | None, cut: Cut,
         partial: str, near: tuple[Sequence[str], float] | None = None) -> Structure:
    """The atoms of the cut: the cell expanded as far as it needs (a crystal), or a
    selection (a cluster)."""
    if base is None and cut.shape == "cells":
        raise InputError(f"{path}: has no unit cell, so it cannot be expanded into cells "
                         "(use a sphere or a box in Å)")
    centre = _centre(path, structure, base, cut)
    if base is None:
        xyz, index, lattice = structure.xyz, np.arange(len(structure)), np.eye(3)
    else:
        inverse = np.linalg.inv(base)
        frac = structure.xyz @ inverse
        frac -= np.floor(frac)
        c = centre @ inverse
        if cut.shape == "sphere":
            half = cut.size[0] * np.linalg.norm(inverse, axis=0)
        else:
            half = _box_half(cut, base)
        lo = np.floor(c - half).astype(int) - 1
        hi = np.ceil(c + half).astype(int) + 1
        n_images = int(np.prod(hi - lo + 1)) * len(structure)
        if n_images > MAX_IMAGES:
            raise InputError(f"{path}: the cut ({cut.describe()}) needs {n_images:,} atom "
                             f"images, more than {MAX_IMAGES:,}: cut a smaller cluster")
        grid = np.stack(np.meshgrid(*[np.arange(a, b + 1) for a, b in zip(lo, hi, strict=True)],
                                    indexing="ij"), axis=-1).reshape(-1, 3)
        images = (grid[:, None, :] + frac[None, :, :]).reshape(-1, 3)
        index = np.tile(np.arange(len(structure)), len(grid))
        xyz, lattice = images @ base, base
    keep = _inside(xyz, centre, cut, lattice)
    if cut.elements:
        unknown = [el for el in cut.elements if el not in structure.elements]
        if unknown:
            raise InputError(f"{path}: cut to elements {','.join(cut.elements)}, but "
                             f"{unknown[0]} is not in the file "
                             f"(it has {', '.join(dict.fromkeys(structure.elements))})")
        wanted = np.array([el in cut.elements for el in structure.elements])
        keep &= wanted[index]
    chosen, points = index[keep], xyz[keep]
    if near is not None:
        chosen, points = _near(structure, chosen, points, near)
    if chosen.size < 2:
        raise InputError(f"{path}: the cut ({cut.describe()}) holds {chosen.size} atom(s); "
                         "a structure needs at least 2")
    order_of = {el: i for i, el in enumerate(dict.fromkeys(structure.elements))}
    distance = np.round(np.linalg.norm(points - centre, axis=1), 6)
    group = np.array([order_of[structure.elements[k]] for k in chosen])
    order = np.lexsort((distance, group))
    chosen, points = chosen[order], points[order]
    sub = structure.subset(np.ones(len(structure), bool))
    cluster = Structure(
        tuple(sub.elements[k] for k in chosen), points,
        f"{path.name}: {cut.describe()}",
        None if sub.sites is None else tuple(sub.sites[k] for k in chosen),
        None if sub.uiso is None else sub.uiso[chosen],
        None if sub.occupancy is None else sub.occupancy[chosen])
    return _finish(path, cluster, partial, cluster.comment)


def _near(structure: Structure, chosen: np.ndarray, points: np.ndarray,
          near: tuple[Sequence[str], float]) -> tuple[np.ndarray, np.ndarray]:
    """Of the atoms cut, those of ``near``'s elements and the others within its distance
    of one of them."""
    from scipy.spatial import cKDTree

    elements, distance = near
    anchor = np.isin(np.array(structure.elements)[chosen], list(elements))
    keep = anchor.copy()
    if anchor.any() and (~anchor).any():
        hits = cKDTree(points[anchor]).query_ball_point(points[~anchor], distance)
        keep[~anchor] = [len(h) > 0 for h in hits]
    return chosen[keep], points[keep]


def _box_half(cut: Cut, base: np.ndarray) -> np.ndarray:
    """A box's (or a supercell's) half widths in fractional units along a, b, c."""
    if cut.shape == "cells":
        return 0.5 * np.asarray(cut.size, float)
    return 0.5 * np.asarray(cut.size, float) / np.linalg.norm(base, axis=1)


#: A face of a box (or a sphere's surface) holds the atoms within this of it (Å).
EDGE_TOLERANCE = 1e-4


def _inside(xyz: np.ndarray, centre: np.ndarray, cut: Cut, lattice: np.ndarray) -> np.ndarray:
    if cut.shape == "sphere":
        return np.linalg.norm(xyz - centre, axis=1) <= cut.size[0] + EDGE_TOLERANCE
    offset = (xyz - centre) @ np.linalg.inv(lattice)
    half = _box_half(cut, lattice)
    slack = EDGE_TOLERANCE / np.linalg.norm(lattice, axis=1)
    return np.all(np.abs(offset) <= half + slack, axis=1)


def _finish(path: Path, structure: Structure, partial: str, comment: str) -> Structure:
    """Refuse what a cluster cannot be (atoms on one another, unasked-for partial
    occupancy), naming the sites."""
    from scipy.spatial import cKDTree

    if len(structure) < 2:
        raise InputError(f"{path}: a structure needs at least 2 atoms, it has "
                         f"{len(structure)}")
    extent = float(np.abs(structure.xyz).max())
    if not extent <= MAX_COORDINATE:
        raise InputError(f"{path}: atoms {extent:.3g} Å from the origin (more than "
                         f"{MAX_COORDINATE:g} Å: a cell or coordinates in other units?)")
    close = sorted(cKDTree(structure.xyz).query_pairs(CIF_MIN_DISTANCE))
    if close:
        i, j = close[0]
        names = structure.sites or tuple(str(k) for k in range(len(structure)))
        raise InputError(
            f"{path}: atoms {names[i]} and {names[j]} are "
            f"{np.linalg.norm(structure.xyz[i] - structure.xyz[j]):.3g} Å apart (closer "
            f"than {CIF_MIN_DISTANCE} Å; {len(close)} such pair(s)): a site written twice "
            "(raise structure.tolerance to merge them) or the alternative positions of a "
            "disordered atom (keep one in the file)")
    sites = structure.partial_sites()
    if sites and partial != "keep":
        label, occ, count, _ = sites[0]
        raise InputError(
            f"{path}: site {label} is partially occupied (occupancy {occ:.3g}, {count} "
            f"atom(s) here; {len(sites)} such site(s)); to let the catalogue decide which "
            "are filled, keep each as an atom with structure: {file: ..., partial: keep} "
            "(or cut --partial keep), its element among the permutable ones")
    return Structure(structure.elements, structure.xyz, comment, structure.sites,
                     structure.uiso, structure.occupancy)
