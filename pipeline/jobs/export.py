"""``mmpipe export --run RUN --to meds OUT``: a run's canonical EHR tables as a MEDS dataset.

Writes, validated with the ``meds`` package's schemas before it is renamed into place:
- ``data/<split>/<i>.parquet``: every subject's events in one shard, sorted by time (static
  rows first), ``<split>`` the subject's split in the run (train, tuning, held_out) or
  ``unlabelled`` for subjects outside the cohort; codes as in ``pipeline.sources.meds``,
  plus pointer events ``ECG//RECORD``, ``NOTE//<type>``, ``IMAGE//CXR//<view>`` carrying the
  record's ``file_path``, the ``note_id`` or the ``dicom_id`` (from the run's index stages);
- ``metadata/dataset.json``, ``metadata/codes.parquet`` (description = the code's label),
  ``metadata/subject_splits.parquet``;
- ``task_labels/<task>/labels.parquet``: the cohort as MEDS labels (subject_id,
  prediction_time, boolean_value).
Read back as ``--data OUT``, the canonical tables come out as they went in.
"""
from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts import CODE_VERSION, read_parquet, read_json, write_json
from pipeline.errors import DataError
from pipeline.sources import meds as M

SPLIT_NAMES = {"train": "train", "valid": "tuning", "test": "held_out"}  # cohort split -> MEDS split
OUTSIDE = "unlabelled"
ADMISSION_CORE = {"subject_id", "hadm_id", "admittime", "dischtime", "deathtime", "hospital_expire_flag",
                  "admission_type", "admission_location", "discharge_location"}
PATIENT_CORE = {"subject_id", "gender", "anchor_age", "anchor_year", "dod"}
EVENT_CORE = {"subject_id", "hadm_id", "time", "code", "value", "unit", "source"}
# The data columns every shard has (name, DuckDB type); admissions' and events' own extra columns follow.
COLUMNS = [("subject_id", "BIGINT"), ("time", "TIMESTAMP"), ("code", "VARCHAR"), ("numeric_value", "FLOAT"),
           ("numeric_value_exact", "DOUBLE"), ("unit", "VARCHAR"), ("hadm_id", "BIGINT"), ("icustay_id", "BIGINT"),
           ("source", "VARCHAR"), ("anchor_age", "BIGINT"), ("anchor_year", "BIGINT"), ("dod", "TIMESTAMP"),
           ("hospital_expire_flag", "BIGINT"), ("study_id", "BIGINT"), ("note_id", "VARCHAR"),
           ("dicom_id", "VARCHAR"), ("file_path", "VARCHAR")]
FLOAT32_MAX = 3.4e38


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"the run has no {what}", file=path, hint="export a run folder written by `mmpipe train`")
    return path


def export_meds(run: Path, out: Path, subjects_per_shard: int = 50_000) -> dict:
    """Write RUN's EHR tables, pointers and labels as a MEDS dataset at OUT (replacing an earlier export)."""
    run, out = Path(run), Path(out)
    ehr = run / "stages" / "ingest_ehr"
    _need(ehr / "events.parquet", "EHR events (stages/ingest_ehr)")
    cohort = read_parquet(_need(run / "stages" / "cohort" / "cohort.parquet", "cohort"))
    cfg = read_json(_need(run / "config.json", "config.json"))
    if out.exists() and any(out.iterdir()) and not _is_own_export(out):
        raise DataError("output folder exists and is not a MEDS export of this project", file=out,
                        hint="choose a new folder")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        summary = _write(run, ehr, cohort, cfg, tmp, subjects_per_shard)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    return {**summary, "out": str(out)}


