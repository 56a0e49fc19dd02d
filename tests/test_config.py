"""Config validation: every bad input is one clear line naming the key, and exit code 2."""

import dataclasses
import re
from pathlib import Path

import pytest

from mlmotex_hpc.cli import main
from mlmotex_hpc.config import load_config, select_frames
from mlmotex_hpc.errors import InputError

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
    ("frames.time", [1.0, 2.0], ["frames.time", "2 times", "one time per data file (1 frames)"]),
    ("frames.time", "soon", ["frames.time", "a list of times"]),
    ("frames.time", {"file": "times.csv"}, ["frames.time", "column"]),
    ("frames.time", {"file": "absent.csv", "column": "t"}, ["frames.time.file", "no such file"]),
    ("frames.time", {"file": "times.csv", "column": "minutes"},
     ["frames.time.column", "no such column in times.csv", "its header: frame, t"]),
    ("frames.time", {"file": "times.csv", "column": 5},
     ["frames.time.column", "times.csv has 2 columns"]),
    ("frames.time", {"file": "bad_times.csv", "column": "t"},
     ["frames.time.file", "line 2 has no number in column 't'"]),
    ("frames.block", -1, ["frames.block", "≥ 0"]),
    ("fit.zoom_search", "fast", ["fit.zoom_search", "auto, exact, shared"]),
]


@pytest.mark.parametrize("key, value, words", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_is_one_clear_line(tmp_path, write_config, capsys, key, value, words):
    (tmp_path / "times.csv").write_text("frame,t\n0,1.5\n")
    (tmp_path / "bad_times.csv").write_text("frame,t\n0,late\n")
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
    assert len(err) == 1 and "output.dir" in err[0] and "is a file, not a folder" in err[0]


def test_bad_option_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "x.yaml", "--until", "never"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--until" in err[0]


@pytest.mark.slow
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


def test_frame_times_from_a_csv_column(tmp_path, write_config):
    (tmp_path / "times.csv").write_text("frame, t_min\n0, 12.5\n\n")  # spaces, blank line
    for column in ("t_min", 1):
        raw = keggin_config(tmp_path, frames={"time": {"file": "times.csv", "column": column},
                                              "time_unit": "min"})
        config = load_config(write_config(raw))
        assert config.frames.time == (12.5,) and config.frames.time_unit == "min"


def test_select_frames_ranges_and_blocks(tmp_path, write_config):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(10):
        (frames / f"f_{i}.gr").write_text(KEGGIN_GR.read_text())
    raw = keggin_config(tmp_path, data=str(frames / "f_*.gr"),
                        frames={"time": [float(i) for i in range(10)]})
    config = load_config(write_config(raw))
    assert config.fit.zoom_search == "auto"
    blocks = [select_frames(config, f"{i}/3") for i in range(3)]
    assert [r for _, r in blocks] == [(0, 3), (3, 6), (6, 10)]  # every frame once
    part, _ = blocks[1]
    assert [p.name for p in part.data] == ["f_3.gr", "f_4.gr", "f_5.gr"]
    assert part.frames.time == (3.0, 4.0, 5.0)
    assert part.fit.zoom_search == "shared"  # decided by the 10-frame series, not the 3
    assert select_frames(config, ":4")[1] == (0, 4)
    # keggin_config fixes learn.params: a task's learning is a single run's, no warning
    assert not any("hyperparameter search" in n for n in part.notes)
    searched = dataclasses.replace(config, learn=dataclasses.replace(config.learn, params=(),
                                                                     search_iterations=12))
    note = select_frames(searched, "1/3")[0].notes[-1]
    assert "runs in each task on the task's own frames" in note and "learn.params" in note
    assert not select_frames(searched, "0:10")[0].notes  # the whole series is a single run
    assert select_frames(config, "8:")[1] == (8, 10)
    assert select_frames(config, "7:99")[1] == (7, 10)
    for spec, words in [("3/3", "0 <= I < N"), ("0/11", "use at most 10 tasks"),
                        ("5:5", "selects no frame"), ("a:b", "expected START:STOP"),
                        ("", "expected START:STOP")]:
        with pytest.raises(InputError, match=re.escape(words)):
            select_frames(config, spec)
