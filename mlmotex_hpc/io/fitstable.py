"""Tables of fits made elsewhere: steps 3-4 on Rw values mlmotex-hpc did not compute.

The original ML-MotEx's steps 3-4 learn from a text table, one motif a row: its ID, its
Rw, (optionally) its number of atoms, then one 0/1 column per permutable atom. This
module reads that table, or a CSV with a header, and writes the first form.

Formats read
------------
* **ML-MotEx rows** (no header): numbers separated by spaces, tabs, commas or
  semicolons; ``N + 2`` columns (ID, Rw, N mask bits) or ``N + 3`` (ID, Rw, number of
  atoms, N bits), the first row deciding which for the whole table. The bits are the
  permutable atoms in the model's order. ``#`` lines are comments.
* **CSV with a header** (comma, tab, semicolon or space separated; fields may be quoted):
  a column named ``rw`` (or ``rwp``; case, spaces and units ignored), optionally
  ``id``/``index`` and ``size``/``number of atoms``, and either a ``mask`` column of 0/1
  strings (``010011...``, the permutable atoms in the model's order; spaces inside are
  ignored) or one 0/1 column per permutable atom, *named* by the atom's label
  (``W1``, ``O2``, ...: element and 1-based index in the model, as the outputs name
  atoms; or its crystal site label where those are unique), in any order. Columns named
  otherwise (``W0``, ``bit3``, numbers) are refused, not read by position.

What is refused
---------------
Every problem is one :class:`~mlmotex_hpc.errors.InputError` line naming the file and
the line or column: a row of another column count than the first (or than the header),
an empty field, an ID that is not an integer (``3.5``, ``nan``, ``1e30``) or that
repeats an earlier row's, a bit other than 0/1, an all-zero mask (the empty motif, which
no catalogue holds), an atom count that differs from the row's 1 bits, Rw negative or
infinite (``nan`` is allowed: a failed fit), and in a header: no Rw column, a name given
twice, a role given twice, a per-atom column that is not a permutable atom of the model,
a permutable atom without a column, per-atom columns beside a ``mask`` column.

The same mask on two rows (with distinct IDs) is allowed: two fits of one motif, both
learned from; so a table may hold more rows than the 2^N - 1 distinct motifs.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError

#: Header names of each role (lower case, spaces, ``_``, ``#`` and units stripped).
_RW = {"rw", "rwp", "rwvalue", "rwpvalue", "rwp_value", "goodnessoffit"}
_ID = {"id", "index", "row", "motif"}
_SIZE = {"size", "numberofatoms", "natoms", "atoms"}
_MASK = {"mask", "motifmask", "bits"}
_ROLES = (("rw", _RW, "an Rw"), ("id", _ID, "an ID"), ("size", _SIZE, "an atom count"),
          ("mask", _MASK, "a mask"))
_SPLIT = re.compile(r"[\s,;]+")
_QUOTES = "\"'"
_BITS = {"0": False, "1": True, "0.0": False, "1.0": True}
#: IDs are int64.
_ID_LIMIT = 2**63


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
        Column ``i`` is the permutable atom ``labels[i]`` of :func:`read_fits_table`.
    """

    path: Path
    ids: np.ndarray
    rw: np.ndarray
    masks: np.ndarray

    def __len__(self) -> int:
        return len(self.rw)


def _name(text: str) -> str:
    text = re.sub(r"\(.*?\)|\[.*?\]", "", text.strip().strip("#").strip(_QUOTES).lower())
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


def _shown(labels: Sequence[str], count: int = 4) -> str:
    head = ", ".join(labels[:count])
    return head + (f", ... ({len(labels)} in all)" if len(labels) > count else "")


