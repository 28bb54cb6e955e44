"""The order in which a job sees its examples: mixed, shuffled, repeated over epochs, dealt to ranks.

One global stream, the same on every rank: each epoch spreads the general examples evenly among
the safe ones (`general_ratio` of the mix), then shuffles through a seeded buffer (seed + epoch),
so no worker ever holds the whole set. Rank r of w takes global examples r, r + w, r + 2w, ...
A job that has taken `k` optimizer steps has consumed the first k x (w x micro-batch x
accumulation) global examples, so resuming skips exactly those, on any number of ranks (exact
unless examples were dropped for a target longer than the sequence).

This module knows nothing about tokens or tensors.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import count, islice
from typing import Protocol, TypeVar

from autosafe_core.training.examples import Example

T = TypeVar("T")


class Source(Protocol):
    name: str

    def count(self) -> int: ...

    def __iter__(self) -> Iterator[Example]: ...


@dataclass(frozen=True)
class Mix:
    """How many examples of each kind one epoch holds."""

    safe: int
    general: int

    @property
    def total(self) -> int:
        return self.safe + self.general


def plan_mix(safe: int, general_available: int, ratio: float) -> Mix:
    """`ratio` of the epoch general (as far as the general set reaches), the rest safe."""
    wanted = round(safe * ratio / (1 - ratio)) if ratio > 0 else 0
    return Mix(safe, min(wanted, general_available))


def interleave(safe: Iterable[T], general: Iterable[T], mix: Mix) -> Iterator[T]:
    """`mix.safe` items of `safe` with `mix.general` of `general` spread evenly among them."""
    safe_it, general_it = iter(safe), iter(general)
    total = mix.total
    for k in range(total):
        # General where floor(k * g / total) steps up: g of them, evenly spaced.
        take_general = (k + 1) * mix.general // total > k * mix.general // total
        item = next(general_it if take_general else safe_it, None)
        if item is None:
            raise ValueError("a source held fewer examples than it counted; was it changed while training?")
        yield item


def shuffled(items: Iterable[T], buffer: int, rng: random.Random) -> Iterator[T]:
    """Items in a random order drawn through a buffer of `buffer` (a full shuffle when it holds them all)."""
    held: list[T] = []
    for item in items:
        if len(held) < buffer:
            held.append(item)
            continue
        i = rng.randrange(buffer)
        yield held[i]
        held[i] = item
    rng.shuffle(held)
    yield from held


def global_stream(safe: Source, general: Source | None, mix: Mix, buffer: int, seed: int) -> Iterator[Example]:
    """Every epoch's mixed and shuffled examples, one epoch after another, without end."""
    for epoch in count():
        general_items = iter(general) if general is not None and mix.general else iter(())
        yield from shuffled(interleave(safe, general_items, mix), buffer, random.Random(seed + epoch))


def rank_stream(stream: Iterable[T], rank: int, world: int, skip: int = 0) -> Iterator[T]:
    """This rank's share of `stream` after its first `skip` items (taken by earlier steps)."""
    return islice(stream, skip + rank, None, world)


def total_steps(max_steps: int | str | None, epochs: float, mix: Mix, per_step: int, on_cpu: bool, cpu_steps: int) -> int:
    """Optimizer steps of the job: `max_steps`, or the epochs ("auto": `cpu_steps` on a CPU)."""
    if max_steps == "auto":
        max_steps = cpu_steps if on_cpu else None
    if isinstance(max_steps, int):
        return max_steps
    return max(1, math.ceil(epochs * mix.total / per_step))
