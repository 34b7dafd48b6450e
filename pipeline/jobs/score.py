"""``mmpipe score``: score every admission of a data folder with a saved model.

The model folder carries everything needed (configuration, feature list, EHR
codes, fitted notes encoder, calibrator, booster with its hash), so a fresh
process with no other state scores new patients.  The input is raw layouts (the
model's ETL runs on them) or a folder of prepared patient tensors.  Rows are read,
aligned, scored and written one shard at a time; ``engine='dask'`` maps the same
per-shard function over a Dask cluster (``scheduler`` = address, or 'local'), whose workers
also run the feature stages' shards (pipeline.engine).  ``score_rows`` (calibrated risk,
band, reasons and modality contributions of aligned rows) is shared with ``mmpipe train``,
which scores its test split with it.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from data_schemas.modalities import QUARANTINE, SCORES
from pipeline.artifacts import ParquetShardWriter, RunLock, read_parquet, read_json, write_parquet
from pipeline.config import RunConfig
from pipeline.engine import Engine
from pipeline.errors import DataError, Quarantine
from pipeline.explain.explanation import Explanation
from pipeline.explain.modality import AbsenceTemplate, modality_shapley
from pipeline.jobs.prepare import aligned_shards, collect_quarantine, load_tensors, log, prepare
from pipeline.models import registry
from pipeline.models.calibration import Calibrator
from pipeline.progress import event, track
from pipeline.sources.discover import discover
from pipeline.stages.align import modality_of
from pipeline.stages.featurize_ehr import pretty_feature
from pipeline.stages.tensorize import TensorWriter, iter_shards, shard_table, shard_tensors


def band(risk: np.ndarray, thresholds) -> np.ndarray:
    lo, hi = thresholds
    return np.where(risk >= hi, "high", np.where(risk >= lo, "medium", "low"))


def pretty_namer(labels: dict[str, str]):
    """feature name -> readable label, using the code dictionary (code -> label)."""
    return lambda name: pretty_feature(name, labels)


def explain(model, X: pd.DataFrame, hadm: np.ndarray, modalities: list[str],
            background: pd.DataFrame | None = None, absence: AbsenceTemplate | None = None,
            logit: np.ndarray | None = None) -> Explanation:
    """Feature SHAP (the model's own ``explain``) and modality Shapley values; ``absence``: how
    a training row without each modality looks (the model folder's ``absence``), so hiding
    one stays in distribution; ``logit``: ``model.decision_function(X)`` when the caller has it."""
    exp = model.explain(X, background)
    exp.hadm_id = np.asarray(hadm)
    cols = [c for c in model.feature_names_in_]
    exp.modality_contrib = modality_shapley(model.decision_function, X[cols], modalities,
                                            absence, full=logit).reset_index(drop=True)
    return exp


def score_rows(rows: pd.DataFrame, model, calibrator: Calibrator, meta: dict, pretty,
               explain_rows: bool = True, background: pd.DataFrame | None = None
               ) -> tuple[pd.DataFrame, Explanation | None]:
    """The score file rows for ``rows`` (aligned table rows) and their explanation.
    ``explain_rows=False`` skips SHAP reasons and modality contributions (empty / NaN)."""
    X = rows[meta["features"]]
    logit = model.decision_function(X)
    risk = calibrator.transform(logit)
    out = pd.DataFrame({
        "subject_id": rows["subject_id"].to_numpy(), "hadm_id": rows["hadm_id"].to_numpy(),
        "prediction_time": rows["prediction_time"].to_numpy(), "risk": risk,
        "band": band(risk, meta["band_thresholds"])})
    if not explain_rows:
        out["reasons"] = ""
        for m in ("ehr", "ecg", "notes", "imaging"):
            out[m] = np.nan
        return out, None
    exp = explain(model, X, rows["hadm_id"].to_numpy(), meta["modalities"], background,
                  AbsenceTemplate.from_json(meta.get("absence")), logit=logit)
    out["reasons"] = exp.top_reasons(meta["top_k_reasons"], pretty)
    for m in ("ehr", "ecg", "notes", "imaging"):
        out[m] = exp.modality_contrib[m].to_numpy() if m in exp.modality_contrib.columns else 0.0
    return out, exp


class Scorer:
    """A loaded model folder: ``score_table(rows) -> score rows``.  The model is loaded by the
    kind its model.json records (pipeline.models.registry)."""

    def __init__(self, run: Path):
        self.run = Path(run)
        mdir = self.run / "model"
        if not (mdir / "model.json").exists():
            raise DataError("not a model folder: model/model.json is missing", file=mdir,
                            hint="pass the RUN folder written by `mmpipe train`")
        self.meta = read_json(mdir / "model.json")
        self.kind = registry.get(self.meta.get("kind"), file=mdir / "model.json", field="kind")
        self.model = registry.load(mdir / "primary", self.kind.name)
        self.calibrator = Calibrator.from_json(self.meta["calibrator"])
        bg = mdir / "background.parquet"
        self.background = read_parquet(bg) if bg.exists() else None
        self.cfg = RunConfig.model_validate(self.meta["config"])

    def attach_tensors(self, tensor_dirs: dict[str, str]) -> None:
        """The fused net reads raw waveforms/images of the scored rows (memory-mapped)."""
        if self.kind.reads_tensors:
            self.model.with_tensors(load_tensors({k: Path(v) for k, v in tensor_dirs.items()}))
        self.tensor_dirs = tensor_dirs

    def fitted(self) -> dict:
        """What the ETL must not refit when scoring: the EHR code list and the saved encoders."""
        from pipeline.artifacts import tree_hash
        from pipeline.stages.featurize_notes import load_encoder
        from pipeline.stages.image_cnn import ImageCNNEncoder
        out = {"ehr_codes": self.meta["ehr_codes"]}
        for key, load in (("notes_encoder", load_encoder), ("imaging_encoder", ImageCNNEncoder.load)):
            if self.meta.get(key):
                folder = self.run / "model" / self.meta[key]
                out[key], out[f"{key}_hash"] = load(folder), tree_hash(folder)
        return out

    def conform(self, table: pd.DataFrame) -> pd.DataFrame:
        """Masks for modalities the input lacks, then the feature check."""
        for m in self.meta["modalities"]:
            if f"mask__{m}" not in table.columns:
                table[f"mask__{m}"] = 0
        self.check_features(table)
        return table

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

    def score_table(self, rows: pd.DataFrame, explain_rows: bool = True, tensors: dict | None = None
                    ) -> pd.DataFrame:
        """Score rows; ``tensors`` (the rows' own waveforms/images) replace the attached ones."""
        if tensors is not None and self.kind.reads_tensors:
            self.model.with_tensors(tensors)
        out, _ = score_rows(rows, self.model, self.calibrator, self.meta,
                            pretty_namer(self.meta.get("code_labels", {})), explain_rows=explain_rows,
                            background=self.background)
        return out


def score(model: Path, input_root: Path, output: Path, engine: str = "local", scheduler: str | None = None,
          shard_size: int = 5000, return_frame: bool = True) -> pd.DataFrame | int:
    """Score every admission under ``input_root`` (raw layouts, or a patient-tensor folder
    holding index.json) into ``output``; returns the scores read back from ``output``
    (or, with ``return_frame=False``, just the number of rows written).

    Raw input runs the model's ETL stages (cached under ``.<stem>_work/``), then reads,
    aligns and scores ``shard_size`` admissions at a time, appending each shard to the
    output; the shard's tensors are written to ``.<stem>_work/tensors`` as it goes.  Memory
    is bounded by a shard, not by the cohort."""
    t0 = time.time()
    output, input_root = Path(output), Path(input_root)
    if output.suffix != ".parquet":
        raise DataError("the output must be a .parquet file", file=output, field="--output")
    RunLock(model).check()          # a model folder that a running `mmpipe train` is writing is not read
    work = output.parent / f".{output.stem}_work"
    with RunLock(work, "score"):    # one job at a time writes this output and its work folder
        return _score(model, input_root, output, work, engine, scheduler, shard_size, return_frame, t0)


def _score(model: Path, input_root: Path, output: Path, work: Path, engine: str, scheduler: str | None,
           shard_size: int, return_frame: bool, t0: float) -> pd.DataFrame | int:
    scorer = Scorer(model)
    with Engine(engine, scheduler, shard_rows=shard_size) as eng:
        if (input_root / "index.json").exists():
            log(f"[score] reading prepared patient tensors from {input_root}")
            (shards, n_rows), q = _tensor_input(input_root, scorer), Quarantine().to_frame()
            tensors_in_shards = True
        else:
            sources = discover(input_root, None)
            log(sources.describe())
            prep = prepare(sources, scorer.cfg, work, mode="score", fitted=scorer.fitted(), align_table=False,
                           engine=eng)
            scorer.attach_tensors({k: str(v) for k, v in prep.stage_dirs.items()
                                   if k in ("features_ecg", "features_imaging")})
            writer = TensorWriter(work / "tensors", scorer.meta["modalities"], load_tensors(prep.stage_dirs))
            shards = _written(aligned_shards(prep.cohort, prep.stage_dirs, shard_size), writer)
            n_rows, q = len(prep.cohort), collect_quarantine(prep.stage_dirs)
            tensors_in_shards = False
        n_shards = max(1, -(-n_rows // shard_size))
        log(f"[score] {n_rows} admissions in {n_shards} shard(s) of up to {shard_size}, engine={engine}")
        if eng.distributed:
            parts = _score_dask(scorer, shards, eng, tensors_in_shards)
        else:
            parts = (scorer.score_table(scorer.conform(t), tensors=tt if tensors_in_shards else None)
                     for t, tt in shards)
        with ParquetShardWriter(output, SCORES) as out:
            for part in track(parts, total=n_shards, desc="score shards", unit="shard", stage="score"):
                out.write(part)
    qpath = output.with_name(f"{output.stem}_quarantine.parquet")
    write_parquet(q, qpath, QUARANTINE)
    rate = out.rows / max(time.time() - t0, 1e-9)
    log(f"[score] wrote {output} ({out.rows} rows, {rate:.0f}/s overall); quarantine {qpath} ({len(q)} rows)")
    event("score", "done", seconds=round(time.time() - t0, 3), rows=out.rows, quarantined=len(q), output=output)
    return read_parquet(output) if return_frame else out.rows


def _written(shards, writer: TensorWriter):
    """Pass aligned shards through, writing each to the tensor folder; close it at the end."""
    for table in shards:
        writer.write(table)
        yield table, None
    writer.close()


def _tensor_input(folder: Path, scorer: Scorer):
    """(aligned rows and raw tensors of each shard, row count) of a patient-tensor folder.
    Its modalities and feature names are checked against the model's first, so a
    mismatch is refused before anything is scored or written."""
    index = read_json(folder / "index.json")
    for m in scorer.meta["modalities"]:
        if m not in index["modalities"]:
            continue  # an absent modality: masks 0 (added by conform)
        want = [f for f in scorer.meta["features"] if modality_of(f) == m and not f.startswith("mask__")]
        have = index["feature_names"].get(m, [])
        if want and set(want) - set(have):
            miss = sorted(set(want) - set(have))
            raise DataError(f"the tensors' {m} features do not match the model's: {len(miss)} missing, "
                            f"e.g. {miss[:3]}", file=folder / "index.json", field=f"feature_names.{m}",
                            hint="prepare the tensors with the model's configuration (e.g. `mmpipe score` on the "
                                 "raw data writes them under .<output stem>_work/tensors)")
    shards = ((shard_table(arrays, index), shard_tensors(arrays)) for arrays in iter_shards(folder))
    return shards, int(sum(s["rows"] for s in index["shards"]))


def _score_dask(scorer: Scorer, shards, engine: Engine, tensors_in_shards: bool):
    """The same per-shard function as tasks on the engine's Dask cluster; results come back
    in shard order, with at most 4 shards in flight (memory stays bounded by shards)."""
    client = engine.client()
    run, tdirs = str(scorer.run), getattr(scorer, "tensor_dirs", {})
    pending = []
    for table, tt in shards:
        pending.append(client.submit(_score_shard_remote, run, table, tdirs, tt if tensors_in_shards else None,
                                     pure=False, retries=engine.retries))
        if len(pending) >= 4:
            yield pending.pop(0).result()
    for f in pending:
        yield f.result()


def _score_shard_remote(run: str, table: pd.DataFrame, tensor_dirs: dict[str, str], tensors=None) -> pd.DataFrame:
    """Runs on a Dask worker: load the model folder there and score one shard."""
    scorer = Scorer(Path(run))
    scorer.attach_tensors(tensor_dirs)
    return scorer.score_table(scorer.conform(table), tensors=tensors)
