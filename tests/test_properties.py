"""Property tests: schema validation, alignment masks, and the point-in-time window."""
import numpy as np
import pandas as pd
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from data_schemas.base import Column, Schema
from data_schemas.modalities import COHORT
from pipeline.errors import DataError
from pipeline.stages.align import align

SCHEMA = Schema("t", (Column("id", "int", nullable=False, unique=True), Column("x", "float"),
                      Column("when", "datetime")))


@given(ids=st.lists(st.integers(0, 50), min_size=1, max_size=30), bad=st.sampled_from(["dup", "str", "none"]))
def test_schema_rejects_exactly_the_broken_frames(ids, bad):
    df = pd.DataFrame({"id": ids, "x": np.arange(len(ids), dtype=float),
                       "when": pd.Timestamp("2150-01-01") + pd.to_timedelta(np.arange(len(ids)), "h")})
    unique = len(set(ids)) == len(ids)
    if bad == "str":
        df["x"] = df["x"].astype(str) + "mg"
    elif bad == "dup" and len(ids) > 1:
        df.loc[len(df) - 1, "id"] = df.loc[0, "id"]
        unique = False
    should_fail = (bad == "str") or not unique
    try:
        SCHEMA.validate(df, "frame.parquet")
        assert not should_fail
    except DataError as e:
        assert should_fail and e.file == "frame.parquet" and e.field in ("id", "x")


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 40), data=st.data())
def test_alignment_masks_match_data(n, data):
    cohort = pd.DataFrame({"subject_id": np.arange(n), "hadm_id": np.arange(n) + 100,
                           "prediction_time": pd.Timestamp("2150-01-01"), "label": 0, "split": "train"})
    COHORT.validate(cohort)
    feats = {}
    for m in ("ecg", "notes"):
        keep = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
        rows = cohort[np.array(keep)]
        feats[m] = pd.DataFrame({"hadm_id": rows.hadm_id, f"{m}__v": np.arange(len(rows), dtype=float)})
    t = align(cohort, feats)
    assert len(t) == n and t["hadm_id"].is_unique
    for m in ("ecg", "notes"):
        present = t["hadm_id"].isin(feats[m]["hadm_id"])
        assert (t[f"mask__{m}"] == present.astype(int)).all()
        assert t.loc[~present, f"{m}__v"].isna().all() and t.loc[present, f"{m}__v"].notna().all()
    assert (t["mask__imaging"] == 0).all()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offsets=st.lists(st.integers(-72 * 60, 72 * 60), min_size=1, max_size=25))
@example(offsets=[-24 * 60 - 1, -24 * 60, -1, 0, 1])     # just outside, on and inside both bounds
def test_no_event_after_the_prediction_time_reaches_a_feature(tmp_path_factory, offsets):
    from pipeline.config import EHRConfig
    from pipeline.stages.featurize_ehr import featurize_ehr
    d = tmp_path_factory.mktemp("w")
    pt = pd.Timestamp("2150-01-02 08:00")
    ev = pd.DataFrame({"subject_id": 1, "hadm_id": 11.0, "time": [pt + pd.Timedelta(minutes=o) for o in offsets],
                       "code": "lab:1", "value": np.arange(len(offsets), dtype=float), "unit": "u", "source": "t"})
    ev.to_parquet(d / "events.parquet")
    cohort = pd.DataFrame({"subject_id": [1], "hadm_id": [11], "prediction_time": [pt], "label": [0],
                           "split": ["train"], "age": [50.0], "gender": ["F"]})
    (d / "fe").mkdir()
    cfg = EHRConfig(lookback_hours=24)   # offsets reach 72 h back: both window bounds are exercised
    featurize_ehr(cohort, d, cfg, d / "fe", codes=["lab:1"])
    f = pd.read_parquet(d / "fe" / "features.parquet").iloc[0]
    allowed = [i for i, o in enumerate(offsets) if o <= 0 and o >= -cfg.lookback_hours * 60]
    assert f["ehr__lab:1__count"] == len(allowed)
    if allowed:
        assert f["ehr__lab:1__max"] == max(allowed) and f["item_time"] <= pt
