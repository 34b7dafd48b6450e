"""Tabular EHR features over a window before each prediction time.

For every cohort row and every kept measurement code (labs, vitals, omr): last, min,
max, mean, count, slope (per hour) and hours since the last value, over events known
by the prediction time (``known_time`` <= prediction_time under the default
``ehr.availability: storetime``; ``time`` under ``charttime``) and charted within
prediction_time - lookback, plus demographics, the history features of
``featurize_history`` and the treatment features of ``featurize_meds``.  Values
outside documented physiological ranges are treated as recording errors and dropped before aggregation.  The codes kept are the most
frequent among TRAIN admissions; the list is written beside the features so a
scoring job uses exactly the same columns.  The work is one DuckDB query over
the events parquet per shard of admissions, appended to the output file, so memory
is bounded by DuckDB and by one shard, not by the cohort.  Sums (mean, slope) are taken
over values rounded to 1e-6 in exact decimal arithmetic, so a feature does not depend on
the order DuckDB's threads meet the rows (a live extract scores exactly as a complete one).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts import ParquetShardWriter, read_json, write_json
from pipeline.config import EHRConfig
from pipeline.engine import map_frames, subject_shards
from pipeline.sources.mimic_iv import connect
from pipeline.stages import featurize_history, featurize_meds

# Physiological plausibility ranges (inclusive) by code; values outside are dropped.
# Sources: MIMIC-IV reference ranges widened to survivable extremes (as in YAIB / MIMIC-Extract).
PLAUSIBLE = {
    "chart:220045": (0, 300),      # heart rate, bpm
    "chart:220179": (0, 375),      # NIBP systolic, mmHg
    "chart:220180": (0, 375),      # NIBP diastolic
    "chart:220210": (0, 100),      # respiratory rate
    "chart:220277": (0, 100),      # SpO2 %
    "chart:223762": (25, 45),      # temperature °C (Fahrenheit converted at ingest)
    "lab:50912": (0, 40),          # creatinine mg/dL
    "lab:50971": (0.5, 15),        # potassium mEq/L
    "lab:50983": (80, 200),        # sodium
    "lab:51301": (0, 500),         # WBC K/uL
    "lab:51222": (0, 30),          # hemoglobin g/dL
    "lab:50813": (0, 40),          # lactate mmol/L
    "lab:51265": (0, 3000),        # platelets K/uL
    "lab:50882": (0, 70),          # bicarbonate
    "lab:51006": (0, 300),         # BUN mg/dL
    "lab:50931": (0, 3000),        # glucose mg/dL
    "lab:50820": (6.3, 8.0),       # pH
    "omr:Weight (Lbs)": (1, 1500),
    "omr:BMI (kg/m2)": (5, 150),
    "omr:Height (Inches)": (10, 110),
}
AGGS = ("last", "min", "max", "mean", "count", "slope", "hours_since_last")
MEASUREMENTS = ("lab:", "chart:", "omr:")  # code families aggregated here; the others have their modules


def events_source(events_path: Path, con) -> str:
    """The events parquet as a DuckDB source; a table without ``known_time`` (a MEDS dataset from
    another ETL) is taken as known at its charted time."""
    src = f"read_parquet('{events_path}')"
    cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()]
    return src if "known_time" in cols else f"(SELECT *, time AS known_time FROM {src})"


def choose_codes(events_path: Path, cohort: pd.DataFrame, cfg: EHRConfig, con=None,
                 stage_in: Path | None = None) -> list[str]:
    """Every code with a column, chosen on TRAIN admissions only: the ``cfg.max_codes``
    measurement codes seen in the most train windows, then the fixed history and treatment
    codes, the raw earlier-admission ICD codes, drug names and context values."""
    con = con or connect()
    train = cohort[cohort["split"] == "train"][["subject_id", "hadm_id", "prediction_time"]]
    con.register("train_cohort", train)
    ev = events_source(events_path, con)
    like = " OR ".join(f"e.code LIKE '{f}%'" for f in MEASUREMENTS)
    rows = con.execute(f"""
        SELECT e.code, count(DISTINCT c.hadm_id) n FROM {ev} e
        JOIN train_cohort c ON e.subject_id = c.subject_id
        WHERE ({like}) AND {featurize_meds.known_col(cfg)} <= c.prediction_time
          AND e.time >= c.prediction_time - INTERVAL {cfg.lookback_hours} HOUR
        GROUP BY e.code ORDER BY n DESC, e.code LIMIT {int(cfg.max_codes)}""").fetchall()
    codes = [r[0] for r in rows if r[1] >= 2] + featurize_history.fixed_codes() + featurize_meds.fixed_codes()
    if stage_in is not None:
        codes += featurize_history.choose(con, ev, Path(stage_in) / "admissions.parquet", train, cfg)
    codes += featurize_meds.choose(con, ev, cfg)
    con.unregister("train_cohort")
    return codes


def _feature_name(code: str, agg: str) -> str:
    return f"ehr__{code}__{agg}"


def featurize_ehr(cohort: pd.DataFrame, stage_in: Path, cfg: EHRConfig, out_dir: Path,
                  codes: list[str] | None = None, shard_rows: int = 20_000, engine=None) -> dict:
    """Write out_dir/features.parquet (hadm_id, item_time, ehr__*) and out_dir/codes.json.

    Admissions are featurised in shards of whole subjects (about ``shard_rows`` admissions,
    in subject order) appended to the parquet file, so memory is bounded by one shard's wide
    table, not by the cohort.  With a distributed ``engine`` (pipeline.engine) each shard is a
    task on its workers (DuckDB there, over the same events parquet)."""
    events_path = Path(stage_in) / "events.parquet"
    if codes is None:
        con = connect(temp_dir=out_dir)
        codes = choose_codes(events_path, cohort, cfg, con, stage_in=stage_in)
        con.close()
    write_json({"codes": codes, "aggregations": list(cfg.aggregations)}, out_dir / "codes.json")
    # shards of consecutive whole subjects: each shard's scan of the events skips the row groups
    # (parquet statistics) of other subjects' rows instead of reading the whole file every time
    # (the ingest writes events.parquet in file order, which real extracts keep by subject)
    ordered = cohort.sort_values(["subject_id", "hadm_id"], kind="stable")
    shards = subject_shards(ordered, shard_rows) or [ordered]
    n_with = 0
    with ParquetShardWriter(out_dir / "features.parquet") as out:
        for feats in map_frames(_shard_features, shards, engine, out_dir / ".shards", events_path=str(events_path),
                                cfg=cfg, codes=codes, temp_dir=str(out_dir)):
            counts = [c for c in feats.columns if c.endswith("__count")]
            n_with += int(feats[counts].sum(axis=1).gt(0).sum()) if counts else 0
            out.write(feats)
    return {"codes": len(codes), "rows": int(cohort["hadm_id"].nunique()), "rows_with_events": n_with,
            "shards": len(shards), "availability": cfg.availability}


def _shard_features(shard: pd.DataFrame, events_path: str, cfg: EHRConfig, codes: list[str],
                    temp_dir: str) -> pd.DataFrame:
    """One shard's features, on a DuckDB connection of its own (so it can run on any worker)."""
    con = connect(temp_dir=Path(temp_dir))
    try:
        con.register("kept", pd.DataFrame({"code": [c for c in codes if c.startswith(MEASUREMENTS)] or ["<none>"]}))
        ranges = pd.DataFrame([(c, lo, hi) for c, (lo, hi) in PLAUSIBLE.items()], columns=["code", "lo", "hi"])
        con.register("ranges", ranges)
        return _featurize_shard(con, shard, Path(events_path).parent, cfg, codes)
    finally:
        con.close()


