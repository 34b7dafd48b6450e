"""Where per-shard work runs: in this process (``local``) or as tasks on a Dask cluster (``dask``).

The featurisers split their work into shards of whole subjects and call ``map_shards``
(results in shard order) or ``sharded_stage`` (shard outputs merged into the stage's own
files); nothing else in the pipeline knows about Dask.  On a cluster every task reads its
records from the shared data ROOT and writes its shard artifact under the stage's
temporary folder (a filesystem the driver and all workers see at the same path); the
driver holds the index, and merges.  A task is a pure function of its shard: when a
worker dies the scheduler runs its tasks again on another worker, and the rerun
overwrites the shard artifact atomically, so the merged outputs equal the local engine's.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd

from pipeline.artifacts import read_parquet
from pipeline.errors import DataError, Quarantine

KINDS = ("local", "dask")
ALLOCATOR_KEY = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"


@dataclass
class Engine:
    """``kind`` local | dask; ``scheduler`` a Dask scheduler address (tcp://host:port) or
    'local' (a two-worker LocalCluster started here); ``shard_rows`` admissions per shard;
    ``retries`` reruns of a task that raised (a dead worker's tasks are rerun by the
    scheduler itself, up to its ``distributed.scheduler.allowed-failures``)."""
    kind: str = "local"
    scheduler: str | None = None
    shard_rows: int = 5000
    retries: int = 1
    _client: object = field(default=None, init=False, repr=False)
    _cluster: object = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise DataError(f"unknown engine {self.kind!r}", field="--engine", hint="local or dask")
        if self.shard_rows < 1:
            raise DataError(f"shard size must be at least 1, got {self.shard_rows}", field="--shard-size")

    @property
    def distributed(self) -> bool:
        return self.kind == "dask"

    def client(self):
        """The Dask client (connected on first use; also Dask's default client, which
        ``lightgbm.dask`` picks up)."""
        if self._client is None:
            from dask.distributed import Client, LocalCluster
            if self.scheduler in (None, "local"):
                import dask
                # Dask's nannies start workers with MALLOC_TRIM_THRESHOLD_=65536, which turns off
                # glibc's adaptive mmap threshold: every array over 128 KiB is then a fresh mmap
                # whose pages fault in zeroed, and the ECG stage (dozens of 0.5 MB arrays per
                # record) took ~40% more CPU per record (benchmarks/stages_dask.py).  Workers
                # started here keep glibc's defaults; see README for external clusters.  Nor do
                # they run Dask's statistical profiler (a stack sample every 10 ms, for a
                # dashboard this cluster does not have).
                with dask.config.set({ALLOCATOR_KEY: None, "distributed.worker.profile.enabled": False}):
                    self._cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                                 dashboard_address=None)
                self._client = Client(self._cluster)
            else:
                try:
                    self._client = Client(self.scheduler, timeout="30s")
                except OSError as e:
                    raise DataError(f"cannot reach the Dask scheduler: {e}", field="--scheduler",
                                    hint="start one with `dask scheduler` and give its tcp://host:port") from e
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def map_shards(fn: Callable, shards: Iterable, engine: Engine | None = None, /, **shared) -> Iterator:
    """``fn(shard, **shared)`` for every shard, yielded in shard order.  Local: one after
    the other in this process.  Dask: every shard a task carrying its own arguments (no
    scattered data, which a dead worker could take with it), results yielded in order."""
    if engine is None or not engine.distributed:
        for s in shards:
            yield fn(s, **shared)
        return
    from functools import partial
    client = engine.client()
    task = partial(fn, **shared)
    futures = [client.submit(task, s, pure=False, retries=engine.retries) for s in shards]
    try:
        for f in futures:
            yield f.result()
    finally:
        client.cancel(futures)


def subject_shards(frame: pd.DataFrame, rows: int) -> list[pd.DataFrame]:
    """``frame`` cut into shards of whole subjects, about ``rows`` rows each (a subject with
    more rows gets a shard of its own); subjects in order of first appearance, and each
    shard keeps ``frame``'s row order.  A subject's records then meet one task only."""
    if len(frame) == 0:
        return []
    codes, _ = pd.factorize(frame["subject_id"])
    counts = np.bincount(codes)
    shard_of_subject = (np.cumsum(counts) - counts) // rows
    shard = shard_of_subject[codes]
    return [frame[shard == k] for k in np.unique(shard)]


def rows_of(frame: pd.DataFrame, subjects: pd.Series) -> pd.DataFrame:
    """The rows of an index ``frame`` that belong to ``subjects``."""
    return frame[frame["subject_id"].isin(pd.unique(subjects))]


# ---------------------------------------------------------------- a featuriser's stage over shards

def _shard_task(job: tuple, stage_fn: Callable, folder: str) -> dict:
    """Runs on a worker: one shard of a stage into ``folder/NNNNN`` (written to a temporary
    folder first and renamed, so a rerun after a lost worker replaces it whole)."""
    import shutil
    i, cohort, inputs = job
    final = Path(folder) / f"{i:05d}"
    tmp = Path(folder) / f".{i:05d}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    q = Quarantine()
    counts = stage_fn(cohort, **inputs, out_dir=tmp, quarantine=q) or {}
    q.to_frame().to_parquet(tmp / "quarantine.parquet", index=False)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return {"dir": str(final), "counts": counts}


def sharded_stage(stage_fn: Callable, cohort: pd.DataFrame, inputs: dict[str, pd.DataFrame], out_dir: Path,
                  quarantine: Quarantine, engine: Engine, arrays: tuple[str, ...] = (),
                  tables: dict[str, str] | None = None, sort_by_hadm: bool = False) -> dict:
    """Run ``stage_fn(cohort, **inputs, out_dir=, quarantine=)`` over subject shards and merge
    the shards' outputs into ``out_dir`` as one run over the whole cohort would have written
    them: features.parquet rows in the cohort's (hadm_id) order, each ``arrays`` file
    (first axis = feature rows) in the same order, each ``tables`` file sorted by its key
    column, quarantine rows added to ``quarantine``.  ``inputs`` (index frames with a
    subject_id) are cut to each shard's subjects.  Returns the shards' counts summed."""
    import shutil
    out_dir = Path(out_dir)
    folder = out_dir / ".shards"
    jobs = [(i, part, {k: rows_of(v, part["subject_id"]) for k, v in inputs.items()})
            for i, part in enumerate(subject_shards(cohort, engine.shard_rows))]
    done = list(map_shards(_shard_task, jobs, engine, stage_fn=stage_fn, folder=str(folder)))
    dirs = [Path(d["dir"]) for d in done]
    frames = [read_parquet(d / "features.parquet") for d in dirs]
    frames = [f for f in frames if len(f)] or frames[:1]
    feats = pd.concat(frames, ignore_index=True) if frames else None
    order = np.zeros(0, np.int64)
    if feats is not None:
        key = cohort["hadm_id"].sort_values() if sort_by_hadm else cohort["hadm_id"]
        pos = pd.Series(np.arange(len(key)), index=key.to_numpy())
        order = np.argsort(pos.loc[feats["hadm_id"].to_numpy()].to_numpy(), kind="stable")
        feats = feats.iloc[order].reset_index(drop=True)
        feats.to_parquet(out_dir / ".features.parquet.tmp", index=False)
        os.replace(out_dir / ".features.parquet.tmp", out_dir / "features.parquet")
    for name in arrays:
        _merge_arrays([d / name for d in dirs], order, out_dir / name)
    for name, key in (tables or {}).items():
        parts = [read_parquet(d / name) for d in dirs if (d / name).exists()]
        if parts:
            t = pd.concat(parts, ignore_index=True).sort_values(key, kind="stable").reset_index(drop=True)
            t.to_parquet(out_dir / name, index=False)
    for d in dirs:
        quarantine.extend(Quarantine.from_frame(read_parquet(d / "quarantine.parquet")))
    shutil.rmtree(folder, ignore_errors=True)
    return _sum_counts([d["counts"] for d in done]) | {"shards": len(done)}


def _merge_arrays(parts: list[Path], order: np.ndarray, dest: Path, block: int = 1024) -> None:
    """Concatenate .npy files along the first axis, rows permuted by ``order``, streaming
    through memory maps (never the whole array in memory)."""
    from numpy.lib.format import open_memmap
    srcs = [np.load(p, mmap_mode="r") for p in parts]
    if not srcs:
        return
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in srcs])])
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}.npy")
    out = open_memmap(tmp, mode="w+", dtype=srcs[0].dtype, shape=(int(offsets[-1]), *srcs[0].shape[1:]))
    if (hasattr(os, "copy_file_range") and np.array_equal(order, np.arange(len(order)))
            and all(s.dtype == out.dtype and s.flags.c_contiguous for s in srcs)):
        start = out.offset          # rows already in order: the files' data concatenated in the kernel
        del out
        with open(tmp, "r+b") as f_out:
            for path, src in zip(parts, srcs):
                with open(path, "rb") as f_in:
                    _copy_range(f_in.fileno(), f_out.fileno(), src.offset, start, src.nbytes)
                start += src.nbytes
        os.replace(tmp, dest)
        return
    for start in range(0, len(order), block):
        rows = order[start:start + block]
        part = np.searchsorted(offsets, rows, side="right") - 1
        for k in np.unique(part):
            sel = part == k
            out[start + np.flatnonzero(sel)] = srcs[k][rows[sel] - offsets[k]]
    out.flush()
    del out
    os.replace(tmp, dest)


def _copy_range(src: int, dst: int, src_at: int, dst_at: int, n: int) -> None:
    """n bytes from file ``src`` at ``src_at`` to file ``dst`` at ``dst_at`` (os.copy_file_range)."""
    while n > 0:
        done = os.copy_file_range(src, dst, n, src_at, dst_at)
        if done <= 0:
            raise OSError(f"copy_file_range copied nothing with {n} bytes left")
        src_at, dst_at, n = src_at + done, dst_at + done, n - done


def _sum_counts(counts: list[dict]) -> dict:
    """Numbers summed, nested dicts summed per key, flags or-ed, anything else from the first shard."""
    out: dict = {}
    for c in counts:
        for k, v in c.items():
            if isinstance(v, bool):
                out[k] = out.get(k, False) or v
            elif isinstance(v, (int, float)):
                out[k] = out.get(k, 0) + v
            elif isinstance(v, dict):
                out[k] = _sum_counts([out.get(k, {}), v])
            else:
                out.setdefault(k, v)
    return out


def map_frames(fn: Callable, shards: list, engine: Engine | None, folder: Path, /, **shared) -> Iterator[pd.DataFrame]:
    """``fn(shard, **shared) -> DataFrame`` per shard, in shard order.  Local: called here.
    Dask: each task writes its frame to ``folder/NNNNN.parquet`` and the driver reads it
    back (and deletes it) in order."""
    if engine is None or not engine.distributed:
        yield from map_shards(fn, shards, None, **shared)
        return
    import shutil
    jobs = [(str(Path(folder) / f"{i:05d}.parquet"), s) for i, s in enumerate(shards)]
    try:
        for path in map_shards(_frame_task, jobs, engine, fn=fn, **shared):
            frame = read_parquet(path)
            Path(path).unlink()
            yield frame
    finally:   # with whatever a lost worker left half-written
        shutil.rmtree(folder, ignore_errors=True)


def _frame_task(job: tuple, fn: Callable, **shared) -> str:
    path, shard = job
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    fn(shard, **shared).to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


def map_arrays(fn: Callable, items: list, engine: Engine | None, folder: Path, block: int, /, **shared) -> np.ndarray:
    """``fn(items[i:i + block], **shared) -> array`` over blocks, concatenated along the first
    axis.  Local: one call over all items.  Dask: one task per block, each writing its
    array to ``folder/NNNNN.npy``."""
    if engine is None or not engine.distributed:
        return fn(items, **shared)
    import shutil
    jobs = [(str(Path(folder) / f"{i:05d}.npy"), items[s:s + block]) for i, s in enumerate(range(0, len(items), block))]
    try:
        parts = [np.load(path) for path in map_shards(_array_task, jobs, engine, fn=fn, **shared)]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return np.concatenate(parts) if parts else fn(items, **shared)


def _array_task(job: tuple, fn: Callable, **shared) -> str:
    path, items = job
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.npy"
    np.save(tmp, fn(items, **shared))
    os.replace(tmp, path)
    return path
