"""A MEDS dataset (the ``meds`` package's schema, v0.4) into the canonical tables.

A MEDS root holds ``metadata/dataset.json``, ``metadata/codes.parquet`` and
``data/**/*.parquet`` (subject_id, time, code, numeric_value, extra columns).
Codes follow the MIMIC-IV MEDS ETL, so that a dataset made by the community ETL
is read too, and ``pipeline.jobs.export`` writes the same codes:

- ``MEDS_BIRTH`` (year of birth), ``MEDS_DEATH``, ``GENDER//F`` (no time): patients;
- ``HOSPITAL_ADMISSION//<type>//<location>``, ``HOSPITAL_DISCHARGE//<location>``
  (column ``hadm_id``): admissions; ``ICU_ADMISSION//<unit>``, ``ICU_DISCHARGE//<unit>``
  (``hadm_id``, ``icustay_id``): ICU stays;
- ``LAB//<itemid>//<unit>`` and ``LAB//RESULT//<itemid>//<unit>``: event ``lab:<itemid>``
  (``chart:<itemid>`` for MIMIC-IV chart item ids, 220000 and up), ``UNK`` = no unit;
- ``FAMILY//rest``: event ``family:rest`` (so ``omr:Weight (Lbs)`` <-> ``OMR//Weight (Lbs)``);
  a code without ``//`` is an event code as it is;
- ``ECG//...``, ``NOTE//...``, ``IMAGE//...`` (an export's pointers to records, notes and
  images) are not EHR events: those modalities are read from their own sources.

The value is ``numeric_value`` read back through its shortest decimal (so a float32
holding 1.1 gives the float64 1.1), or ``numeric_value_exact`` where an export had to
keep a float64 that float32 cannot carry, or ``text_value`` when that is a number.
Extra columns ``unit``, ``source``, ``known_time``, ``anchor_age``/``anchor_year``,
``dod``, ``hospital_expire_flag`` (written by the export) are used when present; other
extra columns of admission rows (``race``, ``insurance``, ...) become admissions columns.
A dataset exported by this project is already cleaned by its own ingest; any other goes
through the same unit harmonisation and events-after-death check as a CSV source.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from data_schemas.modalities import COHORT
from data_schemas.tables import ADMISSIONS, CODES, ICUSTAYS, PATIENTS
from pipeline.artifacts import read_parquet, read_json, write_parquet
from pipeline.errors import DataError, Quarantine

SOURCE = "meds"
ETL_NAME = "mmpipe"
SEP = "//"
UNKNOWN = "UNK"
PATIENT_CODES = ("MEDS_BIRTH", "MEDS_DEATH", "GENDER")
STAY_CODES = ("HOSPITAL_ADMISSION", "HOSPITAL_DISCHARGE", "ICU_ADMISSION", "ICU_DISCHARGE")
MODALITY_FAMILIES = ("ECG", "NOTE", "IMAGE")
CHART_ITEM_MIN = 220000  # MIMIC-IV d_items ids start here; d_labitems ids are far below
SPLITS = {"train": "train", "tuning": "valid", "held_out": "test"}  # MEDS split -> cohort split
# Extra data columns with a meaning here (never taken as admissions columns).
RESERVED = {"subject_id", "time", "code", "numeric_value", "text_value", "numeric_value_exact", "hadm_id",
            "icustay_id", "unit", "source", "known_time", "anchor_age", "anchor_year", "dod",
            "hospital_expire_flag", "study_id", "note_id", "dicom_id", "file_path", "filename", "file_row_number"}
_FAMILY = re.compile(r"[A-Z][A-Z0-9_]*")


# ---------------------------------------------------------------- codes, both ways

def meds_code(code: str, unit: str | None = None) -> str:
    """Canonical event code (+ unit) -> MEDS code."""
    family, sep, rest = code.partition(":")
    if not sep:
        return code
    if family == "lab" or (family == "chart" and rest.isdigit() and int(rest) >= CHART_ITEM_MIN):
        return f"LAB{SEP}{rest}{SEP}{unit or UNKNOWN}"
    if family == "chart":
        return f"CHART{SEP}{rest}{SEP}{unit or UNKNOWN}"
    return f"{family.upper()}{SEP}{rest}"


def canonical_code(code: str) -> tuple[str | None, str | None]:
    """MEDS code -> (canonical event code, unit named in the code); (None, None) when the
    code is not an EHR event (patients, stays, modality pointers)."""
    parts = code.split(SEP)
    head = parts[0]
    if head in PATIENT_CODES + STAY_CODES + MODALITY_FAMILIES:
        return None, None
    if head in ("LAB", "CHART") and len(parts) >= 2 and parts[1] != "SPECIMEN_COLLECTED":
        if parts[1] == "RESULT" and len(parts) >= 3:
            item, unit = parts[2], SEP.join(parts[3:])
        else:
            item, unit = parts[1], SEP.join(parts[2:])
        chart = head == "CHART" or (item.isdigit() and int(item) >= CHART_ITEM_MIN)
        return f"{'chart' if chart else 'lab'}:{item}", (None if unit in ("", UNKNOWN) else unit)
    if len(parts) >= 2 and _FAMILY.fullmatch(head):
        return f"{head.lower()}:{SEP.join(parts[1:])}", None
    return code, None


def _part(code: str, i: int, rest: bool = True) -> str | None:
    """Field ``i`` of a MEDS code (``rest``: with everything after it), None for empty or UNK."""
    parts = code.split(SEP)
    value = SEP.join(parts[i:]) if rest else (parts[i] if i < len(parts) else "")
    return None if value in ("", UNKNOWN) else value


# ---------------------------------------------------------------- finding and checking

def is_meds(folder: Path) -> bool:
    folder = Path(folder)
    return (folder / "metadata" / "dataset.json").is_file() and (folder / "data").is_dir()


def data_files(root: Path) -> list[Path]:
    files = sorted(p for p in (Path(root) / "data").rglob("*.parquet") if not p.name.startswith("."))
    if not files:
        raise DataError("a MEDS dataset without data shards", file=Path(root) / "data",
                        hint="MEDS data lives in data/**/*.parquet")
    return files


def check_data_schema(path: Path) -> list[str]:
    """The column names of one data shard, after checking the MEDS core columns' types."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    schema = pq.read_schema(path)
    kinds = {"subject_id": pa.types.is_integer, "time": pa.types.is_timestamp,
             "code": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t),
             "numeric_value": lambda t: pa.types.is_floating(t) or pa.types.is_integer(t)}
    for col, ok in kinds.items():
        if col not in schema.names:
            if col == "numeric_value":
                continue
            raise DataError(f"MEDS data shard without column '{col}'; found {schema.names}", file=path, field=col)
        if not ok(schema.field(col).type):
            raise DataError(f"MEDS column '{col}' has type {schema.field(col).type}", file=path, field=col,
                            hint="subject_id int64, time timestamp[us], code string, numeric_value float32")
    return schema.names


