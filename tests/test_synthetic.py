"""The synthetic cohort: real layouts and column names, readable by pandas/wfdb/PIL, consistent, seeded,
and a hidden risk that each modality's data actually carries."""
import gzip
import re
import warnings

import numpy as np
import pandas as pd
import pytest

from pipeline.synthetic import care, codes, ecg, ehr, generate_cohort, imaging, latent, notes, orders
from pipeline.synthetic.cohort import GROUND_TRUTH_COLUMNS, auroc

TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")

TABLES = {
    "mimic-iv/hosp/patients.csv.gz": ehr.PATIENT_COLUMNS,
    "mimic-iv/hosp/admissions.csv.gz": ehr.ADMISSION_COLUMNS,
    "mimic-iv/hosp/labevents.csv.gz": ehr.LABEVENT_COLUMNS,
    "mimic-iv/hosp/d_labitems.csv.gz": ehr.D_LABITEMS_COLUMNS,
    "mimic-iv/hosp/diagnoses_icd.csv.gz": codes.DIAGNOSES_COLUMNS,
    "mimic-iv/hosp/procedures_icd.csv.gz": codes.PROCEDURES_COLUMNS,
    "mimic-iv/hosp/d_icd_diagnoses.csv.gz": codes.D_ICD_COLUMNS,
    "mimic-iv/hosp/d_icd_procedures.csv.gz": codes.D_ICD_COLUMNS,
    "mimic-iv/hosp/prescriptions.csv.gz": orders.PRESCRIPTION_COLUMNS,
    "mimic-iv/hosp/emar.csv.gz": orders.EMAR_COLUMNS,
    "mimic-iv/hosp/microbiologyevents.csv.gz": orders.MICRO_COLUMNS,
    "mimic-iv/icu/icustays.csv.gz": ehr.ICUSTAY_COLUMNS,
    "mimic-iv/icu/chartevents.csv.gz": ehr.CHARTEVENT_COLUMNS,
    "mimic-iv/icu/inputevents.csv.gz": care.INPUTEVENT_COLUMNS,
    "mimic-iv/icu/outputevents.csv.gz": care.OUTPUTEVENT_COLUMNS,
    "mimic-iv/icu/procedureevents.csv.gz": care.PROCEDUREEVENT_COLUMNS,
    "mimic-iv/icu/d_items.csv.gz": ehr.D_ITEMS_COLUMNS,
    "mimic-iv-ecg/record_list.csv": ecg.RECORD_LIST_COLUMNS,
    "mimic-iv-note/note/radiology.csv.gz": notes.NOTE_COLUMNS,
    "mimic-iv-note/note/discharge.csv.gz": notes.NOTE_COLUMNS,
    "mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv.gz": imaging.METADATA_COLUMNS,
    "mimic-cxr-jpg/mimic-cxr-2.0.0-chexpert.csv.gz": ["subject_id", "study_id"] + imaging.CHEXPERT_LABELS,
    "ground_truth.csv.gz": GROUND_TRUTH_COLUMNS,
}
TIME_COLUMNS = {
    "mimic-iv/hosp/admissions.csv.gz": ["admittime", "dischtime", "deathtime", "edregtime", "edouttime"],
    "mimic-iv/hosp/labevents.csv.gz": ["charttime", "storetime"],
    "mimic-iv/icu/icustays.csv.gz": ["intime", "outtime"],
    "mimic-iv/icu/chartevents.csv.gz": ["charttime", "storetime"],
    "mimic-iv/icu/inputevents.csv.gz": ["starttime", "endtime", "storetime"],
    "mimic-iv/icu/outputevents.csv.gz": ["charttime", "storetime"],
    "mimic-iv/icu/procedureevents.csv.gz": ["starttime", "endtime", "storetime"],
    "mimic-iv/hosp/prescriptions.csv.gz": ["starttime", "stoptime"],
    "mimic-iv/hosp/emar.csv.gz": ["charttime", "scheduletime", "storetime"],
    "mimic-iv/hosp/microbiologyevents.csv.gz": ["chartdate", "charttime", "storedate", "storetime"],
    "mimic-iv-ecg/record_list.csv": ["ecg_time"],
    "mimic-iv-note/note/radiology.csv.gz": ["charttime", "storetime"],
    "mimic-iv-note/note/discharge.csv.gz": ["charttime", "storetime"],
}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth40")
    summary = generate_cohort(root, n_patients=40, seed=3, progress=False)
    return root, summary


def _read(root, rel, dtype=None, **kw):
    return pd.read_csv(root / rel, dtype={"hadm_id": "Int64", **(dtype or {})}, keep_default_na=False,
                       na_values=[""], **kw)


def test_every_file_exists_with_the_mimic_columns(cohort):
    root, summary = cohort
    for rel, cols in TABLES.items():
        assert (root / rel).exists(), rel
        assert list(pd.read_csv(root / rel, nrows=0).columns) == cols, rel
    for key in ("patients", "admissions", "labevents", "chartevents", "icustays", "ecg_records",
                "radiology_notes", "discharge_notes", "cxr_images", "diagnoses_icd", "procedures_icd",
                "prescriptions", "emar", "microbiologyevents", "inputevents", "outputevents", "procedureevents"):
        assert summary[key] > 0, key
    assert summary["patients"] == 40


