"""eICU stays on one per-patient timeline in their real years; readmission refused."""
import pandas as pd
import pytest

from pipeline.config import TaskConfig
from pipeline.errors import DataError, Quarantine
from pipeline.sources.eicu import check_task, ingest_eicu


def test_stays_follow_real_years_and_unit_offsets(tmp_path):
    rows = [  # uniquepid, health-system stay, unit stay, age, year, admit offset, disch offset, unit disch offset
        ("p1", 100, 1000, 60, 2014, -120, 3000, 600),
        ("p1", 101, 1010, 61, 2015, -60, 2000, 500),
        ("p1", 101, 1011, 61, 2015, -2000, 60, 40),     # second unit stay of stay 101
        ("p1", 102, 1020, 61, 2015, 0, 1000, 900),
        ("p2", 200, 2000, 70, 2015, 0, 500, 400)]
    df = pd.DataFrame(rows, columns=["uniquepid", "patienthealthsystemstayid", "patientunitstayid", "age",
                                     "hospitaldischargeyear", "hospitaladmitoffset", "hospitaldischargeoffset",
                                     "unitdischargeoffset"])
    df["gender"], df["hospitaldischargestatus"] = "Female", "Alive"
    (tmp_path / "in").mkdir()
    df.to_csv(tmp_path / "in" / "patient.csv", index=False)
    ingest_eicu(tmp_path / "in", tmp_path / "out", Quarantine())
    adm = pd.read_parquet(tmp_path / "out" / "admissions.parquet").set_index("hadm_id")
    icu = pd.read_parquet(tmp_path / "out" / "icustays.parquet").set_index("stay_id")
    assert adm.loc[100, "admittime"] == pd.Timestamp("2014-01-01")
    assert adm.loc[101, "admittime"] == pd.Timestamp("2015-01-01")
    # 102 is in the same year as 101: after 101's discharge, not a year later
    assert adm.loc[101, "dischtime"] < adm.loc[102, "admittime"] < pd.Timestamp("2016-01-01")
    assert icu.loc[1011, "intime"] == pd.Timestamp("2015-01-01") + pd.Timedelta(minutes=2000)
    assert icu.loc[1010, "intime"] == pd.Timestamp("2015-01-01") + pd.Timedelta(minutes=60)
    pat = pd.read_parquet(tmp_path / "out" / "patients.parquet").set_index("subject_id")
    assert pat.loc[1, "anchor_year"] == 2014 and pat.loc[1, "anchor_age"] == 60
    with pytest.raises(DataError, match="readmission"):
        check_task(TaskConfig(name="readmission30"))
    check_task(TaskConfig(name="mortality"))
