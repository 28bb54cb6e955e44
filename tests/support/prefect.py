"""A real Prefect API for flow tests: one local server per test session, on loopback.

The same `prefect_api` the CLI uses, with Prefect's home in a temporary folder so the
tests never touch the user's database.
"""

from __future__ import annotations

import pytest

from flows.runtime import prefect_api


@pytest.fixture(scope="session")
def prefect_server():
    """PREFECT_HOME is already a temporary folder (tests/conftest.py)."""
    with prefect_api() as url:
        yield url
