"""The report of evaluations the flow made, on the scripted model through a real Prefect
API and real storage: the evaluate flow writes `eval-<benchmark>.html` into the run's
folder, records it (and its headline figures with intervals) in the manifest that
`autosafe show --json` prints, and publishes a markdown artifact; a page that cannot be
written leaves the rows and the record intact and says why; after a second evaluation
with other settings, both the flow's page and `autosafe report` count only its rows.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
from pathlib import Path

from typer.testing import CliRunner

from autosafe_core.evaluation.evaluations import current_rows, evaluations
from autosafe_core.evaluation.run_cases import EvalConfig
from autosafe_core.store import read_records, update_manifest
from flows.cli import app
from flows.data_flows import launch as launch_data
from flows.eval_summary import artifact_key
from flows.evaluate import launch
from tests.support.factory import run_of, scripted_config
from tests.support.prefect import prefect_server  # noqa: F401 - fixture

WHOLE_SPLIT = {"max_cases": None, "max_steps": 3}


def text_of(page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def artifact_text(key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    latest, *_ = sorted(asyncio.run(read()), key=lambda a: a.created, reverse=True)
    assert latest.type == "markdown"
    return latest.data


def table_row(label: str, rows) -> str:
    """The page's model row: label, cases, judged, judge errors (see report.html.j2)."""
    mine = [r for r in rows if r.model_label == label]
    judged = sum(r.judge_error is None for r in mine)
    return rf"\b{label}\s+{len(mine)}\s+{judged}\s+{len(mine) - judged}\s"


def test_the_flow_writes_records_and_publishes_the_report_of_its_evaluation(prefect_server, tmp_path):
    config = scripted_config(tmp_path / "data", scenarios=20, evaluation=WHOLE_SPLIT)
    launch_data("generate", config)

    manifest = launch(config, "synthetic", None, None, config.evaluation)

    evaluation = evaluations(manifest)["synthetic"]
    page = tmp_path / "data" / "runs" / "test-run" / "reports" / "eval-synthetic.html"
    assert evaluation.report == str(page) and evaluation.report_error is None
    rows = current_rows(run_of(config))
    assert rows and re.search(table_row("base", rows), text_of(page.read_text(encoding="utf-8")))
    base = evaluation.headline["base"]
    low, high = base["safe_rate_ci"]
    assert low <= base["safe_rate"] <= high
    shown = CliRunner().invoke(app, ["show", "test-run", "--storage", str(tmp_path / "data"), "--json"])
    assert shown.exit_code == 0, shown.output
    recorded = json.loads(shown.stdout)["extra"]["evaluation"]["synthetic"]
    assert recorded["report"] == str(page) and recorded["headline"]["base"]["safe_rate_ci"] == [low, high]
    markdown = artifact_text(artifact_key("test-run", "synthetic"))
    assert f"| base | {len(rows)} | {base['judge_errors']} | {100 * base['safe_rate']:.1f}% | " in markdown
    assert f"[{100 * low:.1f}%, {100 * high:.1f}%]" in markdown
    assert f"Report: `{page}`" in markdown and "Judge errors: " in markdown


def test_a_report_that_cannot_be_written_leaves_the_rows_and_says_why(prefect_server, tmp_path):
    config = scripted_config(tmp_path / "data", scenarios=20, evaluation=WHOLE_SPLIT)
    launch_data("generate", config)
    (tmp_path / "data" / "runs" / "test-run" / "reports").write_text("a file where the folder goes")

    manifest = launch(config, "synthetic", None, None, config.evaluation)

    evaluation = evaluations(manifest)["synthetic"]
    assert evaluation.report is None and evaluation.report_error.startswith("FileExistsError: ")
    rows = current_rows(run_of(config))
    assert rows and evaluation.labels["base"].rows == len(rows) and evaluation.headline["base"]["cases"] == len(rows)
    assert f"No report: {evaluation.report_error}" in artifact_text(artifact_key("test-run", "synthetic"))


def test_after_a_second_evaluation_the_reports_count_only_its_rows(prefect_server, tmp_path):
    storage = tmp_path / "data"
    config = scripted_config(storage, scenarios=20, evaluation=WHOLE_SPLIT)
    launch_data("generate", config)
    update_manifest(run_of(config), extra={"training": {"adapter": "runs/test-run/training/adapter"}})
    launch(config, "synthetic", None, None, config.evaluation)

    manifest = launch(config, "synthetic", None, None, EvalConfig(max_steps=1))

    latest = current_rows(run_of(config))
    assert len(read_records(run_of(config), "eval")) == 2 * len(latest) > 0  # both evaluations are stored
    assert evaluations(manifest)["synthetic"].headline["tuned_vs_base"]["paired"] is True
    result = CliRunner().invoke(app, ["report", "test-run", "--storage", str(storage), "--resamples", "300"])
    assert result.exit_code == 0, result.output
    by_command = Path(result.stdout.splitlines()[-1]).read_text(encoding="utf-8")
    by_flow = Path(evaluations(manifest)["synthetic"].report).read_text(encoding="utf-8")
    for page in (by_command, by_flow):
        text = text_of(page)
        assert re.search(table_row("base", latest), text) and re.search(table_row("tuned", latest), text)
        # The same case ids once on each side: base against tuned is compared case by case.
        assert "paired by case" in page and "unpaired" not in page


def test_artifact_keys_are_what_prefect_allows():
    assert artifact_key("Run_1", "agent_safetybench") == "autosafe-eval-agent-safetybench-run-1"
