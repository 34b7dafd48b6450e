"""One explanation object that every score file and report reads.

Parallel arrays with the same first axis (one row per patient/admission):
values (n, p) SHAP values in log-odds, base_values (n,), data (n, p), plus
feature_names (p,), modality of each feature (p,), and the ids.  Modality
contributions (n, M) are exact Shapley values over modality subsets.  ``method`` says
how the feature values were computed: "exact" (TreeSHAP, linear) or an approximation, which
then carries its per-row ``additivity_error`` (output - base - sum of values).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts import read_parquet, read_json, write_json, write_parquet
from pipeline.stages.align import modality_of


def import_shap():
    """shap's import triggers matplotlib's Colormap.set_bad/set_under deprecation; filter just that."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The set_(bad|under|over) function will be deprecated",
                                category=PendingDeprecationWarning)
        import shap
    return shap


@dataclass
class Explanation:
    values: np.ndarray
    base_values: np.ndarray
    data: np.ndarray
    feature_names: list[str]
    hadm_id: np.ndarray
    modality_contrib: pd.DataFrame | None = None  # columns = modalities, index aligned with rows
    feature_modality: list[str] = field(default_factory=list)
    method: str = "exact"
    additivity_error: np.ndarray | None = None    # (n,) for approximate methods

    def __post_init__(self):
        n = len(self.hadm_id)
        assert self.values.shape == (n, len(self.feature_names)), "values must be (n_rows, n_features)"
        assert self.data.shape == self.values.shape and len(self.base_values) == n
        if not self.feature_modality:
            self.feature_modality = [modality_of(f) or "other" for f in self.feature_names]

    def top_reasons(self, k: int, pretty) -> list[str]:
        """Per row: the k features with the largest |SHAP|, as 'label=value (+shap)'."""
        mag = np.abs(self.values)
        k = min(k, mag.shape[1])
        top = np.argpartition(-mag, k - 1, axis=1)[:, :k] if 0 < k < mag.shape[1] else \
            np.tile(np.arange(mag.shape[1]), (len(mag), 1))[:, :max(k, 0)]
        # the k largest |SHAP| of each row, largest first (ties: lower feature index first)
        order = np.take_along_axis(top, np.lexsort((top, -np.take_along_axis(mag, top, axis=1)), axis=1), axis=1)
        out, label = [], {}
        for i, idx in enumerate(order):
            parts = []
            for j in idx:
                v = self.values[i, j]
                if v == 0:
                    continue
                x = self.data[i, j]
                xs = "missing" if np.isnan(x) else f"{x:.3g}"
                if j not in label:
                    label[j] = pretty(self.feature_names[j])
                parts.append(f"{label[j]}={xs} ({v:+.2f})")
            out.append("; ".join(parts))
        return out

    def modality_importance(self) -> dict[str, float]:
        """Cohort-level: mean |modality contribution|."""
        if self.modality_contrib is None:
            return {}
        return {m: float(self.modality_contrib[m].abs().mean()) for m in self.modality_contrib.columns}

    def feature_importance(self) -> pd.Series:
        return pd.Series(np.abs(self.values).mean(axis=0), index=self.feature_names).sort_values(ascending=False)

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        vals = pd.DataFrame(self.values, columns=self.feature_names)
        vals.insert(0, "hadm_id", self.hadm_id)
        vals.insert(1, "base_value", self.base_values)
        if self.additivity_error is not None:
            vals.insert(2, "additivity_error", self.additivity_error)
        write_parquet(vals, folder / "shap_values.parquet")
        data = pd.DataFrame(self.data, columns=self.feature_names)
        data.insert(0, "hadm_id", self.hadm_id)
        write_parquet(data, folder / "shap_data.parquet")
        if self.modality_contrib is not None:
            write_parquet(self.modality_contrib.assign(hadm_id=self.hadm_id), folder / "modality_contrib.parquet")
        write_json({"feature_names": self.feature_names, "feature_modality": self.feature_modality,
                    "method": self.method}, folder / "explanation.json")

    @classmethod
    def load(cls, folder: Path) -> "Explanation":
        folder = Path(folder)
        meta = read_json(folder / "explanation.json")
        vals = read_parquet(folder / "shap_values.parquet")
        data = read_parquet(folder / "shap_data.parquet")
        mc = None
        if (folder / "modality_contrib.parquet").exists():
            mc = read_parquet(folder / "modality_contrib.parquet").drop(columns="hadm_id")
        names = meta["feature_names"]
        return cls(values=vals[names].to_numpy(), base_values=vals["base_value"].to_numpy(),
                   data=data[names].to_numpy(), feature_names=names, hadm_id=vals["hadm_id"].to_numpy(),
                   modality_contrib=mc, feature_modality=meta["feature_modality"],
                   method=meta.get("method", "exact"),
                   additivity_error=vals["additivity_error"].to_numpy() if "additivity_error" in vals else None)


def tree_shap(model, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """SHAP values (log-odds) of a GBMClassifier's trees via shap.TreeExplainer (its linear
    base, if any, is added by ``GBMClassifier.shap_values``)."""
    shap = import_shap()
    explainer = shap.TreeExplainer(model.booster_)
    Xm = X[list(model.feature_names_in_)].to_numpy(dtype=np.float64)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LightGBM binary classifier with TreeExplainer.*")
        vals = np.asarray(explainer.shap_values(Xm))
    if vals.ndim == 3:  # older shap: one array per class
        vals = vals[-1]
    base = np.full(len(X), float(np.ravel(explainer.expected_value)[-1]))
    return vals, base
