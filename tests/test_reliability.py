"""Killed runs resume without redoing finished stages; same seed, same results."""
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from pipeline.artifacts import run_stage

MMPIPE = [sys.executable, "-m", "pipeline.cli"]


def test_stage_writes_atomically_and_failed_stage_leaves_nothing(tmp_path):
    def boom(tmp):
        (tmp / "half.parquet").write_text("partial")
        raise RuntimeError("killed")
    with pytest.raises(RuntimeError):
        run_stage("s", tmp_path / "s", {"a": "1"}, {}, boom, log=lambda m: None)
    assert not (tmp_path / "s").exists()
    calls = []
    run_stage("s", tmp_path / "s", {"a": "1"}, {}, lambda t: calls.append(1), log=lambda m: None)
    run_stage("s", tmp_path / "s", {"a": "1"}, {}, lambda t: calls.append(1), log=lambda m: None)
    assert calls == [1]                                          # second call skipped
    run_stage("s", tmp_path / "s", {"a": "2"}, {}, lambda t: calls.append(2), log=lambda m: None)
    run_stage("s", tmp_path / "s", {"a": "2"}, {"k": 1}, lambda t: calls.append(3), log=lambda m: None)
    assert calls == [1, 2, 3]                                    # input change and config change rerun


def _train(data, out, env=None):
    return subprocess.Popen(MMPIPE + ["train", "--data", str(data), "--out", str(out), "--no-report"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)


def test_killed_run_resumes_and_matches_an_uninterrupted_run(mimic_demo, tmp_path):
    clean = tmp_path / "clean"
    p = _train(mimic_demo, clean)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-2000:]
    killed = tmp_path / "killed"
    # Kill right after a stage finishes (so the next one is mid-way), twice.
    for marker in ("ingest_ehr", "features_ehr"):
        p = _train(mimic_demo, killed)
        deadline = time.time() + 300
        while not (killed / "stages" / marker / "manifest.json").exists() and time.time() < deadline:
            time.sleep(0.02)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        for d in (killed / "stages").glob("*") if (killed / "stages").exists() else []:
            if not d.name.startswith("."):
                assert (d / "manifest.json").exists(), f"half-written stage {d}"
    done_before = {d.name: (d / "manifest.json").stat().st_mtime_ns
                   for d in (killed / "stages").glob("[!.]*")} if (killed / "stages").exists() else {}
    assert {"ingest_ehr", "cohort", "features_ehr"} <= set(done_before)
    p = _train(mimic_demo, killed)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-2000:]
    for name, mtime in done_before.items():
        assert (killed / "stages" / name / "manifest.json").stat().st_mtime_ns == mtime, f"{name} was redone"
        assert f"[{name}] up to date, skipped" in out
    a = pd.read_parquet(clean / "test_scores.parquet")
    b = pd.read_parquet(killed / "test_scores.parquet")
    pd.testing.assert_frame_equal(a, b)


def test_same_seed_same_splits_models_and_scores(mimic_demo, tmp_path):
    from pipeline.config import RunConfig
    from pipeline.jobs.train import train
    cfg = RunConfig.model_validate({"model": {"gbm_estimators": 40}})
    train(mimic_demo, tmp_path / "a", cfg, report=False)
    train(mimic_demo, tmp_path / "b", cfg, report=False)
    for f in ("stages/cohort/cohort.parquet", "test_scores.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / f), pd.read_parquet(tmp_path / "b" / f))
    assert (tmp_path / "a/model/primary/booster.txt").read_text() == (tmp_path / "b/model/primary/booster.txt").read_text()
    ma = json.loads((tmp_path / "a/metrics.json").read_text())["models"]
    mb = json.loads((tmp_path / "b/metrics.json").read_text())["models"]
    assert ma.keys() == mb.keys() and all(ma[k]["auroc"] == mb[k]["auroc"] for k in ma)
