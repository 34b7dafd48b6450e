"""DICOM waveform ECGs: read like a WFDB record, kept out of the imaging source, found by
content, and used end to end (inspect, train, score); the MCL1 / bare-V lead aliases."""
from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import wfdb

from pipeline.config import RunConfig
from pipeline.errors import DataError
from pipeline.sources.ecg import load_ecg
from pipeline.sources.ecg_dicom import index_dicom_ecg_folder, is_dicom_ecg, read_dicom_ecg

FIXTURE = Path(__file__).parent / "fixtures" / "dicom_ecg" / "waveform_ecg.dcm"
LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def test_dicom_ecg_reads_twelve_leads_in_millivolts():
    rec = load_ecg(FIXTURE)
    assert rec.n_leads == 12 and rec.lead_mask.all() and rec.leads_found == LEADS
    assert rec.fs_orig == 1000 and rec.n_samples_orig == 10000 and rec.signal.shape == (12, 5000)
    assert rec.verdict == "warn" and any("resampled from 1000 Hz" in r for r in rec.reasons)
    assert any("'RHYTHM' used (not used: MEDIAN BEAT)" in r for r in rec.reasons)
    # the digital samples scaled as the header says agree with pydicom's own conversion (uV)
    hdr, _, d, chans, leads, _, _ = read_dicom_ecg(FIXTURE, seconds=10)
    ref = pydicom.dcmread(FIXTURE).waveform_array(0)
    phys = (d - np.array(hdr.baseline)[chans]) / np.array(hdr.adc_gain)[chans]
    np.testing.assert_allclose(phys, ref[:, chans], atol=1e-9)
    assert set(hdr.units) == {"uV"} and leads == LEADS
    # QRS amplitudes in mV, not uV: a real 12-lead ECG peaks between 0.2 and 5 mV
    peak = np.abs(rec.signal).max(axis=1)
    assert (peak > 0.2).all() and (peak < 5).all(), peak


def test_dicom_ecg_features_are_physiological():
    from pipeline.stages.featurize_ecg import ecg_features
    rec = load_ecg(FIXTURE)
    f = ecg_features(rec.signal, 500, rec.lead_mask)
    assert 50 < f["hr"] < 80 and 60 < f["qrs"] < 130 and 350 < f["qtc"] < 480 and 100 < f["pr"] < 220


def test_broken_dicom_ecg_names_the_file(tmp_path):
    ds = pydicom.dcmread(FIXTURE)
    ds.WaveformSequence[0].WaveformData = bytes(ds.WaveformSequence[0].WaveformData)[:1000]
    bad = tmp_path / "cut.dcm"
    ds.save_as(bad)
    with pytest.raises(DataError, match="WaveformData is truncated") as e:
        load_ecg(bad)
    assert str(bad) in str(e.value)
    del ds.WaveformSequence
    ds.save_as(tmp_path / "none.dcm")
    with pytest.raises(DataError, match="no WaveformSequence"):
        load_ecg(tmp_path / "none.dcm")


def test_imaging_skips_a_dicom_ecg_with_a_reason(tmp_path):
    from pipeline.sources.discover import discover
    from pipeline.sources.imaging import inspect_images, load_image
    [row] = inspect_images([FIXTURE])
    assert row["verdict"] == "skipped" and "ECG" in row["reasons"][0] and "pixel" not in row["reasons"][0]
    with pytest.raises(DataError, match="DICOM ECG waveform, not an image"):
        load_image(FIXTURE)
    # found by content: a folder holding it is a DICOM ECG folder, not an image folder
    (tmp_path / "carts").mkdir()
    shutil.copy(FIXTURE, tmp_path / "carts" / "a.dcm")
    s = discover(tmp_path)
    assert s.dicom_ecg_folders == [tmp_path / "carts"] and s.image_folders == []
    assert is_dicom_ecg(tmp_path / "carts" / "a.dcm")


