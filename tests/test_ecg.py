"""ECG source (reading, quality control) and the featurize_ecg stage.

Real PhysioNet records from ../shared/data/wfdb-samples (skipped when absent),
and hand-broken records written with wfdb.wrsamp into tmp_path.
"""
from __future__ import annotations

import shutil
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wfdb

from pipeline.config import ECGConfig
from pipeline.errors import DataError, Quarantine
from pipeline.sources.ecg import (
    STANDARD_LEADS,
    index_wfdb_folder,
    inspect_ecg,
    load_ecg,
    map_lead,
    read_record_list,
)
from pipeline.stages.featurize_ecg import FEATURE_NAMES, ecg_features, featurize_ecg, select_records

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wfdb-samples"


def sample(*parts: str) -> Path:
    p = SAMPLES.joinpath(*parts)
    if not Path(f"{p}.hea").exists() and not p.exists():
        pytest.skip(f"real WFDB sample records not present at {p} (../shared/data is provided beside the repo)")
    return p


# ---------------------------------------------------------------- synthetic records

@lru_cache(maxsize=8)
def _beat_train(fs: int, seconds: float, hr: float) -> np.ndarray:
    import neurokit2 as nk
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nk.ecg_simulate(duration=seconds, sampling_rate=fs, heart_rate=hr, method="ecgsyn", noise=0,
                               random_state=0)


LEAD_GAINS = np.array([0.6, 1.0, 0.4, -0.8, 0.3, 0.7, -0.5, 0.4, 0.8, 1.2, 1.1, 0.9])


def ecg12(fs: int = 500, seconds: float = 10.0, hr: float = 70.0, seed: int = 0) -> np.ndarray:
    """[samples, 12] mV: one simulated lead scaled per lead, plus a little noise."""
    x = _beat_train(fs, seconds, hr)
    rng = np.random.default_rng(seed)
    return x[:, None] * LEAD_GAINS[None, :] + rng.normal(0, 0.005, (len(x), 12))


def write_record(folder: Path, name: str, sig: np.ndarray, fs: int = 500, names=STANDARD_LEADS,
                 gain: float = 200.0, d_signal: np.ndarray | None = None) -> Path:
    """A format-16 record; NaN samples are written as WFDB's invalid-sample code."""
    folder.mkdir(parents=True, exist_ok=True)
    if d_signal is None:
        d_signal = np.where(np.isnan(sig), -32768, np.round(np.nan_to_num(sig) * gain)).astype(np.int64)
    k = d_signal.shape[1]
    wfdb.wrsamp(name, fs=fs, units=["mV"] * k, sig_name=list(names), d_signal=d_signal, fmt=["16"] * k,
                adc_gain=[gain] * k, baseline=[0] * k, write_dir=str(folder))
    return folder / name


# ---------------------------------------------------------------- real records

def test_lead_names_map_case_insensitively_with_aliases():
    assert [map_lead(n) for n in ("i", "II", "avr", "AVL", "aVF", "v1", "V6")] == ["I", "II", "aVR", "aVL", "aVF", "V1", "V6"]
    assert [map_lead(n) for n in ("MLII", "MLI", "DIII", "Lead II")] == ["II", "I", "III", "II"]
    assert [map_lead(n) for n in ("V", "ECG 1", "PLETH", "RESP", "vx", "vy", "vz", "-aVR")] == [None] * 8


def test_every_sample_record_gets_a_verdict():
    root = sample()
    idx = index_wfdb_folder(root)
    names = {Path(p).name for p in idx["path"]}
    assert {"1", "2", "100", "s0010_re", "v102s", "test01_00s"} <= names
    assert idx["subject_id"].isna().all() and idx["ecg_time"].isna().all()
    rows = inspect_ecg(idx)
    assert len(rows) == len(idx)
    assert all(r["verdict"] in ("ok", "warn", "bad") and isinstance(r["reasons"], list) for r in rows)


