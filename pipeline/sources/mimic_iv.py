"""MIMIC-IV hosp/icu (2.x, 3.x, the demo; 1.0's core/ folder) into canonical tables.

Small tables (patients, admissions, icustays) go through pandas with every
value read as text, so a bad value is reported with its file, row and column.
Event tables (labevents, chartevents, omr) are streamed by DuckDB straight into
one parquet file: memory is bounded by DuckDB's ``memory_limit``, never by the
table size.  Version differences live here: ``ethnicity`` became ``race`` in
2.0, 1.0 kept patients/admissions in ``core/``.
"""
from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from data_schemas.tables import ADMISSIONS, CODES, EVENTS, ICUSTAYS, PATIENTS
from pipeline.artifacts import read_parquet, write_parquet
from pipeline.errors import DataError, Quarantine
from pipeline.sources.raw_checks import header_columns, in_file_order, open_raw
from pipeline.sources.tables import find_table
from pipeline.sources.units import norm_unit, plan_units

SOURCE = "mimic_iv"
# code tables: a row's time and known_time come from its admission (admittime, dischtime)
CODED_AT_DISCHARGE = ("diagnoses_icd", "procedures_icd")
MAX_LISTED_BAD_ROWS = 200  # per table and field; the rest are counted in one summary row

# Unit harmonisation: chart item in Fahrenheit -> the Celsius item.
F_TO_C = {"223761": "223762"}

RENAMES = {"ethnicity": "race"}
# Admission context kept in the canonical admissions table (EHRConfig.context chooses the predictors).
CONTEXT_COLUMNS = ("admission_type", "admission_location", "race", "insurance", "language", "marital_status")


def table_path(root: Path, name: str) -> Path | None:
    """hosp/NAME, icu/NAME or core/NAME (MIMIC-IV 1.0) with any accepted extension."""
    for sub in ("hosp", "icu", "core"):
        p = find_table(Path(root) / sub, name)
        if p is not None:
            return p
    return None


def _read_text_table(path: Path, required: list[str]) -> pd.DataFrame:
    if path.suffix == ".parquet":
        df = read_parquet(path).astype("string")
    else:
        try:
            df = pd.read_csv(path, dtype="string", keep_default_na=False, na_values=[""], encoding_errors="replace")
        except (pd.errors.EmptyDataError, pd.errors.ParserError, EOFError, OSError) as e:
            raise DataError(f"cannot read the table ({type(e).__name__}: {str(e).splitlines()[-1][:160]})",
                            file=path, hint="an empty, truncated or malformed CSV") from None
    df = df.rename(columns={k: v for k, v in RENAMES.items() if k in df.columns and v not in df.columns})
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"required column(s) {missing} missing; found {list(df.columns)}",
                        file=path, field=missing[0], hint="is this a MIMIC-IV table of the expected version?")
    return df


def _convert(df: pd.DataFrame, path: Path, kinds: dict[str, str], q: Quarantine,
             required_nonnull: tuple[str, ...]) -> pd.DataFrame:
    """Cast text columns; rows whose required value is missing or unparseable go to quarantine."""
    out = pd.DataFrame(index=df.index)
    bad = pd.Series(False, index=df.index)
    for col, kind in kinds.items():
        if col not in df.columns:
            continue
        raw = df[col]
        if kind == "int":
            conv = pd.to_numeric(raw, errors="coerce")
            unparsed = conv.isna() & raw.notna()
            frac = (conv % 1).fillna(0) != 0
            unparsed |= frac
            conv = conv.where(~unparsed)
        elif kind == "float":
            conv = pd.to_numeric(raw, errors="coerce")
            unparsed = conv.isna() & raw.notna()
        elif kind == "datetime":
            conv = pd.to_datetime(raw, errors="coerce", format="mixed")
            unparsed = conv.isna() & raw.notna()
        else:
            conv, unparsed = raw, pd.Series(False, index=df.index)
        for i in np.flatnonzero(unparsed.to_numpy()):
            q.add(SOURCE, path, int(i) + 2, col, f"unparseable {kind} value")  # +2: header line, 1-based
        if col in required_nonnull:
            for i in np.flatnonzero((raw.isna()).to_numpy()):
                q.add(SOURCE, path, int(i) + 2, col, "missing required value")
            bad |= conv.isna()
        out[col] = conv
    for col in df.columns:
        if col not in out.columns:
            out[col] = df[col]
    return out[~bad].copy()


def _drop_duplicates(df: pd.DataFrame, key: str, path: Path, q: Quarantine) -> pd.DataFrame:
    dup = df.duplicated(key, keep="first")
    for i in df.index[dup]:
        q.add(SOURCE, path, int(i) + 2, key, f"duplicated id {df.at[i, key]}")
    return df[~dup]


