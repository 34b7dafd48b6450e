"""Tabular EHR features over a window before each prediction time.

For every cohort row and every kept measurement code (labs, vitals, omr): last, min,
max, mean, count, slope (per hour) and hours since the last value, over events known
by the prediction time (``known_time`` <= prediction_time under the default
``ehr.availability: storetime``; ``time`` under ``charttime``) and charted within
prediction_time - lookback, plus demographics, the history features of
``featurize_history`` and the treatment features of ``featurize_meds``.  Values
outside documented physiological ranges are treated as recording errors and dropped before aggregation.  The codes kept are the most
frequent among TRAIN admissions; the list is written beside the features so a
scoring job uses exactly the same columns.  The work is a few DuckDB queries per shard
of whole subjects over that shard's rows of the events (``featurize_ehr``), appended to the
output file, so memory is bounded by DuckDB and by one shard, not by the cohort.  Sums (mean, slope) are taken
over values rounded to 1e-6 in exact decimal arithmetic, so a feature does not depend on
the order DuckDB's threads meet the rows (a live extract scores exactly as a complete one).
"""
from __future__ import annotations

import shutil
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
                  codes: list[str] | None = None, shard_rows: int = 20_000, engine=None,
                  split: bool | None = None) -> dict:
    """Write out_dir/features.parquet (hadm_id, item_time, ehr__*) and out_dir/codes.json.

    Admissions are featurised in shards of whole subjects (about ``shard_rows`` admissions,
    in subject order) appended to the parquet file, so memory is bounded by one shard's wide
    table, not by the cohort.  A shard reads its subjects' rows only: by the row groups'
    subject ranges when events.parquet is clustered by subject (``clustered``), otherwise from
    a split of the events by shard made first in one pass (``split_events``; ``split`` forces
    either way).  Real extracts are not always ordered by subject (in the MIMIC-IV demo's
    labevents every twentieth of the file holds 57-78 of its 100 patients): without the split,
    every shard would read the whole file.  With a distributed ``engine`` (pipeline.engine)
    each shard is a task on its workers (DuckDB there, on the shared filesystem)."""
    events_path = Path(stage_in) / "events.parquet"
    if codes is None:
        con = connect(temp_dir=out_dir)
        codes = choose_codes(events_path, cohort, cfg, con, stage_in=stage_in)
        con.close()
    write_json({"codes": codes, "aggregations": list(cfg.aggregations)}, out_dir / "codes.json")
    ordered = cohort.sort_values(["subject_id", "hadm_id"], kind="stable")
    shards = subject_shards(ordered, shard_rows) or [ordered]
    folder = out_dir / ".events_by_shard"
    split = not clustered(events_path, shards) if split is None else split
    n_with = 0
    try:
        if split:
            split_events(events_path, shards, folder, out_dir)
        with ParquetShardWriter(out_dir / "features.parquet") as out:
            for feats in map_frames(_shard_features, list(enumerate(shards)), engine, out_dir / ".shards",
                                    split=str(folder) if split else None, stage_in=str(stage_in), cfg=cfg,
                                    codes=codes, temp_dir=str(out_dir)):
                counts = [c for c in feats.columns if c.endswith("__count")]
                n_with += int(feats[counts].sum(axis=1).gt(0).sum()) if counts else 0
                out.write(feats)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"codes": len(codes), "rows": int(cohort["hadm_id"].nunique()), "rows_with_events": n_with,
            "shards": len(shards), "events_split": bool(split), "availability": cfg.availability}


def clustered(events_path: Path, shards: list[pd.DataFrame]) -> bool:
    """Whether the shards, each reading the row groups whose subject_id range meets its own,
    would read at most twice the file's rows (parquet statistics only; no row is read)."""
    import pyarrow.parquet as pq
    meta = pq.ParquetFile(events_path).metadata
    if meta.num_row_groups == 0:
        return True
    col = meta.schema.to_arrow_schema().get_field_index("subject_id")
    lo, hi, rows = [], [], []
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        stats = group.column(col).statistics
        if stats is None or not stats.has_min_max:
            return False
        lo.append(stats.min), hi.append(stats.max), rows.append(group.num_rows)
    lo, hi, rows = np.array(lo), np.array(hi), np.array(rows)
    read = sum(int(rows[(lo <= s["subject_id"].max()) & (hi >= s["subject_id"].min())].sum()) for s in shards)
    return read <= 2 * rows.sum()


def split_events(events_path: Path, shards: list[pd.DataFrame], folder: Path, temp_dir: Path) -> None:
    """One pass over the events: each shard's subjects' rows into ``folder/shard=K/`` (parquet).
    Rows of subjects outside the cohort, and rows both known and charted after the subject's
    last prediction time (which no feature, under either availability rule, can use), are left
    out.  Row groups shrink as shards grow, so DuckDB's open partition files stay within its
    memory limit."""
    last = [s.groupby("subject_id", as_index=False)["prediction_time"].max().assign(shard=k)
            for k, s in enumerate(shards)]
    rows_per_group = max(10_000, min(100_000, 2_500_000 // max(len(shards), 1)))
    con = connect(temp_dir=temp_dir)
    try:
        con.register("shard_of", pd.concat(last, ignore_index=True).rename(columns={"prediction_time": "last_pt"}))
        ev = events_source(events_path, con)
        shutil.rmtree(folder, ignore_errors=True)
        con.execute(f"""COPY (SELECT e.*, s.shard FROM {ev} e JOIN shard_of s ON e.subject_id = s.subject_id
                             WHERE e.known_time <= s.last_pt OR e.time <= s.last_pt)
                        TO '{folder}' (FORMAT parquet, PARTITION_BY (shard), ROW_GROUP_SIZE {rows_per_group})""").fetchall()
    finally:
        con.close()


def _shard_features(job: tuple, split: str | None, stage_in: str, cfg: EHRConfig, codes: list[str],
                    temp_dir: str) -> pd.DataFrame:
    """One shard's features, on a DuckDB connection of its own (so it can run on any worker):
    its part of the ``split`` folder, or the subject range of events.parquet."""
    k, shard = job
    con = connect(temp_dir=Path(temp_dir))
    try:
        con.register("kept", pd.DataFrame({"code": [c for c in codes if c.startswith(MEASUREMENTS)] or ["<none>"]}))
        ranges = pd.DataFrame([(c, lo, hi) for c, (lo, hi) in PLAUSIBLE.items()], columns=["code", "lo", "hi"])
        con.register("ranges", ranges)
        files = sorted((Path(split) / f"shard={k}").glob("*.parquet")) if split else []
        if files:
            events = f"read_parquet([{', '.join(repr(str(f)) for f in files)}])"
        else:   # the subject range; with a split but no file, none of its subjects' rows was kept
            every = events_source(Path(stage_in) / "events.parquet", con)
            events = (f"(SELECT * FROM {every} LIMIT 0)" if split else
                      f"(SELECT * FROM {every} WHERE subject_id BETWEEN {int(shard['subject_id'].min())} "
                      f"AND {int(shard['subject_id'].max())})")
        return _featurize_shard(con, shard, events, Path(stage_in), cfg, codes)
    finally:
        con.close()


def _featurize_shard(con, shard: pd.DataFrame, events: str, stage_in: Path, cfg: EHRConfig,
                     codes: list[str]) -> pd.DataFrame:
    """The features of ``shard`` from ``events`` (a relation holding at least its subjects' rows)."""
    base = shard[["subject_id", "hadm_id", "prediction_time"]].copy()
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
