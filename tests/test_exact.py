"""Exhaustive runs: every motif fitted once, exact Shapley values, the K best motifs."""

from __future__ import annotations

import itertools
import math

import h5py
import numpy as np
import pytest

from mlmotex_hpc.catalogue import code_masks, mask_rows, sample_masks
from mlmotex_hpc.learn.exact import (
    attributions,
    block_sums,
    lowest,
    merge_lowest,
    shapley_weights,
)
from mlmotex_hpc.pipeline.exact import learning_rows
from mlmotex_hpc.store.run_layout import undescribed

from .conftest import EXAMPLES, KEGGIN_XYZ, keggin_config, run_cli


def _table(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Every non-empty motif of n atoms in row order, and a random game's values."""
    rng = np.random.default_rng(seed)
    return code_masks(0, 2**n - 1, n), rng.uniform(0.2, 0.9, 2**n - 1)


def _shapley_by_orderings(v: dict[frozenset, float], n: int) -> np.ndarray:
    """The definition itself: each atom's marginal contribution averaged over every
    order in which the atoms can join."""
    phi = np.zeros(n)
    for order in itertools.permutations(range(n)):
        present: frozenset = frozenset()
        for i in order:
            joined = present | {i}
            phi[i] += v[joined] - v[present]
            present = joined
    return phi / math.factorial(n)


def _exact(masks, values):
    sums, bad = block_sums(masks, values[None, :])
    return attributions(sums, bad)


@pytest.mark.parametrize("n", [1, 3, 6, 8])
def test_shapley_equals_the_definition_over_every_ordering(n):
    masks, values = _table(n, seed=n)
    v = {frozenset(): 1.0}
    for mask, value in zip(masks, values, strict=True):
        v[frozenset(np.flatnonzero(mask).tolist())] = value
    got = _exact(masks, values)["shapley"][0]
    np.testing.assert_allclose(got, _shapley_by_orderings(v, n), rtol=0, atol=1e-12)
    # efficiency: the values share out v(all) - v(empty)
    assert got.sum() == pytest.approx(values[-1] - 1.0, abs=1e-12)


def test_shapley_of_an_additive_game_is_each_atoms_own_term():
    n = 10
    rng = np.random.default_rng(3)
    a = rng.normal(0.0, 0.05, n)
    masks = code_masks(0, 2**n - 1, n)
    values = 1.0 + masks @ a  # v(S) = 1 + sum of a_i over S: v(empty) = 1 as the game has
    result = _exact(masks, values)
    np.testing.assert_allclose(result["shapley"][0], a, rtol=0, atol=1e-12)
    # the main effect of an additive game over non-empty motifs, in closed form: the
    # removing side lacks the empty motif, whose sum is 0 and count 1
    m = 2 ** (n - 1)
    others = (a.sum() - a) * (m / 2)  # sum over S of the other atoms' terms, each side
    expected = (a + others / m) - others / (m - 1)
    np.testing.assert_allclose(result["main_effect"][0], expected, rtol=0, atol=1e-12)


def test_block_sums_add_up_in_any_split_and_failed_fits_are_refused():
    masks, values = _table(9, seed=1)
    whole, _ = block_sums(masks, values[None, :])
    parts = [block_sums(masks[a:b], values[None, a:b])[0] for a, b in ((0, 100), (100, 511))]
    np.testing.assert_allclose(parts[0] + parts[1], whole, rtol=1e-14, atol=1e-15)
    values[7] = np.nan
    sums, bad = block_sums(masks, values[None, :])
    result = attributions(sums, bad)
    assert bad.tolist() == [1]
    assert np.all(np.isnan(result["shapley"])) and np.all(np.isfinite(result["main_effect"]))


def test_weights_sum_to_one_over_the_subsets_of_the_others():
    for n in (1, 5, 24):
        w = shapley_weights(n)
        total = sum(math.comb(n - 1, s) * w[s] for s in range(n))
        assert total == pytest.approx(1.0, rel=1e-14)


def test_lowest_and_merge_keep_the_k_lowest_with_ties_by_row():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 50, (2, 1000)).astype(float)  # many ties
    values[0, 5] = np.nan
    k = 30
    parts = [lowest(values[:, a:b], a, k) for a, b in ((0, 333), (333, 700), (700, 1000))]
    rows, got = merge_lowest(parts, k)
    for f in range(2):
        ok = np.flatnonzero(np.isfinite(values[f]))
        expected = ok[np.lexsort((ok, values[f, ok]))][:k]
        np.testing.assert_array_equal(rows[f], expected)
        np.testing.assert_array_equal(got[f], values[f, expected])


