"""MIMIC-CXR-JPG metadata and image loading through MONAI dictionary transforms.

``load_image`` is the array core (path -> float32 [size, size] in [0, 1]); ``LoadImageD``
is the thin keyed wrapper that copies its input dict.  Inside, one MONAI ``Compose`` of
dictionary transforms per file type does the work: ``LoadImaged`` with an explicit
reader (PILReader for PNG/JPEG, PydicomReader for DICOM after pydicom says the file has
pixel data, NibabelReader for NIfTI), ``EnsureChannelFirstd``, the 2-D slice,
``Resized`` and ``ScaleIntensityd``.

Orientation: PNG/JPEG/DICOM arrays keep the stored row order (row 0 = top of the
image, MONAI's default would transpose them), so "upper/lower" and "left/right" in
the imaging features mean what they say.  3-D/4-D volumes give their middle slice
along the last spatial axis (of the first volume / channel); RGB becomes grayscale.
Unreadable files raise ``DataError`` naming the file and what is wrong.
"""
from __future__ import annotations

import logging
import warnings
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import pandas as pd

from data_schemas.modalities import IMAGING_INDEX
from pipeline.errors import DataError, Quarantine
from pipeline.sources.raw_checks import inside_root

# MONAI warns on every DICOM read that the GPU decoder plugin is unavailable (CPU is expected here).
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)

SOURCE = "imaging"
REQUIRED = ["dicom_id", "subject_id", "study_id", "StudyDate", "StudyTime"]
FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".dcm": "dicom", ".nii": "nifti"}
KEY = "image"
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
NOT_AN_IMAGE = "modality"   # DataError field of a file that is data of another source (a DICOM ECG)


def image_format(path: str | Path) -> str | None:
    """'png', 'jpeg', 'dicom', 'nifti' or None (unsupported) from the file name."""
    name = str(path).lower()
    if name.endswith(".nii.gz"):
        return "nifti"
    return FORMATS.get(Path(name).suffix)


# --- MIMIC-CXR-JPG metadata -------------------------------------------------------------

def metadata_path(cxr_root: Path) -> Path:
    for name in ("mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv"):
        if (Path(cxr_root) / name).exists():
            return Path(cxr_root) / name
    raise DataError("no mimic-cxr-2.0.0-metadata.csv(.gz) in the CXR folder", file=cxr_root,
                    hint="point sources.cxr at the MIMIC-CXR-JPG folder that holds files/ and the metadata")


def _study_time(date: pd.Series, time: pd.Series) -> tuple[pd.Series, pd.Series, pd.Series]:
    """StudyDate (YYYYMMDD) + StudyTime (HHMMSS.fff, leading zeros possibly dropped) ->
    timestamps; also the masks of good dates and good times."""
    ymd = date.fillna("").astype(str).str.strip().str.split(".").str[0]
    day = pd.to_datetime(ymd.where(ymd.str.fullmatch(r"\d{8}"), ""), format="%Y%m%d", errors="coerce")  # DICOM DA
    secs = pd.to_numeric(time, errors="coerce").astype("float64")     # NaN, not a masked NA over garbage
    secs = secs.where((secs >= 0) & (secs < 240000))    # HHMMSS.fff: anything else is no time of day
    whole = secs.fillna(-1).astype("int64")
    hh, mm, ss = whole // 10000, whole // 100 % 100, whole % 100
    t_ok = secs.notna() & (secs >= 0) & (hh < 24) & (mm < 60) & (ss < 60)
    offset = pd.to_timedelta(hh * 3600 + mm * 60 + ss, unit="s") + pd.to_timedelta(
        (secs - whole).clip(lower=0).round(6), unit="s")
    return day + offset.where(t_ok), day.notna(), t_ok


