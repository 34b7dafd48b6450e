"""Notes benchmark: notes/s for the TF-IDF + SVD encoder and the offline MiniLM encoder.

Notes come from the synthetic generator's MIMIC-IV-Note files (realistic radiology and
discharge text), cleaned and chunked exactly as the notes stage does.  Prints:
- cleaning + chunking rate;
- TF-IDF + SVD: fit and transform rates, and the whole notes stage (select, clean,
  de-duplicate, chunk, fit on train, encode, pool, write) per note;
- MiniLM (CPU, offline): model load, encoding rate with a cold cache, then from cache.

    python benchmarks/notes.py [--notes 500] [--patients 200] [--no-minilm]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _rate(n: int, seconds: float) -> str:
    return f"{n / max(seconds, 1e-9):,.1f}"


def main() -> None:
    sys.path.insert(0, str(REPO))
    import numpy as np
    import pandas as pd
    import torch

    from pipeline.config import NotesConfig
    from pipeline.errors import Quarantine
    from pipeline.sources.notes import read_notes
    from pipeline.stages.featurize_notes import (
        SentenceEncoder,
        TfidfSVDEncoder,
        chunks,
        clean,
        featurize_notes,
    )
    from pipeline.synthetic import generate_cohort

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--notes", type=int, default=500)
    ap.add_argument("--patients", type=int, default=200)
    ap.add_argument("--no-minilm", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="notes_bench_"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        generate_cohort(work, n_patients=args.patients, seed=0, progress=False)
    notes = read_notes(work / "mimic-iv-note", Quarantine())
    notes = notes.sample(args.notes, replace=len(notes) < args.notes, random_state=0)
    notes["note_id"] = [f"n{i}" for i in range(len(notes))]
    n = len(notes)
    words = notes["text"].str.split().str.len()
    print(f"{n} notes ({(notes['note_type'] == 'RR').sum()} radiology, {(notes['note_type'] == 'DS').sum()} "
          f"discharge), {words.mean():.0f} words/note on average (median {words.median():.0f}); "
          f"torch threads {torch.get_num_threads()}")

    t = time.time()
    cleaned = [clean(txt, nt) for txt, nt in zip(notes["text"], notes["note_type"])]
    texts = [c for txt in cleaned for c in chunks(txt)]
    prep_s = time.time() - t
    cw = sum(len(x.split()) for x in texts)
    print(f"cleaning + chunking: {_rate(n, prep_s)} notes/s -> {len(texts)} chunks, "
          f"{cw / max(len(texts), 1):.0f} words/chunk")

    t = time.time()
    enc = TfidfSVDEncoder(svd_dims=32).fit(texts)
    fit_s = time.time() - t
    t = time.time()
    enc.transform(texts)
    tr_s = time.time() - t
    print(f"TF-IDF + SVD (32 d): fit {_rate(n, fit_s)} notes/s, transform {_rate(n, tr_s)} notes/s")

    # the whole stage: one admission per subject, predicting just after its latest sampled note
    last = notes.groupby("subject_id")["charttime"].max()
    cohort = pd.DataFrame({"subject_id": last.index.to_numpy(), "hadm_id": np.arange(len(last)) + 1,
                           "prediction_time": last.to_numpy(), "split": "train"})
    t = time.time()
    counts = featurize_notes(cohort, notes, NotesConfig(), work / "stage", Quarantine())
    stage_s = time.time() - t
    print(f"notes stage (TF-IDF, fit + features): {_rate(counts['notes_considered'], stage_s)} notes/s "
          f"({counts['notes_considered']} notes, {counts['rows']} admissions, {stage_s:.2f} s)")

    if args.no_minilm:
        return
    t = time.time()
    st = SentenceEncoder(cache_dir=str(work / "cache")).fit()
    load_s = time.time() - t
    texts = [c for txt in cleaned for c in chunks(txt, st.chunk_words)]
    cw = sum(len(x.split()) for x in texts)
    t = time.time()
    st.transform(texts)
    enc_s = time.time() - t
    t = time.time()
    st.transform(texts)
    cached_s = time.time() - t
    print(f"MiniLM (offline, CPU, 384 d): model load {load_s:.1f} s; encode {_rate(n, enc_s)} notes/s "
          f"({_rate(len(texts), enc_s)} chunks/s, {_rate(cw, enc_s)} words/s); "
          f"from cache {_rate(n, cached_s)} notes/s")
    # full-length chunks, to size real MIMIC notes (discharge ~1,500 words, radiology ~200)
    words = " ".join(cleaned).split()
    full = [" ".join(words[i:i + st.chunk_words]) for i in range(0, len(words) - st.chunk_words, st.chunk_words)]
    full = full[:128]
    fresh = SentenceEncoder(cache_dir=None).fit()
    t = time.time()
    fresh.transform(full)
    full_s = time.time() - t
    per_chunk = full_s / len(full)
    print(f"MiniLM on full {st.chunk_words}-word chunks: {_rate(len(full), full_s)} chunks/s -> about "
          f"{1 / (per_chunk * np.ceil(1500 / st.chunk_words)):,.1f} discharge summaries/s (1,500 words), "
          f"{1 / (per_chunk * np.ceil(200 / st.chunk_words)):,.1f} radiology reports/s (200 words)")


if __name__ == "__main__":
    main()
