"""The layout of ``screen.h5``, once, as data: the candidates of a screen, their scores and
the templates skipped, with the reason for each.

:mod:`.screenfile` writes and reads the file; this table says what it holds.
``docs/screen-h5.md`` is generated from it (``python -m mlmotex_hpc.store.screen_layout``).

Dimensions: C candidates (distinct clusters, in the order the templates were cut), F frames
screened, W bytes of a packed mask (N permutable atoms of the largest candidate, 8 a byte),
S templates skipped.
"""

from __future__ import annotations

from . import layout
from .layout import Entry

#: The layout this version writes, and the newest it reads.
SCREEN_LAYOUT_VERSION = 1
#: Per-candidate columns of ``/candidates``.
CANDIDATE_FIELDS = ("template", "centre", "radius", "atoms", "formula", "permuted", "copies")
#: Score datasets with a leading frame axis.
SCORE_FRAME_FIELDS = ("rw_whole", "rw_best", "best_size")

LAYOUT: tuple[Entry, ...] = (
    Entry("/", "the screen", attrs=(
        ("kind", "'screen': what this file is"),
        ("config", "the screen's config, as YAML text"),
        ("config_hash", "SHA-256 of the config's content: a resume needs the same"),
        ("version", "mlmotex-hpc's version"),
        ("layout_version", f"this layout's version ({SCREEN_LAYOUT_VERSION})"),
        ("complete", "every candidate scored"),
    )),
    Entry("/frames", "the frames screened"),
    Entry("/frames/names", "each frame's data file name", ("F",), "S"),
    Entry("/candidates", "the distinct clusters, in the order they were cut"),
    Entry("/candidates/template", "the structure file it was cut from", ("C",), "S"),
    Entry("/candidates/centre", "the site label it is centred on ('' for a cluster "
                                "template, taken whole)", ("C",), "S"),
    Entry("/candidates/radius", "the sphere's radius (Å; NaN for a cluster template)",
          ("C",), "f8"),
    Entry("/candidates/atoms", "atoms of the cluster", ("C",), "i8"),
    Entry("/candidates/formula", "its formula, elements in the file's order", ("C",), "S"),
    Entry("/candidates/permuted", "its permutable atoms (N)", ("C",), "i8"),
    Entry("/candidates/copies", "JSON list of the other template:centre:radius cuts that "
                                "gave the same cluster", ("C",), "S"),
    Entry("/scores", "each candidate's probe (mlmotex_hpc.fit.screening)"),
    Entry("/scores/done", "1 when the candidate is scored: a resume scores the others",
          ("C",), "u1"),
    Entry("/scores/rw_whole", "Rw of the whole cluster, per frame (NaN: not scored)",
          ("F", "C"), "f8"),
    Entry("/scores/rw_best", "the lowest Rw its probe found, per frame", ("F", "C"), "f8"),
    Entry("/scores/best_size", "permutable atoms of that motif", ("F", "C"), "i8"),
    Entry("/scores/best_mask", "that motif, permutable atoms packed 8 a byte (numpy "
                               "packbits order)", ("F", "C", "W"), "u1"),
    Entry("/scores/fits", "motif × frame fits its probe made", ("C",), "i8"),
    Entry("/skipped", "the templates a screen could not use"),
    Entry("/skipped/template", "the structure file", ("S",), "S"),
    Entry("/skipped/reason", "why, in one line", ("S",), "S"),
)


def undescribed(h5) -> list[str]:
    """What the open ``screen.h5`` holds that :data:`LAYOUT` does not describe."""
    return layout.undescribed(LAYOUT, h5)


def reference() -> str:
    """The file-format reference of ``screen.h5``, as Markdown."""
    return layout.reference(LAYOUT, "screen.h5", SCREEN_LAYOUT_VERSION,
                            __doc__.split("\n\n")[-1].strip().replace("\n", " "))


if __name__ == "__main__":  # python -m mlmotex_hpc.store.screen_layout > docs/screen-h5.md
    print(reference(), end="")
