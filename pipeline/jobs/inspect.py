"""``mmpipe inspect``: a read-only doctor for a data folder.

Scans, never loads whole tables: row counts are exact for small files and
estimated from the first megabytes for big ones; columns come from the header.
Per ECG record a quality verdict; per image a decode check; notes with
encoding problems or empty text.  Exit code 0 whenever it could look.
"""
from __future__ import annotations

import gzip
import time
from functools import partial
from pathlib import Path

import pandas as pd

from pipeline.artifacts import write_json
from pipeline.config import RunConfig
from pipeline.errors import DataError, Quarantine
from pipeline.sources.discover import discover, find_table

EXACT_COUNT_BYTES = 32 * 2**20
SAMPLE_BYTES = 8 * 2**20

REQUIRED = {
    "patients": ["subject_id", "gender", "anchor_age", "anchor_year"],
    "admissions": ["subject_id", "hadm_id", "admittime", "dischtime"],
    "icustays": ["subject_id", "hadm_id", "stay_id", "intime", "outtime"],
    "labevents": ["subject_id", "itemid", "charttime", "valuenum"],
    "chartevents": ["subject_id", "itemid", "charttime", "valuenum"],
    "omr": ["subject_id", "chartdate", "result_name", "result_value"],
    "d_labitems": ["itemid", "label"],
    "d_items": ["itemid", "label"],
    "diagnoses_icd": ["subject_id", "hadm_id", "icd_code"],
}
TIME_COLUMN = {"admissions": "admittime", "icustays": "intime", "labevents": "charttime",
               "chartevents": "charttime", "omr": "chartdate"}


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def table_facts(path: Path) -> dict:
    """Header columns, a row count (exact or estimated) and the time range of a sample."""
    facts: dict = {"file": str(path), "bytes": path.stat().st_size}
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        pf = pq.ParquetFile(path)
        facts.update(columns=pf.schema_arrow.names, rows=pf.metadata.num_rows, rows_exact=True)
        return facts
    with _open(path) as f:
        header = f.readline().decode("utf-8", "replace").strip()
        facts["columns"] = [c.strip().strip('"') for c in header.split(",")]
        if facts["bytes"] <= EXACT_COUNT_BYTES:
            facts["rows"] = sum(1 for _ in f)
            facts["rows_exact"] = True
        else:
            raw = f.read(SAMPLE_BYTES)
            lines = raw.count(b"\n")
            consumed = f.fileobj.tell() if hasattr(f, "fileobj") else len(raw)
            facts["rows"] = int(lines * facts["bytes"] / max(consumed, 1))
            facts["rows_exact"] = False
    return facts


def _time_range(path: Path, col: str, nrows: int | None) -> list[str] | None:
    try:
        s = pd.read_csv(path, usecols=[col], nrows=nrows, dtype="string")[col]
    except (ValueError, KeyError):
        return None
    t = pd.to_datetime(s, errors="coerce", format="mixed").dropna()
    return [str(t.min()), str(t.max())] if len(t) else None


def inspect_mimic(root: Path) -> dict:
    out: dict = {"path": str(root), "version": "1.0 (core/)" if (root / "core").exists() else "2.x/3.x",
                 "tables": {}, "absent": [], "id_consistency": {}}
    for name, req in REQUIRED.items():
        path = None
        for sub in ("hosp", "icu", "core"):
            path = path or find_table(root / sub, name)
        if path is None:
            out["absent"].append(name)
            continue
        facts = table_facts(path)
        cols = set(facts["columns"]) | ({"race"} if "ethnicity" in facts["columns"] else set())
        facts["missing_columns"] = [c for c in req if c not in cols]
        if "ethnicity" in facts["columns"]:
            out["version"] = "1.x (ethnicity column)"
        if name in TIME_COLUMN and path.suffix != ".parquet" and TIME_COLUMN[name] in facts["columns"]:
            facts["time_range"] = _time_range(path, TIME_COLUMN[name], None if facts.get("rows_exact") else 200_000)
            facts["time_range_from"] = "all rows" if facts.get("rows_exact") else "first 200,000 rows"
        out["tables"][name] = facts
    try:
        q = Quarantine()
        from pipeline.sources.mimic_iv import read_admissions, read_icustays, read_patients
        pats = read_patients(root, q)
        adm = read_admissions(root, Quarantine())       # every parseable admission, for the consistency count
        out["id_consistency"]["admissions_subject_not_in_patients"] = int((~adm.subject_id.isin(pats.subject_id)).sum())
        adm = read_admissions(root, q, pats)             # what a run quarantines, orphans included
        icu = read_icustays(root, q)
        if icu is not None:
            out["id_consistency"]["icustays_hadm_not_in_admissions"] = int(
                (~icu.hadm_id.dropna().isin(adm.hadm_id)).sum())
        _event_checks(root, q, out, adm)
        out["bad_rows"] = [r.__dict__ for r in q.rows[:200]]
        out["bad_row_count"] = len(q)
        out["bad_row_kinds"] = q.counts()
    except DataError as e:
        out["error"] = str(e)
    return out


