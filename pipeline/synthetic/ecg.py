"""MIMIC-IV-ECG layout: record_list.csv and 12-lead, 500 Hz, 10 s WFDB records.

Waveforms come from a parametric PQRST model (the sum-of-Gaussians wave model
behind ECGSYN / neurokit2's ``ecg_simulate``), evaluated beat by beat: that costs
about 5 ms per record, where calling neurokit2 per record would cost a second.
Leads I, II and V1-V6 are modelled; III, aVR, aVL and aVF are derived from I and
II by Einthoven's and Goldberger's relations, as on a real machine.  Records are
written fmt 16, gain 200/mV, byte for byte as ``wfdb.wrsamp`` writes them (checked
by the tests) but without its ~20 ms of per-call field validation.

The admission's ECG severity ``c`` (the hidden ``z_ecg`` plus per-record noise)
sets graded pathology: heart rate (tachycardia), atrial fibrillation (irregular
RR, no P waves, fibrillatory baseline), QTc prolongation, QRS widening, ST
depression or elevation with T inversion, and ectopic beats.  Baseline wander,
mains hum, muscle noise and lead scaling vary independently of ``c``.  ECGs after
the prediction time drift toward the outcome.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.synthetic._io import child_seeds, fmt_time, minutes, sigmoid, write_csv
from pipeline.synthetic.latent import PREDICTION_HOURS, presence_logit

LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
FS, N_SAMPLES, ADC_GAIN = 500, 5000, 200.0
RECORD_LIST_COLUMNS = ["subject_id", "study_id", "file_name", "ecg_time", "path"]

# Wave amplitudes (mV) of a normal beat for the modelled leads I, II, V1..V6; columns P, Q, R, S, T.
BASE_LEADS = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
AMP = np.array([
    [0.08, -0.05, 0.65, -0.10, 0.22],
    [0.14, -0.06, 1.05, -0.20, 0.30],
    [0.06, 0.00, 0.25, -0.95, -0.05],
    [0.08, 0.00, 0.50, -1.35, 0.45],
    [0.08, -0.02, 0.85, -0.90, 0.45],
    [0.08, -0.05, 1.35, -0.50, 0.40],
    [0.08, -0.08, 1.25, -0.25, 0.30],
    [0.07, -0.07, 0.95, -0.10, 0.25],
])
# ST deviation patterns per modelled lead: lateral depression and anterior elevation (reciprocal in II).
ST_DEPRESSION = np.array([-0.6, -0.8, 0.1, -0.2, -0.5, -1.0, -1.0, -0.8])
ST_ELEVATION = np.array([0.3, -0.3, 0.7, 1.0, 1.0, 0.6, 0.2, 0.0])
AF_WEIGHT = np.array([0.2, 0.6, 1.0, 0.5, 0.3, 0.2, 0.2, 0.2])


def _gauss_add(out: np.ndarray, center: float, sd: float, amp: np.ndarray) -> None:
    """out[lead, :] += amp[lead] * N(center, sd) evaluated on the samples within 5 sd."""
    lo, hi = max(0, int((center - 5 * sd) * FS)), min(N_SAMPLES, int((center + 5 * sd) * FS) + 2)
    if hi <= lo:
        return
    t = np.arange(lo, hi) / FS
    out[:, lo:hi] += amp[:, None] * np.exp(-0.5 * ((t - center) / sd) ** 2)[None, :]


def synthesize(p: dict) -> np.ndarray:
    """A (5000, 12) float array in mV from one record's parameters (deterministic given p['seed'])."""
    rng = np.random.default_rng(int(p["seed"]))
    rr_mean = 60.0 / p["hr"]
    amp = AMP * rng.uniform(0.8, 1.2, size=(len(BASE_LEADS), 1)) * p["voltage"]
    pattern = ST_DEPRESSION if p["st_kind"] == 1 else ST_ELEVATION
    st = pattern * p["st_amp"]
    t_scale = np.where(np.abs(pattern) >= 0.5, 1 - 1.6 * p["t_inv"], 1.0)  # T inversion where the ST shifts
    pvc_amp = rng.normal(0, 1.0, len(BASE_LEADS)) * 1.2
    x = np.zeros((len(BASE_LEADS), N_SAMPLES))
    r = -rng.uniform(0, rr_mean)
    resp = rng.uniform(0, 2 * np.pi)
    n_pvc_left = p["n_pvc"]
    w = p["qrs_w"]
    while r < N_SAMPLES / FS + 0.5:
        if p["af"]:
            rr = rr_mean * np.exp(rng.normal(0, 0.18))
        else:
            rr = rr_mean * (1 + 0.04 * np.sin(2 * np.pi * 0.25 * r + resp) + rng.normal(0, 0.015))
        ectopic = n_pvc_left > 0 and rng.random() < 0.12
        if ectopic:
            n_pvc_left -= 1
            r_e = r - 0.35 * rr  # premature, then a compensatory pause
            _gauss_add(x, r_e, 0.035, pvc_amp)
            _gauss_add(x, r_e + 0.30, 0.07, -0.4 * pvc_amp)
            r += 0.9 * rr
            continue
        qt = p["qtc"] * np.sqrt(rr)
        sd_t = 0.045 * qt / 0.4
        t_c = qt - 0.04 * w - 2.3 * sd_t
        if not p["af"]:
            _gauss_add(x, r - 0.16, 0.022, amp[:, 0])
        _gauss_add(x, r - 0.022 * w, 0.008 * w, amp[:, 1])
        _gauss_add(x, r, 0.010 * w, amp[:, 2])
        _gauss_add(x, r + 0.024 * w, 0.010 * w, amp[:, 3])
        _gauss_add(x, r + t_c, sd_t, amp[:, 4] * t_scale)
        j = r + 0.024 * w + 0.03
        if p["st_amp"] > 0:
            _gauss_add(x, (j + r + t_c) / 2, max(0.02, (r + t_c - j) / 2.5), st)
        r += rr
    t = np.arange(N_SAMPLES) / FS
    if p["af"]:
        phase = rng.uniform(0, 2 * np.pi, 3)
        f = sum(np.sin(2 * np.pi * fk * t + ph + 0.8 * np.sin(2 * np.pi * 0.3 * t))
                for fk, ph in zip(rng.uniform(4.5, 8, 3), phase))
        x += np.outer(AF_WEIGHT, f) * rng.uniform(0.025, 0.05)
    lead_i, lead_ii = x[0], x[1]
    sig = np.vstack([lead_i, lead_ii, lead_ii - lead_i, -(lead_i + lead_ii) / 2, lead_i - lead_ii / 2,
                     lead_ii - lead_i / 2, x[2:]])
    # Electrode noise, independent of the pathology.
    wander = sum(rng.uniform(0.3, 1, (12, 1)) * np.sin(2 * np.pi * rng.uniform(0.05, 0.5, (12, 1)) * t
                                                       + rng.uniform(0, 2 * np.pi, (12, 1))) for _ in range(2))
    sig += p["wander"] * wander + p["hum"] * np.sin(2 * np.pi * 60 * t + rng.uniform(0, 6.3))
    sig += rng.normal(0, p["white"], sig.shape)
    if p["emg"] > 0:
        lo = rng.integers(0, N_SAMPLES - 1000)
        sig[:, lo:lo + 1000] += rng.normal(0, p["emg"], (12, 1000))
    if p["lead_off"] >= 0:
        sig[p["lead_off"]] = rng.normal(0, 0.005, N_SAMPLES)
    return sig.T


