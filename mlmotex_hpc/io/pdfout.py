"""PDF curves as text files that the field's tools read.

* :func:`write_gr`: a computed G(r) in the layout PDFgetX3 and xPDFsuite write: a header
  of ``key = value`` comment lines, then ``#### start data``, ``#S 1`` and
  ``#L r($\\AA$)  G($\\AA^{-2}$)`` before two columns.
* :func:`write_fgr`: a fitted curve in PDFgui's fit format (``.fgr``, what PDFgui's
  "Export fit" writes): the fit's header (``stype``, ``qmax``, ``qdamp``, ``qbroad``,
  ``dscale``, ``fitrmin``, ``fitrmax``, then ``# metadata`` lines), ``##### start data``,
  ``#L r(A) G(r) d_r d_Gr Gdiff`` and rows of r, Gcalc, 0, dGcalc, Gobs - Gcalc (8
  significant digits where PDFgui writes 6).

Both read back with :func:`mlmotex_hpc.io.pdfdata.read_pdf_data` (and with PDFgui).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError

#: PDFgui's ``stype`` line for each radiation.
STYPE = {"xray": "stype=X  x-ray scattering", "neutron": "stype=N  neutron scattering"}
#: The column line of each format.
GR_COLUMNS = "#L r($\\AA$)  G($\\AA^{-2}$)"
FGR_COLUMNS = "#L r(A) G(r) d_r d_Gr Gdiff"


def _header_value(value) -> str:
    """One line's worth of ``value``: no newline may break the header."""
    return " ".join(str(value).split())


def _write(path: Path, lines: Iterable[str]) -> Path:
    path = Path(path)
    try:
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def write_gr(path: str | Path, r: np.ndarray, g: np.ndarray,
             header: Sequence[tuple[str, object]], title: str) -> Path:
    """A computed G(r): ``# title``, ``# key = value`` for each pair of ``header``, the
    data block's markers, then ``r G`` rows."""
    r, g = np.asarray(r, dtype=float), np.asarray(g, dtype=float)
    lines = [f"# {_header_value(title)}"]
    lines += [f"# {key} = {_header_value(value)}" for key, value in header]
    lines += ["", "#### start data", "#S 1", GR_COLUMNS]
    lines += [f"{ri:.6f} {gi:.10e}" for ri, gi in zip(r, g, strict=True)]
    return _write(path, lines)


def write_fgr(path: str | Path, r: np.ndarray, g_obs: np.ndarray, g_calc: np.ndarray, *,
              radiation: str, qmax: float, qdamp: float, qbroad: float, scale: float,
              metadata: Sequence[tuple[str, object]] = ()) -> Path:
    """A fit in PDFgui's ``.fgr`` layout on the fit's r grid. ``scale`` is PDFgui's
    ``dscale`` (the data scale factor); ``metadata`` pairs go under ``# metadata``
    (PDFgui writes the data file's metadata there). dGcalc is written as 0: neither
    fitter propagates an uncertainty to the curve."""
    from .. import __version__

    r = np.asarray(r, dtype=float)
    g_obs, g_calc = np.asarray(g_obs, dtype=float), np.asarray(g_calc, dtype=float)
    if not (r.shape == g_obs.shape == g_calc.shape) or r.ndim != 1 or r.size < 1:
        raise ValueError("r, Gobs and Gcalc must be one-dimensional and equal in size")
    lines = [f"History written: {time.ctime()}",
             f"produced by mlmotex-hpc {__version__}",
             "##### PDFgui fit"]
    if radiation in STYPE:
        lines.append(STYPE[radiation])
    if qmax:
        lines.append(f"qmax={qmax:.2f}")
    lines += [f"qdamp={qdamp:g}", f"qbroad={qbroad:g}", f"dscale={scale:g}",
              f"fitrmin={r[0]:g}", f"fitrmax={r[-1]:g}"]
    if metadata:
        lines.append("# metadata")
        lines += [f"{key}={_header_value(value)}" for key, value in metadata]
    lines += ["##### start data", FGR_COLUMNS]
    diff = g_obs - g_calc
    lines += [f"{ri:.8g} {gc:.8g} 0.0 0 {gd:.8g}"
              for ri, gc, gd in zip(r, g_calc, diff, strict=True)]
    return _write(path, lines)