def read_cxr_metadata(cxr_root: Path, quarantine: Quarantine) -> pd.DataFrame:
    """``mimic-cxr-2.0.0-metadata.csv.gz`` -> the IMAGING_INDEX table (absolute .jpg paths).

    A missing required column is a ``DataError``; a row with a bad id, date or time, a
    repeated dicom_id, a path leaving the CXR folder, or an image file that is missing or
    fails ``quick_check`` is quarantined (row = line number, the header is line 1) and left
    out of the index."""
    cxr_root = Path(cxr_root).resolve()
    path = metadata_path(cxr_root)
    df = pd.read_csv(path, dtype="string", keep_default_na=False, na_values=[""])
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise DataError(f"required column(s) {missing} missing; found {list(df.columns)}", file=path,
                        field=missing[0], hint="expected the MIMIC-CXR-JPG 2.0.0 metadata file")
    sid = pd.to_numeric(df["subject_id"], errors="coerce")
    study = pd.to_numeric(df["study_id"], errors="coerce")
    when, date_ok, time_ok = _study_time(df["StudyDate"], df["StudyTime"])
    bad = pd.Series(False, index=df.index)
    checks = (("subject_id", sid.notna() & (sid > 0)), ("study_id", study.notna()),
              ("dicom_id", df["dicom_id"].notna()), ("StudyDate", date_ok), ("StudyTime", time_ok))
    for col, ok in checks:
        for i in np.flatnonzero((~ok & ~bad).to_numpy()):
            quarantine.add(SOURCE, path, int(i) + 2, col, f"missing or unparseable {col}")
        bad |= ~ok
    dup = df["dicom_id"].duplicated() & ~bad
    for i in np.flatnonzero(dup.to_numpy()):
        quarantine.add(SOURCE, path, int(i) + 2, "dicom_id", "duplicated dicom_id (later row dropped)")
    bad |= dup
    sid_s = sid.where(~bad, 0).astype("int64").astype(str)
    study_s = study.where(~bad, 0).astype("int64").astype(str)
    paths = pd.Series("", index=df.index)
    for i in np.flatnonzero((~bad).to_numpy()):  # every listed image: inside ROOT, present, not obviously broken
        s, st, d = sid_s.iloc[i], study_s.iloc[i], df["dicom_id"].iloc[i]
        try:
            p = inside_root(cxr_root, f"files/p{s[:2]}/p{s}/s{st}/{d}.jpg", field="dicom_id")
            quick_check(p)
        except DataError as e:
            quarantine.add(SOURCE, e.file or path, f"dicom_id={d} ({path.name} line {int(i) + 2})",
                           e.field or "image", e.reason)
            bad.iloc[i] = True
            continue
        paths.iloc[i] = str(p)
    df, sid, study, when, paths = df[~bad], sid[~bad], study[~bad], when[~bad], paths[~bad].tolist()
    view = df["ViewPosition"] if "ViewPosition" in df.columns else pd.Series("", index=df.index)
    out = pd.DataFrame({"subject_id": sid.astype("int64"), "study_id": study.astype("int64"),
                        "dicom_id": df["dicom_id"].astype(object), "image_time": when.astype("datetime64[ns]"),
                        "view_position": view.fillna("").str.strip().str.upper().astype(object),
                        "path": paths})
    return IMAGING_INDEX.validate(out.reset_index(drop=True), path)


