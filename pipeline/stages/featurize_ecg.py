"""ECG features and waveforms per admission, from the records before its prediction time.

Selection: for each cohort row, the subject's records with
prediction_time - lookback <= ecg_time <= prediction_time (never after).
``select="latest"`` uses the latest usable one; ``"all"`` averages the features
of every usable record in the window (``max_records`` most recent at most) and
keeps the latest usable record's waveform.  A record that raises ``DataError``
or gets verdict "bad" is quarantined and the next-latest one is tried.

Features (``ecg_features``; NaN where not computable), units ms / bpm / mV:
R peaks by neurokit2 (``ecg_findpeaks``, its default method) on one lead (II,
else the first usable of I, V5, V6, aVF, V4, ...); heart rate and RR statistics
from those; intervals and amplitudes from the median beat of every usable lead
(our own vectorised delineation, ~1 ms: neurokit2's delineation takes ~100 ms a
record).  QRS onset/offset: where the spatial velocity (root sum of squared
lead slopes) leaves/returns under 10 % of its QRS peak; P wave: the largest
deflection 30-300 ms before QRS onset on lead II (or the reference lead); T end:
tangent at the steepest descent of the RMS-over-leads T wave meeting the
isoelectric level (PR segment).  QTc by Bazett on the median RR.

Outputs in ``out_dir``: features.parquet (hadm_id, item_time, ecg__*),
waveforms.npy (float32 [rows, 12, fs*seconds], each lead divided by its 99th
percentile of |x|), lead_mask.npy (bool [rows, 12]), qc.parquet (one row per
record considered).  Rows are in cohort order; an admission without a usable
record is absent (its modality mask comes from that absence).
"""
from __future__ import annotations

import multiprocessing as mp
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.lib.format import open_memmap
from scipy import signal as sps

from data_schemas.modalities import FEATURES
from pipeline.artifacts import write_parquet
from pipeline.config import ECGConfig
from pipeline.errors import DataError, Quarantine
from pipeline.sources.ecg import LEAD_INDEX, SOURCE, STANDARD_LEADS, load_ecg

PREFIX = "ecg__"
FEATURE_NAMES = ("hr", "rr_mean", "rr_std", "sdnn", "rmssd", "rr_cv", "pnn50", "pr", "qrs", "qt", "qtc",
                 "st", "st_max", "st_min", "qrs_amp")
PEAK_LEADS = ("II", "I", "V5", "V6", "aVF", "V4", "III", "V3", "aVL", "V2", "V1", "aVR")
RR_RANGE_MS = (240.0, 2500.0)      # successive R peaks outside this (25-250 bpm) are artefacts, not beats
NN_TOLERANCE = 0.2                 # an RR within 20 % of the median RR counts as normal-to-normal
WAVE_SCALE_FLOOR_MV = 0.05
DELINEATION_LOWPASS_HZ = 40.0
QRS_SLOPE_FRACTION = 0.10          # QRS onset/offset: spatial velocity under this fraction of its QRS peak
P_MIN_MV = 0.03                    # a smaller deflection before the QRS is not called a P wave
T_MIN_MV = 0.03
T_END_FRACTION = 0.10              # T end: the RMS T wave falls under this fraction of its height


# ---------------------------------------------------------------- features of one record

def _r_peaks(x: np.ndarray, fs: int) -> np.ndarray:
    import neurokit2 as nk   # heavy import, only where peaks are found
    try:
        peaks = nk.ecg_findpeaks(x, sampling_rate=fs, method="neurokit")["ECG_R_Peaks"]
    except (ValueError, IndexError):   # neurokit2 on signals without any QRS-like activity
        return np.zeros(0, int)
    return np.unique(np.asarray(peaks, dtype=int))


