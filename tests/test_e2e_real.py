"""End to end on the real MIMIC-IV demo: train, score in a fresh process, resume."""
import json
from pathlib import Path
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from pipeline.config import RunConfig
from pipeline.jobs.train import train

MMPIPE = [sys.executable, "-m", "pipeline.cli"]


@pytest.fixture(scope="module")
def demo_run(mimic_demo, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    cfg = RunConfig.model_validate({"model": {"gbm_estimators": 150}})
    metrics = train(mimic_demo, run, cfg, report=True)
    return run, metrics


def test_train_on_real_demo_writes_every_artifact(demo_run):
    run, metrics = demo_run
    for f in ("metrics.json", "leakage.json", "quarantine.parquet", "test_scores.parquet", "model/model.json",
              "model/primary/booster.txt", "explanation/shap_values.parquet", "report/index.html", "sources.json"):
        assert (run / f).exists(), f
    assert metrics["cohort"]["admissions"] == 275
    assert metrics["sources"]["absent"] == ["ecg", "notes", "cxr"]
    assert metrics["leakage_passed"]
    m = metrics["models"][metrics["primary"]]
    assert m["n"] == metrics["splits"]["test"]
    # the reported AUROC is the one of the written test scores against the cohort's labels
    from sklearn.metrics import roc_auc_score
    scores = pd.read_parquet(run / "test_scores.parquet")
    labels = pd.read_parquet(run / "stages" / "cohort" / "cohort.parquet").set_index("hadm_id")["label"]
    y = labels.loc[scores["hadm_id"]].to_numpy()
    assert len(scores) == m["n"] and 0 < y.sum() < len(y)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, scores["risk"]), abs=1e-12)
    html = (run / "report" / "index.html").read_text()
    assert "confidence intervals are wide" in html and "data:image/png;base64" in html
    for stage in ("ingest_ehr", "cohort", "features_ehr"):
        man = json.loads((run / "stages" / stage / "manifest.json").read_text())
        assert man["inputs"] and man["config_hash"] and man["row_counts"]