def record_path(subject_id: int, study_id: int) -> str:
    return f"files/p{str(subject_id)[:4]}/p{subject_id}/s{study_id}/{study_id}"


def wrsamp_args(name: str, d: np.ndarray, time: pd.Timestamp, write_dir: str) -> dict:
    """The ``wfdb.wrsamp`` arguments of a record: fmt 16, gain 200/mV, baseline 0, like MIMIC-IV-ECG."""
    return {"record_name": name, "fs": FS, "units": ["mV"] * 12, "sig_name": list(LEADS),
            "d_signal": d.astype(np.int64), "fmt": ["16"] * 12, "adc_gain": [ADC_GAIN] * 12, "baseline": [0] * 12,
            "write_dir": write_dir, "base_time": dt.time(time.hour, time.minute, time.second),
            "base_date": dt.date(time.year, time.month, time.day)}


def write_wfdb(folder: Path, name: str, d: np.ndarray, time: pd.Timestamp) -> None:
    """Write NAME.hea and NAME.dat byte for byte as ``wfdb.wrsamp(**wrsamp_args(...))`` does.

    wfdb.wrsamp spends ~20 ms per record validating its field tables, which is
    most of the generator's time at scale; the test suite checks the bytes match.
    """
    checksum = d.astype(np.int64).sum(axis=0) % 65536
    lines = [f"{name} 12 {FS} {N_SAMPLES} {time:%H:%M:%S} {time:%d/%m/%Y}"]
    lines += [f"{name}.dat 16 {ADC_GAIN}(0)/mV 16 0 {d[0, k]} {checksum[k]} 0 {lead}" for k, lead in enumerate(LEADS)]
    (folder / f"{name}.hea").write_text("\n".join(lines) + "\n")
    d.astype("<i2").tofile(folder / f"{name}.dat")


