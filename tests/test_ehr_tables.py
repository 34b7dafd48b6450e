"""The MIMIC-IV tables beyond labs/vitals: hand-built rows in the real 2.2 layouts, each
feature checked against what was known at the prediction time."""
import pandas as pd
import pytest

from pipeline.config import EHRConfig, TaskConfig
from pipeline.errors import DataError, Quarantine
from pipeline.sources.mimic_iv import ingest_mimic_iv
from pipeline.stages import leakage
from pipeline.stages.availability import audit_availability
from pipeline.stages.cohort import build_cohort
from pipeline.stages.featurize_ehr import featurize_ehr, pretty_feature
from tests.ehr_fixtures import ADMISSIONS, write_mimic

LABS = pd.DataFrame({
    "labevent_id": [1, 2, 3, 4], "subject_id": [1, 1, 1, 2], "hadm_id": [11, 11, 11, 21],
    "specimen_id": [1, 2, 3, 4], "itemid": 50813, "order_provider_id": "",
    "charttime": ["2150-01-01 10:00:00", "2150-01-02 06:00:00", "2150-01-01 12:00:00", "2150-01-01 12:00:00"],
    # 7.0 drawn before the prediction time (01-02 08:00) but resulted after it; 3.0 never resulted (no storetime)
    "storetime": ["2150-01-01 11:00:00", "2150-01-02 09:00:00", "", "2150-01-01 12:30:00"],
    "value": ["2.0", "7.0", "3.0", "1.5"], "valuenum": [2.0, 7.0, 3.0, 1.5], "valueuom": "mmol/L", "ref_range_lower": "", "ref_range_upper": "", "flag": "",
    "priority": "", "comments": ""})
