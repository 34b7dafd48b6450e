"""The bad-input corpus: one batch with every kind of broken record beside good ones.

Each broken record gives a quarantine row naming file/row/field and reason (or, for
a whole-table problem, a DataError naming the file and field); every good record
in the same batch is still processed (the test counts them).
"""
import gzip
import shutil

import numpy as np
import pandas as pd
import pytest
import wfdb

from pipeline.config import RunConfig
from pipeline.errors import DataError, Quarantine
from pipeline.jobs.prepare import collect_quarantine, prepare
from pipeline.sources.discover import discover


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from pipeline.synthetic import generate_cohort
    root = tmp_path_factory.mktemp("corpus")
    generate_cohort(root, n_patients=60, seed=11, progress=False)
    broken = {}
    # --- ECG
    ecg = root / "mimic-iv-ecg"
    rl = pd.read_csv(ecg / "record_list.csv")
    recs = [ecg / p for p in rl["path"]]
    dat = lambda i: recs[i].with_suffix(".dat")  # noqa: E731
    hea = lambda i: recs[i].with_suffix(".hea")  # noqa: E731
    dat(0).write_bytes(dat(0).read_bytes()[:20000])                                   # 1 truncated .dat
    lines = hea(1).read_text().splitlines()
    lines[0] = lines[0].replace(" 12 ", " 11 ", 1)
    hea(1).write_text("\n".join(lines) + "\n")                                         # 2 wrong signal count
    dat(2).unlink()                                                                    # 3 missing .dat
    hea(3).write_text("this is not a header\n")                                       # 4 garbage header
    sig = np.fromfile(dat(4), dtype="<i2").reshape(-1, 12)
    sig[:, 0] = 0
    sig.tofile(dat(4))                                                                 # 5 flat lead (warn, kept)
    t = np.linspace(0, 10, 2500)
    three = np.stack([np.sin(2 * np.pi * 1.2 * t)] * 3, axis=1)
    wfdb.wrsamp(recs[5].name, fs=250, units=["mV"] * 3, sig_name=["I", "II", "V1"], p_signal=three,
                fmt=["16"] * 3, write_dir=str(recs[5].parent))                        # 6 3-lead 250 Hz (warn)
    broken["ecg_bad"] = {str(recs[i]) for i in range(4)}
    broken["ecg_warn"] = {str(recs[4]), str(recs[5])}
    # --- images
    meta = pd.read_csv(root / "mimic-cxr-jpg" / "mimic-cxr-2.0.0-metadata.csv.gz")
    ipaths = [root / "mimic-cxr-jpg" / "files" / f"p{str(s)[:2]}" / f"p{s}" / f"s{st}" / f"{d}.jpg"
              for s, st, d in zip(meta.subject_id, meta.study_id, meta.dicom_id)]
    ipaths[0].write_bytes(b"")                                                         # 7 zero-byte JPEG
    ipaths[1].write_bytes(ipaths[1].read_bytes()[:64])                                 # 8 truncated JPEG
    broken["images"] = {str(ipaths[0]), str(ipaths[1])}
    # --- notes
    rad = root / "mimic-iv-note" / "note" / "radiology.csv.gz"
    df = pd.read_csv(rad)
    df.loc[1, "text"] = "   "                                                          # 9 empty note
    df.loc[2, "charttime"] = "not a time"                                              # 10 unparseable time
    raw = df.to_csv(index=False).encode()
    first_text = df.loc[0, "text"].encode()[:30]
    raw = raw.replace(first_text, first_text[:10] + b"\xff\xfe" + first_text[12:], 1)    # 11 non-UTF-8 bytes
    rad.write_bytes(gzip.compress(raw))
    broken["notes"] = 3
    broken["notes_total"] = len(df) + len(pd.read_csv(root / "mimic-iv-note" / "note" / "discharge.csv.gz"))
    # --- EHR
    hosp = root / "mimic-iv" / "hosp"
    adm = pd.read_csv(hosp / "admissions.csv.gz", dtype=str)
    adm.loc[3, "dischtime"] = "2000-01-01 00:00:00"                                    # 12 dischtime < admittime
    adm.loc[4, "hadm_id"] = adm.loc[5, "hadm_id"]                                      # 13 duplicated id
    adm.loc[6, "admittime"] = "yesterday"                                              # 14 wrong dtype
    adm.to_csv(hosp / "admissions.csv.gz", index=False)
    broken["adm_total"], broken["adm_bad"] = len(adm), 3
    labs = pd.read_csv(hosp / "labevents.csv.gz", dtype=str)
    labs.loc[0, "valueuom"] = "furlongs"                                               # 15 unknown unit
    labs.loc[1, "charttime"] = "garbage"                                               # 16 bad timestamp
    dead = adm[adm.deathtime.notna()].iloc[0]
    late = labs.iloc[[2]].copy()
    late["subject_id"], late["hadm_id"] = dead.subject_id, dead.hadm_id
    late["charttime"] = str(pd.Timestamp(dead.deathtime) + pd.Timedelta(days=3))       # 17 event after death
    pd.concat([labs, late]).to_csv(hosp / "labevents.csv.gz", index=False)
    return root, broken


