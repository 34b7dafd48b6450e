"""MIMIC-IV-Note (note/radiology.csv.gz, note/discharge.csv.gz) into the NOTES table.

Bytes are decoded with ``surrogateescape``, so a row that is not valid UTF-8 is
quarantined (file, row, field) without losing the others; empty text, a bad
subject_id, an unparseable time and a repeated note_id (the later one) are quarantined
too.  ``row`` is the line number where the record starts in the decompressed CSV
(the header is line 1; a note's text spans several lines).

Note text never appears in an error, a quarantine reason or a log line.

Availability (``known_time``; ``charttime`` stays the charted time): a note is known
once stored, at its ``storetime`` (never before its charttime).  Without a storetime, a
date-only charttime (no time of day, or exactly midnight, as real discharge summaries
carry) is known at the END of its day, and a timed note is known at its charttime only
when the file has no storetime column at all; a timed note whose storetime is empty in
a file that has the column is held back (``known_time`` empty: never used).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from data_schemas.modalities import NOTES
from pipeline.artifacts import read_parquet
from pipeline.errors import DataError, Quarantine
from pipeline.sources.raw_checks import gunzip_capped
from pipeline.sources.tables import find_table

SOURCE = "notes"
REQUIRED = ["note_id", "subject_id", "charttime", "text"]


def _raw(path: Path) -> bytes:
    return gunzip_capped(path) if path.name.endswith(".gz") else path.read_bytes()


def _has_surrogates(s) -> bool:
    if not isinstance(s, str):
        return False
    try:
        s.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _read_table(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return read_parquet(path).astype("string")
    try:
        return pd.read_csv(io.BytesIO(_raw(path)), dtype="string", keep_default_na=False, na_values=[""],
                           encoding="utf-8", encoding_errors="surrogateescape")
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        # pandas' messages name line numbers and field counts, never cell contents
        raise DataError(f"cannot parse the CSV ({type(e).__name__}: {str(e).splitlines()[-1][:160]})",
                        file=path) from None


def _record_lines(df: pd.DataFrame) -> np.ndarray:
    """Line number (header = 1) on which each record starts, counting newlines inside fields."""
    nl = np.zeros(len(df), dtype=np.int64)
    for c in df.columns:
        nl += df[c].fillna("").str.count("\n").to_numpy(dtype=np.int64)
    return 2 + np.concatenate([[0], np.cumsum(1 + nl)[:-1]]).astype(np.int64) if len(df) else nl


def read_note_file(path: Path, q: Quarantine) -> pd.DataFrame:
    """One note file -> NOTES rows plus ``_file``/``_line`` (where each row came from)."""
    path = Path(path)
    df = _read_table(path)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise DataError(f"required column(s) {missing} missing; found {list(df.columns)}", file=path,
                        field=missing[0], hint="expected MIMIC-IV-Note columns note_id, subject_id, hadm_id, "
                                               "note_type, note_seq, charttime, storetime, text")
    lines = _record_lines(df) if path.suffix != ".parquet" else np.arange(len(df)) + 1
    bad = np.zeros(len(df), dtype=bool)

    def flag(mask, field: str, reason: str) -> None:
        nonlocal bad
        mask = np.asarray(mask, dtype=bool) & ~bad
        for i in np.flatnonzero(mask):
            q.add(SOURCE, path, int(lines[i]), field, reason)
        bad |= mask

    for col in ["text"] + [c for c in df.columns if c != "text"]:
        flag(np.fromiter(map(_has_surrogates, df[col].to_numpy(dtype=object)), dtype=bool, count=len(df)), col,
             f"{col} is not valid UTF-8")
    text = df["text"].fillna("")
    flag(text.str.strip().eq("").to_numpy(), "text", "empty note")
    sid = pd.to_numeric(df["subject_id"], errors="coerce")
    flag(sid.isna().to_numpy(), "subject_id", "missing or unparseable subject_id")
    flag(df["note_id"].fillna("").str.strip().eq("").to_numpy(), "note_id", "missing note_id")
    ct = pd.to_datetime(df["charttime"], errors="coerce", format="mixed")
    flag(ct.isna().to_numpy(), "charttime", "missing or unparseable charttime")
    known = note_known_time(df["charttime"], ct, df["storetime"] if "storetime" in df.columns else None)
    seen = df["note_id"].where(~bad)  # a bad row does not claim its note_id
    flag((seen.duplicated() & seen.notna()).to_numpy(), "note_id", "duplicated note_id (later row dropped)")
    keep = ~bad
    note_type = df["note_type"] if "note_type" in df.columns else pd.Series(path.name.split(".")[0], index=df.index)
    hadm = pd.to_numeric(df["hadm_id"], errors="coerce") if "hadm_id" in df.columns else np.nan
    out = pd.DataFrame({"note_id": df["note_id"].astype(object), "subject_id": sid, "hadm_id": hadm,
                        "note_type": note_type.astype(object), "charttime": ct, "known_time": known,
                        "text": text.astype(object),
                        "_file": str(path), "_line": lines})[keep]
    out["subject_id"] = out["subject_id"].astype("int64")
    out["hadm_id"] = out["hadm_id"].astype("float64")
    out["charttime"] = out["charttime"].astype("datetime64[ns]")
    out["known_time"] = out["known_time"].astype("datetime64[ns]")
    return out


def note_known_time(raw_charttime: pd.Series, charttime: pd.Series, raw_storetime: pd.Series | None) -> pd.Series:
    """When each note became available (see the module docstring); NaT = held back."""
    date_only = raw_charttime.fillna("").str.strip().str.len().le(10) | charttime.eq(charttime.dt.normalize())
    end_of_day = charttime.dt.normalize() + pd.Timedelta(days=1) - pd.Timedelta(seconds=1)
    if raw_storetime is None:
        return charttime.where(~date_only, end_of_day)
    st = pd.to_datetime(raw_storetime, errors="coerce", format="mixed")
    fallback = end_of_day.where(date_only)  # a timed note without its storetime: held back (NaT)
    return st.where(st.isna() | (st >= charttime), charttime).where(st.notna(), fallback)


def _empty() -> pd.DataFrame:
    return pd.DataFrame({"note_id": pd.Series(dtype=object), "subject_id": pd.Series(dtype="int64"),
                         "hadm_id": pd.Series(dtype="float64"), "note_type": pd.Series(dtype=object),
                         "charttime": pd.Series(dtype="datetime64[ns]"),
                         "known_time": pd.Series(dtype="datetime64[ns]"), "text": pd.Series(dtype=object),
                         "_file": pd.Series(dtype=object), "_line": pd.Series(dtype="int64")})


def note_files(note_root: Path, note_types: tuple[str, ...] = ("radiology", "discharge")) -> list[Path]:
    """The files of ``note_root/note/`` holding the wanted note types, those present."""
    paths = [find_table(Path(note_root) / "note", name) for name in note_types]
    return [p for p in paths if p is not None]


def read_notes(note_root: Path, quarantine: Quarantine,
               note_types: tuple[str, ...] = ("radiology", "discharge")) -> pd.DataFrame:
    """The note files of ``note_root/note/`` that are present (either may be absent) ->
    one NOTES table; a note_id already read from an earlier file is quarantined."""
    frames = [read_note_file(path, quarantine) for path in note_files(note_root, note_types)]
    notes = pd.concat(frames, ignore_index=True) if frames else _empty()
    dup = notes["note_id"].duplicated()
    for f, line in zip(notes.loc[dup, "_file"], notes.loc[dup, "_line"]):
        quarantine.add(SOURCE, f, int(line), "note_id", "note_id already read from another note file")
    notes = notes[~dup].drop(columns=["_file", "_line"]).reset_index(drop=True)
    return NOTES.validate(notes, Path(note_root) / "note")
