"""Canonical tables written by ``ingest`` (any source adapter produces these)."""
from data_schemas.base import Column, Schema

PATIENTS = Schema("patients", (
    Column("subject_id", "int", nullable=False, unique=True),
    Column("gender", "str"),
    Column("anchor_age", "int"),
    Column("anchor_year", "int"),
    Column("dod", "datetime", required=False),
))

ADMISSIONS = Schema("admissions", (
    Column("subject_id", "int", nullable=False),
    Column("hadm_id", "int", nullable=False, unique=True),
    Column("admittime", "datetime", nullable=False),
    Column("dischtime", "datetime"),
    Column("deathtime", "datetime", required=False),
    Column("hospital_expire_flag", "int"),
    Column("admission_type", "str", required=False),
    Column("race", "str", required=False),
    Column("insurance", "str", required=False),
))

ICUSTAYS = Schema("icustays", (
    Column("subject_id", "int", nullable=False),
    Column("hadm_id", "int"),
    Column("stay_id", "int", nullable=False, unique=True),
    Column("intime", "datetime"),
    Column("outtime", "datetime"),
))

# Long-format events: one row per measurement (labs, vitals, omr, ...).
EVENTS = Schema("events", (
    Column("subject_id", "int", nullable=False),
    Column("hadm_id", "float"),          # nullable id (float64 with NaN)
    Column("time", "datetime", nullable=False),
    Column("code", "str", nullable=False),  # e.g. "lab:50912", "vital:220045", "omr:Weight (Lbs)"
    Column("value", "float"),
    Column("unit", "str", required=False),
    Column("source", "str"),             # table the row came from
))

# A per-row code dictionary: code -> human label (for reasons and reports).
CODES = Schema("codes", (
    Column("code", "str", nullable=False, unique=True),
    Column("label", "str"),
))
