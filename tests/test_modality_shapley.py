"""Modality Shapley hides a modality the way a training row without it looks."""
import numpy as np
import pandas as pd

from pipeline.explain.modality import AbsenceTemplate, hide, modality_shapley
from pipeline.models.gbm import GBMClassifier

MODS = ["ehr", "ecg", "notes"]


def _table(n=900, seed=0):
    """As align writes it: age and sex for every row; EHR counts 0 and other EHR features
    NaN without EHR events; ECG and notes features NaN when absent; each modality absent
    for some rows, some rows with only the context."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 90, n)
    male = (rng.random(n) < 0.5).astype(float)
    has = {m: rng.random(n) < p for m, p in zip(MODS, (0.7, 0.5, 0.6))}
    lab = rng.normal(size=n)
    hr = rng.normal(size=n)
    txt = rng.normal(size=n)
    logit = -2 + 0.04 * (age - 60) + np.where(has["ehr"], lab, 0) + np.where(has["ecg"], hr, 0) \
        + np.where(has["notes"], txt, 0)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    X = pd.DataFrame({
        "ehr__lab__last": np.where(has["ehr"], lab, np.nan),
        "ehr__lab__count": np.where(has["ehr"], rng.integers(1, 5, n), 0).astype(float),
        "ehr__age": age, "ehr__gender_male": male,
        "ecg__hr": np.where(has["ecg"], hr, np.nan),
        "notes__text_risk": np.where(has["notes"], txt, np.nan),
        **{f"mask__{m}": has[m].astype(int) for m in MODS}})
    return X, y


def test_template_learns_context_and_the_absent_encoding():
    X, _ = _table()
    t = AbsenceTemplate.learn(X, MODS)
    assert set(t.context) == {"ehr__age", "ehr__gender_male"} and t.unobserved == []
    assert t.values["ehr"] == {"ehr__lab__last": None, "ehr__lab__count": 0.0}
    back = AbsenceTemplate.from_json(t.to_json())
    assert back == t


def test_empty_coalition_equals_the_output_for_a_real_context_only_row():
    X, y = _table()
    model = GBMClassifier(n_estimators=80, learning_rate=0.1).fit(X, y)
    t = AbsenceTemplate.learn(X, MODS)
    only_context = X[(X[[f"mask__{m}" for m in MODS]] == 0).all(axis=1)]
    assert len(only_context) > 5
    # hiding everything from a real context-only row changes nothing
    pd.testing.assert_frame_equal(hide(only_context, set(MODS), t), only_context)
    # hiding everything from any row gives a real context-only row's encoding, context kept
    hidden = hide(X, set(MODS), t)
    non_context = [c for c in X.columns if c not in t.context]
    row = only_context.iloc[0]
    for c in non_context:
        assert hidden[c].isna().all() if pd.isna(row[c]) else (hidden[c] == row[c]).all(), c
    assert (hidden[t.context] == X[t.context]).all().all()
    # so v(empty) for a patient = the model's output for a real patient with only its context
    twin = only_context.iloc[[0]]
    patient = X[(X[[f"mask__{m}" for m in MODS]] == 1).all(axis=1)].iloc[[0]].copy()
    patient[t.context] = twin[t.context].to_numpy()
    assert np.allclose(model.decision_function(hide(patient, set(MODS), t)), model.decision_function(twin))
    phi = modality_shapley(model.decision_function, X, MODS, t)
    assert np.allclose(phi.sum(axis=1), model.decision_function(X) - model.decision_function(hidden))
    for m in MODS:   # a modality the patient lacks contributes exactly 0
        assert np.allclose(phi.loc[X[f"mask__{m}"] == 0, m], 0.0)
    # the caller's logit for X as it is stands in for v(all): the same contributions
    pd.testing.assert_frame_equal(modality_shapley(model.decision_function, X, MODS, t,
                                                   full=model.decision_function(X)), phi)
    # hidden columns keep the dtypes a training row has (masks integer, features float)
    assert all(hidden[f"mask__{m}"].dtype == np.int64 for m in MODS) and hidden["ecg__hr"].dtype == np.float64


def test_a_modality_never_absent_in_training_is_reported_as_unobserved():
    X, _ = _table()
    X["mask__ecg"] = 1
    X["ecg__hr"] = X["ecg__hr"].fillna(0.0)
    t = AbsenceTemplate.learn(X, MODS)
    assert t.unobserved == ["ecg"] and t.values["ecg"] == {"ecg__hr": None}
