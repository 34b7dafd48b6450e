"""README claims with a test each: plain .csv / .parquet and MIMIC-IV 1.0 ``core/`` layouts,
JSON and YAML config files, the ``los7`` and ``icu_mortality`` tasks, the eICU timeline,
DICOM and NIfTI pixel values against pydicom / nibabel, the fusion benchmark table against
the committed benchmark output.  (``band``, subgroup metrics and
``--engine dask`` against a separately started scheduler are in tests/test_faults.py,
which has a trained run at hand.)"""
import gzip
import shutil

import numpy as np
import pandas as pd
import pytest

from pipeline.config import RunConfig, TaskConfig
from pipeline.errors import Quarantine
from pipeline.sources.discover import discover
from pipeline.sources.mimic_iv import ingest_mimic_iv
from pipeline.stages.cohort import build_cohort
from tests.ehr_fixtures import write_mimic


def _canonical(out) -> dict[str, pd.DataFrame]:
    tables = {}
    for name, key in (("patients", "subject_id"), ("admissions", "hadm_id"), ("events", ["subject_id", "time", "code"])):
        tables[name] = pd.read_parquet(out / f"{name}.parquet").sort_values(key).reset_index(drop=True)
    return tables


@pytest.mark.parametrize("layout", ["csv", "parquet", "core"])
def test_plain_csv_parquet_and_core_layouts_give_the_same_tables(tmp_path, layout):
    ref_root = write_mimic(tmp_path / "ref")
    ingest_mimic_iv(ref_root, tmp_path / "ref_out", Quarantine())
    root = tmp_path / layout
    for f in (ref_root / "hosp").iterdir():
        name = f.name.removesuffix(".csv.gz")
        sub = "core" if layout == "core" and name in ("patients", "admissions") else "hosp"
        (root / sub).mkdir(parents=True, exist_ok=True)
        if layout == "parquet":
            pd.read_csv(f).to_parquet(root / sub / f"{name}.parquet")      # native dtypes, as exported
        elif layout == "csv":
            (root / sub / f"{name}.csv").write_bytes(gzip.decompress(f.read_bytes()))
        else:
            shutil.copy(f, root / sub / f.name)
    assert discover(tmp_path / layout).paths["mimic_iv"] == root
    q = Quarantine()
    info = ingest_mimic_iv(root, tmp_path / "out", q)
    assert len(q) == 0 and info["event_rows"] == 6
    if layout == "core":
        assert info["version_hint"] == "1.0 (core/)"
    got, want = _canonical(tmp_path / "out"), _canonical(tmp_path / "ref_out")
    for name in want:
        pd.testing.assert_frame_equal(got[name], want[name], check_dtype=False)


def test_json_and_yaml_config_files_load_the_same(tmp_path):
    (tmp_path / "c.json").write_text('{"task": {"name": "los7", "prediction_hours": 12}, '
                                     '"model": {"band_thresholds": [0.2, 0.5]}, "modalities": ["ehr", "ecg"]}')
    (tmp_path / "c.yaml").write_text("task: {name: los7, prediction_hours: 12}\n"
                                     "model:\n  band_thresholds: [0.2, 0.5]\nmodalities: [ehr, ecg]\n")
    a, b = RunConfig.load(tmp_path / "c.json"), RunConfig.load(tmp_path / "c.yaml")
    assert a == b and a != RunConfig()
    assert a.task.name == "los7" and a.task.prediction_hours == 12 and a.model.band_thresholds == (0.2, 0.5)


@pytest.fixture
def tables(tmp_path):
    from pipeline.sources.mimic_iv import read_admissions, read_icustays, read_patients
    root = write_mimic(tmp_path / "m")
    (root / "icu").mkdir()
    pd.DataFrame({"subject_id": [2, 6, 1], "hadm_id": [21, 61, 11], "stay_id": [201, 601, 101],
                  "intime": ["2150-01-01 09:00:00", "2150-01-01 10:00:00", "2150-01-01 09:00:00"],
                  "outtime": ["2150-01-05 08:00:00", "2150-01-03 10:00:00", "2150-01-01 20:00:00"]}
                 ).to_csv(root / "icu" / "icustays.csv.gz", index=False)
    q = Quarantine()
    p = read_patients(root, q)
    return p, read_admissions(root, q, p), read_icustays(root, q)


