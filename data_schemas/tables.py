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
    Column("hospital_expire_flag", "int"),  # nullable (Int64): empty for an admission still open
    Column("admission_type", "str", required=False),
    Column("admission_location", "str", required=False),
    Column("race", "str", required=False),
    Column("insurance", "str", required=False),
    Column("language", "str", required=False),
    Column("marital_status", "str", required=False),
    Column("edregtime", "datetime", required=False),
    Column("edouttime", "datetime", required=False),
))

ICUSTAYS = Schema("icustays", (
    Column("subject_id", "int", nullable=False),
    Column("hadm_id", "int"),
    Column("stay_id", "int", nullable=False, unique=True),
    Column("intime", "datetime"),
    Column("outtime", "datetime"),
))

# Long-format events: one row per measurement, code, order or administration (labs, vitals, omr,
# diagnoses, procedures, drugs, ICU inputs/outputs/procedures, microbiology).  ``time`` is when it
# happened (as charted); ``known_time`` when it became available (storetime, the end of the day of a
# date-only field, the coded admission's dischtime): NULL = never available (e.g. a result without
# a storetime), so never used.  Features use a row only when known_time <= prediction time.
EVENTS = Schema("events", (
    Column("subject_id", "int", nullable=False),
    Column("hadm_id", "float"),          # nullable id (float64 with NaN)
    Column("time", "datetime", nullable=False),
    Column("known_time", "datetime"),
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
