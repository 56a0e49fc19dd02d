"""Tables of fits made elsewhere: steps 3-4 on Rw values mlmotex-hpc did not compute.

The original ML-MotEx's steps 3-4 learn from a text table, one motif a row: its ID, its
Rw, (optionally) its number of atoms, then one 0/1 column per permutable atom. This
module reads that table, or a CSV with a header, and writes the first form.

Formats read
------------
* **ML-MotEx rows**: numbers separated by spaces, tabs or commas; ``N + 2`` columns (ID,
  Rw, N mask bits) or ``N + 3`` (ID, Rw, number of atoms, N bits). ``#`` lines are
  comments.
* **CSV with a header**: a column named ``rw`` (or ``rwp``; case, spaces and units
  ignored), optionally ``id``/``index`` and ``size``/``number of atoms``, and either
  a ``mask`` column of 0/1 strings (``010011...``) or the N 0/1 columns of the atoms,
  in the order of the permutable atoms of the model.

Every problem is one :class:`~mlmotex_hpc.errors.InputError` line naming the file and
the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError

#: Header names of each role (lower case, spaces, ``_``, ``#`` and units stripped).
_RW = {"rw", "rwp", "rwvalue", "rwpvalue", "rwp_value", "goodnessoffit"}
_ID = {"id", "index", "row", "motif"}
_SIZE = {"size", "numberofatoms", "natoms", "atoms"}
_MASK = {"mask", "motifmask", "bits"}
_SPLIT = re.compile(r"[\s,;]+")


@dataclass(frozen=True, eq=False)
class FitsTable:
    """Rw of motifs of the permutable atoms, as a table gave them.

    Attributes
    ----------
    path : Path
    ids : ndarray of int64, shape (M,)
        The table's own IDs (its row numbers, 0-based, when it has none).
    rw : ndarray, shape (M,)
        NaN where the table says ``nan`` (a failed fit).
    masks : ndarray of bool, shape (M, N)
    """

    path: Path
    ids: np.ndarray
    rw: np.ndarray
    masks: np.ndarray

    def __len__(self) -> int:
        return len(self.rw)


def _name(text: str) -> str:
    text = re.sub(r"\(.*?\)|\[.*?\]", "", text.strip().strip("#").strip('"').lower())
    return re.sub(r"[\s_\-#.]", "", text)


def _lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InputError(f"cannot read fits table {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"fits table {path} is not a text file") from None
    return [(k, ln.strip()) for k, ln in enumerate(text.splitlines(), start=1)
            if ln.strip() and not ln.lstrip().startswith("#")]


def _float(token: str) -> float | None:
    try:
        return float(token)
    except ValueError:
        return None


def read_fits_table(path: str | Path, n_permutable: int) -> FitsTable:
    """Read a table of fits of motifs over ``n_permutable`` atoms (see the module notes).

    Raises
    ------
    InputError
        Naming the file and line: no rows, a row of another column count, a mask column
        that is not 0/1, a count of mask columns other than ``n_permutable``, Rw that is
        negative or infinite.
    """
    path = Path(path)
    lines = _lines(path)
    if not lines:
        raise InputError(f"fits table {path} has no rows")
    first = [t for t in _SPLIT.split(lines[0][1]) if t]
    header = None
    if any(_float(t) is None for t in first):
        delimiter = "," if "," in lines[0][1] else ("\t" if "\t" in lines[0][1] else None)
        header = [_name(t) for t in (lines[0][1].split(delimiter) if delimiter else first)]
        lines = lines[1:]
        if not lines:
            raise InputError(f"fits table {path} has a header and no rows")
    ids, rws, masks = [], [], []
    for lineno, line in lines:
        tokens = [t for t in (line.split(",") if header and "," in line else _SPLIT.split(line))]
        tokens = [t.strip() for t in tokens if t.strip()]
        if header is None:
            idx, rw, bits = _plain_row(path, lineno, tokens, n_permutable)
        else:
            idx, rw, bits = _header_row(path, lineno, tokens, header, n_permutable)
        ids.append(len(ids) if idx is None else idx)
        rws.append(rw)
        masks.append(bits)
    rw = np.array(rws, dtype=float)
    bad = np.flatnonzero(np.isinf(rw) | (rw < 0))
    if bad.size:
        raise InputError(f"fits table {path}, line {lines[int(bad[0])][0]}: Rw = "
                         f"{rw[bad[0]]} (must be a non-negative number, or nan for a failed "
                         "fit)")
    return FitsTable(path, np.array(ids, dtype=np.int64), rw, np.array(masks, dtype=bool))


def _bits(path: Path, lineno: int, tokens: list[str], n: int) -> list[bool]:
    if any(t not in ("0", "1", "0.0", "1.0") for t in tokens):
        bad = next(t for t in tokens if t not in ("0", "1", "0.0", "1.0"))
        raise InputError(f"fits table {path}, line {lineno}: mask values must be 0 or 1, "
                         f"found {bad!r}")
    if len(tokens) != n:
        raise InputError(f"fits table {path}, line {lineno}: {len(tokens)} mask columns, "
                         f"but the model has N = {n} permutable atoms")
    return [t.startswith("1") for t in tokens]


def _number(path: Path, lineno: int, token: str, what: str) -> float:
    value = _float(token)
    if value is None:
        raise InputError(f"fits table {path}, line {lineno}: {what} must be a number, "
                         f"found {token!r}")
    return value


def _plain_row(path: Path, lineno: int, tokens: list[str], n: int):
    if len(tokens) not in (n + 2, n + 3):
        raise InputError(
            f"fits table {path}, line {lineno}: {len(tokens)} columns; with N = {n} "
            f"permutable atoms a row is ID, Rw, then {n} mask bits ({n + 2} columns), or "
            f"ID, Rw, number of atoms, {n} bits ({n + 3})")
    idx = _number(path, lineno, tokens[0], "the ID")
    rw = _number(path, lineno, tokens[1], "Rw")
    return int(idx), rw, _bits(path, lineno, tokens[-n:], n)


def _header_row(path: Path, lineno: int, tokens: list[str], header: list[str], n: int):
    if len(tokens) != len(header):
        raise InputError(f"fits table {path}, line {lineno}: {len(tokens)} columns, the "
                         f"header has {len(header)}")
    roles = {}
    for k, name in enumerate(header):
        for role, names in (("rw", _RW), ("id", _ID), ("size", _SIZE), ("mask", _MASK)):
            if name in names and role not in roles:
                roles[role] = k
    if "rw" not in roles:
        raise InputError(f"fits table {path}: no Rw column in its header (name one 'rw')")
    rw = _number(path, lineno, tokens[roles["rw"]], "Rw")
    idx = None
    if "id" in roles:
        idx = int(_number(path, lineno, tokens[roles["id"]], "the ID"))
    if "mask" in roles:
        text = tokens[roles["mask"]].strip('"')
        return idx, rw, _bits(path, lineno, list(text), n)
    atom_cols = [k for k in range(len(header)) if k not in roles.values()]
    return idx, rw, _bits(path, lineno, [tokens[k] for k in atom_cols], n)


def write_fits_table(path: str | Path, ids: np.ndarray, rw: np.ndarray,
                     masks: np.ndarray) -> Path:
    """Write ML-MotEx's table: ID, Rw (repr precision: read back bit for bit), the motif's
    number of permutable atoms, then its mask bits, one motif a row."""
    path = Path(path)
    masks = np.asarray(masks, dtype=bool)
    n = masks.shape[1]
    head = (f"# ID Rw number_of_atoms then {n} mask bits (1: the permutable atom is kept), "
            "one motif a row\n")
    rows = [f"{int(i)} {float(r)!r} {int(m.sum())} " + " ".join("1" if b else "0" for b in m)
            for i, r, m in zip(ids, rw, masks, strict=True)]
    path.write_text(head + "\n".join(rows) + "\n")
    return path
