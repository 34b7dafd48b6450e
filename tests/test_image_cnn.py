"""The image CNN encoder (imaging.encoder: cnn): cross-fitted, saved without pickle, reused when scoring."""
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.errors import DataError
from pipeline.stages.image_cnn import ImageCNNEncoder


def _images(n=240, size=32, seed=0):
    """Label 1 images carry a bright blob in the lower half (where the base of a lung is)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    x = rng.normal(0.3, 0.1, (n, 1, size, size)).astype(np.float32)
    for i in np.flatnonzero(y):
        r, c = rng.integers(size // 2, size - 8), rng.integers(0, size - 8)
        x[i, 0, r:r + 8, c:c + 8] += 0.6
    return x, y


def test_out_of_fold_logits_learn_the_image_signal_and_round_trip(tmp_path):
    x, y = _images()
    enc = ImageCNNEncoder(size=32, folds=3, max_epochs=8)
    oof = enc.fit_oof(x, y)
    assert len(enc.nets_) == 3 and oof.shape == (len(y),)
    assert roc_auc_score(y, oof) > 0.8              # out of fold: no CNN scored an image it was trained on
    xt, yt = _images(seed=1)
    assert roc_auc_score(yt, enc.transform(xt)) > 0.8
    enc.save(tmp_path / "enc")
    back = ImageCNNEncoder.load(tmp_path / "enc")
    assert np.allclose(back.transform(xt), enc.transform(xt), atol=1e-6)
    w = tmp_path / "enc" / "fold1.safetensors"
    w.write_bytes(w.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(DataError, match="hash"):
        ImageCNNEncoder.load(tmp_path / "enc")


def test_too_few_of_a_class_is_a_clear_error():
    x, _ = _images(n=20)
    with pytest.raises(DataError, match="too few train images"):
        ImageCNNEncoder(size=32).fit_oof(x, np.r_[np.ones(1), np.zeros(19)].astype(int))


def test_train_with_cnn_image_features_then_score_in_a_new_job(synth_root, tmp_path):
    from pipeline.config import RunConfig
    from pipeline.jobs.score import score
    from pipeline.jobs.train import train
    cfg = RunConfig.model_validate({"imaging": {"encoder": "cnn"}, "model": {
        "gbm_estimators": 60, "fusion_models": ["gbm_early"], "single_modality_baselines": False}})
    train(synth_root, tmp_path / "run", cfg, report=False)
    feats = pd.read_parquet(tmp_path / "run" / "stages" / "features_imaging" / "features.parquet")
    assert feats["imaging__cnn_risk"].notna().all() and feats["imaging__cnn_risk"].std() > 0
    assert (tmp_path / "run" / "model" / "imaging_encoder" / "encoder.json").exists()
    t = pd.read_parquet(tmp_path / "run" / "test_scores.parquet")
    s = score(tmp_path / "run", synth_root, tmp_path / "s.parquet").set_index("hadm_id").loc[t.hadm_id]
    assert np.allclose(s["risk"].to_numpy(), t["risk"].to_numpy(), atol=1e-6)
    # the scoring job used the saved CNNs (fitted nothing): its test rows' feature equals training's
    sf = pd.read_parquet(tmp_path / ".s_work" / "stages" / "features_imaging" / "features.parquet").set_index("hadm_id")
    tf = feats.set_index("hadm_id")
    common = sorted(set(t.hadm_id) & set(sf.index) & set(tf.index))
    assert common and np.allclose(sf.loc[common, "imaging__cnn_risk"], tf.loc[common, "imaging__cnn_risk"], atol=1e-5)
    assert not (tmp_path / ".s_work" / "stages" / "features_imaging" / "encoder").exists()
