"""EHR ETL at scale on one machine: ingest + cohort + features of the MIMIC-IV demo x K.

The replicate is written by ../shared/tools/replicate_mimic.py (needs polars: pip install
-e '.[bench]'; about 1.5 CPU-seconds per copy) unless WORKDIR/demo_xK exists; the ETL runs
in a fresh process (benchmarks/etl_ehr.py's child).  Printed: wall seconds per step, event
rows, admissions, the child's CPU seconds and peak RSS; ``--json FILE`` writes them for
benchmarks/projection.py.  Targets (issue 18, x1000 = 100,000 patients, ~100 M event
rows): under 6 minutes and under 2 GiB.

    python benchmarks/etl_scale.py --replicate 1000 --workdir DIR [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from etl_ehr import SHARED, run_child  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicate", type=int, default=1000)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--split-events", action="store_true",
                    help="features split the events by shard even when they are clustered by subject "
                         "(the cost for an extract not ordered by subject, such as real MIMIC-IV files)")
    args = ap.parse_args()
    k = args.replicate
    src = args.workdir / f"demo_x{k}"
    if not (src / "hosp" / "patients.csv.gz").exists():
        t = time.time()
        subprocess.run([sys.executable, str(SHARED / "tools" / "replicate_mimic.py"),
                        str(SHARED / "data" / "mimic-iv-demo"), str(src), str(k)], check=True, capture_output=True)
        print(f"replicated the demo x{k} in {time.time() - t:.0f} s", flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = run_child(src, args.workdir / f"run_x{k}", args.split_events)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # the ETL process's CPU seconds (DuckDB's threads included): what a loaded machine does not inflate
    res["cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    res["replicate"] = k
    res["admissions"] = res["features"]["rows"]
    res["shards"] = res["features"]["shards"]
    res["events_split"] = res["features"]["events_split"]
    res["replicate_note"] = ("tables the ETL does not read (emar_detail, pharmacy, poe, ...) are not needed "
                             "and may be left out of the replicate")
    res["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print(f"demo x{k}: {res['patients']:,} patients, {res['event_rows']:,} event rows, cohort {res['cohort']:,}; "
          f"ingest {res['ingest_s']:.1f} s, cohort {res['cohort_s']:.1f} s, features {res['features_s']:.1f} s "
          f"({res['shards']} shards, events {'split by shard' if res['events_split'] else 'read by subject range'}), total {res['total_s']:.1f} s ({res['event_rows'] / res['total_s']:,.0f} rows/s), "
          f"{res['cpu_s']:.1f} CPU s; "
          f"peak RSS {res['peak_rss_gib']:.2f} GiB; load average {res['load_average']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
