"""pipeline.engine: shards of whole subjects, and stages run over shards on a Dask cluster
(here an in-process one, two single-thread workers) write exactly the local engine's outputs.
The multi-process cluster, with a worker killed, is in test_cluster.py."""
import numpy as np
import pandas as pd
import pytest

from pipeline.config import ECGConfig, EHRConfig, TaskConfig
from pipeline.engine import Engine, map_shards, subject_shards
from pipeline.errors import DataError, Quarantine
from pipeline.stages.featurize_ecg import featurize_ecg
from tests.test_ecg import stage_inputs  # noqa: F401  (the ECG stage fixture: fallbacks, bad records)


@pytest.fixture(scope="module")
def engine():
    from dask.distributed import LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        with Engine("dask", cluster.scheduler_address, shard_rows=1) as eng:
            yield eng


def test_subject_shards_keep_subjects_whole_and_rows_in_order():
    frame = pd.DataFrame({"subject_id": [7, 3, 7, 9, 3, 9, 9, 1], "hadm_id": range(8)})
    shards = subject_shards(frame, rows=3)
    assert [s["hadm_id"].tolist() for s in shards] == [[0, 1, 2, 4], [3, 5, 6], [7]]   # by start offset // rows
    assert sorted(pd.concat(shards)["hadm_id"]) == list(range(8))
    assert [s["hadm_id"].tolist() for s in subject_shards(frame, rows=1)] == [[0, 2], [1, 4], [3, 5, 6], [7]]
    assert subject_shards(frame.iloc[:0], rows=3) == []


@pytest.mark.parametrize("select", ["latest", "all"])
def test_sharded_ecg_stage_equals_local(stage_inputs, engine, tmp_path, select):  # noqa: F811
    cohort, index, _ = stage_inputs
    # subject 2 has two admissions around subject 1's: the merge must restore the cohort's order
    extra = pd.DataFrame({"subject_id": [2], "hadm_id": [25], "prediction_time": [cohort["prediction_time"].iloc[0]],
                          "split": ["train"]})
    cohort = pd.concat([cohort.iloc[:2], extra, cohort.iloc[2:]], ignore_index=True)
    cfg = ECGConfig(select=select)
    q_local, q_dask = Quarantine(), Quarantine()
    local = featurize_ecg(cohort, index, cfg, tmp_path / "local", q_local, n_jobs=1)
    dask = featurize_ecg(cohort, index, cfg, tmp_path / "dask", q_dask, engine=engine)
    assert dask.pop("shards") == 5 and dask == local
    fl = pd.read_parquet(tmp_path / "local" / "features.parquet")
    assert fl["hadm_id"].tolist() == [20, 10, 25]
    pd.testing.assert_frame_equal(fl, pd.read_parquet(tmp_path / "dask" / "features.parquet"))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "local" / "qc.parquet"),
                                  pd.read_parquet(tmp_path / "dask" / "qc.parquet"))
    for name in ("waveforms.npy", "lead_mask.npy"):
        a, b = np.load(tmp_path / "local" / name), np.load(tmp_path / "dask" / name)
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    assert q_local.to_frame().equals(q_dask.to_frame()) and len(q_local) == 2
    assert not (tmp_path / "dask" / ".shards").exists()


def test_sharded_ehr_features_equal_local(engine, tmp_path):
    from pipeline.sources.mimic_iv import ingest_mimic_iv
    from pipeline.stages.cohort import build_cohort
    from pipeline.stages.featurize_ehr import featurize_ehr
    from tests.ehr_fixtures import write_mimic
    root = write_mimic(tmp_path / "m")
    ingest_mimic_iv(root, tmp_path / "ing", Quarantine())
    cohort, _ = build_cohort(pd.read_parquet(tmp_path / "ing" / "patients.parquet"),
                             pd.read_parquet(tmp_path / "ing" / "admissions.parquet"), None, TaskConfig())
    cohort["split"] = "train"
    for name, eng, split in (("local", None, None), ("dask", engine, None), ("dask_split", engine, True)):
        (tmp_path / name).mkdir()
        featurize_ehr(cohort, tmp_path / "ing", EHRConfig(), tmp_path / name, shard_rows=1, engine=eng, split=split)
    for name in ("dask", "dask_split"):   # the workers read the subject range, or their shard's split of the events
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "local" / "features.parquet"),
                                      pd.read_parquet(tmp_path / name / "features.parquet"))
    assert not (tmp_path / "dask_split" / ".events_by_shard").exists()
    assert (tmp_path / "local" / "codes.json").read_text() == (tmp_path / "dask" / "codes.json").read_text()
    assert not (tmp_path / "dask" / ".shards").exists()


def _check(n: int) -> int:
    if n == 3:
        raise DataError("bad shard", file="f.csv", row=3, field="x")
    return n * 10


def test_map_shards_keeps_order_and_raises_a_shards_error(engine):
    assert list(map_shards(_check, [2, 1, 0], engine)) == [20, 10, 0] == list(map_shards(_check, [2, 1, 0]))
    with pytest.raises(DataError, match="f.csv, row 3, field 'x': bad shard"):
        list(map_shards(_check, [1, 3], engine))


def test_engine_refuses_unknown_kinds_and_empty_shards():
    with pytest.raises(DataError, match="unknown engine"):
        Engine("spark")
    with pytest.raises(DataError, match="shard size"):
        Engine("dask", shard_rows=0)


def test_local_cluster_workers_keep_glibc_allocator_defaults():
    """Engine('dask', 'local') starts its worker processes without Dask's MALLOC_TRIM_THRESHOLD_
    (which makes every large numpy array a fresh mmap: ~40% more CPU per ECG record), and
    without Dask's statistical profiler."""
    import os

    import dask
    with Engine("dask", "local") as eng:
        env = eng.client().run(os.environ.get, "MALLOC_TRIM_THRESHOLD_")
        assert len(env) == 2 and set(env.values()) == {None}
        profiling = eng.client().run(lambda: dask.config.get("distributed.worker.profile.enabled"))
        assert set(profiling.values()) == {False}
    assert dask.config.get("distributed.nanny.pre-spawn-environ")["MALLOC_TRIM_THRESHOLD_"] == 65536  # only there


@pytest.mark.parametrize("permuted", [False, True])
def test_merge_arrays_concatenates_shard_files_in_the_given_row_order(tmp_path, permuted):
    """Rows in order: the shard files' data copied whole (copy_file_range); else row by row."""
    from pipeline.engine import _merge_arrays
    rng = np.random.default_rng(0)
    parts = [rng.normal(size=(n, 3, 5)).astype(np.float32) for n in (3, 0, 4, 2)]
    for i, a in enumerate(parts):
        np.save(tmp_path / f"p{i}.npy", a)
    order = rng.permutation(9) if permuted else np.arange(9)
    _merge_arrays([tmp_path / f"p{i}.npy" for i in range(4)], order, tmp_path / "out.npy")
    got = np.load(tmp_path / "out.npy")
    assert got.dtype == np.float32 and np.array_equal(got, np.concatenate(parts)[order])
