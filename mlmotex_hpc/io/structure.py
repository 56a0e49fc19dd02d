"""Structure models: Cartesian ``.xyz`` files in Å."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import periodictable

from ..errors import InputError


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

    def __len__(self) -> int:
        return len(self.elements)

    def subset(self, keep: np.ndarray) -> Structure:
        """The atoms where the boolean ``keep`` is true, in their original order."""
        keep = np.asarray(keep, dtype=bool)
        elements = tuple(e for e, k in zip(self.elements, keep, strict=True) if k)
        return Structure(elements, self.xyz[keep].copy(), self.comment)


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
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise InputError(f"cannot read structure file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"structure file {path} is not a text .xyz file") from None
    if not lines:
        raise InputError(f"structure file {path} is empty")
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


#: Two atoms closer than this (Å) are one atom written twice.
MIN_DISTANCE = 0.1
#: An atom whose nearest neighbour is farther than this (Å) belongs to no structure.
MAX_NEIGHBOUR_DISTANCE = 10.0


def check_geometry(path: Path, xyz: np.ndarray, linenos: list[int]) -> None:
    """Refuse atoms that sit on one another or far from every other atom, naming the
    lines: the first would both end in the motif, the second ends in it by chance."""
    from scipy.spatial import cKDTree

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
