"""The plain WFDB record, read without wfdb's per-field machinery.

``wfdb.rdheader`` looks every field of every signal line up in a pandas table (about
4 ms a 12-lead header, a third of the ECG stage's time per record), and ``rdrecord``
parses the header again.  For the common form (one segment, a record line with its
sampling frequency and length, one sample per frame, no skew, signal files in format
16, 61, 80, 160, 24 or 32) ``read_header`` parses the header once, with wfdb's own line
patterns and its read defaults (adc_gain 0 or absent means 200, a missing baseline is
adc_zero, units default to mV), and ``read_digital`` decodes the samples with numpy,
as wfdb's ``rdrecord(physical=False, return_res=32)`` does: int32, [samples, channels].
Anything else returns None and the caller uses wfdb itself, so a record that is not
plain is read (and diagnosed) exactly as before.  tests/test_ecg.py checks the fields
and samples against wfdb's on records of every such format, and
tests/test_fuzz_readers.py on fuzzed headers.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from wfdb.io.header import parse_header_content, rx_record, rx_signal, wfdb_strptime

# format -> (numpy dtype of one sample, offset added to get wfdb's digital value); 24: 3 bytes
FORMATS = {"16": ("<i2", 0), "61": (">i2", 0), "80": ("u1", -128), "160": ("<u2", -32768),
                  "32": ("<i4", 0), "24": (None, 0)}


@dataclass
class PlainHeader:
    """The fields of wfdb's ``Record`` that the ECG reader uses, as ``wfdb.rdheader`` sets them."""
    fs: float
    n_sig: int
    sig_len: int
    file_name: list
    fmt: list
    samps_per_frame: list
    skew: list
    byte_offset: list
    adc_gain: list
    baseline: list
    units: list
    adc_res: list
    adc_zero: list
    init_value: list
    sig_name: list


def _int(s: str):
    return int(s) if s else None


def read_header(hea: Path) -> PlainHeader | None:
    """The header ``hea`` parsed as wfdb parses it, or None when it is not the plain form
    or any field would not convert (wfdb's own parse then decides, and names the problem)."""
    try:
        lines, _ = parse_header_content(Path(hea).read_bytes().decode("ascii", errors="ignore"))
        rec = rx_record.match(lines[0]) if lines else None
        if rec is None or rec["n_seg"] or not rec["fs"] or not rec["sig_len"]:
            return None
        n_sig, fs, sig_len = int(rec["n_sig"]), float(rec["fs"]), int(rec["sig_len"])
        for f in ("counter_freq", "base_counter"):
            if rec[f]:
                float(rec[f])
        if rec["base_time"]:                     # wfdb converts these too: a bad one is its error
            wfdb_strptime(rec["base_time"])
        if rec["base_date"]:
            datetime.datetime.strptime(rec["base_date"], "%d/%m/%Y")
        if n_sig < 1 or len(lines) - 1 != n_sig or fs <= 0 or sig_len < 1:
            return None
        sigs = [rx_signal.match(line) for line in lines[1:]]
        if any(m is None for m in sigs):
            return None
        h = PlainHeader(fs=int(fs) if round(fs, 8) == float(int(fs)) else fs, n_sig=n_sig, sig_len=sig_len,
                        **{k: [] for k in ("file_name", "fmt", "samps_per_frame", "skew", "byte_offset", "adc_gain",
                                           "baseline", "units", "adc_res", "adc_zero", "init_value", "sig_name")})
        for m in sigs:
            gain = float(m["adc_gain"]) if m["adc_gain"] else 200.0
            for f in ("checksum", "block_size"):
                _int(m[f])
            h.file_name.append(m["file_name"] or None)
            h.fmt.append(m["fmt"])
            h.samps_per_frame.append(int(m["samps_per_frame"]) if m["samps_per_frame"] else 1)
            h.skew.append(_int(m["skew"]))
            h.byte_offset.append(_int(m["byte_offset"]))
            h.adc_gain.append(200.0 if gain == 0 else gain)
            h.baseline.append(int(m["baseline"]) if m["baseline"] else int(m["adc_zero"]) if m["adc_zero"] else 0)
            h.units.append(m["units"] or "mV")
            h.adc_res.append(_int(m["adc_res"]))
            h.adc_zero.append(_int(m["adc_zero"]))
            h.init_value.append(_int(m["init_value"]))
            h.sig_name.append(m["sig_name"] or None)
        return h
    except (ValueError, IndexError, OSError, TypeError):
        return None


def is_plain(hdr: PlainHeader) -> bool:
    """Every signal in a numpy-decoded format, in a named file (one format per file), one
    sample per frame, no skew."""
    fmt_of_file: dict = {}
    for c in range(hdr.n_sig):
        name, fmt = hdr.file_name[c], hdr.fmt[c]
        if (not name or name == "~" or fmt not in FORMATS or fmt_of_file.setdefault(name, fmt) != fmt
                or hdr.samps_per_frame[c] != 1 or hdr.skew[c]):
            return False
    return True


def read_digital(hdr: PlainHeader, folder: Path, chans: list[int], n: int) -> np.ndarray | None:
    """int32 [n, len(chans)]: the first ``n`` samples of channels ``chans``, or None when a file
    is shorter than that.  ``hdr`` must be plain (``is_plain``)."""
    out = np.empty((n, len(chans)), np.int32)
    for fname in dict.fromkeys(hdr.file_name[c] for c in chans):
        in_file = [c for c in range(hdr.n_sig) if hdr.file_name[c] == fname]
        fmt = hdr.fmt[in_file[0]]
        dtype, shift = FORMATS[fmt]
        k, offset = len(in_file), hdr.byte_offset[in_file[0]] or 0
        try:
            if fmt == "24":
                raw = np.fromfile(Path(folder) / fname, np.uint8, count=3 * n * k, offset=offset)
                if raw.size < 3 * n * k:
                    return None
                b = raw.reshape(n * k, 3).astype(np.int32)
                frames = (((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) ^ 0x800000) - 0x800000).reshape(n, k)
            else:
                raw = np.fromfile(Path(folder) / fname, dtype, count=n * k, offset=offset)
                if raw.size < n * k:
                    return None
                frames = raw.reshape(n, k)
        except (OSError, ValueError):
            return None
        for j, c in enumerate(chans):
            if hdr.file_name[c] == fname:
                out[:, j] = frames[:, in_file.index(c)].astype(np.int32) + shift
    return out
