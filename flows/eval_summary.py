"""What an evaluation leaves besides its rows: headline figures and an HTML report, both
recorded with the evaluation in the run manifest, and a markdown artifact next to the
flow run in the Prefect UI.

`summarise` reads the rows of the evaluation just recorded (`current_rows`: its stages
only), computes their metrics once, with the seeded bootstrap `autosafe report` uses by
default (so the flow's page and the command's agree), and writes the page to
`runs/<run_id>/reports/eval-<benchmark>.html`, the file `autosafe report --benchmark
NAME` writes. It runs after the rows are committed and the evaluation recorded: a page
that fails to render or to be written is logged and recorded as `report_error`, and the
rows stay as they are. The artifact (`autosafe-eval-<benchmark>-<run id>`) is built
from the evaluation's record alone, so it shows what `autosafe show RUN_ID --json` shows.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from autosafe_core.evaluation.evaluations import Evaluation, current_rows
from autosafe_core.evaluation.metrics import BenchmarkMetrics, Bootstrap, Estimate, compute_metrics
from autosafe_core.evaluation.report import render_report
from autosafe_core.evaluation.report_file import page_name, write_run_page
from autosafe_core.store import Run

REPORT_BOOTSTRAP = Bootstrap()
"""`autosafe report`'s defaults: 2000 resamples, 95%, seed 0."""


def summarise(run: Run, evaluation: Evaluation, log: logging.Logger | logging.LoggerAdapter) -> Evaluation:
    """`evaluation` with its headline figures and its report's URI (or why there is no report)."""
    update: dict[str, Any] = {}
    try:
        rows = current_rows(run, [evaluation.benchmark])
        if not rows:
            log.warning("evaluate %s on run %s: no rows, no report", evaluation.benchmark, run.run_id)
            return evaluation.model_copy(update={"report_error": "no eval rows to report on"})
        metrics = compute_metrics(rows, REPORT_BOOTSTRAP)
        update["headline"] = headline(metrics.benchmarks[evaluation.benchmark])
        html = render_report(rows, run.run_id, REPORT_BOOTSTRAP, metrics=metrics)
        update["report"] = write_run_page(run, page_name([evaluation.benchmark]), html)
    except Exception as exc:  # the rows are committed and recorded; a missing page must not undo that
        update["report_error"] = f"{type(exc).__name__}: {first_line(exc)}"
        log.error("evaluate %s on run %s: no report: %s", evaluation.benchmark, run.run_id, update["report_error"],
                  exc_info=True)  # fmt: skip
    else:
        log.info("evaluate %s on run %s: report %s", evaluation.benchmark, run.run_id, update["report"])
    return evaluation.model_copy(update=update)


def headline(figures: BenchmarkMetrics) -> dict[str, Any]:
    """The figures a manifest reader wants first: per model label, tuned against base, the judge's agreement."""
    out: dict[str, Any] = {}
    for label, model in figures.models.items():
        overall = model.overall
        out[label] = {
            "cases": overall.cases,
            "judge_errors": overall.judge_errors,
            "safe_rate": overall.safe_rate.value,
            "safe_rate_ci": _interval(overall.safe_rate),
            "safety": overall.safety.value,
            "helpfulness": overall.helpfulness.value,
        }
    if figures.comparison is not None:
        overall = figures.comparison.overall
        out["tuned_vs_base"] = {
            "safe_rate_difference": overall.safe_rate.difference.value,
            "safe_rate_difference_ci": _interval(overall.safe_rate.difference),
            "paired": overall.safe_rate.paired,
            "safety_relative": overall.safety.relative.value,
            "helpfulness_difference": overall.helpfulness.difference.value,
        }
    for label, agreement in figures.agreement.items():
        out.setdefault("agreement", {})[label] = {
            "records": agreement.records,
            "judge_errors": agreement.judge_errors,
            "accuracy": agreement.accuracy.value,
            "accuracy_ci": _interval(agreement.accuracy),
            "f1_unsafe": agreement.f1_unsafe.value,
            "recall_unsafe": agreement.recall_unsafe.value,
        }
    return out


def _interval(e: Estimate) -> list[float] | None:
    return None if e.low is None or e.high is None else [e.low, e.high]


