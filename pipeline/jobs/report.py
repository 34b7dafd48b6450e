"""``mmpipe report``: a self-contained HTML report of a run (jinja2 + matplotlib,
images embedded as base64 PNG).  Reads only the run folder's artifacts.

The report never prints note text: it shows feature names (notes components by their
top TF-IDF terms), metrics, ids and quarantine reasons (truncated), never the rows of a
notes table.  Plots: ROC / PR / calibration, SHAP importance and per-patient values,
modality attribution, the decision curve, and per patient card a SHAP waterfall plus (unless
``report.show_signals`` is off) its ECG and chest X-ray (``report_cards``).  A print
stylesheet keeps plots, tables and cards whole on a page.
"""
from __future__ import annotations

import base64
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts import read_parquet, read_json
from pipeline.errors import DataError

MODALITY_COLORS = {"ehr": "#4C72B0", "ecg": "#DD8452", "notes": "#55A868", "imaging": "#C44E52"}
ALL_MODALITIES = ("ehr", "ecg", "notes", "imaging")
AGE_ORDER = ["<40", "40-59", "60-74", "75+"]
MAX_REASON_CHARS = 160  # quarantine reasons are truncated: they must never carry a record's text


def _png(fig, dpi: int = 110) -> str:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _model_order(metrics: dict) -> list[str]:
    """Primary model first, then the others in the order they were trained."""
    names = list(metrics["models"])
    return [metrics["primary"]] + [n for n in names if n != metrics["primary"]]


def _curves_plot(metrics: dict) -> str | None:
    import matplotlib.pyplot as plt
    names = [n for n in _model_order(metrics) if metrics["models"][n].get("curves")]
    if not names:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    top = 0.0
    for i, name in reversed(list(enumerate(names))):  # primary drawn last, on top
        r = metrics["models"][name]
        c = r["curves"]
        kw = {"lw": 2.6 if name == metrics["primary"] else 1.2, "color": f"C{i % 10}"}
        axes[0].plot(c["roc"]["fpr"], c["roc"]["tpr"], label=f"{name} ({r['auroc']:.3f})", **kw)
        axes[1].plot(c["pr"]["recall"], c["pr"]["precision"], label=f"{name} ({r['auprc']:.3f})", **kw)
        axes[2].plot(c["calibration"]["prob_pred"], c["calibration"]["prob_true"], "o-", ms=4, label=name, **kw)
        lo, hi = c["calibration"].get("lo"), c["calibration"].get("hi")
        if name == metrics["primary"] and lo and None not in lo + hi:   # reliability: clustered 95% CI per bin
            axes[2].fill_between(c["calibration"]["prob_pred"], lo, hi, color=kw["color"], alpha=0.15,
                                 label=f"{name} 95% CI")
        top = max(top, *c["calibration"]["prob_pred"], *c["calibration"]["prob_true"])
    axes[0].plot([0, 1], [0, 1], "k--", lw=0.8)
    axes[2].plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    prevalence = metrics["models"][names[0]]["positives"] / max(metrics["models"][names[0]]["n"], 1)
    axes[1].axhline(prevalence, color="k", ls="--", lw=0.8, label=f"prevalence ({prevalence:.3f})")
    titles = [("False positive rate", "True positive rate", "ROC (test)", "lower right"),
              ("Recall", "Precision", "Precision-recall (test)", "upper right"),
              ("Predicted risk", "Observed rate", "Reliability (test, quantile bins)", "upper left")]
    for ax, (xl, yl, t, loc) in zip(axes, titles):
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_title(t)
        lim = 1.0 if ax is not axes[2] else min(1.0, 1.15 * top + 0.02)  # calibration: zoom on the risks seen
        ax.set_xlim(-0.02 * lim, 1.02 * lim)
        ax.set_ylim(-0.02 * lim, 1.02 * lim)
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles[::-1], labels[::-1], fontsize=7, loc=loc, framealpha=0.85)
    fig.tight_layout()
    return _png(fig)


