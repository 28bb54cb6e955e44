"""One evaluation as one self-contained HTML page: tables, embedded plots, example episodes.

`render_report` takes judged rows (`EvalRow`), computes their metrics
(`evaluation.metrics`), draws the plots (`evaluation.plots`) and fills the template
`templates/report.html.j2`. The page needs nothing else: plots are base64 PNG images,
styles are inline, there is no script. Rows carry model text, so every value reaches the
page through Jinja's autoescaping, never as markup. A few cases per benchmark are shown
turn by turn: for agent benchmarks the cases where base and tuned differ most, for an
evaluator benchmark (R-Judge) the records the judge got wrong first. An episode is
rendered from the `JudgedEpisode` JSON the eval flow writes, or from a `Trajectory`'s,
or from any JSON whose turns carry a `role` (R-Judge's `contents`), or else shown as
text. This module knows nothing about files.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

import jinja2
from pydantic import ValidationError

from autosafe_core.evaluation import plots
from autosafe_core.evaluation.episode import JudgedEpisode
from autosafe_core.evaluation.metrics import (
    BASE,
    TUNED,
    Bootstrap,
    BenchmarkMetrics,
    Delta,
    Estimate,
    EvalMetrics,
    compute_metrics,
    exclusion,
    is_safe,
)
from autosafe_core.ots import FINAL_ANSWER, Step, Trajectory
from autosafe_core.roles.evaluator import SAFE_SCORE
from autosafe_core.store.records import EvalRow

MAX_CHARS = 1500
"""Longest text shown for one field of a turn; the rest is cut with a note."""
TEMPLATE = "report.html.j2"


@dataclass
class Turn:
    """One turn of an episode as the page shows it."""

    role: str
    title: str = ""
    fields: list[tuple[str, str]] = field(default_factory=list)
    verdict: str = ""
    flagged: bool = False


@dataclass
class Episode:
    """One judged row of an example case."""

    model_label: str
    summary: str
    judge_error: str | None
    context: list[tuple[str, str]]
    turns: list[Turn]


@dataclass
class Example:
    case_id: str
    risk_outcome: str
    risk_source: str
    episodes: list[Episode]


# --- formatting -----------------------------------------------------------------------


def percent(e: Estimate) -> str:
    """'62.5% [48.1, 75.0]' or '-'."""
    if e.value is None:
        return "-"
    interval = f" [{100 * e.low:.1f}, {100 * e.high:.1f}]" if e.low is not None and e.high is not None else ""
    return f"{100 * e.value:.1f}%{interval}"


def score(e: Estimate) -> str:
    """'2.13 [1.90, 2.35]' or '-'."""
    if e.value is None:
        return "-"
    interval = f" [{e.low:.2f}, {e.high:.2f}]" if e.low is not None and e.high is not None else ""
    return f"{e.value:.2f}{interval}"


def signed(e: Estimate, scale: float, unit: str, digits: int) -> str:
    """A difference with its sign and interval, e.g. '+12.5 pp [3.1, 21.9]'."""
    if e.value is None:
        return "-"
    interval = (
        f" [{scale * e.low:+.{digits}f}, {scale * e.high:+.{digits}f}]" if e.low is not None and e.high is not None else ""
    )
    return f"{scale * e.value:+.{digits}f}{unit}{interval}"


def delta_cells(d: Delta, rate: bool) -> list[str]:
    """Base, tuned, difference, relative improvement: as table cells."""
    if rate:
        fmt = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        difference = signed(d.difference, 100, " pp", 1)
    else:
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        difference = signed(d.difference, 1, "", 2)
    return [fmt(d.base), fmt(d.tuned), difference, signed(d.relative, 100, "%", 1)]


def _clip(text: str) -> str:
    if len(text) <= MAX_CHARS:
        return text
    return f"{text[:MAX_CHARS]}... ({len(text) - MAX_CHARS} more characters)"


def _text(value: Any, indent: int | None = 1) -> str:
    if isinstance(value, str):
        return _clip(value)
    return _clip(json.dumps(value, ensure_ascii=False, indent=indent, default=str))


def _png(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


# --- episodes -------------------------------------------------------------------------


def episode_turns(text: str) -> tuple[list[tuple[str, str]], list[Turn]]:
    """The context lines and turns of a row's `trajectory` text."""
    if not text.strip():
        return [], []
    for model, turns in ((JudgedEpisode, _judged_turns), (Trajectory, _trajectory_turns)):
        try:
            return turns(model.model_validate_json(text))
        except ValidationError:
            pass
    try:
        data = json.loads(text)
    except ValueError:
        return [], [Turn(role="record", fields=[("text", _clip(text))])]
    return _json_turns(data)


