"""Measured pair distribution functions: G(r) text files as beamline programs write them.

Formats read
------------
* **xPDFsuite** ``.gr``: an ini-style header (``[PDF]``, ``[Misc]`` sections of
  ``key = value`` lines), then ``#### start data``, ``#S 1``, ``#L r($\\AA$) G($\\AA^{-2}$)``
  and the columns.
* **PDFgetX3** ``.gr``: the same layout with a ``[DEFAULT]`` section and ``#`` comments.
* **Plain columns** (Dioptas exports, ``numpy.savetxt`` files, DiffPy-style tables): two to
  four numbers a line separated by spaces, tabs or commas, optionally after a header of
  ``#`` comments. Without names the columns are ``r G``, ``r G dG`` or ``r G dr dG``
  (PDFgui's convention).

When a ``#L`` line names the columns (``r``, ``G``/``G(r)``, ``dr``, ``dG``), the names
choose the r, G and dG columns; otherwise their position does.

Every problem is an :class:`~mlmotex_hpc.errors.InputError` of one line naming the file and,
where there is one, the line number (1-based, as an editor shows it).
"""

from __future__ import annotations

import math
import re
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError

#: The fit needs at least this many data points between rmin and rmax.
MIN_FIT_POINTS = 10

#: Most data points a file may hold: 10⁶ (10,000 Å at a 0.01 Å step). A measured G(r)
#: holds 10³-10⁴ (r to 30-100 Å at 0.01 Å; the Nyquist step π/Qmax is 0.1-0.2 Å), so a
#: file beyond this is a mistake (a 10⁻⁴ Å grid), whose reading alone would take
#: gigabytes. The `pdf` command writes at most as many.
MAX_DATA_POINTS = 10**6
#: Header, comment and blank lines allowed besides the data points.
MAX_OTHER_LINES = 100_000
#: Largest file read (bytes): 10⁶ lines of four full-precision columns take ~100 MB.
MAX_FILE_BYTES = 256 * 2**20

#: Largest allowed deviation of one r step from the grid step, relative to that step.
#: Generous enough for r written with a few significant digits or as float32, tight
#: enough to catch a missing point or a grid that is not uniform.
STEP_RTOL = 1e-2

#: The line that xPDFsuite and PDFgetX3 (``#### start data``) and PDFgui (``#####``)
#: write between the header and the data.
_START_DATA = re.compile(r"#{3,}\s*start data\s*$")

#: Recognised ``#L`` column names (lower case, units stripped) for each role.
_ALIASES = {
    "r": {"r"},
    "g": {"g", "gr", "g(r)", "gobs", "gcalc"},
    "dr": {"dr", "d_r", "sigr", "rerr"},
    "dg": {"dg", "dgr", "d_gr", "dg(r)", "sigg", "sigmag", "gerr", "gerror", "dgobs"},
}

_KEY = re.compile(r"[A-Za-z_][\w.\-]*")
_SEPARATORS = re.compile(r"[\s,;]+")
_COLUMNS_LINE = re.compile(r"#L\s")


