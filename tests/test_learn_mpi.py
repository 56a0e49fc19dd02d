"""Steps 3-4 across ranks: distributed SHAP and search, and ``mlmotex-hpc learn``."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import yaml

from .conftest import keggin_config, run_cli

pytestmark = pytest.mark.mpi

ATOMS = ("atoms/contribution", "atoms/uncertainty", "atoms/confidence", "atoms/kept_mean",
         "atoms/removed_mean")


def _write(tmp_path, name, **overrides):
    config = keggin_config(tmp_path, **overrides)
    config["output"] = {"dir": str(tmp_path / name)}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, tmp_path / name / "motex.h5"


def _read(h5, names):
    with h5py.File(h5) as f:
        return {name: f[name][()] for name in names}


@pytest.mark.slow
def test_two_ranks_explain_like_one(tmp_path):
    """Fixed hyperparameters: 400 motifs (2 blocks of 256), each rank explains one."""
    results = {}
    for ranks in (1, 2):
        cfg, h5 = _write(tmp_path, f"out{ranks}")
        proc = run_cli("run", str(cfg), "--quiet", ranks=ranks)
        assert proc.returncode == 0, proc.stderr
        results[ranks] = _read(h5, ATOMS + ("shap/values", "shap/base_value", "fits/rw",
                                            "polish/mask", "polish/rw", "atoms/label",
                                            "atoms/in_motif"))
    np.testing.assert_array_equal(results[1]["fits/rw"], results[2]["fits/rw"])
    np.testing.assert_array_equal(results[1]["shap/values"], results[2]["shap/values"])
    np.testing.assert_array_equal(results[1]["shap/base_value"], results[2]["shap/base_value"])
    for name in ATOMS + ("polish/mask", "polish/rw", "atoms/label", "atoms/in_motif"):
        # bit-identical: block sums added in the same order; polishing decides alike
        np.testing.assert_array_equal(results[2][name], results[1][name], err_msg=name)


@pytest.mark.slow
def test_sampled_shap_stops_at_the_same_motifs_on_one_and_three_ranks(tmp_path):
    """2000 motifs, a loose target: step 4 stops at the first checkpoint (256 motifs),
    bit-identically for any rank count, with the labels of SHAP on every motif."""
    catalogue = {"size": 2000, "seed": 1, "batch_size": 64}
    results = {}
    for name, ranks, shap in (("one", 1, "auto"), ("three", 3, "auto"), ("all", 2, "all")):
        cfg, h5 = _write(tmp_path, name, catalogue=catalogue,
                         learn={"shap": shap, "shap_target": 0.5})
        proc = run_cli("run", str(cfg), "--until", "explain", "--quiet", ranks=ranks)
        assert proc.returncode == 0, proc.stderr
        results[name] = _read(h5, ATOMS + ("atoms/contribution_se", "atoms/in_motif",
                                           "shap/values", "shap/explained", "fits/rw"))
        with h5py.File(h5) as f:
            results[name]["n_explained"] = f["shap"].attrs["n_explained"]
            n_catalogue = int(f["catalogue"].attrs["n_catalogue"])
    one, three, every = results["one"], results["three"], results["all"]
    assert n_catalogue == 2000 - 240  # 10 N fits kept for the extract stage
    assert one["n_explained"].tolist() == [256]
    assert every["n_explained"].tolist() == [n_catalogue]
    assert one["shap/explained"].sum() == 256 and every["shap/explained"].all()
    for name in ATOMS + ("atoms/contribution_se", "shap/explained", "shap/values"):
        np.testing.assert_array_equal(three[name], one[name], err_msg=name)
    rows = one["shap/explained"][0].astype(bool)
    assert np.isnan(one["shap/values"][0, ~rows]).all()
    # the same model explains the same motifs the same way, whichever are explained
    np.testing.assert_array_equal(one["shap/values"][0, rows], every["shap/values"][0, rows])
    np.testing.assert_array_equal(one["atoms/in_motif"], every["atoms/in_motif"])
    se = one["atoms/contribution_se"][0]
    assert (se > 0).all() and (se > every["atoms/contribution_se"][0]).all()
    # the sampled ACV lies within a few standard errors of the all-motif one
    diff = np.abs(one["atoms/contribution"][0] - every["atoms/contribution"][0])
    assert (diff < 5 * se).all()
    assert np.max(se) <= 0.5 * np.max(np.abs(one["atoms/contribution"][0]))


@pytest.mark.slow
def test_search_spreads_each_round_over_the_ranks_and_ends_alike(tmp_path):
    """A round's 4 candidates are dealt out over 3 ranks (2 on rank 0): the search, and
    the model, are those of one rank."""
    learn = {"search_iterations": 6, "cv_folds": 2, "params": {}, "search": "full"}
    runs = {}
    for ranks in (1, 3):
        cfg, h5 = _write(tmp_path, f"out{ranks}", learn=learn)
        proc = run_cli("run", str(cfg), "--until", "learn", ranks=ranks)
        assert proc.returncode == 0, proc.stderr
        with h5py.File(h5) as f:
            runs[ranks] = (f["ml"].attrs["history"], f["ml"].attrs["params"])
    assert runs[1] == runs[3]
    history, params = json.loads(runs[3][0]), json.loads(runs[3][1])
    assert len(history) == 6
    assert [h["round"] for h in history] == [0, 0, 0, 0, 1, 1]  # SEARCH_BATCH = 4 a round
    best = min(history, key=lambda h: h["cv_rmse"])
    assert params["max_depth"] == best["max_depth"]


@pytest.mark.slow
def test_learn_reruns_steps_3_and_4_without_refitting(tmp_path):
    full_cfg, full_h5 = _write(tmp_path, "full")
    assert run_cli("run", str(full_cfg), "--quiet", ranks=2).returncode == 0
    cfg, h5 = _write(tmp_path, "fitonly")
    assert run_cli("run", str(cfg), "--until", "fit", "--quiet", ranks=2).returncode == 0
    fits = _read(h5, ("fits/rw",))
    proc = run_cli("learn", str(h5), ranks=2)
    assert proc.returncode == 0, proc.stderr
    assert "extracted motif" in proc.stdout
    n = fits["fits/rw"].shape[1]  # the catalogue's fits kept; the extract stage's follow
    np.testing.assert_array_equal(_read(h5, ("fits/rw",))["fits/rw"][:, :n], fits["fits/rw"])
    mine, full = _read(h5, ATOMS), _read(full_h5, ATOMS)
    for name in ATOMS:
        np.testing.assert_allclose(mine[name], full[name], rtol=0, atol=1e-9, err_msg=name)
    assert (tmp_path / "fitonly" / "atom_contributions.csv").exists()
    # new settings, same fits; the run's config stays, so `run` still recognises the file
    proc = run_cli("learn", str(h5), "--search-iterations", "3", "--cv-folds", "2",
                   "--until", "learn", "--quiet", ranks=1)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(h5) as f:
        assert json.loads(f["ml"].attrs["settings"])["search_iterations"] == 3
    assert "nothing to do" in run_cli("run", str(cfg), ranks=1).stdout


@pytest.mark.slow
def test_learn_refuses_unfinished_fits(tmp_path):
    cfg, h5 = _write(tmp_path, "out")
    assert run_cli("run", str(cfg), "--quiet", ranks=1).returncode == 0
    with h5py.File(h5, "r+") as f:
        f["fits/batch_done"][0] = 0
    proc = run_cli("learn", str(h5), ranks=2)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("mlmotex-hpc:")]
    assert len(lines) == 1 and "fit batches are not finished" in lines[0], proc.stderr
