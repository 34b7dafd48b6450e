"""Per-modality imputation: strategies, indicators, masks kept, exact JSON replay, wrapper."""
import numpy as np
import pandas as pd
import pytest
from sklearn.experimental import enable_iterative_imputer  # noqa: F401
from sklearn.impute import IterativeImputer

from pipeline.errors import DataError
from pipeline.explain.modality import hide, modality_shapley
from pipeline.models import registry
from pipeline.models.gbm import GBMClassifier, LateFusionGBM
from pipeline.models.impute import ImputedClassifier, ModalityImputer


def _table(n=500, seed=0):
    """ECG features correlated with EHR ones; ECG absent for 40%, a few EHR values missing."""
    rng = np.random.default_rng(seed)
    a, c, noise, noise2 = rng.normal(size=(4, n))
    b = 0.9 * a + 0.3 * noise
    has_ecg = rng.random(n) < 0.6
    logit = -1.0 + a + 0.8 * b
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    ehr_c = np.where(rng.random(n) < 0.1, np.nan, c)
    X = pd.DataFrame({"ehr__a": a, "ehr__c": ehr_c, "ecg__b": np.where(has_ecg, b, np.nan),
                      "ecg__b2": np.where(has_ecg, 2 * b + 1 + noise2, np.nan),
                      "mask__ehr": 1, "mask__ecg": has_ecg.astype(int)})
    return X, y, b


def test_mean_and_median_fill_per_modality_with_indicators_and_masks_kept():
    X, _, _ = _table()
    imp = ModalityImputer({"ehr": "median", "ecg": "mean"}).fit(X)
    out = imp.transform(X)
    assert not out[["ehr__a", "ehr__c", "ecg__b", "ecg__b2"]].isna().any().any()
    assert out.loc[X.ecg__b.isna(), "ecg__b"].nunique() == 1
    assert out.loc[X.ecg__b.isna(), "ecg__b"].iloc[0] == pytest.approx(X.ecg__b.mean())
    assert out.loc[X.ehr__c.isna(), "ehr__c"].iloc[0] == pytest.approx(X.ehr__c.median())
    # indicators only for features that had missing values; masks untouched
    assert {"ehr__c__isna", "ecg__b__isna", "ecg__b2__isna"} <= set(out.columns)
    assert "ehr__a__isna" not in out.columns
    assert out["ecg__b__isna"].sum() == X.ecg__b.isna().sum()
    assert out["mask__ecg"].equals(X["mask__ecg"])
    # strategy 'none' leaves a modality as it is
    only = ModalityImputer({"ecg": "median"}, indicators=False).fit(X).transform(X)
    assert only["ehr__c"].isna().sum() == X.ehr__c.isna().sum() and "ecg__b__isna" not in only


def test_iterative_fills_from_other_modalities_and_replays_sklearn_exactly():
    X, _, b = _table()
    imp = ModalityImputer({"ecg": "iterative"}, indicators=False).fit(X)
    out = imp.transform(X)
    absent = X.ecg__b.isna().to_numpy()
    # filled from ehr__a (correlated): far better than the mean
    err_iter = np.abs(out.loc[absent, "ecg__b"] - b[absent]).mean()
    err_mean = np.abs(X.ecg__b.mean() - b[absent]).mean()
    assert err_iter < 0.6 * err_mean
    assert out["ehr__c"].isna().sum() == X.ehr__c.isna().sum()   # only the chosen modality is written
    # the JSON replay equals scikit-learn's own transform
    cols = imp.iterative_["columns"]
    ref = IterativeImputer(max_iter=5, n_nearest_features=min(20, len(cols) - 1), initial_strategy="median",
                           skip_complete=True, keep_empty_features=True, random_state=0).fit(X[cols].to_numpy())
    expect = ref.transform(X[cols].to_numpy())
    assert np.allclose(out["ecg__b"], expect[:, cols.index("ecg__b")])
    back = ModalityImputer.from_json(imp.to_json())
    pd.testing.assert_frame_equal(back.transform(X), out)


def test_unknown_strategy_and_missing_feature_are_clear_errors():
    X, _, _ = _table()
    with pytest.raises(DataError, match="unknown imputation strategy 'knn'"):
        ModalityImputer({"ecg": "knn"}).fit(X)
    imp = ModalityImputer({"ecg": "mean"}).fit(X)
    with pytest.raises(DataError, match="ecg__b2"):
        imp.transform(X.drop(columns=["ecg__b2"]))


@pytest.mark.parametrize("inner, kind", [(GBMClassifier(n_estimators=40), "gbm_only"),
                                         (LateFusionGBM(gbm_params={"n_estimators": 30}), "gbm_late")])
