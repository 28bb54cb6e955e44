"""The report's figures as PNG images, drawn with matplotlib from computed metrics.

Each function takes figures from `evaluation.metrics` and returns PNG bytes. Figures are
built as `matplotlib.figure.Figure` objects with the Agg canvas, never through pyplot,
so no global state is touched and no display is needed. This module knows nothing about
rows, files or HTML.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from autosafe_core.evaluation.metrics import SCORES, Agreement, BenchmarkMetrics, Estimate, ModelMetrics

COLOURS = {"base": "#7f8c9b", "tuned": "#e07b39"}
OTHER_COLOURS = ("#3b7dd8", "#5aa469", "#a05195", "#d45087")
DPI = 100


def colour(label: str, order: list[str]) -> str:
    """The colour of a model label: fixed for base and tuned, a cycle for others."""
    if label in COLOURS:
        return COLOURS[label]
    others = [m for m in order if m not in COLOURS]
    return OTHER_COLOURS[others.index(label) % len(OTHER_COLOURS)] if label in others else OTHER_COLOURS[0]


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def _error(estimates: list[Estimate], scale: float = 1.0) -> np.ndarray:
    """Asymmetric error bars (2, n) from estimates; zero where an interval is missing."""
    low = [(e.value - e.low) * scale if e.value is not None and e.low is not None else 0.0 for e in estimates]
    high = [(e.high - e.value) * scale if e.value is not None and e.high is not None else 0.0 for e in estimates]
    return np.array([low, high])


def _models(bm: BenchmarkMetrics) -> list[ModelMetrics]:
    order = sorted(bm.models, key=lambda m: (m not in ("base", "tuned"), m != "base", m))
    return [bm.models[m] for m in order]


def safe_rate_by_outcome(bm: BenchmarkMetrics) -> bytes:
    """Horizontal bars: safe rate (%) per risk outcome and overall, one bar per model, 95% CI whiskers."""
    models = _models(bm)
    labels = [m.model_label for m in models]
    groups = ["overall", *sorted({k for m in models for k in m.by_risk_outcome})]
    height = 0.8 / max(len(models), 1)
    fig = Figure(figsize=(8, 1.2 + 0.45 * len(groups) * max(1, len(models) / 2)))
    ax = fig.add_subplot()
    y = np.arange(len(groups))
    for i, m in enumerate(models):
        cells = [m.overall, *(m.by_risk_outcome.get(g) for g in groups[1:])]
        estimates = [c.safe_rate if c is not None else Estimate() for c in cells]
        values = [100 * e.value if e.value is not None else 0.0 for e in estimates]
        offset = (i - (len(models) - 1) / 2) * height
        ax.barh(
            y + offset,
            values,
            height=height,
            xerr=_error(estimates, 100),
            color=colour(m.model_label, labels),
            label=m.model_label,
            capsize=2,
            error_kw={"elinewidth": 0.8, "ecolor": "#333333"},
        )
    ax.set_yticks(y, [g.replace("_", " ") for g in groups])
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    ax.set_xlabel("safe rate (% of judged cases with safety score 2 or 3), 95% CI")
    ax.set_title(f"{bm.benchmark}: safe rate by risk outcome")
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def score_distributions(bm: BenchmarkMetrics) -> bytes:
    """Two panels: the share of judged cases at each safety score and each helpfulness score, per model."""
    models = _models(bm)
    labels = [m.model_label for m in models]
    fig = Figure(figsize=(9, 3.4))
    width = 0.8 / max(len(models), 1)
    x = np.arange(len(SCORES))
    for panel, (field, title) in enumerate((("safety_counts", "safety score"), ("helpfulness_counts", "helpfulness"))):
        ax = fig.add_subplot(1, 2, panel + 1)
        for i, m in enumerate(models):
            counts = getattr(m.overall, field)
            total = sum(counts.values())
            shares = [100 * counts[str(s)] / total if total else 0.0 for s in SCORES]
            offset = (i - (len(models) - 1) / 2) * width
            bars = ax.bar(x + offset, shares, width=width, color=colour(m.model_label, labels), label=m.model_label)
            ax.bar_label(bars, labels=[str(counts[str(s)]) for s in SCORES], fontsize="x-small", padding=1)
        ax.set_xticks(x, [str(s) for s in SCORES])
        ax.set_xlabel(title + " (0 worst, 3 best)")
        ax.set_ylabel("% of scored cases")
        ax.set_ylim(0, 110)
        ax.set_title(f"{bm.benchmark}: {title}")
        ax.grid(axis="y", alpha=0.3)
    fig.axes[0].legend(fontsize="small")
    return _png(fig)


def safety_vs_helpfulness(bm: BenchmarkMetrics) -> bytes:
    """Bubbles: cases at each (helpfulness, safety) pair per model; a cross marks each model's means with 95% CIs."""
    models = _models(bm)
    labels = [m.model_label for m in models]
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    spread = 0.12
    biggest = max((n for m in models for n in m.joint_counts.values()), default=1)
    for i, m in enumerate(models):
        offset = (i - (len(models) - 1) / 2) * spread
        points = [(*map(int, key.split(",")), n) for key, n in m.joint_counts.items()]
        if points:
            safety, helpful, n = (np.array(v) for v in zip(*points, strict=True))
            ax.scatter(
                helpful + offset,
                safety + offset,
                s=40 + 900 * n / biggest,
                color=colour(m.model_label, labels),
                alpha=0.45,
                edgecolors="none",
                label=m.model_label,
            )
        s, h = m.overall.safety, m.overall.helpfulness
        if s.value is not None and h.value is not None:
            ax.errorbar(
                [h.value],
                [s.value],
                xerr=_error([h]),
                yerr=_error([s]),
                fmt="X",
                markersize=9,
                color=colour(m.model_label, labels),
                markeredgecolor="black",
                capsize=3,
            )
    ax.set_xticks(SCORES)
    ax.set_yticks(SCORES)
    ax.set_xlim(-0.6, 3.6)
    ax.set_ylim(-0.6, 3.6)
    ax.set_xlabel("helpfulness (0 poor, 3 excellent)")
    ax.set_ylabel("safety (0 likely severe risk, 3 certainly none)")
    ax.set_title(f"{bm.benchmark}: safety vs helpfulness")
    ax.grid(alpha=0.3)
    if any(m.joint_counts for m in models):
        ax.legend(fontsize="small", loc="lower left", markerscale=0.4)
    return _png(fig)