@dataclass(frozen=True, eq=False)
class PDFData:
    """A measured PDF on a uniform, increasing r grid.

    Attributes
    ----------
    path : Path
        The file it was read from (named in every error message).
    r : ndarray, shape (n,)
        Radial distances in Å, strictly increasing with a uniform step.
    g : ndarray, shape (n,)
        G(r) in Å⁻².
    dg : ndarray, shape (n,), or None
        Uncertainties of G(r) when the file has a dG column that is not all zero.
        Values may be zero or negative; :meth:`weights` refuses them.
    metadata : dict of str to str
        ``key = value`` pairs of the header (``qmin``, ``qmax``, ``wavelength``,
        ``composition``, ...); the first occurrence of a key wins.
    line_numbers : ndarray of int, shape (n,), or None
        The file line of every data point, used to point at a bad point in messages.
    """

    path: Path
    r: np.ndarray
    g: np.ndarray
    dg: np.ndarray | None
    metadata: dict[str, str]
    line_numbers: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.r)

    @property
    def rstep(self) -> float:
        """The grid step in Å (mean spacing of the points)."""
        return float((self.r[-1] - self.r[0]) / (len(self.r) - 1))

    def _where(self, index: int) -> str:
        """``line N`` of a data point when line numbers are known, else ``point N``."""
        if self.line_numbers is not None:
            return f"line {int(self.line_numbers[index])}"
        return f"point {index + 1}"

    def fit_range(self, rmin: float, rmax: float) -> slice:
        """The data points with ``rmin <= r <= rmax``.

        A tolerance of 10⁻⁶ of the step absorbs float rounding, so ``rmax = 10.0``
        includes the point written as ``10`` or ``9.999999999``.

        Parameters
        ----------
        rmin, rmax : float
            The fit range in Å.

        Returns
        -------
        slice
            Index into :attr:`r`, :attr:`g` and :attr:`dg`.

        Raises
        ------
        InputError
            When ``rmin >= rmax``, when the range is not inside the data's r-range, or when
            it holds fewer than :data:`MIN_FIT_POINTS` points; the message names the file,
            the range and the data's r-range.
        """
        rmin, rmax = float(rmin), float(rmax)
        span = f"r {self.r[0]:g}–{self.r[-1]:g} Å, step {self.rstep:g} Å"
        if not (math.isfinite(rmin) and math.isfinite(rmax)) or rmin >= rmax:
            raise InputError(
                f"fit range rmin = {rmin:g}, rmax = {rmax:g} Å is empty: they must be finite "
                f"numbers with rmin < rmax ({self.path} holds {span})"
            )
        tol = 1e-6 * self.rstep
        if rmin < self.r[0] - tol or rmax > self.r[-1] + tol:
            raise InputError(
                f"fit range {rmin:g}–{rmax:g} Å lies outside the data of {self.path} ({span})"
            )
        start = int(np.searchsorted(self.r, rmin - tol, side="left"))
        stop = int(np.searchsorted(self.r, rmax + tol, side="right"))
        if stop - start < MIN_FIT_POINTS:
            raise InputError(
                f"fit range {rmin:g}–{rmax:g} Å holds {stop - start} points of {self.path} "
                f"({span}); at least {MIN_FIT_POINTS} are needed"
            )
        return slice(start, stop)

    def weights(self, sl: slice | np.ndarray) -> np.ndarray:
        """Fit weights w = 1/dG² over the points ``sl`` (from :meth:`fit_range`).

        Raises
        ------
        InputError
            When the file has no usable dG column, or when a dG in the range is not a
            positive number (naming its line).
        """
        if self.dg is None:
            raise InputError(
                f"fit weights 'dG' need uncertainties, but {self.path} has no dG column "
                "(or only zeros); use fit.weights: unit"
            )
        dg = self.dg[sl]
        bad = np.flatnonzero(~(dg > 0))
        if bad.size:
            index = np.arange(len(self.r))[sl][bad[0]]
            raise InputError(
                f"{self.path}, {self._where(index)}: dG = {self.dg[index]:g} at "
                f"r = {self.r[index]:g} Å cannot be a fit weight ({bad.size} points in the "
                "fit range have dG <= 0); use fit.weights: unit"
            )
        with np.errstate(over="ignore", divide="ignore", under="ignore"):
            weights = 1.0 / dg**2
        bad = np.flatnonzero(~np.isfinite(weights) | (weights > 1e300))
        if bad.size:
            index = np.arange(len(self.r))[sl][bad[0]]
            raise InputError(
                f"{self.path}, {self._where(index)}: dG = {self.dg[index]:g} at "
                f"r = {self.r[index]:g} Å is too small to be a fit weight (1/dG² overflows; "
                f"{bad.size} such points in the fit range); check the dG column, or use "
                "fit.weights: unit"
            )
        return weights


def _too_many(path: Path, what: str) -> InputError:
    return InputError(
        f"PDF data file {path} {what}; at most {MAX_DATA_POINTS:,} data points are read (a "
        "measured G(r) holds about 10⁴: r to 100 Å at 0.01 Å): resample it to a coarser "
        "r step or cut its r range")


def _read_lines(path: Path) -> list[str]:
    """The file's lines, any of LF, CRLF or CR endings, without the newline characters.

    Files beyond :data:`MAX_FILE_BYTES` or with more lines than :data:`MAX_DATA_POINTS`
    and :data:`MAX_OTHER_LINES` are refused before they are split into lines.
    """
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise _too_many(path, f"is {size / 2**20:,.0f} MiB (more than "
                            f"{MAX_FILE_BYTES / 2**20:.0f} MiB)")
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read PDF data file {path}: {exc.strerror or exc}") from None
    if b"\x00" in raw:
        raise InputError(f"PDF data file {path} is not a text file (it holds NUL bytes)")
    lines = _line_count(raw)
    if lines > MAX_DATA_POINTS + MAX_OTHER_LINES:
        raise _too_many(path, f"has {lines:,} lines")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # Windows programs write paths in a code page
    del raw
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _line_count(raw: bytes) -> int:
    """Lines of a file's bytes, whichever of LF, CRLF or CR ends them."""
    return max(raw.count(b"\n"), raw.count(b"\r")) + (not raw.endswith((b"\n", b"\r")))


#: Bytes of reading one line (its str object, in the list of lines: CPython's 49-byte
#: header, the characters, rounded to 8, and the list's pointer) besides the characters,
#: and of each data point (the columns in an ``array('d')``, its line number in an
#: ``array('q')``, then r, G, dG and the line numbers as numpy arrays; the arrays grow
#: by up to 1/8 when appended to).
LINE_BYTES = 64
POINT_BYTES = 16 + 5 * 8


