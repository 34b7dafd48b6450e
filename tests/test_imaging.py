import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import shared
from pipeline.config import ImagingConfig
from pipeline.errors import DataError, Quarantine
from pipeline.sources.imaging import LoadImageD, load_image, read_cxr_metadata
from pipeline.stages.featurize_imaging import featurize_imaging


@pytest.mark.parametrize("name", ["cxr/00000001_000.png", "cxr/00027426_000.png", "dicom/CT_small.dcm",
                                  "dicom/MR_small.dcm", "dicom/dicomdirtests_77654033_CR1_6154.dcm",
                                  "nifti/anatomical.nii", "nifti/standard.nii.gz", "nifti/example4d.nii.gz"])
def test_real_images_load(name):
    img = load_image(shared("images", name), size=32)
    assert img.shape == (32, 32) and img.dtype == np.float32
    assert 0 <= img.min() and img.max() <= 1 and img.std() > 0


@pytest.mark.parametrize("name", ["dicom/rtplan.dcm", "dicom/test-SR.dcm"])
def test_dicom_without_pixel_data_is_a_clear_error(name):
    path = shared("images", name)
    with pytest.raises(DataError, match="no pixel data") as e:
        load_image(path)
    assert e.value.file == str(path)


def test_broken_files(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    good = tmp_path / "good.jpg"
    Image.fromarray((np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8)).save(good)
    (tmp_path / "trunc.jpg").write_bytes(good.read_bytes()[:50])
    (tmp_path / "x.bmpx").write_bytes(b"abc")
    with pytest.raises(DataError, match="empty"):
        load_image(tmp_path / "zero.jpg")
    with pytest.raises(DataError, match="decode"):
        load_image(tmp_path / "trunc.jpg")
    with pytest.raises(DataError, match="unsupported"):
        load_image(tmp_path / "x.bmpx")
    d = LoadImageD(size=16)({"image": str(good), "other": 1})
    assert d["image"].shape == (16, 16) and d["other"] == 1


def _cxr(root, rows):
    meta = []
    for sid, study, dicom, when, view, kind in rows:
        p = root / "files" / f"p{str(sid)[:2]}" / f"p{sid}" / f"s{study}"
        p.mkdir(parents=True, exist_ok=True)
        f = p / f"{dicom}.jpg"
        if kind == "corrupt":
            f.write_bytes(b"\xff\xd8\xff garbage")
        else:
            Image.fromarray(np.full((32, 32), kind, np.uint8)).save(f)
        t = pd.Timestamp(when)
        meta.append({"dicom_id": dicom, "subject_id": sid, "study_id": study, "ViewPosition": view,
                     "StudyDate": int(t.strftime("%Y%m%d")), "StudyTime": float(t.strftime("%H%M%S"))})
    pd.DataFrame(meta).to_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    return root


def test_selection_rules(tmp_path):
    sid = 10000001
    root = _cxr(tmp_path, [
        (sid, 50000001, "early-pa", "2150-01-01 09:00:00", "PA", 50),
        (sid, 50000002, "late-lat", "2150-01-02 07:00:00", "LATERAL", 100),
        (sid, 50000003, "after-ap", "2150-01-02 09:00:00", "AP", 200),    # after the prediction time
        (sid, 50000004, "newer-ap-corrupt", "2150-01-01 12:00:00", "AP", "corrupt"),
    ])
    q = Quarantine()
    idx = read_cxr_metadata(root, q)
    cohort = pd.DataFrame({"subject_id": [sid], "hadm_id": [1], "prediction_time": [pd.Timestamp("2150-01-02 08:00")],
                           "split": ["train"]})
    (tmp_path / "out").mkdir()
    featurize_imaging(cohort, idx, ImagingConfig(size=16), tmp_path / "out", q, n_jobs=1)
    f = pd.read_parquet(tmp_path / "out" / "features.parquet")
    # frontal preferred over the later lateral; the corrupt newer frontal is quarantined and skipped
    assert f["item_time"].iloc[0] == pd.Timestamp("2150-01-01 09:00:00")
    assert len(q) == 1 and q.rows[0].row == "dicom_id=newer-ap-corrupt"
    assert np.load(tmp_path / "out" / "images.npy").shape == (1, 1, 16, 16)
