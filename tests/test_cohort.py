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
