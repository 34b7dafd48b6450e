"""Faults survived: ``kill -9`` in the middle of a stage of ``mmpipe train`` and of
``mmpipe score``, then a rerun resumes (finished stages skipped) and its output equals a
clean run's; a write that fails midway leaves no partial final file; a second job on a
RUN folder gets a clear lock error, and a dead job's lock is taken over.

A tiny synthetic cohort (40 patients, no imaging) and one small GBM keep this fast."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from pipeline.artifacts import ParquetShardWriter, RunLock, run_stage, write_json, write_parquet
from pipeline.errors import DataError

MMPIPE = [sys.executable, "-m", "pipeline.cli"]
CFG = {"modalities": ["ehr", "ecg", "notes"],
       "model": {"fusion_models": ["gbm_early"], "gbm_estimators": 40, "single_modality_baselines": False}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    r = subprocess.run(MMPIPE + ["synth", "--patients", "40", "--seed", "3", "--out", str(root / "data")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    (root / "cfg.json").write_text(json.dumps(CFG))
    return root


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen(MMPIPE + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _run(*args) -> str:
    p = _start(*args)
    out, _ = p.communicate(timeout=900)
    assert p.returncode == 0, out[-3000:]
    return out


def _kill_when(p: subprocess.Popen, path: Path, timeout: float = 600) -> None:
    """SIGKILL the job's process group as soon as ``path`` exists (the job must still run)."""
    deadline = time.time() + timeout
    while not path.exists():
        assert p.poll() is None, f"the job ended before {path} appeared: {p.communicate()[0][-2000:]}"
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.005)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL


def _train(tiny, out):
    return ("train", "--data", tiny / "data", "--out", out, "--config", tiny / "cfg.json", "--no-report")


@pytest.fixture(scope="module")
def clean_run(tiny):
    _run(*_train(tiny, tiny / "clean"))
    return tiny / "clean"


def test_train_killed_mid_stage_resumes_and_equals_a_clean_run(tiny, clean_run):
    run = tiny / "killed"
    p = _start(*_train(tiny, run))
    _kill_when(p, run / "stages" / ".features_ecg.tmp")          # killed inside the ECG stage
    stages = run / "stages"
    assert not (stages / "features_ecg").exists()                 # no half-written stage
    done = {d.name: (d / "manifest.json").stat().st_mtime_ns for d in stages.iterdir() if not d.name.startswith(".")}
    assert {"ingest_ehr", "cohort", "features_ehr", "index_ecg"} <= set(done)
    assert json.loads((run / RunLock.NAME).read_text())["pid"] == p.pid  # the dead job's lock is left behind
    out = _run(*_train(tiny, run))                                # ... and taken over
    for name, mtime in done.items():
        assert f"[{name}] up to date, skipped" in out
        assert (stages / name / "manifest.json").stat().st_mtime_ns == mtime
    assert "[features_ecg] running" in out and not (run / RunLock.NAME).exists()
    a, b = pd.read_parquet(clean_run / "test_scores.parquet"), pd.read_parquet(run / "test_scores.parquet")
    pd.testing.assert_frame_equal(a, b)
    assert a["risk"].nunique() > 1
    assert (clean_run / "model/primary/booster.txt").read_text() == (run / "model/primary/booster.txt").read_text()


def test_score_killed_mid_stage_resumes_and_equals_a_clean_run(tiny, clean_run):
    clean = tiny / "score_clean" / "scores.parquet"
    _run("score", "--model", clean_run, "--input", tiny / "data", "--output", clean)
    out_path = tiny / "score_killed" / "scores.parquet"
    work = out_path.parent / ".scores_work"
    p = _start("score", "--model", clean_run, "--input", tiny / "data", "--output", out_path)
    _kill_when(p, work / "stages" / ".features_ecg.tmp")
    assert not out_path.exists() and (work / "stages" / "features_ehr" / "manifest.json").exists()
    out = _run("score", "--model", clean_run, "--input", tiny / "data", "--output", out_path)
    assert "[features_ehr] up to date, skipped" in out and "[features_ecg] running" in out
    pd.testing.assert_frame_equal(pd.read_parquet(clean), pd.read_parquet(out_path))
    assert sorted(x.name for x in out_path.parent.iterdir() if x.is_file()) == \
        ["scores.parquet", "scores_quarantine.parquet"]                  # no temporary left behind


