"""Treatment features of each cohort row from the events known at its prediction time, within
``ehr.lookback_hours`` before it: drugs (prescriptions ``rx:``, emar administrations ``med:``,
the curated classes ``medclass:``), vasopressor infusion rates (``input:``), IV fluid volume,
urine output, ventilation / dialysis and cultures.

Per family, the columns (``ehr__<code>__<agg>``):
- rx, micro: ``given`` (rows before the prediction time, 0 when none);
- med, medclass, proc: ``given`` and ``hours_since`` (since the latest one);
- input: ``rate_now`` (the rate of the infusion running at the prediction time, 0 when none:
  each infusion is a step up at its start and a step to 0 at its end) and ``max_rate``;
- fluid: ``ml_24h``; output (urine): ``ml_6h`` and ``ml_24h`` (NaN when nothing was charted).
"""
from __future__ import annotations

import pandas as pd

from pipeline.config import EHRConfig
from pipeline.sources.mimic_extra import DRUG_CLASSES, PROCEDURE_ITEMIDS, VASOPRESSORS

AGGS = {"rx": ("given",), "micro": ("given",), "med": ("given", "hours_since"),
        "medclass": ("given", "hours_since"), "proc": ("given", "hours_since"),
        "input": ("rate_now", "max_rate"), "fluid": ("ml_24h",), "output": ("ml_6h", "ml_24h")}
COLUMN = {"given": "n", "hours_since": "hours_since", "rate_now": "last", "max_rate": "mx",
          "ml_24h": "s24", "ml_6h": "s6"}
ZERO_WHEN_NONE = ("given", "rate_now", "max_rate")


def fixed_codes() -> list[str]:
    return ([f"medclass:{c}" for c in DRUG_CLASSES] + [f"input:{d}" for d in VASOPRESSORS]
            + ["fluid:iv", "output:urine"] + [f"proc:{p}" for p in PROCEDURE_ITEMIDS]
            + ["micro:culture", "micro:positive"])


def family(code: str) -> str:
    return code.split(":", 1)[0]


def known_col(cfg: EHRConfig) -> str:
    """The availability time of an event under ``ehr.availability``."""
    return "e.known_time" if cfg.availability == "storetime" else "e.time"


def choose(con, events: str, cfg: EHRConfig) -> list[str]:
    """Drug names (prescribed or administered) seen before the prediction time in the most TRAIN
    admissions (``train_cohort`` registered)."""
    rows = con.execute(f"""
        SELECT e.code, count(DISTINCT c.hadm_id) n FROM {events} e JOIN train_cohort c ON e.subject_id = c.subject_id
        WHERE (e.code LIKE 'rx:%' OR e.code LIKE 'med:%') AND {known_col(cfg)} <= c.prediction_time
          AND e.time >= c.prediction_time - INTERVAL {cfg.lookback_hours} HOUR
        GROUP BY e.code HAVING n >= 2 ORDER BY n DESC, e.code LIMIT {int(cfg.max_drugs)}""").fetchall()
    return [r[0] for r in rows]


def features(con, shard: pd.DataFrame, events: str, cfg: EHRConfig, codes: list[str]) -> pd.DataFrame:
    """Rows indexed by hadm_id with every family column and item_time (``cohort`` registered)."""
    hadms = shard["hadm_id"].drop_duplicates().to_numpy()
    kept = [c for c in codes if family(c) in AGGS]
    con.register("med_codes", pd.DataFrame({"code": kept or ["<none>"]}))
    known = known_col(cfg)
    agg = con.execute(f"""
        WITH w AS (
          SELECT c.hadm_id, c.prediction_time pt, e.code, e.time, e.value, {known} kt FROM {events} e
          JOIN cohort c ON e.subject_id = c.subject_id JOIN med_codes k ON e.code = k.code
          WHERE {known} <= c.prediction_time AND e.time >= c.prediction_time - INTERVAL {cfg.lookback_hours} HOUR)
        SELECT hadm_id, code, count(*)::DOUBLE n, arg_max(value, (time, value)) last, max(value) mx,
               (epoch(max(pt)) - epoch(max(time))) / 3600.0 hours_since,
               sum(value::DECIMAL(38, 6)) FILTER (WHERE time >= pt - INTERVAL 6 HOUR)::DOUBLE s6,
               sum(value::DECIMAL(38, 6)) FILTER (WHERE time >= pt - INTERVAL 24 HOUR)::DOUBLE s24,
               max(kt) item_time
        FROM w GROUP BY hadm_id, code""").df()
    con.unregister("med_codes")
    out: dict[str, object] = {}
    by_code = dict(tuple(agg.groupby("code", sort=False))) if len(agg) else {}
    empty = agg.iloc[:0]
    for code in kept:
        sub = by_code.get(code, empty).set_index("hadm_id").reindex(hadms)
        for a in AGGS[family(code)]:
            col = sub[COLUMN[a]].astype(float)
            out[f"ehr__{code}__{a}"] = (col.fillna(0.0) if a in ZERO_WHEN_NONE else col).to_numpy()
    item = agg.groupby("hadm_id")["item_time"].max().reindex(hadms) if len(agg) else pd.Series(pd.NaT, index=hadms)
    out["item_time"] = pd.to_datetime(item).astype("datetime64[ns]").to_numpy()
    return pd.DataFrame(out, index=pd.Index(hadms, name="hadm_id"))