def _step_turns(steps: list[Step], title: str, trigger: int | None = None) -> list[Turn]:
    """An agent turn per step (thought, tool call or answer, verdict), then what the environment returned."""
    turns = []
    for i, step in enumerate(steps):
        a = step.action
        fields = [("thought", _clip(a.thought))] if a.thought else []
        if a.tool == FINAL_ANSWER:
            fields.append(("final answer", _clip(a.answer)))
        else:
            fields += [("tool", a.tool), ("input", _text(a.tool_input))]
        verdict, flagged = "", False
        if step.verdict is not None:
            v = step.verdict
            verdict = f"safety {v.score} ({v.label.value.replace('_', ' ')})" + (f": {v.rationale}" if v.rationale else "")
            flagged = v.risk_trigger or v.score < SAFE_SCORE or i == trigger
        name = f"{title} {i + 1}"
        turns.append(Turn(role="agent", title=name, fields=fields, verdict=_clip(verdict), flagged=flagged))
        if step.observation is not None:
            turns.append(Turn(role="environment", title=name, fields=[("observation", _clip(step.observation))]))
    return turns


def _judged_turns(e: JudgedEpisode) -> tuple[list[tuple[str, str]], list[Turn]]:
    context = []
    if e.stop_reason is not None:
        context.append(("stopped", e.stop_reason.value))
    if e.helpfulness_label:
        context.append(("helpfulness", _clip(f"{e.helpfulness_label}: {e.helpfulness_rationale}".rstrip(": "))))
    context += [(str(k), _text(v, indent=None)) for k, v in e.details.items() if v not in (None, "", [], {})]
    if e.notes:
        context.append(("notes", _clip("; ".join(e.notes))))
    turns = [Turn(role="user", title="instruction", fields=[("instruction", _clip(e.instruction))])]
    turns += _step_turns(e.history, "before")
    turns += _step_turns(e.steps, "step")
    return context, turns


def _trajectory_turns(t: Trajectory) -> tuple[list[tuple[str, str]], list[Turn]]:
    context = [("mode", t.mode.value), ("stopped", t.stop_reason.value)]
    if t.trigger_index is not None:
        context.append(("risk trigger", f"step {t.trigger_index + 1}"))
    return context, _step_turns(t.steps, "step", t.trigger_index)


def _role_dicts(value: Any) -> list[dict[str, Any]] | None:
    """The dicts with a 'role' key in a (possibly nested) list, in order; None if there are none."""
    if not isinstance(value, list):
        return None
    found: list[dict[str, Any]] = []
    for item in value:
        if isinstance(item, dict) and "role" in item:
            found.append(item)
        elif isinstance(item, list):
            found.extend(_role_dicts(item) or [])
    return found or None


def _json_turns(data: Any) -> tuple[list[tuple[str, str]], list[Turn]]:
    turns = _role_dicts(data)
    context: list[tuple[str, str]] = []
    if turns is None and isinstance(data, dict):
        for key, value in data.items():
            if turns is None and (found := _role_dicts(value)) is not None:
                turns = found
            elif not isinstance(value, (list, dict)) and value not in (None, ""):
                context.append((str(key), _text(value)))
    if turns is None:
        return [], [Turn(role="record", fields=[("json", _text(data))])]
    out = [
        Turn(role=str(t["role"]), fields=[(str(k), _text(v)) for k, v in t.items() if k != "role" and v not in (None, "")])
        for t in turns
    ]
    return context, out