def _shap_plots(exp, labels: dict) -> dict[str, str]:
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from pipeline.stages.featurize_ehr import pretty_feature
    plots = {}
    mod = dict(zip(exp.feature_names, exp.feature_modality))
    importance = exp.feature_importance()
    imp = importance.head(20)[::-1]
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(imp) + 1.2))
    ax.barh([pretty_feature(f, labels) for f in imp.index], imp.values,
            color=[MODALITY_COLORS.get(mod[f], "grey") for f in imp.index])
    ax.set_xlabel("mean |SHAP| (log-odds)")
    ax.set_title(f"Top {len(imp)} features (colour = modality)")
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    shown = [m for m in MODALITY_COLORS if m in {mod[f] for f in imp.index}]
    ax.legend(handles=[Patch(color=MODALITY_COLORS[m], label=m) for m in shown], loc="lower right", fontsize=8)
    fig.tight_layout()
    plots["shap_summary"] = _png(fig)

    # beeswarm-like: SHAP value per patient for the top 12, coloured by the feature value's rank
    top = importance.head(12).index[::-1]
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(top) + 1.4))
    rng = np.random.default_rng(0)
    sc = None
    for i, f in enumerate(top):
        j = exp.feature_names.index(f)
        x, v = exp.data[:, j], exp.values[:, j]
        jitter = i + rng.uniform(-0.25, 0.25, len(x))
        miss = np.isnan(x)
        if miss.any():
            ax.scatter(v[miss], jitter[miss], color="#8a8a8a", marker="x", s=10, linewidths=0.8)
        if (~miss).any():
            rank = pd.Series(x[~miss]).rank(pct=True).to_numpy()
            sc = ax.scatter(v[~miss], jitter[~miss], c=rank, cmap="coolwarm", s=8, vmin=0, vmax=1)
    ax.set_yticks(range(len(top)), [pretty_feature(f, labels) for f in top], fontsize=8)
    ax.axvline(0, color="k", lw=0.6)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel("SHAP value (log-odds; grey \u00d7 = feature missing)")
    ax.set_title("SHAP values per patient (test)")
    if sc is not None:
        cb = fig.colorbar(sc, ax=ax, pad=0.01, aspect=25, shrink=0.6)
        cb.set_ticks([0, 1], labels=["low", "high"], fontsize=8)
        cb.ax.set_title("feature\nvalue", fontsize=8)
    fig.tight_layout()
    plots["shap_beeswarm"] = _png(fig)

    mc = exp.modality_contrib
    if mc is not None and len(mc.columns):
        cols = [m for m in ALL_MODALITIES if m in mc.columns] + [m for m in mc.columns if m not in ALL_MODALITIES]
        fig, ax = plt.subplots(figsize=(7, 0.55 * len(cols) + 1.3))
        data = [mc[m].dropna().to_numpy() for m in cols]
        bp = ax.boxplot(data, tick_labels=cols, orientation="horizontal", patch_artist=True, widths=0.5,
                        showmeans=True, meanprops={"marker": "D", "markerfacecolor": "white",
                                                   "markeredgecolor": "k", "markersize": 5})
        for patch, m in zip(bp["boxes"], cols):
            patch.set_facecolor(MODALITY_COLORS.get(m, "grey"))
            patch.set_alpha(0.6)
        ax.axvline(0, color="k", lw=0.6)
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel("per-patient modality contribution (log-odds, exact Shapley; diamond = mean)")
        ax.set_title("Modality attribution (test)")
        fig.tight_layout()
        plots["modality"] = _png(fig)
    return plots


