"""Crystal files (CIF) read with gemmi, expanded by the file's own symmetry operators.

diffpy.structure identifies a CIF's space group by its symbol and expands the sites with
its own table of operators; for a group with two origin choices it can take the other one
(the magnetites ICSD 26410, 49549 and 50567, Fd-3m origin choice 2, come out with two O
0.12 Å apart). gemmi (the C++ CIF and space-group library of crystallography) parses a
CIF in about half a millisecond, and here each site is expanded by the operators the file
lists (``_space_group_symop_operation_xyz`` or ``_symmetry_equiv_pos_as_xyz``); only a file
that lists none falls back to its Hall or Hermann–Mauguin symbol, and a file with neither
is P1. Images of one site closer than ``tolerance`` (fractional, per axis, across the
cell's edges) are one atom, as diffpy.structure's ``eps`` merges them; the copies are
labelled as diffpy.structure labels them (``Fe1``, ``Fe1_2``, ``Fe1_3``, ...).

Uiso is the file's (``_atom_site_U_iso_or_equiv``, or B/8π²), else the equivalent
isotropic value of the anisotropic one, else NaN. Occupancy is the file's (1 when absent).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError

#: Suffixes read as CIF.
CIF_SUFFIXES = (".cif", ".mcif")


@dataclass(frozen=True, eq=False)
class CrystalCell:
    """One cell's atoms as a crystal file gives them, its symmetry applied."""

    elements: tuple[str, ...]  # element symbols as gemmi names them ("Fe", "W")
    labels: tuple[str, ...]
    uiso: np.ndarray  # Å², NaN: not given
    occupancy: np.ndarray
    frac: np.ndarray  # (n, 3), in [0, 1)
    cell: tuple[float, float, float, float, float, float]  # a, b, c (Å), alpha, beta, gamma (°)
    operators: int  # symmetry operators applied


def read_cif(path: Path, text: str, tolerance: float) -> CrystalCell:
    """The cell of the first data block of ``text`` (the file ``path``) that has atom
    sites; one line naming the file when it is not a CIF gemmi can read or has no atoms."""
    import gemmi

    try:
        doc = gemmi.cif.read_string(text)
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"structure file {path}: not a readable CIF ({_gemmi_message(exc)})"
                         ) from None
    small = None
    for block in doc:
        if block.find_value("_atom_site_fract_x") is None and not block.find_loop(
                "_atom_site_fract_x"):
            continue
        _check_finite(path, block)
        try:
            small = gemmi.make_small_structure_from_block(block)
        except (RuntimeError, ValueError) as exc:
            raise InputError(f"structure file {path}: not a readable CIF "
                             f"({_gemmi_message(exc)})") from None
        break
    if small is None or not len(small.sites):
        raise InputError(f"structure file {path}: no atoms in it")
    c = small.cell
    cell = _cell_as_written(block)  # gemmi replaces a cell it cannot use: check the file's
    operators = _operators(path, small)
    elements, labels, uiso, occupancy, frac = [], [], [], [], []
    for site in small.sites:
        f0 = np.array(site.fract.tolist(), dtype=float)
        if not np.all(np.isfinite(f0)):
            raise InputError(f"{path}: site {site.label}: its coordinates are not finite "
                             f"numbers ({', '.join(f'{v:g}' for v in f0)})")
        images = _images(f0, operators, tolerance)
        u = _site_uiso(site, c)
        for k, image in enumerate(images):
            elements.append(site.element.name)
            labels.append(site.label if k == 0 else f"{site.label}_{k + 1}")
            uiso.append(u)
            occupancy.append(float(site.occ))
            frac.append(image)
    unknown = [lab for lab, el in zip(labels, elements, strict=True) if el == "X"]
    if unknown:
        site = next(s for s in small.sites if s.label == unknown[0])
        raise InputError(f"{path}: site {site.label}: unknown element {site.type_symbol!r}")
    return CrystalCell(tuple(elements), tuple(labels), np.array(uiso), np.array(occupancy),
                       np.array(frac).reshape(-1, 3), cell, len(operators[0]))


#: The cell's keys, in the order of :attr:`CrystalCell.cell`.
CELL_KEYS = ("_cell_length_a", "_cell_length_b", "_cell_length_c", "_cell_angle_alpha",
             "_cell_angle_beta", "_cell_angle_gamma")


