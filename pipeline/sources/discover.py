"""Find each source by its contents at ROOT or in folders below it.

MIMIC-IV: a folder with hosp/patients and hosp/admissions (.csv.gz, .csv or .parquet);
eICU-CRD: a folder with patient (with patientunitstayid) and lab tables;
MIMIC-IV-ECG: a folder with record_list.csv; MIMIC-IV-Note: a folder with
note/radiology.csv.gz or note/discharge.csv.gz; MIMIC-CXR-JPG: a folder with
mimic-cxr-2.0.0-metadata.csv(.gz); MEDS: a folder with metadata/dataset.json and
data/ (an alternative EHR source, like eICU).  Plain folders of WFDB records or of images
(no index files) are reported too, for ``mmpipe inspect``, and so are folders of DICOM
ECG waveforms (Modality ECG; they are an ECG source when no record_list.csv is found).  Two candidates for
one source is an error that lists both; a config may name each path instead.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import SourcePaths
from pipeline.errors import DataError
from pipeline.sources.eicu import is_eicu
from pipeline.sources.tables import find_table

SOURCES = ("mimic_iv", "eicu", "meds", "ecg", "notes", "cxr")
EHR_ALTERNATIVES = ("eicu", "meds")  # EHR sources other than MIMIC-IV, listed only when found
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".dcm", ".nii", ".nii.gz")
_SKIP_DIRS = {".git", "__pycache__", ".venv", "node_modules"}
MAX_DEPTH = 7
DICOM_PEEK = 50   # .dcm files per folder whose tags are read to tell DICOM ECGs from images


def _is_mimic_iv(d: Path) -> bool:
    return any(find_table(d / sub, "patients") and find_table(d / sub, "admissions") for sub in ("hosp", "core"))


def _is_ecg(d: Path) -> bool:
    return (d / "record_list.csv").exists() or (d / "record_list.csv.gz").exists()


def _is_notes(d: Path) -> bool:
    return any(find_table(d / "note", n) for n in ("radiology", "discharge"))


def _is_cxr(d: Path) -> bool:
    return (d / "mimic-cxr-2.0.0-metadata.csv.gz").exists() or (d / "mimic-cxr-2.0.0-metadata.csv").exists()


def _is_eicu(d: Path) -> bool:
    return is_eicu(d)


def _is_meds(d: Path) -> bool:
    from pipeline.sources.meds import is_meds
    return is_meds(d)


_TESTS = {"mimic_iv": _is_mimic_iv, "eicu": _is_eicu, "meds": _is_meds, "ecg": _is_ecg, "notes": _is_notes,
          "cxr": _is_cxr}


@dataclass
class Sources:
    root: Path | None
    paths: dict[str, Path | None]
    wfdb_folders: list[Path] = field(default_factory=list)
    image_folders: list[Path] = field(default_factory=list)
    dicom_ecg_folders: list[Path] = field(default_factory=list)

    @property
    def found(self) -> list[str]:
        return [k for k, v in self.paths.items() if v is not None]

    @property
    def absent(self) -> list[str]:
        """Absent sources.  eICU and MEDS are alternative EHR sources: a missing EHR shows as mimic_iv absent."""
        return [k for k, v in self.paths.items() if v is None and k not in EHR_ALTERNATIVES]

    def describe(self) -> str:
        lines = [f"  {k:9s} {'found at ' + str(v) if v else 'absent'}" for k, v in self.paths.items()
                 if v or k not in EHR_ALTERNATIVES]
        return "sources:\n" + "\n".join(lines)

    def to_json(self) -> dict:
        return {"root": str(self.root) if self.root else None,
                "found": {k: str(v) for k, v in self.paths.items() if v},
                "absent": self.absent,
                "wfdb_folders": [str(p) for p in self.wfdb_folders],
                "image_folders": [str(p) for p in self.image_folders],
                "dicom_ecg_folders": [str(p) for p in self.dicom_ecg_folders]}


def _split_dicom_ecgs(d: Path, files: list[str]) -> tuple[int, int]:
    """(DICOM ECGs, other image files) among a folder's files; the tags of at most
    DICOM_PEEK .dcm files are read (the rest count as images)."""
    from pipeline.sources.ecg_dicom import is_dicom_ecg
    images = [f for f in files if f.lower().endswith(IMAGE_EXTS)]
    dcm = [f for f in images if f.lower().endswith(".dcm")]
    ecgs = sum(is_dicom_ecg(d / f) for f in dcm[:DICOM_PEEK])
    return ecgs, len(images) - ecgs


def _walk(root: Path):
    root_depth = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        depth = len(d.parts) - root_depth
        # The waveform/image tree files/ of an ECG or CXR source is huge and holds no index files.
        skip_files = _is_ecg(d) or _is_cxr(d)
        dirnames[:] = sorted(n for n in dirnames if n not in _SKIP_DIRS and not n.startswith(".")
                             and not (skip_files and n == "files"))
        if depth >= MAX_DEPTH:
            dirnames[:] = []
        yield d, dirnames, filenames


def discover(root: Path | None, explicit: SourcePaths | None = None) -> Sources:
    """Locate every source under ``root`` (paths named in ``explicit`` win)."""
    explicit = explicit or SourcePaths()
    if root is not None:
        root = Path(root)
        if not root.exists():
            raise DataError("data folder does not exist", file=root, hint="pass --data with an existing folder")
        if not root.is_dir():
            raise DataError("data path is not a folder", file=root)
    candidates: dict[str, list[Path]] = {s: [] for s in SOURCES}
    wfdb_folders: list[Path] = []
    image_folders: list[Path] = []
    dicom_ecg_folders: list[Path] = []
    if root is not None:
        # A hosp/ or note/ folder given directly counts as its parent.
        if root.name in ("hosp", "core") and _is_mimic_iv(root.parent):
            candidates["mimic_iv"].append(root.parent)
        if root.name == "note" and _is_notes(root.parent):
            candidates["notes"].append(root.parent)
        for d, _dirs, files in _walk(root):
            for s, test in _TESTS.items():
                if test(d) and d not in candidates[s]:
                    candidates[s].append(d)
            if any(f.endswith(".hea") for f in files) and not any(d.is_relative_to(c) for c in candidates["ecg"]):
                wfdb_folders.append(d)
            ecgs, others = _split_dicom_ecgs(d, files)
            if ecgs and not any(d.is_relative_to(c) for c in candidates["ecg"]):
                dicom_ecg_folders.append(d)
            if others:
                image_folders.append(d)
    paths: dict[str, Path | None] = {}
    for s in SOURCES:
        given = getattr(explicit, s)
        if given is not None:
            given = Path(given)
            if not _TESTS[s](given):
                raise DataError(f"configured path for source '{s}' does not look like one",
                                file=given, field=f"sources.{s}")
            paths[s] = given
            continue
        found = candidates[s]
        if len(found) > 1:
            raise DataError(f"two or more candidates for source '{s}': " + ", ".join(map(str, found)),
                            file=root, field=f"sources.{s}",
                            hint=f"name one in the config under sources.{s}, or point --data lower")
        paths[s] = found[0] if found else None
    ehr = [f"{k} at {paths[k]}" for k in ("mimic_iv",) + EHR_ALTERNATIVES if paths[k]]
    if len(ehr) > 1:
        raise DataError("two EHR sources found: " + " and ".join(ehr),
                        file=root, field="sources", hint="point --data at one, or name one in the config")
    return Sources(root=root, paths=paths, wfdb_folders=wfdb_folders, image_folders=image_folders,
                   dicom_ecg_folders=dicom_ecg_folders)
