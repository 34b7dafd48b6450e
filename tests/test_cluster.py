"""A real multi-process Dask cluster: `dask scheduler` and two `dask worker` processes
(one thread each), `mmpipe train/score --engine dask --scheduler tcp://...` against it.

The feature stages' shards run on the workers and their merged outputs equal the local
engine's exactly (features, waveforms, images, QC and quarantine rows, scores), also when
a worker is killed (SIGKILL) while it runs a task; LightGBM trains with lightgbm.dask when
``model.distributed`` is on."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config import RunConfig

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONFIG = {"model": {"fusion_models": ["gbm_early"], "gbm_estimators": 30, "single_modality_baselines": False}}
STAGES = ("features_ehr", "features_ecg", "features_notes", "features_imaging")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


class Cluster:
    """A scheduler and its workers, each a separate OS process started here."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.workers: list[subprocess.Popen] = []
        file = folder / "scheduler.json"
        self.scheduler = self._start(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                      "--scheduler-file", str(file)], "scheduler")
        deadline = time.time() + 60
        while not (file.exists() and file.stat().st_size):
            if time.time() > deadline or self.scheduler.poll() is not None:
                raise RuntimeError(f"the dask scheduler did not start: {(folder / 'scheduler.log').read_text()}")
            time.sleep(0.1)
        time.sleep(0.2)
        self.address = json.loads(file.read_text())["address"]

    def _start(self, args: list[str], name: str) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "ab")
        return subprocess.Popen([str(BIN / "dask"), *args], env=_env(), cwd=self.folder, stdout=log,
                                stderr=subprocess.STDOUT)

    def add_worker(self) -> None:
        i = len(self.workers)
        # no nanny: the process started here is the worker itself, so killing it kills the worker
        self.workers.append(self._start(["worker", self.address, "--nthreads", "1", "--no-nanny",
                                         "--no-dashboard", "--name", f"w{i}", "--local-directory",
                                         str(self.folder / f"w{i}")], f"worker{i}"))

    def alive(self) -> list[subprocess.Popen]:
        return [w for w in self.workers if w.poll() is None]

    def wait_for_workers(self, n: int) -> None:
        from dask.distributed import Client
        with Client(self.address, timeout="30s") as c:
            c.wait_for_workers(n, timeout=60)

    def close(self) -> None:
        for p in [*self.workers, self.scheduler]:
            if p.poll() is None:
                p.terminate()
        for p in [*self.workers, self.scheduler]:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.add_worker()
        c.add_worker()
        c.wait_for_workers(2)
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def data(make_synth):
    """40 synthetic patients; every 6th ECG record truncated and every 7th image overwritten,
    so both engines have records to quarantine."""
    root = make_synth(40, 3)
    for f in sorted(root.rglob("*.dat"))[::6]:
        f.write_bytes(f.read_bytes()[:100])
    for f in sorted((root / "mimic-cxr-jpg").rglob("*.jpg"))[::7]:
        f.write_bytes(b"not an image")
    cfg = root.parent / "config.json"
    cfg.write_text(json.dumps(CONFIG))
    return root, cfg


@pytest.fixture(scope="module")
def local_run(data, tmp_path_factory):
    from pipeline.jobs.train import train
    root, _ = data
    out = tmp_path_factory.mktemp("local") / "run"
    train(root, out, RunConfig.model_validate(CONFIG), report=False)
    return out


def mmpipe(*args: str) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "mmpipe"), *args], env=_env(), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def kill_a_busy_worker(cluster: Cluster, job: subprocess.Popen) -> str:
    """SIGKILL the first worker seen running a task while ``job`` runs; the task's key."""
    from dask.distributed import Client
    with Client(cluster.address, timeout="30s") as c:
        names = {addr: w["name"] for addr, w in c.scheduler_info()["workers"].items()}
        deadline = time.time() + 120
        while time.time() < deadline and job.poll() is None:
            busy = {names[a]: keys for a, keys in c.processing().items() if keys and a in names}
            if busy:
                name, keys = next(iter(busy.items()))
                assert job.poll() is None
                os.kill(cluster.workers[int(name[1:])].pid, signal.SIGKILL)
                return str(keys[0])
            time.sleep(0.02)
    raise AssertionError("no task was seen running on a worker while the job ran")


def assert_same_stages(a: Path, b: Path) -> None:
    for stage in STAGES:
        da_, db = a / "stages" / stage, b / "stages" / stage
        files = sorted(p.relative_to(da_) for p in da_.rglob("*") if p.is_file() and p.name != "manifest.json")
        assert files == sorted(p.relative_to(db) for p in db.rglob("*") if p.is_file() and p.name != "manifest.json")
        for rel in files:
            if rel.suffix == ".parquet":
                pd.testing.assert_frame_equal(pd.read_parquet(da_ / rel), pd.read_parquet(db / rel))
            elif rel.suffix == ".npy":
                x, y = np.load(da_ / rel), np.load(db / rel)
                assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), f"{stage}/{rel}"
            else:
                assert (da_ / rel).read_bytes() == (db / rel).read_bytes(), f"{stage}/{rel}"


