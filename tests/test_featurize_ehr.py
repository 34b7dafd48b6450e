import pandas as pd

from pipeline.config import EHRConfig, TaskConfig
from pipeline.errors import Quarantine
from pipeline.sources.mimic_iv import ingest_mimic_iv
from pipeline.stages.cohort import build_cohort
from pipeline.stages.featurize_ehr import featurize_ehr
from tests.ehr_fixtures import write_mimic


def _run(tmp_path, codes=None):
    root = write_mimic(tmp_path / "m")
    ingest_mimic_iv(root, tmp_path / "ing", Quarantine())
    cohort, _ = build_cohort(pd.read_parquet(tmp_path / "ing" / "patients.parquet"),
                             pd.read_parquet(tmp_path / "ing" / "admissions.parquet"), None, TaskConfig())
    cohort["split"] = "train"
    (tmp_path / "fe").mkdir()
    featurize_ehr(cohort, tmp_path / "ing", EHRConfig(), tmp_path / "fe", codes=codes)
    return cohort, pd.read_parquet(tmp_path / "fe" / "features.parquet").set_index("hadm_id")


def test_no_event_after_prediction_time_is_used(tmp_path):
    cohort, f = _run(tmp_path, codes=["lab:50813"])
    r = f.loc[11]
    # values 2.0 (01-01 10:00) and 4.0 (01-02 06:00) are before 01-02 08:00; 9.5 is after
    assert r["ehr__lab:50813__last"] == 4.0 and r["ehr__lab:50813__max"] == 4.0
    assert r["ehr__lab:50813__count"] == 2 and r["ehr__lab:50813__mean"] == 3.0
    assert abs(r["ehr__lab:50813__slope"] - 2.0 / 20) < 1e-9
    assert abs(r["ehr__lab:50813__hours_since_last"] - 2.0) < 1e-9
    pt = cohort.set_index("hadm_id")["prediction_time"]
    assert (f["item_time"].dropna() <= pt.reindex(f["item_time"].dropna().index)).all()


def test_row_without_events_has_zero_count_and_nan_values(tmp_path):
    _, f = _run(tmp_path, codes=["lab:50813"])
    r = f.loc[12]  # second admission of subject 1, no labs in its window
    assert r["ehr__lab:50813__count"] == 0 and pd.isna(r["ehr__lab:50813__last"])
    assert r["ehr__age"] == 70 and r["ehr__gender_male"] == 1


def test_codes_chosen_from_train_rows_only(tmp_path):
    from tests.ehr_fixtures import LABS
    # lab 50813 is measured in admissions 11, 21 and 61; lab 50912 (creatinine) in 21 and 61 only.
    # A code needs two train admissions: with 21 in test, 50912 has one and is left out.
    extra = LABS.iloc[[3, 5]].assign(labevent_id=[7, 8], itemid=50912, valuenum=[1.0, 1.1], valueuom="mg/dL")
    root = write_mimic(tmp_path / "m", labs=pd.concat([LABS, extra], ignore_index=True))
    ingest_mimic_iv(root, tmp_path / "ing", Quarantine())
    cohort, _ = build_cohort(pd.read_parquet(tmp_path / "ing" / "patients.parquet"),
                             pd.read_parquet(tmp_path / "ing" / "admissions.parquet"), None, TaskConfig())
    for name, test_hadm in (("a", 21), ("b", 11)):
        c = cohort.assign(split=lambda d: d["hadm_id"].map(lambda h: "test" if h == test_hadm else "train"))
        (tmp_path / name).mkdir()
        featurize_ehr(c, tmp_path / "ing", EHRConfig(), tmp_path / name)
        cols = pd.read_parquet(tmp_path / name / "features.parquet").columns
        # a: one of 50912's admissions is test, so it is not a feature; b: both are train
        assert ("ehr__lab:50912__last" in cols) == (name == "b"), name
        assert "ehr__lab:50813__last" in cols


def test_implausible_values_are_dropped(tmp_path):
    from tests.ehr_fixtures import LABS
    labs = LABS.copy()
    labs.loc[1, "valuenum"] = 999.0  # lactate 999 mmol/L is a recording error
    root = write_mimic(tmp_path / "m", labs=labs)
    ingest_mimic_iv(root, tmp_path / "ing", Quarantine())
    cohort, _ = build_cohort(pd.read_parquet(tmp_path / "ing" / "patients.parquet"),
                             pd.read_parquet(tmp_path / "ing" / "admissions.parquet"), None, TaskConfig())
    (tmp_path / "fe").mkdir()
    featurize_ehr(cohort, tmp_path / "ing", EHRConfig(), tmp_path / "fe", codes=["lab:50813"])
    f = pd.read_parquet(tmp_path / "fe" / "features.parquet").set_index("hadm_id")
    assert f.loc[11, "ehr__lab:50813__max"] == 2.0


def test_unordered_real_events_are_split_by_shard_with_the_same_features(mimic_demo, tmp_path):
    """The MIMIC-IV demo's labevents are not ordered by subject, so shards reading by subject range
    would each read the whole file: the events are split by shard first.  Both ways (and one shard)
    give the same features, and no split folder is left behind."""
    from pipeline.engine import subject_shards
    from pipeline.stages.featurize_ehr import clustered
    ingest_mimic_iv(mimic_demo, tmp_path / "ing", Quarantine())
    cohort, _ = build_cohort(pd.read_parquet(tmp_path / "ing" / "patients.parquet"),
                             pd.read_parquet(tmp_path / "ing" / "admissions.parquet"),
                             pd.read_parquet(tmp_path / "ing" / "icustays.parquet"), TaskConfig())
    cohort["split"] = "train"
    ordered = cohort.sort_values(["subject_id", "hadm_id"])
    events = tmp_path / "ing" / "events.parquet"
    assert not clustered(events, subject_shards(ordered, 20))        # real file order: not clustered
    assert clustered(events, subject_shards(ordered, 10_000))         # one shard reads the file once anyway
    frames = {}
    for name, rows, split in (("auto", 20, None), ("range", 20, False), ("one", 10_000, None)):
        info = featurize_ehr(cohort, tmp_path / "ing", EHRConfig(), tmp_path / name, shard_rows=rows, split=split)
        assert info["events_split"] == (name == "auto")
        assert (info["shards"] == 1) if rows > 100 else (info["shards"] > 1)
        assert not (tmp_path / name / ".events_by_shard").exists()
        frames[name] = pd.read_parquet(tmp_path / name / "features.parquet")
    assert frames["auto"]["ehr__lab:50912__count"].gt(0).sum() > 20     # creatinine seen in many admissions
    pd.testing.assert_frame_equal(frames["auto"], frames["range"])
    pd.testing.assert_frame_equal(frames["auto"], frames["one"])