def _scan(files: list[Path]) -> str:
    names = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
    return f"read_parquet([{names}], union_by_name=true, filename=true, file_row_number=true)"


# ---------------------------------------------------------------- the adapter

def ingest_meds(root: Path, out_dir: Path, q: Quarantine) -> dict:
    """Canonical patients, admissions, icustays, events and codes from one MEDS root."""
    from pipeline.sources.mimic_iv import connect, drop_events_after_death
    from pipeline.sources.units import harmonise_units
    root, out_dir = Path(root), Path(out_dir)
    meta = read_json(root / "metadata" / "dataset.json")
    files = data_files(root)
    cols = set().union(*(check_data_schema(f) for f in files))
    con = connect(temp_dir=out_dir)
    scan = _scan(files)
    codes = [r[0] for r in con.execute(f"SELECT DISTINCT code FROM {scan}").fetchall()]
    decoded = pd.DataFrame([(c, *canonical_code(c)) for c in codes], columns=["meds_code", "code", "code_unit"])
    struct = con.execute(f"SELECT * FROM {scan} WHERE split_part(code, '{SEP}', 1) IN "
                         f"({', '.join(repr(c) for c in PATIENT_CODES + STAY_CODES)})").df()
    patients = _patients(struct)
    admissions = _admissions(struct, patients, root, q)
    icustays = _icustays(struct, root, q)
    write_parquet(patients, out_dir / "patients.parquet", PATIENTS)
    write_parquet(admissions, out_dir / "admissions.parquet", ADMISSIONS)
    if icustays is not None:
        write_parquet(icustays, out_dir / "icustays.parquet", ICUSTAYS)
    write_parquet(_codes(root, decoded), out_dir / "codes.parquet", CODES)
    extra = [c for c in dict.fromkeys(["known_time", *meta.get("mmpipe_event_columns", [])]) if c in cols]
    info = _events(con, scan, cols, decoded, out_dir / "events.parquet", extra)
    own = meta.get("etl_name") == ETL_NAME
    if not own:
        info.update(harmonise_units(out_dir / "events.parquet", q, SOURCE, con))
        info["events_after_death"] = drop_events_after_death(out_dir, patients, admissions, q, SOURCE, con)
    con.close()
    return {**info, "meds_dataset": {k: meta.get(k) for k in ("dataset_name", "dataset_version", "etl_name",
                                                               "etl_version", "meds_version")},
            "cleaning": "done by the exporting run" if own else "unit harmonisation and events after death",
            "tables_absent": [] if icustays is not None else ["icustays"], "version_hint": "MEDS"}


