"""MIMIC-IV-ECG (or any WFDB record) into a fixed 12-lead tensor, with quality control.

``read_record_list`` turns MIMIC-IV-ECG's ``record_list.csv`` into the ECG_INDEX
table; ``index_wfdb_folder`` lists a plain folder of WFDB records; ``load_ecg``
reads one record into ``ECGRecord`` (float32 [12, fs*seconds] in mV, standard
lead order, a lead mask, and a verdict with its reasons); ``inspect_ecg`` gives
one verdict per record and never raises.

Policy (what ``load_ecg`` does with an imperfect record):

* Leads are mapped by name, case-insensitively: ``I II III aVR aVL aVF V1..V6``,
  with the aliases MLI/MLII/MLIII (MIT-BIH modified limb leads), DI/DII/DIII and
  D1/D2/D3 (European notation) and a ``lead`` prefix ("Lead II").  MCL1 (modified
  chest lead 1, Holter / telemetry) is used as V1 with a warn reason (it approximates
  V1).  A bare ``V`` (a precordial lead of unknown position, e.g. PhysioNet Challenge
  2015) is not mapped and gets its own reason, nor are ``ECG 1``, Frank leads
  ``vx vy vz``, PLETH, RESP, ...: they are listed in ``ignored_signals`` and in the reasons.
* A ``.dcm`` path is a DICOM waveform ECG, read by ``pipeline.sources.ecg_dicom`` into the
  same form (and then the same QC as a WFDB record).
* Fewer than 12 usable leads: used with its lead mask (verdict warn), unless
  fewer than ``min_leads`` remain (bad).  No mappable ECG lead at all: bad.
* Sampling rate other than ``fs``: resampled with ``scipy.signal.resample_poly``
  (warn).  Longer than ``seconds``: the first ``seconds`` are kept (info).
  Shorter: zero-padded at the end (warn), or bad when under half of ``seconds``.
* Baseline wander: removed by a zero-phase 0.5 Hz high-pass (Butterworth order 2,
  applied forwards and backwards).
* NaN samples (WFDB's invalid-sample code): filled with 0 (warn); a lead that is
  all NaN, or flat (std < 0.01 mV, lead off), is masked (warn).
* Saturation: runs at the format's or ADC's digital limits (>= 40 ms), or a
  plateau at the lead's own extreme far from its median (>= 80 ms): warn.
* Unreadable header, missing or truncated signal file, a header whose signal
  count disagrees with its signal lines or with the file size: ``DataError``
  naming the file.  A missing signal file that holds only ignored signals (e.g.
  PTB's ``.xyz`` Frank leads) is reported (info) and does not stop the read.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import wfdb
from scipy import signal as sps

from data_schemas.modalities import ECG_INDEX
from pipeline.errors import DataError, Quarantine
from pipeline.sources.ecg_leads import (LEAD_INDEX, STANDARD_LEADS, _VOLT_UNITS, Issue,  # noqa: F401
                                        _lead_key, _map_signals, map_lead, unnamed)
from pipeline.sources import wfdb_plain
from pipeline.sources.raw_checks import inside_root
from pipeline.sources.zero_phase import ZeroPhase

SOURCE = "ecg"
# WFDB signal formats: bytes per sample, digital range, and the invalid-sample (NaN) code.
# https://www.physionet.org/physiotools/wag/signal-5.htm
_BYTES_PER_SAMPLE = {"8": 1, "16": 2, "24": 3, "32": 4, "61": 2, "80": 1, "160": 2, "212": 1.5,
                     "310": 4 / 3, "311": 4 / 3}
_FMT_BITS = {"8": 8, "16": 16, "24": 24, "32": 32, "61": 16, "80": 8, "160": 16, "212": 12, "310": 10,
             "311": 10, "508": 8, "516": 16, "524": 24}
_NO_INVALID_CODE = {"8"}          # format 8 stores differences; it has no invalid-sample code

FLAT_MV = 0.01                    # a lead with std below this (mV) is flat / lead off
HIGHPASS_HZ = 0.5
SATURATION_AT_LIMIT_S = 0.04      # run length at a digital limit that counts as saturation
SATURATION_PLATEAU_S = 0.08       # run length at the lead's own extreme (away from its median)
PLATEAU_MIN_MV = 0.3


@dataclass
class ECGRecord:
    """One record in standard form.  ``verdict`` is the worst issue's severity (info counts as ok)."""
    path: str
    signal: np.ndarray              # float32 [12, fs*seconds], mV, STANDARD_LEADS order, absent leads 0
    lead_mask: np.ndarray           # bool [12]
    fs: int
    fs_orig: float
    n_samples_orig: int
    leads_found: list[str]          # original names of the mapped leads
    ignored_signals: list[str]      # original names of signals not used
    issues: list[Issue] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        sev = {i.severity for i in self.issues}
        return "bad" if "bad" in sev else "warn" if "warn" in sev else "ok"

    @property
    def reasons(self) -> list[str]:
        return [i.text for i in self.issues]

    @property
    def problem(self) -> Issue | None:
        """The first issue of the worst severity (names the field for a quarantine row)."""
        for sev in ("bad", "warn"):
            for i in self.issues:
                if i.severity == sev:
                    return i
        return None

    @property
    def n_leads(self) -> int:
        return int(self.lead_mask.sum())

    @property
    def seconds_orig(self) -> float:
        return self.n_samples_orig / self.fs_orig if self.fs_orig else 0.0


