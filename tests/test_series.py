"""Time series (issue 7): one catalogue, many frames, frame-parallel learning, job arrays.

Four frames of the shipped Fe2O3 in situ series, renamed so that natural order matters
(series_1, series_2, series_10, series_11), fitted and learned under ``mpirun``.
"""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import yaml

from mlmotex_hpc.store.run_layout import undescribed

from .conftest import EXAMPLES, run_cli, run_serial
from .test_resume import errors, kill_when

pytestmark = pytest.mark.mpi

FE2O3 = EXAMPLES / "fe2o3_insitu"
#: shipped frame -> file name in the test series (natural order: 1, 2, 10, 11)
FRAMES = {60: "series_1.gr", 90: "series_2.gr", 120: "series_10.gr", 150: "series_11.gr"}
TIMES = [12.5, 25.0, 37.5, 50.0]
COMPARED = ("fits/rw", "fits/scale", "fits/zoom", "fits/status", "atoms/contribution",
            "atoms/uncertainty", "atoms/confidence", "shap/values", "shap/base_value")


def series_config(folder, **overrides) -> dict:
    frames = folder / "frames"
    if not frames.exists():
        frames.mkdir(parents=True)
        for number, name in FRAMES.items():
            shutil.copy(FE2O3 / "frames" / f"Fe2O3_3204M_{number}.gr", frames / name)
        (folder / "times.csv").write_text(
            "frame,t_min\n" + "".join(f"{i},{t}\n" for i, t in enumerate(TIMES)))
    config = {
        "structure": str(FE2O3 / "35643-ICSD_222unitcell.xyz"),
        "data": str(frames / "series_*.gr"),
        "permute": ["Fe"],
        "bond_threshold": 2.3,
        "catalogue": {"size": 160, "seed": 2, "batch_size": 16},
        "pdf": {"calculator": "debye", "qmin": 1.0, "qmax": 17.0, "qdamp": 0.04,
                "uiso": {"Fe": 0.005, "O": 0.008}},
        "fit": {"rmin": 1.5, "rmax": 8.0, "zoom_bounds": [0.98, 1.02]},
        "frames": {"time": {"file": str(folder / "times.csv"), "column": "t_min"},
                   "time_unit": "min", "block": 3},
        "learn": {"seed": 0, "search_iterations": 0,
                  "params": {"n_estimators": 60, "max_depth": 3, "learning_rate": 0.2}},
        "output": {"dir": str(folder / "out")},
    }
    for key, value in overrides.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def read(h5_path, names=COMPARED) -> dict:
    """The datasets ``names`` of a finished run; fits of the catalogue's motifs only (the
    extract stage's rows follow them, and differ with the frames polished)."""
    with h5py.File(h5_path) as f:
        assert f.attrs["complete"]
        n = int(f["catalogue"].attrs.get("n_catalogue", f["catalogue/mask"].shape[0]))
        return {name: f[name][:, :n] if name.startswith("fits/") else f[name][()]
                for name in names}


#: What differs between two runs of one config by nature: when and where they ran, and
#: how long each stage took (the merged file records its parts).
RUN_SPECIFIC = {"/": {"created", "merged_from", "config_dir", "hdf5_mode"},
                "/timings": "*"}


def _walk(h5: h5py.File) -> dict:
    out = {"/": h5}
    h5.visititems(lambda name, obj: out.update({"/" + name: obj}))  # None: walk on
    return out


def assert_same_file(got: h5py.File, ref: h5py.File) -> None:
    """Every group, dataset and attribute of ``ref`` in ``got``, equal (NaN = NaN), and
    nothing more, except :data:`RUN_SPECIFIC`."""
    a, b = _walk(got), _walk(ref)
    assert sorted(a) == sorted(b), set(a) ^ set(b)
    for name, obj in b.items():
        skip = RUN_SPECIFIC.get(name, set())
        if skip == "*":
            continue
        other = a[name]
        keys = set(obj.attrs) - set(skip)
        assert keys == set(other.attrs) - set(skip), (name, keys ^ set(other.attrs))
        for key in keys:
            x, y = other.attrs[key], obj.attrs[key]
            if isinstance(y, np.ndarray) and y.dtype.kind == "f":
                np.testing.assert_array_equal(x, y, err_msg=f"{name} attr {key}")
            else:
                assert np.array_equal(np.asarray(x), np.asarray(y)) or x == y, \
                    (name, key, x, y)
        if isinstance(obj, h5py.Dataset):
            assert other.shape == obj.shape and other.dtype == obj.dtype, name
            x, y = other[()], obj[()]
            if isinstance(y, np.ndarray) and y.dtype.kind == "f":
                np.testing.assert_array_equal(x, y, err_msg=name)
            else:
                assert np.array_equal(x, y), name


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """The series on 2 ranks (parallel HDF5): two frame blocks, two learning groups."""
    folder = tmp_path_factory.mktemp("series")
    # numba's freshly compiled and cache-loaded fastmath kernels may differ in the last
    # bit (measured: 4e-16 in Rw); compile once here so every run below loads the cache.
    warm = series_config(tmp_path_factory.mktemp("warm"), catalogue={"size": 16},
                         fit={"zoom_search": "shared"})
    proc = run_cli("run", str(warm), "--until", "fit", "--quiet", ranks=1)
    assert proc.returncode == 0, proc.stderr
    cfg = series_config(folder)
    proc = run_cli("run", str(cfg), ranks=2)
    assert proc.returncode == 0, proc.stderr
    return folder, proc.stdout, read(folder / "out" / "motex.h5")


