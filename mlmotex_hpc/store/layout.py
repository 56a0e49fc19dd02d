"""A file layout as data: :class:`Entry` (one dataset or group, with its shape, type, when it
is there, what it means and its attributes), the entry that describes a path, what a real
file holds that its layout does not describe, and the layout rendered as a Markdown
reference. Each file kind of the store has its own layout module (``motex.h5``:
:mod:`.run_layout`) built from these.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

#: An entry every file of the kind has.
ALWAYS = "always"


@dataclass(frozen=True)
class Entry:
    """One dataset (``shape`` given) or group of the file, with its attributes.

    ``path`` may hold placeholders: ``<frame>`` (5-digit frame number), ``<El>`` (an
    element symbol). ``dtype`` is a NumPy kind and size (``f8``, ``u1``, ``S``: bytes).
    """

    path: str
    meaning: str
    shape: tuple[str, ...] | None = None  # None: a group
    dtype: str = ""
    when: str = ALWAYS
    attrs: tuple[tuple[str, str], ...] = ()

    def pattern(self) -> re.Pattern:
        text = re.escape(self.path).replace(re.escape("<frame>"), r"\d{5}")
        return re.compile("^" + text.replace(re.escape("<El>"), r"[A-Z][a-z]?") + "$")


def entry_for(entries: Sequence[Entry], path: str) -> Entry | None:
    """The entry of ``entries`` that describes ``path``, or None."""
    return next((e for e in entries if e.pattern().match(path)), None)


def undescribed(entries: Sequence[Entry], h5) -> list[str]:
    """What the open file ``h5`` holds that ``entries`` do not describe, or describe
    otherwise (another rank or type, a group for a dataset), one line each."""
    import h5py

    problems: list[str] = []

    def check(path: str, obj) -> None:
        entry = entry_for(entries, path)
        if entry is None:
            problems.append(f"{path}: not in the layout")
            return
        if isinstance(obj, h5py.Group) and entry.shape is not None:
            problems.append(f"{path}: a group, the layout says a dataset")
        if isinstance(obj, h5py.Dataset):
            if entry.shape is None:
                problems.append(f"{path}: a dataset, the layout says a group")
            elif obj.ndim != len(entry.shape):
                problems.append(f"{path}: {obj.ndim} dimensions, the layout says "
                                f"{len(entry.shape)}")
            elif obj.dtype.kind != entry.dtype[0] and not (
                    entry.dtype[0] == "S" and obj.dtype.kind in "SO"):
                problems.append(f"{path}: dtype {obj.dtype}, the layout says {entry.dtype}")
        for key in obj.attrs:
            if key not in dict(entry.attrs):
                problems.append(f"{path}: attribute {key} not in the layout")

    check("/", h5)
    h5.visititems(lambda name, obj: check("/" + name, obj))
    return problems


def reference(entries: Sequence[Entry], name: str, version: int, intro: str) -> str:
    """The file-format reference of the file ``name``, as Markdown."""
    lines = [f"# `{name}` (layout version {version})", "", intro, "",
             "| path | shape | type | when | meaning |", "|---|---|---|---|---|"]
    for e in entries:
        shape = "group" if e.shape is None else f"({', '.join(e.shape)})"
        lines.append(f"| `{e.path}` | {shape} | {e.dtype or ''} | {e.when} | {e.meaning} |")
        for key, meaning in e.attrs:
            lines.append(f"| `{e.path}` @{key} | attribute | | | {meaning} |")
    return "\n".join(lines) + "\n"