def test_imputed_classifier_round_trip_and_folded_explanation(tmp_path, inner, kind):
    X, y, _ = _table()
    m = ImputedClassifier(ModalityImputer({"ecg": "iterative", "ehr": "median"}), inner).fit(X[:350], y[:350])
    m.save(tmp_path / "m")
    back = registry.load(tmp_path / "m", kind)
    assert np.allclose(back.decision_function(X), m.decision_function(X))
    exp = back.explain(X)
    assert exp.feature_names == list(X.columns)                      # indicators folded into their features
    assert len(exp.feature_modality) == len(X.columns) and exp.feature_modality[2] == "ecg"
    assert np.allclose(exp.values.sum(1) + exp.base_values, m.decision_function(X), atol=1e-6)
    assert np.isnan(exp.data[X.ecg__b.isna().to_numpy(), 2]).all()   # shown as recorded (missing), not imputed
    # modality Shapley through the imputer: an absent modality still contributes exactly 0
    phi = modality_shapley(m.decision_function, X, ["ehr", "ecg"])
    assert np.allclose(phi.loc[X.mask__ecg == 0, "ecg"], 0.0)
    assert np.allclose(phi.sum(1), m.decision_function(X) - m.decision_function(hide(X, {"ehr", "ecg"})))


def test_late_fusion_learns_an_offset_for_an_absent_modality():
    """Hiding a modality the stacker always saw must not shift risk arbitrarily: the
    stacker is fitted on copies with each modality hidden."""
    rng = np.random.default_rng(1)
    n = 1500
    a, b = rng.normal(size=(2, n))
    y = (rng.random(n) < 1 / (1 + np.exp(-(-1 + 1.5 * a + 1.5 * b)))).astype(int)
    X = pd.DataFrame({"ehr__a": a, "ecg__b": b, "mask__ehr": 1, "mask__ecg": 1})
    m = LateFusionGBM(gbm_params={"n_estimators": 60}).fit(X, y)
    from sklearn.metrics import roc_auc_score
    half = rng.random(n) < 0.5
    X50 = X.copy()
    X50.loc[half] = hide(X.loc[half], {"ehr"})
    full, none = roc_auc_score(y, m.decision_function(X)), roc_auc_score(y, m.decision_function(hide(X, {"ehr"})))
    d50 = full - roc_auc_score(y, m.decision_function(X50))
    assert d50 <= (full - none) + 0.01
    # without the hidden copies the mask coefficient is unidentified (always 1) and the same check fails
    m0 = LateFusionGBM(gbm_params={"n_estimators": 60}, hide_augment=False).fit(X, y)
    d50_0 = roc_auc_score(y, m0.decision_function(X)) - roc_auc_score(y, m0.decision_function(X50))
    assert d50_0 > d50


@pytest.mark.parametrize("primary", ["gbm_early", "fusion_early"])
def test_train_with_imputation_config_then_score_in_a_new_job(synth_root, tmp_path, primary):
    from pipeline.config import RunConfig
    from pipeline.jobs.score import score
    from pipeline.jobs.train import train
    cfg = RunConfig.model_validate({"model": {
        "gbm_estimators": 60, "fusion_models": [primary], "primary": primary, "single_modality_baselines": False,
        "fusion_members": 1, "imputation": {"ecg": "iterative", "notes": "mean", "imaging": "median"}}})
    train(synth_root, tmp_path / "run", cfg, report=False)
    saved = (tmp_path / "run" / "model" / "primary" / "model.json").read_text()
    assert '"ImputedClassifier"' in saved and '"iterative"' in saved
    t = pd.read_parquet(tmp_path / "run" / "test_scores.parquet")
    assert t["reasons"].str.len().gt(0).all()
    assert "__isna" not in " ".join(t["reasons"])        # reasons name recorded features, not indicators
    from pipeline.explain.explanation import Explanation
    exp = Explanation.load(tmp_path / "run" / "explanation")
    assert not any(f.endswith("__isna") for f in exp.feature_names)
    assert len(exp.feature_modality) == len(exp.feature_names) == exp.values.shape[1]
    if primary.startswith("fusion"):                     # the net's waveform/image attributions are kept
        assert "ecg__waveform" in exp.feature_names and np.abs(exp.values).sum() > 0
    s = score(tmp_path / "run", synth_root, tmp_path / "s.parquet").set_index("hadm_id").loc[t.hadm_id]
    assert np.allclose(s["risk"].to_numpy(), t["risk"].to_numpy(), atol=1e-6)
    mods = ["ehr", "ecg", "notes", "imaging"]
    assert np.allclose(s[mods].to_numpy(), t[mods].to_numpy(), atol=1e-5)
