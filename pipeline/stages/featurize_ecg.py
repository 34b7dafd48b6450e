"""ECG features and waveforms per admission, from the records before its prediction time.

Selection: for each cohort row, the subject's records with
prediction_time - lookback <= ecg_time <= prediction_time (never after).
``select="latest"`` uses the latest usable one; ``"all"`` averages the features
of every usable record in the window and keeps the latest usable record's
waveform.  ``max_records`` caps the records considered per admission (the most
recent first).  A record that raises ``DataError`` or gets verdict "bad" is
quarantined and the next-latest one is tried.

Features (``ecg_features``; NaN where not computable), prefixed ``ecg__``:
hr (bpm), rr_mean, rr_std (ms, RR between 240 and 2500 ms), sdnn, rmssd (ms,
normal-to-normal: RR within 20 % of the median), rr_cv (rr_std / rr_mean) and
pnn50 (fraction of successive RR differences > 50 ms) for rhythm irregularity,
pr, qrs, qt, qtc (ms; Bazett on the median RR), st (mean over leads of the level
at J + 60 ms against the PR segment, mV), st_max, st_min, qrs_amp (mean QRS
peak-to-peak over leads, mV), t_amp and t_min (mean and lowest signed T-wave amplitude
over leads at the T peak, mV), t_inverted (share of leads with T below -0.05 mV),
ectopic_frac (share of beats whose QRS correlates < 0.8 with the median QRS), n_leads.

How: QRS complexes by neurokit2 (``ecg_findpeaks``, its default method) on the
spatial velocity of all usable leads (robust to a lead whose QRS is smaller than
its T wave); intervals from the median beat of every usable lead by our own
vectorised delineation (about 1 ms; neurokit2's ``ecg_delineate`` takes ~100 ms
a record).  QRS onset/offset: where the spatial velocity of the 40 Hz low-passed
beat (50 / 60 Hz notched) leaves / returns under 2 % of its QRS peak; P onset: the most prominent
deflection 40-300 ms before the QRS on lead II (else I, V1, aVF, ...); T end:
trapezium-area method on the RMS-over-leads T wave.  On LUDB records 1 and 2
(cardiologists' lead II delineation) PR, QRS and QT agree within 15 ms.

Outputs in ``out_dir``: features.parquet (hadm_id, item_time, ecg__*),
waveforms.npy (float32 [rows, 12, fs*seconds], each lead divided by its 99th
percentile of |x|), lead_mask.npy (bool [rows, 12]), qc.parquet (one row per
record considered).  Rows follow the cohort's order; an admission without a
usable record is absent (its modality mask comes from that absence).
"""
from __future__ import annotations

import multiprocessing as mp
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import neurokit2 as nk  # imported here, before the worker pool forks, so workers need not import it
import numpy as np
import pandas as pd
from numpy.lib.format import open_memmap
from scipy import ndimage
from scipy import signal as sps

from data_schemas.modalities import FEATURES
from pipeline.artifacts import write_parquet
from pipeline.config import ECGConfig
from pipeline.errors import DataError, Quarantine
from pipeline.progress import track
from pipeline.sources.ecg import LEAD_INDEX, SOURCE, STANDARD_LEADS, load_ecg
from pipeline.sources.zero_phase import ZeroPhase

PREFIX = "ecg__"
FEATURE_NAMES = ("hr", "rr_mean", "rr_std", "sdnn", "rmssd", "rr_cv", "pnn50", "pr", "qrs", "qt", "qtc",
                 "st", "st_max", "st_min", "qrs_amp", "t_amp", "t_min", "t_inverted", "ectopic_frac")
P_LEADS = ("II", "I", "V1", "aVF", "III", "V2", "aVL", "aVR", "V3", "V4", "V5", "V6")   # P wave: first usable
RR_RANGE_MS = (240.0, 2500.0)      # successive R peaks outside this (25-250 bpm) are artefacts, not beats
NN_TOLERANCE = 0.2                 # an RR within 20 % of the median RR counts as normal-to-normal
DETECTION_SIGMA_S = 0.007
DELINEATION_LOWPASS_HZ = 40.0
QRS_SLOPE_FRACTION = 0.02          # QRS onset/offset: spatial velocity under this fraction of its QRS peak
P_MIN_MV = 0.02                    # a smaller deflection before the QRS is not called a P wave
T_MIN_MV = 0.03                    # a T wave (RMS over leads) smaller than this is not delineated
T_INVERTED_MV = -0.05              # a lead whose T wave peaks below this is counted as inverted
ECTOPIC_CORR = 0.8                 # a beat whose QRS correlates less with the median beat is ectopic
WAVE_SCALE_FLOOR_MV = 0.05