@pytest.mark.slow
def test_series_layout_and_outputs(series):
    folder, stdout, results = series
    out = folder / "out"
    with h5py.File(out / "motex.h5") as f:
        assert not undescribed(f)  # a series' file, with times
        names = [n.decode() for n in f["frames/names"][:]]
        assert names == list(FRAMES.values())  # natural order, not 1, 10, 11, 2
        np.testing.assert_array_equal(f["frames/time"][:], TIMES)
        assert f["frames/time"].attrs["unit"] == "min"
        n_perm = f["catalogue/permutable"].shape[0]
        n_cat = int(f["catalogue"].attrs["n_catalogue"])
        assert n_cat == 128  # 160 less min(10 N, 160 / 5) = 32 for the extract stage
        assert f["fits/rw"].shape == (4, n_cat + f["polish"].attrs["fits"])
        assert f["fits/batch_done"].shape == (8, 2) and f["fits/batch_done"][()].all()
        assert f["atoms/contribution"].shape == (4, n_perm)
        assert f["shap/values"].shape == (4, n_cat, n_perm + 1)
        assert f["polish/mask"].shape == (4, n_perm) and np.isfinite(f["polish/rw"][()]).all()
        assert np.atleast_1d(f["ml"].attrs["test_r2"]).shape == (4,)
        for f_idx in range(4):  # each frame has its own data and its own fits
            assert f[f"data/{f_idx:05d}/g"].shape == f["data/00000/r"].shape
        assert not np.array_equal(f["fits/rw"][0], f["fits/rw"][3])
    assert "4 frames on 2 groups of ranks" in stdout
    rows = (out / "atom_contributions.csv").read_text().splitlines()
    assert rows[0].startswith("frame,frame_name,time,index,label,site,element")
    assert len(rows) == 1 + 4 * n_perm
    assert rows[1].split(",")[1:3] == ["series_1.gr", "12.5"]
    for name in ("contributions_vs_frame.png", "series_summary.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((out / "motifs").glob("motif_*.xyz"))) == 4
    report = (out / "report.html").read_text()
    assert report.count("<img ") == 2 and "series_1.gr" in report


@pytest.mark.slow
def test_plot_draws_chosen_frames_of_a_series(series, tmp_path):
    folder, _, _ = series
    proc = run_cli("plot", str(folder / "out" / "motex.h5"), "--frame", "3", "--frame", "1",
                   "-o", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    for frame in (1, 3):
        for name in ("model_contributions.vesta", "atom_contributions.png", "parity.png",
                     "best_fit.png"):
            assert (tmp_path / f"frame_{frame:05d}" / name).is_file()
    assert (tmp_path / "contributions_vs_frame.png").is_file()
    report = (tmp_path / "report.html").read_text()
    assert "Frame 3 (series_11.gr)" in report and report.count("<img ") == 2 + 5
    proc = run_cli("plot", str(folder / "out" / "motex.h5"), "--frame", "4")
    assert proc.returncode == 2 and "holds frames 0 to 3" in errors(proc)[0]


@pytest.mark.slow
def test_a_frame_of_the_series_equals_that_frame_alone(series, tmp_path):
    """Fits (same zoom search) and steps 3-4 of frame 2 do not depend on the others."""
    folder, _, results = series
    cfg = series_config(tmp_path, data=str(folder / "frames" / "series_10.gr"),
                        fit={"zoom_search": "shared"}, frames={"time": None, "block": 0})
    proc = run_cli("run", str(cfg), ranks=1)
    assert proc.returncode == 0, proc.stderr
    alone = read(tmp_path / "out" / "motex.h5")
    for name in COMPARED:
        np.testing.assert_array_equal(alone[name][0], results[name][2], err_msg=name)


@pytest.mark.slow
def test_series_same_on_3_ranks_with_serial_hdf5(series, tmp_path):
    """3 ranks (3 learning groups, frames 0 and 3 on one), serial-HDF5 fallback: the
    same bits as 2 ranks with parallel HDF5."""
    cfg = series_config(tmp_path)
    proc = run_cli("run", str(cfg), "--quiet", ranks=3, env={"MLMOTEX_SERIAL_HDF5": "1"})
    assert proc.returncode == 0, proc.stderr
    got = read(tmp_path / "out" / "motex.h5")
    for name in COMPARED:
        np.testing.assert_array_equal(got[name], series[2][name], err_msg=name)


@pytest.mark.slow
def test_job_array_tasks_then_merge(series, tmp_path):
    """As jobs/slurm_array.sh runs it: task I of N takes `--frames I/N`, then `merge
    CONFIG` joins every task's file and refuses while a task is missing."""
    cfg = series_config(tmp_path)
    proc = run_cli("run", str(cfg), "--frames", "1/2", "--quiet", ranks=1)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("merge", str(cfg))
    assert proc.returncode == 2 and "hold frames 2:4 of 4" in errors(proc)[0], proc.stderr
    proc = run_cli("run", str(cfg), "--frames", "0/2", "--quiet", ranks=1)
    assert proc.returncode == 0, proc.stderr
    parts = sorted((tmp_path / "out").glob("frames_*/motex.h5"))
    assert [p.parent.name for p in parts] == ["frames_00000-00002", "frames_00002-00004"]
    proc, mpi = run_serial("merge", str(cfg))  # a serial program: no MPI
    assert proc.returncode == 0, proc.stderr
    assert mpi == {"loaded": False, "started": False}
    merged = tmp_path / "out" / "motex.h5"
    got = read(merged)
    for name in COMPARED:
        np.testing.assert_array_equal(got[name], series[2][name], err_msg=name)
    # the same config run as one job, on the tasks' one rank (/ml's settings record the
    # cores each rank's XGBoost had): every dataset and attribute equal, the extract
    # stage's rows, /polish and /atoms/answer included
    proc = run_cli("run", str(cfg), "--out", str(tmp_path / "single"), "--quiet", ranks=1)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(merged) as f, h5py.File(tmp_path / "single" / "motex.h5") as ref:
        assert "frame_range" not in f.attrs  # the whole series
        np.testing.assert_array_equal(f["frames/time"][:], TIMES)
        assert_same_file(f, ref)
        assert not undescribed(f)  # a merged file
        assert ref["catalogue"].attrs["n_catalogue"] < ref["catalogue/mask"].shape[0]
        assert ref["polish"].attrs["fits"] > 0 and "answer" in ref["atoms"]
    assert (tmp_path / "out" / "contributions_vs_frame.png").exists()
    # the merged file is a full run: learn works on it
    proc = run_cli("learn", str(merged), "--until", "learn", "--quiet", ranks=2)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_merge_refuses_gaps_overlaps_and_unfinished_parts(tmp_path):
    cfg = series_config(tmp_path)
    for frames in ("0:2", "3:4", "1:3"):
        until = ["--until", "fit"] if frames == "1:3" else []
        proc = run_cli("run", str(cfg), "--frames", frames, "--quiet", *until, ranks=1)
        assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    a, b, c = (out / f"frames_{x}/motex.h5" for x in
               ("00000-00002", "00003-00004", "00001-00003"))
    cases = {(a, b): "frames 2:3 are in no part", (a, c): "is not finished"}
    for files, message in cases.items():
        proc = run_cli("merge", *map(str, files), "-o", str(tmp_path / "merged"))
        assert proc.returncode == 2
        assert len(errors(proc)) == 1 and message in errors(proc)[0], proc.stderr
        assert "Traceback" not in proc.stderr
    proc = run_cli("learn", str(c), "--quiet", ranks=1)  # steps 3-4 on its fits
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("merge", str(a), str(c), "-o", str(tmp_path / "merged"))
    assert proc.returncode == 2 and "overlap" in errors(proc)[0]
    proc = run_cli("run", str(cfg), "--frames", "5:9", ranks=1)
    assert proc.returncode == 2 and "selects no frame" in errors(proc)[0]
    whole = tmp_path / "whole"  # a whole run is no task: nothing to merge (it wrote
    proc = run_cli("run", str(cfg), "--out", str(whole), "--quiet", ranks=1)  # outputs in
    assert proc.returncode == 0, proc.stderr  # the folder above its own before)
    proc = run_cli("merge", str(whole / "motex.h5"))
    assert proc.returncode == 2 and "a whole run's file" in errors(proc)[0], proc.stderr
    assert not (tmp_path / "motex.h5").exists()


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["fit", "learn"])
def test_series_killed_then_resumed_is_identical(series, tmp_path, stage):
    cfg = series_config(tmp_path)
    marker = "fit:" if stage == "fit" else "step 3:"
    kill_when(cfg, marker, ranks=2, pause=f"{stage}:0.2", count=3 if stage == "fit" else 1)
    with h5py.File(tmp_path / "out" / "motex.h5") as f:
        assert "complete" not in f.attrs
    proc = run_cli("run", str(cfg), "--resume", ranks=2)
    assert proc.returncode == 0, proc.stderr
    got = read(tmp_path / "out" / "motex.h5")
    for name in COMPARED:
        np.testing.assert_array_equal(got[name], series[2][name], err_msg=name)


def _coarsen(src, dst, keep_every=2, rmax=None):
    """``src`` with only every ``keep_every``-th data row (and none beyond ``rmax``)."""
    rows, data = [], 0
    for line in src.read_text().splitlines():
        fields = line.split()
        try:
            r = float(fields[0]) if len(fields) >= 2 else None
        except ValueError:
            r = None
        if r is None:
            rows.append(line)
            continue
        if data % keep_every == 0 and (rmax is None or r <= rmax):
            rows.append(line)
        data += 1
    dst.write_text("\n".join(rows) + "\n")


@pytest.mark.slow
def test_frames_on_different_r_grids(tmp_path):
    """A frame on a coarser grid is fitted on its own grid, as it is alone."""
    frames = tmp_path / "frames"
    frames.mkdir()
    shutil.copy(FE2O3 / "frames" / "Fe2O3_3204M_150.gr", frames / "run_1.gr")
    _coarsen(FE2O3 / "frames" / "Fe2O3_3204M_120.gr", frames / "run_2.gr", 2, rmax=10.0)
    shutil.copy(FE2O3 / "frames" / "Fe2O3_3204M_90.gr", frames / "run_3.gr")
    common = {"fit": {"zoom_search": "shared"}, "frames": {"time": None, "block": 0}}
    cfg = series_config(tmp_path, data=str(frames / "run_*.gr"), **common)
    proc = run_cli("run", str(cfg), "--until", "fit", "--quiet", ranks=2)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(tmp_path / "out" / "motex.h5") as f:
        r = [f[f"data/{k:05d}/r"][:] for k in range(3)]
        rw = f["fits/rw"][:]
    assert np.allclose(np.diff(r[1]), 0.02) and np.allclose(np.diff(r[0]), 0.01)
    assert r[1].size < r[0].size and r[0][-1] <= 8.0 and r[1][-1] <= 8.0
    alone_dir = tmp_path / "alone"
    alone_dir.mkdir()
    cfg = series_config(alone_dir, data=str(frames / "run_2.gr"), **common)
    proc = run_cli("run", str(cfg), "--until", "fit", "--quiet", ranks=1)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(alone_dir / "out" / "motex.h5") as f:
        np.testing.assert_array_equal(f["fits/rw"][0], rw[1])


@pytest.mark.slow
def test_one_search_for_the_series_or_one_per_frame(series, tmp_path):
    """The default for a series: one search on representative frames (3 of 4: 0, 2, 3),
    its hyperparameters used by every frame's model; per_frame searches each frame."""
    results = {}
    for mode in ("shared", "per_frame"):
        folder = tmp_path / mode
        cfg = series_config(folder, learn={"search_iterations": 4, "cv_folds": 2,
                                           "params": {}, "series_search": mode})
        proc = run_cli("run", str(cfg), "--until", "learn", "--quiet", ranks=2)
        assert proc.returncode == 0, proc.stderr
        with h5py.File(folder / "out" / "motex.h5") as f:
            results[mode] = (dict(f["ml"].attrs), f["fits/rw"][()])
    shared, rw = results["shared"]
    np.testing.assert_array_equal(rw, series[2]["fits/rw"])  # the same fits
    assert shared["searched_frames"].tolist() == [0, 2, 3]
    history = json.loads(shared["history"])
    assert [len(h) for h in history] == [4, 0, 4, 4] and history[0] == history[3]
    params = json.loads(shared["params"])
    for key in ("learning_rate", "max_depth", "subsample", "colsample_bytree"):
        assert len({p[key] for p in params}) == 1, key  # one choice for every frame
    cv = shared["cv_score"]
    assert np.isfinite(cv[[0, 2, 3]]).all() and np.isnan(cv[1])
    per_frame, _ = results["per_frame"]
    assert "searched_frames" not in per_frame
    assert [len(h) for h in json.loads(per_frame["history"])] == [4, 4, 4, 4]
