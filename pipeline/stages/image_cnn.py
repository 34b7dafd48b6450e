"""Image features for LightGBM from a trained MONAI CNN (``imaging.encoder: cnn``).

``ImageCNNEncoder`` trains the project's image encoder (``fusion_net.ImageEncoder``, a
MONAI residual CNN) to predict the task label from the chosen image, on TRAIN-split
admissions only, by cross-fitting: with K folds, each fold's CNN is trained on the other
folds (early stopping on a subject-grouped inner split of those folds), so every train
admission gets an out-of-fold logit that no model trained or early-stopped on it (or on
another admission of its patient) produced.  Every other admission (valid, test, scoring)
gets the mean logit of the K CNNs.  The logit becomes the feature
``imaging__cnn_risk`` beside the intensity statistics (the fallback).  Weights are saved
in safetensors with their sha256 (checked on load); nothing is pickled.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator

from pipeline.artifacts import read_json, write_json
from pipeline.errors import DataError
from pipeline.stages.cohort import cross_fit_feature


class ImageCNNEncoder(BaseEstimator):
    def __init__(self, size: int = 64, folds: int = 3, max_epochs: int = 15, patience: int = 3, lr: float = 2e-3,
                 batch_size: int = 64, random_state: int = 0, n_threads: int = 2):
        self.size = size
        self.folds = folds
        self.max_epochs = max_epochs
        self.patience = patience
        self.lr = lr
        self.batch_size = batch_size
        self.random_state = random_state
        self.n_threads = n_threads

    def _net(self):
        from pipeline.models.fusion_net import ImageEncoder
        return ImageEncoder(1, self.size)

    def _logits(self, net, images: np.ndarray) -> np.ndarray:
        net.eval()
        out = []
        with torch.no_grad():
            for s in range(0, len(images), 256):
                out.append(net(torch.from_numpy(np.array(images[s:s + 256], np.float32))).reshape(-1).numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def _train_one(self, images, y, hold_images, hold_y, seed: int):
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        net = self._net()
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=1e-4)
        lossf = torch.nn.BCEWithLogitsLoss()
        best, best_state, bad = np.inf, None, 0
        yh = torch.from_numpy(hold_y.astype(np.float32))
        if len(hold_y) == 0:   # nothing to stop on: the full epoch budget
            best_state = None
        for _ in range(self.max_epochs):
            net.train()
            for idx in np.array_split(rng.permutation(len(y)), max(1, -(-len(y) // self.batch_size))):
                x = torch.from_numpy(np.asarray(images[np.sort(idx)], np.float32))
                x = torch.flip(x, dims=[-1]) if rng.random() < 0.5 else x   # left-right flips only
                opt.zero_grad()
                loss = lossf(net(x).reshape(-1), torch.from_numpy(y[np.sort(idx)].astype(np.float32)))
                loss.backward()
                opt.step()
            if len(hold_y) == 0:
                continue
            val = float(lossf(torch.from_numpy(self._logits(net, hold_images)), yh))
            if val < best - 1e-4:
                best, best_state, bad = val, {k: v.clone() for k, v in net.state_dict().items()}, 0
            else:
                bad += 1
                if bad >= self.patience:
                    break
        if best_state is not None:
            net.load_state_dict(best_state)
        return net.eval()

    def fit_oof(self, images: np.ndarray, y: np.ndarray, groups=None) -> np.ndarray:
        """Fit the K fold CNNs on ``images`` [n, 1, size, size] and labels ``y``; return
        the out-of-fold logit of every row.  Folds are grouped by ``groups`` (subject ids);
        each fold's CNN early-stops on a subject-grouped inner split of its own training
        rows, never on the rows it then scores."""
        from pipeline.models.folds import inner_split, n_folds, subject_folds
        y = np.asarray(y).astype(int)
        k = n_folds(y, groups, self.folds)
        if k < 2:
            raise DataError(f"too few train images of each class to cross-fit the image CNN "
                            f"({np.bincount(y, minlength=2).tolist()})",
                            field="imaging.encoder", hint="use imaging.encoder: stats on a cohort this small")
        torch.set_num_threads(self.n_threads)
        g = np.arange(len(y)) if groups is None else np.asarray(groups)
        oof = np.zeros(len(y), np.float32)
        self.nets_ = []
        for i, (fit_idx, out_idx) in enumerate(subject_folds(y, g, k, self.random_state)):
            inner, stop = inner_split(y[fit_idx], g[fit_idx], 0.2, self.random_state + i)
            fit_rows, stop_rows = fit_idx[inner], fit_idx[stop]
            net = self._train_one(images[fit_rows], y[fit_rows], images[stop_rows], y[stop_rows],
                                  self.random_state + i)
            oof[out_idx] = self._logits(net, images[out_idx])
            self.nets_.append(net)
        return oof

    def transform(self, images: np.ndarray) -> np.ndarray:
        if not getattr(self, "nets_", None):
            raise DataError("the image CNN encoder is not fitted", field="imaging.encoder")
        torch.set_num_threads(self.n_threads)
        return np.mean([self._logits(net, images) for net in self.nets_], axis=0)

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        hashes = []
        for i, net in enumerate(self.nets_):
            path = folder / f"fold{i}.safetensors"
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
            hashes.append(hashlib.sha256(path.read_bytes()).hexdigest())
        write_json({"kind": "ImageCNNEncoder", "params": self.get_params(), "sha256": hashes}, folder / "encoder.json")

    @classmethod
    def load(cls, folder: Path) -> "ImageCNNEncoder":
        from safetensors.torch import load_file
        folder = Path(folder)
        meta = read_json(folder / "encoder.json")
        enc = cls(**meta["params"])
        enc.nets_ = []
        for i, digest in enumerate(meta["sha256"]):
            path = folder / f"fold{i}.safetensors"
            if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                raise DataError("image CNN weights do not match their recorded hash (modified or corrupt)", file=path)
            net = enc._net()
            from pipeline.models.fusion_net import load_weights
            load_weights(net, load_file(str(path)), path)
            enc.nets_.append(net.eval())
        return enc


def cnn_feature(cohort, hadms: np.ndarray, images: np.ndarray, cfg, encoder: ImageCNNEncoder | None,
                out_dir: Path) -> tuple[np.ndarray, bool]:
    """``imaging__cnn_risk`` for the admissions ``hadms`` (rows of ``images``): fitted here
    on the train split (out-of-fold there) and saved to ``out_dir/encoder`` when
    ``encoder`` is None, else computed with the given fitted encoder."""
    if encoder is not None:
        return encoder.transform(images), False
    enc = ImageCNNEncoder(size=cfg.size, random_state=0)
    return cross_fit_feature(enc, images, hadms, cohort, Path(out_dir) / "encoder"), True
