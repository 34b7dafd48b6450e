"""MIMIC-CXR-JPG metadata and image loading through MONAI readers.

``load_image`` is the array core (path -> float32 [size, size] in [0, 1]); ``LoadImageD``
is the thin keyed wrapper.  PNG/JPEG go through MONAI's PILReader, DICOM through
PydicomReader (after pydicom says the file has pixel data), NIfTI through
NibabelReader.  3-D/4-D volumes give their middle slice (first volume); RGB becomes
grayscale.  Unreadable files raise ``DataError`` naming the file and what is wrong.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from data_schemas.modalities import IMAGING_INDEX
from pipeline.errors import DataError, Quarantine

# MONAI warns on every DICOM read that the GPU decoder plugin is unavailable (CPU is expected here).
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)

SOURCE = "imaging"
REQUIRED = ["dicom_id", "subject_id", "study_id", "StudyDate", "StudyTime"]
FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".dcm": "dicom", ".nii": "nifti", ".gz": "nifti"}


def image_format(path: Path) -> str | None:
    name = str(path).lower()
    if name.endswith(".nii.gz"):
        return "nifti"
    return FORMATS.get(Path(name).suffix) if not name.endswith(".gz") else None


def metadata_path(cxr_root: Path) -> Path:
    for name in ("mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv"):
        if (Path(cxr_root) / name).exists():
            return Path(cxr_root) / name
    raise DataError("no mimic-cxr-2.0.0-metadata.csv(.gz) in the CXR folder", file=cxr_root)


def read_cxr_metadata(cxr_root: Path, quarantine: Quarantine) -> pd.DataFrame:
    cxr_root = Path(cxr_root)
    path = metadata_path(cxr_root)
    df = pd.read_csv(path, dtype="string", keep_default_na=False, na_values=[""])
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise DataError(f"required column(s) {missing} missing; found {list(df.columns)}", file=path,
                        field=missing[0])
    sid = pd.to_numeric(df["subject_id"], errors="coerce")
    study = pd.to_numeric(df["study_id"], errors="coerce")
    date = df["StudyDate"].fillna("").str.split(".").str[0]
    tm = df["StudyTime"].fillna("0").str.split(".").str[0].str.zfill(6)
    when = pd.to_datetime(date + tm, format="%Y%m%d%H%M%S", errors="coerce")
    bad = pd.Series(False, index=df.index)
    for col, ok in (("subject_id", sid.notna()), ("study_id", study.notna()), ("dicom_id", df["dicom_id"].notna()),
                    ("StudyDate", when.notna())):
        for i in np.flatnonzero((~ok & ~bad).to_numpy()):
            quarantine.add(SOURCE, path, int(i) + 2, col, f"missing or unparseable {col}")
        bad |= ~ok
    dup = df["dicom_id"].duplicated() & ~bad
    for i in np.flatnonzero(dup.to_numpy()):
        quarantine.add(SOURCE, path, int(i) + 2, "dicom_id", "duplicated dicom_id")
    bad |= dup
    df, sid, study, when = df[~bad], sid[~bad], study[~bad], when[~bad]
    files = cxr_root / "files"
    paths = [str(files / f"p{s[:2]}" / f"p{s}" / f"s{st}" / f"{d}.jpg")
             for s, st, d in zip(sid.astype("int64").astype(str), study.astype("int64").astype(str), df["dicom_id"])]
    out = pd.DataFrame({"subject_id": sid.astype("int64"), "study_id": study.astype("int64"),
                        "dicom_id": df["dicom_id"].astype(object), "image_time": when.astype("datetime64[ns]"),
                        "view_position": (df["ViewPosition"] if "ViewPosition" in df.columns
                                          else pd.Series("", index=df.index)).fillna("").astype(object),
                        "path": paths})
    return IMAGING_INDEX.validate(out.reset_index(drop=True), path)


def index_image_folder(folder: Path) -> pd.DataFrame:
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and image_format(p))
    return pd.DataFrame({"path": [str(p) for p in files], "format": [image_format(p) for p in files]})


def _reader(fmt: str):
    from monai.data import NibabelReader, PILReader, PydicomReader
    return {"png": PILReader, "jpeg": PILReader, "dicom": PydicomReader, "nifti": NibabelReader}[fmt]()


def _check_file(path: Path, fmt: str | None) -> None:
    if fmt is None:
        raise DataError(f"unsupported image type '{path.suffix}'", file=path, field="image",
                        hint="PNG, JPEG, DICOM (.dcm) or NIfTI (.nii, .nii.gz)")
    if not path.exists():
        raise DataError("image file is missing", file=path, field="image")
    if path.stat().st_size == 0:
        raise DataError("image file is empty (0 bytes)", file=path, field="image")
    if fmt == "dicom":
        import pydicom
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
        except Exception as e:  # pydicom raises many types for broken files
            raise DataError(f"unreadable DICOM: {type(e).__name__}", file=path, field="image") from None
        if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            # stop_before_pixels hides the tag: look again cheaply at the full file's tags
            full = pydicom.dcmread(str(path), force=True, defer_size="1 KB")
            if "PixelData" not in full and "FloatPixelData" not in full and "DoubleFloatPixelData" not in full:
                raise DataError("DICOM has no pixel data", file=path, field="pixel data",
                                hint="structured reports and RT plans carry no image")


def to_slice(arr: np.ndarray) -> np.ndarray:
    """Channel-first MONAI array -> one 2-D grayscale slice."""
    a = np.asarray(arr, dtype=np.float32)
    if a.ndim == 3:       # C, H, W  (C = 1, 3 or 4)
        return a[:3].mean(axis=0) if a.shape[0] in (3, 4) else a[0]
    if a.ndim == 4:       # C, H, W, D: first channel/volume, middle slice
        return a[0][:, :, a.shape[3] // 2]
    if a.ndim == 2:
        return a
    raise ValueError(f"unexpected image shape {a.shape}")


def load_image(path: str | Path, size: int = 64) -> np.ndarray:
    """Array core: one image file -> float32 [size, size] scaled to [0, 1]."""
    from monai.transforms import EnsureChannelFirst, LoadImage, Resize, ScaleIntensity
    path = Path(path)
    fmt = image_format(path)
    _check_file(path, fmt)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = LoadImage(reader=_reader(fmt), image_only=True)(str(path))
            img = EnsureChannelFirst()(img)
            arr = to_slice(np.asarray(img))
    except DataError:
        raise
    except Exception as e:  # MONAI wraps decoder errors in several types
        raise DataError(f"cannot decode image ({type(e).__name__}: {str(e)[:120]})", file=path,
                        field="image") from None
    if not np.isfinite(arr).all():
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    out = Resize((size, size))(arr[None])
    out = ScaleIntensity(minv=0.0, maxv=1.0)(out)
    return np.asarray(out, dtype=np.float32)[0]


class LoadImageD:
    """Keyed wrapper: copies the dict and puts the loaded array under ``key``."""

    def __init__(self, key: str = "image", size: int = 64):
        self.key, self.size = key, size

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        d[self.key] = load_image(d[self.key], self.size)
        return d


def quick_check(path: str | Path) -> None:
    """Structure checks without decoding pixels: type, size, JPEG/PNG start and end
    markers (a truncated file lacks its end marker), DICOM pixel data, NIfTI header."""
    path = Path(path)
    fmt = image_format(path)
    _check_file(path, fmt)
    if fmt in ("jpeg", "png"):
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(max(0, path.stat().st_size - 12))
            tail = f.read()
        if fmt == "jpeg" and (not head.startswith(b"\xff\xd8") or b"\xff\xd9" not in tail):
            raise DataError("JPEG is truncated or corrupt (missing start/end marker)", file=path, field="image")
        if fmt == "png" and (not head.startswith(b"\x89PNG") or b"IEND" not in tail):
            raise DataError("PNG is truncated or corrupt (missing signature/IEND)", file=path, field="image")
    elif fmt == "nifti":
        import nibabel
        try:
            nibabel.load(str(path)).header.get_data_shape()
        except Exception as e:  # nibabel raises several types for broken headers
            raise DataError(f"unreadable NIfTI header ({type(e).__name__})", file=path, field="image") from None


def inspect_images(paths, deep: bool = False) -> list[dict]:
    """Per file a verdict; ``deep`` decodes through MONAI, otherwise structure checks only."""
    out = []
    for p in paths:
        try:
            shape = list(load_image(p, size=32).shape) if deep else None
            if not deep:
                quick_check(p)
            out.append({"file": str(p), "verdict": "ok", "reasons": [], "shape": shape})
        except DataError as e:
            out.append({"file": str(p), "verdict": "bad", "reasons": [e.reason], "shape": None})
    return out
