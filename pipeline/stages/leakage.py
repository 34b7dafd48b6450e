"""Leakage audit: every item feeding a row is timestamped at or before its prediction
time, every EHR row a feature may use was AVAILABLE by then (re-derived from the raw
rows per source by ``availability.audit_availability``), no subject sits in two splits,
and no single feature is suspiciously good.

A violation of the first three fails the run and lists the offending items; a
single feature whose AUROC alone exceeds 0.95 on the train split is a warning.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from pipeline.errors import DataError

SUSPICIOUS_AUROC = 0.95
MIN_PER_CLASS = 10  # a feature seen in fewer positives (or negatives) is not judged


class LeakageError(DataError):
    pass


def audit(cohort: pd.DataFrame, item_times: dict[str, pd.DataFrame], table: pd.DataFrame,
          features: list[str]) -> dict:
    """``item_times[m]`` has hadm_id and item_time (latest source time used) per row."""
    result = {"passed": True, "violations": [], "split_overlap": [], "warnings": [], "checked": {}}
    pt = cohort.set_index("hadm_id")["prediction_time"]
    for m, df in item_times.items():
        if df is None or df.empty or "item_time" not in df.columns:
            result["checked"][m] = 0
            continue
        t = df.set_index("hadm_id")["item_time"]
        joined = pd.DataFrame({"item_time": t, "prediction_time": pt.reindex(t.index)}).dropna()
        late = joined[joined["item_time"] > joined["prediction_time"]]
        result["checked"][m] = int(len(joined))
        for hadm, row in late.head(50).iterrows():
            result["violations"].append({"modality": m, "hadm_id": int(hadm), "item_time": str(row.item_time),
                                         "prediction_time": str(row.prediction_time)})
        if len(late):
            result["passed"] = False
    splits = cohort.groupby("subject_id")["split"].nunique()
    overlap = splits[splits > 1].index.tolist()
    if overlap:
        result["passed"] = False
        result["split_overlap"] = [int(s) for s in overlap[:50]]
    train = table[table["split"] == "train"]
    y = train["label"].to_numpy()
    if len(np.unique(y)) == 2:
        for f in features:
            x = train[f].to_numpy(dtype=float)
            ok = ~np.isnan(x)
            n_pos = int(y[ok].sum())
            if min(n_pos, int(ok.sum()) - n_pos) < MIN_PER_CLASS or np.nanstd(x) == 0:
                continue
            auc = roc_auc_score(y[ok], x[ok])
            auc = max(auc, 1 - auc)
            if auc > SUSPICIOUS_AUROC:
                result["warnings"].append({"feature": f, "auroc": round(float(auc), 4),
                                           "message": "single feature AUROC > 0.95: check for leakage"})
    return result


def add_availability(result: dict, availability: dict) -> dict:
    """Merge the raw-row availability audit into ``result``; its violations fail the run."""
    result["availability"] = availability
    if not availability["passed"]:
        result["passed"] = False
        result["violations"] += availability["violations"]
    return result


def add_notes_availability(result: dict, notes: dict) -> dict:
    """Merge ``availability.audit_notes`` into ``result`` as the source 'notes'; its violations
    fail the run whatever the EHR rule (notes have no charttime comparison mode)."""
    av = result.setdefault("availability", {"rule": "storetime", "tables": [], "per_source": {}, "violations": [],
                                            "passed": True})
    av["per_source"]["notes"] = {k: notes[k] for k in ("usable", "used_before_available", "held_back")}
    av["tables"] = [*av.get("tables", []), "notes"]
    if notes["used_before_available"]:
        av["passed"] = False
        av["violations"] += notes["violations"]
        result["passed"] = False
        result["violations"] += notes["violations"]
    return result


def held_back(result: dict) -> dict[str, int]:
    """reason -> rows charted before a prediction time but not yet available (over all sources)."""
    out: dict[str, int] = {}
    for v in result.get("availability", {}).get("per_source", {}).values():
        for reason, n in v["held_back"].items():
            out[reason] = out.get(reason, 0) + n
    return out


def enforce(result: dict) -> None:
    if result["passed"]:
        return
    lines = [f"{v['modality']} hadm_id={v['hadm_id']} item_time={v['item_time']} > "
             f"prediction_time={v['prediction_time']}" for v in result["violations"][:10]]
    if result["split_overlap"]:
        lines.append(f"subjects in two splits: {result['split_overlap'][:10]}")
    raise LeakageError("leakage audit failed:\n  " + "\n  ".join(lines), field="item_time")