def digitize(signal_mv: np.ndarray) -> np.ndarray:
    return np.clip(np.round(signal_mv * ADC_GAIN), -32767, 32767).astype(np.int16)


def write_records(root: str, specs: list[dict]) -> int:
    """Write each spec's WFDB record under ``root``."""
    for p in specs:
        rel = Path(p["path"])
        folder = Path(root) / rel.parent
        folder.mkdir(parents=True, exist_ok=True)
        write_wfdb(folder, rel.name, digitize(synthesize(p)), pd.Timestamp(p["ecg_time"]))
    return len(specs)


def ecg_severity_params(rng: np.random.Generator, c: np.ndarray) -> pd.DataFrame:
    """Per-record waveform parameters from the ECG severity ``c`` (vectorised)."""
    n = len(c)
    af = rng.random(n) < sigmoid(1.7 * c - 3.0)
    hr = 70 + 11 * c + 9 * rng.normal(size=n) + af * (12 + 10 * np.abs(rng.normal(size=n)))
    st_amp = 0.09 * np.log1p(np.exp(1.6 * (c - 0.7))) + 0.01 * rng.normal(size=n)
    return pd.DataFrame({
        "hr": np.clip(hr, 42, 165),
        "af": af,
        "qtc": np.clip(0.41 + 0.025 * c + 0.015 * rng.normal(size=n), 0.36, 0.60),
        "qrs_w": 1 + np.clip(0.12 * c + 0.1 * rng.normal(size=n), 0, 0.9),
        "st_amp": np.clip(st_amp, 0, 0.45),
        "st_kind": np.where(rng.random(n) < 0.7, 1, 2),
        "t_inv": np.clip(0.5 * (c - 1) + 0.2 * rng.normal(size=n), 0, 1),
        "n_pvc": rng.poisson(0.35 * np.log1p(np.exp(1.5 * (c - 0.5)))),
        "voltage": np.exp(rng.normal(0, 0.15, n)),
        "wander": rng.uniform(0.02, 0.25, n),
        "hum": np.where(rng.random(n) < 0.2, rng.uniform(0.005, 0.03, n), 0.0),
        "white": rng.uniform(0.005, 0.025, n),
        "emg": np.where(rng.random(n) < 0.1, rng.uniform(0.03, 0.1, n), 0.0),
        "lead_off": np.where(rng.random(n) < 0.02, rng.integers(0, 12, n), -1),
    })


