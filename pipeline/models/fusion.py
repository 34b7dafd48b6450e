"""``FusionNetClassifier``: the fused net behind a scikit-learn style estimator.

fit(X, y, eval_set=..., tensors=...) / decision_function / predict_proba / save / load.
X is the aligned table (modality features and ``mask__<m>`` columns); ``tensors``
optionally maps 'ecg' and 'imaging' to (hadm_ids, array) for the raw waveforms and
images, read lazily per batch.  Tabular inputs are centred on train medians (a missing
value becomes 0), scaled by the standard deviation of the median-filled train values (as
the linear model scales them) and clipped to +-10; the modality mask decides whether a
modality is seen at all.  Modality dropout hides present modalities at random during
training; early stopping on validation loss (patience 3 epochs: on the 5k benchmark every
net kept the same best epoch as with 5, in 25-30 % less time); seeded.  With
``n_members`` > 1 the net is a deep ensemble: that many nets trained from seeds
``random_state``, ``random_state + 1``, ... (each early-stopped on its own), their logits
averaged.  With ``linear_base`` the net learns a residual over a cross-fitted penalised
logistic model's logit (pipeline.models.linear; out of fold for the training rows), added
to its output.  Weights are saved in safetensors, everything else in JSON with the
weights' sha256 (checked on load).
"""
from __future__ import annotations

import hashlib
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, ClassifierMixin

from pipeline.artifacts import read_json, write_json
from pipeline.errors import DataError
from pipeline.models import require_features, require_two_classes
from pipeline.models.fusion_net import FusionEnsemble, FusionNet, load_weights
from pipeline.progress import track
from pipeline.stages.align import mask_col, modality_of

WAVE_FS = 100  # the CNN sees ECGs decimated to 100 Hz
# Scoring and explaining run the net on small matrices (a few dozen columns once the first
# layer is applied), where a second OpenMP thread mostly synchronises: on the shared 2-core
# machine scoring with explanations took 2.2-3.6x the CPU with 2 threads and was slower in wall
# time (10,000 patients: 1,592/s against 4,897/s; benchmarks/score.py --fused-threads 1,2).  One thread also leaves the other core to a second
# scoring worker.
INFERENCE_THREADS = 1


