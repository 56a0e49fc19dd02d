"""Steps 3-4: features, honest splits, the search, the final model, SHAP and ACV / σ / CF."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlmotex_hpc.learn import model as model_mod
from mlmotex_hpc.learn.explain import (
    ContributionSums,
    atom_contributions,
    contribution_sums,
    shap_values,
)
from mlmotex_hpc.learn.model import (
    LearnSettings,
    cv_folds,
    features,
    n_folds_for,
    search_hyperparameters,
    split_indices,
    train_rw_model,
    validation_split,
)

N_ATOMS = 12
GOOD = np.arange(0, N_ATOMS, 2)  # keeping these lowers Rw
BAD = np.arange(1, N_ATOMS, 2)  # keeping these raises it
FAST = LearnSettings(cv_folds=3, search_iterations=6, seed=3, n_jobs=2)


def synthetic(m: int = 600, seed: int = 0, noise: float = 0.003):
    """Masks sampled as the catalogue does, and Rw a known function of them."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((m, N_ATOMS), bool)
    for row, k in zip(masks, rng.integers(1, N_ATOMS + 1, m), strict=True):
        row[rng.choice(N_ATOMS, k, replace=False)] = True
    rw = (0.8 - 0.03 * masks[:, GOOD].sum(axis=1) + 0.02 * masks[:, BAD].sum(axis=1)
          + rng.normal(0.0, noise, m))
    return masks, rw


@pytest.fixture(scope="module")
def problem():
    masks, rw = synthetic()
    return masks, features(masks), rw


@pytest.fixture(scope="module")
def trained(problem):
    _, X, rw = problem
    lines: list[str] = []
    return train_rw_model(X, rw, FAST, log=lines.append), lines


# ----------------------------------------------------------------------------- features


def test_features_are_mask_bits_then_size():
    masks = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 1]], bool)
    X = features(masks)
    assert X.dtype == np.float32 and X.shape == (3, 4)
    np.testing.assert_array_equal(X, [[1, 0, 1, 2], [0, 0, 1, 1], [1, 1, 1, 3]])
    with pytest.raises(ValueError, match="2-D"):
        features(np.ones(3, bool))


# ----------------------------------------------------------------------------- ACV maths


