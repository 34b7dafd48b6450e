"""MIMIC-IV hosp/ medication and culture tables: prescriptions, emar, microbiologyevents.

Orders follow the care plan (synthetic.care): vasopressor drips (NORepinephrine, Vasopressin)
in the sickest ICU stays, sedation for ventilation, antibiotics for infections, plus the
ordinary ward medications (heparin or enoxaparin, acetaminophen, flushes, ...) and the
chronic conditions' drugs (furosemide and metoprolol in heart failure, insulin in diabetes).
emar records each administration at its ``charttime`` (stored minutes later).  Cultures are
drawn with the antibiotics; a positive result (organism and susceptibilities) is tied to
the EHR severity and stored one to three days after the draw, so it is known only after
the prediction time; a few rows have only a chartdate, or no storetime yet.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.synthetic._io import fmt_time, minutes, sigmoid, write_csv

PRESCRIPTION_COLUMNS = ["subject_id", "hadm_id", "pharmacy_id", "poe_id", "poe_seq", "order_provider_id", "starttime",
                        "stoptime", "drug_type", "drug", "formulary_drug_cd", "gsn", "ndc", "prod_strength", "form_rx",
                        "dose_val_rx", "dose_unit_rx", "form_val_disp", "form_unit_disp", "doses_per_24_hrs", "route"]
EMAR_COLUMNS = ["subject_id", "hadm_id", "emar_id", "emar_seq", "poe_id", "pharmacy_id", "enter_provider_id",
                "charttime", "medication", "event_txt", "scheduletime", "storetime"]
MICRO_COLUMNS = ["microevent_id", "subject_id", "hadm_id", "micro_specimen_id", "order_provider_id", "chartdate",
                 "charttime", "spec_itemid", "spec_type_desc", "test_seq", "storedate", "storetime", "test_itemid",
                 "test_name", "org_itemid", "org_name", "isolate_num", "quantity", "ab_itemid", "ab_name",
                 "dilution_text", "dilution_comparison", "dilution_value", "interpretation", "comments"]

# drug: formulary_drug_cd, gsn, ndc, prod_strength, dose_val_rx, dose_unit_rx, form_val_disp, form_unit_disp,
#       doses_per_24_hrs ("" for drips), route  (values as in MIMIC-IV prescriptions)
DRUGS = {
    "NORepinephrine": ("NORE8/250", "066452", "61553015311", "8 mg / 250 mL Premix Bag", "8", "mg", "1", "BAG", "",
                       "IV DRIP"),
    "Vasopressin": ("VASO20I", "073081", "42023016425", "20 Units / 1 mL Vial", "40", "UNIT", "2", "mL", "", "IV DRIP"),
    "Propofol": ("PROP100IG", "047218", "63323026965", "1000mg/100mL Vial", "1000", "mg", "1", "VIAL", "", "IV DRIP"),
    "Fentanyl Citrate": ("FENT2.550", "048287", "61553011841", "2.5mg / 50 mL Premix Bag", "2.5", "mg", "1", "BAG", "",
                         "IV DRIP"),
    "Vancomycin": ("VANC1F", "009331", "00338355248", "1g Frozen Bag", "1000", "mg", "1", "BAG", "2", "IV"),
    "Piperacillin-Tazobactam": ("ZOSY4FPB", "040819", "00206886202", "4.5 g Frozen Bag", "4.5", "g", "1", "BAG", "3",
                                "IV"),
    "CeftriaXONE": ("CEFX1F", "059424", "00338500241", "1g Frozen Bag", "1", "gm", "1", "BAG", "1", "IV"),
    "Meropenem": ("MERO1I", "026489", "00310032165", "1000mg Vial", "1000", "mg", "1", "VIAL", "3", "IV"),
    "Heparin": ("HEPA5I", "006549", "63323026201", "5000 Units / mL- 1mL Vial", "5000", "UNIT", "1", "mL", "3", "SC"),
    "Enoxaparin Sodium": ("ENO3I", "019331", "00075062430", "30mg Syringe", "30", "mg", "1", "SYR", "2", "SC"),
    "Insulin": ("INRHI", "001723", "00002821501", "100 Units / mL - 10 mL Vial", "0", "UNIT", "0", "mL", "4", "SC"),
    "Furosemide": ("FURO20", "008208", "51079007220", "20mg Tablet", "20", "mg", "1", "TAB", "1", "PO/NG"),
    "Metoprolol Tartrate": ("METO25", "050631", "51079025520", "25mg Tablet", "25", "mg", "1", "TAB", "2", "PO"),
    "Acetaminophen": ("ACET325", "004489", "00904198261", "325mg Tablet", "650", "mg", "2", "TAB", "4", "PO/NG"),
    "Sodium Chloride 0.9%  Flush": ("NACLFLUSH", "", "0", "10 mL Syringe", "3", "mL", "0.3", "SYR", "3", "IV"),
    "Pantoprazole": ("PANT40", "027462", "00904647461", "40mg Tablet", "40", "mg", "1", "TAB", "1", "PO"),
    "Docusate Sodium": ("DOCU100", "003009", "00904224461", "100mg Capsule", "100", "mg", "1", "CAP", "2", "PO"),
    "Senna": ("SENN187", "002922", "00904516561", "8.6 mg Tablet", "8.6", "mg", "1", "TAB", "2", "PO/NG"),
    "Atorvastatin": ("ATOR10", "029967", "63304082790", "10mg Tablet", "10", "mg", "1", "TAB", "1", "PO/NG"),
    "Aspirin": ("ASA81", "004380", "00904404073", "81mg Tab", "81", "mg", "1", "TAB", "1", "PO/NG"),
}
DRIPS = ("NORepinephrine", "Vasopressin", "Propofol", "Fentanyl Citrate")
WARD = (("Heparin", 0.55), ("Enoxaparin Sodium", 0.3), ("Acetaminophen", 0.7), ("Sodium Chloride 0.9%  Flush", 0.85),
        ("Pantoprazole", 0.4), ("Docusate Sodium", 0.4), ("Senna", 0.35), ("Atorvastatin", 0.3), ("Aspirin", 0.3))
MAX_DOSES = 8          # administrations charted per scheduled order (the first days of it)

BLOOD, URINE, MRSA = (70012, "BLOOD CULTURE", 90201, "Blood Culture, Routine"), \
    (70079, "URINE", 90039, "URINE CULTURE"), (70091, "MRSA SCREEN", 90189, "MRSA SCREEN")
ORGANISMS = ((80002, "ESCHERICHIA COLI"), (80023, "STAPH AUREUS COAG +"), (80004, "KLEBSIELLA PNEUMONIAE"),
             (80026, "PSEUDOMONAS AERUGINOSA"), (80053, "ENTEROCOCCUS SP."))
ANTIBIOTICS = ((90029, "MEROPENEM", "<=0.25", "0.25"), (90012, "GENTAMICIN", "<=1", "1"),
               (90028, "CEFEPIME", "<=1", "1"), (90019, "CIPROFLOXACIN", "<=0.25", "0.25"),
               (90026, "PIPERACILLIN/TAZO", "<=4", "4"), (90018, "CEFTRIAXONE", "<=1", "1"))


def _orders(rng: np.random.Generator, adm: pd.DataFrame, care: pd.DataFrame) -> pd.DataFrame:
    """One row per medication order: admission row, drug, start and stop (hours after admittime)."""
    n = len(adm)
    los = adm["los_hours"].to_numpy()
    rows = []

    def add(mask, drug, start, stop):
        for i in np.flatnonzero(mask & ~np.isnan(start)):
            rows.append((i, drug, start[i], stop[i]))

    ward_start = rng.uniform(1, 8, n)
    for drug, p in WARD:
        add(rng.random(n) < p, drug, ward_start, los)
    chf, dm = adm["chf"].to_numpy(bool), adm["diabetes"].to_numpy(bool)
    add(chf & (rng.random(n) < 0.8), "Furosemide", ward_start + 1, los)
    add((chf | adm["hypertension"].to_numpy(bool)) & (rng.random(n) < 0.6), "Metoprolol Tartrate", ward_start, los)
    add(dm & (rng.random(n) < 0.85), "Insulin", ward_start, los)
    ps, pe = care["pressor_start"].to_numpy(), care["pressor_end"].to_numpy()
    add(np.ones(n, bool), "NORepinephrine", ps, pe)
    add(care["vasopressin"].to_numpy(bool), "Vasopressin", ps + 0.5, pe)
    add(np.ones(n, bool), "Propofol", care["vent_start"].to_numpy(), care["vent_end"].to_numpy())
    add(np.ones(n, bool), "Fentanyl Citrate", care["vent_start"].to_numpy(), care["vent_end"].to_numpy())
    a0, a1 = care["abx_start"].to_numpy(), care["abx_end"].to_numpy()
    broad = care["s0"].to_numpy() > 1.5
    add(np.ones(n, bool), "Vancomycin", a0, a1)
    add(~broad & (rng.random(n) < 0.6), "Piperacillin-Tazobactam", a0, a1)
    add(~broad & (rng.random(n) < 0.4), "CeftriaXONE", a0, a1)
    add(broad, "Meropenem", a0, a1)
    o = pd.DataFrame(rows, columns=["adm", "drug", "start", "stop"])
    o["start"] = np.floor(o["start"].to_numpy())   # orders start on the hour after admittime's hour
    o["stop"] = np.maximum(np.ceil(np.minimum(o["stop"].to_numpy(), los[o["adm"].to_numpy()])), o["start"] + 1)
    return o


def write_medications(rng: np.random.Generator, root: Path, adm: pd.DataFrame, care: pd.DataFrame) -> tuple[int, int]:
    """prescriptions and emar; returns their row counts."""
    o = _orders(rng, adm, care)
    a = o["adm"].to_numpy()
    subj = adm["subject_id"].to_numpy()[a]
    admit = adm["admittime"].dt.floor("h").to_numpy()[a]
    o["subject_id"], o["hadm_id"] = subj, adm["hadm_id"].to_numpy()[a]
    o["starttime"] = admit + pd.to_timedelta(o["start"].to_numpy(), unit="h")
    o["stoptime"] = admit + pd.to_timedelta(o["stop"].to_numpy(), unit="h")
    o = o.sort_values(["subject_id", "starttime", "drug"], kind="stable").reset_index(drop=True)
    o["poe_seq"] = o.groupby("subject_id").cumcount() * 3 + 11
    o["poe_id"] = o["subject_id"].astype(str) + "-" + o["poe_seq"].astype(str)
    o["pharmacy_id"] = rng.choice(89_999_999, size=len(o), replace=False) + 10_000_000
    o["order_provider_id"] = np.array([f"P{x:05X}"[:6] for x in rng.integers(0, 0xFFFFF, len(o))], dtype=object)
    o["drug_type"] = "MAIN"
    fields = ["formulary_drug_cd", "gsn", "ndc", "prod_strength", "dose_val_rx", "dose_unit_rx", "form_val_disp",
              "form_unit_disp", "doses_per_24_hrs", "route"]
    attrs = pd.DataFrame.from_dict(DRUGS, orient="index", columns=fields)
    for f in fields:
        o[f] = attrs.loc[o["drug"], f].to_numpy()
    o["form_rx"] = ""
    rx = o.assign(starttime=fmt_time(o["starttime"]), stoptime=fmt_time(o["stoptime"]))
    n_rx = write_csv(rx, root / "hosp" / "prescriptions.csv.gz", PRESCRIPTION_COLUMNS)

    # emar: drips are Started and Stopped; scheduled drugs administered (or not) at each dose time.
    drip = o["drug"].isin(DRIPS).to_numpy()
    per_day = pd.to_numeric(o["doses_per_24_hrs"], errors="coerce").fillna(1).to_numpy()
    span = (o["stoptime"] - o["starttime"]).dt.total_seconds().to_numpy() / 3600
    k = np.where(drip, 2, np.clip(np.floor(span * per_day / 24), 1, MAX_DOSES)).astype(int)
    j = np.repeat(np.arange(len(o)), k)
    idx = np.concatenate([np.arange(m) for m in k]) if len(j) else np.zeros(0, int)
    step = np.where(drip[j], span[j], 24 / per_day[j])
    sched = o["starttime"].to_numpy()[j] + pd.to_timedelta(np.round(idx * step * 60), unit="m")
    e = pd.DataFrame({"subject_id": o["subject_id"].to_numpy()[j], "hadm_id": o["hadm_id"].to_numpy()[j],
                      "poe_id": o["poe_id"].to_numpy()[j], "pharmacy_id": o["pharmacy_id"].to_numpy()[j],
                      "medication": o["drug"].to_numpy()[j], "scheduletime": sched})
    flush = e["medication"].str.contains("Flush").to_numpy()
    given = rng.random(len(e)) < 0.88
    e["event_txt"] = np.where(drip[j], np.where(idx == 0, "Started", "Stopped"),
                              np.where(flush, np.where(given, "Flushed", "Not Flushed"),
                                       np.where(given, "Administered", "Not Given")))
    e["charttime"] = e["scheduletime"] + minutes(np.where(drip[j], 0, rng.uniform(-20, 60, len(e))))
    e["storetime"] = e["charttime"] + minutes(rng.uniform(0, 30, len(e)))
    e = e[e["charttime"] < adm["dischtime"].to_numpy()[o["adm"].to_numpy()[j]]]
    e = e.sort_values(["subject_id", "charttime", "medication"], kind="stable").reset_index(drop=True)
    e["emar_seq"] = e.groupby("subject_id").cumcount() + 1
    e["emar_id"] = e["subject_id"].astype(str) + "-" + e["emar_seq"].astype(str)
    e["enter_provider_id"] = ""
    for c in ("charttime", "scheduletime", "storetime"):
        e[c] = fmt_time(e[c])
    n_emar = write_csv(e, root / "hosp" / "emar.csv.gz", EMAR_COLUMNS)
    return n_rx, n_emar


def write_microbiology(rng: np.random.Generator, root: Path, adm: pd.DataFrame, care: pd.DataFrame) -> int:
    """Blood and urine cultures (with the antibiotics, or at random), MRSA screens on ICU admission."""
    n = len(adm)
    infection = care["infection"].to_numpy(bool)
    z = adm["z_ehr"].to_numpy()
    los = adm["los_hours"].to_numpy()
    draws = []   # (adm, hours, spec, positive probability)
    t_inf = care["abx_start"].to_numpy() - rng.uniform(0.2, 1.0, n)
    t_other = rng.uniform(0, 1, n) * np.minimum(los, 72)
    for i in range(n):
        if infection[i]:
            p = sigmoid(-0.8 + 0.9 * z[i])
            draws += [(i, t_inf[i], BLOOD, p), (i, t_inf[i] + 0.05, BLOOD, p)]
            if rng.random() < 0.6:
                draws.append((i, t_inf[i] + 0.3, URINE, p))
        else:
            if rng.random() < 0.2:
                draws.append((i, t_other[i], BLOOD, 0.03))
            if rng.random() < 0.3:
                draws.append((i, t_other[i] + 0.5, URINE, 0.08))
        if care["has_icu"].iat[i]:
            draws.append((i, care["icu_in"].iat[i] + rng.uniform(0, 4), MRSA, 0.06))
    d = pd.DataFrame(draws, columns=["adm", "hours", "spec", "p"])
    m = len(d)
    d["positive"] = rng.random(m) < d["p"].to_numpy()
    a = d["adm"].to_numpy()
    d["subject_id"], d["hadm_id"] = adm["subject_id"].to_numpy()[a], adm["hadm_id"].to_numpy()[a].astype(float)
    d.loc[rng.random(m) < 0.05, "hadm_id"] = np.nan          # drawn in the ED or clinic: no hadm_id
    d["charttime"] = pd.Series(adm["admittime"].to_numpy()[a] + minutes(d["hours"] * 60))
    d["storetime"] = d["charttime"] + minutes(np.where(d["positive"], rng.uniform(18, 60, m),
                                                       rng.uniform(24, 96, m)) * 60)
    d["micro_specimen_id"] = rng.choice(9_000_000, size=m, replace=False) + 1_000_000
    org = rng.integers(0, len(ORGANISMS), m)
    # Rows: a negative culture is one row; a positive one is the organism row and its susceptibilities.
    n_rows = np.where(d["positive"] & (d["spec"].map(lambda s: s[0]) != MRSA[0]), 1 + 4, 1)
    r = np.repeat(np.arange(m), n_rows)
    k = np.concatenate([np.arange(x) for x in n_rows]) if m else np.zeros(0, int)
    ev = d.iloc[r].reset_index(drop=True)
    spec = ev["spec"]
    ev["spec_itemid"], ev["spec_type_desc"] = spec.map(lambda s: s[0]), spec.map(lambda s: s[1])
    ev["test_itemid"], ev["test_name"] = spec.map(lambda s: s[2]), spec.map(lambda s: s[3])
    ev["test_seq"] = 1
    pos = ev["positive"].to_numpy()
    o = org[r]
    ev["org_itemid"] = np.where(pos, np.array([x[0] for x in ORGANISMS])[o], -1)
    ev["org_name"] = np.where(pos, np.array([x[1] for x in ORGANISMS], dtype=object)[o], "")
    ev["isolate_num"] = np.where(pos, "1", "")
    ev["quantity"] = ""
    order = rng.permuted(np.tile(np.arange(len(ANTIBIOTICS)), (max(m, 1), 1)), axis=1)  # distinct per culture
    ab = order[r, np.maximum(k - 1, 0)]
    has_ab = pos & (k > 0)
    abx = np.array(ANTIBIOTICS, dtype=object)
    ev["ab_itemid"] = np.where(has_ab, abx[ab, 0], "")
    ev["ab_name"] = np.where(has_ab, abx[ab, 1], "")
    resistant = rng.random(len(ev)) < 0.2
    ev["dilution_text"] = np.where(has_ab & ~resistant, abx[ab, 2], np.where(has_ab, ">=64", ""))
    ev["dilution_comparison"] = np.where(has_ab & ~resistant, "<=        ", np.where(has_ab, ">=        ", ""))
    ev["dilution_value"] = np.where(has_ab & ~resistant, abx[ab, 3], np.where(has_ab, "64", ""))
    ev["interpretation"] = np.where(has_ab, np.where(resistant, "R", "S"), "")
    mrsa = ev["spec_itemid"].to_numpy() == MRSA[0]
    ev["comments"] = np.where(pos, "", np.where(mrsa, "No MRSA isolated.  ", "NO GROWTH.  "))
    ev["org_itemid"] = ev["org_itemid"].astype("Int64").where(pos)
    ev["hadm_id"] = ev["hadm_id"].astype("Int64")
    # The mess of the real table: some rows only have a chartdate, some are not stored yet.
    ev["chartdate"] = ev["charttime"].dt.floor("D")
    ev["storedate"] = ev["storetime"].dt.floor("D")
    specimen_u = rng.random(m)[r]
    ev.loc[specimen_u < 0.06, "charttime"] = pd.NaT
    pending = (specimen_u > 0.99)
    ev.loc[pending, ["storetime", "storedate"]] = pd.NaT
    ev = ev.sort_values(["subject_id", "chartdate", "micro_specimen_id"], kind="stable").reset_index(drop=True)
    ev["microevent_id"] = np.arange(1, len(ev) + 1)
    ev["order_provider_id"] = ""
    for c in ("chartdate", "charttime", "storedate", "storetime"):
        ev[c] = fmt_time(ev[c])
    return write_csv(ev, root / "hosp" / "microbiologyevents.csv.gz", MICRO_COLUMNS)