# ---------------------------------------------------------------- features of one record

def _qrs_detection_signal(x: np.ndarray, fs: int) -> np.ndarray:
    """Spatial velocity of the leads ``x`` [leads, samples]: one hump per QRS, whichever leads carry
    it (a single lead can have a QRS smaller than its T wave).  The slopes are Gaussian derivatives
    (sigma 7 ms: -20 dB at 50 Hz, -28 dB at 60 Hz), so mains hum does not swamp them."""
    d = ndimage.gaussian_filter1d(x, sigma=DETECTION_SIGMA_S * fs, order=1, axis=1, mode="nearest")
    return np.sqrt((d ** 2).sum(axis=0))


def _r_peaks(x: np.ndarray, fs: int) -> np.ndarray:
    """QRS fiducial points: neurokit2's default detector on the multi-lead detection signal."""
    try:
        peaks = nk.ecg_findpeaks(_qrs_detection_signal(x, fs), sampling_rate=fs, method="neurokit")["ECG_R_Peaks"]
    except (ValueError, IndexError):   # neurokit2 on signals without any QRS-like activity
        return np.zeros(0, int)
    return np.unique(np.asarray(peaks, dtype=int))


def _rhythm(rr: np.ndarray) -> dict[str, float]:
    """Rate and variability from RR intervals (ms); intervals outside RR_RANGE_MS are left out."""
    out: dict[str, float] = {}
    ok = (rr >= RR_RANGE_MS[0]) & (rr <= RR_RANGE_MS[1])
    good = rr[ok]
    if len(good) < 2:
        return out
    out["rr_mean"] = float(good.mean())
    out["hr"] = 60000.0 / out["rr_mean"]
    out["rr_std"] = float(good.std(ddof=1))
    out["rr_cv"] = out["rr_std"] / out["rr_mean"]
    pairs = ok[1:] & ok[:-1]                       # successive differences of two valid RRs
    if pairs.any():
        out["pnn50"] = float((np.abs(np.diff(rr)[pairs]) > 50.0).mean())
    med = np.median(good)
    normal = ok & (np.abs(rr - med) <= NN_TOLERANCE * med)
    if normal.sum() >= 2:
        out["sdnn"] = float(rr[normal].std(ddof=1))
        nn_pairs = normal[1:] & normal[:-1]
        if nn_pairs.any():
            out["rmssd"] = float(np.sqrt(np.mean(np.diff(rr)[nn_pairs] ** 2)))
    return out


def _first_run_below(g: np.ndarray, start: int, stop: int, thr: float, hold: int) -> int | None:
    """Walking from ``start`` towards ``stop``: the first index from which g stays < thr for ``hold`` samples."""
    step = 1 if stop >= start else -1
    count = 0
    for i in range(start, stop, step):
        count = count + 1 if g[i] < thr else 0
        if count >= hold:
            return i - step * (hold - 1)
    return None


@lru_cache(maxsize=8)
def _beat_filter(fs: int) -> ZeroPhase:
    """40 Hz low-pass and 50 / 60 Hz notches (mains hum survives the median over a few beats)."""
    sos = [sps.butter(2, min(DELINEATION_LOWPASS_HZ, 0.45 * fs), btype="lowpass", fs=fs, output="sos")]
    for mains in (50.0, 60.0):
        if mains < 0.45 * fs:
            sos.append(sps.tf2sos(*sps.iirnotch(mains, 5.0, fs=fs)))
    return ZeroPhase(np.vstack(sos))


