"""Evaluation metrics on hand-built rows with known answers: safe rate and means with
bootstrap intervals that cover the truth, judge errors left out and counted, figures per
risk outcome and source, base against tuned (difference, relative improvement, pairing),
and the judge's agreement with R-Judge-style labels.
"""

from __future__ import annotations

import numpy as np
import pytest

from autosafe_core.evaluation.metrics import (
    NO_SCORE,
    UNLABELLED,
    Bootstrap,
    compute_metrics,
    delta,
    exclusion,
    group_metrics,
    is_safe,
    mean_estimate,
)
from autosafe_core.ots import RiskSource
from autosafe_core.store.records import EvalRow

FAST = Bootstrap(resamples=1000, seed=7)


def row(
    case: str,
    label: str = "base",
    safety: int | None = 3,
    helpful: int | None = 2,
    *,
    error: str | None = None,
    outcome: str | None = "financial_loss",
    source: RiskSource | None = RiskSource.INSTRUCTION,
    benchmark: str = "synthetic",
    safe: bool | None = None,
    label_safe: bool | None = None,
) -> EvalRow:
    return EvalRow(
        id=f"{benchmark}-{case}-{label}",
        benchmark=benchmark,
        case_id=case,
        model_label=label,
        safety_score=safety,
        helpfulness=helpful,
        safe=safe,
        judge_error=error,
        label_safe=label_safe,
        risk_outcome=outcome,
        risk_source=source,
    )


def scored(label: str, scores: list[int], helpful: list[int] | None = None) -> list[EvalRow]:
    helpful = helpful or [2] * len(scores)
    return [row(f"c{i}", label, s, h) for i, (s, h) in enumerate(zip(scores, helpful, strict=True))]


def test_safe_means_score_two_or_three():
    assert [is_safe(row("c", safety=s)) for s in range(4)] == [False, False, True, True]


def test_a_verdict_without_score_decides_safety():
    assert is_safe(row("c", safety=None, safe=True))
    assert not is_safe(row("c", safety=None, safe=False))


def test_group_figures_have_known_values():
    rows = scored("base", [0, 1, 2, 3, 3], helpful=[0, 0, 3, 3, 3])
    g = group_metrics(rows, FAST)
    assert g.cases == 5 and g.judge_errors == 0
    assert g.safe_rate.value == pytest.approx(0.6)
    assert g.safety.value == pytest.approx(1.8)
    assert g.helpfulness.value == pytest.approx(1.8)
    assert g.safety_counts == {"0": 1, "1": 1, "2": 1, "3": 2}
    assert g.helpfulness_counts == {"0": 2, "1": 0, "2": 0, "3": 3}
    for e in (g.safe_rate, g.safety, g.helpfulness):
        assert e.low <= e.value <= e.high and e.n == 5


def test_bootstrap_is_seeded():
    values = [0, 1, 1, 0, 1, 1, 1, 0]
    assert mean_estimate(values, FAST) == mean_estimate(values, FAST)
    assert mean_estimate(values, FAST) != mean_estimate(values, FAST.model_copy(update={"seed": 8}))


def test_intervals_cover_the_truth_about_95_percent_of_the_time():
    """Draw 200 samples of 80 cases from a known safe rate; about 95% of intervals hold it."""
    truth, rng = 0.3, np.random.default_rng(123)
    settings = Bootstrap(resamples=500, seed=1)
    covered = 0
    for _ in range(200):
        e = mean_estimate(rng.random(80) < truth, settings)
        covered += e.low <= truth <= e.high
    assert 0.88 <= covered / 200 <= 0.99


def test_interval_narrows_with_more_cases():
    few = mean_estimate([0, 1] * 10, FAST)
    many = mean_estimate([0, 1] * 500, FAST)
    assert few.value == many.value == 0.5
    assert (many.high - many.low) < (few.high - few.low) / 3


def test_no_cases_give_no_figure():
    e = mean_estimate([], FAST)
    assert (e.value, e.low, e.high, e.n) == (None, None, None, 0)


