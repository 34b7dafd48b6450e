import pandas as pd
import pytest

from pipeline.config import TaskConfig
from pipeline.errors import DataError, Quarantine
from pipeline.sources.mimic_iv import read_admissions, read_patients
from pipeline.stages.cohort import assign_splits, build_cohort
from tests.ehr_fixtures import write_mimic


@pytest.fixture
def tables(tmp_path):
    root = write_mimic(tmp_path / "m")
    q = Quarantine()
    p = read_patients(root, q)
    return p, read_admissions(root, q, p)


def test_mortality_rules(tables):
    cohort, counts = build_cohort(*tables, None, TaskConfig())
    # 31: minor; 41: died within 24 h; 51: discharged before 24 h
    assert set(cohort["hadm_id"]) == {11, 12, 21, 61}
    assert counts["excluded_minor"] == 1
    assert counts["excluded_died_before_prediction"] == 1
    assert counts["excluded_discharged_before_prediction"] == 1
    row = cohort.set_index("hadm_id").loc[11]
    assert row.prediction_time == pd.Timestamp("2150-01-02 08:00:00")
    assert cohort.set_index("hadm_id").loc[21, "label"] == 1
    assert cohort["hadm_id"].is_unique


def test_los_and_readmission(tables):
    los3, _ = build_cohort(*tables, None, TaskConfig(name="los3"))
    assert los3.set_index("hadm_id").loc[11, "label"] == 1 and los3.set_index("hadm_id").loc[12, "label"] == 0
    rea, _ = build_cohort(*tables, None, TaskConfig(name="readmission30"))
    assert 21 not in set(rea["hadm_id"])  # died
    assert rea.set_index("hadm_id").loc[11, "label"] == 0  # next admission 5 months later


def test_icu_mortality_needs_icustays(tables):
    with pytest.raises(DataError, match="icustays"):
        build_cohort(*tables, None, TaskConfig(name="icu_mortality"))


def test_empty_cohort_is_a_clear_error(tables):
    with pytest.raises(DataError, match="cohort is empty"):
        build_cohort(*tables, None, TaskConfig(prediction_hours=24 * 365))


def test_splits_by_subject_stratified_and_seeded():
    import numpy as np
    rng = np.random.default_rng(0)
    subj = np.repeat(np.arange(400), 2)
    df = pd.DataFrame({"subject_id": subj, "label": (rng.random(800) < 0.15).astype(int)})
    a = assign_splits(df, TaskConfig(seed=3))
    b = assign_splits(df, TaskConfig(seed=3))
    assert (a == b).all()
    assert (df.assign(s=a).groupby("subject_id")["s"].nunique() == 1).all()
    frac = a.value_counts(normalize=True)
    assert abs(frac["test"] - 0.2) < 0.03 and abs(frac["valid"] - 0.15) < 0.03
    pos = df.assign(s=a).groupby("s")["label"].mean()
    assert pos.max() - pos.min() < 0.08
    assert not (assign_splits(df, TaskConfig(seed=4)) == a).all()


# ---------------------------------------------------------------- hand-built label cases
def _tables(rows, dod=None):
    """rows: (subject, hadm, admittime, dischtime, deathtime or None, expire flag)."""
    adm = pd.DataFrame(rows, columns=["subject_id", "hadm_id", "admittime", "dischtime", "deathtime",
                                      "hospital_expire_flag"])
    for c in ("admittime", "dischtime", "deathtime"):
        adm[c] = pd.to_datetime(adm[c], format="ISO8601")
    subj = sorted(adm["subject_id"].unique())
    pat = pd.DataFrame({"subject_id": subj, "gender": "F", "anchor_age": 60, "anchor_year": 2150,
                        "dod": pd.to_datetime([(dod or {}).get(s) for s in subj])})
    return pat, adm


def _labels(pat, adm, counts=False, **task):
    cohort, c = build_cohort(pat, adm, task.pop("icustays", None), TaskConfig(**task))
    labels = cohort.set_index("hadm_id")["label"].to_dict()
    return (labels, c) if counts else labels


def test_los_death_in_hospital_is_not_a_short_stay():
    pat, adm = _tables([(1, 10, "2150-01-01", "2150-01-03", "2150-01-03", 1),    # died on day 2
                        (2, 20, "2150-01-01", "2150-01-03", None, 0),            # discharged on day 2
                        (3, 30, "2150-01-01", "2150-01-10", None, 0)])           # 9 days
    assert _labels(pat, adm, name="los3") == {10: 1, 20: 0, 30: 1}
    assert _labels(pat, adm, name="los7") == {10: 1, 20: 0, 30: 1}


def test_missing_dischtime_is_excluded_and_counted_never_label_0():
    pat, adm = _tables([(1, 10, "2150-01-01", None, None, 0),
                        (2, 20, "2150-01-01", "2150-01-10", None, 0),
                        (3, 30, "2150-01-01", None, "2150-01-04", 1),            # died: outcome known
                        (4, 40, "2150-06-01", "2150-06-05", None, 0)])           # extends the data
    for name in ("mortality", "los3", "los7", "readmission30"):
        labels, c = _labels(pat, adm, counts=True, name=name)
        assert 10 not in labels and c["excluded_no_discharge_time"] == 1, name
    assert _labels(pat, adm, name="mortality") == {20: 0, 30: 1, 40: 0}


