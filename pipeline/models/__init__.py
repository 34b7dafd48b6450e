"""Estimators (scikit-learn contract, saved without pickle) and ``load_model``."""
from __future__ import annotations

from pathlib import Path


def load_model(folder: Path):
    """Load any saved model folder by the ``kind`` its model.json records."""
    from pipeline.artifacts import read_json
    from pipeline.errors import DataError
    from pipeline.models.fusion import FusionNetClassifier
    from pipeline.models.gbm import GBMClassifier, LateFusionGBM
    from pipeline.models.impute import ImputedClassifier
    from pipeline.models.linear import LinearClassifier
    folder = Path(folder)
    loaders = {c.__name__: c.load for c in (GBMClassifier, LateFusionGBM, LinearClassifier, FusionNetClassifier,
                                              ImputedClassifier)}
    if not (folder / "model.json").exists():
        raise DataError("model folder lacks model.json", file=folder)
    kind = read_json(folder / "model.json").get("kind")
    if kind not in loaders:
        raise DataError(f"model kind {kind!r} cannot be loaded by this version", file=folder / "model.json",
                        field="kind")
    return loaders[kind](folder)
