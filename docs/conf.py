"""Sphinx configuration of mlmotex-hpc's documentation (``make docs``).

Pages are MyST Markdown. The config reference (``guide/config-reference.md``) and the
HDF5 file references (``motex-h5.md``, ``screen-h5.md``) are generated from the code's
schema and layouts; tests/test_docs.py checks that they are current and builds the site
with warnings as errors.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlmotex_hpc import __version__  # noqa: E402

project = "mlmotex-hpc"
author = "the mlmotex-hpc developers"
copyright = "2026, the mlmotex-hpc developers"  # noqa: A001 - Sphinx's name
release = version = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "README.md"]

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_numpy_docstring = True
napoleon_google_docstring = False

html_theme = "furo"
html_title = f"mlmotex-hpc {release}"
html_static_path = ["_static"]

# Napoleon's "Attributes" sections and dataclass fields with one name in two classes (a
# config's ``size`` and a motif space's) make ambiguous cross-references that point
# nowhere wrong; every other warning fails the build.
suppress_warnings = ["ref.python"]
