"""Per-modality imputation that keeps every mask, and a classifier wrapper that uses it.

``ModalityImputer(strategies={'ecg': 'iterative', 'ehr': 'median'})``:

- 'none'      leave NaN (LightGBM routes missing values itself; the net fills the median);
- 'mean' / 'median'  the train statistic per feature, plus an indicator ``<feature>__isna``
  for every feature that had missing values in train (with ``indicators=True``);
- 'iterative' scikit-learn's ``IterativeImputer`` (round-robin BayesianRidge over the
  nearest features of every modality, so an absent ECG is filled from the EHR and the
  rest), plus the same indicators.

The modality masks (``mask__<m>``) are never touched: a model always knows which
modalities were recorded and which values were filled.  The fitted state is plain
numbers (statistics, and for 'iterative' the imputation sequence of linear models),
saved as JSON and replayed exactly as scikit-learn's ``transform`` does, so nothing is
pickled.

``ImputedClassifier(imputer, model)`` fits the imputer on the training rows and the model
on the imputed table; its explanations are given over the original features (the
SHAP value of ``x__isna`` is added to ``x``, and the data shown are the recorded values).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin

from pipeline.artifacts import read_json, write_json
from pipeline.errors import DataError
from pipeline.stages.align import modality_of

STRATEGIES = ("none", "mean", "median", "iterative")
ISNA = "__isna"


def _columns(X: pd.DataFrame, modality: str) -> list[str]:
    return [c for c in X.columns if modality_of(c) == modality and not c.startswith("mask__")
            and not c.endswith(ISNA)]


class ModalityImputer(TransformerMixin, BaseEstimator):
    def __init__(self, strategies: dict | None = None, indicators: bool = True, max_iter: int = 5,
                 n_nearest_features: int = 20, random_state: int = 0):
        self.strategies = strategies
        self.indicators = indicators
        self.max_iter = max_iter
        self.n_nearest_features = n_nearest_features
        self.random_state = random_state

    def _strategy(self, m: str) -> str:
        s = (self.strategies or {}).get(m, "none")
        if s not in STRATEGIES:
            raise DataError(f"unknown imputation strategy {s!r} for modality {m!r}",
                            field=f"model.imputation.{m}", hint=f"one of {', '.join(STRATEGIES)}")
        return s

    def fit(self, X: pd.DataFrame, y=None):
        self.feature_names_in_ = np.asarray(list(X.columns), dtype=object)
        mods = sorted({modality_of(c) for c in X.columns if modality_of(c) is not None})
        self.filled_, self.stats_, self.indicator_cols_ = {}, {}, []
        for m in mods:
            s = self._strategy(m)
            if s == "none":
                continue
            cols = _columns(X, m)
            self.filled_[m] = cols
            v = X[cols].to_numpy(dtype=np.float64)
            with warnings.catch_warnings():  # a feature never observed in train is filled with 0
                warnings.filterwarnings("ignore", category=RuntimeWarning)
                stat = np.nanmedian(v, axis=0) if s == "median" else np.nanmean(v, axis=0)
            self.stats_.update(zip(cols, np.nan_to_num(stat).tolist()))
            if self.indicators:
                self.indicator_cols_ += [c for c, miss in zip(cols, np.isnan(v).any(axis=0)) if miss]
        self.iterative_ = None
        iter_cols = [c for m, cols in self.filled_.items() if self._strategy(m) == "iterative" for c in cols]
        if iter_cols:
            self.iterative_ = self._fit_iterative(X, iter_cols)
        return self

    def _fit_iterative(self, X: pd.DataFrame, targets: list[str]) -> dict:
        """Fit IterativeImputer on every feature (predictors from all modalities) and keep
        the plain numbers of its imputation sequence."""
        from sklearn.experimental import enable_iterative_imputer  # noqa: F401
        from sklearn.impute import IterativeImputer
        cols = [c for c in X.columns if modality_of(c) is not None and not c.endswith(ISNA)]
        imp = IterativeImputer(max_iter=self.max_iter, n_nearest_features=min(self.n_nearest_features, len(cols) - 1)
                               if len(cols) > 1 else None, initial_strategy="median", skip_complete=True,
                               keep_empty_features=True, random_state=self.random_state)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="\\[IterativeImputer\\] Early stopping criterion")
            imp.fit(X[cols].to_numpy(dtype=np.float64))
        steps = [{"feature": int(t.feat_idx), "neighbors": t.neighbor_feat_idx.astype(int).tolist(),
                  "coef": t.estimator.coef_.tolist(), "intercept": float(t.estimator.intercept_)}
                 for t in imp.imputation_sequence_]
        initial = np.nan_to_num(imp.initial_imputer_.statistics_).tolist()
        return {"columns": cols, "targets": targets, "initial": initial,
                "min": np.broadcast_to(imp._min_value, len(cols)).tolist(),
                "max": np.broadcast_to(imp._max_value, len(cols)).tolist(), "steps": steps}

    @staticmethod
    def _replay(state: dict, X: pd.DataFrame) -> np.ndarray:
        """scikit-learn's IterativeImputer.transform (posterior mean, clipped), from saved numbers."""
        v = X[state["columns"]].to_numpy(dtype=np.float64)
        missing = np.isnan(v)
        v = np.where(missing, np.asarray(state["initial"])[None, :], v)
        lo, hi = np.asarray(state["min"]), np.asarray(state["max"])
        for st in state["steps"]:
            j = st["feature"]
            rows = missing[:, j]
            if rows.any():
                pred = v[np.ix_(rows, st["neighbors"])] @ np.asarray(st["coef"]) + st["intercept"]
                v[rows, j] = np.clip(pred, lo[j], hi[j])
        return v

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        missing = [c for c in self.feature_names_in_ if c not in X.columns]
        if missing:
            raise DataError(f"{len(missing)} feature(s) the imputer was fitted on are absent, e.g. {missing[:5]}",
                            field=missing[0])
        X = X.copy()
        ind = {f"{c}{ISNA}": X[c].isna().to_numpy().astype(np.float64) for c in self.indicator_cols_}
        if self.iterative_ is not None:
            full = self._replay(self.iterative_, X)
            pos = {c: i for i, c in enumerate(self.iterative_["columns"])}
            targets = self.iterative_["targets"]
            X[targets] = full[:, [pos[c] for c in targets]]
        simple = [c for m, cols in self.filled_.items() if self._strategy(m) in ("mean", "median") for c in cols]
        if simple:
            X[simple] = X[simple].fillna(pd.Series({c: self.stats_[c] for c in simple}))
        if ind:
            X = pd.concat([X, pd.DataFrame(ind, index=X.index)], axis=1)
        return X

    def to_json(self) -> dict:
        return {"params": self.get_params(), "features": list(self.feature_names_in_), "filled": self.filled_,
                "stats": self.stats_, "indicators": self.indicator_cols_, "iterative": self.iterative_}

    @classmethod
    def from_json(cls, d: dict) -> "ModalityImputer":
        imp = cls(**d["params"])
        imp.feature_names_in_ = np.asarray(d["features"], dtype=object)
        imp.filled_, imp.stats_, imp.indicator_cols_, imp.iterative_ = d["filled"], d["stats"], d["indicators"], \
            d["iterative"]
        return imp