def read_patients(root: Path, q: Quarantine) -> pd.DataFrame:
    path = table_path(root, "patients")
    df = _read_text_table(path, ["subject_id", "gender", "anchor_age", "anchor_year"])
    df = _convert(df, path, {"subject_id": "int", "anchor_age": "int", "anchor_year": "int", "dod": "datetime"},
                  q, required_nonnull=("subject_id", "anchor_age", "anchor_year"))
    df = _drop_duplicates(df, "subject_id", path, q)
    for c in ("subject_id", "anchor_age", "anchor_year"):
        df[c] = df[c].astype("int64")
    if "dod" not in df.columns:
        df["dod"] = pd.NaT
    df["gender"] = df["gender"].astype(object)
    return PATIENTS.validate(df[["subject_id", "gender", "anchor_age", "anchor_year", "dod"]].reset_index(drop=True),
                             path)


def read_admissions(root: Path, q: Quarantine, patients: pd.DataFrame | None = None) -> pd.DataFrame:
    path = table_path(root, "admissions")
    df = _read_text_table(path, ["subject_id", "hadm_id", "admittime", "dischtime"])
    df = _convert(df, path, {"subject_id": "int", "hadm_id": "int", "admittime": "datetime",
                             "dischtime": "datetime", "deathtime": "datetime", "hospital_expire_flag": "int",
                             "edregtime": "datetime", "edouttime": "datetime"},
                  q, required_nonnull=("subject_id", "hadm_id", "admittime"))
    df = _drop_duplicates(df, "hadm_id", path, q)
    before = df["dischtime"].notna() & (df["dischtime"] < df["admittime"])
    for i in df.index[before]:
        q.add(SOURCE, path, int(i) + 2, "dischtime", "dischtime before admittime")
    df = df[~before]
    if "hospital_expire_flag" not in df.columns:
        df["hospital_expire_flag"] = np.nan
    if "deathtime" not in df.columns:
        df["deathtime"] = pd.NaT
    # The outcome flag and the death time must agree; a missing flag is taken from deathtime once the
    # admission is closed.  An OPEN admission (no dischtime, no deathtime: a live extract) keeps a missing
    # flag: its outcome is not known yet (scoring only; training refuses it).
    flag = df["hospital_expire_flag"]
    closed = df["dischtime"].notna() | df["deathtime"].notna()
    df["hospital_expire_flag"] = flag.fillna(df["deathtime"].notna().astype(float).where(closed))
    if patients is not None:
        orphan = ~df["subject_id"].isin(patients["subject_id"])
        for i in df.index[orphan]:
            q.add(SOURCE, path, int(i) + 2, "subject_id", "subject not in patients")
        df = df[~orphan]
    for c in ("subject_id", "hadm_id"):
        df[c] = df[c].astype("int64")
    flag = df["hospital_expire_flag"]  # int64; nullable Int64 only when an admission is still open
    df["hospital_expire_flag"] = flag.astype("Int64" if flag.isna().any() else "int64")
    cols = ["subject_id", "hadm_id", "admittime", "dischtime", "deathtime", "hospital_expire_flag"]
    for c in CONTEXT_COLUMNS:
        if c in df.columns:
            df[c] = df[c].astype(object)
            cols.append(c)
    for c in ("edregtime", "edouttime"):
        if c in df.columns:
            cols.append(c)
    return ADMISSIONS.validate(df[cols].reset_index(drop=True), path)


def read_icustays(root: Path, q: Quarantine) -> pd.DataFrame | None:
    path = table_path(root, "icustays")
    if path is None:
        return None
    df = _read_text_table(path, ["subject_id", "hadm_id", "stay_id", "intime", "outtime"])
    df = _convert(df, path, {"subject_id": "int", "hadm_id": "int", "stay_id": "int", "intime": "datetime",
                             "outtime": "datetime"}, q, required_nonnull=("subject_id", "stay_id", "intime"))
    df = _drop_duplicates(df, "stay_id", path, q)
    for c in ("subject_id", "stay_id"):
        df[c] = df[c].astype("int64")
    df["hadm_id"] = df["hadm_id"].astype("Int64")
    return ICUSTAYS.validate(df[["subject_id", "hadm_id", "stay_id", "intime", "outtime"]].reset_index(drop=True),
                             path)


# ---------------------------------------------------------------- events (streamed)

def _scan(path: Path) -> str:
    p = str(path).replace("'", "''")
    if path.suffix == ".parquet":
        return f"read_parquet('{p}')"
    return f"read_csv('{p}', header=true, all_varchar=true, quote='\"', escape='\"', strict_mode=false)"


