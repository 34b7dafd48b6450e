"""On-disk artifacts: atomic writes, content hashes, manifests and the stage cache.

A stage is a function from artifacts to artifacts.  ``run_stage`` skips it only
when its manifest records the same input hashes and config hash as now;
otherwise it runs the function into a temporary folder and renames the folder
into place, so a killed run never leaves a half-written output.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import pandas as pd

from data_schemas.base import Schema
from pipeline.errors import DataError
from pipeline.progress import event

_PKG = Path(__file__).resolve().parent


def _code_hash() -> str:
    """Hash of the source of everything a stage's output depends on (sources/, stages/,
    data_schemas/, config, errors, this module): editing any of it reruns the stages."""
    h = hashlib.sha256()
    files = [*sorted((_PKG / "sources").glob("*.py")), *sorted((_PKG / "stages").glob("*.py")),
             *sorted((_PKG.parent / "data_schemas").glob("*.py")),
             _PKG / "config.py", _PKG / "errors.py", Path(__file__).resolve()]
    for f in files:
        if f.exists():
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


CODE_VERSION = f"0.2.0+{_code_hash()}"


def file_hash(path: Path, full: bool | None = None) -> str:
    """sha256 of a file; for big raw inputs (>64 MiB) of size, mtime and head/tail blocks."""
    path = Path(path)
    st = path.stat()
    h = hashlib.sha256()
    if full is None:
        full = st.st_size <= 64 * 2**20
    with open(path, "rb") as f:
        if full:
            for block in iter(lambda: f.read(2**20), b""):
                h.update(block)
        else:
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
            h.update(f.read(2**20))
            f.seek(max(0, st.st_size - 2**20))
            h.update(f.read(2**20))
    return h.hexdigest()[:16]


def tree_hash(path: Path, pattern: str = "*") -> str:
    """A cheap hash of a folder's listing (names, sizes, mtimes)."""
    path = Path(path)
    if path.is_file():
        return file_hash(path)
    h = hashlib.sha256()
    for p in sorted(path.rglob(pattern)):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # it exists, owned by someone else
        return True
    return True


def tmp_path(path: Path) -> Path:
    """The temporary sibling ``.NAME.tmpPID`` a write goes to before its rename; leftovers of
    killed writers (dead pids) are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.tmp"
    for old in path.parent.glob(f"{prefix}*"):
        pid = old.name[len(prefix):]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
    return path.with_name(f"{prefix}{os.getpid()}")


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` then rename to ``path``: a write that fails midway (disk full, a kill)
    leaves the old file or none, never a partial one, and no temporary file behind."""
    path = Path(path)
    tmp = tmp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_parquet(df: pd.DataFrame, path: Path, schema: Schema | None = None) -> Path:
    """Validate against ``schema`` then write atomically (tmp file + rename)."""
    path = Path(path)
    if schema is not None:
        schema.validate(df, path)
    return atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))


class ParquetShardWriter:
    """Append DataFrames (same columns) to one parquet file, written atomically on close.

    ``with ParquetShardWriter(path, schema) as w: w.write(part)``; every part is validated
    against ``schema`` and cast to the first part's Arrow schema (a later part whose
    columns differ is an error, not a silently different file).  Each part becomes its
    own row group(s), so readers can fetch a shard's rows without reading the rest."""

    def __init__(self, path: Path, schema: Schema | None = None, row_group_size: int = 5000):
        self.path, self.schema, self.row_group_size = Path(path), schema, row_group_size
        self.tmp = tmp_path(self.path)
        self.writer = None
        self.rows = 0
        self.closed = False

    def write(self, df: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq
        if self.schema is not None:
            self.schema.validate(df, self.path)
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            table = pa.Table.from_pandas(df, preserve_index=False)
            self.writer = pq.ParquetWriter(self.tmp, table.schema)
        else:
            if list(df.columns) != self.writer.schema.names:
                raise DataError("a shard's columns differ from the first shard's", file=self.path,
                                field=str(sorted(set(df.columns) ^ set(self.writer.schema.names))[:3]))
            table = pa.Table.from_pandas(df, schema=self.writer.schema, preserve_index=False)
        self.writer.write_table(table, row_group_size=self.row_group_size)
        self.rows += len(df)

    def close(self) -> Path:
        """Finish the file (once).  With no part written: an empty file with the schema's
        columns (or no columns when there is no schema)."""
        if self.closed:
            return self.path
        self.closed = True
        if self.writer is None:
            write_parquet(self.schema.empty() if self.schema is not None else pd.DataFrame(), self.path, self.schema)
            return self.path
        self.writer.close()
        os.replace(self.tmp, self.path)
        return self.path

    def __enter__(self) -> "ParquetShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            if self.writer is not None:
                self.writer.close()
            self.tmp.unlink(missing_ok=True)


def read_parquet(path, schema: Schema | None = None, columns: list[str] | None = None) -> pd.DataFrame:
    """A parquet file or folder as a frame (``schema`` checked when every column is read), read by
    path through pyarrow's own file system.  Given a path, pandas' ``read_parquet`` opens the file
    in Python and hands pyarrow the file object; pyarrow can release that object on one of its threads
    after the read returns, and when that happens as the interpreter exits the process aborts
    ("terminate called without an active exception", exit 134; apache/arrow#34314, #50482: a
    hang there).  Every parquet read in the package and the benchmarks goes through here
    (tests/test_artifacts.py checks)."""
    import errno

    import pyarrow.fs
    path = Path(path).expanduser()
    if not path.exists():      # the message pandas gives, not pyarrow's bare path
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
    df = pd.read_parquet(str(path), columns=columns, filesystem=pyarrow.fs.LocalFileSystem())
    if schema is not None and columns is None:
        schema.validate(df, path)
    return df


def write_json(obj, path: Path) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str)
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def config_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _row_counts(folder: Path) -> dict[str, int]:
    import pyarrow.parquet as pq
    out = {}
    for p in sorted(folder.rglob("*.parquet")):
        out[str(p.relative_to(folder))] = pq.ParquetFile(p).metadata.num_rows
    return out


