"""MEDS out (``mmpipe export``) and MEDS in (``--data`` a MEDS root): validity and round trips."""
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import meds
from pipeline.artifacts import write_json
from pipeline.cli import app
from pipeline.config import RunConfig
from pipeline.errors import DataError, Quarantine
from pipeline.jobs.export import export_meds, validate_meds
from pipeline.jobs.prepare import prepare
from pipeline.sources.discover import discover
from pipeline.sources.meds import canonical_code, cohort_from_labels, ingest_meds, meds_code

T = pd.Timestamp


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(list(df.columns)).reset_index(drop=True)


def _same_table(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert set(a.columns) == set(b.columns), (set(a.columns) ^ set(b.columns))
    pd.testing.assert_frame_equal(_sorted(a), _sorted(b[a.columns]))


# ---------------------------------------------------------------- codes

def test_codes_follow_the_mimic_iv_meds_etl_and_read_back():
    assert meds_code("lab:50912", "mg/dL") == "LAB//50912//mg/dL"
    assert meds_code("lab:50912", None) == "LAB//50912//UNK"
    assert meds_code("chart:220045", "bpm") == "LAB//220045//bpm"      # chartevents, as the community ETL
    assert meds_code("omr:Weight (Lbs)") == "OMR//Weight (Lbs)"
    assert meds_code("dx:icd10:I50") == "DX//icd10:I50"
    for code, unit in [("lab:50912", "mg/dL"), ("chart:220045", "bpm"), ("chart:x1", None), ("lab:BUN", "mg/dL"),
                       ("omr:Blood Pressure systolic", "mmHg"), ("dx:icd10:I50", None), ("bare code", None)]:
        assert canonical_code(meds_code(code, unit))[0] == code
    # the community ETL's codes
    assert canonical_code("LAB//RESULT//50912//mg/dL") == ("lab:50912", "mg/dL")
    assert canonical_code("LAB//220045//bpm") == ("chart:220045", "bpm")
    assert canonical_code("LAB//51301//UNK") == ("lab:51301", None)
    assert canonical_code("DIAGNOSIS//ICD//10//I50") == ("diagnosis:ICD//10//I50", None)
    assert canonical_code("Weight (Lbs)") == ("Weight (Lbs)", None)
    for structural in ("MEDS_BIRTH", "MEDS_DEATH", "GENDER//F", "HOSPITAL_ADMISSION//EW EMER.//UNK",
                       "HOSPITAL_DISCHARGE//DIED", "ICU_ADMISSION//MICU", "ECG//RECORD", "NOTE//radiology"):
        assert canonical_code(structural) == (None, None)


# ---------------------------------------------------------------- a small hand-made run

def _tiny_run(run: Path) -> dict[str, pd.DataFrame]:
    """A run folder as `mmpipe train` leaves it (stages ingest_ehr, cohort, index_*), by hand:
    chart codes, a value float32 cannot hold, known_time and other extra events, patients and
    admissions columns, a new code family without values, a lab code by name (eICU style), an
    open admission, pointers to an ECG, a note, an image."""
    ehr = run / "stages" / "ingest_ehr"
    ehr.mkdir(parents=True)
    tables = {
        "patients": pd.DataFrame({"subject_id": [1, 2, 3], "gender": ["M", "F", "F"], "anchor_age": [70, 55, 40],
                                  "anchor_year": [2150, 2150, 2151], "anchor_year_group": ["2011 - 2013"] * 3,
                                  "dod": [pd.NaT, T("2150-01-05"), T("2151-06-01")]}).astype({"dod": "datetime64[ns]"}),
        "admissions": pd.DataFrame({
            "subject_id": [1, 2, 1, 3], "hadm_id": [11, 21, 12, 31],
            "admittime": [T("2150-01-01 08:00"), T("2150-01-01 09:00"), T("2150-06-01 08:00"), T("2151-02-01")],
            "dischtime": [T("2150-01-06 08:00"), T("2150-01-05 08:00"), T("2150-06-03 08:00"), pd.NaT],
            "deathtime": [pd.NaT, T("2150-01-05 08:00"), pd.NaT, pd.NaT],
            "hospital_expire_flag": [0, 1, 0, 0], "admission_type": ["URGENT", "EW EMER.", None, "URGENT"],
            "race": ["WHITE", "BLACK", "WHITE", None], "insurance": ["Medicare", None, "Other", "Other"],
            "edregtime": [T("2150-01-01 06:00"), pd.NaT, pd.NaT, pd.NaT]}),
        "icustays": pd.DataFrame({"subject_id": [2], "hadm_id": pd.array([21], dtype="Int64"), "stay_id": [210],
                                  "intime": [T("2150-01-01 12:00")], "outtime": [pd.NaT]}),
        "events": pd.DataFrame({
            "subject_id": [1, 1, 1, 2, 2, 2, 1, 3],
            "hadm_id": [11.0, 11.0, 11.0, 21.0, 21.0, np.nan, np.nan, 31.0],
            "time": [T("2150-01-01 10:00"), T("2150-01-01 10:00"), T("2150-01-02 06:00"), T("2150-01-01 12:30"),
                     T("2150-01-01 13:00"), T("2149-12-01 23:59:59"), T("2150-01-01 23:59:59"), T("2151-02-01 01:00")],
            "code": ["lab:50813", "lab:50813", "chart:223762", "chart:220045", "lab:creatinine",
                     "dx:icd10:I50", "omr:Weight (Lbs)", "lab:50813"],
            "value": [2.0, 2.5, (98.6 - 32) * 5 / 9, 88.0, 1.1, np.nan, 180.4, 1e-9 / 3],
            "unit": ["mmol/L", "mmol/L", "°C", "bpm", "mg/dL", None, None, "mmol/L"],
            "source": ["labevents", "labevents", "chartevents", "chartevents", "lab", "diagnoses_icd", "omr",
                       "labevents"],
            "known_time": [T("2150-01-01 11:00"), T("2150-01-01 11:30"), T("2150-01-02 06:00"),
                           T("2150-01-01 12:30"), T("2150-01-01 14:00"), T("2149-12-01 23:59:59"),
                           T("2150-01-01 23:59:59"), T("2151-02-01 03:00")],
            "priority": ["STAT", None, None, None, None, None, None, "ROUTINE"]}).astype(
            {"time": "datetime64[ns]", "known_time": "datetime64[ns]"}),
        "codes": pd.DataFrame({"code": ["lab:50813", "chart:220045"], "label": ["Lactate", "Heart Rate"]}),
    }
    for name, df in tables.items():
        df.to_parquet(ehr / f"{name}.parquet", index=False)
    cohort = pd.DataFrame({"subject_id": [1, 2, 1], "hadm_id": [11, 21, 12],
                           "prediction_time": [T("2150-01-02 08:00"), T("2150-01-02 09:00"), T("2150-06-02 08:00")],
                           "label": [0, 1, 0], "split": ["train", "test", "train"], "age": [70.0, 55.0, 70.0],
                           "gender": ["M", "F", "M"]}).astype({"prediction_time": "datetime64[ns]"})
    (run / "stages" / "cohort").mkdir(parents=True)
    cohort.to_parquet(run / "stages" / "cohort" / "cohort.parquet", index=False)
    for stage, name, df in (
            ("index_ecg", "ecg_index.parquet", pd.DataFrame({"subject_id": [1], "study_id": [9001],
                                                             "ecg_time": [T("2150-01-01 09:00")],
                                                             "path": ["/data/ecg/files/p1/s9001/9001"]})),
            ("index_notes", "notes.parquet", pd.DataFrame({"note_id": ["1-RR-1"], "subject_id": [2], "hadm_id": [21.0],
                                                           "note_type": ["radiology"],
                                                           "charttime": [T("2150-01-01 15:00")], "text": ["secret"]})),
            ("index_imaging", "imaging_index.parquet", pd.DataFrame({
                "subject_id": [2], "study_id": [5001], "dicom_id": ["abc-1"], "image_time": [T("2150-01-01 16:00")],
                "view_position": ["PA"], "path": ["/data/cxr/files/p2/s5001/abc-1.jpg"]}))):
        (run / "stages" / stage).mkdir(parents=True)
        df.to_parquet(run / "stages" / stage / name, index=False)
    write_json(RunConfig.model_validate({"task": {"name": "los3"}}).model_dump(mode="json"), run / "config.json")
    return {**tables, "cohort": cohort}


def test_export_is_valid_meds_with_pointers_labels_and_splits(tmp_path):
    tables = _tiny_run(tmp_path / "run")
    out = tmp_path / "meds"
    res = CliRunner().invoke(app, ["export", "--run", str(tmp_path / "run"), "--to", "meds", str(out)])
    assert res.exit_code == 0, res.output
    assert "valid MEDS" in res.output
    # the meds package's own schemas, on every file
    shards = sorted((out / "data").rglob("*.parquet"))
    assert {p.parent.name for p in shards} == {"train", "held_out", "unlabelled"}
    data = pd.concat([pq.read_table(p).to_pandas().assign(_shard=p.parent.name) for p in shards])
    for p in shards:
        meds.DataSchema.validate(pq.read_table(p))
    meds.CodeMetadataSchema.validate(pq.read_table(out / "metadata" / "codes.parquet"))
    meds.SubjectSplitSchema.validate(pq.read_table(out / "metadata" / "subject_splits.parquet"))
    labels = pq.read_table(out / "task_labels" / "los3" / "labels.parquet")
    meds.LabelSchema.validate(labels)
    meta = pd.read_json(out / "metadata" / "dataset.json", typ="series")
    meds.DatasetMetadataSchema.validate(meta.to_dict())
    assert meta["etl_name"] == "mmpipe" and "known_time" in meta["other_extension_columns"]
    assert pq.read_schema(shards[0]).field("time").type == pa.timestamp("us")
    assert pq.read_schema(shards[0]).field("numeric_value").type == pa.float32()
    # every subject in one shard, in time order (static rows first)
    assert data.groupby("subject_id")["_shard"].nunique().max() == 1
    assert data.loc[data.subject_id == 3, "_shard"].iloc[0] == "unlabelled"
    for _, g in data.groupby("subject_id", sort=False):
        t = g["time"]
        assert t.isna().cummin().sum() == t.isna().sum() and t.dropna().is_monotonic_increasing
    # structural codes as the MIMIC-IV MEDS ETL writes them
    codes = set(data["code"])
    assert {"MEDS_BIRTH", "MEDS_DEATH", "GENDER//M", "HOSPITAL_ADMISSION//EW EMER.//UNK",
            "HOSPITAL_DISCHARGE//UNK", "ICU_ADMISSION//UNK", "LAB//50813//mmol/L", "LAB//220045//bpm"} <= codes
    birth = data[(data.code == "MEDS_BIRTH") & (data.subject_id == 1)]
    assert birth["time"].iloc[0] == T("2080-01-01")
    death = data[data.code == "MEDS_DEATH"]
    # at the admission's deathtime (with its hadm_id), else at dod
    assert death[["subject_id", "time"]].values.tolist() == [[2, T("2150-01-05 08:00")], [3, T("2151-06-01")]]
    assert death["hadm_id"].iloc[0] == 21 and pd.isna(death["hadm_id"].iloc[1])
    # pointers carry their ids; the note's text is not exported
    ecg = data[data.code == "ECG//RECORD"].iloc[0]
    assert ecg["file_path"] == "/data/ecg/files/p1/s9001/9001" and ecg["study_id"] == 9001
    note = data[data.code == "NOTE//radiology"].iloc[0]
    assert note["note_id"] == "1-RR-1" and "secret" not in data.astype(str).to_numpy().ravel().tolist()
    img = data[data.code == "IMAGE//CXR//PA"].iloc[0]
    assert img["dicom_id"] == "abc-1" and img["file_path"].endswith("abc-1.jpg")
    # known_time travels as an extra column; a value float32 cannot hold keeps its float64
    lab = data[data.code == "LAB//50813//mmol/L"].sort_values("time")
    assert lab["known_time"].iloc[0] == T("2150-01-01 11:00")
    assert lab["numeric_value_exact"].isna().iloc[0]   # 2.0 is exact in float32
    assert data.loc[data.subject_id == 3, "numeric_value_exact"].dropna().tolist() == [1e-9 / 3]
    # codes.parquet: descriptions from the code labels
    cm = pd.read_parquet(out / "metadata" / "codes.parquet").set_index("code")["description"]
    assert cm["LAB//50813//mmol/L"] == "Lactate" and set(data["code"]) <= set(cm.index)
    splits = pd.read_parquet(out / "metadata" / "subject_splits.parquet").set_index("subject_id")["split"]
    assert splits.to_dict() == {1: "train", 2: "held_out"}
    lab_df = labels.to_pandas()
    assert lab_df["boolean_value"].tolist() == [False, True, False]
    assert lab_df["prediction_time"].tolist() == tables["cohort"]["prediction_time"].tolist()

    # MEDS in: the canonical tables come back exactly
    back = tmp_path / "back"
    back.mkdir()
    q = Quarantine()
    info = ingest_meds(out, back, q)
    assert len(q) == 0 and info["cleaning"] == "done by the exporting run"
    for name in ("patients", "admissions", "icustays", "events"):
        _same_table(tables[name], pd.read_parquet(back / f"{name}.parquet"))
    assert set(pd.read_parquet(back / "codes.parquet").dropna()["label"]) == {"Lactate", "Heart Rate"}

    # exporting again replaces the earlier export; a foreign non-empty folder is refused; one format
    res = CliRunner().invoke(app, ["export", "--run", str(tmp_path / "run"), "--to", "csv", str(out)])
    assert res.exit_code == 2 and "unknown export format" in res.output
    export_meds(tmp_path / "run", out)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="not a MEDS export"):
        export_meds(tmp_path / "run", tmp_path / "other")
    assert (tmp_path / "other" / "keep.txt").exists()


