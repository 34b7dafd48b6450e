"""Every cross-fitting is grouped by subject; early stopping never uses the rows scored."""
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from pipeline.models.folds import inner_split, subject_folds
from pipeline.models.gbm import LateFusionGBM
from pipeline.models.linear import cross_fitted
from pipeline.stages.featurize_notes import TextRiskModel
from pipeline.stages.image_cnn import ImageCNNEncoder


def _memorisable(n_subjects=60, per=3, seed=0):
    """Each subject has ``per`` identical admissions and a random label: only memorising
    the subject predicts it, so an honest out-of-fold AUROC is near 0.5."""
    rng = np.random.default_rng(seed)
    y_s = (np.arange(n_subjects) % 2 == 0).astype(int)
    rng.shuffle(y_s)
    subj = np.repeat(np.arange(n_subjects), per)
    return subj, np.repeat(y_s, per)


def test_subject_folds_never_split_a_subject_and_inner_split_is_disjoint():
    subj, y = _memorisable()
    for fit_idx, out_idx in subject_folds(y, subj, 5, seed=1):
        assert not set(subj[fit_idx]) & set(subj[out_idx])
        inner, stop = inner_split(y[fit_idx], subj[fit_idx], 0.2, seed=2)
        assert len(stop) and not set(subj[fit_idx][inner]) & set(subj[fit_idx][stop])


def test_text_risk_folds_are_grouped_by_subject():
    subj, y = _memorisable()
    docs = [f"patient token{s}x admitted" for s in subj]   # a subject-unique word
    oof = TextRiskModel(folds=5, min_df=1).fit_oof(docs, y, subj)
    assert roc_auc_score(y, oof) < 0.7    # ungrouped folds memorise the subject: AUROC ~1


def test_linear_base_and_late_fusion_folds_are_grouped_by_subject():
    subj, y = _memorisable()
    X = pd.DataFrame(np.eye(subj.max() + 1)[subj], columns=[f"ehr__s{i}" for i in range(subj.max() + 1)])
    X["mask__ehr"] = 1
    _, oof = cross_fitted(X, y, folds=5, groups=subj)
    assert roc_auc_score(y, oof) < 0.7
    _, leaky = cross_fitted(X, y, folds=5)
    assert roc_auc_score(y, leaky) > 0.9   # the same folds by admission memorise the subject
    late = LateFusionGBM(head="linear").fit(X, y, groups=subj)
    assert abs(late.stacker_.coef_[0][0]) < 1.0   # weight on the out-of-fold ehr logit
    assert LateFusionGBM(head="linear").fit(X, y).stacker_.coef_[0][0] > 3   # ungrouped: trusts the leak


def test_image_cnn_early_stops_on_rows_other_than_those_it_scores(monkeypatch):
    subj, y = _memorisable(n_subjects=30, per=2)
    x = np.arange(len(y), dtype=np.float32)[:, None, None, None] * np.ones((1, 1, 8, 8), np.float32)
    seen = []
    enc = ImageCNNEncoder(size=8, folds=3)

    def record(images, yy, hold_images, hold_y, seed):
        seen.append((images[:, 0, 0, 0].astype(int), hold_images[:, 0, 0, 0].astype(int)))
        return enc._net()
    monkeypatch.setattr(enc, "_train_one", record)
    monkeypatch.setattr(enc, "_logits", lambda net, images: np.zeros(len(images), np.float32))
    enc.fit_oof(x, y, subj)
    scored = set()
    for fit_rows, stop_rows in seen:
        out = set(range(len(y))) - set(fit_rows) - set(stop_rows)
        scored |= out
        assert len(stop_rows) and not set(subj[stop_rows]) & set(subj[list(out)])
        assert not set(subj[fit_rows]) & set(subj[list(out)])
    assert scored == set(range(len(y)))


def test_calibration_rows_are_whole_train_subjects_held_out_from_fitting():
    from pipeline.config import RunConfig
    from pipeline.jobs.train import model_rows
    rng = np.random.default_rng(0)
    subj = np.repeat(np.arange(300), 2)
    t = pd.DataFrame({"subject_id": subj, "label": (rng.random(600) < 0.2).astype(int),
                      "split": np.where(subj < 200, "train", np.where(subj < 250, "valid", "test"))})
    fit, valid, cal = model_rows(t, RunConfig.model_validate({"model": {"calibration_fraction": 0.2}}))
    assert not set(fit.subject_id) & set(cal.subject_id) and set(cal.subject_id) <= set(range(200))
    assert len(fit) + len(cal) == 400 and abs(cal.subject_id.nunique() - 40) <= 1
    assert cal.label.sum() > 0 and (valid.split == "valid").all()
    fit0, _, cal0 = model_rows(t, RunConfig.model_validate({"model": {"calibration_fraction": 0.0}}))
    assert cal0.empty and len(fit0) == 400
