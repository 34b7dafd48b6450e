"""Hypothesis fuzzing of every reader of user files: WFDB headers and signal files, each
CSV table's columns and cell types (patients, admissions, icustays, labevents, chartevents,
omr, record_list.csv, the CXR metadata, notes) and the CXR metadata times.

Whatever the input, a reader returns its table or raises ``DataError``; never another
exception.  A table reader loses no row silently: every input row is in the output or
has a quarantine row naming the file."""
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import DataError, Quarantine
from tests.test_wfdb_plain import both_ways

FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# cells: valid-looking values of every kind and the garbage seen in real exports
CELLS = st.one_of(
    st.none(), st.just(""), st.just("   "), st.integers(-10**12, 10**12).map(str), st.floats(allow_nan=True).map(str),
    st.sampled_from(["2150-01-01 08:00:00", "2150-13-45 99:00", "2150-01-01", "01/02/2150", "yesterday", "NaN",
                     "inf", "-0", "1e400", "12,5", "> 89", "abc", "mg/dL", "mmol/L", "furlongs", "\u00e9\u00e8",
                     "a\nb", '"quoted"', "10000032", "20000001"]),
    st.text(max_size=12))

TABLES = {
    "patients": (["subject_id", "gender", "anchor_age", "anchor_year"], ["dod", "anchor_year_group"]),
    "admissions": (["subject_id", "hadm_id", "admittime", "dischtime"],
                   ["deathtime", "hospital_expire_flag", "race", "ethnicity", "admission_type"]),
    "icustays": (["subject_id", "hadm_id", "stay_id", "intime", "outtime"], ["los"]),
    "labevents": (["subject_id", "itemid", "charttime", "valuenum"],
                  ["labevent_id", "hadm_id", "specimen_id", "valueuom", "storetime", "value"]),
    "chartevents": (["subject_id", "itemid", "charttime", "valuenum"], ["hadm_id", "stay_id", "valueuom"]),
    "omr": (["subject_id", "chartdate", "result_name", "result_value"], ["seq_num"]),
}


@st.composite
def table(draw, required, optional, min_rows=0):
    """A frame with the required columns (sometimes one missing), some optional ones, fuzzed cells."""
    cols = list(required) + [c for c in optional if draw(st.booleans())]
    if draw(st.integers(0, 9)) == 0:
        cols.remove(draw(st.sampled_from(list(required))))
    n = draw(st.integers(min_rows, 6))
    return pd.DataFrame({c: draw(st.lists(CELLS, min_size=n, max_size=n)) for c in cols}, dtype=object)


def _no_silent_loss(n_in: int, out: pd.DataFrame, q: Quarantine, file: Path) -> None:
    rows = {r.row for r in q.rows}
    assert len(out) + len(rows) >= n_in, "a row vanished without a quarantine row"
    assert all(r.file == str(file) or r.file.endswith(file.name) for r in q.rows)


