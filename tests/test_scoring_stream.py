"""Scoring streams in shards: sharded ETL and scoring give the same rows as one shard,
prepared patient tensors score like the raw layouts, and mismatched tensors are refused."""
import json

import numpy as np
import pandas as pd
import pytest

from pipeline.artifacts import ParquetShardWriter
from pipeline.config import RunConfig, TaskConfig
from pipeline.errors import DataError
from pipeline.jobs.score import score
from pipeline.jobs.train import train

COLS = ["risk", "ehr", "ecg", "notes", "imaging"]


def _train_run(kind, synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"run_{kind}")
    # one net, not the default ensemble of three: sharding is what is tested here (test_fusion
    # tests ensembles, test_e2e_real the default configuration end to end)
    cfg = RunConfig.model_validate({"model": {"gbm_estimators": 60, "fusion_models": [kind],
                                              "primary": kind, "single_modality_baselines": False,
                                              "fusion_members": 1}})
    train(synth_root, out / "run", cfg, report=False)
    return out / "run"


@pytest.fixture(scope="module")
def gbm_run(synth_root, tmp_path_factory):
    return _train_run("gbm_early", synth_root, tmp_path_factory)


@pytest.fixture(scope="module")
def fusion_run(synth_root, tmp_path_factory):
    return _train_run("fusion_early", synth_root, tmp_path_factory)


@pytest.fixture(params=["gbm", "fusion"])
def synth_run(request):
    """Each model kind's run (trained once per module)."""
    return request.getfixturevalue(f"{request.param}_run")


def test_shard_size_does_not_change_scores_and_tensors_score_the_same(synth_run, synth_root, tmp_path):
    one = score(synth_run, synth_root, tmp_path / "one.parquet", shard_size=100_000).set_index("hadm_id")
    many = score(synth_run, synth_root, tmp_path / "many.parquet", shard_size=37).set_index("hadm_id")
    assert len(one) == len(many) > 100 and one.index.is_unique
    assert np.allclose(many.loc[one.index, COLS].to_numpy(), one[COLS].to_numpy(), atol=1e-6)
    assert (many.loc[one.index, "reasons"] == one["reasons"]).all()
    # the scoring job wrote its shards as patient tensors; scoring those gives the same rows
    tensors = tmp_path / ".many_work" / "tensors"
    index = json.loads((tensors / "index.json").read_text())
    assert len(index["shards"]) == -(-len(one) // 37)
    again = score(synth_run, tensors, tmp_path / "again.parquet").set_index("hadm_id")
    assert np.allclose(again.loc[one.index, COLS].to_numpy(), one[COLS].to_numpy(), atol=1e-6)
    assert (again.loc[one.index, "prediction_time"] == one["prediction_time"]).all()


def test_training_tensors_rescore_to_the_test_scores(synth_run, tmp_path):
    test = pd.read_parquet(synth_run / "test_scores.parquet").set_index("hadm_id")
    s = score(synth_run, synth_run / "stages" / "tensorize", tmp_path / "s.parquet").set_index("hadm_id")
    assert np.allclose(s.loc[test.index, COLS].to_numpy(), test[COLS].to_numpy(), atol=1e-6)


def test_tensors_with_another_feature_set_are_refused(gbm_run, synth_root, tmp_path):
    """The feature check does not depend on the model kind: run once, with the GBM."""
    synth_run = gbm_run
    cfg = RunConfig.model_validate({"ehr": {"max_codes": 5}, "modalities": ["ehr"],
                                    "model": {"gbm_estimators": 20, "fusion_models": ["gbm_early"],
                                              "single_modality_baselines": False}})
    train(synth_root, tmp_path / "small", cfg, report=False)
    with pytest.raises(DataError, match="features do not match the model's") as e:
        score(synth_run, tmp_path / "small" / "stages" / "tensorize", tmp_path / "x.parquet")
    assert "index.json" in str(e.value) and not (tmp_path / "x.parquet").exists()


def test_sharded_ehr_features_equal_one_pass(tmp_path):
    from pipeline.config import EHRConfig
    from pipeline.errors import Quarantine
    from pipeline.sources.mimic_iv import ingest_mimic_iv
    from pipeline.stages.cohort import build_cohort
    from pipeline.stages.featurize_ehr import featurize_ehr
    from tests.ehr_fixtures import write_mimic
    root = write_mimic(tmp_path / "m")
    ingest_mimic_iv(root, tmp_path / "ing", Quarantine())
    cohort, _ = build_cohort(pd.read_parquet(tmp_path / "ing" / "patients.parquet"),
                             pd.read_parquet(tmp_path / "ing" / "admissions.parquet"), None, TaskConfig())
    cohort["split"] = "train"
    frames = []
    for name, rows in (("a", 100_000), ("b", 1)):
        (tmp_path / name).mkdir()
        info = featurize_ehr(cohort, tmp_path / "ing", EHRConfig(), tmp_path / name, shard_rows=rows)
        assert info["shards"] == (1 if rows > 1 else cohort["subject_id"].nunique())   # shards of whole subjects
        frames.append(pd.read_parquet(tmp_path / name / "features.parquet"))
    pd.testing.assert_frame_equal(frames[0], frames[1])
    assert frames[0]["hadm_id"].is_monotonic_increasing


def test_shard_writer_refuses_a_changed_schema_and_leaves_nothing(tmp_path):
    path = tmp_path / "x.parquet"
    with pytest.raises(DataError, match="columns differ"):
        with ParquetShardWriter(path) as w:
            w.write(pd.DataFrame({"a": [1], "b": [2.0]}))
            w.write(pd.DataFrame({"a": [1], "c": [2.0]}))
    assert not path.exists() and not list(tmp_path.iterdir())
    with ParquetShardWriter(path) as w:
        w.write(pd.DataFrame({"a": [1], "b": [2.0]}))
        w.write(pd.DataFrame({"a": [3], "b": [np.nan]}))
    assert pd.read_parquet(path)["a"].tolist() == [1, 3]


def test_shard_writer_with_no_part_writes_the_schema_columns(tmp_path):
    """A scoring job with nothing to score still writes a valid, empty score file."""
    from data_schemas.modalities import SCORES
    path = tmp_path / "s.parquet"
    with ParquetShardWriter(path, SCORES):
        pass
    back = pd.read_parquet(path)
    assert len(back) == 0 and set(SCORES.required) <= set(back.columns)
    SCORES.validate(back, path)