def _columns(con, path: Path) -> list[str]:
    return header_columns(con, path)


EVENT_QUERIES = {
    # table: (required columns, SELECT producing subject_id, hadm_id, time, code, value, unit, raw_time,
    # raw_value, row_ref, known_time).  A result is known at its storetime (labs: resulted; charts:
    # validated), never before it was drawn/charted; a missing storetime holds the row back ({known}).
    "labevents": (["subject_id", "itemid", "charttime", "valuenum"],
                  "SELECT TRY_CAST(subject_id AS BIGINT) subject_id, TRY_CAST(hadm_id AS DOUBLE) hadm_id, "
                  "TRY_CAST(charttime AS TIMESTAMP) time, 'lab:' || itemid code, TRY_CAST(valuenum AS DOUBLE) value, "
                  "valueuom unit, charttime raw_time, valuenum raw_value, {rowref} row_ref, {known} known_time, "
                  "_line, {key} _k FROM {scan}"),
    "chartevents": (["subject_id", "itemid", "charttime", "valuenum"],
                    "SELECT TRY_CAST(subject_id AS BIGINT) subject_id, TRY_CAST(hadm_id AS DOUBLE) hadm_id, "
                    "TRY_CAST(charttime AS TIMESTAMP) time, 'chart:' || itemid code, "
                    "TRY_CAST(valuenum AS DOUBLE) value, valueuom unit, charttime raw_time, valuenum raw_value, "
                    "{rowref} row_ref, {known} known_time, _line, {key} _k FROM {scan}"),
}
# Parts whose query is a plain filtered projection of the file, so staged rows stay in file order
# (real extracts keep each table roughly by subject).  The others (grouped, joined or unioned rows)
# are sorted by subject when staged, so events.parquet stays clustered by subject either way.
KEEPS_FILE_ORDER = {"labevents", "chartevents", "prescriptions", "emar", "outputevents"}
STORED = ("CASE WHEN TRY_CAST(storetime AS TIMESTAMP) IS NULL THEN NULL "
          "ELSE greatest(TRY_CAST(charttime AS TIMESTAMP), TRY_CAST(storetime AS TIMESTAMP)) END")


def _omr_query(scan: str, key: str) -> str:
    # omr has a date, not a time: an entry counts as known at the END of its day (no same-day leakage).
    # "Blood Pressure" values are "120/80": split into systolic and diastolic codes.
    base = (f"SELECT TRY_CAST(subject_id AS BIGINT) subject_id, NULL::DOUBLE hadm_id, "
            f"TRY_CAST(chartdate AS DATE) + INTERVAL 1 DAY - INTERVAL 1 SECOND time, result_name, result_value, "
            f"chartdate raw_time, 'subject_id=' || subject_id || ' chartdate=' || chartdate row_ref, _line, {key} _k "
            f"FROM {scan}")
    return (f"WITH o AS MATERIALIZED ({base}) "
            "SELECT subject_id, hadm_id, time, 'omr:' || result_name code, TRY_CAST(result_value AS DOUBLE) value, "
            "NULL unit, raw_time, result_value raw_value, row_ref, time known_time, _line, _k FROM o "
            "WHERE result_name NOT LIKE 'Blood Pressure%' "
            "UNION ALL SELECT subject_id, hadm_id, time, 'omr:' || result_name || ' systolic', "
            "TRY_CAST(split_part(result_value, '/', 1) AS DOUBLE), 'mmHg', raw_time, result_value, row_ref, time, _line, _k "
            "FROM o WHERE result_name LIKE 'Blood Pressure%' "
            "UNION ALL SELECT subject_id, hadm_id, time, 'omr:' || result_name || ' diastolic', "
            "TRY_CAST(split_part(result_value, '/', 2) AS DOUBLE), 'mmHg', raw_time, result_value, row_ref, time, _line, _k "
            "FROM o WHERE result_name LIKE 'Blood Pressure%'")


def connect(memory_limit: str = "512MB", threads: int = 2, temp_dir: Path | None = None):
    con = duckdb.connect()
    con.execute(f"SET memory_limit='{memory_limit}'")
    con.execute(f"SET threads={int(threads)}")
    con.execute("SET preserve_insertion_order=false")
    try:   # no progress bar on a terminal; in a notebook duckdb refuses the setting without ipywidgets
        con.execute("SET enable_progress_bar=false")
    except duckdb.InvalidInputException:
        pass
    if temp_dir is not None:
        con.execute(f"SET temp_directory='{temp_dir}'")
    return con


