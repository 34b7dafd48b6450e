"""Typed configuration (pydantic).  Strings from config are never evaluated.

A run's configuration is stored in RUN/config.json; its content hash keys the
stage cache, so a changed setting reruns every stage that reads it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MODALITIES = ("ehr", "ecg", "notes", "imaging")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourcePaths(_Strict):
    """Explicit paths per source; None = discover under --data."""
    mimic_iv: Path | None = None
    eicu: Path | None = None
    meds: Path | None = None
    ecg: Path | None = None
    notes: Path | None = None
    cxr: Path | None = None


class TaskConfig(_Strict):
    name: Literal["mortality", "icu_mortality", "los3", "los7", "readmission30"] = "mortality"
    anchor: Literal["admittime", "intime"] = "admittime"
    prediction_hours: float = 24.0
    min_age: int = 18
    test_fraction: float = 0.2
    valid_fraction: float = 0.15
    seed: int = 0
    # a MEDS label file or folder (subject_id, prediction_time, boolean_value): the cohort is these
    # labels, each in the admission in progress at its prediction time (the name's rules are not used)
    labels: Path | None = None


class EHRConfig(_Strict):
    lookback_hours: float = 24.0 * 7  # window of events before the prediction time
    max_codes: int = 120              # most frequent measurement codes (labs, vitals, omr) kept as features
    aggregations: tuple[str, ...] = ("last", "min", "max", "mean", "count", "slope", "hours_since_last")
    # When a row may feed a prediction: storetime = once available (result stored, code assigned at
    # discharge, date-only at the end of its day); charttime = at its charted time, as published MIMIC
    # pipelines do (for comparison only: it uses results nobody had yet).  Codes are always at discharge.
    availability: Literal["storetime", "charttime"] = "storetime"
    history_days: float = 365.0       # look-back of the earlier admissions / ICU stays counts
    max_history_codes: int = 40       # raw ICD codes of earlier admissions, chosen on train
    max_drugs: int = 30               # drug names (prescribed or administered), chosen on train
    # admission context fields used as predictors; insurance, language, marital_status and race may be added
    context: tuple[Literal["admission_type", "admission_location", "insurance", "language", "marital_status",
                           "race"], ...] = ("admission_type", "admission_location")


class ECGConfig(_Strict):
    fs: int = 500
    seconds: float = 10.0
    lookback_hours: float = 24.0 * 30
    select: Literal["latest", "all"] = "latest"
    min_leads: int = 1               # records with fewer mapped ECG leads are quarantined
    max_records: int | None = None


class NotesConfig(_Strict):
    encoder: Literal["minilm", "tfidf"] = "tfidf"
    model_path: Path | None = None   # local path of a sentence-transformers model
    svd_dims: int = 32
    lookback_hours: float = 24.0 * 30
    note_types: tuple[str, ...] = ("radiology", "discharge")
    batch_size: int = 32
    # also notes__text_risk: a cross-fitted logistic regression over each admission's TF-IDF
    text_risk: bool = False


class ImagingConfig(_Strict):
    size: int = 64
    lookback_hours: float = 24.0 * 30
    # stats: intensity statistics only; cnn: also a cross-fitted MONAI CNN's logit (imaging__cnn_risk)
    encoder: Literal["stats", "cnn"] = "stats"


class ModelConfig(_Strict):
    # Small, column-subsampled trees at a low rate, early-stopped on the validation split (which
    # sets the number of trees, so the large cap costs nothing when it is not needed).
    gbm_estimators: int = 1000
    gbm_learning_rate: float = 0.03
    gbm_num_leaves: int = 7
    # gbm_early boosts from a cross-fitted penalised logistic model's logit, so its trees learn
    # what is not additive in the features
    linear_base: bool = True
    # the fused nets learn a residual over the same base, starting at it (on the 5k benchmark
    # early stopping then keeps the base alone: the deep part lowers no validation loss)
    fusion_linear_base: bool = False
    # each fused net is a deep ensemble of this many nets (seeds seed, seed + 1, ...), their
    # logits averaged: n times the training time, less seed-to-seed variance
    fusion_members: int = Field(default=3, ge=1)
    # gbm_early | gbm_late | linear_early | linear_late | fusion_early | fusion_late |
    # fusion_hybrid | fusion_attention, all on the same splits
    fusion_models: tuple[str, ...] = ("gbm_early", "gbm_late", "linear_early", "fusion_attention")
    primary: str = "gbm_early"
    calibration: Literal["isotonic", "platt"] = "isotonic"
    # share of the train split's subjects held out to fit the calibrator on: rows that no model
    # fit, early stopping or penalty choice has used (the validation split drives those)
    calibration_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    top_k_reasons: int = 3
    band_thresholds: tuple[float, float] = (0.10, 0.30)  # low < t0 <= medium < t1 <= high
    single_modality_baselines: bool = True
    # Per modality: none (LightGBM routes NaN itself; the net fills medians) | mean | median |
    # iterative (scikit-learn IterativeImputer across modalities).  Masks are always kept.
    imputation: dict[Literal["ehr", "ecg", "notes", "imaging"], Literal["none", "mean", "median", "iterative"]] = \
        Field(default_factory=dict)
    imputation_indicators: bool = True  # add <feature>__isna for every filled feature
    # LightGBM trained by lightgbm.dask on the Dask cluster of `train --engine dask` (same splits)
    distributed: bool = False
    seed: int = 0


class ReportConfig(_Strict):
    # the patient cards show each patient's 12-lead ECG and chest X-ray thumbnail; turn off
    # for a report that leaves the site (the waveforms and images are patient data)
    show_signals: bool = True
    patient_cards: int = Field(default=6, ge=0)   # highest- and lowest-risk test admissions shown


class RunConfig(_Strict):
    sources: SourcePaths = Field(default_factory=SourcePaths)
    task: TaskConfig = Field(default_factory=TaskConfig)
    ehr: EHRConfig = Field(default_factory=EHRConfig)
    ecg: ECGConfig = Field(default_factory=ECGConfig)
    notes: NotesConfig = Field(default_factory=NotesConfig)
    imaging: ImagingConfig = Field(default_factory=ImagingConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    modalities: tuple[str, ...] = MODALITIES

    @classmethod
    def load(cls, path: Path | None) -> "RunConfig":
        """A JSON or YAML file (``yaml.safe_load``: no tags that build Python objects).
        Unreadable text, a tag, an unknown key or a bad value: ``DataError`` naming the file and field."""
        if path is None:
            return cls()
        import yaml
        from pydantic import ValidationError

        from pipeline.errors import DataError
        try:
            text = Path(path).read_text()
            data = (yaml.safe_load(text) if str(path).endswith((".yaml", ".yml")) else json.loads(text)) or {}
        except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as e:
            raise DataError(f"cannot read the config ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
                            file=path, hint="a JSON or YAML mapping; YAML tags such as !!python/... are refused") from None
        if not isinstance(data, dict):
            raise DataError(f"the config must be a mapping, found {type(data).__name__}", file=path)
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            raise DataError(f"{err['msg']} (found {str(err.get('input'))[:80]!r}); {e.error_count()} problem(s)",
                            file=path, field=".".join(map(str, err["loc"])),
                            hint="see the README's configuration section") from None

    def section_hash(self, *sections: str) -> str:
        data = self.model_dump(mode="json")
        blob = json.dumps({s: data[s] for s in sections}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