def _events(con, scan: str, cols: set[str], decoded: pd.DataFrame, out: Path, extra: list[str]) -> dict:
    """events.parquet from the event rows; ``extra``: data columns that are events columns too."""
    con.register("codemap", decoded[decoded["code"].notna()])
    col = lambda name, sql, default: sql if name in cols else default  # noqa: E731
    value = "COALESCE(" + ", ".join(
        [x for x in (col("numeric_value_exact", "d.numeric_value_exact::DOUBLE", None),
                     col("numeric_value", "TRY_CAST(d.numeric_value::VARCHAR AS DOUBLE)", None),
                     col("text_value", "TRY_CAST(d.text_value AS DOUBLE)", None)) if x] + ["NULL::DOUBLE"]) + ")"
    family = "split_part(m.code, ':', 1)"
    select = (f"SELECT d.subject_id::BIGINT subject_id, {col('hadm_id', 'd.hadm_id::DOUBLE', 'NULL::DOUBLE')} hadm_id, "
              f"d.time::TIMESTAMP_NS time, m.code, {value} value, "
              f"{col('unit', 'd.unit::VARCHAR', 'm.code_unit')} unit, "
              f"{col('source', 'd.source::VARCHAR', 'NULL::VARCHAR')} AS src, {family} family"
              + "".join(f', d."{c}"::TIMESTAMP_NS "{c}"'
                        if _is_time(con, scan, c) else f', d."{c}"' for c in extra)
              + f", d.filename, d.file_row_number FROM {scan} d JOIN codemap m ON d.code = m.meds_code "
              "WHERE d.time IS NOT NULL")
    # lab and chart rows without a number are dropped, as the CSV adapter does; other codes keep theirs
    final = (f"SELECT subject_id, hadm_id, time, code, value, unit, COALESCE(src, CASE family "
             f"WHEN 'lab' THEN 'labevents' WHEN 'chart' THEN 'chartevents' ELSE '{SOURCE}' END) source"
             + "".join(f', "{c}"' for c in extra)
             + f" FROM ({select}) WHERE NOT (family IN ('lab', 'chart') AND (value IS NULL OR NOT isfinite(value))) "
             "ORDER BY filename, file_row_number")  # the dataset's order: ties in time keep theirs
    tmp = out.with_name(".events.meds.tmp.parquet")
    con.execute(f"COPY ({final}) TO '{tmp}' (FORMAT parquet, ROW_GROUP_SIZE 500000)").fetchall()
    tmp.replace(out)
    n = con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchall()[0][0]
    dropped = con.execute(f"SELECT count(*) FROM ({select}) WHERE family IN ('lab', 'chart') "
                          "AND (value IS NULL OR NOT isfinite(value))").fetchall()[0][0]
    untimed = con.execute(f"SELECT count(*) FROM {scan} d JOIN codemap m ON d.code = m.meds_code "
                          "WHERE d.time IS NULL").fetchall()[0][0]
    con.unregister("codemap")
    return {"event_rows": int(n), "lab_rows_without_value": int(dropped), "untimed_rows_skipped": int(untimed),
            "event_tables_found": ["meds"]}


def _is_time(con, scan: str, col: str) -> bool:
    return con.execute(f'DESCRIBE SELECT "{col}" FROM {scan}').fetchall()[0][1].startswith("TIMESTAMP")


def _rows(struct: pd.DataFrame, head: str) -> pd.DataFrame:
    return struct[struct["code"].str.split(SEP).str[0] == head]


