"""gz_csv_chunks: the chunks' rows, read with chunk_scan, equal the whole file's rows as
RawTable.scan numbers them (_line and every column), for .gz and plain files; a gzip bomb or
a truncated gzip is a DataError naming the file; what cannot be chunked is NotChunkable."""
import gzip
import tempfile
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import DataError
from pipeline.sources import raw_checks
from pipeline.sources.csv_chunks import NotChunkable, chunk_scan, gz_csv_chunks

DEMO_LAB = Path(__file__).resolve().parents[1] / "../shared/data/mimic-iv-demo/hosp/labevents.csv.gz"


def whole_rows(con, path: Path) -> list[tuple]:
    with raw_checks.in_file_order(con):
        return con.execute(f"SELECT row_number() OVER () + 1 AS _line, * "
                           f"FROM {raw_checks._source_sql(path)}").fetchall()


def chunked_rows(con, path: Path, out: Path, chunk_bytes: int) -> tuple[list[tuple], list]:
    rows, chunks = [], []
    with raw_checks.in_file_order(con):
        for chunk in gz_csv_chunks(path, out, chunk_bytes=chunk_bytes):
            got = con.execute(f"SELECT * FROM {chunk_scan(chunk)}").fetchall()
            assert len(got) == chunk.records, (chunk, got)
            rows += got
            chunks.append(chunk)
            chunk.path.unlink()            # the caller deletes each chunk after staging it
    assert not list(out.iterdir())
    return rows, chunks


def write(tmp: Path, text: bytes, gz: bool) -> Path:
    path = tmp / ("t.csv.gz" if gz else "t.csv")
    path.write_bytes(gzip.compress(text) if gz else text)
    return path


def assert_same(text: bytes, chunk_bytes: int, gz: bool):
    """The chunks' rows equal the whole file's, or the chunker refuses (NotChunkable), or, where
    DuckDB cannot read the whole file, reading it in chunks fails too."""
    with tempfile.TemporaryDirectory() as d, duckdb.connect() as con:
        path = write(Path(d), text, gz)
        try:
            whole = whole_rows(con, path)
        except duckdb.Error:
            with pytest.raises((NotChunkable, duckdb.Error)):
                chunked_rows(con, path, Path(d) / "chunks", chunk_bytes)
            return "unreadable"
        try:
            rows, chunks = chunked_rows(con, path, Path(d) / "chunks", chunk_bytes)
        except NotChunkable:
            return "not chunkable"
        assert rows == whole
        assert sum(c.records for c in chunks) == len(whole)
        return len(chunks)


# cells: plain, empty, quoted with commas, "" and newlines (LF and CRLF), spaces
CELL = st.one_of(st.sampled_from(["", "1", "abc", "  x ", "2150-01-01 08:00:00", "___", "é"]),
                 st.text(alphabet="ab, \n\"", max_size=8).map(lambda s: '"' + s.replace('"', '""') + '"'),
                 st.sampled_from(['"a\r\nb"', '"\n\n"', '""', '"x,y"']))


@st.composite
def csv_texts(draw):
    ncol = draw(st.integers(2, 4))
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    lines = [",".join(f"c{i}" for i in range(ncol))]
    for _ in range(draw(st.integers(0, 25))):
        kind = draw(st.sampled_from(["row"] * 8 + ["blank", "crblank"]))
        if kind == "row":
            lines.append(",".join(draw(CELL) for _ in range(ncol)))
        else:
            lines.append("\r" if kind == "crblank" and eol == "\n" else "")
    text = eol.join(lines)
    text += draw(st.sampled_from(["", eol, eol + eol, eol + "\n"]))
    bom = draw(st.booleans())
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode()


FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(csv_texts(), st.integers(1, 200), st.booleans())
def test_chunks_equal_whole_file_numbering(text, chunk_bytes, gz):
    assert_same(text, chunk_bytes, gz)


ODD = st.sampled_from(['a"b', '"x"y', ' "q"', '"q" ', "  ", '"open', "\r", "x\ry"])


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(csv_texts(), st.lists(st.tuples(st.integers(0, 10**6), ODD), max_size=2), st.integers(1, 200))
def test_odd_quotes_and_carriage_returns_are_equal_or_not_chunkable(text, odd, chunk_bytes):
    """A stray quote, a lone '\\r', a whitespace-only cell: the chunks equal the whole file or
    the chunker says NotChunkable; it never numbers a row differently."""
    lines = text.split(b"\n")
    for at, cell in odd:
        i = 1 + at % max(len(lines) - 1, 1)
        if i < len(lines):
            lines[i] = lines[i] + b"," + cell.encode() if lines[i] else cell.encode()
    assert_same(b"\n".join(lines), chunk_bytes, gz=False)


