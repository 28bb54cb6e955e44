"""Train/validation/test split by scenario: no scenario leaks across splits, none ever moves.

Each scenario id, with the seed, hashes to a number in [0, 1); the cumulative fractions
cut that interval into the three splits. So every sample of a scenario lands in the same
split, and the split of a scenario depends on nothing but its id, the seed and the
fractions: adding data, dropping data or reordering it never moves an old scenario.

Not stratified, by choice. The hash is an independent fair draw per scenario, so each
risk outcome (and source, and toolkit) is split in the given proportions in expectation,
and closely once it has a few dozen scenarios. Exact per-outcome quotas would have to
look at the other scenarios of the outcome, and then new data would move old scenarios
between splits, leaking test scenarios into the training data of a later run.
This module knows nothing about storage or the SFT format.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from autosafe_core.ots import SafeSample, stable_id

SPLITS: tuple[str, str, str] = ("train", "validation", "test")

_HASH_HEX = 16  # 64 bits of the scenario hash: finer than any fraction anyone writes


def split(
    samples: Sequence[SafeSample],
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> dict[str, list[SafeSample]]:
    """The samples under "train", "validation" and "test" (input order kept), by scenario id."""
    check_fractions(fractions)
    out: dict[str, list[SafeSample]] = {name: [] for name in SPLITS}
    for sample in samples:
        out[assign_split(sample.scenario.id, fractions, seed)].append(sample)
    return out


def assign_split(
    scenario_id: str, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> str:
    """The split that every sample of `scenario_id` belongs to."""
    check_fractions(fractions)
    point = int(stable_id(scenario_id, seed, length=_HASH_HEX), 16) / 16**_HASH_HEX
    upper = 0.0
    for name, fraction in zip(SPLITS, fractions, strict=True):
        upper += fraction
        if point < upper:
            return name
    # Rounding can leave the cumulative sum a hair under 1: the rest goes to the last
    # split that has any share.
    return next(name for name, f in zip(reversed(SPLITS), reversed(fractions), strict=True) if f > 0)


def check_fractions(fractions: Sequence[float]) -> None:
    """Raise ValueError unless there are three finite, non-negative fractions summing to 1."""
    if len(fractions) != len(SPLITS):
        raise ValueError(
            f"split fractions: expected {len(SPLITS)} values for {'/'.join(SPLITS)}, got {len(fractions)}"
        )
    for name, f in zip(SPLITS, fractions, strict=True):
        if not isinstance(f, int | float) or not math.isfinite(f) or f < 0:
            raise ValueError(f"split fractions: {name} must be a finite number >= 0, got {f!r}")
    if not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"split fractions: {tuple(fractions)} sum to {sum(fractions):g}, not 1")