def test_ludb_maps_all_twelve_lower_case_leads_and_is_ok():
    for rid in ("1", "2"):
        rec = load_ecg(sample("ludb", rid))
        assert rec.verdict == "ok", rec.reasons
        assert rec.lead_mask.all() and rec.signal.shape == (12, 5000) and rec.signal.dtype == np.float32
        assert rec.leads_found == [n.lower() for n in STANDARD_LEADS]
        assert rec.fs_orig == 500 and rec.n_samples_orig == 5000
        assert 0.3 < np.abs(rec.signal).max() < 5            # mV after per-lead gain and baseline
        assert np.abs(np.median(rec.signal, axis=1)).max() < 0.1   # baseline wander removed


def test_ptb_1000hz_record_with_frank_leads_in_a_second_file():
    rec = load_ecg(sample("wfdb-python", "s0010_re"))
    assert rec.fs_orig == 1000 and rec.signal.shape == (12, 5000) and rec.lead_mask.all()
    assert rec.verdict == "warn" and any("resampled from 1000 Hz" in r for r in rec.reasons)
    assert rec.ignored_signals == ["vx", "vy", "vz"]


def test_missing_file_of_ignored_signals_is_reported_not_fatal(tmp_path):
    src = sample("wfdb-python", "s0010_re")
    for ext in (".hea", ".dat"):                 # not the .xyz that holds vx, vy, vz
        shutil.copy(f"{src}{ext}", tmp_path / f"s0010_re{ext}")
    rec = load_ecg(tmp_path / "s0010_re")
    assert rec.lead_mask.all() and any("s0010_re.xyz missing" in r for r in rec.reasons)


def test_mitbih_360hz_two_leads():
    rec = load_ecg(sample("wfdb-python", "100"))
    assert rec.fs_orig == 360 and rec.signal.shape == (12, 5000)
    assert rec.lead_mask[STANDARD_LEADS.index("II")] and rec.lead_mask[STANDARD_LEADS.index("V5")]
    assert rec.n_leads == 2 and rec.verdict == "warn"
    assert any("resampled from 360 Hz" in r for r in rec.reasons)
    assert any(r.startswith("only 2 of 12 standard leads (missing: I, III") for r in rec.reasons)


def test_challenge_record_ignores_pleth_resp_and_bare_v():
    rec = load_ecg(sample("wfdb-python", "v102s"))
    assert set(rec.ignored_signals) == {"V", "PLETH", "RESP"}
    assert rec.leads_found == ["II"] and rec.n_leads == 1 and rec.verdict == "warn"


def test_record_without_mappable_leads_is_bad():
    rec = load_ecg(sample("wfdb-python", "test01_00s"))
    assert rec.verdict == "bad" and rec.n_leads == 0
    assert any("no mappable ECG lead" in r for r in rec.reasons)


def _annotated_intervals(path: Path) -> dict[str, float]:
    """Mean PR, QRS and QT (ms) from LUDB's lead II delineation (.ii annotation file)."""
    ann = wfdb.rdann(str(path), "ii")
    s, sym = ann.sample, ann.symbol
    pr, qrs, qt = [], [], []
    for i, c in enumerate(sym):
        if c != "N":
            continue
        on, off = s[i - 1], s[i + 1]
        qrs.append(off - on)
        if i >= 4 and sym[i - 3] == "p":
            pr.append(on - s[i - 4])
        if i + 4 < len(sym) and sym[i + 3] == "t":
            qt.append(s[i + 4] - on)
    return {k: 2.0 * np.mean(v) for k, v in (("pr", pr), ("qrs", qrs), ("qt", qt))}   # 500 Hz -> ms