def ingest_events(root: Path, out_dir: Path, q: Quarantine, con=None) -> dict:
    """Stream labevents, chartevents, omr and the tables of ``mimic_extra`` (those present) into
    out_dir/events.parquet, each row with its ``known_time``.  The code tables need
    out_dir/admissions.parquet (their rows are known at the coded admission's dischtime); with
    out_dir/patients.parquet too, events after death are dropped (``late_events``).

    Two passes over the data: every file is read once into a staging parquet (each row with
    its source line where ``raw_checks`` checks the table; a big CSV in chunks, ``_stage``), then
    the staged rows are checked, counted per (table, code, unit), and written once, cleaned
    (drug names, Fahrenheit, units, events after death) by what was decided on those counts."""
    from pipeline.sources.mimic_extra import drug_maps, extra_parts
    con = con or connect(temp_dir=out_dir)
    parts, found, absent, raw, fallback, templates = [], [], [], {}, {}, {}
    for table, (required, sql) in EVENT_QUERIES.items():
        path = table_path(root, table)
        if path is None:
            absent.append(table)
            continue
        raw[table] = rt = open_raw(con, table, path, required)   # the user's file, line-numbered
        if "hadm_id" not in rt.columns:
            sql = sql.replace("TRY_CAST(hadm_id AS DOUBLE)", "NULL::DOUBLE")
        if "valueuom" not in rt.columns:
            sql = sql.replace("valueuom unit", "NULL::VARCHAR unit")
        known = STORED
        if "storetime" not in rt.columns:  # an extract without the column: charted time, reported
            known, fallback[table] = "TRY_CAST(charttime AS TIMESTAMP)", "no storetime column: known at charttime"
        template = sql.format(scan="{scan}", rowref="'line ' || _line", known=known, key=rt.key_hash)
        templates[len(parts)] = template   # a big file is staged in chunks (``_stage``)
        parts.append((table, path, template.replace("{scan}", rt.scan)))
        found.append(table)
    omr = table_path(root, "omr")
    if omr is not None:
        raw["omr"] = rt = open_raw(con, "omr", omr, ["subject_id", "chartdate", "result_name", "result_value"])
        parts.append(("omr", omr, _omr_query(rt.scan, rt.key_hash)))
        found.append("omr")
    else:
        absent.append("omr")
    adm, pats = out_dir / "admissions.parquet", out_dir / "patients.parquet"
    if adm.exists():
        more, more_found, more_absent = extra_parts(root, con, adm, table_path, _scan, _columns)
        parts, found, absent = parts + more, found + more_found, absent + more_absent
    out = out_dir / "events.parquet"
    info = {"event_tables_found": found, "event_tables_absent": absent}
    if not parts:
        write_parquet(EVENTS.empty(), out, EVENTS)
        return {**info, "event_rows": 0}
    stage = out.with_name(".events.stage")
    shutil.rmtree(stage, ignore_errors=True)
    _stage(con, parts, raw, stage, templates)
    staged = f"read_parquet('{stage}/*.parquet', union_by_name=true)"
    for rt in raw.values():
        rt.check(con, staged, q, SOURCE)
    dropped = " UNION ALL ".join(f"SELECT '{t}' source, _line FROM {rt.dropped}" for t, rt in raw.items())
    con.execute("CREATE OR REPLACE TEMP TABLE dropped_lines AS "
                + (dropped or "SELECT NULL::VARCHAR source, NULL::BIGINT _line LIMIT 0"))
    kept = staged
    if con.execute("SELECT count(*) FROM dropped_lines").fetchall()[0][0]:
        kept = f"(SELECT s.* FROM {staged} s ANTI JOIN dropped_lines d ON s.source = d.source AND s._line = d._line)"
    counts = _quarantine_unparsed(con, kept, parts, q)
    drug_maps(con, kept)  # drug names normalised and classed once per distinct name
    ok = f"(SELECT * FROM {kept} WHERE bad_ref IS NULL AND subject_id IS NOT NULL AND time IS NOT NULL)"
    # Every decision below is made once per (table, code, unit) of the staged rows, not per row:
    # the rows are counted by that key in one pass, events after death (few) are taken out of the
    # counts, and drug names, Fahrenheit and units are then planned on the counts (``_plan_rows``).
    con.execute(f"CREATE OR REPLACE TEMP TABLE ev_keys AS SELECT source, code, unit, count(*) n FROM {ok} GROUP BY ALL")
    late = "(SELECT * FROM late_rows)"
    con.execute(f"CREATE OR REPLACE TEMP TABLE late_rows AS SELECT * FROM {ok} LIMIT 0")
    if adm.exists() and pats.exists():
        info["events_after_death"] = 0
    if "events_after_death" in info and _register_deaths(con, read_parquet(pats), read_parquet(adm)):
        con.execute(f"INSERT INTO late_rows SELECT s.* FROM {ok} s JOIN death_at d USING (subject_id) "
                    "WHERE s.time > d.death + INTERVAL 1 DAY")
        info["events_after_death"] = _list_late(con, _drug_rows(late), q, SOURCE, {t: p for t, p, _ in parts})
        if info["events_after_death"]:
            ok = (f"(SELECT s.* FROM {ok} s LEFT JOIN death_at d USING (subject_id) "
                  "WHERE d.death IS NULL OR s.time <= d.death + INTERVAL 1 DAY)")
    units = _plan_rows(con, q, raw)
    fixed = ("SELECT s.subject_id, s.hadm_id, s.time, coalesce(f.code, s.code) code, "
             "CASE WHEN f.f_to_c THEN (s.value - 32) * 5.0 / 9.0 ELSE s.value END * coalesce(f.factor, 1.0) value, "
             "CASE WHEN f.code IS NULL THEN s.unit ELSE f.unit END unit, s.source, s.known_time "
             f"FROM {ok} s LEFT JOIN row_fix f ON s.source = f.source AND s.code = f.raw_code "
             "AND s.unit IS NOT DISTINCT FROM f.raw_unit WHERE f.code IS NULL OR NOT f.dropped")
    rows = f"{fixed} UNION ALL ({_class_rows(ok)} ORDER BY s.subject_id)"
    final = (f"SELECT subject_id, hadm_id, time::TIMESTAMP_NS time, known_time::TIMESTAMP_NS known_time, code, "
             f"value, unit, source FROM ({rows})")   # the EVENTS schema's column order
    tmp = out.with_name(".events.parquet.tmp")
    con.execute(f"COPY ({final}) TO '{tmp}' (FORMAT parquet, ROW_GROUP_SIZE 100000)").fetchall()
    shutil.rmtree(stage)
    tmp.replace(out)
    n = con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchall()[0][0]
    return {**info, "event_rows": int(n), "event_bad_rows": counts, "raw_checks": {t: r.counts for t, r in raw.items()},
            "availability_fallback": fallback, **units}


