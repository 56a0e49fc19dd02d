"""``mlmotex-hpc init [--structure F] [--data F] [-o config.yaml] [--force]``: a commented
starting config, written from the schema in :mod:`mlmotex_hpc.config`.

The required keys are written as they are, filled from ``--structure`` and ``--data`` (and
``permute`` proposed as the model's heaviest element); every optional key is written
commented out with its default and its meaning, so that the file documents the whole
schema and loads as it is. A serial program.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import launcher_rank

HELP = "write a commented starting config (every key, its default and its meaning)"

#: Where a key's comment starts, and how wide the file's lines are.
COMMENT_COLUMN = 32
WIDTH = 92
#: Kinds whose values are mappings in YAML (stored as tuples of pairs).
MAPPING_KINDS = ("uiso", "params")
#: What a required key holds until the user edits it.
PLACEHOLDER = "CHANGE-ME"

HEADER = """\
# mlmotex-hpc {version} config, written by 'mlmotex-hpc init' from the schema.
# The keys at the top must be set: the model, its data, the elements to permute.
# Every other key is optional, shown commented out with its default and its meaning:
# delete the '#' at the start of a line to change that key.
# Relative paths resolve against the folder of this file.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--structure", metavar="FILE",
                        help="starting model; permute is proposed as its heaviest element "
                             "(.xyz, .cif, .stru, .pdb)")
    parser.add_argument("--data", metavar="FILE",
                        help="measured PDF file, or a quoted glob of a series' files")
    parser.add_argument("-o", "--out", default="config.yaml",
                        help="the config file to write (default: config.yaml here)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")


def _relative(path: str, folder: Path) -> str:
    """``path`` relative to ``folder`` when they share more than the filesystem's root,
    else absolute."""
    absolute = os.path.abspath(os.path.expanduser(path))
    try:
        common = os.path.commonpath([absolute, str(folder)])
    except ValueError:  # another drive
        return absolute
    if common == os.path.dirname(common):  # only the root: ../../.. helps nobody
        return absolute
    return os.path.relpath(absolute, folder)


def model_elements(path: Path) -> list[str]:
    """The element symbols of a structure file (.xyz, .cif, .stru, .pdb), in order of
    first appearance; [] when it cannot be read (``run`` says why later)."""
    from ..errors import InputError
    from ..io.structure import read_structure

    try:
        structure = read_structure(path, partial="keep")
    except (InputError, OSError, ValueError):
        return []
    return list(dict.fromkeys(structure.elements))


def heaviest(elements: list[str]) -> str | None:
    """The heaviest of ``elements`` by atomic mass (None when none is an element)."""
    import periodictable

    masses = {}
    for symbol in elements:
        try:
            masses[symbol] = periodictable.elements.symbol(symbol).mass
        except ValueError:
            continue
    return max(masses, key=masses.get) if masses else None


def _flow(value: Any, kind: str) -> str:
    """A default as one line of YAML that loads back to it."""
    import yaml

    from ..config import ALL_MOTIFS

    if kind == "size" and value == ALL_MOTIFS:
        value = "all"
    elif isinstance(value, tuple) and (kind in MAPPING_KINDS or value and all(
            isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in value)):
        value = dict(value)

    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {plain(k): plain(x) for k, x in v.items()}
        return v

    text = yaml.safe_dump(plain(value), default_flow_style=True, allow_unicode=True,
                          width=10**6, sort_keys=False)
    return text.removesuffix("\n...\n").strip()


def meaning(meta: Mapping[str, Any]) -> str:
    """A field's description with its choices and limits, from its metadata."""
    parts = [meta.get("doc", "")]
    choices = meta.get("choices")
    if choices:
        word = "any of" if meta.get("kind") == "names" else "one of"
        parts.append(f"{word}: {', '.join(map(str, choices))}")
    limits = [f"{sign} {meta[key]}" for key, sign in
              (("minimum", "≥"), ("exclusive_min", ">"), ("maximum", "≤")) if key in meta]
    if "limits" in meta:
        low, high = meta["limits"]
        limits.append(f"within [{low}, {high}]")
    if limits:
        parts.append(", ".join(limits))
    return "; ".join(p for p in parts if p)