TABLES = {
    "hosp/diagnoses_icd": pd.DataFrame({"subject_id": [1, 1, 2], "hadm_id": [11, 12, 21], "seq_num": 1,
                                        "icd_code": ["I509", "J449", "4280"], "icd_version": [10, 10, 9]}),
    "hosp/procedures_icd": pd.DataFrame({"subject_id": [1], "hadm_id": [11], "seq_num": 1,
                                         "chartdate": ["2150-01-03"], "icd_code": ["0DN80ZZ"], "icd_version": [10]}),
    "hosp/d_icd_diagnoses": pd.DataFrame({"icd_code": ["I509", "J449", "4280"], "icd_version": [10, 10, 9],
                                          "long_title": ["Heart failure, unspecified", "COPD, unspecified",
                                                         "Congestive heart failure, unspecified"]}),
    "hosp/prescriptions": pd.DataFrame({
        "subject_id": 1, "hadm_id": 11, "pharmacy_id": [1, 2], "poe_id": "", "poe_seq": "", "order_provider_id": "",
        "starttime": ["2150-01-01 09:00:00", "2150-01-02 10:00:00"], "stoptime": "", "drug_type": "MAIN",
        "drug": ["Heparin", "Vancomycin"], "formulary_drug_cd": "", "gsn": "", "ndc": "", "prod_strength": "",
        "form_rx": "", "dose_val_rx": "", "dose_unit_rx": "", "form_val_disp": "", "form_unit_disp": "",
        "doses_per_24_hrs": "", "route": "IV"}),
    "hosp/emar": pd.DataFrame({
        "subject_id": 1, "hadm_id": 11, "emar_id": ["a", "b", "c"], "emar_seq": [1, 2, 3], "poe_id": "",
        "pharmacy_id": "", "enter_provider_id": "",
        "charttime": ["2150-01-02 07:00:00", "2150-01-02 09:00:00", "2150-01-02 06:00:00"],
        "medication": "Norepinephrine", "event_txt": ["Administered", "Administered", "Not Given"],
        "scheduletime": "", "storetime": ["2150-01-02 07:05:00", "2150-01-02 09:05:00", "2150-01-02 06:05:00"]}),
    "icu/icustays": pd.DataFrame({"subject_id": [1], "hadm_id": [11], "stay_id": [111], "first_careunit": "MICU",
                                  "last_careunit": "MICU", "intime": ["2150-01-01 12:00:00"],
                                  "outtime": ["2150-01-03 12:00:00"], "los": [2.0]}),
    "icu/d_items": pd.DataFrame({"itemid": [221906, 225158, 226559, 225792],
                                 "label": ["Norepinephrine", "NaCl 0.9%", "Foley", "Invasive Ventilation"],
                                 "abbreviation": "", "linksto": "", "category": "", "unitname": "",
                                 "param_type": "", "lownormalvalue": "", "highnormalvalue": ""}),
    "icu/inputevents": pd.DataFrame({
        "subject_id": 1, "hadm_id": 11, "stay_id": 111, "caregiver_id": "", "itemid": [221906, 225158],
        "starttime": ["2150-01-02 06:00:00", "2150-01-01 20:00:00"],
        "endtime": ["2150-01-02 12:00:00", "2150-01-01 22:00:00"],
        "storetime": ["2150-01-02 06:10:00", "2150-01-01 22:05:00"], "amount": [36.0, 500.0],
        "amountuom": ["mg", "ml"], "rate": [0.1, 250.0], "rateuom": ["mcg/kg/min", "mL/hour"], "orderid": [1, 2],
        "linkorderid": [1, 2], "ordercategoryname": ["01-Drips", "02-Fluids (Crystalloids)"]}),
    "icu/outputevents": pd.DataFrame({
        "subject_id": 1, "hadm_id": 11, "stay_id": 111, "caregiver_id": "",
        "charttime": ["2150-01-02 04:00:00", "2150-01-02 07:30:00"],
        "storetime": ["2150-01-02 04:10:00", "2150-01-02 08:30:00"], "itemid": 226559, "value": [100.0, 50.0],
        "valueuom": "ml"}),
    "icu/procedureevents": pd.DataFrame({
        "subject_id": 1, "hadm_id": 11, "stay_id": 111, "caregiver_id": "", "starttime": ["2150-01-01 15:00:00"],
        "endtime": ["2150-01-03 10:00:00"], "storetime": ["2150-01-01 15:30:00"], "itemid": [225792], "value": 1}),
    "hosp/microbiologyevents": pd.DataFrame({
        "microevent_id": [1, 2], "subject_id": 1, "hadm_id": 11, "micro_specimen_id": [501, 502],
        "chartdate": ["2150-01-01", "2150-01-02"], "charttime": ["2150-01-01 12:00:00", ""],
        "spec_type_desc": "BLOOD CULTURE", "storedate": ["2150-01-03", ""],
        "storetime": ["2150-01-03 10:00:00", ""], "org_name": ["STAPH AUREUS", ""]}),
}


def _write(root, tables=TABLES):
    adm = ADMISSIONS.assign(admission_location="EMERGENCY ROOM", edregtime="", edouttime="")
    adm.loc[0, ["edregtime", "edouttime"]] = ["2150-01-01 04:00:00", "2150-01-01 08:00:00"]
    write_mimic(root, admissions=adm, labs=LABS)
    for name, df in tables.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(root / f"{name}.csv.gz", index=False)
    return root


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    d = tmp_path_factory.mktemp("ehr")
    root = _write(d / "m")
    info = ingest_mimic_iv(root, d / "ing", Quarantine())
    p, a = pd.read_parquet(d / "ing" / "patients.parquet"), pd.read_parquet(d / "ing" / "admissions.parquet")
    cohort, _ = build_cohort(p, a, pd.read_parquet(d / "ing" / "icustays.parquet"), TaskConfig())
    return root, d, info, cohort.assign(split="train")


def _features(d, cohort, name, **cfg):
    out = d / name
    out.mkdir(exist_ok=True)
    featurize_ehr(cohort, d / "ing", EHRConfig(**cfg), out)
    return pd.read_parquet(out / "features.parquet").set_index("hadm_id")


