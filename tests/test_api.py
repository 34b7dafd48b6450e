"""The public Python API (``from pipeline import Run``) on the real MIMIC-IV demo."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import DataError


@pytest.fixture(scope="module")
def run(mimic_demo, tmp_path_factory):
    from pipeline import Run
    out = tmp_path_factory.mktemp("api") / "run"
    return Run.train(mimic_demo, out, {"model": {"gbm_estimators": 40, "fusion_models": ["gbm_early"],
                                                 "single_modality_baselines": False}}, report=False)


def test_train_load_compare(run):
    from pipeline import Run, RunConfig
    again = Run.load(run.path)
    assert again.metrics == run.metrics and isinstance(again.config, RunConfig)
    table = again.compare()
    assert list(table.index) == ["gbm_early"] and {"auroc", "auroc_lo", "auroc_hi", "brier"} <= set(table.columns)
    assert "gbm_early" in repr(again)
    with pytest.raises(DataError, match="not a run folder"):
        Run.load(run.path / "stages")


def test_score_a_frame_matches_the_test_scores(run):
    feats = run.features("test")
    test = run.test_scores().set_index("hadm_id")
    assert len(feats) == len(test)
    scores = run.score(feats.head(8)).set_index("hadm_id")
    np.testing.assert_allclose(scores["risk"], test.loc[scores.index, "risk"], rtol=1e-9)
    assert list(scores.columns[:4]) == ["subject_id", "prediction_time", "risk", "band"]


def test_score_a_root_writes_the_file(run, mimic_demo, tmp_path):
    scores = run.score(mimic_demo, tmp_path / "s.parquet")
    assert (tmp_path / "s.parquet").exists() and len(scores) > len(run.test_scores())


def test_explain_one_admission(run):
    import matplotlib
    matplotlib.use("Agg")
    test = run.test_scores()
    top = run.explain()                                   # default: the highest risk
    assert top.hadm_id == int(test.loc[test["risk"].idxmax(), "hadm_id"])
    h = int(test["hadm_id"].iloc[-1])
    why = run.explain(h)
    assert why.hadm_id == h and why.risk == pytest.approx(float(test.set_index("hadm_id").loc[h, "risk"]))
    assert (why.features["shap"].abs().diff().dropna() <= 1e-12).all()     # largest |SHAP| first
    assert why.present["ehr"] and not why.present["ecg"] and why.modalities["ecg"] == 0
    assert len(why.top(5)) == 5 and why.reasons == [r for r in test.set_index("hadm_id").loc[h, "reasons"].split("; ") if r]
    ax = why.plot(k=6)
    assert len(ax.patches) == 7                           # 6 features + "other features"
    with pytest.raises(DataError, match="not among this run's explained test admissions"):
        run.explain(-1)


def test_report_path(run, tmp_path):
    p = run.report(tmp_path / "r.html")
    assert p == tmp_path / "r.html" and "Model card" in p.read_text(encoding="utf-8")
