"""The pictures of the report's patient cards: a SHAP waterfall per admission and, unless
``report.show_signals`` is off, the admission's 12-lead ECG (the leads that moved the score
marked) and its chest X-ray thumbnail.  Reads only the run folder.

Which leads moved the score: lead occlusion.  The admission's ECG record (the latest usable
one before its prediction time, as the ECG stage chose it) is re-read; for each usable lead,
the ECG features are recomputed with that lead masked and the primary model rescored.  A
lead's influence is logit(all leads) - logit(without it): positive = its presence raised
the risk.  The leads with |influence| >= MARK_FRACTION of the largest (and >= MARK_MIN) are
marked.  For a fused net only its ECG features are occluded, not its waveform input.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts import read_parquet
from pipeline.errors import DataError
from pipeline.explain.waterfall import DOWN, UP, plot_waterfall, waterfall_steps

MARK_FRACTION = 0.25
MARK_MIN = 0.01          # log-odds
ECG_SHOW_S = 4.0         # seconds of each lead drawn


def _stage(run: Path, name: str) -> Path | None:
    d = run / "stages" / name
    return d if (d / "manifest.json").exists() else None


def waterfall_png(exp, row: int, pretty, png, k: int = 8) -> str:
    import matplotlib.pyplot as plt
    steps = waterfall_steps(exp.values[row], exp.data[row], [pretty(f) for f in exp.feature_names], k)
    fig, ax = plt.subplots(figsize=(5.2, 0.3 * len(steps) + 1.0))
    plot_waterfall(ax, float(exp.base_values[row]), steps, fontsize=7)
    fig.tight_layout()
    return png(fig, dpi=90)


# ---------------------------------------------------------------- ECG lead influence

class _ECGContext:
    """What lead occlusion needs, loaded once: model, feature rows, ECG index, QC, config."""

    def __init__(self, run: Path, hadms: list[int]):
        from pipeline.jobs.prepare import feature_rows
        from pipeline.jobs.score import Scorer
        from pipeline.stages.align import align
        self.scorer = Scorer(run)
        stages = {p.name: p for p in (run / "stages").iterdir() if (p / "manifest.json").exists()}
        self.scorer.attach_tensors({k: str(stages[k]) for k in ("features_ecg", "features_imaging") if k in stages})
        cohort = read_parquet(stages["cohort"] / "cohort.parquet")
        self.cohort = cohort[cohort["hadm_id"].isin(hadms)].reset_index(drop=True)
        self.rows = align(self.cohort, feature_rows(stages, self.cohort["hadm_id"].to_numpy())).set_index("hadm_id")
        self.index = read_parquet(stages["index_ecg"] / "ecg_index.parquet")
        self.qc = read_parquet(stages["features_ecg"] / "qc.parquet").set_index("path")
        self.cfg = self.scorer.cfg.ecg

    def record_path(self, hadm: int) -> str | None:
        """The record the ECG stage used for ``hadm``: its latest usable candidate."""
        from pipeline.stages.featurize_ecg import select_records
        cand = select_records(self.cohort[self.cohort["hadm_id"] == hadm], self.index, self.cfg)
        for p in cand["path"]:
            if p in self.qc.index and self.qc.at[p, "verdict"] != "bad":
                return p
        return None

    def influence(self, hadm: int, path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(signal [12, n] in mV, lead mask [12], influence per lead [12], NaN where not usable)."""
        from pipeline.sources.ecg import load_ecg
        from pipeline.stages.featurize_ecg import PREFIX, ecg_features
        rec = load_ecg(path, fs=self.cfg.fs, seconds=self.cfg.seconds, min_leads=self.cfg.min_leads)
        feats = self.scorer.meta["features"]
        base = self.rows.loc[[hadm]].reset_index()
        variants, leads = [], [-1] + [j for j in range(12) if rec.lead_mask[j]]
        for j in leads:
            mask = rec.lead_mask.copy()
            if j >= 0:
                mask[j] = False
            f = {**ecg_features(rec.signal, self.cfg.fs, mask), "n_leads": float(mask.sum())}
            row = base.copy()
            for k, v in f.items():
                if PREFIX + k in row.columns:
                    row[PREFIX + k] = v
            variants.append(row)
        X = self.scorer.conform(pd.concat(variants, ignore_index=True))[feats]
        logit = np.asarray(self.scorer.model.decision_function(X), dtype=float)
        out = np.full(12, np.nan)
        out[leads[1:]] = logit[0] - logit[1:]
        return rec.signal, rec.lead_mask, out