def _write(run: Path, ehr: Path, cohort: pd.DataFrame, cfg: dict, tmp: Path, per_shard: int) -> dict:
    from pipeline.sources.mimic_iv import connect
    (tmp / "data").mkdir(parents=True)
    con = connect(temp_dir=tmp)
    static = _static_rows(ehr, run / "stages")
    names, rows_sql, codemap, extra_events = _rows_sql(con, ehr / "events.parquet", static)
    subjects = pd.Series(sorted(set(static["subject_id"]) | {r[0] for r in con.execute(
        f"SELECT DISTINCT subject_id FROM read_parquet('{ehr / 'events.parquet'}')").fetchall()}), dtype="int64")
    splits = cohort.drop_duplicates("subject_id").set_index("subject_id")["split"].map(SPLIT_NAMES)
    shard_of = _shards(subjects, splits, per_shard)
    con.register("shard_of", shard_of)
    con.execute(f"CREATE TEMP VIEW all_rows AS SELECT r.*, s.shard FROM ({rows_sql}) r JOIN shard_of s USING (subject_id)")
    quoted = ", ".join(f'"{c}"' for c in names)
    for shard in sorted(shard_of["shard"].unique()):
        path = tmp / "data" / f"{shard}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        con.execute(f"COPY (SELECT {quoted} FROM all_rows "
                    f"WHERE shard = '{shard}' ORDER BY subject_id, time NULLS FIRST, ord, code) TO '{path}' "
                    "(FORMAT parquet, ROW_GROUP_SIZE 100000)").fetchall()
    con.close()
    data_codes = sorted(set(codemap["meds_code"]) | set(static["code"]))
    _write_metadata(tmp, ehr, codemap, data_codes, splits, cfg, extra_events)
    labels = pd.DataFrame({"subject_id": cohort["subject_id"].astype("int64"),
                           "prediction_time": cohort["prediction_time"].astype("datetime64[us]"),
                           "boolean_value": cohort["label"].astype(bool)})
    task = cfg.get("task", {}).get("name", "task")
    _write_table(labels, tmp / "task_labels" / task / "labels.parquet", "LabelSchema")
    summary = validate_meds(tmp)
    return {**summary, "rows": summary["data_rows"], "subjects": len(subjects), "labels": len(labels), "task": task}


def _rows_sql(con, events_path: Path, static: pd.DataFrame) -> tuple[list[str], str, pd.DataFrame, list[str]]:
    """(data column names, SQL of every MEDS row with its ``ord``, the code map, events' own extra columns)."""
    event_cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{events_path}')").fetchall()]
    extra_events = [c for c in event_cols if c not in EVENT_CORE]
    extra_tables = [c for c in static.columns if c not in dict(COLUMNS)]  # patients' and admissions' own
    clash = sorted(set(extra_tables) & (M.RESERVED | set(extra_events)))
    if clash:
        raise DataError(f"patients or admissions column(s) {clash} clash with MEDS data columns",
                        file=events_path.parent, field=clash[0])
    con.register("static_rows", static)
    types = dict(COLUMNS)
    types.update({r[0]: _us(r[1]) for r in con.execute("DESCRIBE SELECT * FROM static_rows").fetchall()
                  if r[0] in extra_tables})
    types.update({r[0]: _us(r[1]) for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{events_path}')")
                  .fetchall() if r[0] in extra_events})
    names = [c for c, _ in COLUMNS] + extra_events + extra_tables
    codemap = _codemap(con, events_path)
    con.register("codemap", codemap)
    ev = {"subject_id": "e.subject_id", "time": "e.time", "code": "m.meds_code",
          "numeric_value": f"CASE WHEN abs(e.value) < {FLOAT32_MAX} THEN e.value END",
          "numeric_value_exact": f"CASE WHEN abs(e.value) >= {FLOAT32_MAX} OR e.value::FLOAT::VARCHAR::DOUBLE <> e.value "
                                 "THEN e.value END",
          "unit": "e.unit", "hadm_id": "e.hadm_id", "source": "e.source", **{c: f'e."{c}"' for c in extra_events}}
    cast = lambda src, c: f"CAST({src.get(c, 'NULL')} AS {types[c]}) AS \"{c}\""  # noqa: E731
    # ord: the events file's row order, kept among rows of one time (a tie's "last" value depends on it)
    events_sql = (f"SELECT {', '.join(cast(ev, c) for c in names)}, e.file_row_number AS ord "
                  f"FROM read_parquet('{events_path}', file_row_number=true) e "
                  "JOIN codemap m ON e.code = m.code AND e.unit IS NOT DISTINCT FROM m.unit")
    own = {c: '"' + c + '"' for c in static.columns}
    static_sql = f"SELECT {', '.join(cast(own, c) for c in names)}, -1 FROM static_rows"
    return names, f"{events_sql} UNION ALL {static_sql}", codemap, extra_events


def _us(duck_type: str) -> str:
    return "TIMESTAMP" if duck_type.startswith("TIMESTAMP") else duck_type


