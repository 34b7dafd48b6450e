"""``generate_cohort``: a synthetic cohort in the real public layouts, plus its hidden truth.

Layout under ``out``::

    mimic-iv/hosp/{patients,admissions,labevents,d_labitems,diagnoses_icd,procedures_icd,d_icd_diagnoses,
                   d_icd_procedures,prescriptions,emar,microbiologyevents}.csv.gz
    mimic-iv/icu/{icustays,chartevents,inputevents,outputevents,procedureevents,d_items}.csv.gz
    mimic-iv-ecg/record_list.csv, mimic-iv-ecg/files/pNNNN/pSUBJECT/sSTUDY/STUDY.{hea,dat}
    mimic-iv-note/note/{radiology,discharge}.csv.gz
    mimic-cxr-jpg/mimic-cxr-2.0.0-{metadata,chexpert}.csv.gz, mimic-cxr-jpg/files/pNN/pSUBJECT/sSTUDY/DICOM.jpg
    ground_truth.csv.gz      the hidden per-admission risk and the Bayes posterior (benchmarks only;
                             the pipeline never reads it)

Every random draw comes from one ``np.random.SeedSequence(seed)``, split into one
stream per part, and every record carries its own seed, so the output is the same
for a seed whatever the number of worker processes.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.synthetic import bayes, care, codes, ecg, ehr, imaging, latent, notes, orders
from pipeline.synthetic._io import write_csv

GROUND_TRUTH_COLUMNS = ["subject_id", "hadm_id", "logit", "p_true", "p_bayes", "ehr_part", "ecg_part", "notes_part",
                        "imaging_part", "interaction_part"]
CHUNK = 100            # records per worker task
MIN_PARALLEL = 400     # fewer records than this are written in-process


def auroc(y: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve (ties averaged); None when only one class is present."""
    from scipy.stats import rankdata
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    r = rankdata(score)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _write_many(fn, root: Path, specs: list[dict], workers: int, desc: str, progress: bool) -> int:
    """Run ``fn(root, chunk)`` over the specs, in worker processes when there are many."""
    from tqdm import tqdm
    chunks = [specs[i:i + CHUNK] for i in range(0, len(specs), CHUNK)]
    bar = tqdm(total=len(specs), desc=desc, unit="file", disable=not progress, file=sys.stderr, leave=False)
    done = 0
    if workers <= 1 or len(specs) < MIN_PARALLEL:
        for c in chunks:
            done += fn(str(root), c)
            bar.update(len(c))
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            for n in pool.map(fn, [str(root)] * len(chunks), chunks):
                done += n
                bar.update(n)
    bar.close()
    return done