CHUNKED_MIN_BYTES = 256 * 2**20   # a CSV (.gz or plain) event file this big is staged in chunks


def _stage(con, parts: list, raw: dict, stage: Path, templates: dict[int, str] | None = None) -> None:
    """One pass over every part's file into the folder ``stage``: the usable rows and the bad ones (an
    unparseable id or time: ``bad_ref``; a non-numeric value: ``bad_value``), each row of a
    checked table with its ``_line`` and key hash ``_k``.  File order is kept (line numbers).

    ``templates`` maps a part to its SQL with ``{scan}`` in place of the file: a CSV of at least
    CHUNKED_MIN_BYTES is then cut into plain-CSV chunks (``csv_chunks``), each staged on its own
    with the whole file's line numbers, so that one big file (labevents) keeps both cores busy."""
    from pipeline.sources import csv_chunks
    templates = templates or {}
    bad = "subject_id IS NULL OR (time IS NULL AND raw_time IS NOT NULL)"

    def select(i: int, sql: str) -> str:
        table = parts[i][0]
        rt = raw.get(table)
        nonnum = ("(value IS NULL AND trim(coalesce(CAST(raw_value AS VARCHAR), '')) <> '')"
                  if rt is not None and rt.numeric else "FALSE")
        lined = "_line, _k" if rt is not None else "NULL::BIGINT _line, NULL::UBIGINT _k"
        field = f"'{rt.numeric[0]}'" if rt is not None and rt.numeric else "NULL"
        return (f"SELECT subject_id, hadm_id, time, code, value, unit, '{table}' source, "
                f"known_time::TIMESTAMP known_time, CASE WHEN {bad} OR {nonnum} THEN row_ref END bad_ref, "
                f"CASE WHEN subject_id IS NULL THEN 'subject_id' WHEN {bad} THEN 'time' WHEN {nonnum} THEN {field} END "
                f"bad_field, CASE WHEN {nonnum} THEN CAST(raw_value AS VARCHAR) END bad_value, {lined} FROM ({sql}) "
                f"WHERE ({bad}) OR {nonnum} OR (time IS NOT NULL AND value IS NOT NULL AND isfinite(value))")

    def copy(i: int, sql: str, name: str, chunk: Path | None = None) -> None:
        try:
            con.cursor().execute(f"COPY ({select(i, sql)}) TO '{stage / name}' "
                                 "(FORMAT parquet, ROW_GROUP_SIZE 500000)").fetchall()
        except duckdb.Error as e:   # a file DuckDB cannot parse: name it (a chunk: read the whole file)
            if chunk is None:
                raise DataError(f"cannot read the table ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
                                file=parts[i][1]) from None
            unchunkable.add(i)
        if chunk is not None:
            chunk.unlink()

    size = {i: Path(p).stat().st_size for i, (_, p, _) in enumerate(parts)}
    chunked = [i for i in templates if size[i] >= CHUNKED_MIN_BYTES and Path(parts[i][1]).suffix in (".gz", ".csv")]
    whole = sorted((i for i in range(len(parts)) if i not in chunked), key=lambda i: -size[i])
    unchunkable = set()   # read whole after all: the chunker or DuckDB refused a chunk

    def tasks():
        """Largest first: the whole files bigger than a chunked file's share, then the chunks
        (cut lazily, one at a time, as a stager asks), then the smaller files."""
        big = [i for i in whole if size[i] >= CHUNKED_MIN_BYTES]
        yield from (lambda i=i: copy(i, parts[i][2], f"{i:02d}.parquet") for i in big)
        for i in chunked:
            try:
                for k, c in enumerate(csv_chunks.gz_csv_chunks(Path(parts[i][1]), stage / ".chunks",
                                                               csv_chunks.CHUNK_BYTES)):
                    if i in unchunkable:
                        c.path.unlink()
                        break
                    yield lambda i=i, k=k, c=c: copy(i, templates[i].replace("{scan}", csv_chunks.chunk_scan(c)),
                                                     f"{i:02d}.{k:05d}.parquet", c.path)
            except csv_chunks.NotChunkable:    # read as a whole below, the chunks staged so far discarded
                unchunkable.add(i)
        yield from (lambda i=i: copy(i, parts[i][2], f"{i:02d}.parquet") for i in whole if i not in big)

    # The parts on two cursors at once: decompressing a gzip file is sequential, so two files (or
    # chunks) at a time is what keeps both cores busy.  Line numbers (row_number() OVER ()) need the
    # file order kept: preserve_insertion_order stays on meanwhile.
    stage.mkdir()
    (stage / ".chunks").mkdir()
    queue, lock, failed = tasks(), threading.Lock(), threading.Event()

    def stager() -> None:
        while not failed.is_set():
            with lock:
                task = next(queue, None)
            if task is None:
                return
            try:
                task()
            except BaseException:
                failed.set()
                raise
    with in_file_order(con), ThreadPoolExecutor(max_workers=2) as pool:
        for f in [pool.submit(stager) for _ in range(2)]:
            f.result()
        for i in sorted(unchunkable):
            for part in stage.glob(f"{i:02d}.*.parquet"):
                part.unlink()
            copy(i, parts[i][2], f"{i:02d}.parquet")
    shutil.rmtree(stage / ".chunks")
    # then the parts not staged in file order sorted by subject, one at a time (a sort next to the
    # staging of another file would take its memory)
    for i, (table, _, _) in enumerate(parts):
        if table not in KEEPS_FILE_ORDER:
            part = stage / f"{i:02d}.parquet"
            con.execute(f"COPY (SELECT * FROM read_parquet('{part}') ORDER BY subject_id) TO '{part}.sorted' "
                        "(FORMAT parquet, ROW_GROUP_SIZE 500000)").fetchall()
            Path(f"{part}.sorted").replace(part)


