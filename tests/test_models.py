import numpy as np
import pandas as pd
import pytest

from pipeline.errors import DataError
from pipeline.explain.explanation import Explanation, tree_shap
from pipeline.explain.modality import hide, modality_shapley
from pipeline.models.calibration import Calibrator
from pipeline.models.gbm import GBMClassifier, LateFusionGBM
from pipeline.models.metrics import evaluate


def _data(n=600, seed=0):
    rng = np.random.default_rng(seed)
    a, b, c = rng.normal(size=(3, n))
    has_ecg = rng.random(n) < 0.6
    logit = -1.5 + a + 1.2 * np.where(has_ecg, b, 0) + 0.3 * c
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    X = pd.DataFrame({"ehr__a": a, "ehr__c": c, "ecg__b": np.where(has_ecg, b, np.nan),
                      "mask__ehr": 1, "mask__ecg": has_ecg.astype(int)})
    return X, y


def test_gbm_save_load_round_trip_and_hash_check(tmp_path):
    X, y = _data()
    m = GBMClassifier(n_estimators=50).fit(X[:400], y[:400], (X[400:], y[400:]))
    m.save(tmp_path / "m")
    m2 = GBMClassifier.load(tmp_path / "m")
    assert np.array_equal(m.predict_proba(X), m2.predict_proba(X))
    text = (tmp_path / "m" / "booster.txt").read_text()
    (tmp_path / "m" / "booster.txt").write_text(text.replace("learning_rate", "learning_rate ", 1))
    with pytest.raises(DataError, match="hash"):
        GBMClassifier.load(tmp_path / "m")


def test_gbm_refuses_single_class_and_missing_features():
    X, y = _data()
    with pytest.raises(DataError, match="single class"):
        GBMClassifier().fit(X, np.zeros(len(X)))
    m = GBMClassifier(n_estimators=20).fit(X, y)
    with pytest.raises(DataError, match="absent from the input"):
        m.predict_proba(X.drop(columns=["ecg__b"]))


def test_gbm_is_deterministic():
    X, y = _data()
    p1 = GBMClassifier(n_estimators=30).fit(X, y).predict_proba(X)
    p2 = GBMClassifier(n_estimators=30).fit(X, y).predict_proba(X)
    assert np.array_equal(p1, p2)


def test_late_fusion_round_trip(tmp_path):
    X, y = _data()
    m = LateFusionGBM(gbm_params={"n_estimators": 40}).fit(X, y)
    m.save(tmp_path / "late")
    assert np.allclose(m.predict_proba(X), LateFusionGBM.load(tmp_path / "late").predict_proba(X))


def test_modality_shapley_is_exact_and_zero_for_absent_modality():
    X, y = _data()
    m = GBMClassifier(n_estimators=60).fit(X, y)
    phi = modality_shapley(m.decision_function, X, ["ehr", "ecg"])
    full = m.decision_function(X)
    none = m.decision_function(hide(X, {"ehr", "ecg"}))
    assert np.allclose(phi.sum(axis=1), full - none)        # efficiency
    absent = X["mask__ecg"] == 0
    assert np.allclose(phi.loc[absent, "ecg"], 0.0)           # absent modality contributes nothing
    assert phi.loc[~absent, "ecg"].abs().mean() > 0.1


def test_tree_shap_adds_up_and_explanation_round_trip(tmp_path):
    X, y = _data()
    m = GBMClassifier(n_estimators=60).fit(X, y)
    vals, base = tree_shap(m, X)
    assert np.allclose(vals.sum(axis=1) + base, m.decision_function(X), atol=1e-6)
    exp = Explanation(values=vals, base_values=base, data=X.to_numpy(float), feature_names=list(X.columns),
                      hadm_id=np.arange(len(X)), modality_contrib=modality_shapley(m.decision_function, X, ["ehr", "ecg"]))
    exp.save(tmp_path / "e")
    back = Explanation.load(tmp_path / "e")
    assert np.allclose(back.values, vals) and back.feature_modality[2] == "ecg"
    reasons = back.top_reasons(2, str)
    assert len(reasons) == len(X) and "(" in reasons[0]


def test_calibration_json_round_trip_and_fallback():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=500)
    y = (rng.random(500) < 1 / (1 + np.exp(-2 * logits))).astype(int)
    c = Calibrator("isotonic").fit(logits, y)
    assert c.method_used_ == "isotonic"
    assert np.allclose(Calibrator.from_json(c.to_json()).transform(logits), c.transform(logits))
    few = Calibrator("isotonic").fit(logits[:60], y[:60])
    assert few.method_used_ == "platt"


def test_metrics_undefined_for_one_class_is_none_not_zero():
    r = evaluate(np.zeros(10), np.linspace(0, 1, 10))
    assert r["auroc"] is None and "one class" in r["note"]
    y = np.r_[np.zeros(50), np.ones(50)]
    r = evaluate(y, y * 0.8 + 0.1)
    assert r["auroc"] == 1.0 and r["auroc_ci"] == [1.0, 1.0] and "curves" in r   # every resample separates


def test_auroc_ci_is_a_bootstrap_interval_around_the_estimate():
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    p = 1 / (1 + np.exp(-(1.2 * y + rng.normal(size=300))))
    r = evaluate(y, p, n_boot=400, seed=3)
    lo, hi = r["auroc_ci"]
    assert r["auroc"] == roc_auc_score(y, p) and lo < r["auroc"] < hi and 0.02 < hi - lo < 0.2
    assert r["bootstrap_used"] == 400 and evaluate(y, p, n_boot=400, seed=3)["auroc_ci"] == [lo, hi]
    assert evaluate(y[:15], p[:15], n_boot=10)["auroc_ci"] is None      # under 20 resamples: no interval
