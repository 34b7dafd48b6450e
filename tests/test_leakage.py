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


def test_notes_availability_is_rederived_from_the_raw_note_file(tmp_path):
    """Each note the featuriser used is looked up in the raw file: a note stored after the
    prediction time, or a timed note with no storetime, is a violation; notes charted in the
    look-back but not yet available are counted as held back, by reason."""
    import pandas as pd
    from pipeline.stages import leakage
    from pipeline.stages.availability import audit_notes
    raw = pd.DataFrame({
        "note_id": ["n1", "n2", "n3", "n4", "n5"], "subject_id": [1, 1, 1, 1, 1], "hadm_id": [10, 10, 10, 10, 9],
        "note_type": ["RR", "RR", "RR", "DS", "DS"],
        "charttime": ["2150-01-01 08:00:00", "2150-01-01 20:00:00", "2150-01-02 06:00:00", "2150-01-02",
                      "2149-12-01"],
        "storetime": ["2150-01-01 09:00:00", "2150-01-02 10:00:00", "", "", ""],
        "text": ["a", "b", "c", "d", "e"]})
    (tmp_path / "note").mkdir()
    raw.to_csv(tmp_path / "note" / "radiology.csv.gz", index=False)
    cohort = pd.DataFrame({"subject_id": [1], "hadm_id": [10], "prediction_time": pd.to_datetime(["2150-01-02 08:00"])})
    files = [str(tmp_path / "note" / "radiology.csv.gz")]

    def run(used: list[str]) -> dict:
        pd.DataFrame({"hadm_id": [10] * len(used), "note_id": used}).to_parquet(tmp_path / "used.parquet")
        return audit_notes(cohort, tmp_path / "used.parquet", files, 24 * 30, tmp_path)

    ok = run(["n1", "n5"])          # stored before; an earlier admission's date-only summary (end of its day)
    assert ok["usable"] == 2 and ok["used_before_available"] == 0
    # held back: n2 stored after the prediction time, n3 timed with no storetime; the current
    # admission's discharge summary n4 is never a candidate
    assert ok["held_back"] == {"note stored later": 1, "note no storetime": 1}
    bad = run(["n1", "n2", "n3", "nX"])   # stored later, never available, absent from the raw file
    assert bad["used_before_available"] == 3
    assert {v["note_id"] for v in bad["violations"]} == {"n2", "n3", "nX"}
    result = leakage.add_notes_availability({"passed": True, "violations": []}, bad)
    assert not result["passed"] and result["availability"]["per_source"]["notes"]["used_before_available"] == 3
