"""Notes benchmark: notes/s for the TF-IDF + SVD encoder and the offline MiniLM encoder.

Notes come from the synthetic generator's MIMIC-IV-Note files (realistic radiology and
discharge text), cleaned and chunked exactly as the notes stage does.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    sys.path.insert(0, str(REPO))
    from pipeline.errors import Quarantine
    from pipeline.sources.notes import read_notes
    from pipeline.stages.featurize_notes import SentenceEncoder, TfidfSVDEncoder, chunks, clean
    from pipeline.synthetic import generate_cohort

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--notes", type=int, default=500)
    ap.add_argument("--patients", type=int, default=200)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="notes_bench_"))
    generate_cohort(work, n_patients=args.patients, seed=0, progress=False)
    notes = read_notes(work / "mimic-iv-note", Quarantine())
    notes = notes.sample(args.notes, replace=len(notes) < args.notes, random_state=0)
    t = time.time()
    texts = [c for txt, nt in zip(notes["text"], notes["note_type"]) for c in chunks(clean(txt, nt))]
    prep_s = time.time() - t
    words = sum(len(x.split()) for x in texts)
    print(f"{len(notes)} notes -> {len(texts)} chunks, {words / max(len(texts), 1):.0f} words/chunk; "
          f"cleaning+chunking {len(notes) / prep_s:,.0f} notes/s")
    t = time.time()
    enc = TfidfSVDEncoder(svd_dims=32).fit(texts)
    fit_s = time.time() - t
    t = time.time()
    enc.transform(texts)
    tr_s = time.time() - t
    print(f"TF-IDF+SVD: fit {len(notes) / fit_s:,.0f} notes/s, transform {len(notes) / tr_s:,.0f} notes/s")
    t = time.time()
    st = SentenceEncoder(cache_dir=str(work / "cache")).fit()
    load_s = time.time() - t
    t = time.time()
    st.transform(texts)
    enc_s = time.time() - t
    t = time.time()
    st.transform(texts)
    cached_s = time.time() - t
    print(f"MiniLM (offline, CPU): model load {load_s:.1f} s, encode {len(notes) / enc_s:,.1f} notes/s, "
          f"from cache {len(notes) / cached_s:,.0f} notes/s")


if __name__ == "__main__":
    main()