def read_fits_table(path: str | Path, labels: Sequence[str],
                    sites: Sequence[str] | None = None) -> FitsTable:
    """Read a table of fits of motifs over the permutable atoms ``labels`` (see the
    module notes).

    Parameters
    ----------
    path : str or Path
    labels : sequence of str, length N
        The permutable atoms' labels (:func:`~mlmotex_hpc.io.structure.site_labels` of
        the model at the permutable atoms, in the model's order): the names a header's
        per-atom columns must have. Plain rows and ``mask`` strings are in this order.
    sites : sequence of str, length N, optional
        The permutable atoms' crystal site labels, accepted as column names too where
        they are unique (ignored otherwise).

    Raises
    ------
    InputError
        One line naming the file and the line or column (see the module notes).
    """
    path = Path(path)
    labels = [str(x) for x in labels]
    n = len(labels)
    lines = _lines(path)
    if not lines:
        raise InputError(f"fits table {path} has no rows")
    first = [t.strip(_QUOTES) for t in _SPLIT.split(lines[0][1]) if t.strip(_QUOTES)]
    if any(_float(t) is None for t in first):
        delimiter = next((d for d in (",", "\t", ";") if d in lines[0][1]), None)
        header = _fields(path, lines[0][0], lines[0][1], delimiter)
        if len(lines) == 1:
            raise InputError(f"fits table {path} has a header and no rows")
        ids, rws, masks = _header_rows(path, lines[0][0], header, lines[1:], delimiter,
                                       labels, sites)
        lines = lines[1:]
    else:
        ids, rws, masks = _plain_rows(path, lines, n)
    linenos = [k for k, _ in lines]
    rw = np.array(rws, dtype=float)
    bad = np.flatnonzero(np.isinf(rw) | (rw < 0))
    if bad.size:
        raise InputError(f"fits table {path}, line {linenos[int(bad[0])]}: Rw = "
                         f"{rw[bad[0]]} (must be a non-negative number, or nan for a failed "
                         "fit)")
    masks = np.array(masks, dtype=bool).reshape(len(rws), n)
    empty = np.flatnonzero(~masks.any(axis=1))
    if empty.size:
        raise InputError(f"fits table {path}, line {linenos[int(empty[0])]}: the mask has no "
                         "atom (all bits 0): the empty motif has no PDF to fit; every motif "
                         "holds at least one permutable atom")
    if ids is None:
        ids = list(range(len(rws)))
    else:
        seen: dict[int, int] = {}
        for idx, lineno in zip(ids, linenos, strict=True):
            if idx in seen:
                raise InputError(f"fits table {path}, line {lineno}: ID {idx} is also the ID "
                                 f"of line {seen[idx]} (each motif's ID must be unique)")
            seen[idx] = lineno
    return FitsTable(path, np.array(ids, dtype=np.int64), rw, masks)


def _fields(path: Path, lineno: int, line: str, delimiter: str | None,
            header: list[str] | None = None) -> list[str]:
    """The fields of one line, quotes removed; a trailing delimiter is dropped (from a
    row, where it makes one field more than the ``header``); an empty field is refused."""
    if delimiter is None:
        fields = [t.strip(_QUOTES).strip() for t in line.split()]
    else:
        fields = [t.strip() for t in next(csv.reader([line], delimiter=delimiter,
                                                     skipinitialspace=True))]
        if (len(fields) > 1 and fields[-1] == ""
                and (header is None or len(fields) == len(header) + 1)):
            fields.pop()
    if "" in fields:
        col = fields.index("")
        what = ("header" if header is None else
                f"row's field {col + 1} ({header[col]!r})" if col < len(header) else "row")
        raise InputError(f"fits table {path}, line {lineno}: the "
                         + (f"{what}'s field {col + 1}" if "field" not in what else what)
                         + " is empty")
    return fields


def _bits(path: Path, lineno: int, tokens: Sequence[str]) -> list[bool]:
    try:
        return [_BITS[t] for t in tokens]
    except KeyError:
        bad = next(t for t in tokens if t not in _BITS)
        raise InputError(f"fits table {path}, line {lineno}: mask values must be 0 or 1, "
                         f"found {bad!r}") from None