def test_every_event_row_carries_when_it_became_known(ingested):
    _, d, info, _ = ingested
    assert "chartevents" in info["tables_absent"] and "diagnoses_icd" in info["event_tables_found"]
    ev = pd.read_parquet(d / "ing" / "events.parquet")
    lab = ev[ev.source == "labevents"].set_index("value")
    assert lab.at[7.0, "known_time"] == pd.Timestamp("2150-01-02 09:00") and lab.at[7.0, "time"] < lab.at[7.0, "known_time"]
    assert pd.isna(lab.at[3.0, "known_time"])                       # no storetime: never available
    dx = ev[ev.code == "dx:10:I509"].iloc[0]
    assert dx.known_time == pd.Timestamp("2150-01-06 08:00") and dx.time == pd.Timestamp("2150-01-01 08:00")
    assert {"cmb:charlson:chf", "cmb:elix:chf", "cmb:charlson:copd"} <= set(ev.code)
    micro = ev[ev.source == "microbiologyevents"].set_index("code")
    assert micro.loc["micro:positive", "known_time"] == pd.Timestamp("2150-01-03 10:00")
    assert pd.Timestamp("2150-01-02 23:59:59") in set(micro.loc[["micro:culture"], "known_time"])  # date-only
    assert ev.loc[ev.code == "medclass:vasopressor", "known_time"].min() == pd.Timestamp("2150-01-02 07:05")


def test_features_use_only_what_was_known_at_the_prediction_time(ingested):
    _, d, _, cohort = ingested
    f = _features(d, cohort, "fe")
    r = f.loc[11]
    assert r["ehr__lab:50813__count"] == 1 and r["ehr__lab:50813__max"] == 2.0   # 7.0 resulted later
    assert r["ehr__medclass:vasopressor__given"] == 1 and r["ehr__medclass:anticoagulant__given"] == 1
    assert r["ehr__medclass:antibiotic__given"] == 0                              # vancomycin started later
    assert r["ehr__input:norepinephrine__rate_now"] == pytest.approx(0.1)
    assert r["ehr__fluid:iv__ml_24h"] == 500 and r["ehr__output:urine__ml_6h"] == 100  # 50 mL stored later
    assert r["ehr__proc:ventilation__given"] == 1
    assert r["ehr__micro:culture__given"] == 1 and r["ehr__micro:positive__given"] == 0
    assert r["ehr__icu:in_icu__now"] == 1 and r["ehr__icu:icu_hours__now"] == pytest.approx(20)
    assert r["ehr__hist:ed_hours__n"] == pytest.approx(4)
    # its own codes are assigned at discharge: never used
    assert r["ehr__cmb:charlson:chf__earlier"] == 0 and r["ehr__hist:admissions_365d__n"] == 0
    later = f.loc[12]   # subject 1's next admission knows admission 11's codes
    assert later["ehr__cmb:charlson:chf__earlier"] == 1 and later["ehr__cmb:elix:chf__earlier"] == 1
    assert later["ehr__cmb:charlson:copd__earlier"] == 0                        # J449 is admission 12's own
    assert later["ehr__hist:admissions_365d__n"] == 1 and later["ehr__hist:earlier_los_days__n"] == 5
    assert later["ehr__hist:days_since_discharge__n"] == pytest.approx(147)
    assert later["ehr__hist:icu_stays_365d__n"] == 1 and later["ehr__icu:in_icu__now"] == 0
    assert f.loc[12, "ehr__ctx:admission_type=URGENT__is"] == 1
    pt = cohort.set_index("hadm_id")["prediction_time"]
    assert (f["item_time"].dropna() <= pt.reindex(f["item_time"].dropna().index)).all()


def test_charttime_availability_uses_results_nobody_had_yet(ingested):
    _, d, _, cohort = ingested
    f = _features(d, cohort, "fe_chart", availability="charttime")
    assert f.loc[11, "ehr__lab:50813__count"] == 3 and f.loc[11, "ehr__lab:50813__max"] == 7.0
    assert f.loc[11, "ehr__cmb:charlson:chf__earlier"] == 0   # codes stay at discharge in every mode