def _line(text: str, comment: str) -> list[str]:
    """``text`` then ``# comment``, wrapped onto comment lines that begin with '#'; a
    comment that would be squeezed goes on the lines above instead."""
    if not comment:
        return [text]
    if len(text) + 2 > COMMENT_COLUMN + 8:
        indent = re.match(r"#?\s*", text)[0]
        above = textwrap.wrap(comment, WIDTH - len(indent) - 2, break_on_hyphens=False)
        return [f"{indent}# {line}" for line in above] + [text]
    column = max(COMMENT_COLUMN, len(text) + 2)
    wrapped = textwrap.wrap(comment, WIDTH - column - 2, break_on_hyphens=False)
    lines = [f"{text:<{column}}# {wrapped[0]}"]
    lines += [f"#{' ' * (column - 1)}# {more}" for more in wrapped[1:]]
    return lines


def _schema_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def starting_config(given: dict[str, tuple[str, str]]) -> str:
    """The text of a starting config. ``given`` maps a key to its YAML value and a note:
    those keys are written as they are, first, and so is every key without a default (a
    placeholder when not given); the others are commented out with their defaults."""
    from .. import __version__
    from ..config import _SECTIONS, Config
    from ..io.defaults import HEADER_KEYS

    from_header = {f"pdf.{name}": "omitted: the data header's value, if any"
                   for name in HEADER_KEYS}
    fields = _schema_fields(Config)
    first = [f for f in fields if f.name in given or _default(f) is dataclasses.MISSING]
    top: list[str] = []
    for f in sorted(first, key=lambda f: (list(given).index(f.name) if f.name in given
                                          else len(given))):
        value, note = given.get(f.name, (PLACEHOLDER, "edit this"))
        top += _line(f"{f.name}: {value}", "; ".join(filter(None, (meaning(f.metadata), note))))
    optional: list[str] = []
    sections: list[str] = []
    for f in fields:
        if f in first:
            continue
        if f.name not in _SECTIONS:
            value = _flow(_default(f), f.metadata.get("kind", ""))
            optional += _line(f"#{f.name}: {value}", meaning(f.metadata))
            continue
        cls = _SECTIONS[f.name]
        doc = (cls.__doc__ or "").strip().splitlines()
        sections += ["", *_line(f"{f.name}:", doc[0] if doc else "")]
        for sub in _schema_fields(cls):
            value = _flow(_default(sub), sub.metadata.get("kind", ""))
            comment = "; ".join(filter(None, (meaning(sub.metadata),
                                              from_header.get(f"{f.name}.{sub.name}"))))
            sections += _line(f"#  {sub.name}: {value}", comment)
    body = [*top, *([""] if optional else []), *optional, *sections]
    return HEADER.format(version=__version__) + "\n" + "\n".join(body) + "\n"


def _given_values(args: argparse.Namespace, folder: Path) -> dict[str, tuple[str, str]]:
    """The YAML values of ``structure``, ``data`` and ``permute`` (from the command line,
    or placeholders), each with a note; paths relative to ``folder``."""
    import glob

    import yaml

    from ..errors import InputError

    def scalar(text: str) -> str:
        return yaml.safe_dump(text, width=10**6).removesuffix("\n...\n").strip()

    structure = (f"{PLACEHOLDER}.xyz", "edit this: your model")
    data = (f"{PLACEHOLDER}.gr", "edit this: your data")
    permute = (f"[{PLACEHOLDER}]", "edit this: the elements to permute, e.g. [W]")
    if args.structure:
        path = Path(args.structure).expanduser()
        if not path.is_file():
            raise InputError(f"init --structure {args.structure}: no such file")
        crystal = path.suffix.lower() != ".xyz"
        structure = (scalar(_relative(args.structure, folder)),
                     "a crystal: its unit cell as it is; for a cluster give "
                     "{file: ..., cut: {sphere: 6.0, centre_atom: LABEL}} (see mlmotex-hpc cut)"
                     if crystal else "")
        elements = model_elements(path)
        proposed = heaviest(elements)
        if proposed:
            permute = (f"[{proposed}]", f"proposed: the heaviest of {', '.join(elements)} "
                                        f"in {path.name}")
    if args.data:
        pattern = any(ch in args.data for ch in "*?[")
        found = glob.glob(os.path.expanduser(args.data)) if pattern else \
            [args.data] if Path(args.data).expanduser().is_file() else []
        if not found:
            raise InputError(f"init --data {args.data}: " +
                             ("the pattern matches no file" if pattern else "no such file"))
        data = (scalar(_relative(args.data, folder)), "")
    return {"structure": structure, "data": data, "permute": permute}


