"""A cache keyed by object identity, for results derived from big unhashable objects that
callers share: a role builds each decoding schema (a nested dict) once and sends that same
object with every call, so work done on a schema (cleaning it for vLLM, encoding it for the
wire, compiling it) is done once per object instead of once per call.

An entry holds its object, so the object's id cannot be reused by another while the entry
lives; the oldest entries go first when the cache is full. It knows nothing of what the
objects are.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def identity_cached(fn: Callable[[Any], T], maxsize: int = 1024) -> Callable[[Any], T]:
    """`fn`, remembering its result per argument object (by `is`, not by `==`)."""
    entries: dict[int, tuple[Any, T]] = {}
    lock = threading.Lock()

    def cached(obj: Any) -> T:
        with lock:
            hit = entries.get(id(obj))
        if hit is not None and hit[0] is obj:
            return hit[1]
        value = fn(obj)
        with lock:
            if len(entries) >= maxsize:
                del entries[next(iter(entries))]  # the oldest
            entries[id(obj)] = (obj, value)
        return value

    cached.__wrapped__ = fn  # type: ignore[attr-defined]
    return cached