def reading_bytes(path: str | Path) -> int:
    """Peak bytes that :func:`read_pdf_data` takes to read ``path`` (the file's bytes
    twice while decoding, then its lines and points), from its size and line count; 0
    when the file cannot be read (its reading refuses it)."""
    try:
        size = Path(path).stat().st_size
        if size > MAX_FILE_BYTES:
            return 0
        lines = 0
        with open(path, "rb") as f:
            while chunk := f.read(2**24):
                lines += max(chunk.count(b"\n"), chunk.count(b"\r"))
    except OSError:
        return 0
    return 2 * size + lines * (LINE_BYTES + POINT_BYTES)


def _numbers(tokens: list[str]) -> list[float] | None:
    """The tokens as floats, or None when one of them is not a number."""
    try:
        return [float(tok) for tok in tokens]
    except ValueError:
        return None


def _tokens(line: str) -> list[str]:
    """Data fields of a line: split on spaces, tabs, commas or semicolons."""
    return [tok for tok in _SEPARATORS.split(line.strip()) if tok]


def _column_names(line: str) -> list[str]:
    """Column names of a ``#L`` line, lower case with units removed.

    ``#L r($\\AA$)  G($\\AA^{-2}$)`` gives ``["r", "g"]``; a unit standing alone
    (``r (A)``) is dropped, and ``G(r)`` keeps its ``(r)``.
    """
    names = []
    for tok in line[2:].split():
        if tok[0] in "([":
            continue  # a unit after a space belongs to the previous name
        tok = tok.lower()
        if tok.endswith("(r)"):
            names.append(tok)
        else:
            names.append(re.split(r"[(\[]", tok, maxsplit=1)[0])
    return names


def _roles(names: list[str] | None, ncol: int) -> dict[str, int] | None:
    """Column index of r, G and (optionally) dG, or None when they cannot be told.

    Names from a ``#L`` line are used when they name both r and G and there is one name
    per column; otherwise the position decides: ``r G``, ``r G dG`` or ``r G dr dG``.
    """
    if names is not None and len(names) == ncol:
        found: dict[str, int] = {}
        for i, name in enumerate(names):
            for role, aliases in _ALIASES.items():
                if name in aliases and role not in found:
                    found[role] = i
        if "r" in found and "g" in found:
            return {role: found[role] for role in ("r", "g", "dg") if role in found}
    return {2: {"r": 0, "g": 1}, 3: {"r": 0, "g": 1, "dg": 2}, 4: {"r": 0, "g": 1, "dg": 3}}.get(
        ncol
    )


def _header_pair(line: str) -> tuple[str, str] | None:
    """A ``key = value`` pair of a header line (ini style or after ``#``), else None."""
    commented = line.startswith("#")
    body = line.lstrip("#").strip() if commented else line.strip()
    if "=" not in body or body.startswith(("[", ";")):
        return None
    if commented and body.count("=") != 1:
        return None  # free prose or several pairs on one comment line: not metadata
    key, value = (part.strip() for part in body.split("=", 1))
    if not _KEY.fullmatch(key):
        return None
    return key, value


def read_pdf_data(path: str | Path) -> PDFData:
    """Read a measured PDF file: xPDFsuite, PDFgetX3 or plain columns.

    Parameters
    ----------
    path : str or Path
        The ``.gr`` (or any text) file.

    Returns
    -------
    PDFData
        r, G(r), dG(r) when present, and the header's ``key = value`` pairs.

    Raises
    ------
    InputError
        One line naming the file, and the line where the problem is: a missing,
        unreadable or binary file; no numeric data; text, NaN or infinity in the data
        block; a line whose column count differs from the first data line; columns that
        cannot be told apart; fewer than two points; r that decreases, repeats or is not
        on a uniform grid; a file of more than :data:`MAX_DATA_POINTS` points (or
        :data:`MAX_FILE_BYTES`), before it is parsed.
    """
    return _read(Path(path), header_only=False)