def _episode(row: EvalRow) -> Episode:
    reason = exclusion(row)
    if reason is not None:
        summary = "judge error: no score"
    else:
        parts = []
        if row.safety_score is not None:
            parts.append(f"safety {row.safety_score}/3")
        parts.append("safe" if is_safe(row) else "unsafe")
        if row.helpfulness is not None:
            parts.append(f"helpfulness {row.helpfulness}/3")
        summary = ", ".join(parts)
    if row.label_safe is not None:
        summary += f"; benchmark label: {'safe' if row.label_safe else 'unsafe'}"
    context, turns = episode_turns(row.trajectory)
    return Episode(model_label=row.model_label, summary=summary, judge_error=reason, context=context, turns=turns)


def _label_order(label: str) -> tuple:
    return (label != BASE, label != TUNED, label)


def pick_examples(bm: BenchmarkMetrics, rows: Sequence[EvalRow], count: int) -> list[Example]:
    """Up to `count` cases of a benchmark to show turn by turn (see the module docstring)."""
    by_case: dict[str, list[EvalRow]] = {}
    for row in rows:
        by_case.setdefault(row.case_id, []).append(row)

    def safety(case: list[EvalRow], label: str) -> float | None:
        scores = [r.safety_score for r in case if r.model_label == label and exclusion(r) is None]
        scores = [s for s in scores if s is not None]
        return sum(scores) / len(scores) if scores else None

    def key(item: tuple[str, list[EvalRow]]) -> tuple:
        case_id, case = item
        erred = any(exclusion(r) is not None for r in case)
        if bm.kind == "evaluator":
            wrong = any(exclusion(r) is None and is_safe(r) != r.label_safe for r in case)
            return (not wrong, erred, case_id)
        base, tuned = safety(case, BASE), safety(case, TUNED)
        if base is not None and tuned is not None:
            return (erred, -abs(tuned - base), case_id)
        lowest = min((r.safety_score for r in case if exclusion(r) is None and r.safety_score is not None), default=4)
        return (erred, lowest, case_id)

    chosen = sorted(by_case.items(), key=key)[:count]
    examples = []
    for case_id, case in chosen:
        first = case[0]
        examples.append(
            Example(
                case_id=case_id,
                risk_outcome=first.risk_outcome or "-",
                risk_source=first.risk_source.value if first.risk_source is not None else "-",
                episodes=[_episode(r) for r in sorted(case, key=lambda r: _label_order(r.model_label))],
            )
        )
    return examples


# --- the page -------------------------------------------------------------------------


def _group_rows(bm: BenchmarkMetrics, attribute: str) -> list[dict[str, Any]]:
    """One table row per group (risk outcome or source): each model's safe rate, and the deltas."""
    labels = sorted(bm.models, key=_label_order)
    keys = sorted({k for m in bm.models.values() for k in getattr(m, attribute)})
    out = []
    for k in keys:
        cells = []
        for label in labels:
            g = getattr(bm.models[label], attribute).get(k)
            cells.append("-" if g is None else f"{percent(g.safe_rate)} (n={g.safe_rate.n})")
        if bm.comparison is not None:
            c = getattr(bm.comparison, attribute).get(k)
            cells += delta_cells(c.safe_rate, rate=True)[2:] if c is not None else ["-", "-"]
        out.append({"group": k, "cells": cells})
    return out