def _quarantine_unparsed(con, kept: str, parts: list, q: Quarantine) -> dict:
    """Rows with an unparseable id or time (or a code row whose admission is absent): listed up to a
    cap per table, then counted.  Returns the count per table."""
    where = "bad_ref IS NOT NULL AND bad_field IN ('subject_id', 'time')"
    n_bad = dict(con.execute(f"SELECT source, count(*) FROM {kept} WHERE {where} GROUP BY source").fetchall())
    counts = {}
    for table, path, _ in parts:
        counts[table] = n = int(n_bad.get(table, 0))
        if not n:
            continue
        for ref, field in con.execute(f"SELECT bad_ref, bad_field FROM {kept} WHERE source = '{table}' AND {where} "
                                      f"ORDER BY _line LIMIT {MAX_LISTED_BAD_ROWS}").fetchall():
            q.add(SOURCE, path, ref, field, "admission not in admissions (absent or quarantined there)"
                  if table in CODED_AT_DISCHARGE and field == "time" else "unparseable id or timestamp")
        if n > MAX_LISTED_BAD_ROWS:
            q.add(SOURCE, path, None, "", f"{n - MAX_LISTED_BAD_ROWS} more rows with unparseable id or time")
    return counts


def _class_rows(ok: str) -> str:
    """The 'medclass:' rows of the drug rows of ``ok`` (one per subject, time and class)."""
    return ("SELECT DISTINCT s.subject_id, s.hadm_id, s.time, k.class_code code, 1.0 value, NULL unit, s.source, "
            f"s.known_time FROM {ok} s JOIN drug_class k ON s.code = k.raw_code "
            "WHERE s.code LIKE 'rx:%' OR s.code LIKE 'med:%'")