def test_hosp_and_icu_headers_are_those_of_the_real_mimic_iv_demo(cohort, mimic_demo):
    """Every hosp/ and icu/ table the demo release has is written with its header, byte for byte."""
    root, _ = cohort
    demo = mimic_demo
    checked = 0
    for rel in TABLES:
        if not rel.startswith("mimic-iv/") or not (demo / rel[len("mimic-iv/"):]).exists():
            continue
        with gzip.open(root / rel, "rt") as ours, gzip.open(demo / rel[len("mimic-iv/"):], "rt") as real:
            assert ours.readline() == real.readline(), rel
        checked += 1
    assert checked >= 15   # all but chartevents (absent from the demo)


def test_values_have_the_mimic_formats(cohort):
    root, _ = cohort
    dx = _read(root, "mimic-iv/hosp/diagnoses_icd.csv.gz", dtype={"icd_code": str})
    d_dx = _read(root, "mimic-iv/hosp/d_icd_diagnoses.csv.gz", dtype={"icd_code": str})
    px = _read(root, "mimic-iv/hosp/procedures_icd.csv.gz", dtype={"icd_code": str})
    d_px = _read(root, "mimic-iv/hosp/d_icd_procedures.csv.gz", dtype={"icd_code": str})
    assert set(zip(dx["icd_code"], dx["icd_version"])) <= set(zip(d_dx["icd_code"], d_dx["icd_version"]))
    assert set(zip(px["icd_code"], px["icd_version"])) <= set(zip(d_px["icd_code"], d_px["icd_version"]))
    assert px["chartdate"].str.match(r"^\d{4}-\d{2}-\d{2}$").all()
    assert (dx.groupby("hadm_id")["seq_num"].min() == 1).all()
    # ICD-9 codes are digits (or V/E codes), ICD-10 codes start with a letter.
    assert dx.loc[dx["icd_version"] == 9, "icd_code"].str.match(r"^[0-9VE]").all()
    assert dx.loc[dx["icd_version"] == 10, "icd_code"].str.match(r"^[A-Z]").all()
    rx = _read(root, "mimic-iv/hosp/prescriptions.csv.gz", dtype={"gsn": str, "ndc": str})
    assert "NORepinephrine" in set(rx["drug"]) and (rx["gsn"].dropna().str.len() == 6).all()
    emar = _read(root, "mimic-iv/hosp/emar.csv.gz")
    assert (emar["emar_id"] == emar["subject_id"].astype(str) + "-" + emar["emar_seq"].astype(str)).all()
    assert set(emar["event_txt"]) <= {"Administered", "Not Given", "Flushed", "Not Flushed", "Started", "Stopped"}
    micro = _read(root, "mimic-iv/hosp/microbiologyevents.csv.gz")
    assert micro["chartdate"].str.endswith(" 00:00:00").all()
    d_items = _read(root, "mimic-iv/icu/d_items.csv.gz")
    for table in ("inputevents", "outputevents", "procedureevents", "chartevents"):
        ids = set(_read(root, f"mimic-iv/icu/{table}.csv.gz")["itemid"])
        assert ids <= set(d_items.loc[d_items["linksto"] == table, "itemid"]), table


def test_times_parse_in_the_mimic_format(cohort):
    root, _ = cohort
    for rel, cols in TIME_COLUMNS.items():
        df = pd.read_csv(root / rel, dtype=str, keep_default_na=False)
        for c in cols:
            vals = df[c][df[c] != ""]
            assert len(vals) and vals.str.match(TIME_RE).all(), (rel, c)
            years = pd.to_datetime(vals, format="%Y-%m-%d %H:%M:%S").dt.year
            assert years.between(2105, 2200).all(), (rel, c)
    dod = _read(root, "mimic-iv/hosp/patients.csv.gz")["dod"].dropna()
    assert dod.str.match(r"^\d{4}-\d{2}-\d{2}$").all()