def test_audit_rederives_availability_from_raw_rows_and_fails_on_a_violation(ingested, tmp_path):
    root, d, _, cohort = ingested
    res = audit_availability(cohort, d / "ing", root, EHRConfig())
    assert res["passed"] and not res["violations"]
    assert res["per_source"]["labevents"]["held_back"] == {"resulted later": 1, "never available (no storetime or no "
                                                                              "raw row)": 1}
    assert res["per_source"]["diagnoses_icd"]["held_back"]["coded at discharge"] >= 2
    assert res["per_source"]["microbiologyevents"]["held_back"] == {"date-only": 1, "resulted later": 1}
    assert res["per_source"]["outputevents"]["held_back"] == {"stored later": 1}
    # the comparison mode counts what it used too early instead of failing
    chart = audit_availability(cohort, d / "ing", root, EHRConfig(availability="charttime"))
    assert chart["passed"] and chart["used_before_available"] >= 2
    # an ingest that stamps labs at their draw time is caught from the raw rows
    ev = pd.read_parquet(d / "ing" / "events.parquet")
    bad = tmp_path / "ing"
    bad.mkdir()
    ev.assign(known_time=ev["known_time"].where(ev.source != "labevents", ev["time"])).to_parquet(bad / "events.parquet")
    res = audit_availability(cohort, bad, root, EHRConfig())
    assert not res["passed"] and res["violations"][0]["source"] == "labevents"
    with pytest.raises(leakage.LeakageError, match="hadm_id=11"):
        leakage.enforce(leakage.add_availability({"passed": True, "violations": [], "split_overlap": []}, res))


def test_absent_tables_are_reported_not_fatal(tmp_path):
    info = ingest_mimic_iv(write_mimic(tmp_path / "m"), tmp_path / "o", Quarantine())
    assert {"diagnoses_icd", "emar", "inputevents", "microbiologyevents"} <= set(info["tables_absent"])
    assert info["availability_fallback"] == {"labevents": "no storetime column: known at charttime"}


def test_open_admissions_score_but_never_train(ingested):
    _, d, _, _ = ingested
    p, a = pd.read_parquet(d / "ing" / "patients.parquet"), pd.read_parquet(d / "ing" / "admissions.parquet")
    live = a.copy()
    live.loc[live.hadm_id == 61, ["dischtime", "deathtime", "hospital_expire_flag"]] = [pd.NaT, pd.NaT, pd.NA]
    with pytest.raises(DataError, match="no outcome yet") as e:
        build_cohort(p, live, None, TaskConfig())
    assert "hadm_id 61" in str(e.value)
    c, counts = build_cohort(p, live, None, TaskConfig(), require_outcomes=False, as_of=pd.Timestamp("2150-01-03"))
    assert c.set_index("hadm_id").at[61, "label"] == -1 and counts["outcome_unknown"] == 1
    c, counts = build_cohort(p, live, None, TaskConfig(), require_outcomes=False, as_of=pd.Timestamp("2150-01-02"))
    assert 61 not in set(c.hadm_id) and counts["excluded_prediction_time_not_reached"] == 1


def test_new_features_read_as_words():
    labels = {"cmb:charlson:chf": "Congestive heart failure"}
    assert pretty_feature("ehr__med:norepinephrine__given", labels) == "Norepinephrine before prediction"
    assert pretty_feature("ehr__cmb:charlson:chf__earlier", labels) == "Congestive heart failure (earlier admission)"
    assert pretty_feature("ehr__input:norepinephrine__rate_now", {}) == "Norepinephrine rate at prediction"
    assert pretty_feature("ehr__hist:days_since_discharge__n", {}) == "Days since last discharge"


