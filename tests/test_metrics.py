import numpy as np
import pandas as pd

from pipeline.models.metrics import (by_group, calibration_intercept_slope, cluster_draws, evaluate,
                                     paired_difference, reliability)


def _cohort(n_subjects=150, per_subject=4, seed=0):
    """Each subject's admissions share its outcome and risk: strongly clustered rows."""
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n_subjects)
    y_s = (rng.random(n_subjects) < 1 / (1 + np.exp(-(risk - 0.5)))).astype(int)
    subj = np.repeat(np.arange(n_subjects), per_subject)
    p = 1 / (1 + np.exp(-(np.repeat(risk, per_subject) + rng.normal(0, 0.1, len(subj)) - 0.5)))
    return np.repeat(y_s, per_subject), p, subj


def test_cluster_draws_take_every_admission_of_a_drawn_subject():
    subj = np.array([7, 7, 7, 3, 9, 9])
    for idx in cluster_draws(len(subj), subj, n_boot=30, seed=1):
        drawn = subj[idx]
        for s in np.unique(drawn):
            # a drawn subject appears a multiple of its admission count
            assert (drawn == s).sum() % (subj == s).sum() == 0


def test_clustered_ci_is_wider_than_the_admission_bootstrap_on_clustered_rows():
    y, p, subj = _cohort()
    by_row = evaluate(y, p, n_boot=300, curves=False)
    by_subject = evaluate(y, p, clusters=subj, n_boot=300, curves=False)
    w_row = np.diff(by_row["auroc_ci"])[0]
    w_subj = np.diff(by_subject["auroc_ci"])[0]
    assert by_subject["bootstrap_unit"] == "subject"
    assert w_subj > 1.5 * w_row   # 4 identical admissions per subject: about 2x wider


def test_paired_difference_of_a_model_with_itself_is_zero_and_not_significant():
    y, p, subj = _cohort()
    d = paired_difference(y, p, p, subj, n_boot=100)
    assert d["dauroc"] == 0 and d["dauroc_ci"] == [0.0, 0.0] and d["significant"] is False
    noise = np.random.default_rng(3).random(len(y))
    worse = paired_difference(y, noise, p, subj, n_boot=100)
    assert worse["dauroc"] < 0 and worse["dauroc_ci"][1] < 0 and worse["significant"] is True


def test_calibration_intercept_and_slope():
    rng = np.random.default_rng(0)
    lp = rng.normal(-1, 1.2, 20000)
    y = (rng.random(len(lp)) < 1 / (1 + np.exp(-lp))).astype(int)
    a, b = calibration_intercept_slope(y, 1 / (1 + np.exp(-lp)))
    assert abs(a) < 0.05 and abs(b - 1) < 0.05
    a2, b2 = calibration_intercept_slope(y, 1 / (1 + np.exp(-2 * lp)))   # too extreme: slope 1/2
    assert abs(b2 - 0.5) < 0.05
    a3, _ = calibration_intercept_slope(y, 1 / (1 + np.exp(-(lp - 1))))  # too low: intercept +1
    assert abs(a3 - 1) < 0.1
    r = evaluate(y[:2000], 1 / (1 + np.exp(-lp[:2000])), n_boot=50, curves=False)
    assert r["cal_slope_ci"][0] < 1 < r["cal_slope_ci"][1]
    assert calibration_intercept_slope(np.zeros(5), np.full(5, 0.2)) == (None, None)


def test_reliability_bins_have_counts_and_clustered_cis():
    y, p, subj = _cohort()
    r = reliability(y, p, subj, bins=5, n_boot=50)
    assert sum(r["n"]) == len(y) and len(r["prob_pred"]) == 5
    assert all(lo <= t <= hi for lo, t, hi in zip(r["lo"], r["prob_true"], r["hi"]))


def test_subgroup_metrics_have_cis():
    y, p, subj = _cohort()
    sex = pd.Series(np.where(subj % 2 == 0, "F", "M"))
    rows = by_group(y, p, sex, clusters=subj, n_boot=50)
    assert [r["group"] for r in rows] == ["F", "M"]
    for r in rows:
        lo, hi = r["auroc_ci"]
        assert lo <= r["auroc"] <= hi
