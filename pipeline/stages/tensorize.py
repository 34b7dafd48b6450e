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


class TensorWriter:
    """Write aligned-table parts as consecutive shards; ``close()`` writes index.json."""

    def __init__(self, out_dir: Path, modalities: list[str], tensors: dict | None = None):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.modalities, self.tensors = list(modalities), tensors or {}
        self.names: dict[str, list[str]] | None = None
        self.shards: list[dict] = []
        self.shapes: dict = {}

    def write(self, part: pd.DataFrame) -> None:
        names = {m: [c for c in part.columns if modality_of(c) == m and not c.startswith("mask__")]
                 for m in self.modalities}
        if self.names is None:
            self.names = names
        elif names != self.names:
            raise DataError("a part's feature columns differ from the first part's", file=self.out_dir)
        split_code = {s: i for i, s in enumerate(SPLITS)}
        hadm = part["hadm_id"].to_numpy(np.int64)
        arrays = {"hadm_id": hadm, "subject_id": part["subject_id"].to_numpy(np.int64),
                  "prediction_time": pd.to_datetime(part["prediction_time"]).to_numpy("datetime64[ns]").view(np.int64),
                  "label": part["label"].fillna(-1).to_numpy(np.int64),
                  "split": part["split"].map(split_code).to_numpy(np.int8)}
        for m in self.modalities:
            fk, mk = modality_keys(m)
            arrays[fk] = part[names[m]].to_numpy(np.float64) if names[m] else np.zeros((len(part), 0))
            arrays[mk] = part[mask_col(m)].to_numpy(np.uint8)
        for m, key in (("ecg", "ecg.waveform"), ("imaging", "imaging.image")):
            if m in self.tensors and m in self.modalities:
                ids, arr = self.tensors[m]
                arrays[key] = _gather(np.asarray(ids), arr, hadm, arrays[modality_keys(m)[1]])
        self.shapes = {k_: list(v.shape[1:]) for k_, v in arrays.items()}
        f = f"shard-{len(self.shards):05d}.safetensors"
        save_file({k_: np.ascontiguousarray(v) for k_, v in arrays.items()}, str(self.out_dir / f))
        self.shards.append({"file": f, "rows": len(part)})

    def close(self) -> dict:
        write_json({"modalities": self.modalities, "feature_names": self.names or {m: [] for m in self.modalities},
                    "splits": list(SPLITS), "shards": self.shards, "tensors": self.shapes},
                   self.out_dir / "index.json")
        return {"shards": len(self.shards), "rows": int(sum(s["rows"] for s in self.shards))}


def tensorize(table: pd.DataFrame, modalities: list[str], out_dir: Path, tensors: dict | None = None,
              shard_rows: int = 2048) -> dict:
    w = TensorWriter(out_dir, modalities, tensors)
    for start in range(0, len(table), shard_rows):
        w.write(table.iloc[start:start + shard_rows])
    return w.close()


def shard_table(arrays: dict[str, np.ndarray], index: dict) -> pd.DataFrame:
    """One shard back as aligned-table rows (ids, prediction time, split, features, masks)."""
    cols = {"subject_id": arrays["subject_id"], "hadm_id": arrays["hadm_id"],
            "prediction_time": arrays["prediction_time"].view("datetime64[ns]"),
            "label": arrays["label"], "split": np.asarray(index["splits"], dtype=object)[arrays["split"]]}
    parts = [pd.DataFrame(cols)]
    for m in index["modalities"]:
        fk, mk = modality_keys(m)
        parts.append(pd.DataFrame(arrays[fk], columns=index["feature_names"][m]))
        parts.append(pd.DataFrame({mask_col(m): arrays[mk].astype(np.int8)}))
    return pd.concat(parts, axis=1)


def shard_tensors(arrays: dict[str, np.ndarray]) -> dict:
    """The raw waveforms/images of a shard in the fused net's ``tensors`` form."""
    return {m: (arrays["hadm_id"], arrays[key]) for m, key in (("ecg", "ecg.waveform"), ("imaging", "imaging.image"))
            if key in arrays}


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
            if split not in index["splits"]:
                raise DataError(f"unknown split {split!r}", file=folder / "index.json", field="splits")
            keep = arrays["split"] == index["splits"].index(split)
            arrays = {k: v[keep] for k, v in arrays.items()}
        yield arrays