def _number(path: Path, lineno: int, token: str, what: str) -> float:
    value = _float(token)
    if value is None:
        raise InputError(f"fits table {path}, line {lineno}: {what} must be a number, "
                         f"found {token!r}")
    return value


def _integer(path: Path, lineno: int, token: str, what: str) -> int:
    """An integral token (``12``, ``12.0``, ``1e3``) within int64."""
    if re.fullmatch(r"[+-]?[0-9]+", token):
        value = int(token) if len(token) < 30 else _ID_LIMIT  # (no int() of 5,000 digits)
    else:
        value = _number(path, lineno, token, what)
        if not (np.isfinite(value) and value == int(value)):
            raise InputError(f"fits table {path}, line {lineno}: {what} must be an integer, "
                             f"found {token!r}")
        value = int(value)
    if not -_ID_LIMIT <= value < _ID_LIMIT:
        raise InputError(f"fits table {path}, line {lineno}: {what} {token!r} is out of "
                         "range (a 64-bit integer)")
    return value


def _check_size(path: Path, lineno: int, token: str, bits: list[bool]) -> None:
    size = _integer(path, lineno, token, "the number of atoms")
    if size != sum(bits):
        raise InputError(f"fits table {path}, line {lineno}: the number of atoms is {size}, "
                         f"but {sum(bits)} of the row's mask bits are 1 (a column missing "
                         "or one too many?)")


def _plain_rows(path: Path, lines: list[tuple[int, str]], n: int):
    """ML-MotEx's rows: ID, Rw, [number of atoms,] N bits; the first row sets the form."""
    width = None
    ids, rws, masks = [], [], []
    for lineno, line in lines:
        tokens = [t.strip(_QUOTES) for t in _SPLIT.split(line)]
        tokens = [t for t in tokens if t]
        if width is None:
            if len(tokens) not in (n + 2, n + 3):
                raise InputError(
                    f"fits table {path}, line {lineno}: {len(tokens)} columns; with N = {n} "
                    f"permutable atoms a row is ID, Rw, then {n} mask bits ({n + 2} "
                    f"columns), or ID, Rw, number of atoms, {n} bits ({n + 3})")
            width, first = len(tokens), lineno
        elif len(tokens) != width:
            raise InputError(
                f"fits table {path}, line {lineno}: {len(tokens)} columns, but the first "
                f"row (line {first}) has {width} (ID, Rw, "
                f"{'number of atoms, ' if width == n + 3 else ''}{n} mask bits)")
        ids.append(_integer(path, lineno, tokens[0], "the ID"))
        rws.append(_number(path, lineno, tokens[1], "Rw"))
        bits = _bits(path, lineno, tokens[-n:])
        if width == n + 3:
            _check_size(path, lineno, tokens[2], bits)
        masks.append(bits)
    return ids, rws, masks


