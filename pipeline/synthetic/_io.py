"""Small writing helpers shared by the synthetic generators.

Tables are written as MIMIC writes them: gzip-compressed CSV, timestamps as
``YYYY-MM-DD HH:MM:SS``, empty fields for missing values.  The gzip header
carries no file name or time, so the same seed gives byte-identical files.
"""
from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pandas as pd

TIME_FMT = "%Y-%m-%d %H:%M:%S"


def fmt_time(values) -> np.ndarray:
    """Datetimes (any array-like, NaT allowed) as 'YYYY-MM-DD HH:MM:SS' strings ('' for NaT)."""
    arr = pd.to_datetime(pd.Series(values)).to_numpy().astype("datetime64[s]")
    nat = np.isnat(arr)
    raw = np.datetime_as_string(np.where(nat, np.datetime64("2000-01-01T00:00:00"), arr), unit="s")
    chars = np.ascontiguousarray(raw, dtype="U19").view(np.uint32).reshape(-1, 19).copy()
    chars[:, 10] = ord(" ")  # 'YYYY-MM-DDTHH:MM:SS' -> 'YYYY-MM-DD HH:MM:SS'
    out = chars.view("U19").ravel().astype(object)
    out[nat] = ""
    return out


def fmt_num(values, decimals: int) -> np.ndarray:
    """Numbers as text with a fixed number of decimals ('' for NaN), the way MIMIC writes ``value``."""
    v = np.asarray(values, dtype=float)
    if decimals == 0:
        out = np.round(v).astype("int64", copy=False).astype(str).astype(object) if len(v) else np.array([], object)
    else:
        out = np.char.mod(f"%.{decimals}f", v).astype(object)
    out[np.isnan(v)] = ""
    return out


def write_csv(df: pd.DataFrame, path: Path, columns: list[str], gz: bool = True,
              float_format: str = "%.10g") -> int:
    """Write ``df[columns]`` to ``path`` (gzip unless ``gz`` is False) via a temporary file; return the row count."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path.name}: columns {missing} were not generated")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    out = df[columns].copy()
    for c in columns:  # numbers as text up front: pandas' own float formatting is per value and slow
        if out[c].dtype.kind == "f":
            v = out[c].to_numpy(dtype=float)
            text = np.char.mod(float_format, v).astype(object)
            text[np.isnan(v)] = ""
            out[c] = text
    buf = io.StringIO()
    out.to_csv(buf, index=False, lineterminator="\n")
    data = buf.getvalue().encode("utf-8")
    if gz:
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                                   compresslevel=4) as f:
            f.write(data)
    else:
        tmp.write_bytes(data)
    tmp.replace(path)
    return len(df)


def minutes(x) -> pd.TimedeltaIndex:
    """Whole minutes (rounded) as timedeltas, from a float array of minutes."""
    return pd.to_timedelta(np.round(np.asarray(x, dtype=float)), unit="m")


def seconds(x) -> pd.TimedeltaIndex:
    """Whole seconds (rounded) as timedeltas, from a float array of seconds."""
    return pd.to_timedelta(np.round(np.asarray(x, dtype=float)), unit="s")


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=float)))


def child_seeds(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` independent 63-bit seeds drawn from ``rng`` (one per record, so workers are order-free)."""
    return rng.integers(0, 2**63 - 1, size=n, dtype=np.int64)
