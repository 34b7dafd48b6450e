"""Evaluation on the test split: AUROC, AUPRC, Brier, ECE, curves and bootstrap CIs.

A metric that is undefined (one class in the split) is reported as None with the
reason, never as 0.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, brier_score_loss, precision_recall_curve, roc_auc_score, roc_curve


def ece(y, p, bins: int = 10) -> float:
    y, p = np.asarray(y), np.asarray(p)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            total += sel.mean() * abs(y[sel].mean() - p[sel].mean())
    return float(total)


def _point(y, p) -> dict:
    out = {"n": int(len(y)), "positives": int(np.sum(y)), "brier": float(brier_score_loss(y, p)) if len(y) else None,
           "ece": ece(y, p) if len(y) else None}
    if len(np.unique(y)) == 2:
        out["auroc"] = float(roc_auc_score(y, p))
        out["auprc"] = float(average_precision_score(y, p))
    else:
        out["auroc"] = out["auprc"] = None
        out["note"] = "one class only: AUROC/AUPRC undefined"
    return out


def evaluate(y, p, n_boot: int = 500, seed: int = 0, curves: bool = True) -> dict:
    y, p = np.asarray(y, int), np.asarray(p, float)
    res = _point(y, p)
    rng = np.random.default_rng(seed)
    boots = {"auroc": [], "auprc": [], "brier": []}
    for _ in range(n_boot if len(y) else 0):
        i = rng.integers(0, len(y), len(y))
        if len(np.unique(y[i])) < 2:
            continue
        boots["auroc"].append(roc_auc_score(y[i], p[i]))
        boots["auprc"].append(average_precision_score(y[i], p[i]))
        boots["brier"].append(brier_score_loss(y[i], p[i]))
    for k, v in boots.items():
        res[f"{k}_ci"] = [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if len(v) >= 20 else None
    res["bootstrap_used"] = len(boots["auroc"])
    if curves and res["auroc"] is not None:
        fpr, tpr, _ = roc_curve(y, p)
        prec, rec, _ = precision_recall_curve(y, p)
        pt, pp = calibration_curve(y, p, n_bins=10, strategy="quantile")
        res["curves"] = {"roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()},
                         "pr": {"precision": prec.tolist(), "recall": rec.tolist()},
                         "calibration": {"prob_pred": pp.tolist(), "prob_true": pt.tolist()}}
    return res


def age_band(age: pd.Series) -> pd.Series:
    return pd.cut(age, [0, 40, 60, 75, 200], right=False, labels=["<40", "40-59", "60-74", "75+"]).astype(str)


def by_group(y, p, groups: pd.Series, min_n: int = 10) -> list[dict]:
    rows = []
    y, p = np.asarray(y), np.asarray(p)
    g = groups.astype(str).to_numpy()
    for level in sorted(set(g)):
        sel = g == level
        if sel.sum() < min_n:
            rows.append({"group": level, "n": int(sel.sum()), "note": f"fewer than {min_n} rows"})
            continue
        r = _point(y[sel], p[sel])
        r["group"] = level
        rows.append(r)
    return rows


def availability_pattern(table: pd.DataFrame, modalities) -> pd.Series:
    """'ehr+ecg' style label of the modalities present in each row."""
    parts = [table[f"mask__{m}"].astype(bool).map({True: m, False: ""}) for m in modalities
             if f"mask__{m}" in table.columns]
    if not parts:
        return pd.Series("none", index=table.index)
    df = pd.concat(parts, axis=1)
    return df.apply(lambda r: "+".join(x for x in r if x) or "none", axis=1)


def decision_curve(y, p, thresholds=None) -> dict:
    """Decision curve analysis (Vickers & Elkin 2006): the net benefit of treating the
    patients whose risk is >= t, for each threshold probability t, against treating all
    and treating none (net benefit 0).

    net benefit(t) = TP/n - FP/n * t / (1 - t);  treat all: prevalence - (1 - prevalence) * t / (1 - t).
    Returns {"threshold", "model", "treat_all"} (lists of equal length) and "prevalence".
    """
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"y and p must be 1-D arrays of the same length, got {y.shape} and {p.shape}")
    t = np.asarray(np.linspace(0.01, 0.60, 60) if thresholds is None else thresholds, dtype=float)
    if ((t <= 0) | (t >= 1)).any():
        raise ValueError("threshold probabilities must lie strictly between 0 and 1")
    n = max(len(y), 1)
    treat = p[None, :] >= t[:, None]                       # [thresholds, patients]
    tp = (treat & (y[None, :] == 1)).sum(axis=1) / n
    fp = (treat & (y[None, :] == 0)).sum(axis=1) / n
    odds = t / (1 - t)
    prev = float(y.mean()) if len(y) else 0.0
    return {"threshold": t.round(4).tolist(), "model": (tp - fp * odds).tolist(),
            "treat_all": (prev - (1 - prev) * odds).tolist(), "prevalence": prev}