def test_train_on_a_cluster_with_a_worker_killed_equals_local(cluster, data, local_run, tmp_path):
    root, cfg = data
    out = tmp_path / "run"
    job = mmpipe("train", "--data", str(root), "--out", str(out), "--config", str(cfg), "--no-report",
                 "--engine", "dask", "--scheduler", cluster.address, "--shard-size", "4")
    try:
        key = kill_a_busy_worker(cluster, job)
        log, _ = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, log[-3000:]
    assert len(cluster.alive()) == 1 and key
    # the stages ran as shards on the cluster (several per stage), and equal the local engine's outputs
    manifest = json.loads((out / "stages" / "features_ecg" / "manifest.json").read_text())
    assert manifest["shards"] >= 4
    assert_same_stages(local_run, out)
    q_local, q_dask = pd.read_parquet(local_run / "quarantine.parquet"), pd.read_parquet(out / "quarantine.parquet")
    assert {"ecg", "imaging"} <= set(q_local["source"]) and len(q_local) >= 4
    pd.testing.assert_frame_equal(q_local, q_dask)
    pd.testing.assert_frame_equal(pd.read_parquet(local_run / "test_scores.parquet"),
                                  pd.read_parquet(out / "test_scores.parquet"))
    assert not list(out.rglob(".shards"))
    cluster.add_worker()
    cluster.wait_for_workers(2)


def test_score_on_a_cluster_equals_local(cluster, data, local_run, tmp_path):
    from pipeline.jobs.score import score
    root, _ = data
    local = score(local_run, root, tmp_path / "local.parquet", shard_size=16)
    job = mmpipe("score", "--model", str(local_run), "--input", str(root), "--output", str(tmp_path / "dask.parquet"),
                 "--engine", "dask", "--scheduler", cluster.address, "--shard-size", "16")
    log, _ = job.communicate(timeout=300)
    assert job.returncode == 0, log[-3000:]
    assert "engine=dask" in log
    dask = pd.read_parquet(tmp_path / "dask.parquet")
    assert len(dask) == len(local) > 40
    pd.testing.assert_frame_equal(local, dask)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "local_quarantine.parquet"),
                                  pd.read_parquet(tmp_path / "dask_quarantine.parquet"))


def test_lightgbm_trains_on_the_cluster(cluster):
    """model.distributed: lightgbm.dask on the two workers learns what local LightGBM learns."""
    from dask.distributed import Client
    from sklearn.metrics import roc_auc_score

    from pipeline.models.gbm import GBMClassifier
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(3000, 6)), columns=[f"ehr__x{i}" for i in range(6)])
    logit = 1.5 * X["ehr__x0"] - X["ehr__x1"] + 0.8 * X["ehr__x2"] * X["ehr__x3"]
    y = (rng.random(len(X)) < 1 / (1 + np.exp(-logit))).astype(int).to_numpy()
    tr, va, te = slice(0, 2000), slice(2000, 2500), slice(2500, 3000)
    params = dict(n_estimators=300, learning_rate=0.05, early_stopping_rounds=30, random_state=0)
    local = GBMClassifier(**params).fit(X[tr], y[tr], (X[va], y[va]))
    with Client(cluster.address, timeout="30s"):
        dist = GBMClassifier(**params, distributed=True).fit(X[tr], y[tr], (X[va], y[va]))
    auc_local = roc_auc_score(y[te], local.decision_function(X[te]))
    auc_dist = roc_auc_score(y[te], dist.decision_function(X[te]))
    assert auc_dist > 0.75 and abs(auc_dist - auc_local) < 0.03, (auc_dist, auc_local)
    # the validation rows chose the number of trees (lightgbm.dask has no early stopping of its own)
    assert 1 <= dist.booster_.current_iteration() < 300


def test_distributed_training_in_a_run_and_its_refusal_on_the_local_engine(cluster, data, tmp_path):
    from pipeline.engine import Engine
    from pipeline.errors import DataError
    from pipeline.jobs.train import train
    root, _ = data
    cfg = RunConfig.model_validate({**CONFIG, "model": {**CONFIG["model"], "distributed": True},
                                    "modalities": ["ehr"]})
    with pytest.raises(DataError, match="model.distributed"):
        train(root, tmp_path / "refused", cfg, report=False)
    with Engine("dask", cluster.address) as eng:
        train(root, tmp_path / "run", cfg, report=False, engine=eng)
    meta = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    assert meta["config"]["model"]["distributed"] is True
    s = pd.read_parquet(tmp_path / "run" / "test_scores.parquet")
    assert s["risk"].between(0, 1).all() and s["risk"].nunique() > 1