def test_ids_ranges_uniqueness_and_links(cohort):
    root, _ = cohort
    pat = _read(root, "mimic-iv/hosp/patients.csv.gz")
    adm = _read(root, "mimic-iv/hosp/admissions.csv.gz", parse_dates=["admittime", "dischtime", "deathtime"])
    icu = _read(root, "mimic-iv/icu/icustays.csv.gz", parse_dates=["intime", "outtime"])
    labs = _read(root, "mimic-iv/hosp/labevents.csv.gz")
    ecgs = _read(root, "mimic-iv-ecg/record_list.csv")
    meta = _read(root, "mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv.gz")
    rad = _read(root, "mimic-iv-note/note/radiology.csv.gz")
    for series, lo in ((pat["subject_id"], 10_000_000), (adm["hadm_id"], 20_000_000), (icu["stay_id"], 30_000_000),
                       (ecgs["study_id"], 40_000_000), (meta["study_id"], 50_000_000)):
        assert series.between(lo, lo + 9_999_999).all()
    for series in (pat["subject_id"], adm["hadm_id"], icu["stay_id"], labs.drop_duplicates()["labevent_id"],
                   ecgs["study_id"], meta["dicom_id"], rad["note_id"]):
        assert series.is_unique
    assert adm["subject_id"].isin(pat["subject_id"]).all()
    assert icu["hadm_id"].isin(adm["hadm_id"]).all()
    assert labs["hadm_id"].dropna().isin(adm["hadm_id"]).all()
    assert labs["hadm_id"].isna().any(), "some outpatient labs without hadm_id, as in MIMIC"
    assert adm.groupby("subject_id").size().between(1, 8).all()
    for table in ("hosp/prescriptions", "hosp/emar", "hosp/diagnoses_icd", "hosp/procedures_icd",
                  "icu/inputevents", "icu/outputevents", "icu/procedureevents"):
        t = _read(root, f"mimic-iv/{table}.csv.gz")
        assert t["hadm_id"].isin(adm["hadm_id"]).all(), table
        if "stay_id" in t:
            assert t["stay_id"].isin(icu["stay_id"]).all(), table
    # Admissions of a patient do not overlap; ICU stays lie within their admission.
    a = adm.sort_values(["subject_id", "admittime"])
    nxt = a.groupby("subject_id")["admittime"].shift(-1)
    assert (nxt.isna() | (nxt > a["dischtime"])).all()
    assert (a["dischtime"] > a["admittime"]).all()
    j = icu.merge(adm, on="hadm_id")
    assert (j["intime"] >= j["admittime"]).all() and (j["outtime"] <= j["dischtime"] + pd.Timedelta(minutes=1)).all()


def test_death_is_consistent_with_the_expire_flag(cohort):
    root, _ = cohort
    adm = _read(root, "mimic-iv/hosp/admissions.csv.gz", parse_dates=["admittime", "dischtime", "deathtime"])
    pat = _read(root, "mimic-iv/hosp/patients.csv.gz", parse_dates=["dod"])
    died = adm["hospital_expire_flag"] == 1
    assert set(adm["hospital_expire_flag"]) <= {0, 1}
    assert adm.loc[died, "deathtime"].notna().all() and adm.loc[~died, "deathtime"].isna().all()
    assert (adm.loc[died, "deathtime"] == adm.loc[died, "dischtime"]).all()
    assert (adm.loc[died, "discharge_location"] == "DIED").all()
    assert (adm.loc[~died, "discharge_location"] != "DIED").all()
    # Nobody is admitted after dying; dod matches the in-hospital death.
    last = adm.sort_values("admittime").groupby("subject_id").tail(1)
    assert set(adm.loc[died, "hadm_id"]) <= set(last["hadm_id"])
    dod = pat.set_index("subject_id")["dod"]
    assert (dod.loc[adm.loc[died, "subject_id"]].to_numpy()
            == adm.loc[died, "deathtime"].dt.floor("D").to_numpy()).all()


def test_ecg_records_read_with_wfdb(cohort):
    import wfdb
    root, _ = cohort
    rl = _read(root, "mimic-iv-ecg/record_list.csv")
    row = rl.iloc[0]
    s = str(row["subject_id"])
    assert row["path"] == f"files/p{s[:4]}/p{s}/s{row['study_id']}/{row['study_id']}"
    assert str(row["file_name"]) == str(row["study_id"])
    rec = wfdb.rdrecord(str(root / "mimic-iv-ecg" / row["path"]))
    assert rec.sig_name == ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    assert rec.fs == 500 and rec.sig_len == 5000 and rec.n_sig == 12
    assert rec.units == ["mV"] * 12 and rec.fmt == ["16"] * 12 and rec.adc_gain == [200.0] * 12
    assert rec.base_date is not None and str(rec.base_date) == row["ecg_time"][:10]
    assert 0.3 < np.ptp(rec.p_signal[:, 1]) < 8  # a plausible lead II in mV
    for p in rl["path"]:
        assert (root / "mimic-iv-ecg" / f"{p}.hea").exists() and (root / "mimic-iv-ecg" / f"{p}.dat").exists()


def test_records_are_byte_identical_to_wfdb_wrsamp(tmp_path):
    import wfdb
    p = ecg.ecg_severity_params(np.random.default_rng(0), np.array([1.5])).assign(seed=3).to_dict("records")[0]
    d = ecg.digitize(ecg.synthesize(p))
    t = pd.Timestamp("2180-07-03 08:04:00")
    (tmp_path / "ours").mkdir()
    (tmp_path / "wfdb").mkdir()
    ecg.write_wfdb(tmp_path / "ours", "41234567", d, t)
    wfdb.wrsamp(**ecg.wrsamp_args("41234567", d, t, str(tmp_path / "wfdb")))
    for ext in ("hea", "dat"):
        assert (tmp_path / "ours" / f"41234567.{ext}").read_bytes() == \
            (tmp_path / "wfdb" / f"41234567.{ext}").read_bytes(), ext


