"""ECG lead names: the 12 standard leads, the aliases that map to them, and the mapping of a
record's signals (WFDB or DICOM) to leads with the reasons for what is ignored or approximate.
Shared by ``pipeline.sources.ecg`` (WFDB) and ``pipeline.sources.ecg_dicom``."""
from __future__ import annotations

import re
from dataclasses import dataclass

STANDARD_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
LEAD_INDEX = {name: i for i, name in enumerate(STANDARD_LEADS)}

_LEAD_KEYS = {name.lower(): name for name in STANDARD_LEADS}
_LEAD_KEYS.update({"mli": "I", "mlii": "II", "mliii": "III", "di": "I", "dii": "II", "diii": "III",
                   "d1": "I", "d2": "II", "d3": "III", "mcl1": "V1"})
# aliases that stand in for a lead without being it: used, with a warn reason
_APPROXIMATE = {"mcl1": "modified chest lead MCL1 used as V1 (a bipolar approximation of V1)"}
# names that are an ECG lead of unknown position: ignored, with this reason
_UNPLACED = {"v": "a precordial lead of unknown position (V1..V6?)"}

_VOLT_UNITS = {"mv": 1.0, "": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3, "nv": 1e-6}


def _lead_key(name: str) -> str:
    return re.sub(r"^lead[\s_\-]*", "", name.strip().lower()).replace(" ", "")


def map_lead(name: str) -> str | None:
    """The standard lead a signal name stands for, or None ('MLII' -> 'II', 'avr' -> 'aVR',
    'MCL1' -> 'V1', 'V' -> None)."""
    return _LEAD_KEYS.get(_lead_key(name))


def unnamed(c: int) -> str:
    """How a signal without a name (no description on its header line) is called in reasons."""
    return f"(unnamed signal {c + 1})"


@dataclass(frozen=True)
class Issue:
    severity: str   # "info" | "warn" | "bad"
    field: str      # what is wrong: "fs", "length", "leads", "lead:V1", "units", "signal_file"
    text: str


def _map_signals(hdr) -> tuple[list[int], list[str], list[str], list[Issue]]:
    """Channels that map to standard leads (first occurrence wins), their leads, the ignored names."""
    chans, leads, ignored, dupes, issues = [], [], [], [], []
    for c, name in enumerate(hdr.sig_name):
        lead = map_lead(name or "")
        key = _lead_key(name or "")
        name = name or unnamed(c)
        if key in _UNPLACED:
            issues.append(Issue("info", "leads", f"signal {name} ignored: {_UNPLACED[key]}"))
        elif lead is not None and key in _APPROXIMATE and lead not in leads:
            issues.append(Issue("warn", f"lead:{lead}", _APPROXIMATE[key]))
        unit = (hdr.units[c] if hdr.units else "") or ""
        if lead is not None and unit.strip().lower() not in _VOLT_UNITS:
            issues.append(Issue("info", "units", f"signal {name} has units {unit!r}, not a voltage: ignored"))
            lead = None
        if lead is None:
            ignored.append(name)
        elif lead in leads:
            ignored.append(name)
            dupes.append(name)
        else:
            chans.append(c)
            leads.append(lead)
    if ignored:
        issues.append(Issue("info", "leads", "ignored signals: " + ", ".join(ignored)
                            + (f" (duplicates of mapped leads: {', '.join(dupes)})" if dupes else "")))
    return chans, leads, ignored, issues
