"""``mmpipe report``: a self-contained HTML report of a run (jinja2 + matplotlib,
images embedded as base64 PNG).  Reads only the run folder's artifacts."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts import read_json


def _png(fig) -> str:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plots(metrics: dict, run: Path) -> dict[str, str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plots = {}
    models = {k: v for k, v in metrics["models"].items() if v.get("curves")}
    if models:
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
        for name, r in models.items():
            c = r["curves"]
            lw = 2.5 if name == metrics["primary"] else 1.2
            axes[0].plot(c["roc"]["fpr"], c["roc"]["tpr"], lw=lw, label=f"{name} ({r['auroc']:.3f})")
            axes[1].plot(c["pr"]["recall"], c["pr"]["precision"], lw=lw, label=f"{name} ({r['auprc']:.3f})")
            axes[2].plot(c["calibration"]["prob_pred"], c["calibration"]["prob_true"], "o-", lw=lw, label=name)
        axes[0].plot([0, 1], [0, 1], "k--", lw=0.8)
        axes[2].plot([0, 1], [0, 1], "k--", lw=0.8)
        for ax, (xl, yl, t) in zip(axes, [("False positive rate", "True positive rate", "ROC (test)"),
                                          ("Recall", "Precision", "Precision-recall (test)"),
                                          ("Predicted risk", "Observed rate", "Calibration (test)")]):
            ax.set_xlabel(xl), ax.set_ylabel(yl), ax.set_title(t), ax.legend(fontsize=7)
        plots["curves"] = _png(fig)
    exp_dir = run / "explanation"
    if (exp_dir / "shap_values.parquet").exists():
        from pipeline.explain.explanation import Explanation
        from pipeline.stages.featurize_ehr import pretty_feature
        meta = read_json(run / "model" / "model.json")
        labels = meta.get("code_labels", {})
        exp = Explanation.load(exp_dir)
        imp = exp.feature_importance().head(20)[::-1]
        colors = {"ehr": "#4C72B0", "ecg": "#DD8452", "notes": "#55A868", "imaging": "#C44E52"}
        mod = dict(zip(exp.feature_names, exp.feature_modality))
        fig, ax = plt.subplots(figsize=(8, 6))
        ax.barh([pretty_feature(f, labels) for f in imp.index], imp.values,
                color=[colors.get(mod[f], "grey") for f in imp.index])
        ax.set_xlabel("mean |SHAP| (log-odds)"), ax.set_title("Top features (colour = modality)")
        plots["shap_summary"] = _png(fig)
        # beeswarm-like: SHAP value vs feature value rank for the top 12
        top = exp.feature_importance().head(12).index[::-1]
        fig, ax = plt.subplots(figsize=(8, 6))
        rng = np.random.default_rng(0)
        for i, f in enumerate(top):
            j = exp.feature_names.index(f)
            x = exp.data[:, j]
            rank = pd.Series(x).rank(pct=True).fillna(-1).to_numpy()
            ax.scatter(exp.values[:, j], i + rng.uniform(-0.25, 0.25, len(x)), c=rank, cmap="coolwarm",
                       s=8, vmin=0, vmax=1)
        ax.set_yticks(range(len(top)), [pretty_feature(f, labels) for f in top], fontsize=8)
        ax.axvline(0, color="k", lw=0.6)
        ax.set_xlabel("SHAP value (red = high feature value, grey = missing)")
        ax.set_title("SHAP summary")
        plots["shap_beeswarm"] = _png(fig)
        if exp.modality_contrib is not None and len(exp.modality_contrib.columns):
            mc = exp.modality_contrib
            fig, ax = plt.subplots(figsize=(6, 3.5))
            ax.boxplot([mc[m].to_numpy() for m in mc.columns], tick_labels=list(mc.columns), orientation="horizontal")
            ax.axvline(0, color="k", lw=0.6)
            ax.set_xlabel("per-patient modality contribution (log-odds, exact Shapley)")
            ax.set_title("Modality attribution (test)")
            plots["modality"] = _png(fig)
    return plots


def _patient_cards(run: Path, n: int = 6) -> list[dict]:
    p = run / "test_scores.parquet"
    if not p.exists():
        return []
    s = pd.read_parquet(p).sort_values("risk", ascending=False)
    pick = pd.concat([s.head(n // 2), s.tail(n - n // 2)])
    return [{"hadm_id": int(r.hadm_id), "risk": f"{r.risk:.3f}", "band": r.band, "reasons": r.reasons.split("; "),
             "contrib": {m: f"{getattr(r, m):+.2f}" for m in ("ehr", "ecg", "notes", "imaging")}}
            for r in pick.itertuples()]


def write_report(run: Path, out: Path | None = None) -> Path:
    from jinja2 import Environment, PackageLoader, select_autoescape
    run = Path(run)
    metrics = read_json(run / "metrics.json")
    leakage = read_json(run / "leakage.json") if (run / "leakage.json").exists() else {}
    q = pd.read_parquet(run / "quarantine.parquet") if (run / "quarantine.parquet").exists() else pd.DataFrame()
    env = Environment(loader=PackageLoader("pipeline", "jobs/templates"), autoescape=select_autoescape())
    html = env.get_template("report.html.j2").render(
        run=run.name, m=metrics, plots=_plots(metrics, run), leakage=leakage,
        quarantine=q.head(200).to_dict("records"), n_quarantine=len(q),
        cards=_patient_cards(run), small=metrics["models"][metrics["primary"]]["n"] < 500,
        fmt=lambda x: "n/a" if x is None else f"{x:.3f}",
        ci=lambda c: "" if not c else f"[{c[0]:.3f}, {c[1]:.3f}]")
    out = Path(out) if out else run / "report" / "index.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(html)
    tmp.replace(out)
    return out
