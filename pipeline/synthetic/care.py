"""ICU treatments of the synthetic cohort: the care plan, and icu/inputevents, outputevents, procedureevents.

The care plan gives each admission its vasopressor, ventilation, dialysis and antibiotic
episodes (hours after admittime, NaN where none).  Up to the prediction time a treatment
depends only on the EHR latents (the shock severity ``s0 = z_ehr + 0.3 * acuity``, acuity,
CKD), never on the label: vasopressors and ventilation concentrate in the sickest ICU stays,
urine output falls with the severity and with CKD.  After it, treatments follow the outcome
(vasopressors started late in stays that end in death, urine output drying up before
death): a trap for a pipeline that reads past the prediction time.  As in MIMIC-IV, a
ventilation or dialysis row of procedureevents is stored when it ends, and some
outputevents rows are stored a few minutes before their charttime.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.synthetic._io import fmt_time, minutes, sigmoid, write_csv
from pipeline.synthetic.ehr import severity_at
from pipeline.synthetic.latent import PREDICTION_HOURS

INPUTEVENT_COLUMNS = ["subject_id", "hadm_id", "stay_id", "caregiver_id", "starttime", "endtime", "storetime",
                      "itemid", "amount", "amountuom", "rate", "rateuom", "orderid", "linkorderid",
                      "ordercategoryname", "secondaryordercategoryname", "ordercomponenttypedescription",
                      "ordercategorydescription", "patientweight", "totalamount", "totalamountuom", "isopenbag",
                      "continueinnextdept", "statusdescription", "originalamount", "originalrate"]
OUTPUTEVENT_COLUMNS = ["subject_id", "hadm_id", "stay_id", "caregiver_id", "charttime", "storetime", "itemid", "value",
                       "valueuom"]
PROCEDUREEVENT_COLUMNS = ["subject_id", "hadm_id", "stay_id", "caregiver_id", "starttime", "endtime", "storetime",
                          "itemid", "value", "valueuom", "location", "locationcategory", "orderid", "linkorderid",
                          "ordercategoryname", "ordercategorydescription", "patientweight", "isopenbag",
                          "continueinnextdept", "statusdescription", "ORIGINALAMOUNT", "ORIGINALRATE"]
NOREPINEPHRINE, VASOPRESSIN, NACL, VANCOMYCIN = 221906, 222315, 225158, 225798
FOLEY = 226559
VENTILATION, INTUBATION, CRRT, ARTERIAL_LINE = 225792, 224385, 225802, 225752
D_ITEMS_ROWS = (  # itemid, label, abbreviation, linksto, category, unitname, param_type (as in MIMIC-IV d_items)
    (NOREPINEPHRINE, "Norepinephrine", "Norepinephrine", "inputevents", "Medications", "mg", "Solution"),
    (VASOPRESSIN, "Vasopressin", "Vasopressin", "inputevents", "Medications", "units", "Solution"),
    (NACL, "NaCl 0.9%", "NaCl 0.9%", "inputevents", "Fluids/Intake", "mL", "Solution"),
    (VANCOMYCIN, "Vancomycin", "Vancomycin", "inputevents", "Antibiotics", "dose", "Solution"),
    (FOLEY, "Foley", "Foley", "outputevents", "Output", "mL", "Numeric"),
    (VENTILATION, "Invasive Ventilation", "Invasive Ventilation", "procedureevents", "2-Ventilation", "None",
     "Processes"),
    (INTUBATION, "Intubation", "Intubation", "procedureevents", "1-Intubation/Extubation", "None", "Processes"),
    (CRRT, "Dialysis - CRRT", "Dialysis - CRRT", "procedureevents", "Dialysis", "None", "Processes"),
    (ARTERIAL_LINE, "Arterial Line", "Arterial Line", "procedureevents", "Access Lines - Invasive", "None",
     "Processes"),
)


def _hours(adm: pd.DataFrame, col: str) -> np.ndarray:
    return ((adm[col] - adm["admittime"]).dt.total_seconds() / 3600).to_numpy()


def care_plan(rng: np.random.Generator, adm: pd.DataFrame) -> pd.DataFrame:
    """One row per admission (row order of ``adm``): treatment episodes in hours after admittime."""
    n = len(adm)
    u = rng.random((n, 12))
    died = adm["label"].to_numpy() == 1
    los = adm["los_hours"].to_numpy()
    acuity, ckd = adm["acuity"].to_numpy(), adm["ckd"].to_numpy(bool)
    s0 = adm["z_ehr"].to_numpy() + 0.3 * acuity
    icu = adm["has_icu"].to_numpy(bool)
    icu_in, icu_out = _hours(adm, "intime"), _hours(adm, "outtime")
    early = icu & adm["icu_early"].to_numpy(bool)
    after = np.maximum(PREDICTION_HOURS, icu_in) + 1           # a start after the prediction time
    late_ok = icu & (icu_out > after + 1)

    def episode(cols, p_early, p_late_died, p_late_alive, lag, dur_median, lasts_to_death):
        """(start, end) of an episode: early in an early ICU stay (EHR latents only), or after the
        prediction time (outcome-dependent); ``cols``: the two uniform draws it uses."""
        on_early = early & (u[:, cols[0]] < p_early)
        on_late = ~on_early & late_ok & (u[:, cols[1]] < np.where(died, p_late_died, p_late_alive))
        start = np.where(on_early, icu_in + lag * rng.random(n),
                         np.where(on_late, after + rng.random(n) * np.maximum(icu_out - after - 1, 0), np.nan))
        planned = start + np.exp(rng.normal(np.log(dur_median), 0.6, n))
        # Death only prolongs an episode still running at the prediction time: nothing before it
        # depends on the outcome.
        extend = died & lasts_to_death & (planned > PREDICTION_HOURS)
        end = np.where(extend, np.maximum(planned, icu_out - rng.uniform(0, 2, n)), planned)
        end = np.clip(end, start + 0.5, np.maximum(icu_out - 0.1, start + 0.5))
        return start, np.where(np.isnan(start), np.nan, end)

    p_pressor = sigmoid(-3.4 + 2.4 * s0 + 0.5 * acuity)
    pressor_start, pressor_end = episode((0, 1), p_pressor, 0.45, 0.04, 6.0, 30.0, u[:, 10] < 0.7)
    p_vent = sigmoid(-3.0 + 0.8 * acuity + 1.6 * s0)
    vent_start, vent_end = episode((2, 3), p_vent, 0.3, 0.03, 3.0, 40.0, u[:, 11] < 0.8)
    dialysis = icu & (((ckd & (s0 > 0.3)) & (u[:, 4] < 0.5)) | ((s0 > 1.8) & (u[:, 5] < 0.3)))
    dialysis_start = np.where(dialysis, icu_in + rng.uniform(2, 30, n), np.nan)
    dialysis_start = np.where(dialysis_start < icu_out - 1, dialysis_start, np.nan)
    dialysis_end = np.minimum(dialysis_start + rng.uniform(24, 96, n), icu_out - 0.1)
    infection = u[:, 6] < sigmoid(-1.0 + 1.2 * adm["z_ehr"].to_numpy())
    abx_start = np.where(infection, np.minimum(rng.uniform(0.5, 8, n), los - 0.5), np.nan)
    abx_end = np.minimum(abx_start + rng.uniform(72, 168, n), los)
    return pd.DataFrame({
        "s0": s0, "has_icu": icu, "icu_in": icu_in, "icu_out": icu_out,
        "pressor_start": pressor_start, "pressor_end": pressor_end,
        "vasopressin": ~np.isnan(pressor_start) & ((s0 > 1.2) | (u[:, 7] < 0.2)),
        "vent_start": vent_start, "vent_end": vent_end,
        "dialysis_start": dialysis_start, "dialysis_end": dialysis_end,
        "infection": infection, "abx_start": abx_start, "abx_end": abx_end,
        "weight": np.round(np.clip(rng.normal(80, 17, n), 40, 180), 1),
    })


def _stay_ids(adm: pd.DataFrame, stays: pd.DataFrame) -> np.ndarray:
    """stay_id per admission row (0 where no ICU stay)."""
    return adm["hadm_id"].map(stays.set_index("hadm_id")["stay_id"]).fillna(0).astype("int64").to_numpy()


def _segments(rng: np.random.Generator, start: np.ndarray, end: np.ndarray, step=(1.0, 4.0)) -> tuple:
    """Split each [start, end) (NaN: none) into consecutive segments of ``step`` hours: (row, t0, t1, last)."""
    rows, t0s, t1s = [], [], []
    for i in np.flatnonzero(~np.isnan(start)):
        t = start[i]
        while t < end[i] - 1e-6:
            t1 = min(t + rng.uniform(*step), end[i])
            rows.append(i)
            t0s.append(t)
            t1s.append(t1)
            t = t1
    rows, t0, t1 = np.array(rows, dtype=int), np.array(t0s), np.array(t1s)
    last = np.r_[rows[1:] != rows[:-1], True] if len(rows) else np.zeros(0, bool)
    return rows, t0, t1, last


def _base(adm: pd.DataFrame, stay: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> dict:
    return {"row": rows, "subject_id": adm["subject_id"].to_numpy()[rows], "hadm_id": adm["hadm_id"].to_numpy()[rows],
            "stay_id": stay[rows], "caregiver_id": rng.integers(10_000, 99_999, len(rows))}


def _at(adm: pd.DataFrame, rows: np.ndarray, hours: np.ndarray) -> pd.Series:
    return pd.Series(adm["admittime"].to_numpy()[rows] + minutes(hours * 60))


def write_inputevents(rng: np.random.Generator, root: Path, adm: pd.DataFrame, care: pd.DataFrame,
                      stays: pd.DataFrame) -> int:
    """Vasopressor drips (rate segments), fluid boluses and vancomycin doses in the ICU."""
    stay = _stay_ids(adm, stays)
    died, los = adm["label"].to_numpy() == 1, adm["los_hours"].to_numpy()
    s0, weight = care["s0"].to_numpy(), care["weight"].to_numpy()
    frames = []
    base_rate = np.clip(0.06 * np.exp(0.45 * s0 + rng.normal(0, 0.3, len(adm))), 0.01, 1.2)
    ps, pe = care["pressor_start"].to_numpy(), care["pressor_end"].to_numpy()
    for itemid in (NOREPINEPHRINE, VASOPRESSIN):
        start = ps if itemid == NOREPINEPHRINE else np.where(care["vasopressin"], ps + rng.uniform(1, 6, len(adm)),
                                                              np.nan)
        start = np.where(start < pe - 0.5, start, np.nan)
        r, t0, t1, last = _segments(rng, start, pe)
        sev = severity_at(t0, s0[r], died[r], los[r])
        if itemid == NOREPINEPHRINE:
            rate = np.clip(base_rate[r] * np.exp(0.4 * (sev - s0[r]) + rng.normal(0, 0.15, len(r))), 0.01, 2.0)
            amount = rate * weight[r] * (t1 - t0) * 60 / 1000            # mcg/kg/min -> mg
            uom, rate_uom, total = "mg", "mcg/kg/min", 250.0
        else:
            rate = np.full(len(r), 2.4)
            amount = rate * (t1 - t0)
            uom, rate_uom, total = "units", "units/hour", 100.0
        frames.append(pd.DataFrame({**_base(adm, stay, r, rng), "t0": t0, "t1": t1, "itemid": itemid,
                                    "amount": amount, "amountuom": uom, "rate": rate, "rateuom": rate_uom,
                                    "ordercategoryname": "01-Drips",
                                    "secondaryordercategoryname": "02-Fluids (Crystalloids)",
                                    "ordercategorydescription": "Continuous Med", "patientweight": weight[r],
                                    "totalamount": total, "totalamountuom": "ml",
                                    "statusdescription": np.where(last, "FinishedRunning", "ChangeDose/Rate"),
                                    "originalamount": amount, "originalrate": rate}))
    # Fluid boluses in the first hours of the ICU stay, more for the sicker.
    icu = care["has_icu"].to_numpy(bool)
    n_bolus = np.where(icu, rng.poisson(np.clip(0.5 + 0.8 * s0, 0, 4)), 0)
    r = np.repeat(np.arange(len(adm)), n_bolus)
    t0 = care["icu_in"].to_numpy()[r] + rng.uniform(0, 8, len(r))
    keep = t0 < care["icu_out"].to_numpy()[r] - 0.6
    r, t0 = r[keep], t0[keep]
    vol = np.where(rng.random(len(r)) < 0.6, 500.0, 1000.0)
    t1 = t0 + vol / 1000
    frames.append(pd.DataFrame({**_base(adm, stay, r, rng), "t0": t0, "t1": t1, "itemid": NACL, "amount": vol,
                                "amountuom": "ml", "rate": vol / (t1 - t0), "rateuom": "mL/hour",
                                "ordercategoryname": "03-IV Fluid Bolus", "secondaryordercategoryname": "",
                                "ordercategorydescription": "Continuous IV", "patientweight": weight[r],
                                "totalamount": vol, "totalamountuom": "ml", "statusdescription": "FinishedRunning",
                                "originalamount": vol, "originalrate": vol / (t1 - t0)}))
    # Vancomycin every 12 h during antibiotics, while in the ICU.
    a0 = np.maximum(care["abx_start"].to_numpy(), care["icu_in"].to_numpy())
    a1 = np.minimum(care["abx_end"].to_numpy(), care["icu_out"].to_numpy())
    k = np.where(icu & (a1 > a0), np.ceil((a1 - a0) / 12), 0).astype(int)
    r = np.repeat(np.arange(len(adm)), k)
    t0 = a0[r] + 12 * np.concatenate([np.arange(m) for m in k]) if len(r) else np.zeros(0)
    frames.append(pd.DataFrame({**_base(adm, stay, r, rng), "t0": t0, "t1": t0 + 1 / 60, "itemid": VANCOMYCIN,
                                "amount": 1.0, "amountuom": "dose", "rate": np.nan, "rateuom": "",
                                "ordercategoryname": "08-Antibiotics (IV)",
                                "secondaryordercategoryname": "02-Fluids (Crystalloids)",
                                "ordercategorydescription": "Drug Push", "patientweight": weight[r],
                                "totalamount": 500.0, "totalamountuom": "ml", "statusdescription": "FinishedRunning",
                                "originalamount": 1.0, "originalrate": 1.0}))
    ev = pd.concat(frames, ignore_index=True)
    rows = ev["row"].to_numpy()
    ev["starttime"] = _at(adm, rows, ev["t0"].to_numpy())
    ev["endtime"] = _at(adm, rows, ev["t1"].to_numpy())
    ev["storetime"] = ev["starttime"] + minutes(rng.uniform(2, 40, len(ev)))
    ev["orderid"] = rng.choice(9_000_000, size=len(ev), replace=False) + 1_000_000
    ev["linkorderid"] = ev["orderid"]
    ev["ordercomponenttypedescription"] = "Main order parameter"
    ev["isopenbag"], ev["continueinnextdept"] = 0, 0
    ev = ev.sort_values(["subject_id", "stay_id", "starttime", "itemid"], kind="stable")
    for c in ("starttime", "endtime", "storetime"):
        ev[c] = fmt_time(ev[c])
    return write_csv(ev, root / "icu" / "inputevents.csv.gz", INPUTEVENT_COLUMNS)


def write_outputevents(rng: np.random.Generator, root: Path, adm: pd.DataFrame, care: pd.DataFrame,
                       stays: pd.DataFrame) -> int:
    """Hourly Foley urine output in the ICU: lower with severity and CKD, drying up before death."""
    stay = _stay_ids(adm, stays)
    icu_in, icu_out = care["icu_in"].to_numpy(), care["icu_out"].to_numpy()
    k = np.where(care["has_icu"].to_numpy(bool), np.floor(icu_out - icu_in), 0).clip(0).astype(int)
    r = np.repeat(np.arange(len(adm)), k)
    offs = np.concatenate([np.arange(m) for m in k]) if len(r) else np.zeros(0)
    first = ((adm["intime"].dt.ceil("h") - adm["admittime"]).dt.total_seconds() / 3600).to_numpy()
    hours = first[r] + offs     # on the hour of the clock
    keep = (hours > icu_in[r]) & (hours < icu_out[r]) & (rng.random(len(r)) < 0.92)
    r, hours = r[keep], hours[keep]
    sev = severity_at(hours, care["s0"].to_numpy()[r], adm["label"].to_numpy()[r] == 1, adm["los_hours"].to_numpy()[r])
    ckd = adm["ckd"].to_numpy(float)[r]
    ml = np.exp(np.log(70) - 0.45 * sev - 0.5 * ckd + rng.normal(0, 0.35, len(r)))
    ev = pd.DataFrame({**_base(adm, stay, r, rng), "itemid": FOLEY, "value": np.round(np.clip(ml, 0, 900)),
                       "valueuom": "ml"})
    ev["charttime"] = _at(adm, r, hours)
    ev["storetime"] = ev["charttime"] + minutes(rng.uniform(-20, 45, len(ev)))
    ev = ev.sort_values(["subject_id", "stay_id", "charttime"], kind="stable")
    ev["charttime"], ev["storetime"] = fmt_time(ev["charttime"]), fmt_time(ev["storetime"])
    ev["value"] = ev["value"].astype(int)
    return write_csv(ev, root / "icu" / "outputevents.csv.gz", OUTPUTEVENT_COLUMNS)


def write_procedureevents(rng: np.random.Generator, root: Path, adm: pd.DataFrame, care: pd.DataFrame,
                          stays: pd.DataFrame) -> int:
    """Ventilation, intubation, CRRT and arterial lines; continuous processes are stored when they end."""
    stay = _stay_ids(adm, stays)
    weight = care["weight"].to_numpy()
    frames = []
    specs = ((VENTILATION, "vent_start", "vent_end", "Ventilation", "ContinuousProcess", "", ""),
             (INTUBATION, "vent_start", None, "Intubation/Extubation", "Task", "", ""),
             (CRRT, "dialysis_start", "dialysis_end", "Dialysis", "ContinuousProcess", "", ""),
             (ARTERIAL_LINE, "pressor_start", "icu_out", "Invasive Lines", "ContinuousProcess", "Right Radial",
              "Invasive Arterial"))
    for itemid, c0, c1, cat, desc, loc, loc_cat in specs:
        start = care[c0].to_numpy()
        r = np.flatnonzero(~np.isnan(start))
        t0 = start[r] - (rng.uniform(0.1, 2, len(r)) if itemid == ARTERIAL_LINE else 0)
        t0 = np.maximum(t0, care["icu_in"].to_numpy()[r])
        t1 = care[c1].to_numpy()[r] if c1 else t0 + 1 / 60
        task = c1 is None
        value = np.where(task, 1.0, np.round((t1 - t0) * 60))
        frames.append(pd.DataFrame({**_base(adm, stay, r, rng), "t0": t0, "t1": t1, "itemid": itemid,
                                    "value": value, "valueuom": "None" if task else "min", "location": loc,
                                    "locationcategory": loc_cat, "ordercategoryname": cat,
                                    "ordercategorydescription": desc, "patientweight": weight[r],
                                    "isopenbag": 0 if task else 1, "ORIGINALAMOUNT": value,
                                    "ORIGINALRATE": 0 if task else 1}))
    ev = pd.concat(frames, ignore_index=True)
    r = ev["row"].to_numpy()
    ev["starttime"], ev["endtime"] = _at(adm, r, ev["t0"].to_numpy()), _at(adm, r, ev["t1"].to_numpy())
    ev["storetime"] = ev["endtime"] + minutes(rng.uniform(0, 60, len(ev)))
    ev["orderid"] = rng.choice(9_000_000, size=len(ev), replace=False) + 1_000_000
    ev["linkorderid"] = ev["orderid"]
    ev["continueinnextdept"] = 0
    ev["statusdescription"] = "FinishedRunning"
    ev["value"] = ev["value"].astype(int)
    ev["ORIGINALAMOUNT"] = ev["ORIGINALAMOUNT"].astype(int)
    ev = ev.sort_values(["subject_id", "stay_id", "starttime", "itemid"], kind="stable")
    for c in ("starttime", "endtime", "storetime"):
        ev[c] = fmt_time(ev[c])
    return write_csv(ev, root / "icu" / "procedureevents.csv.gz", PROCEDUREEVENT_COLUMNS)
