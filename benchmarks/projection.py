"""Full MIMIC-IV wall time on N Dask workers, projected from measured per-item costs.

Reads the JSON figures of benchmarks/etl_scale.py (--etl), benchmarks/stages_dask.py
(--stages) and benchmarks/score_tensors.py (--score) and prints a markdown table.
Model (every worker one core, the data on a shared filesystem; every cost in CPU-seconds,
which a machine shared with other jobs inflates much less than wall seconds):

  EHR ingest     DuckDB on the driver: CPU-seconds per event row x event rows (not split
                 over workers; the ETL's CPU-seconds shared between its steps as their wall
                 times are)
  EHR features   per shard of whole subjects, DuckDB over that shard's rows of the events
                 (events.parquet is clustered by subject, so a shard skips the other
                 subjects' row groups): CPU-seconds per event row x event rows / N
  ECG, imaging   records / (the Dask engine's records per CPU-second) / N
  scoring        admissions / (the Dask engine's admissions per CPU-second) / N

Full MIMIC-IV: 300,000 patients, 430,000 admissions, 800,000 ECGs, 377,000 chest X-rays,
and about 430 M event rows read (labevents 118 M + chartevents 313 M; omr is small).

    python benchmarks/projection.py --etl etl.json --stages stages.json --score score.json [--ecg ecg.json]

``--ecg`` takes the ECG figures from another stages_dask.py JSON (an ``--images 0`` run).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

FULL = {"patients": 300_000, "admissions": 430_000, "ecgs": 800_000, "cxrs": 377_000, "event_rows": 430_000_000}
WORKERS = (1, 2, 8, 32, 128)


def costs(etl: dict, stages: dict, score: dict | None) -> dict:
    """Seconds per item, from the measured figures (scoring left out when not measured)."""
    cpu = etl["cpu_s"] / etl["total_s"]   # the ETL's wall seconds as CPU seconds (its steps in proportion)
    out = {"ingest_per_row": cpu * etl["ingest_s"] / etl["event_rows"],
           "features_per_row": cpu * etl["features_s"] / etl["event_rows"],
           "ecg_per_record": 1.0 / stages["ecg"]["dask"]["per_cpu_s"],
           "image_per_record": 1.0 / stages["imaging"]["dask"]["per_cpu_s"]}
    if score is not None:
        out["score_per_admission"] = 1.0 / score["dask"]["per_cpu_s"]
    return out


def project(c: dict, n: int) -> dict:
    out = {"EHR ingest (driver)": c["ingest_per_row"] * FULL["event_rows"],
           "EHR features": c["features_per_row"] * FULL["event_rows"] / n,
           "ECG (800k)": c["ecg_per_record"] * FULL["ecgs"] / n,
           "imaging (377k)": c["image_per_record"] * FULL["cxrs"] / n}
    if "score_per_admission" in c:
        out["scoring (430k)"] = c["score_per_admission"] * FULL["admissions"] / n
    return out


def fmt(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 else \
        f"{seconds:.0f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--etl", type=Path, required=True)
    ap.add_argument("--stages", type=Path, required=True)
    ap.add_argument("--score", type=Path, default=None)
    ap.add_argument("--ecg", type=Path, default=None, help="stages_dask.py JSON whose ECG figures replace --stages'")
    args = ap.parse_args()
    stages = json.loads(args.stages.read_text())
    if args.ecg is not None:
        stages["ecg"] = json.loads(args.ecg.read_text())["ecg"]
    c = costs(json.loads(args.etl.read_text()), stages,
              json.loads(args.score.read_text()) if args.score and args.score.exists() else None)
    print("measured: " + ", ".join(f"{k} {v:.3g} s" for k, v in c.items()))
    rows = {n: project(c, n) for n in WORKERS}
    steps = list(rows[WORKERS[0]])
    print("\n| step | " + " | ".join(f"{n} worker{'s' if n > 1 else ''}" for n in WORKERS) + " |")
    print("|---|" + "---|" * len(WORKERS))
    for s in steps:
        print(f"| {s} | " + " | ".join(fmt(rows[n][s]) for n in WORKERS) + " |")
    print("| **total** | " + " | ".join(f"**{fmt(sum(rows[n].values()))}**" for n in WORKERS) + " |")


if __name__ == "__main__":
    main()
