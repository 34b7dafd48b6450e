"""History features of each cohort row: what was known about the patient's past at the
prediction time, and the admission's own context.

- Codes of EARLIER admissions (events from diagnoses_icd / procedures_icd, known at their
  admission's dischtime): every Charlson and Elixhauser category (``cmb:*``) and the raw
  codes chosen on the train split, each ``__earlier`` = 1 when any earlier admission known
  by the prediction time carries it.  The current admission's codes are never used (they are
  assigned at discharge), whatever ``ehr.availability`` says.
- ``hist:*``: earlier admissions and their total length of stay in the look-back
  (``ehr.history_days``), days since the last discharge, ICU stays finished in the
  look-back, hours in the ED before this admission (edregtime -> edouttime, once ended).
- ``icu:*``: in an ICU at the prediction time, hours in ICU so far this admission.
- ``ctx:<field>=<value>``: the admission's context fields (``ehr.context``), one-hot over the
  values seen in at least two train admissions.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.artifacts import read_parquet
from pipeline.config import EHRConfig
from pipeline.sources.mimic_extra import comorbidity_labels

CODE_SOURCES = "('diagnoses_icd', 'procedures_icd')"
HISTORY = ("admissions_365d", "earlier_los_days", "days_since_discharge", "icu_stays_365d", "ed_hours")
ICU = ("in_icu", "icu_hours")
MAX_CONTEXT_VALUES = 20


def fixed_codes() -> list[str]:
    """Codes present as columns in every run: the comorbidity categories."""
    return sorted(comorbidity_labels())


def choose(con, events: str, admissions: Path, train: pd.DataFrame, cfg: EHRConfig) -> list[str]:
    """Raw earlier-admission codes and context values, chosen on the TRAIN rows (``train``
    is registered as ``train_cohort``)."""
    rows = con.execute(f"""
        SELECT e.code, count(DISTINCT c.hadm_id) n FROM {events} e JOIN train_cohort c ON e.subject_id = c.subject_id
        WHERE e.source IN {CODE_SOURCES} AND e.code NOT LIKE 'cmb:%' AND e.hadm_id <> c.hadm_id
          AND e.known_time <= c.prediction_time
        GROUP BY e.code HAVING n >= 2 ORDER BY n DESC, e.code LIMIT {int(cfg.max_history_codes)}""").fetchall()
    codes = [r[0] for r in rows]
    adm = read_parquet(admissions)
    adm = adm[adm["hadm_id"].isin(train["hadm_id"])]
    for field in cfg.context:
        if field in adm.columns:
            counts = adm[field].dropna().astype(str).value_counts()
            counts = counts[counts >= 2].head(MAX_CONTEXT_VALUES)
            codes += [f"ctx:{field}={v}" for v in sorted(counts.index)]
    return codes


def features(con, shard: pd.DataFrame, events: str, stage_in: Path, cfg: EHRConfig, codes: list[str]) -> pd.DataFrame:
    """Rows indexed by hadm_id: ehr__cmb/dx/px:*__earlier, ehr__hist:*__n, ehr__icu:*__now,
    ehr__ctx:*__is and item_time (the latest source time used).  ``shard`` is registered as ``cohort``."""
    hadms = shard["hadm_id"].drop_duplicates().to_numpy()
    out: dict[str, object] = {}
    code_cols = [c for c in codes if c.startswith(("cmb:", "dx:", "px:"))]
    con.register("hist_codes", pd.DataFrame({"code": code_cols or ["<none>"]}))
    got = con.execute(f"""
        SELECT c.hadm_id, e.code, max(e.known_time) kt FROM {events} e
        JOIN cohort c ON e.subject_id = c.subject_id JOIN hist_codes k ON e.code = k.code
        WHERE e.source IN {CODE_SOURCES} AND e.hadm_id <> c.hadm_id AND e.known_time <= c.prediction_time
        GROUP BY c.hadm_id, e.code""").df()
    con.unregister("hist_codes")
    flags = got.assign(v=1.0).pivot(index="hadm_id", columns="code", values="v") if len(got) else pd.DataFrame()
    for c in code_cols:
        out[f"ehr__{c}__earlier"] = flags[c].reindex(hadms).fillna(0.0).to_numpy() if c in flags.columns else 0.0
    times = [got.groupby("hadm_id")["kt"].max()] if len(got) else []

    adm = str(Path(stage_in) / "admissions.parquet").replace("'", "''")
    d = float(cfg.history_days)
    hist = con.execute(f"""
        SELECT c.hadm_id,
          count(a.hadm_id) FILTER (WHERE a.dischtime >= c.prediction_time - INTERVAL {d} DAY)::DOUBLE admissions_365d,
          coalesce(sum(epoch(a.dischtime) - epoch(a.admittime))
                   FILTER (WHERE a.dischtime >= c.prediction_time - INTERVAL {d} DAY), 0) / 86400.0 earlier_los_days,
          (epoch(any_value(c.prediction_time)) - epoch(max(a.dischtime))) / 86400.0 days_since_discharge,
          max(a.dischtime) item_time
        FROM cohort c LEFT JOIN read_parquet('{adm}') a ON a.subject_id = c.subject_id AND a.hadm_id <> c.hadm_id
          AND a.dischtime <= c.prediction_time
        GROUP BY c.hadm_id""").df().set_index("hadm_id")
    cur = con.execute(f"SELECT * FROM read_parquet('{adm}') a SEMI JOIN cohort c ON a.hadm_id = c.hadm_id").df()
    cur = cur.set_index("hadm_id").reindex(hadms)
    pt = shard.drop_duplicates("hadm_id").set_index("hadm_id")["prediction_time"].reindex(hadms)
    if "edouttime" in cur.columns and "edregtime" in cur.columns:
        ended = cur["edouttime"] <= pt
        hist["ed_hours"] = ((cur["edouttime"] - cur["edregtime"]).dt.total_seconds() / 3600).where(ended)
        times.append(cur["edouttime"].where(ended))
    else:
        hist["ed_hours"] = float("nan")
    icu_path = Path(stage_in) / "icustays.parquet"
    if icu_path.exists():
        icu = str(icu_path).replace("'", "''")
        stays = con.execute(f"""
            SELECT c.hadm_id,
              count(i.stay_id) FILTER (WHERE i.outtime <= c.prediction_time
                                       AND i.intime >= c.prediction_time - INTERVAL {d} DAY)::DOUBLE icu_stays_365d,
              coalesce(max(CASE WHEN i.hadm_id = c.hadm_id AND (i.outtime IS NULL OR i.outtime > c.prediction_time)
                           THEN 1.0 ELSE 0.0 END), 0.0) in_icu,
              coalesce(sum(CASE WHEN i.hadm_id = c.hadm_id THEN epoch(least(coalesce(i.outtime, c.prediction_time),
                           c.prediction_time)) - epoch(i.intime) END), 0) / 3600.0 icu_hours,
              max(i.intime) item_time
            FROM cohort c LEFT JOIN read_parquet('{icu}') i ON i.subject_id = c.subject_id
              AND i.intime <= c.prediction_time
            GROUP BY c.hadm_id""").df().set_index("hadm_id").reindex(hadms)
        times.append(stays.pop("item_time"))
    else:
        stays = pd.DataFrame({"icu_stays_365d": float("nan"), "in_icu": float("nan"), "icu_hours": float("nan")},
                             index=hadms)
    hist = hist.reindex(hadms)
    times.append(hist.pop("item_time"))
    for h in HISTORY:
        out[f"ehr__hist:{h}__n"] = (stays[h] if h in stays.columns else hist[h]).to_numpy(dtype=float)
    for h in ICU:
        out[f"ehr__icu:{h}__now"] = stays[h].to_numpy(dtype=float)
    ctx = [c for c in codes if c.startswith("ctx:")]
    for c in ctx:
        field, value = c[4:].split("=", 1)
        col = cur[field].astype(object) if field in cur.columns else pd.Series(None, index=hadms, dtype=object)
        out[f"ehr__{c}__is"] = col.astype(str).eq(value).where(col.notna(), False).astype(float).to_numpy()
    if ctx:
        times.append(cur["admittime"])
    item = pd.concat([pd.Series(t).reindex(hadms) for t in times], axis=1).max(axis=1)
    out["item_time"] = pd.to_datetime(item).astype("datetime64[ns]").to_numpy()
    return pd.DataFrame(out, index=pd.Index(hadms, name="hadm_id"))
