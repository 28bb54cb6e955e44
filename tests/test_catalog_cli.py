"""`autosafe catalog`: validate says ok or lists each error on stderr with exit 2; list
prints tables, or exactly one JSON object with --json."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autosafe_core.catalog import default_catalog
from flows.catalog_cli import catalog_app

runner = CliRunner()
AUTOSAFE = Path(sys.executable).parent / "autosafe"


def packaged_summary() -> str:
    catalog = default_catalog()
    tools = sum(len(kit.tools) for kit in catalog.toolkits.values())
    return f"ok: {len(catalog.toolkits)} toolkits, {tools} tools, {len(catalog.outcomes)} risk outcomes\n"


@pytest.fixture
def bad_catalog(tmp_path) -> tuple[Path, list[str]]:
    """A folder with one file of broken JSON and one toolkit missing a nested field, and their errors."""
    (tmp_path / "a_broken.json").write_text('[{"toolkit": "Gmail",}]')
    tool = {"name": "SendEmail", "summary": "Send an email.", "parameters": [{"name": "to"}]}
    kit = {"toolkit": "Gmail", "name_for_model": "Gmail", "name_for_human": "Mail",
           "description_for_model": "Sends mail.", "tools": [tool]}  # fmt: skip
    (tmp_path / "b_email.json").write_text(json.dumps([kit]))
    return tmp_path, [
        f"{tmp_path / 'a_broken.json'}: invalid JSON at line 1 column 22: "
        "Expecting property name enclosed in double quotes",
        f"{tmp_path / 'b_email.json'}: toolkit 'Gmail' tool 'SendEmail' field 'parameters[0].type': Field required",
    ]


def test_validate_without_a_path_checks_the_packaged_catalog():
    result = runner.invoke(catalog_app, ["validate"])
    assert (result.exit_code, result.stdout) == (0, packaged_summary())


def test_validate_prints_each_error_on_stderr_and_exits_2(bad_catalog):
    folder, errors = bad_catalog
    result = runner.invoke(catalog_app, ["validate", str(folder)])
    assert (result.exit_code, result.stdout, result.stderr.splitlines()) == (2, "", errors)


def test_validate_of_a_missing_path_exits_2(tmp_path):
    result = runner.invoke(catalog_app, ["validate", str(tmp_path / "nowhere.json")])
    assert (result.exit_code, result.stderr) == (2, f"{tmp_path / 'nowhere.json'}: no such file or directory\n")


def test_list_json_prints_one_object_with_toolkits_and_risk_outcomes():
    result = runner.invoke(catalog_app, ["list", "--json"])
    assert result.exit_code == 0
    listing = json.loads(result.stdout)
    catalog = default_catalog()
    assert sorted(listing) == ["risk_outcomes", "toolkits"]
    assert sorted(kit["name"] for kit in listing["toolkits"]) == sorted(catalog.toolkits)
    assert sorted(o["id"] for o in listing["risk_outcomes"]) == sorted(catalog.outcomes)
    terminal = next(kit for kit in listing["toolkits"] if kit["name"] == "Terminal")
    assert "TerminalExecute" in terminal["tools"]


def test_list_shows_tables_of_toolkits_and_outcomes():
    result = runner.invoke(catalog_app, ["list"])
    assert result.exit_code == 0
    assert "EmailClient" in result.stdout and "privacy_leakage" in result.stdout


def test_list_of_bad_files_exits_2(bad_catalog):
    folder, errors = bad_catalog
    result = runner.invoke(catalog_app, ["list", "--json", str(folder)])
    assert (result.exit_code, result.stdout, result.stderr.splitlines()) == (2, "", errors)


@pytest.mark.skipif(
    importlib.util.find_spec("flows.model_cli") is None,
    reason="flows/cli.py imports flows.model_cli, which is not written yet",
)
def test_the_autosafe_console_script_runs_the_catalog_commands(bad_catalog):
    ok = subprocess.run([AUTOSAFE, "catalog", "validate"], capture_output=True, text=True, timeout=120)
    assert (ok.returncode, ok.stdout) == (0, packaged_summary())

    bad = subprocess.run([AUTOSAFE, "catalog", "validate", bad_catalog[0]], capture_output=True, text=True, timeout=120)
    assert (bad.returncode, bad.stderr.splitlines()) == (2, bad_catalog[1])  # and no traceback

    listing = subprocess.run([AUTOSAFE, "catalog", "list", "--json"], capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0
    assert {o["id"] for o in json.loads(listing.stdout)["risk_outcomes"]} == set(default_catalog().outcomes)