def test_score_in_a_fresh_process_matches_training_scores(demo_run, mimic_demo, tmp_path):
    run, _ = demo_run
    out = tmp_path / "scores.parquet"
    r = subprocess.run(MMPIPE + ["score", "--model", str(run), "--input", str(mimic_demo), "--output", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    s = pd.read_parquet(out)
    assert list(s.columns[:6]) == ["subject_id", "hadm_id", "prediction_time", "risk", "band", "reasons"]
    assert {"ehr", "ecg", "notes", "imaging"} <= set(s.columns)
    assert s["hadm_id"].is_unique and len(s) == 245
    assert (tmp_path / "scores_quarantine.parquet").exists()
    t = pd.read_parquet(run / "test_scores.parquet").set_index("hadm_id")
    both = s.set_index("hadm_id").loc[t.index]
    assert np.allclose(both["risk"], t["risk"]) and (both["reasons"] == t["reasons"]).all()
    assert (s[["ecg", "notes", "imaging"]] == 0).all().all()   # absent modalities contribute nothing


def test_rerun_skips_finished_stages_and_config_change_reruns(mimic_demo, tmp_path):
    cfg = RunConfig.model_validate({"model": {"gbm_estimators": 30, "fusion_models": ["gbm_early"]}})
    train(mimic_demo, tmp_path, cfg, report=False)
    before = {s: (tmp_path / "stages" / s / "manifest.json").stat().st_mtime_ns for s in ("ingest_ehr", "features_ehr")}
    train(mimic_demo, tmp_path, cfg, report=False)
    assert all((tmp_path / "stages" / s / "manifest.json").stat().st_mtime_ns == t for s, t in before.items())
    cfg2 = RunConfig.model_validate({"model": {"gbm_estimators": 30, "fusion_models": ["gbm_early"]},
                                     "ehr": {"max_codes": 40}})
    train(mimic_demo, tmp_path, cfg2, report=False)
    assert (tmp_path / "stages" / "ingest_ehr" / "manifest.json").stat().st_mtime_ns == before["ingest_ehr"]
    assert (tmp_path / "stages" / "features_ehr" / "manifest.json").stat().st_mtime_ns != before["features_ehr"]
    assert not list((tmp_path / "stages").glob(".*tmp"))


def test_cli_lists_the_contract_commands():
    r = subprocess.run(MMPIPE + ["--help"], capture_output=True, text=True)
    for c in ("synth", "inspect", "train", "score", "report", "demo"):
        assert c in r.stdout


def _inspect_json(root, tmp_path) -> dict:
    """Run `mmpipe inspect --json` in a subprocess; it must exit 0; return the JSON."""
    out = tmp_path / "inspect.json"
    r = subprocess.run(MMPIPE + ["inspect", "--data", str(root), "--json", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(out.read_text())


def test_inspect_real_demo_json(mimic_demo, tmp_path):
    j = _inspect_json(mimic_demo, tmp_path)
    assert j["mimic_iv"]["tables"]["admissions"]["rows"] == 275
    assert "chartevents" in j["mimic_iv"]["absent"]


def test_inspect_unusable_root_exits_nonzero(tmp_path):
    r = subprocess.run(MMPIPE + ["inspect", "--data", str(tmp_path / "missing")], capture_output=True, text=True)
    assert r.returncode != 0 and "does not exist" in r.stderr


def test_dask_engine_gives_the_same_scores(demo_run, mimic_demo, tmp_path):
    from pipeline.jobs.score import score
    run, _ = demo_run
    local = score(run, mimic_demo, tmp_path / "local.parquet", shard_size=100)
    dask = score(run, mimic_demo, tmp_path / "dask.parquet", engine="dask", scheduler="local", shard_size=100)
    pd.testing.assert_frame_equal(local, dask)


def test_score_refuses_a_model_folder_that_is_not_one(mimic_demo, tmp_path):
    r = subprocess.run(MMPIPE + ["score", "--model", str(tmp_path), "--input", str(mimic_demo), "--output",
                                 str(tmp_path / "s.parquet")], capture_output=True, text=True)
    assert r.returncode == 2 and "model/model.json" in r.stderr


def test_train_and_score_on_the_real_eicu_demo_subset(tmp_path):
    from conftest import shared
    from pipeline.jobs.score import score
    eicu = shared("eicu-crd-demo-subset")
    cfg = RunConfig.model_validate({"model": {"gbm_estimators": 60, "fusion_models": ["gbm_early"]}})
    metrics = train(eicu, tmp_path / "run", cfg, report=True)
    assert metrics["sources"]["found"] == {"eicu": str(eicu)}
    assert metrics["cohort"]["admissions"] == 144 and metrics["cohort"]["cohort"] > 100
    s = score(tmp_path / "run", eicu, tmp_path / "s.parquet")
    assert len(s) == metrics["cohort"]["cohort"] and s["risk"].between(0, 1).all()


@pytest.mark.parametrize("primary", ["gbm_late", "linear_early", "linear_late", "fusion_attention"])
def test_other_primary_models_train_score_and_explain(mimic_demo, tmp_path, primary):
    from pipeline.jobs.score import score
    cfg = RunConfig.model_validate({"model": {"gbm_estimators": 60, "fusion_models": ["gbm_early", primary],
                                              "primary": primary, "single_modality_baselines": False}})
    metrics = train(mimic_demo, tmp_path / "run", cfg, report=False)
    assert metrics["primary"] == primary
    t = pd.read_parquet(tmp_path / "run" / "test_scores.parquet")
    assert t["reasons"].str.len().gt(0).all() and t["ehr"].notna().all()
    s = score(tmp_path / "run", mimic_demo, tmp_path / "s.parquet").set_index("hadm_id").loc[t.hadm_id]
    assert np.allclose(s["risk"].to_numpy(), t["risk"].to_numpy(), atol=1e-6)


def test_inspect_wfdb_samples_gives_every_record_a_verdict(tmp_path):
    from conftest import shared
    recs = {Path(x["record"]).name: x for x in _inspect_json(shared("wfdb-samples"), tmp_path)["ecg"]["records"]}
    assert set(recs) >= {"1", "2", "100", "s0010_re", "v102s", "test01_00s"}
    for x in recs.values():
        assert x["verdict"] in ("ok", "warn", "bad") and isinstance(x["reasons"], list)
    assert recs["1"]["verdict"] == "ok" and recs["test01_00s"]["verdict"] == "bad"


def test_inspect_synthetic_root(synth_root, tmp_path):
    j = _inspect_json(synth_root, tmp_path)
    assert j["sources"]["absent"] == []
    assert j["ecg"]["records"] and all({"record", "verdict", "reasons"} <= set(x) for x in j["ecg"]["records"])
    assert j["images"]["verdicts"]["bad"] == 0 and j["notes"]["notes"] > 0
    assert j["mimic_iv"]["tables"]["chartevents"]["rows"] > 0
