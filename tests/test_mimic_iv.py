import shutil

import pandas as pd
import pytest

from pipeline.errors import DataError, Quarantine
from pipeline.sources.mimic_iv import KEEPS_FILE_ORDER, ingest_mimic_iv, read_admissions, read_patients
from tests.ehr_fixtures import ADMISSIONS, PATIENTS, write_mimic


def test_reads_tables_and_events(tmp_path):
    root = write_mimic(tmp_path / "m")
    q = Quarantine()
    info = ingest_mimic_iv(root, tmp_path / "out", q)
    assert len(q) == 0
    assert info["event_tables_found"] == ["labevents"]
    assert "chartevents" in info["tables_absent"] and "icustays" in info["tables_absent"]
    ev = pd.read_parquet(tmp_path / "out" / "events.parquet")
    assert len(ev) == 6 and set(ev["code"]) == {"lab:50813"}
    assert str(ev["time"].dtype).startswith("datetime64")
    codes = pd.read_parquet(tmp_path / "out" / "codes.parquet")
    assert dict(zip(codes.code, codes.label))["lab:50813"] == "Lactate"


def test_missing_required_column_names_file_and_field(tmp_path):
    root = write_mimic(tmp_path / "m", admissions=ADMISSIONS.drop(columns=["admittime"]))
    with pytest.raises(DataError) as e:
        read_admissions(root, Quarantine())
    assert "admissions.csv.gz" in str(e.value) and "admittime" in str(e.value)
    assert e.value.field == "admittime"


def test_ethnicity_is_renamed_to_race(tmp_path):
    root = write_mimic(tmp_path / "m", admissions=ADMISSIONS.rename(columns={"race": "ethnicity"}))
    adm = read_admissions(root, Quarantine())
    assert "race" in adm.columns and adm["race"].iloc[0] == "WHITE"


def test_bad_rows_are_quarantined_and_the_rest_kept(tmp_path):
    adm = ADMISSIONS.copy()
    adm.loc[1, "admittime"] = "not a date"          # unparseable time
    adm.loc[2, "hadm_id"] = 11                       # duplicated id
    adm.loc[5, "dischtime"] = "2149-12-31 00:00:00"  # discharge before admission
    adm.loc[6, "subject_id"] = 99                    # subject not in patients
    root = write_mimic(tmp_path / "m", admissions=adm)
    q = Quarantine()
    pats = read_patients(root, q)
    out = read_admissions(root, q, pats)
    reasons = q.to_frame()
    assert set(out["hadm_id"]) == {11, 41, 51}       # every good row kept
    assert len(reasons) == 4
    row = reasons[reasons.field == "admittime"].iloc[0]
    assert row.row == "3" and row.file.endswith("admissions.csv.gz")  # line 3 = data row 2
    assert "duplicated" in " ".join(reasons.reason) and "before admittime" in " ".join(reasons.reason)


def test_duplicate_patient_quarantined(tmp_path):
    pats = pd.concat([PATIENTS, PATIENTS.iloc[[0]]], ignore_index=True)
    root = write_mimic(tmp_path / "m", patients=pats)
    q = Quarantine()
    out = read_patients(root, q)
    assert len(out) == 6 and len(q) == 1 and q.rows[0].field == "subject_id"


def test_unparseable_event_time_is_quarantined(tmp_path):
    from tests.ehr_fixtures import LABS
    labs = LABS.copy()
    labs.loc[0, "charttime"] = "garbage"
    root = write_mimic(tmp_path / "m", labs=labs)
    q = Quarantine()
    ingest_mimic_iv(root, tmp_path / "out", q)
    assert len(pd.read_parquet(tmp_path / "out" / "events.parquet")) == 5
    assert q.rows[0].row == "line 2" and q.rows[0].field == "time"  # the user's file and line


def test_missing_event_column_is_an_error(tmp_path):
    from tests.ehr_fixtures import LABS
    root = write_mimic(tmp_path / "m", labs=LABS.drop(columns=["valuenum"]))
    with pytest.raises(DataError, match="valuenum"):
        ingest_mimic_iv(root, tmp_path / "out", Quarantine())