# ---------------------------------------------------------------- index tables

def _record_list_path(ecg_root: Path) -> Path:
    for name in ("record_list.csv", "record_list.csv.gz"):
        if (Path(ecg_root) / name).exists():
            return Path(ecg_root) / name
    raise DataError("record_list.csv(.gz) not found", file=Path(ecg_root) / "record_list.csv", field="record_list",
                    hint="point the ECG source at the MIMIC-IV-ECG folder that holds record_list.csv and files/")


def read_record_list(ecg_root: Path, quarantine: Quarantine) -> pd.DataFrame:
    """MIMIC-IV-ECG ``record_list.csv`` -> ECG_INDEX (subject_id, study_id, ecg_time, absolute path).

    A missing column raises ``DataError``; a row with a missing or unparseable
    id or time, or a repeated study_id, goes to ``quarantine`` (row = line number).
    """
    ecg_root = Path(ecg_root).resolve()
    path = _record_list_path(ecg_root)
    df = pd.read_csv(path, dtype="string", keep_default_na=False, na_values=[""])
    required = ["subject_id", "study_id", "ecg_time", "path"]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"required column(s) {missing} missing; found {list(df.columns)}", file=path,
                        field=missing[0], hint="expected MIMIC-IV-ECG's subject_id,study_id,file_name,ecg_time,path")
    line = np.arange(len(df)) + 2                      # 1-based, after the header line
    bad = np.zeros(len(df), bool)
    conv = {}
    for col, kind in (("subject_id", "int"), ("study_id", "int"), ("ecg_time", "datetime"), ("path", "str")):
        raw = df[col]
        if kind == "int":
            val = pd.to_numeric(raw, errors="coerce")
            val = val.where(val % 1 == 0)
        elif kind == "datetime":
            val = pd.to_datetime(raw, errors="coerce", format="ISO8601")
        else:
            val = raw.str.strip().replace("", pd.NA)
        for i in np.flatnonzero((raw.isna() | val.isna()).to_numpy() & ~bad):
            what = "missing required value" if pd.isna(raw.iloc[i]) else f"unparseable {kind} value {raw.iloc[i]!r}"
            quarantine.add(SOURCE, path, int(line[i]), col, what)
        bad |= val.isna().to_numpy()
        conv[col] = val
    dup = conv["study_id"].duplicated(keep="first").to_numpy() & ~bad & conv["study_id"].notna().to_numpy()
    for i in np.flatnonzero(dup):
        quarantine.add(SOURCE, path, int(line[i]), "study_id", f"duplicated study_id {int(conv['study_id'].iloc[i])}")
    keep = ~(bad | dup)
    from pipeline.sources.ecg_dicom import check_dicom_ecg_file
    rel = conv["path"].str.replace(r"\.(hea|dat)$", "", regex=True)
    full = {}
    for i in np.flatnonzero(keep):   # every listed record: inside ROOT, its files present and whole
        study = int(conv["study_id"].iloc[i])
        try:
            if rel.iloc[i].lower().endswith(".dcm"):   # a DICOM waveform ECG: the file itself
                full[i] = str(inside_root(ecg_root, rel.iloc[i], field="path"))
                check_dicom_ecg_file(Path(full[i]))
            else:
                full[i] = str(inside_root(ecg_root, rel.iloc[i], field="path", suffixes=(".hea",)))
                check_record_files(Path(full[i]))
                for f in signal_files(Path(full[i])):   # named by the header: no '..', no symlink out either
                    inside_root(ecg_root, os.path.relpath(f, ecg_root), field="file_name")
        except DataError as e:
            quarantine.add(SOURCE, e.file or path, f"study_id={study} ({path.name} line {int(line[i])})",
                           e.field or "path", e.reason)
            keep[i] = False
    out = pd.DataFrame({
        "subject_id": conv["subject_id"][keep].astype("int64").to_numpy(),
        "study_id": conv["study_id"][keep].astype("int64").to_numpy(),
        "ecg_time": conv["ecg_time"][keep].to_numpy(),
        "path": pd.Series([full[i] for i in np.flatnonzero(keep)], dtype=object),
    })
    ECG_INDEX.validate(out, path)
    return out


