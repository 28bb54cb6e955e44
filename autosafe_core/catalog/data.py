"""Where the packaged catalog data lives: the taxonomy file and the toolkits folder.

Found through importlib.resources, so it works from a checkout and from an installed
wheel alike. Knows nothing about what the files mean.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable


def packaged_root() -> Traversable:
    """The folder holding `risk_outcomes.json` and `toolkits/*.json`."""
    return resources.files("autosafe_core.catalog")


def packaged_outcomes() -> Traversable:
    """The packaged risk-outcome taxonomy file."""
    return packaged_root().joinpath("risk_outcomes.json")