def test_features_of_ludb_agree_with_the_cardiologists_delineation():
    for rid in ("1", "2"):
        path = sample("ludb", rid)
        rec = load_ecg(path)
        f = ecg_features(rec.signal, 500, rec.lead_mask)
        assert set(FEATURE_NAMES) <= set(f)
        ref = _annotated_intervals(path)
        assert abs(f["pr"] - ref["pr"]) < 25, (rid, f["pr"], ref)
        assert abs(f["qrs"] - ref["qrs"]) < 20, (rid, f["qrs"], ref)
        assert abs(f["qt"] - ref["qt"]) < 30, (rid, f["qt"], ref)
    rec = load_ecg(sample("ludb", "1"))
    f = ecg_features(rec.signal, 500, rec.lead_mask)
    assert 35 < f["hr"] < 65            # header: "Rhythm: Sinus bradycardia"
    assert f["rr_cv"] < 0.1 and f["qrs_amp"] > 0.3


def test_features_survive_mains_hum_and_noise():
    rec = load_ecg(sample("ludb", "2"))
    clean = ecg_features(rec.signal, 500, rec.lead_mask)
    t = np.arange(5000) / 500
    rng = np.random.default_rng(0)
    for noise in (0.1 * np.sin(2 * np.pi * 50 * t)[None, :] * rng.uniform(0.5, 1.5, (12, 1)),
                  0.3 * np.sin(2 * np.pi * 60 * t)[None, :] * rng.uniform(0.5, 1.5, (12, 1)),
                  rng.normal(0, 0.05, (12, 5000))):
        f = ecg_features((rec.signal + noise).astype(np.float32), 500, rec.lead_mask)
        assert abs(f["hr"] - clean["hr"]) < 2
        assert abs(f["qrs"] - clean["qrs"]) < 20 and abs(f["qt"] - clean["qt"]) < 30


def test_features_are_nan_not_errors_when_not_computable():
    for sig, mask in ((np.zeros((12, 5000), np.float32), np.ones(12, bool)),
                      (np.random.default_rng(0).normal(0, 0.05, (12, 5000)).astype(np.float32), np.ones(12, bool)),
                      (np.zeros((12, 5000), np.float32), np.zeros(12, bool)),
                      (np.zeros((12, 100), np.float32), np.ones(12, bool))):
        f = ecg_features(sig, 500, mask)
        assert set(f) == set(FEATURE_NAMES) and all(isinstance(v, float) for v in f.values())
    assert np.isnan(ecg_features(np.zeros((12, 5000), np.float32), 500, np.zeros(12, bool))["hr"])


# ---------------------------------------------------------------- hand-broken records

def test_synthetic_record_is_ok_with_plausible_features(tmp_path):
    rec = load_ecg(write_record(tmp_path, "good", ecg12(hr=70)))
    assert rec.verdict == "ok" and rec.reasons == [] and rec.lead_mask.all()
    f = ecg_features(rec.signal, 500, rec.lead_mask)
    assert 65 < f["hr"] < 75 and 60 < f["qrs"] < 160 and 300 < f["qt"] < 550


def test_truncated_dat_names_the_file(tmp_path):
    p = write_record(tmp_path, "trunc", ecg12())
    with open(f"{p}.dat", "r+b") as f:
        f.truncate(50_000)
    with pytest.raises(DataError, match="truncated") as e:
        load_ecg(p)
    assert e.value.file == str(tmp_path / "trunc.dat")


def test_missing_dat_names_the_file(tmp_path):
    p = write_record(tmp_path, "nodat", ecg12())
    Path(f"{p}.dat").unlink()
    with pytest.raises(DataError, match="signal file missing") as e:
        load_ecg(p)
    assert e.value.file == str(tmp_path / "nodat.dat")


def test_missing_header_and_garbage_header(tmp_path):
    with pytest.raises(DataError, match="header file not found"):
        load_ecg(tmp_path / "nothing")
    p = write_record(tmp_path, "garbage", ecg12())
    Path(f"{p}.hea").write_text("this is not a header\n")
    with pytest.raises(DataError, match="unreadable WFDB header") as e:
        load_ecg(p)
    assert e.value.file == str(tmp_path / "garbage.hea")