def marked_leads(influence: np.ndarray) -> list[int]:
    """Indices of the leads that moved the score (see the module doc)."""
    a = np.nan_to_num(np.abs(influence))
    if not a.size or a.max() < MARK_MIN:
        return []
    return [int(j) for j in np.argsort(-a) if a[j] >= max(MARK_MIN, MARK_FRACTION * a.max())]


def ecg_png(signal: np.ndarray, mask: np.ndarray, influence: np.ndarray, fs: int, png) -> tuple[str, list[str]]:
    """The 12 leads in a 6 x 2 grid, marked leads framed in red (raised the risk) or blue."""
    import matplotlib.pyplot as plt

    from pipeline.sources.ecg import STANDARD_LEADS
    marks = marked_leads(influence)
    n = min(signal.shape[1], int(ECG_SHOW_S * fs))
    t = np.arange(n) / fs
    fig, axes = plt.subplots(6, 2, figsize=(5.4, 4.2), sharex=True)
    for j, ax in enumerate(axes.T.ravel()):
        name = STANDARD_LEADS[j]
        if mask[j]:
            ax.plot(t, signal[j, :n], lw=0.6, color="k")
        else:
            ax.text(0.5, 0.5, "absent", transform=ax.transAxes, ha="center", va="center", color="grey", fontsize=6)
        label = name if np.isnan(influence[j]) else f"{name} {influence[j]:+.2f}"
        colour = (UP if influence[j] > 0 else DOWN) if j in marks else "#555"
        ax.set_title(label, fontsize=6, loc="left", pad=1, color=colour, fontweight="bold" if j in marks else None)
        ax.set_yticks([])
        ax.tick_params(axis="x", labelsize=5)
        for s in ax.spines.values():
            s.set_color(colour if j in marks else "#ccc")
            s.set_linewidth(1.6 if j in marks else 0.5)
    axes[-1, 0].set_xlabel("s", fontsize=6)
    fig.suptitle("12-lead ECG (lead: effect on log-odds; framed = moved the score)", fontsize=7)
    fig.tight_layout(pad=0.3, h_pad=0.2, w_pad=0.4)
    return png(fig, dpi=80), [f"{STANDARD_LEADS[j]} ({influence[j]:+.2f})" for j in marks]


def cxr_png(run: Path, hadm: int, png) -> str | None:
    import matplotlib.pyplot as plt
    d = _stage(run, "features_imaging")
    if d is None or not (d / "images.npy").exists():
        return None
    ids = read_parquet(d / "features.parquet", columns=["hadm_id"])["hadm_id"].to_numpy()
    hit = np.flatnonzero(ids == hadm)
    if not len(hit):
        return None
    img = np.load(d / "images.npy", mmap_mode="r")[int(hit[0]), 0]
    fig, ax = plt.subplots(figsize=(1.9, 1.9))
    ax.imshow(img, cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title("chest X-ray (as the model saw it)", fontsize=6)
    fig.tight_layout(pad=0.2)
    return png(fig, dpi=90)


def card_pictures(run: Path, hadms: list[int], exp, pretty, png, show_signals: bool) -> dict[int, dict]:
    """hadm_id -> {"waterfall", "ecg", "ecg_leads", "ecg_note", "cxr"} (absent keys: nothing to show)."""
    out: dict[int, dict] = {h: {} for h in hadms}
    if exp is not None:
        pos = {int(h): i for i, h in enumerate(exp.hadm_id)}
        for h in hadms:
            if h in pos:
                out[h]["waterfall"] = waterfall_png(exp, pos[h], pretty, png)
    if not show_signals:
        return out
    ecg_stage = _stage(run, "features_ecg")
    if ecg_stage is not None and _stage(run, "index_ecg") is not None:
        ids = set(read_parquet(ecg_stage / "features.parquet", columns=["hadm_id"])["hadm_id"].astype(int))
        with_ecg = [h for h in hadms if h in ids]
        ctx = _ECGContext(run, with_ecg) if with_ecg else None
        for h in with_ecg:
            path = ctx.record_path(h)
            if path is None:
                continue
            try:
                signal, mask, infl = ctx.influence(h, path)
            except DataError as e:   # the record was readable at training; say why it is not now
                out[h]["ecg_note"] = f"ECG record not readable now: {e.reason}"
                continue
            out[h]["ecg"], out[h]["ecg_leads"] = ecg_png(signal, mask, infl, ctx.cfg.fs, png)
    for h in hadms:
        pic = cxr_png(run, h, png)
        if pic:
            out[h]["cxr"] = pic
    return out
