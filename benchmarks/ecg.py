"""ECG benchmark: reading, quality control, features and the featurize_ecg stage.

Writes N synthetic 12-lead 500 Hz 10 s records in the MIMIC-IV-ECG layout
(record_list.csv + files/pNNNN/pNNNNNNNN/sNNNNNNNN/NNNNNNNN.hea/.dat, 200 adu/mV,
format 16) to a temporary folder: one neurokit2 12-lead simulation, then per record
a heart-rate stretch (55-110 bpm), a time shift, per-lead gains, noise and baseline
wander (seeded).  Prints records per second of

  rdrecord      a raw ``wfdb.rdrecord`` read (one process)
  load_ecg      reading + quality control into the 12 x 5000 tensor (one process)
  ecg_features  features of loaded records (one process)
  featurize     ``featurize_ecg`` end to end (select, load, QC, features, waveforms,
                outputs), one admission per record, in one process and with --n-jobs
                workers

No assertion on time: the figures are for reading (target: featurize >= 100 records/s
on 2 cores).  The load average is printed with them: on a shared machine the
worker figure is only as good as the idle cores.

    python benchmarks/ecg.py [--n 300] [--n-jobs 2] [--seed 0] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import wfdb

from pipeline.config import ECGConfig
from pipeline.errors import Quarantine
from pipeline.sources.ecg import STANDARD_LEADS, load_ecg, read_record_list
from pipeline.stages.featurize_ecg import ecg_features, featurize_ecg

FS, SECONDS = 500, 10.0
T0 = pd.Timestamp("2180-01-01 08:00")


def simulate_base(seed: int) -> np.ndarray:
    """[samples, 12] mV, 25 s of neurokit2's 12-lead simulation at 60 bpm."""
    import neurokit2 as nk
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = nk.ecg_simulate(duration=25, sampling_rate=FS, heart_rate=60, method="multileads", random_state=seed)
    return df[list(STANDARD_LEADS)].to_numpy()


def variant(base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One 10 s record from the base: rate stretch, shift, gains, noise, baseline wander."""
    n = int(FS * SECONDS)
    rate = rng.uniform(55, 110) / 60.0                      # base is 60 bpm
    start = rng.uniform(0, 2.0)
    t_src = (start + np.arange(n) / FS * rate) * FS          # sample positions in the base
    src = np.arange(base.shape[0])
    x = np.stack([np.interp(t_src, src, base[:, j]) for j in range(12)], axis=1)
    x *= rng.uniform(0.7, 1.3, 12)[None, :]
    x += rng.normal(0, rng.uniform(0.005, 0.03), x.shape)
    t = np.arange(n) / FS
    x += 0.15 * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t + rng.uniform(0, 6.3))[:, None]
    return x


def write_mimic_layout(root: Path, n: int, seed: int, distinct: int | None = None) -> None:
    """n records, one subject each.  With ``distinct`` (< n), only that many are simulated and
    record i >= distinct is a copy of record i % distinct under its own subject, study and file
    names (header and signal file copied, the header's record and file names rewritten): every
    record is still its own pair of files, read and processed on its own, but writing 20,000
    takes the time of ``distinct``."""
    base = simulate_base(seed)
    rng = np.random.default_rng(seed)
    distinct = n if not distinct or distinct >= n else distinct
    rows = []
    for i in range(n):
        subject, study = 10_000_000 + i, 40_000_000 + i
        rel = Path("files") / f"p{str(subject)[:4]}" / f"p{subject}" / f"s{study}"
        folder = root / rel
        folder.mkdir(parents=True, exist_ok=True)
        if i < distinct:
            d = np.clip(np.round(variant(base, rng) * 200), -32767, 32767).astype(np.int64)
            wfdb.wrsamp(str(study), fs=FS, units=["mV"] * 12, sig_name=list(STANDARD_LEADS), d_signal=d,
                        fmt=["16"] * 12, adc_gain=[200.0] * 12, baseline=[0] * 12, write_dir=str(folder))
        else:
            src_study = 40_000_000 + i % distinct
            src = root / rows[i % distinct][4]
            lines = Path(f"{src}.hea").read_text().splitlines()
            lines = [f"{study} " + lines[0].split(" ", 1)[1]] + [
                f"{study}.dat " + ln.split(" ", 1)[1] if ln.startswith(f"{src_study}.dat ") else ln for ln in lines[1:]]
            (folder / f"{study}.hea").write_text("\n".join(lines) + "\n")
            shutil.copyfile(f"{src}.dat", folder / f"{study}.dat")
        rows.append((subject, study, study, T0 + pd.Timedelta(minutes=i), str(rel / str(study))))
    pd.DataFrame(rows, columns=["subject_id", "study_id", "file_name", "ecg_time", "path"]).to_csv(
        root / "record_list.csv", index=False)


def rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None, help="write the records here and keep them")
    args = ap.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="ecg_bench_"))
    try:
        t = time.perf_counter()
        write_mimic_layout(root, args.n, args.seed)
        print(f"wrote {args.n} records to {root} in {time.perf_counter() - t:.1f} s")
        q = Quarantine()
        index = read_record_list(root, q)
        paths = index["path"].tolist()
        figures: dict[str, float] = {}

        t = time.perf_counter()
        for p in paths:
            wfdb.rdrecord(p)
        figures["rdrecord"] = rate(len(paths), time.perf_counter() - t)

        t = time.perf_counter()
        recs = [load_ecg(p, fs=FS, seconds=SECONDS) for p in paths]
        figures["load_ecg"] = rate(len(paths), time.perf_counter() - t)

        t = time.perf_counter()
        feats = [ecg_features(r.signal, FS, r.lead_mask) for r in recs]
        figures["ecg_features"] = rate(len(recs), time.perf_counter() - t)

        cohort = pd.DataFrame({"subject_id": index["subject_id"], "hadm_id": 20_000_000 + np.arange(len(index)),
                               "prediction_time": index["ecg_time"] + pd.Timedelta(hours=2), "split": "train"})
        for n_jobs in dict.fromkeys((1, args.n_jobs)):
            out = Path(tempfile.mkdtemp(prefix="ecg_bench_out_"))
            try:
                t = time.perf_counter()
                counts = featurize_ecg(cohort, index, ECGConfig(), out, Quarantine(), n_jobs=n_jobs)
                figures[f"featurize_n_jobs{n_jobs}"] = rate(len(paths), time.perf_counter() - t)
            finally:
                shutil.rmtree(out, ignore_errors=True)

        hr = np.array([f["hr"] for f in feats])
        verdicts = pd.Series([r.verdict for r in recs]).value_counts().to_dict()
        load = [round(x, 2) for x in os.getloadavg()]
        print("records/s: " + ", ".join(f"{k} {v}" for k, v in figures.items())
              + f"  (cpus {os.cpu_count()}, load average {load})")
        print(json.dumps({"n": args.n, "n_jobs": args.n_jobs, "records_per_s": figures, "verdicts": verdicts,
                          "cpus": os.cpu_count(), "load_average": load,
                          "hr_range": [round(float(np.nanmin(hr)), 1), round(float(np.nanmax(hr)), 1)],
                          "features_nan_fraction": round(float(np.mean([np.isnan(list(f.values())).mean()
                                                                        for f in feats])), 3),
                          "stage_counts": counts}, indent=1))
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
