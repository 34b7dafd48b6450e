"""Subject-grouped folds for every cross-fitting and inner split.

A patient's admissions share much (the same person, often the same notes and images), so
a fold model that saw one of them would score another in-sample.  Every out-of-fold value
in the project (notes text risk, image CNN, the linear base of gbm and the fused nets, the
late-fusion stacker's inputs) comes from ``subject_folds``; early stopping inside a fold
uses ``inner_split`` of that fold's training rows, never the rows it then scores.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold


def _groups(n: int, groups) -> np.ndarray:
    return np.arange(n) if groups is None else np.asarray(groups)


def n_folds(y, groups, k: int) -> int:
    """How many grouped folds ``y`` supports: at most ``k``, at most the number of subjects
    with a positive and with a negative row (each fold needs both classes to fit on)."""
    y, g = np.asarray(y).astype(int), _groups(len(y), None if groups is None else groups)
    pos = len(np.unique(g[y == 1]))
    neg = len(np.unique(g[y == 0]))
    return int(min(k, pos, neg))


def subject_folds(y, groups, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fit rows, out rows) of ``k`` folds stratified on y, no subject in two folds
    (``groups=None``: each row its own subject).  ``k`` below 2: no folds."""
    y = np.asarray(y).astype(int)
    if k < 2:
        return []
    splitter = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y, _groups(len(y), groups)))


def inner_split(y, groups, fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, early-stopping rows): about ``fraction`` of the subjects held out, both
    parts with both classes where the data allows."""
    y = np.asarray(y).astype(int)
    k = max(2, int(round(1 / fraction)))
    folds = subject_folds(y, groups, min(k, max(2, n_folds(y, groups, k))), seed)
    return folds[0] if folds else (np.arange(len(y)), np.arange(0))


def calibration_subjects(train: pd.DataFrame, fraction: float, seed: int = 0) -> np.ndarray:
    """A boolean per row of the train split: the rows of about ``fraction`` of its subjects
    (stratified on whether the subject has a positive), kept out of model fitting, early
    stopping and penalty choice so the calibrator is fitted on rows nothing else used."""
    if fraction <= 0 or len(train) == 0:
        return np.zeros(len(train), bool)
    subj = train.groupby("subject_id")["label"].max()
    rng = np.random.default_rng(seed + 7919)
    chosen = []
    for _, ids in subj.groupby(subj):
        ids = ids.index.to_numpy().copy()
        rng.shuffle(ids)
        chosen += ids[:int(round(len(ids) * fraction))].tolist()
    return train["subject_id"].isin(chosen).to_numpy()
