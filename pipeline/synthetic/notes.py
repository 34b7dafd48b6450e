"""MIMIC-IV-Note layout: note/radiology.csv.gz and note/discharge.csv.gz.

Radiology reports are assembled from phrase pools graded by severity tier
(0 normal ... 3 severe).  Each sentence draws its tier from the report's level
``z_notes + noise`` plus sentence noise, so the share of worrying sentences
carries the hidden notes component.  Reports after the prediction time drift
toward the outcome ("interval worsening" / "interval improvement"), later
reports copy sentences forward from earlier ones, and discharge summaries,
charted on the discharge date (a date: 00:00:00, hours before the discharge, some without a
storetime), state the outcome and copy the impressions: the leakage
traps.  The reports are not the readings of the synthetic CXR images (whose
content carries a separate, imaging component).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.synthetic._io import fmt_time, minutes, sigmoid, write_csv
from pipeline.synthetic.latent import PREDICTION_HOURS, presence_logit

NOTE_COLUMNS = ["note_id", "subject_id", "hadm_id", "note_type", "note_seq", "charttime", "storetime", "text"]
TIER_CUTS = (-0.3, 0.6, 1.4)
NO_STORETIME_FRACTION = 0.1   # discharge summaries without a storetime
REPORT_NOISE_SD = 0.3

CHEST = {
    "indication": (
        ("chest pain, evaluate for acute process", "preoperative evaluation", "cough", "fall, rule out injury",
         "routine follow up"),
        ("shortness of breath", "cough and low grade fever", "dyspnea on exertion", "pleuritic chest pain"),
        ("hypoxia, evaluate for pneumonia", "fever and leukocytosis", "new oxygen requirement",
         "tachypnea and crackles on exam"),
        ("respiratory failure, intubated, evaluate ETT placement", "septic shock, hypotension",
         "hypoxemia on BiPAP, comfort measures discussed with family", "worsening respiratory distress"),
    ),
    "findings": (
        ("The lungs are clear without focal consolidation.", "No pleural effusion or pneumothorax is seen.",
         "The cardiomediastinal silhouette is within normal limits.", "Heart size is normal.",
         "There is no pulmonary vascular congestion.", "The osseous structures are unremarkable."),
        ("Mild bibasilar atelectasis.", "Minimal blunting of the left costophrenic angle may reflect a trace effusion.",
         "The lungs are mildly hyperinflated.", "Heart size is top normal.",
         "Subtle opacity at the right base likely reflects atelectasis, though early infection is not excluded."),
        ("Moderate right pleural effusion with adjacent atelectasis.",
         "Patchy opacity in the left lower lobe is concerning for pneumonia.", "Mild pulmonary vascular congestion.",
         "The heart is moderately enlarged.", "Small bilateral pleural effusions."),
        ("New bilateral opacities, diffuse, with air bronchograms.",
         "Large left pleural effusion with near complete collapse of the left lower lobe.",
         "Diffuse alveolar opacities consistent with severe pulmonary edema.", "Multifocal consolidation.",
         "Endotracheal tube terminates 3 cm above the carina; a nasogastric tube courses below the diaphragm."),
    ),
    "impression": (
        ("No acute cardiopulmonary process.", "No evidence of pneumonia.", "Normal chest radiograph."),
        ("Mild bibasilar atelectasis.  No definite consolidation.",
         "Possible early pneumonia at the right base in the appropriate clinical setting."),
        ("Left lower lobe pneumonia.", "Moderate pulmonary edema and small bilateral effusions.",
         "Moderate right pleural effusion."),
        ("New bilateral opacities concerning for ARDS or multifocal pneumonia.",
         "Severe pulmonary edema.", "Large left pleural effusion with lobar collapse."),
    ),
}
OTHER_EXAMS = {
    "CT HEAD W/O CONTRAST": (
        ("No acute intracranial process.", "No hemorrhage, edema or mass effect.", "Ventricles are normal in size."),
        ("Mild chronic small vessel ischemic disease.", "Age-appropriate involutional changes."),
        ("Small subdural hematoma along the right convexity without midline shift.",
         "Hypodensity in the left MCA territory may represent a subacute infarct."),
        ("Large acute intraparenchymal hemorrhage with 8 mm midline shift.",
         "Diffuse cerebral edema with effacement of the basal cisterns."),
    ),
    "CT ABD & PELVIS WITH CONTRAST": (
        ("No acute process in the abdomen or pelvis.", "The liver, spleen and pancreas are unremarkable."),
        ("Colonic diverticulosis without diverticulitis.", "Small hiatal hernia."),
        ("Small volume free fluid in the pelvis.", "Wall thickening of the ascending colon, likely colitis."),
        ("Pneumatosis and portal venous gas concerning for bowel ischemia.",
         "Large volume ascites and free air concerning for perforation."),
    ),
}
NEUTRAL = ("No pneumothorax is seen.", "The osseous structures are unremarkable.",
           "Surgical clips project over the upper abdomen.", "Degenerative changes of the thoracic spine.")
INTERVAL = {True: ("Interval worsening of the previously seen opacities.", "Findings have progressed since the prior."),
            False: ("Interval improvement compared to the prior study.", "Findings are stable to improved.")}
TECHNIQUE = {"CHEST (PORTABLE AP)": "Portable AP chest radiograph.",
             "CHEST (PA AND LAT)": "Chest PA and lateral.",
             "CT HEAD W/O CONTRAST": "Contiguous axial images of the brain were obtained without contrast.",
             "CT ABD & PELVIS WITH CONTRAST": "MDCT images of the abdomen and pelvis with IV contrast."}


def _tier(level: np.ndarray) -> np.ndarray:
    return np.digitize(level, TIER_CUTS)


def radiology_text(rng: np.random.Generator, level: float, exam: str, sex: str, prior: str | None,
                   trend: bool | None) -> tuple[str, list[str], str, tuple]:
    """One report: (text, its impression sentences, its most severe finding, for copy-forward,
    and the tier draws that set its wording).

    Each sentence's tier is ``level`` plus sentence noise, so the share of worrying
    sentences is graded; normal-lung sentences give way to neutral ones when a
    sentence is moderate or worse, so a report does not contradict itself.  The draws are
    ``(noise_sd, tier, at_most)`` triples: tier(level + N(0, noise_sd)) equals ``tier``, or
    is at most it when ``at_most`` (an impression raised to the top finding's tier - 1);
    everything else in the text is independent of the level (synthetic.bayes reads them).
    """
    man = "man" if sex == "M" else "woman"
    chest = exam.startswith("CHEST")
    ind_tier = int(_tier(level + rng.normal(0, 0.6)))
    if chest:
        ind = CHEST["indication"][ind_tier]
        find_pool, imp_pool = CHEST["findings"], CHEST["impression"]
    else:
        ind = (("headache", "altered mental status", "fall on anticoagulation", "sudden weakness")
               if "HEAD" in exam else ("abdominal pain", "fever, evaluate for abscess", "nausea and vomiting",
                                       "distension, elevated lactate"))
        ind = (ind[ind_tier],)
        find_pool = imp_pool = OTHER_EXAMS[exam]
    tiers = _tier(level + rng.normal(0, 0.5, int(rng.integers(3, 6))))
    top = int(tiers.max())
    order = np.argsort(-tiers, kind="stable")
    findings = []
    for t in tiers[order]:
        if t == 0 and top >= 2:
            if chest:
                findings.append(str(rng.choice(NEUTRAL)))
        else:
            findings.append(str(rng.choice(find_pool[t])))
    findings = list(dict.fromkeys(findings))
    key_finding = findings[0]
    rng.shuffle(findings)
    imp_tiers = np.maximum(_tier(level + rng.normal(0, 0.4, int(rng.integers(1, 3)))), top - 1)
    draws = ((0.6, ind_tier, False), *((0.5, int(t), False) for t in tiers),
             *((0.4, int(t), bool(t == top - 1)) for t in imp_tiers))
    impression = list(dict.fromkeys(str(rng.choice(imp_pool[t])) for t in imp_tiers))
    if prior is not None:  # copy forward: the previous report's main finding, verbatim
        findings = [prior] + [f for f in findings if f != prior]
        if trend is not None:
            impression = [str(rng.choice(INTERVAL[trend]))] + impression
    comparison = "___" if prior is not None else ("None." if rng.random() < 0.5 else "Chest radiograph ___.")
    text = (f"EXAMINATION:  {exam}\n\nINDICATION:  ___ year old {man} with {rng.choice(ind)}  // "
            f"{rng.choice(('eval for acute process', 'interval change?', 'please assess'))}\n\n"
            f"TECHNIQUE:  {TECHNIQUE[exam]}\n\nCOMPARISON:  {comparison}\n\nFINDINGS: \n\n"
            + " \n".join(findings) + "\n\nIMPRESSION: \n\n"
            + "\n".join(f"{i + 1}. {s}" if len(impression) > 1 else s for i, s in enumerate(impression)) + "\n")
    return text, impression, key_finding, draws


def plan_radiology(rng: np.random.Generator, adm: pd.DataFrame) -> pd.DataFrame:
    """Report times: before the prediction time (presence depends on acuity and z_notes) and later in the stay."""
    n = len(adm)
    present = rng.random(n) < sigmoid(presence_logit("notes", adm["acuity"], adm["z_notes"]))
    n_pre = np.where(present, np.where(rng.random(n) < 0.7, 1, 2), 0)
    los = adm["los_hours"].to_numpy()
    n_post = np.where(los > PREDICTION_HOURS + 2, rng.poisson(np.clip(los / 120, 0.1, 2)), 0).clip(0, 3)
    rows = []
    for i in range(n):
        for _ in range(n_pre[i]):
            if rng.random() < 0.85:
                rows.append((i, min(rng.uniform(-5, PREDICTION_HOURS - 1), los[i] - 0.3), True))
            else:
                rows.append((i, -24 * rng.uniform(1, 20), False))   # outpatient study, no hadm_id
        for _ in range(n_post[i]):
            rows.append((i, rng.uniform(PREDICTION_HOURS + 0.5, los[i]), True))
    plan = pd.DataFrame(rows, columns=["adm", "hours", "inpatient"])
    return plan.sort_values(["adm", "hours"]).reset_index(drop=True)


def report_levels(rng: np.random.Generator, plan: pd.DataFrame, adm: pd.DataFrame) -> pd.DataFrame:
    """Each report's severity level (``severity``).  Before the prediction time it is
    ``load * z_notes + cross_load * z_imaging + N(0, noise_sd)`` (columns read by
    synthetic.bayes); later reports drift toward the outcome (loads NaN there)."""
    z, zi = adm["z_notes"].to_numpy(), adm["z_imaging"].to_numpy()
    died = adm["label"].to_numpy() == 1
    los = adm["los_hours"].to_numpy()
    report_noise = rng.normal(0, REPORT_NOISE_SD, len(plan))
    out = np.full((len(plan), 3), np.nan)
    for j, (i, h) in enumerate(zip(plan["adm"].to_numpy(), plan["hours"].to_numpy())):
        if h > PREDICTION_HOURS:
            level = z[i] + 0.15 * zi[i] + report_noise[j]
            ramp = (h - PREDICTION_HOURS) / max(los[i] - PREDICTION_HOURS, 12)
            out[j, 0] = level + (2.2 * ramp if died[i] else -0.5 * max(level, 0) * ramp)
        elif h < 0:
            out[j] = (0.7 * z[i] + report_noise[j], 0.7, 0.0)
        else:
            out[j] = (z[i] + 0.15 * zi[i] + report_noise[j], 1.0, 0.15)
    return plan.assign(severity=out[:, 0], load=out[:, 1], cross_load=out[:, 2], noise_sd=REPORT_NOISE_SD)


def write_radiology(rng: np.random.Generator, root: Path, adm: pd.DataFrame,
                    patients: pd.DataFrame) -> tuple[int, pd.DataFrame, dict]:
    """Write note/radiology.csv.gz; return (rows, the reports, impressions per admission)."""
    plan, impressions = radiology_reports(rng, adm, patients)
    out = plan.assign(hadm_id=plan["hadm_id"].astype("Int64"), charttime=fmt_time(plan["charttime"]),
                      storetime=fmt_time(plan["storetime"]))
    return write_csv(out, root / "note" / "radiology.csv.gz", NOTE_COLUMNS), plan, impressions


def radiology_reports(rng: np.random.Generator, adm: pd.DataFrame,
                      patients: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The radiology reports (one row each: times, text, level, tier draws) and impressions per admission."""
    plan = plan_radiology(rng, adm)
    sex = patients.set_index("subject_id")["gender"]
    plan = report_levels(rng, plan, adm)
    texts, impressions, tier_draws = [], {}, []
    prev_adm, priors = -1, {}
    for i, h, level in zip(plan["adm"].to_numpy(), plan["hours"].to_numpy(), plan["severity"].to_numpy()):
        if i != prev_adm:
            prev_adm, priors = i, {}
        trend = bool(adm["label"].iat[i] == 1) if h > PREDICTION_HOURS else None
        u = rng.random()
        exam = ("CHEST (PORTABLE AP)" if u < 0.45 else "CHEST (PA AND LAT)" if u < 0.75
                else "CT HEAD W/O CONTRAST" if u < 0.87 else "CT ABD & PELVIS WITH CONTRAST")
        family = "CHEST" if exam.startswith("CHEST") else exam  # chest films compare with chest films
        text, imp, key, draws = radiology_text(rng, level, exam, sex[adm["subject_id"].iat[i]],
                                               priors.get(family), trend)
        texts.append(text)
        tier_draws.append(draws)
        impressions.setdefault(i, []).append((exam, imp))
        priors[family] = key
    a = adm.iloc[plan["adm"].to_numpy()]
    plan["subject_id"] = a["subject_id"].to_numpy()
    plan["hadm_id"] = np.where(plan["inpatient"], a["hadm_id"].to_numpy(), np.nan)
    plan["charttime"] = a["admittime"].to_numpy() + minutes(plan["hours"] * 60)
    plan["storetime"] = plan["charttime"] + pd.to_timedelta(rng.integers(15, 600, len(plan)), unit="m")
    plan["before_prediction"] = plan["charttime"] <= a["prediction_time"].to_numpy()
    plan["text"] = texts
    plan["tier_draws"] = tier_draws
    plan = plan.sort_values(["subject_id", "charttime"], kind="stable").reset_index(drop=True)
    plan["note_seq"] = plan.groupby("subject_id").cumcount() + 1
    plan["note_id"] = plan["subject_id"].astype(str) + "-RR-" + plan["note_seq"].astype(str)
    plan["note_type"] = "RR"
    return plan, impressions


# ------------------------------------------------------------------ discharge summaries

CHIEF = (("chest pain", "abdominal pain", "fall", "elective procedure"),
         ("shortness of breath", "fever", "weakness"),
         ("hypoxia", "altered mental status", "sepsis"),
         ("respiratory failure", "hypotension", "cardiac arrest"))
PMH = {"diabetes": "Type 2 diabetes mellitus", "hypertension": "Hypertension", "ckd": "Chronic kidney disease stage 3",
       "chf": "Heart failure with reduced ejection fraction", "copd": "COPD on home inhalers",
       "cancer": "Non-small cell lung cancer"}


def _course(rng, r, died: bool, sex: str) -> str:
    parts = []
    if r.z_ehr > 1:
        parts.append(f"{'He' if sex == 'M' else 'She'} was found to have lactic acidosis and acute kidney injury and was treated with IV "
                     "fluids and broad spectrum antibiotics.")
    if r.z_ecg > 1:
        parts.append("EKG showed atrial fibrillation with rapid ventricular response and lateral ST depressions; "
                     "cardiology was consulted.")
    if r.z_imaging > 1 or r.z_notes > 1:
        parts.append("Chest imaging showed bilateral opacities and effusions concerning for pneumonia/ARDS.")
    if not parts:
        parts.append("Work-up was largely unremarkable and symptoms improved with supportive care.")
    if died:
        parts.append(str(rng.choice((
            ("Despite maximal support the patient continued to decline. After a family meeting, goals of care "
             "were transitioned to comfort measures only and the patient expired on ___."),
            "The patient developed refractory shock and passed away on ___ with family at bedside.",
            "The patient had a PEA arrest; ACLS was unsuccessful and the patient expired. Family was notified."))))
    else:
        parts.append(str(rng.choice(("The patient improved and was discharged home in stable condition.",
                                     "Clinically improved; discharged with services after PT evaluation.",
                                     "Stable for discharge to rehab."))))
    return " ".join(parts)


def discharge_text(rng, r, sex: str, history: list[str], impressions: list, died: bool) -> str:
    tier = int(np.digitize(r.z_ehr + 0.5 * r.acuity + rng.normal(0, 0.5), TIER_CUTS))
    cc = str(rng.choice(CHIEF[tier]))
    pronoun = "Mr." if sex == "M" else "Ms."
    imaging = "\n".join(f"{exam}: {' '.join(imp)}" for exam, imp in impressions[-3:]) or "None."
    labs = (f"___ 07:20AM BLOOD WBC-{8.2 * np.exp(0.2 * r.z_ehr):.1f} Hgb-{12.4 - 0.55 * r.z_ehr:.1f} "
            f"Plt-{235 * np.exp(-0.16 * r.z_ehr):.0f}\n___ 07:20AM BLOOD Glucose-{112 * np.exp(0.1 * r.z_ehr):.0f} "
            f"UreaN-{16 * np.exp(0.26 * r.z_ehr):.0f} Creat-{0.95 * np.exp(0.24 * r.z_ehr):.1f}\n"
            f"___ 07:35AM BLOOD Lactate-{1.35 * np.exp(0.36 * r.z_ehr):.1f}")
    disposition = "Expired" if died else str(rng.choice(("Home", "Home With Service", "Extended Care")))
    meds = "None." if died else "1. Aspirin 81 mg PO DAILY \n2. Atorvastatin 40 mg PO QPM \n3. Metoprolol Succinate XL " \
                                "25 mg PO DAILY"
    return (
        f" \nName:  ___                     Unit No:   ___\n \nAdmission Date:  ___              Discharge Date:   ___\n"
        f" \nDate of Birth:  ___             Sex:   {sex}\n \nService: "
        f"{rng.choice(('MEDICINE', 'MEDICINE', 'SURGERY', 'CARDIOLOGY', 'NEUROLOGY'))}\n \nAllergies: \n"
        f"{rng.choice(('No Known Allergies / Adverse Drug Reactions', 'Penicillins', 'Sulfa (Sulfonamide Antibiotics)'))}"
        f"\n \nAttending: ___.\n \nChief Complaint:\n{cc}\n \nMajor Surgical or Invasive Procedure:\n"
        f"{'Intubation, central line placement' if r.has_icu and r.acuity > 0.5 else 'None'}\n \n"
        f"History of Present Illness:\n{pronoun} ___ is a ___ year old with "
        f"{', '.join(history) if history else 'no significant past medical history'} who presents with {cc}. "
        f"In the ED, initial vitals were notable for HR ___ and BP ___. \n \nPast Medical History:\n"
        + ("\n".join(f"- {h}" for h in history) if history else "None.")
        + f"\n \nSocial History:\n___\nFamily History:\nNon-contributory.\n \nPertinent Results:\nADMISSION LABS:\n"
        f"{labs}\n\nIMAGING:\n{imaging}\n \nBrief Hospital Course:\n{pronoun} ___ was admitted with {cc}. "
        f"{_course(rng, r, died, sex)}\n \nMedications on Admission:\nThe Preadmission Medication list is accurate and "
        f"complete.\n \nDischarge Medications:\n{meds}\n \nDischarge Disposition:\n{disposition}\n \n"
        f"Discharge Diagnosis:\n{cc}\n \nDischarge Condition:\n"
        f"{'Deceased.' if died else 'Mental Status: Clear and coherent. Activity Status: Ambulatory - Independent.'}"
        f"\n \nFollowup Instructions:\n___\n")


def write_discharge(rng: np.random.Generator, root: Path, adm: pd.DataFrame, patients: pd.DataFrame,
                    impressions: dict) -> int:
    """One summary per admission (a few missing), charted on the discharge date, stating the outcome."""
    pat = patients.set_index("subject_id")
    keep = rng.random(len(adm)) < 0.97
    rows = []
    for i, r in enumerate(adm.itertuples(index=False)):
        if not keep[i]:
            continue
        p = pat.loc[r.subject_id]
        history = [v for k, v in PMH.items() if p[k]]
        text = discharge_text(rng, r, p["gender"], history, impressions.get(i, []), r.label == 1)
        rows.append((r.subject_id, r.hadm_id, r.dischtime, r.dischtime + pd.Timedelta(minutes=int(rng.integers(60, 2160))),
                     text))
    df = pd.DataFrame(rows, columns=["subject_id", "hadm_id", "charttime", "storetime", "text"])
    df = df.sort_values(["subject_id", "charttime"], kind="stable").reset_index(drop=True)
    df["note_seq"] = df.groupby("subject_id").cumcount() + 1
    df["note_id"] = df["subject_id"].astype(str) + "-DS-" + df["note_seq"].astype(str)
    df["note_type"] = "DS"
    # As in MIMIC-IV-Note: the charttime of a discharge summary is the discharge DATE (00:00:00),
    # which precedes the discharge itself, and some summaries have no storetime.
    df["charttime"] = df["charttime"].dt.floor("D")
    df.loc[rng.random(len(df)) < NO_STORETIME_FRACTION, "storetime"] = pd.NaT
    df["charttime"], df["storetime"] = fmt_time(df["charttime"]), fmt_time(df["storetime"])
    return write_csv(df, root / "note" / "discharge.csv.gz", NOTE_COLUMNS)
