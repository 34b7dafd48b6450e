"""ECG and imaging stages: the local engine against Dask with 2 worker processes (1 thread each).

Writes N synthetic 12-lead 500 Hz 10 s records in the MIMIC-IV-ECG layout (the generator
of benchmarks/ecg.py; with ``--distinct K`` only K are simulated and the others are copies of
them under their own ids and file names: each of the N is still read and processed on its own,
the copies only spare the minutes of simulating them) and M synthetic chest films as full-size MIMIC-CXR-JPG files
(2544 x 3056 8-bit grayscale JPEGs, quality 90, one per admission), then runs
``featurize_ecg`` and ``featurize_imaging``:

  local   the stage in this process with its own pool of --n-jobs processes
  dask    ``pipeline.engine.Engine('dask', 'local')``: a LocalCluster of 2 worker processes,
          shards of --shard-size admissions (whole subjects), merged by the driver

and checks that both engines wrote the same features.  Printed per stage and engine: wall
seconds and records/s of wall time; CPU seconds (user + system) of every process that did
the work (this process, its finished children such as the local pool, and its live
descendants such as the Dask workers) and records per CPU-second: the per-core rate, which a
machine shared with other jobs lowers much less than the wall rate.  The load average is
printed with them.  Target (issue 18): ECG >= 100 records/s per core.  ``--json FILE``
writes the figures for benchmarks/projection.py.

    python benchmarks/stages_dask.py [--ecg 20000 [--distinct 2000]] [--images 2000] [--shard-size 500]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

T0 = pd.Timestamp("2180-01-01 08:00")


def cpu_seconds() -> float:
    """CPU seconds of this process, its finished children and its live descendants."""
    import psutil
    own = resource.getrusage(resource.RUSAGE_SELF)
    done = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + done.ru_utime + done.ru_stime
    for p in psutil.Process().children(recursive=True):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def write_films(root: Path, n: int, seed: int) -> pd.DataFrame:
    """n full-size grayscale JPEGs (smooth anatomy-like shading plus noise) and their index."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    h, w = 3056, 2544
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 120 + 60 * np.exp(-(((xx - w / 2) / (0.18 * w)) ** 2)) * (yy / h) \
        - 50 * np.exp(-(((xx - 0.3 * w) / (0.12 * w)) ** 2 + ((yy - 0.45 * h) / (0.25 * h)) ** 2)) \
        - 50 * np.exp(-(((xx - 0.7 * w) / (0.12 * w)) ** 2 + ((yy - 0.45 * h) / (0.25 * h)) ** 2))
    rows = []
    for i in range(n):
        subject, study = 10_000_000 + i, 50_000_000 + i
        dicom = f"{i:08d}-bench"
        path = root / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        img = base * rng.uniform(0.85, 1.15) + rng.normal(0, 6, (h // 8, w // 8)).repeat(8, 0).repeat(8, 1)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="L").save(path, quality=90)
        rows.append((subject, study, dicom, T0 + pd.Timedelta(minutes=i), "PA", str(path)))
    return pd.DataFrame(rows, columns=["subject_id", "study_id", "dicom_id", "image_time", "view_position", "path"])


def cohort_for(index: pd.DataFrame, time_col: str) -> pd.DataFrame:
    """One admission per record, predicted two hours after it."""
    return pd.DataFrame({"subject_id": index["subject_id"].to_numpy(),
                         "hadm_id": 20_000_000 + np.arange(len(index)),
                         "prediction_time": (index[time_col] + pd.Timedelta(hours=2)).to_numpy(),
                         "split": "train"})


def warm() -> None:
    import pipeline.stages.featurize_ecg  # noqa: F401  (neurokit2)
    from pipeline.sources.imaging import _pipeline
    _pipeline("jpeg", 64)


def measure(name: str, run, n: int, engines: dict) -> dict:
    """Run ``run(out_dir, engine)`` with each engine; figures and the features written."""
    from pipeline.artifacts import read_parquet
    from pipeline.engine import Engine
    res, frames = {}, {}
    for kind, kw in engines.items():
        out = Path(tempfile.mkdtemp(prefix=f"{name}_{kind}_"))
        try:
            with Engine(**kw) as eng:
                warm()   # imports and MONAI transforms built before the clock starts, here and on the workers
                if eng.distributed:
                    eng.client().wait_for_workers(2)
                    eng.client().run(warm)
                c0, t0 = cpu_seconds(), time.perf_counter()
                run(out, eng)
                wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
            frames[kind] = read_parquet(out / "features.parquet")
        finally:
            shutil.rmtree(out, ignore_errors=True)
        res[kind] = {"records": n, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                     "per_s": round(n / wall, 1), "per_cpu_s": round(n / cpu, 1)}
        print(f"{name:8s} {kind:6s} {n:>7,} records in {wall:7.1f} s wall: {n / wall:7.1f}/s; "
              f"{cpu:7.1f} CPU s: {n / cpu:6.1f} per CPU-second  (load average "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())})", flush=True)
    if len(frames) == 2:
        pd.testing.assert_frame_equal(*frames.values())
        print(f"{name:8s} local and dask features equal ({len(frames['local'])} rows)", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ecg", type=int, default=20000, help="ECG records (0: skip)")
    ap.add_argument("--distinct", type=int, default=0,
                    help="simulate only this many ECG records; the rest are file copies under their own ids")
    ap.add_argument("--images", type=int, default=2000, help="chest films (0: skip)")
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="keep the generated records here (reused)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from pipeline.artifacts import read_parquet
    from pipeline.config import ECGConfig, ImagingConfig
    from pipeline.errors import Quarantine
    from pipeline.sources.ecg import read_record_list
    from pipeline.stages.featurize_ecg import featurize_ecg
    from pipeline.stages.featurize_imaging import featurize_imaging

    work = args.workdir or Path(tempfile.mkdtemp(prefix="stages_bench_"))
    engines = {"local": {"kind": "local"},
               "dask": {"kind": "dask", "scheduler": "local", "shard_rows": args.shard_size}}
    figures = {"cpus": os.cpu_count(), "shard_size": args.shard_size}
    try:
        if args.ecg:
            from ecg import write_mimic_layout
            distinct = args.distinct if 0 < args.distinct < args.ecg else args.ecg
            root = work / f"ecg_{args.ecg}" if distinct == args.ecg else work / f"ecg_{args.ecg}_of_{distinct}"
            if not (root / "record_list.csv").exists():
                t = time.perf_counter()
                write_mimic_layout(root, args.ecg, args.seed, distinct)
                print(f"wrote {args.ecg} ECG records ({distinct} simulated) in {time.perf_counter() - t:.0f} s",
                      flush=True)
            figures["ecg_distinct"] = distinct
            index = read_record_list(root, Quarantine())
            cohort = cohort_for(index, "ecg_time")
            figures["ecg"] = measure("ecg", lambda out, eng: featurize_ecg(
                cohort, index, ECGConfig(), out, Quarantine(), n_jobs=args.n_jobs, engine=eng), len(index), engines)
        if args.images:
            root = work / f"cxr_{args.images}"
            if not (root / "index.parquet").exists():
                t = time.perf_counter()
                write_films(root, args.images, args.seed).to_parquet(root / "index.parquet")
                print(f"wrote {args.images} chest films in {time.perf_counter() - t:.0f} s", flush=True)
            index = read_parquet(root / "index.parquet")
            cohort = cohort_for(index, "image_time")
            figures["imaging"] = measure("imaging", lambda out, eng: featurize_imaging(
                cohort, index, ImagingConfig(), out, Quarantine(), n_jobs=args.n_jobs, engine=eng), len(index),
                engines)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    figures["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
