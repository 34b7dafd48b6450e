"""Where a raw table lies: ``find_table`` (folder/name with an accepted extension).

Shared by discovery and every source adapter, so that no adapter imports
``discover`` and ``discover`` can import the adapters' content tests directly.
"""
from __future__ import annotations

from pathlib import Path

TABLE_EXTS = (".csv.gz", ".csv", ".parquet")


def find_table(folder: Path, name: str) -> Path | None:
    """folder/name with any of the accepted extensions, or None."""
    for ext in TABLE_EXTS:
        p = Path(folder) / f"{name}{ext}"
        if p.exists():
            return p
    return None
