"""`autosafe eval`: a mistake (benchmark, data, adapter, settings) is one line naming it,
exit status 2 and nothing written; a good evaluation prints the report command last;
shards that fail after their retries exit 1 and the same command finishes them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from autosafe_core.evaluation.evaluations import current_rows, evaluations
from autosafe_core.store import Run, StorageConfig, read_manifest
from flows.cli import app
from tests.support.eval_models import RESPONDER
from tests.support.prefect import prefect_server  # noqa: F401 - fixture

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"


def invoke(*args: str):
    return CliRunner().invoke(app, ["eval", *args])


def scripted_file(tmp_path: Path, **fields) -> Path:
    data = {
        "models": {"default": {"backend": "scripted", "model": RESPONDER, "options": {"keep_calls": False}}},
        "runner": "threads",
        **fields,
    }
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def one_line_exit_2(result, named: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autosafe: ") and named in lines[0], result.output


def run_at(storage: Path, run_id: str = "r1") -> Run:
    return Run(run_id=run_id, storage=StorageConfig(uri=str(storage)))


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--benchmark", "helm"], "unknown benchmark 'helm'; known: synthetic, toolemu, agent_safetybench, rjudge, terminal"),
        (["--benchmark", "toolemu"], "benchmark toolemu needs --data PATH"),
        (["--benchmark", "rjudge", "--data", "no/such/folder"], "no/such/folder: no such file or directory"),
        (["--benchmark", "synthetic"], "run r1 in "),
        (["--benchmark", "synthetic", "--data", str(FIXTURES)], "--data is not used"),
        (["--benchmark", "toolemu", "--data", str(FIXTURES / "toolemu"), "--adapter", "no/adapter"],
         "adapter no/adapter: no adapter_config.json there"),
        (["--max-steps", "0"], "--max-steps"),
    ],
)
def test_a_mistake_is_one_line_exit_2_and_nothing_written(tmp_path, monkeypatch, args, named):
    monkeypatch.chdir(tmp_path)
    result = invoke("r1", "--storage", str(tmp_path / "data"), *args)
    if args[0] == "--max-steps":  # typer's own range check: exit 2 with its usage message
        assert result.exit_code == 2 and named in result.output
    else:
        one_line_exit_2(result, named)
    assert not (tmp_path / "data").exists()


def test_a_malformed_record_names_the_file_and_record_and_nothing_is_written(tmp_path):
    bad = tmp_path / "cases.json"
    bad.write_text(json.dumps([{"name": "ok", "Toolkits": ["Terminal"], "User Instruction": "hi"},
                               {"name": "broken", "Toolkits": "Terminal", "User Instruction": "hi"}]))
    result = invoke("r1", "--storage", str(tmp_path / "data"), "--benchmark", "toolemu", "--data", str(bad))
    one_line_exit_2(result, f"{bad}: record #1 (name 'broken'): field 'Toolkits': Input should be a valid list")
    assert not (tmp_path / "data").exists()


def test_a_bad_evaluation_section_names_the_file_and_field(tmp_path):
    config = scripted_file(tmp_path, evaluation={"max_steps": 99})
    result = invoke("r1", "--storage", str(tmp_path / "data"), "--benchmark", "rjudge", "--data",
                    str(FIXTURES / "rjudge"), "--config", str(config))
    one_line_exit_2(result, f"{config}: field 'evaluation.max_steps'")


def test_toolemu_base_and_tuned_then_rjudge_on_one_run(prefect_server, tmp_path):
    storage, config = tmp_path / "data", scripted_file(tmp_path)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    common = ["r1", "--storage", str(storage), "--config", str(config)]

    toolemu = invoke(*common, "--benchmark", "toolemu", "--data", str(FIXTURES / "toolemu"), "--adapter", str(adapter))
    assert toolemu.exit_code == 0, toolemu.output
    assert toolemu.output.strip().splitlines()[-1] == f"eval toolemu of run r1 done: autosafe report r1 --storage {storage}"
    assert f"report: {storage / 'runs' / 'r1' / 'reports' / 'eval-toolemu.html'}" in toolemu.output
    rjudge = invoke(*common, "--benchmark", "rjudge", "--data", str(FIXTURES / "rjudge"))
    assert rjudge.exit_code == 0, rjudge.output
    assert "agreement with the labels" in rjudge.output

    run = run_at(storage)
    recorded = evaluations(read_manifest(run))
    assert set(recorded) == {"toolemu", "rjudge"}
    assert set(recorded["toolemu"].labels) == {"base", "tuned"} and recorded["toolemu"].cases == 3
    assert recorded["toolemu"].unmapped_outcomes == {"Crop rot": 1}
    assert set(recorded["rjudge"].labels) == {"evaluator"} and recorded["rjudge"].headline["agreement"]["evaluator"]["records"] == 4
    rows = current_rows(run, ["rjudge"])
    assert sorted((r.case_id, r.label_safe) for r in rows) == [
        ("Finance/harmful/7", False), ("Program/benign/1", True), ("Program/harmful/1", False), ("Program/harmful/2", False)
    ]
    assert all(r.helpfulness is None and r.model_label == "evaluator" for r in rows)
    # The run remembers its models: a second evaluation needs no config file.
    again = invoke("r1", "--storage", str(storage), "--benchmark", "rjudge", "--data", str(FIXTURES / "rjudge"))
    assert again.exit_code == 0, again.output


def test_failed_shards_exit_1_and_the_same_command_finishes_them(prefect_server, tmp_path, monkeypatch):
    import tasks.evaluate

    storage, config = tmp_path / "data", scripted_file(tmp_path, shard_size=2)
    args = ["r1", "--storage", str(storage), "--config", str(config), "--benchmark", "rjudge", "--data", str(FIXTURES / "rjudge")]
    real = tasks.evaluate.run_cases

    async def fails_on_benign(cases, *a, **kw):
        if any("benign" in c.case_id for c in cases):
            raise RuntimeError("engine lost")
        return await real(cases, *a, **kw)

    monkeypatch.setattr(tasks.evaluate, "run_cases", fails_on_benign)
    monkeypatch.setattr(tasks.evaluate.eval_shard, "retries", 0)
    failed = invoke(*args)
    assert failed.exit_code == 1, failed.output
    assert "1 eval shard(s) of rjudge failed" in failed.output
    assert len(current_rows(run_at(storage))) == 2

    monkeypatch.setattr(tasks.evaluate, "run_cases", real)
    done = invoke(*args)
    assert done.exit_code == 0, done.output
    assert len(current_rows(run_at(storage))) == 4


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed (make system-deps)")
def test_terminal_runs_the_packaged_tasks_in_the_sandbox_through_the_same_command(prefect_server, tmp_path):
    from autosafe_core.evaluation import terminal_eval
    from autosafe_core.evaluation.benchmarks import terminal
    from autosafe_core.evaluation.terminal_tasks import load_tasks

    assert terminal.TOOLKIT == terminal_eval.TOOLKIT
    storage, config = tmp_path / "data", scripted_file(tmp_path)
    result = invoke("r1", "--storage", str(storage), "--config", str(config), "--benchmark", "terminal",
                    "--max-steps", "2")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == f"eval terminal of run r1 done: autosafe report r1 --storage {storage}"
    recorded = evaluations(read_manifest(run_at(storage)))["terminal"]
    tasks = load_tasks(None)
    assert recorded.cases == len(tasks) and set(recorded.labels) == {"base"}
    rows = current_rows(run_at(storage), ["terminal"])
    assert sorted(r.case_id for r in rows) == sorted(t.id for t in tasks)
    # Each row is scored, or says why the judge gave no score; none is both.
    assert all((r.safety_score is None) == (r.judge_error is not None) for r in rows)
