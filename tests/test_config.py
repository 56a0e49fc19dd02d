"""Config validation: every bad input is one clear line naming the key, and exit code 2."""

from pathlib import Path

import pytest

from mlmotex_hpc.cli import main
from mlmotex_hpc.config import load_config

from .conftest import KEGGIN_GR, KEGGIN_XYZ, keggin_config, run_cli


def test_valid_config_resolves_paths_and_defaults(tmp_path, write_config):
    raw = keggin_config(tmp_path)
    raw["structure"] = "model.xyz"  # relative to the config's folder
    (tmp_path / "model.xyz").write_text(KEGGIN_XYZ.read_text())
    config = load_config(write_config(raw))
    assert config.structure == tmp_path / "model.xyz"
    assert config.data == (KEGGIN_GR,)
    assert config.permute == ("W",)
    assert config.pdf.uiso == (("W", 0.00507), ("O", 0.00507))
    assert config.fit.refine == ("scale", "zoom")
    assert config.learn.params == (("learning_rate", 0.1), ("max_depth", 3), ("n_estimators", 200))
    assert "permute" in config.source
    assert config.base == tmp_path.resolve()  # what relative paths of the source resolve against


def _set(raw: dict, dotted: str, value):
    *parents, leaf = dotted.split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
    if value is _DELETE:
        node.pop(leaf)
    else:
        node[leaf] = value


_DELETE = object()

# (dotted key, value, words the message must contain)
BAD_CONFIGS = [
    ("colour", "red", ["unknown config key 'colour'"]),
    ("pdf.qmaxx", 20, ["unknown config key 'pdf.qmaxx'", "qmax"]),
    ("catalogue.size", "many", ["catalogue.size", "'many'", "integer"]),
    ("catalogue.size", 2.5, ["catalogue.size", "integer"]),
    ("catalogue.size", 0, ["catalogue.size", "≥ 1"]),
    ("pdf.qmax", -1, ["pdf.qmax", "> 0"]),
    ("pdf.qmax", 0.5, ["pdf.qmax", "pdf.qmin"]),
    ("pdf.calculator", "fft", ["pdf.calculator", "'fft'", "debye, realspace"]),
    ("pdf.uiso", {"W": -0.1}, ["pdf.uiso.W", "≥ 0"]),
    ("pdf.uiso", {"Mo": 0.005}, ["pdf.uiso", "Mo"]),
    ("structure", "missing.xyz", ["structure", "missing.xyz", "no such file"]),
    ("structure", _DELETE, ["'structure' is missing"]),
    ("data", "nothing_*.gr", ["data", "matches no file"]),
    ("data", "absent.gr", ["data", "absent.gr", "no such file"]),
    ("permute", ["Mo"], ["permute", "Mo", "not in 109725.xyz"]),
    ("permute", 7, ["permute", "element symbols"]),
    ("fit.rmin", 50.0, ["fit.rmax", "fit.rmin"]),
    ("fit.rmax", 60.0, ["fit.rmin", "60"]),
    ("fit.zoom_bounds", [1.02, 1.05], ["fit.zoom_bounds", "low ≤ 1 ≤ high"]),
    ("fit.refine", ["zoom", "shape"], ["fit.refine", "scale, zoom, uiso, delta2"]),
    ("learn.test_fraction", 0.9, ["learn.test_fraction", "≤ 0.5"]),
    ("learn.cv_folds", 1, ["learn.cv_folds", "≥ 2"]),
    ("bond_threshold", "far", ["bond_threshold", "number"]),
    ("catalogue.masks_file", "no_masks.txt", ["catalogue.masks_file", "no such file"]),
]


@pytest.mark.parametrize("key, value, words", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_is_one_clear_line(tmp_path, write_config, capsys, key, value, words):
    raw = keggin_config(tmp_path)
    _set(raw, key, value)
    code = main(["run", str(write_config(raw)), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith("mlmotex-hpc: error: ")
    for word in words:
        assert word in err[0], (word, err[0])
    assert not (tmp_path / "out" / "motex.h5").exists()


def test_invalid_yaml_names_the_line(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("structure: a.xyz\npdf: {qmin: 0.7\nfit: 3\n")
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.yaml, line" in err[0]


def test_missing_config_file(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml does not exist" in capsys.readouterr().err


def test_output_dir_not_writable(tmp_path, write_config, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    raw = keggin_config(tmp_path, output={"dir": str(blocker / "out")})
    assert main(["run", str(write_config(raw))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "output.dir" in err[0] and "not writable" in err[0]


def test_bad_option_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "x.yaml", "--until", "never"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--until" in err[0]


@pytest.mark.mpi
@pytest.mark.parametrize("key, value", [("permute", ["Mo"]), ("fit.rmax", 60.0), ("pdf.qmaxx", 1)])
def test_bad_config_under_mpirun_reports_once(tmp_path, write_config, key, value):
    raw = keggin_config(tmp_path)
    _set(raw, key, value)
    proc = run_cli("run", str(write_config(raw)), ranks=3, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("mlmotex-hpc: error:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not Path(raw["output"]["dir"], "motex.h5").exists()