def _light_header(hea: Path) -> tuple[float, int, list[tuple[str, str, int, int]]] | None:
    """(fs, sig_len, [(file, fmt, samples per frame, byte offset)]) from a header's text, or None
    when it is not the plain form (wfdb's own parser then decides)."""
    try:
        lines = [ln.split() for ln in hea.read_text("latin-1").splitlines() if ln.strip() and not ln.startswith("#")]
        tok = lines[0]
        n_sig, fs, sig_len = int(tok[1]), float(re.split(r"[/(]", tok[2])[0]), int(tok[3])
        sigs = []
        for t in lines[1:1 + n_sig]:
            m = re.fullmatch(r"(\d+)(?:x(\d+))?(?::\d+)?(?:\+(\d+))?", t[1])
            sigs.append((t[0], m.group(1), int(m.group(2) or 1), int(m.group(3) or 0)))
        return (fs, sig_len, sigs) if len(sigs) == n_sig and fs > 0 else None
    except (IndexError, ValueError, AttributeError, OSError):
        return None


def check_record_files(path: Path) -> None:
    """Cheap check of one listed record without reading its samples: the header exists and
    parses, every signal file it names exists and is as long as the header says.  Raises
    ``DataError`` naming the file (a truncated file: with the seconds it holds)."""
    hea = _header_path(path)
    if _light_header_fits(path, _light_header(hea)):
        return
    hdr = _read_header(path)    # wfdb's parse: names the signals (a missing file of ignored ones is fine)
    mapped = [map_lead(n or "") is not None for n in hdr.sig_name]
    _check_signal_files(hdr, int(hdr.sig_len or 0), path, mapped)


def signal_files(path: Path) -> list[Path]:
    """The signal files a record's header names (beside its .hea), each once."""
    light = _light_header(_header_path(path))
    names = [sig[0] for sig in light[2]] if light is not None else list(_read_header(path).file_name or [])
    return [Path(path).parent / n for n in dict.fromkeys(names) if n != "~"]


