"""Align per-modality feature tables onto the cohort: one row per hadm_id, a mask per modality.

A modality is present for a row when its feature table has that hadm_id (for
EHR: at least one event in the window).  Absent modalities keep NaN features and
mask 0; imputation, where a model wants it, happens in the model and always
keeps the mask.
"""
from __future__ import annotations

import pandas as pd

from pipeline.config import MODALITIES

COHORT_COLS = ["subject_id", "hadm_id", "prediction_time", "label", "split", "age", "gender", "race"]


def mask_col(modality: str) -> str:
    return f"mask__{modality}"


def modality_of(feature: str) -> str | None:
    """'ecg__hr' -> 'ecg'; 'mask__ecg' -> 'ecg'."""
    head = feature.split("__", 1)[0]
    if head == "mask":
        return feature.split("__", 1)[1]
    return head if head in MODALITIES else None


def align(cohort: pd.DataFrame, features: dict[str, pd.DataFrame | None]) -> pd.DataFrame:
    base = cohort[[c for c in COHORT_COLS if c in cohort.columns]].copy()
    parts = [base.set_index("hadm_id")]
    masks = {}
    for m in MODALITIES:
        f = features.get(m)
        if f is None:  # modality not part of this run: no columns, mask 0
            masks[mask_col(m)] = pd.Series(0, index=base["hadm_id"], dtype="int8")
            continue
        f = f.set_index("hadm_id")
        cols = [c for c in f.columns if c.startswith(f"{m}__")]
        present = base["hadm_id"].isin(f.index)
        if m == "ehr":
            counts = [c for c in cols if c.endswith("__count")]
            has = f[counts].sum(axis=1) > 0 if counts else pd.Series(True, index=f.index)
            present = base["hadm_id"].map(has).fillna(False).astype(bool)
        masks[mask_col(m)] = pd.Series(present.to_numpy().astype("int8"), index=base["hadm_id"])
        parts.append(f[cols])
    table = parts[0].join(parts[1:], how="left") if len(parts) > 1 else parts[0]
    table = table.join(pd.DataFrame(masks))
    return table.reset_index()


def feature_columns(table: pd.DataFrame) -> list[str]:
    """Model inputs: modality features and masks, in table order."""
    return [c for c in table.columns if modality_of(c) is not None]