def test_labels_from_a_meds_label_file_define_the_cohort(tmp_path):
    tables = _tiny_run(tmp_path / "run")
    export_meds(tmp_path / "run", tmp_path / "meds")
    back = tmp_path / "back"
    back.mkdir()
    ingest_meds(tmp_path / "meds", back, Quarantine())
    pats, adms = pd.read_parquet(back / "patients.parquet"), pd.read_parquet(back / "admissions.parquet")
    labels_file = tmp_path / "meds" / "task_labels" / "los3" / "labels.parquet"
    task = RunConfig().task
    q = Quarantine()
    cohort, counts = cohort_from_labels(labels_file, pats, adms, task, tmp_path / "meds", q)
    want = tables["cohort"]
    pd.testing.assert_frame_equal(cohort[want.columns].sort_values("hadm_id").reset_index(drop=True),
                                  want.sort_values("hadm_id").reset_index(drop=True))
    assert len(q) == 0
    # a label in no admission and a second label in one admission are quarantined, not guessed
    extra = pd.DataFrame({"subject_id": [1, 1], "prediction_time": [T("2150-03-01"), T("2150-01-03")],
                          "boolean_value": [True, True]}).astype({"prediction_time": "datetime64[us]"})
    folder = tmp_path / "labels"
    folder.mkdir()
    pd.read_parquet(labels_file).to_parquet(folder / "a.parquet")
    extra.to_parquet(folder / "b.parquet")
    q = Quarantine()
    cohort2, counts2 = cohort_from_labels(folder, pats, adms, task, tmp_path / "meds", q)
    assert len(cohort2) == 3 and counts2["labels_outside_admissions"] == 1 and counts2["labels_same_admission"] == 1
    assert {r.reason.split(" ")[0] for r in q.rows} == {"no", "a"}
    # overlapping admissions: the label goes to the latest admitted
    overlap = pd.concat([adms, adms.iloc[[0]].assign(hadm_id=13, admittime=T("2150-01-01 09:00"),
                                                     dischtime=T("2150-01-03"))], ignore_index=True)
    cohort3, _ = cohort_from_labels(labels_file, pats, overlap, task, tmp_path / "meds", Quarantine())
    assert sorted(cohort3["hadm_id"]) == [12, 13, 21]
    # a labelled subject missing from subject_splits is an error naming the file
    pq.write_table(pa.table({"subject_id": pa.array([2], pa.int64()), "split": ["held_out"]}),
                   tmp_path / "meds" / "metadata" / "subject_splits.parquet")
    with pytest.raises(DataError, match="subject 1 has a label but no split"):
        cohort_from_labels(labels_file, pats, adms, task, tmp_path / "meds", Quarantine())


