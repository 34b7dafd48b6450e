"""The hidden risk model behind the synthetic cohort (no files are written here).

Every admission gets four latent severities, one per modality, each a mix of a
patient-level trait (shared by the patient's admissions) and admission noise:

    z_ehr, z_ecg, z_notes, z_img ~ N(0, 1),  z = RHO * trait + sqrt(1 - RHO^2) * noise

plus an acuity ``a`` (correlated with the patient's frailty) and the age.  The
true in-hospital mortality logit is

    logit = B0 + ehr_part + ecg_part + notes_part + imaging_part + interaction_part
    ehr_part = W_EHR * z_ehr + W_AGE * age_z + W_ACUITY * a
               + W_CHF * chf + W_CKD * ckd + W_CANCER * cancer    (visible in the EHR; the chronic
                                                                  conditions mainly through earlier
                                                                  admissions' diagnosis codes)
    ecg_part = W_ECG * z_ecg,  notes_part = W_NOTES * z_notes,  imaging_part = W_IMG * z_img
    interaction_part = W_INT * z_ehr * z_ecg       (not additive across modalities: an ECG
                                                    severity weighs more in a sicker EHR)

and the label is Bernoulli(sigmoid(logit)).  Each modality generator shows its own
z only through its own data (labs/vitals, ECG morphology, report wording, CXR
content) before the prediction time, so each modality carries a separate share
of the signal.  Everything charted before admittime + 24 h depends on the latents
and noise only, never on the label (the one exception is a lab result that is
charted before and stored after it: see synthetic.ehr); after it, values drift
toward the outcome (the leakage traps).  Whether ECG, notes and CXR are recorded
before the prediction time depends on acuity AND on the modality's own hidden
severity (``PRESENCE``): missing not at random, so the sicker (and the more
likely to die) an admission is, the more likely the modality is present.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.synthetic._io import minutes, seconds, sigmoid

PREDICTION_HOURS = 24
RHO = 0.5                 # share of each latent that is a patient-level trait
B0 = -6.0
W_EHR, W_AGE, W_ACUITY = 1.75, 0.55, 0.45
W_CHF, W_CKD, W_CANCER = 1.3, 1.0, 1.6
W_ECG, W_NOTES, W_IMG = 2.10, 2.00, 2.25
W_INT = 0.7
# Presence of a modality before the prediction time: sigmoid(b0 + b_acuity * a + b_own * z_own).
PRESENCE = {"ecg": (0.95, 0.8, 0.7), "notes": (1.23, 0.8, 0.5), "imaging": (0.45, 0.8, 0.7)}
ADMISSIONS_PER_PATIENT = (1, 2, 3, 4, 5, 6, 7, 8)           # a tail of patients with long histories
ADMISSIONS_P = (0.50, 0.26, 0.12, 0.04, 0.03, 0.02, 0.02, 0.01)
ICD10_SWITCH = 2015.75    # the real (not shifted) year MIMIC's coding moved from ICD-9 to ICD-10
MINOR_FRACTION = 0.03
EARLY_DEATH_FRACTION = 0.08   # of in-hospital deaths, before the prediction time
LOS_MEDIAN_HOURS, LOS_ACUITY, LOS_SD = 80.0, 0.25, 0.6   # a survivor's stay: lognormal, longer with acuity

ANCHOR_GROUPS = ("2008 - 2010", "2011 - 2013", "2014 - 2016", "2017 - 2019", "2020 - 2022")
RACES = (("WHITE", 0.62), ("BLACK/AFRICAN AMERICAN", 0.13), ("HISPANIC/LATINO - PUERTO RICAN", 0.03),
         ("HISPANIC OR LATINO", 0.02), ("ASIAN", 0.02), ("ASIAN - CHINESE", 0.02), ("WHITE - OTHER EUROPEAN", 0.03),
         ("BLACK/CAPE VERDEAN", 0.02), ("OTHER", 0.04), ("UNKNOWN", 0.05), ("UNABLE TO OBTAIN", 0.01),
         ("PATIENT DECLINED TO ANSWER", 0.01))
MARITAL = (("MARRIED", 0.42), ("SINGLE", 0.33), ("WIDOWED", 0.12), ("DIVORCED", 0.08), ("", 0.05))
MODALITIES = ("ehr", "ecg", "notes", "imaging")
CHRONIC = ("diabetes", "hypertension", "ckd", "chf", "copd", "cancer")


def _pick(rng: np.random.Generator, table, n: int) -> np.ndarray:
    names = np.array([t[0] for t in table], dtype=object)
    p = np.array([t[1] for t in table], dtype=float)
    return names[rng.choice(len(names), size=n, p=p / p.sum())]


def _provider(rng: np.random.Generator, n: int) -> np.ndarray:
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    codes = alphabet[rng.integers(0, len(alphabet), size=(n, 5))]
    return np.array(["P" + "".join(c) for c in codes], dtype=object)


def simulate_patients(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """One row per patient: demographics and the patient-level traits."""
    subject_id = np.sort(10_000_000 + rng.choice(9_000_000, size=n, replace=False))
    minor = rng.random(n) < MINOR_FRACTION
    age = np.clip(np.round(rng.normal(61, 17, n)), 18, 91).astype(int)
    age[minor] = rng.integers(14, 18, size=int(minor.sum()))
    anchor_year = rng.integers(2110, 2181, size=n)
    df = pd.DataFrame({
        "subject_id": subject_id,
        "gender": np.where(rng.random(n) < 0.52, "F", "M"),
        "anchor_age": age,
        "anchor_year": anchor_year,
        "anchor_year_group": np.array(ANCHOR_GROUPS, dtype=object)[rng.integers(0, len(ANCHOR_GROUPS), n)],
        "race": _pick(rng, RACES, n),
        "marital_status": _pick(rng, MARITAL, n),
        "language": np.where(rng.random(n) < 0.9, "ENGLISH", "?"),
        "frailty": rng.normal(size=n),
    })
    for m in MODALITIES:
        df[f"trait_{m}"] = rng.normal(size=n)
    # Chronic conditions: diagnoses and history text; heart failure, CKD and cancer enter the risk.
    older = (age - 60) / 15
    df["diabetes"] = rng.random(n) < sigmoid(-1.2 + 0.3 * older)
    df["hypertension"] = rng.random(n) < sigmoid(-0.2 + 0.6 * older)
    df["ckd"] = rng.random(n) < sigmoid(-2.0 + 0.5 * older + 0.6 * df["trait_ehr"])
    df["chf"] = rng.random(n) < sigmoid(-2.2 + 0.5 * older + 0.6 * df["trait_ecg"])
    df["copd"] = rng.random(n) < sigmoid(-2.2 + 0.3 * older + 0.6 * df["trait_imaging"])
    df["cancer"] = rng.random(n) < sigmoid(-3.0 + 0.5 * older)
    df.loc[minor, list(CHRONIC)] = False
    # The real year of anchor_year (MIMIC shifts years per patient; anchor_year_group is the real
    # 3-year window): the shifted date from which this patient's stays are coded in ICD-10.
    real_anchor = df["anchor_year_group"].str.slice(0, 4).astype(int).to_numpy() + rng.uniform(0, 3, n)
    df["icd10_from"] = pd.to_datetime((anchor_year + ICD10_SWITCH - real_anchor - 1970) * 365.2425 * 86400, unit="s")
    return df


def chronic_part(adm: pd.DataFrame) -> np.ndarray:
    """The chronic conditions' share of the logit (heart failure, CKD, cancer)."""
    return (W_CHF * adm["chf"].to_numpy(float) + W_CKD * adm["ckd"].to_numpy(float)
            + W_CANCER * adm["cancer"].to_numpy(float))


