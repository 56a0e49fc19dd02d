"""Steps 3-4: learn Rw from the motif masks (XGBoost) and explain it (TreeSHAP).

``model``    features, the seeded split, the Bayesian hyperparameter search, the final model
``explain``  SHAP values and the additive per-atom sums behind ACV, σ and CF

Arrays in, results out: no MPI, files or configuration here.
"""

from .explain import (
    AtomContributions,
    ContributionSums,
    atom_contributions,
    contribution_sums,
    shap_values,
)
from .model import LearnSettings, TrainedModel, features, train_rw_model

__all__ = [
    "AtomContributions",
    "ContributionSums",
    "LearnSettings",
    "TrainedModel",
    "atom_contributions",
    "contribution_sums",
    "features",
    "shap_values",
    "train_rw_model",
]