def test_readmission_transfers_overlaps_deaths_and_censoring():
    pat, adm = _tables([
        (1, 10, "2150-01-01", "2150-01-05", None, 0), (1, 11, "2150-01-05 02:00", "2150-01-08", None, 0),  # transfer
        (1, 12, "2150-01-20", "2150-01-22", None, 0),                             # 12 days after 11: readmission
        (2, 20, "2150-01-01", "2150-01-10", None, 0), (2, 21, "2150-01-03", "2150-01-04", None, 0),  # overlap
        (3, 30, "2150-01-01", "2150-01-05", None, 0),                             # dies 10 days after discharge
        (4, 40, "2150-01-01", "2150-01-05", None, 0), (4, 41, "2150-01-12", "2150-01-14", "2150-01-14", 1),
        (5, 50, "2150-01-01", "2150-01-03", None, 0),                             # nothing follows: 0
        (6, 60, "2150-05-01", "2150-05-02", None, 0),                             # window past the data end
        (7, 70, "2150-05-10", "2150-05-20", None, 0)],                            # the end of the data
        dod={3: "2150-01-15", 4: "2150-01-14"})
    labels, c = _labels(pat, adm, counts=True, name="readmission30")
    # 10 continues into 11 (a transfer, 2 h later): one episode, index 11, readmitted by 12
    assert 10 not in labels and labels[11] == 1
    # 21 lies inside 20: one episode ending at 20, nothing after it
    assert 21 not in labels and labels[20] == 0
    assert c["excluded_transfer_or_overlap"] == 2
    # 30 died after discharge without readmission: competing event, excluded
    assert 30 not in labels and c["excluded_died_within_30d_before_readmission"] == 1
    # 40 was readmitted before dying: 1; 41 died in hospital: not an index stay
    assert labels[40] == 1 and 41 not in labels
    assert labels[50] == 0
    # 60's window (to 2150-06-01) and 70's run past the end of the data (2150-05-20): censored
    assert 60 not in labels and 70 not in labels and c["excluded_censored_end_of_data"] == 2
    assert labels[12] == 0    # its window ends before the data does, and nothing follows


def test_readmission_scoring_keeps_recent_discharges_with_the_outcome_unknown():
    """Training censors a stay whose 30-day window runs past the end of the data; a scoring job
    (a live extract) keeps it with label -1: a recently discharged patient is whom it scores."""
    pat, adm = _tables([(1, 10, "2150-01-01", "2150-01-05", None, 0), (1, 11, "2150-01-20", "2150-01-22", None, 0),
                        (2, 20, "2150-01-01", "2150-01-03", None, 0),                # window complete: 0
                        (3, 30, "2150-01-01", "2150-01-05", None, 0),                # dies before any readmission
                        (4, 40, "2150-02-10", "2150-02-12", None, 0),                # discharged 8 days before the end
                        (5, 50, "2150-02-15", "2150-02-20", None, 0)],               # the end of the data
                       dod={3: "2150-01-15"})
    train, _ = build_cohort(pat, adm, None, TaskConfig(name="readmission30"))
    assert set(train["hadm_id"]) == {10, 20}            # 11's window ends 2150-02-21 > 2150-02-20: censored
    scored, c = build_cohort(pat, adm, None, TaskConfig(name="readmission30"), require_outcomes=False)
    labels = scored.set_index("hadm_id")["label"].to_dict()
    assert labels == {10: 1, 11: -1, 20: 0, 30: -1, 40: -1, 50: -1}
    assert c["outcome_unknown_at_data_end"] == 4


def test_icu_mortality_counts_death_within_6_hours_of_icu_discharge_and_excludes_missing_outtime():
    pat, adm = _tables([(1, 10, "2150-01-01", "2150-01-05", "2150-01-04 03:00", 1),   # 3 h after ICU out
                        (2, 20, "2150-01-01", "2150-01-05", "2150-01-04 12:00", 1),   # 12 h after ICU out
                        (3, 30, "2150-01-01", "2150-01-09", None, 0),
                        (4, 40, "2150-01-01", "2150-01-09", None, 0)])                # no outtime
    icu = pd.DataFrame({"subject_id": [1, 2, 3, 4], "hadm_id": [10, 20, 30, 40], "stay_id": [1, 2, 3, 4],
                        "intime": pd.to_datetime(["2150-01-01 06:00"] * 4),
                        "outtime": pd.to_datetime(["2150-01-04", "2150-01-04", "2150-01-06", None])})
    labels, c = _labels(pat, adm, counts=True, name="icu_mortality", icustays=icu)
    assert labels == {10: 1, 20: 0, 30: 0} and c["excluded_no_icu_outtime"] == 1


def test_anchor_intime_predicts_from_the_first_icu_stay():
    pat, adm = _tables([(1, 10, "2150-01-01", "2150-01-09", None, 0), (2, 20, "2150-01-01", "2150-01-09", None, 0)])
    icu = pd.DataFrame({"subject_id": [1], "hadm_id": [10], "stay_id": [1],
                        "intime": pd.to_datetime(["2150-01-03 00:00"]), "outtime": pd.to_datetime(["2150-01-05"])})
    cohort, c = build_cohort(pat, adm, icu, TaskConfig(anchor="intime", prediction_hours=6))
    assert cohort["hadm_id"].tolist() == [10] and c["excluded_no_icu_stay"] == 1
    assert cohort["prediction_time"].iloc[0] == pd.Timestamp("2150-01-03 06:00")
    with pytest.raises(DataError, match="icustays"):
        build_cohort(pat, adm, None, TaskConfig(anchor="intime"))
