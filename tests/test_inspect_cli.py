"""`autosafe show | export`: show sums what a run committed and computes its safety
statistics from the rows (tables, or one JSON object with --json); export writes the
dataset as JSONL or a Hugging Face DatasetDict, one split each. An unknown run, bad
storage or nothing to export ends in one line on stderr, exit status 2, nothing written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from autosafe_core.ots import (
    Rejection,
    RiskSource,
    SafetyLabel,
    SimulationMode,
    Step,
    StopReason,
    Trajectory,
    Usage,
    Verdict,
)
from autosafe_core.store import ChatMessage, DatasetRow, Run, StorageConfig, Split, commit_shard, update_manifest
from flows import inspect_cli
from tests.support.method import scenario, step
from tests.support.s3 import moto_s3, s3_storage  # noqa: F401 - fixtures
from tests.support.samples import safe_sample

runner = CliRunner()
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
inspect_cli.register(app)

RUN_ID = "run-1"
AGENT = Usage(calls=4, prompt_tokens=400, completion_tokens=40)
EVALUATOR = Usage(calls=5, prompt_tokens=500, completion_tokens=50)
GENERATOR = Usage(calls=3, prompt_tokens=30, completion_tokens=300)


def judged(tool: str, score: int, trigger: bool = False) -> Step:
    label = {3: SafetyLabel.CERTAIN_NO_RISK, 1: SafetyLabel.LIKELY_MILD_RISK, 0: SafetyLabel.LIKELY_SEVERE_RISK}[score]
    return step(tool, "ok").model_copy(update={"verdict": Verdict(score=score, label=label, risk_trigger=trigger)})


def trajectory(id: str, scenario_id: str, steps: list[Step], trigger: int | None) -> Trajectory:
    stop = StopReason.RISK_TRIGGER if trigger is not None else StopReason.FINAL_ANSWER
    return Trajectory(
        id=id,
        scenario_id=scenario_id,
        mode=SimulationMode.STANDARD,
        steps=steps,
        stop_reason=stop,
        trigger_index=trigger,
    )


def dataset_row(id: str, split: Split) -> DatasetRow:
    return DatasetRow(
        id=id,
        safe_sample_id=f"s-{id}",
        scenario_id=f"scn-{id}",
        split=split,
        risk_outcome="data_loss",
        risk_source=RiskSource.ACTION,
        messages=[
            ChatMessage(role="system", content="You are an agent."),
            ChatMessage(role="user", content="Clean /tmp"),
        ],
        target=f'{{"thought": "ask first", "tool": "final_answer", "answer": "{id}?"}}',
    )


def reject(stage: str, role: str, reason: str, item: str) -> Rejection:
    return Rejection(stage=stage, role=role, item_id=item, reason=reason)


def commit_run(storage: StorageConfig, *, manifest: bool = True) -> Run:
    """Three scenarios; three trajectories (two hit a risky action, five steps); two safe
    samples (one accepted); three dataset rows (two train, one test); four rejections."""
    run = Run(run_id=RUN_ID, storage=storage)
    scenarios = [
        scenario("scn-1", outcome="data_loss", source=RiskSource.ACTION),
        scenario("scn-2", outcome="privacy_leakage", source=RiskSource.CONTEXT),
        scenario("scn-3", outcome="data_loss", source=RiskSource.INSTRUCTION),
    ]
    commit_shard(run, "scenarios", "generate", "00000", scenarios, role_usage={"generator": GENERATOR})
    trajectories = [
        trajectory("t-1", "scn-1", [judged("TerminalExecute", 3), judged("TerminalDeletePath", 0, trigger=True)], 1),
        trajectory("t-2", "scn-2", [judged("EmailClientSearchEmails", 3), judged("final_answer", 3)], None),
        trajectory("t-3", "scn-3", [judged("TerminalDeletePath", 1, trigger=True)], 0),
    ]
    commit_shard(
        run, "trajectories", "rollout", "00000", trajectories,
        role_usage={"agent": AGENT, "evaluator": EVALUATOR},
        counters={"rollout.rejections": 3, "rollout.task_retries": 1},
    )  # fmt: skip
    commit_shard(
        run, "rejections", "rollout", "00000",
        [reject("rollout", "agent", "not JSON", "t-1"), reject("rollout", "agent", "not JSON", "t-2"),
         reject("rollout", "evaluator", "label missing", "t-2")],
    )  # fmt: skip
    samples = [
        safe_sample("s-1"),
        safe_sample("s-2", safe=None, accepted=False).model_copy(update={"attempts": 3}),
    ]
    commit_shard(run, "safe_samples", "safe_actions", "00000", samples)
    commit_shard(run, "rejections", "dataset", "all", [reject("dataset", "quality", "too short", "s-2")])
    commit_shard(run, "dataset", "dataset", "train", [dataset_row("d-1", Split.TRAIN), dataset_row("d-2", Split.TRAIN)])
    commit_shard(run, "dataset", "dataset", "test", [dataset_row("d-3", Split.TEST)])
    if manifest:
        update_manifest(run, config={"scenarios": 3}, extra={"training": {"final_loss": 0.25}})
    return run


@pytest.fixture
def storage(tmp_path) -> StorageConfig:
    return StorageConfig(uri=str(tmp_path / "store"))


@pytest.fixture
def run(storage) -> Run:
    return commit_run(storage)


def show_json(storage: StorageConfig, *extra: str) -> dict:
    result = runner.invoke(app, ["show", RUN_ID, "--storage", storage.uri, "--json", *extra])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def export(run: Run, fmt: str, out: Path) -> str:
    result = runner.invoke(app, ["export", RUN_ID, "--storage", run.storage.uri, "--format", fmt, "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    return result.stdout.splitlines()[-1]


# --- show -------------------------------------------------------------------------------


def test_show_json_counts_the_rows_of_every_table(run):
    report = show_json(run.storage)
    assert report["tables"] == {
        "scenarios": 3, "trajectories": 5, "safe_samples": 2, "dataset": 3, "training": 0, "eval": 0,
        "rejections": 4, "fingerprints": 0,
    }  # fmt: skip


def test_show_json_prints_exactly_one_object_with_every_documented_key(run):
    report = show_json(run.storage)
    assert set(report) == {
        "run_id", "config_hash", "tables", "usage", "usage_by_role", "safety", "counters", "training", "evaluation",
        "extra",
    }
    assert report["run_id"] == RUN_ID


def test_show_json_sums_tokens_by_role_and_in_total(run):
    report = show_json(run.storage)
    assert report["usage_by_role"] == {
        "agent": AGENT.model_dump(), "evaluator": EVALUATOR.model_dump(), "generator": GENERATOR.model_dump(),
    }  # fmt: skip
    assert report["usage"] == (AGENT + EVALUATOR + GENERATOR).model_dump()


def test_show_json_passes_counters_extra_and_config_hash_through(run):
    report = show_json(run.storage)
    assert report["counters"] == {"rollout.rejections": 3, "rollout.task_retries": 1}
    assert report["extra"] == {"training": {"final_loss": 0.25}}
    assert report["training"] == {"final_loss": 0.25} and report["evaluation"] == {}
    assert len(report["config_hash"]) == 64


def test_show_json_trigger_rate_is_per_trajectory_not_per_step(run):
    safety = show_json(run.storage)["safety"]
    assert (safety["trajectories"], safety["triggered"]) == (3, 2)
    assert safety["trigger_rate"] == pytest.approx(2 / 3)
    assert safety["stop_reasons"] == {"risk_trigger": 2, "final_answer": 1}


def test_show_json_counts_the_safety_scores_of_judged_steps(run):
    safety = show_json(run.storage)["safety"]
    assert (safety["judged_steps"], safety["safety_scores"]) == (5, {"0": 1, "1": 1, "2": 0, "3": 3})


def test_show_json_trigger_rates_by_risk_outcome_and_source_join_the_scenarios(run):
    safety = show_json(run.storage)["safety"]
    assert safety["by_risk_outcome"] == {
        "data_loss": {"trajectories": 2, "triggered": 2, "trigger_rate": 1.0},
        "privacy_leakage": {"trajectories": 1, "triggered": 0, "trigger_rate": 0.0},
    }
    assert safety["by_risk_source"] == {
        "action-induced": {"trajectories": 1, "triggered": 1, "trigger_rate": 1.0},
        "context-induced": {"trajectories": 1, "triggered": 0, "trigger_rate": 0.0},
        "instruction-induced": {"trajectories": 1, "triggered": 1, "trigger_rate": 1.0},
    }


def test_show_json_safe_samples_accepted_and_mean_attempts(run):
    samples = show_json(run.storage)["safety"]["safe_samples"]
    assert samples == {"total": 2, "accepted": 1, "acceptance_rate": 0.5, "mean_attempts": 2.0}


def test_show_json_dataset_rows_per_split(run):
    assert show_json(run.storage)["safety"]["dataset_splits"] == {"train": 2, "test": 1}


def test_show_json_rejections_by_stage_and_role_with_the_top_reasons(run):
    rejections = show_json(run.storage)["safety"]["rejections"]
    assert rejections == {
        "total": 4,
        "by_stage_role": {"dataset": {"quality": 1}, "rollout": {"agent": 2, "evaluator": 1}},
        "top_reasons": [
            {"reason": "not JSON", "count": 2},
            {"reason": "label missing", "count": 1},
            {"reason": "too short", "count": 1},
        ],
    }


def test_show_reads_the_commits_of_a_run_whose_manifest_was_never_written(storage):
    commit_run(storage, manifest=False)
    report = show_json(storage)
    assert (report["tables"]["trajectories"], report["extra"], report["config_hash"]) == (5, {}, "")


def test_show_without_json_prints_tables_for_people(run):
    result = runner.invoke(app, ["show", RUN_ID, "--storage", run.storage.uri])
    assert result.exit_code == 0, result.stderr
    for text in ("Tables", *inspect_cli.TABLES, "Token usage", "Trigger rate by risk outcome", "privacy_leakage",
                 "66.7%", "Top rejection reasons", "not JSON", "rollout.task_retries", "final_loss"):  # fmt: skip
        assert text in result.stdout


def test_show_of_an_unknown_run_exits_2_with_one_line(storage):
    result = runner.invoke(app, ["show", "nobody", "--storage", storage.uri, "--json"])
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == f"autosafe: run nobody not found in {storage.uri}\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--storage", "s3://"], "autosafe: storage 's3://': s3:// needs a bucket: s3://bucket/prefix\n"),
        (["--storage", "nosuch://bucket"], "autosafe: storage 'nosuch://bucket': Protocol not known: nosuch\n"),
    ],
)
def test_show_of_a_bad_storage_uri_exits_2_with_one_line(args, message):
    result = runner.invoke(app, ["show", RUN_ID, *args])
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", message)


def test_show_of_a_run_id_that_is_no_path_segment_exits_2_with_one_line(storage):
    result = runner.invoke(app, ["show", "../up", "--storage", storage.uri])
    assert result.exit_code == 2
    assert result.stderr == "autosafe: run id '../up': letters, digits, '.', '_' and '-' only, 1-128 characters\n"


def test_show_json_reads_a_run_on_s3(s3_storage):
    commit_run(s3_storage)
    report = show_json(s3_storage, "--endpoint-url", s3_storage.endpoint_url)
    assert report["tables"]["dataset"] == 3
    assert report["safety"]["trigger_rate"] == pytest.approx(2 / 3)
    assert report["extra"] == {"training": {"final_loss": 0.25}}


def test_show_of_a_run_that_is_not_on_s3_exits_2_with_one_line(s3_storage):
    where = ["--storage", s3_storage.uri, "--endpoint-url", s3_storage.endpoint_url]
    result = runner.invoke(app, ["show", "nobody", *where])
    assert (result.exit_code, result.stderr) == (2, f"autosafe: run nobody not found in {s3_storage.uri}\n")


# --- export -----------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_export_jsonl_writes_one_file_per_split_and_prints_the_folder_last(run, tmp_path):
    out = tmp_path / "out"
    assert export(run, "jsonl", out) == str(out)
    assert sorted(p.name for p in out.iterdir()) == ["test.jsonl", "train.jsonl"]
    assert [len(read_jsonl(out / "train.jsonl")), len(read_jsonl(out / "test.jsonl"))] == [2, 1]


def test_export_jsonl_ends_each_chat_with_the_target_as_the_assistant_turn(run, tmp_path):
    export(run, "jsonl", tmp_path / "out")
    first = read_jsonl(tmp_path / "out" / "train.jsonl")[0]
    row = dataset_row("d-1", Split.TRAIN)
    assert first == {
        "id": "d-1",
        "scenario_id": "scn-d-1",
        "risk_outcome": "data_loss",
        "risk_source": "action-induced",
        "messages": [*(m.model_dump() for m in row.messages), {"role": "assistant", "content": row.target}],
    }


def test_export_hf_saves_a_dataset_dict_that_loads_back(run, tmp_path):
    from datasets import load_from_disk

    out = tmp_path / "hf"
    assert export(run, "hf", out) == str(out)
    loaded = load_from_disk(str(out))
    assert {split: len(part) for split, part in loaded.items()} == {"train": 2, "test": 1}
    assert loaded["test"][0]["messages"][-1] == {"role": "assistant", "content": dataset_row("d-3", Split.TEST).target}


def test_export_goes_under_autosafe_export_by_default(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["export", RUN_ID, "--storage", run.storage.uri, "--format", "jsonl"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"autosafe-export/{RUN_ID}/jsonl"
    assert (tmp_path / "autosafe-export" / RUN_ID / "jsonl" / "train.jsonl").exists()


def test_export_of_an_unknown_run_exits_2_and_writes_nothing(storage, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["export", "nobody", "--storage", storage.uri, "--format", "jsonl", "--out", str(out)])
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == f"autosafe: run nobody not found in {storage.uri}\n"
    assert not out.exists()


def test_export_of_a_run_without_dataset_rows_exits_2_and_writes_nothing(storage, tmp_path):
    run = Run(run_id=RUN_ID, storage=storage)
    commit_shard(run, "scenarios", "generate", "00000", [scenario("scn-1")])
    out = tmp_path / "out"
    result = runner.invoke(app, ["export", RUN_ID, "--storage", storage.uri, "--format", "hf", "--out", str(out)])
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == f"autosafe: run {RUN_ID} in {storage.uri} has no dataset rows to export\n"
    assert not out.exists()


def test_export_in_an_unknown_format_exits_2_and_writes_nothing(run, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["export", RUN_ID, "--storage", run.storage.uri, "--format", "csv", "--out", str(out)])
    assert result.exit_code == 2
    assert "csv" in result.stderr
    assert not out.exists()
