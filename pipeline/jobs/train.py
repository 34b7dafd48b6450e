"""``mmpipe train``: ETL, leakage audit, models on the same patient-level splits,
calibration, evaluation on test, explanations, scores, quarantine and report."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from data_schemas.modalities import QUARANTINE
from pipeline.artifacts import CODE_VERSION, RunLock, output_hash, read_parquet, read_json, run_stage, write_json, write_parquet
from pipeline.config import RunConfig
from pipeline.errors import DataError
from pipeline.explain.modality import AbsenceTemplate
from pipeline.jobs.prepare import Prepared, collect_quarantine, load_tensors, log, prepare
from pipeline.jobs.score import pretty_namer, score_rows
from pipeline.models import registry
from pipeline.models.calibration import Calibrator
from pipeline.models.folds import calibration_subjects
from pipeline.models.metrics import (age_band, availability_pattern, by_group, decision_curve, evaluate,
                                     paired_difference)
from pipeline.progress import event
from pipeline.sources.discover import discover
from pipeline.stages import leakage
from pipeline.stages.align import feature_columns, mask_col, modality_of
from pipeline.stages.featurize_ehr import feature_labels, load_codes
from pipeline.stages.tensorize import tensorize


def model_features(prep: Prepared) -> list[str]:
    """Features and masks of the modalities present in this run."""
    return [c for c in feature_columns(prep.table) if modality_of(c) in prep.modalities]


def model_rows(t: pd.DataFrame, cfg: RunConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(fit rows, validation rows, calibration rows): the calibration rows are
    ``model.calibration_fraction`` of the train split's subjects, used for nothing but the
    calibrator; the validation split drives early stopping and penalty choice."""
    train = t[t.split == "train"]
    held = calibration_subjects(train, cfg.model.calibration_fraction, cfg.model.seed)
    return train[~held], t[t.split == "valid"], train[held]


def planned_models(cfg: RunConfig, modalities: list[str]) -> dict[str, tuple[str, str | None]]:
    """model name -> (its kind in pipeline.models.registry, the one modality it sees or None
    for all): the configured models, then a single-modality baseline per modality."""
    plan = {name: (name, None) for name in cfg.model.fusion_models}
    if cfg.model.single_modality_baselines and len(modalities) > 1:
        plan.update({f"{registry.BASELINE}_{m}": (registry.BASELINE, m) for m in modalities})
    return plan


def fit_models(prep: Prepared, cfg: RunConfig, feats: list[str]) -> dict:
    """Every planned model, fitted on the same fit rows (validation rows for early stopping
    and penalty choice; every cross-fitting inside the models grouped by subject)."""
    tr, va, _ = model_rows(prep.table, cfg)
    data = registry.TrainingData(tr, va, feats, tensors=lambda: load_tensors(prep.stage_dirs))
    models = {}
    for name, (kind, modality) in planned_models(cfg, prep.modalities).items():
        log(f"[train] fitting {name}")
        t0 = time.time()
        models[name] = registry.fit(kind, cfg, data if modality is None else data.only(modality))
        describe = registry.get(kind).describe
        log(f"[train] {name} trained in {time.time() - t0:.0f}s" +
            (f" ({describe(models[name])})" if describe else ""))
    return models


def train(data: Path, out: Path, cfg: RunConfig, report: bool = True, engine=None) -> dict:
    """Train into the RUN folder ``out``, holding its lock (a second job on it is refused).
    ``engine`` (pipeline.engine.Engine): where the feature stages' shards, and with
    ``model.distributed`` the LightGBM training, run."""
    with RunLock(out, "train"):
        return _train(data, out, cfg, report, engine)