def test_los7_labels_stays_over_seven_days(tables):
    p, a, _ = tables
    c, _ = build_cohort(p, a, None, TaskConfig(name="los7"))
    c = c.set_index("hadm_id")
    # stays: 11 five days, 12 two days, 21 four days ending in death (the competing event: 1), 61 eight days
    assert c["label"].to_dict() == {11: 0, 12: 0, 21: 1, 61: 1}
    assert (c["prediction_time"] == a.set_index("hadm_id").loc[c.index, "admittime"] + pd.Timedelta(hours=24)).all()


def test_icu_mortality_predicts_from_the_icu_admission(tables):
    c, counts = build_cohort(*tables, TaskConfig(name="icu_mortality"))
    c = c.set_index("hadm_id")
    # 21 died in the ICU; 61 left it alive; 11 left the ICU before intime + 24 h (excluded)
    assert c["label"].to_dict() == {21: 1, 61: 0} and counts["excluded_left_icu_before_prediction"] == 1
    assert c.loc[61, "prediction_time"] == pd.Timestamp("2150-01-02 10:00:00")


def test_eicu_offsets_go_on_one_timeline_per_hospital_stay(tmp_path):
    from pipeline.sources.eicu import ingest_eicu
    pd.DataFrame({
        "patientunitstayid": [1, 2, 3], "patienthealthsystemstayid": [10, 10, 20], "uniquepid": ["a", "a", "a"],
        "gender": ["Female"] * 3, "age": ["> 89", "> 89", "> 89"],
        "hospitaladmitoffset": [-60, -3000, 0], "hospitaldischargeoffset": [5000, 2060, 600],
        "unitdischargeoffset": [1000, 1500, 500], "hospitaldischargestatus": ["Expired", "Expired", "Alive"],
        "hospitaldischargeyear": [2014, 2014, 2015]}).to_csv(tmp_path / "patient.csv", index=False)
    pd.DataFrame({"patientunitstayid": [1, 2, 3], "labresultoffset": [30, -10, 5], "labname": ["BUN"] * 3,
                  "labresult": [10, 20, 30]}).to_csv(tmp_path / "lab.csv", index=False)
    ingest_eicu(tmp_path, tmp_path / "out", Quarantine())
    adm = pd.read_parquet(tmp_path / "out" / "admissions.parquet").set_index("hadm_id")
    ev = pd.read_parquet(tmp_path / "out" / "events.parquet").set_index("value")["time"]
    t0 = pd.Timestamp("2014-01-01")
    # each hospital stay on 1 January of its discharge year: 10 in 2014, the later stay 20 in 2015
    assert adm.loc[10, "admittime"] == t0 and adm.loc[20, "admittime"] == pd.Timestamp("2015-01-01")
    # both of stay 10's units are placed after the same hospital admission: unit 1 at +60 min, unit 2 at +3000
    assert ev[10.0] == t0 + pd.Timedelta(minutes=60 + 30) and ev[20.0] == t0 + pd.Timedelta(minutes=3000 - 10)
    # discharge from the first unit's offsets; Expired: deathtime = dischtime, flag 1
    assert adm.loc[10, "dischtime"] == t0 + pd.Timedelta(minutes=60 + 5000)
    assert adm.loc[10, "hospital_expire_flag"] == 1 and adm.loc[10, "deathtime"] == adm.loc[10, "dischtime"]
    assert pd.read_parquet(tmp_path / "out" / "patients.parquet")["anchor_age"].tolist() == [90]


