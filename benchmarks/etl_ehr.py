"""EHR ETL benchmark: ingest + cohort + features for in-hospital mortality, over every EHR
table the pipeline reads (labevents, chartevents, omr, diagnoses_icd, procedures_icd,
prescriptions, emar, inputevents, outputevents, procedureevents, microbiologyevents,
icustays, admissions with ED times): the same four tables PyHealth reads and more.

Two kinds of input:
  --replicate K1,K2,...  the real MIMIC-IV demo multiplied K times with disjoint ids by
                         ../shared/tools/replicate_mimic.py (needs polars: pip install -e '.[bench]')
  --synth N1,N2,...      the project's synthetic cohort (mimic-iv part only is read)
Each size runs in a fresh child process; the figures printed are wall seconds, input
event rows per second and the child's peak RSS.  Peak memory should stay roughly flat as
the size grows (DuckDB streams with a fixed memory limit).
Figures to beat (../shared/data/README.md, 2 cores, demo x50): PyHealth 2.1 266 s cold,
4.9 GiB peak; a one-pass DuckDB scan of labevents 3 s, 0.23 GiB.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

CHILD = r"""
import json, sys, time
from pathlib import Path
import pandas as pd
from pipeline.artifacts import read_parquet
from pipeline.config import RunConfig
from pipeline.errors import Quarantine
from pipeline.sources.mimic_iv import ingest_mimic_iv
from pipeline.stages.cohort import build_cohort
from pipeline.stages.featurize_ehr import featurize_ehr
root, work = Path(sys.argv[1]), Path(sys.argv[2])
cfg = RunConfig()
t0 = time.time()
(work / "ing").mkdir(parents=True, exist_ok=True)
info = ingest_mimic_iv(root, work / "ing", Quarantine())
t1 = time.time()
icu = work / "ing" / "icustays.parquet"
cohort, counts = build_cohort(read_parquet(work / "ing" / "patients.parquet"),
                              read_parquet(work / "ing" / "admissions.parquet"),
                              read_parquet(icu) if icu.exists() else None, cfg.task)
t2 = time.time()
(work / "fe").mkdir(exist_ok=True)
fe = featurize_ehr(cohort, work / "ing", cfg.ehr, work / "fe", split=True if sys.argv[3:] == ["split"] else None)
t3 = time.time()
print(json.dumps({"tables": info["event_tables_found"], "event_rows": info["event_rows"], "patients": len(read_parquet(work / "ing" / "patients.parquet")),
                  "cohort": len(cohort), "ingest_s": t1 - t0, "cohort_s": t2 - t1, "features_s": t3 - t2,
                  "total_s": t3 - t0, "features": fe}))
"""


def run_child(root: Path, work: Path, split_events: bool = False) -> dict:
    """The ETL in a fresh process; ``split_events``: the features split the events by shard even
    when events.parquet is clustered by subject (what an extract not ordered by subject costs)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", CHILD, str(root), str(work)] + (["split"] if split_events else []),
                       capture_output=True, text=True, cwd=REPO)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["wall_s"] = time.time() - t0
    res["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    res["peak_rss_note"] = "max over children so far" if before else "this child"
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicate", default="", help="comma-separated copy counts of the MIMIC-IV demo, e.g. 10,50")
    ap.add_argument("--synth", default="", help="comma-separated synthetic patient counts, e.g. 1000,10000,50000")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    if not args.replicate and not args.synth:
        args.replicate = "1,10,50"
    work = args.workdir or Path(tempfile.mkdtemp(prefix="etl_bench_"))
    rows = []
    for k in [int(x) for x in args.replicate.split(",") if x]:
        src = work / f"demo_x{k}"
        if not (src / "hosp" / "patients.csv.gz").exists():
            t = time.time()
            subprocess.run([sys.executable, str(SHARED / "tools" / "replicate_mimic.py"),
                            str(SHARED / "data" / "mimic-iv-demo"), str(src), str(k)], check=True,
                           capture_output=True)
            print(f"replicated demo x{k} in {time.time() - t:.0f} s", flush=True)
        res = run_child(src, work / f"run_x{k}")
        rows.append((f"MIMIC-IV demo x{k}", res))
        print(_line(rows[-1]), flush=True)
    for n in [int(x) for x in args.synth.split(",") if x]:
        src = work / f"synth_{n}"
        if not (src / "mimic-iv" / "hosp" / "patients.csv.gz").exists():
            from pipeline.synthetic import generate_cohort
            t = time.time()
            generate_cohort(src, n_patients=n, seed=0, progress=False)
            print(f"generated {n} synthetic patients in {time.time() - t:.0f} s", flush=True)
        res = run_child(src / "mimic-iv", work / f"run_s{n}")
        rows.append((f"synthetic {n} patients", res))
        print(_line(rows[-1]), flush=True)
    if rows:
        print("event tables read: " + ", ".join(rows[0][1]["tables"]))
    print("\nsummary (ingest + cohort + features, fresh process each):")
    for r in rows:
        print("  " + _line(r))


def _line(row) -> str:
    name, r = row
    return (f"{name:24s} patients={r['patients']:>7,} event_rows={r['event_rows']:>11,} cohort={r['cohort']:>7,} "
            f"ingest={r['ingest_s']:.1f}s features={r['features_s']:.1f}s total={r['total_s']:.1f}s "
            f"({r['event_rows'] / r['total_s']:,.0f} rows/s) peak_rss={r['peak_rss_gib']:.2f} GiB")


if __name__ == "__main__":
    main()