def test_chunk_files_are_the_header_and_whole_records(tmp_path):
    header = b'\xef\xbb\xbf"id","note",x\r\n'
    body = b"".join(b'%d,"a ""b""\r\nc",%d\r\n' % (i, i) for i in range(500))
    path = write(tmp_path, header + body, True)
    chunks = list(gz_csv_chunks(path, tmp_path / "o", chunk_bytes=1000))
    assert len(chunks) >= 8
    rebuilt = b""
    for c in chunks:
        data = c.path.read_bytes()
        assert data.startswith(header) and data.endswith(b"\r\n")
        assert len(data) < 2 * 1000 + len(header) + 30     # chunk_bytes + one read + a record
        rebuilt += data[len(header):]
        assert c.first_line == 2 + sum(x.records for x in chunks[:chunks.index(c)])
    assert rebuilt == body and sum(c.records for c in chunks) == 500


def test_lazy_and_the_caller_deletes(tmp_path):
    path = write(tmp_path, b"a,b\n" + b"1,2\n" * 1000, True)
    out = tmp_path / "o"
    gen = gz_csv_chunks(path, out, chunk_bytes=400)
    first = next(gen)
    assert sorted(p.name for p in out.iterdir()) == ["t.1.csv"]     # nothing written ahead
    second = next(gen)
    assert second.path.name == "t.2.csv" and first.path.exists()      # the generator deletes nothing
    assert (first.first_line, second.first_line) == (2, 2 + first.records)


def test_not_chunkable_mid_stream_after_chunks_were_yielded(tmp_path):
    """The rule for the caller: NotChunkable may come after some chunks; it then discards
    what it staged and reads the whole file (which DuckDB reads its own way)."""
    text = b"a,b,c\n" + b"1,2,3\n" * 3000 + b'4,x"y,6\n' + b"7,8,9\n" * 10
    path = write(tmp_path, text, True)
    got = []
    with pytest.raises(NotChunkable, match="quote inside an unquoted field"):
        for c in gz_csv_chunks(path, tmp_path / "o", chunk_bytes=2000):
            got.append(c)  # noqa: PERF402 -- the chunks yielded before the error
    assert len(got) >= 5
    with duckdb.connect() as con:
        assert len(whole_rows(con, path)) == 3011


def test_chunks_read_with_the_whole_files_dialect(tmp_path, monkeypatch):
    """A chunk of lines starting with '#' would, read on its own, sniff '#' as a comment and
    drop them; the chunks are read with the whole file's dialect instead."""
    import pipeline.sources.csv_chunks as cc
    monkeypatch.setattr(cc, "BLOCK_BYTES", 6000)          # reads of 1000 rows: a cut after row 29,999
    tail = b"#x,2,3\n" * 50 + b"4,5,6\n" * 5
    text = b"a,b,c\n" + b"1,2,3\n" * 29_999 + tail
    with duckdb.connect() as con:
        path = write(tmp_path, text, False)
        whole = whole_rows(con, path)
        assert len(whole) == 30_054 and whole[-6] == (30_050, "#x", "2", "3")
        chunks = list(gz_csv_chunks(path, tmp_path / "o", chunk_bytes=180_000))
        last = chunks[-1]
        assert len(chunks) == 2 and last.path.read_bytes() == b"a,b,c\n" + tail and last.records == 55
        with raw_checks.in_file_order(con):
            rows = [r for c in chunks for r in con.execute(f"SELECT * FROM {chunk_scan(c)}").fetchall()]
        assert rows == whole
        alone = con.execute(f"SELECT count(*) FROM {raw_checks._source_sql(last.path)}").fetchall()[0][0]
        assert alone == 5             # read unpinned, the chunk loses its '#' rows


@pytest.mark.parametrize("gz", [True, False])
def test_quoted_newlines_blank_lines_and_crlf(gz):
    text = (b'\xef\xbb\xbfa,b,c\r\n1,"x\r\n\r\ny",3\r\n\r\n4,"p,""q""\n",6\r\n' * 30 + b'7,8,"9\n"')
    for chunk_bytes in (1, 7, 40, 300, 10**6):
        n = assert_same(text, chunk_bytes, gz)
        assert n >= (2 if chunk_bytes < 1000 else 1)


