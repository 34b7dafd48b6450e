"""Probability calibration fitted on the calibration rows (held-out train subjects that no model
fit, early stopping or penalty choice used; see jobs/train.model_rows), saved as JSON.

``isotonic`` needs enough positives to be stable; with fewer than
``MIN_POSITIVES_ISOTONIC`` validation positives the calibrator uses Platt
scaling instead and records that it did (``method_used``).
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

MIN_POSITIVES_ISOTONIC = 30


class Calibrator(BaseEstimator):
    def __init__(self, method: str = "isotonic"):
        self.method = method

    def fit(self, logits, y):
        logits, y = np.asarray(logits, float), np.asarray(y, int)
        self.method_used_ = self.method
        if self.method == "isotonic" and y.sum() < MIN_POSITIVES_ISOTONIC:
            self.method_used_ = "platt"
        if len(np.unique(y)) < 2:
            self.method_used_ = "identity"
        elif self.method_used_ == "isotonic":
            iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(logits, y)
            self.x_, self.y_ = iso.X_thresholds_.tolist(), iso.y_thresholds_.tolist()
        else:
            lr = LogisticRegression(C=1e4, max_iter=1000).fit(logits.reshape(-1, 1), y)
            self.a_, self.b_ = float(lr.coef_[0, 0]), float(lr.intercept_[0])
        return self

    def transform(self, logits) -> np.ndarray:
        logits = np.asarray(logits, float)
        if self.method_used_ == "identity":
            return 1 / (1 + np.exp(-logits))
        if self.method_used_ == "isotonic":
            return np.interp(logits, self.x_, self.y_)
        return 1 / (1 + np.exp(-(self.a_ * logits + self.b_)))

    def to_json(self) -> dict:
        d = {"method": self.method, "method_used": self.method_used_}
        if self.method_used_ == "isotonic":
            d.update(x=self.x_, y=self.y_)
        elif self.method_used_ == "platt":
            d.update(a=self.a_, b=self.b_)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Calibrator":
        c = cls(method=d["method"])
        c.method_used_ = d["method_used"]
        if c.method_used_ == "isotonic":
            c.x_, c.y_ = d["x"], d["y"]
        elif c.method_used_ == "platt":
            c.a_, c.b_ = d["a"], d["b"]
        return c
