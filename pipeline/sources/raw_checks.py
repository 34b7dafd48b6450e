"""Checks of the user's own raw files, each finding naming that file and its line.

``inside_root`` refuses a path from an index file (record_list.csv, the CXR metadata)
that would leave the source folder.  An EHR event table (labevents, chartevents, omr)
is checked as the user wrote it, its lines numbered (the header is line 1; a quoted
field spanning lines counts as one), listing up to ``MAX_LISTED`` rows per kind and
counting the rest:

* a non-numeric value in a numeric column (``valuenum`` "abc"): the row is dropped;
* an exact duplicate row (every column equal to an earlier line's): dropped;
* a conflicting duplicate (same subject, item and time as an earlier line, another
  value): both are kept, and the later line is listed as a warning.

Cost: no copy of the table is made.  ``mimic_iv.ingest_events`` streams the file once
with ``RawTable.scan`` (the file's columns plus ``_line``; a big CSV as chunks numbered the
same way, ``csv_chunks.chunk_scan``) and stages each row with its
line and a hash of its key columns; ``RawTable.check`` then finds the duplicate
candidates (rows whose key hash repeats), reads only those lines again, whole, and
decides among them exactly.  A clean file is read once.  ``lines_with_unit`` finds
the lines behind a unit that ``units.harmonise_units`` quarantines.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import DataError, Quarantine
from pipeline.sources.units import norm_unit

MAX_LISTED = 200    # rows listed per file and kind of finding; the rest are counted in one row
CANDIDATE_SLICE_ROWS = 32_000_000   # rows per slice of the duplicate-candidate aggregate (DuckDB spills beyond its memory limit)

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


@contextmanager
def in_file_order(con):
    """DuckDB keeps rows in the order they were read (``preserve_insertion_order``) inside the
    block, as ``RawTable.scan``'s line numbers need; the connection's setting is restored after."""
    order = con.execute("SELECT current_setting('preserve_insertion_order')").fetchall()[0][0]
    con.execute("SET preserve_insertion_order=true")
    try:
        yield con
    finally:
        con.execute(f"SET preserve_insertion_order={'true' if str(order).lower() == 'true' else 'false'}")


@dataclass
class RawTable:
    """One event table as the user wrote it: its file, columns and the checks' counts.

    ``scan`` is the file with its line numbers (``_line``; run it ``in_file_order``);
    ``key_hash`` hashes the
    columns of one measurement (``EVENT_TABLES``; every column where the file has none of
    them).  The staged rows of the table carry both, and ``check`` works from them."""
    table: str
    path: Path
    columns: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    stage: str | None = None      # relation of the staged rows (set by ``check``)

    @property
    def rel(self) -> str:
        return f"raw_{self.table}"

    @property
    def scan(self) -> str:
        return f"(SELECT row_number() OVER () + 1 AS _line, * FROM {_source_sql(self.path)})"

    def _present(self, part: int) -> list[str]:
        """The columns of EVENT_TABLES[table][part] (0: numeric, 1: measurement key) the file has."""
        return [c for c in EVENT_TABLES.get(self.table, ((), (), None, None))[part] if c in self.columns]

    @property
    def key(self) -> list[str]:
        return self._present(1) or list(self.columns)

    @property
    def key_hash(self) -> str:
        return f"hash({', '.join(_q(c) for c in self.key)})"

    @property
    def numeric(self) -> list[str]:
        return self._present(0)

    @property
    def dropped(self) -> str:
        """Temp table of the lines dropped as exact duplicates (_line, first)."""
        return f"{self.rel}_dup"

    def lines_with_unit(self, con, code: str, unit_norm: str, limit: int = MAX_LISTED) -> list[int]:
        """Lines whose code is ``code`` and whose unit (lower case, no spaces) is ``unit_norm``."""
        if self.stage is None:
            return []
        rows = con.execute(f"SELECT DISTINCT _line FROM {self.stage} WHERE source = ? AND code = ? AND "
                           f"{norm_unit('unit')} = ? ORDER BY _line LIMIT {int(limit)}",
                           [self.table, code, unit_norm]).fetchall()
        return [int(r[0]) for r in rows]

    def check(self, con, stage: str, q: Quarantine, source: str) -> None:
        """Quarantine this table's exact duplicates, non-numeric values and conflicting duplicates
        (module doc) from its staged rows; the exact duplicates' lines go to ``dropped``.

        Only rows whose key hash repeats can be duplicates: those few lines are read again from the
        file, whole, and the decision among them is made on the columns themselves (exact)."""
        self.stage = stage
        mine = f"(SELECT * FROM {stage} WHERE source = '{self.table}')"
        # repeated key hashes (a raw row may stage several rows: omr's blood pressure), found in
        # slices of the hash range so that the aggregate's memory does not grow with the table
        n = con.execute(f"SELECT count(*) FROM {mine}").fetchall()[0][0]
        slices = max(1, -(-n // CANDIDATE_SLICE_ROWS))
        con.execute(f"CREATE OR REPLACE TEMP TABLE {self.rel}_keys (_k UBIGINT)")
        for i in range(slices):
            con.execute(f"INSERT INTO {self.rel}_keys SELECT _k FROM {mine} WHERE _k % {slices} = {i} "
                        "GROUP BY _k HAVING min(_line) < max(_line)")
        con.execute(f"CREATE OR REPLACE TEMP TABLE {self.rel}_cand AS SELECT DISTINCT _line FROM {mine} "
                    f"SEMI JOIN {self.rel}_keys USING (_k)")
        con.execute(f"CREATE OR REPLACE TEMP TABLE {self.dropped} (_line BIGINT, first BIGINT)")
        every = ", ".join(_q(c) for c in self.columns)
        cand = f"{self.rel}_rows"
        if con.execute(f"SELECT count(*) FROM {self.rel}_cand").fetchall()[0][0]:
            with in_file_order(con):
                con.execute(f"CREATE OR REPLACE TEMP TABLE {cand} AS SELECT * FROM {self.scan} "
                            f"WHERE _line IN (SELECT _line FROM {self.rel}_cand)")
        else:
            con.execute(f"CREATE OR REPLACE TEMP TABLE {cand} AS SELECT * FROM {self.scan} LIMIT 0")
        self.counts["exact_duplicates"] = _listed(
            con, q, source, self.path,
            f"SELECT _line, first_value(_line) OVER w first FROM {cand} "
            f"WINDOW w AS (PARTITION BY {every} ORDER BY _line) QUALIFY row_number() OVER w > 1",
            "row", lambda r: "exact duplicate row (dropped)" + (f" of line {r[1]}" if r else ""), self.dropped)
        for col in self.numeric:   # staged with bad_field = col and the text in bad_value
            self.counts[f"non_numeric_{col}"] = _listed(
                con, q, source, self.path,
                f"SELECT _line, bad_value FROM {mine} WHERE bad_field = '{col}' "
                f"AND _line NOT IN (SELECT _line FROM {self.dropped})",
                col, lambda r: "non-numeric value in a numeric column (row dropped)" + (f": {r[1][:40]!r}" if r else ""),
                f"{self.rel}_nonnum")
        key = self._present(1)
        if key and self.numeric:
            k = ", ".join(_q(c) for c in key)
            differ = " OR ".join(f"min(TRY_CAST({_q(c)} AS DOUBLE)) OVER (PARTITION BY {k}) <> "
                                 f"max(TRY_CAST({_q(c)} AS DOUBLE)) OVER (PARTITION BY {k})" for c in self.numeric)
            self.counts["conflicting_duplicates"] = _listed(
                con, q, source, self.path,
                f"SELECT _line, first_value(_line) OVER w first FROM {cand} "
                f"WHERE _line NOT IN (SELECT _line FROM {self.dropped}) "
                f"WINDOW w AS (PARTITION BY {k} ORDER BY _line) QUALIFY ({differ}) AND row_number() OVER w > 1",
                self.numeric[0], lambda r: f"conflicting duplicate: same {', '.join(key)} as line {r[1]}, another "
                                           "value (both kept)" if r else "conflicting duplicates (both kept)",
                f"{self.rel}_conflict")


def _listed(con, q: Quarantine, source: str, path: Path, sql: str, field: str, reason, name: str) -> int:
    """Quarantine the rows of ``sql`` (columns _line, then what ``reason(row)`` formats): up to
    MAX_LISTED listed, the rest counted in one row.  The rows are computed once, into the temp
    table ``name``.  Returns how many there were."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {sql}")
    n = con.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0]
    for row in con.execute(f"SELECT * FROM {name} ORDER BY _line LIMIT {MAX_LISTED}").fetchall():
        q.add(source, path, f"line {row[0]}", field, reason(row))
    if n > MAX_LISTED:
        q.add(source, path, None, field, reason(None) + f": {n - MAX_LISTED} more rows not listed")
    return int(n)


