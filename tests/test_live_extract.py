"""Scoring patients still in hospital: a live extract of the real MIMIC-IV demo (every row
known after each patient's "now" removed, admissions still running reopened) gives every
admission whose prediction time has passed exactly the risk the complete extract gives."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config import RunConfig
from pipeline.errors import DataError
from pipeline.jobs.score import score
from pipeline.jobs.train import train

# columns that say when a row was charted or stored: a row with one of them after "now" is not there yet
DROP_AFTER = ("admittime", "intime", "charttime", "storetime", "starttime", "chartdate", "storedate",
              "transfertime", "ordertime", "entertime", "verifiedtime")
# columns of something still running at "now": emptied
OPEN_AFTER = {"endtime": (), "stoptime": (), "outtime": ("los",), "edouttime": (),
              "dischtime": ("deathtime", "hospital_expire_flag", "discharge_location"), "dod": ()}


def _time(s: pd.Series) -> pd.Series:
    t = pd.to_datetime(s, errors="coerce", format="mixed")
    date_only = s.fillna("").str.len().between(1, 10)
    return t.where(~date_only, t + pd.Timedelta(days=1) - pd.Timedelta(seconds=1))


def live_extract(src: Path, dst: Path, now: pd.Series) -> None:
    """Copy ``src`` as it stood at each subject's ``now`` (subject_id -> Timestamp)."""
    adm = pd.read_csv(src / "hosp" / "admissions.csv.gz", dtype=str, keep_default_na=False)
    disch = _time(adm["dischtime"])
    coded = set(adm.loc[disch <= adm["subject_id"].astype(int).map(now), "hadm_id"])
    for path in sorted(src.glob("*/*.csv.gz")):
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        if "subject_id" in df.columns:
            t = df["subject_id"].astype(int).map(now)
            if path.name.startswith(("diagnoses_icd", "procedures_icd", "drgcodes")):
                df = df[df["hadm_id"].isin(coded)]  # codes are assigned after discharge
            elif path.name.startswith("microbiologyevents"):  # ordered by now; a result only once stored
                ordered = _time(df["charttime"]).fillna(_time(df["chartdate"]))
                df.loc[_time(df["storetime"]) > t, ["org_name", "org_itemid", "storetime", "storedate"]] = ""
                df = df[~(ordered > t)]
            else:
                late = pd.Series(False, index=df.index)
                for c in DROP_AFTER:
                    if c in df.columns:
                        late |= _time(df[c]) > t
                for c, also in OPEN_AFTER.items():
                    if c in df.columns:
                        df.loc[_time(df[c]) > t, [c, *[a for a in also if a in df.columns]]] = ""
                df = df[~late]
        (dst / path.parent.name).mkdir(parents=True, exist_ok=True)
        df.to_csv(dst / path.parent.name / path.name, index=False)


@pytest.fixture(scope="module")
def model(mimic_demo, tmp_path_factory):
    run = tmp_path_factory.mktemp("live_run")
    cfg = RunConfig.model_validate({"model": {"gbm_estimators": 100, "fusion_models": ["gbm_early"],
                                              "single_modality_baselines": False}})
    train(mimic_demo, run, cfg, report=False)
    return run


def test_live_extract_scores_every_eligible_admission_exactly_as_the_complete_one(mimic_demo, model, tmp_path):
    adm = pd.read_csv(mimic_demo / "hosp" / "admissions.csv.gz", parse_dates=["admittime"])
    rng = np.random.default_rng(0)
    # each patient's "now": a random moment 0-12 h after one of its admissions' prediction time
    pick = adm.groupby("subject_id")["admittime"].agg(lambda s: s.iloc[rng.integers(len(s))])
    now = pick + pd.Timedelta(hours=24) + pd.to_timedelta(rng.uniform(0, 12, len(pick)), unit="h")
    live = tmp_path / "live"
    live_extract(mimic_demo, live, now)
    full = score(model, mimic_demo, tmp_path / "full.parquet")
    part = score(model, live, tmp_path / "live.parquet")
    eligible = full[full["prediction_time"] <= full["subject_id"].map(now)].set_index("hadm_id")
    reopened = pd.read_csv(live / "hosp" / "admissions.csv.gz")
    still_open = set(reopened.loc[reopened["dischtime"].isna(), "hadm_id"])
    assert len(eligible) >= 50 and len(still_open & set(eligible.index)) >= 20
    got = part.set_index("hadm_id").reindex(eligible.index)
    assert got["risk"].notna().all(), "an eligible admission was not scored from the live extract"
    # every feature of every eligible admission is bit-identical ...
    feats = [pd.read_parquet(tmp_path / f".{name}_work" / "stages" / "features_ehr" / "features.parquet")
             .set_index("hadm_id").loc[eligible.index] for name in ("full", "live")]
    pd.testing.assert_frame_equal(feats[0], feats[1], check_exact=True)
    # ... so the risks agree to the last bits a differently shaped batch may round (1 ulp)
    np.testing.assert_allclose(got["risk"].to_numpy(), eligible["risk"].to_numpy(), rtol=0, atol=1e-12)
    assert (got["band"] == eligible["band"]).all()


def test_training_on_a_live_extract_is_refused(mimic_demo, tmp_path):
    adm = pd.read_csv(mimic_demo / "hosp" / "admissions.csv.gz", parse_dates=["admittime"])
    now = adm.groupby("subject_id")["admittime"].max() + pd.Timedelta(hours=30)
    live_extract(mimic_demo, tmp_path / "live", now)
    with pytest.raises(DataError, match="no outcome yet"):
        train(tmp_path / "live", tmp_path / "run", RunConfig(), report=False)


def test_the_demo_model_uses_the_new_tables_and_names_them_in_words(model):
    import json
    from pipeline.stages.featurize_ehr import pretty_feature
    meta = json.loads((model / "model" / "model.json").read_text())
    feats = set(meta["features"])
    for f in ("ehr__cmb:charlson:chf__earlier", "ehr__medclass:vasopressor__given", "ehr__input:norepinephrine__rate_now",
              "ehr__output:urine__ml_6h", "ehr__hist:admissions_365d__n", "ehr__icu:in_icu__now",
              "ehr__micro:positive__given", "ehr__proc:ventilation__given"):
        assert f in feats, f
    assert any(f.startswith("ehr__dx:") for f in feats) and any(f.startswith("ehr__med:") for f in feats)
    assert not any("insurance" in f or "race" in f for f in feats)   # not predictors by default
    labels = meta["code_labels"]
    assert pretty_feature("ehr__cmb:charlson:chf__earlier", labels) == "Congestive heart failure (earlier admission)"
    dx = next(f for f in feats if f.startswith("ehr__dx:"))
    assert pretty_feature(dx, labels).endswith("(earlier admission)") and ":" not in pretty_feature(dx, labels)
    audit = json.loads((model / "leakage.json").read_text())
    assert audit["passed"] and audit["availability"]["rule"] == "storetime"
    held = audit["availability"]["per_source"]
    assert held["labevents"]["held_back"]["resulted later"] > 0
    assert held["diagnoses_icd"]["held_back"]["coded at discharge"] > 0
