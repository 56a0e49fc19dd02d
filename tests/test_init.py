"""``mlmotex-hpc init``: a starting config that names every key of the schema, loads as it
is, and loads to the schema's defaults with every commented key uncommented; and the
worked example at the end of ``run --help``."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import pytest

from mlmotex_hpc import config as schema
from mlmotex_hpc.cli import main
from mlmotex_hpc.config import load_config
from mlmotex_hpc.errors import InputError

from .conftest import EXAMPLES, KEGGIN_GR, KEGGIN_XYZ, run_cli

#: A commented-out key: '#', the key's indentation, its name and a colon.
COMMENTED_KEY = re.compile(r"^#( *)([A-Za-z_]\w*):(?: |$)")
#: An active key: its indentation, its name and a colon.
ACTIVE_KEY = re.compile(r"^( *)([A-Za-z_]\w*):(?: |$)")


def schema_keys() -> set[str]:
    """Every key a config may give, dotted (``pdf.qmax``), from the dataclasses."""
    keys = set()
    for f in dataclasses.fields(schema.Config):
        if f.metadata.get("internal"):
            continue
        if f.name in schema._SECTIONS:
            keys |= {f"{f.name}.{sub.name}" for sub in dataclasses.fields(schema._SECTIONS[f.name])
                     if not sub.metadata.get("internal")}
        else:
            keys.add(f.name)
    return keys


def written_keys(text: str) -> tuple[list[str], list[str]]:
    """The dotted keys of a config file: (active, commented out), in order."""
    active, commented, section = [], [], None
    for line in text.splitlines():
        if match := ACTIVE_KEY.match(line):
            indent, name = match.groups()
            section = name if not indent else section
            if indent:
                active.append(f"{section}.{name}")
            elif name not in schema._SECTIONS:
                active.append(name)
        elif match := COMMENTED_KEY.match(line):
            indent, name = match.groups()
            commented.append(f"{section}.{name}" if indent else name)
    return active, commented


def uncomment_all(text: str) -> str:
    return "\n".join(line[1:] if COMMENTED_KEY.match(line) else line
                     for line in text.splitlines()) + "\n"


@pytest.fixture
def keggin(tmp_path) -> Path:
    """The shipped Keggin files copied to tmp_path/inputs/."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for path in (KEGGIN_XYZ, KEGGIN_GR):
        shutil.copy(path, inputs)
    return inputs


def init(*args: str) -> int:
    return main(["init", *map(str, args)])


def minimal(folder: Path, structure: Path, data: Path) -> Path:
    path = folder / "minimal.yaml"
    path.write_text(f"structure: {structure}\ndata: {data}\npermute: [W]\n")
    return path


def test_every_schema_key_is_written_once(keggin, tmp_path):
    out = tmp_path / "config.yaml"
    assert init("--structure", keggin / KEGGIN_XYZ.name, "--data", keggin / KEGGIN_GR.name,
                "-o", out) == 0
    active, commented = written_keys(out.read_text())
    assert active == ["structure", "data", "permute"]
    assert len(active + commented) == len(set(active + commented))
    assert set(active + commented) == schema_keys()


def test_each_key_carries_its_meaning(keggin, tmp_path):
    out = tmp_path / "config.yaml"
    init("-o", out)
    lines = out.read_text().splitlines()
    flat = " ".join(" ".join(line.lstrip("# ").split()) for line in lines)
    for f in dataclasses.fields(schema.Config):
        for field in ([f] if f.name not in schema._SECTIONS
                      else dataclasses.fields(schema._SECTIONS[f.name])):
            if field.metadata.get("internal"):
                continue
            doc = " ".join(field.metadata["doc"].split())
            assert doc in flat, field.name
            for choice in field.metadata.get("choices", ()):
                assert choice in flat, (field.name, choice)
    assert "random: one uniform sample (ML-MotEx)" in flat
    assert "one of: random, adaptive" in flat
    assert re.search(r"^#  seed: 0 +# random seed; ≥ 0, ≤ 4294967295$", "\n".join(lines), re.M)


