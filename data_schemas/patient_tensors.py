"""The per-patient tensor artifact (stage ``tensorize``): shards that stream.

Folder layout: ``index.json`` + ``shard-00000.safetensors``, ``shard-00001...``.
Each shard holds, for its rows (same first axis everywhere):
- ``hadm_id`` int64 [n], ``subject_id`` int64 [n], ``prediction_time`` int64 [n]
  (nanoseconds since the epoch), ``label`` int64 [n] (-1 = unknown, when scoring),
  ``split`` int8 [n] (codes in index.json ``splits``);
- per modality m present in the run: ``<m>.features`` float64 [n, d_m] (NaN where
  not observed; float64 so a tree model scores them exactly as from the raw
  layouts), ``<m>.mask`` uint8 [n] (1 = modality present);
- optionally ``ecg.waveform`` float32 [n, 12, T] and ``imaging.image`` float32
  [n, 1, H, W] (zeros where the mask is 0).
index.json: ``{"modalities", "feature_names": {m: [...]}, "splits": [...],
"shards": [{"file", "rows"}], "tensors": {key: shape-without-first-axis}}``.
"""
REQUIRED_KEYS = ("hadm_id", "subject_id", "prediction_time", "label", "split")
SPLITS = ("train", "valid", "test", "score")


def modality_keys(m: str) -> tuple[str, str]:
    return f"{m}.features", f"{m}.mask"
