"""SHAP for the fused net: shap.GradientExplainer over the net's inputs.

The net's inputs are the standardised tabular features of each modality, the
modality masks, and (when used) the ECG waveform and the image.  Tabular SHAP
values map one-to-one onto the model's features; a waveform's or an image's
values are summed into one pseudo-feature (``ecg__waveform``, ``imaging__image``).
The result is the same ``Explanation`` object the GBM path produces.  Each patient's
sampling is seeded by its hadm_id, so its reasons are the same whatever shard it is in.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline.explain.explanation import Explanation, import_shap


class _Flat(nn.Module):
    """The fused net with positional tensor inputs (what GradientExplainer needs)."""

    def __init__(self, net, modalities: list[str], wave: bool, image: bool):
        super().__init__()
        self.net, self.modalities, self.wave, self.image = net, modalities, wave, image

    def forward(self, *xs):
        k = len(self.modalities)
        batch = {"tab": dict(zip(self.modalities, xs[:k])), "mask": xs[k]}
        i = k + 1
        if self.wave:
            batch["wave"] = xs[i]
            i += 1
        if self.image:
            batch["image"] = xs[i]
        return self.net(batch).unsqueeze(1)


def _inputs(model, X: pd.DataFrame, tensors) -> tuple[list[torch.Tensor], bool, bool]:
    A = model._arrays(X)
    waves = model._tensor_rows(tensors, "ecg", A["hadm_id"]) if model.arch_["ecg_wave"] else None
    images = model._tensor_rows(tensors, "imaging", A["hadm_id"]) if model.arch_["image"] else None
    b = model._batch(A, np.arange(len(X)), waves, images, False, None)
    xs = [b["tab"][m] for m in model.modalities_] + [b["mask"]]
    if "wave" in b:
        xs.append(b["wave"])
    if "image" in b:
        xs.append(b["image"])
    return xs, "wave" in b, "image" in b


def fusion_shap(model, X: pd.DataFrame, background: pd.DataFrame, tensors=None, seed: int = 0,
                nsamples: int = 100) -> Explanation:
    shap = import_shap()
    tensors = tensors if tensors is not None else model.tensors_
    torch.manual_seed(seed)
    xs, wave, image = _inputs(model, X, tensors)
    bg, _, _ = _inputs(model, background, tensors)
    flat = _Flat(model.net_, model.modalities_, wave, image).eval()
    explainer = shap.GradientExplainer(flat, bg)
    # One call per patient, seeded by its id: its explanation does not depend on which
    # other patients share its batch or shard.
    ids = X["hadm_id"].to_numpy() if "hadm_id" in X.columns else np.arange(len(X))
    rows = [explainer.shap_values([x[i:i + 1] for x in xs], nsamples=nsamples,
                                  rseed=int((seed * 1_000_003 + int(ids[i])) % 2**31)) for i in range(len(X))]
    vals = [np.concatenate([np.asarray(r[j]).reshape(r[j].shape[:len(x.shape)]) for r in rows]) if len(rows)
            else np.zeros(tuple(x.shape)) for j, x in enumerate(xs)]
    names, cols, data = [], [], []
    k = len(model.modalities_)
    for i, m in enumerate(model.modalities_):
        names += model.columns_[m]
        cols.append(vals[i])
        data.append(X[model.columns_[m]].to_numpy(dtype=float))
    names += [f"mask__{m}" for m in model.modalities_]
    cols.append(vals[k])
    data.append(X[[f"mask__{m}" for m in model.modalities_]].to_numpy(dtype=float))
    j = k + 1
    for flag, name in ((wave, "ecg__waveform"), (image, "imaging__image")):
        if flag:
            names.append(name)
            cols.append(vals[j].reshape(len(X), -1).sum(axis=1, keepdims=True))
            data.append(np.full((len(X), 1), np.nan))
            j += 1
    with torch.no_grad():
        base = np.full(len(X), float(flat(*bg).mean()))
    values = np.concatenate(cols, axis=1)
    if getattr(model, "base_", None) is not None:   # the linear base: its exact SHAP values add
        lin_vals, lin_base = model.base_.shap_values(X)
        at = {n: j for j, n in enumerate(names)}
        for k, f in enumerate(model.base_.feature_names_in_):
            values[:, at[f]] += lin_vals[:, k]
        base = base + lin_base
    return Explanation(values=values, base_values=base,
                       data=np.concatenate(data, axis=1), feature_names=names,
                       hadm_id=X["hadm_id"].to_numpy() if "hadm_id" in X.columns else np.arange(len(X)))