# ---------------------------------------------------------------- the real MIMIC-IV demo

def test_mimic_demo_exported_to_meds_and_read_back_gives_same_cohort_and_features(mimic_demo, tmp_path):
    cfg = RunConfig.model_validate({"modalities": ["ehr"]})
    run = tmp_path / "run_csv"
    write_json(cfg.model_dump(mode="json"), run / "config.json")
    prep = prepare(discover(mimic_demo), cfg, run)
    assert len(prep.cohort) > 200
    res = CliRunner().invoke(app, ["export", "--run", str(run), "--to", "meds", str(tmp_path / "meds")])
    assert res.exit_code == 0, res.output
    assert validate_meds(tmp_path / "meds")["subjects"] == 100
    # the MEDS root is found below --data, beside another (ECG) source
    (tmp_path / "data").mkdir()
    (tmp_path / "meds").rename(tmp_path / "data" / "meds")
    (tmp_path / "data" / "ecg").mkdir()
    (tmp_path / "data" / "ecg" / "record_list.csv").write_text("subject_id,study_id,ecg_time,path\n")
    sources = discover(tmp_path / "data")
    assert sources.paths["meds"] == tmp_path / "data" / "meds" and sources.paths["ecg"] is not None
    assert sources.paths["mimic_iv"] is None
    prep2 = prepare(sources, cfg, tmp_path / "run_meds")
    for stage, name in (("cohort", "cohort.parquet"), ("features_ehr", "features.parquet")):
        a = pd.read_parquet(run / "stages" / stage / name)
        b = pd.read_parquet(tmp_path / "run_meds" / "stages" / stage / name)
        pd.testing.assert_frame_equal(a, b)
    for name in ("patients", "admissions", "icustays", "events"):
        _same_table(pd.read_parquet(run / "stages" / "ingest_ehr" / f"{name}.parquet"),
                    pd.read_parquet(prep2.stage_dirs["ingest_ehr"] / f"{name}.parquet"))
    # the exported labels as task.labels give the same cohort, splits from subject_splits.parquet
    cfg3 = RunConfig.model_validate({"modalities": ["ehr"], "task": {
        "name": "los7", "labels": str(tmp_path / "data" / "meds" / "task_labels" / "mortality")}})
    prep3 = prepare(sources, cfg3, tmp_path / "run_labels")
    pd.testing.assert_frame_equal(prep.cohort, prep3.cohort[prep.cohort.columns])
    # scoring uses the task's rule (los7 here), not the training labels
    codes = {"ehr_codes": list(pd.read_json(run / "stages" / "features_ehr" / "codes.json", typ="series")["codes"])}
    los7 = RunConfig.model_validate({"modalities": ["ehr"], "task": {"name": "los7"}})
    scored = prepare(sources, cfg3, tmp_path / "score_labels", mode="score", fitted=codes, align_table=False)
    by_rule = prepare(sources, los7, tmp_path / "score_rule", mode="score", fitted=codes, align_table=False)
    pd.testing.assert_frame_equal(scored.cohort, by_rule.cohort)
    assert (scored.cohort["label"].to_numpy() != prep.cohort["label"].to_numpy()).any()  # los7, not mortality


