"""The MIMIC-IV tables beyond labs, vitals and omr, as rows of the long events table.

Every row gets ``time`` (when it happened, as charted) and ``known_time`` (when a
clinician could have seen it); features use a row only once ``known_time`` is at or
before the prediction time.  The rules, per source (also in README "Availability"):

- diagnoses_icd, procedures_icd: coded at discharge, so ``known_time`` is the coded
  admission's ``dischtime`` and ``time`` its ``admittime``; an admission without a
  dischtime (still open) has no known codes.  Each diagnosis also yields its Charlson
  and Elixhauser categories (comorbidipy's Quan et al. 2005 ICD-9/ICD-10 tables).
- prescriptions: an order, known at ``starttime``.
- emar: an administration, known at the later of ``charttime`` and ``storetime``
  (only administered / started / applied events count).
- inputevents: a rate step at ``starttime`` (rate) and at ``endtime`` (0), each known at
  the later of that time and ``storetime``; a fluid volume known once the bag ended.
- outputevents (urine), procedureevents (ventilation, dialysis): the later of the
  event time and ``storetime``.
- microbiologyevents: a culture ordered is known at ``charttime`` (``chartdate`` at the
  end of its day when charttime is empty); a positive culture only at ``storetime``.
- A missing ``storetime`` where the table has one: the row is held back (never
  available, ``known_time`` NULL) and counted, never guessed.

Each part is one SQL SELECT streamed by DuckDB with the columns of
``mimic_iv.ingest_events``'s union; absent tables are reported, never fatal.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import pandas as pd

# Vasopressors in the order they are matched (norepinephrine before epinephrine).
VASOPRESSORS = ("norepinephrine", "epinephrine", "vasopressin", "phenylephrine", "dopamine", "angiotensin ii")
# A small curated drug-class map: a normalised drug name containing the keyword is in the class.
DRUG_CLASSES = {
    "vasopressor": VASOPRESSORS,
    "antibiotic": ("vancomycin", "piperacillin", "cefepime", "ceftriaxone", "cefazolin", "meropenem",
                   "ciprofloxacin", "levofloxacin", "metronidazole", "azithromycin", "ampicillin", "gentamicin",
                   "sulfameth", "clindamycin", "linezolid", "daptomycin", "doxycycline", "nafcillin",
                   "ceftazidime", "aztreonam", "ertapenem", "tobramycin", "amoxicillin", "cephalexin"),
    "anticoagulant": ("heparin", "enoxaparin", "warfarin", "apixaban", "rivaroxaban", "argatroban",
                      "bivalirudin", "dabigatran", "fondaparinux"),
    "insulin": ("insulin",),
    "sedative": ("propofol", "midazolam", "lorazepam", "dexmedetomidine", "diazepam", "ketamine"),
    "opioid": ("morphine", "hydromorphone", "fentanyl", "oxycodone", "methadone", "tramadol", "meperidine"),
    "diuretic": ("furosemide", "bumetanide", "torsemide", "hydrochlorothiazide", "spironolactone",
                 "chlorthalidone", "metolazone", "acetazolamide"),
}
# emar event_txt values that mean the drug reached the patient.
EMAR_GIVEN = ("Administered", "Delayed Administered", "Administered Bolus from IV Drip", "Partial Administered",
              "Started", "Restarted", "Delayed Started", "Applied", "Confirmed", "Rate Change",
              "Administered in Other Location", "Started in Other Location")
# MIMIC-IV concept itemids (mimic-code: urine_output, ventilation, rrt).
URINE_ITEMIDS = (226559, 226560, 226561, 226584, 226563, 226564, 226565, 226567, 226557, 226558)
PROCEDURE_ITEMIDS = {"ventilation": (225792, 225794), "dialysis": (225441, 225802, 225803, 225805, 225809, 225955)}
COMORBIDITY_TABLES = {("charlson", 9): "charlson_icd9_quan", ("charlson", 10): "charlson_icd10_quan",
                      ("elix", 9): "elixhauser_icd9_quan", ("elix", 10): "elixhauser_icd10_quan"}

def _comorbidipy_module(name: str):
    """A data module shipped with comorbidipy, loaded from its file: comorbidipy 0.5's package
    __init__ imports ``pandas.core.common.SettingWithCopyWarning`` (gone in pandas 2), so its
    ``comorbidity()`` cannot be imported; its mapping tables are plain data and are used as is."""
    spec = importlib.util.find_spec("comorbidipy")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("comorbidipy is not installed (pip install 'comorbidipy==0.5.*')")
    path = Path(list(spec.submodule_search_locations)[0]) / f"{name}.py"
    mspec = importlib.util.spec_from_file_location(f"_comorbidipy_{name}", path)
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    return mod


@lru_cache(maxsize=1)
def comorbidity_tables() -> tuple[dict, dict]:
    """(mapping name -> {category: ICD prefixes}, score -> {category: label}) from comorbidipy."""
    mapping = _comorbidipy_module("mapping").mapping
    names = _comorbidipy_module("colnames").get_colnames
    return mapping, {"charlson": names("charlson"), "elix": names("elixhauser")}


def comorbidity_map(codes: pd.DataFrame) -> pd.DataFrame:
    """Distinct (icd_code, icd_version) -> rows (icd_code, icd_version, code 'cmb:<score>:<cat>'), with
    comorbidipy's rule: a code is in a category when it starts with one of the category's prefixes."""
    mapping, _ = comorbidity_tables()
    rows = []
    for (score, version), table in COMORBIDITY_TABLES.items():
        cats = mapping[table]
        sub = codes[codes["icd_version"] == version]["icd_code"].dropna().unique()
        for cat, prefixes in cats.items():
            pref = tuple(prefixes)
            rows += [(c, version, f"cmb:{score}:{cat}") for c in sub if c.startswith(pref)]
    return pd.DataFrame(rows, columns=["icd_code", "icd_version", "code"]).drop_duplicates()


def comorbidity_labels() -> dict[str, str]:
    _, names = comorbidity_tables()
    return {f"cmb:{score}:{cat}": label.strip()[:1].upper() + label.strip()[1:]
            for score, cats in names.items() for cat, label in cats.items()}


def drug_maps(con, staged: str) -> None:
    """Register ``drug_map`` (raw 'rx:'/'med:' code -> code of the normalised name: lower case,
    bracketed text removed, spaces collapsed; NULL when nothing is left) and ``drug_class``
    (raw code -> 'medclass:<class>' of the curated map), built once over the distinct names of
    ``staged`` rather than per row."""
    raw = con.execute(f"SELECT DISTINCT code FROM {staged} WHERE code LIKE 'rx:%' OR code LIKE 'med:%'").df()["code"]
    family, name = raw.str.split(":", n=1).str[0], raw.str.split(":", n=1).str[1]
    norm = (name.str.lower().str.replace(r"\(.*?\)|\[.*?\]", "", regex=True)
            .str.replace(r"\s+", " ", regex=True).str.strip())
    con.register("drug_map", pd.DataFrame({"raw_code": raw, "code": (family + ":" + norm).where(norm != "")}))
    pairs = [(r, f"medclass:{c}") for r, n in zip(raw, norm) for c, kws in DRUG_CLASSES.items()
             if any(k in n for k in kws)]
    con.register("drug_class", pd.DataFrame(pairs, columns=["raw_code", "class_code"]))


def _ts(col: str) -> str:
    return f"TRY_CAST({col} AS TIMESTAMP)"


def _known(event: str, store: str | None) -> str:
    """Later of the event time and storetime; NULL (held back) when the storetime is missing."""
    if store is None:
        return event
    return f"CASE WHEN {_ts(store)} IS NULL THEN NULL ELSE greatest({event}, {_ts(store)}) END"


def _cols(scan: str) -> str:
    return ("SELECT TRY_CAST(subject_id AS BIGINT) subject_id, TRY_CAST(hadm_id AS DOUBLE) hadm_id, "
            "{time} time, {code} code, {value} value, {unit} unit, {raw_time} raw_time, NULL raw_value, "
            "{rowref} row_ref, {known} known_time FROM " + scan)


def _codes_part(scan: str, adm: str, kind: str, with_cmb: bool) -> str:
    """diagnoses/procedures of every admission, known at its dischtime; plus comorbidity categories."""
    src = (f"SELECT TRY_CAST(d.subject_id AS BIGINT) subject_id, TRY_CAST(d.hadm_id AS DOUBLE) hadm_id, "
           f"a.admittime time, trim(d.icd_code) icd_code, TRY_CAST(d.icd_version AS INTEGER) icd_version, "
           f"a.dischtime known_time, d.hadm_id raw_time FROM {scan} d "
           f"LEFT JOIN read_parquet('{adm}') a ON TRY_CAST(d.hadm_id AS BIGINT) = a.hadm_id")
    out = (f"SELECT subject_id, hadm_id, time, '{kind}:' || icd_version || ':' || icd_code code, 1.0 value, "
           f"NULL unit, raw_time, NULL raw_value, 'hadm_id=' || raw_time || ' icd_code=' || icd_code row_ref, "
           f"known_time FROM ({src}) s")
    if with_cmb:
        out += (" UNION ALL SELECT DISTINCT subject_id, hadm_id, time, m.code, 1.0, NULL, raw_time, NULL, "
                f"'hadm_id=' || raw_time, known_time FROM ({src}) s JOIN cmb_map m "
                "ON s.icd_code = m.icd_code AND s.icd_version = m.icd_version "
                "WHERE s.time IS NOT NULL")   # a code row without its admission is quarantined once, above
    return out


def _prescriptions(scan: str) -> str:
    """Raw drug names ('rx:<drug>'); ``drug_maps`` normalises them and adds the classes after staging."""
    return _cols(f"{scan} WHERE trim(coalesce(drug, '')) <> ''").format(
        time=_ts("starttime"), code="'rx:' || trim(drug)", value="1.0", unit="NULL", raw_time="starttime",
        rowref="'subject_id=' || subject_id || ' starttime=' || starttime", known=_ts("starttime"))


def _emar(scan: str, has_store: bool) -> str:
    given = ", ".join("'" + g.replace("'", "''") + "'" for g in EMAR_GIVEN)
    return _cols(f"{scan} WHERE trim(event_txt) IN ({given}) AND trim(coalesce(medication, '')) <> ''").format(
        time=_ts("charttime"), code="'med:' || trim(medication)", value="1.0", unit="NULL", raw_time="charttime",
        rowref="'emar_id=' || emar_id", known=_known(_ts("charttime"), "storetime" if has_store else None))


def _inputevents(scan: str, items: str | None, has_store: bool) -> str:
    """Vasopressor rate steps (start: rate, end: 0) and finished fluid volumes (mL)."""
    store = "storetime" if has_store else None
    label = "lower(coalesce(i.label, ''))" if items else "''"
    vaso = " OR ".join(f"contains(label, '{k}')" for k in VASOPRESSORS)
    fluid_rows = "ordercategoryname ILIKE '%fluid%' AND lower(amountuom) = 'ml'"
    # the file is read once: its vasopressor and fluid rows, kept for the three selects below
    joined = (f"SELECT * FROM (SELECT e.*, {label} label FROM {scan} e"
              + (f" LEFT JOIN {items} i ON e.itemid = i.itemid" if items else "")
              + f") WHERE (({vaso}) AND rate IS NOT NULL) OR ({fluid_rows})")
    drug = "CASE " + " ".join(f"WHEN contains(label, '{k}') THEN '{k}'" for k in VASOPRESSORS) + " END"
    common = ("SELECT TRY_CAST(subject_id AS BIGINT) subject_id, TRY_CAST(hadm_id AS DOUBLE) hadm_id, {t} time, "
              "{code} code, {v} value, {u} unit, {rt} raw_time, NULL raw_value, "
              "'stay_id=' || stay_id || ' orderid=' || orderid || ' starttime=' || starttime row_ref, {k} known_time "
              "FROM ie WHERE {w}")
    start = common.format(t=_ts("starttime"), code=f"'input:' || {drug}", v="TRY_CAST(rate AS DOUBLE)",
                          u="rateuom", rt="starttime", k=_known(_ts("starttime"), store),
                          w=f"({vaso}) AND rate IS NOT NULL")
    end = common.format(t=_ts("endtime"), code=f"'input:' || {drug}", v="0.0", u="rateuom", rt="endtime",
                        k=_known(_ts("endtime"), store), w=f"({vaso}) AND rate IS NOT NULL")
    fluid = common.format(t=_ts("endtime"), code="'fluid:iv'", v="TRY_CAST(amount AS DOUBLE)", u="'mL'",
                          rt="endtime", k=_known(_ts("endtime"), store), w=fluid_rows)
    return f"WITH ie AS MATERIALIZED ({joined}) {start} UNION ALL {end} UNION ALL {fluid}"


def _outputevents(scan: str, has_store: bool) -> str:
    ids = ", ".join(f"'{i}'" for i in URINE_ITEMIDS)
    return _cols(f"{scan} WHERE trim(itemid) IN ({ids})").format(
        time=_ts("charttime"), code="'output:urine'", value="TRY_CAST(value AS DOUBLE)", unit="'mL'",
        raw_time="charttime", rowref="'stay_id=' || stay_id || ' charttime=' || charttime",
        known=_known(_ts("charttime"), "storetime" if has_store else None))


def _procedureevents(scan: str, has_store: bool) -> str:
    parts = []
    for name, ids in PROCEDURE_ITEMIDS.items():
        idl = ", ".join(f"'{i}'" for i in ids)
        parts.append(_cols(f"{scan} WHERE trim(itemid) IN ({idl})").format(
            time=_ts("starttime"), code=f"'proc:{name}'", value="1.0", unit="NULL", raw_time="starttime",
            rowref="'stay_id=' || stay_id || ' starttime=' || starttime",
            known=_known(_ts("starttime"), "storetime" if has_store else None)))
    return " UNION ALL ".join(parts)


def _micro(scan: str, has_store: bool) -> str:
    """One 'culture ordered' row per specimen; one 'positive' row per specimen with an organism,
    known once its first organism row was stored (later susceptibility rows change nothing)."""
    t = f"coalesce({_ts('charttime')}, TRY_CAST(chartdate AS DATE) + INTERVAL 1 DAY - INTERVAL 1 SECOND)"
    org = "trim(coalesce(org_name, '')) <> ''"
    first = f"min({_ts('storetime')}) FILTER (WHERE {org})" if has_store else "NULL"
    spec = (f"SELECT subject_id, hadm_id, micro_specimen_id, min({t}) t, bool_or({org}) pos, {first} st, "
            f"min(coalesce(charttime, chartdate)) raw FROM {scan} GROUP BY subject_id, hadm_id, micro_specimen_id")
    sel = ("SELECT TRY_CAST(subject_id AS BIGINT) subject_id, TRY_CAST(hadm_id AS DOUBLE) hadm_id, t time, "
           "'{c}' code, 1.0 value, NULL unit, raw raw_time, NULL raw_value, "
           "'micro_specimen_id=' || micro_specimen_id row_ref, {k} known_time FROM s{w}")
    known_pos = "CASE WHEN st IS NULL THEN NULL ELSE greatest(t, st) END"
    return (f"WITH s AS ({spec}) " + sel.format(c="micro:culture", k="t", w="")
            + " UNION ALL " + sel.format(c="micro:positive", k=known_pos, w=" WHERE pos"))


def extra_parts(root: Path, con, admissions_parquet: Path, table_path, scan, columns) -> tuple[list, list, list]:
    """(parts [(table, path, sql)], found, absent) for the tables of this module present under root."""
    parts, found, absent = [], [], []
    adm = str(admissions_parquet).replace("'", "''")
    for table in ("diagnoses_icd", "procedures_icd"):
        path = table_path(root, table)
        if path is None:
            absent.append(table)
            continue
        cols = columns(con, path)
        _need(path, cols, ["subject_id", "hadm_id", "icd_code", "icd_version"])
        if table == "diagnoses_icd":
            distinct = con.execute(f"SELECT DISTINCT trim(icd_code) icd_code, TRY_CAST(icd_version AS INTEGER) "
                                   f"icd_version FROM {scan(path)}").df()
            con.register("cmb_map", comorbidity_map(distinct))
        parts.append((table, path, _codes_part(scan(path), adm, "dx" if table == "diagnoses_icd" else "px",
                                               table == "diagnoses_icd")))
        found.append(table)
    items = table_path(root, "d_items")
    items_sql = (f"(SELECT itemid, label FROM {scan(items)})" if items is not None else None)
    builders = {
        "prescriptions": (["subject_id", "starttime", "drug"], lambda s, c: _prescriptions(s)),
        "emar": (["subject_id", "charttime", "medication", "event_txt", "emar_id"],
                 lambda s, c: _emar(s, "storetime" in c)),
        "inputevents": (["subject_id", "stay_id", "starttime", "endtime", "itemid", "rate", "amount",
                         "amountuom", "ordercategoryname", "orderid"],
                        lambda s, c: _inputevents(s, items_sql, "storetime" in c)),
        "outputevents": (["subject_id", "stay_id", "charttime", "itemid", "value"],
                         lambda s, c: _outputevents(s, "storetime" in c)),
        "procedureevents": (["subject_id", "stay_id", "starttime", "itemid"],
                            lambda s, c: _procedureevents(s, "storetime" in c)),
        "microbiologyevents": (["subject_id", "micro_specimen_id", "chartdate", "charttime", "org_name"],
                               lambda s, c: _micro(s, "storetime" in c)),
    }
    for table, (required, build) in builders.items():
        path = table_path(root, table)
        if path is None:
            absent.append(table)
            continue
        cols = columns(con, path)
        _need(path, cols, required)
        sql = build(scan(path), cols)
        if "hadm_id" not in cols:
            sql = sql.replace("TRY_CAST(hadm_id AS DOUBLE)", "NULL::DOUBLE")
        parts.append((table, path, sql))
        found.append(table)
    return parts, found, absent


def _need(path: Path, have: list[str], cols: list[str]) -> None:
    from pipeline.errors import DataError
    missing = [c for c in cols if c not in have]
    if missing:
        raise DataError(f"required column(s) {missing} missing; found {have}", file=path, field=missing[0],
                        hint="is this a MIMIC-IV 2.x table?")


def read_icd_labels(root: Path, con, table_path, scan) -> pd.DataFrame:
    """code -> label for the ICD codes that occur (d_icd_diagnoses / d_icd_procedures) and the
    comorbidity categories."""
    frames = [pd.DataFrame(list(comorbidity_labels().items()), columns=["code", "label"])]
    for table, dtable, kind in (("diagnoses_icd", "d_icd_diagnoses", "dx"), ("procedures_icd", "d_icd_procedures", "px")):
        used, names = table_path(root, table), table_path(root, dtable)
        if used is None or names is None:
            continue
        frames.append(con.execute(
            f"SELECT DISTINCT '{kind}:' || trim(d.icd_version) || ':' || trim(d.icd_code) code, d.long_title label "
            f"FROM {scan(names)} d SEMI JOIN (SELECT trim(icd_code) c, trim(icd_version) v FROM {scan(used)}) u "
            f"ON trim(d.icd_code) = u.c AND trim(d.icd_version) = u.v").df())
    return pd.concat(frames, ignore_index=True)