def test_cxr_jpegs_and_metadata(cohort):
    from PIL import Image
    root, _ = cohort
    meta = _read(root, "mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv.gz")
    assert meta["StudyDate"].dtype.kind == "i" and meta["StudyDate"].between(21000101, 22001231).all()
    assert meta["StudyTime"].dtype.kind == "f" and meta["StudyTime"].between(0, 235960).all()
    assert set(meta["ViewPosition"]) <= {"PA", "AP", "LATERAL"}
    assert meta["dicom_id"].str.match(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$").all()
    for r in meta.head(6).itertuples():
        s = str(r.subject_id)
        path = root / "mimic-cxr-jpg" / "files" / f"p{s[:2]}" / f"p{s}" / f"s{r.study_id}" / f"{r.dicom_id}.jpg"
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "L" and im.size == (256, 256)
            assert np.asarray(im).std() > 10
    chex = _read(root, "mimic-cxr-jpg/mimic-cxr-2.0.0-chexpert.csv.gz")
    vals = set(np.unique(chex[imaging.CHEXPERT_LABELS].to_numpy(dtype=float)[~np.isnan(
        chex[imaging.CHEXPERT_LABELS].to_numpy(dtype=float))]))
    assert vals <= {-1.0, 0.0, 1.0}
    assert set(chex["study_id"]) == set(meta["study_id"])


def test_notes_and_the_discharge_leakage_trap(cohort):
    root, _ = cohort
    adm = _read(root, "mimic-iv/hosp/admissions.csv.gz", parse_dates=["admittime", "dischtime"])
    rad = _read(root, "mimic-iv-note/note/radiology.csv.gz", parse_dates=["charttime", "storetime"])
    ds = _read(root, "mimic-iv-note/note/discharge.csv.gz", parse_dates=["charttime", "storetime"])
    assert (rad["note_type"] == "RR").all() and (ds["note_type"] == "DS").all()
    assert (rad["note_id"] == rad["subject_id"].astype(str) + "-RR-" + rad["note_seq"].astype(str)).all()
    assert ds["note_id"].str.match(r"^\d{8}-DS-\d+$").all()
    for sec in ("EXAMINATION:", "INDICATION:", "TECHNIQUE:", "COMPARISON:", "FINDINGS:", "IMPRESSION:"):
        assert rad["text"].str.contains(sec, regex=False).all(), sec
    for sec in ("Chief Complaint:", "History of Present Illness:", "Brief Hospital Course:", "Discharge Disposition:"):
        assert ds["text"].str.contains(sec, regex=False).all(), sec
    j = ds.merge(adm, on=["subject_id", "hadm_id"])
    # The discharge DATE at 00:00:00, as in MIMIC-IV-Note; stored after the discharge, or never.
    assert (j["charttime"] == j["dischtime"].dt.floor("D")).all()
    assert (j["storetime"].dropna() > j["dischtime"][j["storetime"].notna()]).all()
    assert j["storetime"].isna().any() or len(j) < 20
    died = j["hospital_expire_flag"] == 1
    says_died = j["text"].str.contains("expired|passed away", regex=True)
    assert (says_died == died).all()
    assert rad["hadm_id"].isna().any() or len(rad) < 30  # some outpatient studies


def test_data_after_the_prediction_time_exists(cohort):
    """The traps: labs, ECGs and reports after admittime + 24 h that a careless pipeline would use."""
    root, _ = cohort
    adm = _read(root, "mimic-iv/hosp/admissions.csv.gz", parse_dates=["admittime"])
    pt = adm.set_index("hadm_id")["admittime"] + pd.Timedelta(hours=24)
    labs = _read(root, "mimic-iv/hosp/labevents.csv.gz", parse_dates=["charttime"]).dropna(subset=["hadm_id"])
    assert (labs["charttime"] > labs["hadm_id"].map(pt)).mean() > 0.3
    assert (labs["charttime"] <= labs["hadm_id"].map(pt)).mean() > 0.1
    rad = _read(root, "mimic-iv-note/note/radiology.csv.gz", parse_dates=["charttime"]).dropna(subset=["hadm_id"])
    assert (rad["charttime"] > rad["hadm_id"].map(pt)).any()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    def run(name, seed):
        root = tmp_path / name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            generate_cohort(root, n_patients=10, seed=seed, progress=False, workers=1)
        return root

    a, b, c = run("a", 11), run("b", 11), run("c", 12)
    for rel in ("mimic-iv/hosp/patients.csv.gz", "mimic-iv/hosp/admissions.csv.gz",
                "mimic-iv/hosp/labevents.csv.gz", "mimic-iv-note/note/radiology.csv.gz", "ground_truth.csv.gz",
                "mimic-iv/hosp/diagnoses_icd.csv.gz", "mimic-iv/hosp/procedures_icd.csv.gz",
                "mimic-iv/hosp/prescriptions.csv.gz", "mimic-iv/hosp/emar.csv.gz",
                "mimic-iv/hosp/microbiologyevents.csv.gz", "mimic-iv/icu/inputevents.csv.gz",
                "mimic-iv/icu/outputevents.csv.gz", "mimic-iv/icu/procedureevents.csv.gz",
                "mimic-iv-note/note/discharge.csv.gz"):
        assert gzip.decompress((a / rel).read_bytes()) == gzip.decompress((b / rel).read_bytes()), rel
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel  # the gzip header carries no time
    assert gzip.decompress((a / "mimic-iv/hosp/patients.csv.gz").read_bytes()) != \
        gzip.decompress((c / "mimic-iv/hosp/patients.csv.gz").read_bytes())
    rl = (a / "mimic-iv-ecg/record_list.csv").read_text()
    assert rl == (b / "mimic-iv-ecg/record_list.csv").read_text()
    first = pd.read_csv(a / "mimic-iv-ecg/record_list.csv")["path"].iloc[0]
    assert (a / "mimic-iv-ecg" / f"{first}.dat").read_bytes() == (b / "mimic-iv-ecg" / f"{first}.dat").read_bytes()


def test_refuses_a_folder_that_already_holds_a_cohort(cohort):
    root, _ = cohort
    with pytest.raises(FileExistsError, match="mimic-iv"):
        generate_cohort(root, n_patients=5, progress=False)
    with pytest.raises(ValueError, match="at least 1"):
        generate_cohort(root / "new", n_patients=0, progress=False)


# ------------------------------------------------------------------ the hidden risk

@pytest.fixture(scope="module")
def simulated():
    return latent.simulate(np.random.default_rng(0), 3000)


def test_hidden_risk_drives_the_outcome(simulated):
    _, adm = simulated
    y = adm["label"].to_numpy()
    assert 0.08 < y.mean() < 0.18
    assert auroc(y, adm["p_true"]) > 0.85
    for m in latent.MODALITIES:
        assert 0.62 < auroc(y, adm[f"{m}_part"]) < 0.82, m   # each a real but partial share
    # Something for the cohort rules to exclude: minors, and deaths before the prediction time.
    assert (adm["age"] < 18).any()
    assert ((adm["label"] == 1) & (adm["los_hours"] < latent.PREDICTION_HOURS)).any()
    assert ((adm["label"] == 1) & (adm["los_hours"] > latent.PREDICTION_HOURS)).sum() > 0.8 * y.sum()
    # Admissions of one patient share traits.
    multi = adm[adm.groupby("subject_id")["hadm_id"].transform("size") > 1]
    first = multi.groupby("subject_id")["z_ecg"].first()
    second = multi.groupby("subject_id")["z_ecg"].nth(1).to_numpy()
    assert np.corrcoef(first.to_numpy(), second)[0, 1] > 0.1


def test_ehr_labs_before_prediction_carry_the_ehr_component(simulated, tmp_path):
    patients, adm = simulated
    adm = adm.iloc[:800]
    ehr.write_labs(np.random.default_rng(1), tmp_path, adm, patients)
    labs = pd.read_csv(tmp_path / "hosp" / "labevents.csv.gz", parse_dates=["charttime"])
    labs = labs.dropna(subset=["hadm_id", "valuenum"])
    labs = labs.merge(adm[["hadm_id", "prediction_time", "z_ehr"]], on="hadm_id")
    early = labs[labs["charttime"] <= labs["prediction_time"]]
    for itemid, sign in ((50813, 1), (50882, -1), (50912, 1)):
        m = early[early["itemid"] == itemid].groupby("hadm_id").agg(v=("valuenum", "mean"), z=("z_ehr", "first"))
        assert sign * np.corrcoef(m["v"], m["z"])[0, 1] > 0.3, itemid


def test_ecg_waveforms_show_the_ecg_component():
    from scipy.signal import find_peaks
    rng = np.random.default_rng(0)
    rates = {}
    for c in (-1.0, 2.5):
        params = ecg.ecg_severity_params(rng, np.full(12, c)).assign(seed=np.arange(12))
        beats = []
        for p in params.to_dict("records"):
            x = ecg.synthesize(p)[:, 1]
            x = x - np.convolve(x, np.ones(201) / 201, mode="same")  # remove the wander
            beats.append(len(find_peaks(x, height=0.45, distance=120)[0]) * 6)
        rates[c] = np.median(beats)
    assert rates[2.5] > rates[-1.0] + 20


def test_cxr_content_shows_the_imaging_component():
    rng = np.random.default_rng(0)
    adm = pd.DataFrame({"acuity": 0.0, "los_hours": 30.0, "z_imaging": [-1.5] * 20 + [2.5] * 20, "label": 0,
                        "subject_id": 10_000_001, "hadm_id": 20_000_001,
                        "admittime": pd.Timestamp("2150-01-01"), "prediction_time": pd.Timestamp("2150-01-02")})
    st = imaging.plan_studies(rng, adm)
    img = imaging.plan_images(rng, st)
    img = img[img["view"] != "LATERAL"]
    lung = np.zeros((256, 256), bool)
    lung[70:180, 40:100] = True  # the right lung field
    sick = img["adm"] >= 20
    means = np.array([imaging.render(p)[lung].mean() for p in imaging.image_specs(img)])
    assert sick.any() and (~sick).any()
    assert means[sick.to_numpy()].mean() > means[~sick.to_numpy()].mean() + 10


def test_report_wording_shows_the_notes_component():
    rng = np.random.default_rng(0)
    severe = [s for pool in (notes.CHEST["findings"][3], notes.CHEST["impression"][3]) for s in pool]

    def share(level):
        texts = [notes.radiology_text(rng, level, "CHEST (PORTABLE AP)", "F", None, None)[0] for _ in range(40)]
        return np.mean([any(s in t for s in severe) for t in texts])
    assert share(2.5) > share(-1.0) + 0.5


def test_auroc_is_none_for_one_class():
    assert auroc(np.zeros(5), np.arange(5)) is None
    assert auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0


# ------------------------------------------------------------------ the Bayes posterior

@pytest.fixture(scope="module")
def posterior():
    """p_bayes for 10,000 simulated patients (about 20,000 admissions; no files), with the eligible cohort."""
    from pipeline.synthetic import bayes, ecg, imaging, notes
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(11).spawn(4)]
    patients, adm = latent.simulate(rngs[0], 10_000)
    reports, _ = notes.radiology_reports(rngs[2], adm, patients)
    records = {"ecg": ecg.plan_ecgs(rngs[1], adm), "notes": reports, "imaging": imaging.plan_studies(rngs[3], adm)}
    p = bayes.posterior_risk(adm, patients, records)
    return adm.assign(p_bayes=p)[adm["eligible"].to_numpy()], records


