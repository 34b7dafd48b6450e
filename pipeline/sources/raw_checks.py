"""Checks of the user's own raw files, each finding naming that file and its line.

``inside_root`` refuses a path from an index file (record_list.csv, the CXR metadata)
that would leave the source folder.  ``checked_scan`` runs one DuckDB pass over an
EHR event table (labevents, chartevents, omr) as the user wrote it, numbering its
lines (the header is line 1; a quoted field spanning lines counts as one), and
quarantines, listing up to ``MAX_LISTED`` rows per kind and counting the rest:

* a non-numeric value in a numeric column (``valuenum`` "abc"): the row is dropped;
* an exact duplicate row (every column equal to an earlier line's): dropped;
* a conflicting duplicate (same subject, item and time as an earlier line, another
  value): both are kept, and the later line is listed as a warning.

The returned ``RawTable`` is the SQL relation the event query reads (the file's
columns plus ``_line``, exact duplicates removed) and ``lines_with_unit`` finds the
lines behind a unit that ``units.harmonise_units`` quarantines.  Cost: the table is
read once into a DuckDB temp table (text columns; it spills to the temp directory
beyond ``memory_limit``), which the event query then reads instead of the file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import DataError, Quarantine

MAX_LISTED = 200    # rows listed per file and kind of finding; the rest are counted in one row

# table: (numeric columns, key columns of one measurement (a value in another unit is not a conflict),
#         the unit column, the code expression)
EVENT_TABLES = {
    "labevents": (("valuenum",), ("subject_id", "specimen_id", "itemid", "charttime", "valueuom"), "valueuom",
                  "'lab:' || itemid"),
    "chartevents": (("valuenum",), ("subject_id", "stay_id", "itemid", "charttime", "valueuom"), "valueuom",
                    "'chart:' || itemid"),
    "omr": ((), (), None, None),
}


def inside_root(root: Path, rel: str, field: str = "path", suffixes: tuple[str, ...] = ()) -> Path:
    """``root / rel`` if it stays under ``root``; a ``DataError`` otherwise.

    An index file's path that is absolute, climbs out with ``..``, or reaches (itself, or
    with one of ``suffixes`` appended) through a symlink a place outside ``root`` is refused:
    an index file must not make the pipeline read elsewhere on the machine."""
    root = Path(root).resolve()
    rel = str(rel)
    if not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise DataError(f"path {rel!r} leaves the source folder (empty, absolute or '..')", file=root, field=field,
                        hint="paths in an index file must be relative and stay under the source folder")
    p = root / rel
    for cand in (p, *(p.with_name(p.name + s) for s in suffixes)):
        real = cand.resolve()
        if not real.is_relative_to(root):
            raise DataError(f"path {rel!r} resolves outside the source folder (a symlink to {real})", file=cand,
                            field=field, hint="copy the files under the source folder instead of linking out of it")
    return p


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _source_sql(path: Path) -> str:
    p = str(path).replace("'", "''")
    if path.suffix == ".parquet":
        return f"read_parquet('{p}')"
    return f"read_csv('{p}', header=true, all_varchar=true, quote='\"', escape='\"', strict_mode=false)"


@dataclass
class RawTable:
    """One event table as the user wrote it, loaded with its line numbers."""
    table: str
    path: Path
    relation: str         # temp table: the file's columns, _line, _dup
    columns: list[str]
    counts: dict[str, int]

    @property
    def scan(self) -> str:
        """The rows to use (exact duplicates removed): the file's columns and ``_line``."""
        return f"(SELECT * EXCLUDE (_dup) FROM {self.relation} WHERE NOT _dup)"

    def lines_with_unit(self, con, code: str, unit_norm: str, limit: int = MAX_LISTED) -> list[int]:
        """Lines whose code is ``code`` and whose unit (lower case, no spaces) is ``unit_norm``."""
        _, _, unit_col, code_sql = EVENT_TABLES.get(self.table, ((), (), None, None))
        if unit_col is None or unit_col not in self.columns:
            return []
        rows = con.execute(f"SELECT _line FROM {self.scan} WHERE {code_sql} = ? AND "
                           f"replace(lower(coalesce(CAST({_q(unit_col)} AS VARCHAR), '')), ' ', '') = ? "
                           f"ORDER BY _line LIMIT {int(limit)}",
                           [code, unit_norm]).fetchall()
        return [int(r[0]) for r in rows]


def _listed(con, q: Quarantine, source: str, path: Path, sql: str, field: str, reason) -> int:
    """Quarantine the rows of ``sql`` (columns _line, then what ``reason(row)`` formats): up to
    MAX_LISTED listed, the rest counted in one row.  Returns how many there were."""
    n = con.execute(f"SELECT count(*) FROM ({sql})").fetchall()[0][0]
    for row in con.execute(f"SELECT * FROM ({sql}) ORDER BY _line LIMIT {MAX_LISTED}").fetchall():
        q.add(source, path, f"line {row[0]}", field, reason(row))
    if n > MAX_LISTED:
        q.add(source, path, None, field, reason(None) + f": {n - MAX_LISTED} more rows not listed")
    return int(n)