def header_columns(con, path: Path) -> list[str]:
    """The column names of a CSV (plain or .gz) from its first line, as DuckDB's reader names them;
    DuckDB's own DESCRIBE (which samples the file) for parquet or a header it would rename
    (an empty or repeated name)."""
    path = Path(path)
    if path.suffix != ".parquet":
        import csv
        import gzip
        try:
            with (gzip.open(path, "rt", encoding="utf-8-sig", errors="replace", newline="") if path.suffix == ".gz"
                  else open(path, encoding="utf-8-sig", errors="replace", newline="")) as f:
                line = f.readline()
                # a quoted name spanning lines (odd quote count): DuckDB's reader decides
                names = [n.strip() for n in next(csv.reader([line]), [])] if line.count('"') % 2 == 0 else []
        except (OSError, EOFError):
            names = []   # DuckDB says what is wrong with the file
        if names and all(n.strip() for n in names) and len(set(names)) == len(names) and '"' not in "".join(names):
            return names
    return [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {_source_sql(path)}").fetchall()]


def open_raw(con, table: str, path: Path, required: list[str]) -> RawTable:
    """The ``RawTable`` of ``path`` after checking its header (required columns, no ``_line``)."""
    path = Path(path)
    try:
        cols = header_columns(con, path)
    except Exception as e:  # DuckDB's CSV/parquet errors name the problem; ours names the file too
        raise DataError(f"cannot read the table ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
                        file=path) from None
    missing = [c for c in required if c not in cols]
    if missing:
        raise DataError(f"required column(s) {missing} missing; found {cols}", file=path, field=missing[0])
    if "_line" in cols:
        raise DataError("a column is named _line (reserved for line numbers)", file=path, field="_line")
    return RawTable(table, path, cols)


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