def _ext(rows: pd.DataFrame, name: str) -> pd.Series:
    return rows[name] if name in rows.columns else pd.Series(np.nan, index=rows.index)


def _patients(struct: pd.DataFrame) -> pd.DataFrame:
    birth = _rows(struct, "MEDS_BIRTH").sort_values("time").drop_duplicates("subject_id")
    gender = _rows(struct, "GENDER").drop_duplicates("subject_id")
    death = _rows(struct, "MEDS_DEATH")
    adm = _rows(struct, "HOSPITAL_ADMISSION")
    ids = sorted(set(birth["subject_id"]) | set(gender["subject_id"]))
    p = pd.DataFrame({"subject_id": pd.Series(ids, dtype="int64")})
    p["gender"] = p["subject_id"].map(gender.set_index("subject_id")["code"].map(lambda c: _part(c, 1))).astype(object)
    b = birth.set_index("subject_id")
    born = b["time"].dt.year
    first_adm = adm.groupby("subject_id")["time"].min().dt.year
    anchor_year = _ext(b, "anchor_year").fillna(first_adm.reindex(b.index)).fillna(born)
    anchor_age = _ext(b, "anchor_age").fillna(anchor_year - born)
    p["anchor_age"] = p["subject_id"].map(anchor_age).astype("Int64")
    p["anchor_year"] = p["subject_id"].map(anchor_year).astype("Int64")
    if not p["anchor_age"].isna().any():
        p[["anchor_age", "anchor_year"]] = p[["anchor_age", "anchor_year"]].astype("int64")
    # dod: the export's own column, else the earliest death event (the community ETL writes one)
    dod = pd.to_datetime(death["dod"] if "dod" in death.columns else death["time"])
    p["dod"] = p["subject_id"].map(pd.Series(dod.to_numpy(), index=death["subject_id"].to_numpy())
                                   .groupby(level=0).min()).astype("datetime64[ns]")
    _add_extras(p, b.reindex(p["subject_id"].to_numpy()).reset_index())
    return p


def _add_extras(out: pd.DataFrame, rows: pd.DataFrame) -> None:
    """Extra data columns with a value on ``rows`` (one per output row) become columns of ``out``."""
    for c in sorted(set(rows.columns) - RESERVED):
        if rows[c].notna().any():
            col = rows[c]
            if pd.api.types.is_datetime64_any_dtype(col):
                col = col.astype("datetime64[ns]")
            elif pd.api.types.is_string_dtype(col):
                col = col.astype(object)
            out[c] = col.to_numpy()


def _by_hadm(rows: pd.DataFrame, root: Path, q: Quarantine, what: str) -> pd.DataFrame:
    """Rows with a hadm_id (the others quarantined), one per hadm_id."""
    hadm = _ext(rows, "hadm_id")
    for sid in rows.loc[hadm.isna(), "subject_id"]:
        q.add(SOURCE, root / "data", f"subject_id={sid}", "hadm_id", f"{what} without hadm_id")
    rows = rows[hadm.notna()].assign(hadm_id=hadm[hadm.notna()].astype("int64"))
    return rows.sort_values("time").drop_duplicates("hadm_id")