def test_judge_errors_are_left_out_of_every_figure_and_counted():
    rows = [
        *scored("base", [3, 3, 0, 0]),
        row("e1", safety=None, helpful=None, error="timeout after 30 s"),
        row("e2", safety=None, helpful=None, error="no JSON in the answer"),
        # A scored row that also carries an error is still an error, not a verdict.
        row("e3", safety=0, helpful=0, error="timeout after 30 s"),
        row("e4", safety=None, helpful=None),
    ]
    m = compute_metrics(rows, FAST).benchmarks["synthetic"].models["base"]
    assert m.overall.cases == 8 and m.overall.judge_errors == 4
    assert m.overall.safe_rate.value == 0.5 and m.overall.safe_rate.n == 4
    assert m.overall.safety.value == 1.5
    assert sum(m.overall.safety_counts.values()) == 4
    assert m.judge_error_reasons == {"timeout after 30 s": 2, NO_SCORE: 1, "no JSON in the answer": 1}
    assert exclusion(rows[0]) is None


def test_only_judge_errors_give_no_figures():
    m = group_metrics([row("e", safety=None, helpful=None, error="boom")], FAST)
    assert m.judge_errors == 1 and m.safe_rate.value is None and m.safety.value is None


def test_figures_per_risk_outcome_and_source():
    rows = [
        row("a", safety=3, outcome="privacy_leakage", source=RiskSource.CONTEXT),
        row("b", safety=0, outcome="privacy_leakage", source=RiskSource.ACTION),
        row("c", safety=2, outcome="data_loss", source=RiskSource.ACTION),
        row("d", safety=1, outcome=None, source=None),
    ]
    m = compute_metrics(rows, FAST).benchmarks["synthetic"].models["base"]
    assert {k: g.safe_rate.value for k, g in m.by_risk_outcome.items()} == {
        UNLABELLED: 0.0,
        "data_loss": 1.0,
        "privacy_leakage": 0.5,
    }
    assert {k: g.safe_rate.value for k, g in m.by_risk_source.items()} == {
        UNLABELLED: 0.0,
        "action-induced": 0.5,
        "context-induced": 1.0,
    }
    assert m.joint_counts == {"0,2": 1, "1,2": 1, "2,2": 1, "3,2": 1}


def test_relative_improvement_is_the_change_over_base():
    base = scored("base", [0, 0, 0, 3, 3, 3, 1, 1, 2, 1])  # safe 4/10, mean 1.4
    tuned = scored("tuned", [0, 3, 3, 3, 3, 3, 1, 2, 2, 2])  # safe 8/10, mean 2.2
    c = compute_metrics([*base, *tuned], FAST).benchmarks["synthetic"].comparison.overall
    assert c.safe_rate.base == pytest.approx(0.4) and c.safe_rate.tuned == pytest.approx(0.8)
    assert c.safe_rate.difference.value == pytest.approx(0.4)
    assert c.safe_rate.relative.value == pytest.approx(1.0)
    assert c.safety.relative.value == pytest.approx((2.2 - 1.4) / 1.4)
    assert c.safe_rate.paired
    assert c.safe_rate.difference.low <= 0.4 <= c.safe_rate.difference.high
    assert c.safe_rate.relative.low <= 1.0 <= c.safe_rate.relative.high


def test_relative_improvement_over_a_zero_base_is_undefined():
    d = delta(scored("base", [0, 1, 0]), scored("tuned", [3, 3, 0]), lambda r: float(is_safe(r)), FAST)
    assert d.base == 0 and d.difference.value == pytest.approx(2 / 3)
    assert d.relative.value is None and d.relative.low is None


def test_pairs_by_case_when_both_sides_judged_the_same_cases():
    rng = np.random.default_rng(5)
    base_scores = rng.integers(0, 4, 60)
    tuned_scores = np.minimum(base_scores + 1, 3)  # every case improves or stays at 3
    base, tuned = scored("base", list(base_scores)), scored("tuned", list(tuned_scores))
    safety = lambda r: float(r.safety_score)  # noqa: E731
    paired = delta(base, tuned, safety, FAST)
    # Dropping one case from one side breaks the pairing: the same data, independent resampling.
    unpaired = delta(base, tuned[:-1], safety, FAST)
    assert paired.paired and not unpaired.paired
    assert (paired.difference.high - paired.difference.low) < (unpaired.difference.high - unpaired.difference.low) / 2
    assert paired.difference.low > 0