# ---------------------------------------------------------------- a dataset made by the community ETL

def _community_dataset(root: Path) -> None:
    """Rows as MIMIC-IV MEDS (MEDS-Extract) writes them: float32 values, a single MEDS_DEATH, lab
    results at storetime, omr by bare name with a text value, no mmpipe extra columns."""
    us = lambda s: T(s).as_unit("us")  # noqa: E731
    rows = [  # subject_id, time, code, numeric_value, text_value, hadm_id, icustay_id, race
        (7, None, "GENDER//F", None, None, None, None, None),
        (7, us("2090-01-01"), "MEDS_BIRTH", None, None, None, None, None),
        (7, us("2150-01-01 00:00"), "Weight (Lbs)", None, "180.4", None, None, None),
        (7, us("2150-01-01 08:00"), "HOSPITAL_ADMISSION//EW EMER.//EMERGENCY ROOM", None, None, 70, None, "WHITE"),
        (7, us("2150-01-01 10:00"), "ICU_ADMISSION//MICU", None, None, 70, 700, None),
        (7, us("2150-01-01 11:00"), "LAB//RESULT//50813//mmol/L", 2.1, "2.1", 70, None, None),
        (7, us("2150-01-01 11:00"), "LAB//RESULT//50813//mg/dL", 18.016, "18.016", 70, None, None),
        (7, us("2150-01-01 11:30"), "LAB//RESULT//51301//UNK", None, "NEG", 70, None, None),
        (7, us("2150-01-01 12:00"), "LAB//220045//bpm", 101.0, "101", 70, 700, None),
        (7, us("2150-01-02 06:00"), "DIAGNOSIS//ICD//10//I50", None, None, 70, None, None),
        (7, us("2150-01-03 09:00"), "ICU_DISCHARGE//MICU", None, None, 70, 700, None),
        (7, us("2150-01-03 10:00"), "MEDS_DEATH", None, None, None, None, None),
        (7, us("2150-01-03 10:00"), "HOSPITAL_DISCHARGE//DIED", None, None, 70, None, None),
        (7, us("2150-02-01 10:00"), "LAB//RESULT//50813//mmol/L", 1.0, "1.0", None, None, None),
        (8, None, "GENDER//M", None, None, None, None, None),
        (8, us("2100-01-01"), "MEDS_BIRTH", None, None, None, None, None),
        (8, us("2160-05-01 08:00"), "HOSPITAL_ADMISSION//URGENT//UNK", None, None, 80, None, "BLACK"),
        (8, us("2160-05-09 08:00"), "HOSPITAL_DISCHARGE//HOME", None, None, 80, None, None)]
    cols = list(zip(*rows))
    table = pa.table({"subject_id": pa.array(cols[0], pa.int64()), "time": pa.array(cols[1], pa.timestamp("us")),
                      "code": pa.array(cols[2], pa.string()), "numeric_value": pa.array(cols[3], pa.float32()),
                      "text_value": pa.array(cols[4], pa.large_string()), "hadm_id": pa.array(cols[5], pa.int64()),
                      "icustay_id": pa.array(cols[6], pa.int64()), "race": pa.array(cols[7], pa.string())})
    (root / "data" / "train").mkdir(parents=True)
    (root / "metadata").mkdir()
    pq.write_table(meds.DataSchema.align(table), root / "data" / "train" / "0.parquet")
    write_json({"dataset_name": "MIMIC-IV", "etl_name": "MIMIC_IV_MEDS", "meds_version": "0.4.0"},
               root / "metadata" / "dataset.json")
    pq.write_table(meds.CodeMetadataSchema.align(pa.table({"code": ["LAB//RESULT//50813//mmol/L"],
                                                           "description": ["Lactate"]})),
                   root / "metadata" / "codes.parquet")