def _log(progress: bool, t0: float, msg: str) -> None:
    if progress:
        print(f"[synth {time.time() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def generate_cohort(out: Path, n_patients: int = 500, seed: int = 0, progress: bool | None = None,
                    workers: int | None = None) -> dict:
    """Write a synthetic cohort of ``n_patients`` under ``out``; return a summary of what was written.

    ``workers`` processes write the ECG records and images (default: up to 2, the
    CPU count permitting); the output does not depend on it.  ``progress``: progress lines on
    stderr (default: unless ``mmpipe --quiet``), with bars when stderr is a terminal.
    """
    t0 = time.time()
    out = Path(out)
    if progress is None:   # as the CLI says: nothing with `mmpipe --quiet`, progress bars only on a terminal
        from pipeline import progress as _progress
        progress = not _progress.quiet()
    bars = progress and sys.stderr.isatty()
    if n_patients < 1:
        raise ValueError(f"n_patients must be at least 1, got {n_patients}")
    clash = [d for d in ("mimic-iv", "mimic-iv-ecg", "mimic-iv-note", "mimic-cxr-jpg") if (out / d).exists()]
    if clash:
        raise FileExistsError(f"{out} already holds {', '.join(clash)}; generate into an empty folder "
                              "(or delete those folders first)")
    workers = min(2, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(12)]
    rng_latent, rng_ehr, rng_icu, rng_dx, rng_ecg, rng_rr, rng_ds, rng_cxr = streams[:8]
    rng_care, rng_rx, rng_micro, rng_tx = streams[8:]

    patients, adm = latent.simulate(rng_latent, n_patients)
    counts: dict[str, int] = {"patients": len(patients), "admissions": len(adm)}
    _log(progress, t0, f"{len(patients)} patients, {len(adm)} admissions simulated")

    mimic = out / "mimic-iv"
    ehr.write_patients(mimic, patients)
    ehr.write_admissions(mimic, adm, patients)
    plan = care.care_plan(rng_care, adm)
    counts["diagnoses_icd"], counts["procedures_icd"] = codes.write_codes(rng_dx, mimic, adm, patients, plan)
    counts["labevents"] = ehr.write_labs(rng_ehr, mimic, adm, patients)
    counts["icustays"], counts["chartevents"], stays = ehr.write_icu(rng_icu, mimic, adm)
    ehr.write_d_items(mimic, care.D_ITEMS_ROWS)
    counts["inputevents"] = care.write_inputevents(rng_tx, mimic, adm, plan, stays)
    counts["outputevents"] = care.write_outputevents(rng_tx, mimic, adm, plan, stays)
    counts["procedureevents"] = care.write_procedureevents(rng_tx, mimic, adm, plan, stays)
    counts["prescriptions"], counts["emar"] = orders.write_medications(rng_rx, mimic, adm, plan)
    counts["microbiologyevents"] = orders.write_microbiology(rng_micro, mimic, adm, plan)
    _log(progress, t0, f"MIMIC-IV tables written ({counts['labevents']} labevents, "
                       f"{counts['chartevents']} chartevents, {counts['emar']} emar)")

    ecg_root = out / "mimic-iv-ecg"
    ecg_plan = ecg.plan_ecgs(rng_ecg, adm)
    ecg.write_record_list(ecg_root, ecg_plan)
    counts["ecg_records"] = _write_many(ecg.write_records, ecg_root, ecg.record_specs(ecg_plan), workers,
                                        "ECG records", bars)
    _log(progress, t0, f"{counts['ecg_records']} ECG records written")

    note_root = out / "mimic-iv-note"
    counts["radiology_notes"], rr_plan, impressions = notes.write_radiology(rng_rr, note_root, adm, patients)
    counts["discharge_notes"] = notes.write_discharge(rng_ds, note_root, adm, patients, impressions)
    _log(progress, t0, f"{counts['radiology_notes']} radiology reports, {counts['discharge_notes']} discharge notes")

    cxr_root = out / "mimic-cxr-jpg"
    studies = imaging.plan_studies(rng_cxr, adm)
    images = imaging.plan_images(rng_cxr, studies)
    imaging.write_tables(cxr_root, studies, images, rng_cxr)
    counts["cxr_studies"] = len(studies)
    counts["cxr_images"] = _write_many(imaging.write_images, cxr_root, imaging.image_specs(images), workers,
                                       "CXR images", bars)
    _log(progress, t0, f"{counts['cxr_images']} CXR images written")

    adm["p_bayes"] = bayes.posterior_risk(adm, patients, {"ecg": ecg_plan, "notes": rr_plan, "imaging": studies})
    write_csv(adm.sort_values("hadm_id"), out / "ground_truth.csv.gz", GROUND_TRUTH_COLUMNS)
    present = {"ecg": _present(adm, ecg_plan), "notes": _present(adm, rr_plan.assign(hadm_id=adm["hadm_id"].to_numpy()[
        rr_plan["adm"].to_numpy()])), "imaging": _present(adm, studies)}
    summary = {**counts, **_risk_summary(adm, present), "seconds": round(time.time() - t0, 1)}
    _log(progress, t0, f"done: mortality {summary['mortality_rate']:.3f}, Bayes AUROC {summary['bayes_auroc']}")
    return summary


def _present(adm: pd.DataFrame, items: pd.DataFrame) -> np.ndarray:
    """Whether each admission has an item of this modality in the window before its prediction time."""
    ids = set(items.loc[items["before_prediction"], "hadm_id"].astype("int64"))
    return adm["hadm_id"].isin(ids).to_numpy()


def _risk_summary(adm: pd.DataFrame, present: dict[str, np.ndarray]) -> dict:
    """Mortality and the AUROCs of the hidden risk: Bayes (all components) and what each modality can see."""
    elig = adm["eligible"].to_numpy()
    y = adm["label"].to_numpy()[elig]
    parts = {m: adm[f"{m}_part"].to_numpy()[elig] for m in latent.MODALITIES}
    seen = {"ehr": parts["ehr"], **{m: parts[m] * present[m][elig] for m in ("ecg", "notes", "imaging")}}
    interaction = adm["interaction_part"].to_numpy()[elig] * present["ecg"][elig]   # seen where the ECG is

    def r(x):
        return None if x is None else round(x, 4)
    return {
        "mortality_rate": round(float(adm["label"].mean()), 4),
        "cohort_admissions": int(elig.sum()),
        "cohort_mortality_rate": round(float(y.mean()), 4) if len(y) else None,
        "excluded_minor": int((adm["age"] < 18).sum()),
        "excluded_died_before_prediction": int(((adm["age"] >= 18) & (adm["label"] == 1)
                                                & (adm["los_hours"] <= latent.PREDICTION_HOURS)).sum()),
        # The AUROC of the reference posterior p_bayes (a reference, not a bound: see
        # synthetic.bayes), and that of the full latent risk, which no file shows.
        "bayes_auroc": r(auroc(y, adm["p_bayes"].to_numpy()[elig])),
        "latent_risk_auroc": r(auroc(y, adm["logit"].to_numpy()[elig])),
        "latent_risk_auroc_all_admissions": r(auroc(adm["label"], adm["logit"])),
        "present_before_prediction": {m: round(float(p[elig].mean()), 3) for m, p in present.items()},
        # The best AUROC from each modality's own component where it is observed, and from all observed parts.
        "oracle_auroc": {**{m: r(auroc(y, s)) for m, s in seen.items()},
                         "all_observed": r(auroc(y, sum(seen.values()) + interaction))},
    }
