"""MIMIC-IV-Note (note/radiology.csv.gz, note/discharge.csv.gz) into the NOTES table.

Bytes are decoded per file with ``surrogateescape`` so one row that is not valid
UTF-8 is quarantined (file, row, field "text") without losing the others; empty
text, an unparseable time and a duplicated note_id are quarantined too.  Note
text never appears in an error, a quarantine reason or a log line.
A note's ``charttime`` is replaced by its ``storetime`` when that is later: a note
is known to the model only once it was stored (real discharge summaries carry a
date-only charttime).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from data_schemas.modalities import NOTES
from pipeline.errors import DataError, Quarantine
from pipeline.sources.discover import find_table

SOURCE = "notes"
REQUIRED = ["note_id", "subject_id", "charttime", "text"]


def _raw(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        import gzip
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"cannot decompress: {e}", file=path) from None
    return raw


def _has_surrogates(s: str) -> bool:
    try:
        s.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def read_note_file(path: Path, q: Quarantine) -> pd.DataFrame:
    if path.suffix == ".parquet":
        df = pd.read_parquet(path).astype("string")
    else:
        df = pd.read_csv(io.BytesIO(_raw(path)), dtype="string", keep_default_na=False, na_values=[""],
                         encoding="utf-8", encoding_errors="surrogateescape")
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise DataError(f"required column(s) {missing} missing; found {list(df.columns)}", file=path,
                        field=missing[0])
    bad = pd.Series(False, index=df.index)
    text = df["text"].fillna("")
    for i in np.flatnonzero(text.map(_has_surrogates).to_numpy()):
        q.add(SOURCE, path, int(i) + 2, "text", "text is not valid UTF-8")
        bad.iloc[i] = True
    empty = text.str.strip().eq("") & ~bad
    for i in np.flatnonzero(empty.to_numpy()):
        q.add(SOURCE, path, int(i) + 2, "text", "empty note")
    bad |= empty
    sid = pd.to_numeric(df["subject_id"], errors="coerce")
    for i in np.flatnonzero((sid.isna() & ~bad).to_numpy()):
        q.add(SOURCE, path, int(i) + 2, "subject_id", "missing or unparseable subject_id")
    bad |= sid.isna()
    ct = pd.to_datetime(df["charttime"], errors="coerce", format="mixed")
    for i in np.flatnonzero((ct.isna() & ~bad).to_numpy()):
        q.add(SOURCE, path, int(i) + 2, "charttime", "missing or unparseable charttime")
    bad |= ct.isna()
    if "storetime" in df.columns:
        st = pd.to_datetime(df["storetime"], errors="coerce", format="mixed")
        ct = ct.where(st.isna() | (st <= ct), st)
    dup = df["note_id"].duplicated() & ~bad
    for i in np.flatnonzero(dup.to_numpy()):
        q.add(SOURCE, path, int(i) + 2, "note_id", "duplicated note_id")
    bad |= dup
    keep = ~bad
    note_type = df["note_type"] if "note_type" in df.columns else pd.Series(path.name.split(".")[0], index=df.index)
    hadm = pd.to_numeric(df["hadm_id"], errors="coerce") if "hadm_id" in df.columns else np.nan
    out = pd.DataFrame({"note_id": df["note_id"].astype(object), "subject_id": sid, "hadm_id": hadm,
                        "note_type": note_type.astype(object), "charttime": ct, "text": text.astype(object)})[keep]
    out["subject_id"] = out["subject_id"].astype("int64")
    out["hadm_id"] = out["hadm_id"].astype("float64")
    out["charttime"] = out["charttime"].astype("datetime64[ns]")
    return out


def read_notes(note_root: Path, quarantine: Quarantine,
               note_types: tuple[str, ...] = ("radiology", "discharge")) -> pd.DataFrame:
    """All note files of ``note_root/note/`` that are present; either may be absent."""
    frames = []
    for name in note_types:
        path = find_table(Path(note_root) / "note", name)
        if path is not None:
            frames.append(read_note_file(path, quarantine))
    if not frames:
        frames = [pd.DataFrame({"note_id": pd.Series(dtype=object), "subject_id": pd.Series(dtype="int64"),
                                "hadm_id": pd.Series(dtype="float64"), "note_type": pd.Series(dtype=object),
                                "charttime": pd.Series(dtype="datetime64[ns]"), "text": pd.Series(dtype=object)})]
    notes = pd.concat(frames, ignore_index=True)
    dup = notes["note_id"].duplicated()
    for _ in range(int(dup.sum())):
        quarantine.add(SOURCE, "note/", None, "note_id", "a note_id appears in two note files")
    return NOTES.validate(notes[~dup].reset_index(drop=True))
