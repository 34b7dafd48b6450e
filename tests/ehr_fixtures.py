"""Tiny hand-made MIMIC-IV tables for unit tests (written in the real layout)."""
from pathlib import Path

import pandas as pd

PATIENTS = pd.DataFrame({
    "subject_id": [1, 2, 3, 4, 5, 6],
    "gender": ["M", "F", "M", "F", "M", "F"],
    "anchor_age": [70, 55, 16, 80, 60, 45],
    "anchor_year": [2150] * 6,
    "anchor_year_group": ["2011 - 2013"] * 6,
    "dod": ["", "2150-01-05", "", "2150-03-01", "", ""],
})
ADMISSIONS = pd.DataFrame({
    "subject_id": [1, 2, 3, 4, 5, 6, 1],
    "hadm_id": [11, 21, 31, 41, 51, 61, 12],
    "admittime": ["2150-01-01 08:00:00", "2150-01-01 08:00:00", "2150-01-01 08:00:00", "2150-03-01 00:00:00",
                  "2150-01-01 08:00:00", "2150-01-01 08:00:00", "2150-06-01 08:00:00"],
    "dischtime": ["2150-01-06 08:00:00", "2150-01-05 08:00:00", "2150-01-04 08:00:00", "2150-03-01 10:00:00",
                  "2150-01-01 20:00:00", "2150-01-09 08:00:00", "2150-06-03 08:00:00"],
    "deathtime": ["", "2150-01-05 08:00:00", "", "2150-03-01 10:00:00", "", "", ""],
    "admission_type": ["URGENT"] * 7,
    "race": ["WHITE", "BLACK", "WHITE", "ASIAN", "WHITE", "OTHER", "WHITE"],
    "hospital_expire_flag": [0, 1, 0, 1, 0, 0, 0],
})
LABS = pd.DataFrame({
    "labevent_id": [1, 2, 3, 4, 5, 6],
    "subject_id": [1, 1, 1, 2, 2, 6],
    "hadm_id": [11, 11, 11, 21, 21, 61],
    "specimen_id": [1, 2, 3, 4, 5, 6],
    "itemid": [50813, 50813, 50813, 50813, 50813, 50813],
    # subject 1: two values before the prediction time, one (999 -> implausible, and late) after
    "charttime": ["2150-01-01 10:00:00", "2150-01-02 06:00:00", "2150-01-03 06:00:00",
                  "2150-01-01 12:00:00", "2150-01-01 20:00:00", "2150-01-01 09:00:00"],
    "value": ["2.0", "4.0", "9.5", "6.0", "8.0", "1.0"],
    "valuenum": [2.0, 4.0, 9.5, 6.0, 8.0, 1.0],
    "valueuom": ["mmol/L"] * 6,
})
D_LABITEMS = pd.DataFrame({"itemid": [50813], "label": ["Lactate"], "fluid": ["Blood"], "category": ["Blood Gas"]})


def write_mimic(root: Path, patients=PATIENTS, admissions=ADMISSIONS, labs=LABS) -> Path:
    hosp = root / "hosp"
    hosp.mkdir(parents=True, exist_ok=True)
    patients.to_csv(hosp / "patients.csv.gz", index=False)
    admissions.to_csv(hosp / "admissions.csv.gz", index=False)
    if labs is not None:
        labs.to_csv(hosp / "labevents.csv.gz", index=False)
    D_LABITEMS.to_csv(hosp / "d_labitems.csv.gz", index=False)
    return root
