"""Scoring benchmark: patients/s with and without SHAP reasons, and peak memory.

Trains a GBM run once (on the real MIMIC-IV demo by default, or --data ROOT), then
scores N admissions (default 10k and 100k) made by resampling the prepared aligned
rows with fresh ids, in shards, in a fresh process per measurement; prints
patients/s and the child's peak RSS.  Also times one end-to-end `score` job
(ETL + scoring + writing) on the data folder itself.
Target (issue 5): >= 2,000 patients/s with SHAP reasons on the GBM path on 2 cores.
With --fused-sizes it also trains a fused-net primary (fusion_attention, one net) on the
same data and times scoring with explanations (batched expected-gradients SHAP plus exact
modality Shapley).  Target (issue 15): >= 500 patients/s on 2 cores.  It prints patients per
second of wall time and per CPU-second of the scoring process (all its threads), once per
torch thread count in --fused-threads, with the load average: on a shared machine the wall
figure is pessimistic and the CPU-second figure is the fairer one (though spinning OpenMP
threads inflate it too when the cores are contended).
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

CHILD = r"""
import json, sys, time
import numpy as np, pandas as pd
from pathlib import Path
from pipeline.artifacts import read_parquet
from pipeline.jobs.score import Scorer
run, n, shard, explain = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
if len(sys.argv) > 6 and sys.argv[6]:   # torch threads of the fused net's scoring and explaining
    import pipeline.models.fusion
    pipeline.models.fusion.INFERENCE_THREADS = int(sys.argv[6])
scorer = Scorer(run)
base = read_parquet(sys.argv[5])
rng = np.random.default_rng(0)
t0 = time.time()
cpu0 = time.process_time()
done = 0
for start in range(0, n, shard):
    k = min(shard, n - start)
    rows = base.iloc[rng.integers(0, len(base), k)].copy()
    rows["hadm_id"] = np.arange(start, start + k) + 90_000_000
    out = scorer.score_table(rows, explain_rows=explain)
    done += len(out)
dt = time.time() - t0
print(json.dumps({"rows": done, "seconds": dt, "cpu_seconds": time.process_time() - cpu0}))
"""


E2E = r"""
import json, resource, sys, time
from pathlib import Path
from pipeline.jobs.score import score
t0 = time.time()
n = score(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), shard_size=int(sys.argv[4]), return_frame=False)
print(json.dumps({"rows": n, "seconds": time.time() - t0,
                  "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def e2e_job(run: Path, data: Path, out: Path, shard: int) -> dict:
    import shutil
    shutil.rmtree(out.parent / f".{out.stem}_work", ignore_errors=True)  # no cached stages: the whole ETL runs
    r = subprocess.run([sys.executable, "-c", E2E, str(run), str(data), str(out), str(shard)],
                       capture_output=True, text=True, cwd=REPO)
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def child(run: Path, n: int, shard: int, explain: bool, table: Path, threads: int | None = None) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, str(run), str(n), str(shard), "1" if explain else "0", str(table),
                        str(threads or "")], capture_output=True, text=True, cwd=REPO)
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mimic-iv-demo")
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--shard", type=int, default=5000)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--e2e-replicate", default="", help="e.g. 10,100: end-to-end score jobs on the demo x K")
    ap.add_argument("--fused-sizes", default="", help="e.g. 2000,10000: fused-net primary with explanations")
    ap.add_argument("--fused-threads", default="1,2", help="torch threads of the fused-net scoring process")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from pipeline.config import RunConfig
    from pipeline.jobs.score import score
    from pipeline.jobs.train import train
    work = args.workdir or Path(tempfile.mkdtemp(prefix="score_bench_"))
    run = work / "run"
    if not (run / "model" / "model.json").exists():
        train(args.data, run, RunConfig.model_validate({"model": {"fusion_models": ["gbm_early"],
                                                                  "single_modality_baselines": False}}), report=False)
    from pipeline.jobs.prepare import prepare
    from pipeline.sources.discover import discover
    table = work / "aligned.parquet"
    cfg = RunConfig.model_validate(json.loads((run / "config.json").read_text()))
    prepare(discover(args.data), cfg, run, mode="train").table.to_parquet(table)
    t = time.time()
    scores = score(run, args.data, work / "scores.parquet")
    e2e = time.time() - t
    print(f"\nend-to-end `score` job on {args.data.name}: {len(scores)} admissions in {e2e:.1f} s "
          f"(ETL included, {len(scores) / e2e:.0f}/s)")
    print(f"model: {json.loads((run / 'model' / 'model.json').read_text())['kind']}, "
          f"{len(json.loads((run / 'model' / 'model.json').read_text())['features'])} features\n")
    for k in [int(x) for x in args.e2e_replicate.split(",") if x]:
        rep = work / f"demo_x{k}"
        if not (rep / "hosp" / "patients.csv.gz").exists():
            subprocess.run([sys.executable, str(REPO.parent / "shared" / "tools" / "replicate_mimic.py"),
                            str(args.data), str(rep), str(k)], check=True, capture_output=True)
        r = e2e_job(run, rep, work / f"scores_x{k}.parquet", args.shard)
        print(f"end-to-end `score` on the demo x{k}: {r['rows']:,} admissions in {r['seconds']:.1f} s "
              f"({r['rows'] / r['seconds']:,.0f}/s, ETL and SHAP reasons included), peak RSS {r['peak_rss_gib']:.2f} GiB "
              f"(shard {args.shard})", flush=True)
    for n in [int(x) for x in args.sizes.split(",") if x]:
        for explain in (False, True):
            r = child(run, n, args.shard, explain, table)
            print(f"n={n:>7,} shap_reasons={'yes' if explain else 'no ':3s} {r['rows'] / r['seconds']:>9,.0f} patients/s "
                  f"({r['seconds']:.1f} s) peak_rss={r['peak_rss_gib']:.2f} GiB (max over children so far)", flush=True)
    fused_sizes = [int(x) for x in args.fused_sizes.split(",") if x]
    if fused_sizes:
        run_f = work / "run_fused"
        if not (run_f / "model" / "model.json").exists():
            train(args.data, run_f, RunConfig.model_validate({"model": {
                "fusion_models": ["fusion_attention"], "primary": "fusion_attention", "fusion_members": 1,
                "single_modality_baselines": False}}), report=False)
        import os
        for n in fused_sizes:
            for threads in [int(x) for x in args.fused_threads.split(",") if x]:
                r = child(run_f, n, args.shard, True, table, threads)
                print(f"fused-net primary n={n:>7,} with explanations, {threads} torch thread(s): "
                      f"{r['rows'] / r['seconds']:>7,.0f} patients/s wall ({r['seconds']:.2f} s), "
                      f"{r['rows'] / r['cpu_seconds']:>7,.0f} per CPU-second ({r['cpu_seconds']:.2f} s CPU); "
                      f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; target >= 500/s",
                      flush=True)


if __name__ == "__main__":
    main()