def main(args: argparse.Namespace) -> int:
    if launcher_rank() != 0:  # a serial program: extra ranks have nothing to do
        return 0
    from ..config import OutputConfig
    from ..errors import InputError

    out = Path(args.out).expanduser()
    if out.is_dir():
        raise InputError(f"init -o {args.out}: is a folder; name the config file to write")
    if out.exists() and not args.force:
        raise InputError(f"{args.out} exists already: pass --force to overwrite it")
    folder = out.resolve().parent
    given = _given_values(args, folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        out.write_text(starting_config(given), encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write {args.out}: {exc.strerror}") from None

    todo = [key for key, (value, _) in given.items() if PLACEHOLDER in value]
    results = os.path.relpath(folder / OutputConfig().dir / "motex.h5")
    if results.startswith(".."):
        results = str(folder / OutputConfig().dir / "motex.h5")
    print(f"wrote {args.out}")
    if todo:
        print(f"first edit {', '.join(todo)} in it (marked {PLACEHOLDER}), then:")
    else:
        print("next, after looking through its keys:")
    steps = [(f"mlmotex-hpc run {args.out} --dry-run --ranks 64", "check it, estimate the cost"),
             (f"mpirun -n 64 mlmotex-hpc run {args.out}", "the run"),
             (f"mlmotex-hpc plot {results}", "the figures and report again")]
    width = max(len(command) for command, _ in steps)
    for command, note in steps:
        print(f"  {command:<{width}}   # {note}")
    return 0


#: Kinds whose None default is written ``auto`` in a config.
AUTO_KINDS = ("radii", "margin")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _rows(cls: type, prefix: str, from_header: Mapping[str, str]) -> list[str]:
    """One Markdown table row per key of ``cls`` (a section's keys under its name)."""
    from ..config import _SECTIONS

    rows = []
    for f in _schema_fields(cls):
        key = f"{prefix}{f.name}"
        if not prefix and f.name in _SECTIONS:
            continue
        default = _default(f)
        kind = f.metadata.get("kind", "")
        shown = ("*(required)*" if default is dataclasses.MISSING else "`auto`"
                 if default is None and kind in AUTO_KINDS else f"`{_flow(default, kind)}`")
        doc = "; ".join(filter(None, (meaning(f.metadata), from_header.get(key))))
        rows.append(f"| `{key}` | {shown} | {_cell(doc)} |")
    return rows


def config_reference() -> str:
    """Every key of a run's config and of a screen's, with its default, its range and its
    meaning, as Markdown: the documentation's config reference, written from the same
    schema as :func:`starting_config` (``python -m mlmotex_hpc.commands.init``)."""
    from ..config import _SECTIONS, Config, ScreenConfig
    from ..io.defaults import HEADER_KEYS

    from_header = {f"pdf.{name}": "omitted: the data header's value, if any"
                   for name in HEADER_KEYS}
    head = "| key | default | meaning |\n|---|---|---|"
    out = ["# Config reference", "",
           "Written from the config schema (`mlmotex_hpc/config.py`), the same source as "
           "`mlmotex-hpc init`; regenerate with `python -m mlmotex_hpc.commands.init > "
           "docs/guide/config-reference.md` (a test checks that it is current). Relative "
           "paths resolve against the folder of the config file.", "",
           "## A run's config (`mlmotex-hpc run`)", "", head,
           *_rows(Config, "", from_header)]
    for f in _schema_fields(Config):
        if f.name in _SECTIONS:
            cls = _SECTIONS[f.name]
            doc = (cls.__doc__ or "").strip().splitlines()[0]
            out += ["", f"### `{f.name}:` {_cell(doc)}", "", head,
                    *_rows(cls, f"{f.name}.", from_header)]
    out += ["", "## A screen's config (`mlmotex-hpc screen`)", "",
            "The sections `catalogue`, `pdf`, `fit`, `learn`, `extract` and `output` are "
            "those of a run (above), used for every candidate and each extraction.", "",
            head, *_rows(ScreenConfig, "", from_header)]
    screen = _SECTIONS["screen"]
    out += ["", f"### `screen:` {_cell((screen.__doc__ or '').strip().splitlines()[0])}",
            "", head, *_rows(screen, "screen.", from_header)]
    return "\n".join(out) + "\n"


if __name__ == "__main__":  # the documentation's config reference
    print(config_reference(), end="")
