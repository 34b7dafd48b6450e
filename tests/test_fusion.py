import numpy as np
import pandas as pd
import pytest

from pipeline.errors import DataError
from pipeline.explain.modality import modality_shapley
from pipeline.models.fusion import FusionNetClassifier
from pipeline.models.fusion_net import FUSIONS


def _data(n=400, seed=0):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(2, n))
    has = rng.random(n) < 0.6
    y = (rng.random(n) < 1 / (1 + np.exp(-(-1 + a + 1.5 * np.where(has, b, 0))))).astype(int)
    X = pd.DataFrame({"hadm_id": np.arange(n) + 1000, "ehr__a": a, "ecg__b": np.where(has, b, np.nan),
                      "mask__ehr": 1, "mask__ecg": has.astype(int)})
    wave = (rng.normal(size=(n, 12, 1000)) * 0.1).astype(np.float32)
    wave[:, 1] += b[:, None]
    img = rng.random((n, 1, 16, 16)).astype(np.float32)
    return X, y, {"ecg": (X.hadm_id.to_numpy(), wave), "imaging": (X.hadm_id.to_numpy(), img)}


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("linear_base", [False, True])
def test_absent_modality_inputs_never_reach_the_output(fusion, linear_base):
    X, y, T = _data()
    m = FusionNetClassifier(fusion=fusion, max_epochs=3, ecg_fs=100, linear_base=linear_base).fit(X, y, tensors=T)
    absent = X[X.mask__ecg == 0].copy()
    p1 = m.decision_function(absent, T)
    absent["ecg__b"] = 123.0                                  # garbage in a hidden modality
    T2 = {"ecg": (T["ecg"][0], T["ecg"][1] * 50)}
    assert np.allclose(p1, m.decision_function(absent, T2), atol=1e-5)
    phi = modality_shapley(lambda Z: m.decision_function(Z, T), X, ["ehr", "ecg"])
    assert np.allclose(phi.loc[X.mask__ecg == 0, "ecg"], 0, atol=1e-5)


@pytest.mark.parametrize("members", [1, 3])
def test_save_load_round_trip_and_seeded(tmp_path, members):
    X, y, T = _data()
    a = FusionNetClassifier(max_epochs=4, ecg_fs=100, n_members=members).fit(
        X[:300], y[:300], eval_set=(X[300:], y[300:]), tensors=T)
    b = FusionNetClassifier(max_epochs=4, ecg_fs=100, n_members=members).fit(
        X[:300], y[:300], eval_set=(X[300:], y[300:]), tensors=T)
    assert np.allclose(a.decision_function(X, T), b.decision_function(X, T), atol=1e-6)
    assert {h["member"] for h in a.history_} == set(range(members))
    a.save(tmp_path / "f")
    c = FusionNetClassifier.load(tmp_path / "f")
    assert np.allclose(a.decision_function(X, T), c.decision_function(X, T), atol=1e-6)
    raw = (tmp_path / "f" / "weights.safetensors").read_bytes()
    (tmp_path / "f" / "weights.safetensors").write_bytes(raw[:-4] + b"\0\0\0\0")
    with pytest.raises(DataError, match="hash"):
        FusionNetClassifier.load(tmp_path / "f")


def test_learns_from_the_waveform():
    from sklearn.metrics import roc_auc_score
    X, y, T = _data(n=1200)
    X2 = X.assign(ecg__b=np.where(X.mask__ecg == 1, 0.0, np.nan))   # signal only in the waveform
    m = FusionNetClassifier(fusion="hybrid", max_epochs=15, ecg_fs=100).fit(
        X2[:900], y[:900], eval_set=(X2[900:1050], y[900:1050]), tensors=T)
    with_wave = roc_auc_score(y[1050:], m.decision_function(X2[1050:], T))
    no_wave = FusionNetClassifier(fusion="hybrid", max_epochs=15, use_waveforms=False).fit(
        X2[:900], y[:900], eval_set=(X2[900:1050], y[900:1050]))
    assert with_wave > roc_auc_score(y[1050:], no_wave.decision_function(X2[1050:])) + 0.03


