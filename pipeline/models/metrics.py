"""Evaluation on the test split: AUROC, AUPRC, Brier, ECE, calibration intercept and slope,
curves, and patient-clustered bootstrap CIs.

Every interval resamples PATIENTS, not admissions: a draw picks subjects with
replacement and takes all of each picked subject's admissions (``cluster_draws``), so
the admissions of one patient, which are not independent, move together.  Without
``clusters`` each row is its own cluster.  Paired differences (``paired_difference``)
score two models on the same draws; a difference is called significant when its 95%
CI excludes 0.

Calibration: the intercept is the calibration-in-the-large (logistic regression of y
with offset logit(p), slope fixed at 1; 0 is ideal), the slope the coefficient of
logit(p) in a logistic regression of y on it (1 is ideal; below 1: risks too extreme).

A metric that is undefined (one class in the split) is reported as None with the
reason, never as 0.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, precision_recall_curve, roc_auc_score, roc_curve

MIN_DRAWS = 20   # fewer usable bootstrap draws than this: no CI


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


def _logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, float), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _logistic_fit(Z: np.ndarray, y: np.ndarray, offset: np.ndarray, iters: int = 50) -> np.ndarray | None:
    """Unpenalised logistic regression by Newton's method (None if it does not converge)."""
    beta = np.zeros(Z.shape[1])
    for _ in range(iters):
        eta = np.clip(Z @ beta + offset, -30, 30)
        mu = 1 / (1 + np.exp(-eta))
        w = mu * (1 - mu)
        H = Z.T @ (Z * w[:, None]) + 1e-9 * np.eye(Z.shape[1])
        step = np.linalg.solve(H, Z.T @ (y - mu))
        beta += step
        if np.max(np.abs(step)) < 1e-8:
            return beta
    return beta if np.all(np.isfinite(beta)) and np.max(np.abs(beta)) < 1e3 else None


def calibration_intercept_slope(y, p) -> tuple[float | None, float | None]:
    """(calibration-in-the-large, calibration slope); None where undefined (one class)."""
    y, lp = np.asarray(y, float), _logit(p)
    if len(np.unique(y)) < 2:
        return None, None
    a = _logistic_fit(np.ones((len(y), 1)), y, lp)
    b = _logistic_fit(np.column_stack([np.ones(len(y)), lp]), y, np.zeros(len(y)))
    return (None if a is None else float(a[0])), (None if b is None else float(b[1]))


def cluster_draws(n: int, clusters=None, n_boot: int = 500, seed: int = 0) -> list[np.ndarray]:
    """Row indices of ``n_boot`` bootstrap draws that resample clusters (subjects) with
    replacement and keep all rows of each drawn cluster."""
    rng = np.random.default_rng(seed)
    if n == 0:
        return []
    if clusters is None:
        return [rng.integers(0, n, n) for _ in range(n_boot)]
    codes, _ = pd.factorize(pd.Series(np.asarray(clusters)))
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(codes.max() + 2))
    members = [order[bounds[g]:bounds[g + 1]] for g in range(codes.max() + 1)]
    k = len(members)
    return [np.concatenate([members[g] for g in rng.integers(0, k, k)]) for _ in range(n_boot)]


def _ci(values) -> list[float] | None:
    v = [x for x in values if x is not None and np.isfinite(x)]
    return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if len(v) >= MIN_DRAWS else None


def _point(y, p) -> dict:
    out = {"n": int(len(y)), "positives": int(np.sum(y)), "brier": float(brier_score_loss(y, p)) if len(y) else None,
           "ece": ece(y, p) if len(y) else None}
    if len(np.unique(y)) == 2:
        out["auroc"] = float(roc_auc_score(y, p))
        out["auprc"] = float(average_precision_score(y, p))
        out["cal_intercept"], out["cal_slope"] = calibration_intercept_slope(y, p)
    else:
        out["auroc"] = out["auprc"] = out["cal_intercept"] = out["cal_slope"] = None
        out["note"] = "one class only: AUROC/AUPRC undefined"
    return out


BOOT_METRICS = ("auroc", "auprc", "brier", "cal_intercept", "cal_slope")


def _boot_stats(y, p, draws, calibration: bool = True) -> dict[str, list]:
    boots = {k: [] for k in BOOT_METRICS}
    for i in draws:
        if len(np.unique(y[i])) < 2:
            continue
        boots["auroc"].append(roc_auc_score(y[i], p[i]))
        boots["auprc"].append(average_precision_score(y[i], p[i]))
        boots["brier"].append(brier_score_loss(y[i], p[i]))
        if calibration:
            a, b = calibration_intercept_slope(y[i], p[i])
            boots["cal_intercept"].append(a)
            boots["cal_slope"].append(b)
    return boots


