"""Stages write atomically; same seed, same results.  (Killed runs resuming: tests/test_faults.py.)"""
import json

import pandas as pd
import pytest

from pipeline.artifacts import run_stage


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