class ImputedClassifier(ClassifierMixin, BaseEstimator):
    """``model`` fitted on ``imputer``'s output; the scikit-learn contract over the raw table.
    Saved as the imputer's JSON around the inner model's own folder (``model/``)."""

    KIND = "ImputedClassifier"   # what its model.json records

    def __init__(self, imputer: ModalityImputer | None = None, model=None):
        self.imputer = imputer
        self.model = model

    def fit(self, X: pd.DataFrame, y, eval_set=None, **fit_kw):
        self.feature_names_in_ = np.asarray(list(X.columns), dtype=object)
        feats = X.drop(columns=[c for c in ("hadm_id",) if c in X.columns])
        self.imputer_ = self.imputer.fit(feats)
        if eval_set is not None:
            eval_set = (self._t(eval_set[0]), eval_set[1])
        self.model_ = self.model.fit(self._t(X), y, eval_set=eval_set, **fit_kw)
        self.classes_ = np.array([0, 1])
        return self

    def _t(self, X: pd.DataFrame) -> pd.DataFrame:
        return self.imputer_.transform(X)

    @property
    def history_(self) -> list:
        """The fused net's per-epoch history (empty for models without one)."""
        return getattr(self.model_, "history_", [])

    def with_tensors(self, tensors):
        """Attach raw tensors to an inner model that reads them (the fused net)."""
        self.model_.with_tensors(tensors)
        return self

    def decision_function(self, X: pd.DataFrame) -> np.ndarray:
        return self.model_.decision_function(self._t(X[list(self.feature_names_in_)]))

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-self.decision_function(X)))
        return np.column_stack([1 - p, p])

    def predict(self, X):
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)

    def explain(self, X: pd.DataFrame, background: pd.DataFrame | None = None):
        """The inner model's explanation on the imputed rows, folded back onto the raw features."""
        bg = self._t(background) if background is not None else None
        return self.fold_explanation(self.model_.explain(self._t(X), bg), X)

    def fold_explanation(self, exp, X: pd.DataFrame):
        """An explanation of the inner model (imputed features + indicators) restated over the
        raw features: indicator values added to their feature, data = the recorded values.
        Inner pseudo-features that are not table columns (the fused net's ``ecg__waveform``,
        ``imaging__image``) are kept as they are, so the values still add up."""
        names = [c for c in self.feature_names_in_ if c != "hadm_id"]
        extra = [f for f in exp.feature_names if f not in names and not f.endswith(ISNA)]
        pos = {c: i for i, c in enumerate(names + extra)}
        vals = np.zeros((exp.values.shape[0], len(pos)))
        data = np.full((exp.values.shape[0], len(pos)), np.nan)
        data[:, :len(names)] = X[names].to_numpy(dtype=float)
        for j, f in enumerate(exp.feature_names):
            base = f[:-len(ISNA)] if f.endswith(ISNA) else f
            vals[:, pos[base]] += exp.values[:, j]
            if f in extra:
                data[:, pos[f]] = exp.data[:, j]
        exp.values, exp.feature_names, exp.data = vals, names + extra, data
        exp.feature_modality = [modality_of(f) or "other" for f in exp.feature_names]
        return exp

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        self.model_.save(folder / "model")
        write_json({"kind": self.KIND, "inner": type(self.model_).__name__,
                    "features": list(self.feature_names_in_), "imputer": self.imputer_.to_json()},
                   folder / "model.json")

    @classmethod
    def load(cls, folder: Path, load_inner) -> "ImputedClassifier":
        """``load_inner(folder)``: the inner model's loader (its kind's, pipeline.models.registry)."""
        meta = read_json(Path(folder) / "model.json")
        est = cls()
        est.model_ = load_inner(Path(folder) / "model")
        est.imputer_ = ModalityImputer.from_json(meta["imputer"])
        est.feature_names_in_ = np.asarray(meta["features"], dtype=object)
        est.classes_ = np.array([0, 1])
        return est
