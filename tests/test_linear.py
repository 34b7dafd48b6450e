"""The penalised logistic model and late fusion with linear heads: scikit-learn equivalence,
penalty chosen on validation, exact SHAP, JSON round trip, refusal of broken files."""
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.errors import DataError
from pipeline.models import registry
from pipeline.models.gbm import GBMClassifier, LateFusionGBM
from pipeline.models.linear import LinearClassifier


def _data(n, seed=0, n_noise=40):
    """Risk additive in two modalities' severities, each seen through several noisy features,
    with many irrelevant ones; ECG absent for 40 %."""
    rng = np.random.default_rng(seed)
    s_ehr, s_ecg = rng.normal(size=(2, n))
    has_ecg = rng.random(n) < 0.6
    y = (rng.random(n) < 1 / (1 + np.exp(-(-2 + 1.2 * s_ehr + 1.2 * s_ecg)))).astype(int)
    cols = {f"ehr__f{k}": s_ehr * rng.uniform(0.5, 1.5) + rng.normal(0, 1, n) for k in range(6)}
    cols |= {f"ehr__noise{k}": rng.normal(size=n) for k in range(n_noise)}
    cols |= {f"ecg__f{k}": np.where(has_ecg, s_ecg + rng.normal(0, 1, n), np.nan) for k in range(6)}
    X = pd.DataFrame(cols).assign(mask__ehr=1, mask__ecg=has_ecg.astype(int))
    X.loc[rng.random(n) < 0.05, "ehr__f0"] = np.nan
    return X, y


def test_linear_equals_scikit_learn_and_explains_exactly(tmp_path):
    X, y = _data(1500)
    m = LinearClassifier(C=0.05).fit(X, y)
    ref = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(),
                        LogisticRegression(C=0.05, max_iter=5000)).fit(X, y)
    Xt, _ = _data(300, seed=1)
    assert np.allclose(m.decision_function(Xt), ref.decision_function(Xt), atol=1e-6)
    vals, base = m.shap_values(Xt)
    assert np.allclose(vals.sum(axis=1) + base, m.decision_function(Xt))
    # the training rows' mean contribution of every feature is 0 (training rows as background)
    assert np.allclose(m.shap_values(X)[0].mean(axis=0), 0, atol=1e-9)
    m.save(tmp_path / "lin")
    again = registry.load(tmp_path / "lin", "linear_early")
    assert isinstance(again, LinearClassifier) and again.C_ == 0.05
    assert np.array_equal(again.decision_function(Xt), m.decision_function(Xt))
    with pytest.raises(DataError, match="absent from the input"):
        m.decision_function(Xt.drop(columns=["ecg__f2"]))


def test_penalty_is_chosen_on_validation_and_beats_lightgbm_on_additive_risk():
    X, y = _data(1200)
    Xv, yv = _data(800, seed=2)
    Xt, yt = _data(3000, seed=3)
    m = LinearClassifier().fit(X, y, eval_set=(Xv, yv))
    assert m.C_ in m.Cs
    from sklearn.metrics import log_loss
    chosen = log_loss(yv, m.predict_proba(Xv)[:, 1])
    for c in m.Cs:
        assert chosen <= log_loss(yv, LinearClassifier(C=c).fit(X, y).predict_proba(Xv)[:, 1]) + 1e-12
    assert LinearClassifier().fit(X, y).C_ == 0.01   # no validation set: the default penalty
    gbm = GBMClassifier(n_estimators=300).fit(X, y, eval_set=(Xv, yv))
    assert roc_auc_score(yt, m.decision_function(Xt)) > roc_auc_score(yt, gbm.decision_function(Xt))


def test_a_broken_linear_model_file_is_refused(tmp_path):
    X, y = _data(400)
    LinearClassifier(C=0.1).fit(X, y).save(tmp_path / "lin")
    meta = json.loads((tmp_path / "lin" / "model.json").read_text())
    meta["coef"] = meta["coef"][:-1]
    (tmp_path / "lin" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="do not match"):
        registry.load(tmp_path / "lin", "linear_early")


def test_late_fusion_with_linear_heads_round_trips_and_explains_exactly(tmp_path):
    X, y = _data(1500)
    Xv, yv = _data(500, seed=2)
    m = LateFusionGBM(head="linear").fit(X, y, eval_set=(Xv, yv))
    assert set(m.models_) == {"ehr", "ecg"} and all(isinstance(h, LinearClassifier) for h in m.models_.values())
    Xt, _ = _data(400, seed=4)
    exp = m.explain(Xt)
    assert np.allclose(exp.values.sum(axis=1) + exp.base_values, m.decision_function(Xt))
    m.save(tmp_path / "late")
    again = registry.load(tmp_path / "late", "linear_late")
    assert again.head == "linear"
    assert np.allclose(again.decision_function(Xt), m.decision_function(Xt))
    with pytest.raises(DataError, match="unknown late-fusion head"):
        LateFusionGBM(head="svm").fit(X, y)


def test_lightgbm_boosted_from_a_linear_base_explains_exactly_and_round_trips(tmp_path):
    X, y = _data(1500)
    Xv, yv = _data(600, seed=2)
    Xt, yt = _data(3000, seed=3)
    m = GBMClassifier(n_estimators=300, linear_base=True).fit(X, y, eval_set=(Xv, yv))
    plain = GBMClassifier(n_estimators=300).fit(X, y, eval_set=(Xv, yv))
    assert isinstance(m.base_, LinearClassifier) and plain.base_ is None
    # additive risk: the base carries it, and the whole beats LightGBM alone
    assert roc_auc_score(yt, m.decision_function(Xt)) > roc_auc_score(yt, plain.decision_function(Xt))
    exp = m.explain(Xt.iloc[:300])
    assert np.allclose(exp.values.sum(axis=1) + exp.base_values, m.decision_function(Xt.iloc[:300]), atol=1e-6)
    m.save(tmp_path / "gbm")
    again = registry.load(tmp_path / "gbm", "gbm_early")
    assert again.base_ is not None
    assert np.allclose(again.decision_function(Xt), m.decision_function(Xt))
    base_json = tmp_path / "gbm" / "base" / "model.json"
    base_json.write_text(base_json.read_text().replace('"intercept": ', '"intercept": 1.0 + '))
    with pytest.raises(DataError, match="does not match its recorded hash"):
        registry.load(tmp_path / "gbm", "gbm_early")
