"""Write the aligned cohort as streaming per-patient tensor shards (safetensors).

See data_schemas/patient_tensors.py for the layout.  ``iter_shards`` reads them
back one shard at a time, so a deep model never needs the whole cohort in memory.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from safetensors.numpy import load_file, save_file

from data_schemas.patient_tensors import REQUIRED_KEYS, SPLITS, modality_keys
from pipeline.artifacts import read_json, write_json
from pipeline.errors import DataError
from pipeline.stages.align import mask_col, modality_of


def _gather(ids: np.ndarray, arr: np.ndarray, hadm: np.ndarray, mask: np.ndarray) -> np.ndarray:
    pos = pd.Series(np.arange(len(ids)), index=ids).reindex(hadm).to_numpy()
    out = np.zeros((len(hadm),) + arr.shape[1:], np.float32)
    ok = ~np.isnan(pos) & (mask > 0)
    if ok.any():
        rows = pos[ok].astype(int)
        order = np.argsort(rows)
        block = np.asarray(arr[rows[order]], dtype=np.float32)
        out[np.flatnonzero(ok)[order]] = block
    return out


def tensorize(table: pd.DataFrame, modalities: list[str], out_dir: Path, tensors: dict | None = None,
              shard_rows: int = 2048) -> dict:
    out_dir = Path(out_dir)
    tensors = tensors or {}
    names = {m: [c for c in table.columns if modality_of(c) == m and not c.startswith("mask__")] for m in modalities}
    split_code = {s: i for i, s in enumerate(SPLITS)}
    shards, shapes = [], {}
    for k, start in enumerate(range(0, len(table), shard_rows)):
        part = table.iloc[start:start + shard_rows]
        hadm = part["hadm_id"].to_numpy(np.int64)
        arrays = {"hadm_id": hadm, "subject_id": part["subject_id"].to_numpy(np.int64),
                  "label": part["label"].to_numpy(np.int64),
                  "split": part["split"].map(split_code).to_numpy(np.int8)}
        for m in modalities:
            fk, mk = modality_keys(m)
            arrays[fk] = part[names[m]].to_numpy(np.float32) if names[m] else np.zeros((len(part), 0), np.float32)
            arrays[mk] = part[mask_col(m)].to_numpy(np.uint8)
        for m, key in (("ecg", "ecg.waveform"), ("imaging", "imaging.image")):
            if m in tensors and m in modalities:
                ids, arr = tensors[m]
                arrays[key] = _gather(np.asarray(ids), arr, hadm, arrays[modality_keys(m)[1]])
        shapes = {k_: list(v.shape[1:]) for k_, v in arrays.items()}
        f = f"shard-{k:05d}.safetensors"
        save_file({k_: np.ascontiguousarray(v) for k_, v in arrays.items()}, str(out_dir / f))
        shards.append({"file": f, "rows": len(part)})
    write_json({"modalities": modalities, "feature_names": names, "splits": list(SPLITS), "shards": shards,
                "tensors": shapes}, out_dir / "index.json")
    return {"shards": len(shards), "rows": int(len(table))}


def iter_shards(folder: Path, split: str | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Yield one shard's arrays at a time (optionally only the rows of one split)."""
    folder = Path(folder)
    index = read_json(folder / "index.json")
    for sh in index["shards"]:
        arrays = load_file(str(folder / sh["file"]))
        missing = [k for k in REQUIRED_KEYS if k not in arrays]
        if missing:
            raise DataError(f"tensor shard lacks {missing}", file=folder / sh["file"], field=missing[0])
        if split is not None:
            keep = arrays["split"] == index["splits"].index(split)
            arrays = {k: v[keep] for k, v in arrays.items()}
        yield arrays
