from pathlib import Path

import pytest

from pipeline.config import SourcePaths
from pipeline.errors import DataError
from pipeline.sources.discover import discover


def _touch(p: Path, text: str = "x\n") -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def _mimic(root: Path) -> None:
    _touch(root / "hosp" / "patients.csv.gz")
    _touch(root / "hosp" / "admissions.csv.gz")


def test_physionet_download_tree(tmp_path):
    base = tmp_path / "physionet.org" / "files"
    _mimic(base / "mimiciv" / "3.1")
    _touch(base / "mimic-iv-ecg" / "1.0" / "record_list.csv")
    _touch(base / "mimic-iv-note" / "2.2" / "note" / "radiology.csv.gz")
    _touch(base / "mimic-cxr-jpg" / "2.1.0" / "mimic-cxr-2.0.0-metadata.csv.gz")
    s = discover(tmp_path)
    assert s.paths["mimic_iv"] == base / "mimiciv" / "3.1"
    assert s.paths["ecg"] == base / "mimic-iv-ecg" / "1.0"
    assert s.paths["notes"] == base / "mimic-iv-note" / "2.2"
    assert s.paths["cxr"] == base / "mimic-cxr-jpg" / "2.1.0"
    assert s.absent == []


def test_single_source_and_absent_ones(tmp_path):
    _touch(tmp_path / "ecg" / "record_list.csv")
    s = discover(tmp_path / "ecg")
    assert s.paths["ecg"] == tmp_path / "ecg"
    assert set(s.absent) == {"mimic_iv", "notes", "cxr"}
    assert "absent" in s.describe()


def test_hosp_folder_given_directly(tmp_path):
    _mimic(tmp_path / "mimic")
    assert discover(tmp_path / "mimic" / "hosp").paths["mimic_iv"] == tmp_path / "mimic"


def test_two_candidates_is_an_error_listing_both(tmp_path):
    _mimic(tmp_path / "a")
    _mimic(tmp_path / "b")
    with pytest.raises(DataError) as e:
        discover(tmp_path)
    assert str(tmp_path / "a") in str(e.value) and str(tmp_path / "b") in str(e.value)


def test_config_path_wins_over_discovery(tmp_path):
    _mimic(tmp_path / "a")
    _mimic(tmp_path / "b")
    s = discover(tmp_path, SourcePaths(mimic_iv=tmp_path / "b"))
    assert s.paths["mimic_iv"] == tmp_path / "b"
    with pytest.raises(DataError, match="does not look like"):
        discover(tmp_path, SourcePaths(mimic_iv=tmp_path / "b", ecg=tmp_path / "a"))


def test_missing_root_is_an_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        discover(tmp_path / "nope")


def test_files_trees_are_not_walked(tmp_path):
    # A record_list inside files/ (the big waveform tree) is not a second ECG source.
    _touch(tmp_path / "ecg" / "record_list.csv")
    _touch(tmp_path / "ecg" / "files" / "p1000" / "record_list.csv")
    assert discover(tmp_path).paths["ecg"] == tmp_path / "ecg"


def test_real_demo_and_wfdb_samples(mimic_demo):
    s = discover(mimic_demo)
    assert s.paths["mimic_iv"] == mimic_demo and s.paths["ecg"] is None
    wf = mimic_demo.parent / "wfdb-samples"
    if wf.exists():
        s = discover(wf)
        assert s.paths["ecg"] is None and len(s.wfdb_folders) >= 2


def test_synthetic_root(synth_root):
    s = discover(synth_root)
    assert s.absent == []
    assert s.paths["mimic_iv"] == synth_root / "mimic-iv"
    assert s.paths["notes"] == synth_root / "mimic-iv-note"