def _decision_plot(metrics: dict) -> str | None:
    """Net benefit of the primary model against treat-all and treat-none (test split)."""
    import matplotlib.pyplot as plt
    dc = metrics.get("decision_curve")
    if not dc:
        return None
    t = np.asarray(dc["threshold"])
    model, treat_all = np.asarray(dc["model"]), np.asarray(dc["treat_all"])
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(t, model, lw=2.4, color="C0", label=f"{metrics['primary']} (treat if risk \u2265 threshold)")
    ax.plot(t, treat_all, lw=1.2, color="C3", ls="--", label="treat all")
    ax.axhline(0, color="k", lw=1.0, label="treat none")
    top = max(float(np.max(model)), dc["prevalence"], 0.01)
    ax.set_ylim(-0.25 * top, 1.15 * top)
    ax.set_xlim(0, float(t.max()))
    ax.set_xlabel("threshold probability")
    ax.set_ylabel("net benefit (true positives per patient, net of harms)")
    ax.set_title("Decision curve (test split)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return _png(fig)


def _plots(metrics: dict, exp, labels: dict) -> dict[str, str]:
    plots = {}
    curves = _curves_plot(metrics)
    if curves:
        plots["curves"] = curves
    decision = _decision_plot(metrics)
    if decision:
        plots["decision"] = decision
    if exp is not None:
        plots.update(_shap_plots(exp, labels))
    return plots


def _num(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _patient_cards(run: Path, modalities: list[str], exp, pretty, report_cfg) -> list[dict]:
    """The highest- and lowest-risk test admissions, each with its pictures (report_cards)."""
    from pipeline.jobs.report_cards import card_pictures
    p = run / "test_scores.parquet"
    n = report_cfg.patient_cards
    if not p.exists() or n == 0:
        return []
    s = read_parquet(p).sort_values("risk", ascending=False)
    pick = pd.concat([s.head(n // 2), s.tail(n - n // 2)]) if len(s) > n else s
    pictures = card_pictures(run, [int(h) for h in pick["hadm_id"]], exp, pretty, _png, report_cfg.show_signals)
    cards = []
    for r in pick.itertuples():
        contrib = []
        for m in modalities:
            v = getattr(r, m, None)
            ok = v is not None and not pd.isna(v)
            contrib.append({"modality": m, "value": f"{v:+.2f}" if ok else "n/a",
                            "sign": ("pos" if v > 0 else "neg" if v < 0 else "") if ok else ""})
        reasons = [x for x in str(r.reasons or "").split("; ") if x]
        cards.append({"hadm_id": int(r.hadm_id), "risk": f"{r.risk:.3f}", "band": r.band,
                      "reasons": reasons, "contrib": contrib, **pictures[int(r.hadm_id)]})
    return cards


def _subgroups(metrics: dict) -> dict[str, list[dict]]:
    out = {}
    for name, rows in metrics.get("subgroups", {}).items():
        if name == "age_band":
            rows = sorted(rows, key=lambda r: AGE_ORDER.index(r["group"]) if r["group"] in AGE_ORDER else 99)
        out[name.replace("_", " ")] = rows
    return out


def _quarantine(run: Path) -> tuple[list[dict], int]:
    p = run / "quarantine.parquet"
    if not p.exists():
        return [], 0
    q = read_parquet(p)
    rows = []
    for r in q.head(50).to_dict("records"):
        reason = str(r.get("reason", ""))
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[:MAX_REASON_CHARS] + "…"
        row = r.get("row")
        rows.append({"source": r.get("source", ""), "file": "/".join(Path(str(r.get("file", ""))).parts[-3:]),
                     "row": "" if row is None or (isinstance(row, float) and math.isnan(row)) else row, "field": r.get("field", ""),
                     "reason": reason})
    return rows, len(q)


def _report_config(run: Path):
    """The run's ``report`` settings (defaults for a run written before they existed)."""
    from pipeline.config import ReportConfig
    cfg = read_json(run / "config.json") if (run / "config.json").exists() else {}
    return ReportConfig.model_validate(cfg.get("report", {}))


def _explanation(run: Path):
    exp_dir = run / "explanation"
    if not (exp_dir / "shap_values.parquet").exists():
        return None
    from pipeline.explain.explanation import Explanation
    return Explanation.load(exp_dir)


def write_report(run: Path, out: Path | None = None) -> Path:
    from jinja2 import Environment, PackageLoader, select_autoescape

    from pipeline.stages.featurize_ehr import pretty_feature
    run = Path(run)
    if not (run / "metrics.json").exists():
        raise DataError("not a run folder: metrics.json is missing", file=run / "metrics.json",
                        hint="pass the RUN folder written by `mmpipe train`")
    metrics = read_json(run / "metrics.json")
    leakage = read_json(run / "leakage.json") if (run / "leakage.json").exists() else {}
    meta = read_json(run / "model" / "model.json") if (run / "model" / "model.json").exists() else {}
    labels = meta.get("code_labels", {})
    modalities = meta.get("modalities") or list(metrics.get("modality_presence", {})) or ["ehr"]
    quarantine, n_quarantine = _quarantine(run)
    primary = metrics["models"][metrics["primary"]]
    report_cfg = _report_config(run)
    exp = _explanation(run)
    import matplotlib
    matplotlib.use("Agg")
    env = Environment(loader=PackageLoader("pipeline", "jobs/templates"), autoescape=select_autoescape())
    html = env.get_template("report.html.j2").render(
        run=run.name, m=metrics, plots=_plots(metrics, exp, labels), leakage=leakage,
        model_order=_model_order(metrics), subgroups=_subgroups(metrics),
        quarantine=quarantine, n_quarantine=n_quarantine,
        cards=_patient_cards(run, modalities, exp, lambda f: pretty_feature(f, labels), report_cfg),
        show_signals=report_cfg.show_signals, modalities=modalities,
        absent_modalities=[m for m in ALL_MODALITIES if m not in modalities],
        small=primary["n"] < 500, code_version=meta.get("code_version", ""),
        pretty=lambda f: pretty_feature(f, labels), fmt=_num,
        ci=lambda c: "" if not c else f"[{c[0]:.3f}, {c[1]:.3f}]")
    out = Path(out) if out else run / "report" / "index.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    return out
