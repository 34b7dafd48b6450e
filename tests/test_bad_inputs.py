"""The bad-input corpus: one batch with every kind of broken record beside good ones, and
whole-file problems beside it.

Each kind ends in quarantine rows naming the user's own file and its line or record, or in
a ``DataError`` naming the file (and field); every good record in the same batch is still
processed.  ``test_kind`` is parametrised by ``KINDS``, so the test run lists every kind with
its outcome; ``test_the_corpus_spans_every_source`` keeps the list at 30+ kinds over every
source.
"""
import gzip
import io
import os
import shutil
import struct

import numpy as np
import pandas as pd
import pytest
import wfdb
from PIL import Image

from pipeline.config import RunConfig
from pipeline.errors import DataError, Quarantine
from pipeline.jobs.prepare import collect_quarantine, prepare
from pipeline.sources.discover import discover


def _broken_huffman_jpeg(path) -> None:
    """A JPEG with its markers whole (the index checks pass) whose Huffman table is broken
    (decoding fails): found only when the image is selected and decoded."""
    b = bytearray(path.read_bytes())
    i = b.index(b"\xff\xc4")
    b[i + 5:i + 25] = b"\xff" * 20
    path.write_bytes(bytes(b))


def _jpeg_bomb(path) -> None:
    """A tiny JPEG whose frame header declares 65,000 x 65,000 pixels."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, "JPEG")
    b = bytearray(buf.getvalue())
    i = b.index(b"\xff\xc0")
    b[i + 5:i + 9] = struct.pack(">HH", 65000, 65000)
    path.write_bytes(bytes(b))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from pipeline.synthetic import generate_cohort
    root = tmp_path_factory.mktemp("corpus")
    generate_cohort(root, n_patients=60, seed=11, progress=False)
    facts = {}
    # --- ECG records (WFDB) and record_list.csv
    ecg = root / "mimic-iv-ecg"
    rl = pd.read_csv(ecg / "record_list.csv", dtype=str)
    recs = [ecg / p for p in rl["path"]]
    dat = lambda i: recs[i].with_suffix(".dat")  # noqa: E731
    hea = lambda i: recs[i].with_suffix(".hea")  # noqa: E731
    dat(0).write_bytes(dat(0).read_bytes()[:len(dat(0).read_bytes()) // 3])   # truncated to a third
    lines = hea(1).read_text().splitlines()
    lines[0] = lines[0].replace(" 12 ", " 11 ", 1)
    hea(1).write_text("\n".join(lines) + "\n")                                 # wrong signal count
    dat(2).unlink()                                                            # missing .dat
    hea(3).write_text("this is not a header\n")                               # garbage header
    hea(4).unlink()                                                            # missing .hea
    sig = np.fromfile(dat(5), dtype="<i2").reshape(-1, 12)
    sig[:, 0] = 0
    sig.tofile(dat(5))                                                         # flat lead: warn, kept
    t = np.linspace(0, 10, 2500)
    wfdb.wrsamp(recs[6].name, fs=250, units=["mV"] * 3, sig_name=["I", "II", "V1"],
                p_signal=np.stack([np.sin(2 * np.pi * 1.2 * t)] * 3, axis=1), fmt=["16"] * 3,
                write_dir=str(recs[6].parent))                                 # 3 leads at 250 Hz: warn, kept
    outside = root / "outside"
    (outside / "rec").mkdir(parents=True)
    for suffix in (".hea", ".dat"):
        shutil.copy(recs[7].with_suffix(suffix), outside / "rec" / f"out{suffix}")
    os.symlink(outside / "rec", ecg / "files" / "linked")
    sid = rl["subject_id"].iloc[7]
    extra = pd.DataFrame({"subject_id": sid, "study_id": ["91000001", "91000002", "91000003", "91000004",
                                                          "91000005", "91000006"],
                          "file_name": "x", "ecg_time": ["2100-01-01 00:00:00"] * 4 + ["whenever", "2100-01-01"],
                          "path": ["../outside/rec/out", str(outside / "rec" / "out"), "files/linked/out",
                                   "files/p9/p9/s9/nothing", rl["path"].iloc[8], rl["path"].iloc[8]]})
    dup_study = rl.iloc[[9]].assign(path=rl["path"].iloc[10])
    pd.concat([rl, extra, dup_study]).to_csv(ecg / "record_list.csv", index=False)
    facts["ecg_warn"] = {str(recs[5].resolve()), str(recs[6].resolve())}
    # --- CXR metadata and images
    cxr = root / "mimic-cxr-jpg"
    meta = pd.read_csv(cxr / "mimic-cxr-2.0.0-metadata.csv.gz", dtype=str)
    ipaths = [cxr / "files" / f"p{s[:2]}" / f"p{s}" / f"s{st}" / f"{d}.jpg"
              for s, st, d in zip(meta.subject_id, meta.study_id, meta.dicom_id)]
    ipaths[0].write_bytes(b"")                                                 # zero-byte JPEG
    ipaths[1].write_bytes(ipaths[1].read_bytes()[:64])                         # truncated JPEG
    ipaths[2].write_bytes(np.random.default_rng(0).bytes(5000))                # random bytes
    _jpeg_bomb(ipaths[3])                                                      # decompression bomb
    ipaths[4].unlink()                                                         # listed, missing
    for p in ipaths[6::3]:
        _broken_huffman_jpeg(p)                                                # decodes only when selected
    meta.loc[5, "StudyDate"] = "2100-13-45"                                    # bad StudyDate
    esc = meta.iloc[[7]].assign(dicom_id="../../../../../../etc/passwd")       # path leaving ROOT
    dup = meta.iloc[[8]].assign(StudyTime="120000")                            # repeated dicom_id
    pd.concat([meta, esc, dup]).to_csv(cxr / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    # --- notes
    rad = root / "mimic-iv-note" / "note" / "radiology.csv.gz"
    df = pd.read_csv(rad, dtype=str)
    df.loc[1, "text"] = "   "                                                  # empty note
    df.loc[2, "charttime"] = "not a time"                                      # unparseable time
    df.loc[4, "subject_id"] = ""                                               # missing subject_id
    df = pd.concat([df, df.iloc[[5]].assign(text="another text")])             # repeated note_id
    raw = df.to_csv(index=False).encode()
    first_text = df["text"].iloc[0].encode()[:30]
    raw = raw.replace(first_text, first_text[:10] + b"\xff\xfe" + first_text[12:], 1)   # non-UTF-8 bytes
    rad.write_bytes(gzip.compress(raw))
    # --- EHR tables
    hosp, icu = root / "mimic-iv" / "hosp", root / "mimic-iv" / "icu"
    pats = pd.read_csv(hosp / "patients.csv.gz", dtype=str)
    pats.loc[2, "anchor_age"] = "sixty"                                        # non-numeric age
    pats.to_csv(hosp / "patients.csv.gz", index=False)
    adm = pd.read_csv(hosp / "admissions.csv.gz", dtype=str)
    adm.loc[3, "dischtime"] = "2000-01-01 00:00:00"                            # dischtime < admittime
    adm.loc[4, "hadm_id"] = adm.loc[5, "hadm_id"]                              # duplicated id
    adm.loc[6, "admittime"] = "yesterday"                                      # wrong type
    adm = pd.concat([adm, adm.iloc[[7]].assign(subject_id="99999999", hadm_id="99999999")])   # unknown subject
    adm.to_csv(hosp / "admissions.csv.gz", index=False)
    facts["adm_total"] = len(adm)
    labs = pd.read_csv(hosp / "labevents.csv.gz", dtype=str)
    labs.loc[0, "valueuom"] = "furlongs"                                       # unknown unit
    labs.loc[1, "charttime"] = "garbage"                                       # bad timestamp
    labs.loc[3, "valuenum"] = "abc"                                            # non-numeric value
    labs.loc[6, "subject_id"] = "x12"                                          # bad id
    dead = adm[adm.deathtime.notna()].iloc[0]
    late = labs.iloc[[2]].assign(subject_id=dead.subject_id, hadm_id=dead.hadm_id, labevent_id="9000001",
                                 charttime=str(pd.Timestamp(dead.deathtime) + pd.Timedelta(days=3)))
    exact = labs.iloc[[4, 4, 4]]                                               # exact duplicates
    assert float(labs.valuenum[5]) == float(labs.valuenum[5])                  # a number, not NaN
    conflict = labs.iloc[[5]].assign(labevent_id="9000002", valuenum=str(float(labs.valuenum[5]) + 7))
    pd.concat([labs, late, exact, conflict]).to_csv(hosp / "labevents.csv.gz", index=False)
    chart = pd.read_csv(icu / "chartevents.csv.gz", dtype=str)
    chart.loc[0, "valuenum"] = "n/a"                                           # non-numeric chart value
    chart.to_csv(icu / "chartevents.csv.gz", index=False)
    stays = pd.read_csv(icu / "icustays.csv.gz", dtype=str)
    stays.loc[0, "intime"] = "soon"                                            # bad ICU time
    stays.to_csv(icu / "icustays.csv.gz", index=False)
    facts["labs_exact_lines"] = {f"line {len(labs) + 3}", f"line {len(labs) + 4}", f"line {len(labs) + 5}"}
    return root, facts


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    root, _ = corpus
    prep = prepare(discover(root), RunConfig(), tmp_path_factory.mktemp("work"), mode="train")
    return prep, collect_quarantine(prep.stage_dirs)


def _rows(q: pd.DataFrame, file: str, field: str | None = None, reason: str = "", row: str = "") -> pd.DataFrame:
    m = q["file"].str.endswith(file) & q["reason"].str.contains(reason, regex=False) & \
        q["row"].str.contains(row, regex=False)
    if field is not None:
        m &= q["field"] == field
    return q[m]


# kind -> (source, file the row names, field, words of the reason, words of the row)
QUARANTINED = {
    "ehr: dischtime before admittime": ("EHR", "admissions.csv.gz", "dischtime", "dischtime before admittime", ""),
    "ehr: duplicated hadm_id": ("EHR", "admissions.csv.gz", "hadm_id", "duplicated id", ""),
    "ehr: text in a datetime column": ("EHR", "admissions.csv.gz", "admittime", "unparseable datetime value", ""),
    "ehr: admission of an unknown subject": ("EHR", "admissions.csv.gz", "subject_id", "subject not in patients", ""),
    "ehr: text in an integer column": ("EHR", "patients.csv.gz", "anchor_age", "unparseable int value", ""),
    "ehr: bad ICU stay time": ("EHR", "icustays.csv.gz", "intime", "unparseable datetime value", ""),
    "ehr: unknown unit": ("EHR", "labevents.csv.gz", "unit (lab:", "unknown unit 'furlongs'", "line 2"),
    "ehr: unparseable event time": ("EHR", "labevents.csv.gz", "time", "unparseable id or timestamp", "line 3"),
    "ehr: unparseable event subject_id": ("EHR", "labevents.csv.gz", "subject_id", "unparseable id", "line 8"),
    "ehr: non-numeric valuenum": ("EHR", "labevents.csv.gz", "valuenum", "non-numeric value", "line 5"),
    "ehr: non-numeric chart value": ("EHR", "chartevents.csv.gz", "valuenum", "non-numeric value", "line 2"),
    "ehr: exact duplicate rows": ("EHR", "labevents.csv.gz", "row", "exact duplicate row (dropped) of line 6", ""),
    "ehr: conflicting duplicate": ("EHR", "labevents.csv.gz", "valuenum", "conflicting duplicate", ""),
    "ehr: event after death": ("EHR", "labevents.csv.gz", "time", "event after death", "subject_id="),
    "wfdb: signal file truncated": ("WFDB", ".dat", "sig_len", "hold 3.3 s of the 10.0 s", "record_list.csv line 2"),
    "wfdb: header signal count wrong": ("WFDB", ".hea", "n_sig", "declares 11", "record_list.csv line 3"),
    "wfdb: signal file missing": ("WFDB", ".dat", "file_name", "signal file missing", "record_list.csv line 4"),
    "wfdb: garbage header": ("WFDB", ".hea", "header", "unreadable WFDB header", "record_list.csv line 5"),
    "wfdb: header file missing": ("WFDB", ".hea", "header", "header file not found", "record_list.csv line 6"),
    "record_list: path with ..": ("record_list", "mimic-iv-ecg", "path", "leaves the source folder", "91000001"),
    "record_list: absolute path": ("record_list", "mimic-iv-ecg", "path", "leaves the source folder", "91000002"),
    "record_list: symlink out of ROOT": ("record_list", "out", "path", "resolves outside", "91000003"),
    "record_list: listed record absent": ("record_list", "nothing.hea", "header", "not found", "91000004"),
    "record_list: unparseable ecg_time": ("record_list", "record_list.csv", "ecg_time", "unparseable datetime", ""),
    "record_list: duplicated study_id": ("record_list", "record_list.csv", "study_id", "duplicated study_id", ""),
    "notes: empty text": ("notes", "radiology.csv.gz", "text", "empty note", ""),
    "notes: unparseable charttime": ("notes", "radiology.csv.gz", "charttime", "unparseable charttime", ""),
    "notes: missing subject_id": ("notes", "radiology.csv.gz", "subject_id", "subject_id", ""),
    "notes: non-UTF-8 bytes": ("notes", "radiology.csv.gz", "text", "not valid UTF-8", ""),
    "notes: duplicated note_id": ("notes", "radiology.csv.gz", "note_id", "duplicated note_id", ""),
    "cxr metadata: bad StudyDate": ("CXR metadata", "metadata.csv.gz", "StudyDate", "StudyDate", "7"),
    "cxr metadata: dicom_id leaving ROOT": ("CXR metadata", "mimic-cxr-jpg", "dicom_id", "leaves the source folder",
                                            "etc/passwd"),
    "cxr metadata: repeated dicom_id": ("CXR metadata", "metadata.csv.gz", "dicom_id", "duplicated dicom_id", ""),
    "image: zero bytes": ("images", ".jpg", "image", "empty (0 bytes)", "metadata.csv.gz line 2"),
    "image: truncated JPEG": ("images", ".jpg", "image", "cannot decode", "metadata.csv.gz line 3"),
    "image: random bytes": ("images", ".jpg", "image", "cannot decode", "metadata.csv.gz line 4"),
    "image: decompression bomb (65000 x 65000)": ("images", ".jpg", "image size", "over the limit", "line 5"),
    "image: listed file missing": ("images", ".jpg", "image", "image file is missing", "metadata.csv.gz line 6"),
    "image: fails to decode when selected": ("images", ".jpg", "image", "broken data stream", "dicom_id="),
}


def _config_yaml_tag(root, tmp):
    (tmp / "evil.yaml").write_text("model: !!python/object/apply:os.system ['touch PWNED']\n")
    from pipeline.config import RunConfig as RC
    RC.load(tmp / "evil.yaml")


def _config(text, name):
    def fn(root, tmp):
        (tmp / name).write_text(text)
        RunConfig.load(tmp / name)
    return fn


def _missing_column(root, tmp):
    copy = tmp / "copy"
    shutil.copytree(root / "mimic-iv", copy / "mimic-iv")
    adm = pd.read_csv(copy / "mimic-iv" / "hosp" / "admissions.csv.gz")
    adm.drop(columns=["admittime"]).to_csv(copy / "mimic-iv" / "hosp" / "admissions.csv.gz", index=False)
    prepare(discover(copy), RunConfig(), tmp / "w", mode="train")


def _empty_cohort(root, tmp):
    prepare(discover(root), RunConfig.model_validate({"task": {"prediction_hours": 24 * 400}}), tmp / "w")


def _record_list_columns(root, tmp):
    from pipeline.sources.ecg import read_record_list
    (tmp / "record_list.csv").write_text("subject_id,study_id,path\n1,2,x\n")
    read_record_list(tmp, Quarantine())


def _gzip_bomb(root, tmp, monkeypatch):
    from pipeline.sources import raw_checks
    from pipeline.sources.notes import read_notes
    monkeypatch.setattr(raw_checks, "GZIP_FLOOR_BYTES", 2**20)
    (tmp / "note").mkdir()
    (tmp / "note" / "radiology.csv.gz").write_bytes(gzip.compress(b"note_id,subject_id,charttime,text\n" +
                                                                  b"0" * (40 * 2**20)))
    read_notes(tmp, Quarantine())


def _dicom_bomb(root, tmp):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from pipeline.sources.imaging import load_image
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.Rows, ds.Columns = "DX", 60000, 60000
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = b"\0" * 64
    ds.save_as(tmp / "bomb.dcm", enforce_file_format=True)
    load_image(tmp / "bomb.dcm")


def _nifti_bomb(root, tmp):
    import nibabel as nib

    from pipeline.sources.imaging import load_image
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((30000, 30000, 300))
    hdr.set_data_dtype(np.uint8)
    hdr["vox_offset"] = 352
    (tmp / "bomb.nii").write_bytes(hdr.binaryblock + b"\0" * 4 + b"\0" * 1024)
    load_image(tmp / "bomb.nii")


# kind -> (source, function raising the error, words of the message, field)
ERRORS = {
    "table: required column missing": ("EHR", _missing_column, "admissions.csv.gz", "admittime"),
    "cohort: empty after the rules": ("EHR", _empty_cohort, "cohort is empty", None),
    "record_list: required column missing": ("record_list", _record_list_columns, "record_list.csv", "ecg_time"),
    "notes: gzip bomb": ("notes", _gzip_bomb, "gzip bomb", None),
    "image: DICOM with absurd Rows/Columns": ("images", _dicom_bomb, "over the limit", "image size"),
    "image: NIfTI with an absurd shape": ("images", _nifti_bomb, "over the limit", "image size"),
    "config: YAML tag that would run code": ("config", _config_yaml_tag, "python/object", None),
    "config: unknown key": ("config", _config('{"model": {"n_trees": 5}}', "c.json"), "Extra inputs", "model.n_trees"),
    "config: wrong type": ("config", _config("task:\n  prediction_hours: soon\n", "c.yaml"), "valid number",
                           "task.prediction_hours"),
    "config: not a mapping": ("config", _config("[1, 2]\n", "c.yaml"), "must be a mapping", None),
}


@pytest.mark.parametrize("kind", list(QUARANTINED))
def test_kind_is_quarantined_naming_the_users_file(kind, run):
    _, q = run
    source, file, field, reason, row = QUARANTINED[kind]
    if field and field.startswith("unit ("):
        hits = _rows(q, file, None, reason, row)
        hits = hits[hits["field"].str.startswith(field)]
    else:
        hits = _rows(q, file, field, reason, row)
    assert len(hits), f"{kind}: no quarantine row with file *{file}, field {field}, reason ~{reason!r}, row ~{row!r}"
    assert (hits["row"] != "").all() and not hits["file"].str.contains("parquet").any()


@pytest.mark.parametrize("kind", list(ERRORS))
def test_kind_is_a_named_error(kind, corpus, tmp_path, monkeypatch):
    root, _ = corpus
    source, fn, words, field = ERRORS[kind]
    args = (root, tmp_path, monkeypatch) if fn is _gzip_bomb else (root, tmp_path)
    with pytest.raises(DataError) as e:
        fn(*args)
    assert words in str(e.value), str(e.value)
    if field is not None:
        assert e.value.field == field
    assert not (tmp_path / "PWNED").exists() and not os.path.exists("PWNED")


def test_the_corpus_spans_every_source():
    kinds = {**{k: v[0] for k, v in QUARANTINED.items()}, **{k: v[0] for k, v in ERRORS.items()}}
    assert len(kinds) >= 30
    assert set(kinds.values()) == {"EHR", "WFDB", "record_list", "notes", "CXR metadata", "images", "config"}


def test_good_records_are_all_processed(corpus, run):
    root, facts = corpus
    prep, q = run
    assert (q[["source", "file", "reason"]] != "").all().all()
    # EHR: exactly the broken admissions are gone (3 broken rows, 1 unknown subject, the patient's one)
    adm = pd.read_parquet(prep.stage_dirs["ingest_ehr"] / "admissions.parquet")
    lost = len(_rows(q, "admissions.csv.gz"))
    assert len(adm) == facts["adm_total"] - lost and lost >= 4
    assert facts["labs_exact_lines"] <= set(_rows(q, "labevents.csv.gz", "row")["row"])
    # ECG: the index holds every listed record not quarantined; warn records are used with their masks
    from pipeline.sources.ecg import inspect_ecg, read_record_list
    iq = Quarantine()
    idx = read_record_list(root / "mimic-iv-ecg", iq)
    assert {r["record"]: r["verdict"] for r in inspect_ecg(idx) if r["record"] in facts["ecg_warn"]} == \
        dict.fromkeys(facts["ecg_warn"], "warn")
    assert all(r["verdict"] != "bad" for r in inspect_ecg(idx))    # every bad record was caught at the index
    # images: every image that a featurize round could not decode was followed by another candidate or none
    feats = pd.read_parquet(prep.stage_dirs["features_imaging"] / "features.parquet")
    assert len(feats) > 0
    # nothing after the prediction time reached a feature, and every modality is there
    from pipeline.stages.leakage import audit
    res = audit(prep.cohort, prep.item_times, prep.table, [])
    assert res["passed"] and min(res["checked"].values()) > 0
    assert {"ehr", "ecg", "notes", "imaging"} == set(prep.modalities)


def test_inspect_reports_the_same_findings(corpus, run, tmp_path):
    """``mmpipe inspect`` lists the problems a run quarantines, with the same file and row."""
    import json
    import subprocess
    import sys
    root, _ = corpus
    _, q = run
    out = tmp_path / "i.json"
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "inspect", "--data", str(root), "--json", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    j = json.loads(out.read_text())
    found = {(x["file"], x["row"], x["reason"]) for part in (j["mimic_iv"]["bad_rows"], j["ecg"]["index_problems"],
                                                              j["images"]["index_problems"], j["notes"]["problems"])
             for x in part}
    listed = q[~q["source"].eq("imaging") | q["row"].str.contains("line")]   # selection-time decode failures aside
    listed = listed[~listed["reason"].str.contains("after death")]          # found after cohort-level joins
    missing = [t for t in zip(listed["file"], listed["row"], listed["reason"]) if t not in found]
    assert not missing, missing[:5]