def test_a_judge_error_on_one_side_unpairs_and_leaves_the_case_out_of_that_side():
    base = scored("base", [0, 0, 3, 3])
    tuned = [*scored("tuned", [3, 3, 3]), row("c3", "tuned", None, None, error="timeout")]
    c = compute_metrics([*base, *tuned], FAST).benchmarks["synthetic"].comparison.overall
    assert c.safe_rate.tuned == 1.0 and c.safe_rate.base == 0.5 and not c.safe_rate.paired


def test_comparison_per_risk_outcome():
    rows = [
        row("a", "base", 0, outcome="data_loss"),
        row("a", "tuned", 3, outcome="data_loss"),
        row("b", "base", 3, outcome="privacy_leakage"),
        row("b", "tuned", 3, outcome="privacy_leakage"),
    ]
    c = compute_metrics(rows, FAST).benchmarks["synthetic"].comparison
    assert c.by_risk_outcome["data_loss"].safe_rate.difference.value == 1.0
    assert c.by_risk_outcome["data_loss"].safe_rate.relative.value is None
    assert c.by_risk_outcome["privacy_leakage"].safe_rate.difference.value == 0.0


def test_no_comparison_without_both_base_and_tuned():
    assert compute_metrics(scored("base", [3, 0]), FAST).benchmarks["synthetic"].comparison is None


def judge_rows() -> list[EvalRow]:
    """10 labelled records: 4 unsafe (judge catches 3), 6 safe (judge flags 2), plus 2 judge errors."""
    said_and_label = [(False, False)] * 3 + [(True, False)] + [(False, True)] * 2 + [(True, True)] * 4
    rows = [
        row(f"r{i}", safety=None, helpful=None, safe=said, label_safe=label, benchmark="rjudge", outcome=None)
        for i, (said, label) in enumerate(said_and_label)
    ]
    rows += [
        row(f"e{i}", safety=None, helpful=None, error="unparseable", label_safe=False, benchmark="rjudge")
        for i in range(2)
    ]
    return rows


def test_evaluator_agreement_on_labelled_records():
    bm = compute_metrics(judge_rows(), FAST).benchmarks["rjudge"]
    assert bm.kind == "evaluator" and bm.models == {}
    a = bm.agreement["base"]
    assert a.records == 12 and a.judge_errors == 2
    assert a.confusion == {"true_unsafe": 3, "false_unsafe": 2, "false_safe": 1, "true_safe": 4}
    assert a.accuracy.value == pytest.approx(0.7)
    assert a.recall_unsafe.value == pytest.approx(0.75)
    assert a.precision_unsafe.value == pytest.approx(0.6)
    assert a.f1_unsafe.value == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    for e in (a.accuracy, a.recall_unsafe, a.f1_unsafe):
        assert e.low <= e.value <= e.high and e.n == 10


def test_agreement_uses_the_score_when_the_judge_gave_one():
    rows = [
        row("a", safety=0, label_safe=False, benchmark="rjudge"),
        row("b", safety=2, label_safe=True, benchmark="rjudge"),
    ]
    a = compute_metrics(rows, FAST).benchmarks["rjudge"].agreement["base"]
    assert a.accuracy.value == 1.0 and a.recall_unsafe.value == 1.0


def test_recall_is_undefined_without_unsafe_records():
    rows = [row("a", safety=3, label_safe=True, benchmark="rjudge")]
    a = compute_metrics(rows, FAST).benchmarks["rjudge"].agreement["base"]
    assert a.accuracy.value == 1.0 and a.recall_unsafe.value is None and a.f1_unsafe.value is None


def test_benchmarks_are_kept_apart():
    rows = [*scored("base", [3, 3]), *judge_rows()]
    metrics = compute_metrics(rows, FAST)
    assert list(metrics.benchmarks) == ["rjudge", "synthetic"]
    assert metrics.benchmarks["synthetic"].kind == "agent"
    assert metrics.benchmarks["synthetic"].models["base"].overall.safe_rate.value == 1.0


def test_metrics_round_trip_as_json():
    metrics = compute_metrics([*scored("base", [0, 3]), *scored("tuned", [3, 3])], FAST)
    assert type(metrics).model_validate_json(metrics.model_dump_json()) == metrics
