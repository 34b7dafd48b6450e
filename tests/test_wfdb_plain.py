"""pipeline.sources.wfdb_plain: the plain WFDB record read without wfdb gives exactly what
wfdb gives (header fields, int32 samples), and load_ecg through it exactly what load_ecg
through wfdb gives (signal, mask, reasons; or the same DataError).  Fuzzed headers:
tests/test_fuzz_readers.py."""
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import wfdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import DataError
from pipeline.sources import ecg, wfdb_plain

FIELDS = ("fs", "n_sig", "sig_len", "file_name", "fmt", "samps_per_frame", "skew", "byte_offset", "adc_gain",
          "baseline", "units", "adc_res", "adc_zero", "init_value", "sig_name")
LIMIT = {"16": 32767, "61": 32767, "160": 32767, "80": 127, "24": 2 ** 23 - 1, "32": 2 ** 31 - 1}


def both_ways(path) -> tuple:
    """load_ecg(path) through the plain reader and through wfdb, as comparable tuples."""
    def run():
        try:
            r = ecg.load_ecg(path)
            return ("ok", r.signal.tobytes(), r.lead_mask.tolist(), r.issues, r.fs_orig, r.n_samples_orig,
                    r.leads_found, r.ignored_signals)
        except DataError as e:
            return ("error", str(e), e.field, e.file)
    plain = run()
    with mock.patch.object(ecg, "_read_plain", lambda *a: None):
        return plain, run()


def write(folder: Path, name: str, fmt: str, n: int = 1200, fs: int = 500, names=("I", "II", "V1", "PLETH"),
          gain: float = 200.0, baseline: int = 0) -> Path:
    """A record in ``fmt`` (61 and 160 re-encoded from a format-16 file: wfdb writes neither),
    with random samples, the invalid-sample code in one run and the digital limits reached."""
    rng = np.random.default_rng(len(name))
    lim = LIMIT[fmt]
    d = rng.integers(-lim, lim, (n, len(names)), endpoint=True)
    d[10:20, 1] = -lim - 1
    d[30, 0], d[31, 0] = lim, -lim
    wfmt = "16" if fmt in ("61", "160") else fmt
    wfdb.wrsamp(name, fs=fs, units=["mV"] * len(names), sig_name=list(names), d_signal=d, fmt=[wfmt] * len(names),
                adc_gain=[gain] * len(names), baseline=[baseline] * len(names), write_dir=str(folder))
    if fmt != wfmt:
        raw = np.fromfile(folder / f"{name}.dat", "<i2")
        (raw.astype(">i2") if fmt == "61" else (raw.astype(np.int32) + 32768).astype("<u2")).tofile(
            folder / f"{name}.dat")
        hea = folder / f"{name}.hea"
        lines = hea.read_text().splitlines()
        hea.write_text("\n".join([lines[0]] + [ln.replace(f"{name}.dat 16 ", f"{name}.dat {fmt} ")
                                               for ln in lines[1:]]) + "\n")
    return folder / name


@pytest.mark.parametrize("fmt", sorted(LIMIT))
def test_plain_reader_equals_wfdb_for_every_numpy_format(tmp_path, fmt):
    p = write(tmp_path, f"r{fmt}", fmt)
    hdr, ref = wfdb_plain.read_header(Path(f"{p}.hea")), wfdb.rdheader(str(p))
    assert hdr is not None and wfdb_plain.is_plain(hdr)
    assert {f: getattr(hdr, f) for f in FIELDS} == {f: getattr(ref, f) for f in FIELDS}
    want = wfdb.rdrecord(str(p), sampto=1000, physical=False, return_res=32).d_signal
    for chans in ([0, 1, 2, 3], [2, 0]):
        got = wfdb_plain.read_digital(hdr, tmp_path, chans, 1000)
        assert got.dtype == np.int32 and np.array_equal(got, want[:, chans])
    plain, via_wfdb = both_ways(p)
    assert plain == via_wfdb and plain[0] == "ok"