def _admissions(struct: pd.DataFrame, patients: pd.DataFrame, root: Path, q: Quarantine) -> pd.DataFrame:
    adm = _by_hadm(_rows(struct, "HOSPITAL_ADMISSION"), root, q, "HOSPITAL_ADMISSION")
    dis = _by_hadm(_rows(struct, "HOSPITAL_DISCHARGE"), root, q, "HOSPITAL_DISCHARGE").set_index("hadm_id")
    death = _rows(struct, "MEDS_DEATH")
    death = death[_ext(death, "hadm_id").notna()] if "hadm_id" in death.columns else death.iloc[:0]
    deathtime = death.assign(hadm_id=_ext(death, "hadm_id").astype("int64")).groupby("hadm_id")["time"].min()
    out = pd.DataFrame({"subject_id": adm["subject_id"].astype("int64").to_numpy(),
                        "hadm_id": adm["hadm_id"].to_numpy(), "admittime": adm["time"].to_numpy()})
    out["dischtime"] = out["hadm_id"].map(dis["time"])
    out["deathtime"] = out["hadm_id"].map(deathtime)
    for c in ("admittime", "dischtime", "deathtime"):
        out[c] = pd.to_datetime(out[c]).astype("datetime64[ns]")
    location = dis["code"].map(lambda c: _part(c, 1))
    flag = _ext(dis, "hospital_expire_flag").where(_ext(dis, "hospital_expire_flag").notna(),
                                                   (location == "DIED").astype(float))
    out["hospital_expire_flag"] = out["hadm_id"].map(flag).fillna(out["deathtime"].notna().astype(float)).astype("int64")
    named = {"admission_type": adm["code"].map(lambda c: _part(c, 1, rest=False)).to_numpy(),
             "admission_location": adm["code"].map(lambda c: _part(c, 2)).to_numpy(),
             "discharge_location": out["hadm_id"].map(location).to_numpy()}
    for c, v in named.items():
        if pd.notna(v).any():
            out[c] = pd.Series(v, dtype=object).where(pd.notna(v), None)
    _add_extras(out, adm)
    before = out["dischtime"].notna() & (out["dischtime"] < out["admittime"])
    for h in out.loc[before, "hadm_id"]:
        q.add(SOURCE, root / "data", f"hadm_id={h}", "HOSPITAL_DISCHARGE", "dischtime before admittime")
    orphan = ~out["subject_id"].isin(patients["subject_id"])
    for h in out.loc[orphan, "hadm_id"]:
        q.add(SOURCE, root / "data", f"hadm_id={h}", "subject_id", "subject without MEDS_BIRTH or GENDER")
    return out[~before & ~orphan].sort_values("hadm_id").reset_index(drop=True)


def _icustays(struct: pd.DataFrame, root: Path, q: Quarantine) -> pd.DataFrame | None:
    inn, outs = _rows(struct, "ICU_ADMISSION"), _rows(struct, "ICU_DISCHARGE")
    if inn.empty:
        return None
    stay = _ext(inn, "icustay_id")
    for sid in inn.loc[stay.isna(), "subject_id"]:
        q.add(SOURCE, root / "data", f"subject_id={sid}", "icustay_id", "ICU_ADMISSION without icustay_id")
    inn = inn[stay.notna()].assign(stay_id=stay[stay.notna()].astype("int64")).sort_values("time")
    inn = inn.drop_duplicates("stay_id")
    outs = outs[_ext(outs, "icustay_id").notna()]
    outtime = outs.assign(stay_id=_ext(outs, "icustay_id").astype("int64")).groupby("stay_id")["time"].min()
    out = pd.DataFrame({"subject_id": inn["subject_id"].astype("int64").to_numpy(),
                        "hadm_id": pd.array(_ext(inn, "hadm_id").to_numpy(), dtype="Int64"),
                        "stay_id": inn["stay_id"].to_numpy(),
                        "intime": pd.to_datetime(inn["time"]).astype("datetime64[ns]").to_numpy()})
    out["outtime"] = pd.to_datetime(out["stay_id"].map(outtime)).astype("datetime64[ns]")
    for c, rows, key in (("first_careunit", inn.set_index("stay_id"), "stay_id"),
                         ("last_careunit", outs.assign(stay_id=_ext(outs, "icustay_id").astype("int64"))
                          .drop_duplicates("stay_id").set_index("stay_id"), "stay_id")):
        unit = out[key].map(rows["code"].map(lambda c: _part(c, 1)))
        if unit.notna().any():
            out[c] = unit.astype(object)
    return out.sort_values("stay_id").reset_index(drop=True)


def _codes(root: Path, decoded: pd.DataFrame) -> pd.DataFrame:
    """code -> label from metadata/codes.parquet (the first description of each canonical code)."""
    path = root / "metadata" / "codes.parquet"
    desc = read_parquet(path, columns=["code", "description"]) if path.exists() else \
        pd.DataFrame({"code": [], "description": []})
    m = decoded.dropna(subset=["code"]).merge(desc, left_on="meds_code", right_on="code", how="left",
                                                suffixes=("", "_meds"))
    m = m.sort_values("description", na_position="last").drop_duplicates("code")
    return pd.DataFrame({"code": m["code"].astype(object), "label": m["description"].astype(object)}) \
        .sort_values("code").reset_index(drop=True)


# ---------------------------------------------------------------- labels -> cohort