def test_acv_known_answer():
    # Atom 0: kept in motifs 0, 1 (φ = -1, -3), removed in 2, 3 (φ = 2, 4):
    #   K = -2, s_K = 1; R = 3, s_R = 1; ACV = -5; σ = 1; CF = 5.
    # Atom 1: kept in 0, 1, 2 (φ = 1, 2, 3), removed in 3 (φ = 0):
    #   K = 2, s_K² = 2/3 (ddof 0); R = 0, s_R = 0; ACV = 2; σ = sqrt(1/3); CF = 2 sqrt(3).
    masks = np.array([[1, 1], [1, 1], [0, 1], [0, 0]], bool)
    phi = np.array([[-1.0, 1.0, 9.0], [-3.0, 2.0, 9.0], [2.0, 3.0, 9.0], [4.0, 0.0, 9.0]])
    c = atom_contributions(contribution_sums(masks, phi))  # the bias column is ignored
    np.testing.assert_allclose(c.kept_mean, [-2.0, 2.0])
    np.testing.assert_allclose(c.removed_mean, [3.0, 0.0])
    np.testing.assert_allclose(c.kept_std, [1.0, math.sqrt(2 / 3)])
    np.testing.assert_allclose(c.removed_std, [1.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(c.contribution, [-5.0, 2.0])
    np.testing.assert_allclose(c.uncertainty, [1.0, math.sqrt(1 / 3)])
    np.testing.assert_allclose(c.confidence, [5.0, 2 * math.sqrt(3)])
    # SE = sqrt(s_K²/n_K + s_R²/n_R): atom 0 sqrt(1/2 + 1/2), atom 1 sqrt((2/3)/3 + 0)
    np.testing.assert_allclose(c.contribution_se, [1.0, math.sqrt(2 / 9)])


def test_atoms_never_kept_or_never_removed_are_nan():
    masks = np.array([[1, 0, 1], [1, 0, 0], [1, 0, 1]], bool)
    phi = np.array([[0.5, 0.1, -1.0], [0.5, 0.2, 1.0], [0.5, 0.3, -1.0]])
    c = atom_contributions(contribution_sums(masks, phi))
    # atom 0 is never removed, atom 1 never kept: nothing to compare
    assert np.isnan(c.removed_mean[0]) and np.isnan(c.kept_mean[1])
    assert c.kept_mean[0] == 0.5 and c.removed_mean[1] == pytest.approx(0.2)
    for field in ("contribution", "uncertainty", "confidence"):
        assert np.isnan(getattr(c, field)[:2]).all()
    # atom 2: constant φ within each group, so σ = 0 and CF is infinite
    assert c.contribution[2] == -2.0 and c.uncertainty[2] == 0.0 and np.isinf(c.confidence[2])


def test_sums_are_additive_over_motif_subsets():
    rng = np.random.default_rng(5)
    masks = rng.random((1000, 9)) < 0.4
    phi = rng.normal(0.3, 0.05, (1000, 11))
    whole = contribution_sums(masks, phi)
    cuts = [0, 1, 1, 377, 640, 1000]  # uneven parts, one of them empty
    parts = [contribution_sums(masks[a:b], phi[a:b]) for a, b in zip(cuts, cuts[1:],
                                                                      strict=False)]
    total = ContributionSums.zeros(9)
    for part in parts:
        total = total + part
    reduced = ContributionSums.from_array(sum(p.as_array() for p in parts))  # as Allreduce
    np.testing.assert_array_equal(whole.n_keep + whole.n_remove, 1000)
    a, b, c = (atom_contributions(s) for s in (whole, total, reduced))
    for field in ("contribution", "uncertainty", "confidence", "kept_mean", "removed_std"):
        np.testing.assert_allclose(getattr(b, field), getattr(a, field), rtol=0, atol=1e-9)
        np.testing.assert_allclose(getattr(c, field), getattr(a, field), rtol=0, atol=1e-9)
    # and the sums agree with direct population statistics
    kept = phi[masks[:, 0], 0]
    assert a.kept_mean[0] == pytest.approx(kept.mean(), abs=1e-12)
    assert a.kept_std[0] == pytest.approx(kept.std(ddof=0), abs=1e-10)
    assert whole.as_array().shape == (6, 9)


def test_sample_order_checkpoints_and_the_stopping_rule():
    from mlmotex_hpc.learn import explain

    ok = np.ones(10_000, bool)
    ok[::7] = False
    order = explain.explain_order(ok, seed=3)
    np.testing.assert_array_equal(np.sort(order), np.flatnonzero(ok))
    assert not np.array_equal(order, np.flatnonzero(ok))  # shuffled
    np.testing.assert_array_equal(explain.explain_order(ok, seed=3), order)
    first = explain.FIRST_CHECK
    assert explain.checkpoints(order.size) == [first * 2**k for k in range(6)] + [order.size]
    assert explain.checkpoints(100) == [100]
    # the rule: the largest SE against the largest |ACV|; NaN atoms are left out
    rng = np.random.default_rng(0)
    masks = rng.random((4000, 3)) < 0.5
    masks[:, 2] = True  # never removed: NaN, ignored
    phi = np.where(masks, -0.1, 0.1) + rng.normal(0, 0.05, masks.shape)
    c = atom_contributions(contribution_sums(masks, phi))
    worst = explain.largest_relative_se(c)
    assert worst == pytest.approx(np.nanmax(c.contribution_se) / np.nanmax(np.abs(
        c.contribution)))
    assert explain.settled(c, worst) and not explain.settled(c, 0.9 * worst)


def test_contribution_sums_checks_shapes():
    with pytest.raises(ValueError, match="do not match"):
        contribution_sums(np.ones((4, 3), bool), np.ones((4, 2)))
    with pytest.raises(ValueError, match="shape"):
        ContributionSums.from_array(np.ones((5, 3)))


# ----------------------------------------------------------------------------- partitions


def test_split_is_shuffled_seeded_and_disjoint():
    train, test = split_indices(1000, 0.2, seed=1)
    assert len(test) == 200 and len(train) == 800
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.union1d(train, test), np.arange(1000))
    assert test.max() > 800 and test.min() < 200  # shuffled, not the tail
    np.testing.assert_array_equal(split_indices(1000, 0.2, seed=1)[1], test)
    assert not np.array_equal(split_indices(1000, 0.2, seed=2)[1], test)
    fit, val = validation_split(800, seed=1)
    assert len(val) == 80 and np.intersect1d(fit, val).size == 0
    folds = cv_folds(800, 5, seed=1)
    np.testing.assert_array_equal(np.sort(np.concatenate([v for _, v in folds])),
                                  np.arange(800))


def test_small_catalogues():
    with pytest.raises(ValueError, match="at least 10"):
        split_indices(9, 0.2, seed=0)
    with pytest.raises(ValueError, match="train on"):
        split_indices(10, 0.7, seed=0)
    assert n_folds_for(6, 5) == 3 and n_folds_for(1600, 5) == 5
    assert len(validation_split(30, seed=0)[1]) == 0  # too few for early stopping
    masks, rw = synthetic(14)
    lines: list[str] = []
    model = train_rw_model(features(masks), rw, FAST, log=lines.append)
    assert model.metrics["n_test"] == 3 and model.metrics["n_validation"] == 0
    assert model.metrics["cv_folds"] == 3
    masks, rw = synthetic(11)
    lines.clear()
    model = train_rw_model(features(masks), rw, LearnSettings(cv_folds=5, search_iterations=2),
                           log=lines.append)
    assert model.metrics["cv_folds"] == 4
    assert any("4-fold instead of 5-fold" in line for line in lines)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="test_fraction"):
        LearnSettings(test_fraction=0.0)
    with pytest.raises(ValueError, match="cv_folds"):
        LearnSettings(cv_folds=1)
    with pytest.raises(ValueError, match="non-finite"):
        train_rw_model(np.zeros((20, 3)), np.r_[np.zeros(19), np.nan], FAST)