def test_bayes_posterior_is_calibrated_and_below_the_latent_risk(posterior):
    from sklearn.linear_model import LogisticRegression
    cohort, records = posterior
    y, p = cohort["label"].to_numpy(), cohort["p_bayes"].to_numpy()
    assert y.sum() > 1500
    # A posterior is calibrated: in-the-large, and logit(y) ~ a + b * logit(p) has a = 0, b = 1
    # (the selection correction and the record loadings all enter these).
    assert abs(p.mean() - y.mean()) < 3 * np.sqrt(y.mean() * (1 - y.mean()) / len(y))
    fit = LogisticRegression(C=1e6).fit(np.log(p / (1 - p))[:, None], y)
    assert abs(fit.coef_[0, 0] - 1) < 0.08 and abs(fit.intercept_[0]) < 0.12, (fit.coef_, fit.intercept_)
    # No file shows absent modalities or the noise between a latent and its records: the
    # posterior ranks below the latent risk, and above the EHR-only part of it.
    bayes_auc = auroc(y, p)
    assert auroc(y, cohort["ehr_part"]) + 0.05 < bayes_auc < auroc(y, cohort["logit"]) - 0.02
    # A reference, not a bound: a stay followed by another stay was survived, which p_bayes ignores.
    last = cohort.groupby("subject_id")["admittime"].transform("max") == cohort["admittime"]
    assert (y[~last.to_numpy()] == 0).all() and p[~last.to_numpy()].mean() > 0.02
    # Every record before the prediction time carries its loading; the later ones cannot be used.
    for m, r in records.items():
        pre = r["before_prediction"].to_numpy(bool)
        assert r.loc[pre, "load"].notna().all() and r.loc[~pre, "load"].isna().all(), m