def _rhythm(rr: np.ndarray) -> dict[str, float]:
    out = {}
    ok = (rr >= RR_RANGE_MS[0]) & (rr <= RR_RANGE_MS[1])
    good = rr[ok]
    if len(good) < 2:
        return out
    out["rr_mean"] = float(good.mean())
    out["hr"] = 60000.0 / out["rr_mean"]
    out["rr_std"] = float(good.std(ddof=1))
    out["rr_cv"] = out["rr_std"] / out["rr_mean"]
    pairs = ok[1:] & ok[:-1]                       # successive differences of two valid RRs
    diffs = np.diff(rr)[pairs]
    if len(diffs):
        out["pnn50"] = float((np.abs(diffs) > 50.0).mean())
    med = np.median(good)
    normal = ok & (np.abs(rr - med) <= NN_TOLERANCE * med)
    if normal.sum() >= 2:
        out["sdnn"] = float(rr[normal].std(ddof=1))
        nn_pairs = normal[1:] & normal[:-1]
        if nn_pairs.any():
            out["rmssd"] = float(np.sqrt(np.mean(np.diff(rr)[nn_pairs] ** 2)))
    return out


def _first_run_below(g: np.ndarray, start: int, stop: int, thr: float, hold: int) -> int | None:
    """First index i in [start, stop) (walking in the direction of stop) from which g stays < thr for hold samples."""
    step = 1 if stop >= start else -1
    count = 0
    for i in range(start, stop, step):
        count = count + 1 if g[i] < thr else 0
        if count >= hold:
            return i - step * (hold - 1)
    return None


def _moving_average(x: np.ndarray, width: int) -> np.ndarray:
    if width <= 1:
        return x
    kernel = np.ones(width) / width
    return np.apply_along_axis(np.convolve, -1, x, kernel, mode="same") if x.ndim > 1 else np.convolve(x, kernel, "same")


@lru_cache(maxsize=8)
def _lowpass(fs: int):
    return sps.butter(2, min(DELINEATION_LOWPASS_HZ, 0.45 * fs), btype="lowpass", fs=fs, output="sos")


def _fiducials(tpl: np.ndarray, r: int, fs: int, rr_ms: float, p_lead: int) -> dict[str, float]:
    """Sample indices of QRS onset/offset, P onset and T end on median beats ``tpl`` [leads, samples]
    (R peak at ``r``), plus the isoelectric window; keys are absent where not found."""
    pts: dict[str, float] = {}
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
    hold = max(1, int(round(10 * ms)))
    on = _first_run_below(g, peak, max(-1, peak - int(150 * ms)), thr, hold)
    off = _first_run_below(g, peak, min(len(g), peak + int(200 * ms)), thr, hold)
    if on is None or off is None:
        return pts
    on += 1                                                          # g[i] is the slope from sample i to i+1
    pts.update(qrs_on=on, qrs_off=off, iso_lo=max(0, on - int(30 * ms)), iso_hi=max(1, on - int(5 * ms)))
    iso = np.median(tpl[:, pts["iso_lo"]:pts["iso_hi"]], axis=1)
    y = tpl - iso[:, None]
    # P wave: largest deflection 40-300 ms before QRS onset on the P lead; onset where it falls under 15 %
    p_lo = max(0, on - int(min(300.0, 0.45 * rr_ms) * ms))
    p_hi = on - int(40 * ms)
    if p_hi - p_lo > int(40 * ms):
        seg = np.abs(y[p_lead, p_lo:p_hi])
        k = int(np.argmax(seg))
        if seg[k] >= P_MIN_MV and 0 < k < len(seg) - 1:
            before = np.flatnonzero(seg[:k] < 0.15 * seg[k])
            if len(before):
                pts.update(p_peak=p_lo + k, p_on=p_lo + before[-1])
    # T wave on the RMS over leads: end where it falls under T_END_FRACTION of its peak height
    t_lo = off + int(80 * ms)
    t_hi = min(n - 1, r + int(min(650.0, 0.9 * rr_ms) * ms))
    if t_hi - t_lo > int(60 * ms):
        rms = np.sqrt((y ** 2).mean(axis=0))
        base = float(np.median(rms[pts["iso_lo"]:pts["iso_hi"]]))
        tp = t_lo + int(np.argmax(rms[t_lo:t_hi]))
        height = rms[tp] - base
        if height > T_MIN_MV and tp < t_hi - 2:
            after = np.flatnonzero(rms[tp:t_hi] - base < T_END_FRACTION * height)
            if len(after):
                pts.update(t_peak=tp, t_end=tp + after[0])
    return pts