def _light_header_fits(path: Path, light) -> bool:
    """True when every signal file the plain header names exists with exactly the size it
    implies (the common case, decided without wfdb); anything else goes to wfdb's checks."""
    if light is None:
        return False
    fs, sig_len, sigs = light
    for fname in dict.fromkeys(s[0] for s in sigs if s[0] != "~"):
        mine = [s for s in sigs if s[0] == fname]
        fpath = path.parent / fname
        bps = _BYTES_PER_SAMPLE.get(mine[0][1])
        if not fpath.exists() or bps is None or not sig_len:
            return False
        if fpath.stat().st_size != mine[0][3] + math.floor(sig_len * sum(s[2] for s in mine) * bps):
            return False
    return True


def index_wfdb_folder(folder: Path) -> pd.DataFrame:
    """One row per ``.hea`` under ``folder`` (recursive): path without extension; ids and time null."""
    paths = sorted(str(p.with_suffix("")) for p in Path(folder).resolve().rglob("*.hea") if p.is_file())
    return pd.DataFrame({
        "subject_id": pd.Series([pd.NA] * len(paths), dtype="Int64"),
        "study_id": pd.Series([pd.NA] * len(paths), dtype="Int64"),
        "ecg_time": pd.Series([pd.NaT] * len(paths), dtype="datetime64[ns]"),
        "path": pd.Series(paths, dtype=object),
    })


# ---------------------------------------------------------------- one record

def _header_path(path: Path) -> Path:
    hea = Path(f"{path}.hea")
    if not hea.exists():
        raise DataError("header file not found", file=hea, field="header",
                        hint="a WFDB record is RECORD.hea plus its signal file(s); pass the path without extension")
    return hea


def _check_header(hdr, hea: Path) -> None:
    if isinstance(hdr, wfdb.MultiRecord):
        raise DataError("multi-segment WFDB record: not supported (expected one 10 s 12-lead record)",
                        file=hea, field="n_seg")
    n_lines = len(hdr.sig_name or [])
    if not hdr.n_sig or n_lines != hdr.n_sig:
        raise DataError(f"the record line declares {hdr.n_sig} signals but the header has {n_lines} signal lines",
                        file=hea, field="n_sig", hint="the header is inconsistent; re-export the record")
    if not hdr.fs or hdr.fs <= 0:
        raise DataError(f"sampling frequency {hdr.fs!r} is not positive", file=hea, field="fs")


def _read_header(path: Path):
    hea = _header_path(path)
    try:
        hdr = wfdb.rdheader(str(path))
    except Exception as e:  # wfdb raises many kinds (HeaderSyntaxError, ValueError, IndexError, ...)
        hint = "the record line's signal count may disagree with the signal lines" if isinstance(e, IndexError) else None
        raise DataError(f"unreadable WFDB header ({type(e).__name__}: {e})", file=hea, field="header",
                        hint=hint) from e
    _check_header(hdr, hea)
    return hdr


def _record_line(hea: Path) -> tuple[float, int] | None:
    """fs and sig_len from the header's record line ("name n_sig fs[/...] sig_len ..."), or None.

    Used to read only the first ``seconds`` in one ``rdrecord`` call (which then reports the
    length it read, not the record's); the result is checked against wfdb's own parse.
    """
    try:
        with open(hea, "rb") as f:
            for raw in f.read(4096).decode("latin-1").splitlines():
                tok = raw.split()
                if not tok or tok[0].startswith("#"):
                    continue
                fs, sig_len = float(re.split(r"[/(]", tok[2])[0]), int(tok[3])
                return (fs, sig_len) if fs > 0 and sig_len > 0 else None
    except (IndexError, ValueError, OSError):
        return None
    return None