def _fiducials(tpl: np.ndarray, r: int, fs: int, rr_ms: float, p_lead: int) -> dict[str, int]:
    """Sample indices of QRS onset/offset, P onset and T end on median beats ``tpl`` [leads, samples]
    (R peak at ``r``), and the isoelectric window; a key is absent where its point was not found."""
    pts: dict[str, int] = {}
    ms = fs / 1000.0
    n = tpl.shape[1]
    g = np.sqrt((np.diff(tpl, axis=1) ** 2).sum(axis=0))           # spatial velocity
    lo, hi = max(0, r - int(60 * ms)), min(len(g), r + int(60 * ms))
    if hi <= lo:
        return pts
    peak = lo + int(np.argmax(g[lo:hi]))
    floor = float(np.median(g))
    if g[peak] <= floor:
        return pts
    thr = floor + QRS_SLOPE_FRACTION * (g[peak] - floor)
    hold = max(1, round(10 * ms))
    on = _first_run_below(g, peak, max(-1, peak - int(150 * ms)), thr, hold)
    off = _first_run_below(g, peak, min(len(g), peak + int(200 * ms)), thr, hold)
    if on is None or off is None:
        return pts
    on += 1                                                          # g[i] is the slope from sample i to i+1
    pts.update(qrs_on=on, qrs_off=off, iso_lo=max(0, on - int(30 * ms)), iso_hi=max(1, on - int(5 * ms)))
    iso = np.median(tpl[:, pts["iso_lo"]:pts["iso_hi"]], axis=1)
    y = tpl - iso[:, None]
    # P wave: the most prominent peak (either polarity) 40-300 ms before QRS onset on the P lead;
    # its onset: where it is back within 15 % of its prominence of the level on its left
    p_lo = max(0, on - int(min(300.0, 0.45 * rr_ms) * ms))
    p_hi = on - int(40 * ms)
    if p_hi - p_lo > int(40 * ms):
        best = None
        for sign in (1.0, -1.0):
            seg = sign * y[p_lead, p_lo:on]
            peaks, props = sps.find_peaks(seg, prominence=P_MIN_MV, wlen=int(200 * ms))
            for k, prom, left in zip(peaks, props["prominences"], props["left_bases"]):
                if k < p_hi - p_lo and (best is None or prom > best[1]):
                    best = (int(k), float(prom), int(left), seg)
        if best is not None:
            k, prom, left, seg = best
            rise = np.flatnonzero(seg[left:k] - seg[left] < 0.15 * prom)
            pts.update(p_peak=p_lo + k, p_on=p_lo + left + int(rise[-1]))
    # T wave on the RMS over leads; its end by the trapezium-area method (Vazquez-Seisdedos et al.
    # 2011): the point t after the steepest descent xm that maximises the area of the trapezium
    # (xm, rms[xm]) - (t, rms[t]) - (xr, .) with xr a point in the following TP segment
    t_lo = off + int(80 * ms)
    next_p = pts.get("p_on", on - int(120 * ms)) + int(rr_ms * ms)          # the next beat's P onset
    t_hi = min(n - 1, r + int(650 * ms), next_p - int(20 * ms))
    if t_hi - t_lo > int(60 * ms):
        rms = np.sqrt((y ** 2).mean(axis=0))
        tp = t_lo + int(np.argmax(rms[t_lo:t_hi]))
        if tp < t_hi - 2 and rms[tp] - rms[tp:t_hi].min() > T_MIN_MV:
            xm = tp + int(np.argmin(np.diff(rms[tp:t_hi])))
            t = np.arange(xm, t_hi + 1)
            area = (rms[xm] - rms[t]) * (2 * t_hi - t - xm)
            pts.update(t_peak=tp, t_end=int(t[np.argmax(area)]))
    return pts


def _delineate(tpl: np.ndarray, r: int, fs: int, rr_ms: float, p_lead: int) -> dict[str, float]:
    """Intervals (ms), ST levels and QRS amplitude (mV) from median beats ``tpl`` [leads, samples]."""
    ms = fs / 1000.0
    tpl = _beat_filter(fs)(tpl, axis=1)                      # delineate a low-passed, de-hummed beat
    pts = _fiducials(tpl, r, fs, rr_ms, p_lead)
    out: dict[str, float] = {}
    if "qrs_on" not in pts:
        return out
    on, off = pts["qrs_on"], pts["qrs_off"]
    out["qrs"] = (off - on) / ms
    iso = np.median(tpl[:, pts["iso_lo"]:pts["iso_hi"]], axis=1)
    out["qrs_amp"] = float(np.mean(np.ptp(tpl[:, on:off + 1], axis=1)))
    j60 = off + round(60 * ms)
    if j60 < tpl.shape[1]:
        st = tpl[:, j60] - iso
        out["st"], out["st_max"], out["st_min"] = float(st.mean()), float(st.max()), float(st.min())
    if "p_on" in pts:
        out["pr"] = (on - pts["p_on"]) / ms
    if "t_end" in pts:
        out["qt"] = (pts["t_end"] - on) / ms
        out["qtc"] = out["qt"] / np.sqrt(rr_ms / 1000.0)
    if "t_peak" in pts:
        t_amp = tpl[:, pts["t_peak"]] - iso                          # signed T amplitude per lead
        out["t_amp"], out["t_min"] = float(t_amp.mean()), float(t_amp.min())
        out["t_inverted"] = float((t_amp < T_INVERTED_MV).mean())
    return out