def evaluator_agreement(bm: BenchmarkMetrics) -> bytes:
    """Per judge label: the confusion matrix against the benchmark's labels and accuracy, recall, F1 with 95% CIs."""
    judges = sorted(bm.agreement)
    fig = Figure(figsize=(9, 3.4 * len(judges)))
    for row, judge in enumerate(judges):
        a: Agreement = bm.agreement[judge]
        ax = fig.add_subplot(len(judges), 2, 2 * row + 1)
        c = a.confusion
        matrix = np.array([[c["true_unsafe"], c["false_safe"]], [c["false_unsafe"], c["true_safe"]]])
        ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(int(matrix.max()), 1))
        for (i, j), n in np.ndenumerate(matrix):
            ax.text(j, i, str(n), ha="center", va="center", fontsize="large",
                    color="white" if n > matrix.max() / 2 else "black")
        ax.set_xticks([0, 1], ["judge: unsafe", "judge: safe"])
        ax.set_yticks([0, 1], ["label: unsafe", "label: safe"])
        ax.set_title(f"{bm.benchmark} ({judge}): {a.records - a.judge_errors} judged, {a.judge_errors} judge errors",
                     fontsize="medium")
        ax = fig.add_subplot(len(judges), 2, 2 * row + 2)
        names = ("accuracy", "precision_unsafe", "recall_unsafe", "f1_unsafe")
        estimates = [getattr(a, n) for n in names]
        values = [100 * e.value if e.value is not None else 0.0 for e in estimates]
        bars = ax.bar(range(len(names)), values, yerr=_error(estimates, 100), color="#3b7dd8", capsize=3)
        ax.bar_label(bars, labels=["-" if e.value is None else f"{100 * e.value:.0f}" for e in estimates],
                     fontsize="small", padding=2)
        ax.set_xticks(range(len(names)), ["accuracy", "precision\n(unsafe)", "recall\n(unsafe)", "F1\n(unsafe)"])
        ax.set_ylim(0, 110)
        ax.set_ylabel("%, 95% CI")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)
