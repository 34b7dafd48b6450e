"""Imaging features: the latest frontal image known at or before the prediction time.

Per cohort row the candidates are the subject's images with
prediction_time - lookback <= image_time <= prediction_time (never after); frontal
views (PA, AP) first, then the latest.  A file that cannot be read is quarantined and
the next candidate used.  Outputs: ``features.parquet`` (interpretable intensity
statistics that track CXR findings) and ``images.npy`` [n, 1, size, size] for the
fused net's MONAI encoder, in the same row order.
"""
from __future__ import annotations

from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts import write_parquet
from pipeline.config import ImagingConfig
from pipeline.errors import DataError, Quarantine
from pipeline.sources.imaging import SOURCE, load_image

FRONTAL = ("PA", "AP")


def image_features(img: np.ndarray) -> dict[str, float]:
    """Interpretable statistics of a [H, W] image in [0, 1]."""
    h, w = img.shape
    f = {"mean": float(img.mean()), "std": float(img.std())}
    for q in (10, 50, 90):
        f[f"p{q}"] = float(np.percentile(img, q))
    left, right = img[:, : w // 2], img[:, w // 2:]
    upper, lower = img[: h // 2], img[h // 2:]
    f.update(left_mean=float(left.mean()), right_mean=float(right.mean()),
             upper_mean=float(upper.mean()), lower_mean=float(lower.mean()),
             base_apex_contrast=float(lower.mean() - upper.mean()),
             lr_asymmetry=float(abs(left.mean() - right.mean())))
    for i in range(4):
        for j in range(4):
            f[f"cell_{i}{j}"] = float(img[i * h // 4:(i + 1) * h // 4, j * w // 4:(j + 1) * w // 4].mean())
    # width of the bright central shadow (heart/mediastinum) at mid-lower height
    row = img[int(h * 0.6)]
    thr = row.mean() + 0.5 * row.std()
    f["central_width"] = float((row > thr).mean())
    gy, gx = np.gradient(img)
    f["edge_density"] = float((np.hypot(gx, gy) > 0.1).mean())
    return f


def select_images(cohort: pd.DataFrame, index: pd.DataFrame, cfg: ImagingConfig) -> pd.DataFrame:
    """Candidate images per hadm_id, best first (frontal, then latest)."""
    m = index.merge(cohort[["subject_id", "hadm_id", "prediction_time"]], on="subject_id")
    lo = m["prediction_time"] - pd.to_timedelta(cfg.lookback_hours, unit="h")
    m = m[(m["image_time"] <= m["prediction_time"]) & (m["image_time"] >= lo)].copy()
    m["frontal"] = m["view_position"].astype(str).str.upper().isin(FRONTAL)
    return m.sort_values(["hadm_id", "frontal", "image_time", "dicom_id"], ascending=[True, False, False, True])


def _load(task: tuple[str, int]):
    path, size = task
    try:
        return load_image(path, size), None
    except DataError as e:
        return None, (e.field or "image", e.reason)


def featurize_imaging(cohort: pd.DataFrame, index: pd.DataFrame, cfg: ImagingConfig, out_dir: Path,
                      quarantine: Quarantine, n_jobs: int = 2) -> dict:
    out_dir = Path(out_dir)
    cand = select_images(cohort, index, cfg)
    groups = [g for _, g in cand.groupby("hadm_id", sort=True)]
    results: dict[str, tuple] = {}
    rounds = 0
    pending = [(h, g.reset_index(drop=True)) for h, g in zip([g["hadm_id"].iloc[0] for g in groups], groups)]
    chosen: dict[int, pd.Series] = {}
    pool = get_context("fork").Pool(n_jobs) if n_jobs > 1 and len(pending) > 20 else None
    try:
        while pending:  # round k tries each admission's k-th candidate
            tasks = [(g.loc[rounds, "path"], cfg.size) for _, g in pending]
            outs = pool.map(_load, tasks, chunksize=16) if pool else [_load(t) for t in tasks]
            nxt = []
            for (h, g), (arr, err) in zip(pending, outs):
                row = g.loc[rounds]
                if err is None:
                    chosen[h] = row
                    results[h] = arr
                else:
                    quarantine.add(SOURCE, row["path"], f"dicom_id={row['dicom_id']}", err[0], err[1])
                    if rounds + 1 < len(g):
                        nxt.append((h, g))
            pending = nxt
            rounds += 1
    finally:
        if pool:
            pool.close()
            pool.join()
    hadms = sorted(results)
    feats = pd.DataFrame([image_features(results[h]) for h in hadms]).add_prefix("imaging__")
    feats.insert(0, "hadm_id", np.asarray(hadms, dtype="int64"))
    feats.insert(1, "item_time", pd.to_datetime([chosen[h]["image_time"] for h in hadms]).astype("datetime64[ns]"))
    feats["imaging__frontal"] = [float(chosen[h]["frontal"]) for h in hadms]
    if not hadms:
        feats = pd.DataFrame({"hadm_id": pd.Series(dtype="int64"), "item_time": pd.Series(dtype="datetime64[ns]")})
    write_parquet(feats, out_dir / "features.parquet")
    imgs = np.stack([results[h][None] for h in hadms]).astype(np.float32) if hadms else \
        np.zeros((0, 1, cfg.size, cfg.size), np.float32)
    np.save(out_dir / "images.npy", imgs)
    return {"candidates": int(len(cand)), "rows": len(hadms), "quarantined_images": int(sum(
        1 for r in quarantine.rows if r.source == SOURCE))}
