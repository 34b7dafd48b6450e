"""mmpipe: a clinical multimodal prediction pipeline.

The public Python API (see ``pipeline.api``)::

    from pipeline import Run, synthesize
    synthesize("cohort/", n_patients=200)
    run = Run.train("cohort/", "runs/r1", {"model": {"fusion_models": ["gbm_early"]}})
    Run.load("runs/r1").score("new_patients/"); run.explain(); run.report()

Names are imported on first use, so ``import pipeline.<module>`` stays light.
"""
from __future__ import annotations

__all__ = ["Run", "PatientExplanation", "RunConfig", "synthesize"]


def __getattr__(name: str):
    if name in ("Run", "PatientExplanation"):
        from pipeline import api
        return getattr(api, name)
    if name == "RunConfig":
        from pipeline.config import RunConfig
        return RunConfig
    if name == "synthesize":
        from pipeline.synthetic import generate_cohort
        return generate_cohort
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
