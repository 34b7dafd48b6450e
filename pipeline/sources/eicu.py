"""eICU-CRD (v2.0 and its demo) into the same canonical tables as MIMIC-IV.

eICU has no absolute times: every time is a minute offset from the unit admission
of one ``patientunitstayid``.  The adapter puts a patient's hospital stays
(``patienthealthsystemstayid`` -> hadm_id) on one timeline per patient: each stay in its
real ``hospitaldischargeyear`` (admitted on 1 January of that year, or ``STAY_GAP_DAYS``
after the patient's previous discharge if that is later; stays in the same year are in
``hadm_id`` order), its unit stays (``unitvisitnumber``) at ``-hospitaladmitoffset``
minutes after the hospital admission.  Ages therefore follow the real years.  eICU
records no time between two hospital stays, so the gaps are not data: a 30-day
readmission cannot be derived and ``check_task`` refuses ``readmission30``.  Ids: uniquepid -> subject_id (its rank,
1-based), patientunitstayid -> stay_id.  Ages "> 89" become 90.  A hospital
discharge status "Expired" sets hospital_expire_flag and deathtime = dischtime.
Labs become events ``lab:<labname>``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from data_schemas.tables import ADMISSIONS, CODES, EVENTS, ICUSTAYS, PATIENTS
from pipeline.artifacts import read_parquet, write_parquet
from pipeline.errors import DataError, Quarantine
from pipeline.sources.tables import find_table

SOURCE = "eicu"
STAY_GAP_DAYS = 90   # spacing of stays in one year: longer than any lookback (real gap not recorded)
PATIENT_COLS = ["patientunitstayid", "patienthealthsystemstayid", "uniquepid", "gender", "age",
                "hospitaladmitoffset", "hospitaldischargeoffset", "unitdischargeoffset",
                "hospitaldischargestatus", "hospitaldischargeyear"]
LAB_COLS = ["patientunitstayid", "labresultoffset", "labname", "labresult"]


def is_eicu(folder: Path) -> bool:
    p = find_table(folder, "patient")
    if p is None or find_table(folder, "admissions") is not None:
        return False
    head = pd.read_csv(p, nrows=0).columns if p.suffix != ".parquet" else read_parquet(p).columns
    return "patientunitstayid" in head


def _read(path: Path, required: list[str]) -> pd.DataFrame:
    df = read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, low_memory=False)
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"required column(s) {missing} missing; found {list(df.columns)[:15]}", file=path,
                        field=missing[0])
    return df


def check_task(task) -> None:
    """A DataError for a task eICU's timeline cannot define (readmission30: the time between
    a patient's hospital stays is not recorded)."""
    if task.name == "readmission30":
        raise DataError("eICU records no time between a patient's hospital stays, so 30-day readmission is "
                        "undefined on it", field="task.name", hint="use mortality, icu_mortality, los3 or los7")


def _stay_starts(p: pd.DataFrame, path: Path) -> pd.Series:
    """Hospital admission time of each hadm_id on its patient's timeline (see the module doc)."""
    year = pd.to_numeric(p["hospitaldischargeyear"], errors="coerce")
    if year.isna().any():
        i = int(np.flatnonzero(year.isna().to_numpy())[0])
        raise DataError("hospitaldischargeyear is missing or not a year", file=path, row=i + 2,
                        field="hospitaldischargeyear")
    unit = p.assign(year=year.astype(int),
                    before=pd.to_numeric(p["hospitaladmitoffset"], errors="coerce").fillna(0),
                    after=pd.to_numeric(p["hospitaldischargeoffset"], errors="coerce").fillna(0))
    # a stay's length: from its hospital admission to its hospital discharge (minutes)
    length = (unit["after"] - unit["before"]).groupby(unit["hadm_id"]).max()
    stays = unit.drop_duplicates("hadm_id").sort_values(["subject_id", "year", "hadm_id"])
    starts, prev_subject, prev_end = {}, None, None
    gap = pd.Timedelta(days=STAY_GAP_DAYS)
    for subject, hadm, yr in stays[["subject_id", "hadm_id", "year"]].itertuples(index=False):
        start = pd.Timestamp(year=int(yr), month=1, day=1)
        if subject == prev_subject and prev_end + gap > start:
            start = prev_end + gap
        starts[hadm] = start
        prev_subject, prev_end = subject, start + pd.to_timedelta(length[hadm], unit="m")
    return pd.Series(starts)


