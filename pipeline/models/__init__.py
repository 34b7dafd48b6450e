"""Estimators (scikit-learn contract, saved without pickle) and what the tabular ones share
(``LogitClassifier``, ``require_two_classes``, ``require_features``); the model kinds that
train fits, and how each is built and loaded, are in ``pipeline.models.registry``."""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin

from pipeline.errors import DataError


def require_two_classes(y) -> np.ndarray:
    """The labels as an array; a DataError if they hold a single class."""
    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        raise DataError(f"training labels have a single class ({np.unique(y).tolist()}); "
                        "AUROC and a classifier are undefined", field="label",
                        hint="use a larger cohort or another task")
    return y


def require_features(names, X: pd.DataFrame) -> None:
    """A DataError naming the model features ``names`` that ``X`` lacks (none missing: nothing)."""
    missing = [c for c in names if c not in X.columns]
    if missing:
        raise DataError(f"{len(missing)} model feature(s) absent from the input, e.g. {missing[:5]}",
                        field=missing[0], hint="score with the same feature configuration as training")


class LogitClassifier(ClassifierMixin, BaseEstimator):
    """A binary classifier defined by ``decision_function`` (log-odds) over the columns
    ``feature_names_in_``: probabilities, labels, and the checked feature matrix."""

    def _matrix(self, X: pd.DataFrame) -> np.ndarray:
        require_features(self.feature_names_in_, X)
        return X[list(self.feature_names_in_)].to_numpy(dtype=np.float64, copy=True)

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-self.decision_function(X)))
        return np.column_stack([1 - p, p])

    def predict(self, X):
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)

    def explain(self, X: pd.DataFrame, background: pd.DataFrame | None = None):
        """Exact per-feature SHAP values (log-odds) from ``shap_values`` as an ``Explanation``."""
        return explanation_of(self, X, *self.shap_values(X))


def explanation_of(model, X: pd.DataFrame, values: np.ndarray, base: np.ndarray, names=None):
    """An ``Explanation`` of ``values`` over ``names`` (default: the model's features)."""
    from pipeline.explain.explanation import Explanation
    names = list(model.feature_names_in_) if names is None else names
    hadm = X["hadm_id"].to_numpy() if "hadm_id" in X.columns else np.arange(len(X))
    return Explanation(values=values, base_values=base, data=X[names].to_numpy(dtype=float),
                       feature_names=names, hadm_id=hadm)
