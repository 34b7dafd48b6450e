"""Availability audit: re-derive, from the RAW MIMIC-IV rows, when each row that could feed a
prediction became available, independently of the ingest and the featurisers.

For every source table the rule below gives each raw row its charted time (the key the
canonical events carry as ``time``) and its availability.  Every event a feature may use
under the run's rule (known by the prediction time; measurements and treatments charted in
the look-back; codes of other admissions) is joined to the raw rows of its table with the
same subject and time: a row whose raw availability is later than the prediction time, or
that the raw rows never make available, is a VIOLATION (the run fails).  Rows charted in the
look-back but not yet available are counted as held back, by reason.  Under
``ehr.availability: charttime`` (the comparison mode) the rows used before they were
available are counted, not failed: that mode exists to measure what they are worth.

Notes (``audit_notes``): every (admission, note) pair the notes featuriser used
(``used_notes.parquet``) is looked up by ``note_id`` in the raw note file and its
availability re-derived there: a timed note at its ``storetime`` (never before its
charttime; no storetime in a file that has the column: never), a date-only note at the end
of its day, a file without the column at the charttime.  A used note not available by
the prediction time, or absent from the raw files, is a violation.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.config import EHRConfig
from pipeline.sources.mimic_iv import _columns, _scan, connect, table_path

EOD = "(TRY_CAST({d} AS DATE) + INTERVAL 1 DAY - INTERVAL 1 SECOND)"


def _ts(c: str) -> str:
    return f"TRY_CAST({c} AS TIMESTAMP)"


def _stored(t: str) -> str:
    return f"CASE WHEN {_ts('storetime')} IS NULL THEN NULL ELSE greatest({t}, {_ts('storetime')}) END"


MICRO_T = f"coalesce({_ts('charttime')}, {EOD.format(d='chartdate')})"
# table -> [(charted time, availability, reason when later, tag, row filter)]; the tag tells apart
# canonical rows of one table with the same time (a culture ordered / its positive result).
RULES = {
    "labevents": [(_ts("charttime"), _stored(_ts("charttime")), "resulted later", "", "")],
    "chartevents": [(_ts("charttime"), _stored(_ts("charttime")), "stored later", "", "")],
    "omr": [(EOD.format(d="chartdate"), EOD.format(d="chartdate"), "date-only", "", "")],
    "prescriptions": [(_ts("starttime"), _ts("starttime"), "ordered later", "", "")],
    "emar": [(_ts("charttime"), _stored(_ts("charttime")), "stored later", "", "")],
    "inputevents": [(_ts("starttime"), _stored(_ts("starttime")), "stored later", "", ""),
                    (_ts("endtime"), _stored(_ts("endtime")), "stored later", "", "")],
    "outputevents": [(_ts("charttime"), _stored(_ts("charttime")), "stored later", "", "")],
    "procedureevents": [(_ts("starttime"), _stored(_ts("starttime")), "stored later", "", "")],
    "microbiologyevents": [(MICRO_T, MICRO_T, "date-only", "", ""),
                           (MICRO_T, _stored(MICRO_T), "resulted later", "micro:positive",
                            "WHERE trim(coalesce(org_name, '')) <> ''")],
}
# A date-only row refers to its whole day: it counts as charted from the day's start (so a row of the
# prediction day, known only at the day's end, is counted as held back "date-only").
DAY_START = {"omr": "TRY_CAST(chartdate AS DATE)::TIMESTAMP",
             "microbiologyevents": f"coalesce({_ts('charttime')}, TRY_CAST(chartdate AS DATE)::TIMESTAMP)"}
CODE_TABLES = ("diagnoses_icd", "procedures_icd")
CODE_RULE = "coded at discharge"


def _raw_rows(con, root: Path) -> tuple[str, list[str]]:
    """SQL of (source, subject_id, time, avail, reason) over the raw tables present, and the tables."""
    parts, tables = [], []
    for table, rules in RULES.items():
        path = table_path(root, table)
        if path is None:
            continue
        cols = _columns(con, path)
        for t, avail, reason, tag, where in rules:
            if "storetime" not in cols and "storetime" in avail:
                avail = t  # the ingest reports this fallback (availability_fallback)
            charted = DAY_START.get(table, t)
            parts.append(f"SELECT '{table}' source, TRY_CAST(subject_id AS BIGINT) subject_id, {t} t, '{tag}' tag, "
                         f"{charted} charted, {avail} avail, '{reason}' reason FROM {_scan(path)} {where}")
        tables.append(table)
    adm = table_path(root, "admissions")
    for table in CODE_TABLES:
        path = table_path(root, table)
        if path is None or adm is None:
            continue
        parts.append(f"SELECT '{table}' source, TRY_CAST(d.subject_id AS BIGINT) subject_id, {_ts('a.admittime')} t, "
                     f"'' tag, {_ts('a.admittime')} charted, {_ts('a.dischtime')} avail, '{CODE_RULE}' reason FROM {_scan(path)} d "
                     f"JOIN {_scan(adm)} a ON d.hadm_id = a.hadm_id")
        tables.append(table)
    return " UNION ALL ".join(parts), tables


def audit_availability(cohort: pd.DataFrame, ingest_dir: Path, raw_root: Path, cfg: EHRConfig) -> dict:
    """{'tables': [...], 'per_source': {source: {used, violations, held_back: {reason: n}}}, 'violations': [...],
    'passed': bool, 'rule': cfg.availability}."""
    con = connect(temp_dir=Path(ingest_dir))
    raw_sql, tables = _raw_rows(con, Path(raw_root))
    result = {"rule": cfg.availability, "tables": tables, "per_source": {}, "violations": [], "passed": True}
    if not raw_sql:
        return result
    con.register("c", cohort[["subject_id", "hadm_id", "prediction_time"]])
    con.execute(f"""CREATE TEMP TABLE raw AS SELECT source, subject_id, t, tag, min(charted) charted, min(avail) avail,
        any_value(reason) reason
        FROM ({raw_sql}) WHERE subject_id IS NOT NULL AND t IS NOT NULL GROUP BY ALL""")
    known = "e.known_time" if cfg.availability == "storetime" else "e.time"
    codes = ", ".join(f"'{t}'" for t in CODE_TABLES)
    # Every (cohort row, event) pair within reach: charted before the prediction time, in the look-back
    # (codes: any admission, charted = its admittime; usable only for another admission, once coded).
    pairs = f"""
        SELECT c.hadm_id, c.prediction_time pt, e.source, e.subject_id, e.time, r.avail, r.reason,
          CASE WHEN e.source NOT IN ({codes}) THEN {known}
               WHEN e.hadm_id IS DISTINCT FROM c.hadm_id THEN e.known_time END used_at
        FROM read_parquet('{Path(ingest_dir) / 'events.parquet'}') e JOIN c ON e.subject_id = c.subject_id
        LEFT JOIN raw r ON r.source = e.source AND r.subject_id = e.subject_id AND r.t = e.time
          AND r.tag = CASE WHEN e.code = 'micro:positive' THEN e.code ELSE '' END
        WHERE e.source IN (SELECT DISTINCT source FROM raw) AND coalesce(r.charted, e.time) <= c.prediction_time
          AND (e.source IN ({codes}) OR e.time >= c.prediction_time - INTERVAL {cfg.lookback_hours} HOUR)"""
    rows = con.execute(f"""
        SELECT source, reason, count(*) FILTER (WHERE used_at <= pt) usable,
          count(*) FILTER (WHERE used_at <= pt AND (avail IS NULL OR avail > pt)) violations,
          count(*) FILTER (WHERE NOT coalesce(used_at <= pt, false) AND avail > pt) held_later,
          count(*) FILTER (WHERE NOT coalesce(used_at <= pt, false) AND avail IS NULL) held_never
        FROM ({pairs}) GROUP BY source, reason ORDER BY source, reason""").fetchall()
    for source, reason, usable, bad, later, never in rows:
        s = result["per_source"].setdefault(source, {"usable": 0, "used_before_available": 0, "held_back": {}})
        s["usable"] += int(usable)
        s["used_before_available"] += int(bad)
        for why, n in ((reason or "no raw row", later), ("never available (no storetime or no raw row)", never)):
            if n:
                s["held_back"][why] = s["held_back"].get(why, 0) + int(n)
    n_bad = sum(v["used_before_available"] for v in result["per_source"].values())
    if n_bad:
        examples = con.execute(f"""SELECT source, hadm_id, time, used_at, avail, pt FROM ({pairs})
            WHERE used_at <= pt AND (avail IS NULL OR avail > pt) ORDER BY hadm_id, time LIMIT 20""").fetchall()
        result["violations"] = [{"modality": "ehr", "source": s, "hadm_id": int(h), "item_time": str(u),
                                 "available": str(a), "prediction_time": str(p), "charted": str(t)}
                                for s, h, t, u, a, p in examples]
        result["passed"] = cfg.availability != "storetime"
        result["used_before_available"] = int(n_bad)
    con.close()
    return result


NOTE_DATE_ONLY = "(length(trim(charttime)) <= 10 OR strftime(TRY_CAST(charttime AS TIMESTAMP), '%H:%M:%S') = '00:00:00')"


def _raw_notes(files: list[str], con) -> str:
    """SQL of (note_id, subject_id, hadm_id, kind, charted, avail, reason) over the raw note files."""
    parts = []
    for f in files:
        cols = _columns(con, Path(f))
        ct = _ts("charttime")
        eod = EOD.format(d="charttime")
        if "storetime" in cols:
            avail = (f"CASE WHEN {_ts('storetime')} IS NOT NULL THEN greatest({ct}, {_ts('storetime')}) "
                     f"WHEN {NOTE_DATE_ONLY} THEN {eod} END")
            reason = (f"CASE WHEN {_ts('storetime')} IS NOT NULL THEN 'stored later' WHEN {NOTE_DATE_ONLY} "
                      "THEN 'date-only' ELSE 'no storetime' END")
        else:
            avail, reason = f"CASE WHEN {NOTE_DATE_ONLY} THEN {eod} ELSE {ct} END", "'date-only'"
        text = ", ".join(f"CAST({c} AS VARCHAR) AS {c}" for c in ("note_id", "charttime", "storetime", "note_type")
                         if c in cols)   # a parquet file may hold typed columns
        kind = "lower(trim(note_type))" if "note_type" in cols else f"'{Path(f).name.split('.')[0].lower()}'"
        hadm = "TRY_CAST(hadm_id AS DOUBLE)" if "hadm_id" in cols else "NULL::DOUBLE"
        parts.append(f"SELECT trim(note_id) note_id, TRY_CAST(subject_id AS BIGINT) subject_id, {hadm} hadm_id, "
                     f"{kind} kind, CASE WHEN {NOTE_DATE_ONLY} THEN TRY_CAST(charttime AS DATE)::TIMESTAMP ELSE {ct} "
                     f"END charted, {avail} avail, {reason} reason FROM (SELECT * REPLACE ({text}) FROM {_scan(Path(f))})")
    return " UNION ALL ".join(parts)


def audit_notes(cohort: pd.DataFrame, used_notes: Path, note_files: list[str], lookback_hours: float,
                workdir: Path) -> dict:
    """{'used', 'used_before_available', 'held_back': {reason: n}, 'violations': [...]} for the notes
    source (module doc): the pairs used, re-checked on the raw files, and the notes of each cohort
    row's subject charted in its look-back but not yet available at its prediction time."""
    out = {"usable": 0, "used_before_available": 0, "held_back": {}, "violations": []}
    if not note_files or not Path(used_notes).exists():
        return out
    con = connect(temp_dir=Path(workdir))
    con.execute(f"CREATE TEMP TABLE raw_notes AS {_raw_notes(note_files, con)}")
    con.register("c", cohort[["subject_id", "hadm_id", "prediction_time"]])
    used = f"""SELECT u.hadm_id, u.note_id, c.prediction_time pt, r.avail, r.charted FROM read_parquet('{used_notes}') u
        JOIN c USING (hadm_id) LEFT JOIN raw_notes r ON r.note_id = u.note_id AND r.subject_id = c.subject_id"""
    n_used, n_bad = con.execute(f"SELECT count(*), count(*) FILTER (WHERE avail IS NULL OR avail > pt) "
                                f"FROM ({used})").fetchall()[0]
    out["usable"], out["used_before_available"] = int(n_used), int(n_bad)
    if n_bad:
        out["violations"] = [{"modality": "notes", "source": "notes", "hadm_id": int(h), "note_id": n,
                              "available": str(a), "prediction_time": str(p), "charted": str(t)}
                             for h, n, p, a, t in con.execute(f"SELECT * FROM ({used}) WHERE avail IS NULL OR avail > pt "
                                                             "ORDER BY hadm_id, note_id LIMIT 20").fetchall()]
    held = con.execute(f"""SELECT r.reason, count(*) FROM raw_notes r JOIN c ON r.subject_id = c.subject_id
        WHERE r.charted <= c.prediction_time AND r.charted >= c.prediction_time - INTERVAL {float(lookback_hours)} HOUR
          AND (r.avail IS NULL OR r.avail > c.prediction_time)
          AND NOT ((r.kind = 'ds' OR r.kind LIKE 'discharge%') AND r.hadm_id = c.hadm_id)
        GROUP BY r.reason ORDER BY r.reason""").fetchall()
    out["held_back"] = {f"note {why}": int(n) for why, n in held}
    con.close()
    return out
