"""DICOM waveform ECGs (12-lead, General and Ambulatory ECG Waveform Storage) for the ECG stage.

Hospital ECG carts commonly export a DICOM file whose WaveformSequence holds one or more
multiplex groups (typically RHYTHM, 10 s of every lead, and MEDIAN BEAT).  ``read_dicom_ecg``
turns one into what ``pipeline.sources.ecg`` reads from a WFDB record: a header-like object
(fs, signal names, gains, baselines, units) and the raw digital samples, so a DICOM ECG goes
through exactly the same lead mapping, QC (NaN, flat, saturated leads), baseline removal,
resampling, features and tensors as a WFDB record.

* Multiplex group: the one labelled RHYTHM, else the longest; a MEDIAN BEAT group is never
  used as the record (it is one averaged beat).  The others are named in an info reason.
* Lead names: from each channel's ChannelSourceSequence code (SCP-ECG ``5.6.3-9-N`` or MDC
  ``2:N``), else its code meaning or ChannelLabel with a "(Einthoven)"-style note removed,
  then the WFDB name rules (so "Lead V1", "MCL1", "V" behave as documented in ecg.py).
* Scaling: value = raw * ChannelSensitivity * ChannelSensitivityCorrectionFactor +
  ChannelBaseline, in ChannelSensitivityUnits (uV, mV, V).
* Not a waveform DICOM, a compressed (mu-law/A-law) or unknown sample interpretation, or
  a truncated WaveformData: ``DataError`` naming the file.

``index_dicom_ecg_folder`` lists a folder of DICOM ECGs as an ECG index, taking subject_id
from PatientID (when it is an integer) and ecg_time from AcquisitionDateTime (else
ContentDate + ContentTime, else StudyDate + StudyTime); a file without them is quarantined.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data_schemas.modalities import ECG_INDEX
from pipeline.errors import DataError, Quarantine

# SOP classes of ECG waveforms (DICOM PS3.4 B.5)
ECG_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.9.1.1": "12-lead ECG Waveform Storage",
    "1.2.840.10008.5.1.4.1.1.9.1.2": "General ECG Waveform Storage",
    "1.2.840.10008.5.1.4.1.1.9.1.3": "Ambulatory ECG Waveform Storage",
}
# lead number N of SCP-ECG "5.6.3-9-N" and MDC "2:N" codes -> standard lead
_LEAD_CODE = {1: "I", 2: "II", 61: "III", 62: "aVR", 63: "aVL", 64: "aVF",
              3: "V1", 4: "V2", 5: "V3", 6: "V4", 7: "V5", 8: "V6"}
_DTYPES = {(8, "SB"): np.int8, (8, "UB"): np.uint8, (16, "SS"): np.int16, (16, "US"): np.uint16,
           (32, "SL"): np.int32, (32, "UL"): np.uint32}
_UNITS = {"uv": "uV", "mv": "mV", "v": "V", "nv": "nV"}


@dataclass
class DicomECGHeader:
    """The fields of a ``wfdb.Record`` header that the ECG loader reads."""
    fs: float
    sig_len: int
    sig_name: list[str]
    units: list[str]
    adc_gain: list[float]
    baseline: list[float]
    fmt: list[str]
    adc_res: list[int]
    adc_zero: list[int]
    group: str

    @property
    def n_sig(self) -> int:
        return len(self.sig_name)


def is_dicom_path(path) -> bool:
    return str(path).lower().endswith(".dcm")


def _read_dataset(path: Path, header_only: bool = False):
    import pydicom
    try:
        return pydicom.dcmread(str(path), force=True, defer_size="1 KB" if header_only else None)
    except Exception as e:  # pydicom raises many types for broken files
        raise DataError(f"unreadable DICOM ({type(e).__name__}: {str(e)[:120]})", file=path, field="dicom") from None


def is_ecg_dataset(ds) -> bool:
    """A waveform DICOM holding an ECG: Modality ECG, or an ECG waveform SOP class."""
    return str(ds.get("Modality", "")).upper() == "ECG" or str(ds.get("SOPClassUID", "")) in ECG_SOP_CLASSES


def is_dicom_ecg(path) -> bool:
    """True when ``path`` is a readable DICOM ECG (tags only; the samples are not read)."""
    if not is_dicom_path(path) or not Path(path).is_file():
        return False
    try:
        return is_ecg_dataset(_read_dataset(Path(path), header_only=True))
    except DataError:
        return False


def check_dicom_ecg_file(path: Path) -> None:
    """Cheap check of one listed DICOM ECG (tags only): present, readable, an ECG waveform.
    Raises ``DataError`` naming the file."""
    if not Path(path).is_file():
        raise DataError("listed DICOM ECG file not found", file=path, field="path",
                        hint="copy the .dcm file under the ECG folder or fix its path in record_list.csv")
    if not is_ecg_dataset(_read_dataset(Path(path), header_only=True)):
        raise DataError("listed file is a DICOM but not an ECG waveform (Modality/SOP class)", file=path,
                        field="Modality", hint="list only 12-lead ECG waveform DICOMs in record_list.csv")


def _lead_name(ch) -> str:
    """A channel's lead name: from its source code, else its code meaning / label, tidied."""
    src = (ch.get("ChannelSourceSequence") or [None])[0]
    code = str(src.get("CodeValue", "")) if src is not None else ""
    m = re.fullmatch(r"(?:5\.6\.3-9-|2:)(\d+)", code)
    if m and int(m.group(1)) in _LEAD_CODE:
        return _LEAD_CODE[int(m.group(1))]
    name = str(src.get("CodeMeaning", "")) if src is not None else ""
    name = name or str(ch.get("ChannelLabel", "")) or code or "unnamed"
    return re.sub(r"\s*\(.*?\)\s*", " ", name).strip()