def test_every_bad_record_is_quarantined_and_every_good_one_processed(corpus, tmp_path):
    root, broken = corpus
    prep = prepare(discover(root), RunConfig(), tmp_path, mode="train")
    q = collect_quarantine(prep.stage_dirs)
    assert (q[["source", "file", "reason"]] != "").all().all()
    text = " | ".join(q["source"] + ":" + q["field"] + ":" + q["reason"])
    for needle in ("dischtime before admittime", "duplicated id", "unparseable datetime value", "unknown unit",
                   "unparseable id or timestamp", "event after death", "text is not valid UTF-8", "empty note",
                   "charttime"):
        assert needle in text, needle
    # EHR: every good admission kept
    assert len(pd.read_parquet(prep.stage_dirs["ingest_ehr"] / "admissions.parquet")) == \
        broken["adm_total"] - broken["adm_bad"]
    # notes: every good note kept
    notes = pd.read_parquet(prep.stage_dirs["index_notes"] / "notes.parquet")
    assert len(notes) == broken["notes_total"] - broken["notes"]
    # ECG / images: every bad record judged bad, every other record readable
    from pipeline.sources.ecg import inspect_ecg, read_record_list
    from pipeline.sources.imaging import inspect_images, read_cxr_metadata
    verdicts = {r["record"]: r for r in inspect_ecg(read_record_list(root / "mimic-iv-ecg", Quarantine()))}
    bad = {k for k, r in verdicts.items() if r["verdict"] == "bad"}
    assert bad == broken["ecg_bad"]
    assert all(verdicts[k]["verdict"] == "warn" for k in broken["ecg_warn"])
    imgs = inspect_images(read_cxr_metadata(root / "mimic-cxr-jpg", Quarantine())["path"])
    assert {r["file"] for r in imgs if r["verdict"] == "bad"} == broken["images"]
    # nothing after the prediction time reached a feature, and the run is usable
    from pipeline.stages.leakage import audit
    res = audit(prep.cohort, prep.item_times, prep.table, [])
    assert res["passed"] and min(res["checked"].values()) > 0
    assert {"ehr", "ecg", "notes", "imaging"} == set(prep.modalities)


def test_whole_table_problems_are_clear_errors(corpus, tmp_path):
    root, _ = corpus
    copy = tmp_path / "copy"
    shutil.copytree(root / "mimic-iv", copy / "mimic-iv")
    adm = pd.read_csv(copy / "mimic-iv" / "hosp" / "admissions.csv.gz")
    adm.drop(columns=["admittime"]).to_csv(copy / "mimic-iv" / "hosp" / "admissions.csv.gz", index=False)
    with pytest.raises(DataError) as e:                                               # 18 missing column
        prepare(discover(copy), RunConfig(), tmp_path / "w1", mode="train")
    assert e.value.field == "admittime" and "admissions.csv.gz" in str(e.value)
    cfg = RunConfig.model_validate({"task": {"prediction_hours": 24 * 400}})
    with pytest.raises(DataError, match="cohort is empty"):                           # 19 empty cohort
        prepare(discover(root), cfg, tmp_path / "w2", mode="train")


def test_absent_modality_folders_run_with_what_is_there(corpus, tmp_path):
    root, _ = corpus
    only = tmp_path / "only"
    shutil.copytree(root / "mimic-iv", only / "mimic-iv")                              # 20 modality folders absent
    shutil.copytree(root / "mimic-iv-note", only / "mimic-iv-note")
    s = discover(only)
    assert set(s.absent) == {"ecg", "cxr"}
    prep = prepare(s, RunConfig(), tmp_path / "w", mode="train")
    assert prep.modalities == ["ehr", "notes"]
    assert (prep.table["mask__ecg"] == 0).all() and (prep.table["mask__imaging"] == 0).all()