def _train(data: Path, out: Path, cfg: RunConfig, report: bool = True, engine=None) -> dict:
    t0 = time.time()
    if cfg.model.distributed and not (engine is not None and engine.distributed):
        raise DataError("model.distributed trains LightGBM on a Dask cluster, but the engine is local",
                        field="model.distributed", hint="add --engine dask --scheduler ADDR")
    for name in cfg.model.fusion_models:   # an unknown model kind is refused before any stage runs
        registry.get(name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(cfg.model_dump(mode="json"), out / "config.json")
    sources = discover(data, cfg.sources)
    log(sources.describe())
    write_json(sources.to_json(), out / "sources.json")
    prep = prepare(sources, cfg, out, mode="train", engine=engine)
    feats = model_features(prep)
    log(f"[train] cohort {len(prep.table)} rows, {int(prep.table.label.sum())} positives; "
        f"modalities {prep.modalities}; {len(feats)} features")
    audit = leakage.audit(prep.cohort, prep.item_times, prep.table, feats)
    if sources.paths.get("mimic_iv") is not None and "ehr" in prep.modalities:
        from pipeline.stages.availability import audit_availability
        leakage.add_availability(audit, audit_availability(prep.cohort, prep.stage_dirs["ingest_ehr"],
                                                           sources.paths["mimic_iv"], cfg.ehr))
    notes_dir = prep.stage_dirs.get("features_notes")
    if notes_dir is not None and prep.stage_dirs.get("index_notes") is not None:
        from pipeline.stages.availability import audit_notes
        from pipeline.sources.notes import note_files
        files = [str(f) for f in note_files(sources.paths["notes"], cfg.notes.note_types)]
        leakage.add_notes_availability(audit, audit_notes(prep.cohort, notes_dir / "used_notes.parquet", files,
                                                          cfg.notes.lookback_hours, out))
    if "availability" in audit:
        log(f"[leakage] rows held back (charted before the prediction time, available after): "
            f"{leakage.held_back(audit)}")
    write_json(audit, out / "leakage.json")
    leakage.enforce(audit)
    for w in audit["warnings"]:
        log(f"[leakage] WARNING {w['feature']}: AUROC {w['auroc']} alone")

    tensor_inputs = {k: output_hash(v) for k, v in prep.stage_dirs.items() if k.startswith("features_")}
    tensor_inputs["cohort"] = output_hash(prep.stage_dirs["cohort"])
    prep.stage_dirs["tensorize"] = run_stage(
        "tensorize", out / "stages" / "tensorize", tensor_inputs, {"modalities": prep.modalities},
        lambda tmp: tensorize(prep.table, prep.modalities, tmp, load_tensors(prep.stage_dirs)), log=log)
    models = fit_models(prep, cfg, feats)
    t = prep.table
    _, va, ca = model_rows(t, cfg)
    cal_rows, cal_split = (ca, "calibration (held-out train subjects)") if ca["label"].nunique() == 2 else \
        (va, "valid (too few held-out train subjects of both classes)")
    te = t[t.split == "test"]
    subjects = te["subject_id"].to_numpy()   # every CI resamples test patients, not admissions
    results, calibrators, test_risk = {}, {}, {}
    for name, model in models.items():
        cols = list(model.feature_names_in_)
        cal = Calibrator(cfg.model.calibration).fit(model.decision_function(cal_rows[cols]), cal_rows["label"])
        calibrators[name] = cal
        test_risk[name] = cal.transform(model.decision_function(te[cols]))
        results[name] = evaluate(te["label"], test_risk[name], clusters=subjects, seed=cfg.model.seed)
        results[name]["calibration_method_used"] = cal.method_used_
        results[name]["calibration_rows"] = {"split": cal_split, "n": len(cal_rows)}
        log(f"[train] {name}: test AUROC {_fmt(results[name]['auroc'])} CI {results[name].get('auroc_ci')}")
        event("train", "model", model=name, auroc=results[name]["auroc"], n=results[name]["n"])

    primary = cfg.model.primary if cfg.model.primary in models else next(iter(models))
    for name in models:   # paired, patient-clustered bootstrap of each model's difference to the primary
        results[name]["vs_primary"] = paired_difference(te["label"], test_risk[name], test_risk[primary],
                                                        subjects, seed=cfg.model.seed)
    model, cal = models[primary], calibrators[primary]
    mdir = out / "model"
    codes_table = read_parquet(prep.stage_dirs["ingest_ehr"] / "codes.parquet")
    labels = feature_labels(codes_table)
    notes_dir = prep.stage_dirs.get("features_notes")
    if notes_dir is not None and (notes_dir / "encoder" / "encoder.json").exists():
        from pipeline.stages.featurize_notes import notes_feature_labels
        labels.update(notes_feature_labels(notes_dir / "encoder"))   # notes components named by their terms
    ehr_codes = load_codes(prep.stage_dirs["features_ehr"])
    meta = {
        "code_version": CODE_VERSION, "primary": primary,
        "kind": planned_models(cfg, prep.modalities)[primary][0],   # scoring loads the model by it
        "features": list(model.feature_names_in_), "modalities": prep.modalities,
        "band_thresholds": list(cfg.model.band_thresholds), "top_k_reasons": cfg.model.top_k_reasons,
        "calibrator": cal.to_json(), "config": cfg.model_dump(mode="json"),
        "ehr_codes": ehr_codes,
        "code_labels": {c: labels[c] for c in [*ehr_codes, *(f for f in labels if f.startswith("notes__"))]
                        if c in labels},
        "trained_on": sources.to_json(),
        # what a training row without each modality looks like: modality Shapley hides by it
        "absence": AbsenceTemplate.learn(t[t.split == "train"][list(model.feature_names_in_)],
                                         prep.modalities).to_json(),
    }
    model.save(mdir / "primary")
    # SHAP background for models that need one (the fused net): 100 train rows, features only.
    train_rows = t[t.split == "train"]
    write_parquet(train_rows[list(model.feature_names_in_)].sample(min(100, len(train_rows)), random_state=0),
                  mdir / "background.parquet")
    for key, stage in (("notes_encoder", "features_notes"), ("imaging_encoder", "features_imaging")):
        fitted = prep.stage_dirs.get(stage)
        if fitted is not None and (fitted / "encoder").exists():  # fitted on train; scoring reuses it
            import shutil
            shutil.copytree(fitted / "encoder", mdir / key, dirs_exist_ok=True)
            meta[key] = key
    write_json(meta, mdir / "model.json")

    scores, exp = score_rows(te, model, cal, meta, pretty_namer(labels),
                             background=read_parquet(mdir / "background.parquet"))
    write_parquet(scores, out / "test_scores.parquet")
    exp.save(out / "explanation")

    p_primary = scores["risk"].to_numpy()
    y = te["label"].to_numpy()
    subgroups = {"sex": by_group(y, p_primary, te["gender"].fillna("unknown").reset_index(drop=True), subjects),
                 "age_band": by_group(y, p_primary, age_band(te["age"]).reset_index(drop=True), subjects)}
    if "race" in te.columns:
        subgroups["race"] = by_group(y, p_primary, te["race"].fillna("unknown").reset_index(drop=True), subjects)
    pattern = availability_pattern(te.reset_index(drop=True), prep.modalities)
    quarantine = collect_quarantine(prep.stage_dirs)
    write_parquet(quarantine, out / "quarantine.parquet", QUARANTINE)
    cohort_counts = read_json(prep.stage_dirs["cohort"] / "manifest.json").get("counts", {})
    metrics = {
        "task": cfg.task.name, "primary": primary, "models": results, "subgroups": subgroups,
        "availability": by_group(y, p_primary, pattern, subjects, min_n=5),
        "modality_presence": {m: float(t[mask_col(m)].mean()) for m in prep.modalities},
        "modality_importance": exp.modality_importance(),
        "top_features": exp.feature_importance().head(20).round(5).to_dict(),
        "shap": {"method": exp.method, **({} if exp.additivity_error is None else {
            "additivity_error_mean_abs": float(np.abs(exp.additivity_error).mean()),
            "additivity_error_max_abs": float(np.abs(exp.additivity_error).max())})},
        "cohort": cohort_counts, "splits": t["split"].value_counts().to_dict(),
        "n_features": len(feats), "quarantine_counts": _reason_counts(quarantine),
        "decision_curve": decision_curve(y, p_primary),
        "leakage_passed": audit["passed"], "leakage_warnings": len(audit["warnings"]),
        "leakage_held_back": leakage.held_back(audit),
        "sources": sources.to_json(), "seconds": round(time.time() - t0, 1),
    }
    write_json(metrics, out / "metrics.json")
    event("train", "done", seconds=metrics["seconds"], rows=len(t), primary=primary,
          auroc=results[primary]["auroc"], quarantined=len(quarantine))
    log(f"[train] quarantined records: {len(quarantine)} " + json.dumps(metrics["quarantine_counts"]))
    log(f"[train] primary model {primary}: test AUROC {_fmt(results[primary]['auroc'])} "
        f"(95% CI {results[primary].get('auroc_ci')}) on {results[primary]['n']} admissions")
    if report:
        from pipeline.jobs.report import write_report
        path = write_report(out)
        log(f"[train] report: {path}")
        metrics["report"] = str(path)
    return metrics


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _reason_counts(q: pd.DataFrame) -> dict:
    if q.empty:
        return {}
    key = q["source"].astype(str) + ": " + q["reason"].astype(str).str.split(":").str[0].str.slice(0, 60)
    return key.value_counts().to_dict()
