"""LightGBM estimators with the scikit-learn contract, saved without pickle.

- ``GBMClassifier``: early fusion, one LightGBM over every modality's features and masks
  (``distributed=True``: trained by ``lightgbm.dask`` on the current Dask cluster);
  with ``linear_base`` it boosts from a penalised logistic model's logit (``LinearClassifier``,
  out of fold for the training rows), so trees learn what is not additive in the features.
- ``LateFusionGBM``: one model per modality (LightGBM, or with ``head="linear"`` the
  penalised logistic ``LinearClassifier``) plus a logistic stacker over their out-of-fold
  logits and the masks (an absent modality's logit is replaced by 0 and its mask says so;
  the stacker is also fitted on copies with one modality hidden).
Both save to a folder as LightGBM text models and JSON, with content hashes that
``load`` checks.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin

from pipeline.artifacts import read_json, write_json
from pipeline.errors import DataError
from pipeline.models import LogitClassifier, require_two_classes
from pipeline.stages.align import mask_col, modality_of


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _check_hash(path: Path, expected: str) -> str:
    text = Path(path).read_text()
    if _sha(text) != expected:
        raise DataError("model file content does not match its recorded hash (modified or corrupt)",
                        file=path, hint="retrain or restore the model folder")
    return text


class GBMClassifier(LogitClassifier):
    def __init__(self, n_estimators=1000, learning_rate=0.03, num_leaves=7, min_child_samples=20,
                 subsample=0.8, colsample_bytree=0.3, reg_lambda=1.0, early_stopping_rounds=100,
                 linear_base=False, base_folds=5, random_state=0, n_jobs=2, distributed=False):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.early_stopping_rounds = early_stopping_rounds
        self.linear_base = linear_base
        self.base_folds = base_folds
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.distributed = distributed

    def _params(self) -> dict:
        return dict(objective="binary", learning_rate=self.learning_rate, num_leaves=self.num_leaves,
                    min_child_samples=self.min_child_samples, subsample=self.subsample, subsample_freq=1,
                    colsample_bytree=self.colsample_bytree, reg_lambda=self.reg_lambda, seed=self.random_state,
                    deterministic=True, force_col_wise=True, num_threads=self.n_jobs, verbose=-1)

    def fit(self, X: pd.DataFrame, y, eval_set: tuple[pd.DataFrame, np.ndarray] | None = None, groups=None):
        """``groups``: the subject of each row, grouping the linear base's folds."""
        y = require_two_classes(y)
        self.feature_names_in_ = np.asarray(list(X.columns), dtype=object)
        self.base_ = None
        init = None
        if self.linear_base:
            from pipeline.models.linear import cross_fitted
            self.base_, init = cross_fitted(X, y, eval_set, self.base_folds, self.random_state, groups)
        if self.distributed:
            valid = None
            if eval_set is not None and len(np.unique(eval_set[1])) == 2:
                valid = (eval_set[0][X.columns].to_numpy(dtype=np.float64), np.asarray(eval_set[1]),
                         self.base_.decision_function(eval_set[0]) if self.base_ is not None else None)
            self.booster_ = fit_dask(self._params(), X.to_numpy(dtype=np.float64), y, init,
                                     list(map(_safe, X.columns)), self.n_estimators, valid, self.early_stopping_rounds)
            self.classes_ = np.array([0, 1])
            return self
        train = lgb.Dataset(X.to_numpy(dtype=np.float64), label=y, feature_name=list(map(_safe, X.columns)),
                            init_score=init, free_raw_data=False)
        valid_sets, callbacks = [], []
        if eval_set is not None and len(np.unique(eval_set[1])) == 2:
            valid_init = self.base_.decision_function(eval_set[0]) if self.base_ is not None else None
            valid_sets = [lgb.Dataset(eval_set[0][X.columns].to_numpy(dtype=np.float64), label=eval_set[1],
                                      init_score=valid_init, reference=train)]
            callbacks = [lgb.early_stopping(self.early_stopping_rounds, verbose=False)]
        self.booster_ = lgb.train(self._params(), train, num_boost_round=self.n_estimators,
                                  valid_sets=valid_sets, callbacks=callbacks)
        self.classes_ = np.array([0, 1])
        return self

    def decision_function(self, X: pd.DataFrame) -> np.ndarray:
        trees = self.booster_.predict(self._matrix(X), raw_score=True)
        return trees if self.base_ is None else trees + self.base_.decision_function(X)

    def shap_values(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Exact SHAP values (log-odds) and base values: TreeSHAP of the trees, plus the
        linear base's own exact values when it boosts from one."""
        from pipeline.explain.explanation import tree_shap
        vals, base = tree_shap(self, X)
        if self.base_ is not None:
            lin_vals, lin_base = self.base_.shap_values(X)
            vals, base = vals + lin_vals, base + lin_base
        return vals, base

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        text = self.booster_.model_to_string()
        (folder / "booster.txt").write_text(text)
        from pipeline.models.linear import save_base
        write_json({"kind": "GBMClassifier", "params": self.get_params(),
                    "features": list(self.feature_names_in_), "booster_sha256": _sha(text),
                    **save_base(self.base_, folder)}, folder / "model.json")

    @classmethod
    def load(cls, folder: Path) -> "GBMClassifier":
        meta = read_json(Path(folder) / "model.json")
        text = _check_hash(Path(folder) / "booster.txt", meta["booster_sha256"])
        est = cls(**meta["params"])
        est.booster_ = lgb.Booster(model_str=text)
        from pipeline.models.linear import load_base
        est.base_ = load_base(folder, meta)
        est.feature_names_in_ = np.asarray(meta["features"], dtype=object)
        est.classes_ = np.array([0, 1])
        return est


def fit_dask(params: dict, X: np.ndarray, y: np.ndarray, init: np.ndarray | None, names: list[str],
             n_estimators: int, valid: tuple | None, stopping_rounds: int) -> lgb.Booster:
    """LightGBM trained by ``lightgbm.dask`` on the workers of the current Dask client (the
    rows cut into one chunk per worker).  ``lightgbm.dask`` has no early stopping, so the
    validation rows (X, y, init score) then pick the number of trees as early stopping
    would have: the best validation log loss, stopping ``stopping_rounds`` after it."""
    import dask.array as da
    from dask.distributed import default_client
    from lightgbm.dask import DaskLGBMClassifier
    try:
        client = default_client()
    except ValueError as e:
        raise DataError("model.distributed needs a Dask cluster to train on", field="model.distributed",
                        hint="train with --engine dask --scheduler ADDR, or set model.distributed: false") from e
    n_workers = max(1, len(client.scheduler_info()["workers"]))
    rows = max(1, -(-len(X) // n_workers))
    p = dict(params)
    kwargs = {"init_score": da.from_array(init, chunks=rows)} if init is not None else {}
    p.pop("num_threads")   # each worker uses its own threads
    model = DaskLGBMClassifier(client=client, n_estimators=n_estimators, **p)
    model.fit(da.from_array(X, chunks=(rows, X.shape[1])), da.from_array(y, chunks=rows),
              feature_name=names, **kwargs)
    booster = model.booster_
    if valid is None:
        return booster
    Xv, yv, raw = valid
    raw = np.zeros(len(Xv)) if raw is None else np.asarray(raw, dtype=np.float64).copy()
    best, best_loss = 0, np.inf
    for i in range(booster.current_iteration()):
        raw += booster.predict(Xv, start_iteration=i, num_iteration=1, raw_score=True)
        loss = float(np.mean(np.logaddexp(0.0, raw) - yv * raw))
        if loss < best_loss:
            best, best_loss = i + 1, loss
        elif i + 1 - best >= stopping_rounds:
            break
    return lgb.Booster(model_str=booster.model_to_string(num_iteration=max(best, 1)))


def _safe(name: str) -> str:
    """LightGBM rejects some JSON characters in feature names."""
    return "".join(ch if ch.isalnum() or ch in "_" else "_" for ch in name)


class LateFusionGBM(ClassifierMixin, BaseEstimator):
    """One model per modality (``head``: gbm or linear), stacked by logistic regression over
    out-of-fold logits and masks."""

    def __init__(self, gbm_params: dict | None = None, n_folds=5, hide_augment=True, head="gbm", random_state=0):
        self.gbm_params = gbm_params
        self.n_folds = n_folds
        self.hide_augment = hide_augment
        self.head = head
        self.random_state = random_state

    def _new_head(self, **overrides):
        if self.head == "linear":
            from pipeline.models.linear import LinearClassifier
            return LinearClassifier(**{"random_state": self.random_state, **overrides})
        if self.head != "gbm":
            raise DataError(f"unknown late-fusion head {self.head!r} (gbm or linear)", field="head")
        return GBMClassifier(**{"random_state": self.random_state, **(self.gbm_params or {}), **overrides})

    def _fold_settings(self, model) -> dict:
        """What the per-fold refits reuse from the full model: its rounds or its penalty."""
        if self.head == "linear":
            return {"C": model.C_}
        return {"n_estimators": max(1, model.booster_.best_iteration or model.booster_.current_iteration())}

    def _groups(self, columns) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for c in columns:
            m = modality_of(c)
            if m is not None and not c.startswith("mask__"):
                groups.setdefault(m, []).append(c)
        return groups

    def fit(self, X: pd.DataFrame, y, eval_set=None, groups=None):
        """``groups``: the subject of each row; the stacker's out-of-fold logits come from
        folds that keep a subject's admissions together."""
        from sklearn.linear_model import LogisticRegression

        from pipeline.models.folds import n_folds as count_folds
        from pipeline.models.folds import subject_folds
        y = np.asarray(y)
        groups = np.arange(len(X)) if groups is None else np.asarray(groups)
        self.feature_names_in_ = np.asarray(list(X.columns), dtype=object)
        self.models_ = {}
        oof = {}
        for m, cols in self._groups(X.columns).items():
            rows = X[mask_col(m)].to_numpy() == 1 if mask_col(m) in X.columns else np.ones(len(X), bool)
            if rows.sum() < 20 or len(np.unique(y[rows])) < 2:
                continue
            es = None
            if eval_set is not None:
                vr = eval_set[0][mask_col(m)].to_numpy() == 1 if mask_col(m) in eval_set[0] else slice(None)
                es = (eval_set[0].loc[vr, cols], np.asarray(eval_set[1])[vr])
            model = self._new_head().fit(X.loc[rows, cols], y[rows], eval_set=es)
            self.models_[m] = model
            # Out-of-fold logits for the stacker (in-sample logits are overconfident), each
            # fold with the rounds (or penalty) the validation set chose for the full model.
            Xm, ym = X.loc[rows, cols], y[rows]
            logit = np.zeros(len(Xm))
            n_folds = count_folds(ym, groups[rows], self.n_folds)
            if n_folds >= 2:
                settings = self._fold_settings(model)
                for fit_idx, out_idx in subject_folds(ym, groups[rows], n_folds, self.random_state):
                    fold = self._new_head(**settings).fit(Xm.iloc[fit_idx], ym[fit_idx])
                    logit[out_idx] = fold.decision_function(Xm.iloc[out_idx])
            else:
                logit = model.decision_function(Xm)
            oof[m] = np.zeros(len(X))
            oof[m][rows] = logit
        # The stacker also sees copies of the rows with one present modality hidden, so an
        # absent modality gets a learned offset rather than whatever the intercept implies.
        masks = {m: (X[mask_col(m)].to_numpy(dtype=float) if mask_col(m) in X.columns else np.ones(len(X)))
                 for m in self.models_}
        blocks, targets = [self._columns(oof, masks)], [y]
        for m in self.models_:
            keep = masks[m] == 1
            if keep.sum() == 0 or not self.hide_augment:
                continue
            hidden = {k: (np.where(keep, 0.0, v) if k == m else v)[keep] for k, v in masks.items()}
            blocks.append(self._columns({k: v[keep] for k, v in oof.items()}, hidden))
            targets.append(y[keep])
        self.stacker_ = LogisticRegression(C=1.0, max_iter=1000).fit(np.vstack(blocks), np.concatenate(targets))
        self.classes_ = np.array([0, 1])
        return self

    @staticmethod
    def _columns(logits: dict, masks: dict) -> np.ndarray:
        cols = []
        for m in logits:
            cols += [logits[m] * masks[m], masks[m]]
        return np.column_stack(cols) if cols else np.zeros((len(next(iter(masks.values()), [])), 1))

    def _stack(self, X: pd.DataFrame) -> np.ndarray:
        masks = {m: (X[mask_col(m)].to_numpy(dtype=float) if mask_col(m) in X.columns else np.ones(len(X)))
                 for m in self.models_}
        logits = {m: model.decision_function(X) for m, model in self.models_.items()}
        return self._columns(logits, masks) if self.models_ else np.zeros((len(X), 1))

    def decision_function(self, X):
        return self.stacker_.decision_function(self._stack(X))

    def predict_proba(self, X):
        return self.stacker_.predict_proba(self._stack(X))

    def predict(self, X):
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)

    def explain(self, X: pd.DataFrame, background: pd.DataFrame | None = None):
        """Exact SHAP values of the stacked logit: logit = b + sum_m (w_m * mask_m * logit_m +
        v_m * mask_m), so each modality model's exact values scaled by its stacking weight add up."""
        from pipeline.models import explanation_of
        names = [c for c in self.feature_names_in_ if c != "hadm_id"]
        vals = np.zeros((len(X), len(names)))
        coef = self.stacker_.coef_[0]
        base = np.full(len(X), float(self.stacker_.intercept_[0]))
        for i, (m, sub) in enumerate(self.models_.items()):
            mask = X[mask_col(m)].to_numpy(dtype=float) if mask_col(m) in X.columns else np.ones(len(X))
            v, b = sub.shap_values(X)
            for j, f in enumerate(sub.feature_names_in_):
                vals[:, names.index(f)] += coef[2 * i] * mask * v[:, j]
            base += coef[2 * i] * mask * b
            vals[:, names.index(mask_col(m))] += coef[2 * i + 1] * mask
        return explanation_of(self, X, vals, base, names)

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        for m, model in self.models_.items():
            model.save(folder / m)
        write_json({"kind": "LateFusionGBM", "modalities": list(self.models_),
                    "features": list(self.feature_names_in_),
                    "stacker": {"coef": self.stacker_.coef_.tolist(), "intercept": self.stacker_.intercept_.tolist()},
                    "n_folds": self.n_folds, "hide_augment": self.hide_augment, "head": self.head,
                    "random_state": self.random_state}, folder / "model.json")

    @classmethod
    def load(cls, folder: Path) -> "LateFusionGBM":
        from sklearn.linear_model import LogisticRegression
        meta = read_json(Path(folder) / "model.json")
        est = cls(n_folds=meta.get("n_folds", 5), hide_augment=meta.get("hide_augment", True),
                  head=meta.get("head", "gbm"), random_state=meta["random_state"])
        if est.head == "linear":
            from pipeline.models.linear import LinearClassifier as head_cls
        else:
            head_cls = GBMClassifier
        est.models_ = {m: head_cls.load(Path(folder) / m) for m in meta["modalities"]}
        est.feature_names_in_ = np.asarray(meta["features"], dtype=object)
        st = LogisticRegression()
        st.coef_ = np.asarray(meta["stacker"]["coef"])
        st.intercept_ = np.asarray(meta["stacker"]["intercept"])
        st.classes_ = np.array([0, 1])
        est.stacker_ = st
        est.classes_ = np.array([0, 1])
        return est