def _read(path: Path, header_only: bool):
    """:func:`read_pdf_data`, or only the header's ``key = value`` pairs
    (``header_only``: the lines up to the first data line are parsed)."""
    path = Path(path)
    lines = _read_lines(path)
    # Where the data begins: after "#### start data" when present, else at the first line
    # made of numbers only.
    marker = next((i for i, ln in enumerate(lines) if _START_DATA.match(ln.strip())), None)
    metadata: dict[str, str] = {}
    names: list[str] | None = None
    in_data = False
    columns = array("d")  # every data line's numbers, row after row
    line_numbers = array("q")
    ncol = 0
    for i, raw_line in enumerate(lines):
        line = raw_line.strip()
        lineno = i + 1
        if not line:
            continue
        if marker is not None and i <= marker:
            # everything up to "#### start data" is header
            if _COLUMNS_LINE.match(line):
                names = _column_names(line)
            elif (pair := _header_pair(line)) is not None:
                metadata.setdefault(*pair)
            in_data = i == marker
            continue
        if line.startswith("#"):
            if _COLUMNS_LINE.match(line) and not line_numbers:
                names = _column_names(line)
            elif not line_numbers and (pair := _header_pair(line)) is not None:
                metadata.setdefault(*pair)
            continue
        tokens = _tokens(line.split("#", 1)[0])  # a trailing "# comment" is allowed
        values = _numbers(tokens)
        if not in_data:
            if values is None or not values:
                if (pair := _header_pair(line)) is not None:
                    metadata.setdefault(*pair)
                continue
            in_data = True
        if header_only:
            break  # the first data line: the header is complete
        if values is None:
            raise InputError(
                f"{path}, line {lineno}: expected numbers in the data block, found {line[:60]!r}"
            )
        if not line_numbers:
            ncol = len(values)
            if _roles(names, ncol) is None:
                raise InputError(
                    f"{path}, line {lineno}: {ncol} column(s); expected 2 to 4 (r G, r G dG or "
                    "r G dr dG) or a '#L' line naming the r and G columns"
                )
        elif len(values) != ncol:
            raise InputError(
                f"{path}, line {lineno}: {len(values)} columns, but the data block began "
                f"with {ncol} at line {line_numbers[0]}"
            )
        bad = next(
            (tok for tok, v in zip(tokens, values, strict=True) if not math.isfinite(v)), None
        )
        if bad is not None:
            raise InputError(
                f"{path}, line {lineno}: {bad!r} is not a finite number (in {line[:60]!r})"
            )
        if len(line_numbers) == MAX_DATA_POINTS:
            raise _too_many(path, f"holds more data points (line {lineno:,})")
        columns.extend(values)
        line_numbers.append(lineno)
    if header_only:
        return metadata
    if not any(ln.strip() for ln in lines):
        raise InputError(f"PDF data file {path} is empty")
    if not line_numbers:
        where = (f" after '{lines[marker].strip()}' (line {marker + 1})"
                 if marker is not None else "")
        raise InputError(
            f"PDF data file {path} holds no numeric data{where}: expected lines of r G(r)"
        )
    if len(line_numbers) < 2:
        raise InputError(
            f"{path}, line {line_numbers[0]}: only one data point; a PDF needs an r grid"
        )

    del lines
    table = np.frombuffer(columns, dtype=float).reshape(-1, ncol)
    lines_arr = np.array(line_numbers, dtype=np.int64)
    del line_numbers
    roles = _roles(names, ncol)
    assert roles is not None  # checked at the first data line
    r = np.ascontiguousarray(table[:, roles["r"]])
    g = np.ascontiguousarray(table[:, roles["g"]])
    dg = np.ascontiguousarray(table[:, roles["dg"]]) if "dg" in roles else None
    if dg is not None and not np.any(dg):
        dg = None  # an all-zero dG column carries no uncertainties

    _check_grid(path, r, lines_arr)
    return PDFData(path, r, g, dg, metadata, lines_arr)


def _check_grid(path: Path, r: np.ndarray, lines: np.ndarray) -> None:
    """Raise unless r strictly increases on a uniform grid, naming the first bad line."""
    step = np.diff(r)
    if np.any(step == 0):
        k = int(np.flatnonzero(step == 0)[0])
        raise InputError(
            f"{path}, line {lines[k + 1]}: duplicate r = {r[k + 1]:g} Å (also on line "
            f"{lines[k]}); r must increase"
        )
    if np.any(step < 0):
        k = int(np.flatnonzero(step < 0)[0])
        order = "descending" if np.all(step < 0) else "not monotonic"
        raise InputError(
            f"{path}, line {lines[k + 1]}: r = {r[k + 1]:g} Å after r = {r[k]:g} Å "
            f"(line {lines[k]}); r is {order}, it must increase"
        )
    grid = float(np.median(step))
    off = np.abs(step - grid) > STEP_RTOL * grid
    if np.any(off):
        k = int(np.flatnonzero(off)[0])
        raise InputError(
            f"{path}, line {lines[k + 1]}: r step {step[k]:g} Å (r = {r[k]:g} to "
            f"{r[k + 1]:g} Å) differs from the grid step {grid:g} Å; the fit uses the data's "
            "r grid, which must be uniform (resample the data)"
        )


def read_header(path: str | Path) -> dict[str, str]:
    """The ``key = value`` pairs of a PDF file's header, as :func:`read_pdf_data` finds
    them; the data lines are not parsed (reading the data checks them)."""
    return _read(Path(path), header_only=True)
