"""Waterfall plot of one admission's SHAP values: from the base value (the model's average
log-odds) through its top-k features to its log-odds.  Used by the report's patient cards
and by ``pipeline.Run.explain(...).plot()``."""
from __future__ import annotations

import numpy as np

UP, DOWN = "#C44E52", "#4C72B0"   # raises / lowers the risk


def waterfall_steps(values: np.ndarray, data: np.ndarray, names: list[str], k: int = 8
                    ) -> list[tuple[str, float]]:
    """(label, shap) of the k largest |SHAP| features, then one step for all the others."""
    values = np.asarray(values, dtype=float)
    order = [j for j in np.argsort(-np.abs(values)) if values[j] != 0][:k]
    steps = []
    for j in order:
        x = data[j]
        shown = "missing" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.3g}"
        steps.append((f"{names[j]} = {shown}", float(values[j])))
    rest = float(values.sum() - values[order].sum())
    if len(values) > len(order):
        steps.append((f"{len(values) - len(order)} other features", rest))
    return steps


def plot_waterfall(ax, base: float, steps: list[tuple[str, float]], title: str = "", fontsize: int = 8):
    """Draw the steps as horizontal bars, each starting where the previous one ended."""
    left = float(base)
    for i, (_label, s) in enumerate(steps):
        ax.barh(i, s, left=left, color=UP if s > 0 else DOWN, height=0.7)
        ax.text(left + s, i, f" {s:+.2f}" if s > 0 else f"{s:+.2f} ", va="center",
                ha="left" if s > 0 else "right", fontsize=fontsize - 1)
        left += s
    ax.axvline(base, color="grey", ls="--", lw=0.8)
    ax.axvline(left, color="k", lw=0.8)
    ax.use_sticky_edges = False
    ax.margins(x=0.15)
    ax.set_yticks(range(len(steps)), [label for label, _ in steps], fontsize=fontsize)
    ax.invert_yaxis()
    ax.set_xlabel(f"log-odds (base {base:.2f} \u2192 {left:.2f})", fontsize=fontsize)
    ax.tick_params(axis="x", labelsize=fontsize)
    if title:
        ax.set_title(title, fontsize=fontsize + 1)
    return left
