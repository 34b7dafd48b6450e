"""The ETL shared by ``train`` and ``score``: sources -> canonical tables -> cohort ->
per-modality features -> aligned table, each step a cached, atomic stage under
WORK/stages/<name>/ with its manifest and its own quarantine file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from data_schemas.modalities import COHORT, QUARANTINE
from pipeline import progress
from pipeline.artifacts import output_hash, read_parquet, run_stage, tree_hash, write_parquet
from pipeline.config import RunConfig
from pipeline.engine import Engine
from pipeline.errors import Quarantine
from pipeline.sources.discover import Sources
from pipeline.stages.align import align


def log(msg: str) -> None:
    """A progress line (silent with ``mmpipe --quiet``)."""
    progress.log(msg)


@dataclass
class Prepared:
    table: pd.DataFrame
    cohort: pd.DataFrame
    item_times: dict[str, pd.DataFrame]
    stage_dirs: dict[str, Path]
    modalities: list[str]
    info: dict = field(default_factory=dict)


def _stage(work: Path, name: str, inputs: dict, config: dict, body) -> Path:
    """Run ``body(tmp, quarantine)``; the stage's quarantine rows land in its own folder."""
    def fn(tmp: Path):
        q = Quarantine()
        extra = body(tmp, q) or {}
        # in (source, file, row, field) order, whichever engine or worker found them first
        rows = q.to_frame().sort_values(["source", "file", "row", "field"], kind="stable").reset_index(drop=True)
        write_parquet(rows, tmp / "quarantine.parquet", QUARANTINE)
        return {**extra, "quarantined": len(q)}
    return run_stage(name, work / "stages" / name, inputs, config, fn, log=log)