def _event_checks(root: Path, q: Quarantine, out: dict, admissions) -> None:
    """The event tables go through the same ingest as a run (into a scratch folder that is
    deleted, beside the admissions a run keeps, which the code tables join): non-numeric
    values, duplicates, unknown units, bad ids and times, each named by the user's file and
    line, exactly as a run would quarantine them."""
    import tempfile

    from data_schemas.tables import ADMISSIONS
    from pipeline.artifacts import write_parquet
    from pipeline.sources.mimic_iv import ingest_events
    with tempfile.TemporaryDirectory(prefix="mmpipe-inspect-") as tmp:
        write_parquet(admissions, Path(tmp) / "admissions.parquet", ADMISSIONS)
        info = ingest_events(root, Path(tmp), q)
    out["event_checks"] = {k: info.get(k) for k in ("event_rows", "event_bad_rows", "raw_checks",
                                                    "unit_converted", "unit_unknown_dropped")}


def _parallel(fn, items: list, n_jobs: int, chunk: int = 256) -> list:
    """Apply ``fn`` (list -> list of dicts) over chunks in worker processes; order kept."""
    chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]
    if n_jobs <= 1 or len(chunks) <= 1:
        return [r for c in chunks for r in fn(c)]
    from multiprocessing import get_context
    with get_context("fork").Pool(n_jobs) as pool:
        return [r for part in pool.map(fn, chunks) for r in part]


def _ecg_chunk(rows: list[dict], fs: int) -> list[dict]:
    from pipeline.sources.ecg import inspect_ecg
    return inspect_ecg(pd.DataFrame(rows), fs=fs)


def _verdict_counts(rows: list[dict]) -> dict:
    out = {v: sum(r["verdict"] == v for r in rows) for v in ("ok", "warn", "bad")}
    skipped = sum(r["verdict"] == "skipped" for r in rows)
    return {**out, "skipped": skipped} if skipped else out


def inspect_ecg_source(root: Path | None, folders: list[Path], cfg: RunConfig, n_jobs: int = 2,
                       dicom_folders: list[Path] = ()) -> dict:
    from pipeline.sources.ecg import index_wfdb_folder, inspect_ecg, read_record_list
    from pipeline.sources.ecg_dicom import index_dicom_ecg_folder
    out: dict = {"records": []}
    if root is not None:
        q = Quarantine()
        idx = read_record_list(root, q)
        out["record_list"] = str(root)
        out["index_problems"] = [r.__dict__ for r in q.rows[:200]]
        out["index_problem_count"] = len(q)
        out["records"] += _parallel(partial(_ecg_chunk, fs=cfg.ecg.fs), idx.to_dict("records"), n_jobs)
    for folder in folders:
        out["records"] += inspect_ecg(index_wfdb_folder(folder), fs=cfg.ecg.fs)
    for folder in dicom_folders:
        out["records"] += inspect_ecg(index_dicom_ecg_folder(folder), fs=cfg.ecg.fs)
    # a record may be found twice (a folder inside another): keep one verdict per record
    seen, uniq = set(), []
    for r in out["records"]:
        if r["record"] not in seen:
            seen.add(r["record"])
            uniq.append(r)
    out["records"] = uniq
    out["verdicts"] = _verdict_counts(uniq)
    return out


def inspect_images_source(root: Path | None, folders: list[Path], n_jobs: int = 2, deep: bool = False) -> dict:
    from pipeline.sources.imaging import index_image_folder, inspect_images, read_cxr_metadata
    out: dict = {"images": []}
    paths: list[str] = []
    if root is not None:
        q = Quarantine()
        idx = read_cxr_metadata(root, q)
        out["metadata"] = str(root)
        out["index_problems"] = [r.__dict__ for r in q.rows[:200]]
        out["index_problem_count"] = len(q)
        paths += idx["path"].astype(str).tolist()
    for folder in folders:
        paths += index_image_folder(folder)["path"].astype(str).tolist()
    out["images"] = _parallel(partial(inspect_images, deep=deep), sorted(set(paths)), n_jobs)
    out["checks"] = "decoded through MONAI" if deep else "structure only (use --deep to decode every image)"
    out["verdicts"] = _verdict_counts(out["images"])
    return out


def inspect_notes_source(root: Path, cfg: RunConfig) -> dict:
    from pipeline.sources.notes import read_notes
    q = Quarantine()
    notes = read_notes(root, q, note_types=cfg.notes.note_types)
    by_type = notes["note_type"].value_counts().to_dict() if len(notes) else {}
    return {"path": str(root), "notes": len(notes), "by_type": by_type,
            "time_range": [str(notes.charttime.min()), str(notes.charttime.max())] if len(notes) else None,
            "problems": [r.__dict__ for r in q.rows[:200]], "problem_count": len(q)}


