"""Test-session environment: Prefect's home in a temporary folder, set before Prefect loads,
and removed when the session ends."""

import os
import shutil
import tempfile

_HOME = None if "PREFECT_HOME" in os.environ else tempfile.mkdtemp(prefix="autosafe-prefect-")
if _HOME is not None:
    os.environ["PREFECT_HOME"] = _HOME
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop("PREFECT_API_URL", None)


def pytest_sessionfinish(session, exitstatus):
    if _HOME is not None:
        shutil.rmtree(_HOME, ignore_errors=True)
