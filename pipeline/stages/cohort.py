"""Cohort and task definitions: one row per prediction with its time, label and split.

Tasks (``TaskConfig.name``), each with a prediction time and exclusion rules:
- mortality: in-hospital death; prediction at admittime + H hours; adults alive and
  still in hospital at that time.
- icu_mortality: death before ICU outtime; prediction at the first ICU intime + H;
  adults alive and still in the ICU then.
- los3 / los7: hospital stay longer than 3 / 7 days; prediction at admittime + H;
  adults alive and in hospital then.
- readmission30: a new admission within 30 days of discharge; prediction at
  dischtime; adults discharged alive.
Exclusions only use what is known at the prediction time (alive, still admitted);
the label is the outcome after it.  Splits are by subject, stratified on whether the
subject has any positive label, seeded, and stored in the cohort table.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from data_schemas.modalities import COHORT
from pipeline.config import TaskConfig
from pipeline.errors import DataError


def _age(adm: pd.DataFrame, patients: pd.DataFrame) -> pd.Series:
    return (adm["anchor_age"] + (adm["admittime"].dt.year - adm["anchor_year"])).astype(float)


def build_cohort(patients: pd.DataFrame, admissions: pd.DataFrame, icustays: pd.DataFrame | None,
                 task: TaskConfig) -> tuple[pd.DataFrame, dict]:
    """Return (cohort, exclusion counts)."""
    adm = admissions.merge(patients[["subject_id", "gender", "anchor_age", "anchor_year", "dod"]],
                           on="subject_id", how="inner")
    adm["age"] = _age(adm, patients)
    h = pd.to_timedelta(task.prediction_hours, unit="h")
    death = adm["deathtime"].where(adm["deathtime"].notna(),
                                   adm["dod"].where(adm["hospital_expire_flag"] == 1))
    counts = {"admissions": len(adm)}
    if task.name in ("mortality", "los3", "los7"):
        pt = adm["admittime"] + h
        keep = (adm["age"] >= task.min_age)
        counts["excluded_minor"] = int((~keep).sum())
        alive = death.isna() | (death > pt)
        counts["excluded_died_before_prediction"] = int((keep & ~alive).sum())
        in_hosp = adm["dischtime"].isna() | (adm["dischtime"] > pt)
        counts["excluded_discharged_before_prediction"] = int((keep & alive & ~in_hosp).sum())
        keep &= alive & in_hosp
        if task.name == "mortality":
            label = adm["hospital_expire_flag"]
        else:
            days = 3 if task.name == "los3" else 7
            label = ((adm["dischtime"] - adm["admittime"]) > pd.Timedelta(days=days)).astype(int)
        df = adm.assign(prediction_time=pt, label=label)[keep]
    elif task.name == "icu_mortality":
        if icustays is None or icustays.empty:
            raise DataError("task icu_mortality needs icu/icustays, which is absent", field="icustays")
        first = icustays.dropna(subset=["hadm_id"]).sort_values("intime").drop_duplicates("hadm_id")
        first = first.assign(hadm_id=first["hadm_id"].astype("int64"))
        adm = adm.merge(first[["hadm_id", "intime", "outtime"]], on="hadm_id", how="inner")
        death = adm["deathtime"].where(adm["deathtime"].notna(), adm["dod"].where(adm["hospital_expire_flag"] == 1))
        pt = adm["intime"] + h
        keep = adm["age"] >= task.min_age
        counts["excluded_minor"] = int((~keep).sum())
        alive = death.isna() | (death > pt)
        in_icu = adm["outtime"].isna() | (adm["outtime"] > pt)
        counts["excluded_died_before_prediction"] = int((keep & ~alive).sum())
        counts["excluded_left_icu_before_prediction"] = int((keep & alive & ~in_icu).sum())
        keep &= alive & in_icu
        label = (death.notna() & (death <= adm["outtime"] + pd.Timedelta(hours=6))).astype(int)
        df = adm.assign(prediction_time=pt, label=label)[keep]
    elif task.name == "readmission30":
        adm = adm.sort_values(["subject_id", "admittime"])
        nxt = adm.groupby("subject_id")["admittime"].shift(-1)
        pt = adm["dischtime"]
        keep = (adm["age"] >= task.min_age) & (adm["hospital_expire_flag"] == 0) & pt.notna()
        counts["excluded_minor_or_died_or_no_discharge"] = int((~keep).sum())
        label = (nxt.notna() & ((nxt - adm["dischtime"]) <= pd.Timedelta(days=30))).astype(int)
        df = adm.assign(prediction_time=pt, label=label)[keep]
    else:  # pragma: no cover - pydantic restricts the names
        raise DataError(f"unknown task {task.name!r}", field="task.name")
    df = df[["subject_id", "hadm_id", "prediction_time", "label", "age", "gender"]
            + (["race"] if "race" in df.columns else [])].copy()
    df["label"] = df["label"].astype("int64")
    df["prediction_time"] = df["prediction_time"].astype("datetime64[ns]")
    df["split"] = assign_splits(df, task)
    counts["cohort"] = len(df)
    counts["positives"] = int(df["label"].sum())
    if df.empty:
        raise DataError("the cohort is empty after the exclusion rules "
                        + ", ".join(f"{k}={v}" for k, v in counts.items()),
                        field="cohort", hint="check the task, the prediction hours and the input tables")
    df = df.sort_values("hadm_id").reset_index(drop=True)
    return COHORT.validate(df), counts


def assign_splits(cohort: pd.DataFrame, task: TaskConfig) -> pd.Series:
    """Patient-level, stratified (any positive per subject), seeded split."""
    subj = cohort.groupby("subject_id")["label"].max().sort_index()
    rng = np.random.default_rng(task.seed)
    split = pd.Series("train", index=subj.index, dtype=object)
    for _, ids in subj.groupby(subj):
        ids = ids.index.to_numpy().copy()
        rng.shuffle(ids)
        n_test = int(round(len(ids) * task.test_fraction))
        n_valid = int(round(len(ids) * task.valid_fraction))
        split.loc[ids[:n_test]] = "test"
        split.loc[ids[n_test:n_test + n_valid]] = "valid"
    return cohort["subject_id"].map(split).astype(object)


def score_cohort(cohort: pd.DataFrame) -> pd.DataFrame:
    """For a scoring job every row is scored."""
    return cohort.assign(split="score")


def cross_fit_feature(model, items, hadms, cohort: pd.DataFrame, folder: Path) -> np.ndarray:
    """A supervised feature for the admissions ``hadms`` (``items``: their images array or
    texts list, same order), fitted on the TRAIN split only: ``model.fit_oof`` gives the
    train admissions out-of-fold values from folds grouped by subject (a patient's other
    admissions never train the model that scores it), ``model.transform`` the others; the fitted model
    is saved to ``folder`` (and reused, never refitted, when scoring)."""
    c = cohort.drop_duplicates("hadm_id").set_index("hadm_id").reindex(hadms)
    train = (c["split"] == "train").to_numpy()

    def take(rows: np.ndarray):
        return np.asarray(items[rows]) if isinstance(items, np.ndarray) else [x for x, k in zip(items, rows) if k]
    out = np.zeros(len(hadms))
    out[train] = model.fit_oof(take(train), c["label"].to_numpy()[train], c["subject_id"].to_numpy()[train])
    if (~train).any():
        out[~train] = model.transform(take(~train))
    model.save(Path(folder))
    return out
