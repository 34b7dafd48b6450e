"""``mmpipe demo``: synthetic cohort -> train -> score new patients -> report."""
from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.artifacts import read_json, write_json
from pipeline.config import RunConfig
from pipeline.jobs.prepare import log


def _synth(root: Path, patients: int, seed: int) -> None:
    from pipeline.synthetic import generate_cohort
    marker = root / "synth.json"
    want = {"patients": patients, "seed": seed}
    if marker.exists() and read_json(marker) == want:
        log(f"[demo] synthetic cohort at {root} is up to date")
        return
    if root.exists():
        shutil.rmtree(root)
    log(f"[demo] generating {patients} synthetic patients (seed {seed}) into {root}")
    generate_cohort(root, n_patients=patients, seed=seed)
    write_json(want, marker)


def run_demo(patients: int, seed: int, workdir: Path, reports: Path, cfg: RunConfig | None = None) -> dict:
    from pipeline.jobs.report import write_report
    from pipeline.jobs.score import score
    from pipeline.jobs.train import train
    workdir = Path(workdir)
    cfg = cfg or RunConfig()
    _synth(workdir / "data", patients, seed)
    metrics = train(workdir / "data", workdir / "run", cfg, report=False)
    # New patients the model never saw, scored in a separate job from the saved model folder.
    _synth(workdir / "new_patients", max(50, patients // 5), seed + 1000)
    score(workdir / "run", workdir / "new_patients", workdir / "scores.parquet")
    report = write_report(workdir / "run", Path(reports) / "demo" / "index.html")
    m = metrics["models"][metrics["primary"]]
    auc = "n/a" if m["auroc"] is None else f"{m['auroc']:.3f}"
    log(f"[demo] test AUROC ({metrics['primary']}): {auc}  95% CI {m.get('auroc_ci')}")
    log(f"[demo] scores of new patients: {workdir / 'scores.parquet'}")
    log(f"[demo] report: {report.resolve()}")
    return {"metrics": metrics, "report": str(report)}