def _drug_rows(ok: str) -> str:
    """``ok``'s rows as written out before units: drug names normalised (a name that normalises to
    nothing dropped), drug classes added, Fahrenheit codes in Celsius."""
    rows = ("SELECT s.subject_id, s.hadm_id, s.time, coalesce(d.code, s.code) code, s.value, s.unit, s.source, "
            f"s.known_time FROM {ok} s LEFT JOIN drug_map d ON s.code = d.raw_code "
            f"WHERE d.raw_code IS NULL OR d.code IS NOT NULL UNION ALL {_class_rows(ok)}")
    return (f"(SELECT subject_id, hadm_id, time, {_f_to_c('code')} code, "
            f"CASE WHEN {_is_f('code')} THEN (value - 32) * 5.0 / 9.0 ELSE value END value, "
            f"CASE WHEN {_is_f('code')} THEN '°C' ELSE unit END unit, source, known_time FROM ({rows}))")


def _is_f(code: str) -> str:
    return f"{code} IN ({', '.join(repr('chart:' + f) for f in F_TO_C)})"


def _f_to_c(code: str) -> str:
    whens = " ".join(f"WHEN {code} = 'chart:{f}' THEN 'chart:{c}'" for f, c in F_TO_C.items())
    return f"CASE {whens} ELSE {code} END"


