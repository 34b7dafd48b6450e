"""Exact per-patient modality attribution by Shapley values over modality subsets.

v(S) = the model's logit for the patient when only the modalities in S are shown; every
other modality is made absent exactly as a TRAINING row without it looks
(``AbsenceTemplate``, learned from the training rows): its mask 0, and each of its
columns set to what the training rows lacking the modality hold there (NaN for a
feature align leaves missing, 0 for an event count it fills with 0).  A column that
varies among those rows (age and sex: the cohort gives them to every row, with or
without EHR events) is context: it is never hidden, so v(none) is the model's output for
a real patient who has only the context.  A modality that is never absent in training
has no in-distribution absent form: it is hidden as NaN with mask 0 and listed in
``AbsenceTemplate.unobserved`` (its contribution is then an extrapolation).

No retraining; with M modalities it needs 2^M model evaluations per batch (16 for four).
A modality the patient does not have contributes exactly 0.  The contributions sum to
v(all) - v(none).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from math import factorial

import numpy as np
import pandas as pd

from pipeline.stages.align import mask_col, modality_of


def _feature_cols(columns, m: str) -> list[str]:
    return [c for c in columns if modality_of(c) == m and not c.startswith("mask__")]


@dataclass
class AbsenceTemplate:
    """Per modality, the value each of its columns takes in a training row without it
    (None: NaN); ``context``: columns never hidden; ``unobserved``: modalities never absent
    in training."""
    values: dict[str, dict[str, float | None]] = field(default_factory=dict)
    context: list[str] = field(default_factory=list)
    unobserved: list[str] = field(default_factory=list)

    @classmethod
    def learn(cls, train: pd.DataFrame, modalities) -> "AbsenceTemplate":
        values, context, unobserved = {}, [], []
        for m in modalities:
            cols = _feature_cols(train.columns, m)
            absent = train[train[mask_col(m)] == 0] if mask_col(m) in train.columns else train.iloc[:0]
            values[m] = {}
            if absent.empty:
                unobserved.append(m)
                values[m] = {c: None for c in cols}
                continue
            for c in cols:
                v = absent[c].to_numpy(dtype=float)
                if np.isnan(v).all():
                    values[m][c] = None
                elif not np.isnan(v).any() and np.all(v == v[0]):
                    values[m][c] = float(v[0])
                else:
                    context.append(c)   # differs between rows without m: not part of m
        return cls(values, context, unobserved)

    def hide(self, X: pd.DataFrame, modalities) -> pd.DataFrame:
        context, fill = set(self.context), {}
        for m in modalities:
            known = self.values.get(m)
            for c in _feature_cols(X.columns, m):
                if c not in context:
                    v = None if known is None else known.get(c)
                    fill[c] = np.nan if v is None else v
            if mask_col(m) in X.columns:
                fill[mask_col(m)] = 0
        if not fill:
            return X.copy()
        # all replaced columns at once (two blocks, not a column assignment each: a modality has
        # hundreds): masks as integers, features as floats, as a column assignment would make them
        blocks = [pd.DataFrame(np.tile(np.array([fill[c] for c in cols], dtype=dtype), (len(X), 1)),
                               columns=cols, index=X.index)
                  for cols, dtype in (([c for c in fill if c.startswith("mask__")], np.int64),
                                      ([c for c in fill if not c.startswith("mask__")], np.float64)) if cols]
        return pd.concat([X.drop(columns=list(fill)), *blocks], axis=1)[X.columns]

    def to_json(self) -> dict:
        return {"values": self.values, "context": self.context, "unobserved": self.unobserved}

    @classmethod
    def from_json(cls, d: dict | None) -> "AbsenceTemplate":
        return cls(**d) if d else cls()


def hide(X: pd.DataFrame, modalities: set[str], template: AbsenceTemplate | None = None) -> pd.DataFrame:
    """A copy of X with the given modalities made absent: as the training rows without them
    look (``template``), else NaN features and mask 0."""
    return (template or AbsenceTemplate()).hide(X, modalities)


def modality_shapley(logit_fn, X: pd.DataFrame, modalities: list[str],
                     template: AbsenceTemplate | None = None, full: np.ndarray | None = None) -> pd.DataFrame:
    """Exact Shapley contributions (logit units), one column per modality; ``full``: the
    model's logit for X as it is (v(all)), when the caller has it already."""
    M = len(modalities)
    cache: dict[frozenset, np.ndarray] = {} if full is None else {frozenset(modalities): np.asarray(full, float)}

    def v(S: frozenset) -> np.ndarray:
        if S not in cache:
            cache[S] = np.asarray(logit_fn(hide(X, set(modalities) - S, template)), dtype=float)
        return cache[S]

    out = {}
    for m in modalities:
        others = [o for o in modalities if o != m]
        phi = np.zeros(len(X))
        for k in range(M):
            w = factorial(k) * factorial(M - k - 1) / factorial(M)
            for S in combinations(others, k):
                S = frozenset(S)
                phi += w * (v(S | {m}) - v(S))
        out[m] = phi
    return pd.DataFrame(out, index=X.index)
