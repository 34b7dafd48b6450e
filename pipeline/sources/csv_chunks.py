"""Cut a (gzipped) CSV file into plain-CSV chunk files that DuckDB can stage in parallel.

DuckDB decompresses and parses a .gz CSV on one thread.  ``gz_csv_chunks`` decompresses
the file in Python (zlib releases the GIL) and writes ``out_dir/<stem>.<k>.csv`` files of
about ``chunk_bytes`` each: the file's header line, bytes exactly as in the file (BOM
included), then a run of whole records.  Each ``Chunk`` says which ``_line`` its first
record has in the WHOLE file (the numbering of ``raw_checks.RawTable.scan``: the header is
line 1, then each record, a quoted field spanning lines counting as one record, blank
lines skipped) and how many records it holds.  ``chunk_scan(chunk)`` is the SQL relation
of the chunk's rows with those line numbers; the chunks' rows together equal the whole
file's, line for line.

A record ends at a newline outside quotes (RFC 4180: ``"`` opens a field only at its
start, ``""`` inside a quoted field is a quote).  Counting is vectorised (numpy): the
offsets of a block's newlines and quotes; a newline with an even number of quotes before it
ends a record unless its line is blank ('' or '\\r', which DuckDB skips).

Dialect: DuckDB sniffs the dialect of every file it reads, and a chunk could sniff
differently from the whole file (one odd line in a chunk's first rows turns it into a
one-column file).  So the whole file is sniffed once, with the options of
``raw_checks._source_sql``, and every chunk is read with that dialect pinned
(``auto_detect=false``, the sniffed columns).

``NotChunkable`` -- raised where the chunks might not number or parse the rows as DuckDB
does on the whole file.  Before the first chunk: a dialect other than ``,`` / ``"`` /
``"`` with no comment and no skipped rows, a file of one column (DuckDB reads its blank
lines as NULL records), no header line.  While streaming: a quote that does not open or
close a field the RFC way (a stray ``a"b``, ``"ab"c``, `` "ab"``), a ``\\r`` not followed
by ``\\n``, a quoted field still open at the end of the file or longer than
``MAX_RECORD_BYTES``.  The rule for the caller is simple: on ``NotChunkable``, whenever it
comes, discard every chunk already staged and read the whole file instead (DuckDB then
applies its own, more lenient rules); do the same when DuckDB fails to read a chunk (the
whole file then fails too, and its error names the real file and line).  ``DataError``
(naming the file) is raised for a truncated or corrupt gzip and for a gzip bomb (output
over ``max(GZIP_FLOOR_BYTES, GZIP_MAX_RATIO x`` compressed size), as
``raw_checks.gunzip_capped``).  A chunk file not yet yielded is removed on any error.

The generator is lazy: it writes chunk k+1 only when asked for it, and it never deletes a
chunk file.  The caller deletes each chunk after staging it, so about as many chunks exist
on disk as the caller holds un-staged (2-3 with a queue of one between a producer thread
and two stagers).
"""
from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np

from pipeline.errors import DataError
from pipeline.sources import raw_checks

CHUNK_BYTES = 512 * 2**20   # uncompressed bytes per chunk file
BLOCK_BYTES = 8 * 2**20     # bytes decompressed per read
MAX_RECORD_BYTES = 64 * 2**20   # longer: NotChunkable (DuckDB's own max_line_size is 2 MB)

_READ_OPTIONS = "header=true, all_varchar=true, quote='\"', escape='\"', strict_mode=false"
_BOM = b"\xef\xbb\xbf"
_NL, _CR, _QUOTE = ord("\n"), ord("\r"), ord('"')
_BEFORE_OPEN = np.array([ord(","), _NL, _QUOTE], np.uint8)         # a field starts after these
_AFTER_CLOSE = np.array([ord(","), _CR, _NL, _QUOTE], np.uint8)    # and ends before these


