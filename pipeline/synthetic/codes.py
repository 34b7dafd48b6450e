"""MIMIC-IV hosp/ diagnosis and procedure codes: diagnoses_icd, procedures_icd, d_icd_diagnoses, d_icd_procedures.

Codes are assigned at discharge: they know the whole stay, the outcome included (sepsis
with shock, do-not-resuscitate and palliative-care codes in deaths), so the current
admission's codes are a leakage trap, while EARLIER admissions' codes carry the patient's
chronic conditions (heart failure, CKD and cancer enter the risk; see synthetic.latent).
A chronic condition is coded in a stay with probability ``CODED`` (real coding misses some).
As in MIMIC-IV, a stay is coded in ICD-9 before the patient's real date of the switch to
ICD-10 (October 2015; MIMIC shifts years per patient, ``icd10_from`` in the latents) and
in ICD-10 after it.  Titles are the ones of MIMIC-IV's d_icd tables, character for character.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.synthetic._io import write_csv

DIAGNOSES_COLUMNS = ["subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"]
PROCEDURES_COLUMNS = ["subject_id", "hadm_id", "seq_num", "chartdate", "icd_code", "icd_version"]
D_ICD_COLUMNS = ["icd_code", "icd_version", "long_title"]
CODED = 0.85

# name: (ICD-9 code, its title, ICD-10 code, its title)
DX = {
    "chf": ("4280", "Congestive heart failure, unspecified", "I5022", "Chronic systolic (congestive) heart failure"),
    "ckd": ("5853", "Chronic kidney disease, Stage III (moderate)",
            "N183", "Chronic kidney disease, stage 3 (moderate)"),
    "cancer": ("1629", "Malignant neoplasm of bronchus and lung, unspecified",
               "C3490", "Malignant neoplasm of unspecified part of unspecified bronchus or lung"),
    "metastases": ("1977", "Malignant neoplasm of liver, secondary",
                   "C787", "Secondary malignant neoplasm of liver and intrahepatic bile duct"),
    "diabetes": ("25000", "Diabetes mellitus without mention of complication, type II or unspecified type, not "
                 "stated as uncontrolled", "E119", "Type 2 diabetes mellitus without complications"),
    "hypertension": ("4019", "Unspecified essential hypertension", "I10", "Essential (primary) hypertension"),
    "copd": ("496", "Chronic airway obstruction, not elsewhere classified", "J449",
             "Chronic obstructive pulmonary disease, unspecified"),
    "sepsis": ("0389", "Unspecified septicemia", "A419", "Sepsis, unspecified organism"),
    "septic_shock": ("78552", "Septic shock", "R6521", "Severe sepsis with septic shock"),
    "aki": ("5849", "Acute kidney failure, unspecified", "N179", "Acute kidney failure, unspecified"),
    "afib": ("42731", "Atrial fibrillation", "I4891", "Unspecified atrial fibrillation"),
    "nstemi": ("41071", "Subendocardial infarction, initial episode of care", "I214",
               "Non-ST elevation (NSTEMI) myocardial infarction"),
    "pneumonia": ("486", "Pneumonia, organism unspecified", "J189", "Pneumonia, unspecified organism"),
    "resp_failure": ("51881", "Acute respiratory failure", "J9601", "Acute respiratory failure with hypoxia"),
    "effusion": ("5119", "Unspecified pleural effusion", "J90", "Pleural effusion, not elsewhere classified"),
    "dnr": ("V4986", "Do not resuscitate status", "Z66", "Do not resuscitate"),
    "palliative": ("V667", "Encounter for palliative care", "Z515", "Encounter for palliative care"),
}
REASONS = {  # the reason for a stay with nothing acute
    "chest_pain": ("78659", "Other chest pain", "R0789", "Other chest pain"),
    "chest_pain_u": ("78650", "Chest pain, unspecified", "R079", "Chest pain, unspecified"),
    "gi_bleed": ("5789", "Hemorrhage of gastrointestinal tract, unspecified", "K922",
                 "Gastrointestinal hemorrhage, unspecified"),
    "hip_fracture": ("82000", "Closed fracture of intracapsular section of neck of femur, unspecified", "S72001A",
                     "Fracture of unspecified part of neck of right femur, initial encounter for closed fracture"),
    "uti": ("5990", "Urinary tract infection, site not specified", "N390",
            "Urinary tract infection, site not specified"),
    "syncope": ("7802", "Syncope and collapse", "R55", "Syncope and collapse"),
}
FILLER = {
    "hyperlipidemia": ("2724", "Other and unspecified hyperlipidemia", "E785", "Hyperlipidemia, unspecified"),
    "gerd": ("53081", "Esophageal reflux", "K219", "Gastro-esophageal reflux disease without esophagitis"),
    "depression": ("311", "Depressive disorder, not elsewhere classified", "F329",
                   "Major depressive disorder, single episode, unspecified"),
    "tobacco": ("V1582", "Personal history of tobacco use", "Z87891", "Personal history of nicotine dependence"),
    "anemia": ("2859", "Anemia, unspecified", "D649", "Anemia, unspecified"),
    "hypothyroidism": ("2449", "Unspecified acquired hypothyroidism", "E039", "Hypothyroidism, unspecified"),
    "back_pain": ("7242", "Lumbago", "M545", "Low back pain"),
    "osa": ("32723", "Obstructive sleep apnea (adult)(pediatric)",
            "G4733", "Obstructive sleep apnea (adult) (pediatric)"),
    "anticoagulants": ("V5861", "Long-term (current) use of anticoagulants", "Z7901",
                       "Long term (current) use of anticoagulants"),
    "anxiety": ("30000", "Anxiety state, unspecified", "F419", "Anxiety disorder, unspecified"),
    "obesity": ("27800", "Obesity, unspecified", "E669", "Obesity, unspecified"),
    "constipation": ("56400", "Constipation, unspecified", "K5900", "Constipation, unspecified"),
}
PX = {
    "vent_long": ("9672", "Continuous invasive mechanical ventilation for 96 consecutive hours or more",
                  "5A1955Z", "Respiratory Ventilation, Greater than 96 Consecutive Hours"),
    "vent_short": ("9671", "Continuous invasive mechanical ventilation for less than 96 consecutive hours",
                   "5A1935Z", "Respiratory Ventilation, Less than 24 Consecutive Hours"),
    "intubation": ("9604", "Insertion of endotracheal tube", "0BH17EZ",
                   "Insertion of Endotracheal Airway into Trachea, Via Natural or Artificial Opening"),
    "central_line": ("3893", "Venous catheterization, not elsewhere classified", "02HV33Z",
                     "Insertion of Infusion Device into Superior Vena Cava, Percutaneous Approach"),
    "dialysis": ("3995", "Hemodialysis", "5A1D70Z",
                 "Performance of Urinary Filtration, Intermittent, Less than 6 Hours Per Day"),
    "transfusion": ("9904", "Transfusion of packed cells", "30233N1",
                    "Transfusion of Nonautologous Red Blood Cells into Peripheral Vein, Percutaneous Approach"),
    "cardiac_cath": ("3722", "Left heart cardiac catheterization", "4A023N7",
                     "Measurement of Cardiac Sampling and Pressure, Left Heart, Percutaneous Approach"),
    "pci": ("0066", "Percutaneous transluminal coronary angioplasty [PTCA]", "027034Z",
            "Dilation of Coronary Artery, One Artery with Drug-eluting Intraluminal Device, Percutaneous Approach"),
    "chemotherapy": ("9925", "Injection or infusion of cancer chemotherapeutic substance", "3E04305",
                     "Introduction of Other Antineoplastic into Central Vein, Percutaneous Approach"),
    "endoscopy": ("4513", "Other endoscopy of small intestine", "0DJ08ZZ",
                  "Inspection of Upper Intestinal Tract, Via Natural or Artificial Opening Endoscopic"),
}
CHRONIC_CODED = ("chf", "ckd", "cancer", "diabetes", "hypertension", "copd")


def icd10(adm: pd.DataFrame, patients: pd.DataFrame) -> np.ndarray:
    """Whether each admission is coded in ICD-10 (discharged on or after the patient's switch date)."""
    switch = patients.set_index("subject_id")["icd10_from"].reindex(adm["subject_id"]).to_numpy()
    return adm["dischtime"].to_numpy() >= switch


def _rows(names: list[list[str]], table: dict, adm: pd.DataFrame, ten: np.ndarray) -> pd.DataFrame:
    """One row per (admission, code name), numbered in order, in the admission's ICD version."""
    k = np.array([len(x) for x in names])
    i = np.repeat(np.arange(len(adm)), k)
    flat = [n for x in names for n in x]
    v10 = ten[i]
    code = np.array([table[n][2] if t else table[n][0] for n, t in zip(flat, v10)], dtype=object)
    return pd.DataFrame({"adm": i, "subject_id": adm["subject_id"].to_numpy()[i],
                         "hadm_id": adm["hadm_id"].to_numpy()[i],
                         "seq_num": np.concatenate([np.arange(1, m + 1) for m in k]) if len(k) else [],
                         "icd_code": code, "icd_version": np.where(v10, 10, 9), "name": flat})


def diagnosis_names(rng: np.random.Generator, adm: pd.DataFrame) -> list[list[str]]:
    """Per admission, the names (keys of DX / REASONS / FILLER) coded at its discharge."""
    u = rng.random((len(adm), 20))
    filler = np.array(list(FILLER))
    reasons = list(REASONS)
    out = []
    cols = {c: adm[c].to_numpy() for c in ("z_ehr", "z_ecg", "z_notes", "z_imaging", "label", *CHRONIC_CODED)}
    for j in range(len(adm)):
        z_ehr, z_ecg, z_notes, z_img = cols["z_ehr"][j], cols["z_ecg"][j], cols["z_notes"][j], cols["z_imaging"][j]
        died, r = cols["label"][j] == 1, u[j]
        names = []
        if z_ehr > 1.0 or (died and r[0] < 0.6):
            names += ["sepsis", "septic_shock"] if (z_ehr > 1.8 or died) and r[1] < 0.6 else ["sepsis"]
        if z_ehr > 1.2 and r[2] < 0.7:
            names.append("aki")
        if z_ecg > 1.0 and r[3] < 0.7:
            names.append("afib")
        if z_ecg > 1.5 and r[4] < 0.5:
            names.append("nstemi")
        if z_img > 0.8 and r[5] < 0.7:
            names.append("pneumonia")
        if (z_img > 1.3 or z_notes > 1.3) and r[6] < 0.6:
            names.append("resp_failure")
        if z_img > 1.0 and r[7] < 0.5:
            names.append("effusion")
        if died:
            names += ["dnr"] if r[8] < 0.6 else []
            names += ["palliative"] if r[9] < 0.4 else []
        if not names:
            names.append(reasons[int(r[10] * len(reasons))])
        names += [c for k, c in enumerate(CHRONIC_CODED) if cols[c][j] and r[11 + k] < CODED]
        if cols["cancer"][j] and r[17] < 0.4:
            names.append("metastases")
        names += list(filler[rng.permutation(len(filler))[:int(r[18] * 5)]])
        out.append(list(dict.fromkeys(names)))
    return out


def procedure_names(rng: np.random.Generator, adm: pd.DataFrame, care: pd.DataFrame) -> list[list[str]]:
    """Per admission, the procedures coded at discharge (from the care plan and the latents)."""
    u = rng.random((len(adm), 6))
    c = {k: care[k].to_numpy() for k in ("vent_start", "vent_end", "pressor_start", "dialysis_start", "has_icu")}
    z_ehr, z_ecg, cancer = adm["z_ehr"].to_numpy(), adm["z_ecg"].to_numpy(), adm["cancer"].to_numpy(bool)
    out = []
    for j in range(len(adm)):
        r = u[j]
        names = []
        if not np.isnan(c["vent_start"][j]):
            names += ["intubation", "vent_long" if c["vent_end"][j] - c["vent_start"][j] >= 96 else "vent_short"]
        if not np.isnan(c["pressor_start"][j]) or (c["has_icu"][j] and r[0] < 0.3):
            names.append("central_line")
        if not np.isnan(c["dialysis_start"][j]):
            names.append("dialysis")
        if z_ehr[j] > 0.8 and r[1] < 0.3:
            names.append("transfusion")
        if z_ecg[j] > 1.2 and r[2] < 0.5:
            names += ["cardiac_cath"] + (["pci"] if r[3] < 0.5 else [])
        if cancer[j] and r[4] < 0.3:
            names.append("chemotherapy")
        if not names and r[5] < 0.15:
            names.append("endoscopy")
        out.append(names)
    return out


def write_codes(rng: np.random.Generator, root: Path, adm: pd.DataFrame, patients: pd.DataFrame,
                care: pd.DataFrame) -> tuple[int, int]:
    """diagnoses_icd, procedures_icd and the two d_icd tables (the codes used); returns the row counts."""
    ten = icd10(adm, patients)
    dx = _rows(diagnosis_names(rng, adm), {**DX, **REASONS, **FILLER}, adm, ten)
    n_dx = write_csv(dx.sort_values(["subject_id", "hadm_id", "seq_num"]), root / "hosp" / "diagnoses_icd.csv.gz",
                     DIAGNOSES_COLUMNS)
    px = _rows(procedure_names(rng, adm, care), PX, adm, ten)
    # chartdate: the day of the procedure (the care plan's time where there is one, else a day of the stay).
    start = {"intubation": "vent_start", "vent_long": "vent_start", "vent_short": "vent_start",
             "central_line": "pressor_start", "dialysis": "dialysis_start"}
    hours = np.array([care[start[n]].iat[a] if n in start else np.nan for n, a in zip(px["name"], px["adm"])])
    los = adm["los_hours"].to_numpy()[px["adm"].to_numpy()]
    hours = np.where(np.isnan(hours), rng.uniform(0, 1, len(px)) * los, hours)
    when = adm["admittime"].to_numpy()[px["adm"].to_numpy()] + pd.to_timedelta(np.round(hours * 60), unit="m")
    px["chartdate"] = pd.Series(when).dt.strftime("%Y-%m-%d").to_numpy()
    n_px = write_csv(px.sort_values(["subject_id", "hadm_id", "seq_num"]), root / "hosp" / "procedures_icd.csv.gz",
                     PROCEDURES_COLUMNS)
    for table, rows, name in ((({**DX, **REASONS, **FILLER}), dx, "d_icd_diagnoses"), (PX, px, "d_icd_procedures")):
        used = sorted(set(rows["name"]))
        d = pd.DataFrame([(table[n][0], 9, table[n][1]) for n in used] + [(table[n][2], 10, table[n][3]) for n in used],
                         columns=D_ICD_COLUMNS).sort_values(["icd_version", "icd_code"])
        write_csv(d, root / "hosp" / f"{name}.csv.gz", D_ICD_COLUMNS)
    return n_dx, n_px