def test_real_demo(mimic_demo, tmp_path):
    q = Quarantine()
    info = ingest_mimic_iv(mimic_demo, tmp_path, q)
    assert pd.read_parquet(tmp_path / "patients.parquet").shape[0] == 100
    adm = pd.read_parquet(tmp_path / "admissions.parquet")
    assert len(adm) == 275 and adm["hospital_expire_flag"].sum() == 15
    assert "chartevents" in info["tables_absent"]           # not in the demo copy
    assert "omr" in info["event_tables_found"]
    ev = pd.read_parquet(tmp_path / "events.parquet")
    assert ev["code"].str.startswith("omr:Blood Pressure").any()   # "120/80" split in two
    assert (ev["source"] == "labevents").sum() > 90_000
    # The grouped / joined / unioned parts (and the drug classes) are written sorted by subject, so
    # a feature shard of consecutive subjects skips the other subjects' row groups (in the demo's
    # files omr, diagnoses, inputevents and micro rows are out of subject order: 37-730 steps back).
    for (source, medclass), g in ev.groupby([ev["source"], ev["code"].str.startswith("medclass:")], sort=False):
        if source not in KEEPS_FILE_ORDER or medclass:
            assert (g["subject_id"].diff() < 0).sum() <= 2, (source, medclass)


def test_units_are_harmonised_or_quarantined(tmp_path):
    from tests.ehr_fixtures import LABS
    labs = pd.concat([LABS, LABS.iloc[[0, 1]]], ignore_index=True)
    labs.loc[6, ["labevent_id", "valuenum", "valueuom"]] = [7, 18.016, "mg/dL"]   # convertible: lactate mg/dL
    labs.loc[7, ["labevent_id", "valuenum", "valueuom"]] = [8, 3.0, "furlongs"]   # unknown unit
    root = write_mimic(tmp_path / "m", labs=labs)
    q = Quarantine()
    info = ingest_mimic_iv(root, tmp_path / "out", q)
    ev = pd.read_parquet(tmp_path / "out" / "events.parquet")
    assert len(ev) == 7 and info["unit_converted"] == 1 and info["unit_unknown_dropped"] == 1
    assert abs(ev["value"].max() - 9.5) < 1e-9 and (ev["value"].round(6) == 2.0).sum() == 2
    assert set(ev["unit"].str.lower()) == {"mmol/l"}
    assert "unknown unit" in q.rows[0].reason and "furlongs" in q.rows[0].reason


def test_event_order_does_not_change_features(tmp_path):
    """Non-monotonic times in the source give the same features as sorted ones."""
    from pipeline.config import EHRConfig, TaskConfig
    from pipeline.stages.cohort import build_cohort
    from pipeline.stages.featurize_ehr import featurize_ehr
    from tests.ehr_fixtures import LABS
    out = []
    for name, labs in (("sorted", LABS), ("shuffled", LABS.sample(frac=1, random_state=3))):
        root = write_mimic(tmp_path / name, labs=labs)
        ingest_mimic_iv(root, tmp_path / name / "ing", Quarantine())
        cohort, _ = build_cohort(pd.read_parquet(tmp_path / name / "ing" / "patients.parquet"),
                                 pd.read_parquet(tmp_path / name / "ing" / "admissions.parquet"), None, TaskConfig())
        (tmp_path / name / "fe").mkdir()
        featurize_ehr(cohort, tmp_path / name / "ing", EHRConfig(), tmp_path / name / "fe", codes=["lab:50813"])
        out.append(pd.read_parquet(tmp_path / name / "fe" / "features.parquet"))
    pd.testing.assert_frame_equal(out[0], out[1])


def test_events_after_death_are_quarantined(tmp_path):
    from tests.ehr_fixtures import LABS
    labs = LABS.copy()
    labs.loc[4, "charttime"] = "2150-01-09 12:00:00"   # subject 2 died 2150-01-05
    root = write_mimic(tmp_path / "m", labs=labs)
    q = Quarantine()
    info = ingest_mimic_iv(root, tmp_path / "out", q)
    assert info["events_after_death"] == 1
    assert len(pd.read_parquet(tmp_path / "out" / "events.parquet")) == 5
    assert "event after death" in q.rows[0].reason and "subject_id=2" in q.rows[0].row
    assert str(q.rows[0].file).endswith("labevents.csv.gz")   # the user's own file, not the events artifact