class NotChunkable(Exception):
    """The file cannot be cut so that every chunk reads as the whole file does: discard the
    chunks already staged and read the whole file."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"file {path}: cannot be read in chunks: {reason}")


@dataclass(frozen=True)
class Chunk:
    path: Path          # plain CSV: the file's header line + whole records
    first_line: int     # the whole file's _line of the chunk's first record
    records: int        # records in the chunk (blank lines not counted)
    options: str        # the whole file's dialect, pinned for read_csv


def chunk_scan(chunk: Chunk) -> str:
    """The chunk's rows as a SQL relation: ``_line`` (the whole file's numbering) and the
    columns, all VARCHAR.  Run it with ``preserve_insertion_order=true``
    (``raw_checks.in_file_order``), as ``RawTable.scan``."""
    p = str(chunk.path).replace("'", "''")
    return (f"(SELECT row_number() OVER () + {chunk.first_line - 1} AS _line, * "
            f"FROM read_csv('{p}', {chunk.options}))")


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _pinned_options(path: Path) -> str:
    """The read_csv options of the whole file's dialect, as DuckDB sniffs it."""
    p = str(path).replace("'", "''")
    try:
        with duckdb.connect() as con:
            delim, quote, escape, new_line, comment, skip, has_header, columns = con.execute(
                "SELECT Delimiter, Quote, Escape, NewLineDelimiter, Comment, SkipRows, HasHeader, Columns "
                f"FROM sniff_csv('{p}', {_READ_OPTIONS})").fetchone()
    except duckdb.IOException:
        raise                  # the caller tells a broken gzip (DataError) from other trouble
    except duckdb.Error as e:
        raise NotChunkable(path, f"DuckDB cannot sniff its dialect ({str(e).splitlines()[0]})") from None
    dialect = (delim, quote, escape, comment, skip, has_header)
    if dialect != (",", '"', '"', "(empty)", 0, True) or new_line not in ("\\n", "\\r\\n"):
        raise NotChunkable(path, f"dialect delim={delim!r} quote={quote!r} escape={escape!r} "
                                 f"new_line={new_line!r} comment={comment!r} skip={skip} header={has_header}")
    if len(columns) < 2:   # one column: DuckDB reads a blank line as a NULL record
        raise NotChunkable(path, "a file of one column")
    cols = ", ".join(f"{_sql_str(c['name'])}: 'VARCHAR'" for c in columns)
    return (f"{_READ_OPTIONS}, auto_detect=false, delim=',', new_line={_sql_str(new_line)}, "
            f"skip=0, comment='', columns={{{cols}}}")


def _blocks(path: Path, size: int) -> Iterator[bytes]:
    """The decompressed bytes of ``path`` (plain when not .gz), ``size`` at a time; a gzip
    bomb or a truncated/corrupt gzip is a ``DataError`` naming the file."""
    if path.suffix != ".gz":
        with open(path, "rb") as f:
            while block := f.read(size):
                yield block
        return
    packed = path.stat().st_size
    limit = max(raw_checks.GZIP_FLOOR_BYTES, int(raw_checks.GZIP_MAX_RATIO * packed))
    total = 0
    try:
        with gzip.open(path, "rb") as f:
            while block := f.read(size):
                total += len(block)
                if total > limit:
                    raise DataError(f"decompresses to over {limit:,} bytes from {packed:,} "
                                    f"(ratio over {limit / max(packed, 1):.0f}): refused as a gzip bomb",
                                    file=path, hint="decompress it yourself if the file is genuine")
                yield block
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot decompress ({type(e).__name__}: {e})", file=path,
                        hint="the .gz file is truncated or not gzip") from None