def test_gradient_shap_for_the_fused_net_finds_the_signal():
    from pipeline.explain.deep import fusion_shap
    X, y, T = _data(n=1000)
    X.insert(2, "ehr__noise", np.random.default_rng(1).normal(size=len(X)))   # carries no risk
    m = FusionNetClassifier(fusion="early", max_epochs=10, ecg_fs=100).fit(X[:800], y[:800], tensors=T)
    exp = fusion_shap(m, X[800:], X[:100], T)
    assert exp.values.shape == (200, len(exp.feature_names))
    assert "ecg__waveform" in exp.feature_names and "mask__ecg" in exp.feature_names
    imp = exp.feature_importance()
    # The risk is a + 1.5 b where the ECG is present: the absent ECG's effect is shared between
    # its mask and its inputs (a product), so the mask may rank high; noise must not.
    assert "ehr__a" in imp.index[:2]
    assert imp["ehr__a"] > 3 * imp["ehr__noise"]
    assert imp["ecg__b"] + imp["ecg__waveform"] > 2 * imp["ehr__noise"]
    assert imp["mask__ehr"] == 0                                      # constant: nothing to explain


def test_a_net_on_a_linear_base_starts_at_it_and_explains_and_round_trips(tmp_path):
    X, y, T = _data(500)
    tr, va = slice(0, 350), slice(350, 500)
    m = FusionNetClassifier(fusion="hybrid", max_epochs=0, ecg_fs=100, linear_base=True).fit(
        X[tr], y[tr], eval_set=(X[va], y[va]), tensors=T)
    assert np.allclose(m.decision_function(X, T), m.base_.decision_function(X))   # no epoch: the base alone
    m = FusionNetClassifier(fusion="hybrid", max_epochs=6, ecg_fs=100, linear_base=True).fit(
        X[tr], y[tr], eval_set=(X[va], y[va]), tensors=T).with_tensors(T)
    logit = m.decision_function(X[va])
    exp = m.explain(X[va], X[tr])
    # GradientExplainer is approximate for the net; the base's share is exact and included
    assert np.corrcoef(exp.values.sum(axis=1) + exp.base_values, logit)[0, 1] > 0.95
    m.save(tmp_path / "net")
    from pipeline.models import registry
    again = registry.load(tmp_path / "net", "fusion_hybrid").with_tensors(T)
    assert again.base_ is not None and np.allclose(again.decision_function(X[va]), logit, atol=1e-5)


def test_a_deep_ensemble_averages_its_members_and_explains():
    """n_members nets from seeds random_state, random_state + 1, ...: the ensemble's logit is
    the mean of theirs (each is the single net that seed trains), and it explains like one net."""
    from pipeline.explain.deep import fusion_shap
    X, y, T = _data()
    kw = dict(fusion="late", max_epochs=3, ecg_fs=100)
    ens = FusionNetClassifier(n_members=2, random_state=5, **kw).fit(X[:300], y[:300], eval_set=(X[300:], y[300:]),
                                                                      tensors=T)
    singles = [FusionNetClassifier(random_state=s, **kw).fit(X[:300], y[:300], eval_set=(X[300:], y[300:]),
                                                             tensors=T).decision_function(X, T) for s in (5, 6)]
    assert np.allclose(ens.decision_function(X, T), np.mean(singles, axis=0), atol=1e-5)
    assert not np.allclose(singles[0], singles[1])
    exp = fusion_shap(ens, X[300:320], X[:50], T)
    assert np.isfinite(exp.values).all() and exp.values.shape[0] == 20
    with pytest.raises(DataError, match="n_members"):
        FusionNetClassifier(n_members=0).fit(X, y, tensors=T)


def test_weights_of_another_architecture_are_refused_with_the_file(tmp_path):
    """A model saved before a layer change (here: its image encoder's head renamed) is refused
    with a DataError naming the weights file, not a bare torch error."""
    import hashlib
    import json

    from safetensors.torch import load_file, save_file
    X, y, T = _data()
    X = X.assign(imaging__x=X["ehr__a"], mask__imaging=1)
    m = FusionNetClassifier(max_epochs=1, ecg_fs=100, n_members=1).fit(X[:300], y[:300], tensors=T)
    m.save(tmp_path / "f")
    w = tmp_path / "f" / "weights.safetensors"
    old = {k.replace("image.proj.", "image.final.1."): v for k, v in load_file(str(w)).items()}
    save_file(old, str(w))
    meta = json.loads((tmp_path / "f" / "model.json").read_text())
    meta["weights_sha256"] = hashlib.sha256(w.read_bytes()).hexdigest()
    (tmp_path / "f" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="earlier version|do not fit") as e:
        FusionNetClassifier.load(tmp_path / "f")
    assert "weights.safetensors" in str(e.value)


