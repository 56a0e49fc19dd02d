"""Settings the input files carry: qmin, qmax and the radiation from a data header, Uiso
from a crystal file.

A key the YAML gives wins; a key it omits takes the file's value when the file has one,
else the schema's default. :func:`with_file_defaults` records where every such value came
from (``Config.origins``, shown in the report) and a warning line wherever the YAML
contradicts a header (``Config.notes``, printed by rank 0 when the run starts).

A header value that makes no sense (``qmax = abc``, ``qmin = -5``, ``mode = electron``)
is a warning when the YAML sets that key (the header's value would not be used anyway)
and an error when the YAML leaves it to the header: the run would otherwise compute the
PDF with a default Q range or radiation that the data file contradicts, unnoticed; one
line in the config settles it. Values the header supplies are checked with the config's
own (:class:`~mlmotex_hpc.pdf.settings.PDFSettings`: Qmax within the radiation's limit),
and a refusal names the file and key they came from.
"""

from __future__ import annotations

import dataclasses
import math

from ..config import Config
from ..errors import InputError
from ..pdf.settings import PDFSettings
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
    """``qmin``, ``qmax`` and ``radiation`` as a data header gives them (those it has and
    that make sense; see :func:`header_problems` for the others)."""
    return _parse_header(metadata)[0]


def header_problems(metadata: dict[str, str]) -> dict[str, tuple[str, str, str]]:
    """The settings whose header value makes no sense: setting -> (header key, value as
    written, what is wrong)."""
    return _parse_header(metadata)[1]


def _parse_header(metadata: dict[str, str]):
    lowered = {k.lower(): (k, v) for k, v in metadata.items()}
    out: dict[str, object] = {}
    problems: dict[str, tuple[str, str, str]] = {}
    for name, keys in HEADER_KEYS.items():
        hit = next((lowered[k] for k in keys if k in lowered), None)
        if hit is None:
            continue
        key, raw = hit
        if name == "radiation":
            words = raw.strip().strip("'\"").split()  # PDFgui: "X  x-ray scattering"
            value = _RADIATION.get(words[0].lower()) if words else None
            if value is None:
                problems[name] = (key, raw, "not a radiation mlmotex-hpc models (xray or "
                                  "neutron)")
                continue
        else:
            try:
                value = float(raw)
            except ValueError:
                problems[name] = (key, raw, "not a number")
                continue
            if not math.isfinite(value):
                problems[name] = (key, raw, "not a finite number")
                continue
            if value < 0 or (name == "qmax" and value == 0):
                problems[name] = (key, raw, "not a Q in Å⁻¹ (it must be "
                                  f"{'>= 0' if name == 'qmin' else '> 0'})")
                continue
        out[name] = value
    return out, problems


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
        found, problems = _parse_header(read_header(first))
        changes = {}
        for name in HEADER_KEYS:
            key = f"pdf.{name}"
            if name in problems:
                hkey, raw, why = problems[name]
                said = f"the header of {first.name} says {hkey} = {raw!r}, {why}"
                if key not in config.given:
                    raise InputError(f"{said}; the config does not set '{key}', which would "
                                     f"replace it: set {key} in the config (or correct the "
                                     "header)")
                notes.append(f"{said}; ignored (the config sets '{key}')")
                continue
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
    check_q(pdf, config.given, dict(origins))
    if config.structure.suffix.lower() != ".xyz":
        given = dict(pdf.uiso)
        from_file = {el: u for el, u in load_model(config.structure, config.model)
                     .element_uiso().items() if el not in given}
        if from_file:
            pdf = dataclasses.replace(pdf, uiso=tuple(given.items()) + tuple(from_file.items()))
            origins += [(f"pdf.uiso.{el}", f"structure file {config.structure.name}")
                        for el in from_file]
    return dataclasses.replace(config, pdf=pdf, origins=tuple(origins), notes=tuple(notes))


def check_q(pdf, given: frozenset, origins: dict[str, str]) -> None:
    """The Q settings of a config's ``pdf`` section, header values filled in, checked as
    :class:`PDFSettings` checks them (the Qmax limit of the radiation, the Q points of a
    qstep); the error names the config key, or the file whose header gave the value."""
    labels = {}
    for name in ("radiation", "qmin", "qmax", "qstep"):
        key = f"pdf.{name}"
        where = origins.get(key, "")
        if key in given:
            labels[name] = f"config key '{key}'"
        elif where.startswith("header of "):
            labels[name] = (f"{name} from the {where} (the config does not set '{key}', "
                            "which would replace it)")
    PDFSettings(**{f.name: getattr(pdf, f.name) for f in dataclasses.fields(PDFSettings)},
                sources=labels)


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