def test_a_community_meds_dataset_reads_into_canonical_tables(tmp_path):
    root = tmp_path / "MIMIC-IV-MEDS"
    _community_dataset(root)
    assert validate_meds(root)["subjects"] == 2
    out = tmp_path / "ehr"
    out.mkdir()
    q = Quarantine()
    info = ingest_meds(root, out, q)
    assert info["cleaning"] == "unit harmonisation and events after death"
    p = pd.read_parquet(out / "patients.parquet").set_index("subject_id")
    assert p.loc[7, "gender"] == "F" and p.loc[7, "anchor_year"] == 2150 and p.loc[7, "anchor_age"] == 60
    assert p.loc[7, "dod"] == T("2150-01-03 10:00") and pd.isna(p.loc[8, "dod"])
    a = pd.read_parquet(out / "admissions.parquet").set_index("hadm_id")
    assert a.loc[70, "hospital_expire_flag"] == 1 and a.loc[80, "hospital_expire_flag"] == 0
    assert a.loc[70, "admission_type"] == "EW EMER." and a.loc[70, "admission_location"] == "EMERGENCY ROOM"
    assert a.loc[80, "discharge_location"] == "HOME" and a.loc[80, "race"] == "BLACK"
    assert a.loc[70, "dischtime"] == T("2150-01-03 10:00")
    icu = pd.read_parquet(out / "icustays.parquet")
    assert icu[["stay_id", "hadm_id", "first_careunit"]].values.tolist() == [[700, 70, "MICU"]]
    ev = pd.read_parquet(out / "events.parquet")
    lac = ev[ev.code == "lab:50813"].sort_values("time")
    # float32 2.1 reads back as the decimal 2.1; 18.016 mg/dL converted to mmol/L; after death: quarantined
    assert sorted(lac["value"]) == [pytest.approx(2.0, rel=1e-6), 2.1]
    assert set(lac["unit"].str.lower()) == {"mmol/l"}
    assert len(lac) == 2 and info["events_after_death"] == 1
    assert "lab:51301" not in set(ev.code)                       # a lab result without a number
    assert ev.loc[ev.code == "chart:220045", "value"].tolist() == [101.0]
    assert ev.loc[ev.code == "Weight (Lbs)", "value"].tolist() == [180.4]  # from text_value
    # a date-only value cannot be told from one timed at midnight: it stays at midnight
    assert ev.loc[ev.code == "Weight (Lbs)", "time"].tolist() == [T("2150-01-01")]
    assert ev.loc[ev.code == "diagnosis:ICD//10//I50", "value"].isna().all()
    assert pd.read_parquet(out / "codes.parquet").set_index("code").loc["lab:50813", "label"] == "Lactate"