def test_header_claiming_the_wrong_signal_count(tmp_path):
    p = write_record(tmp_path, "n13", ecg12())
    hea = Path(f"{p}.hea")
    hea.write_text(hea.read_text().replace("n13 12 500", "n13 13 500", 1))
    with pytest.raises(DataError) as e:
        load_ecg(p)
    assert e.value.file == str(hea)
    # consistent header (11 signal lines, "11" on the record line) over a file holding 12 signals
    p = write_record(tmp_path, "n11", ecg12())
    hea = Path(f"{p}.hea")
    lines = hea.read_text().splitlines()
    hea.write_text("\n".join([lines[0].replace("n11 12 500", "n11 11 500")] + lines[1:12] + lines[13:]) + "\n")
    with pytest.raises(DataError, match="fits 12 signals") as e:
        load_ecg(p)
    assert e.value.field == "n_sig"


def test_all_nan_lead_is_masked_and_partial_nan_filled(tmp_path):
    sig = ecg12()
    sig[:, 7] = np.nan                   # V2 all NaN
    sig[1000:1100, 1] = np.nan           # 100 samples of II
    rec = load_ecg(write_record(tmp_path, "nan", sig))
    assert rec.verdict == "warn"
    assert not rec.lead_mask[7] and rec.lead_mask[1] and rec.n_leads == 11
    assert np.all(rec.signal[7] == 0) and np.all(rec.signal[1, 1000:1100] == 0)
    assert np.isfinite(rec.signal).all()
    assert any("V2 all NaN" in r for r in rec.reasons) and any("II: 100 NaN samples" in r for r in rec.reasons)


def test_flat_lead_is_masked(tmp_path):
    sig = ecg12()
    sig[:, 4] = 0.3                      # aVL stuck (lead off)
    rec = load_ecg(write_record(tmp_path, "flat", sig))
    assert rec.verdict == "warn" and not rec.lead_mask[4] and rec.n_leads == 11
    assert any("aVL flat" in r for r in rec.reasons)
    assert any(r.startswith("only 11 of 12 standard leads (missing: aVL)") for r in rec.reasons)


def test_three_lead_record_is_used_with_a_mask_unless_min_leads(tmp_path):
    sig = ecg12()[:, [0, 1, 6]]
    p = write_record(tmp_path, "three", sig, names=["I", "II", "V1"])
    rec = load_ecg(p)
    assert rec.verdict == "warn" and rec.n_leads == 3
    assert rec.lead_mask.tolist() == [n in ("I", "II", "V1") for n in STANDARD_LEADS]
    assert any(r.startswith("only 3 of 12 standard leads") for r in rec.reasons)
    assert load_ecg(p, min_leads=4).verdict == "bad"


def test_250_hz_record_is_resampled(tmp_path):
    rec = load_ecg(write_record(tmp_path, "fs250", ecg12(fs=250), fs=250))
    assert rec.fs_orig == 250 and rec.signal.shape == (12, 5000) and rec.verdict == "warn"
    assert any("resampled from 250 Hz to 500 Hz" in r for r in rec.reasons)
    f = ecg_features(rec.signal, 500, rec.lead_mask)
    assert 65 < f["hr"] < 75


def test_saturated_lead_is_reported(tmp_path):
    d = np.round(ecg12() * 200).astype(np.int64)
    d[2000:2100, 9] = 32767              # V4 pinned at the format's maximum for 0.2 s
    rec = load_ecg(write_record(tmp_path, "sat", None, d_signal=d))
    assert rec.verdict == "warn" and any("V4 saturated" in r for r in rec.reasons)
    assert not any("saturated" in r for r in load_ecg(write_record(tmp_path, "nosat", ecg12())).reasons)


def test_short_records(tmp_path):
    rec = load_ecg(write_record(tmp_path, "s8", ecg12(seconds=8.0)))
    assert rec.verdict == "warn" and any(r.startswith("short record (8.0 s") for r in rec.reasons)
    assert np.all(rec.signal[:, 4000:] == 0) and rec.signal.shape == (12, 5000)
    rec = load_ecg(write_record(tmp_path, "s4", ecg12(seconds=4.0)))
    assert rec.verdict == "bad" and any("under half" in r for r in rec.reasons)