def test_big_event_files_staged_in_chunks_equal_the_whole_files(synth_root, tmp_path, monkeypatch):
    """labevents / chartevents cut into plain-CSV chunks (csv_chunks), staged two at a time, give
    the same events and the same quarantine rows (exact duplicates named by their line in the
    user's file) as the whole files; a file that cannot be cut the way DuckDB reads it (a stray
    quote after the first chunks) is read whole instead, with the same result."""
    import gzip

    from pipeline.sources import csv_chunks, mimic_iv

    root = synth_root / "mimic-iv"
    lab = root / "hosp" / "labevents.csv.gz"
    lines = gzip.decompress(lab.read_bytes()).decode().splitlines(keepends=True)
    stray = tmp_path / "stray" / "mimic-iv"
    shutil.copytree(root, stray)
    k = len(lines) * 3 // 4
    cells = lines[k].split(",")
    cells[-1] = 'bad"quote' + cells[-1]            # a quote inside an unquoted field
    (stray / "hosp" / "labevents.csv.gz").write_bytes(gzip.compress("".join(lines[:k] + [",".join(cells)]
                                                                            + lines[k + 1:]).encode()))

    def ingest(src, out):
        q = Quarantine()
        ingest_mimic_iv(src, out, q)
        ev = pd.read_parquet(out / "events.parquet")
        return (ev.sort_values(list(ev.columns)).reset_index(drop=True),
                q.to_frame().astype(str).sort_values(["file", "row", "field", "reason"]).reset_index(drop=True))

    expected = {name: ingest(src, tmp_path / f"whole_{name}") for name, src in (("clean", root), ("stray", stray))}
    assert expected["clean"][1]["reason"].str.startswith("exact duplicate row").sum() > 10

    cut, refused = [], []

    def spy(path, out_dir, chunk_bytes):
        try:
            for c in real(path, out_dir, chunk_bytes):
                cut.append((path.name, c.first_line))
                yield c
        except csv_chunks.NotChunkable:
            refused.append(path.name)
            raise
    real = csv_chunks.gz_csv_chunks
    monkeypatch.setattr(mimic_iv, "CHUNKED_MIN_BYTES", 0)
    monkeypatch.setattr(csv_chunks, "CHUNK_BYTES", 200_000)
    monkeypatch.setattr(csv_chunks, "gz_csv_chunks", spy)
    for name, src in (("clean", root), ("stray", stray)):
        events, quarantine = ingest(src, tmp_path / f"chunked_{name}")
        pd.testing.assert_frame_equal(events, expected[name][0])
        pd.testing.assert_frame_equal(quarantine, expected[name][1])
    assert sum(1 for f, _ in cut if f == "labevents.csv.gz") > 10 and any(f == "chartevents.csv.gz" for f, _ in cut)
    assert refused == ["labevents.csv.gz"]
    assert not list(tmp_path.glob("chunked_*/.events.stage"))     # chunks and staging removed


def test_a_chunk_duckdb_cannot_read_is_reported_on_the_whole_file(synth_root, tmp_path, monkeypatch):
    """A row DuckDB refuses (too few columns) in a late chunk: the error names the user's file,
    as for a file read whole, never a chunk file."""
    import gzip

    from pipeline.sources import csv_chunks, mimic_iv

    root = tmp_path / "short" / "mimic-iv"
    shutil.copytree(synth_root / "mimic-iv", root)
    lab = root / "hosp" / "labevents.csv.gz"
    lines = gzip.decompress(lab.read_bytes()).decode().splitlines(keepends=True)
    k = len(lines) * 3 // 4
    lines[k] = ",".join(lines[k].split(",")[:3]) + "\n"
    lab.write_bytes(gzip.compress("".join(lines).encode()))
    monkeypatch.setattr(mimic_iv, "CHUNKED_MIN_BYTES", 0)
    monkeypatch.setattr(csv_chunks, "CHUNK_BYTES", 200_000)
    with pytest.raises(DataError) as e:
        ingest_mimic_iv(root, tmp_path / "run", Quarantine())
    assert e.value.file == str(lab) or str(lab) in str(e.value)
    assert ".chunks" not in str(e.value)
