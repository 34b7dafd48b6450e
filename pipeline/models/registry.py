"""The model kinds ``mmpipe train`` can fit, by the names ``model.fusion_models`` uses.

A ``ModelKind`` is a name, ``build(cfg)`` (an unfitted estimator for the run configuration)
and ``load(folder)`` (the estimator a ``save`` wrote).  The estimator owns the rest, with
the scikit-learn contract (STYLE.md habit 6):

- ``fit(X, y, eval_set=(X_valid, y_valid), groups=subject_ids)`` returns self; ``eval_set``
  drives early stopping or penalty choice, ``groups`` groups any cross-fitting by subject;
  a kind with ``reads_tensors`` also gets ``tensors=`` (the raw waveforms and images) and
  an ``hadm_id`` column in X, and has ``with_tensors(tensors)`` to attach them for scoring;
- ``feature_names_in_``, ``decision_function(X)`` (log-odds), ``predict_proba``;
- ``explain(X, background)`` -> ``pipeline.explain.explanation.Explanation``;
- ``save(folder)``: JSON, text and safetensors files, never a pickle.

Adding a model kind is one ``register(ModelKind(...))``: ``jobs/train.py`` fits, calibrates,
saves and scores every kind through ``fit`` and ``load`` here, and the run's model.json
records the kind's name, which scoring loads it by.  The per-modality imputer
(``model.imputation``) wraps any kind (``ImputedClassifier``), saved around it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.errors import DataError
from pipeline.stages.align import modality_of

BASELINE = "gbm_only"   # the single-modality baselines: one per modality, that modality's columns only


@dataclass(frozen=True)
class ModelKind:
    name: str
    build: Callable            # RunConfig -> unfitted estimator
    load: Callable             # folder -> fitted estimator
    reads_tensors: bool = False
    describe: Callable | None = None   # fitted estimator -> a line for the training log


@dataclass(frozen=True)
class TrainingData:
    """What a kind is fitted on: fit rows and validation rows of the aligned table (with
    ``subject_id``, ``hadm_id``, ``label``), the feature columns, and the raw tensors
    (``tensors()``, read only for kinds that use them)."""
    fit_rows: pd.DataFrame
    valid_rows: pd.DataFrame
    features: list[str]
    tensors: Callable[[], dict] = dict

    def only(self, modality: str) -> TrainingData:
        """The same rows with one modality's columns (and mask) only."""
        return TrainingData(self.fit_rows, self.valid_rows, [c for c in self.features if modality_of(c) == modality],
                            self.tensors)


KINDS: dict[str, ModelKind] = {}


def register(kind: ModelKind) -> ModelKind:
    """Add (or replace) a model kind; returns it."""
    KINDS[kind.name] = kind
    return kind


def get(name: str, file: Path | None = None, field: str = "model.fusion_models") -> ModelKind:
    """The kind called ``name``; a DataError listing the known ones otherwise."""
    if name not in KINDS:
        raise DataError(f"unknown model kind {name!r}", file=file, field=field,
                        hint=f"one of {', '.join(sorted(KINDS))}")
    return KINDS[name]


def imputed(est, cfg):
    """``est`` behind the configured per-modality imputer (itself when nothing is imputed)."""
    if all(s == "none" for s in cfg.model.imputation.values()):
        return est
    from pipeline.models.impute import ImputedClassifier, ModalityImputer
    imp = ModalityImputer(dict(cfg.model.imputation), indicators=cfg.model.imputation_indicators,
                          random_state=cfg.model.seed)
    return ImputedClassifier(imp, est)


def fit(name: str, cfg, data: TrainingData):
    """Build the kind ``name`` for ``cfg`` (behind the imputer it asks for) and fit it on ``data``."""
    kind = get(name)
    cols = (["hadm_id"] if kind.reads_tensors else []) + list(data.features)
    tr, va = data.fit_rows, data.valid_rows
    kw = {"groups": tr["subject_id"].to_numpy()}
    if kind.reads_tensors:
        kw["tensors"] = data.tensors()
    est = imputed(kind.build(cfg), cfg).fit(tr[cols], tr["label"], eval_set=(va[cols], va["label"].to_numpy()), **kw)
    return est.with_tensors(kw["tensors"]) if kind.reads_tensors else est


def load(folder: Path, name: str):
    """The estimator of kind ``name`` saved in ``folder`` (with its imputer when it had one)."""
    from pipeline.artifacts import read_json
    from pipeline.models.impute import ImputedClassifier
    kind, folder = get(name, field="kind"), Path(folder)
    if not folder.exists():
        raise DataError("model folder is missing", file=folder, hint="retrain or restore the model folder")
    saved = read_json(folder / "model.json").get("kind") if (folder / "model.json").exists() else None
    if saved == ImputedClassifier.KIND:
        return ImputedClassifier.load(folder, kind.load)
    return kind.load(folder)


# ---------------------------------------------------------------- the built-in kinds
def _gbm_params(cfg) -> dict:
    m = cfg.model
    return dict(n_estimators=m.gbm_estimators, learning_rate=m.gbm_learning_rate, num_leaves=m.gbm_num_leaves,
                distributed=m.distributed, random_state=m.seed)


def _gbm(cfg, linear_base: bool):
    from pipeline.models.gbm import GBMClassifier
    return GBMClassifier(linear_base=linear_base, **_gbm_params(cfg))


def _late(cfg, head: str):
    from pipeline.models.gbm import LateFusionGBM
    params = _gbm_params(cfg)
    seed = params.pop("random_state")
    return LateFusionGBM(gbm_params=params if head == "gbm" else None, head=head, random_state=seed)


def _linear(cfg):
    from pipeline.models.linear import LinearClassifier
    return LinearClassifier(random_state=cfg.model.seed)


def _fusion(cfg, fusion: str):
    from pipeline.models.fusion import FusionNetClassifier
    return FusionNetClassifier.from_config(fusion, cfg)


def _load_gbm(folder):
    from pipeline.models.gbm import GBMClassifier
    return GBMClassifier.load(folder)


def _load_late(folder):
    from pipeline.models.gbm import LateFusionGBM
    return LateFusionGBM.load(folder)


def _load_linear(folder):
    from pipeline.models.linear import LinearClassifier
    return LinearClassifier.load(folder)


def _load_fusion(folder):
    from pipeline.models.fusion import FusionNetClassifier
    return FusionNetClassifier.load(folder)


def _describe_fusion(model) -> str:
    from pipeline.models.fusion import epochs_per_net
    epochs = epochs_per_net(model.history_)
    return f"{len(epochs)} net(s), epochs {epochs}"


register(ModelKind("gbm_early", lambda cfg: _gbm(cfg, cfg.model.linear_base), _load_gbm))
register(ModelKind(BASELINE, lambda cfg: _gbm(cfg, False), _load_gbm))
register(ModelKind("gbm_late", lambda cfg: _late(cfg, "gbm"), _load_late))
register(ModelKind("linear_early", _linear, _load_linear))
register(ModelKind("linear_late", lambda cfg: _late(cfg, "linear"), _load_late))
for _f in ("early", "late", "hybrid", "attention"):    # pipeline.models.fusion_net.FUSIONS
    register(ModelKind(f"fusion_{_f}", lambda cfg, f=_f: _fusion(cfg, f), _load_fusion, reads_tensors=True,
                       describe=_describe_fusion))
