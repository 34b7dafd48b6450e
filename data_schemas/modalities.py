"""Indexes of the non-tabular modalities and the per-modality feature tables."""
from data_schemas.base import Column, Schema

ECG_INDEX = Schema("ecg_index", (
    Column("subject_id", "int", nullable=False),
    Column("study_id", "int", nullable=False),
    Column("ecg_time", "datetime", nullable=False),
    Column("path", "str", nullable=False),   # absolute record path without extension
))

NOTES = Schema("notes", (
    Column("note_id", "str", nullable=False, unique=True),
    Column("subject_id", "int", nullable=False),
    Column("hadm_id", "float"),
    Column("note_type", "str"),
    Column("charttime", "datetime", nullable=False),   # as charted
    Column("known_time", "datetime", required=False),  # available (storetime / end of day); NaT: held back
    Column("text", "str"),
))

IMAGING_INDEX = Schema("imaging_index", (
    Column("subject_id", "int", nullable=False),
    Column("study_id", "int", nullable=False),
    Column("dicom_id", "str", nullable=False),
    Column("image_time", "datetime", nullable=False),
    Column("view_position", "str", required=False),
    Column("path", "str", nullable=False),
))

# The cohort: one row per hadm_id with its prediction time, label and split.
COHORT = Schema("cohort", (
    Column("subject_id", "int", nullable=False),
    Column("hadm_id", "int", nullable=False, unique=True),
    Column("prediction_time", "datetime", nullable=False),
    Column("label", "int", nullable=False),
    Column("split", "str", nullable=False),
    Column("age", "float", required=False),
    Column("gender", "str", required=False),
    Column("race", "str", required=False),
))

# A modality feature table: hadm_id + numeric feature columns (+ item_time = the
# latest source time used, for the leakage audit).  Absent rows = modality missing.
FEATURES = Schema("features", (
    Column("hadm_id", "int", nullable=False, unique=True),
    Column("item_time", "datetime", required=False),
))

QUARANTINE = Schema("quarantine", (
    Column("source", "str"), Column("file", "str"), Column("row", "str"),
    Column("field", "str"), Column("reason", "str"),
))

SCORES = Schema("scores", (
    Column("subject_id", "int", nullable=False),
    Column("hadm_id", "int", nullable=False, unique=True),
    Column("prediction_time", "datetime"),
    Column("risk", "float", nullable=False),
    Column("band", "str"),
    Column("reasons", "str"),
    Column("ehr", "float"), Column("ecg", "float"), Column("notes", "float"), Column("imaging", "float"),
))