def test_rows_are_binary_codes_and_the_learning_sample_is_ml_motex_s():
    masks = code_masks(0, 2**7 - 1, 7)
    np.testing.assert_array_equal(mask_rows(masks), np.arange(2**7 - 1))
    np.testing.assert_array_equal(code_masks(40, 41, 7)[0], [1, 0, 0, 1, 0, 1, 0])  # code 41
    rows = learning_rows(12, 500, seed=4)
    np.testing.assert_array_equal(code_masks(0, 2**12 - 1, 12)[rows][np.argsort(
        np.argsort(mask_rows(sample_masks(12, 500, 4))))], sample_masks(12, 500, 4))


def _model_with_first_w(tmp_path, n_w: int):
    """109725.xyz with only its first ``n_w`` W (all its O kept as non-permutable)."""
    lines = KEGGIN_XYZ.read_text().splitlines()
    atoms = [line for line in lines[2:] if line.split()]
    w = [a for a in atoms if a.split()[0] == "W"][:n_w]
    rest = [a for a in atoms if a.split()[0] != "W"]
    path = tmp_path / f"keggin_{n_w}w.xyz"
    path.write_text(f"{len(w) + len(rest)}\n109725 with its first {n_w} W\n"
                    + "\n".join(w + rest) + "\n")
    return path


def _independent_shapley(masks: np.ndarray, rw: np.ndarray) -> np.ndarray:
    """Shapley values from the pair form of the definition: for each atom, the weighted
    change of Rw between every motif without it and the same motif with it."""
    n = masks.shape[1]
    codes = mask_rows(masks) + 1
    v = np.ones(2**n)
    v[codes] = rw
    all_codes = np.arange(2**n)
    size = np.array([bin(c).count("1") for c in all_codes])
    weight = np.array([math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n)
                       if s < n else 0.0 for s in size])
    phi = np.zeros(n)
    for i in range(n):
        without = all_codes[(all_codes >> i) & 1 == 0]
        phi[i] = np.sum(weight[without] * (v[without | (1 << i)] - v[without]))
    return phi


@pytest.mark.slow
@pytest.mark.mpi
def test_exhaustive_run_of_16_w_matches_an_independent_shapley_on_2_ranks(tmp_path,
                                                                           write_config):
    config = write_config(keggin_config(
        tmp_path, structure=str(_model_with_first_w(tmp_path, 16)),
        catalogue={"size": "all", "seed": 1, "batch_size": 16},
        learn={"sample": 2000}, exact={"best": 20}))
    dry = run_cli("run", str(config), "--dry-run", "--ranks", "2")
    assert dry.returncode == 0, dry.stderr
    assert "every motif: all 65,535" in dry.stdout and "when finished" in dry.stdout
    done = run_cli("run", str(config), ranks=2)
    assert done.returncode == 0, done.stdout + done.stderr
    with h5py.File(tmp_path / "out" / "motex.h5") as h5:
        masks = h5["catalogue/mask"][:].astype(bool)
        rw = h5["fits/rw"][0]
        status = h5["fits/status"][0]
        shapley = h5["atoms/shapley"][0]
        best_rows, best_rw = h5["best/row"][0], h5["best/rw"][0]
        learn_rows = h5["catalogue/learn_rows"][:]
        n_shap = h5["shap/values"].shape[1]
    assert masks.shape == (65535, 16)
    np.testing.assert_array_equal(mask_rows(masks), np.arange(65535))  # each motif once
    assert np.all(status == 0) and np.all(np.isfinite(rw))
    np.testing.assert_allclose(shapley, _independent_shapley(masks, rw), rtol=0, atol=1e-9)
    order = np.lexsort((np.arange(rw.size), rw))[:20]
    np.testing.assert_array_equal(best_rows, order)
    np.testing.assert_array_equal(best_rw, rw[order])
    assert learn_rows.size == 2000 and n_shap == 2000  # steps 3-4 on the sample only
    assert "exact Shapley values" in done.stdout