def index_image_folder(folder: Path) -> pd.DataFrame:
    """Every PNG/JPEG/DICOM/NIfTI file under ``folder``: columns path, format."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and image_format(p))
    return pd.DataFrame({"path": pd.Series([str(p) for p in files], dtype=object),
                         "format": pd.Series([image_format(p) for p in files], dtype=object)})


# --- loading ------------------------------------------------------------------------------

def _to_grayscale(img, min_side: int | None = None):
    """PILReader converter: palette/colour/alpha modes -> 8-bit grayscale ('L');
    grayscale modes (L, I;16, I, F) are kept as they are.  With ``min_side`` a JPEG is
    decoded at the smallest 1/2, 1/4 or 1/8 scale that keeps both sides >= min_side
    (PIL's draft mode: a full-size MIMIC-CXR JPEG decodes ~10x faster)."""
    if min_side and img.format == "JPEG" and img.mode in ("L", "RGB", "YCbCr"):
        img.draft("L", (min_side, min_side))
    if img.mode in ("L", "I", "F") or img.mode.startswith("I;"):
        return img
    return img.convert("L")


def _reader(fmt: str, size: int | None = None):
    from monai.data import NibabelReader, PILReader, PydicomReader
    if fmt in ("png", "jpeg"):
        conv = partial(_to_grayscale, min_side=4 * size) if size else _to_grayscale
        return PILReader(converter=conv, reverse_indexing=False)
    if fmt == "dicom":
        return PydicomReader(swap_ij=False)
    return NibabelReader()


def to_slice(arr: np.ndarray) -> np.ndarray:
    """Array core: a channel-first image (C, H, W) or volume (C, H, W, D) -> [1, H, W]:
    RGB(A) -> mean of the colour channels, otherwise the first channel / volume;
    a volume -> its middle slice along the last axis."""
    a = np.asarray(arr, dtype=np.float32)
    if a.ndim == 2:
        return a[None]
    if a.ndim == 3:
        return a[:3].mean(axis=0, keepdims=True) if a.shape[0] in (3, 4) else a[:1]
    if a.ndim == 4:
        return a[:1, :, :, a.shape[3] // 2]
    raise DataError(f"expected a 2-D image or a 3-D/4-D volume, found array shape {a.shape}", field="image")


def _finite(a: np.ndarray) -> np.ndarray:
    return np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0) if not np.isfinite(a).all() else a


@lru_cache(maxsize=16)
def _pipeline(fmt: str, size: int):
    """The MONAI dictionary transforms for one file type and output size."""
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        Lambdad,
        LoadImaged,
        Resized,
        ScaleIntensityd,
    )
    return Compose([
        LoadImaged(keys=KEY, reader=_reader(fmt, size), image_only=True),
        EnsureChannelFirstd(keys=KEY),
        Lambdad(keys=KEY, func=lambda a: _finite(to_slice(a))),
        Resized(keys=KEY, spatial_size=(size, size), mode="area"),
        ScaleIntensityd(keys=KEY, minv=0.0, maxv=1.0),
    ])


MAX_PIXELS = 2 ** 27   # 134 M pixels (11,585 x 11,585); a MIMIC-CXR image has ~7 M


def _check_pixels(path: Path, shape, what: str) -> None:
    """Refuse an image whose declared size would take gigabytes to decode (a decompression bomb)."""
    n = int(np.prod([max(int(x), 0) for x in shape], dtype=object)) if len(shape) else 0
    if n > MAX_PIXELS:
        raise DataError(f"{what} declares {' x '.join(str(int(x)) for x in shape)} = {n:,} pixels, over the limit of "
                        f"{MAX_PIXELS:,} (a decompression bomb, or not a radiograph)", file=path, field="image size",
                        hint="downsample the image first, or raise imaging.MAX_PIXELS if it is genuine")


def _check_file(path: Path, fmt: str | None) -> None:
    """Cheap checks before decoding: type, presence, size, declared dimensions (decompression
    bombs), DICOM pixel data, NIfTI header."""
    if fmt is None:
        raise DataError(f"unsupported image type '{''.join(path.suffixes) or path.name}'", file=path,
                        field="image", hint="PNG, JPEG, DICOM (.dcm) or NIfTI (.nii, .nii.gz)")
    if not path.exists():
        raise DataError("image file is missing", file=path, field="image")
    if path.stat().st_size == 0:
        raise DataError("image file is empty (0 bytes)", file=path, field="image")
    if fmt == "dicom":
        import pydicom
        try:  # defer_size: large values (the pixels) are not read, only their tags
            ds = pydicom.dcmread(str(path), force=True, defer_size="1 KB")
            has_pixels = any(t in ds for t in _PIXEL_TAGS)
            dicom_like = "SOPClassUID" in ds or "Modality" in ds or has_pixels
        except Exception as e:  # pydicom raises many types for broken files
            raise DataError(f"unreadable DICOM ({type(e).__name__})", file=path, field="image") from None
        if not dicom_like:
            raise DataError("not a DICOM file (no DICOM tags found)", file=path, field="image")
        from pipeline.sources.ecg_dicom import is_ecg_dataset
        if not has_pixels and is_ecg_dataset(ds):
            raise DataError("a DICOM ECG waveform, not an image: skipped here, the ECG source reads it",
                            file=path, field=NOT_AN_IMAGE)
        if not has_pixels:
            raise DataError("DICOM has no pixel data", file=path, field="pixel data",
                            hint=f"Modality {ds.get('Modality', 'unknown')}: structured reports, RT plans and "
                                 "other non-image objects carry no image")
        try:
            dims = [int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0), int(ds.get("NumberOfFrames", 1) or 1),
                    int(ds.get("SamplesPerPixel", 1) or 1)]
        except (TypeError, ValueError):
            raise DataError("DICOM Rows/Columns/NumberOfFrames are not numbers", file=path, field="Rows") from None
        _check_pixels(path, dims, "DICOM")
    if fmt == "nifti":
        import nibabel
        try:
            shape = nibabel.load(str(path)).header.get_data_shape()
        except Exception as e:  # nibabel raises several types for broken headers
            raise DataError(f"unreadable NIfTI header ({type(e).__name__})", file=path, field="image") from None
        _check_pixels(path, shape, "NIfTI")
    if fmt in ("png", "jpeg"):
        from PIL import Image, UnidentifiedImageError
        try:
            with Image.open(path) as im:     # reads the header only
                size = im.size
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DataError(f"cannot decode image ({type(e).__name__}: {str(e)[:120]})", file=path, field="image",
                            hint="the file is corrupt, truncated or not the type its name says") from None
        except Image.DecompressionBombError:
            size = (MAX_PIXELS + 1, 1)
        _check_pixels(path, size, fmt.upper())