def _scaled(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    return (a - a.min()) / (a.max() - a.min())


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_dicom_pixels_equal_pydicoms(name):
    import pydicom
    from conftest import shared

    from pipeline.sources.imaging import load_image
    path = shared("images", "dicom", name)
    px = pydicom.dcmread(path).pixel_array
    assert px.shape[0] == px.shape[1]
    np.testing.assert_allclose(load_image(path, size=px.shape[0]), _scaled(px), atol=1e-6)


def test_nifti_pixels_equal_nibabels_middle_slice(tmp_path):
    import nibabel as nib

    from pipeline.sources.imaging import load_image
    v = np.random.default_rng(0).integers(0, 1000, (32, 32, 5)).astype(np.int16)
    nib.save(nib.Nifti1Image(v, np.eye(4)), tmp_path / "v.nii.gz")
    ref = nib.load(tmp_path / "v.nii.gz").get_fdata()[:, :, 2]
    np.testing.assert_allclose(load_image(tmp_path / "v.nii.gz", size=32), _scaled(ref), atol=1e-6)


def test_readme_fusion_table_is_the_benchmark_output():
    """Every row of the README's fusion benchmark table (held-out, valid and test AUROC, the
    paired dAUROC to the primary and the gap to p_bayes with their CIs and significance marks)
    is what the committed run of benchmarks/fusion.py printed."""
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    log = (root / "benchmarks" / "results" / "fusion_5000.txt").read_text().splitlines()
    readme = (root / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(readme) if "| model (ranked by held-out AUROC) |" in line)
    rows = [line.strip() for line in readme[start + 2:]]
    rows = rows[:rows.index("")]
    assert len(rows) == 12
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        name = re.match(r"`(\w+)`", cells[0]).group(1)
        printed = [line for line in log if line.startswith(name + " ") and len(line.split()) > 5]
        assert len(printed) == 1, name
        fields = printed[0].split()
        assert [float(c) for c in cells[1:4]] == [float(f) for f in fields[1:4]], name
        # '+0.0012 [-0.003, +0.005]', '*' when the CI excludes 0, or '(primary)'
        diffs = re.findall(r"\(primary\)|[+-]\d\.\d{4} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\]\*?", printed[0])
        assert [c.replace("\\*", "*") for c in cells[4:6]] == diffs, name


def _results(name: str):
    import json
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    return json.loads((root / "benchmarks" / "results" / name).read_text()), (root / "README.md").read_text()


def test_readme_scale_figures_are_the_benchmark_outputs():
    """The README's x1000 ETL rows and its ECG per-core wall rates are the committed runs' JSON."""
    etl, readme = _results("etl_x1000.json")
    for run in (etl, etl["other_runs"][0]):
        row = (f"| x1000 | 100,000 | {etl['event_rows'] / 1e6:.1f} M | {etl['cohort']:,} | {run['ingest_s']:.1f} s | "
               f"{run['features_s']:.1f} s | {run['total_s']:.1f} s | {run['cpu_s']:.1f} | {run['peak_rss_gib']:.2f} GiB |")
        assert row in readme, row
    assert not etl["events_split"] and etl["patients"] == 100_000
    ecg, _ = _results("stages_ecg20k.json")
    for engine in ("local", "dask"):
        r = ecg["ecg"][engine]
        per_core = r["per_s"] / ecg["cpus"]
        assert per_core >= 100                                   # the target, in wall time
        assert f"**{r['per_s']:.1f} records/s = {per_core:.1f} per core**" in " ".join(readme.split()), engine


def test_readme_projection_table_is_projection_py_on_the_committed_figures():
    """benchmarks/projection.py on the committed JSON (EHR: the x1000 run with the events split by
    shard, as real MIMIC-IV files need; ECG: the 20,000-record run; imaging and scoring: the earlier
    runs' costs) prints the README's full-MIMIC table."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    res = root / "benchmarks" / "results"
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "projection.py"),
                          "--etl", str(res / "etl_x1000_split.json"), "--stages", str(res / "earlier_imaging_scoring.json"),
                          "--score", str(res / "earlier_imaging_scoring.json"), "--ecg", str(res / "stages_ecg20k.json")],
                         capture_output=True, text=True, check=True).stdout
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert len(table) == 8
    readme = (root / "README.md").read_text().splitlines()
    start = readme.index("  " + table[0])
    assert [line.strip() for line in readme[start:start + len(table)]] == table