def _featurize_shard(con, shard: pd.DataFrame, stage_in: Path, cfg: EHRConfig, codes: list[str]) -> pd.DataFrame:
    base = shard[["subject_id", "hadm_id", "prediction_time"]].copy()
    lo, hi = int(base["subject_id"].min()), int(base["subject_id"].max())
    events = f"(SELECT * FROM {events_source(stage_in / 'events.parquet', con)} WHERE subject_id BETWEEN {lo} AND {hi})"
    known = featurize_meds.known_col(cfg)
    con.register("cohort", base)
    agg = con.execute(f"""
        WITH w AS (
          SELECT c.hadm_id, e.code, e.time, e.value, c.prediction_time, {known} kt, e.value::DECIMAL(38, 6) v,
                 ((epoch(e.time) - epoch(c.prediction_time)) / 3600.0)::DECIMAL(38, 6) x
          FROM {events} e
          JOIN cohort c ON e.subject_id = c.subject_id
          JOIN kept k ON e.code = k.code
          LEFT JOIN ranges r ON e.code = r.code
          WHERE {known} <= c.prediction_time
            AND e.time >= c.prediction_time - INTERVAL {cfg.lookback_hours} HOUR
            AND (r.code IS NULL OR (e.value >= r.lo AND e.value <= r.hi)))
        SELECT hadm_id, code, arg_max(value, struct_pack(t := time, v := value)) AS last,  -- ties: the larger value
               min(value) AS min, max(value) AS max,
               sum(v)::DOUBLE / count(*) AS mean, count(*)::DOUBLE AS count,
               CASE WHEN count(*) * sum(x * x) - sum(x) * sum(x) > 0
                    THEN (count(*) * sum(x * v) - sum(x) * sum(v))::DOUBLE
                         / (count(*) * sum(x * x) - sum(x) * sum(x))::DOUBLE END AS slope,
               (epoch(max(prediction_time)) - epoch(max(time))) / 3600.0 AS hours_since_last,
               max(kt) AS item_time
        FROM w GROUP BY hadm_id, code""").df()
    extra = [featurize_history.features(con, base, events, stage_in, cfg, codes),
             featurize_meds.features(con, base, events, cfg, codes)]
    con.unregister("cohort")
    codes = [c for c in codes if c.startswith(MEASUREMENTS)]
    keep_aggs = [a for a in AGGS if a in cfg.aggregations]
    # Every kept code has the same columns, present or not (a stable feature set).  The frame is
    # built once from columns (a shard's wide table is the stage's memory peak).
    hadms = base["hadm_id"].drop_duplicates().to_numpy()
    nan = np.full(len(hadms), np.nan)
    item_time = pd.Series(pd.NaT, index=hadms, dtype="datetime64[ns]")
    have = {}
    if len(agg):
        wide = agg.pivot(index="hadm_id", columns="code", values=keep_aggs).reindex(hadms)
        have = {(code, a): wide[(a, code)].to_numpy(dtype="float64") for a, code in wide.columns}
        item_time = agg.groupby("hadm_id")["item_time"].max().reindex(hadms)
        del wide
    out = {}
    for code in codes:
        for a in keep_aggs:
            v = have.get((code, a), nan)
            out[_feature_name(code, a)] = np.nan_to_num(v, nan=0.0) if a == "count" else v
    for more in extra:
        item_time = pd.concat([item_time, more.pop("item_time").reindex(hadms)], axis=1).max(axis=1)
        more = more.reindex(hadms)
        out.update({c: more[c].to_numpy(dtype="float64") for c in more.columns})
    demo = shard.drop_duplicates("hadm_id").set_index("hadm_id").reindex(hadms)
    out["ehr__age"] = demo["age"].to_numpy(dtype="float64")
    out["ehr__gender_male"] = (demo["gender"].astype(str).str.upper() == "M").to_numpy(dtype="float64")
    return pd.DataFrame({"hadm_id": hadms, "item_time": pd.to_datetime(item_time).astype("datetime64[ns]").to_numpy(),
                         **out})