def _read(path: Path, seconds: float):
    """(header, sig_len, digital samples of the mapped channels or None, chans, leads, ignored, issues).

    Usual path: one ``wfdb.rdrecord`` (one header parse), then the header and file checks on its
    fields.  If that read fails, the header is read alone and the checks name what is wrong; a
    missing file that holds only ignored signals is then skipped by reading the mapped channels.
    """
    hea = _header_path(path)
    line = _record_line(hea)
    plain = _read_plain(path, hea, line, seconds)
    if plain is not None:
        return plain
    hdr = d = None
    if line is not None:
        fs_line, sig_len = line
        try:
            hdr = wfdb.rdrecord(str(path), sampto=min(sig_len, math.ceil(seconds * fs_line)),
                                physical=False, return_res=32)
            d = hdr.d_signal
        except Exception:  # diagnosed below from the header alone: a DataError or a narrower read
            hdr = None
        if hdr is not None and (isinstance(hdr, wfdb.MultiRecord) or float(hdr.fs) != fs_line):
            hdr = d = None
    if hdr is None:
        hdr = _read_header(path)
        sig_len = int(hdr.sig_len or 0)
    _check_header(hdr, hea)
    chans, leads, ignored, issues = _map_signals(hdr)
    issues += _check_signal_files(hdr, sig_len, path, [c in chans for c in range(hdr.n_sig)])
    if not chans:
        return hdr, sig_len, None, chans, leads, ignored, issues
    if d is None:
        n_want = math.ceil(seconds * float(hdr.fs))
        try:
            d = wfdb.rdrecord(str(path), sampto=min(n_want, sig_len) if sig_len else None, channels=chans,
                              physical=False, return_res=32).d_signal
        except Exception as e:  # wfdb's own errors while decoding the signal file
            raise DataError(f"unreadable signal data ({type(e).__name__}: {e})",
                            file=path.parent / hdr.file_name[chans[0]], field="signal") from e
    else:
        d = d[:, chans]
    d = np.asarray(d)
    if d.ndim != 2 or d.shape[1] != len(chans):
        raise DataError(f"signal data has shape {d.shape}, expected (samples, {len(chans)})",
                        file=path.parent / hdr.file_name[chans[0]], field="signal")
    return hdr, sig_len, d, chans, leads, ignored, issues


def _read_plain(path: Path, hea: Path, line: tuple[float, int] | None, seconds: float):
    """``_read`` for a plain record (see ``pipeline.sources.wfdb_plain``): one header parse,
    the same checks, samples decoded by numpy; None when the record is not plain (before
    anything is read), and ``_read`` then goes through wfdb (which raises what the checks here
    would raise: they are the same checks on the same fields)."""
    hdr = wfdb_plain.read_header(hea)
    if hdr is None or line is None or line != (float(hdr.fs), hdr.sig_len):
        return None
    if not wfdb_plain.is_plain(hdr):
        return None
    sig_len = hdr.sig_len
    _check_header(hdr, hea)
    chans, leads, ignored, issues = _map_signals(hdr)
    issues += _check_signal_files(hdr, sig_len, path, [c in chans for c in range(hdr.n_sig)])
    d = None
    if chans:
        d = wfdb_plain.read_digital(hdr, path.parent, chans, min(sig_len, math.ceil(seconds * float(hdr.fs))))
        if d is None:     # a file shorter than its header says (the checks above name that first)
            return None
    return hdr, sig_len, d, chans, leads, ignored, issues