def prepare(sources: Sources, cfg: RunConfig, work: Path, mode: str = "train",
            fitted: dict | None = None, align_table: bool = True, engine: Engine | None = None) -> Prepared:
    """``mode`` 'train' fits what needs fitting (EHR code list, notes encoder, image CNN) on the
    train split; 'score' uses ``fitted`` (from the model folder) and scores every row.
    ``align_table=False`` runs every stage but leaves the features on disk (``table`` is
    None): a scoring job then reads them one shard at a time with ``aligned_shards``.
    A distributed ``engine`` runs the feature stages' shards on its Dask workers (the
    outputs, and so the stage cache, are the local engine's)."""
    from pipeline.sources.mimic_iv import ingest_mimic_iv
    from pipeline.stages.cohort import build_cohort, score_cohort, snapshot_time
    from pipeline.stages.featurize_ehr import featurize_ehr

    fitted = fitted or {}
    work = Path(work)
    dirs: dict[str, Path] = {}
    if sources.paths["mimic_iv"] is None and sources.paths.get("eicu") is None and sources.paths.get("meds") is None:
        from pipeline.errors import DataError
        raise DataError("no EHR source found (MIMIC-IV hosp/, eICU tables or a MEDS dataset): the cohort needs "
                        "patients and admissions", file=sources.root, field="hosp/patients",
                        hint="point --data at a folder holding hosp/patients.csv.gz and hosp/admissions.csv.gz")
    if sources.paths["mimic_iv"] is not None:
        mroot = sources.paths["mimic_iv"]
        dirs["ingest_ehr"] = _stage(work, "ingest_ehr", {"mimic_iv": tree_hash(mroot, "*.*")}, {},
                                    lambda tmp, q: ingest_mimic_iv(mroot, tmp, q))
    elif sources.paths.get("meds") is not None:
        from pipeline.sources.meds import ingest_meds
        droot = sources.paths["meds"]
        dirs["ingest_ehr"] = _stage(work, "ingest_ehr", {"meds": tree_hash(droot, "*.*")}, {"source": "meds"},
                                    lambda tmp, q: ingest_meds(droot, tmp, q))
    else:
        from pipeline.sources.eicu import check_task, ingest_eicu
        check_task(cfg.task)
        eroot_ = sources.paths["eicu"]
        dirs["ingest_ehr"] = _stage(work, "ingest_ehr", {"eicu": tree_hash(eroot_, "*.*")}, {"source": "eicu"},
                                    lambda tmp, q: ingest_eicu(eroot_, tmp, q))

    def cohort_body(tmp, q):
        d = dirs["ingest_ehr"]
        icu = d / "icustays.parquet"
        if cfg.task.labels is not None and mode == "train":  # a MEDS label file defines the cohort
            from pipeline.sources.meds import cohort_from_labels
            cohort, counts = cohort_from_labels(cfg.task.labels, read_parquet(d / "patients.parquet"),
                                                read_parquet(d / "admissions.parquet"), cfg.task,
                                                sources.paths.get("meds"), q)
        else:
            admissions = read_parquet(d / "admissions.parquet")
            as_of = snapshot_time(admissions, d / "events.parquet") if mode == "score" else None
            cohort, counts = build_cohort(read_parquet(d / "patients.parquet"), admissions,
                                          read_parquet(icu) if icu.exists() else None, cfg.task,
                                          require_outcomes=mode != "score", as_of=as_of)
        if mode == "score":
            cohort = score_cohort(cohort)
        write_parquet(cohort, tmp / "cohort.parquet", COHORT)
        return {"counts": counts}
    labels_in = {"labels": tree_hash(cfg.task.labels)} if cfg.task.labels is not None and mode == "train" else {}
    dirs["cohort"] = _stage(work, "cohort", {"ingest_ehr": output_hash(dirs["ingest_ehr"]), **labels_in},
                            {"task": cfg.task.model_dump(mode="json"), "mode": mode}, cohort_body)
    cohort = read_parquet(dirs["cohort"] / "cohort.parquet", COHORT)
    cohort_hash = output_hash(dirs["cohort"])

    features: dict[str, pd.DataFrame | None] = {}
    modalities = list(cfg.modalities)

    def index(name: str, inputs: dict, config: dict, read, filename: str) -> pd.DataFrame:
        """A source's index/table stage: ``read(quarantine) -> frame`` written to ``filename``."""
        def body(tmp, q):
            frame = read(q)
            write_parquet(frame, tmp / filename)
            return {"rows": len(frame)}
        dirs[name] = _stage(work, name, inputs, config, body)
        return read_parquet(dirs[name] / filename)

    def featurize(modality: str, inputs: dict, config: dict, fn) -> None:
        name = f"features_{modality}"
        dirs[name] = _stage(work, name, {"cohort": cohort_hash, **inputs}, config, fn)
        features[modality] = read_parquet(dirs[name] / "features.parquet") if align_table else None

    codes = fitted.get("ehr_codes")
    featurize("ehr", {"ingest": output_hash(dirs["ingest_ehr"])},
              {"ehr": cfg.ehr.model_dump(mode="json"), "codes": codes},
              lambda tmp, q: featurize_ehr(cohort, dirs["ingest_ehr"], cfg.ehr, tmp, codes=codes, engine=engine))

    if "ecg" in modalities and (sources.paths["ecg"] is not None or sources.dicom_ecg_folders):
        from pipeline.stages.featurize_ecg import featurize_ecg
        eroot = sources.paths["ecg"]
        if eroot is not None:
            from pipeline.sources.ecg import read_record_list
            # the index checks every listed record's files: their listing (names, sizes, times) keys the stage
            idx = index("index_ecg", {"record_list": tree_hash(eroot, "record_list.csv*"),
                                      "files": tree_hash(eroot)}, {},
                        lambda q: read_record_list(eroot, q), "ecg_index.parquet")
        else:  # folders of DICOM ECGs: subject and time from their tags
            from pipeline.sources.ecg_dicom import index_dicom_ecg_folders
            folders = sources.dicom_ecg_folders
            idx = index("index_ecg", {str(f): tree_hash(f, "*.dcm") for f in folders}, {},
                        lambda q: index_dicom_ecg_folders(folders, q), "ecg_index.parquet")
        featurize("ecg", {"index": output_hash(dirs["index_ecg"])}, {"ecg": cfg.ecg.model_dump(mode="json")},
                  lambda tmp, q: featurize_ecg(cohort, idx, cfg.ecg, tmp, q, engine=engine))

    if "notes" in modalities and sources.paths["notes"] is not None:
        from pipeline.sources.notes import read_notes
        from pipeline.stages.featurize_notes import featurize_notes
        nroot = sources.paths["notes"]
        notes = index("index_notes", {"notes": tree_hash(nroot / "note")}, {"note_types": list(cfg.notes.note_types)},
                      lambda q: read_notes(nroot, q, note_types=cfg.notes.note_types), "notes.parquet")
        encoder = fitted.get("notes_encoder")
        featurize("notes", {"notes": output_hash(dirs["index_notes"])},
                  {"notes": cfg.notes.model_dump(mode="json"), "encoder": fitted.get("notes_encoder_hash")},
                  lambda tmp, q: featurize_notes(cohort, notes, cfg.notes, tmp, q, encoder=encoder,
                                                 engine=engine))

    if "imaging" in modalities and sources.paths["cxr"] is not None:
        from pipeline.sources.imaging import read_cxr_metadata
        from pipeline.stages.featurize_imaging import featurize_imaging
        croot = sources.paths["cxr"]
        iidx = index("index_imaging", {"metadata": tree_hash(croot, "mimic-cxr-2.0.0-*"), "files": tree_hash(croot)}, {},
                     lambda q: read_cxr_metadata(croot, q), "imaging_index.parquet")
        featurize("imaging", {"index": output_hash(dirs["index_imaging"])},
                  {"imaging": cfg.imaging.model_dump(mode="json"), "encoder": fitted.get("imaging_encoder_hash")},
                  lambda tmp, q: featurize_imaging(cohort, iidx, cfg.imaging, tmp, q,
                                                   encoder=fitted.get("imaging_encoder"), engine=engine))

    present = [m for m in modalities if f"features_{m}" in dirs]
    if not align_table:
        return Prepared(table=None, cohort=cohort, item_times={}, stage_dirs=dirs, modalities=present,
                        info={"sources": sources.to_json()})
    table = align(cohort, features)
    item_times = {m: f[["hadm_id", "item_time"]] for m, f in features.items()
                  if f is not None and "item_time" in f.columns}
    return Prepared(table=table, cohort=cohort, item_times=item_times, stage_dirs=dirs, modalities=present,
                    info={"sources": sources.to_json()})


