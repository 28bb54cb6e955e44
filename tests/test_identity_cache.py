"""The identity cache: one computation per object, told apart by identity, bounded."""

from __future__ import annotations

from autosafe_core.identity_cache import identity_cached


def counting():
    calls = []

    def fn(obj):
        calls.append(obj)
        return len(calls)

    return fn, calls


def test_the_same_object_is_computed_once():
    fn, calls = counting()
    cached = identity_cached(fn)
    schema = {"type": "object"}
    assert cached(schema) == cached(schema) == 1
    assert len(calls) == 1


def test_an_equal_but_distinct_object_is_computed_again():
    fn, calls = counting()
    cached = identity_cached(fn)
    assert cached({"a": 1}) == 1
    assert cached({"a": 1}) == 2


def test_a_full_cache_drops_its_oldest_entry_and_keeps_ids_unique():
    fn, calls = counting()
    cached = identity_cached(fn, maxsize=2)
    first, second, third = {"n": 1}, {"n": 2}, {"n": 3}
    cached(first), cached(second), cached(third)
    assert cached(second) == 2 and cached(third) == 3  # still cached
    assert cached(first) == 4  # evicted, so computed again
    # Entries hold their objects: a temporary's id is never mistaken for a cached one.
    results = {cached({"tmp": i}) for i in range(50)}
    assert len(results) == 50