def _unit(ch) -> str:
    seq = ch.get("ChannelSensitivityUnitsSequence") or []
    if not seq:
        return ""
    raw = str(seq[0].get("CodeValue", "")).strip()
    return _UNITS.get(raw.lower(), raw)


def _pick_group(ds, path: Path) -> tuple[int, str]:
    """(index, info text) of the multiplex group used as the record."""
    groups = list(ds.get("WaveformSequence") or [])
    if not groups:
        raise DataError("DICOM has no WaveformSequence: not a waveform ECG", file=path, field="WaveformSequence",
                        hint=f"Modality {ds.get('Modality', 'unknown')}; an ECG export holds its leads there")
    labels = [str(g.get("MultiplexGroupLabel", "") or f"group {i}").strip() for i, g in enumerate(groups)]

    def length(i):
        g = groups[i]
        return float(g.get("NumberOfWaveformSamples", 0) or 0) / float(g.get("SamplingFrequency", 1) or 1)
    usable = [i for i, lab in enumerate(labels) if "MEDIAN" not in lab.upper()]
    if not usable:
        raise DataError(f"DICOM ECG holds only median-beat groups ({', '.join(labels)}), no rhythm",
                        file=path, field="WaveformSequence")
    rhythm = [i for i in usable if "RHYTHM" in labels[i].upper()]
    best = rhythm[0] if rhythm else max(usable, key=length)
    others = [lab for i, lab in enumerate(labels) if i != best]
    text = f"DICOM multiplex group {labels[best]!r} used" + (f" (not used: {', '.join(others)})" if others else "")
    return best, text


def read_dicom_ecg(path: Path, seconds: float):
    """The ``_read`` tuple of ``pipeline.sources.ecg`` for a DICOM ECG:
    (header, sig_len, digital samples of the mapped channels or None, chans, leads, ignored, issues)."""
    from pipeline.sources.ecg_leads import Issue, _map_signals
    path = Path(path)
    if not path.exists():
        raise DataError("DICOM ECG file not found", file=path, field="path")
    ds = _read_dataset(path)
    idx, group_text = _pick_group(ds, path)
    g = ds.WaveformSequence[idx]
    need = ["NumberOfWaveformChannels", "NumberOfWaveformSamples", "SamplingFrequency",
            "WaveformBitsAllocated", "WaveformSampleInterpretation", "WaveformData", "ChannelDefinitionSequence"]
    missing = [k for k in need if k not in g]
    if missing:
        raise DataError(f"waveform group {idx} lacks {', '.join(missing)}", file=path, field=missing[0])
    n_ch, n_samp = int(g.NumberOfWaveformChannels), int(g.NumberOfWaveformSamples)
    fs, bits, interp = float(g.SamplingFrequency), int(g.WaveformBitsAllocated), str(g.WaveformSampleInterpretation)
    if fs <= 0:
        raise DataError(f"sampling frequency {fs!r} is not positive", file=path, field="SamplingFrequency")
    dtype = _DTYPES.get((bits, interp))
    if dtype is None:
        raise DataError(f"waveform sample interpretation {interp} with {bits} bits is not supported", file=path,
                        field="WaveformSampleInterpretation", hint="expected SS/US/SB/UB/SL/UL (not mu-law/A-law)")
    chans = list(g.ChannelDefinitionSequence)
    if len(chans) != n_ch:
        raise DataError(f"NumberOfWaveformChannels is {n_ch} but {len(chans)} channels are defined", file=path,
                        field="ChannelDefinitionSequence")
    raw = bytes(g.WaveformData)
    want = n_ch * n_samp * np.dtype(dtype).itemsize
    if len(raw) < want:
        raise DataError(f"WaveformData is truncated: {len(raw)} bytes, {want} expected ({n_ch} channels x "
                        f"{n_samp} samples x {bits} bits)", file=path, field="WaveformData")
    d = np.frombuffer(raw[:want], dtype=np.dtype(dtype).newbyteorder("<" if ds.is_little_endian in (True, None)
                                                                   else ">")).reshape(n_samp, n_ch)
    d = d.astype(np.int64 if dtype == np.uint32 else np.int32 if bits > 8 else np.int16)

    scale = np.array([float(c.get("ChannelSensitivity", 1.0) or 1.0)
                      * float(c.get("ChannelSensitivityCorrectionFactor", 1.0) or 1.0) for c in chans])
    if (scale == 0).any():
        raise DataError("a channel has ChannelSensitivity 0", file=path, field="ChannelSensitivity")
    offset = np.array([float(c.get("ChannelBaseline", 0.0) or 0.0) for c in chans])
    hdr = DicomECGHeader(
        fs=fs, sig_len=n_samp, sig_name=[_lead_name(c) for c in chans], units=[_unit(c) for c in chans],
        # WFDB's physical = (digital - baseline) / gain; DICOM's = digital * scale + offset
        adc_gain=list(1.0 / scale), baseline=list(-offset / scale), fmt=[str(bits)] * n_ch,
        adc_res=[bits] * n_ch, adc_zero=[0] * n_ch, group=str(g.get("MultiplexGroupLabel", "")))
    mapped, leads, ignored, issues = _map_signals(hdr)
    issues = [Issue("info", "group", group_text), *issues]
    if not mapped:
        return hdr, n_samp, None, mapped, leads, ignored, issues
    n_want = int(np.ceil(seconds * fs))
    return hdr, n_samp, d[:n_want, mapped], mapped, leads, ignored, issues


