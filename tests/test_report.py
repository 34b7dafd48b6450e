"""The HTML report of a real run (MIMIC-IV demo): self-contained, every section present,
and rendered by a real headless browser (Debian's chromium through playwright)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import RunConfig
from pipeline.jobs.train import train

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SECTIONS = {  # element id -> heading text
    "data-summary": "Data summary", "leakage": "Leakage audit", "models": "Model comparison",
    "explanations": "SHAP", "modality": "Modality attribution", "subgroups": "Subgroups",
    "patients": "Patient cards", "quarantine": "Quarantine", "model-card": "Model card",
}


class _Refs(HTMLParser):
    """Every URL-bearing attribute, the <img> sources and the text under each <h2 id>."""

    def __init__(self):
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []
        self.imgs: list[str] = []
        self.headings: dict[str, str] = {}
        self._h2: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in ("src", "href", "srcset", "data", "action", "poster"):
            if a.get(k):
                self.urls.append((tag, k, a[k]))
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag == "h2" and a.get("id"):
            self._h2 = a["id"]
            self.headings[self._h2] = ""

    def handle_endtag(self, tag):
        if tag == "h2":
            self._h2 = None

    def handle_data(self, data):
        if self._h2:
            self.headings[self._h2] += data


@pytest.fixture(scope="module")
def report_run(mimic_demo, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("report") / "run"
    train(mimic_demo, run, RunConfig.model_validate({"model": {"gbm_estimators": 60}}), report=True)
    return run


@pytest.fixture(scope="module")
def html_path(report_run) -> Path:
    p = report_run / "report" / "index.html"
    assert p.exists(), "train(report=True) did not write RUN/report/index.html"
    return p


def test_report_is_self_contained_with_every_section(html_path):
    html = html_path.read_text(encoding="utf-8")
    refs = _Refs()
    refs.feed(html)
    external = [(t, k, v[:80]) for t, k, v in refs.urls
                if not v.startswith(("#", "data:"))]
    assert not external, f"the report references outside resources: {external}"
    assert "<link" not in html.lower() and "<script" not in html.lower() and "@import" not in html
    assert "url(" not in html.replace("data:image", ""), "CSS must not load anything"
    assert len(refs.imgs) >= 5, f"expected curves, SHAP bar and swarm, modality and decision plots, got {len(refs.imgs)}"
    assert "@media print" in html, "no print stylesheet"
    assert all(src.startswith("data:image/png;base64,") for src in refs.imgs)
    for sid, title in SECTIONS.items():
        assert sid in refs.headings, f"section #{sid} ({title}) is missing"
        assert title.lower() in refs.headings[sid].lower(), (sid, refs.headings[sid])
    nav = [v for t, k, v in refs.urls if t == "a"]
    assert all(v[1:] in refs.headings for v in nav if v.startswith("#")), "a table-of-contents link points nowhere"
    assert "confidence intervals are wide" in html  # the demo's test split is small
    assert "gbm_early" in html and "(primary)" in html


def test_quarantine_reasons_are_truncated(report_run, tmp_path):
    """A quarantine reason is the pipeline's own message; a long one is cut so no record text can ride along."""
    import pandas as pd

    from pipeline.jobs.report import MAX_REASON_CHARS, write_report
    run = tmp_path / "run"
    shutil.copytree(report_run, run)
    secret = "PATIENT NARRATIVE " * 40
    pd.DataFrame({"source": ["notes"], "file": ["/data/note/radiology.csv.gz"], "row": [7], "field": ["text"],
                  "reason": ["unreadable: " + secret]}).to_parquet(run / "quarantine.parquet")
    html = write_report(run, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "1 record(s) quarantined" in html and "radiology.csv.gz" in html
    assert secret[:MAX_REASON_CHARS] not in html and html.count("PATIENT NARRATIVE") <= MAX_REASON_CHARS // 18 + 1


@pytest.fixture(scope="module")
def synth_run(synth_root, tmp_path_factory) -> Path:
    """A run on the synthetic cohort with every modality (ECG, notes, chest X-rays), report written."""
    cfg = RunConfig.model_validate({"model": {"gbm_estimators": 30, "fusion_models": ["gbm_early"],
                                              "single_modality_baselines": False}})
    run = tmp_path_factory.mktemp("synth_report") / "run"
    train(synth_root, run, cfg, report=True)
    return run


def test_report_never_prints_note_text(synth_root, synth_run):
    """On a cohort with notes, no stretch of any note's text reaches the report."""
    import pandas as pd
    note_files = sorted(synth_root.rglob("note/*.csv.gz"))
    assert note_files, f"the synthetic cohort at {synth_root} has no note/*.csv.gz"
    html = (synth_run / "report" / "index.html").read_text(encoding="utf-8")
    texts = pd.concat([pd.read_csv(f, usecols=["text"]) for f in note_files])["text"].dropna().astype(str)
    for text in texts.sample(min(len(texts), 300), random_state=0):
        words = text.split()
        for k in range(0, max(len(words) - 6, 1), 6):
            chunk = " ".join(words[k:k + 6])
            if len(chunk) >= 30:
                assert chunk not in html, f"note text in the report: {chunk!r}"


def test_notes_availability_rederived_from_raw_files_is_in_leakage_json_and_the_report(synth_run):
    """The synthetic notes include date-only discharge summaries and notes without a storetime: the
    audit re-derives each used note's availability from the raw file; none was used early."""
    import json
    av = json.loads((synth_run / "leakage.json").read_text())["availability"]
    notes = av["per_source"]["notes"]
    assert notes["usable"] > 0 and notes["used_before_available"] == 0
    assert sum(notes["held_back"].values()) > 0 and all(k.startswith("note ") for k in notes["held_back"])
    html = (synth_run / "report" / "index.html").read_text(encoding="utf-8")
    assert "<td>notes</td>" in html


def _card_images(html: str) -> dict[str, int]:
    refs = _Refs()
    refs.feed(html)
    alts = [a for a in re.findall(r'<img alt="([^"]*)"', html)]
    return {kind: sum(a.startswith(kind) for a in alts) for kind in ("SHAP waterfall", "12-lead ECG", "Chest X-ray")}


def test_patient_cards_show_waterfall_ecg_and_xray(synth_run):
    html = (synth_run / "report" / "index.html").read_text(encoding="utf-8")
    n = _card_images(html)
    assert n["SHAP waterfall"] == 6, n                       # one per card
    assert n["12-lead ECG"] >= 1 and n["Chest X-ray"] >= 1, n
    assert "Leads that moved the score:" in html
    assert "Decision curve" in html and 'alt="Decision curve"' in html
    # notes features are named by their top TF-IDF terms, never "notes 3"
    # (wherever a notes feature is named in the page or in the score reasons, it is by its terms)
    assert not re.search(r">notes \d+<|notes \d+\s*=|notes \d+\)", html)
    import pandas as pd
    reasons = " ".join(pd.read_parquet(synth_run / "test_scores.parquet")["reasons"].astype(str))
    assert not re.search(r"notes \d+\s*=", reasons)
    meta = json.loads((synth_run / "model" / "model.json").read_text())
    assert meta["code_labels"]["notes__0"].startswith("notes: ")
    from pipeline.jobs.score import pretty_namer                 # the score files' reasons use the same names
    assert pretty_namer(meta["code_labels"])("notes__0") == meta["code_labels"]["notes__0"]


def test_show_signals_false_leaves_waveforms_and_images_out(synth_run, tmp_path):
    from pipeline.jobs.report import write_report
    run = tmp_path / "run"
    shutil.copytree(synth_run, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["report"] = {"show_signals": False}
    (run / "config.json").write_text(json.dumps(cfg))
    html = write_report(run, tmp_path / "r.html").read_text(encoding="utf-8")
    n = _card_images(html)
    assert n["SHAP waterfall"] == 6 and n["12-lead ECG"] == 0 and n["Chest X-ray"] == 0, n
    assert "report.show_signals: false" in html


def test_lead_marking_follows_the_influence():
    from pipeline.jobs.report_cards import marked_leads
    infl = np.full(12, np.nan)
    infl[[0, 3, 7]] = [0.30, -0.10, 0.05]
    assert marked_leads(infl) == [0, 3]                     # >= 25 % of the largest, largest first
    assert marked_leads(np.where(np.isnan(infl), np.nan, 0.001)) == []


def _launch(p):
    from playwright.sync_api import Error as PlaywrightError
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("Debian's chromium is not installed (make browser); playwright's own download is not used")
    try:
        return p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
    except PlaywrightError as e:  # the launch failure is the skip reason
        pytest.skip(f"playwright could not launch {exe}: {type(e).__name__}: {str(e)[:300]}")


def test_report_renders_in_headless_chromium(html_path, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    from PIL import Image
    shot = tmp_path / "report.png"
    with sync_api.sync_playwright() as p:
        browser = _launch(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            failed = []
            page.on("requestfailed", lambda r: failed.append(r.url[:100]))
            page.goto(html_path.resolve().as_uri(), wait_until="load")
            images = page.evaluate(
                "Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])")
            overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            sections = page.evaluate("Array.from(document.querySelectorAll('h2[id]')).map(h => h.id)")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert not failed, f"requests failed while loading: {failed}"
    assert len(images) >= 5 and any(alt == "Decision curve" for alt, *_ in images)
    assert sum(alt.startswith("SHAP waterfall") for alt, *_ in images) >= 1
    for alt, complete, w, h in images:
        assert complete and w > 0 and h > 0, f"plot {alt!r} did not load ({w}x{h})"
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px: a table or plot is too wide"
    assert set(SECTIONS) <= set(sections)

    im = Image.open(shot).convert("RGB")
    assert im.width >= 1200 and im.height > 2000, f"screenshot too small: {im.size}"
    small = im.resize((im.width // 4, im.height // 4))
    colours = small.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "the page renders with almost no colours"
    non_white = sum(n for n, c in colours if min(c) < 240) / (small.width * small.height)
    assert non_white > 0.05, f"the page is nearly blank ({non_white:.1%} non-white pixels)"


def test_cli_report_writes_the_file(report_run, tmp_path):
    out = tmp_path / "elsewhere" / "report.html"
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "report", "--run", str(report_run), "--out", str(out)],
                       check=False, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.exists() and r.stdout.strip().endswith(str(out))
    html = out.read_text(encoding="utf-8")
    assert "Model card" in html and html.count("data:image/png;base64,") >= 4


def test_report_of_a_folder_that_is_not_a_run_names_the_file(tmp_path):
    from pipeline.errors import DataError
    from pipeline.jobs.report import write_report
    with pytest.raises(DataError, match="metrics.json is missing"):
        write_report(tmp_path)


def test_cards_render_and_print_in_headless_chromium(synth_run, tmp_path):
    """The synthetic run's report (ECG and X-ray in the cards) loads every picture in Chromium,
    does not scroll sideways, and prints: the print stylesheet hides the navigation and the
    PDF has pages."""
    sync_api = pytest.importorskip("playwright.sync_api")
    html_file = synth_run / "report" / "index.html"
    with sync_api.sync_playwright() as p:
        browser = _launch(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(html_file.resolve().as_uri(), wait_until="load")
            images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
            overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            page.emulate_media(media="print")
            nav = page.evaluate("getComputedStyle(document.querySelector('nav')).display")
            card = page.evaluate("getComputedStyle(document.querySelector('.card')).breakInside")
            pdf = page.pdf(format="A4")
        finally:
            browser.close()
    assert overflow <= 0
    assert all(ok and w > 0 for _, ok, w in images), [a for a, ok, w in images if not (ok and w > 0)]
    kinds = {alt.split(" of hadm_id")[0] for alt, *_ in images}
    assert {"Decision curve", "SHAP waterfall", "12-lead ECG", "Chest X-ray"} <= kinds, kinds
    assert len(images) >= 5 + 6
    assert nav == "none" and card == "avoid"
    assert pdf.startswith(b"%PDF") and pdf.count(b"/Type /Page") >= 3


def test_metrics_and_report_carry_clustered_cis_paired_differences_and_calibration(report_run, html_path):
    import json
    m = json.loads((report_run / "metrics.json").read_text())
    primary = m["primary"]
    for name, r in m["models"].items():
        assert r["bootstrap_unit"] == "subject"
        assert r["calibration_rows"]["split"].startswith(("calibration", "valid"))
        assert "cal_slope" in r and "cal_intercept_ci" in r
        d = r["vs_primary"]
        assert (d["dauroc"] == 0) if name == primary else ("dauroc_ci" in d and "significant" in d)
    assert m["models"][primary]["calibration_rows"]["split"].startswith("calibration")
    scored = [r for rows in m["subgroups"].values() for r in rows if r.get("auroc") is not None]
    assert scored and all("auroc_ci" in r for r in scored)
    assert all("auroc_ci" in r for r in m["availability"] if r.get("auroc") is not None)
    assert "lo" in m["models"][primary]["curves"]["calibration"]
    html = html_path.read_text(encoding="utf-8")
    assert "&Delta;AUROC vs primary" in html and "cal. slope" in html and "patient-clustered" in html
