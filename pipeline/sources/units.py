"""Unit harmonisation of canonical events.

Each code's dominant unit (the most frequent) is the canonical one.  A value recorded
in another unit is converted when the conversion for that code is known (table
below) and otherwise dropped and quarantined as "unknown unit", counted per code and
unit (never silently kept on the wrong scale).  Unit spellings are compared
case-insensitively with spaces removed.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.errors import Quarantine

# (code, from unit, to unit): multiply by factor.  Codes are canonical event codes.
CONVERSIONS = [
    ("lab:50931", "mmol/l", "mg/dl", 18.016),      # glucose
    ("lab:50912", "umol/l", "mg/dl", 1 / 88.42),   # creatinine
    ("lab:50912", "µmol/l", "mg/dl", 1 / 88.42),
    ("lab:51006", "mmol/l", "mg/dl", 2.801),       # urea nitrogen
    ("lab:51222", "g/l", "g/dl", 0.1),             # hemoglobin
    ("lab:50813", "mg/dl", "mmol/l", 1 / 9.008),   # lactate
    # same scale, other spelling (seen in the MIMIC-IV demo)
    ("lab:51249", "%", "g/dl", 1.0),               # MCHC written as %
    ("lab:51099", "ratio", "mg/mg", 1.0),          # urine protein/creatinine ratio
    ("lab:51654", "log10cop/ml", "log10copies/ml", 1.0),
    ("lab:glucose", "mmol/l", "mg/dl", 18.016),    # eICU names
    ("lab:creatinine", "umol/l", "mg/dl", 1 / 88.42),
]


def _norm(col: str) -> str:
    return f"replace(lower(coalesce({col}, '')), ' ', '')"


def harmonise_units(events: Path, q: Quarantine, source: str, con, raw: dict | None = None) -> dict:
    """Rewrite ``events`` (parquet) in place with one unit per code.

    ``raw`` maps an event source table to its ``raw_checks.RawTable`` (a quarantine row then
    names the user's file and line) or to its file (the row names the file and the count)."""
    conv = pd.DataFrame(CONVERSIONS, columns=["code", "from_unit", "to_unit", "factor"])
    con.register("conv", conv)
    ev = f"read_parquet('{events}')"
    con.execute(f"""CREATE OR REPLACE TEMP TABLE dom AS
        SELECT code, arg_max(u, n) AS unit FROM (
          SELECT code, {_norm('unit')} AS u, count(*) n FROM {ev} WHERE unit IS NOT NULL AND unit <> ''
          GROUP BY code, u) GROUP BY code""")
    joined = f"""SELECT e.*, {_norm('e.unit')} AS u, d.unit AS du, c.factor
        FROM {ev} e LEFT JOIN dom d ON e.code = d.code
        LEFT JOIN conv c ON e.code = c.code AND c.from_unit = {_norm('e.unit')} AND c.to_unit = d.unit"""
    mismatch = "(u <> '' AND du IS NOT NULL AND u <> du)"
    unknown = con.execute(f"""SELECT source, code, u, du, count(*) FROM ({joined}) WHERE {mismatch} AND factor IS NULL
        GROUP BY source, code, u, du ORDER BY count(*) DESC""").fetchall()
    for table, code, u, du, n in unknown:
        reason = f"unknown unit '{u}', expected '{du}' (value dropped)"
        rt = (raw or {}).get(table)
        file = getattr(rt, "path", rt) or table
        lines = rt.lines_with_unit(con, code, u) if hasattr(rt, "lines_with_unit") else []
        for line in lines:
            q.add(source, file, f"line {line}", f"unit ({code})", reason)
        if n > len(lines):
            q.add(source, file, None, f"unit ({code})",
                  f"unknown unit: {n - len(lines)} {'more ' if lines else ''}value(s) in '{u}', expected '{du}'")
    converted = con.execute(f"SELECT count(*) FROM ({joined}) WHERE {mismatch} AND factor IS NOT NULL").fetchall()[0][0]
    tmp = events.with_name(".events.units.tmp.parquet")
    con.execute(f"""COPY (SELECT subject_id, hadm_id, time, code,
            CASE WHEN {mismatch} THEN value * factor ELSE value END AS value,
            CASE WHEN {mismatch} THEN du ELSE unit END AS unit, source
        FROM ({joined}) WHERE NOT ({mismatch} AND factor IS NULL)) TO '{tmp}' (FORMAT parquet, ROW_GROUP_SIZE 500000)""").fetchall()
    tmp.replace(events)
    con.unregister("conv")
    return {"unit_converted": int(converted), "unit_unknown_dropped": int(sum(r[4] for r in unknown))}
