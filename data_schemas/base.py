"""A small typed-columns schema (like MEDS): required and optional columns with kinds."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import DataError

KINDS = ("int", "float", "str", "datetime", "bool")


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # one of KINDS
    required: bool = True
    nullable: bool = True
    unique: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"column {self.name}: kind {self.kind!r} not in {KINDS}")


def _kind_ok(series: pd.Series, kind: str) -> bool:
    dt = series.dtype
    if kind == "int":
        return pd.api.types.is_integer_dtype(dt)
    if kind == "float":
        return pd.api.types.is_float_dtype(dt) or pd.api.types.is_integer_dtype(dt)
    if kind == "str":
        return pd.api.types.is_string_dtype(dt) or dt == object
    if kind == "datetime":
        return pd.api.types.is_datetime64_any_dtype(dt)
    if kind == "bool":
        return pd.api.types.is_bool_dtype(dt)
    return False


@dataclass(frozen=True)
class Schema:
    name: str
    columns: tuple[Column, ...]
    extra_allowed: bool = True
    key: tuple[str, ...] = field(default=())

    @property
    def required(self) -> list[str]:
        return [c.name for c in self.columns if c.required]

    def empty(self) -> pd.DataFrame:
        """A frame with no rows and every column of this schema, each of its kind's dtype."""
        dtypes = {"int": "int64", "float": "float64", "str": "object", "datetime": "datetime64[ns]", "bool": "bool"}
        return pd.DataFrame({c.name: pd.Series(dtype=dtypes[c.kind]) for c in self.columns})

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)

    def validate(self, df: pd.DataFrame, file: str | Path | None = None) -> pd.DataFrame:
        """Check columns, kinds, nulls and keys; return the frame unchanged."""
        where = file or f"<{self.name}>"
        missing = [c for c in self.required if c not in df.columns]
        if missing:
            raise DataError(f"required column(s) {missing} missing from {self.name}; found {list(df.columns)[:20]}",
                            file=where, field=missing[0])
        if not self.extra_allowed:
            extra = [c for c in df.columns if self.column(c) is None]
            if extra:
                raise DataError(f"unexpected column(s) {extra} in {self.name}", file=where, field=extra[0])
        for col in self.columns:
            if col.name not in df.columns:
                continue
            s = df[col.name]
            if len(s) and s.isna().all() and col.nullable:
                continue
            if not _kind_ok(s, col.kind):
                bad_row = _first_bad_row(s, col.kind)
                raise DataError(f"expected {col.kind} values in {self.name}, found dtype {s.dtype}"
                                + (f" (e.g. {s.iloc[bad_row]!r})" if bad_row is not None else ""),
                                file=where, row=bad_row, field=col.name)
            if not col.nullable and s.isna().any():
                row = int(np.flatnonzero(s.isna().to_numpy())[0])
                raise DataError(f"null value in non-nullable column of {self.name}", file=where, row=row,
                                field=col.name)
            if col.unique and s.duplicated().any():
                row = int(np.flatnonzero(s.duplicated().to_numpy())[0])
                raise DataError(f"duplicated id {s.iloc[row]!r} in {self.name}", file=where, row=row,
                                field=col.name, hint="each value must appear once")
        if self.key and all(k in df.columns for k in self.key):
            dup = df.duplicated(list(self.key))
            if dup.any():
                row = int(np.flatnonzero(dup.to_numpy())[0])
                raise DataError(f"duplicated key {tuple(df.iloc[row][list(self.key)])} in {self.name}",
                                file=where, row=row, field=",".join(self.key))
        return df


def _first_bad_row(s: pd.Series, kind: str) -> int | None:
    if kind in ("int", "float"):
        conv = pd.to_numeric(s, errors="coerce")
    elif kind == "datetime":
        conv = pd.to_datetime(s, errors="coerce")
    else:
        return None
    bad = conv.isna() & s.notna()
    idx = np.flatnonzero(bad.to_numpy())
    return int(idx[0]) if len(idx) else None
