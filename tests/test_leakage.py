import numpy as np
import pandas as pd
import pytest

from pipeline.stages.leakage import LeakageError, audit, enforce


def _cohort(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"subject_id": np.arange(n), "hadm_id": np.arange(n) + 1000,
                         "prediction_time": pd.Timestamp("2150-01-02") + pd.to_timedelta(np.arange(n), "h"),
                         "label": (rng.random(n) < 0.3).astype(int),
                         "split": np.where(np.arange(n) % 5 == 0, "test", "train")})


def test_item_after_prediction_time_fails_with_the_item_listed():
    c = _cohort()
    times = pd.DataFrame({"hadm_id": c.hadm_id, "item_time": c.prediction_time - pd.Timedelta("1h")})
    times.loc[7, "item_time"] = c.prediction_time[7] + pd.Timedelta("1min")
    res = audit(c, {"ecg": times}, c.assign(x=0.0), ["x"])
    assert not res["passed"] and res["violations"][0]["hadm_id"] == 1007
    with pytest.raises(LeakageError, match="hadm_id=1007"):
        enforce(res)


def test_subject_in_two_splits_fails():
    c = _cohort()
    c.loc[1, "subject_id"] = 0
    c.loc[0, "split"], c.loc[1, "split"] = "test", "train"
    res = audit(c, {}, c.assign(x=0.0), ["x"])
    assert not res["passed"] and res["split_overlap"] == [0]


def test_suspicious_feature_is_a_warning_not_a_failure():
    c = _cohort()
    t = c.assign(leak=c.label * 10.0 + np.random.default_rng(1).random(len(c)), ok=np.random.default_rng(2).random(len(c)))
    res = audit(c, {}, t, ["leak", "ok"])
    assert res["passed"] and [w["feature"] for w in res["warnings"]] == ["leak"]