def presence_logit(m: str, acuity, z) -> np.ndarray:
    """The logit of P(modality ``m`` recorded before the prediction time | acuity, its own severity z)."""
    b0, b_acuity, b_own = PRESENCE[m]
    return b0 + b_acuity * np.asarray(acuity, dtype=float) + b_own * np.asarray(z, dtype=float)


def _admission_type(rng, acuity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = len(acuity)
    urgent = rng.random(n) < sigmoid(1.0 + 1.2 * acuity)
    emer_types = np.array(["EW EMER.", "URGENT", "DIRECT EMER.", "EU OBSERVATION"], dtype=object)
    calm_types = np.array(["ELECTIVE", "SURGICAL SAME DAY ADMISSION", "OBSERVATION ADMIT",
                           "DIRECT OBSERVATION", "AMBULATORY OBSERVATION"], dtype=object)
    t = np.where(urgent, emer_types[rng.choice(4, n, p=[0.62, 0.2, 0.1, 0.08])],
                 calm_types[rng.choice(5, n, p=[0.35, 0.25, 0.2, 0.1, 0.1])])
    emer_loc = np.array(["EMERGENCY ROOM", "TRANSFER FROM HOSPITAL", "WALK-IN/SELF REFERRAL",
                         "INFORMATION NOT AVAILABLE"], dtype=object)
    calm_loc = np.array(["PHYSICIAN REFERRAL", "CLINIC REFERRAL", "PROCEDURE SITE", "PACU",
                         "TRANSFER FROM SKILLED NURSING FACILITY"], dtype=object)
    loc = np.where(urgent, emer_loc[rng.choice(4, n, p=[0.75, 0.15, 0.07, 0.03])],
                   calm_loc[rng.choice(5, n, p=[0.45, 0.2, 0.15, 0.1, 0.1])])
    return t, loc


def simulate_admissions(rng: np.random.Generator, patients: pd.DataFrame) -> pd.DataFrame:
    """Admissions with timelines, the hidden components, the label and ICU stays' times."""
    n_adm = rng.choice(ADMISSIONS_PER_PATIENT, size=len(patients), p=ADMISSIONS_P)
    subject = np.repeat(patients["subject_id"].to_numpy(), n_adm)
    adm = pd.DataFrame({"subject_id": subject,
                        "adm_index": np.concatenate([np.arange(k) for k in n_adm])})
    n = len(adm)
    noise = rng.normal(size=(n, 1 + len(MODALITIES)))
    pat = patients.set_index("subject_id").loc[subject].reset_index()
    adm["acuity"] = 0.4 * pat["frailty"].to_numpy() + np.sqrt(1 - 0.16) * noise[:, 0]
    for j, m in enumerate(MODALITIES):
        adm[f"z_{m}"] = RHO * pat[f"trait_{m}"].to_numpy() + np.sqrt(1 - RHO**2) * noise[:, 1 + j]

    # Times: the patient's admissions are sequential, each starting 2+ days after the previous discharge.
    hours_los = np.exp(rng.normal(np.log(LOS_MEDIAN_HOURS) + LOS_ACUITY * adm["acuity"], LOS_SD)).clip(3, 60 * 24)
    start_min = rng.integers(0, 365 * 24 * 60, size=n)
    gaps = (2 + rng.exponential(150, size=n)) * 24 * 60  # minutes
    admittime = np.empty(n, dtype="datetime64[m]")
    ages = np.empty(n, dtype=float)
    prev_sub, prev_end = None, None
    anchor = dict(zip(patients["subject_id"], zip(patients["anchor_age"], patients["anchor_year"])))
    for i in range(n):
        s = subject[i]
        a_age, a_year = anchor[s]
        if s != prev_sub:
            t = np.datetime64(f"{a_year}-01-01T00:00") + np.timedelta64(int(start_min[i]), "m")
        else:
            t = prev_end + np.timedelta64(int(gaps[i]), "m")
        admittime[i] = t
        ages[i] = a_age + (t.astype("datetime64[Y]").astype(int) + 1970 - a_year)
        prev_sub, prev_end = s, t + np.timedelta64(int(hours_los[i] * 60), "m")
    adm["admittime"] = admittime.astype("datetime64[ns]")
    adm["age"] = ages
    age_z = (ages - 60) / 18

    for c in CHRONIC:
        adm[c] = pat[c].to_numpy()
    adm["ehr_part"] = W_EHR * adm["z_ehr"] + W_AGE * age_z + W_ACUITY * adm["acuity"] + chronic_part(adm)
    adm["ecg_part"] = W_ECG * adm["z_ecg"]
    adm["notes_part"] = W_NOTES * adm["z_notes"]
    adm["imaging_part"] = W_IMG * adm["z_imaging"]
    adm["interaction_part"] = W_INT * adm["z_ehr"] * adm["z_ecg"]
    adm["logit"] = B0 + adm[["ehr_part", "ecg_part", "notes_part", "imaging_part", "interaction_part"]].sum(axis=1)
    adm["p_true"] = sigmoid(adm["logit"])
    died = rng.random(n) < adm["p_true"].to_numpy()

    # Death time: most after the prediction time, a few before it (the cohort rule excludes those).
    early = rng.random(n) < EARLY_DEATH_FRACTION
    death_h = np.where(early, rng.uniform(1, PREDICTION_HOURS - 0.5, n),
                       PREDICTION_HOURS + 2 + rng.gamma(1.5, 90, n))
    los_h = np.where(died, death_h, hours_los)
    adm["los_hours"] = los_h
    # A patient who dies in hospital has no later admission.
    deaths_so_far = pd.Series(died.astype(int)).groupby(subject).cumsum().to_numpy()
    keep = (deaths_so_far - died) == 0  # no in-hospital death in an earlier admission
    adm = adm[keep].reset_index(drop=True)
    died, los_h = died[keep], los_h[keep]
    adm["label"] = died.astype(int)
    adm["dischtime"] = (adm["admittime"] + pd.to_timedelta(np.round(los_h * 60), unit="m"))
    adm["deathtime"] = adm["dischtime"].where(died)
    n = len(adm)

    adm["hadm_id"] = 20_000_000 + rng.choice(9_999_999, size=n, replace=False)  # not time-ordered, as in MIMIC
    adm["admission_type"], adm["admission_location"] = _admission_type(rng, adm["acuity"].to_numpy())
    adm["admit_provider_id"] = _provider(rng, n)
    ed = adm["admission_location"].isin(["EMERGENCY ROOM", "WALK-IN/SELF REFERRAL"]).to_numpy()
    edreg = adm["admittime"] - minutes(rng.uniform(1, 9, n) * 60)
    edout = adm["admittime"] + minutes(rng.uniform(0, 90, n))
    adm["edregtime"] = edreg.where(ed)
    adm["edouttime"] = edout.where(ed)
    _icu_times(rng, adm)
    adm["discharge_location"] = _discharge_location(rng, adm)
    age_at = adm["age"].to_numpy()
    ins = np.where(age_at >= 65, np.where(rng.random(n) < 0.85, "Medicare", "Private"),
                   np.array(["Private", "Medicaid", "Other", "Medicare"], dtype=object)[
                       rng.choice(4, n, p=[0.5, 0.3, 0.12, 0.08])])
    adm["insurance"] = ins
    return adm


def _icu_times(rng: np.random.Generator, adm: pd.DataFrame) -> None:
    """ICU stays: early (within the first 24 h; acuity-driven) or late (deterioration, after 24 h)."""
    n = len(adm)
    los_h = adm["los_hours"].to_numpy()
    died = adm["label"].to_numpy() == 1
    early = (rng.random(n) < sigmoid(-0.75 + 1.3 * adm["acuity"] + 0.3 * adm["z_ehr"])) & (los_h > 6)
    late = ~early & (los_h > PREDICTION_HOURS + 12) & (rng.random(n) < np.where(died, 0.55, 0.05))
    in_h = np.where(early, rng.uniform(0.5, 10, n) * np.minimum(1, los_h / 24),
                    PREDICTION_HOURS + rng.uniform(0, 1, n) * np.minimum(72, los_h - PREDICTION_HOURS - 8))
    # The planned ICU exit does not know the outcome; a stay that outlasts the prediction time ends
    # at death for those who die and before discharge for the others (after the prediction time only).
    planned = in_h + np.exp(rng.normal(np.log(50), 0.7, n))
    before_discharge = np.maximum(np.minimum(planned, los_h - rng.uniform(2, 20, n)), PREDICTION_HOURS + 0.5)
    out_h = np.where(planned < PREDICTION_HOURS, planned, np.where(died, los_h, before_discharge))
    out_h = np.clip(out_h, in_h + 0.5, los_h - 0.05)
    has = early | late
    jitter = rng.uniform(0, 59, n)  # ICU times have seconds in MIMIC
    adm["has_icu"] = has
    adm["icu_early"] = early
    adm["intime"] = (adm["admittime"] + seconds(in_h * 3600 + jitter)).where(has)
    adm["outtime"] = (adm["admittime"] + seconds(out_h * 3600 + jitter)).where(has)
    in_icu_at_death = has & died & ((planned >= PREDICTION_HOURS) | (planned >= los_h))
    adm.loc[in_icu_at_death, "outtime"] = adm.loc[in_icu_at_death, "dischtime"] + pd.Timedelta(seconds=17)


def _discharge_location(rng: np.random.Generator, adm: pd.DataFrame) -> np.ndarray:
    n = len(adm)
    alive = np.array(["HOME", "HOME HEALTH CARE", "SKILLED NURSING FACILITY", "REHAB",
                      "CHRONIC/LONG TERM ACUTE CARE", "HOSPICE", "AGAINST ADVICE", "ACUTE HOSPITAL", ""], dtype=object)
    older = adm["age"].to_numpy() > 75
    p_young = [0.55, 0.2, 0.08, 0.05, 0.02, 0.01, 0.03, 0.02, 0.04]
    p_old = [0.3, 0.25, 0.25, 0.08, 0.04, 0.03, 0.01, 0.01, 0.03]
    loc = np.where(older, alive[rng.choice(len(alive), n, p=p_old)], alive[rng.choice(len(alive), n, p=p_young)])
    return np.where(adm["label"].to_numpy() == 1, "DIED", loc)


def death_dates(rng: np.random.Generator, patients: pd.DataFrame, adm: pd.DataFrame) -> pd.Series:
    """``dod`` per patient: the in-hospital death, or for some frail patients a death within a year after."""
    last = adm.sort_values("admittime").groupby("subject_id").tail(1).set_index("subject_id")
    dod = pd.Series(pd.NaT, index=patients["subject_id"], dtype="datetime64[ns]")
    died = last["label"] == 1
    dod.loc[died[died].index] = last.loc[died, "dischtime"].dt.floor("D")
    frail = patients.set_index("subject_id")["frailty"].reindex(last.index)
    later = (~died) & (rng.random(len(last)) < sigmoid(-2.3 + 0.8 * frail.to_numpy()))
    days = pd.to_timedelta(rng.uniform(5, 365, len(last)), unit="D")
    dod.loc[later[later].index] = (last["dischtime"] + days)[later].dt.floor("D")
    return dod


def simulate(rng: np.random.Generator, n_patients: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(patients, admissions) with every hidden column; the writers decide what becomes visible."""
    if n_patients < 1:
        raise ValueError(f"n_patients must be at least 1, got {n_patients}")
    patients = simulate_patients(rng, n_patients)
    adm = simulate_admissions(rng, patients)
    patients["dod"] = death_dates(rng, patients, adm).to_numpy()
    adm["prediction_time"] = adm["admittime"] + pd.Timedelta(hours=PREDICTION_HOURS)
    adm["eligible"] = (adm["age"] >= 18) & (adm["los_hours"] > PREDICTION_HOURS)
    return patients, adm