def _check_signal_files(hdr, sig_len: int, path: Path, mapped: list[bool]) -> list[Issue]:
    """Missing / truncated / wrongly sized signal files -> DataError; a missing file of ignored signals -> info."""
    folder = Path(path).parent
    issues: list[Issue] = []
    spf = [s or 1 for s in (hdr.samps_per_frame or [1] * hdr.n_sig)]
    offsets = hdr.byte_offset or [None] * hdr.n_sig
    for fname in dict.fromkeys(hdr.file_name):
        if fname == "~":
            continue
        chans = [c for c in range(hdr.n_sig) if hdr.file_name[c] == fname]
        fpath = folder / fname
        if not fpath.exists():
            if any(mapped[c] for c in chans):
                raise DataError(f"signal file missing (holds signals {[hdr.sig_name[c] for c in chans]})",
                                file=fpath, field="file_name", hint="copy the record's .dat file beside its .hea")
            issues.append(Issue("info", "signal_file", f"signal file {fname} missing; it holds only ignored "
                                f"signals ({', '.join(hdr.sig_name[c] for c in chans)})"))
            continue
        fmt = hdr.fmt[chans[0]]
        bps = _BYTES_PER_SAMPLE.get(fmt)
        if bps is None or not sig_len:      # compressed format, or length not in the header
            continue
        frame = sum(spf[c] for c in chans)
        offset = offsets[chans[0]] or 0
        expected = offset + math.floor(sig_len * frame * bps)
        size = fpath.stat().st_size
        _check_length(fpath, size, offset, sig_len, frame, bps, float(hdr.fs), fmt, len(chans))
        if size > expected:
            fits = (size - offset) / (sig_len * bps)
            if len(chans) == hdr.n_sig and spf == [1] * hdr.n_sig and fits == int(fits) and int(fits) != len(chans):
                raise DataError(f"file size fits {int(fits)} signals of {sig_len} samples but the header "
                                f"declares {len(chans)}", file=Path(f"{path}.hea"), field="n_sig",
                                hint="the header's signal count is wrong")
            issues.append(Issue("info", "signal_file", f"{fname} has {size - expected} bytes beyond the header's length"))
    return issues


def _check_length(fpath: Path, size: int, offset: int, sig_len: int, frame: int, bps: float, fs: float,
                  fmt: str, n_sig: int) -> None:
    """A signal file shorter than its header says: DataError with the seconds it does hold."""
    expected = offset + math.floor(sig_len * frame * bps)
    if size < expected:
        found = max(0, size - offset) / (frame * bps) / fs if fs else 0.0
        raise DataError(f"truncated: {size} bytes hold {found:.1f} s of the {sig_len / fs:.1f} s the header says "
                        f"(expected {expected} bytes: {n_sig} signals x {sig_len} samples, format {fmt})",
                        file=fpath, field="sig_len", hint="the file was cut short (interrupted copy?); fetch it again")


def _limits(hdr, c: int) -> set[int]:
    """Digital values at which channel c is clipped: the format's range and, if given, the ADC's."""
    bits = _FMT_BITS.get(hdr.fmt[c], 16)
    out = {2 ** (bits - 1) - 1, -(2 ** (bits - 1)) + 1}
    res = (hdr.adc_res or [0] * hdr.n_sig)[c] or 0
    if 0 < res < bits:
        zero = (hdr.adc_zero or [0] * hdr.n_sig)[c] or 0
        out |= {zero - 2 ** (res - 1), zero + 2 ** (res - 1) - 1}
    return out


def _longest_run(mask: np.ndarray) -> int:
    if not mask.any():
        return 0
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.view(np.int8), [0]))))
    return int((edges[1::2] - edges[::2]).max())


def _saturation(d: np.ndarray, invalid: np.ndarray, limits: list[set[int]], gains: np.ndarray,
                fs: float) -> list[tuple[int, float]]:
    """(channel, longest run in s) for channels with a long run at a digital limit or at a far plateau."""
    big = np.iinfo(d.dtype).max
    hi = d.max(axis=0)
    lo = np.where(invalid, big, d).min(axis=0)
    min_run = math.ceil(min(SATURATION_AT_LIMIT_S, SATURATION_PLATEAU_S) * fs)
    # a run needs at least min_run equal samples: a cheap test first, the exact one only where it passes
    maybe = ((d == hi).sum(axis=0) >= min_run) | ((d == lo).sum(axis=0) >= min_run)
    out = []
    for j in np.flatnonzero(maybe & (hi > lo)):
        col = d[~invalid[:, j], j]
        med = None
        longest = 0
        for v in {int(lo[j]), int(hi[j])}:
            at_limit = v in limits[j]
            if not at_limit:
                med = np.median(col) if med is None else med
                if abs(v - med) < PLATEAU_MIN_MV * gains[j]:
                    continue
            run = _longest_run(col == v)
            if run >= (SATURATION_AT_LIMIT_S if at_limit else SATURATION_PLATEAU_S) * fs:
                longest = max(longest, run)
        if longest:
            out.append((int(j), longest / fs))
    return out


