"""The documentation: the site builds with no warning, its generated references match the
code, every tutorial command is run by the suite or says why not, and the README stays
short and links only to what exists."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from mlmotex_hpc.commands.init import config_reference

from .conftest import ROOT

DOCS = ROOT / "docs"
README = ROOT / "README.md"
#: The README's budget (issue 31): read in five minutes.
README_LINES = 150


@pytest.mark.slow
def test_the_site_builds_with_no_warning(tmp_path):
    """``make docs``'s build (Sphinx, warnings as errors) into a temporary folder."""
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         str(DOCS), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-5000:]
    index = (tmp_path / "html" / "index.html").read_text()
    assert "mlmotex-hpc" in index
    for page in ("getting-started", "guide/config-reference", "motex-h5", "screen-h5",
                 "api"):
        assert (tmp_path / "html" / f"{page}.html").is_file(), page
    # the generated references are in the site, every key and dataset of them
    config_page = (tmp_path / "html" / "guide" / "config-reference.html").read_text()
    for key in re.findall(r"^\| `([\w.]+)` \|", config_reference(), re.M):
        assert key in config_page, key


def test_the_config_reference_is_the_schemas():
    """docs/guide/config-reference.md is ``python -m mlmotex_hpc.commands.init``'s output,
    and every key a config may hold is in it (run and screen configs, every section)."""
    import dataclasses

    from mlmotex_hpc.config import _SECTIONS, Config, ScreenConfig

    text = (DOCS / "guide" / "config-reference.md").read_text()
    assert text == config_reference()
    for cls, prefix in [(Config, ""), (ScreenConfig, "")] + [
            (section, f"{name}.") for name, section in _SECTIONS.items()]:
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal") or (not prefix and f.name in _SECTIONS):
                continue
            assert f"| `{prefix}{f.name}` |" in text, f"{prefix}{f.name}"


def _bash_blocks(text: str):
    """Each ```bash block of a page, with the line just before its fence."""
    lines = text.splitlines()
    for k, line in enumerate(lines):
        if line.strip().startswith("```bash"):
            yield (lines[k - 1] if k else ""), k + 1


def test_every_tutorial_command_runs_in_the_suite_or_says_why_not():
    """Each ```bash block of a tutorial is preceded by ``% tested: tests/F.py::test_X``
    naming a test that exists, or by ``% not run in the suite: REASON``."""
    pages = sorted((DOCS / "tutorials").glob("*.md"))
    assert len(pages) >= 5, [p.name for p in pages]
    blocks = 0
    for page in pages:
        for before, lineno in _bash_blocks(page.read_text()):
            blocks += 1
            where = f"{page.name}:{lineno}"
            tested = re.fullmatch(r"% tested: (tests/[\w/]+\.py)::(test_\w+)", before.strip())
            if tested:
                source = (ROOT / tested[1]).read_text()
                assert re.search(rf"^def {tested[2]}\(", source, re.M), \
                    f"{where}: {tested[1]} has no {tested[2]}"
                continue
            assert re.fullmatch(r"% not run in the suite: \S.*", before.strip()), \
                f"{where}: a command with neither '% tested: ...' nor '% not run in the " \
                f"suite: ...' before it (found {before!r})"
    assert blocks > 0


def test_the_readme_is_short_and_its_links_exist():
    text = README.read_text()
    assert len(text.splitlines()) <= README_LINES
    for command in ("make demo", "make test", "make check", "make docs"):
        assert command in text, command
    links = re.findall(r"\]\((?!https?://|#)([^)#\s]+)", text)
    assert links
    for link in links:
        assert (ROOT / link).exists(), link


@pytest.mark.parametrize("page", sorted(p.relative_to(DOCS).as_posix()
                                        for p in DOCS.rglob("*.md")
                                        if "_build" not in p.parts))
def test_a_page_links_only_to_files_that_exist(page):
    """Relative links to files outside the site (configs, scripts, sources) resolve; the
    site's own pages are checked by Sphinx in the build."""
    path = DOCS / page
    for link in re.findall(r"\]\((?!https?://|#|mailto:)([^)#\s]+)", path.read_text()):
        target = (path.parent / link).resolve()
        assert target.exists(), f"{page}: {link}"
