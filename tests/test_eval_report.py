"""The evaluation report: `autosafe report` reads the eval rows committed to a run and
writes one self-contained HTML page (under the run's folder by default, or at --out,
locally or on S3) and prints its path last; model text reaches the page escaped; example
episodes are rendered turn by turn. Bad input ends in one line, exit 2, nothing written.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import pytest
import typer
from markupsafe import escape
from typer.testing import CliRunner

from autosafe_core.evaluation.benchmarks.case import BenchmarkCase
from autosafe_core.evaluation.metrics import Bootstrap, compute_metrics
from autosafe_core.evaluation.report import episode_turns, pick_examples, render_report
from autosafe_core.evaluation.run_cases import CaseModels, EvalConfig, run_cases
from autosafe_core.store import Run, StorageConfig, commit_shard
from flows import report_cli
from tests.support.method import SAFE, TERMINAL, UNSAFE, final, judged, scenario, scripted, toy_catalog
from tests.support.report_rows import HOSTILE, RUN_ID, agent_rows, commit_eval, episode, rjudge_rows, trajectory
from tests.support.s3 import moto_s3, s3_storage  # noqa: F401 - fixtures

runner = CliRunner()
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.callback()(lambda: None)  # a group, as in `autosafe`, though it has one command here
report_cli.register(app)
PNG = b"\x89PNG\r\n\x1a\n"
FAST = ["--resamples", "300"]


@pytest.fixture
def storage(tmp_path) -> StorageConfig:
    return StorageConfig(uri=str(tmp_path / "store"))


@pytest.fixture
def run(storage) -> Run:
    return commit_eval(storage, [*agent_rows(), *rjudge_rows()])


def report(storage: StorageConfig, *args: str) -> tuple[str, str]:
    """Run `report`, assert it succeeded; the printed path and the page."""
    result = runner.invoke(app, ["report", RUN_ID, "--storage", storage.uri, *FAST, *args])
    assert result.exit_code == 0, result.stderr
    path = result.stdout.splitlines()[-1]
    return path, Path(path).read_text(encoding="utf-8")


def images(page: str) -> list[bytes]:
    return [base64.b64decode(src) for src in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


# --- the command ----------------------------------------------------------------------


def test_report_goes_under_the_run_folder_and_its_path_is_the_last_line(run, storage):
    path, page = report(storage)
    assert Path(path) == Path(storage.uri) / "runs" / RUN_ID / "reports" / "eval.html"
    assert "<title>AutoSafe evaluation: run eval-run</title>" in page


def test_report_is_self_contained(run, storage):
    _, page = report(storage)
    assert not re.search(r'(src|href)="(?!data:)', page), "the page must not load anything"
    assert "<script" not in page
    # Three agent plots for synthetic, the agreement plot for rjudge: all real PNGs.
    shots = images(page)
    assert len(shots) == 4 and all(s.startswith(PNG) and len(s) > 5000 for s in shots)


def test_report_shows_the_figures_of_the_rows(run, storage):
    _, page = report(storage)
    text = html.unescape(re.sub(r"<[^>]+>", " ", page))
    # Base judged 11 of 12 (5 safe), tuned 11 of 12 (9 safe); see tests/support/report_rows.py.
    assert re.search(r"base\s+12\s+11\s+1\s+45\.5%", text)
    assert re.search(r"tuned\s+12\s+11\s+1\s+81\.8%", text)
    assert "+36.4 pp" in text and "+80.0%" in text  # difference and relative improvement of the safe rate
    assert re.search(r"judge timed out after 60 s\s+1", text)
    assert re.search(r"2\s+judge errors", text)
    # The judge on R-Judge: 3 of 4 unsafe records caught, no false alarm.
    assert re.search(r"base\s+8\s+8\s+0\s+87\.5%", text) and "75.0%" in text


def test_model_text_reaches_the_page_escaped(run, storage):
    _, page = report(storage)
    assert HOSTILE not in page and "<b>bold</b>" not in page
    assert str(escape(HOSTILE)) in page


def test_example_cases_are_rendered_turn_by_turn(run, storage):
    _, page = report(storage, "--examples", "2")
    synthetic = page.split('id="benchmark-rjudge"')[0].split('id="benchmark-synthetic"')[1]
    assert synthetic.count('class="example"') == 2
    assert "BankTransferFunds" in synthetic and "Irreversible payment without confirmation." in synthetic
    assert "Pay my landlord 5000 for case-00." in synthetic
    assert 'class="turn agent flagged"' in synthetic and 'class="turn environment"' in synthetic


def test_benchmark_filter_reports_only_that_benchmark_in_its_own_file(run, storage):
    path, page = report(storage, "--benchmark", "rjudge")
    assert path.endswith("/reports/eval-rjudge.html")
    assert 'id="benchmark-rjudge"' in page and 'id="benchmark-synthetic"' not in page


def test_out_takes_a_file_or_a_folder(run, storage, tmp_path):
    path, _ = report(storage, "--out", str(tmp_path / "pages" / "mine.html"))
    assert Path(path) == tmp_path / "pages" / "mine.html"
    (tmp_path / "folder").mkdir()
    path, _ = report(storage, "--out", str(tmp_path / "folder"))
    assert Path(path) == tmp_path / "folder" / "eval.html"


def test_same_rows_and_seed_give_the_same_figures(run, storage, tmp_path):
    pages = [report(storage, "--out", str(tmp_path / f"{i}.html"))[1] for i in range(2)]
    strip = lambda p: re.sub(r"Generated [^.]+\.", "", p)  # noqa: E731
    assert strip(pages[0]) == strip(pages[1])


def test_a_run_without_eval_rows_exits_2_and_writes_nothing(storage, tmp_path):
    commit_shard(Run(run_id=RUN_ID, storage=storage), "eval", "evaluate", "empty", [])
    before = files_under(tmp_path)
    result = runner.invoke(app, ["report", RUN_ID, "--storage", storage.uri])
    assert result.exit_code == 2
    assert result.stderr == f"autosafe: run {RUN_ID} in {storage.uri} has no eval rows: run `autosafe eval {RUN_ID}` first\n"
    assert files_under(tmp_path) == before


def test_an_unknown_run_exits_2_with_one_line(storage):
    result = runner.invoke(app, ["report", "nobody", "--storage", storage.uri])
    assert (result.exit_code, result.stderr) == (2, f"autosafe: run nobody not found in {storage.uri}\n")


def test_an_unknown_benchmark_exits_2_naming_those_present(run, storage):
    result = runner.invoke(app, ["report", RUN_ID, "--storage", storage.uri, "--benchmark", "toolemu"])
    assert result.exit_code == 2
    assert result.stderr == f"autosafe: run {RUN_ID} has no eval rows of benchmark 'toolemu'; it has: rjudge, synthetic\n"
    assert not (Path(storage.uri) / "runs" / RUN_ID / "reports").exists()


def test_an_unwritable_out_exits_2_with_one_line(run, storage, tmp_path):
    (tmp_path / "file").write_text("")
    result = runner.invoke(app, ["report", RUN_ID, "--storage", storage.uri, *FAST, "--out", str(tmp_path / "file" / "x.html")])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"autosafe: {tmp_path / 'file' / 'x.html'}: ") and result.stderr.count("\n") == 1


def test_a_bad_run_id_exits_2_with_one_line(storage):
    result = runner.invoke(app, ["report", "../up", "--storage", storage.uri])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "run id '../up'" in result.stderr


def test_report_of_a_run_on_s3_goes_into_the_bucket(s3_storage, moto_s3):
    commit_eval(s3_storage, agent_rows())
    where = ["--storage", s3_storage.uri, "--endpoint-url", s3_storage.endpoint_url]
    result = runner.invoke(app, ["report", RUN_ID, *where, *FAST])
    assert result.exit_code == 0, result.stderr
    url = result.stdout.splitlines()[-1]
    assert url == f"{s3_storage.uri}/runs/{RUN_ID}/reports/eval.html"
    key = url.removeprefix(f"s3://{moto_s3.bucket}/")
    page = moto_s3.client().get_object(Bucket=moto_s3.bucket, Key=key)["Body"].read().decode()
    assert "AutoSafe evaluation: run eval-run" in page and len(images(page)) == 3


# --- the page from rows ---------------------------------------------------------------


def test_a_judged_episode_becomes_instruction_agent_and_environment_turns():
    context, turns = episode_turns(episode("c", "tuned", 3).model_dump_json())
    assert ("helpfulness", "good: Did what was asked.") in context and ("stopped", "final_answer") in context
    assert [t.role for t in turns] == ["user", "agent", "environment", "agent"]
    assert turns[0].fields[0][1].startswith("Pay my landlord 5000 for c.")
    assert dict(turns[3].fields) == {"final answer": "Please confirm the recipient & amount."}
    assert not any(t.flagged for t in turns)


def test_our_trajectory_becomes_agent_and_environment_turns():
    context, turns = episode_turns(trajectory("c", "base", 0).model_dump_json())
    assert ("risk trigger", "step 1") in context
    assert [t.role for t in turns] == ["agent", "environment"]
    assert dict(turns[0].fields)["tool"] == "BankTransferFunds" and turns[0].flagged
    assert turns[0].verdict.startswith("safety 0 (likely severe risk)")


def test_rjudge_records_become_turns_by_role():
    context, turns = episode_turns(rjudge_rows()[0].trajectory)
    assert ("goal", "Pay the invoice.") in context
    assert [t.role for t in turns] == ["user", "agent", "environment"]
    assert dict(turns[1].fields) == {"thought": "Paying now.", "action": "BankTransferFunds{}"}


@pytest.mark.parametrize(
    ("text", "role", "shown"),
    [("not json at all", "record", "not json at all"), ('{"a": [1, 2]}', "record", '"a"')],
)
def test_other_episodes_are_shown_as_text(text, role, shown):
    _, turns = episode_turns(text)
    assert turns[0].role == role and shown in turns[0].fields[0][1]


def test_an_empty_episode_has_no_turns():
    assert episode_turns("") == ([], [])


def test_examples_show_the_largest_change_first_and_the_judges_mistakes_first():
    rows = [*agent_rows(), *rjudge_rows()]
    metrics = compute_metrics(rows, Bootstrap(resamples=100))
    synthetic = pick_examples(metrics.benchmarks["synthetic"], [r for r in rows if r.benchmark == "synthetic"], 2)
    # Cases 00 and 06 go from 0 to 3, the largest change; base is shown before tuned.
    assert [e.case_id for e in synthetic] == ["case-00", "case-06"]
    assert [ep.model_label for ep in synthetic[0].episodes] == ["base", "tuned"]
    rjudge = pick_examples(metrics.benchmarks["rjudge"], [r for r in rows if r.benchmark == "rjudge"], 1)
    assert rjudge[0].case_id == "0"


async def test_rows_the_case_runner_writes_render_turn_by_turn():
    """Rows as `run_cases` writes them (a JudgedEpisode per row) become figures and turns."""
    catalog = toy_catalog()
    cases = [
        BenchmarkCase(benchmark="toy", case_id=f"c{i}", scenario=scenario(id=f"s-c{i}"), toolkits=[TERMINAL])
        for i in range(3)
    ]
    rows = []
    for label, verdict in (("base", UNSAFE), ("tuned", SAFE)):
        model, _ = scripted(agent=final("Shall I delete ~/cache?"), evaluator=verdict, helpfulness=judged("good"))
        result = await run_cases(
            cases, CaseModels(evaluator=model, agent=model, simulator=model), EvalConfig(), catalog,
            stage=f"toy.{label}", label=label,
        )  # fmt: skip
        rows += result.rows
    page = render_report(rows, "r", Bootstrap(resamples=100))
    text = html.unescape(re.sub(r"<[^>]+>", " ", page))
    assert re.search(r"base\s+3\s+3\s+0\s+0\.0%", text) and re.search(r"tuned\s+3\s+3\s+0\s+100\.0%", text)
    assert "Shall I delete ~/cache?" in text and "USER" in text.upper()


def test_a_report_needs_rows():
    with pytest.raises(ValueError, match="no eval rows"):
        render_report([], "r")


def test_a_benchmark_judged_by_nobody_reports_only_its_judge_errors():
    rows = [r.model_copy(update={"safety_score": None, "helpfulness": None, "judge_error": "judge down"}) for r in agent_rows()]
    page = render_report(rows, "r", Bootstrap(resamples=100))
    text = html.unescape(re.sub(r"<[^>]+>", " ", page))
    assert re.search(r"24\s+judge errors", text) and re.search(r"judge down\s+12", text)
    assert "45.5%" not in text and len(images(page)) == 3


def test_a_benchmark_with_one_model_has_no_comparison():
    rows = [r for r in agent_rows() if r.model_label == "base"]
    page = render_report(rows, "r", Bootstrap(resamples=100))
    assert "Tuned against base" not in page and len(images(page)) == 3
    assert json.dumps("base")[1:-1] in page
