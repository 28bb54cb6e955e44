"""The synthetic benchmark: the held-out test split of a factory run's own scenarios.

The split is the dataset stage's, by scenario id (`stages.split.assign_split` with the
run's fractions and seed), so no test scenario ever lent a sample to training. Every
test scenario counts, with or without an accepted safe sample: what is held out is
the scenario. Knows nothing about models.
"""

from __future__ import annotations

from collections import Counter

from autosafe_core.evaluation.benchmarks.case import BenchmarkCase, BenchmarkInputError, CaseSet, Source
from autosafe_core.stages import generate
from autosafe_core.stages.split import assign_split
from autosafe_core.store import read_records

NAME = "synthetic"
TEST = "test"


def load(source: Source) -> CaseSet:
    """The run's test-split scenarios as cases, in scenario-id order."""
    run = source.run
    if run is None:
        raise BenchmarkInputError("benchmark synthetic evaluates a factory run's test split: give a run")
    if source.data is not None:
        raise BenchmarkInputError("benchmark synthetic reads the run's own scenarios: --data is not used")
    scenarios = read_records(run, "scenarios", stages=[generate.STAGE])
    if not scenarios:
        raise BenchmarkInputError(
            f"run {run.run_id} in {run.storage.uri}: no committed scenarios to evaluate; run the factory first"
        )
    unmapped: Counter[str] = Counter()
    cases = []
    for scenario in sorted(scenarios, key=lambda s: s.id):
        if assign_split(scenario.id, source.split, source.split_seed) != TEST:
            continue
        missing = [name for name in scenario.toolkits if name not in source.catalog.toolkits]
        if missing:
            raise BenchmarkInputError(
                f"run {run.run_id}: scenario {scenario.id}: toolkit {missing[0]!r} is not in the catalog"
            )
        outcome = scenario.risk_outcome if scenario.risk_outcome in source.catalog.outcomes else None
        if outcome is None:
            unmapped[scenario.risk_outcome] += 1
        cases.append(
            BenchmarkCase(
                benchmark=NAME,
                case_id=scenario.id,
                scenario=scenario,
                toolkits=[source.catalog.toolkits[name] for name in scenario.toolkits],
                risk_outcome=outcome,
                risk_source=scenario.risk_source,
            )
        )
    origin = f"run {run.run_id}: {len(cases)} of {len(scenarios)} scenarios in the test split"
    return CaseSet(benchmark=NAME, cases=cases, origin=origin, unmapped_outcomes=unmapped)