def read_labels(path: Path) -> pd.DataFrame:
    """A MEDS label file, or every *.parquet under a label folder."""
    path = Path(path)
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files or not files[0].exists():
        raise DataError("no MEDS label file found", file=path, field="task.labels",
                        hint="name a parquet file (subject_id, prediction_time, boolean_value) or a folder of them")
    frames = []
    for f in files:
        df = read_parquet(f)
        missing = [c for c in ("subject_id", "prediction_time", "boolean_value") if c not in df.columns]
        if missing:
            raise DataError(f"MEDS label file without {missing}; found {list(df.columns)}", file=f, field=missing[0],
                            hint="binary tasks need boolean_value")
        frames.append(df.assign(_file=str(f), _row=np.arange(len(df))))
    return pd.concat(frames, ignore_index=True)


def cohort_from_labels(labels_path: Path, patients: pd.DataFrame, admissions: pd.DataFrame, task,
                       meds_root: Path | None, q: Quarantine) -> tuple[pd.DataFrame, dict]:
    """One cohort row per labelled admission: each label (subject_id, prediction_time) goes to the
    subject's admission in progress at that time (the latest admitted, when two overlap); a label
    that falls in no admission, or a second one in the same admission, is quarantined.  Splits come
    from the MEDS dataset's metadata/subject_splits.parquet when it has one, else the task's rule."""
    from pipeline.stages.cohort import _age, assign_splits
    labels = read_labels(labels_path)
    labels["prediction_time"] = pd.to_datetime(labels["prediction_time"]).astype("datetime64[ns]")
    adm = admissions.merge(patients[["subject_id", "gender", "anchor_age", "anchor_year"]], on="subject_id")
    adm["age"] = _age(adm, patients)
    m = labels.merge(adm, on="subject_id", how="left")
    inside = (m["admittime"] <= m["prediction_time"]) & (m["dischtime"].isna() | (m["dischtime"] >= m["prediction_time"]))
    m = m[inside].sort_values(["_file", "_row", "admittime"]).drop_duplicates(["_file", "_row"], keep="last")
    placed = labels.set_index(["_file", "_row"]).index.isin(m.set_index(["_file", "_row"]).index)
    for f, r in labels.loc[~placed, ["_file", "_row"]].itertuples(index=False):
        q.add(SOURCE, f, r, "prediction_time", "no admission of the subject in progress at the prediction time")
    m = m.sort_values(["hadm_id", "prediction_time"])
    dup = m.duplicated("hadm_id")
    for f, r in m.loc[dup, ["_file", "_row"]].itertuples(index=False):
        q.add(SOURCE, f, r, "prediction_time", "a second label for the same admission (the first is kept)")
    m = m[~dup]
    if m["boolean_value"].isna().any():
        f, r = m.loc[m["boolean_value"].isna(), ["_file", "_row"]].iloc[0]
        raise DataError("missing boolean_value", file=f, row=r, field="boolean_value")
    df = m.assign(label=m["boolean_value"].astype(bool).astype("int64"))[
        ["subject_id", "hadm_id", "prediction_time", "label", "age", "gender"] + (["race"] if "race" in m else [])]
    df = df.astype({"subject_id": "int64", "hadm_id": "int64"}).reset_index(drop=True)
    if df.empty:
        raise DataError("no label fell inside an admission", file=labels_path, field="prediction_time")
    splits_path = Path(meds_root) / "metadata" / "subject_splits.parquet" if meds_root is not None else None
    if splits_path is not None and splits_path.exists():
        df["split"] = _splits(df, splits_path)
    else:
        df["split"] = assign_splits(df, task)
    counts = {"labels": len(labels), "labels_outside_admissions": int((~placed).sum()),
              "labels_same_admission": int(dup.sum()), "cohort": len(df), "positives": int(df["label"].sum()),
              "splits_from": str(splits_path) if splits_path is not None and splits_path.exists() else "task seed"}
    return COHORT.validate(df.sort_values("hadm_id").reset_index(drop=True)), counts


def _splits(df: pd.DataFrame, path: Path) -> pd.Series:
    s = read_parquet(path)
    unknown = sorted(set(s["split"]) - set(SPLITS))
    if unknown:
        raise DataError(f"split names {unknown} are not MEDS's train, tuning, held_out", file=path, field="split")
    split = df["subject_id"].map(s.drop_duplicates("subject_id").set_index("subject_id")["split"].map(SPLITS))
    if split.isna().any():
        raise DataError(f"subject {int(df.loc[split.isna(), 'subject_id'].iloc[0])} has a label but no split",
                        file=path, field="subject_id", hint="list every labelled subject, or remove the file")
    return split.astype(object)
