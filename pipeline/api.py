"""The public Python API: a run folder as an object.

    from pipeline import Run
    run = Run.train("data/", "runs/r1", {"model": {"fusion_models": ["gbm_early"]}})
    run = Run.load("runs/r1")
    scores = run.score("new_patients/")        # a data ROOT (raw layouts) ...
    scores = run.score(run.features("test"))   # ... or a frame of aligned feature rows
    why = run.explain(hadm_id)                 # one test admission: SHAP, modalities, reasons
    why.plot()                                 # its waterfall
    run.report()                               # the self-contained HTML report

Everything a notebook needs goes through here; the modules behind it (jobs, stages,
models) are free to change.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts import read_parquet, read_json
from pipeline.config import RunConfig
from pipeline.errors import DataError

MODALITIES = ("ehr", "ecg", "notes", "imaging")


def _config(config) -> RunConfig:
    """None (defaults), a dict, a RunConfig or a JSON/YAML file path."""
    if config is None:
        return RunConfig()
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, dict):
        return RunConfig.model_validate(config)
    if isinstance(config, (str, Path)):
        return RunConfig.load(Path(config))
    raise TypeError(f"config must be None, a dict, a RunConfig or a file path, not {type(config).__name__}")


@dataclass
class PatientExplanation:
    """Why one admission got its score: SHAP values per feature (log-odds), the model's base
    value, each modality's exact Shapley contribution, and the reasons of the score file."""
    hadm_id: int
    risk: float
    band: str
    base_value: float
    features: pd.DataFrame        # feature, label, modality, value, shap; largest |shap| first
    modalities: pd.Series         # modality -> contribution (log-odds); 0 where absent
    present: pd.Series            # modality -> bool (its mask)
    reasons: list[str]

    @property
    def logit(self) -> float:
        return float(self.base_value + self.features["shap"].sum())

    def top(self, k: int = 10) -> pd.DataFrame:
        return self.features.head(k).reset_index(drop=True)

    def plot(self, k: int = 10, ax=None):
        """The waterfall of the k largest SHAP values (matplotlib Axes)."""
        import matplotlib.pyplot as plt

        from pipeline.explain.waterfall import plot_waterfall, waterfall_steps
        if ax is None:
            _, ax = plt.subplots(figsize=(9, 0.42 * (k + 1) + 1.4))
        f = self.features
        steps = waterfall_steps(f["shap"].to_numpy(), f["value"].to_numpy(dtype=float), list(f["label"]), k)
        plot_waterfall(ax, self.base_value, steps, title=f"hadm_id {self.hadm_id}: top {k} SHAP features")
        ax.figure.tight_layout()
        return ax

    def plot_modalities(self, ax=None):
        """Horizontal bars of the modality contributions ('absent' where the mask is 0)."""
        import matplotlib.pyplot as plt

        from pipeline.explain.waterfall import DOWN, UP
        if ax is None:
            _, ax = plt.subplots(figsize=(7, 2.6))
        c = self.modalities
        ax.barh(c.index, c.values, color=[UP if v > 0 else DOWN for v in c.values])
        for k, (m, v) in enumerate(c.items()):
            ax.text(v, k, f" {v:+.2f}" if self.present[m] else "  absent", va="center", ha="left", fontsize=8,
                    color="k" if self.present[m] else "grey")
        ax.axvline(0, color="k", lw=0.6)
        ax.set_xlim(min(0, c.min()) - 0.3, max(0, c.max()) + 0.5)
        ax.invert_yaxis()
        ax.set_xlabel("contribution to log-odds")
        ax.set_title("Modality contributions (exact Shapley)")
        ax.figure.tight_layout()
        return ax