def _ectopic_fraction(signal: np.ndarray, leads: np.ndarray, peaks: np.ndarray, fs: int) -> float:
    """Share of beats whose QRS (R - 100 ms .. R + 150 ms, all usable leads) correlates less
    than ECTOPIC_CORR with the median QRS: premature ventricular and other aberrant beats."""
    lo, hi = int(0.1 * fs), int(0.15 * fs)
    beats = peaks[(peaks - lo >= 0) & (peaks + hi < signal.shape[1])]
    if len(beats) < 3:
        return float("nan")
    idx = beats[None, :] + np.arange(-lo, hi)[:, None]               # [samples, beats]
    x = np.asarray(signal[leads], np.float64)[:, idx]                 # [leads, samples, beats]
    x = x - x.mean(axis=1, keepdims=True)
    flat = x.transpose(2, 0, 1).reshape(len(beats), -1)               # [beats, leads*samples]
    ref = np.median(flat, axis=0)
    num = flat @ ref
    den = np.linalg.norm(flat, axis=1) * np.linalg.norm(ref)
    corr = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return float((corr < ECTOPIC_CORR).mean())


def _median_beats(signal: np.ndarray, leads: np.ndarray, peaks: np.ndarray, fs: int,
                  rr_ms: float) -> tuple[np.ndarray, int] | None:
    """Median beat of each lead in ``leads`` [len(leads), samples] and the R index within it."""
    pre = int(min(400.0, 0.6 * rr_ms) * fs / 1000)
    post = int(min(700.0, 1.0 * rr_ms) * fs / 1000)
    beats = peaks[(peaks - pre >= 0) & (peaks + post < signal.shape[1])]
    if len(beats) == 0:
        return None
    idx = beats[None, :] + np.arange(-pre, post)[:, None]           # [samples, beats]
    x = signal[leads][:, idx].astype(np.float64)                     # [leads, samples, beats]
    x.sort(axis=-1)                                                  # median by sorting: ~3x np.median's speed
    b = x.shape[-1]
    return 0.5 * (x[..., (b - 1) // 2] + x[..., b // 2]), pre


def ecg_features(signal: np.ndarray, fs: int, lead_mask) -> dict[str, float]:
    """Rhythm, intervals (ms), ST levels and QRS amplitude (mV) of a [12, n] record; NaN where not computable."""
    out = dict.fromkeys(FEATURE_NAMES, float("nan"))
    mask = np.asarray(lead_mask, bool)
    leads = np.flatnonzero(mask)
    if len(leads) == 0 or signal.shape[1] < fs:
        return out
    peaks = _r_peaks(np.asarray(signal[leads], np.float64), fs)
    if len(peaks) < 3:
        return out
    rr = np.diff(peaks) * (1000.0 / fs)
    out.update(_rhythm(rr))
    out["ectopic_frac"] = _ectopic_fraction(signal, leads, peaks, fs)
    ok = (rr >= RR_RANGE_MS[0]) & (rr <= RR_RANGE_MS[1])
    if ok.sum() < 2:
        return out
    rr_med = float(np.median(rr[ok]))
    beats = _median_beats(signal, leads, peaks, fs, rr_med)
    if beats is None:
        return out
    tpl, r = beats
    p_ref = next(LEAD_INDEX[name] for name in P_LEADS if mask[LEAD_INDEX[name]])
    p_lead = int(np.flatnonzero(leads == p_ref)[0])
    out.update(_delineate(tpl, r, fs, rr_med, p_lead))
    return {k: float(v) for k, v in out.items()}


def normalise_waveform(signal: np.ndarray, lead_mask) -> np.ndarray:
    """Each lead divided by its 99th percentile of |x| (at least 0.05 mV); masked leads stay 0."""
    k = int(0.99 * (signal.shape[1] - 1))
    scale = np.maximum(np.partition(np.abs(signal), k, axis=1)[:, k], WAVE_SCALE_FLOOR_MV)
    out = (signal / scale[:, None]).astype(np.float32)
    out[~np.asarray(lead_mask, bool)] = 0.0
    return out


# ---------------------------------------------------------------- selection per admission

def select_records(cohort: pd.DataFrame, index: pd.DataFrame, cfg: ECGConfig) -> pd.DataFrame:
    """Candidate records per admission, latest first: hadm_id, rank, path, study_id, ecg_time.

    Only prediction_time - lookback <= ecg_time <= prediction_time; at most ``cfg.max_records``
    per admission.  Admissions keep the cohort's order.
    """
    base = cohort[["subject_id", "hadm_id", "prediction_time"]].copy()
    base["_order"] = np.arange(len(base))
    idx = index[["subject_id", "study_id", "ecg_time", "path"]].dropna(subset=["subject_id", "ecg_time", "path"])
    idx = idx.astype({"subject_id": "int64"})
    m = base.astype({"subject_id": "int64"}).merge(idx, on="subject_id", how="inner")
    lookback = pd.Timedelta(hours=float(cfg.lookback_hours))
    m = m[(m["ecg_time"] <= m["prediction_time"]) & (m["ecg_time"] >= m["prediction_time"] - lookback)]
    m = m.sort_values(["_order", "ecg_time", "path"], ascending=[True, False, True], kind="mergesort")
    m["rank"] = m.groupby("hadm_id", sort=False).cumcount()
    if cfg.max_records is not None:
        m = m[m["rank"] < int(cfg.max_records)]
    m["path"] = m["path"].astype(str)
    return m[["hadm_id", "rank", "path", "study_id", "ecg_time"]].reset_index(drop=True)


# ---------------------------------------------------------------- loading in a pool

@dataclass
class _Outcome:
    """What the stage keeps of one loaded record (its waveform went to the part file)."""
    path: str
    verdict: str
    reasons: str
    field: str                         # what is wrong, for the quarantine row
    n_leads: int = 0
    features: dict | None = None
    lead_mask: np.ndarray | None = None
    slot: int = -1                     # the row of the current part file holding its waveform, -1: none

    @property
    def usable(self) -> bool:
        return self.verdict != "bad"


@dataclass(frozen=True)
class _Task:
    """One record to load: its waveform, when wanted, goes to row ``slot`` of the .npy file
    ``part`` (written there by whichever process loads it: no waveform crosses a pipe)."""
    path: str
    slot: int
    part: str
    fs: int
    seconds: float
    min_leads: int


def _process(task: _Task) -> _Outcome:
    try:
        rec = load_ecg(task.path, fs=task.fs, seconds=task.seconds, min_leads=task.min_leads)
    except DataError as e:
        return _Outcome(task.path, "bad", str(e), e.field or "record")
    problem = rec.problem
    out = _Outcome(task.path, rec.verdict, "; ".join(rec.reasons), problem.field if problem else "", rec.n_leads,
                   lead_mask=rec.lead_mask)
    if out.usable:
        out.features = {**ecg_features(rec.signal, task.fs, rec.lead_mask), "n_leads": float(rec.n_leads)}
        if task.slot >= 0:
            wave = np.ascontiguousarray(normalise_waveform(rec.signal, rec.lead_mask))
            part = np.load(task.part, mmap_mode="r+")
            part[task.slot] = wave
            del part
            out.slot = task.slot
    return out


class _WaveStore:
    """Normalised waveforms, one part file per loading round (rows in task order), so memory
    stays bounded and the workers write them in place."""

    def __init__(self, folder: Path, shape: tuple[int, int]):
        self.folder, self.shape = folder, shape
        self.parts: list[tuple[Path, int]] = []          # (file, rows)
        self.where: dict[str, tuple[int, int]] = {}

    def new_part(self, n: int) -> str:
        path = self.folder / f".ecg_waves_part{len(self.parts)}.npy"
        created = open_memmap(path, mode="w+", dtype=np.float32, shape=(max(n, 1), *self.shape))
        del created                                      # the loading processes write its rows
        self.parts.append((path, max(n, 1)))
        return str(path)

    def put(self, key: str, slot: int) -> None:
        self.where[key] = (len(self.parts) - 1, slot)

    def __contains__(self, key: str) -> bool:
        return key in self.where

    def read(self, part: int) -> np.ndarray:
        return np.load(self.parts[part][0], mmap_mode="r")

    def take_whole(self, keys: list[str], dest: Path) -> bool:
        """Move the only part file to ``dest`` when it holds exactly ``keys``' waveforms in order
        (the usual case: every admission's latest record usable); False otherwise."""
        if len(self.parts) != 1 or self.parts[0][1] != len(keys) or not keys:
            return False
        if any(self.where[k] != (0, i) for i, k in enumerate(keys)):
            return False
        os.replace(self.parts[0][0], dest)
        return True

    def close(self) -> None:
        paths = [path for path, _ in self.parts]
        self.parts.clear()
        self.where.clear()
        for path in paths:
            path.unlink(missing_ok=True)


def _pool(n_jobs: int, n_tasks: int):
    """A worker pool (fork where the platform has it: workers start in milliseconds), or None."""
    if n_jobs <= 1 or n_tasks < 2 * n_jobs:
        return None
    method = "fork" if "fork" in mp.get_all_start_methods() else None
    return mp.get_context(method).Pool(n_jobs)


def _walk(paths: list[str], results: dict[str, _Outcome], waves: _WaveStore, select: str):
    """One admission: its chosen record (latest usable, waveform at hand), its usable records, and
    the loads still needed as (path, want_waveform)."""
    chosen, usable, need = None, [], []
    for p in paths:
        res = results.get(p)
        if chosen is None:
            if res is None or (res.usable and p not in waves):
                need.append((p, True))
                break
            if res.usable:
                chosen = p
                usable.append(p)
                if select == "latest":
                    break
        elif res is None:
            need.append((p, False))
        elif res.usable:
            usable.append(p)
    return chosen, usable, need


def featurize_ecg(cohort: pd.DataFrame, index: pd.DataFrame, cfg: ECGConfig, out_dir: Path,
                  quarantine: Quarantine, n_jobs: int = 2, engine=None) -> dict:
    """Write features.parquet, waveforms.npy, lead_mask.npy and qc.parquet into ``out_dir``; see module doc.
    A distributed ``engine`` (pipeline.engine) runs this over shards of subjects on its workers
    and merges the shards into the same files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if engine is not None and engine.distributed:
        from functools import partial

        from pipeline.engine import sharded_stage
        return sharded_stage(partial(featurize_ecg, cfg=cfg, n_jobs=1), cohort, {"index": index}, out_dir,
                             quarantine, engine, arrays=("waveforms.npy", "lead_mask.npy"),
                             tables={"qc.parquet": "path"})
    n_samples = round(cfg.fs * cfg.seconds)
    cand = select_records(cohort, index, cfg)
    per_hadm = {h: g["path"].tolist() for h, g in cand.groupby("hadm_id", sort=False)}
    meta = cand.drop_duplicates("path").set_index("path")[["study_id", "ecg_time"]]
    results: dict[str, _Outcome] = {}
    waves = _WaveStore(out_dir, (len(STANDARD_LEADS), n_samples))
    pool = _pool(n_jobs, len(per_hadm))
    try:
        while True:   # rounds: each loads what the admissions still need (fallbacks after bad records)
            need: dict[str, bool] = {}
            for paths in per_hadm.values():
                for p, want in _walk(paths, results, waves, cfg.select)[2]:
                    need[p] = need.get(p, False) or want
            if not need:
                break
            part = waves.new_part(sum(need.values()))
            slots = np.cumsum(list(need.values())) - 1
            tasks = [_Task(p, int(slots[i]) if want else -1, part, cfg.fs, cfg.seconds, cfg.min_leads)
                     for i, (p, want) in enumerate(need.items())]
            outcomes = (pool.imap(_process, tasks, chunksize=max(1, min(16, len(tasks) // (8 * n_jobs))))
                        if pool is not None else map(_process, tasks))
            for out in track(outcomes, total=len(tasks), desc="ECG records", stage="features_ecg"):
                if out.slot >= 0:
                    waves.put(out.path, out.slot)
                results[out.path] = out
        rows, chosen_paths = [], []
        for hadm, paths in per_hadm.items():
            chosen, usable, _ = _walk(paths, results, waves, cfg.select)
            if chosen is None:
                continue
            rows.append({"hadm_id": hadm, "item_time": meta.at[chosen, "ecg_time"],
                         **_mean_features([results[p].features for p in usable])})
            chosen_paths.append(chosen)
        _write_outputs(out_dir, rows, chosen_paths, results, waves, meta, n_samples)
    finally:
        if pool is not None:
            pool.terminate()     # all work is consumed by now, or an error is on its way up
            pool.join()
        waves.close()

    bad = sorted((o for o in results.values() if not o.usable), key=lambda o: o.path)
    for o in bad:
        sid = meta.at[o.path, "study_id"]
        quarantine.add(SOURCE, o.path, None if pd.isna(sid) else f"study_id={int(sid)}", o.field or "verdict",
                       o.reasons)
    verdicts = pd.Series([o.verdict for o in results.values()], dtype=object).value_counts()
    return {"records_considered": len(results), "records_used": len(set(chosen_paths)), "quarantined": len(bad),
            "rows": len(rows), "verdicts": {v: int(verdicts.get(v, 0)) for v in ("ok", "warn", "bad")}}


def _mean_features(feature_dicts: list[dict]) -> dict[str, float]:
    """Per feature, the mean over the records where it is not NaN (NaN if none); prefixed names."""
    keys = (*FEATURE_NAMES, "n_leads")
    vals = np.array([[d.get(k, np.nan) for k in keys] for d in feature_dicts], np.float64)
    ok = ~np.isnan(vals)
    n = ok.sum(axis=0)
    mean = np.where(n > 0, np.where(ok, vals, 0.0).sum(axis=0) / np.maximum(n, 1), np.nan)
    return {PREFIX + k: float(v) for k, v in zip(keys, mean)}


def _write_outputs(out_dir: Path, rows: list[dict], chosen: list[str], results: dict[str, _Outcome],
                   waves: _WaveStore, meta: pd.DataFrame, n_samples: int) -> None:
    columns = ["hadm_id", "item_time"] + [PREFIX + k for k in (*FEATURE_NAMES, "n_leads")]
    feats = pd.DataFrame(rows, columns=columns)
    feats["hadm_id"] = feats["hadm_id"].astype("int64")
    feats["item_time"] = pd.to_datetime(feats["item_time"])
    feats[columns[2:]] = feats[columns[2:]].astype("float64")
    write_parquet(feats, out_dir / "features.parquet", FEATURES)

    if not waves.take_whole(chosen, out_dir / "waveforms.npy"):
        tmp = out_dir / f".waveforms.npy.tmp{os.getpid()}"
        arr = open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(chosen), len(STANDARD_LEADS), n_samples))
        parts = [waves.read(k) for k in range(len(waves.parts))]
        for i, p in enumerate(chosen):
            part, slot = waves.where[p]
            arr[i] = parts[part][slot]
        arr.flush()
        del arr, parts
        os.replace(tmp, out_dir / "waveforms.npy")
    masks = np.array([results[p].lead_mask for p in chosen], bool).reshape(len(chosen), len(STANDARD_LEADS))
    tmp = out_dir / f".lead_mask.npy.tmp{os.getpid()}.npy"
    np.save(tmp, masks)
    os.replace(tmp, out_dir / "lead_mask.npy")

    used = set(chosen)
    results = dict(sorted(results.items()))   # one row per record, in path order
    qc = pd.DataFrame({
        "path": pd.Series(list(results), dtype=object),
        "study_id": pd.array(meta["study_id"].reindex(list(results)).to_numpy(object), dtype="Int64"),
        "verdict": [o.verdict for o in results.values()],
        "reasons": [o.reasons for o in results.values()],
        "n_leads": pd.array([o.n_leads for o in results.values()], dtype="int64"),
        "used": pd.array([p in used for p in results], dtype=bool),
    })
    write_parquet(qc, out_dir / "qc.parquet")
