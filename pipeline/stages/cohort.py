"""Cohort and task definitions: one row per prediction with its time, label and split.

Tasks (``TaskConfig.name``), each with a prediction time, exclusion rules and a label:
- mortality: death in hospital; prediction at the anchor + H hours (``TaskConfig.anchor``:
  admittime, or the first ICU intime, admissions without an ICU stay then excluded);
  adults alive and still in hospital at that time.
- icu_mortality: death in the ICU or within 6 hours of leaving it (a death just after a
  transfer out counts); prediction at the first ICU intime + H (whatever the anchor);
  adults alive and still in the ICU then.  A stay without an ICU outtime is excluded.
- los3 / los7: the stay lasts more than 3 / 7 days OR ends in death in hospital (a
  death is the competing event and is not a short stay: label 1); prediction at the
  anchor + H; adults alive and in hospital then.
- readmission30: a new episode within 30 days of discharge; prediction at discharge.
  Overlapping admissions and transfers (the next admission begins before, or within
  ``TRANSFER_HOURS`` of, the discharge) are one episode: only its last admission is an
  index stay (earlier ones excluded, counted), and a transfer is never a readmission.
  Index stays of adults discharged alive.  Death after discharge is a competing event:
  a patient who dies within the 30 days without being readmitted first is excluded
  (counted); readmitted before death is label 1.  Censoring: an index stay whose 30-day
  window runs past the end of the data (the latest time in the admissions table) is
  excluded (counted), whatever was seen before.
An outcome that is unknown is never a silent 0: a stay without a discharge time (and
without a recorded death) is excluded and counted.  Exclusions at the prediction time
only use what is known then (alive, still admitted); the label is the outcome after it.
Splits are by subject, stratified on whether the subject has any positive label, seeded,
and stored in the cohort table.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from data_schemas.modalities import COHORT
from pipeline.config import TaskConfig
from pipeline.errors import DataError

TRANSFER_HOURS = 6     # a next admission this close to a discharge continues the same episode
READMIT_DAYS = 30
ICU_DEATH_GRACE_HOURS = 6


def _age(adm: pd.DataFrame, patients: pd.DataFrame) -> pd.Series:
    return (adm["anchor_age"] + (adm["admittime"].dt.year - adm["anchor_year"])).astype(float)


def _first_icu(icustays: pd.DataFrame | None, task: TaskConfig) -> pd.DataFrame:
    if icustays is None or icustays.empty:
        raise DataError(f"task {task.name} with the ICU anchor needs icu/icustays, which is absent",
                        field="icustays")
    first = icustays.dropna(subset=["hadm_id"]).sort_values("intime").drop_duplicates("hadm_id")
    return first.assign(hadm_id=first["hadm_id"].astype("int64"))[["hadm_id", "intime", "outtime"]]


def _death(adm: pd.DataFrame) -> pd.Series:
    """Death time in hospital: deathtime, else the date of death when the hospital reports one."""
    return adm["deathtime"].where(adm["deathtime"].notna(), adm["dod"].where(adm["hospital_expire_flag"].eq(1).fillna(False).astype(bool)))


def _at_prediction(adm: pd.DataFrame, pt: pd.Series, until: pd.Series, task: TaskConfig, counts: dict,
                   place: str) -> pd.Series:
    """Adults alive and still in ``place`` (until ``until``) at the prediction time ``pt``."""
    keep = adm["age"] >= task.min_age
    counts["excluded_minor"] = int((~keep).sum())
    death = _death(adm)
    alive = death.isna() | (death > pt)
    counts["excluded_died_before_prediction"] = int((keep & ~alive).sum())
    inside = until.isna() | (until > pt)
    counts[f"excluded_{place}_before_prediction"] = int((keep & alive & ~inside).sum())
    return keep & alive & inside


def _stay_task(adm: pd.DataFrame, icustays, task: TaskConfig, counts: dict) -> pd.DataFrame:
    """mortality, los3, los7."""
    if task.anchor == "intime":
        n = len(adm)
        adm = adm.merge(_first_icu(icustays, task)[["hadm_id", "intime"]], on="hadm_id", how="inner")
        counts["excluded_no_icu_stay"] = n - len(adm)
    pt = adm[task.anchor] + pd.to_timedelta(task.prediction_hours, unit="h")
    keep = _at_prediction(adm, pt, adm["dischtime"], task, counts, "discharged")
    died = adm["hospital_expire_flag"].eq(1).fillna(False).astype(bool) | adm["deathtime"].notna()
    # no dischtime although the outcome flag says alive: excluded; an OPEN admission (flag empty
    # too, a live extract) stays: its label is marked unknown in build_cohort
    unknown = adm["dischtime"].isna() & ~died & adm["hospital_expire_flag"].notna()
    counts["excluded_no_discharge_time"] = int((keep & unknown).sum())
    keep &= ~unknown
    if task.name == "mortality":
        label = died.astype(int)
    else:
        days = 3 if task.name == "los3" else 7
        label = (((adm["dischtime"] - adm["admittime"]) > pd.Timedelta(days=days)) | died).astype(int)
    return adm.assign(prediction_time=pt, label=label)[keep]


def _icu_task(adm: pd.DataFrame, icustays, task: TaskConfig, counts: dict) -> pd.DataFrame:
    adm = adm.merge(_first_icu(icustays, task), on="hadm_id", how="inner")
    pt = adm["intime"] + pd.to_timedelta(task.prediction_hours, unit="h")
    keep = _at_prediction(adm, pt, adm["outtime"], task, counts, "left_icu")
    counts["excluded_no_icu_outtime"] = int((keep & adm["outtime"].isna()).sum())
    keep &= adm["outtime"].notna()
    death = _death(adm)
    label = (death.notna() & (death <= adm["outtime"] + pd.Timedelta(hours=ICU_DEATH_GRACE_HOURS))).astype(int)
    return adm.assign(prediction_time=pt, label=label)[keep]


def _readmission_task(adm: pd.DataFrame, task: TaskConfig, counts: dict, scoring: bool = False) -> pd.DataFrame:
    """Index stays and their 30-day readmission label.  Training excludes the stays whose outcome
    cannot be known (a death before any readmission: competing event; a window running past the
    end of the data: censored).  ``scoring`` keeps them, label unknown (NaN): at discharge nobody
    knows either, and a recently discharged patient is exactly whom a readmission score is for."""
    adm = adm.sort_values(["subject_id", "admittime", "hadm_id"]).reset_index(drop=True)
    end = adm["dischtime"].fillna(adm["admittime"])
    gap = pd.Timedelta(hours=TRANSFER_HOURS)
    # episodes: an admission beginning before (or within TRANSFER_HOURS of) the latest
    # discharge so far of the same subject continues that episode
    prev_end = end.groupby(adm["subject_id"]).cummax().groupby(adm["subject_id"]).shift(1)
    new = prev_end.isna() | (adm["admittime"] > prev_end + gap)
    episode = new.groupby(adm["subject_id"]).cumsum()
    key = [adm["subject_id"], episode]
    ep_start = adm["admittime"].groupby(key).transform("min")
    # one index stay per episode: the admission that ends it (the latest of equal ends)
    last = adm.assign(_ep=episode, _end=end).sort_values(["subject_id", "_ep", "_end", "admittime"], kind="stable") \
        .groupby(["subject_id", "_ep"]).tail(1).index
    is_index = adm.index.isin(last)
    counts["excluded_transfer_or_overlap"] = int((~is_index).sum())
    starts = pd.DataFrame({"subject_id": adm["subject_id"], "episode": episode, "start": ep_start})
    nxt_start = starts.drop_duplicates(["subject_id", "episode"]).assign(episode=lambda d: d["episode"] - 1)
    nxt = adm.assign(episode=episode)[["subject_id", "episode"]].merge(
        nxt_start, on=["subject_id", "episode"], how="left")["start"]
    nxt.index = adm.index
    pt = adm["dischtime"]
    window_end = pt + pd.Timedelta(days=READMIT_DAYS)
    readmitted = nxt.notna() & (nxt <= window_end)
    keep = pd.Series(is_index, index=adm.index)
    minor = keep & (adm["age"] < task.min_age)
    counts["excluded_minor"] = int(minor.sum())
    keep &= ~minor
    died = keep & (adm["hospital_expire_flag"].eq(1).fillna(False).astype(bool) | adm["deathtime"].notna())
    counts["excluded_died_in_hospital"] = int(died.sum())
    keep &= ~died
    no_disch = keep & pt.isna()
    counts["excluded_no_discharge_time"] = int(no_disch.sum())
    keep &= ~no_disch
    # competing event: death (date only: known by the end of its day) within the window, no readmission before it
    dod_end = adm["dod"] + pd.Timedelta(days=1)
    died_first = keep & adm["dod"].notna() & (adm["dod"] <= window_end) & ~(readmitted & (nxt <= dod_end))
    data_end = pd.concat([adm["admittime"], adm["dischtime"]]).max()
    censored = keep & ~died_first & ~readmitted & (window_end > data_end)
    if scoring:
        unknown = died_first | censored
        counts["outcome_unknown_at_data_end"] = int(unknown.sum())
        return adm.assign(prediction_time=pt, label=readmitted.astype(float).where(~unknown))[keep]
    counts["excluded_died_within_30d_before_readmission"] = int(died_first.sum())
    keep &= ~died_first
    censored = keep & (window_end > data_end)
    counts["excluded_censored_end_of_data"] = int(censored.sum())
    keep &= ~censored
    return adm.assign(prediction_time=pt, label=readmitted.astype(int))[keep]


def build_cohort(patients: pd.DataFrame, admissions: pd.DataFrame, icustays: pd.DataFrame | None,
                 task: TaskConfig, require_outcomes: bool = True, as_of: pd.Timestamp | None = None
                 ) -> tuple[pd.DataFrame, dict]:
    """Return (cohort, exclusion counts).

    A live extract has open admissions (no dischtime, deathtime or outcome yet): with
    ``require_outcomes`` (training) a cohort row without an outcome is a DataError; for
    scoring its label is -1 (unknown) and an open admission is kept only once its
    prediction time has passed (``as_of``: the extract's snapshot time)."""
    adm = admissions.merge(patients[["subject_id", "gender", "anchor_age", "anchor_year", "dod"]],
                           on="subject_id", how="inner")
    adm["age"] = _age(adm, patients)
    counts = {"admissions": len(adm)}
    if task.name in ("mortality", "los3", "los7"):
        df = _stay_task(adm, icustays, task, counts)
    elif task.name == "icu_mortality":
        df = _icu_task(adm, icustays, task, counts)
    elif task.name == "readmission30":
        df = _readmission_task(adm, task, counts, scoring=not require_outcomes)
    else:  # pragma: no cover - pydantic restricts the names
        raise DataError(f"unknown task {task.name!r}", field="task.name")
    if task.name != "readmission30":  # an open stay (live extract): its outcome is not known yet
        end = df["outtime"] if task.name == "icu_mortality" else df["dischtime"]
        df = df.assign(label=df["label"].astype(float).where(~(end.isna() & df["deathtime"].isna())))
    df = _live_rows(df, counts, require_outcomes, as_of)
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


def _live_rows(df: pd.DataFrame, counts: dict, require_outcomes: bool, as_of) -> pd.DataFrame:
    """Rows whose outcome is not known yet (an open admission: no dischtime and no death)."""
    open_ = df["dischtime"].isna() & df["deathtime"].isna()
    unknown = df["label"].isna()
    if require_outcomes and unknown.any():
        first = int(df.loc[unknown, "hadm_id"].iloc[0])
        raise DataError(f"{int(unknown.sum())} cohort admission(s) have no outcome yet (still open: no dischtime, "
                        f"deathtime or hospital_expire_flag), e.g. hadm_id {first}", field="hospital_expire_flag",
                        hint="training needs outcomes: train on a complete extract; `mmpipe score` scores a live one")
    if as_of is not None:
        waiting = open_ & (df["prediction_time"] > as_of)
        counts["excluded_prediction_time_not_reached"] = int(waiting.sum())
        df = df[~waiting]
        unknown = unknown[~waiting]
    counts["outcome_unknown"] = int(unknown.sum())
    return df.assign(label=df["label"].where(~unknown, -1))


def snapshot_time(admissions: pd.DataFrame, events_path: Path | None = None) -> pd.Timestamp:
    """The latest time recorded anywhere in an extract: a live extract's "now"."""
    times = [admissions[c].max() for c in ("admittime", "dischtime", "deathtime") if c in admissions.columns]
    if events_path is not None and Path(events_path).exists():
        import duckdb
        row = duckdb.connect().execute(f"SELECT max(time), max(known_time) FROM read_parquet('{events_path}')").fetchall()
        times += [pd.Timestamp(t) for t in row[0] if t is not None]
    times = [t for t in times if pd.notna(t)]
    return max(times) if times else pd.Timestamp.max


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