@lru_cache(maxsize=16)
def _highpass(fs: float) -> ZeroPhase:
    return ZeroPhase(sps.butter(2, HIGHPASS_HZ, btype="highpass", fs=fs, output="sos"))


def _length_issues(n_total: int, fs_orig: float, seconds: float) -> list[Issue]:
    dur = n_total / fs_orig
    if n_total == 0:
        return [Issue("bad", "length", "record holds no samples")]
    if dur < seconds / 2:
        return [Issue("bad", "length", f"short record ({dur:.1f} s, under half of {seconds:g} s)")]
    if dur < seconds:
        return [Issue("warn", "length", f"short record ({dur:.1f} s of {seconds:g} s; zero-padded)")]
    if dur > seconds + 1 / fs_orig:
        return [Issue("info", "length", f"cropped to the first {seconds:g} s of {dur:.1f} s")]
    return []


def _fs_text(fs: float) -> str:
    return f"{fs:g}"


def load_ecg(path: str | Path, fs: int = 500, seconds: float = 10.0, min_leads: int = 1) -> ECGRecord:
    """Read one WFDB record (path without extension), or a DICOM ECG (.dcm, read by
    ``pipeline.sources.ecg_dicom``), into the standard 12-lead form; see module doc."""
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        from pipeline.sources.ecg_dicom import read_dicom_ecg
        hdr, n_total, d, chans, leads, ignored, issues = read_dicom_ecg(path, seconds)
    else:
        hdr, n_total, d, chans, leads, ignored, issues = _read(path, seconds)
    n_out = round(fs * seconds)
    fs_orig = float(hdr.fs)
    n_want = math.ceil(seconds * fs_orig)
    signal = np.zeros((len(STANDARD_LEADS), n_out), np.float32)
    mask = np.zeros(len(STANDARD_LEADS), bool)
    rec = ECGRecord(str(path), signal, mask, fs, fs_orig, n_total, [hdr.sig_name[c] for c in chans], ignored, issues)
    if d is not None and not n_total:
        n_total = rec.n_samples_orig = int(d.shape[0])   # length not in the header: what the file holds
    if n_total or d is not None:          # (a header may omit the length; then the data tells it)
        issues += _length_issues(n_total, fs_orig, seconds)
    if d is None:
        issues.append(Issue("bad", "leads", "no mappable ECG lead (signals: "
                            + ", ".join(n or unnamed(c) for c, n in enumerate(hdr.sig_name)) + ")"))
        return rec
    d = d[:n_want]
    n = d.shape[0]
    if n == 0:
        return rec

    # digital -> mV; the invalid-sample code -> NaN
    codes = np.array([-(2 ** (_FMT_BITS.get(hdr.fmt[c], 16) - 1)) if hdr.fmt[c] not in _NO_INVALID_CODE
                      else 2 ** 40 for c in chans], np.int64)      # 2**40: no sample can equal it
    invalid = d == codes
    gains = np.array([(hdr.adc_gain[c] or 200.0) for c in chans], np.float64)
    base = np.array([(hdr.baseline[c] or 0) for c in chans], np.float64)
    scale = np.array([_VOLT_UNITS[((hdr.units[c] if hdr.units else "") or "").strip().lower()] for c in chans])
    x = (d - base) * (scale / gains)
    x[invalid] = np.nan

    for j, secs in _saturation(d, invalid, [_limits(hdr, c) for c in chans], gains, fs_orig):
        issues.append(Issue("warn", f"lead:{leads[j]}", f"lead {leads[j]} saturated ({secs:.2f} s at its limit)"))

    usable = np.ones(len(chans), bool)
    nan_count = invalid.sum(axis=0)
    for j in np.flatnonzero(nan_count):
        if nan_count[j] == n:
            usable[j] = False
            issues.append(Issue("warn", f"lead:{leads[j]}", f"lead {leads[j]} all NaN (masked)"))
        else:
            issues.append(Issue("warn", f"lead:{leads[j]}", f"lead {leads[j]}: {nan_count[j]} NaN samples set to 0"))
    if nan_count.any():
        med = np.nanmedian(np.where(usable, x, 0.0), axis=0)
        x = np.where(invalid, med, x)
    std = x.std(axis=0)
    for j in np.flatnonzero(usable & (std < FLAT_MV)):
        usable[j] = False
        issues.append(Issue("warn", f"lead:{leads[j]}", f"lead {leads[j]} flat (std {std[j]:.4f} mV, lead off?): masked"))

    # baseline removal at the original rate, then resampling
    x = x[:, usable]
    if x.shape[1]:
        x = x - x.mean(axis=0)
        if n > 12:                        # sosfiltfilt needs a few samples beyond its padding
            x = _highpass(fs_orig)(x, axis=0)
    nan_pos = invalid[:, usable]
    if fs_orig != fs:
        issues.append(Issue("warn", "fs", f"resampled from {_fs_text(fs_orig)} Hz to {fs} Hz"))
        ratio = Fraction(fs / fs_orig).limit_denominator(1000)
        if x.shape[1]:
            x = sps.resample_poly(x, ratio.numerator, ratio.denominator, axis=0)
        n_new = round(n * fs / fs_orig)
        x = x[:n_new]
        src = np.minimum((np.arange(x.shape[0]) * fs_orig / fs).astype(int), n - 1)
        nan_pos = nan_pos[src]
    if nan_pos.any():
        x = np.where(nan_pos, 0.0, x)

    rows = [LEAD_INDEX[leads[j]] for j in np.flatnonzero(usable)]
    m = min(x.shape[0], n_out)
    signal[rows, :m] = x[:m].T
    mask[rows] = True

    n_ok = int(mask.sum())
    if n_ok < len(STANDARD_LEADS):
        missing = [name for name, ok in zip(STANDARD_LEADS, mask) if not ok]
        sev = "warn" if n_ok >= max(1, min_leads) else "bad"
        text = f"only {n_ok} of 12 standard leads (missing: {', '.join(missing)})"
        if n_ok == 0:
            text = "no usable ECG lead (all mapped leads flat or NaN)"
        elif sev == "bad":
            text += f"; fewer than min_leads={min_leads}"
        issues.append(Issue(sev, "leads", text))
    return rec


def inspect_ecg(index: pd.DataFrame, fs: int = 500, seconds: float = 10.0, min_leads: int = 1) -> list[dict]:
    """One verdict per record of ``index`` (a ``path`` column); a record that cannot be read is 'bad'."""
    out = []
    for p in index["path"]:
        row = {"record": str(p), "verdict": "bad", "reasons": [], "fs": None, "n_leads": 0, "seconds": None}
        try:
            rec = load_ecg(p, fs=fs, seconds=seconds, min_leads=min_leads)
        except DataError as e:
            row["reasons"] = [str(e)]
        except Exception as e:  # inspection reports everything; a crash here would hide the other records
            row["reasons"] = [f"unexpected error reading the record ({type(e).__name__}: {e})"]
        else:
            row.update(verdict=rec.verdict, reasons=rec.reasons, fs=rec.fs_orig, n_leads=rec.n_leads,
                       seconds=round(rec.seconds_orig, 3))
        out.append(row)
    return out