# ----------------------------------------------------------------------------- learning


def test_model_learns_the_known_function(problem, trained):
    masks, X, rw = problem
    model, lines = trained
    assert model.metrics["test_r2"] > 0.8
    assert model.metrics["test_mae"] < 0.5 * model.metrics["baseline_mae"]
    assert model.metrics["n_train"] + model.metrics["n_test"] == len(rw)
    assert len(model.history) == FAST.search_iterations
    assert all(np.isfinite(h["cv_rmse"]) for h in model.history)
    # the fast search: the first candidate is the warm start, trees come from early
    # stopping, and the lowest CV score wins
    assert {k: model.history[0][k] for k in model_mod.WARM_START} == model_mod.WARM_START
    assert "n_estimators" not in model.history[0] and model.history[0]["trees"] >= 1
    assert model.metrics["cv_score"] == min(h["cv_rmse"] for h in model.history)
    assert 1 <= model.params["n_estimators"] < model_mod.MAX_TREES
    assert model.booster().num_boosted_rounds() == model.params["n_estimators"]
    assert not any("not to be trusted" in line for line in lines)
    c = atom_contributions(contribution_sums(masks, shap_values(model, X)))
    assert (c.contribution[GOOD] < 0).all() and (c.contribution[BAD] > 0).all()
    # the size feature absorbs part of the effect, but the scale is right
    assert -0.045 < c.contribution[GOOD].mean() < -0.015
    assert 0.01 < c.contribution[BAD].mean() < 0.03
    assert (c.confidence > 2).all()


def test_train_and_test_are_disjoint(problem, trained):
    model, _ = trained
    _, _, rw = problem
    assert np.intersect1d(model.train_index, model.test_index).size == 0
    np.testing.assert_array_equal(np.union1d(model.train_index, model.test_index),
                                  np.arange(len(rw)))


def test_test_set_only_changes_the_metrics(problem, trained):
    # Scrambling the test targets must leave the search and the model untouched.
    _, X, rw = problem
    model, _ = trained
    rw2 = rw.copy()
    rw2[model.test_index] = np.random.default_rng(9).permutation(rw2[model.test_index]) + 1.0
    other = train_rw_model(X, rw2, FAST)
    assert other.booster_bytes == model.booster_bytes
    assert other.history == model.history
    assert other.metrics["test_mae"] > 0.5