# ---------------------------------------------------------------- a folder of DICOM ECGs

def _when(ds) -> pd.Timestamp | None:
    """Acquisition time: AcquisitionDateTime, else ContentDate+Time, else StudyDate+Time."""
    cands = [str(ds.get("AcquisitionDateTime", "") or "")]
    for d, t in (("ContentDate", "ContentTime"), ("StudyDate", "StudyTime"), ("AcquisitionDate", "AcquisitionTime")):
        if ds.get(d):
            cands.append(str(ds.get(d)) + str(ds.get(t, "") or "").split(".")[0].ljust(6, "0"))
    for c in cands:
        c = re.split(r"[+-]", c.split(".")[0])[0]     # drop fractions and a UTC offset
        if len(c) >= 8:
            ts = pd.to_datetime(c[:14].ljust(14, "0"), format="%Y%m%d%H%M%S", errors="coerce")
            if not pd.isna(ts):
                return ts
    return None


def _study_id(ds, path: Path) -> int:
    """A stable 62-bit id from SOPInstanceUID (else the file name)."""
    key = str(ds.get("SOPInstanceUID", "") or path.name)
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") >> 2


def list_dicom_ecgs(folder: Path) -> list[Path]:
    """Every DICOM ECG under ``folder`` (recursive; other DICOMs are left out)."""
    return sorted(p for p in Path(folder).resolve().rglob("*") if p.is_file() and is_dicom_ecg(p))


def index_dicom_ecg_folder(folder: Path, quarantine: Quarantine | None = None) -> pd.DataFrame:
    """ECG index of a folder of DICOM ECGs (ids and time from the tags; see module doc).
    Without ``quarantine`` the ids and time may be null (for inspection)."""
    rows = []
    for p in list_dicom_ecgs(folder):
        ds = _read_dataset(p, header_only=True)
        pid = str(ds.get("PatientID", "") or "").strip()
        sid = int(pid) if pid.isdigit() else None
        when = _when(ds)
        if quarantine is not None and (sid is None or when is None):
            what = (f"PatientID {pid!r} is not an integer subject_id" if sid is None
                    else "no AcquisitionDateTime, ContentDate/Time or StudyDate/Time")
            quarantine.add("ecg", p, None, "PatientID" if sid is None else "AcquisitionDateTime", what)
            continue
        rows.append({"subject_id": sid, "study_id": _study_id(ds, p), "ecg_time": when, "path": str(p)})
    out = pd.DataFrame(rows, columns=["subject_id", "study_id", "ecg_time", "path"])
    out["subject_id"] = out["subject_id"].astype("Int64")
    out["study_id"] = out["study_id"].astype("Int64")
    out["ecg_time"] = pd.to_datetime(out["ecg_time"]).astype("datetime64[ns]")
    out["path"] = out["path"].astype(object)
    if quarantine is not None:
        out = out.astype({"subject_id": "int64", "study_id": "int64"})
        ECG_INDEX.validate(out, Path(folder))
    return out


def index_dicom_ecg_folders(folders: list[Path], quarantine: Quarantine) -> pd.DataFrame:
    """The ECG index of several DICOM ECG folders (a file found twice is listed once)."""
    if not folders:
        raise DataError("no DICOM ECG folder given", field="sources.ecg")
    out = pd.concat([index_dicom_ecg_folder(f, quarantine) for f in folders], ignore_index=True)
    return out.drop_duplicates("path").reset_index(drop=True)