def test_bayes_posterior_uses_the_records():
    """An admission's p_bayes moves with its records' rendered parameters: a normal ECG lowers
    it, a severe one raises it, two severe ones raise it more; a loading is required."""
    from pipeline.synthetic import bayes
    patients = pd.DataFrame({"subject_id": [1], **{f"trait_{m}": [0.0] for m in latent.MODALITIES}})
    adm = pd.DataFrame({"subject_id": [1] * 4, "age": 60.0, "z_ehr": 0.0, "acuity": 0.0,
                        **{c: False for c in latent.CHRONIC},
                        "admittime": pd.Timestamp("2150-01-01") + pd.to_timedelta(np.arange(4) * 30, unit="D")})
    normal = {"hr": 68.0, "af": False, "qtc": 0.40, "qrs_w": 1.0, "st_amp": 0.0, "t_inv": 0.0, "n_pvc": 0}
    severe = {"hr": 104.0, "af": False, "qtc": 0.47, "qrs_w": 1.3, "st_amp": 0.25, "t_inv": 0.7, "n_pvc": 2}
    ecg = pd.DataFrame([normal, severe, severe, severe]).assign(adm=[1, 2, 3, 3], load=1.0, noise_sd=0.25,
                                                                 before_prediction=True)
    reports = pd.DataFrame({"adm": [], "load": [], "cross_load": [], "noise_sd": [], "before_prediction": [],
                            "tier_draws": []})
    studies = pd.DataFrame({"adm": [], "load": [], "noise_sd": [], "before_prediction": [], "opacity": [],
                            "edema": [], "effusion": [], "ctr": []})
    q = bayes.posterior_risk(adm, patients, {"ecg": ecg, "notes": reports, "imaging": studies})
    alone = bayes.posterior_risk(adm.iloc[[0]], patients, {"ecg": ecg.iloc[:0], "notes": reports,
                                                           "imaging": studies})
    # the four stays share traits (known, 0); one stay alone has them unknown
    assert q[1] < q[2] < q[3] and q[1] < alone[0] < q[2]
    with pytest.raises(ValueError, match="without a loading"):
        bayes.posterior_risk(adm, patients, {"ecg": ecg.assign(load=np.nan), "notes": reports, "imaging": studies})


# ------------------------------------------------------------------ the EHR tables: signal and traps