def test_fused_net_shap_is_labelled_approximate_with_its_additivity_error_and_batch_free():
    from pipeline.explain.deep import fusion_shap
    X, y, T = _data(n=500)
    m = FusionNetClassifier(fusion="hybrid", max_epochs=4, ecg_fs=100).fit(X[:400], y[:400], tensors=T)
    exp = fusion_shap(m, X[400:], X[:100], T)
    assert exp.method.startswith("expected_gradients") and "approximate" in exp.method
    logit = m.decision_function(X[400:], T)
    # the recorded error is exactly what the values miss of the output
    assert np.allclose(exp.values.sum(axis=1) + exp.base_values + exp.additivity_error, logit, atol=1e-4)
    spread = np.abs(logit - exp.base_values).mean()
    assert np.abs(exp.additivity_error).mean() < 0.2 * spread
    # a patient's values do not depend on the other rows of its batch
    one = fusion_shap(m, X[405:406], X[:100], T)
    assert np.allclose(one.values[0], exp.values[5], atol=1e-5)


@pytest.mark.parametrize("members", [1, 2])
def test_fused_net_shap_in_first_layer_space_equals_expected_gradients_on_the_features(members):
    """The path runs in the first layers' pre-activations (pipeline.explain.deep._lift): the
    values must be those of expected gradients taken on the features themselves (same
    baselines, same midpoints), for a wide net and for an ensemble, waveform included."""
    import torch

    from pipeline.explain.deep import _Flat, _inputs, fusion_shap
    X, y, T = _data(n=300)
    X.insert(2, "ehr__c", np.random.default_rng(2).normal(size=len(X)))
    m = FusionNetClassifier(fusion="hybrid", max_epochs=2, ecg_fs=100, use_images=False, n_members=members).fit(
        X[:200], y[:200], tensors=T)
    bg, rows = X[:50], X[200:230]
    exp = fusion_shap(m, rows, bg, T, n_baselines=3, steps=2)
    xs, wave, image = _inputs(m, rows, T)
    pick = np.sort(np.random.default_rng(0).choice(len(bg), 3, replace=False))
    bs, _, _ = _inputs(m, bg.iloc[pick], T)
    flat = _Flat(m.net_, m.modalities_, wave, image).eval()
    naive = [torch.zeros_like(x) for x in xs]
    for k in range(3):
        for a in (0.25, 0.75):
            pts = [(b[k:k + 1] + a * (x - b[k:k + 1])).requires_grad_(True) for x, b in zip(xs, bs)]
            grads = torch.autograd.grad(flat(*pts).sum(), pts)
            for j, (g, x, b) in enumerate(zip(grads, xs, bs)):
                naive[j] += g * (x - b[k:k + 1]) / 6
    want = np.concatenate([naive[i].numpy() for i in range(len(m.modalities_) + 1)]
                          + [naive[-1].numpy().reshape(len(rows), -1).sum(1, keepdims=True)], axis=1)
    assert exp.feature_names[-1] == "ecg__waveform"
    assert np.allclose(exp.values, want, atol=1e-5) and np.abs(want).max() > 1e-3


def test_scoring_and_explaining_use_one_torch_thread_and_restore_the_count(monkeypatch):
    import torch

    from pipeline.explain import deep
    from pipeline.models.fusion import INFERENCE_THREADS
    X, y, T = _data(n=60)
    m = FusionNetClassifier(max_epochs=0, ecg_fs=100).fit(X, y, tensors=T).with_tensors(T)
    torch.set_num_threads(2)
    seen, real = [], deep.fusion_shap
    monkeypatch.setattr(deep, "fusion_shap", lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k))
    m.explain(X[:5], X)
    assert INFERENCE_THREADS == 1 and seen == [1] and torch.get_num_threads() == 2