def run_stage(name: str, out_dir: Path, inputs: dict[str, str], config: dict,
              fn: Callable[[Path], dict | None], log: Callable[[str], None] = print) -> Path:
    """Run ``fn(tmp_dir)`` unless ``out_dir/manifest.json`` already records the same
    input hashes and config hash.  ``inputs`` maps an input name to its hash
    (use ``file_hash``/``tree_hash`` or an upstream stage's ``output_hash``).
    ``fn`` may return extra manifest fields.  Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    chash = config_hash(config)
    manifest_path = out_dir / "manifest.json"
    if manifest_path.exists():
        m = read_json(manifest_path)
        if m.get("inputs") == inputs and m.get("config_hash") == chash and m.get("code_version") == CODE_VERSION:
            log(f"[{name}] up to date, skipped")
            event(name, "skipped", reason="inputs and config unchanged")
            return out_dir
        log(f"[{name}] inputs or config changed, rerunning")
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    t0 = time.time()
    log(f"[{name}] running")
    event(name, "start")
    try:
        extra = fn(tmp) or {}
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)     # a failed stage leaves nothing (a kill: the next run clears it)
        raise
    manifest = {
        "stage": name, "inputs": inputs, "config_hash": chash, "config": config,
        "code_version": CODE_VERSION, "row_counts": _row_counts(tmp),
        "seconds": round(time.time() - t0, 3), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **extra,
    }
    write_json(manifest, tmp / "manifest.json")
    old = out_dir.with_name(f".{out_dir.name}.old")
    if out_dir.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old.exists():
        shutil.rmtree(old)
    event(name, "done", seconds=manifest["seconds"], rows=manifest["row_counts"],
          quarantined=manifest.get("quarantined"))
    log(f"[{name}] done in {manifest['seconds']:.1f}s " +
        ", ".join(f"{k}={v}" for k, v in manifest["row_counts"].items()))
    return out_dir


def output_hash(stage_dir: Path) -> str:
    """The identity of a finished stage's output: hash of its manifest."""
    return file_hash(Path(stage_dir) / "manifest.json", full=True)


class RunLock:
    """``with RunLock(folder):`` -- one job at a time writes a RUN folder.

    The lock is ``folder/.mmpipe.lock`` holding the owner's pid, created exclusively.  A second
    job gets a ``DataError`` naming the lock file and the pid that holds it; a lock left by a
    process that no longer runs (killed) is taken over."""

    NAME = ".mmpipe.lock"

    def __init__(self, folder: Path, job: str = "job"):
        self.path, self.job = Path(folder) / self.NAME, job

    def holder(self) -> dict | None:
        """The live process holding the lock ({pid, job, since}), or None (free or stale)."""
        try:
            info = json.loads(self.path.read_text() or "{}")
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            info = {}
        pid = int(info.get("pid", 0) or 0)
        return info if pid_alive(pid) and pid != os.getpid() else None

    def check(self) -> None:
        """Raise the lock error if another live process holds the lock (without taking it)."""
        info = self.holder()
        if info is not None:
            raise DataError(f"the folder is in use by another mmpipe {info.get('job', 'job')} "
                            f"(pid {info['pid']}, since {info.get('since', '?')})", file=self.path, field="lock",
                            hint="wait for it to finish, or use another folder")

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self.check()
                self.path.unlink(missing_ok=True)      # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "job": self.job, "since": time.strftime("%Y-%m-%dT%H:%M:%S")}, f)
            return self
        raise DataError("could not take the folder's lock", file=self.path, field="lock")

    def __exit__(self, *exc) -> None:
        try:
            if json.loads(self.path.read_text()).get("pid") == os.getpid():
                self.path.unlink()
        except (OSError, ValueError):
            pass