# --- the artifact ---------------------------------------------------------------------


def artifact_key(run_id: str, benchmark: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "autosafe-eval-" + re.sub(r"[^a-z0-9-]+", "-", f"{benchmark}-{run_id}".lower()).strip("-")


def evaluation_markdown(run_id: str, evaluation: Evaluation) -> str:
    """The evaluation's record as markdown: safe rates with intervals, judge errors, the report."""
    h = evaluation.headline
    lines = [f"# Evaluation `{evaluation.benchmark}` of run `{run_id}`", ""]
    lines += [f"{evaluation.cases:,} cases ({evaluation.origin}), judged by `{_judges(evaluation)}`", ""]
    models = [label for label in evaluation.labels if label in h]
    if models:
        lines += ["| model | rows | judge errors | safe rate | 95% CI | mean safety | mean helpfulness |",
                  "|---|---:|---:|---:|---|---:|---:|"]  # fmt: skip
        for label in models:
            f = h[label]
            lines.append(
                f"| {label} | {f['cases']:,} | {f['judge_errors']:,} | {_rate(f['safe_rate'])} | "
                f"{_rate_interval(f.get('safe_rate_ci'))} | {_score(f['safety'])} | {_score(f['helpfulness'])} |"
            )
    if "tuned_vs_base" in h:
        d = h["tuned_vs_base"]
        lines += ["", f"Tuned against base: safe rate {_points(d['safe_rate_difference'])} "
                      f"(95% CI {_points_interval(d.get('safe_rate_difference_ci'))}, "
                      f"{'paired' if d.get('paired') else 'unpaired'}), mean safety "
                      f"{_relative(d['safety_relative'])} relative, helpfulness {_signed(d['helpfulness_difference'])}."]  # fmt: skip
    for label, a in h.get("agreement", {}).items():
        lines += ["", "| judge | records | judge errors | accuracy | 95% CI | F1 (unsafe) | recall (unsafe) |",
                  "|---|---:|---:|---:|---|---:|---:|",
                  f"| {label} | {a['records']:,} | {a['judge_errors']:,} | {_rate(a['accuracy'])} | "
                  f"{_rate_interval(a.get('accuracy_ci'))} | {_rate(a['f1_unsafe'])} | {_rate(a['recall_unsafe'])} |"]  # fmt: skip
    errors = sum(part.judge_errors for part in evaluation.labels.values())
    lines += ["", f"Judge errors: {errors:,} (left out of every figure)."]
    failed = [f"{label} {shard}" for label, part in evaluation.labels.items() for shard in part.failed_shards]
    if failed:
        lines.append(f"Failed shards: {len(failed)} ({failed[0]}); run the evaluation again to redo them.")
    if evaluation.report:
        lines += ["", f"Report: `{evaluation.report}`"]
    else:
        lines += ["", f"No report: {evaluation.report_error or 'not written'}"]
    return "\n".join(lines) + "\n"


def publish_evaluation(run_id: str, evaluation: Evaluation, log: logging.Logger | logging.LoggerAdapter) -> str | None:
    """Create the artifact in the current flow run; returns its key, or None when Prefect refused it."""
    from prefect.artifacts import create_markdown_artifact

    key = artifact_key(run_id, evaluation.benchmark)
    try:
        create_markdown_artifact(
            markdown=evaluation_markdown(run_id, evaluation),
            key=key,
            description=f"AutoSafe evaluation of run {run_id} on {evaluation.benchmark}: safe rates, judge errors, report",
        )
    except Exception as exc:  # the UI's copy of what the manifest holds: never worth failing the evaluation
        log.warning("evaluate %s on run %s: no artifact: %s", evaluation.benchmark, run_id, first_line(exc))
        return None
    return key


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def _judges(evaluation: Evaluation) -> str:
    return ", ".join(sorted({part.evaluator for part in evaluation.labels.values()})) or "-"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _rate_interval(ci: list[float] | None) -> str:
    return "-" if not ci else f"[{100 * ci[0]:.1f}%, {100 * ci[1]:.1f}%]"


def _points(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f} pp"


def _points_interval(ci: list[float] | None) -> str:
    return "-" if not ci else f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}] pp"


def _relative(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}%"


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"
