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


def norm_unit(col: str) -> str:
    """SQL of a unit spelling compared case-insensitively with spaces removed."""
    return f"replace(lower(coalesce({col}, '')), ' ', '')"


def unit_counts(relation: str) -> str:
    """SQL of the rows per (source, code, normalised unit u) of ``relation``: what ``plan_units`` reads."""
    return f"(SELECT source, code, {norm_unit('unit')} u, count(*) n FROM {relation} GROUP BY ALL)"


def plan_units(con, counts: str, q: Quarantine, source: str, raw: dict | None = None) -> dict:
    """Choose each code's unit from ``counts`` (a relation: source, code, u = the normalised
    unit, n), register the temp tables ``conv`` and ``dom`` that ``units_sql`` reads, and
    quarantine the values in an unknown unit.

    ``raw`` maps an event source table to its ``raw_checks.RawTable`` (a quarantine row then
    names the user's file and line) or to its file (the row names the file and the count)."""
    con.register("conv", pd.DataFrame(CONVERSIONS, columns=["code", "from_unit", "to_unit", "factor"]))
    # A code with a known conversion keeps its target unit whatever this extract holds most of (a
    # scoring extract must land on the training scale); ties broken by name, never by scan order.
    con.execute(f"""CREATE OR REPLACE TEMP TABLE dom AS
        SELECT d.code, coalesce(any_value(k.to_unit), arg_max(u, (n, u))) AS unit FROM (
          SELECT code, u, sum(n) n FROM {counts} WHERE u <> '' GROUP BY code, u) d
        LEFT JOIN (SELECT DISTINCT code, to_unit FROM conv) k ON d.code = k.code
        GROUP BY d.code""")
    found = con.execute(f"""SELECT s.source, s.code, s.u, d.unit, sum(s.n), bool_or(c.factor IS NOT NULL)
        FROM {counts} s JOIN dom d ON s.code = d.code
        LEFT JOIN conv c ON s.code = c.code AND c.from_unit = s.u AND c.to_unit = d.unit
        WHERE s.u <> '' AND s.u <> d.unit GROUP BY ALL ORDER BY sum(s.n) DESC""").fetchall()
    unknown = [r for r in found if not r[5]]
    for table, code, u, du, n, _ in unknown:
        reason = f"unknown unit '{u}', expected '{du}' (value dropped)"
        rt = (raw or {}).get(table)
        file = getattr(rt, "path", rt) or table
        lines = rt.lines_with_unit(con, code, u) if hasattr(rt, "lines_with_unit") else []
        for line in lines:
            q.add(source, file, f"line {line}", f"unit ({code})", reason)
        if n > len(lines):
            q.add(source, file, None, f"unit ({code})",
                  f"unknown unit: {n - len(lines)} {'more ' if lines else ''}value(s) in '{u}', expected '{du}'")
    return {"unit_converted": int(sum(r[4] for r in found if r[5])),
            "unit_unknown_dropped": int(sum(r[4] for r in unknown))}


def units_sql(relation: str) -> str:
    """``relation``'s rows on each code's unit (``plan_units`` first): converted where the
    conversion is known, dropped where the unit is unknown."""
    mismatch = "(u <> '' AND du IS NOT NULL AND u <> du)"
    return f"""SELECT * EXCLUDE (u, du, factor, value, unit),
            CASE WHEN {mismatch} THEN value * factor ELSE value END AS value,
            CASE WHEN {mismatch} THEN du ELSE unit END AS unit
        FROM (SELECT e.*, {norm_unit('e.unit')} AS u, d.unit AS du, c.factor
              FROM {relation} e LEFT JOIN dom d ON e.code = d.code
              LEFT JOIN conv c ON e.code = c.code AND c.from_unit = {norm_unit('e.unit')} AND c.to_unit = d.unit)
        WHERE NOT ({mismatch} AND factor IS NULL)"""


def harmonise_units(events: Path, q: Quarantine, source: str, con, raw: dict | None = None) -> dict:
    """Rewrite ``events`` (parquet) in place with one unit per code (``plan_units``, ``units_sql``)."""
    ev = f"read_parquet('{events}')"
    info = plan_units(con, unit_counts(ev), q, source, raw)
    tmp = events.with_name(".events.units.tmp.parquet")
    con.execute(f"COPY ({units_sql(ev)}) TO '{tmp}' (FORMAT parquet, ROW_GROUP_SIZE 500000)").fetchall()
    tmp.replace(events)
    return info