def _reader_error(fmt: str, path: Path) -> Exception | None:
    """The exception our explicit reader raises on ``path`` (None if it reads)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reader = _reader(fmt, 64)
            reader.get_data(reader.read(str(path)))
    except Exception as e:  # only to report it
        return e
    return None


def load_image(path: str | Path, size: int = 64) -> np.ndarray:
    """Array core: one image file -> float32 [size, size] scaled to [0, 1] (min 0, max 1;
    a constant image gives zeros; non-finite pixels count as 0).  Raises ``DataError``
    naming the file for a missing, empty, unsupported, pixel-less or undecodable file."""
    path = Path(path)
    fmt = image_format(path)
    _check_file(path, fmt)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = _pipeline(fmt, int(size))({KEY: str(path)})[KEY]
    except Exception as e:  # MONAI wraps decoder errors (PIL, pydicom, nibabel) in RuntimeError
        cause = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, DataError):
            raise DataError(cause.reason, file=path, field=cause.field) from None
        if "cannot find a suitable reader" in str(cause):  # MONAI tried its other readers too: ask ours why
            cause = _reader_error(fmt, path) or cause
        raise DataError(f"cannot decode image ({type(cause).__name__}: {str(cause)[:120]})", file=path,
                        field="image", hint="the file is corrupt, truncated or not the type its name says") from None
    return np.asarray(out, dtype=np.float32)[0]


class LoadImageD:
    """Keyed wrapper around ``load_image``: copies the dict, loads the path under ``key``."""

    def __init__(self, key: str = KEY, size: int = 64):
        self.key, self.size = key, size

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        d[self.key] = load_image(d[self.key], self.size)
        return d


# --- inspection ---------------------------------------------------------------------------

def quick_check(path: str | Path) -> None:
    """Structure checks without decoding pixels: type, size, DICOM pixel data, NIfTI
    header, JPEG/PNG start and end markers (a truncated file lacks its end marker)."""
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


def inspect_images(paths, deep: bool = False, size: int = 32) -> list[dict]:
    """Per file {"file", "verdict" ("ok"/"bad", or "skipped" for a DICOM ECG), "reasons", "shape"};
    never raises.

    ``deep`` decodes every file through MONAI (shape = the loaded [size, size] array);
    otherwise structure checks only (shape None)."""
    out = []
    for p in paths:
        rec = {"file": str(p), "verdict": "ok", "reasons": [], "shape": None}
        try:
            if deep:
                rec["shape"] = list(load_image(p, size=size).shape)
            else:
                quick_check(p)
        except DataError as e:
            rec.update(verdict="skipped" if e.field == NOT_AN_IMAGE else "bad", reasons=[e.reason])
        except Exception as e:  # a verdict for every file: an unexpected failure is a "bad" with its type
            rec.update(verdict="bad", reasons=[f"unexpected {type(e).__name__}: {str(e)[:120]}"])
        out.append(rec)
    return out