def test_a_second_job_on_a_run_folder_gets_a_lock_error(tiny, clean_run):
    from pipeline.config import RunConfig
    from pipeline.jobs.score import score
    from pipeline.jobs.train import train
    run = tiny / "locked"
    p = _start(*_train(tiny, run))
    try:
        deadline = time.time() + 120
        while not (run / RunLock.NAME).exists() and time.time() < deadline:
            time.sleep(0.01)
        with pytest.raises(DataError, match=f"in use by another mmpipe train \\(pid {p.pid}") as e:
            train(tiny / "data", run, RunConfig.model_validate(CFG), report=False)
        assert e.value.file.endswith(RunLock.NAME)
        # scoring with a model folder that is being trained is refused the same way
        with pytest.raises(DataError, match="in use by another mmpipe train"):
            score(run, tiny / "data", tiny / "s_locked" / "s.parquet")
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    with RunLock(run, "train"):                                   # the dead job's lock is taken over
        assert json.loads((run / RunLock.NAME).read_text())["pid"] == os.getpid()
    assert not (run / RunLock.NAME).exists()


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_write_failing_midway_leaves_no_partial_file(tmp_path, monkeypatch):
    df1, df2 = pd.DataFrame({"a": [1, 2]}), pd.DataFrame({"a": [3, 4, 5]})
    path = write_parquet(df1, tmp_path / "t.parquet")

    def half_parquet(self, p, *a, **k):
        Path(p).write_bytes(b"PAR1 half a file")
        _enospc()
    with monkeypatch.context() as m:
        m.setattr(pd.DataFrame, "to_parquet", half_parquet)
        with pytest.raises(OSError):
            write_parquet(df2, path)                                    # over an existing file: it stays
        with pytest.raises(OSError):
            write_parquet(df2, tmp_path / "new.parquet")                # a new file: none
    pd.testing.assert_frame_equal(pd.read_parquet(path), df1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]

    def half_text(self, text, *a, **k):
        with open(self, "w") as f:
            f.write(text[:5])
        _enospc()
    with monkeypatch.context() as m:
        m.setattr(Path, "write_text", half_text)
        with pytest.raises(OSError):
            write_json({"x": 1}, tmp_path / "m.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]

    import pyarrow.parquet as pq
    real = pq.ParquetWriter.write_table
    calls = []

    def fail_second(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            _enospc()
        return real(self, *a, **k)
    with monkeypatch.context() as m:
        m.setattr(pq.ParquetWriter, "write_table", fail_second)
        with pytest.raises(OSError):
            with ParquetShardWriter(tmp_path / "s.parquet") as w:
                w.write(df1)
                w.write(df1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]

    def stage(tmp):
        write_parquet(df1, tmp / "out.parquet")
        _enospc()
    with pytest.raises(OSError):
        run_stage("s", tmp_path / "stage", {"a": "1"}, {}, stage, log=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".t.parquet.tmp{int(dead.stdout)}"
    stale.write_bytes(b"half")
    write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "t.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]


def test_band_follows_the_saved_thresholds_and_subgroups_cover_the_test_rows(clean_run):
    meta = json.loads((clean_run / "model" / "model.json").read_text())
    lo, hi = meta["band_thresholds"]
    s = pd.read_parquet(clean_run / "test_scores.parquet")
    want = ["high" if r >= hi else "medium" if r >= lo else "low" for r in s["risk"]]
    assert s["band"].tolist() == want and set(want) <= {"low", "medium", "high"}
    metrics = json.loads((clean_run / "metrics.json").read_text())
    cohort = pd.read_parquet(clean_run / "stages" / "cohort" / "cohort.parquet").set_index("hadm_id")
    test = cohort.loc[s["hadm_id"]]
    sex = {g["group"]: g["n"] for g in metrics["subgroups"]["sex"]}
    assert sex == test["gender"].value_counts().to_dict()
    assert sum(g["n"] for g in metrics["subgroups"]["age_band"]) == len(s)


def test_subgroup_metrics_are_each_groups_own():
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from pipeline.models.metrics import by_group
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    p = np.clip(y * 0.3 + rng.random(80) * 0.7, 0, 1)
    g = pd.Series(["F"] * 50 + ["M"] * 25 + ["X"] * 5)
    rows = {r["group"]: r for r in by_group(y, p, g)}
    assert rows["F"]["auroc"] == roc_auc_score(y[:50], p[:50]) and rows["M"]["auroc"] == roc_auc_score(y[50:75], p[50:75])
    assert rows["X"] == {"group": "X", "n": 5, "note": "fewer than 10 rows"}


def test_score_on_a_separately_started_dask_scheduler_and_worker(tiny, clean_run, tmp_path):
    from pipeline.jobs.score import score
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    dask = str(Path(sys.executable).with_name("dask"))
    sfile = tmp_path / "scheduler.json"
    quiet = dict(env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [subprocess.Popen([dask, "scheduler", "--scheduler-file", str(sfile), "--port", "0", "--no-dashboard"],
                              **quiet)]
    try:
        deadline = time.time() + 120
        while not sfile.exists() and time.time() < deadline:
            time.sleep(0.1)
        procs.append(subprocess.Popen([dask, "worker", "--scheduler-file", str(sfile), "--nworkers", "1",
                                       "--nthreads", "1", "--no-dashboard"], **quiet))
        address = json.loads(sfile.read_text())["address"]
        from dask.distributed import Client
        with Client(address) as c:
            c.wait_for_workers(1, timeout=120)
            assert len(c.scheduler_info()["workers"]) == 1
        local = score(clean_run, tiny / "data", tmp_path / "local.parquet")
        remote = score(clean_run, tiny / "data", tmp_path / "dask.parquet", engine="dask", scheduler=address,
                       shard_size=10)
        pd.testing.assert_frame_equal(local, remote)
        assert len(local) > 20
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def test_no_pickle_is_loaded_by_train_or_score(tiny, tmp_path, monkeypatch):
    """Models, encoders, tensors and stage outputs load without unpickling anything: every
    pickle entry point raises, np.load refuses allow_pickle, torch.load is never called."""
    import pickle

    import numpy as np
    import torch

    from pipeline.config import RunConfig
    from pipeline.jobs.score import score
    from pipeline.jobs.train import train

    def refuse(*a, **k):
        raise AssertionError("a pickle was loaded")

    class NoUnpickler(pickle.Unpickler):      # a class still (libraries subclass it at import)
        def load(self):
            refuse()
    for mod, name in ((pickle, "load"), (pickle, "loads"), (torch, "load"), (pd, "read_pickle")):
        monkeypatch.setattr(mod, name, refuse)
    monkeypatch.setattr(pickle, "Unpickler", NoUnpickler)
    real = np.load
    seen = []

    def np_load(*a, allow_pickle=False, **k):
        assert not allow_pickle, "np.load with allow_pickle=True"
        seen.append(a[0])
        return real(*a, allow_pickle=False, **k)
    monkeypatch.setattr(np, "load", np_load)
    cfg = RunConfig.model_validate({**CFG, "model": {**CFG["model"], "fusion_models": ["gbm_early", "fusion_early"],
                                                      "primary": "fusion_early", "fusion_members": 1}})
    train(tiny / "data", tmp_path / "run", cfg, report=False)
    s = score(tmp_path / "run", tiny / "data", tmp_path / "s.parquet")
    assert len(s) > 20 and seen                     # the net's waveforms were memory-mapped through np.load
