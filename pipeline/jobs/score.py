"""``mmpipe score``: score every admission of a data folder with a saved model.

The model folder carries everything needed (configuration, feature list, EHR
codes, fitted notes encoder, calibrator, booster with its hash), so a fresh
process with no other state scores new patients.  Rows are scored in shards;
``engine='dask'`` maps the same per-shard function over a Dask cluster
(``scheduler`` = address, or 'local' for a local cluster).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from data_schemas.modalities import QUARANTINE, SCORES
from pipeline.artifacts import read_json, write_parquet
from pipeline.config import RunConfig
from pipeline.errors import DataError
from pipeline.jobs.prepare import collect_quarantine, log, prepare
from pipeline.models.calibration import Calibrator
from pipeline.sources.discover import discover
from pipeline.stages.align import modality_of


class Scorer:
    """A loaded model folder: ``score_table(rows) -> score rows``."""

    def __init__(self, run: Path):
        from pipeline.models import load_model
        self.run = Path(run)
        mdir = self.run / "model"
        if not (mdir / "model.json").exists():
            raise DataError("not a model folder: model/model.json is missing", file=mdir,
                            hint="pass the RUN folder written by `mmpipe train`")
        self.meta = read_json(mdir / "model.json")
        self.model = load_model(mdir / "primary")
        self.calibrator = Calibrator.from_json(self.meta["calibrator"])
        bg = mdir / "background.parquet"
        self.background = pd.read_parquet(bg) if bg.exists() else None
        self.cfg = RunConfig.model_validate(self.meta["config"])

    def attach_tensors(self, tensor_dirs: dict[str, str]) -> None:
        """The fused net reads raw waveforms/images of the scored rows (memory-mapped)."""
        if hasattr(self.model, "with_tensors"):
            from pipeline.jobs.prepare import load_tensors
            self.model.with_tensors(load_tensors({k: Path(v) for k, v in tensor_dirs.items()}))
        self.tensor_dirs = tensor_dirs

    def fitted(self) -> dict:
        out = {"ehr_codes": self.meta["ehr_codes"]}
        if self.meta.get("notes_encoder"):
            from pipeline.stages.featurize_notes import load_encoder
            folder = self.run / "model" / self.meta["notes_encoder"]
            out["notes_encoder"] = load_encoder(folder)
            from pipeline.artifacts import tree_hash
            out["notes_encoder_hash"] = tree_hash(folder)
        return out

    def check_features(self, table: pd.DataFrame) -> None:
        """Refuse input whose feature set does not match the model's."""
        needed = self.meta["features"]
        missing = [f for f in needed if f not in table.columns]
        # A modality absent from the input is legitimate (its mask is 0); anything else is a mismatch.
        absent_mods = {m for m in self.meta["modalities"] if f"mask__{m}" in table.columns
                       and table[f"mask__{m}"].sum() == 0}
        real = [f for f in missing if modality_of(f) not in absent_mods]
        if real:
            raise DataError(f"input does not match the model's feature set: {len(real)} feature(s) missing, "
                            f"e.g. {real[:5]}", field=real[0],
                            hint="score with the configuration the model was trained with")
        for f in missing:
            table[f] = np.nan

    def score_table(self, rows: pd.DataFrame, explain_rows: bool = True) -> pd.DataFrame:
        from pipeline.jobs.train import pretty_namer, score_rows
        out, _ = score_rows(rows, self.model, self.calibrator, self.meta,
                            pretty_namer(self.meta.get("code_labels", {})), explain_rows=explain_rows,
                            background=self.background)
        return out


def _shards(table: pd.DataFrame, size: int):
    for start in range(0, len(table), size):
        yield table.iloc[start:start + size]


def score(model: Path, input_root: Path, output: Path, engine: str = "local", scheduler: str | None = None,
          shard_size: int = 5000) -> pd.DataFrame:
    t0 = time.time()
    output = Path(output)
    if output.suffix != ".parquet":
        raise DataError("the output must be a .parquet file", file=output, field="--output")
    scorer = Scorer(model)
    sources = discover(input_root, None)
    log(sources.describe())
    work = output.parent / f".{output.stem}_work"
    prep = prepare(sources, scorer.cfg, work, mode="score", fitted=scorer.fitted())
    table = prep.table
    for m in scorer.meta["modalities"]:
        if f"mask__{m}" not in table.columns:
            table[f"mask__{m}"] = 0
    scorer.check_features(table)
    tensor_dirs = {k: str(v) for k, v in prep.stage_dirs.items() if k in ("features_ecg", "features_imaging")}
    scorer.attach_tensors(tensor_dirs)
    n_shards = max(1, -(-len(table) // shard_size))
    log(f"[score] {len(table)} admissions in {n_shards} shard(s), engine={engine}")
    if engine == "local":
        from tqdm import tqdm
        parts = [scorer.score_table(s) for s in tqdm(_shards(table, shard_size), total=n_shards, unit="shard")]
    elif engine == "dask":
        parts = _score_dask(scorer, table, shard_size, scheduler)
    else:
        raise DataError(f"unknown engine {engine!r}", field="--engine", hint="local or dask")
    scores = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(SCORES.required))
    write_parquet(scores, output, SCORES)
    q = collect_quarantine(prep.stage_dirs)
    qpath = output.with_name(f"{output.stem}_quarantine.parquet")
    write_parquet(q, qpath, QUARANTINE)
    rate = len(scores) / max(time.time() - t0, 1e-9)
    log(f"[score] wrote {output} ({len(scores)} rows, {rate:.0f}/s overall); quarantine {qpath} ({len(q)} rows)")
    return scores


def _score_dask(scorer: Scorer, table: pd.DataFrame, shard_size: int, scheduler: str | None) -> list[pd.DataFrame]:
    import dask
    from dask.distributed import Client, LocalCluster
    if scheduler in (None, "local"):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    else:
        cluster, client = None, Client(scheduler)
    try:
        run = str(scorer.run)
        tasks = [dask.delayed(_score_shard_remote)(run, shard, scorer.tensor_dirs)
                 for shard in _shards(table, shard_size)]
        return list(dask.compute(*tasks))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _score_shard_remote(run: str, shard: pd.DataFrame, tensor_dirs: dict[str, str]) -> pd.DataFrame:
    """Runs on a Dask worker: load the model folder there and score one shard."""
    scorer = Scorer(Path(run))
    scorer.attach_tensors(tensor_dirs)
    return scorer.score_table(shard)