def test_a_code_with_a_known_conversion_keeps_its_target_unit_whatever_the_extract_holds(tmp_path):
    from pipeline.sources.mimic_iv import connect
    from pipeline.sources.units import harmonise_units
    # MCHC mostly written as '%' in this extract: still converted to g/dL, as in any other extract
    ev = pd.DataFrame({"subject_id": 1, "hadm_id": 11.0, "time": pd.Timestamp("2150-01-01"),
                       "known_time": pd.Timestamp("2150-01-01"), "code": "lab:51249",
                       "value": [33.0, 34.0, 32.0], "unit": ["%", "%", "g/dL"], "source": "labevents"})
    ev.to_parquet(tmp_path / "events.parquet")
    harmonise_units(tmp_path / "events.parquet", Quarantine(), "t", connect())
    out = pd.read_parquet(tmp_path / "events.parquet")
    assert len(out) == 3 and set(out["unit"].str.lower()) == {"g/dl"}
    assert out["known_time"].notna().all()   # extra columns travel through the rewrite


def test_line_numbers_hold_deep_in_a_file_read_in_parallel_chunks(tmp_path, monkeypatch):
    """A 1M-row labevents.csv (plain, so DuckDB splits it across threads): a bad value, an exact
    duplicate and a conflicting duplicate deep in the file are reported at their true lines, and
    the rows around them are kept; the duplicate candidates are found slice by slice."""
    import numpy as np
    from pipeline.sources import raw_checks
    from pipeline.sources.mimic_iv import connect, ingest_events
    monkeypatch.setattr(raw_checks, "CANDIDATE_SLICE_ROWS", 300_000)   # 4 slices of the key hashes
    n = 1_000_000
    i = np.arange(n)
    labs = pd.DataFrame({"labevent_id": i, "subject_id": 10 + i % 500, "hadm_id": "", "specimen_id": i,
                         "itemid": 50912, "charttime": "2150-01-01 10:00:00", "storetime": "2150-01-01 11:00:00",
                         "valuenum": (i % 7 + 1).astype(str), "valueuom": "mg/dL"})
    labs.loc[700_000, "valuenum"] = "abc"                            # file line 700_002
    dup = labs.iloc[[900_000]].copy()                                 # exact copy of line 900_002
    conflict = labs.iloc[[950_000]].copy()                            # same key as line 950_002 ...
    conflict["labevent_id"], conflict["valuenum"] = -1, "99"          # ... another value
    labs = pd.concat([labs, dup, conflict], ignore_index=True)        # lines 1_000_002 and 1_000_003
    (tmp_path / "hosp").mkdir()
    labs.to_csv(tmp_path / "hosp" / "labevents.csv", index=False)
    q = Quarantine()
    con = connect(threads=2, temp_dir=tmp_path)
    con.execute("SET preserve_insertion_order=false")   # ingest must not depend on the caller's setting
    info = ingest_events(tmp_path, tmp_path, q, con=con)
    rows = {(r.row, r.field): r.reason for r in q.rows}
    assert "non-numeric" in rows[("line 700002", "valuenum")]
    assert rows[("line 1000002", "row")] == "exact duplicate row (dropped) of line 900002"
    assert "as line 950002" in rows[("line 1000003", "valuenum")]
    assert info["raw_checks"]["labevents"] == {"exact_duplicates": 1, "non_numeric_valuenum": 1,
                                               "conflicting_duplicates": 1}
    assert info["event_rows"] == n - 1 + 1                            # the bad row out, the conflict kept


@pytest.mark.parametrize("header", ["subject_id,itemid,charttime", '"subject_id","item, id",charttime',
                                    "\ufeffsubject_id,itemid", "subject_id, itemid ,charttime", "a,,b", "a,a,b"])
def test_header_columns_name_the_columns_as_duckdb_does(tmp_path, header):
    """The event tables' columns come from the first line (no sampling of a big file): the same
    names as DuckDB's reader gives, whatever the quoting, a byte-order mark or spaces."""
    import csv
    import gzip
    from pipeline.sources.mimic_iv import connect
    from pipeline.sources.raw_checks import _source_sql, header_columns
    for path in (tmp_path / "t.csv", tmp_path / "t.csv.gz"):
        width = len(next(csv.reader([header])))
        text = header + "\n" + ",".join(["1"] * width) + "\n"
        path.write_bytes(gzip.compress(text.encode()) if path.suffix == ".gz" else text.encode())
        con = connect()
        duck = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {_source_sql(path)}").fetchall()]
        assert header_columns(con, path) == duck