def load_codes(stage_dir: Path) -> list[str]:
    return read_json(Path(stage_dir) / "codes.json")["codes"]


def feature_labels(codes_table: pd.DataFrame) -> dict[str, str]:
    """code -> human label (for reasons and reports)."""
    return dict(zip(codes_table["code"], codes_table["label"]))


# How each family's feature reads in reasons and reports: (family, aggregation) -> phrase.
PHRASES = {
    ("cmb", "earlier"): "{label} (earlier admission)", ("dx", "earlier"): "{label} (earlier admission)",
    ("px", "earlier"): "{label} (procedure, earlier admission)",
    ("med", "given"): "{label} before prediction", ("med", "hours_since"): "Hours since last {label}",
    ("rx", "given"): "{label} ordered before prediction",
    ("medclass", "given"): "{label} before prediction", ("medclass", "hours_since"): "Hours since last {label}",
    ("input", "rate_now"): "{label} rate at prediction", ("input", "max_rate"): "{label} peak rate",
    ("fluid", "ml_24h"): "IV fluids in the last 24 h (mL)",
    ("output", "ml_6h"): "Urine output in the last 6 h (mL)", ("output", "ml_24h"): "Urine output in the last 24 h (mL)",
    ("proc", "given"): "{label} before prediction", ("proc", "hours_since"): "Hours since {label} started",
    ("micro", "given"): "{label} before prediction",
    ("hist", "n"): "{label}", ("icu", "now"): "{label}", ("ctx", "is"): "{label}",
}
NAMED = {
    "hist:admissions_365d": "Earlier admissions in the past year", "hist:earlier_los_days": "Days in hospital in the past year",
    "hist:days_since_discharge": "Days since last discharge", "hist:icu_stays_365d": "Earlier ICU stays in the past year",
    "hist:ed_hours": "Hours in the ED before admission", "icu:in_icu": "In the ICU at prediction",
    "icu:icu_hours": "Hours in the ICU so far", "micro:culture": "Cultures ordered",
    "micro:positive": "Positive culture", "fluid:iv": "IV fluids", "output:urine": "Urine output",
}


def _default_label(code: str) -> str:
    if code in NAMED:
        return NAMED[code]
    family, rest = code.split(":", 1) if ":" in code else ("", code)
    if family == "ctx":
        field, value = rest.split("=", 1)
        return f"{field.replace('_', ' ').capitalize()}: {value}"
    if family in ("omr", "med", "rx", "medclass", "input", "proc"):
        return rest[:1].upper() + rest[1:]
    return code


def pretty_feature(name: str, labels: dict[str, str]) -> str:
    """'ehr__lab:50813__last' -> 'Lactate (last)'; 'ehr__med:norepinephrine__given' ->
    'Norepinephrine before prediction'; 'ehr__cmb:charlson:chf__earlier' -> 'Congestive heart
    failure (earlier admission)'; a full feature name in ``labels`` (e.g. a notes component
    named by its top terms) -> its label."""
    if name in labels:
        return labels[name]
    parts = name.split("__")
    if len(parts) == 3 and parts[0] == "ehr":
        code, agg = parts[1], parts[2]
        label = labels.get(code) or _default_label(code)
        phrase = PHRASES.get((code.split(":", 1)[0], agg))
        if phrase is None:
            return f"{label} ({agg.replace('_', ' ')})"
        if code.startswith("cmb:elix:"):
            phrase = phrase.replace("admission)", "admission, Elixhauser)")
        lower = label if label[:2].isupper() else label[:1].lower() + label[1:]
        return phrase.format(label=lower if phrase.startswith("Hours") else label)
    return name.replace("__", " ")