def test_mcl1_is_used_as_v1_with_a_warning_and_bare_v_is_ignored(tmp_path):
    t = np.arange(0, 10, 1 / 250)
    beat = np.exp(-((t % 0.8) - 0.2) ** 2 / 0.0005)            # a QRS-like spike every 0.8 s
    sig = np.stack([beat, 0.8 * beat, 0.5 * beat], axis=1)
    wfdb.wrsamp("rec", fs=250, units=["mV"] * 3, sig_name=["MCL1", "V", "II"], p_signal=sig, fmt=["16"] * 3,
                write_dir=str(tmp_path))
    rec = load_ecg(tmp_path / "rec")
    assert rec.lead_mask[LEADS.index("V1")] and rec.lead_mask[LEADS.index("II")] and rec.n_leads == 2
    assert rec.ignored_signals == ["V"]
    text = " | ".join(rec.reasons)
    assert "MCL1 used as V1" in text and "signal V ignored: a precordial lead of unknown position" in text
    assert any(i.severity == "warn" and "MCL1" in i.text for i in rec.issues)


# ---------------------------------------------------------------- end to end on the MIMIC-IV demo

def _write_ecg(ds, subject: int, when: pd.Timestamp, rng, out: Path) -> None:
    """The fixture re-labelled for ``subject`` at ``when``, its rhythm scaled and shifted."""
    ds = copy.deepcopy(ds)
    g = ds.WaveformSequence[0]
    raw = np.frombuffer(bytes(g.WaveformData), "<i2").reshape(-1, int(g.NumberOfWaveformChannels))
    raw = np.roll(raw * rng.uniform(0.5, 1.5), int(rng.integers(0, 900)), axis=0)
    g.WaveformData = np.clip(raw, -32767, 32767).astype("<i2").tobytes()
    ds.PatientID = str(subject)
    ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[str(subject), str(when)])
    ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S")
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out)


@pytest.fixture(scope="module")
def dicom_root(mimic_demo, tmp_path_factory) -> Path:
    """The MIMIC-IV demo with one DICOM ECG 2 h after admission for 70 admissions (ids and time
    in the tags), and a second root whose record_list.csv points to the same .dcm files."""
    base = tmp_path_factory.mktemp("dicom_ecg")
    root = base / "train"
    for sub in ("hosp", "icu"):
        shutil.copytree(mimic_demo / sub, root / sub)
    adm = pd.read_csv(mimic_demo / "hosp" / "admissions.csv.gz", parse_dates=["admittime"]).head(70)
    ds, rng = pydicom.dcmread(FIXTURE), np.random.default_rng(0)
    rows = []
    for i, r in enumerate(adm.itertuples()):
        when = r.admittime + pd.Timedelta(hours=2)
        rel = Path("files") / f"p{r.subject_id}" / f"ecg{i}.dcm"
        _write_ecg(ds, r.subject_id, when, rng, root / "ecg_carts" / rel)
        rows.append({"subject_id": r.subject_id, "study_id": 1000 + i, "ecg_time": when, "path": str(rel)})
    score_root = base / "score"
    (score_root / "ecg").mkdir(parents=True)
    for sub in ("hosp", "icu"):
        (score_root / sub).symlink_to(root / sub)
    # copied, not linked: a listed file reached through a symlink out of the ECG folder is refused
    shutil.copytree(root / "ecg_carts" / "files", score_root / "ecg" / "files")
    pd.DataFrame(rows).to_csv(score_root / "ecg" / "record_list.csv", index=False)
    return base