def test_inspect_never_raises_for_broken_records(tmp_path):
    good = write_record(tmp_path, "good", ecg12())
    broken = write_record(tmp_path, "broken", ecg12())
    Path(f"{broken}.dat").unlink()
    rows = inspect_ecg(pd.DataFrame({"path": [str(good), str(broken), str(tmp_path / "absent")]}))
    assert [r["verdict"] for r in rows] == ["ok", "bad", "bad"]
    assert "broken.dat" in rows[1]["reasons"][0] and rows[0]["n_leads"] == 12 and rows[0]["seconds"] == 10.0


# ---------------------------------------------------------------- record_list.csv

def test_read_record_list(tmp_path):
    (tmp_path / "record_list.csv").write_text(
        "subject_id,study_id,file_name,ecg_time,path\n"
        "10000032,40689238,40689238,2180-07-23 08:44:00,files/p1000/p10000032/s40689238/40689238\n"
        "10000032,44458630,44458630,2180-07-23 09:54:00,files/p1000/p10000032/s44458630/44458630\n"
        "10000033,44458631,44458631,not a time,files/p1000/p10000033/s44458631/44458631\n"
        ",44458632,44458632,2180-07-23 09:54:00,files/p1000/p1000003x/s44458632/44458632\n"
        "10000034,40689238,40689238,2181-01-01 00:00:00,files/p1000/p10000034/s40689238/40689238\n"
        "10000035,44458635,44458635,2181-01-01 00:00:00,files/p1000/p10000035/s44458635/44458635\n")
    sig = np.sin(np.linspace(0, 20, 5000))[:, None].repeat(2, axis=1)
    for rel in ("files/p1000/p10000032/s40689238/40689238", "files/p1000/p10000032/s44458630/44458630"):
        (tmp_path / rel).parent.mkdir(parents=True)
        wfdb.wrsamp((tmp_path / rel).name, fs=500, units=["mV"] * 2, sig_name=["I", "II"], p_signal=sig,
                    fmt=["16"] * 2, write_dir=str((tmp_path / rel).parent))
    q = Quarantine()
    idx = read_record_list(tmp_path, q)
    assert idx["study_id"].tolist() == [40689238, 44458630]
    assert str(idx["ecg_time"].dtype).startswith("datetime64") and idx["subject_id"].dtype == np.int64
    assert idx["path"].iloc[0] == str(tmp_path.resolve() / "files/p1000/p10000032/s40689238/40689238")
    got = {(r.row, r.field) for r in q.rows}
    # the last row is well formed but its files do not exist: quarantined with its line, naming the file
    assert got == {("4", "ecg_time"), ("5", "subject_id"), ("6", "study_id"),
                   ("study_id=44458635 (record_list.csv line 7)", "header")}
    assert all(r.source == "ecg" for r in q.rows)
    assert [r.file.endswith("record_list.csv") for r in q.rows] == [True, True, True, False]
    assert q.rows[-1].file.endswith("44458635.hea") and "not found" in q.rows[-1].reason
    (tmp_path / "record_list.csv").write_text("subject_id,study_id,path\n1,2,x\n")
    with pytest.raises(DataError) as e:
        read_record_list(tmp_path, Quarantine())
    assert e.value.field == "ecg_time" and e.value.file.endswith("record_list.csv")


# ---------------------------------------------------------------- the stage

T0 = pd.Timestamp("2180-01-10 12:00")


