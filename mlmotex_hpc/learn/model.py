"""Step 3: an XGBoost model of Rw as a function of which permutable atoms a motif keeps.

Arrays in, results out: no MPI, no files, no config parsing here. The pieces are pure
functions so that a parallel driver can spread them over ranks:

* :func:`split_indices` and :func:`validation_split` make the seeded train / test /
  validation partitions (identical on every rank for the same seed);
* :func:`cv_folds` and :func:`fold_rmse` score one hyperparameter point on one fold, so
  candidates × folds can be shared out;
* :func:`search_hyperparameters` runs scikit-optimize's ask/tell loop; its ``evaluate``
  callback scores a whole round of candidates at once and ``points_per_round`` asks for
  several per round;
* :func:`fit_final` and :func:`test_metrics` train the final booster and report on the
  untouched test set.

:func:`train_rw_model` chains them on one process.

Honest statistics: the test set is used for nothing but the final metrics. The search is
scored by k-fold cross-validation on the training part; early stopping of the final model
watches a validation split carved from the training part.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import xgboost as xgb

T = TypeVar("T")

#: Fewer motifs (with a finite Rw) than this cannot be split, searched and tested.
MIN_MOTIFS = 10
#: Fraction of the training part held out to watch early stopping of the final model.
VALIDATION_FRACTION = 0.1
#: Below this many training motifs no validation split is carved: the final model is
#: trained on the whole training part with all ``n_estimators`` trees.
MIN_TRAIN_FOR_EARLY_STOPPING = 50
#: Boosting rounds without improvement on the validation split before training stops.
EARLY_STOPPING_ROUNDS = 20
#: Random points the Bayesian search evaluates before the Gaussian process takes over.
INITIAL_POINTS = 10
#: The test metrics stored per frame (:attr:`TrainedModel.metrics` holds more).
METRICS = ("test_mae", "test_rmse", "test_r2", "baseline_mae", "cv_score", "n_train", "n_test")
#: Test R² below which the atom contributions are flagged as untrustworthy.
R2_WARNING = 0.5

#: Parameters every booster gets unless the user fixes them (``nthread`` is always
#: ``LearnSettings.n_jobs`` and ``seed`` defaults to ``LearnSettings.seed``).
BASE_PARAMS: dict[str, Any] = {
    "objective": "reg:squarederror",
    "tree_method": "hist",
    "eval_metric": "rmse",
}
#: XGBoost's own defaults (``n_estimators`` as XGBRegressor's), used when the search is
#: off (``search_iterations=0``) and for any parameter that fixed ``params`` leave out.
DEFAULT_PARAMS: dict[str, Any] = {
    "learning_rate": 0.3,
    "max_depth": 6,
    "n_estimators": 100,
    "subsample": 1.0,
    "colsample_bytree": 1.0,
    "min_child_weight": 1.0,
}

# The full search's space: (name, low, high, kind, prior). ≤ 400 trees keep one CV
# evaluation cheap; depth ≤ 6 (XGBoost's default) because TreeSHAP costs trees × leaves ×
# depth²: depth 8 makes step 4 about 5× slower than depth 6 for no gain on mask features.
_SPACE: tuple[tuple[str, float, float, str, str], ...] = (
    ("learning_rate", 0.01, 0.3, "real", "log-uniform"),
    ("max_depth", 2, 6, "int", "uniform"),
    ("n_estimators", 50, 400, "int", "uniform"),
    ("subsample", 0.5, 1.0, "real", "uniform"),
    ("colsample_bytree", 0.5, 1.0, "real", "uniform"),
    ("min_child_weight", 1.0, 10.0, "real", "log-uniform"),
)
#: Names of the full search's hyperparameters (XGBoost's names).
SEARCHED = tuple(name for name, *_ in _SPACE)

# The fast search's space: the number of trees is not searched but found by early
# stopping inside every CV fold, so a slow learning rate costs trees, not accuracy; below
# 0.04 the trees (and TreeSHAP's cost) grow for no gain on mask features. Above 0.15 a
# model reaches its best CV score in a few dozen trees that never split on the weakly
# contributing atoms: on Bi (96 atoms) a 48-tree model at 0.29 scored best within CV
# noise and left 19 atoms with ACV exactly 0 that ML-MotEx's search labels in the motif.
_FAST_SPACE: tuple[tuple[str, float, float, str, str], ...] = tuple(
    (name, *((0.04, 0.15) if name == "learning_rate" else (low, high)), kind, prior)
    for name, low, high, kind, prior in _SPACE if name != "n_estimators")
#: Names of the fast search's hyperparameters.
FAST_SEARCHED = tuple(name for name, *_ in _FAST_SPACE)
#: The fast search's first candidate: a point that works for mask features on every
#: shipped case (the optimiser starts from a good model instead of from noise).
WARM_START: dict[str, Any] = {
    "learning_rate": 0.1, "max_depth": 4, "subsample": 0.8, "colsample_bytree": 0.8,
    "min_child_weight": 1.0,
}
#: Most trees any early-stopped training may grow (the fast search and its final model).
MAX_TREES = 2000
#: The fast search's stopping rule, (rounds, tolerance): boosting stops once ``rounds``
#: trees in a row have not lowered the validation RMSE by the fraction ``tolerance``
#: below the last tree that did, and keeps the trees up to that one. On mask features Rw
#: keeps improving by a sliver per tree for thousands of trees; XGBoost's own rule
#: (any improvement) then grows the cap every time, for gains far below the CV noise.
#: The folds of the search stop sooner (ranking candidates needs less than the answer).
SEARCH_STOP = (20, 0.01)
#: The fast search scores its candidates on at most this many training motifs (a seeded
#: random sample): the cost of a search then stops growing with the catalogue.
SEARCH_ROWS = 4000
#: The rule for the final model after a fast search (about 1.5 % above the RMSE of
#: 2,000 trees on Keggin, at 40 % of the trees).
FINAL_STOP = (50, 0.005)
#: A fast-search candidate whose mean score over the folds done so far exceeds the best
#: complete score by this fraction gets no more folds (racing: poor candidates stop early).
RACE_MARGIN = 0.05
#: Candidates asked per search round, whatever the number of workers (they share a round
#: out): the search, and so the model, is the same on any number of ranks.
SEARCH_BATCH = 4
#: How a search prices a candidate: ``fast`` (early-stopped trees, racing, warm start) or
#: ``full`` (ML-MotEx's: the number of trees searched, every fold for every candidate).
SEARCH_METHODS = ("fast", "full")


@dataclass(frozen=True)
class LearnSettings:
    """Settings of step 3.

    Attributes
    ----------
    test_fraction : float
        Fraction of the motifs held out as the test set (0 < f < 1; at least 2 motifs).
    cv_folds : int
        Folds of the cross-validation that scores the search (≥ 2; reduced, with a log
        line, when the training part is too small for them).
    search_iterations : int
        Bayesian-optimisation evaluations (0: no search, XGBoost's defaults).
    search : str
        ``fast`` (default): the trees of every CV fold from early stopping, poor
        candidates stop after a fold (:data:`RACE_MARGIN`), the first candidate is
        :data:`WARM_START`, and the final model early-stops with at most
        :data:`MAX_TREES`. ``full``: ML-MotEx's search, the number of trees one of the
        searched dimensions and every candidate trained on every fold.
    seed : int
        Seeds the split, the folds, the search and XGBoost's row/column sampling.
    params : tuple of (str, object)
        Fixed XGBoost parameters under XGBoost's own names (``learning_rate``,
        ``max_depth``, ``n_estimators``, ``early_stopping_rounds``, ...). When given the
        search is skipped; parameters left out take :data:`DEFAULT_PARAMS`.
        ``n_estimators`` is the cap of the early-stopped final training;
        ``early_stopping_rounds: 0`` turns early stopping off.
    n_jobs : int
        Threads XGBoost may use (the cores this process owns).
    series_search : str
        A series of frames: ``shared``, one search on :func:`search_frames_of` frames
        whose hyperparameters every frame's model uses, or ``per_frame``.
    search_frames : int
        Frames the shared search scores each candidate on.
    shap : str
        Step 4: ``auto`` explains motifs in a seeded random order and stops once every
        atom's ACV standard error is below ``shap_target``; ``all`` explains every motif.
    shap_target : float
        That largest standard error, as a fraction of the largest |ACV| of the frame.
    """

    test_fraction: float = 0.2
    cv_folds: int = 3
    search_iterations: int = 12
    search: str = "fast"
    seed: int = 0
    params: tuple[tuple[str, object], ...] = ()
    n_jobs: int = 1
    series_search: str = "shared"
    search_frames: int = 3
    shap: str = "auto"
    shap_target: float = 0.01

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction = {self.test_fraction!r}: must lie in (0, 1)")
        if self.cv_folds < 2:
            raise ValueError(f"cv_folds = {self.cv_folds!r}: must be at least 2")
        if self.search not in SEARCH_METHODS:
            raise ValueError(f"search = {self.search!r}: expected one of {SEARCH_METHODS}")
        if self.series_search not in ("shared", "per_frame"):
            raise ValueError(f"series_search = {self.series_search!r}: expected shared or "
                             "per_frame")
        if self.search_frames < 1:
            raise ValueError(f"search_frames = {self.search_frames!r}: must be at least 1")
        if self.shap not in ("auto", "all"):
            raise ValueError(f"shap = {self.shap!r}: expected auto or all")
        if not 0.0 < self.shap_target <= 1.0:
            raise ValueError(f"shap_target = {self.shap_target!r}: must lie in (0, 1]")
        if self.search_iterations < 0:
            raise ValueError(
                f"search_iterations = {self.search_iterations!r}: must be 0 or more")
        if self.seed < 0:
            raise ValueError(f"seed = {self.seed!r}: must be 0 or more")
        if self.n_jobs < 1:
            raise ValueError(f"n_jobs = {self.n_jobs!r}: must be at least 1")
        for item in self.params:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
                raise ValueError(f"params: {item!r} is not a (name, value) pair")

    @property
    def searching(self) -> bool:
        """Whether hyperparameters are searched (no fixed ``params``, iterations > 0)."""
        return not self.params and self.search_iterations > 0

    @property
    def fixed_params(self) -> dict[str, Any]:
        """``params`` as a dict."""
        return dict(self.params)


def features(masks: np.ndarray) -> np.ndarray:
    """Learning features of motifs.

    Parameters
    ----------
    masks : ndarray of bool, shape (M, N)
        ``masks[m, i]``: motif m keeps permutable atom i.

    Returns
    -------
    ndarray of float32, shape (M, N + 1)
        The N mask bits, then the motif size (number of kept permutable atoms).
    """
    masks = np.asarray(masks)
    if masks.ndim != 2:
        raise ValueError(f"masks must be 2-D (motifs × atoms), got shape {masks.shape}")
    masks = masks.astype(bool, copy=False)
    X = np.empty((masks.shape[0], masks.shape[1] + 1), dtype=np.float32)
    X[:, :-1] = masks
    X[:, -1] = masks.sum(axis=1)
    return X


@dataclass
class TrainedModel:
    """The trained model of Rw and how it was obtained.

    Attributes
    ----------
    booster_bytes : bytes
        ``Booster.save_raw("ubj")``: the model, ready to broadcast to other ranks.
    params : dict
        Parameters the final booster was trained with (XGBoost names, JSON-friendly), with
        ``n_estimators`` the number of trees kept (best iteration after early stopping)
        and ``early_stopping_rounds`` the patience used (0: none). ``nthread`` is left out:
        it belongs to the machine, not the model.
    metrics : dict
        ``test_mae``, ``test_rmse``, ``test_r2`` (on the test set only),
        ``baseline_mae`` and ``baseline_rmse`` (predicting the training mean on the test
        set), ``cv_score`` (best mean CV RMSE of the search; NaN without a search),
        ``cv_folds`` (folds used), ``n_train`` (the training part, validation included),
        ``n_validation`` (carved from it for early stopping), ``n_test``.
    history : list of dict
        Every evaluated point of the search: its hyperparameters, ``cv_rmse`` and
        ``round`` (0-based ask/tell round), in evaluation order.
    train_index, test_index : ndarray of int
        Sorted indices into the M motifs given to :func:`train_rw_model`.
    n_jobs : int
        Threads used by :meth:`booster` and :meth:`predict`.
    """

    booster_bytes: bytes
    params: dict
    metrics: dict
    history: list[dict]
    train_index: np.ndarray
    test_index: np.ndarray
    n_jobs: int = 1
    _booster: xgb.Booster | None = field(default=None, init=False, repr=False, compare=False)

    def booster(self) -> xgb.Booster:
        """The XGBoost booster (loaded once from :attr:`booster_bytes`, then cached)."""
        if self._booster is None:
            self._booster = load_booster(self.booster_bytes, self.n_jobs)
        return self._booster

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted Rw for feature rows ``X`` (shape (M, N + 1)), float32."""
        return self.booster().inplace_predict(np.asarray(X, dtype=np.float32))