def test_same_seed_gives_identical_model(problem, trained):
    _, X, rw = problem
    model, _ = trained
    again = train_rw_model(X, rw, FAST)
    assert again.booster_bytes == model.booster_bytes
    assert again.params == model.params and again.history == model.history
    np.testing.assert_array_equal(again.predict(X), model.predict(X))
    np.testing.assert_array_equal(shap_values(again, X), shap_values(model, X))


def test_fixed_params_skip_the_search(problem, monkeypatch):
    _, X, rw = problem

    def no_search(*args, **kwargs):
        raise AssertionError("the search ran")

    monkeypatch.setattr(model_mod, "search_hyperparameters", no_search)
    fixed = (("learning_rate", 0.1), ("max_depth", 3), ("n_estimators", 150))
    lines: list[str] = []
    model = train_rw_model(X, rw, LearnSettings(params=fixed, seed=3), log=lines.append)
    assert model.history == [] and math.isnan(model.metrics["cv_score"])
    assert model.params["learning_rate"] == 0.1 and model.params["max_depth"] == 3
    assert model.params["n_estimators"] <= 150  # early stopping may keep fewer
    assert any("no hyperparameter search" in line for line in lines)
    off = fixed + (("early_stopping_rounds", 0),)
    model = train_rw_model(X, rw, LearnSettings(params=off, seed=3))
    assert model.params["n_estimators"] == 150 and model.metrics["n_validation"] == 0
    with pytest.raises(ValueError, match="unknown XGBoost parameter"):
        train_rw_model(X, rw, LearnSettings(params=(("learnin_rate", 0.1),)))
    with pytest.raises(ValueError, match="n_estimators"):
        train_rw_model(X, rw, LearnSettings(params=(("n_estimators", 0),)))


def test_noise_warns_that_contributions_are_untrustworthy():
    masks, _ = synthetic(200)
    rw = np.random.default_rng(1).normal(0.5, 0.05, 200)
    lines: list[str] = []
    model = train_rw_model(features(masks), rw, LearnSettings(search_iterations=0),
                           log=lines.append)
    assert model.metrics["test_r2"] < 0.5
    assert any("WARNING" in line and "not to be trusted" in line for line in lines)


def test_search_asks_several_points_per_round():
    calls: list[int] = []

    def evaluate(points, reference):
        calls.append(len(points))
        return [(math.log10(p["learning_rate"]) + 1.5) ** 2 + p["max_depth"] / 10 for p in points]

    a = search_hyperparameters(evaluate, iterations=11, seed=4, points_per_round=4)
    assert calls == [4, 4, 3] and [h["round"] for h in a.history] == [0] * 4 + [1] * 4 + [2] * 3
    assert a.best_score == min(h["cv_rmse"] for h in a.history)
    assert set(a.best) == set(model_mod.SEARCHED)
    assert isinstance(a.best["max_depth"], int)
    b = search_hyperparameters(evaluate, iterations=11, seed=4, points_per_round=4)
    assert a.history == b.history


def test_full_search_searches_the_trees(problem):
    # ML-MotEx's search: n_estimators is a searched dimension, every candidate gets every
    # fold, and early stopping of the final model keeps at most the chosen trees
    _, X, rw = problem
    full = LearnSettings(cv_folds=3, search_iterations=4, seed=3, search="full")
    model = train_rw_model(X, rw, full)
    assert all(h["folds"] == 3 and "n_estimators" in h for h in model.history)
    chosen = min(model.history, key=lambda h: h["cv_rmse"])
    assert model.metrics["cv_score"] == chosen["cv_rmse"]
    assert 1 <= model.params["n_estimators"] <= chosen["n_estimators"]


def test_racing_stops_a_poor_candidate_after_one_fold(problem):
    _, X, rw = problem
    settings = LearnSettings(cv_folds=3, seed=3)
    problem_ = model_mod.search_problem(X, rw, settings)
    good = model_mod.score_candidate([problem_], model_mod.WARM_START, settings)
    assert good["folds"] == 3 and not good.get("stopped")
    # a depth-2 model of 12 interacting-free atoms is fine; one that barely learns is not
    poor = dict(model_mod.WARM_START, max_depth=2, learning_rate=0.04, min_child_weight=10.0,
                subsample=0.5, colsample_bytree=0.5)
    unraced = model_mod.score_candidate([problem_], poor, settings)
    reference = [v / 2 for v in good["fold_rmse"]]  # a reference twice as good
    raced = model_mod.score_candidate([problem_], poor, settings, reference)
    assert raced["stopped"] and raced["folds"] == 1
    assert raced["fold_rmse"] == unraced["fold_rmse"][:1]
    ratio = raced["fold_rmse"][0] / reference[0]
    assert raced["cv_rmse"] == pytest.approx(np.mean(reference) * ratio)
    # within the margin it runs every fold
    assert "stopped" not in model_mod.score_candidate([problem_], model_mod.WARM_START,
                                                      settings, good["fold_rmse"])