def test_header_only_gives_one_empty_chunk(tmp_path):
    for text in (b"a,b,c\n", b"a,b,c"):
        path = write(tmp_path, text, True)
        chunks = list(gz_csv_chunks(path, tmp_path / "o", chunk_bytes=2))
        assert [(c.first_line, c.records) for c in chunks] == [(2, 0)]
        assert chunks[0].path.read_bytes() == text


@pytest.mark.parametrize("text", [
    b"a,b,c\n" + b"1,2,3\n" * 40 + b'4,"5,6\n7,8,9\n',           # quoted field open at the end
    b"a,b,c\n" + b"1,2,3\n" * 40 + b'4,x"y,6\n7,8,9\n',           # stray quote in an unquoted field
    b"a,b,c\n" + b"1,2,3\n" * 40 + b'4,"x"y,6\n7,8,9\n',          # text after a closing quote
    b"a,b,c\n" + b"1,2,3\n" * 40 + b'4, "x",6\n7,8,9\n',          # space before an opening quote
    b"a,b,c\r1,2,3\r4,5,6\r",                                      # '\r'-only line ends
    b"a,b,c\n" + b"1,2,3\n" * 40 + b"4,5\r6\n",                   # a lone '\r'
    b"a;b;c\n" + b"1;2;3\n" * 40,                                  # another delimiter
    b"a,b,c\n1,2,3\n  \n4,5,6\n",                                 # DuckDB sniffs this as one column
    b"a\n1\n\n2\n",                                                 # one column
    b"", b"\n\n",                                                  # no header
])
def test_not_chunkable(tmp_path, text):
    path = write(tmp_path, text, True)
    with pytest.raises(NotChunkable, match="t.csv.gz"):
        list(gz_csv_chunks(path, tmp_path / "o", chunk_bytes=10))


def test_gzip_bomb_and_truncated_gzip_are_data_errors(tmp_path, monkeypatch):
    text = b"a,b,c\n" + b"1,2,3\n" * 100_000
    path = write(tmp_path, text, True)
    monkeypatch.setattr(raw_checks, "GZIP_FLOOR_BYTES", 1000)
    with pytest.raises(DataError, match="gzip bomb") as e:
        list(gz_csv_chunks(path, tmp_path / "o", chunk_bytes=10_000))
    assert str(path) in str(e.value)
    monkeypatch.undo()
    packed = gzip.compress(b"a,b,c\n" + b"".join(b"%d,2,3\n" % i for i in range(100_000)))
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError, match="truncated") as e:
        list(gz_csv_chunks(cut, tmp_path / "o", chunk_bytes=10_000))
    assert str(cut) in str(e.value)
    bad = tmp_path / "bad.csv.gz"
    bad.write_bytes(b"a,b,c\n1,2,3\n")
    with pytest.raises(DataError, match="bad.csv.gz"):
        list(gz_csv_chunks(bad, tmp_path / "o"))


def test_mimic_demo_labevents_in_chunks(tmp_path):
    with duckdb.connect() as con:
        whole = whole_rows(con, DEMO_LAB)
        rows, chunks = chunked_rows(con, DEMO_LAB, tmp_path, 2 * 2**20)
    assert len(chunks) >= 5 and sum(c.records for c in chunks) == len(whole) > 100_000
    assert rows == whole


def test_quote_never_closed_stops_at_the_record_limit(tmp_path, monkeypatch):
    """An opening quote that never closes: the chunker does not hold the rest of the file."""
    import pipeline.sources.csv_chunks as cc
    monkeypatch.setattr(cc, "MAX_RECORD_BYTES", 50_000)
    text = b"a,b,c\n" + b"1,2,3\n" * 25_000 + b'4,"5,6\n' + b"7,8,9\n" * 20_000   # past the sniffing sample
    path = write(tmp_path, text, True)
    with pytest.raises(NotChunkable, match="a record over 50,000 bytes"):
        list(gz_csv_chunks(path, tmp_path / "o", chunk_bytes=1000))


def test_an_error_leaves_no_unyielded_chunk(tmp_path):
    text = b"a,b,c\n" + b"1,2,3\n" * 25_000 + b'4,x"y,6\n'     # past the sniffing sample
    path = write(tmp_path, text, True)
    out, got = tmp_path / "o", []
    with pytest.raises(NotChunkable):
        for c in gz_csv_chunks(path, out, chunk_bytes=40_000):
            got.append(c.path)
    assert got and sorted(out.iterdir()) == sorted(got)       # only the yielded chunks remain