def test_header_forms_wfdb_defaults_and_what_is_left_to_wfdb(tmp_path):
    p = write(tmp_path, "r", "16", names=("I", "II"))
    dat = (tmp_path / "r.dat").read_bytes()
    hea = tmp_path / "r.hea"
    cases = {   # header text -> plain? (every plain one must parse as wfdb does)
        "r 2 500 1200\nr.dat 16 0/mV 12 5 0 0 0 I\nr.dat 16 200(7) 0 0 0 0 0 II\n": True,   # gain 0, baseline
        "# a comment\nr 2 500/25(3) 1200 10:11:12 01/02/2100\nr.dat 16 100 12 -3 0 0 0 I\nr.dat 16\n": True,
        "r 2 500 1200 25:99:99\nr.dat 16 200 12 0 0 0 0 I\nr.dat 16 200 12 0 0 0 0 II\n": False,   # bad time
        "r 2 500\nr.dat 16 200 12 0 0 0 0 I\nr.dat 16 200 12 0 0 0 0 II\n": False,       # no length
        "r/2 2 500 1200\ns1 600\ns2 600\n": False,                                        # multi-segment
        "r 2 500 1200\nr.dat 212 200 12 0 0 0 0 I\nr.dat 212 200 12 0 0 0 0 II\n": False,  # not numpy-decoded
        "r 2 500 1200\nr.dat 16x2 200 12 0 0 0 0 I\nr.dat 16x2 200 12 0 0 0 0 II\n": False,
        "r 3 500 1200\nr.dat 16 200 12 0 0 0 0 I\nr.dat 16 200 12 0 0 0 0 II\n": False,    # count disagrees
    }
    for text, plain in cases.items():
        hea.write_text(text)
        (tmp_path / "r.dat").write_bytes(dat)
        hdr = wfdb_plain.read_header(hea)
        if hdr is not None and wfdb_plain.is_plain(hdr):
            ref = wfdb.rdheader(str(p))
            assert {f: getattr(hdr, f) for f in FIELDS} == {f: getattr(ref, f) for f in FIELDS}, text
        assert (hdr is not None and wfdb_plain.is_plain(hdr)) == plain, text
        a, b = both_ways(p)
        assert a == b, text


def test_truncated_and_offset_files_give_what_wfdb_gives(tmp_path):
    p = write(tmp_path, "r", "16", names=("I", "II"))
    hea = tmp_path / "r.hea"
    lines = hea.read_text().splitlines()
    hea.write_text("\n".join([lines[0]] + [ln.replace("r.dat 16 ", "r.dat 16+6 ") for ln in lines[1:]]) + "\n")
    (tmp_path / "r.dat").write_bytes(b"header" + (tmp_path / "r.dat").read_bytes())
    a, b = both_ways(p)
    assert a == b and a[0] == "ok"
    with open(tmp_path / "r.dat", "r+b") as f:
        f.truncate(3000)
    a, b = both_ways(p)
    assert a == b and a[0] == "error" and "truncated" in a[1]


def test_a_signal_without_a_name_is_ignored_and_named_by_its_position(tmp_path):
    p = write(tmp_path, "r", "16", names=("I", "II"))
    hea = tmp_path / "r.hea"
    lines = hea.read_text().splitlines()
    hea.write_text("\n".join([lines[0], lines[1], lines[2].rsplit(" ", 1)[0]]) + "\n")   # II's name removed
    rec = ecg.load_ecg(p)
    assert rec.leads_found == ["I"] and "ignored signals: (unnamed signal 2)" in rec.reasons
    hea.write_text("\n".join([lines[0], lines[1].rsplit(" ", 1)[0] + " PLETH", lines[2].rsplit(" ", 1)[0]]) + "\n")
    rec = ecg.load_ecg(p)
    assert rec.verdict == "bad" and "no mappable ECG lead (signals: PLETH, (unnamed signal 2))" in rec.reasons


BYTES = {"16": 2, "61": 2, "160": 2, "80": 1, "24": 3, "32": 4}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(sorted(BYTES)), n_sig=st.integers(1, 4), sig_len=st.integers(200, 6000),
       fs=st.sampled_from(["500", "250", "1000", "360/1", "500.0"]), offset=st.sampled_from([0, 8]),
       gain=st.sampled_from(["200", "0", "100(5)/uV", "1e3/mV", "200(-3)/mV", "50/V", "200/degC"]),
       tail=st.sampled_from(["", " 16", " 16 0", " 12 -4 17", " 16 0 0 0 0"]),
       names=st.lists(st.sampled_from(["I", "ii", "V1", "MLII", "aVR", "V", "PLETH", "lead V6", "I"]), min_size=4,
                      max_size=4), seed=st.integers(0, 3))
def test_well_formed_records_read_the_same_both_ways(fmt, n_sig, sig_len, fs, offset, gain, tail, names, seed):
    """Headers of every plain form, files exactly as long as they say (random samples):
    load_ecg gives the same record, or the same DataError, through both readers."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        lines = [f"r {n_sig} {fs} {sig_len}"]
        lines += [f"r.dat {fmt}{f'+{offset}' if offset else ''} {gain}{tail}" + (f" 0 0 0 0 {names[c]}" if tail == ""
                  else f" {names[c]}" if tail.count(" ") >= 5 else "") for c in range(n_sig)]
        (Path(d) / "r.hea").write_text("\n".join(lines) + "\n")
        (Path(d) / "r.dat").write_bytes(np.random.default_rng(seed).bytes(offset + sig_len * n_sig * BYTES[fmt]))
        hdr = wfdb_plain.read_header(Path(d) / "r.hea")
        assert hdr is not None and wfdb_plain.is_plain(hdr)
        plain, via_wfdb = both_ways(Path(d) / "r")
        assert plain == via_wfdb