def _read_small_table(reader, df: pd.DataFrame, file: str, name: str) -> None:
    """Write ``df`` as ROOT/``file`` and read it: a named DataError, or every row kept or quarantined."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / file
        path.parent.mkdir()
        df.to_parquet(path) if path.suffix == ".parquet" else df.to_csv(path, index=False)
        q = Quarantine()
        try:
            out = reader(Path(d), q)
        except DataError as e:
            assert e.file and name in e.file
            return
        _no_silent_loss(len(df), out, q, path)


@FUZZ
@given(df=table(*TABLES["patients"]))
def test_patients_reader(df):
    from pipeline.sources.mimic_iv import read_patients
    _read_small_table(read_patients, df, "hosp/patients.csv", "patients.csv")


@FUZZ
@given(df=table(*TABLES["admissions"]))
def test_admissions_reader(df):
    from pipeline.sources.mimic_iv import read_admissions
    file = "hosp/admissions.parquet" if len(df.columns) % 2 else "hosp/admissions.csv.gz"
    _read_small_table(read_admissions, df, file, "admissions")


@FUZZ
@given(df=table(*TABLES["icustays"]))
def test_icustays_reader(df):
    from pipeline.sources.mimic_iv import read_icustays
    _read_small_table(read_icustays, df, "icu/icustays.csv", "icustays.csv")


@FUZZ
@given(table_name=st.sampled_from(["labevents", "chartevents", "omr"]), data=st.data())
def test_event_tables_reader(table_name, data):
    from pipeline.sources.mimic_iv import ingest_events
    df = data.draw(table(*TABLES[table_name]))
    with tempfile.TemporaryDirectory() as d:
        sub = Path(d) / ("icu" if table_name == "chartevents" else "hosp")
        sub.mkdir()
        path = sub / f"{table_name}.csv.gz"
        df.to_csv(path, index=False)
        (Path(d) / "out").mkdir()
        q = Quarantine()
        try:
            info = ingest_events(Path(d), Path(d) / "out", q)
        except DataError as e:
            assert e.file and table_name in e.file
            return
        ev = pd.read_parquet(Path(d) / "out" / "events.parquet")
        assert info["event_rows"] == len(ev) and ev["value"].map(np.isfinite).all()
        assert all(r.file == str(path) for r in q.rows)
        assert all(r.row.startswith("line ") or r.row.startswith("subject_id=") or r.row == "" for r in q.rows)


@FUZZ
@given(df=table(["subject_id", "study_id", "ecg_time", "path"], ["file_name"]))
def test_record_list_reader(df):
    from pipeline.sources.ecg import read_record_list
    with tempfile.TemporaryDirectory() as d:
        df.to_csv(Path(d) / "record_list.csv", index=False)
        q = Quarantine()
        try:
            out = read_record_list(Path(d), q)
        except DataError as e:
            assert e.file and "record_list.csv" in e.file
            return
        assert len(out) == 0                                   # no record file exists: every row quarantined
        assert len({r.row for r in q.rows}) >= len(df)


@FUZZ
@given(df=table(["dicom_id", "subject_id", "study_id", "StudyDate", "StudyTime"], ["ViewPosition", "Rows"]))
def test_cxr_metadata_reader(df):
    from pipeline.sources.imaging import read_cxr_metadata
    with tempfile.TemporaryDirectory() as d:
        df.to_csv(Path(d) / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
        q = Quarantine()
        try:
            out = read_cxr_metadata(Path(d), q)
        except DataError as e:
            assert e.file and "mimic-cxr" in e.file
            return
        assert len(out) == 0 and len({r.row for r in q.rows}) >= len(df)   # no image exists


@FUZZ
@given(df=table(["note_id", "subject_id", "charttime", "text"], ["hadm_id", "note_type", "storetime"]))
def test_notes_reader(df):
    from pipeline.sources.notes import read_note_file
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "radiology.csv.gz"
        df.to_csv(path, index=False)
        q = Quarantine()
        try:
            out = read_note_file(path, q)
        except DataError as e:
            assert e.file and "radiology" in e.file
            return
        _no_silent_loss(len(df), out, q, path)


@FUZZ
@given(date=st.one_of(CELLS, st.dates().map(lambda x: x.strftime("%Y%m%d"))),
       time=st.one_of(CELLS, st.floats(-1, 250000), st.integers(0, 235959).map(str)))
def test_cxr_study_times(date, time):
    from pipeline.sources.imaging import _study_time
    when, date_ok, time_ok = _study_time(pd.Series([date], dtype="string"), pd.Series([time], dtype="string"))
    if bool(date_ok.iloc[0] and time_ok.iloc[0]):
        secs = float(time)
        hh, mm, ss = int(secs) // 10000, int(secs) // 100 % 100, int(secs) % 100
        ymd = str(date).strip().split(".")[0]
        assert len(ymd) == 8 and ymd.isdigit()                    # DICOM dates are YYYYMMDD
        day = pd.to_datetime(ymd, format="%Y%m%d")
        assert when.iloc[0].floor("s") == day + pd.Timedelta(hours=hh, minutes=mm, seconds=ss)
        assert hh < 24 and mm < 60 and ss < 60
    else:
        assert pd.isna(when.iloc[0])


SIGNAL_LINE = st.tuples(
    st.sampled_from(["r.dat", "other.dat", "~", "r.dat"]),
    st.sampled_from(["16", "212", "80", "8", "24", "32", "xx", "16x2", "16+24", "16:1", "310"]),
    st.sampled_from(["200", "0", "abc", "200(0)/mV", "1000/uV", "200/degC", "-5", ""]),
    st.sampled_from(["16", "12", "0", "x"]), st.sampled_from(["0", "1024", "-3"]),
    st.sampled_from(["I", "II", "V1", "MLII", "aVR", "V", "PLETH", "lead V6", ""]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_sig=st.sampled_from(["0", "1", "2", "3", "x", "-1"]),
       fs=st.sampled_from(["500", "250", "0", "-1", "abc", "360/1", "128.5"]),
       sig_len=st.sampled_from(["", "0", "10", "1000", "5000", "99999", "x"]),
       sigs=st.lists(SIGNAL_LINE, min_size=0, max_size=4),
       extra=st.lists(st.text(max_size=30), max_size=2),
       nbytes=st.integers(0, 24000), seed=st.integers(0, 3))
def test_wfdb_header_and_signal_reader(n_sig, fs, sig_len, sigs, extra, nbytes, seed):
    from pipeline.sources.ecg import check_record_files, inspect_ecg, load_ecg
    lines = [" ".join(x for x in ("r", n_sig, fs, sig_len) if x)]
    lines += [" ".join(s[:5]) + f" 0 0 0 {s[5]}".rstrip() for s in sigs] + extra
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "r.hea").write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogateescape")
        (Path(d) / "r.dat").write_bytes(np.random.default_rng(seed).bytes(nbytes))
        for fn in (lambda: load_ecg(Path(d) / "r"), lambda: check_record_files(Path(d) / "r")):
            try:
                fn()
            except DataError as e:
                assert e.file and Path(d).name in e.file
        v = inspect_ecg(pd.DataFrame({"path": [str(Path(d) / "r")]}))[0]
        assert v["verdict"] in ("ok", "warn", "bad") and not any("unexpected error" in r for r in v["reasons"])
        plain, via_wfdb = both_ways(Path(d) / "r")      # the plain reader changes nothing
        assert plain == via_wfdb


@pytest.mark.parametrize("n", [0, 1])
def test_empty_and_header_only_tables_are_clear(n, tmp_path):
    """A table that is empty (0 bytes) is a DataError naming it; header only gives no rows."""
    from pipeline.sources.mimic_iv import read_patients
    (tmp_path / "hosp").mkdir()
    (tmp_path / "hosp" / "patients.csv").write_text("subject_id,gender,anchor_age,anchor_year\n" if n else "")
    try:
        out = read_patients(tmp_path, Quarantine())
        assert n == 1 and len(out) == 0
    except DataError as e:
        assert n == 0 and "patients.csv" in e.file