def aligned_shards(cohort: pd.DataFrame, stage_dirs: dict[str, Path], shard_rows: int):
    """The aligned table, ``shard_rows`` admissions at a time (in hadm_id order), each
    modality's feature rows read from its stage output for just those admissions."""
    ordered = cohort.sort_values("hadm_id", kind="stable")
    for start in range(0, len(ordered), shard_rows):
        part = ordered.iloc[start:start + shard_rows]
        yield align(part, feature_rows(stage_dirs, part["hadm_id"].to_numpy()))


def feature_rows(stage_dirs: dict[str, Path], hadm_ids) -> dict[str, pd.DataFrame]:
    """modality -> its feature rows for ``hadm_ids`` (parquet row groups outside the id
    range are skipped by their statistics)."""
    import pyarrow.dataset as ds
    ids = pd.unique(pd.Series(hadm_ids, dtype="int64"))
    out = {}
    for name, d in stage_dirs.items():
        if name.startswith("features_") and (d / "features.parquet").exists():
            dset = ds.dataset(d / "features.parquet", format="parquet")
            lo, hi = (int(ids.min()), int(ids.max())) if len(ids) else (0, -1)
            expr = (ds.field("hadm_id") >= lo) & (ds.field("hadm_id") <= hi)
            frame = dset.to_table(filter=expr).to_pandas()
            out[name.removeprefix("features_")] = frame[frame["hadm_id"].isin(ids)].reset_index(drop=True)
    return out


def load_tensors(stage_dirs: dict[str, Path]) -> dict:
    """Raw per-row tensors for the fused net: modality -> (hadm_ids, memory-mapped array)."""
    import numpy as np
    out = {}
    for m, stage, name in (("ecg", "features_ecg", "waveforms.npy"), ("imaging", "features_imaging", "images.npy")):
        d = stage_dirs.get(stage)
        if d is not None and (d / name).exists():
            ids = read_parquet(d / "features.parquet", columns=["hadm_id"])["hadm_id"].to_numpy()
            out[m] = (ids, np.load(d / name, mmap_mode="r"))
    return out


def collect_quarantine(stage_dirs: dict[str, Path]) -> pd.DataFrame:
    frames = [read_parquet(d / "quarantine.parquet") for d in stage_dirs.values()
              if (d / "quarantine.parquet").exists()]
    frames = [f for f in frames if len(f)]
    if not frames:
        return Quarantine().to_frame()
    return pd.concat(frames, ignore_index=True).astype("string")
