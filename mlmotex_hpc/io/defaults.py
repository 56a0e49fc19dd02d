"""Settings the input files carry: qmin, qmax and the radiation from a data header, Uiso
from a crystal file.

A key the YAML gives wins; a key it omits takes the file's value when the file has one,
else the schema's default. :func:`with_file_defaults` records where every such value came
from (``Config.origins``, shown in the report) and a warning line wherever the YAML
contradicts a header (``Config.notes``, printed by rank 0 when the run starts).
"""

from __future__ import annotations

import dataclasses
import math

from ..config import Config
from .pdfdata import read_header
from .structure import load_model

#: Header keys of each setting, in the order they are looked for: xPDFsuite and PDFgetX3
#: write ``qmin``, ``qmax`` and ``mode``; PDFgui writes ``qmax`` and ``stype`` (X or N).
HEADER_KEYS = {
    "qmin": ("qmin",),
    "qmax": ("qmax",),
    "radiation": ("mode", "radiation", "stype"),
}
#: Radiation names of the headers.
_RADIATION = {"xray": "xray", "x-ray": "xray", "x": "xray", "neutron": "neutron",
              "n": "neutron"}
#: A header's Q that differs from the config's by less than this (Å⁻¹) agrees with it
#: (headers write the Q where the data end, 19.9990 for a nominal 20).
Q_AGREEMENT = 0.01


def header_settings(metadata: dict[str, str]) -> dict[str, object]:
    """``qmin``, ``qmax`` and ``radiation`` as a data header gives them (those it has)."""
    lowered = {k.lower(): v for k, v in metadata.items()}
    out: dict[str, object] = {}
    for name, keys in HEADER_KEYS.items():
        raw = next((lowered[k] for k in keys if k in lowered), None)
        if raw is None:
            continue
        if name == "radiation":
            words = raw.strip().strip("'\"").split()  # PDFgui: "X  x-ray scattering"
            value = _RADIATION.get(words[0].lower()) if words else None
        else:
            try:
                value = float(raw)
            except ValueError:
                value = None
            if value is not None and not (math.isfinite(value) and value >= 0):
                value = None
        if value is not None:
            out[name] = value
    return out


def _differs(name: str, a, b) -> bool:
    if name == "radiation":
        return a != b
    return abs(float(a) - float(b)) > Q_AGREEMENT


def with_file_defaults(config: Config) -> Config:
    """``config`` with the settings its files carry filled in where the YAML is silent.

    The data header is the first frame's (a series shares its processing). Uiso comes
    from a crystal file (not an ``.xyz``) for each element that ``pdf.uiso`` (or
    ``pdf.biso``) leaves out and the file gives a non-zero value for.
    """
    origins: list[tuple[str, str]] = []
    notes: list[str] = []
    pdf = config.pdf
    if config.data:
        first = config.data[0]
        found = header_settings(read_header(first))
        changes = {}
        for name in HEADER_KEYS:
            key = f"pdf.{name}"
            if name not in found:
                if key not in config.given:
                    origins.append((key, "default"))
                continue
            if key in config.given:
                if _differs(name, getattr(pdf, name), found[name]):
                    notes.append(f"config key '{key}' = {getattr(pdf, name)} but the header "
                                 f"of {first.name} says {found[name]}; the config's value "
                                 "is used")
                continue
            changes[name] = found[name]
            origins.append((key, f"header of {first.name}"))
        if changes:
            pdf = dataclasses.replace(pdf, **changes)
            if pdf.qmax <= pdf.qmin:
                notes.append(f"qmin = {pdf.qmin} and qmax = {pdf.qmax} (from the header of "
                             f"{first.name}) leave no Q range; the defaults are used")
                pdf = dataclasses.replace(pdf, qmin=config.pdf.qmin, qmax=config.pdf.qmax)
    if config.structure.suffix.lower() != ".xyz":
        given = dict(pdf.uiso)
        from_file = {el: u for el, u in load_model(config.structure, config.model)
                     .element_uiso().items() if el not in given}
        if from_file:
            pdf = dataclasses.replace(pdf, uiso=tuple(given.items()) + tuple(from_file.items()))
            origins += [(f"pdf.uiso.{el}", f"structure file {config.structure.name}")
                        for el in from_file]
    return dataclasses.replace(config, pdf=pdf, origins=tuple(origins), notes=tuple(notes))


def setting_sources(config: Config, elements: tuple[str, ...] = ()) -> list[tuple[str, str, str]]:
    """``(key, value, where it came from)`` of each setting a file may give: qmin, qmax,
    the radiation, and the Uiso of each of ``elements`` (for the report). ``config`` is
    one :func:`with_file_defaults` has filled."""
    origins = dict(config.origins)
    given = config.given
    rows = []
    for name in HEADER_KEYS:
        key = f"pdf.{name}"
        source = "config" if key in given else origins.get(key, "default")
        rows.append((key, str(getattr(config.pdf, name)), source))
    uiso = dict(config.pdf.uiso)
    thermal = "pdf.biso" if "pdf.biso" in given else "pdf.uiso"
    for el in dict.fromkeys(elements):
        key = f"pdf.uiso.{el}"
        if key in origins:
            rows.append((key, f"{uiso[el]:.6g}", origins[key]))
        elif el in uiso:
            rows.append((key, f"{uiso[el]:.6g}", f"config ({thermal})"))
        else:
            source = "config" if "pdf.default_uiso" in given else "default"
            rows.append((key, f"{config.pdf.default_uiso:.6g}", f"{source} (pdf.default_uiso)"))
    return rows