def test_bad_meds_input_names_file_and_field(tmp_path):
    root = tmp_path / "bad"
    (root / "data").mkdir(parents=True)
    (root / "metadata").mkdir()
    write_json({}, root / "metadata" / "dataset.json")
    pq.write_table(pa.table({"subject_id": ["a"], "time": pa.array([None], pa.timestamp("us")), "code": ["X"]}),
                   root / "data" / "0.parquet")
    with pytest.raises(DataError) as e:
        ingest_meds(root, tmp_path, Quarantine())
    assert "0.parquet" in str(e.value) and "subject_id" in str(e.value)
    # rows out of time order are not valid MEDS
    pq.write_table(pa.table({"subject_id": pa.array([1, 1], pa.int64()),
                             "time": pa.array([T("2150-01-02"), T("2150-01-01")], pa.timestamp("us")),
                             "code": ["A", "B"]}), root / "data" / "0.parquet")
    with pytest.raises(DataError, match="time order"):
        validate_meds(root)
    # a subject in two shards is not valid MEDS either
    one = pa.table({"subject_id": pa.array([1], pa.int64()), "time": pa.array([T("2150-01-01")], pa.timestamp("us")),
                    "code": ["A"]})
    pq.write_table(one, root / "data" / "0.parquet")
    pq.write_table(one, root / "data" / "1.parquet")
    with pytest.raises(DataError, match="split"):
        validate_meds(root)


def test_discover_meds_is_an_ehr_alternative(tmp_path):
    (tmp_path / "m" / "metadata").mkdir(parents=True)
    (tmp_path / "m" / "data").mkdir()
    (tmp_path / "m" / "metadata" / "dataset.json").write_text("{}")
    s = discover(tmp_path)
    assert s.paths["meds"] == tmp_path / "m" and "meds" not in s.absent and "mimic_iv" in s.absent
    assert discover(tmp_path / "m").paths["meds"] == tmp_path / "m"   # --data the MEDS root itself
    assert "meds" not in discover(tmp_path / "m" / "data").describe()
    for f in ("patients", "admissions"):
        (tmp_path / "mimic" / "hosp").mkdir(parents=True, exist_ok=True)
        (tmp_path / "mimic" / "hosp" / f"{f}.csv").write_text("x\n")
    with pytest.raises(DataError, match="two EHR sources"):
        discover(tmp_path)
