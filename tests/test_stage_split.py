"""Split by scenario: no leakage, stable as data grows, fractions honoured, bad fractions refused."""

from __future__ import annotations

from collections import Counter

import pytest

from autosafe_core.stages.split import assign_split, split
from tests.support.samples import safe_sample


def samples_of(scenarios: range, per_scenario: int = 1, prefix: str = "s") -> list:
    return [
        safe_sample(f"{prefix}{n}-{k}", scenario_id=f"scn{n}", risk_outcome=f"outcome_{n % 5}")
        for n in scenarios
        for k in range(per_scenario)
    ]


def where(splits: dict) -> dict[str, str]:
    """scenario id -> split name; fails if a scenario is in two splits."""
    found: dict[str, str] = {}
    for name, members in splits.items():
        for s in members:
            assert found.setdefault(s.scenario.id, name) == name, f"{s.scenario.id} leaks into {name}"
    return found


def test_all_samples_of_a_scenario_land_in_one_split():
    samples = samples_of(range(300), per_scenario=3)
    splits = split(samples)
    where(splits)
    assert sorted(s.id for part in splits.values() for s in part) == sorted(s.id for s in samples)


def test_adding_data_never_moves_an_old_scenario():
    before = where(split(samples_of(range(200))))
    grown = samples_of(range(200), per_scenario=2, prefix="again") + samples_of(range(200, 700))
    after = where(split(grown[::-1]))
    assert {scn: after[scn] for scn in before} == before


def test_fractions_are_roughly_honoured_on_a_thousand_scenarios():
    sizes = {name: len(part) for name, part in split(samples_of(range(1000)), (0.7, 0.2, 0.1), seed=3).items()}
    assert sizes["train"] == pytest.approx(700, abs=45)
    assert sizes["validation"] == pytest.approx(200, abs=40)
    assert sizes["test"] == pytest.approx(100, abs=30)


def test_each_risk_outcome_is_split_roughly_in_proportion():
    splits = split(samples_of(range(1000)))
    per_outcome = Counter(s.scenario.risk_outcome for s in splits["train"])
    assert all(abs(n - 160) <= 25 for n in per_outcome.values()), per_outcome


def test_the_seed_chooses_another_assignment():
    ids = [f"scn{n}" for n in range(100)]
    assert [assign_split(i, seed=1) for i in ids] != [assign_split(i, seed=2) for i in ids]


def test_a_zero_fraction_gives_an_empty_split():
    splits = split(samples_of(range(100)), (0.9, 0.1, 0.0))
    assert splits["test"] == [] and len(splits["train"]) + len(splits["validation"]) == 100


def test_every_split_is_present_even_without_samples():
    assert split([]) == {"train": [], "validation": [], "test": []}


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ((0.8, 0.1, 0.2), r"sum to 1\.1, not 1"),
        ((1.1, -0.1, 0.0), r"validation must be a finite number >= 0, got -0\.1"),
        ((0.5, 0.5), r"expected 3 values for train/validation/test, got 2"),
        ((float("nan"), 0.5, 0.5), r"train must be a finite number >= 0"),
    ],
)
def test_bad_fractions_are_refused_with_a_clear_error(fractions, message):
    with pytest.raises(ValueError, match=message):
        split(samples_of(range(3)), fractions)
