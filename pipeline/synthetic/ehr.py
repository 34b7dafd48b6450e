"""MIMIC-IV hosp/ and icu/ tables of the synthetic cohort.

The EHR latent shows through labs drawn every 6-24 h (4-12 h in the ICU) across
the whole stay and hourly ICU vitals.  Up to the prediction time (admittime +
24 h) a value depends on the admission's severity ``z_ehr + 0.3 * acuity`` and
noise only; after it, values drift toward the outcome (worse for those who die,
better for survivors), so a pipeline that reads past the prediction time leaks.
Lab results are known at their ``storetime``: most arrive 20 min to 3 h after the draw,
a few (batched or sent out) many hours later, about 1 % of rows have no storetime at all,
and about 0.5 % of rows appear twice (exact duplicates, as in a re-exported extract).
The result trap: in about half the admissions one lactate is drawn in the 3 h before the
prediction time but only resulted after it, and its value reflects the outcome (the
specimen of a patient who is about to die); a pipeline placing labs at ``charttime``
reads the future.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.synthetic._io import fmt_num, fmt_time, minutes, sigmoid, write_csv
from pipeline.synthetic.latent import PREDICTION_HOURS

PATIENT_COLUMNS = ["subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod"]
ADMISSION_COLUMNS = ["subject_id", "hadm_id", "admittime", "dischtime", "deathtime", "admission_type",
                     "admit_provider_id", "admission_location", "discharge_location", "insurance", "language",
                     "marital_status", "race", "edregtime", "edouttime", "hospital_expire_flag"]
LABEVENT_COLUMNS = ["labevent_id", "subject_id", "hadm_id", "specimen_id", "itemid", "order_provider_id",
                    "charttime", "storetime", "value", "valuenum", "valueuom", "ref_range_lower",
                    "ref_range_upper", "flag", "priority", "comments"]
D_LABITEMS_COLUMNS = ["itemid", "label", "fluid", "category"]
ICUSTAY_COLUMNS = ["subject_id", "hadm_id", "stay_id", "first_careunit", "last_careunit", "intime", "outtime", "los"]
CHARTEVENT_COLUMNS = ["subject_id", "hadm_id", "stay_id", "caregiver_id", "charttime", "storetime", "itemid",
                      "value", "valuenum", "valueuom", "warning"]
D_ITEMS_COLUMNS = ["itemid", "label", "abbreviation", "linksto", "category", "unitname", "param_type",
                   "lownormalvalue", "highnormalvalue"]


LATE_LACTATE = 0.5          # share of admissions with the drawn-before, resulted-after lactate
LATE_OUTCOME_SHIFT = 2.5    # its severity shift in those who die (lactate x 2.5)
DUPLICATE_FRACTION = 0.005


@dataclass(frozen=True)
class Lab:
    itemid: int
    label: str
    category: str
    unit: str
    decimals: int
    ref: tuple[float, float]
    center: float      # typical value (log-space labs: the median)
    load: float        # change per unit of severity (log-space labs: in log units)
    sd: float          # measurement + biological noise
    log: bool = False
    chronic: str = ""  # a chronic condition that shifts it ("ckd", "diabetes")
    group: str = "bmp"


LABS = (
    Lab(50983, "Sodium", "Chemistry", "mEq/L", 0, (133, 145), 139, -0.8, 2.6),
    Lab(50971, "Potassium", "Chemistry", "mEq/L", 1, (3.3, 5.1), 4.1, 0.16, 0.35, chronic="ckd"),
    Lab(50902, "Chloride", "Chemistry", "mEq/L", 0, (96, 108), 0, 0, 0),          # from Na, HCO3 and AG
    Lab(50882, "Bicarbonate", "Chemistry", "mEq/L", 0, (22, 32), 25, -2.4, 1.3),
    Lab(50868, "Anion Gap", "Chemistry", "mEq/L", 0, (8, 20), 13, 2.0, 1.3),
    Lab(51006, "Urea Nitrogen", "Chemistry", "mg/dL", 0, (6, 20), 16, 0.26, 0.14, True, "ckd"),
    Lab(50912, "Creatinine", "Chemistry", "mg/dL", 1, (0.5, 1.2), 0.95, 0.24, 0.10, True, "ckd"),
    Lab(50931, "Glucose", "Chemistry", "mg/dL", 0, (70, 100), 112, 0.10, 0.18, True, "diabetes"),
    Lab(51301, "White Blood Cells", "Hematology", "K/uL", 1, (4.0, 10.0), 8.2, 0.20, 0.22, True, group="cbc"),
    Lab(51222, "Hemoglobin", "Hematology", "g/dL", 1, (11.2, 15.7), 12.4, -0.55, 1.1, group="cbc"),
    Lab(51265, "Platelet Count", "Hematology", "K/uL", 0, (150, 400), 235, -0.16, 0.25, True, group="cbc"),
    Lab(50813, "Lactate", "Blood Gas", "mmol/L", 1, (0.5, 2.0), 1.35, 0.36, 0.14, True, group="lactate"),
    Lab(50820, "pH", "Blood Gas", "units", 2, (7.35, 7.45), 7.40, -0.035, 0.02, group="gas"),
)
EXTRA_LABITEMS = ((50893, "Calcium, Total", "Blood", "Chemistry"), (50960, "Magnesium", "Blood", "Chemistry"),
                  (51221, "Hematocrit", "Blood", "Hematology"), (51237, "INR(PT)", "Blood", "Hematology"))

VITALS = (  # itemid, label, abbreviation, category, unit, decimals, center, load, sd
    (220045, "Heart Rate", "HR", "Routine Vital Signs", "bpm", 0, 84, 9.0, 7),
    (220179, "Non Invasive Blood Pressure systolic", "NBPs", "Routine Vital Signs", "mmHg", 0, 121, -10.0, 12),
    (220180, "Non Invasive Blood Pressure diastolic", "NBPd", "Routine Vital Signs", "mmHg", 0, 66, -5.5, 8),
    (220210, "Respiratory Rate", "RR", "Respiratory", "insp/min", 0, 18, 2.8, 3),
    (220277, "O2 saturation pulseoxymetry", "SpO2", "Respiratory", "%", 0, 97.3, -1.5, 1.4),
    (223761, "Temperature Fahrenheit", "Temperature F", "Routine Vital Signs", "°F", 1, 98.5, 0.35, 0.6),
)
CAREUNITS = ("Medical Intensive Care Unit (MICU)", "Surgical Intensive Care Unit (SICU)",
             "Medical/Surgical Intensive Care Unit (MICU/SICU)", "Cardiac Vascular Intensive Care Unit (CVICU)",
             "Coronary Care Unit (CCU)", "Trauma SICU (TSICU)", "Neuro Surgical Intensive Care Unit (Neuro SICU)")


def severity_at(hours: np.ndarray, s0: np.ndarray, died: np.ndarray, end_h: np.ndarray) -> np.ndarray:
    """Severity at ``hours`` after admittime: ``s0`` up to the prediction time, then drifting to the outcome."""
    ramp = np.clip((hours - PREDICTION_HOURS) / np.maximum(end_h - PREDICTION_HOURS, 12), 0, 1) ** 1.2
    return s0 + np.where(died, 2.6 * ramp, -0.6 * np.maximum(s0, 0) * ramp)


# ------------------------------------------------------------------ patients, admissions

def write_patients(root: Path, patients: pd.DataFrame) -> int:
    df = patients.assign(dod=fmt_time(patients["dod"]).astype(str))
    df["dod"] = df["dod"].str.slice(0, 10)  # a date in MIMIC
    return write_csv(df, root / "hosp" / "patients.csv.gz", PATIENT_COLUMNS)


def write_admissions(root: Path, adm: pd.DataFrame, patients: pd.DataFrame) -> int:
    pat = patients.set_index("subject_id")
    df = adm.assign(race=pat.loc[adm["subject_id"], "race"].to_numpy(),
                    language=pat.loc[adm["subject_id"], "language"].to_numpy(),
                    marital_status=pat.loc[adm["subject_id"], "marital_status"].to_numpy(),
                    hospital_expire_flag=adm["label"].astype(int))
    for c in ("admittime", "dischtime", "deathtime", "edregtime", "edouttime"):
        df[c] = fmt_time(df[c])
    df = df.sort_values("hadm_id")
    return write_csv(df, root / "hosp" / "admissions.csv.gz", ADMISSION_COLUMNS)


# ------------------------------------------------------------------ labs

def _panels(rng: np.random.Generator, adm: pd.DataFrame) -> pd.DataFrame:
    """One row per blood draw: its time (hours after admittime), admission and severity."""
    recs = []
    los = adm["los_hours"].to_numpy()
    icu_in = ((adm["intime"] - adm["admittime"]).dt.total_seconds() / 3600).to_numpy()
    icu_out = ((adm["outtime"] - adm["admittime"]).dt.total_seconds() / 3600).to_numpy()
    first_p, late_p = rng.random(len(adm)), rng.random(len(adm))
    for i in range(len(adm)):
        t = rng.uniform(-3, 2.5) if first_p[i] < 0.97 else rng.uniform(3, 20)
        first = True
        while t < los[i] - 0.5:
            in_icu = icu_in[i] <= t <= icu_out[i]
            recs.append((i, t, first, in_icu, False, False))
            first = False
            t += rng.uniform(4, 12) if in_icu else rng.uniform(6, 24)
        if first_p[i] > 0.88:  # an outpatient draw days before the admission (no hadm_id)
            recs.append((i, -24 * rng.uniform(3, 25), False, False, True, False))
        if los[i] > PREDICTION_HOURS + 0.5 and late_p[i] < LATE_LACTATE:  # drawn before, resulted after
            t = PREDICTION_HOURS - rng.uniform(0.2, 3)
            recs.append((i, t, False, icu_in[i] <= t <= icu_out[i], False, True))
    p = pd.DataFrame(recs, columns=["adm", "hours", "first", "icu", "outpatient", "late"])
    a = adm.iloc[p["adm"].to_numpy()]
    s0 = a["z_ehr"].to_numpy() + 0.3 * a["acuity"].to_numpy()
    sev = severity_at(p["hours"].to_numpy(), s0, a["label"].to_numpy() == 1, a["los_hours"].to_numpy())
    sev = sev + p["late"].to_numpy() * LATE_OUTCOME_SHIFT * (a["label"].to_numpy() == 1)  # tied to the outcome
    p["severity"] = np.where(p["outpatient"], 0.3 * a["z_ehr"].to_numpy(), sev) + rng.normal(0, 0.15, len(p))
    p["acuity"] = a["acuity"].to_numpy()
    return p


def _lab_values(rng: np.random.Generator, lab: Lab, sev: np.ndarray, chronic: np.ndarray) -> np.ndarray:
    n = len(sev)
    x = (np.log(lab.center) if lab.log else lab.center) + lab.load * sev + rng.normal(0, lab.sd, n)
    if lab.chronic:
        x = x + chronic * ((0.45 if lab.itemid in (50912, 51006) else 0.35) if lab.log else 0.4)
    v = np.exp(x) if lab.log else x
    return np.round(v, lab.decimals)


def write_labs(rng: np.random.Generator, root: Path, adm: pd.DataFrame, patients: pd.DataFrame) -> int:
    p = _panels(rng, adm)
    a = adm.iloc[p["adm"].to_numpy()]
    pat = patients.set_index("subject_id").loc[a["subject_id"]]
    n = len(p)
    draws = {
        "bmp": rng.random(n) < 0.95,
        "cbc": rng.random(n) < np.where(p["first"], 0.97, 0.8),
        "lactate": rng.random(n) < np.where(p["first"], sigmoid(-0.3 + 1.0 * p["acuity"] + 0.4 * p["severity"]),
                                            np.where(p["icu"], 0.35, 0.08)),
        "gas": rng.random(n) < np.where(p["icu"], 0.5, np.where(p["first"], sigmoid(-1.6 + p["acuity"]), 0.03)),
    }
    draws = {g: m & ~(p["outpatient"].to_numpy() & (g in ("lactate", "gas"))) for g, m in draws.items()}
    late = p["late"].to_numpy()
    draws = {g: (m & ~late) | (late & (g == "lactate")) for g, m in draws.items()}  # the trap: a lactate alone
    # Specimens: one per draw and group, 8-digit unique ids.
    spec = rng.choice(90_000_000, size=(n, 4), replace=False) + 10_000_000
    spec_col = {"bmp": 0, "cbc": 1, "lactate": 2, "gas": 3}
    values: dict[int, np.ndarray] = {}
    frames = []
    for lab in LABS:
        if lab.itemid == 50902:
            continue
        chronic = pat[lab.chronic].to_numpy().astype(float) if lab.chronic else np.zeros(n)
        values[lab.itemid] = _lab_values(rng, lab, p["severity"].to_numpy(), chronic)
    values[50902] = values[50983] - values[50882] - values[50868]  # anion gap = Na - (Cl + HCO3)
    by_id = {lab.itemid: lab for lab in LABS}
    for itemid, v in values.items():
        lab = by_id[itemid]
        m = draws[lab.group]
        frames.append(pd.DataFrame({"row": np.flatnonzero(m), "itemid": itemid, "valuenum": v[m]}))
    ev = pd.concat(frames, ignore_index=True)
    r = ev["row"].to_numpy()
    hours = p["hours"].to_numpy()[r]
    ev["subject_id"] = a["subject_id"].to_numpy()[r]
    ev["hadm_id"] = np.where(p["outpatient"].to_numpy()[r], np.nan, a["hadm_id"].to_numpy()[r].astype(float))
    ev["charttime"] = (a["admittime"].to_numpy()[r] + minutes(hours * 60))
    group_of = {lab.itemid: spec_col[lab.group] for lab in LABS}
    ev["specimen_id"] = spec[r, ev["itemid"].map(group_of).to_numpy()]
    # One storetime per specimen: 20 min to 2.5 h after the draw, 1 specimen in 20 batched or sent out
    # (3 to 12 h later); the trap's lactate results 0.5 to 6 h after the prediction time.
    sid = ev["specimen_id"].to_numpy()
    delay = 20 + sid % 130 + (sid % 20 == 0) * (180 + sid % 540)
    pt = PREDICTION_HOURS * 60 - hours * 60
    delay = np.where(p["late"].to_numpy()[r], pt + 30 + sid % 330, delay)
    ev["storetime"] = ev["charttime"] + minutes(delay)
    ev.loc[(sid % 97 == 0) & ~p["late"].to_numpy()[r], "storetime"] = pd.NaT   # about 1 %: never stored
    ev = ev.sort_values(["subject_id", "charttime", "itemid"], kind="stable").reset_index(drop=True)
    lo = ev["itemid"].map({k: v.ref[0] for k, v in by_id.items()})
    hi = ev["itemid"].map({k: v.ref[1] for k, v in by_id.items()})
    ev["ref_range_lower"], ev["ref_range_upper"] = lo, hi
    ev["flag"] = np.where((ev["valuenum"] < lo) | (ev["valuenum"] > hi), "abnormal", "")
    ev["valueuom"] = ev["itemid"].map({k: v.unit for k, v in by_id.items()})
    ev["value"] = ""
    for itemid, lab in by_id.items():
        m = (ev["itemid"] == itemid).to_numpy()
        ev.loc[m, "value"] = fmt_num(ev.loc[m, "valuenum"].to_numpy(), lab.decimals)
    # A few results that could not be reported, as in the real table (text value, no valuenum).
    bad = rng.random(len(ev)) < 0.002
    ev.loc[bad, "value"] = np.where(rng.random(int(bad.sum())) < 0.5, "UNABLE TO REPORT", "___")
    ev.loc[bad, "valuenum"] = np.nan
    ev.loc[bad, "flag"] = ""
    ev["comments"] = np.where(bad, "SPECIMEN HEMOLYZED.", np.where(
        (ev["itemid"] == 50931) & (rng.random(len(ev)) < 0.2), "IF FASTING, 70-100 NORMAL, >125 PROVISIONAL DIABETES.", ""))
    stat = p["first"].to_numpy()[ev["row"]] | p["icu"].to_numpy()[ev["row"]]
    ev["priority"] = np.where(stat, "STAT", "ROUTINE")
    ev["order_provider_id"] = np.where(rng.random(len(ev)) < 0.4, _providers(rng, len(ev)), "")
    ev["labevent_id"] = np.arange(1, len(ev) + 1)
    ev["hadm_id"] = ev["hadm_id"].astype("Int64")
    ev["charttime"], ev["storetime"] = fmt_time(ev["charttime"]), fmt_time(ev["storetime"])
    twice = np.flatnonzero(rng.random(len(ev)) < DUPLICATE_FRACTION)   # exact duplicate rows, next to the original
    ev = ev.iloc[np.sort(np.concatenate([np.arange(len(ev)), twice]), kind="stable")]
    n_rows = write_csv(ev, root / "hosp" / "labevents.csv.gz", LABEVENT_COLUMNS)
    d = pd.DataFrame([(lab.itemid, lab.label, "Blood", lab.category) for lab in LABS] + list(EXTRA_LABITEMS),
                     columns=D_LABITEMS_COLUMNS).sort_values("itemid")
    write_csv(d, root / "hosp" / "d_labitems.csv.gz", D_LABITEMS_COLUMNS)
    return n_rows


def _providers(rng: np.random.Generator, n: int) -> np.ndarray:
    pool = np.array([f"P{x:05X}" for x in rng.choice(0xFFFFF, size=400, replace=False)], dtype=object)
    return pool[rng.integers(0, len(pool), n)]


# ------------------------------------------------------------------ ICU

def write_icu(rng: np.random.Generator, root: Path, adm: pd.DataFrame) -> tuple[int, int, pd.DataFrame]:
    """icustays and chartevents (vitals about hourly through each stay); returns the stays too."""
    n_stays, icu = write_icustays(rng, root, adm)
    return n_stays, write_chartevents(rng, root, icu), icu[["hadm_id", "stay_id"]]


def write_icustays(rng: np.random.Generator, root: Path, adm: pd.DataFrame) -> tuple[int, pd.DataFrame]:
    """icu/icustays; returns its row count and the stays (admission columns plus stay_id)."""
    icu = adm[adm["has_icu"]].copy()
    icu["stay_id"] = 30_000_000 + rng.choice(9_999_999, size=len(icu), replace=False)
    unit = np.array(CAREUNITS, dtype=object)[rng.choice(len(CAREUNITS), len(icu),
                                                        p=[0.35, 0.15, 0.15, 0.12, 0.1, 0.08, 0.05])]
    icu["first_careunit"] = unit
    icu["last_careunit"] = np.where(rng.random(len(icu)) < 0.9, unit, "Medical Intensive Care Unit (MICU)")
    icu["los"] = (icu["outtime"] - icu["intime"]).dt.total_seconds() / 86400
    stays = icu.assign(intime=fmt_time(icu["intime"]), outtime=fmt_time(icu["outtime"])).sort_values("stay_id")
    return write_csv(stays, root / "icu" / "icustays.csv.gz", ICUSTAY_COLUMNS), icu


def write_chartevents(rng: np.random.Generator, root: Path, icu: pd.DataFrame) -> int:
    """icu/chartevents: vitals about hourly from intime to outtime of each stay."""
    recs = []
    in_h = ((icu["intime"] - icu["admittime"]).dt.total_seconds() / 3600).to_numpy()
    out_h = ((icu["outtime"] - icu["admittime"]).dt.total_seconds() / 3600).to_numpy()
    for i in range(len(icu)):
        k = max(1, int(out_h[i] - in_h[i]))
        recs.append(np.stack([np.full(k, i), in_h[i] + np.arange(k) + rng.uniform(0.05, 0.6, k)], 1))
    obs = np.concatenate(recs) if recs else np.zeros((0, 2))
    idx, hours = obs[:, 0].astype(int), obs[:, 1]
    s0 = icu["z_ehr"].to_numpy() + 0.3 * icu["acuity"].to_numpy()
    sev = severity_at(hours, s0[idx], icu["label"].to_numpy()[idx] == 1, icu["los_hours"].to_numpy()[idx])
    sev = sev + rng.normal(0, 0.2, len(sev))
    diurnal = np.sin(2 * np.pi * hours / 24)
    nbp = rng.random(len(hours)) < 0.6
    present = {220045: rng.random(len(hours)) < 0.96, 220210: rng.random(len(hours)) < 0.93,
               220277: rng.random(len(hours)) < 0.94, 220179: nbp, 220180: nbp,
               223761: ((np.floor(hours - in_h[idx]) % 4) == 0) & (rng.random(len(hours)) < 0.9)}
    frames = []
    for itemid, _label, _abbr, _cat, unit_name, dec, center, load, sd in VITALS:
        v = center + load * sev + sd * rng.normal(size=len(hours)) + (2.0 if itemid == 220045 else 0.3) * diurnal
        if itemid == 220277:
            v = np.minimum(v, 100)
        v = np.round(v, dec)
        m = present[itemid]
        frames.append(pd.DataFrame({"i": idx[m], "hours": hours[m], "itemid": itemid, "valuenum": v[m],
                                    "valueuom": unit_name, "dec": dec}))
    ev = pd.concat(frames, ignore_index=True)
    i = ev["i"].to_numpy()
    ev["subject_id"] = icu["subject_id"].to_numpy()[i]
    ev["hadm_id"] = icu["hadm_id"].to_numpy()[i]
    ev["stay_id"] = icu["stay_id"].to_numpy()[i]
    ev["charttime"] = icu["admittime"].to_numpy()[i] + minutes(ev["hours"] * 60)
    ev["storetime"] = ev["charttime"] + pd.to_timedelta(rng.integers(0, 40, len(ev)), unit="m")
    ev = ev.sort_values(["subject_id", "stay_id", "charttime", "itemid"], kind="stable").reset_index(drop=True)
    ev["value"] = ""
    for dec in (0, 1):
        m = (ev["dec"] == dec).to_numpy()
        ev.loc[m, "value"] = fmt_num(ev.loc[m, "valuenum"].to_numpy(), dec)
    ev["caregiver_id"] = rng.integers(10_000, 99_999, size=len(ev))
    ev["warning"] = 0
    ev["charttime"], ev["storetime"] = fmt_time(ev["charttime"]), fmt_time(ev["storetime"])
    return write_csv(ev, root / "icu" / "chartevents.csv.gz", CHARTEVENT_COLUMNS)


def write_d_items(root: Path, extra: tuple = ()) -> int:
    """icu/d_items: the vitals' items and ``extra`` rows (itemid, label, abbreviation, linksto, category,
    unitname, param_type)."""
    d = pd.DataFrame([(it, lab, abbr, "chartevents", cat, u, "Numeric", "", "") for it, lab, abbr, cat, u, *_ in VITALS]
                     + [(223762, "Temperature Celsius", "Temperature C", "chartevents", "Routine Vital Signs", "°C",
                         "Numeric", "", "")] + [(*row, "", "") for row in extra],
                     columns=D_ITEMS_COLUMNS).sort_values("itemid")
    return write_csv(d, root / "icu" / "d_items.csv.gz", D_ITEMS_COLUMNS)