def _is_own_export(folder: Path) -> bool:
    meta = folder / "metadata" / "dataset.json"
    return meta.exists() and read_json(meta).get("etl_name") == M.ETL_NAME


def _codemap(con, events_path: Path) -> pd.DataFrame:
    """Each (canonical code, unit) -> its MEDS code; a code that would not read back the same is an error."""
    pairs = con.execute(f"SELECT DISTINCT code, unit FROM read_parquet('{events_path}')").df()
    pairs["meds_code"] = [M.meds_code(c, u if isinstance(u, str) else None) for c, u in zip(pairs["code"], pairs["unit"])]
    for code, meds in zip(pairs["code"], pairs["meds_code"]):
        if M.canonical_code(meds)[0] != code:
            raise DataError(f"event code {code!r} would be written as {meds!r} and read back as "
                            f"{M.canonical_code(meds)[0]!r}", file=events_path, field="code",
                            hint="canonical codes are 'family:rest' with a lower-case family")
    return pairs


def _shards(subjects: pd.Series, splits: pd.Series, per_shard: int) -> pd.DataFrame:
    split = subjects.map(splits).fillna(OUTSIDE).to_numpy()
    frame = pd.DataFrame({"subject_id": subjects.to_numpy(), "split": split})
    frame["n"] = frame.groupby("split").cumcount() // per_shard
    return pd.DataFrame({"subject_id": frame["subject_id"], "shard": frame["split"] + "/" + frame["n"].astype(str)})


def _static_rows(ehr: Path, stages: Path) -> pd.DataFrame:
    """Patients, admissions, ICU stays and modality pointers as MEDS rows (pandas; one row per item)."""
    p = read_parquet(ehr / "patients.parquet")
    a = read_parquet(ehr / "admissions.parquet")
    icu = read_parquet(ehr / "icustays.parquet") if (ehr / "icustays.parquet").exists() else None
    unk = lambda s: s.astype(object).where(s.notna(), M.UNKNOWN).astype(str) if s is not None else M.UNKNOWN  # noqa: E731
    rows = []
    g = p[p["gender"].notna()]
    rows.append(pd.DataFrame({"subject_id": g["subject_id"], "time": pd.NaT, "code": "GENDER//" + g["gender"].astype(str)}))
    b = p[p["anchor_age"].notna() & p["anchor_year"].notna()]
    born = pd.to_datetime((b["anchor_year"] - b["anchor_age"]).astype(int).astype(str) + "-01-01")
    rows.append(pd.DataFrame({"subject_id": b["subject_id"], "time": born.to_numpy(), "code": "MEDS_BIRTH",
                              "anchor_age": b["anchor_age"], "anchor_year": b["anchor_year"],
                              **{c: b[c] for c in b.columns if c not in PATIENT_CORE}}))
    rows.append(_deaths(p, a))
    extra = [c for c in a.columns if c not in ADMISSION_CORE]
    rows.append(pd.DataFrame({"subject_id": a["subject_id"], "time": a["admittime"], "hadm_id": a["hadm_id"],
                              "code": "HOSPITAL_ADMISSION//" + unk(a.get("admission_type")) + "//"
                              + unk(a.get("admission_location")), **{c: a[c] for c in extra}}))
    d = a[a["dischtime"].notna()]
    rows.append(pd.DataFrame({"subject_id": d["subject_id"], "time": d["dischtime"], "hadm_id": d["hadm_id"],
                              "code": "HOSPITAL_DISCHARGE//" + unk(d.get("discharge_location")),
                              "hospital_expire_flag": d["hospital_expire_flag"]}))
    if icu is not None:
        for col, code, unit in (("intime", "ICU_ADMISSION//", "first_careunit"),
                                ("outtime", "ICU_DISCHARGE//", "last_careunit")):
            s = icu[icu[col].notna()]
            rows.append(pd.DataFrame({"subject_id": s["subject_id"], "time": s[col], "hadm_id": s["hadm_id"],
                                      "icustay_id": s["stay_id"], "code": code + unk(s.get(unit))}))
    rows += _pointer_rows(stages, unk)
    static = pd.concat([r for r in rows if len(r)], ignore_index=True)
    static["time"] = pd.to_datetime(static["time"]).astype("datetime64[ns]")
    for c, _ in COLUMNS:
        if c not in static.columns:
            static[c] = None
    return static