def _plan_rows(con, q: Quarantine, raw: dict) -> dict:
    """From ``ev_keys`` (staged rows counted per table, code and unit) less ``late_rows``: the
    temp table ``row_fix``, what happens to the rows of each (source, raw_code, raw_unit) that
    changes: the code they get (drug name normalised, Fahrenheit -> Celsius), whether the value is
    converted from Fahrenheit (``f_to_c``) and then multiplied (``factor``), the unit written, or
    ``dropped`` (a drug name that normalises to nothing, a value in an unknown unit).  The units
    are planned (``units.plan_units``) on the counts, each row's fate then looked up by its key."""
    con.execute(f"""CREATE OR REPLACE TEMP TABLE ev_plan AS
        SELECT *, {_f_to_c('code1')} code2, {_is_f('code1')} f_to_c,
               CASE WHEN {_is_f('code1')} THEN '°C' ELSE raw_unit END unit2 FROM (
          SELECT k.source, k.code raw_code, k.unit raw_unit, k.n - coalesce(l.n, 0) n,
                 d.raw_code IS NOT NULL AND d.code IS NULL dropped_name, coalesce(d.code, k.code) code1
          FROM ev_keys k LEFT JOIN drug_map d ON k.code = d.raw_code
          LEFT JOIN (SELECT source, code, unit, count(*) n FROM late_rows GROUP BY ALL) l
            ON k.source = l.source AND k.code = l.code AND k.unit IS NOT DISTINCT FROM l.unit)""")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE unit_counts AS SELECT source, code2 code, {norm_unit('unit2')} u,
        sum(n)::BIGINT n FROM ev_plan WHERE NOT dropped_name AND n > 0 GROUP BY ALL""")
    units = plan_units(con, "unit_counts", q, SOURCE, raw)
    mismatch = "(p.u <> '' AND d.unit IS NOT NULL AND p.u <> d.unit)"
    con.execute(f"""CREATE OR REPLACE TEMP TABLE row_fix AS
        SELECT source, raw_code, raw_unit, code, f_to_c, factor, unit, dropped FROM (
          SELECT p.source, p.raw_code, p.raw_unit, p.code2 code, p.f_to_c,
                 CASE WHEN {mismatch} THEN c.factor END factor, CASE WHEN {mismatch} THEN d.unit ELSE p.unit2 END unit,
                 p.dropped_name OR ({mismatch} AND c.factor IS NULL) dropped, {mismatch} mismatch
          FROM (SELECT *, {norm_unit('unit2')} u FROM ev_plan) p LEFT JOIN dom d ON p.code2 = d.code
          LEFT JOIN conv c ON p.code2 = c.code AND c.from_unit = p.u AND c.to_unit = d.unit)
        WHERE dropped OR f_to_c OR mismatch OR code <> raw_code""")
    return units


def read_codes(root: Path, con=None) -> pd.DataFrame:
    """Human labels for event codes: d_labitems, d_items, the ICD codes that occur (d_icd_*) and
    the comorbidity categories."""
    from pipeline.sources.mimic_extra import read_icd_labels
    frames = []
    for table, prefix in (("d_labitems", "lab:"), ("d_items", "chart:")):
        path = table_path(root, table)
        if path is None:
            continue
        df = _read_text_table(path, ["itemid", "label"])
        frames.append(pd.DataFrame({"code": prefix + df["itemid"].astype(str), "label": df["label"].astype(str)}))
    frames.append(read_icd_labels(root, con or connect(), table_path, _scan))
    codes = pd.concat(frames, ignore_index=True)
    codes = codes.drop_duplicates("code").astype(object).reset_index(drop=True)
    return CODES.validate(codes)


def _register_deaths(con, patients: pd.DataFrame, admissions: pd.DataFrame) -> bool:
    """Register ``death_at`` (subject_id, death: the earliest deathtime or dod); False when nobody died."""
    death = pd.concat([admissions[["subject_id", "deathtime"]].rename(columns={"deathtime": "death"}),
                       patients[["subject_id", "dod"]].rename(columns={"dod": "death"})]).dropna()
    if death.empty:
        return False
    con.register("death_at", death.groupby("subject_id", as_index=False)["death"].min())
    return True


def _list_late(con, late: str, q: Quarantine, source: str, files: dict) -> int:
    """Quarantine the events of ``late`` (listed up to a cap, then counted); returns how many."""
    n = con.execute(f"SELECT count(*) FROM ({late})").fetchall()[0][0]
    if n:
        for sid, t, code, src in con.execute(f"SELECT subject_id, time, code, source FROM ({late}) "
                                             f"ORDER BY subject_id, time LIMIT {MAX_LISTED_BAD_ROWS}").fetchall():
            q.add(source, files.get(src, src), f"subject_id={sid} time={t}", "time", f"event after death ({code})")
        if n > MAX_LISTED_BAD_ROWS:
            q.add(source, ", ".join(str(f) for f in files.values()) or "events", None, "time",
                  f"{n - MAX_LISTED_BAD_ROWS} more events after death")
    return int(n)


def late_events(con, events: str, patients: pd.DataFrame, admissions: pd.DataFrame, q: Quarantine,
                source: str = SOURCE, files: dict[str, Path] | None = None) -> tuple[str, int]:
    """Events timestamped more than a day after the subject's death are recording errors: they
    are quarantined (listed up to a cap, then counted; ``files`` maps an event's source table to
    the user's file, which the rows then name).  Returns (the rows of ``events`` without them,
    how many there were)."""
    if not _register_deaths(con, patients, admissions):
        return events, 0
    n = _list_late(con, f"SELECT e.* FROM {events} e JOIN death_at d USING (subject_id) "
                        "WHERE e.time > d.death + INTERVAL 1 DAY", q, source, files or {})
    alive = (f"(SELECT e.* FROM {events} e LEFT JOIN death_at d USING (subject_id) "
             f"WHERE d.death IS NULL OR e.time <= d.death + INTERVAL 1 DAY)")
    return (alive if n else events), n


def drop_events_after_death(out_dir: Path, patients: pd.DataFrame, admissions: pd.DataFrame, q: Quarantine,
                            source: str = SOURCE, con=None, files: dict[str, Path] | None = None) -> int:
    """``late_events`` on out_dir/events.parquet, rewritten without them."""
    events = Path(out_dir) / "events.parquet"
    con = con or connect(temp_dir=out_dir)
    alive, n = late_events(con, f"read_parquet('{events}')", patients, admissions, q, source, files)
    if n:
        tmp = events.with_name(".events.alive.tmp.parquet")
        con.execute(f"COPY (SELECT * FROM {alive}) TO '{tmp}' (FORMAT parquet)").fetchall()
        tmp.replace(events)
    return n


def ingest_mimic_iv(root: Path, out_dir: Path, q: Quarantine) -> dict:
    """All canonical EHR tables of one MIMIC-IV folder into out_dir."""
    root, out_dir = Path(root), Path(out_dir)
    patients = read_patients(root, q)
    admissions = read_admissions(root, q, patients)
    icustays = read_icustays(root, q)
    write_parquet(patients, out_dir / "patients.parquet", PATIENTS)
    write_parquet(admissions, out_dir / "admissions.parquet", ADMISSIONS)
    tables_absent = []
    if icustays is not None:
        write_parquet(icustays, out_dir / "icustays.parquet", ICUSTAYS)
    else:
        tables_absent.append("icustays")
    write_parquet(read_codes(root), out_dir / "codes.parquet", CODES)
    info = ingest_events(root, out_dir, q)   # events after death dropped there
    info["tables_absent"] = tables_absent + info.pop("event_tables_absent")
    info["version_hint"] = "1.0 (core/)" if (root / "core").exists() else "2.x/3.x (hosp/)"
    return info