@pytest.fixture(scope="module")
def ehr_tables(simulated, tmp_path_factory):
    """The hosp/ and icu/ tables of the 3,000 simulated patients (no ECG, notes or images)."""
    patients, adm = simulated
    root = tmp_path_factory.mktemp("ehr3000")
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(5).spawn(6)]
    plan = care.care_plan(rngs[0], adm)
    codes.write_codes(rngs[1], root, adm, patients, plan)
    ehr.write_labs(rngs[2], root, adm, patients)
    _, stays = ehr.write_icustays(rngs[3], root, adm)
    care.write_inputevents(rngs[4], root, adm, plan, stays)
    care.write_outputevents(rngs[4], root, adm, plan, stays)
    care.write_procedureevents(rngs[4], root, adm, plan, stays)
    orders.write_medications(rngs[5], root, adm, plan)
    orders.write_microbiology(rngs[5], root, adm, plan)
    return root, adm[adm["eligible"]].set_index("hadm_id")


def test_earlier_admissions_codes_carry_the_chronic_risk(simulated, ehr_tables):
    """Heart failure, CKD or cancer coded in an EARLIER admission: mortality clearly higher (they enter
    the risk); both ICD versions occur, each stay in the version of its real discharge date."""
    patients, adm = simulated
    root, cohort = ehr_tables
    dx = pd.read_csv(root / "hosp" / "diagnoses_icd.csv.gz", dtype={"icd_code": str})
    risk_codes = {c for name in ("chf", "ckd", "cancer") for c in (codes.DX[name][0], codes.DX[name][2])}
    times = adm.set_index("hadm_id")[["subject_id", "admittime", "dischtime"]]
    coded = dx[dx["icd_code"].isin(risk_codes)].merge(times[["dischtime"]], left_on="hadm_id", right_index=True)
    pairs = cohort[["subject_id", "admittime"]].reset_index().merge(
        coded[["subject_id", "dischtime"]], on="subject_id")
    earlier = set(pairs.loc[pairs["dischtime"] < pairs["admittime"], "hadm_id"])
    first = cohort.groupby("subject_id")["admittime"].transform("min")
    later = cohort[cohort["admittime"] > first]          # stays with a history
    has = later.index.isin(earlier)
    assert has.sum() > 100 and (~has).sum() > 100
    assert later["label"][has].mean() > 1.35 * later["label"][~has].mean()
    # ICD-9 before the switch, ICD-10 after, per stay.
    v = dx.groupby("hadm_id")["icd_version"].agg(["min", "max"])
    assert (v["min"] == v["max"]).all() and set(v["min"]) == {9, 10}
    switch = patients.set_index("subject_id")["icd10_from"]
    t = times.loc[v.index]
    assert ((v["min"] == 10) == (t["dischtime"].to_numpy() >= switch.loc[t["subject_id"]].to_numpy())).all()
    # Some patients have long histories.
    assert adm.groupby("subject_id").size().max() >= 6
    # The current stay's codes are assigned at discharge and know the outcome: do-not-resuscitate only in deaths.
    dnr = set(dx.loc[dx["icd_code"].isin(codes.DX["dnr"][::2]), "hadm_id"])
    assert len(dnr) > 50 and adm.set_index("hadm_id").loc[sorted(dnr), "label"].all()


def test_vasopressors_and_low_urine_output_mark_the_sickest_icu_stays(ehr_tables):
    root, cohort = ehr_tables
    pt = cohort["prediction_time"]
    inp = pd.read_csv(root / "icu" / "inputevents.csv.gz", parse_dates=["starttime"])
    norepi = inp[inp["itemid"] == care.NOREPINEPHRINE]
    before = norepi[norepi["starttime"] <= norepi["hadm_id"].map(pt)]
    on = cohort.index.isin(before["hadm_id"])
    died = cohort["label"].to_numpy() == 1
    assert on[died].mean() > 2 * on[~died].mean() and on.sum() > 30
    # The same drips are ordered and charted in emar.
    rx = pd.read_csv(root / "hosp" / "prescriptions.csv.gz")
    emar = pd.read_csv(root / "hosp" / "emar.csv.gz")
    assert set(norepi["hadm_id"]) == set(rx.loc[rx["drug"] == "NORepinephrine", "hadm_id"])
    assert set(emar.loc[emar["medication"] == "NORepinephrine", "hadm_id"]) <= set(norepi["hadm_id"])
    # Later starts (after the prediction time) follow the outcome: the trap of reading past it.
    after = set(norepi["hadm_id"]) - set(before["hadm_id"])
    late = cohort.index.isin(after)
    assert late[died].mean() > 5 * max(late[~died].mean(), 1e-3)
    # Ventilation likewise; its procedureevents row is stored when it ends, intubation right away.
    proc = pd.read_csv(root / "icu" / "procedureevents.csv.gz", parse_dates=["starttime", "endtime", "storetime"])
    vent = proc[proc["itemid"] == care.VENTILATION]
    vented = cohort.index.isin(vent.loc[vent["starttime"] <= vent["hadm_id"].map(pt), "hadm_id"])
    assert vented[died].mean() > 1.8 * vented[~died].mean()
    assert (vent["storetime"] >= vent["endtime"]).all()
    assert set(proc.loc[proc["itemid"] == care.INTUBATION, "hadm_id"]) == set(vent["hadm_id"])
    # Urine output in the first 24 h falls with the EHR severity.
    out = pd.read_csv(root / "icu" / "outputevents.csv.gz", parse_dates=["charttime"])
    out = out[out["charttime"] <= out["hadm_id"].map(pt)]
    uo = out.groupby("hadm_id")["value"].mean()
    s0 = (cohort["z_ehr"] + 0.3 * cohort["acuity"]).loc[uo.index]
    assert len(uo) > 100 and np.corrcoef(np.log1p(uo), s0)[0, 1] < -0.3


