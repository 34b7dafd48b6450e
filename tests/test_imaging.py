import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import shared
from pipeline.config import ImagingConfig
from pipeline.errors import DataError, Quarantine
from pipeline.sources.imaging import (LoadImageD, index_image_folder, inspect_images, load_image,
                                      read_cxr_metadata)
from pipeline.models.fusion_net import ImageEncoder
from pipeline.stages.featurize_imaging import featurize_imaging, image_features

REAL = ["cxr/00000001_000.png", "cxr/00027426_000.png", "dicom/CT_small.dcm", "dicom/MR_small.dcm",
        "dicom/dicomdirtests_77654033_CR1_6154.dcm", "nifti/anatomical.nii", "nifti/standard.nii.gz",
        "nifti/example4d.nii.gz"]


@pytest.mark.parametrize("name", REAL)
def test_real_images_load(name):
    img = load_image(shared("images", name), size=32)
    assert img.shape == (32, 32) and img.dtype == np.float32
    assert img.min() == 0 and img.max() == 1 and img.std() > 0


def test_volume_gives_its_middle_slice():
    nib = pytest.importorskip("nibabel")
    path = shared("images", "nifti", "example4d.nii.gz")
    vol = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)       # 128 x 96 x 24 x 2
    mid = vol[:, :, vol.shape[2] // 2, 0]
    img = load_image(path, size=vol.shape[0])                              # square: rows kept 1:1
    assert np.corrcoef(img.mean(axis=1), mid.mean(axis=1))[0, 1] > 0.9


@pytest.mark.parametrize("name", ["dicom/rtplan.dcm", "dicom/test-SR.dcm"])
def test_dicom_without_pixel_data_is_a_clear_error(name):
    path = shared("images", name)
    with pytest.raises(DataError, match="no pixel data") as e:
        load_image(path)
    assert e.value.file == str(path) and e.value.field == "pixel data"


def test_rows_stay_rows_and_colour_becomes_grey(tmp_path):
    a = np.zeros((20, 40), np.uint8)
    a[:5] = 255                                     # a bright band along the top
    Image.fromarray(a).save(tmp_path / "band.png")
    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[:5] = (0, 255, 0)
    Image.fromarray(rgb).save(tmp_path / "band.jpg", quality=95)
    for name in ("band.png", "band.jpg"):
        img = load_image(tmp_path / name, size=8)
        assert img[0].mean() > 0.9 and img[-1].mean() < 0.1, name   # MONAI's default would transpose


def test_broken_files(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    good = tmp_path / "good.jpg"
    Image.fromarray((np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8)).save(good)
    (tmp_path / "trunc.jpg").write_bytes(good.read_bytes()[:300])
    (tmp_path / "garbage.jpg").write_bytes(b"\xff\xd8\xff not a jpeg at all")
    (tmp_path / "x.bmpx").write_bytes(b"abc")
    (tmp_path / "bad.dcm").write_bytes(b"\x00" * 64)
    with pytest.raises(DataError, match="empty"):
        load_image(tmp_path / "zero.jpg")
    for name in ("trunc.jpg", "garbage.jpg"):
        with pytest.raises(DataError, match="cannot decode") as e:
            load_image(tmp_path / name)
        assert e.value.file == str(tmp_path / name) and "suitable reader" not in str(e.value)
    with pytest.raises(DataError, match="unsupported"):
        load_image(tmp_path / "x.bmpx")
    with pytest.raises(DataError, match="not a DICOM"):
        load_image(tmp_path / "bad.dcm")
    d = {"image": str(good), "other": 1}
    out = LoadImageD(size=16)(d)
    assert out["image"].shape == (16, 16) and out["other"] == 1 and d["image"] == str(good)  # input not changed
    paths = [tmp_path / n for n in ("zero.jpg", "trunc.jpg", "x.bmpx", "bad.dcm", "good.jpg", "missing.png")]
    for deep in (False, True):
        res = inspect_images(paths, deep=deep)     # never raises
        assert [r["verdict"] for r in res] == ["bad"] * 4 + ["ok", "bad"]
        assert all(r["reasons"] for r in res if r["verdict"] == "bad")
    assert inspect_images([good], deep=True)[0]["shape"] == [32, 32]


def test_index_image_folder():
    idx = index_image_folder(shared("images"))
    assert set(idx["format"]) == {"png", "dicom", "nifti"} and len(idx) == 10


def _cxr(root, rows):
    """Images in the MIMIC-CXR-JPG layout; kind = a brightness level or 'corrupt'."""
    meta = []
    for sid, study, dicom, when, view, kind in rows:
        p = root / "files" / f"p{str(sid)[:2]}" / f"p{sid}" / f"s{study}"
        p.mkdir(parents=True, exist_ok=True)
        f = p / f"{dicom}.jpg"
        if kind == "corrupt":   # a whole JPEG (passes the index checks) whose Huffman table is broken
            Image.fromarray(np.full((32, 32), 99, np.uint8)).save(f, quality=95)
            b = bytearray(f.read_bytes())
            i = b.index(b"\xff\xc4")
            b[i + 5:i + 25] = b"\xff" * 20
            f.write_bytes(bytes(b))
        else:   # a bright square whose position tells the images apart
            a = np.zeros((32, 32), np.uint8)
            a[kind:kind + 8, kind:kind + 8] = 255
            Image.fromarray(a).save(f, quality=95)
        t = pd.Timestamp(when)
        meta.append({"dicom_id": dicom, "subject_id": sid, "study_id": study, "ViewPosition": view,
                     "Rows": 32, "Columns": 32, "StudyDate": int(t.strftime("%Y%m%d")),
                     "StudyTime": float(t.strftime("%H%M%S.%f"))})
    pd.DataFrame(meta).to_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    return root


def _square_at(img: np.ndarray) -> int:
    """Row of the bright square's top edge (images are 16x16 here: 32 px / 2)."""
    return int(np.flatnonzero(img.max(axis=1) > 0.5)[0]) * 2


def test_selection_rules(tmp_path):
    a, b, c = 10000001, 10000002, 10000003
    root = _cxr(tmp_path, [
        (a, 50000001, "a-early-pa", "2150-01-01 09:00:00", "PA", 0),
        (a, 50000002, "a-late-lat", "2150-01-02 07:00:00", "LATERAL", 4),
        (a, 50000003, "a-after-ap", "2150-01-02 08:00:00.5", "AP", 8),      # half a second too late
        (a, 50000004, "a-newer-ap-corrupt", "2150-01-01 12:00:00", "AP", "corrupt"),
        (b, 50000005, "b-after", "2150-01-03 00:00:00", "PA", 12),         # only an image after the time
        (c, 50000006, "c-lat", "2150-01-01 00:00:00", "LL", 16),           # no frontal: fall back
    ])
    q = Quarantine()
    idx = read_cxr_metadata(root, q)
    assert len(q) == 0 and idx["path"].iloc[0] == str(
        root / "files" / "p10" / "p10000001" / "s50000001" / "a-early-pa.jpg")
    assert idx["image_time"].iloc[2] == pd.Timestamp("2150-01-02 08:00:00.5")
    pt = pd.Timestamp("2150-01-02 08:00")
    cohort = pd.DataFrame({"subject_id": [a, b, c], "hadm_id": [1, 2, 3], "prediction_time": [pt] * 3,
                           "split": ["train"] * 3})
    out = tmp_path / "out"
    out.mkdir()
    counts = featurize_imaging(cohort, idx, ImagingConfig(size=16), out, q, n_jobs=1)
    f = pd.read_parquet(out / "features.parquet")
    imgs = np.load(out / "images.npy")
    assert list(f["hadm_id"]) == [1, 3] and f["hadm_id"].dtype == "int64"    # b: nothing known in time
    assert imgs.shape == (2, 1, 16, 16) and imgs.dtype == np.float32
    # a: frontal preferred over the later lateral; the corrupt newer frontal quarantined and skipped;
    # the image half a second after the prediction time never used
    assert f["item_time"].iloc[0] == pd.Timestamp("2150-01-01 09:00:00") and _square_at(imgs[0, 0]) == 0
    assert f["imaging__frontal"].tolist() == [1.0, 0.0] and _square_at(imgs[1, 0]) == 16
    assert len(q) == 1 and q.rows[0].row == "dicom_id=a-newer-ap-corrupt" and q.rows[0].source == "imaging"
    assert q.rows[0].file.endswith("a-newer-ap-corrupt.jpg")
    assert counts["rows"] == 2 and counts["quarantined_images"] == 1
    assert (f["item_time"] <= pt).all()
    assert {"imaging__mean", "imaging__cell_00", "imaging__central_width"} <= set(f.columns)


def test_metadata_bad_rows_and_missing_columns(tmp_path):
    root = _cxr(tmp_path, [(10000001, 50000001, "x", "2150-01-01 09:00:00", "PA", 0),
                           (10000001, 50000002, "y", "2150-01-01 10:00:00", "PA", 0)])
    meta = pd.read_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz")
    meta.loc[1, "StudyTime"] = 256161.0                       # 25:61:61 is no time
    meta.to_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    q = Quarantine()
    idx = read_cxr_metadata(root, q)
    assert list(idx["dicom_id"]) == ["x"]
    assert (q.rows[0].row, q.rows[0].field) == ("3", "StudyTime")
    meta.drop(columns=["StudyDate"]).to_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    with pytest.raises(DataError) as e:
        read_cxr_metadata(root, Quarantine())
    assert e.value.field == "StudyDate" and e.value.file.endswith("metadata.csv.gz")


def test_features_track_findings():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.1, 0.2, (64, 64)).astype(np.float32)
    effusion = base.copy()
    effusion[48:, 48:] = 0.9                                  # a white right-of-image base
    f0, f1 = image_features(base), image_features(effusion)
    assert f1["right_base_mean"] > f0["right_base_mean"] + 0.5
    assert f1["lr_asymmetry"] > f0["lr_asymmetry"] and f1["base_apex_contrast"] > f0["base_apex_contrast"]
    heart_small, heart_big = base.copy(), base.copy()
    heart_small[36:48, 28:36] = 0.9
    heart_big[36:48, 20:44] = 0.9
    assert image_features(heart_big)["central_width"] > image_features(heart_small)["central_width"] > 0


def test_image_encoder_is_small_monai_cnn():
    torch = pytest.importorskip("torch")
    net = ImageEncoder(32, 64)
    assert all(type(m).__module__.startswith("monai.networks") for m in net.trunk.children())
    assert sum(p.numel() for p in net.parameters()) < 50_000          # pooled, not a flattened map
    x = torch.rand(4, 1, 64, 64)
    assert net(x).shape == (4, 32)
    assert ImageEncoder(8, 32)(torch.rand(2, 1, 32, 32)).shape == (2, 8)   # any size the trunk can pool
    # the 2 x 2 pooling keeps where on the film a finding is: a bright base left or right differs
    left, right = torch.zeros(1, 1, 64, 64), torch.zeros(1, 1, 64, 64)
    left[..., 44:, :20], right[..., 44:, 44:] = 1.0, 1.0
    assert not torch.allclose(net(left), net(right))
