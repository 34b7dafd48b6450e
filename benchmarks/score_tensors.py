"""Scoring --rows admissions (default 500,000) from patient tensors, local against Dask.

Trains ``gbm_early`` (default settings) on a synthetic cohort with all four modalities
(--patients, default 300), then writes --rows admissions resampled from its aligned rows
(fresh ids) as a patient-tensor folder (index.json + safetensors shards of --shard-size
rows), and runs ``mmpipe score --input TENSORS`` on it (calibrated risk, SHAP reasons,
exact modality contributions, written in shards) in a fresh process per engine:

  local   one process
  dask    ``--engine dask --scheduler local``: a LocalCluster of 2 worker processes

Printed: admissions/s of wall time, per CPU-second of every process involved, and the
peak RSS of the driver and of the largest worker.  ``--json FILE`` writes the figures for
benchmarks/projection.py.

    python benchmarks/score_tensors.py [--rows 500000] [--patients 300] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from pipeline.jobs.score import score
run, tensors, out, engine, shard = sys.argv[1:6]
t0 = time.time()
n = score(Path(run), Path(tensors), Path(out), engine=engine, scheduler="local" if engine == "dask" else None,
          shard_size=int(shard), return_frame=False)
wall = time.time() - t0
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rows": n, "wall_s": wall, "cpu_s": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime,
                  "driver_peak_gib": me.ru_maxrss / 2**20, "worker_peak_gib": kids.ru_maxrss / 2**20}))
"""


def make_tensors(run: Path, folder: Path, rows: int, shard: int) -> None:
    from pipeline.stages.tensorize import TensorWriter, iter_shards, shard_table
    src = run / "stages" / "tensorize"
    index = json.loads((src / "index.json").read_text())
    base = pd.concat([shard_table(a, index) for a in iter_shards(src)], ignore_index=True)
    writer = TensorWriter(folder, index["modalities"])
    rng = np.random.default_rng(0)
    for start in range(0, rows, shard):
        k = min(shard, rows - start)
        part = base.iloc[rng.integers(0, len(base), k)].reset_index(drop=True)
        part["hadm_id"] = 90_000_000 + start + np.arange(k)
        part["subject_id"] = part["hadm_id"]
        writer.write(part)
    writer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--shard-size", type=int, default=5000)
    ap.add_argument("--engines", default="local,dask")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from pipeline.artifacts import read_parquet
    from pipeline.config import RunConfig
    from pipeline.jobs.train import train
    from pipeline.synthetic import generate_cohort
    work = args.workdir or Path(tempfile.mkdtemp(prefix="score_tensors_"))
    data, run, tensors = work / "data", work / "run", work / f"tensors_{args.rows}"
    if not (data / "ground_truth.csv.gz").exists():
        generate_cohort(data, n_patients=args.patients, seed=0, progress=False)
    if not (run / "model" / "model.json").exists():
        train(data, run, RunConfig.model_validate({"model": {"fusion_models": ["gbm_early"],
                                                             "single_modality_baselines": False}}), report=False)
    meta = json.loads((run / "model" / "model.json").read_text())
    if not (tensors / "index.json").exists():
        t = time.time()
        make_tensors(run, tensors, args.rows, args.shard_size)
        print(f"wrote {args.rows:,} admissions as patient tensors in {time.time() - t:.0f} s", flush=True)
    print(f"model {meta['kind']}: {len(meta['features'])} features, modalities {meta['modalities']}", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    figures = {"rows": args.rows, "shard_size": args.shard_size, "features": len(meta["features"]),
               "modalities": meta["modalities"], "cpus": os.cpu_count()}
    for engine in [e for e in args.engines.split(",") if e]:   # none: prepare the run and tensors only
        out = work / f"scores_{engine}.parquet"
        r = subprocess.run([sys.executable, "-c", CHILD, str(run), str(tensors), str(out), engine,
                            str(args.shard_size)], capture_output=True, text=True, cwd=REPO, env=env)
        if r.returncode:
            raise SystemExit(r.stderr[-3000:])
        res = json.loads(r.stdout.strip().splitlines()[-1])
        res["per_s"], res["per_cpu_s"] = res["rows"] / res["wall_s"], res["rows"] / res["cpu_s"]
        figures[engine] = {k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}
        print(f"score {engine:5s} {res['rows']:>9,} admissions in {res['wall_s']:6.1f} s: {res['per_s']:8,.0f}/s wall, "
              f"{res['per_cpu_s']:7,.0f} per CPU-second; peak RSS driver {res['driver_peak_gib']:.2f} GiB, "
              f"largest worker {res['worker_peak_gib']:.2f} GiB (SHAP reasons included)", flush=True)
    engines = [e for e in args.engines.split(",") if e in figures]
    if len(engines) == 2:
        a, b = (read_parquet(work / f"scores_{e}.parquet") for e in engines)
        pd.testing.assert_frame_equal(a, b)
        print(f"{' and '.join(engines)} wrote the same scores", flush=True)
    figures["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
