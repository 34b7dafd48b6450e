"""The walking skeleton end to end on a small synthetic cohort, through the CLI."""
import json
import subprocess
import sys

import pandas as pd

MMPIPE = [sys.executable, "-m", "pipeline.cli"]


def test_synth_writes_the_contract_layout(tmp_path):
    r = subprocess.run(MMPIPE + ["synth", "--patients", "30", "--seed", "3", "--out", str(tmp_path / "root")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    root = tmp_path / "root"
    for d in ("mimic-iv/hosp", "mimic-iv/icu", "mimic-iv-ecg", "mimic-iv-note/note", "mimic-cxr-jpg"):
        assert (root / d).is_dir(), d
    assert (root / "mimic-iv/hosp/patients.csv.gz").exists() and (root / "mimic-iv-ecg/record_list.csv").exists()
    assert (root / "mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv.gz").exists()


def test_demo_end_to_end(tmp_path):
    r = subprocess.run(MMPIPE + ["demo", "--patients", "120", "--workdir", str(tmp_path / "w"),
                                 "--reports", str(tmp_path / "reports")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "test AUROC" in r.stdout and "report:" in r.stdout
    report = tmp_path / "reports" / "demo" / "index.html"
    assert report.exists() and "data:image/png;base64" in report.read_text()
    scores = pd.read_parquet(tmp_path / "w" / "scores.parquet")
    assert list(scores.columns) == ["subject_id", "hadm_id", "prediction_time", "risk", "band", "reasons",
                                    "ehr", "ecg", "notes", "imaging"]
    assert scores["risk"].between(0, 1).all() and scores["hadm_id"].is_unique
    assert (tmp_path / "w" / "scores_quarantine.parquet").exists()
    metrics = json.loads((tmp_path / "w" / "run" / "metrics.json").read_text())
    assert metrics["sources"]["absent"] == [] and metrics["leakage_passed"]
    for stage in ("ingest_ehr", "cohort", "features_ehr", "features_ecg", "features_notes", "features_imaging"):
        m = json.loads((tmp_path / "w" / "run" / "stages" / stage / "manifest.json").read_text())
        assert m["config_hash"] and m["inputs"], stage
    # a second demo run reuses the generated data and every finished stage
    r2 = subprocess.run(MMPIPE + ["demo", "--patients", "120", "--workdir", str(tmp_path / "w"),
                                  "--reports", str(tmp_path / "reports")], capture_output=True, text=True)
    assert r2.returncode == 0 and "up to date" in r2.stdout
