"""Progress bars (drawn only on a terminal, never with --quiet) and --log-json stage events."""
from __future__ import annotations

import io
import json
import sys

import pytest

from pipeline import progress


class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _defaults():
    progress.reset()
    yield
    progress.reset()


def test_bar_with_eta_on_a_terminal_and_none_otherwise(monkeypatch):
    tty = _TTY()
    monkeypatch.setattr(sys, "stderr", tty)
    assert list(progress.track(range(5), total=5, desc="ECG records")) == list(range(5))
    drawn = tty.getvalue()
    assert "ECG records" in drawn and "ETA" in drawn and "5/5" in drawn

    progress.configure(quiet=True)                       # --quiet: no bar even on a terminal
    tty2 = _TTY()
    monkeypatch.setattr(sys, "stderr", tty2)
    assert list(progress.track(range(3), total=3, desc="images")) == [0, 1, 2]
    assert tty2.getvalue() == ""

    progress.reset()
    plain = io.StringIO()                                # not a terminal: no control characters
    monkeypatch.setattr(sys, "stderr", plain)
    assert list(progress.track(iter("abc"), total=3, desc="notes")) == ["a", "b", "c"]
    assert plain.getvalue() == ""


def test_log_json_writes_one_event_per_line_even_on_early_stop(tmp_path, capsys):
    log = tmp_path / "sub" / "events.jsonl"
    progress.configure(quiet=True, log_json=log)
    for i in progress.track(range(10), total=10, desc="fused net epochs", stage="fusion"):
        if i == 3:
            break                                        # early stopping still logs the loop
    progress.event("features_ecg", "done", seconds=1.5, rows={"features.parquet": 7})
    progress.log("a progress line")
    assert capsys.readouterr().out == ""                 # quiet silences progress lines
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["stage"], e["event"]) for e in events] == [("fusion", "loop"), ("features_ecg", "done")]
    assert events[0]["rows"] == 4 and events[0]["what"] == "fused net epochs" and events[0]["seconds"] >= 0
    assert events[1]["rows"] == {"features.parquet": 7} and "time" in events[1]


def test_synthetic_generator_follows_quiet(tmp_path, monkeypatch, capsys):
    """`mmpipe --quiet synth/demo`: the generator prints no progress line and draws no bar."""
    from pipeline.synthetic import generate_cohort
    tty = _TTY()
    monkeypatch.setattr(sys, "stderr", tty)
    progress.configure(quiet=True)
    generate_cohort(tmp_path / "q", n_patients=3, seed=1)
    assert tty.getvalue() == "" and capsys.readouterr().out == ""

    progress.reset()
    tty2 = _TTY()
    monkeypatch.setattr(sys, "stderr", tty2)
    generate_cohort(tmp_path / "loud", n_patients=3, seed=1)
    assert "[synth" in tty2.getvalue() and "patients" in tty2.getvalue()