@pytest.fixture(scope="module")
def stage_inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("ecg_stage")
    rec = {
        "s1_old": write_record(d, "s1_old", ecg12(hr=60, seed=1)),
        "s1_latest": write_record(d, "s1_latest", ecg12(hr=80, seed=2)),
        "s1_after": write_record(d, "s1_after", ecg12(hr=120, seed=3)),
        "s2_good": write_record(d, "s2_good", ecg12(hr=70, seed=4)),
        "s2_broken": write_record(d, "s2_broken", ecg12(hr=70, seed=5)),
        "s3_after": write_record(d, "s3_after", ecg12(hr=70, seed=6)),
        "s4_too_old": write_record(d, "s4_too_old", ecg12(hr=70, seed=7)),
        "s5_bad": write_record(d, "s5_bad", ecg12(seconds=3.0, seed=8)),
    }
    with open(f"{rec['s2_broken']}.dat", "r+b") as f:
        f.truncate(1000)
    h = pd.Timedelta(hours=1)
    index = pd.DataFrame([
        (1, 101, T0 - 48 * h, rec["s1_old"]), (1, 102, T0 - 1 * h, rec["s1_latest"]),
        (1, 103, T0 + 1 * h, rec["s1_after"]),
        (2, 201, T0 - 5 * h, rec["s2_good"]), (2, 202, T0 - 1 * h, rec["s2_broken"]),
        (3, 301, T0 + 2 * h, rec["s3_after"]),
        (4, 401, T0 - 24 * 40 * h, rec["s4_too_old"]),
        (5, 501, T0 - 2 * h, rec["s5_bad"]),
    ], columns=["subject_id", "study_id", "ecg_time", "path"]).astype({"path": str})
    cohort = pd.DataFrame({"subject_id": [2, 1, 3, 4, 5], "hadm_id": [20, 10, 30, 40, 50],
                           "prediction_time": [T0] * 5, "split": ["train"] * 5})
    return cohort, index, rec


def test_selection_never_uses_a_record_after_the_prediction_time(stage_inputs):
    cohort, index, rec = stage_inputs
    cand = select_records(cohort, index, ECGConfig())
    assert (cand.merge(cohort, on="hadm_id")["ecg_time"] <= T0).all()
    assert cand.groupby("hadm_id")["path"].apply(list).to_dict() == {
        20: [str(rec["s2_broken"]), str(rec["s2_good"])], 10: [str(rec["s1_latest"]), str(rec["s1_old"])],
        50: [str(rec["s5_bad"])]}
    assert select_records(cohort, index, ECGConfig(max_records=1)).groupby("hadm_id").size().max() == 1


def test_featurize_latest_with_fallback_and_quarantine(stage_inputs, tmp_path):
    cohort, index, rec = stage_inputs
    q = Quarantine()
    counts = featurize_ecg(cohort, index, ECGConfig(), tmp_path, q, n_jobs=2)
    feats = pd.read_parquet(tmp_path / "features.parquet")
    assert feats["hadm_id"].tolist() == [20, 10]                         # cohort order; 30, 40, 50 absent
    assert feats["item_time"].tolist() == [T0 - pd.Timedelta(hours=5), T0 - pd.Timedelta(hours=1)]
    assert feats["hadm_id"].dtype == np.int64
    assert abs(feats.set_index("hadm_id").at[10, "ecg__hr"] - 80) < 5   # the latest allowed, not the one after
    assert {f"ecg__{k}" for k in (*FEATURE_NAMES, "n_leads")} <= set(feats.columns)
    waves, masks = np.load(tmp_path / "waveforms.npy"), np.load(tmp_path / "lead_mask.npy")
    assert waves.shape == (2, 12, 5000) and waves.dtype == np.float32 and masks.shape == (2, 12) and masks.all()
    assert 0.5 < np.percentile(np.abs(waves), 99.9) < 20                 # per-lead normalised
    qc = pd.read_parquet(tmp_path / "qc.parquet")
    considered = set(qc["path"])
    assert str(rec["s1_after"]) not in considered and str(rec["s3_after"]) not in considered
    assert str(rec["s1_old"]) not in considered                          # the latest was usable: no need
    assert considered == {str(rec[k]) for k in ("s2_broken", "s2_good", "s1_latest", "s5_bad")}
    assert qc.set_index("path").at[str(rec["s2_broken"]), "verdict"] == "bad"
    assert {(r.file, r.row) for r in q.rows} == {(str(rec["s2_broken"]), "study_id=202"),
                                                 (str(rec["s5_bad"]), "study_id=501")}
    broken = next(r for r in q.rows if r.file == str(rec["s2_broken"]))
    assert broken.source == "ecg" and "truncated" in broken.reason and broken.field == "sig_len"
    assert counts == {"records_considered": 4, "records_used": 2, "quarantined": 2, "rows": 2,
                      "verdicts": {"ok": 2, "warn": 0, "bad": 2}}