def reliability(y, p, clusters=None, bins: int = 10, n_boot: int = 200, seed: int = 0) -> dict:
    """Reliability diagram data: per quantile bin of p, the mean risk, the observed rate,
    its clustered-bootstrap 95% CI and the row count."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    edges = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1)))
    idx = np.clip(np.searchsorted(edges[1:-1], p, side="right"), 0, max(len(edges) - 2, 0))
    used = sorted(set(idx.tolist()))
    draws = cluster_draws(len(y), clusters, n_boot, seed)
    out = {"prob_pred": [], "prob_true": [], "lo": [], "hi": [], "n": []}
    for b in used:
        sel = idx == b
        rates = [y[i][sel[i]].mean() for i in draws if sel[i].any()]
        ci = _ci(rates) or [None, None]
        out["prob_pred"].append(float(p[sel].mean()))
        out["prob_true"].append(float(y[sel].mean()))
        out["lo"].append(ci[0])
        out["hi"].append(ci[1])
        out["n"].append(int(sel.sum()))
    return out


def evaluate(y, p, clusters=None, n_boot: int = 500, seed: int = 0, curves: bool = True) -> dict:
    """Point metrics with patient-clustered bootstrap 95% CIs (``clusters``: the subject
    id of each row)."""
    y, p = np.asarray(y, int), np.asarray(p, float)
    res = _point(y, p)
    boots = _boot_stats(y, p, cluster_draws(len(y), clusters, n_boot, seed))
    for k, v in boots.items():
        res[f"{k}_ci"] = _ci(v)
    res["bootstrap_used"] = len(boots["auroc"])
    res["bootstrap_unit"] = "subject" if clusters is not None else "row"
    if curves and res["auroc"] is not None:
        fpr, tpr, _ = roc_curve(y, p)
        prec, rec, _ = precision_recall_curve(y, p)
        res["curves"] = {"roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()},
                         "pr": {"precision": prec.tolist(), "recall": rec.tolist()},
                         "calibration": reliability(y, p, clusters, seed=seed)}
    return res


def paired_difference(y, p_model, p_ref, clusters=None, n_boot: int = 500, seed: int = 0) -> dict:
    """AUROC(model) - AUROC(ref) with a paired, patient-clustered bootstrap 95% CI (both
    scored on the same resampled patients); ``significant``: the CI excludes 0."""
    y, a, b = np.asarray(y, int), np.asarray(p_model, float), np.asarray(p_ref, float)
    if len(np.unique(y)) < 2:
        return {"dauroc": None, "dauroc_ci": None, "significant": None, "note": "one class only"}
    diffs = [roc_auc_score(y[i], a[i]) - roc_auc_score(y[i], b[i])
             for i in cluster_draws(len(y), clusters, n_boot, seed) if len(np.unique(y[i])) == 2]
    ci = _ci(diffs)
    return {"dauroc": float(roc_auc_score(y, a) - roc_auc_score(y, b)), "dauroc_ci": ci,
            "significant": None if ci is None else bool(ci[0] > 0 or ci[1] < 0)}


def age_band(age: pd.Series) -> pd.Series:
    return pd.cut(age, [0, 40, 60, 75, 200], right=False, labels=["<40", "40-59", "60-74", "75+"]).astype(str)


def by_group(y, p, groups: pd.Series, clusters=None, min_n: int = 10, n_boot: int = 200, seed: int = 0
             ) -> list[dict]:
    """Metrics per level of ``groups`` with patient-clustered bootstrap CIs (within the level)."""
    rows = []
    y, p = np.asarray(y, int), np.asarray(p, float)
    g = groups.astype(str).to_numpy()
    cl = None if clusters is None else np.asarray(clusters)
    for level in sorted(set(g)):
        sel = g == level
        if sel.sum() < min_n:
            rows.append({"group": level, "n": int(sel.sum()), "note": f"fewer than {min_n} rows"})
            continue
        r = _point(y[sel], p[sel])
        boots = _boot_stats(y[sel], p[sel], cluster_draws(int(sel.sum()), None if cl is None else cl[sel],
                                                          n_boot, seed), calibration=False)
        for k in ("auroc", "auprc", "brier"):
            r[f"{k}_ci"] = _ci(boots[k])
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