def load_booster(raw: bytes | bytearray, n_jobs: int = 1) -> xgb.Booster:
    """A booster from ``save_raw`` bytes, set to use ``n_jobs`` threads."""
    booster = xgb.Booster(model_file=bytearray(raw))
    booster.set_param("nthread", n_jobs)
    return booster


# --------------------------------------------------------------------------- partitions


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled, seeded train/test split of ``n`` motifs.

    The test part holds ``max(2, ceil(test_fraction * n))`` motifs (two at least, so that
    R² is defined). Both index arrays are sorted.

    Raises
    ------
    ValueError
        When ``n < MIN_MOTIFS`` or fewer than 4 motifs would be left to train on.
    """
    if n < MIN_MOTIFS:
        raise ValueError(
            f"only {n} motifs with a finite Rw: at least {MIN_MOTIFS} are needed to learn from")
    n_test = max(2, math.ceil(test_fraction * n))
    if n - n_test < 4:
        raise ValueError(
            f"test_fraction = {test_fraction} leaves {n - n_test} of {n} motifs to train on: "
            "at least 4 are needed")
    perm = np.random.default_rng([seed, 1]).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def validation_split(n_train: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into the training part) to fit on and to watch early stopping on.

    :data:`VALIDATION_FRACTION` of the training part, or nothing (all positions fit)
    when it holds fewer than :data:`MIN_TRAIN_FOR_EARLY_STOPPING` motifs: a handful of
    validation motifs would stop training on noise.
    """
    if n_train < MIN_TRAIN_FOR_EARLY_STOPPING:
        return np.arange(n_train), np.arange(0)
    n_val = math.ceil(VALIDATION_FRACTION * n_train)
    perm = np.random.default_rng([seed, 2]).permutation(n_train)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def n_folds_for(n_train: int, cv_folds: int) -> int:
    """Folds actually used: ``cv_folds``, reduced so that every fold validates on ≥ 2 motifs."""
    return max(2, min(cv_folds, n_train // 2))


def cv_folds(n_train: int, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shuffled, seeded k-fold partition of the training part.

    Returns
    -------
    list of (fit positions, validation positions)
        Positions index the training part; the validation parts are disjoint and cover it.
    """
    if not 2 <= k <= n_train:
        raise ValueError(f"cannot make {k} folds of {n_train} training motifs")
    perm = np.random.default_rng([seed, 3]).permutation(n_train)
    parts = np.array_split(perm, k)
    return [
        (np.sort(np.concatenate(parts[:j] + parts[j + 1:])), np.sort(parts[j]))
        for j in range(k)
    ]


# --------------------------------------------------------------------------- parameters


def xgb_params(point: dict[str, Any], settings: LearnSettings) -> dict[str, Any]:
    """Full parameter dict for one hyperparameter point.

    :data:`BASE_PARAMS`, then :data:`DEFAULT_PARAMS`, then the user's fixed ``params``,
    then ``point``; ``seed`` defaults to ``settings.seed``; ``nthread`` is always
    ``settings.n_jobs``. Still holds ``n_estimators`` (and possibly
    ``early_stopping_rounds``), which :func:`_train` pops.
    """
    params = {**BASE_PARAMS, **DEFAULT_PARAMS, "seed": settings.seed}
    params.update(settings.fixed_params)
    params.update(point)
    if "random_state" in params:  # scikit-learn's name for the seed
        params["seed"] = params.pop("random_state")
    params.pop("n_jobs", None)
    params["nthread"] = settings.n_jobs
    return params


def check_params(params: dict[str, Any]) -> None:
    """Raise ``ValueError`` for parameters XGBoost rejects or does not know.

    Trains one round on a two-row matrix and turns XGBoost's errors and its
    "Parameters ... are not used" warning into a clear message.
    """
    rounds = params.get("n_estimators")
    if not isinstance(rounds, int | np.integer) or isinstance(rounds, bool) or rounds < 1:
        raise ValueError(f"XGBoost parameter n_estimators = {rounds!r}: must be an integer ≥ 1")
    patience = params.get("early_stopping_rounds", EARLY_STOPPING_ROUNDS)
    if not isinstance(patience, int | np.integer) or isinstance(patience, bool) or patience < 0:
        raise ValueError(
            f"XGBoost parameter early_stopping_rounds = {patience!r}: must be an integer ≥ 0")
    booster_params = {k: v for k, v in params.items()
                      if k not in ("n_estimators", "early_stopping_rounds")}
    X = np.array([[0.0, 1.0], [1.0, 2.0]], dtype=np.float32)
    dtrain = xgb.DMatrix(X, label=np.array([0.0, 1.0]), nthread=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            xgb.train({**booster_params, "nthread": 1}, dtrain, 1)
        except xgb.core.XGBoostError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ValueError(f"XGBoost rejects a parameter: {first}") from None
    for w in caught:
        text = str(w.message)
        if "not used" in text:
            unused = text[text.find("{"): text.find("}") + 1]
            raise ValueError(f"unknown XGBoost parameter(s) {unused}")


class RelativeStopping(xgb.callback.TrainingCallback):
    """Early stopping on a relative improvement (see :data:`SEARCH_STOP`).

    ``best`` is the 0-based iteration of the last tree that lowered the validation RMSE
    by more than ``tolerance`` (a fraction) below the previous such tree.
    """

    def __init__(self, rounds: int, tolerance: float, data_name: str = "validation"):
        super().__init__()
        self.rounds, self.tolerance, self.data_name = rounds, tolerance, data_name
        self.anchor = math.inf
        self.best = 0

    def after_iteration(self, model, epoch: int, evals_log) -> bool:
        score = float(evals_log[self.data_name]["rmse"][-1])
        if score < self.anchor * (1.0 - self.tolerance):
            self.anchor, self.best = score, epoch
        return epoch - self.best >= self.rounds


def _train(
    params: dict[str, Any],
    dtrain: xgb.DMatrix,
    dval: xgb.DMatrix | None = None,
    stop: tuple[int, float] | None = None,
) -> xgb.Booster:
    """Train a booster; with ``dval``, early-stop on it and keep the best iteration only
    (XGBoost's rule with ``early_stopping_rounds``, or :class:`RelativeStopping` with
    ``stop`` = (rounds, tolerance))."""
    params = dict(params)
    rounds = int(params.pop("n_estimators"))
    patience = int(params.pop("early_stopping_rounds", EARLY_STOPPING_ROUNDS))
    if dval is not None and stop is not None:
        rule = RelativeStopping(*stop)
        booster = xgb.train(params, dtrain, rounds, evals=[(dval, "validation")],
                            callbacks=[rule], verbose_eval=False)
        return booster[: rule.best + 1]
    if dval is None or patience == 0:
        return xgb.train(params, dtrain, rounds, verbose_eval=False)
    booster = xgb.train(params, dtrain, rounds, evals=[(dval, "validation")],
                        early_stopping_rounds=patience, verbose_eval=False)
    # XGBoost keeps the trees grown after the best one; predict must not use them.
    return booster[: booster.best_iteration + 1]


# --------------------------------------------------------------------------- the search


def fold_rmse(
    X: np.ndarray,
    y: np.ndarray,
    fold: tuple[np.ndarray, np.ndarray],
    params: dict[str, Any],
) -> float:
    """RMSE on one fold's validation positions of a booster trained on its fit positions.

    ``X`` and ``y`` are the training part only; ``params`` a full dict from
    :func:`xgb_params` (``n_estimators`` trees, no early stopping).
    """
    fit, val = fold
    dfit = xgb.QuantileDMatrix(X[fit], label=y[fit], nthread=params["nthread"])
    booster = _train({**params, "early_stopping_rounds": 0}, dfit)
    pred = booster.inplace_predict(X[val])
    return float(np.sqrt(np.mean((pred.astype(np.float64) - y[val]) ** 2)))


def fold_rmse_early_stopped(
    X: np.ndarray,
    y: np.ndarray,
    fold: tuple[np.ndarray, np.ndarray],
    params: dict[str, Any],
) -> tuple[float, int]:
    """RMSE on one fold's validation positions and the trees it took, growing trees
    (at most :data:`MAX_TREES`) until :data:`SEARCH_STOP` ends them.

    The fold's validation part both stops the training and scores it, as ``xgb.cv``
    does: a slight optimism shared by every candidate, so the ranking is fair.
    """
    fit, val = fold
    nthread = params["nthread"]
    dfit = xgb.QuantileDMatrix(X[fit], label=y[fit], nthread=nthread)
    dval = xgb.DMatrix(X[val], label=y[val], nthread=nthread)
    booster_params = {k: v for k, v in params.items()
                      if k not in ("n_estimators", "early_stopping_rounds")}
    booster = _train({**booster_params, "n_estimators": MAX_TREES}, dfit, dval, SEARCH_STOP)
    trees = booster.num_boosted_rounds()
    pred = booster.inplace_predict(X[val])
    return float(np.sqrt(np.mean((pred.astype(np.float64) - y[val]) ** 2))), trees


def cv_rmse(
    X: np.ndarray,
    y: np.ndarray,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    params: dict[str, Any],
) -> float:
    """Mean over ``folds`` of :func:`fold_rmse`: the score the full search minimises."""
    return float(np.mean([fold_rmse(X, y, fold, params) for fold in folds]))


@dataclass
class SearchProblem:
    """One frame's training part as the search sees it.

    Attributes
    ----------
    X, y : ndarray
        The training part's features and Rw.
    folds : list of (fit positions, validation positions)
        Its :func:`cv_folds`.
    scale : float
        Its fold scores are divided by this: 1 for a search on one frame; the spread of
        Rw when several frames share a search, so that each frame weighs the same.
    """

    X: np.ndarray
    y: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]
    scale: float = 1.0


def task_order(problems: Sequence[SearchProblem]) -> list[tuple[int, int]]:
    """(problem, fold) in the order a candidate is trained on them: fold 0 of every
    problem, then fold 1, ...; ``fold_rmse`` lists its scores in this order."""
    depth = max(len(p.folds) for p in problems)
    return [(i, j) for j in range(depth) for i, p in enumerate(problems) if j < len(p.folds)]


def score_candidate(
    problems: Sequence[SearchProblem],
    point: dict[str, Any],
    settings: LearnSettings,
    reference: Sequence[float] | None = None,
) -> dict[str, Any]:
    """The CV score of one hyperparameter point over every fold of every problem.

    ``full`` search: the mean fold RMSE with the point's ``n_estimators`` trees, every
    fold. ``fast`` search: trees by early stopping in each fold; folds are taken in turn
    (fold 0 of every problem, then fold 1, ...) and, with ``reference`` (the fold scores
    of the best complete candidate so far), the candidate stops as soon as its mean over
    the folds done exceeds the reference's mean over the same folds by
    :data:`RACE_MARGIN`. A stopped candidate's ``cv_rmse`` is the reference's complete
    score times that ratio: an estimate, and always worse than the best.

    Returns
    -------
    dict
        ``cv_rmse`` (the score), ``folds`` (folds trained), ``fold_rmse`` (their scores,
        in order) and, for the fast search, ``trees`` (mean trees per fold).
    """
    params = xgb_params(point, settings)
    tasks = [(problems[i], problems[i].folds[j]) for i, j in task_order(problems)]
    if settings.search == "full":
        scores = [fold_rmse(p.X, p.y, fold, params) / p.scale for p, fold in tasks]
        return {"cv_rmse": float(np.mean(scores)), "folds": len(scores), "fold_rmse": scores}
    scores, trees = [], []
    for p, fold in tasks:
        rmse, n_trees = fold_rmse_early_stopped(p.X, p.y, fold, params)
        scores.append(rmse / p.scale)
        trees.append(n_trees)
        done = len(scores)
        if reference is not None and done < len(tasks):
            ratio = float(np.mean(scores)) / float(np.mean(reference[:done]))
            if ratio > 1.0 + RACE_MARGIN:
                return {"cv_rmse": float(np.mean(reference)) * ratio, "folds": done,
                        "fold_rmse": scores, "trees": float(np.mean(trees)),
                        "stopped": True}
    return {"cv_rmse": float(np.mean(scores)), "folds": len(scores), "fold_rmse": scores,
            "trees": float(np.mean(trees))}


def search_space(method: str = "full") -> list:
    """The scikit-optimize dimensions of a search (see ``_SPACE`` and ``_FAST_SPACE``)."""
    from skopt.space import Integer, Real  # heavy import, only when searching

    dims = []
    for name, low, high, kind, prior in (_FAST_SPACE if method == "fast" else _SPACE):
        cls = Integer if kind == "int" else Real
        dims.append(cls(low, high, prior=prior, name=name))
    return dims


def make_optimizer(iterations: int, seed: int, method: str = "full"):
    """A seeded ``skopt.Optimizer`` configured as ``gp_minimize``.

    Gaussian-process surrogate with a noise term (CV scores are noisy), ``gp_hedge``
    acquisition, :data:`INITIAL_POINTS` random points first (fewer for a short search:
    at most half of it). Unlike ``gp_minimize`` the acquisition is maximised by sampling
    10,000 points rather than L-BFGS: on 50 evaluations that cuts the optimiser's own
    time from ~21 s to ~13 s, which matters once the CV trainings are spread over ranks
    and the optimiser is the serial part.
    """
    from skopt import Optimizer

    initial = min(INITIAL_POINTS, iterations)
    if method == "fast":
        # A short search: half of it random; the surrogate's kernel fitted once per step
        # (no restarts) and the acquisition sampled on 2,000 points, which cuts the
        # optimiser's own time, the serial part of a search spread over ranks, by 3×.
        from skopt.utils import cook_estimator

        space = search_space(method)
        return Optimizer(
            space,
            base_estimator=cook_estimator("GP", space=space, random_state=seed,
                                          noise="gaussian", n_restarts_optimizer=0),
            n_initial_points=max(1, min(initial, iterations // 2)),
            acq_func="gp_hedge",
            acq_optimizer="sampling",
            acq_optimizer_kwargs={"n_points": 2000},
            random_state=seed,
        )
    return Optimizer(
        search_space(method),
        base_estimator="GP",
        n_initial_points=max(1, initial),
        acq_func="gp_hedge",
        acq_optimizer="sampling",
        random_state=seed,
    )


def _point(names: Sequence[str], x: Sequence[Any]) -> dict[str, Any]:
    """An asked point as plain Python numbers (JSON-friendly, exact ints)."""
    kinds = {name: kind for name, _, _, kind, _ in _SPACE}
    return {n: (int(v) if kinds[n] == "int" else float(v)) for n, v in zip(names, x, strict=True)}


@dataclass
class SearchResult:
    """Outcome of :func:`search_hyperparameters`.

    Attributes
    ----------
    best : dict
        The hyperparameters with the lowest CV score.
    best_score : float
        Their CV score.
    history : list of dict
        Every evaluated point with ``cv_rmse``, ``round`` and what ``evaluate`` told of
        it (``folds``, ``trees``).
    """

    best: dict[str, Any]
    best_score: float
    history: list[dict]

    @property
    def trees(self) -> int:
        """Trees per fold of the chosen point (fast search; its ``n_estimators`` else)."""
        entry = next(h for h in self.history
                     if all(h[n] == v for n, v in self.best.items()))
        return max(1, round(entry.get("trees", entry.get("n_estimators", 100))))


def search_hyperparameters(
    evaluate: Callable[[list[dict[str, Any]], Sequence[float] | None], Sequence[Any]],
    iterations: int,
    seed: int,
    points_per_round: int = 1,
    log: Callable[[str], None] = lambda s: None,
    method: str = "full",
    log_every: float = 10.0,
) -> SearchResult:
    """Bayesian optimisation of the hyperparameters with scikit-optimize's ask/tell.

    Parameters
    ----------
    evaluate : callable
        ``evaluate(points, reference)`` takes a round's candidate points (dicts of
        :data:`SEARCHED` or :data:`FAST_SEARCHED` names) and returns one result per
        point: its CV score (lower is better), or a dict with ``cv_rmse`` and more (see
        :func:`score_candidate`). ``reference`` is the ``fold_rmse`` of the best complete
        candidate so far (None in the first round), for racing. A parallel driver may
        score the candidates on different ranks.
    iterations : int
        Total evaluations (≥ 1).
    seed : int
        Seeds the optimiser.
    points_per_round : int
        Candidates asked per round (``Optimizer.ask(n_points=...)``, constant-liar
        strategy for more than one); the result depends on it.
    log : callable
        Progress lines (with the rate and ETA, at most every ``log_every`` seconds).
    method : str
        ``full`` or ``fast`` (:data:`SEARCH_METHODS`): the space searched, and the fast
        search's first candidate is :data:`WARM_START`.
    """
    if iterations < 1:
        raise ValueError("the search needs at least one iteration")
    if method not in SEARCH_METHODS:
        raise ValueError(f"search method {method!r}: expected one of {SEARCH_METHODS}")
    opt = make_optimizer(iterations, seed, method)
    names = list(FAST_SEARCHED if method == "fast" else SEARCHED)
    history: list[dict] = []
    reference: list[float] | None = None
    best_complete = math.inf
    rnd = 0
    t0 = last = time.perf_counter()
    while len(history) < iterations:
        k = min(points_per_round, iterations - len(history))
        xs = opt.ask() if k == 1 else opt.ask(n_points=k, strategy="cl_min")
        xs = [xs] if k == 1 else [list(x) for x in xs]
        if rnd == 0 and method == "fast":
            xs[0] = [WARM_START[n] for n in names]
        points = [_point(names, x) for x in xs]
        results = [r if isinstance(r, dict) else {"cv_rmse": float(r)}
                   for r in evaluate(points, reference)]
        if len(results) != len(points):
            raise RuntimeError(f"evaluate returned {len(results)} scores for {len(points)} "
                               "points")
        opt.tell([list(x) for x in xs], [float(r["cv_rmse"]) for r in results])
        for p, r in zip(points, results, strict=True):
            entry = {**p, **{key: v for key, v in r.items() if key != "cv_rmse"},
                     "cv_rmse": float(r["cv_rmse"]), "round": rnd}
            history.append(entry)
            if "fold_rmse" in r and not r.get("stopped") and entry["cv_rmse"] < best_complete:
                best_complete, reference = entry["cv_rmse"], list(r["fold_rmse"])
        rnd += 1
        now = time.perf_counter()
        if now - last >= log_every or len(history) == iterations:
            last = now
            best = min(h["cv_rmse"] for h in history)
            rate = (now - t0) / len(history)
            raced = sum(1 for h in history if h.get("stopped"))
            note = f", {raced} stopped early" if method == "fast" and raced else ""
            log(f"search: {len(history)}/{iterations} evaluated{note}, best CV RMSE "
                f"{best:.5f}, {rate:.2f} s per evaluation, ETA "
                f"{rate * (iterations - len(history)):.0f} s")
    # First minimum wins ties, so the choice does not depend on float noise in sorting.
    # (Not the cheapest model within CV noise of it: on Bi, whose 96 atoms include many
    # weak ones, a 48-tree model scored within 2 % and ignored 19 atoms altogether.)
    i_best = int(np.argmin([h["cv_rmse"] for h in history]))
    best = {n: history[i_best][n] for n in names}
    return SearchResult(best, history[i_best]["cv_rmse"], history)


# --------------------------------------------------------------------------- final model


def fit_final(
    X_train: np.ndarray,
    y_train: np.ndarray,
    params: dict[str, Any],
    seed: int,
    stop: tuple[int, float] | None = None,
) -> tuple[xgb.Booster, int]:
    """Train the final booster on the training part.

    Early stopping watches the :func:`validation_split` of the training part, with
    ``params["n_estimators"]`` as the cap; the booster keeps its best iteration only
    (``stop``: :class:`RelativeStopping`'s rule instead of XGBoost's).
    With ``early_stopping_rounds = 0`` no split is carved and all trees are grown on the
    whole training part.

    Returns
    -------
    booster : xgboost.Booster
    n_validation : int
        Motifs held out of the training part for early stopping (0 when none).
    """
    if int(params.get("early_stopping_rounds", EARLY_STOPPING_ROUNDS)) == 0:
        fit, val = np.arange(len(y_train)), np.arange(0)
    else:
        fit, val = validation_split(len(y_train), seed)
    nthread = params["nthread"]
    dfit = xgb.QuantileDMatrix(X_train[fit], label=y_train[fit], nthread=nthread)
    dval = None
    if len(val):
        dval = xgb.DMatrix(X_train[val], label=y_train[val], nthread=nthread)
    return _train(params, dfit, dval, stop), len(val)


def test_metrics(pred: np.ndarray, y_test: np.ndarray, train_mean: float) -> dict[str, float]:
    """MAE, RMSE and R² of ``pred`` on the test set, and the mean-predictor baseline.

    R² is NaN when the test targets are all equal (it is undefined then).
    """
    pred = np.asarray(pred, dtype=np.float64)
    y_test = np.asarray(y_test, dtype=np.float64)
    err = pred - y_test
    ss_tot = float(np.sum((y_test - y_test.mean()) ** 2))
    r2 = 1.0 - float(np.sum(err**2)) / ss_tot if ss_tot > 0 else math.nan
    return {
        "test_mae": float(np.mean(np.abs(err))),
        "test_rmse": float(np.sqrt(np.mean(err**2))),
        "test_r2": r2,
        "baseline_mae": float(np.mean(np.abs(y_test - train_mean))),
        "baseline_rmse": float(np.sqrt(np.mean((y_test - train_mean) ** 2))),
    }


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in params.items():
        if isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


class Workers:
    """How :func:`train_rw_model` spreads its work: here, on this process alone.

    A parallel driver hands in an object with the same three methods and ``size``
    (:class:`mlmotex_hpc.parallel.learning.GroupWorkers` spreads them over a group of
    ranks); the model code itself never communicates.

    Attributes
    ----------
    size : int
        Workers taking part; a search round's :data:`SEARCH_BATCH` candidates are shared
        out among them.
    """

    size = 1

    def evaluate(self, score: Callable[[dict[str, Any]], float],
                 points: list[dict[str, Any]]) -> list[float]:
        """``score`` of each of a round's points, the same list on every worker."""
        return [score(p) for p in points]

    def agree(self, value: T) -> T:
        """The first worker's ``value``, on every worker."""
        return value

    def train_once(self, train: Callable[[int], tuple[bytes, int]],
                   n_jobs: int) -> tuple[bytes, int]:
        """``train(threads)`` run once, its result on every worker."""
        return train(n_jobs)


def search_frames_of(n_frames: int, count: int) -> list[int]:
    """The frames a shared search looks at: ``count`` of ``n_frames``, evenly spread at
    the middles of equal stretches of the series (3 of 151: 25, 75, 125), so that early,
    middle and late states all weigh in and neither end's transient dominates."""
    count = min(count, n_frames)
    return sorted({min(n_frames - 1, int((i + 0.5) * n_frames / count)) for i in range(count)})


def prepare_inputs(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``X`` as float32 and ``y`` as float64, contiguous, checked to match and be finite."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.float64)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"X of shape {X.shape} and y of shape {y.shape} do not match")
    if not np.all(np.isfinite(y)):
        raise ValueError("y (Rw) holds non-finite values: drop failed fits first")
    return X, y


def search_problem(X: np.ndarray, y: np.ndarray, settings: LearnSettings,
                   shared: bool = False,
                   log: Callable[[str], None] = lambda s: None) -> SearchProblem:
    """The training part of one frame's motifs (``X``, ``y``: all its finite fits) as a
    :class:`SearchProblem`: the seeded split, its folds and, for a search ``shared`` by
    several frames, the spread of its Rw as the scale."""
    X, y = prepare_inputs(X, y)
    train_idx, _ = split_indices(len(y), settings.test_fraction, settings.seed)
    n_train = len(train_idx)
    k = n_folds_for(n_train, settings.cv_folds)
    if k < settings.cv_folds:
        log(f"only {n_train} training motifs: {k}-fold instead of "
            f"{settings.cv_folds}-fold cross-validation")
    if settings.search == "fast" and n_train > SEARCH_ROWS:
        # multi-fidelity: the search ranks candidates on a seeded sample of the training
        # part; the final model learns from all of it, its trees early-stopped there
        keep = np.random.default_rng([settings.seed, 5]).permutation(n_train)[:SEARCH_ROWS]
        train_idx = train_idx[np.sort(keep)]
        n_train = SEARCH_ROWS
        log(f"the search looks at {SEARCH_ROWS} of the training motifs, the final model "
            "at all of them")
    y_train = y[train_idx]
    scale = float(np.std(y_train)) if shared else 1.0
    return SearchProblem(X[train_idx], y_train, cv_folds(n_train, k, settings.seed),
                         scale if scale > 0 else 1.0)


def run_search(problems: Sequence[SearchProblem], settings: LearnSettings,
               workers: Workers | None = None,
               log: Callable[[str], None] = lambda s: None) -> SearchResult:
    """The Bayesian search of ``settings`` over one frame's problem, or over several
    frames at once (their mean scaled score); every worker ends with the same result."""
    workers = workers or Workers()
    folds = len(problems[0].folds)
    rows = sum(len(p.y) for p in problems)
    what = f"{len(problems)} frames' {rows}" if len(problems) > 1 else f"{rows}"
    log(f"search ({settings.search}): {settings.search_iterations} evaluations × "
        f"{folds}-fold CV on {what} training motifs")

    def evaluate(points, reference):
        return workers.evaluate(
            lambda point: score_candidate(problems, point, settings, reference), points)

    result = search_hyperparameters(evaluate, settings.search_iterations, settings.seed,
                                    points_per_round=SEARCH_BATCH, log=log,
                                    method=settings.search)
    return workers.agree(result)


def train_rw_model(
    X: np.ndarray,
    y: np.ndarray,
    settings: LearnSettings,
    log: Callable[[str], None] = lambda s: None,
    workers: Workers | None = None,
    chosen: dict[str, Any] | None = None,
) -> TrainedModel:
    """Learn Rw from motif features: split, search, train, test.

    Parameters
    ----------
    X : ndarray, shape (M, F)
        Features (:func:`features`).
    y : ndarray, shape (M,)
        Rw of each motif; must be finite (filter failed fits first).
    settings : LearnSettings
    log : callable
        Progress lines and warnings (a test R² below 0.5 is reported as a warning).
    workers : Workers, optional
        How the search and the final training are spread over processes (see
        :class:`Workers`); by default everything runs here. Every worker calls this
        with the same data and ends with the same model.
    chosen : dict, optional
        Hyperparameters found elsewhere (a search shared by the frames of a series):
        no search here, the final model early-stops by :data:`SEARCH_STOP` with at most
        :data:`MAX_TREES`.

    Returns
    -------
    TrainedModel
        Bit-identical for identical inputs, settings and ``n_jobs``.

    Raises
    ------
    ValueError
        Too few motifs (fewer than :data:`MIN_MOTIFS`, or fewer than 4 left to train on),
        mismatched or non-finite inputs, or fixed ``params`` that XGBoost rejects. The
        messages are meant for the user. Too many ``cv_folds`` for a small training part
        is not an error: the folds are reduced (see :func:`n_folds_for`) with a log line.
    """
    X, y = prepare_inputs(X, y)
    workers = workers or Workers()
    train_idx, test_idx = split_indices(len(y), settings.test_fraction, settings.seed)
    X_train, y_train = X[train_idx], y[train_idx]
    n_train = len(train_idx)
    fixed = settings.fixed_params
    k = 0
    history: list[dict] = []
    cv_score = math.nan
    point: dict[str, Any] = {}
    # Early-stopped trees: at most MAX_TREES when a validation split can watch them, else
    # as many as the search's folds took.
    early = n_train >= MIN_TRAIN_FOR_EARLY_STOPPING
    if chosen is not None:
        point = dict(chosen)
        if early and settings.search == "fast":
            point["n_estimators"] = MAX_TREES
        log("hyperparameters from the search shared by the series' frames")
    elif fixed or settings.search_iterations == 0:
        why = "fixed parameters" if fixed else "search_iterations = 0"
        log(f"no hyperparameter search ({why})")
    else:
        problem = search_problem(X, y, settings, log=log)
        k = len(problem.folds)
        result = run_search([problem], settings, workers, log)
        point, history, cv_score = result.best, result.history, result.best_score
        if settings.search == "fast":
            point = {**point, "n_estimators": MAX_TREES if early else result.trees}
    params = xgb_params(point, settings)
    check_params(params)
    searched_fast = settings.search == "fast" and (chosen is not None or bool(history))
    # A series' frames (hyperparameters from the shared search) stop as the search's
    # folds did: 151 final models are most of a series' learning time, and its answer is
    # the trend over frames (Fe2O3, 151 frames: half the trees, test MAE still below the
    # hand-fixed 200-tree models').
    stop = (SEARCH_STOP if chosen is not None else FINAL_STOP) if searched_fast else None
    if workers.size == 1:
        booster, n_val = fit_final(X_train, y_train, params, settings.seed, stop)
    else:
        def train(threads: int) -> tuple[bytes, int]:
            trained, n_held = fit_final(X_train, y_train, dict(params, nthread=threads),
                                        settings.seed, stop)
            return bytes(trained.save_raw("ubj")), n_held

        raw, n_val = workers.train_once(train, settings.n_jobs)
        booster = load_booster(raw, settings.n_jobs)
    n_trees = booster.num_boosted_rounds()
    how = f"early stopping on {n_val} validation motifs" if n_val else "no early stopping"
    if n_val and stop is not None:
        how += f": {stop[0]} trees in a row gained < {100 * stop[1]:g} %"
    log(f"final model: {n_trees} trees ({how})")

    # The test set is touched here, once, and for nothing but the metrics.
    pred = booster.inplace_predict(X[test_idx])
    metrics: dict[str, float | int] = test_metrics(pred, y[test_idx], float(y_train.mean()))
    metrics.update(cv_score=cv_score, cv_folds=k, n_train=n_train, n_validation=n_val,
                   n_test=len(test_idx))
    log(f"test ({len(test_idx)} motifs): MAE {metrics['test_mae']:.5f}  "
        f"RMSE {metrics['test_rmse']:.5f}  R² {metrics['test_r2']:.3f}  "
        f"(predicting the mean: MAE {metrics['baseline_mae']:.5f})")
    r2 = metrics["test_r2"]
    if not r2 >= R2_WARNING:  # also catches NaN
        log(f"WARNING: test R² = {r2:.3f} is below {R2_WARNING}: the model explains Rw "
            "poorly and the atom contributions are not to be trusted")

    kept = {name: v for name, v in params.items() if name != "nthread"}
    kept["n_estimators"] = n_trees
    patience = stop[0] if stop else int(params.get("early_stopping_rounds",
                                                   EARLY_STOPPING_ROUNDS))
    kept["early_stopping_rounds"] = patience if n_val else 0
    return TrainedModel(
        booster_bytes=bytes(booster.save_raw("ubj")),
        params=_jsonable(kept),
        metrics=metrics,
        history=history,
        train_index=train_idx,
        test_index=test_idx,
        n_jobs=settings.n_jobs,
    )