def test_cultures_results_are_known_late_and_positives_carry_risk(ehr_tables):
    root, cohort = ehr_tables
    micro = _read(root, "hosp/microbiologyevents.csv.gz", parse_dates=["chartdate", "charttime", "storetime"])
    blood = micro[(micro["spec_type_desc"] == "BLOOD CULTURE") & micro["hadm_id"].isin(cohort.index)]
    pos = blood.groupby("hadm_id")["org_name"].agg(lambda x: x.notna().any())
    y = cohort.loc[pos.index, "label"]
    assert y[pos].mean() > 1.5 * y[~pos].mean() and pos.sum() > 100
    assert (micro["storetime"].dropna() > micro["charttime"].dropna().reindex(micro["storetime"].dropna().index)
            .fillna(pd.Timestamp.min)).all()
    assert micro["charttime"].isna().any() and micro["storetime"].isna().any()   # date-only; not stored yet
    later = micro["storetime"] > micro["hadm_id"].map(cohort["prediction_time"])
    drawn_before = micro["charttime"] <= micro["hadm_id"].map(cohort["prediction_time"])
    assert (later & drawn_before).sum() > 50


def test_lab_traps_results_after_the_prediction_time_missing_storetime_duplicates(ehr_tables):
    """A lactate drawn before the prediction time but resulted after it, its value tied to the outcome:
    charttime says known, storetime says not.  Also rows with no storetime and exact duplicates."""
    root, cohort = ehr_tables
    labs = _read(root, "hosp/labevents.csv.gz", parse_dates=["charttime", "storetime"])
    raw = pd.read_csv(root / "hosp" / "labevents.csv.gz", dtype=str, keep_default_na=False)
    assert raw.duplicated().mean() > 0.002 and raw.duplicated().mean() < 0.01
    assert 0.003 < (raw["storetime"] == "").mean() < 0.03
    labs = labs.dropna(subset=["hadm_id", "valuenum"]).drop_duplicates()
    assert ((labs["storetime"] - labs["charttime"]).dt.total_seconds() > 3 * 3600).mean() > 0.01
    pt = labs["hadm_id"].map(cohort["prediction_time"])
    trap = labs[(labs["charttime"] <= pt) & (labs["storetime"] > pt) & (labs["itemid"] == 50813)]
    v = trap.groupby("hadm_id")["valuenum"].max()
    assert len(v) > 0.3 * len(cohort)
    y = cohort.loc[v.index, "label"].to_numpy()
    assert auroc(y, v.to_numpy()) > 0.85
    # Known by the prediction time (storetime), the lactates carry far less.
    known = labs[(labs["storetime"] <= pt) & (labs["itemid"] == 50813)].groupby("hadm_id")["valuenum"].max()
    assert auroc(cohort.loc[known.index, "label"].to_numpy(), known.to_numpy()) < auroc(y, v.to_numpy()) - 0.1


def test_risk_is_not_additive_and_missingness_depends_on_the_outcome(simulated):
    """The EHR x ECG interaction is in the logit, and a logistic model of the label finds it; ECG,
    reports and CXR are recorded more often in sicker admissions beyond what acuity explains."""
    from sklearn.linear_model import LogisticRegression
    patients, adm = simulated
    additive = adm[["ehr_part", "ecg_part", "notes_part", "imaging_part"]].sum(axis=1)
    assert np.allclose(adm["logit"] - latent.B0 - additive, latent.W_INT * adm["z_ehr"] * adm["z_ecg"])
    x = np.column_stack([adm["ehr_part"], adm["ecg_part"], adm["notes_part"], adm["imaging_part"],
                         adm["z_ehr"] * adm["z_ecg"]])
    fit = LogisticRegression(C=1e6, max_iter=2000).fit(x, adm["label"])
    assert 0.35 < fit.coef_[0, 4] < 1.2
    rng = np.random.default_rng(2)
    plans = {"ecg": ecg.plan_ecgs(rng, adm), "imaging": imaging.plan_studies(rng, adm),
             "notes": notes.plan_radiology(rng, adm).assign(before_prediction=lambda d: d["hours"] <= 24)}
    died = adm["label"].to_numpy() == 1
    for m, plan in plans.items():
        present = np.isin(np.arange(len(adm)), plan.loc[plan["before_prediction"], "adm"])
        assert present[died].mean() > present[~died].mean() + 0.05, m
        f = LogisticRegression().fit(np.column_stack([adm["acuity"], adm[f"z_{m}"]]), present)
        assert f.coef_[0, 1] > 0.3, m


def test_a_positive_culture_lists_each_antibiotic_once(ehr_tables):
    root, _ = ehr_tables
    micro = _read(root, "hosp/microbiologyevents.csv.gz").dropna(subset=["ab_name"])
    assert len(micro) and not micro.duplicated(["micro_specimen_id", "ab_name"]).any()
    assert set(micro["interpretation"]) <= {"S", "R"}