@contextmanager
def torch_threads(n: int):
    """torch's intra-op thread count set to ``n`` inside the block, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def epochs_per_net(history: list[dict]) -> list[int]:
    """Epochs each net of a fused model trained, from its ``history_`` (one entry per epoch)."""
    return pd.Series([h.get("member", 0) for h in history], dtype=int).value_counts().sort_index().tolist()


class FusionNetClassifier(ClassifierMixin, BaseEstimator):
    def __init__(self, fusion="attention", hidden=64, dropout=0.1, modality_dropout=0.15, lr=2e-3,
                 weight_decay=1e-4, batch_size=128, max_epochs=40, patience=3, use_waveforms=True,
                 use_images=True, image_size=64, ecg_fs=500, wide=True, linear_base=False, n_members=1,
                 random_state=0, n_threads=2):
        self.fusion = fusion
        self.n_members = n_members
        self.wide = wide
        self.linear_base = linear_base
        self.hidden = hidden
        self.dropout = dropout
        self.modality_dropout = modality_dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.use_waveforms = use_waveforms
        self.use_images = use_images
        self.image_size = image_size
        self.ecg_fs = ecg_fs
        self.random_state = random_state
        self.n_threads = n_threads

    @classmethod
    def from_config(cls, fusion: str, cfg) -> "FusionNetClassifier":
        """The net of fusion type ``fusion`` ('attention', ...) with the run configuration's settings."""
        return cls(fusion=fusion, random_state=cfg.model.seed, image_size=cfg.imaging.size,
                   ecg_fs=cfg.ecg.fs, linear_base=cfg.model.fusion_linear_base, n_members=cfg.model.fusion_members)

    # ------------------------------------------------------------------ data
    def _setup(self, X: pd.DataFrame):
        self.feature_names_in_ = np.asarray(list(X.columns), dtype=object)
        self.modalities_ = [m for m in ("ehr", "ecg", "notes", "imaging") if mask_col(m) in X.columns
                            and any(modality_of(c) == m and not c.startswith("mask__") for c in X.columns)]
        self.columns_ = {m: [c for c in X.columns if modality_of(c) == m and not c.startswith("mask__")]
                         for m in self.modalities_}
        self.center_, self.scale_ = {}, {}
        for m, cols in self.columns_.items():
            v = X[cols].to_numpy(dtype=np.float64)
            v = np.where(np.isfinite(v), v, np.nan)
            with warnings.catch_warnings():  # a column never observed in train: centre 0, scale 1
                warnings.filterwarnings("ignore", message="All-NaN slice encountered", category=RuntimeWarning)
                med = np.nan_to_num(np.nanmedian(v, axis=0)) if len(v) else np.zeros(len(cols))
            sd = np.where(np.isnan(v), med, v).std(axis=0) if len(v) else np.ones(len(cols))
            self.center_[m] = med.tolist()
            self.scale_[m] = np.where(np.isfinite(sd) & (sd > 1e-12), sd, 1.0).tolist()

    def _arrays(self, X: pd.DataFrame) -> dict:
        require_features(self.feature_names_in_, X)
        tab, masks = {}, []
        for m in self.modalities_:
            v = X[self.columns_[m]].to_numpy(dtype=np.float64)
            v = (v - np.asarray(self.center_[m])) / np.asarray(self.scale_[m])
            v = np.clip(np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0), -10, 10)
            tab[m] = v.astype(np.float32)
            masks.append(X[mask_col(m)].to_numpy(dtype=np.float32))
        return {"tab": tab, "mask": np.stack(masks, axis=1), "hadm_id": X["hadm_id"].to_numpy()
                if "hadm_id" in X.columns else None}

    def _tensor_rows(self, tensors: dict | None, key: str, hadm: np.ndarray | None):
        """(array, row of each hadm in it or NaN, decimation factor) for lazy gathering."""
        if not tensors or key not in tensors or hadm is None:
            return None
        ids, arr = tensors[key]
        pos = pd.Series(np.arange(len(ids)), index=np.asarray(ids))
        factor = max(1, self.ecg_fs // WAVE_FS) if key == "ecg" else 1
        return arr, pos.reindex(hadm).to_numpy(), factor

    def _gather(self, src, idx: np.ndarray, key: str) -> np.ndarray:
        """Rows ``idx`` of a lazy source, decimated (waves), zeros where absent."""
        arr, rows, factor = src
        r = rows[idx]
        ok = ~np.isnan(r)
        if key == "wave":
            T = arr.shape[-1] // factor
            out = np.zeros((len(idx), arr.shape[1], T), np.float32)
        else:
            out = np.zeros((len(idx), 1) + tuple(arr.shape[-2:]), np.float32)
        if ok.any():
            rr = r[ok].astype(int)
            srt = np.sort(rr)
            w = np.asarray(arr[srt], dtype=np.float32)[np.searchsorted(srt, rr)]  # sorted reads from a memmap
            if key == "wave":
                w = w[..., :T * factor].reshape(len(rr), arr.shape[1], T, factor).mean(-1)
            out[ok] = w[:, :out.shape[1]]
        return out

    def _materialize(self, src, n: int, key: str, chunk: int = 1024):
        """Gather and decimate all n rows once (training reuses them every epoch)."""
        if src is None:
            return None
        parts = [self._gather(src, np.arange(s, min(n, s + chunk)), key) for s in range(0, n, chunk)]
        return np.concatenate(parts), np.arange(n, dtype=float), 1

    def _batch(self, A: dict, idx: np.ndarray, waves, images, train: bool, rng) -> dict:
        mask = A["mask"][idx].copy()
        if train and self.modality_dropout > 0:
            drop = rng.random(mask.shape) < self.modality_dropout
            keep_one = (mask * ~drop).sum(1) == 0
            drop[keep_one] = False
            mask = mask * ~drop
        b = {"tab": {m: torch.from_numpy(A["tab"][m][idx]) for m in self.modalities_},
             "mask": torch.from_numpy(mask)}
        if waves is not None:
            b["wave"] = torch.from_numpy(self._gather(waves, idx, "wave"))
        if images is not None:
            b["image"] = torch.from_numpy(self._gather(images, idx, "image"))
        return b

    # ------------------------------------------------------------------ fit / predict
    def fit(self, X: pd.DataFrame, y, eval_set=None, tensors: dict | None = None, groups=None):
        started = time.perf_counter()
        y = require_two_classes(y).astype(np.float32)
        if int(self.n_members) < 1:
            raise DataError(f"n_members must be at least 1, got {self.n_members}", field="model.fusion_members")
        torch.set_num_threads(self.n_threads)
        self._setup(X)
        A = self._arrays(X)
        waves = (self._tensor_rows(tensors, "ecg", A["hadm_id"])
                 if self.use_waveforms and "ecg" in self.modalities_ else None)
        images = (self._tensor_rows(tensors, "imaging", A["hadm_id"])
                  if self.use_images and "imaging" in self.modalities_ else None)
        self.arch_ = {"dims": {m: len(self.columns_[m]) for m in self.modalities_}, "fusion": self.fusion,
                      "hidden": self.hidden, "dropout": self.dropout, "ecg_wave": waves is not None,
                      "image": images is not None,
                      "image_size": int(images[0].shape[-1]) if images is not None else self.image_size,
                      "wide": bool(self.wide)}
        feats = [c for c in X.columns if c != "hadm_id"]
        self.base_, offset, valid_offset = None, np.zeros(len(y), np.float32), None
        if self.linear_base:
            from pipeline.models.linear import cross_fitted
            ev = (eval_set[0][feats], np.asarray(eval_set[1])) if eval_set is not None else None
            self.base_, oof = cross_fitted(X[feats], y, ev, random_state=self.random_state, groups=groups)
            offset = oof.astype(np.float32)
            if eval_set is not None:
                valid_offset = self.base_.decision_function(eval_set[0]).astype(np.float32)
        train = {"A": A, "y": y, "waves": self._materialize(waves, len(y), "wave"),
                 "images": self._materialize(images, len(y), "image"), "offset": offset}
        valid = None
        if eval_set is not None:
            Av, yv = self._arrays(eval_set[0]), np.asarray(eval_set[1], dtype=np.float32)
            valid = {"A": Av, "y": yv, "offset": valid_offset,
                     "waves": self._materialize(self._tensor_rows(tensors, "ecg", Av["hadm_id"]), len(yv), "wave")
                     if waves is not None else None,
                     "images": self._materialize(self._tensor_rows(tensors, "imaging", Av["hadm_id"]), len(yv),
                                                 "image") if images is not None else None}
        members, self.history_ = [], []
        for k in range(int(self.n_members)):   # a deep ensemble: same data, other seeds
            net, history = self._train_member(self.random_state + k, train, valid)
            members.append(net)
            self.history_ += [{"member": k, **h} for h in history]
        self.net_ = members[0] if len(members) == 1 else FusionEnsemble(members)
        self.net_.eval()
        self.classes_ = np.array([0, 1])
        self.tensors_ = None
        self.fit_seconds_ = time.perf_counter() - started
        return self

    def _train_member(self, seed: int, train: dict, valid: dict | None) -> tuple[FusionNet, list[dict]]:
        """One net trained from ``seed`` with modality dropout and early stopping on the
        validation loss; returns its best state and its per-epoch history."""
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        net = FusionNet(**self.arch_)
        if self.base_ is not None:
            net.zero_output()   # starts at the base; early stopping keeps it if nothing helps
        A, y, waves, images, offset = (train[k] for k in ("A", "y", "waves", "images", "offset"))
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        loss_fn = torch.nn.BCEWithLogitsLoss()

        def valid_loss() -> float:
            lv = self._logits(valid["A"], valid["waves"], valid["images"], net)
            if valid["offset"] is not None:
                lv = lv + valid["offset"]
            return float(loss_fn(torch.from_numpy(lv), torch.from_numpy(valid["y"])))

        best, best_state, bad_epochs, history = np.inf, None, 0, []
        if valid is not None and self.base_ is not None:   # the base alone is a candidate too
            best = valid_loss()
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        epochs = track(range(self.max_epochs), total=self.max_epochs, desc=f"fused net epochs (seed {seed})",
                       unit="epoch", stage="fusion")
        for epoch in epochs:
            net.train()
            order = rng.permutation(len(y))
            total = 0.0
            for s in range(0, len(order), self.batch_size):
                idx = order[s:s + self.batch_size]
                if len(idx) < 2:
                    continue
                logit = net(self._batch(A, idx, waves, images, True, rng)) + torch.from_numpy(offset[idx])
                loss = loss_fn(logit, torch.from_numpy(y[idx]))
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            if valid is None:
                history.append({"epoch": epoch, "train_loss": total / len(y)})
                continue
            vl = valid_loss()
            history.append({"epoch": epoch, "train_loss": total / len(y), "valid_loss": vl})
            if vl < best - 1e-4:
                best, bad_epochs = vl, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                bad_epochs += 1
                if bad_epochs >= self.patience:
                    break
        if best_state is not None:
            net.load_state_dict(best_state)
        return net.eval(), history

    def _logits(self, A: dict, waves, images, net=None) -> np.ndarray:
        net = self.net_ if net is None else net
        net.eval()
        out = []
        n = len(A["mask"])
        with torch.no_grad():
            for s in range(0, n, 512):
                idx = np.arange(s, min(n, s + 512))
                out.append(net(self._batch(A, idx, waves, images, False, None)).numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def decision_function(self, X: pd.DataFrame, tensors: dict | None = None) -> np.ndarray:
        tensors = tensors if tensors is not None else self.tensors_
        A = self._arrays(X)
        waves = self._tensor_rows(tensors, "ecg", A["hadm_id"]) if self.arch_["ecg_wave"] else None
        images = self._tensor_rows(tensors, "imaging", A["hadm_id"]) if self.arch_["image"] else None
        with torch_threads(INFERENCE_THREADS):
            out = self._logits(A, waves, images).astype(np.float64)
        return out if getattr(self, "base_", None) is None else out + self.base_.decision_function(X)

    def predict_proba(self, X, tensors=None):
        p = 1 / (1 + np.exp(-self.decision_function(X, tensors)))
        return np.column_stack([1 - p, p])

    def predict(self, X, tensors=None):
        return (self.predict_proba(X, tensors)[:, 1] >= 0.5).astype(int)

    def explain(self, X: pd.DataFrame, background: pd.DataFrame | None = None):
        """Approximate SHAP values (batched expected gradients, pipeline.explain.deep) against
        100 rows of ``background`` (default: X), with each row's additivity error."""
        from pipeline.explain.deep import fusion_shap
        bg = background if background is not None else X
        with torch_threads(INFERENCE_THREADS):
            return fusion_shap(self, X, bg.sample(min(100, len(bg)), random_state=0))

    def with_tensors(self, tensors: dict | None) -> "FusionNetClassifier":
        """Attach raw tensors used when decision_function is called without them."""
        self.tensors_ = tensors
        return self

    # ------------------------------------------------------------------ persistence
    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.net_.state_dict().items()}, str(folder / "weights.safetensors"))
        digest = hashlib.sha256((folder / "weights.safetensors").read_bytes()).hexdigest()
        from pipeline.models.linear import save_base
        write_json({"kind": "FusionNetClassifier", "params": self.get_params(), "arch": self.arch_,
                    "features": list(self.feature_names_in_), "modalities": self.modalities_,
                    "columns": self.columns_, "center": self.center_, "scale": self.scale_,
                    "history": self.history_, "weights_sha256": digest,
                    **save_base(self.base_, folder)}, folder / "model.json")

    @classmethod
    def load(cls, folder: Path) -> "FusionNetClassifier":
        from safetensors.torch import load_file
        folder = Path(folder)
        meta = read_json(folder / "model.json")
        wpath = folder / "weights.safetensors"
        if hashlib.sha256(wpath.read_bytes()).hexdigest() != meta["weights_sha256"]:
            raise DataError("weights do not match their recorded hash (modified or corrupt)", file=wpath)
        est = cls(**meta["params"])
        est.arch_ = meta["arch"]
        # JSON stores keys sorted: restore the modality order the net was built with
        est.arch_["dims"] = {m: est.arch_["dims"][m] for m in meta["modalities"]}
        k = int(meta["params"].get("n_members", 1))
        est.net_ = FusionNet(**est.arch_) if k == 1 else FusionEnsemble([FusionNet(**est.arch_) for _ in range(k)])
        load_weights(est.net_, load_file(str(wpath)), wpath)
        est.net_.eval()
        est.feature_names_in_ = np.asarray(meta["features"], dtype=object)
        est.modalities_, est.columns_ = meta["modalities"], meta["columns"]
        est.center_, est.scale_, est.history_ = meta["center"], meta["scale"], meta["history"]
        from pipeline.models.linear import load_base
        est.base_ = load_base(folder, meta)
        est.classes_ = np.array([0, 1])
        est.tensors_ = None
        return est