def test_dicom_ecg_end_to_end_inspect_train_score(dicom_root, tmp_path):
    from pipeline.jobs.score import score
    root = dicom_root / "train"
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "inspect", "--data", str(root), "--json",
                        str(tmp_path / "inspect.json")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((tmp_path / "inspect.json").read_text())
    assert rep["sources"]["dicom_ecg_folders"] and rep["sources"]["image_folders"] == []
    assert len(rep["ecg"]["records"]) == 70 and rep["ecg"]["verdicts"]["bad"] == 0

    idx = index_dicom_ecg_folder(root / "ecg_carts")
    assert len(idx) == 70 and idx["subject_id"].notna().all() and idx["ecg_time"].notna().all()

    cfg = RunConfig.model_validate({"modalities": ["ehr", "ecg"], "model": {
        "gbm_estimators": 30, "fusion_models": ["gbm_early"], "single_modality_baselines": False}})
    (tmp_path / "cfg.json").write_text(cfg.model_dump_json())
    run, events = tmp_path / "run", tmp_path / "events.jsonl"
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "--quiet", "--log-json", str(events), "train",
                        "--data", str(root), "--out", str(run), "--config", str(tmp_path / "cfg.json"),
                        "--no-report"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "", "--quiet printed progress lines"
    metrics = json.loads((run / "metrics.json").read_text())
    ev = [json.loads(line) for line in events.read_text().splitlines()]
    done = {e["stage"]: e for e in ev if e["event"] == "done"}
    assert {"ingest_ehr", "cohort", "features_ehr", "index_ecg", "features_ecg", "train"} <= set(done)
    assert done["features_ecg"]["rows"]["features.parquet"] >= 60 and done["features_ecg"]["seconds"] > 0
    loops = [e for e in ev if e["event"] == "loop" and e["stage"] == "features_ecg"]
    assert loops and sum(e["rows"] for e in loops) == done["features_ecg"]["rows"]["qc.parquet"]
    feats = pd.read_parquet(run / "stages" / "features_ecg" / "features.parquet")
    # an ECG serves every admission of its subject within the lookback, so rows can exceed files
    qc = pd.read_parquet(run / "stages" / "features_ecg" / "qc.parquet")
    assert len(feats) >= 60 and (qc["verdict"] != "bad").all() and qc["path"].str.endswith(".dcm").all()
    assert feats["ecg__hr"].between(40, 100).all() and feats["ecg__qrs_amp"].std() > 0
    assert metrics["modality_presence"]["ecg"] > 0.2
    waves = np.load(run / "stages" / "features_ecg" / "waveforms.npy")
    assert waves.shape == (len(feats), 12, 5000) and np.abs(waves).max() > 0

    # scoring reads the same files through a record_list.csv that points to .dcm files
    scores = score(run, dicom_root / "score", tmp_path / "scores.parquet")
    sfeats = pd.read_parquet(tmp_path / ".scores_work" / "stages" / "features_ecg" / "features.parquet")
    both = feats.merge(sfeats, on="hadm_id", suffixes=("", "_s"))
    assert len(both) == len(feats) and np.allclose(both["ecg__hr"], both["ecg__hr_s"])
    assert len(scores) > len(feats) and (scores["ecg"].abs() > 0).any() and scores["risk"].between(0, 1).all()


def test_dicom_ecg_folder_index_takes_ids_from_tags_and_quarantines_the_rest(tmp_path):
    from pipeline.errors import Quarantine
    ds, rng = pydicom.dcmread(FIXTURE), np.random.default_rng(1)
    _write_ecg(ds, 42, pd.Timestamp("2150-01-02 03:04:05"), rng, tmp_path / "a.dcm")
    _write_ecg(ds, 43, pd.Timestamp("2150-01-03"), rng, tmp_path / "b.dcm")
    bad = pydicom.dcmread(tmp_path / "b.dcm")
    bad.PatientID = "MRN-0043"
    bad.save_as(tmp_path / "b.dcm")
    q = Quarantine()
    idx = index_dicom_ecg_folder(tmp_path, q)
    assert idx["subject_id"].tolist() == [42] and idx["ecg_time"].tolist() == [pd.Timestamp("2150-01-02 03:04:05")]
    [row] = q.rows
    assert row.field == "PatientID" and "not an integer subject_id" in row.reason and row.file.endswith("b.dcm")