def _atom_columns(path: Path, names: list[tuple[int, str]], labels: list[str],
                  sites: Sequence[str] | None) -> list[int]:
    """For each permutable atom, the header column that holds it, from the per-atom
    columns' names ``[(column, name), ...]``."""
    n = len(labels)
    namings = [("label", labels)]
    if sites is not None and len(set(sites)) == len(sites) == n:
        namings.append(("crystal site label", [str(s) for s in sites]))
    given = [name for _, name in names]
    found = []
    for kind, names_of in namings:
        where = {name: i for i, name in enumerate(names_of)}
        if all(name in where for name in given):
            order = [where[name] for name in given]
            found.append((kind, names_of, order))
    if len(found) == 2 and found[0][2] != found[1][2]:
        raise InputError(
            f"fits table {path}: the per-atom columns' names are both the model's labels and "
            "crystal site labels, of other atoms: they are ambiguous; use a 'mask' column "
            "(the bits in the model's order)")
    need = ("name the per-atom columns by the labels of the model's permutable atoms "
            f"(element and 1-based index in the model: {_shown(labels)})"
            + (f" or crystal site labels ({_shown(namings[1][1])})" if len(namings) > 1
               else "")
            + ", or give the bits in one 'mask' column")
    if not found:
        if all(re.fullmatch(r"[+-]?\d+", name) for name in given):
            raise InputError(
                f"fits table {path}: the per-atom columns are named by numbers "
                f"({', '.join(given[:3])}{', ...' if len(given) > 3 else ''}): whether they "
                "count the permutable atoms or all the model's atoms, from 0 or from 1, is not "
                f"clear; {need}")
        best = max(namings, key=lambda kn: sum(name in kn[1] for name in given))[1]
        col, bad = next((c, name) for c, name in names if name not in best)
        raise InputError(f"fits table {path}: the header's column {col + 1}, {bad!r}, is not "
                         f"a permutable atom of the model; {need}")
    kind, names_of, order = found[0]
    if len(order) < n:
        missing = sorted(set(range(n)) - set(order))
        raise InputError(
            f"fits table {path}: the header has no column for the permutable atom "
            f"{names_of[missing[0]]} ({len(missing)} of the N = {n} missing); give every "
            "permutable atom a column, or the bits in one 'mask' column")
    columns = [0] * n
    for (col, _), atom in zip(names, order, strict=True):
        columns[atom] = col
    return columns


def _header_rows(path: Path, header_line: int, header: list[str],
                 lines: list[tuple[int, str]], delimiter: str | None, labels: list[str],
                 sites: Sequence[str] | None):
    n = len(labels)
    seen: dict[str, int] = {}
    for col, name in enumerate(header):
        if name in seen:
            raise InputError(f"fits table {path}, line {header_line}: the header names "
                             f"{name!r} twice (columns {seen[name] + 1} and {col + 1})")
        seen[name] = col
    roles: dict[str, int] = {}
    others = []
    for col, name in enumerate(header):
        key = _name(name)
        role = next(((r, what) for r, names, what in _ROLES if key in names), None)
        if role is None:
            others.append((col, name))
        elif role[0] in roles:
            raise InputError(
                f"fits table {path}, line {header_line}: the header has two columns of "
                f"{role[1]} ({header[roles[role[0]]]!r} and {name!r})")
        else:
            roles[role[0]] = col
    if "rw" not in roles:
        raise InputError(f"fits table {path}, line {header_line}: the first row is a header "
                         "(it is not all numbers) with no Rw column (name one 'rw')")
    if "mask" in roles:
        if others:
            raise InputError(
                f"fits table {path}: the header's column {others[0][0] + 1}, "
                f"{others[0][1]!r}, is not id, rw, size or mask: beside a 'mask' column no "
                "other column (per-atom or any) is read; remove it")
        columns = None
    elif not others:
        raise InputError(f"fits table {path}: no mask in its header: give a 'mask' column "
                         f"of 0/1 digits or one column per permutable atom ({_shown(labels)})")
    else:
        columns = _atom_columns(path, others, labels, sites)
    ids = [] if "id" in roles else None
    rws, masks = [], []
    for lineno, line in lines:
        tokens = _fields(path, lineno, line, delimiter, header)
        if len(tokens) != len(header):
            raise InputError(f"fits table {path}, line {lineno}: {len(tokens)} columns, the "
                             f"header has {len(header)}")
        rws.append(_number(path, lineno, tokens[roles["rw"]], "Rw"))
        if ids is not None:
            ids.append(_integer(path, lineno, tokens[roles["id"]], "the ID"))
        if columns is None:
            text = re.sub(r"\s", "", tokens[roles["mask"]])
            bits = _bits(path, lineno, list(text))
            if len(bits) != n:
                raise InputError(f"fits table {path}, line {lineno}: the mask has "
                                 f"{len(bits)} digits, but the model has N = {n} permutable "
                                 "atoms")
        else:
            bits = _bits(path, lineno, [tokens[c] for c in columns])
        if "size" in roles:
            _check_size(path, lineno, tokens[roles["size"]], bits)
        masks.append(bits)
    return ids, rws, masks


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
