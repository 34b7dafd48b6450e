"""Errors that say what and where, and the quarantine that keeps a batch going.

A ``DataError`` names the file, the row and the field, what was expected and
what was found.  A stage that can go on without a bad record puts a
``QuarantineRow`` into a ``Quarantine`` instead of raising; the run writes
them all to ``quarantine.parquet`` (schema ``data_schemas.quarantine``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

QUARANTINE_COLUMNS = ["source", "file", "row", "field", "reason"]


class DataError(ValueError):
    """Bad input: names the file, row and field, and how to fix it."""

    def __init__(self, reason: str, *, file: str | Path | None = None, row: int | str | None = None,
                 field: str | None = None, hint: str | None = None):
        self.reason = reason
        self.file = str(file) if file is not None else None
        self.row = row
        self.field = field
        self.hint = hint
        where = []
        if self.file:
            where.append(f"file {self.file}")
        if row is not None:
            where.append(f"row {row}")
        if field:
            where.append(f"field '{field}'")
        msg = (", ".join(where) + ": " if where else "") + reason
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


@dataclass
class QuarantineRow:
    source: str
    file: str
    row: str
    field: str
    reason: str


@dataclass
class Quarantine:
    """Collects bad records so that the good ones in the same batch go on."""

    rows: list[QuarantineRow] = field(default_factory=list)

    def add(self, source: str, file: str | Path | None, row=None, field_: str | None = None,
            reason: str = "") -> None:
        self.rows.append(QuarantineRow(source=source, file=str(file or ""),
                                       row="" if row is None else str(row),
                                       field=field_ or "", reason=reason))

    def add_error(self, source: str, err: DataError) -> None:
        self.add(source, err.file, err.row, err.field, err.reason)

    def extend(self, other: "Quarantine") -> None:
        self.rows.extend(other.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def to_frame(self) -> pd.DataFrame:
        if not self.rows:
            return pd.DataFrame({c: pd.Series(dtype="string") for c in QUARANTINE_COLUMNS})
        return pd.DataFrame([asdict(r) for r in self.rows], columns=QUARANTINE_COLUMNS).astype("string")

    @classmethod
    def from_frame(cls, df: pd.DataFrame) -> "Quarantine":
        q = cls()
        for rec in df.to_dict("records"):
            q.rows.append(QuarantineRow(**{c: str(rec.get(c, "") or "") for c in QUARANTINE_COLUMNS}))
        return q

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            key = f"{r.source}: {r.reason.split(':')[0]}"
            out[key] = out.get(key, 0) + 1
        return out