def _cell_as_written(block) -> tuple[float, ...]:
    """The cell parameters as the block writes them (esd in brackets dropped); NaN for a
    missing or non-numeric one, 90° for a missing angle (as gemmi and diffpy.structure
    take it)."""
    import gemmi

    values = []
    for key in CELL_KEYS:
        text = block.find_value(key)
        if text is None and "angle" in key:
            values.append(90.0)
            continue
        value = None if text is None else _number(gemmi.cif.as_string(text))
        values.append(math.nan if value is None else value)
    return tuple(values)


def _number(text: str) -> float | None:
    """A CIF number (its esd in brackets dropped), ``nan`` and ``inf`` as written; None for
    ``?``, ``.`` or text that is no number."""
    try:
        return float(re.sub(r"\(\d+\)$", "", text.strip()))
    except ValueError:
        return None


def _check_finite(path: Path, block) -> None:
    """Refuse a site whose coordinates or occupancy the file writes as NaN or infinity
    (gemmi would read an occupancy that is not a number as 1)."""
    import gemmi

    labels = list(block.find_loop("_atom_site_label"))
    for key, what in (("_atom_site_fract_x", "coordinates are"),
                      ("_atom_site_fract_y", "coordinates are"),
                      ("_atom_site_fract_z", "coordinates are"),
                      ("_atom_site_occupancy", "occupancy is")):
        for k, text in enumerate(block.find_loop(key)):
            value = _number(gemmi.cif.as_string(text))
            if value is not None and not math.isfinite(value):
                label = labels[k] if k < len(labels) else f"row {k + 1}"
                raise InputError(f"{path}: site {label}: its {what} not a finite number "
                                 f"({key} = {text})")


def _gemmi_message(exc: BaseException) -> str:
    """gemmi's message, its first line; the text's position as a line number."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return re.sub(r"^string:(\d+):[\d()]*:?\s*", r"line \1: ", line)


def _operators(path: Path, small) -> tuple[np.ndarray, np.ndarray]:
    """The rotations (n, 3, 3) and translations (n, 3) of every symmetry operator,
    fractional: the ones the file lists, else its space group's, else the identity."""
    import gemmi

    ops = []
    if len(small.symops):
        try:
            ops = [gemmi.Op(text) for text in small.symops]
        except (RuntimeError, ValueError) as exc:
            raise InputError(f"structure file {path}: a symmetry operator cannot be read "
                             f"({_gemmi_message(exc)})") from None
    elif small.spacegroup is not None:  # from the Hall or H-M symbol
        ops = list(small.spacegroup.operations())
    if not ops:
        ops = [gemmi.Op("x,y,z")]
    rot = np.array([op.rot for op in ops], dtype=float) / gemmi.Op.DEN
    tran = np.array([op.tran for op in ops], dtype=float) / gemmi.Op.DEN
    return rot, tran


def _images(f0: np.ndarray, operators, tolerance: float) -> np.ndarray:
    """A site's distinct images in the cell, in operator order, each in [0, 1): an image
    is dropped when an earlier one lies within ``tolerance`` of it on every axis (across
    the cell's edges)."""
    rot, tran = operators
    images = (rot @ f0 + tran) % 1.0
    images[images >= 1.0] = 0.0  # -1e-17 % 1 is 1.0
    d = images[:, None, :] - images[None, :, :]
    d -= np.round(d)
    same = np.all(np.abs(d) < tolerance, axis=2)
    return images[~np.tril(same, -1).any(axis=1)]


def _site_uiso(site, cell) -> float:
    """The site's Uiso (Å²): the file's, else the equivalent of its anisotropic U, else
    NaN."""
    if site.u_iso > 0:
        return float(site.u_iso)
    aniso = site.aniso
    if aniso.nonzero():
        u = np.array([[aniso.u11, aniso.u12, aniso.u13], [aniso.u12, aniso.u22, aniso.u23],
                      [aniso.u13, aniso.u23, aniso.u33]])
        orth = np.array(cell.orth.mat.tolist())  # columns: a, b, c in Å
        rc = cell.reciprocal()
        recip = np.array([rc.a, rc.b, rc.c])  # |a*|, |b*|, |c*|
        n = np.diag(recip)
        u_cart = orth @ n @ u @ n @ orth.T
        return float(np.trace(u_cart) / 3.0)
    return math.nan