def _print_problems(console, title: str, rows: list[dict], n: int = 15) -> None:
    """The first ``n`` quarantine rows (file, row, field, reason) as a table."""
    if not rows:
        return
    from rich.table import Table
    t = Table(title=f"{title}: records that a run would quarantine (first {min(n, len(rows))})")
    for c in ("file", "row", "field", "reason"):
        t.add_column(c)
    for r in rows[:n]:
        t.add_row(Path(r["file"]).name, r["row"], r["field"], r["reason"][:100])
    console.print(t)


def inspect_data(data: Path, cfg: RunConfig, json_out: Path | None = None, deep: bool = False) -> int:
    from rich.console import Console
    from rich.table import Table
    t0 = time.time()
    console = Console()
    sources = discover(data, cfg.sources)  # raises DataError when ROOT itself is unusable
    report: dict = {"root": str(data), "sources": sources.to_json()}
    src = Table(title=f"Sources under {data}")
    for c in ("source", "status"):
        src.add_column(c)
    for k, v in sources.paths.items():
        src.add_row(k, f"[green]found[/] {v}" if v else "[yellow]absent[/]")
    for f in sources.wfdb_folders:
        src.add_row("wfdb folder", str(f))
    for f in sources.image_folders:
        src.add_row("image folder", str(f))
    for f in sources.dicom_ecg_folders:
        src.add_row("DICOM ECG folder", str(f))
    console.print(src)

    def guarded(name, fn):
        try:
            report[name] = fn()
        except DataError as e:
            report[name] = {"error": str(e)}
            console.print(f"[red]{name}: {e}[/]")

    if sources.paths["mimic_iv"]:
        guarded("mimic_iv", lambda: inspect_mimic(sources.paths["mimic_iv"]))
        m = report["mimic_iv"]
        if "tables" in m:
            t = Table(title=f"MIMIC-IV ({m['version']})")
            for c in ("table", "rows", "missing columns", "time range"):
                t.add_column(c)
            for name, f in m["tables"].items():
                rows = f"{f['rows']:,}" + ("" if f.get("rows_exact") else " (est.)")
                t.add_row(name, rows, ", ".join(f["missing_columns"]) or "-",
                          " .. ".join(f.get("time_range") or []) or "-")
            for name in m["absent"]:
                t.add_row(name, "[yellow]absent[/]", "", "")
            console.print(t)
            console.print(f"id consistency: {m.get('id_consistency')}; bad rows: {m.get('bad_row_count', 0)}")
            _print_problems(console, "EHR", m.get("bad_rows", []))
    if sources.paths["ecg"] or sources.wfdb_folders or sources.dicom_ecg_folders:
        guarded("ecg", lambda: inspect_ecg_source(sources.paths["ecg"], sources.wfdb_folders, cfg,
                                                  dicom_folders=sources.dicom_ecg_folders))
        e = report["ecg"]
        if "records" in e:
            console.print(f"ECG records: {len(e['records'])} — verdicts {e['verdicts']}")
            _print_problems(console, "ECG record_list", e.get("index_problems", []))
            bad = [r for r in e["records"] if r["verdict"] != "ok"][:15]
            if bad:
                t = Table(title="ECG records not ok (first 15)")
                t.add_column("record"), t.add_column("verdict"), t.add_column("reasons")
                for r in bad:
                    t.add_row(Path(r["record"]).name, r["verdict"], "; ".join(r["reasons"])[:120])
                console.print(t)
    if sources.paths["notes"]:
        guarded("notes", lambda: inspect_notes_source(sources.paths["notes"], cfg))
        n = report["notes"]
        if "notes" in n:
            console.print(f"notes: {n['notes']:,} readable {n['by_type']}; problems {n['problem_count']}")
    if sources.paths["cxr"] or sources.image_folders:
        guarded("images", lambda: inspect_images_source(sources.paths["cxr"], sources.image_folders, deep=deep))
        im = report["images"]
        if "images" in im:
            console.print(f"images: {len(im['images'])} — verdicts {im['verdicts']}")
            _print_problems(console, "CXR metadata", im.get("index_problems", []))
            for r in [r for r in im["images"] if r["verdict"] != "ok"][:10]:
                tag = "[yellow]skipped[/]" if r["verdict"] == "skipped" else "[red]bad[/]"
                console.print(f"  {tag} {r['file']}: {'; '.join(r['reasons'])}")
    if not (sources.found or sources.wfdb_folders or sources.image_folders or sources.dicom_ecg_folders):
        console.print("[yellow]nothing recognisable found under this folder[/]")
    report["seconds"] = round(time.time() - t0, 2)
    console.print(f"inspected in {report['seconds']} s")
    if json_out:
        write_json(report, json_out)
        console.print(f"details: {json_out}")
    return 0