def _record_ends(path: Path, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """``data`` (starting at a record start) as bytes and the offsets of its newlines outside
    quotes (an even number of quotes before them).  Checks that every quote opens a field
    (at its start: after ',', a newline or the closing quote of "") or closes one (before
    ',', a line end or the opening quote of ""): ``NotChunkable`` otherwise."""
    a = np.frombuffer(data, np.uint8)
    nl = np.flatnonzero(a == _NL)
    if data.find(b'"') < 0:
        return a, nl
    q = np.flatnonzero(a == _QUOTE)
    opens, closes = q[0::2], q[1::2]
    closes = closes[closes + 1 < len(a)]           # a quote ending the block: checked with the next
    if not np.isin(a[opens[opens > 0] - 1], _BEFORE_OPEN).all() or \
            not np.isin(a[closes + 1], _AFTER_CLOSE).all():
        raise NotChunkable(path, "a quote inside an unquoted field or text after a closing quote")
    return a, nl[np.searchsorted(q, nl) % 2 == 0]


def _records(path: Path, a: np.ndarray, ends: np.ndarray) -> int:
    """Records in ``a`` up to its newline outside quotes ``ends[-1]`` (``ends``: all of them,
    from a record start): the lines outside quotes that are not blank ('' or '\\r').
    ``NotChunkable`` for a '\\r' not followed by '\\n'."""
    cut = int(ends[-1]) + 1
    if _CR not in a[:cut]:
        return len(ends) - int(np.count_nonzero(np.diff(ends) == 1)) - int(ends[0] == 0)
    if (a[np.flatnonzero(a[:cut] == _CR) + 1] != _NL).any():
        raise NotChunkable(path, "a '\\r' not followed by '\\n' (old Mac line ends or a stray carriage return)")
    starts = np.concatenate(([0], ends[:-1] + 1))
    length = ends - starts
    return len(ends) - int(np.count_nonzero((length == 0) | ((length == 1) & (a[starts] == _CR))))


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".csv"):
        name = name.removesuffix(suffix)
    return name


def gz_csv_chunks(path: Path, out_dir: Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[Chunk]:
    """Chunks of the CSV file ``path`` (.gz or plain), lazily, in file order.  See the module
    docstring for ``NotChunkable`` (discard the staged chunks, read the whole file) and for
    deleting the chunk files (the caller's job)."""
    path, out_dir = Path(path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = _stem(path)
    blocks = _blocks(path, max(1, min(BLOCK_BYTES, chunk_bytes)))

    # the header: up to the end of the first non-blank line (blank lines before it included)
    data, header_end = b"", 0
    for block in blocks:
        data += block
        bom = len(_BOM) if data.startswith(_BOM) else 0
        ends = _record_ends(path, data[bom:])[1] + bom
        starts = [0] + [int(e) + 1 for e in ends]
        header_end = next((e + 1 for s, e in zip(starts, ends)
                           if data[s:e + 1].removeprefix(_BOM).strip(b"\r\n")), 0)
        if header_end:
            break
    header, carry = data[:header_end or len(data)], data[header_end or len(data):]
    if header.removeprefix(_BOM).strip(b"\r\n") == b"":
        raise NotChunkable(path, "no header line")
    if not header_end:
        carry, header = header, b""       # the header is the last line: checked with it below
    else:
        _records(path, *_record_ends(path, header.removeprefix(_BOM)))
    try:
        options = _pinned_options(path)
    except duckdb.IOException as e:
        for _ in blocks:       # a truncated or corrupt gzip raises its DataError here
            pass
        raise NotChunkable(path, f"DuckDB cannot read it ({str(e).splitlines()[0]})") from None

    k, line, records, size, out = 0, 2, 0, 0, None

    def start():
        nonlocal k, out, size, records
        k += 1
        out = open(out_dir / f"{stem}.{k}.csv", "wb")  # noqa: SIM115 -- open across yields; closed by finish or finally
        out.write(header)
        size, records = len(header), 0

    def finish() -> Chunk:
        nonlocal line
        out.close()
        chunk = Chunk(Path(out.name), line, records, options)
        line += records
        return chunk

    start()
    try:
        for block in blocks:
            data = carry + block if carry else block
            a, ends = _record_ends(path, data)
            if not ends.size:
                if len(data) > MAX_RECORD_BYTES:
                    raise NotChunkable(path, f"a record over {MAX_RECORD_BYTES:,} bytes (a quoted field never closed?)")
                carry = data
                continue
            cut = int(ends[-1]) + 1
            records += _records(path, a, ends)
            out.write(memoryview(data)[:cut])
            size += cut
            carry = data[cut:]
            if size >= chunk_bytes:
                yield finish()
                start()
        if carry:              # the last line, without a newline
            a, ends = _record_ends(path, (carry if header else carry.removeprefix(_BOM)) + b"\n")
            if not ends.size or ends[-1] != len(a) - 1:
                raise NotChunkable(path, "a quoted field open at the end of the file")
            records += _records(path, a, ends) - (0 if header else 1)
            out.write(carry)
        if records or k == 1:
            yield finish()
    finally:
        if not out.closed:     # a chunk not yielded (an error, or an empty last one): removed
            out.close()
            Path(out.name).unlink()