@pytest.mark.slow
@pytest.mark.mpi
def test_exhaustive_attributions_are_identical_on_1_2_and_3_ranks(tmp_path, write_config):
    results = []
    for ranks in (1, 2, 3):
        config = write_config(keggin_config(
            tmp_path, structure=str(_model_with_first_w(tmp_path, 9)),
            catalogue={"size": 511, "seed": 1, "batch_size": 16},
            output={"dir": str(tmp_path / f"out{ranks}")}), name=f"c{ranks}.yaml")
        done = run_cli("run", str(config), ranks=ranks)
        assert done.returncode == 0, done.stdout + done.stderr
        with h5py.File(tmp_path / f"out{ranks}" / "motex.h5") as h5:
            results.append({key: h5[key][:] for key in (
                "atoms/shapley", "atoms/main_effect", "best/row", "best/rw", "fits/rw",
                "atoms/contribution", "atoms/in_motif")})
    for other in results[1:]:
        for key, value in results[0].items():
            np.testing.assert_array_equal(other[key], value, err_msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("hdf5", ["parallel", "serial"])
@pytest.mark.mpi
def test_exhaustive_run_killed_while_fitting_resumes_to_the_same_answer(tmp_path, hdf5,
                                                                        write_config):
    from .test_resume import kill_when

    env = {"MLMOTEX_SERIAL_HDF5": "1"} if hdf5 == "serial" else {}
    names = ("fits/rw", "fits/status", "catalogue/mask", "atoms/shapley", "atoms/main_effect",
             "best/row", "atoms/contribution", "catalogue/learn_rows")
    structure = str(_model_with_first_w(tmp_path, 14))  # 16,383 motifs: 8 work units
    reference = write_config(keggin_config(
        tmp_path, structure=structure, catalogue={"size": "all"}, learn={"sample": 1000},
        output={"dir": str(tmp_path / "reference")}), name="reference.yaml")
    done = run_cli("run", str(reference), ranks=2, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    with h5py.File(tmp_path / "reference" / "motex.h5") as h5:
        expected = {name: h5[name][()] for name in names}
    config = write_config(keggin_config(
        tmp_path, structure=structure, catalogue={"size": "all"}, learn={"sample": 1000}))
    kill_when(config, "fit:", ranks=2, pause="fit:0.5", count=2, env=env)
    with h5py.File(tmp_path / "out" / "motex.h5") as h5:
        done_units = h5["fits/batch_done"][()]
        assert 0 < done_units.sum() < done_units.size
    resumed = run_cli("run", str(config), ranks=2, env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming" in resumed.stdout
    with h5py.File(tmp_path / "out" / "motex.h5") as h5:
        for name in names:
            np.testing.assert_array_equal(h5[name][()], expected[name], err_msg=name)


def test_an_exhaustive_catalogue_is_never_held_and_its_limits_are_one_line(tmp_path):
    from mlmotex_hpc.config import parse_config
    from mlmotex_hpc.errors import InputError
    from mlmotex_hpc.pipeline.inputs import load_inputs

    config = keggin_config(tmp_path, structure=str(_model_with_first_w(tmp_path, 20)),
                           catalogue={"size": "all"})
    import yaml

    inputs = load_inputs(parse_config(yaml.safe_dump(config), tmp_path))
    assert inputs.exhaustive and inputs.n_motifs == 2**20 - 1
    assert inputs.packed_masks.shape[0] == 0  # nothing materialised
    np.testing.assert_array_equal(inputs.masks(2**20 - 3), code_masks(2**20 - 3, 2**20 - 1, 20))
    adaptive = {**config, "catalogue": {"size": "all", "strategy": "adaptive"}}
    with pytest.raises(InputError, match="nothing to choose"):
        load_inputs(parse_config(yaml.safe_dump(adaptive), tmp_path))
    with pytest.raises(InputError, match="expected an integer"):
        parse_config(yaml.safe_dump({**config, "catalogue": {"size": "every"}}), tmp_path)
    c60 = {**config, "structure": str(EXAMPLES / "c60" / "C60_111_supercell.xyz"),
           "permute": ["C"], "pdf": {**config["pdf"], "uiso": {"C": 0.005}}}
    with pytest.raises(InputError, match=r"2\^132 - 1 motifs .* limited to N ≤ 32"):
        load_inputs(parse_config(yaml.safe_dump(c60), tmp_path))


@pytest.mark.slow
@pytest.mark.mpi
def test_convergence_compares_catalogues_with_the_exact_answer_on_2_ranks(tmp_path,
                                                                          write_config):
    from mlmotex_hpc.config import parse_config
    from mlmotex_hpc.learn.convergence import FIELDS, trial
    from mlmotex_hpc.learn.model import LearnSettings

    config = write_config(keggin_config(
        tmp_path, structure=str(_model_with_first_w(tmp_path, 10)),
        catalogue={"size": "all"}, learn={"sample": 300}))
    done = run_cli("run", str(config), ranks=1)
    assert done.returncode == 0, done.stdout + done.stderr
    h5path = tmp_path / "out" / "motex.h5"
    proc = run_cli("convergence", str(h5path), "--sizes", "60,200", "--seeds", "2", ranks=2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with h5py.File(h5path) as h5:
        assert not undescribed(h5)  # an exhaustive run's file, /convergence included
        table = h5["convergence"][()]
        columns = h5["convergence"].attrs["columns"].split(",")
        rw, shapley = h5["fits/rw"][0], h5["atoms/shapley"][0]
        global_rw = h5["best/rw"][0, 0]
    assert columns == list(FIELDS)
    col = {name: table[:, k] for k, name in enumerate(columns)}
    assert sorted(zip(col["strategy"], col["size"], col["seed"], strict=True)) == [
        (s, m, k) for s in (0, 1) for m in (60, 200) for k in (0, 1)]
    assert np.all((col["best_rw"] >= col["global_rw"]) & (col["global_rw"] == global_rw))
    # a trial is a function of its size and seed: recomputed here, on one process
    learn = parse_config(config.read_text(), tmp_path).learn
    settings = LearnSettings(test_fraction=learn.test_fraction, cv_folds=learn.cv_folds,
                             search_iterations=learn.search_iterations, search=learn.search,
                             seed=1, params=learn.params)
    again = trial(learning_rows(10, 200, 1), rw, shapley, global_rw, 200, 1, settings)
    row = np.flatnonzero((col["strategy"] == 0) & (col["size"] == 200) & (col["seed"] == 1))
    np.testing.assert_array_equal(table[row[0], :-1], np.array(again.row(), float)[:-1])
    out = tmp_path / "out"
    assert (out / "convergence.png").stat().st_size > 10_000
    assert "How many motifs are enough" in (out / "report.html").read_text()
    assert (out / "convergence.csv").read_text().splitlines()[0] == ",".join(FIELDS)
    refused = run_cli("convergence", str(tmp_path / "nothing.h5"))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