def _delineate(tpl: np.ndarray, r: int, fs: int, rr_ms: float, p_lead: int) -> dict[str, float]:
    """Intervals (ms), ST levels and QRS amplitude (mV) from median beats ``tpl`` [leads, samples]."""
    ms = fs / 1000.0
    tpl = sps.sosfiltfilt(_lowpass(fs), tpl, axis=1)                # delineate a 40 Hz low-passed beat
    pts = _fiducials(tpl, r, fs, rr_ms, p_lead)
    out: dict[str, float] = {}
    if "qrs_on" not in pts:
        return out
    on, off = int(pts["qrs_on"]), int(pts["qrs_off"])
    out["qrs"] = (off - on) / ms
    iso = np.median(tpl[:, int(pts["iso_lo"]):int(pts["iso_hi"])], axis=1)
    out["qrs_amp"] = float(np.mean(np.ptp(tpl[:, on:off + 1], axis=1)))
    j60 = off + int(round(60 * ms))
    if j60 < tpl.shape[1]:
        st = tpl[:, j60] - iso
        out["st"], out["st_max"], out["st_min"] = float(st.mean()), float(st.max()), float(st.min())
    if "p_on" in pts:
        out["pr"] = (on - pts["p_on"]) / ms
    if "t_end" in pts:
        out["qt"] = (pts["t_end"] - on) / ms
        out["qtc"] = out["qt"] / np.sqrt(rr_ms / 1000.0)
    return out


def ecg_features(signal: np.ndarray, fs: int, lead_mask) -> dict[str, float]:
    """Rhythm, intervals (ms), levels and amplitudes (mV) of a [12, n] record; NaN where not computable."""
    out = dict.fromkeys(FEATURE_NAMES, float("nan"))
    mask = np.asarray(lead_mask, bool)
    leads = np.flatnonzero(mask)
    if len(leads) == 0 or signal.shape[1] < fs:
        return out
    ref = next(LEAD_INDEX[name] for name in PEAK_LEADS if mask[LEAD_INDEX[name]])
    peaks = _r_peaks(np.asarray(signal[ref], np.float64), fs)
    if len(peaks) < 3:
        return out
    rr = np.diff(peaks) * (1000.0 / fs)
    out.update(_rhythm(rr))
    ok = (rr >= RR_RANGE_MS[0]) & (rr <= RR_RANGE_MS[1])
    if ok.sum() < 2:
        return out
    rr_med = float(np.median(rr[ok]))
    # median beat of every usable lead
    pre = int(min(400.0, 0.6 * rr_med) * fs / 1000)
    post = int(min(700.0, 1.0 * rr_med) * fs / 1000)
    beats = peaks[(peaks - pre >= 0) & (peaks + post < signal.shape[1])]
    if len(beats) == 0:
        return out
    idx = beats[:, None] + np.arange(-pre, post)[None, :]
    tpl = np.median(signal[leads][:, idx], axis=1)                    # [leads, samples]
    p_lead = int(np.flatnonzero(leads == (LEAD_INDEX["II"] if mask[LEAD_INDEX["II"]] else ref))[0])
    out.update(_delineate(tpl.astype(np.float64), pre, fs, rr_med, p_lead))
    return {k: float(v) for k, v in out.items()}


def normalise_waveform(signal: np.ndarray, lead_mask) -> np.ndarray:
    """Each lead divided by its 99th percentile of |x| (floor 0.05 mV); masked leads stay 0."""
    scale = np.percentile(np.abs(signal), 99, axis=1)
    scale = np.maximum(scale, WAVE_SCALE_FLOOR_MV)
    out = (signal / scale[:, None]).astype(np.float32)
    out[~np.asarray(lead_mask, bool)] = 0.0
    return out