def checked_scan(con, table: str, path: Path, q: Quarantine, source: str) -> RawTable:
    """Load ``path`` with line numbers into a temp table, quarantine what is wrong (see module
    doc) and return the ``RawTable`` the event query reads."""
    path = Path(path)
    numeric, key, _, _ = EVENT_TABLES.get(table, ((), (), None, None))
    rel = f"raw_{table}"
    order = con.execute("SELECT current_setting('preserve_insertion_order')").fetchall()[0][0]
    con.execute("SET preserve_insertion_order=true")     # the temp tables keep the file's order: rowid = line - 2
    try:
        try:
            con.execute(f"CREATE OR REPLACE TEMP TABLE {rel}_in AS SELECT * FROM {_source_sql(path)}")
        except Exception as e:  # DuckDB's CSV/parquet errors name the problem; ours names the file too
            raise DataError(f"cannot read the table ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
                            file=path) from None
        cols = [r[0] for r in con.execute(f"DESCRIBE {rel}_in").fetchall()]
        if "_line" in cols or "_dup" in cols:
            raise DataError("a column is named _line or _dup (reserved for line numbers)", file=path, field="_line")
        every = ", ".join(_q(c) for c in cols)
        # a plain projection keeps the file's order (rowid = line - 2); no window over the whole file
        con.execute(f"CREATE OR REPLACE TEMP TABLE {rel} AS SELECT *, rowid + 2 AS _line, FALSE AS _dup "
                    f"FROM {rel}_in")
        con.execute(f"DROP TABLE {rel}_in")
    finally:
        con.execute(f"SET preserve_insertion_order={'true' if str(order).lower() == 'true' else 'false'}")
    counts = {}
    # Exact duplicates: only rows whose whole-row hash repeats are candidates (a hash aggregate over
    # the file); among them equality is decided on the columns themselves, so the result is exact.
    dups = f"(SELECT * FROM {rel} WHERE hash({every}) IN " \
           f"(SELECT hash({every}) h FROM {rel} GROUP BY h HAVING count(*) > 1))"
    con.execute(f"UPDATE {rel} SET _dup = TRUE WHERE _line IN (SELECT _line FROM {dups} "
                f"QUALIFY row_number() OVER (PARTITION BY {every} ORDER BY _line) > 1)")
    counts["exact_duplicates"] = _listed(
        con, q, source, path,
        f"SELECT _line, first_value(_line) OVER (PARTITION BY {every} ORDER BY _line) FROM {dups} QUALIFY _dup",
        "row", lambda r: "exact duplicate row (dropped)" + (f" of line {r[1]}" if r else ""))
    for col in (c for c in numeric if c in cols):
        counts[f"non_numeric_{col}"] = _listed(
            con, q, source, path,
            f"SELECT _line, CAST({_q(col)} AS VARCHAR) FROM {rel} WHERE NOT _dup "
            f"AND trim(coalesce(CAST({_q(col)} AS VARCHAR), '')) <> '' AND TRY_CAST({_q(col)} AS DOUBLE) IS NULL",
            col, lambda r: "non-numeric value in a numeric column (row dropped)" + (f": {r[1][:40]!r}" if r else ""))
    key = [c for c in key if c in cols]
    value = [c for c in numeric if c in cols]
    if key and value:
        k = ", ".join(_q(c) for c in key)
        differ = " OR ".join(f"min(TRY_CAST({_q(c)} AS DOUBLE)) OVER (PARTITION BY {k}) <> "
                             f"max(TRY_CAST({_q(c)} AS DOUBLE)) OVER (PARTITION BY {k})" for c in value)
        # candidates: rows whose key hash repeats; the windows then decide exactly among them
        same_key = f"(SELECT * FROM {rel} WHERE NOT _dup AND hash({k}) IN " \
                   f"(SELECT hash({k}) h FROM {rel} WHERE NOT _dup GROUP BY h HAVING count(*) > 1))"
        counts["conflicting_duplicates"] = _listed(
            con, q, source, path,
            f"SELECT _line, first_value(_line) OVER w FROM {same_key} "
            f"WINDOW w AS (PARTITION BY {k} ORDER BY _line) "
            f"QUALIFY ({differ}) AND row_number() OVER w > 1",
            value[0], lambda r: f"conflicting duplicate: same {', '.join(key)} as line {r[1]}, another value "
                                "(both kept)" if r else "conflicting duplicates (both kept)")
    return RawTable(table, path, rel, cols, counts)


GZIP_MAX_RATIO = 200            # text compresses 3-10x; a gzip bomb of one repeated byte ~1000x
GZIP_FLOOR_BYTES = 256 * 2**20  # below this any ratio is accepted


def gunzip_capped(path: Path, max_ratio: float | None = None, floor: int | None = None) -> bytes:
    """The decompressed bytes of a .gz file, refusing (``DataError``) a gzip bomb: output over
    ``max(floor, max_ratio x compressed size)`` (defaults GZIP_FLOOR_BYTES, GZIP_MAX_RATIO).
    Decompression stops at the limit, so a bomb costs no more memory than the limit."""
    import gzip
    path = Path(path)
    max_ratio = GZIP_MAX_RATIO if max_ratio is None else max_ratio
    floor = GZIP_FLOOR_BYTES if floor is None else floor
    limit = max(floor, int(max_ratio * path.stat().st_size))
    out = bytearray()
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(2**20):
                out += chunk
                if len(out) > limit:
                    raise DataError(f"decompresses to over {limit:,} bytes from {path.stat().st_size:,} "
                                    f"(ratio over {limit / max(path.stat().st_size, 1):.0f}): refused as a gzip bomb",
                                    file=path, hint="decompress it yourself if the file is genuine")
    except (OSError, EOFError) as e:
        raise DataError(f"cannot decompress ({type(e).__name__})", file=path,
                        hint="the .gz file is truncated or not gzip") from None
    return bytes(out)
