"""Progress bars and structured stage events, in one place for every loop over records.

``track(items, total, desc)`` wraps a loop (ECG records, images, notes, fused-net epochs,
score shards) in a rich progress bar with a count, elapsed time and ETA.  The bar is drawn
only when stderr is a terminal and quiet is off, so logs, CI and notebooks get no control
characters.  When the loop ends, a ``loop`` event with its row count and seconds is logged.

``configure(quiet=..., log_json=...)`` is called once by the CLI (``mmpipe --quiet`` and
``mmpipe --log-json FILE``).  ``event(stage, event, **fields)`` appends one JSON object per
line to that file: {"time", "stage", "event", "seconds"?, "rows"?, ...}; the stages, the
train and the score jobs write their start / done / skipped events there.  ``log(msg)`` is
the plain progress line printer, silent with quiet.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
_state: dict = {"quiet": False, "log_json": None}
_lock = threading.Lock()


def configure(quiet: bool | None = None, log_json: Path | str | None = None) -> None:
    """Set quiet mode and/or the JSON-lines event file (created empty; its folder too)."""
    if quiet is not None:
        _state["quiet"] = bool(quiet)
    if log_json is not None:
        path = Path(log_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("", encoding="utf-8")
        _state["log_json"] = path


def reset() -> None:
    """Back to the defaults (not quiet, no event file)."""
    _state.update(quiet=False, log_json=None)


def quiet() -> bool:
    return bool(_state["quiet"])


def bars_enabled() -> bool:
    """Progress bars are drawn only on a terminal, and never in quiet mode."""
    return not _state["quiet"] and sys.stderr.isatty()


def log(msg: str) -> None:
    if not _state["quiet"]:
        print(msg, flush=True)


def _jsonable(v):
    if hasattr(v, "item"):          # numpy scalars
        return v.item()
    if isinstance(v, Path):
        return str(v)
    return v


def event(stage: str, event: str, **fields) -> None:
    """Append {"time", "stage", "event", **fields} as one line to the --log-json file (if set)."""
    path = _state["log_json"]
    if path is None:
        return
    rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "stage": stage, "event": event,
           **{k: _jsonable(v) for k, v in fields.items()}}
    line = json.dumps(rec, default=str)
    with _lock, open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def track(items: Iterable[T], total: int | None = None, desc: str = "", unit: str = "record",
          stage: str | None = None) -> Iterator[T]:
    """Yield ``items``; with a progress bar (count, elapsed, ETA) when bars are enabled.
    At the end a ``loop`` event: stage, what (``desc``), rows seen, seconds."""
    t0, n = time.time(), 0
    try:
        if not bars_enabled():
            for x in items:
                n += 1
                yield x
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn(unit + "s"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
        with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task(desc or stage or "", total=total)
            for x in items:
                n += 1
                yield x
                bar.advance(task)
    finally:  # also when the caller stops early (a break, early stopping)
        event(stage or desc, "loop", what=desc, rows=n, seconds=round(time.time() - t0, 3))