def ingest_eicu(root: Path, out_dir: Path, q: Quarantine) -> dict:
    root, out_dir = Path(root), Path(out_dir)
    ppath = find_table(root, "patient")
    p = _read(ppath, PATIENT_COLS)
    age = pd.to_numeric(p["age"].astype(str).str.replace(">", "").str.strip(), errors="coerce")
    age = age.where(~p["age"].astype(str).str.contains(">"), age + 1)         # "> 89" -> 90
    bad_age = age.isna()
    for i in np.flatnonzero(bad_age.to_numpy()):
        q.add(SOURCE, ppath, int(i) + 2, "age", "missing or unparseable age")
    p = p[~bad_age].assign(age=age[~bad_age].astype(int))
    subj = {u: i + 1 for i, u in enumerate(sorted(p["uniquepid"].astype(str).unique()))}
    p["subject_id"] = p["uniquepid"].astype(str).map(subj).astype("int64")
    p["hadm_id"] = p["patienthealthsystemstayid"].astype("int64")
    hosp_admit = p["hadm_id"].map(_stay_starts(p, ppath))
    p["unit_admit"] = hosp_admit - pd.to_timedelta(p["hospitaladmitoffset"], unit="m")
    p["admittime"] = hosp_admit
    p["dischtime"] = p["unit_admit"] + pd.to_timedelta(p["hospitaldischargeoffset"], unit="m")
    p["intime"] = p["unit_admit"]
    p["outtime"] = p["unit_admit"] + pd.to_timedelta(p["unitdischargeoffset"], unit="m")
    expired = p["hospitaldischargestatus"].astype(str).str.lower().eq("expired")

    patients = (p.sort_values("hadm_id").drop_duplicates("subject_id")
                 .assign(gender=lambda d: d["gender"].astype(str).str[:1].str.upper(),
                         anchor_age=lambda d: d["age"].astype("int64"),
                         anchor_year=lambda d: d["admittime"].dt.year.astype("int64"), dod=pd.NaT))
    patients = patients[["subject_id", "gender", "anchor_age", "anchor_year", "dod"]].reset_index(drop=True)
    patients["dod"] = patients["dod"].astype("datetime64[ns]")
    adm = (p.assign(hospital_expire_flag=expired.astype("int64"),
                    deathtime=p["dischtime"].where(expired), race=p.get("ethnicity"))
            .sort_values("unit_admit").drop_duplicates("hadm_id"))
    adm = adm[["subject_id", "hadm_id", "admittime", "dischtime", "deathtime", "hospital_expire_flag", "race"]]
    adm["race"] = adm["race"].astype(object)
    icu = p[["subject_id", "hadm_id", "patientunitstayid", "intime", "outtime"]].rename(
        columns={"patientunitstayid": "stay_id"})
    icu["hadm_id"] = icu["hadm_id"].astype("Int64")

    tables_absent = []
    lpath = find_table(root, "lab")
    if lpath is not None:
        lab = _read(lpath, LAB_COLS)
        unit_admit = p.set_index("patientunitstayid")["unit_admit"]
        keys = p.set_index("patientunitstayid")[["subject_id", "hadm_id"]]
        lab = lab[lab["patientunitstayid"].isin(unit_admit.index)]
        value = pd.to_numeric(lab["labresult"], errors="coerce")
        ev = pd.DataFrame({
            "subject_id": lab["patientunitstayid"].map(keys["subject_id"]).astype("int64").to_numpy(),
            "hadm_id": lab["patientunitstayid"].map(keys["hadm_id"]).astype("float64").to_numpy(),
            "time": (lab["patientunitstayid"].map(unit_admit)
                     + pd.to_timedelta(lab["labresultoffset"], unit="m")).astype("datetime64[ns]").to_numpy(),
            "code": ("lab:" + lab["labname"].astype(str)).to_numpy(),
            "value": value.to_numpy(),
            "unit": lab.get("labmeasurenamesystem", pd.Series(index=lab.index, dtype=object)).astype(object).to_numpy(),
            "source": "lab"})
        ev["known_time"] = ev["time"]  # labresultoffset: the result's own time
        ev = ev[np.isfinite(ev["value"])].reset_index(drop=True)
        codes = pd.DataFrame({"code": sorted(ev["code"].unique())})
        codes["label"] = codes["code"].str.removeprefix("lab:")
    else:
        tables_absent.append("lab")
        ev = EVENTS.empty()
        codes = pd.DataFrame({"code": pd.Series(dtype=object), "label": pd.Series(dtype=object)})
    write_parquet(patients, out_dir / "patients.parquet", PATIENTS)
    write_parquet(adm.reset_index(drop=True), out_dir / "admissions.parquet", ADMISSIONS)
    write_parquet(icu.drop_duplicates("stay_id").reset_index(drop=True), out_dir / "icustays.parquet", ICUSTAYS)
    write_parquet(ev, out_dir / "events.parquet", EVENTS)
    from pipeline.sources.mimic_iv import connect
    from pipeline.sources.units import harmonise_units
    units = harmonise_units(out_dir / "events.parquet", q, SOURCE, connect(temp_dir=out_dir), raw={"lab": lpath})
    write_parquet(codes.astype(object), out_dir / "codes.parquet", CODES)
    return {"event_tables_found": [] if lpath is None else ["lab"], "tables_absent": tables_absent,
            "event_rows": len(ev), "version_hint": "eICU-CRD 2.0 layout (times are offsets)", **units}