class Run:
    """A run folder written by training: its metrics, model, explanations and report."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        for need in ("metrics.json", "model/model.json"):
            if not (self.path / need).exists():
                raise DataError(f"not a run folder: {need} is missing", file=self.path / need,
                                hint="pass a folder written by Run.train or `mmpipe train`")

    def __repr__(self) -> str:
        m = self.metrics
        auc = m["models"][m["primary"]]["auroc"]
        return f"Run({str(self.path)!r}, task={m['task']}, primary={m['primary']}, test AUROC={auc})"

    # ---- creating and opening
    @classmethod
    def train(cls, data: str | Path, out: str | Path, config=None, report: bool = True) -> "Run":
        """Run every stage on the data ROOT, train and evaluate, write the run folder ``out``."""
        from pipeline.jobs.train import train
        train(Path(data), Path(out), _config(config), report=report)
        return cls(out)

    @classmethod
    def load(cls, path: str | Path) -> "Run":
        return cls(path)

    # ---- what the run holds
    @property
    def metrics(self) -> dict:
        return read_json(self.path / "metrics.json")

    @property
    def config(self) -> RunConfig:
        return RunConfig.model_validate(read_json(self.path / "config.json"))

    def compare(self) -> pd.DataFrame:
        """One row per model trained: test AUROC with its 95% CI, AUPRC, Brier, ECE, n, positives."""
        rows = []
        for name, r in self.metrics["models"].items():
            lo, hi = r.get("auroc_ci") or (None, None)
            rows.append({"model": name, "auroc": r["auroc"], "auroc_lo": lo, "auroc_hi": hi, "auprc": r["auprc"],
                         "brier": r["brier"], "ece": r.get("ece"), "n": r["n"], "positives": r["positives"]})
        return pd.DataFrame(rows).set_index("model").sort_values("auroc", ascending=False)

    def test_scores(self) -> pd.DataFrame:
        """The score file of the test split (risk, band, reasons, modality contributions)."""
        return read_parquet(self.path / "test_scores.parquet")

    def features(self, split: str | None = "test") -> pd.DataFrame:
        """The aligned feature rows of this run's cohort (one split, or all with None)."""
        from pipeline.jobs.prepare import feature_rows
        from pipeline.stages.align import align
        stages = {p.name: p for p in (self.path / "stages").iterdir() if (p / "manifest.json").exists()}
        cohort = read_parquet(stages["cohort"] / "cohort.parquet")
        if split is not None:
            cohort = cohort[cohort["split"] == split].reset_index(drop=True)
        return align(cohort, feature_rows(stages, cohort["hadm_id"].to_numpy()))

    # ---- using it
    def score(self, data: str | Path | pd.DataFrame, out: str | Path | None = None) -> pd.DataFrame:
        """Scores of a data ROOT (raw layouts or a patient-tensor folder; written to ``out``,
        a .parquet, or a temporary file) or of a frame of aligned feature rows."""
        from pipeline.jobs.score import Scorer, score
        if isinstance(data, pd.DataFrame):
            scorer = Scorer(self.path)
            scorer.attach_tensors({k: str(self.path / "stages" / k) for k in ("features_ecg", "features_imaging")
                                   if (self.path / "stages" / k).exists()})
            return scorer.score_table(scorer.conform(data.copy()))
        if out is None:
            out = Path(tempfile.mkdtemp(prefix="mmpipe-scores-")) / "scores.parquet"
        return score(self.path, Path(data), Path(out))

    def explain(self, hadm_id: int | None = None) -> PatientExplanation:
        """The explanation of one test admission (default: the highest-risk one)."""
        from pipeline.explain.explanation import Explanation
        from pipeline.stages.featurize_ehr import pretty_feature
        exp = Explanation.load(self.path / "explanation")
        scores = self.test_scores()
        if hadm_id is None:
            hadm_id = int(scores.loc[scores["risk"].idxmax(), "hadm_id"])
        rows = np.flatnonzero(exp.hadm_id == hadm_id)
        srow = scores[scores["hadm_id"] == hadm_id]
        if not len(rows) or not len(srow):
            raise DataError(f"hadm_id {hadm_id} is not among this run's explained test admissions",
                            file=self.path / "explanation", field="hadm_id",
                            hint="explanations are written for the test split; see Run.test_scores()")
        i, s = int(rows[0]), srow.iloc[0]
        labels = read_json(self.path / "model" / "model.json").get("code_labels", {})
        feats = pd.DataFrame({"feature": exp.feature_names,
                              "label": [pretty_feature(f, labels) for f in exp.feature_names],
                              "modality": exp.feature_modality, "value": exp.data[i], "shap": exp.values[i]})
        feats = feats.reindex(feats["shap"].abs().sort_values(ascending=False, kind="stable").index)
        row = dict(zip(exp.feature_names, exp.data[i]))
        mods = [m for m in MODALITIES if m in scores.columns]
        return PatientExplanation(
            hadm_id=int(hadm_id), risk=float(s["risk"]), band=str(s["band"]), base_value=float(exp.base_values[i]),
            features=feats.reset_index(drop=True),
            modalities=pd.Series({m: float(np.nan_to_num(s[m])) for m in mods}, name="contribution"),
            present=pd.Series({m: bool(row.get(f"mask__{m}", 0) == 1) for m in mods}, name="present"),
            reasons=[r for r in str(s["reasons"] or "").split("; ") if r])

    def report(self, out: str | Path | None = None) -> Path:
        """Write the self-contained HTML report (default RUN/report/index.html); its path."""
        from pipeline.jobs.report import write_report
        return write_report(self.path, Path(out) if out else None)