def test_featurize_is_deterministic_across_n_jobs(stage_inputs, tmp_path):
    cohort, index, _ = stage_inputs
    for n in (1, 2):
        featurize_ecg(cohort, index, ECGConfig(), tmp_path / f"j{n}", Quarantine(), n_jobs=n)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "j1" / "features.parquet"),
                                  pd.read_parquet(tmp_path / "j2" / "features.parquet"))
    assert np.array_equal(np.load(tmp_path / "j1" / "waveforms.npy"), np.load(tmp_path / "j2" / "waveforms.npy"))


def test_featurize_all_averages_records_and_keeps_the_latest_waveform(stage_inputs, tmp_path):
    cohort, index, _ = stage_inputs
    featurize_ecg(cohort, index, ECGConfig(select="all"), tmp_path / "all", Quarantine(), n_jobs=1)
    featurize_ecg(cohort, index, ECGConfig(), tmp_path / "latest", Quarantine(), n_jobs=1)
    f_all = pd.read_parquet(tmp_path / "all" / "features.parquet").set_index("hadm_id")
    assert 65 < f_all.at[10, "ecg__hr"] < 75                              # mean of 60 and 80 bpm
    assert f_all.at[10, "item_time"] == T0 - pd.Timedelta(hours=1)
    assert np.array_equal(np.load(tmp_path / "all" / "waveforms.npy"), np.load(tmp_path / "latest" / "waveforms.npy"))


def test_featurize_with_no_usable_record_writes_empty_outputs(stage_inputs, tmp_path):
    cohort, index, _ = stage_inputs
    counts = featurize_ecg(cohort[cohort.hadm_id.isin([30, 40])], index, ECGConfig(), tmp_path, Quarantine())
    assert counts["rows"] == 0 and counts["records_considered"] == 0
    feats = pd.read_parquet(tmp_path / "features.parquet")
    assert len(feats) == 0 and "ecg__hr" in feats.columns
    assert np.load(tmp_path / "waveforms.npy").shape == (0, 12, 5000)
    assert np.load(tmp_path / "lead_mask.npy").shape == (0, 12)


def test_a_signal_file_symlinked_out_of_the_ecg_folder_is_refused(tmp_path):
    """The record and its header lie inside ROOT but the .dat is a link to a file elsewhere:
    the listed record is quarantined naming the signal file, the good record is kept."""
    import os

    from pipeline.sources.ecg import read_record_list
    root, outside = tmp_path / "ecg", tmp_path / "elsewhere"
    t = np.linspace(0, 10, 5000)
    for name in ("good", "linked"):
        (root / "files" / name).mkdir(parents=True)
        wfdb.wrsamp(name, fs=500, units=["mV"] * 2, sig_name=["I", "II"], fmt=["16"] * 2,
                    p_signal=np.stack([np.sin(2 * np.pi * 1.1 * t)] * 2, axis=1),
                    write_dir=str(root / "files" / name))
    outside.mkdir()
    shutil.move(root / "files" / "linked" / "linked.dat", outside / "linked.dat")
    os.symlink(outside / "linked.dat", root / "files" / "linked" / "linked.dat")
    pd.DataFrame({"subject_id": [1, 2], "study_id": [10, 20], "ecg_time": ["2100-01-01 00:00:00"] * 2,
                  "path": ["files/good/good", "files/linked/linked"]}).to_csv(root / "record_list.csv", index=False)
    q = Quarantine()
    idx = read_record_list(root, q)
    assert idx["study_id"].tolist() == [10]
    assert len(q) == 1 and q.rows[0].field == "file_name" and "resolves outside" in q.rows[0].reason
    assert str(q.rows[0].file).endswith("linked.dat") and "study_id=20" in str(q.rows[0].row)