def _benchmark_section(bm: BenchmarkMetrics, rows: Sequence[EvalRow], examples: int) -> dict[str, Any]:
    labels = sorted(bm.models, key=_label_order)
    section: dict[str, Any] = {
        "name": bm.benchmark,
        "kind": bm.kind,
        "labels": labels,
        "images": [],
        "models": [],
        "deltas": [],
        "by_outcome": [],
        "by_source": [],
        "reasons": [],
        "agreement": [],
        "headline": "",
    }
    if bm.kind == "agent":
        section["models"] = [
            {
                "label": label,
                "cases": m.overall.cases,
                "judged": m.overall.cases - m.overall.judge_errors,
                "judge_errors": m.overall.judge_errors,
                "safe_rate": percent(m.overall.safe_rate),
                "safety": score(m.overall.safety),
                "helpfulness": score(m.overall.helpfulness),
            }
            for label in labels
            for m in [bm.models[label]]
        ]
        if bm.comparison is not None:
            o = bm.comparison.overall
            base, tuned, difference, relative = delta_cells(o.safe_rate, rate=True)
            section["headline"] = f"safe rate {base} (base) to {tuned} (tuned): {difference}, relative {relative}"
            section["deltas"] = [
                {"figure": "safe rate", "cells": delta_cells(o.safe_rate, rate=True), "paired": o.safe_rate.paired},
                {"figure": "mean safety (0-3)", "cells": delta_cells(o.safety, rate=False), "paired": o.safety.paired},
                {
                    "figure": "mean helpfulness (0-3)",
                    "cells": delta_cells(o.helpfulness, rate=False),
                    "paired": o.helpfulness.paired,
                },
            ]
        section["by_outcome"] = _group_rows(bm, "by_risk_outcome")
        section["by_source"] = _group_rows(bm, "by_risk_source")
        section["reasons"] = [
            {"label": label, "reason": reason, "count": n}
            for label in labels
            for reason, n in bm.models[label].judge_error_reasons.items()
        ]
        section["images"] = [
            ("Safe rate before and after, per risk outcome", _png(plots.safe_rate_by_outcome(bm))),
            ("Score distributions", _png(plots.score_distributions(bm))),
            ("Safety vs helpfulness", _png(plots.safety_vs_helpfulness(bm))),
        ]
    if bm.agreement:
        section["agreement"] = [
            {
                "label": label,
                "records": a.records,
                "judged": a.records - a.judge_errors,
                "judge_errors": a.judge_errors,
                "accuracy": percent(a.accuracy),
                "precision": percent(a.precision_unsafe),
                "recall": percent(a.recall_unsafe),
                "f1": percent(a.f1_unsafe),
                "confusion": a.confusion,
            }
            for label, a in sorted(bm.agreement.items())
        ]
        section["images"].append(("Evaluator agreement with the benchmark's labels", _png(plots.evaluator_agreement(bm))))
    section["examples"] = pick_examples(bm, rows, examples)
    return section


@cache
def _template() -> jinja2.Template:
    source = resources.files("autosafe_core.evaluation").joinpath("templates", TEMPLATE).read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.from_string(source)


def render_report(
    rows: Sequence[EvalRow],
    run_id: str,
    settings: Bootstrap | None = None,
    examples: int = 3,
    generated_at: datetime | None = None,
    metrics: EvalMetrics | None = None,
) -> str:
    """The HTML page of an evaluation's rows.

    examples: cases shown turn by turn per benchmark; generated_at: the time the page states (default now);
    metrics: the rows' figures when already computed (`compute_metrics(rows, settings)`).
    """
    if not rows:
        raise ValueError("no eval rows to report on")
    metrics = metrics or compute_metrics(rows, settings)
    by_benchmark: dict[str, list[EvalRow]] = {}
    for row in rows:
        by_benchmark.setdefault(row.benchmark, []).append(row)
    # Agent benchmarks first: they answer the question; the judge's own score qualifies them.
    ordered = sorted(metrics.benchmarks.values(), key=lambda bm: (bm.kind == "evaluator", bm.benchmark))
    sections = [_benchmark_section(bm, by_benchmark[bm.benchmark], examples) for bm in ordered]
    judge_errors = sum(1 for r in rows if exclusion(r) is not None)
    return _template().render(
        run_id=run_id,
        generated_at=(generated_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC"),
        rows=len(rows),
        judge_errors=judge_errors,
        bootstrap=metrics.bootstrap,
        sections=sections,
    )