def test_series_search_frames_are_spread_over_the_series():
    assert model_mod.search_frames_of(151, 3) == [25, 75, 125]
    assert model_mod.search_frames_of(2, 3) == [0, 1]
    assert model_mod.search_frames_of(10, 1) == [5]
    assert model_mod.search_frames_of(4, 4) == [0, 1, 2, 3]


def test_shared_search_scores_every_frame_and_skips_the_frames_own():
    # two frames of one problem, Rw on different scales: the shared search weighs both
    masks, rw = synthetic(400, seed=2)
    X = features(masks)
    settings = LearnSettings(cv_folds=2, search_iterations=3, seed=1)
    problems = [model_mod.search_problem(X, rw, settings, shared=True),
                model_mod.search_problem(X, 10 * rw, settings, shared=True)]
    assert problems[1].scale == pytest.approx(10 * problems[0].scale)
    result = model_mod.run_search(problems, settings)
    first = result.history[0]
    assert first["folds"] == 4 and len(first["fold_rmse"]) == 4
    # the scaled scores of the two frames nearly agree (the same data up to a factor;
    # not exactly, as XGBoost's L2 penalty does not scale with Rw)
    assert first["fold_rmse"][0] == pytest.approx(first["fold_rmse"][1], rel=0.05)
    assert first["fold_rmse"][0] < 0.5  # scaled: a fraction of the spread of Rw
    assert model_mod.task_order(problems) == [(0, 0), (1, 0), (0, 1), (1, 1)]
    lines: list[str] = []
    model = train_rw_model(X, rw, settings, log=lines.append,
                           chosen={**result.best, "n_estimators": result.trees})
    assert model.history == [] and any("shared by the series" in m for m in lines)
    assert model.metrics["n_validation"] > 0 and model.metrics["test_r2"] > 0.8


# ----------------------------------------------------------------------------- SHAP


def test_shap_values_are_locally_accurate(problem, trained):
    _, X, _ = problem
    model, _ = trained
    phi = shap_values(model, X)
    assert phi.shape == (X.shape[0], X.shape[1] + 1)
    np.testing.assert_allclose(phi.sum(axis=1), model.predict(X), atol=1e-4)
    assert np.ptp(phi[:, -1]) == 0  # the bias column is the expected value
    # the same booster as bytes or Booster, any thread count
    np.testing.assert_array_equal(shap_values(model.booster_bytes, X, n_jobs=1), phi)
    np.testing.assert_array_equal(shap_values(model.booster(), X[:7]), phi[:7])


def test_shap_in_blocks_reports_progress_and_gives_the_same_values(problem, trained,
                                                                   monkeypatch):
    from mlmotex_hpc.learn import explain

    _, X, _ = problem
    model, _ = trained
    whole = shap_values(model, X)
    monkeypatch.setattr(explain, "BLOCK_ROWS", 7)  # many blocks, a short last one
    calls = []
    blocked = shap_values(model, X, progress=lambda done, total: calls.append((done, total)))
    np.testing.assert_array_equal(blocked, whole)  # rows are independent of the blocks
    expected = [min(X.shape[0], k) for k in range(7, X.shape[0] + 7, 7)]
    assert calls == [(done, X.shape[0]) for done in expected]


def test_shap_agrees_with_shap_package(problem, trained):
    shap = pytest.importorskip("shap")
    _, X, _ = problem
    model, _ = trained
    explainer = shap.TreeExplainer(model.booster())
    ref = explainer.shap_values(X[:200])
    phi = shap_values(model, X[:200])
    np.testing.assert_allclose(phi[:, :-1], ref, atol=1e-6)
    np.testing.assert_allclose(phi[:, -1], explainer.expected_value, atol=1e-6)