def _deaths(p: pd.DataFrame, a: pd.DataFrame) -> pd.DataFrame:
    """One MEDS_DEATH per admission deathtime (with its hadm_id); the patient's dod rides on the
    earliest of them, or is its own MEDS_DEATH when no admission has a deathtime."""
    dt = a[a["deathtime"].notna()].sort_values("deathtime")
    rows = pd.DataFrame({"subject_id": dt["subject_id"], "time": dt["deathtime"], "hadm_id": dt["hadm_id"],
                         "code": "MEDS_DEATH"})
    dod = p.set_index("subject_id")["dod"] if "dod" in p.columns else pd.Series(dtype="datetime64[ns]")
    first = ~rows["subject_id"].duplicated()
    rows["dod"] = rows["subject_id"].map(dod).where(first)
    alone = dod[dod.notna() & ~dod.index.isin(rows["subject_id"])]
    return pd.concat([rows, pd.DataFrame({"subject_id": alone.index, "time": alone.to_numpy(), "code": "MEDS_DEATH",
                                          "dod": alone.to_numpy()})], ignore_index=True)


def _pointer_rows(stages: Path, unk) -> list[pd.DataFrame]:
    rows = []
    ecg = stages / "index_ecg" / "ecg_index.parquet"
    if ecg.exists():
        e = read_parquet(ecg, columns=["subject_id", "study_id", "ecg_time", "path"])
        rows.append(pd.DataFrame({"subject_id": e["subject_id"], "time": e["ecg_time"], "code": "ECG//RECORD",
                                  "study_id": e["study_id"], "file_path": e["path"]}))
    notes = stages / "index_notes" / "notes.parquet"
    if notes.exists():
        n = read_parquet(notes, columns=["note_id", "subject_id", "hadm_id", "note_type", "charttime"])
        rows.append(pd.DataFrame({"subject_id": n["subject_id"], "time": n["charttime"], "note_id": n["note_id"],
                                  "hadm_id": n["hadm_id"], "code": "NOTE//" + unk(n["note_type"])}))
    images = stages / "index_imaging" / "imaging_index.parquet"
    if images.exists():
        i = read_parquet(images)
        view = i["view_position"] if "view_position" in i.columns else None
        rows.append(pd.DataFrame({"subject_id": i["subject_id"], "time": i["image_time"], "study_id": i["study_id"],
                                  "dicom_id": i["dicom_id"], "file_path": i["path"],
                                  "code": "IMAGE//CXR//" + unk(view)}))
    return rows


_STRUCTURAL_DESCRIPTIONS = {
    "MEDS_BIRTH": "Birth (1 January of the year of birth)", "MEDS_DEATH": "Death",
    "GENDER": "Gender", "HOSPITAL_ADMISSION": "Hospital admission (type // location)",
    "HOSPITAL_DISCHARGE": "Hospital discharge (location)", "ICU_ADMISSION": "ICU admission (care unit)",
    "ICU_DISCHARGE": "ICU discharge (care unit)", "ECG": "12-lead ECG record (file_path)",
    "NOTE": "Clinical note (note_id)", "IMAGE": "Chest X-ray image (dicom_id, file_path)"}


def _write_metadata(tmp: Path, ehr: Path, codemap: pd.DataFrame, data_codes: list[str], splits: pd.Series,
                    cfg: dict, extra_events: list[str]) -> None:
    labels = read_parquet(ehr / "codes.parquet") if (ehr / "codes.parquet").exists() else \
        pd.DataFrame({"code": [], "label": []})
    label = codemap.merge(labels, on="code", how="left").drop_duplicates("meds_code").set_index("meds_code")["label"]
    desc = [label.get(c) if c in label.index else _STRUCTURAL_DESCRIPTIONS.get(c.split(M.SEP)[0]) for c in data_codes]
    codes = pd.DataFrame({"code": data_codes, "description": [d if isinstance(d, str) else None for d in desc],
                          "parent_codes": [None] * len(data_codes)}).sort_values("code")
    _write_table(codes, tmp / "metadata" / "codes.parquet", "CodeMetadataSchema")
    s = splits.dropna()
    _write_table(pd.DataFrame({"subject_id": s.index.astype("int64"), "split": s.astype(str).to_numpy()}),
                 tmp / "metadata" / "subject_splits.parquet", "SubjectSplitSchema")
    import meds
    write_json({"dataset_name": f"mmpipe export ({cfg.get('task', {}).get('name', '')} run)",
                "dataset_version": CODE_VERSION, "etl_name": M.ETL_NAME, "etl_version": CODE_VERSION,
                "meds_version": meds.__version__, "created_at": datetime.now(timezone.utc).isoformat(),
                "raw_source_id_columns": ["hadm_id", "icustay_id", "study_id", "note_id", "dicom_id"],
                "code_modifier_columns": ["unit"], "additional_value_modality_columns": ["file_path"],
                "other_extension_columns": ["numeric_value_exact", "source", "anchor_age", "anchor_year", "dod",
                                            "hospital_expire_flag", *extra_events],
                "mmpipe_event_columns": extra_events}, tmp / "metadata" / "dataset.json")