def test_written_config_loads_as_the_minimal_one(keggin, tmp_path, capsys):
    folder = tmp_path / "run"
    out = folder / "config.yaml"
    assert init("--structure", keggin / KEGGIN_XYZ.name, "--data", keggin / KEGGIN_GR.name,
                "-o", out) == 0
    text = out.read_text()
    assert "structure: ../inputs/109725.xyz" in text  # relative to the config's folder
    assert "data: ../inputs/DanMAX_AlphaKeggin.gr" in text
    assert re.search(r"^permute: \[W\] .*heaviest of W, O", text, re.M)
    expected = load_config(minimal(folder, keggin / KEGGIN_XYZ.name, keggin / KEGGIN_GR.name))
    assert load_config(out) == expected
    everything = folder / "everything.yaml"
    everything.write_text(uncomment_all(text))
    assert written_keys(everything.read_text())[1] == []
    assert load_config(everything) == expected  # every shown default is the schema's
    said = capsys.readouterr().out
    assert f"mlmotex-hpc run {out} --dry-run --ranks 64" in said
    assert f"mpirun -n 64 mlmotex-hpc run {out}" in said
    assert "mlmotex-hpc plot" in said and "motex.h5" in said


def test_shown_defaults_differ_from_other_values(keggin, tmp_path):
    """The round trip can fail: a changed default line loads to a different config."""
    out = tmp_path / "config.yaml"
    init("--structure", keggin / KEGGIN_XYZ.name, "--data", keggin / KEGGIN_GR.name, "-o", out)
    changed = tmp_path / "changed.yaml"
    changed.write_text(uncomment_all(out.read_text()).replace("  batch_size: 64",
                                                              "  batch_size: 65"))
    assert load_config(changed) != load_config(out)
    assert load_config(changed).catalogue.batch_size == 65


def test_placeholders_without_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert init() == 0
    text = (tmp_path / "config.yaml").read_text()
    assert "structure: CHANGE-ME.xyz" in text and "permute: [CHANGE-ME]" in text
    assert "first edit structure, data, permute" in capsys.readouterr().out
    with pytest.raises(InputError, match="structure"):
        load_config(tmp_path / "config.yaml")


def test_permute_is_the_heaviest_element(tmp_path):
    model = tmp_path / "mixed.xyz"
    model.write_text("4\nmixed\nO 0 0 0\nC 1 0 0\nBi 0 1 0\nPb1 0 0 1\n")
    init("--structure", model, "-o", tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    flat = re.sub(r"\n#\s+# ", " ", text)  # comments wrapped onto the next lines
    assert re.search(r"^permute: \[Bi\] .*heaviest of O, C, Bi, Pb in mixed.xyz", flat, re.M)
    salt = EXAMPLES / "cif" / "ICSD_110294.cif"  # a crystal: read by diffpy.structure
    init("--structure", salt, "-o", tmp_path / "salt.yaml")
    flat = re.sub(r"\n#\s+# ", " ", (tmp_path / "salt.yaml").read_text())
    assert re.search(r"^permute: \[W\] .*heaviest of W, V, O, N, C, H in ICSD_110294", flat,
                     re.M)
    crystal = tmp_path / "model.cif"
    crystal.write_text("data_x\n")
    init("--structure", crystal, "-o", tmp_path / "cif.yaml")
    assert "permute: [CHANGE-ME]" in (tmp_path / "cif.yaml").read_text()


def test_missing_input_files_are_refused(tmp_path, capsys):
    assert init("--structure", "nowhere.xyz", "-o", tmp_path / "c.yaml") == 2
    assert capsys.readouterr().err == ("mlmotex-hpc: error: init --structure nowhere.xyz: "
                                       "no such file\n")
    assert init("--data", str(tmp_path / "frames_*.gr"), "-o", tmp_path / "c.yaml") == 2
    assert "the pattern matches no file" in capsys.readouterr().err
    assert not (tmp_path / "c.yaml").exists()


def test_refuses_to_overwrite_without_force(tmp_path):
    out = tmp_path / "config.yaml"
    out.write_text("mine\n")
    proc = run_cli("init", "-o", str(out))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("mlmotex-hpc: error: "), proc.stderr
    assert "--force" in lines[0] and "Traceback" not in proc.stderr
    assert out.read_text() == "mine\n"
    assert init("-o", out, "--force") == 0
    assert out.read_text() != "mine\n"


def test_run_help_ends_with_the_worked_example():
    proc = run_cli("run", "--help")
    assert proc.returncode == 0, proc.stderr
    lines = [line.split("#")[0].strip() for line in proc.stdout.strip().splitlines()[-5:]]
    assert lines[0] == "example:"
    assert lines[1].startswith("mlmotex-hpc init ")
    assert lines[2] == "mlmotex-hpc run config.yaml --dry-run --ranks 64"
    assert lines[3] == "mpirun -n 64 mlmotex-hpc run config.yaml"
    assert lines[4] == "mlmotex-hpc plot out/motex.h5"
