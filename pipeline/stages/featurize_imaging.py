"""Imaging features: the latest frontal image known at or before the prediction time.

Per cohort row the candidates are the subject's images with
prediction_time - lookback <= image_time <= prediction_time (never after); frontal
views (PA, AP) first, then the latest.  A file that cannot be read is quarantined and
the next candidate used.  Outputs, in the same row order:

- ``features.parquet``: hadm_id, item_time (the chosen image's time) and ``imaging__*``
  interpretable intensity statistics that track CXR findings (opacities and effusions
  brighten the lung fields and bases, cardiomegaly widens the bright central shadow);
- ``images.npy``: float32 [n, 1, size, size] for the fused net's MONAI encoder
  (``pipeline.models.fusion_net.ImageEncoder``).

Admissions without a usable image are absent (the modality is missing, not zero).
"""
from __future__ import annotations

import os
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.lib.format import open_memmap

from pipeline.artifacts import read_parquet, write_parquet
from pipeline.config import ImagingConfig
from pipeline.errors import DataError, Quarantine
from pipeline.progress import track
from pipeline.sources.imaging import SOURCE, load_image

FRONTAL = ("PA", "AP")


def image_features(img: np.ndarray) -> dict[str, float]:
    """Interpretable statistics of a [H, W] image in [0, 1] (row 0 = top; on a frontal
    film the image's left half is the patient's right lung)."""
    h, w = img.shape
    f = {"mean": float(img.mean()), "std": float(img.std())}
    for q in (5, 25, 50, 75, 95):
        f[f"p{q:02d}"] = float(np.percentile(img, q))
    left, right = img[:, : w // 2], img[:, w // 2:]
    upper, lower = img[: h // 2], img[h // 2:]
    f.update(left_mean=float(left.mean()), right_mean=float(right.mean()),
             upper_mean=float(upper.mean()), lower_mean=float(lower.mean()),
             base_apex_contrast=float(lower.mean() - upper.mean()),
             lr_asymmetry=float(abs(left.mean() - right.mean())))
    # lung bases (lower third, outer quarters): costophrenic angles, where effusions collect
    base = img[2 * h // 3:]
    f.update(left_base_mean=float(base[:, : w // 4].mean()), right_base_mean=float(base[:, 3 * w // 4:].mean()))
    for i in range(4):
        for j in range(4):
            f[f"cell_{i}{j}"] = float(img[i * h // 4:(i + 1) * h // 4, j * w // 4:(j + 1) * w // 4].mean())
    f["central_width"] = central_width(img)
    gy, gx = np.gradient(img)
    f["edge_density"] = float((np.hypot(gx, gy) > 0.1).mean())
    return f


def central_width(img: np.ndarray) -> float:
    """Width (fraction of the image width) of the bright central shadow (heart and
    mediastinum) at heart level: in the column profile of rows 55-75 %, the run of
    columns around the centre brighter than halfway from the lung level to the peak."""
    h, w = img.shape
    prof = img[int(0.55 * h):max(int(0.75 * h), int(0.55 * h) + 1)].mean(axis=0)
    lo, hi = float(np.percentile(prof, 25)), float(prof.max())
    if hi - lo < 1e-3:
        return 0.0
    bright = prof > lo + 0.5 * (hi - lo)
    centre = np.arange(w // 4, w - w // 4)
    lit = centre[bright[centre]]
    if not len(lit):
        return 0.0
    c = int(lit[np.argmin(np.abs(lit - w // 2))])
    a, b = c, c
    while a > 0 and bright[a - 1]:
        a -= 1
    while b < w - 1 and bright[b + 1]:
        b += 1
    return float((b - a + 1) / w)


def select_images(cohort: pd.DataFrame, index: pd.DataFrame, cfg: ImagingConfig) -> pd.DataFrame:
    """Candidate images per hadm_id, best first: frontal before other views, then latest.
    Only images with prediction_time - lookback <= image_time <= prediction_time."""
    m = index.merge(cohort[["subject_id", "hadm_id", "prediction_time"]], on="subject_id")
    lo = m["prediction_time"] - pd.to_timedelta(cfg.lookback_hours, unit="h")
    m = m[(m["image_time"] <= m["prediction_time"]) & (m["image_time"] >= lo)].copy()
    view = m["view_position"] if "view_position" in m.columns else pd.Series("", index=m.index)
    m["frontal"] = view.fillna("").astype(str).str.strip().str.upper().isin(FRONTAL)
    return m.sort_values(["hadm_id", "frontal", "image_time", "dicom_id"],
                         ascending=[True, False, False, True]).reset_index(drop=True)


def _load(task: tuple[str, int]):
    path, size = task
    try:
        return load_image(path, size), None
    except DataError as e:
        return None, (e.field or "image", e.reason)


def _load_all(tasks: list[tuple[str, int]], pool) -> list:
    loads = pool.imap(_load, tasks, chunksize=16) if pool is not None else map(_load, tasks)
    return list(track(loads, total=len(tasks), desc="images", unit="image", stage="features_imaging"))


def featurize_imaging(cohort: pd.DataFrame, index: pd.DataFrame, cfg: ImagingConfig, out_dir: Path,
                      quarantine: Quarantine, n_jobs: int = 2, encoder=None, engine=None) -> dict:
    """Write ``features.parquet`` and ``images.npy`` into ``out_dir``; return counts.
    With ``cfg.encoder == 'cnn'`` also ``imaging__cnn_risk`` from the image CNN
    (``encoder``: a fitted one when scoring; None fits one here and saves ``encoder/``).
    A distributed ``engine`` (pipeline.engine) decodes the images over shards of subjects on
    its workers and merges the shards; the CNN then runs here on the merged images."""
    out_dir = Path(out_dir)
    if engine is not None and engine.distributed:
        from functools import partial

        from pipeline.engine import sharded_stage
        counts = sharded_stage(partial(decode_images, cfg=cfg, n_jobs=1), cohort, {"index": index}, out_dir,
                               quarantine, engine, arrays=("images.npy",), sort_by_hadm=True)
    else:
        counts = decode_images(cohort, index, cfg, out_dir, quarantine, n_jobs)
    cnn_fitted = False
    if cfg.encoder == "cnn" and counts["rows"]:
        from pipeline.stages.image_cnn import cnn_feature
        feats = read_parquet(out_dir / "features.parquet")
        risk, cnn_fitted = cnn_feature(cohort, feats["hadm_id"].to_numpy(),
                                       np.load(out_dir / "images.npy", mmap_mode="r"), cfg, encoder, out_dir)
        feats["imaging__cnn_risk"] = risk.astype("float64")
        write_parquet(feats, out_dir / "features.parquet")
    return {**counts, "cnn_fitted_here": cnn_fitted}


def decode_images(cohort: pd.DataFrame, index: pd.DataFrame, cfg: ImagingConfig, out_dir: Path,
                  quarantine: Quarantine, n_jobs: int = 2) -> dict:
    """The chosen image of each admission: ``features.parquet`` (statistics, hadm_id order)
    and ``images.npy``; return counts."""
    out_dir = Path(out_dir)
    cand = select_images(cohort, index, cfg)
    pending = [(int(h), g.reset_index(drop=True)) for h, g in cand.groupby("hadm_id", sort=True)]
    # Decoded images go straight to a memory-mapped scratch file (one slot per admission),
    # so memory holds one round of results, not the cohort's images.
    scratch = out_dir / f".images_scratch{os.getpid()}.npy"
    slots = open_memmap(scratch, mode="w+", dtype=np.float32, shape=(max(len(pending), 1), 1, cfg.size, cfg.size))
    slot_of = {h: i for i, (h, _) in enumerate(pending)}
    chosen: dict[int, pd.Series] = {}
    stats: dict[int, dict] = {}
    n_bad, n_tried, k = 0, 0, 0
    pool = get_context("fork").Pool(n_jobs) if n_jobs > 1 and len(pending) > 20 else None
    try:
        while pending:  # round k tries each still-unserved admission's k-th candidate
            outs = _load_all([(g.loc[k, "path"], cfg.size) for _, g in pending], pool)
            n_tried += len(outs)
            nxt = []
            for (h, g), (arr, err) in zip(pending, outs):
                row = g.loc[k]
                if err is None:
                    chosen[h], stats[h] = row, image_features(arr)
                    slots[slot_of[h], 0] = arr
                    continue
                n_bad += 1
                quarantine.add(SOURCE, row["path"], f"dicom_id={row['dicom_id']}", err[0], err[1])
                if k + 1 < len(g):
                    nxt.append((h, g))
            pending, k = nxt, k + 1
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    hadms = sorted(chosen)
    feats = pd.DataFrame({"hadm_id": np.asarray(hadms, dtype="int64"),
                          "item_time": pd.Series([chosen[h]["image_time"] for h in hadms],
                                                 dtype="datetime64[ns]")})
    if hadms:
        table = pd.DataFrame([stats[h] for h in hadms]).add_prefix("imaging__")
        table["imaging__frontal"] = [float(chosen[h]["frontal"]) for h in hadms]
        feats = pd.concat([feats, table], axis=1)
    tmp = out_dir / f".images.npy.tmp{os.getpid()}.npy"
    imgs = open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(hadms), 1, cfg.size, cfg.size))
    order = np.asarray([slot_of[h] for h in hadms], dtype=np.int64)
    for start in range(0, len(order), 1024):
        imgs[start:start + 1024] = slots[order[start:start + 1024]]
    imgs.flush()
    del imgs, slots
    os.replace(tmp, out_dir / "images.npy")
    scratch.unlink(missing_ok=True)
    write_parquet(feats, out_dir / "features.parquet")
    return {"candidates": len(cand), "images_tried": n_tried, "rows": len(hadms),
            "quarantined_images": n_bad,
            "non_frontal_used": int(sum(not chosen[h]["frontal"] for h in hadms))}