def _write_table(df: pd.DataFrame, path: Path, schema_name: str) -> None:
    """Write ``df`` aligned to (and so checked against) one of the meds package's schemas."""
    import meds
    import pyarrow as pa
    import pyarrow.parquet as pq
    schema = getattr(meds, schema_name)
    table = schema.align(pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False,
                                              schema=_arrow_schema(df, schema)))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _arrow_schema(df: pd.DataFrame, schema):
    import pyarrow as pa
    want = dict(zip(schema.schema().names, schema.schema().types))
    return pa.schema([(c, want[c]) if c in want else (c, pa.Table.from_pandas(df[[c]]).schema.field(c).type)
                      for c in df.columns])


def validate_meds(root: Path) -> dict:
    """Check a MEDS dataset with the meds package's schemas and MEDS's ordering rules: each
    subject in one shard, its rows together and in time order (untimed rows first)."""
    import meds
    import pyarrow as pa
    import pyarrow.parquet as pq
    from flexible_schema.exceptions import SchemaValidationError, TableValidationError
    root = Path(root)

    def check(schema, obj, file):
        try:
            schema.validate(obj)
        except (SchemaValidationError, TableValidationError) as e:
            raise DataError(f"not valid MEDS ({schema.__name__}): {e}", file=file) from None
    check(meds.DatasetMetadataSchema, read_json(root / meds.dataset_metadata_filepath), root / meds.dataset_metadata_filepath)
    for rel in (meds.code_metadata_filepath, meds.subject_splits_filepath):
        if (root / rel).exists():
            schema = meds.CodeMetadataSchema if rel == meds.code_metadata_filepath else meds.SubjectSplitSchema
            check(schema, pq.read_table(root / rel), root / rel)
    for f in sorted((root / "task_labels").rglob("*.parquet")) if (root / "task_labels").exists() else []:
        check(meds.LabelSchema, pq.read_table(f), f)
    seen: set[int] = set()
    rows = 0
    for f in M.data_files(root):
        check(meds.DataSchema, pq.read_schema(f), f)
        last = (None, None)  # (subject, time) of the previous row, across batches
        for batch in pq.ParquetFile(f).iter_batches(batch_size=1_000_000, columns=["subject_id", "time", "code"]):
            check(meds.DataSchema, pa.Table.from_batches([batch]), f)
            last = _check_order(batch.to_pandas(), f, seen, last, rows)
            rows += batch.num_rows
    return {"valid": True, "data_rows": rows, "subjects": len(seen)}


def _check_order(df: pd.DataFrame, file: Path, seen: set[int], last: tuple, offset: int) -> tuple:
    """Each subject's rows together and in time order (untimed first); returns the last (subject, time)."""
    sid = df["subject_id"].to_numpy()
    t = df["time"].astype("int64").where(df["time"].notna(), np.iinfo("int64").min).to_numpy()
    prev_sid = np.r_[last[0] if last[0] is not None else sid[0] - 1, sid[:-1]]
    prev_t = np.r_[last[1] if last[1] is not None else t[0], t[:-1]]
    new = sid != prev_sid
    starts = sid[new].tolist()
    if len(set(starts)) != len(starts) or seen & set(starts):
        raise DataError("a subject's rows are split (across shards or within one)", file=file, field="subject_id")
    seen.update(starts)
    back = np.flatnonzero(~new & (t < prev_t))
    if len(back):
        raise DataError("rows of a subject are not in time order", file=file, row=offset + int(back[0]), field="time")
    return int(sid[-1]), int(t[-1])
