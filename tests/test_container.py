"""``jobs/mlmotex-hpc.def``, the Apptainer/Singularity definition. Apptainer cannot be
installed on the machines the tests run on (neither Debian 12 nor PyPI has it), so the
image is not built here: these tests check that the definition is one Apptainer reads
(header, known sections), that it copies what ``pip install -e .`` needs from this
repository, that its shell sections are valid bash, and that it builds the stack by
running the same ``scripts/bootstrap.sh`` as ``make setup``."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from .conftest import ROOT

DEF = ROOT / "jobs" / "mlmotex-hpc.def"
SECTIONS = {"labels", "files", "post", "environment", "runscript", "test", "help",
            "setup", "startscript", "arguments"}
SHELL_SECTIONS = ("post", "environment", "runscript", "test")


def parse(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """(header keys, section bodies) of a definition file."""
    header, sections, current = {}, {}, None
    for line in text.splitlines():
        if match := re.match(r"^%(\w+)\s*$", line):
            current = match[1]
            assert current not in sections, f"section %{current} twice"
            sections[current] = ""
        elif current is None:
            if line.strip() and not line.startswith("#"):
                key, _, value = line.partition(":")
                header[key.strip()] = value.strip()
        else:
            sections[current] += line + "\n"
    return header, sections


@pytest.fixture(scope="module")
def definition():
    return parse(DEF.read_text())


def test_header_and_sections_are_apptainers(definition):
    header, sections = definition
    assert header == {"Bootstrap": "docker", "From": "debian:12"}
    assert set(sections) <= SECTIONS, set(sections) - SECTIONS
    assert {"files", "post", "runscript", "test"} <= set(sections)


def test_files_copied_exist_and_suffice_for_the_install(definition):
    _, sections = definition
    sources = [line.split()[0] for line in sections["files"].splitlines() if line.strip()]
    for source in sources:
        assert (ROOT / source).exists(), source
    # what 'pip install -e .' and bootstrap.sh read
    assert {"setup.cfg", "pyproject.toml", "scripts", "mlmotex_hpc"} <= set(sources)
    readme = re.search(r"long_description\s*=\s*file:\s*(\S+)", (ROOT / "setup.cfg").read_text())
    if readme:
        assert readme[1] in sources


@pytest.mark.parametrize("section", SHELL_SECTIONS)
def test_shell_sections_are_valid_bash(definition, section):
    _, sections = definition
    proc = subprocess.run([shutil.which("bash"), "-n"], input=sections[section], text=True,
                          capture_output=True)
    assert proc.returncode == 0, proc.stderr


def test_the_stack_is_the_bootstraps(definition):
    _, sections = definition
    post = sections["post"]
    assert re.search(r"^\s*VENV=(\S+) bash scripts/bootstrap\.sh\s*$", post, re.M), post
    venv = re.search(r"VENV=(\S+) bash", post)[1]
    assert f"{venv}/bin/mlmotex-hpc" in sections["runscript"]
    assert f"PATH={venv}/bin:" in sections["environment"]
    # the image checks what matters most: parallel HDF5 under h5py
    assert "h5py.get_config().mpi" in sections["test"]
    # bootstrap.sh wants Python 3.11, which is Debian 12's own python3
    assert "python3.11" in (ROOT / "scripts" / "bootstrap.sh").read_text()