def plan_ecgs(rng: np.random.Generator, adm: pd.DataFrame) -> pd.DataFrame:
    """0-3 ECGs per admission: before the prediction time (present depending on acuity and z_ecg),
    later in the stay, after discharge."""
    rows = []
    n = len(adm)
    present = rng.random(n) < sigmoid(presence_logit("ecg", adm["acuity"], adm["z_ecg"]))
    n_pre = np.where(present, np.where(rng.random(n) < 0.8, 1, 2), 0)
    n_post = rng.choice([0, 1, 2], size=n, p=[0.55, 0.35, 0.10])
    los = adm["los_hours"].to_numpy()
    died = adm["label"].to_numpy() == 1
    z = adm["z_ecg"].to_numpy()
    for i in range(n):
        for _ in range(n_pre[i]):
            if rng.random() < 0.7:
                h = min(rng.uniform(-4, PREDICTION_HOURS - 4), los[i] - 0.2)
                load, sd = 1.0, 0.25
            else:  # an outpatient or ED visit in the month before
                h = -24 * rng.uniform(1, 25)
                load, sd = 0.8, 0.35
            rows.append((i, h, load * z[i] + rng.normal(0, sd), load, sd))
        for _ in range(min(n_post[i], 3 - n_pre[i])):
            if los[i] > PREDICTION_HOURS + 1 and (died[i] or rng.random() < 0.7):
                h = rng.uniform(PREDICTION_HOURS + 0.5, los[i])
                ramp = (h - PREDICTION_HOURS) / max(los[i] - PREDICTION_HOURS, 12)
                c = z[i] + (2.0 * ramp if died[i] else -0.4 * max(z[i], 0) * ramp) + rng.normal(0, 0.25)
            elif not died[i]:
                h = los[i] + 24 * rng.uniform(1, 60)
                c = 0.7 * z[i] + rng.normal(0, 0.35)
            else:
                continue
            rows.append((i, h, c, np.nan, np.nan))
    # load, noise_sd: severity = load * z_ecg + N(0, noise_sd) for records before the prediction
    # time (the Bayes posterior in synthetic.bayes reads them); NaN for the outcome-dependent later ones.
    plan = pd.DataFrame(rows, columns=["adm", "hours", "severity", "load", "noise_sd"])
    a = adm.iloc[plan["adm"].to_numpy()]
    plan["subject_id"] = a["subject_id"].to_numpy()
    plan["hadm_id"] = a["hadm_id"].to_numpy()
    plan["ecg_time"] = (a["admittime"].to_numpy() + minutes(plan["hours"] * 60))
    plan["before_prediction"] = (plan["ecg_time"] <= a["prediction_time"].to_numpy()) & \
        (plan["ecg_time"] >= a["prediction_time"].to_numpy() - pd.Timedelta(days=30))
    plan["study_id"] = 40_000_000 + rng.choice(9_999_999, size=len(plan), replace=False)
    plan = pd.concat([plan, ecg_severity_params(rng, plan["severity"].to_numpy())], axis=1)
    plan["seed"] = child_seeds(rng, len(plan))
    plan["path"] = [record_path(s, k) for s, k in zip(plan["subject_id"], plan["study_id"])]
    return plan.sort_values(["subject_id", "ecg_time", "study_id"]).reset_index(drop=True)


def write_record_list(root: Path, plan: pd.DataFrame) -> int:
    df = plan.assign(file_name=plan["study_id"].astype(str), ecg_time=fmt_time(plan["ecg_time"]))
    return write_csv(df, root / "record_list.csv", RECORD_LIST_COLUMNS, gz=False)


def record_specs(plan: pd.DataFrame) -> list[dict]:
    cols = ["path", "ecg_time", "seed", "hr", "af", "qtc", "qrs_w", "st_amp", "st_kind", "t_inv", "n_pvc",
            "voltage", "wander", "hum", "white", "emg", "lead_off"]
    out = plan[cols].assign(ecg_time=plan["ecg_time"].astype(str)).to_dict("records")
    for p in out:
        p["af"] = bool(p["af"])
        for k in ("seed", "st_kind", "n_pvc", "lead_off"):
            p[k] = int(p[k])
    return out
